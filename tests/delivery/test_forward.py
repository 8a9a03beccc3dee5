"""Forwarding through the farm, with real peers: the source Orthanc, dcmqrscp and an
Orthanc as destinations it does not know, the farm's SCP, scheduler and worker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from qrfarm.delivery.forward import ForwardRequest, new_forward
from qrfarm.dicom import Level
from qrfarm.errors import NotForwardable
from qrfarm.jobs.dispatch import send_run_jobs
from qrfarm.jobs.nodes import NodeSpec
from qrfarm.models import (
    DeliveredInstance,
    FarmRelay,
    ForwardOptions,
    NodeRecord,
    ReceivedInstance,
)
from qrfarm.sandbox.destination import SandboxDestination
from qrfarm.sandbox.synthetic import Corpus
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import Farm, make_farm
from tests.peers.dcmqrscp import DcmqrscpPeer
from tests.peers.orthanc import OrthancPeer

from .conftest import DEST_LIMIT, ChildCounter, destination_specs

# The pooled destination's limit: fewer than the farm's forward associations (4).
POOLED_LIMIT = 2


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxDestination]:
    """A destination taking a moment for each C-STORE, so that a forward's
    associations overlap."""
    destination = SandboxDestination(
        tmp_path_factory.mktemp("pooled"), ae_title="POOLED", store_delay_s=0.02
    )
    destination.port = destination.start()  # type: ignore[attr-defined]
    try:
        yield destination
    finally:
        destination.stop()


@pytest.fixture(scope="module")
def farm(
    tmp_path_factory: pytest.TempPathFactory,
    qrfarm_scp_port: int,
    orthanc: OrthancPeer,
    dest_qr: DcmqrscpPeer,
    pseudo_qr: DcmqrscpPeer,
    implicit_orthanc: OrthancPeer,
    pooled: SandboxDestination,
) -> Iterator[Farm]:
    with make_farm("embedded", tmp_path_factory.mktemp("farm"), qrfarm_scp_port) as farm:
        specs = destination_specs(orthanc, dest_qr, pseudo_qr, implicit_orthanc)
        specs.append(
            NodeSpec(
                "pooled",
                "POOLED",
                "127.0.0.1",
                int(pooled.port),  # type: ignore[attr-defined]
                max_associations=POOLED_LIMIT,
            )
        )
        for spec in specs:
            farm.register(spec)
        farm.start_scp()
        farm.start("scheduler", "scheduler")
        farm.start_worker(*(spec.name for spec in specs), concurrency=2)
        yield farm


def _fetch(farm: Farm, study: str) -> dict[str, object]:
    move = farm.wait(farm.client.move("orthanc", Level.STUDY, {"StudyInstanceUID": study}))
    assert move["state"] == "completed", move
    return move


def _small_studies(corpus: Corpus) -> list[str]:
    """The studies of a few instances each (the large one left out)."""
    return sorted(uid for uid in corpus.studies() if uid != corpus.large_study_uid)


def test_forward_to_a_destination_the_source_does_not_know(
    farm: Farm, orthanc: OrthancPeer, dest_qr: DcmqrscpPeer, corpus: Corpus
) -> None:
    study = _small_studies(corpus)[1]
    held = {i.sop_uid: i for i in corpus.studies()[study]}
    # The source cannot send there itself.
    direct = farm.wait(
        farm.client.move(
            "orthanc", Level.STUDY, {"StudyInstanceUID": study}, destination=dest_qr.ae_title
        )
    )
    assert direct["state"] == "failed", direct
    move = _fetch(farm, study)

    with ChildCounter(dest_qr.process.popen.pid) as peer:
        forward_id = farm.client.forward(int(move["id"]), "dest")
        forward = farm.wait(forward_id)
    assert forward["state"] == "completed", forward
    assert forward["kind"] == "forward"
    assert forward["expected"] == forward["recorded"] == len(held)
    assert forward["missing_uids"] == []
    # dcmqrscp has no Storage Commitment: confirmed by C-FIND.
    assert forward["verified_by"] == "find"
    assert forward["confirmed"] == len(held)
    assert forward["destination_node"] is not None
    # Within the destination's own limit (counted at the peer).
    assert peer.peak == DEST_LIMIT, peer.peak
    # What arrived is what the farm holds, in the syntax it holds it.
    for sop_uid, instance in list(held.items())[:5]:
        arrived = dcmread(dest_qr.stored_path(sop_uid))
        original = dcmread(instance.path)
        assert arrived.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
        assert arrived.PixelData == original.PixelData
        assert arrived.PatientID == original.PatientID
    assert len(dest_qr.stored_files()) == len(held)


def test_a_forward_sends_over_several_associations_within_the_destinations_limit(
    farm: Farm, pooled: SandboxDestination, corpus: Corpus
) -> None:
    """Pooled associations: as many at once as the destination's limit allows
    (fewer than the farm would use), counted at the destination."""
    study = corpus.large_study_uid
    held = {i.sop_uid for i in corpus.studies()[study]}
    move = _fetch(farm, study)
    forward = farm.wait(farm.client.forward(int(move["id"]), "pooled"))
    assert forward["state"] == "completed", forward
    assert forward["confirmed"] == len(held)
    assert pooled.held == held
    assert pooled.peak_connections == POOLED_LIMIT


def test_forward_refuses_a_job_that_holds_nothing(farm: Farm, corpus: Corpus) -> None:
    find = farm.wait(farm.client.find("orthanc", Level.STUDY, {"PatientID": "P00*"}))
    with pytest.raises(NotForwardable, match="only what a move or get brought"):
        farm.client.forward(int(find["id"]), "dest")


def test_destination_refusing_the_held_syntax(
    farm: Farm, implicit_orthanc: OrthancPeer, corpus: Corpus
) -> None:
    study = _small_studies(corpus)[0]
    move = _fetch(farm, study)
    refused = farm.wait(farm.client.forward(int(move["id"]), "implicit", transcode=False))
    assert refused["state"] == "failed", refused
    assert "refuses Explicit VR Little Endian" in refused["error"], refused["error"]
    assert "converting is off" in refused["error"]
    assert refused["recorded"] == 0
    assert implicit_orthanc.count_instances() == 0

    converted = farm.wait(farm.client.forward(int(move["id"]), "implicit", transcode=True))
    assert converted["state"] == "completed", converted
    assert converted["recorded"] == len(corpus.studies()[study])
    assert converted["verified_by"] == "commitment", converted
    sop = corpus.studies()[study][0]
    arrived = implicit_orthanc.stored_bytes(sop.sop_uid)
    tmp = Path(farm.root) / "implicit.dcm"
    tmp.write_bytes(arrived)
    ds = dcmread(tmp)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert ds.PixelData == dcmread(sop.path).PixelData


def test_pseudonymised_forward(farm: Farm, pseudo_qr: DcmqrscpPeer, corpus: Corpus) -> None:
    patients = {
        pid: {i.study_uid for i in instances if i.study_uid != corpus.large_study_uid}
        for pid, instances in corpus.patients().items()
    }
    patient = next(pid for pid, studies in sorted(patients.items()) if len(studies) >= 2)
    first, second = sorted(patients[patient])[:2]
    farm.client.forwarding_options("research", pseudonymise=True)
    originals = [i for i in corpus.instances if i.study_uid in (first, second)]
    for study in (first, second):  # two forwards: two batches of one patient
        move = _fetch(farm, study)
        forward = farm.wait(farm.client.forward(int(move["id"]), "research"))
        assert forward["state"] == "completed", forward
        assert forward["recorded"] == len(corpus.studies()[study])

    sent = [dcmread(p) for p in pseudo_qr.stored_files()]
    assert len(sent) == len(originals)
    source = {i.sop_uid: dcmread(i.path) for i in originals}
    original_uids = {
        str(e.value) for ds in source.values() for e in ds.iterall() if e.VR == "UI"
    } - {str(ds.SOPClassUID) for ds in source.values()}
    names = {str(ds.PatientName) for ds in source.values()}
    births = {str(ds.get("PatientBirthDate", "")) for ds in source.values()} - {""}
    assert births, "the corpus has birth dates to remove"
    for ds in sent:
        assert str(ds.PatientID) != patient
        assert str(ds.PatientName) not in names
        assert str(ds.get("PatientBirthDate", "")) not in births
        uids = {str(e.value) for e in ds.iterall() if e.VR == "UI"}
        assert not uids & original_uids, uids & original_uids
    # One pseudonym for the patient across both studies.
    assert len({str(ds.PatientID) for ds in sent}) == 1
    assert len({str(ds.StudyInstanceUID) for ds in sent}) == 2
    # Pixel data as it was: each sent instance's pixels are an original's.
    assert sorted(ds.PixelData for ds in sent) == sorted(ds.PixelData for ds in source.values())

    # The mapping, for an admin's look-up.
    rows = farm.client.pseudonyms("research", original=patient)
    assert rows == [{"kind": "PatientID", "original": patient, "pseudonym": str(sent[0].PatientID)}]
    back = farm.client.pseudonyms("research", pseudonym=str(sent[0].StudyInstanceUID))
    assert back and back[0]["original"] in (first, second)


def test_a_move_for_a_destination_the_source_cannot_reach_is_relayed(
    farm: Farm, dest_qr: DcmqrscpPeer, corpus: Corpus
) -> None:
    study = _small_studies(corpus)[2]
    instances = {i.sop_uid for i in corpus.studies()[study]}
    farm.client.forwarding_options("dest", via_farm=True)
    try:
        move = farm.wait(
            farm.client.move(
                "orthanc", Level.STUDY, {"StudyInstanceUID": study}, destination="dest"
            )
        )
    finally:
        farm.client.forwarding_options("dest", via_farm=False)
    # The move went to the farm's own SCP, not to the destination the source cannot reach.
    assert move["state"] == "completed", move
    assert move["destination"] == QRFARM_SCP_AE and move["destination_node"] is None
    assert move["recorded"] == len(instances)
    # Its summary names where it goes on to, and (once started) the forward taking it there.
    assert move["relay"]["destination"] == "dest", move
    forward_id = _relayed_forward(farm, int(move["id"]))
    assert farm.client.status(int(move["id"]))["relay"]["forward"] == forward_id
    forward = farm.wait(forward_id)
    assert forward["kind"] == "forward" and forward["node"] == "dest"
    assert forward["state"] == "completed", forward
    assert forward["confirmed"] == len(instances)
    for sop_uid in instances:
        assert dest_qr.stored_path(sop_uid).exists()


def _relayed_forward(farm: Farm, move_id: int, timeout: float = 30) -> int:
    """The forward the scheduler starts once the relayed move has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with farm.client.sessions() as session:
            forward = session.scalar(
                select(FarmRelay.forward_job_id).where(FarmRelay.move_job_id == move_id)
            )
        if forward is not None:
            return int(forward)
        time.sleep(0.2)
    raise AssertionError(f"no forward started for job {move_id}\n{farm.logs()}")


