"""A third-party move plus its verification, against the bare C-MOVE.

Two Orthancs (TCP_NODELAY=1): SOURCE holds one study of 200 CT images
512x512 16-bit; DEST receives it. SOURCE knows DEST as a move destination;
DEST knows the farm's storage SCP (for its Storage Commitment reports), with
commitment allowed for it or, for the C-FIND runs, not. The farm (PostgreSQL
``qrfarm_farmbench`` and Redis DB 11, as farm_bench.py) runs ``qrfarm scp``,
one worker and the scheduler; SOURCE is its source node, DEST a destination
node.

Each run starts with DEST empty (the study deleted through its REST API):

- bare: DCMTK ``movescu`` SOURCE -> DEST (TCP_NODELAY=1), until its final
  response: the C-MOVE alone, nothing verified;
- qrfarm, commitment: ``Client.move(..., destination="dest")`` from submit
  until the job is ``completed`` (the expected-instances find, the C-MOVE,
  the N-ACTION and its report through the storage SCP);
- qrfarm, C-FIND: the same to a second destination node for DEST whose
  profile says it does not commit (DEST refuses the farm's request), verified
  by IMAGE-level C-FINDs.

    .venv/bin/python bench/delivery_bench.py [--images 200] [--repeat 3] [--json FILE] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from farm_bench import (
    CALLING_AE,
    FARM_AE,
    FARM_DB,
    FARM_SCP_AE,
    MOVESCU,
    NODE,
    SET_NO,
    Farm,
    farm_client,
    flush_redis,
    load_orthanc,
    movescu,
    pg_admin,
)
from store_bench import (
    LOCALHOST,
    ORTHANC,
    BenchError,
    Child,
    OrthancReceiver,
    free_port,
    generate,
    mode_env,
    versions,
)

SOURCE_AE = "ORTHANC"  # farm_bench's Farm registers the source as ORTHANC
DEST_AE = "DEST"


def start_orthanc(workdir: Path, ae: str, modalities: dict[str, Any]) -> OrthancReceiver:
    """Orthanc with TCP_NODELAY=1, the given DicomModalities and the callers known."""
    port, http_port = free_port(), free_port()
    for caller in (FARM_AE, CALLING_AE):
        modalities.setdefault(caller, [caller, LOCALHOST, 104])
    config = {
        "Name": f"qrfarm-delivery-bench-{ae.lower()}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAet": ae,
        "DicomPort": port,
        "DicomModalities": modalities,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowMove": True,
        "DicomAlwaysAllowStore": True,
    }
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    child = Child(
        f"Orthanc {ae}",
        [ORTHANC, str(config_path)],
        cwd=workdir,
        log=workdir / "orthanc.log",
        env=mode_env("nodelay"),
    )
    orthanc = OrthancReceiver(ae, port, child, http_port, workdir / "storage")
    try:
        child.wait_listening(port)
        child.wait_listening(http_port)
        orthanc.rest_json("/system")
    except BaseException:
        child.stop()
        raise
    return orthanc


def rest(orthanc: OrthancReceiver, method: str, path: str, body: Any = None) -> Any:
    connection = http.client.HTTPConnection(LOCALHOST, orthanc.http_port, timeout=60)
    try:
        payload = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=payload)
        response = connection.getresponse()
        data = response.read()
        if response.status >= 400:
            raise BenchError(f"Orthanc {method} {path}: HTTP {response.status}")
        return json.loads(data) if data else None
    finally:
        connection.close()


def empty(orthanc: OrthancReceiver) -> None:
    for study in rest(orthanc, "GET", "/studies"):
        rest(orthanc, "DELETE", f"/studies/{study}")
    if int(rest(orthanc, "GET", "/statistics")["CountInstances"]) != 0:
        raise BenchError("the destination is not empty")


def held(orthanc: OrthancReceiver) -> int:
    return int(rest(orthanc, "GET", "/statistics")["CountInstances"])


def allow_commitment(dest: OrthancReceiver, scp_port: int, allowed: bool) -> None:
    """Whether DEST answers the farm's Storage Commitment requests."""
    rest(
        dest,
        "PUT",
        f"/modalities/{FARM_SCP_AE}",
        {
            "AET": FARM_SCP_AE,
            "Host": LOCALHOST,
            "Port": scp_port,
            "AllowStorageCommitment": allowed,
        },
    )


