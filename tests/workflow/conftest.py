"""A farm of real processes and three PACS holding small studies for patient identity,
order control and retrieval by accession or patient.

Shared by the package's farm tests (one start for them all): Orthanc as
``pacs-a`` (issuer HOSP_A), dcmqrscp as ``pacs-b`` (issuer HOSP_B), the sandbox
PACS as ``sandbox`` (slow moves, counts C-CANCEL), qrfarm's storage SCP,
a worker, the scheduler and the HL7 listener, on Redis and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pytest
from hl7.mllp import open_hl7_connection
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, CTImageStorage, ExplicitVRLittleEndian

from qrfarm.jobs.nodes import NodeSpec
from qrfarm.sandbox.pacs import Behaviour, SandboxPacs
from qrfarm.workflow.rules import Rule, save_rule
from tests.conftest import QRFARM_SCP_AE
from tests.farm.conftest import Farm, make_farm
from tests.peers import require_peer
from tests.peers.dcmqrscp import DCMQRSCP, STORESCU, DcmqrscpPeer
from tests.peers.orthanc import ORTHANC_BINARIES, OrthancPeer
from tests.peers.ports import free_port, wait_for_port

UID_ROOT = "1.2.826.0.1.3680043.10.1078.16."


@dataclass(frozen=True)
class Study:
    number: int
    patient_id: str
    issuer: str | None
    accession: str
    date: str
    instances: int
    pacs: str  # pacs-a, pacs-b or sandbox

    @property
    def uid(self) -> str:
        return f"{UID_ROOT}{self.number}"


STUDIES = [
    # Patient PA1 of HOSP_A on pacs-a; a study of the same ID text under
    # another issuer there too (another person); and PA1 of HOSP_B on pacs-b.
    Study(1, "PA1", "HOSP_A", "ACC-A1", "20250301", 2, "pacs-a"),
    Study(2, "PA1", "HOSP_X", "ACC-A2", "20250401", 1, "pacs-a"),
    Study(3, "PA1", "HOSP_A", "ACC-A3", "20230115", 1, "pacs-a"),
    Study(4, "PA1", "HOSP_B", "ACC-B1", "20250501", 1, "pacs-b"),
    Study(5, "PB9", "HOSP_B", "ACC-B9", "20240610", 2, "pacs-b"),
    # One accession number on two patients' studies.
    Study(6, "PX2", "HOSP_A", "ACC-DUP", "20240101", 1, "pacs-a"),
    Study(7, "PX3", "HOSP_A", "ACC-DUP", "20240202", 1, "pacs-a"),
    # A study slow to move (the sandbox pauses before each instance).
    Study(8, "PS1", None, "ACC-S1", "20240303", 6, "sandbox"),
]
BY_NUMBER = {s.number: s for s in STUDIES}


def write_study(root: Path, study: Study) -> list[Path]:
    folder = root / str(study.number)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(1, study.instances + 1):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = f"{study.uid}.1.{n}"
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"{study.uid}.1.{n}"
        ds.PatientID = study.patient_id
        if study.issuer:
            ds.IssuerOfPatientID = study.issuer
        ds.PatientName = "Order^Patient"
        ds.PatientBirthDate = "19550505"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study.uid
        ds.SeriesInstanceUID = f"{study.uid}.1"
        ds.StudyDate = study.date
        ds.StudyTime = "101500"
        ds.StudyID = str(study.number)
        ds.AccessionNumber = study.accession
        ds.StudyDescription = "CT CHEST"
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.InstanceNumber = n
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(128))
        path = folder / f"{n:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@dataclass
class OrderFarm:
    farm: Farm
    orthanc: OrthancPeer
    dcmqrscp: DcmqrscpPeer
    sandbox: SandboxPacs
    hl7_port: int

    def send(self, text: str) -> tuple[str, str]:
        """One HL7 message over MLLP; MSA-1 and MSA-3 of its acknowledgement."""

        async def exchange() -> str:
            reader, writer = await open_hl7_connection("127.0.0.1", self.hl7_port)
            try:
                writer.write(b"\x0b" + text.encode() + b"\x1c\r")
                await writer.drain()
                async with asyncio.timeout(30):
                    return (await reader.readblock()).decode()
            finally:
                writer.close()
                await writer.wait_closed()

        ack = hl7.parse(asyncio.run(exchange()))
        msa = ack.segment("MSA")
        return str(msa(1)), ack.unescape(str(msa(3))) if len(msa) > 3 else ""

    def wait_prefetch(self, prefetch_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            summary = self.farm.client.prefetch_status(prefetch_id)
            if summary["ended"]:
                return summary
            time.sleep(0.3)
        print(self.farm.logs())
        raise AssertionError(f"prefetch {prefetch_id} did not end: {summary}")

    def wait_retrieval(self, retrieval_id: int, timeout: float = 120) -> dict[str, Any]:
        try:
            return self.farm.client.wait_retrieval(retrieval_id, timeout)
        except Exception:
            print(self.farm.logs())
            raise


def order(
    control_id: str,
    pid_3: str,
    *,
    control: str = "NW",
    placer: str,
    patient_class: str = "O",
    modality: str = "CT",
) -> str:
    """An ORM^O01 as a RIS sends it: PID-3 given whole, ORC-1, PV1-2, OBR-24."""
    obr = ["OBR", "1", placer, "", "CTCHEST^CT chest", *[""] * 13, f"ACC-{control_id}"]
    obr += [""] * 5 + [modality]
    segments = [
        f"MSH|^~\\&|RIS|HOSP|QRFARM|PACS|20261205093000||ORM^O01|{control_id}|P|2.3.1",
        f"PID|1||{pid_3}||ORDER^PATIENT||19550505|O",
        f"PV1|1|{patient_class}",
        f"ORC|{control}|{placer}",
        "|".join(obr),
    ]
    return "".join(f"{s}\r" for s in segments)


RULE = "priors-ct"


@pytest.fixture(scope="package")
def order_farm(
    tmp_path_factory: pytest.TempPathFactory,
    move_destinations: dict[str, int],
    qrfarm_scp_port: int,
) -> Iterator[OrderFarm]:
    binary = require_peer(*ORTHANC_BINARIES)
    require_peer(DCMQRSCP)
    require_peer(STORESCU)
    root = tmp_path_factory.mktemp("orders")
    files: dict[str, list[Path]] = {"pacs-a": [], "pacs-b": [], "sandbox": []}
    for study in STUDIES:
        files[study.pacs] += write_study(root / study.pacs, study)
    orthanc = OrthancPeer.start(binary, root / "orthanc-peer", move_destinations)
    dcmqrscp = DcmqrscpPeer.start(root / "dcmqrscp-peer", move_destinations)
    sandbox = SandboxPacs(
        files["sandbox"],
        destinations={QRFARM_SCP_AE: ("127.0.0.1", qrfarm_scp_port)},
        behaviour=Behaviour(retrieve_delay_s=1.0),
    )
    sandbox_port = sandbox.start()
    try:
        orthanc.load(files["pacs-a"])
        dcmqrscp.load(root / "pacs-b")
        with make_farm("redis-postgresql", root / "farm", qrfarm_scp_port) as farm:
            hl7_port = free_port()
            farm.env["QRFARM_HL7_PORT"] = str(hl7_port)
            farm.env["QRFARM_HL7_RULES"] = json.dumps({"ORM^O01": RULE})
            for name, peer_ae, port, issuer in (
                ("pacs-a", orthanc.ae_title, orthanc.port, "HOSP_A"),
                ("pacs-b", dcmqrscp.ae_title, dcmqrscp.port, "HOSP_B"),
                ("sandbox", sandbox.ae_title, sandbox_port, None),
            ):
                farm.register(NodeSpec(name, peer_ae, "127.0.0.1", port, patient_id_issuer=issuer))
            with farm.client.sessions() as session, session.begin():
                save_rule(session, RULE, Rule(nodes=["pacs-a", "pacs-b"], modalities=["CT"]))
            farm.start_scp()
            farm.start("scheduler", "scheduler")
            farm.start_worker("pacs-a", "pacs-b", "sandbox", concurrency=3)
            listener = farm.start("hl7", "hl7")
            if not wait_for_port(
                hl7_port, timeout=60, still_running=lambda: listener.poll() is None
            ):
                pytest.fail("qrfarm hl7 did not start:\n" + farm.logs())
            yield OrderFarm(farm, orthanc, dcmqrscp, sandbox, hl7_port)
    finally:
        sandbox.stop()
        dcmqrscp.stop()
        orthanc.stop()