def test_a_held_file_that_holds_another_instance_is_not_sent_under_its_record(
    farm: Farm, dest_qr: DcmqrscpPeer, corpus: Corpus
) -> None:
    """A file changed at rest (here: another instance's bytes copied over it)
    is not sent as the instance its row names, nor confirmed as it: the rest
    is delivered, the job ends partial naming that one."""
    study = _small_studies(corpus)[3]
    move = _fetch(farm, study)
    with farm.client.sessions() as session:
        held = session.execute(
            select(ReceivedInstance.sop_instance_uid, ReceivedInstance.file_path)
            .where(ReceivedInstance.job_id == int(move["id"]))
            .order_by(ReceivedInstance.sop_instance_uid)
        ).all()
    storage = Path(farm.root) / "storage"
    (changed, changed_path), (other, other_path) = held[0], held[1]
    (storage / changed_path).write_bytes((storage / other_path).read_bytes())

    forward = farm.wait(farm.client.forward(int(move["id"]), "dest"))
    assert forward["state"] == "partial", forward
    assert forward["missing_uids"] == [changed], forward
    assert forward["failed_uids"] == [changed], forward
    assert "not the instance recorded" in forward["error"], forward["error"]
    assert forward["confirmed"] == len(held) - 1
    with farm.client.sessions() as session:
        confirmed = set(
            session.scalars(
                select(DeliveredInstance.sop_instance_uid).where(
                    DeliveredInstance.job_id == forward["id"]
                )
            )
        )
    assert other in confirmed and changed not in confirmed