def run(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from qrfarm.dicom import Level

    data = generate(scratch / "data", "ct", args.images, 512, SET_NO)
    study_uid = f"1.2.826.0.1.3680043.10.1234.77.{SET_NO}"
    print(f"data: {len(data.files)} instances, {data.total_bytes / 1e6:.1f} MB", flush=True)
    scp_port = free_port()
    flush_redis()
    pg_admin(f"DROP DATABASE IF EXISTS {FARM_DB} WITH (FORCE)", f"CREATE DATABASE {FARM_DB}")
    dest = start_orthanc(
        scratch / "dest", DEST_AE, {FARM_SCP_AE: [FARM_SCP_AE, LOCALHOST, scp_port]}
    )
    source: OrthancReceiver | None = None
    farm: Farm | None = None
    results: dict[str, Any] = {}
    try:
        source = start_orthanc(
            scratch / "source",
            SOURCE_AE,
            {
                DEST_AE: [DEST_AE, LOCALHOST, dest.port],
                FARM_SCP_AE: [FARM_SCP_AE, LOCALHOST, scp_port],
            },
        )
        load_orthanc(source, data.files[0].parent, len(data.files))
        farm = Farm(scratch / "farm", source.port, scp_port)
        farm.cli(
            "node", "add", "dest", f"{DEST_AE}@{LOCALHOST}:{dest.port}", "--role", "destination"
        )
        farm.cli(
            "node",
            "add",
            "dest-find",
            f"{DEST_AE}@{LOCALHOST}:{dest.port}",
            "--role",
            "destination",
        )
        farm.start()

        def record(label: str, seconds: float) -> None:
            results.setdefault(label, {"runs_s": []})["runs_s"].append(seconds)
            print(f"  {label:<44} {seconds:7.3f} s", flush=True)

        with farm_client(farm) as client:

            def qrfarm_move(destination: str) -> tuple[float, str]:
                t0 = time.perf_counter()
                job_id = client.move(
                    NODE, Level.STUDY, {"StudyInstanceUID": study_uid}, destination=destination
                )
                summary = client.wait(job_id, 600)
                seconds = time.perf_counter() - t0
                if summary["state"] != "completed" or summary["confirmed"] != args.images:
                    raise BenchError(f"qrfarm move to {destination}: {summary}\n{farm.logs()}")
                return seconds, str(summary["verified_by"])

            # One warm-up each: the first association and the profile's first look.
            for destination, commits in (("dest", True), ("dest-find", False)):
                allow_commitment(dest, scp_port, commits)
                empty(dest)
                qrfarm_move(destination)
            for _ in range(args.repeat):
                # Round by round: the machine's speed drifts over minutes.
                empty(dest)
                record(
                    "bare C-MOVE (movescu SOURCE -> DEST)",
                    movescu(source.port, DEST_AE, study_uid, "nodelay"),
                )
                if held(dest) != args.images:
                    raise BenchError(f"movescu: DEST holds {held(dest)}")
                allow_commitment(dest, scp_port, True)
                empty(dest)
                seconds, how = qrfarm_move("dest")
                assert how == "commitment", how
                record("qrfarm move + storage commitment", seconds)
                allow_commitment(dest, scp_port, False)
                empty(dest)
                seconds, how = qrfarm_move("dest-find")
                assert how == "find", how
                record("qrfarm move + C-FIND verification", seconds)
    finally:
        if farm is not None:
            farm.stop()
        for orthanc in (source, dest):
            if orthanc is not None:
                orthanc.process.stop()
        flush_redis()
    for entry in results.values():
        entry["median_s"] = statistics.median(entry["runs_s"])
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A third-party move and its verification.")
    parser.add_argument("--images", type=int, default=200, help="CT images 512x512 (200)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (median)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args(argv)
    for tool in (MOVESCU, ORTHANC):
        if not Path(tool).exists():
            raise BenchError(f"missing {tool}")
    at_start = versions()
    print("versions: " + ", ".join(f"{k} {v}" for k, v in at_start.items()), flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="qrfarm-delivery-bench-"))
    try:
        results = run(args, scratch)
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    bare = results["bare C-MOVE (movescu SOURCE -> DEST)"]["median_s"]
    ratios = {
        label: entry["median_s"] / bare for label, entry in results.items() if "qrfarm" in label
    }
    print()
    for label, entry in results.items():
        print(f"{label:<44} median {entry['median_s']:7.3f} s")
    print("\nratios to the bare C-MOVE (goal <= 1.3):")
    for label, value in ratios.items():
        print(f"  {label:<44} {value:6.2f}")
    if args.json is not None:
        payload = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "versions": at_start,
            "images": args.images,
            "results": results,
            "ratios": ratios,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