def test_a_pseudonymised_forward_without_its_seed_sends_nothing(
    farm: Farm, pseudo_qr: DcmqrscpPeer, corpus: Corpus
) -> None:
    """Pseudonymisation asked for and no seed to derive pseudonyms from: the
    forward fails, it never sends the originals."""
    farm.client.forwarding_options("research", pseudonymise=True)
    with farm.client.sessions() as session, session.begin():
        options = session.scalars(
            select(ForwardOptions).join(NodeRecord).where(NodeRecord.name == "research")
        ).one()
        seed, options.pseudonym_seed = options.pseudonym_seed, None
    try:
        before = len(pseudo_qr.stored_files())
        move = _fetch(farm, _small_studies(corpus)[4])
        forward = farm.wait(farm.client.forward(int(move["id"]), "research"))
        assert forward["state"] == "failed", forward
        assert "pseudonym" in forward["error"], forward["error"]
        assert len(pseudo_qr.stored_files()) == before
    finally:
        with farm.client.sessions() as session, session.begin():
            options = session.scalars(
                select(ForwardOptions).join(NodeRecord).where(NodeRecord.name == "research")
            ).one()
            options.pseudonym_seed = seed


def test_a_forward_queued_before_its_destination_was_marked_for_research_sends_no_originals(
    farm: Farm, pseudo_qr: DcmqrscpPeer, corpus: Corpus
) -> None:
    """Whether to pseudonymise is read when the instances go out, the stricter
    of the forward's and the destination's: a destination marked for research
    while a forward to it waited gets pseudonyms, never the originals."""
    study = _small_studies(corpus)[5]
    originals = {i.sop_uid: dcmread(i.path) for i in corpus.studies()[study]}
    move = _fetch(farm, study)
    farm.client.forwarding_options("research", pseudonymise=False)
    with farm.client.sessions() as session, session.begin():
        request = ForwardRequest(source_job_id=int(move["id"]), destination="research")
        forward_id = new_forward(session, request).id
    farm.client.forwarding_options("research", pseudonymise=True)
    before = set(pseudo_qr.stored_files())
    send_run_jobs(farm.client.sessions, farm.client.dispatcher, [(forward_id, "research")])
    forward = farm.wait(forward_id)
    assert forward["state"] == "completed", forward
    sent = [dcmread(p) for p in set(pseudo_qr.stored_files()) - before]
    assert len(sent) == len(originals)
    patient_ids = {str(ds.PatientID) for ds in originals.values()}
    assert all(str(ds.PatientID) not in patient_ids for ds in sent)
    assert not {str(ds.SOPInstanceUID) for ds in sent} & set(originals)
