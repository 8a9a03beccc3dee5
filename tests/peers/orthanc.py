"""Orthanc as a test PACS: its own configuration, storage and ports in a temp dir.

Behaviour of Orthanc 1.10.1 met with this configuration (checked, not assumed):
- a wrong called AE title is rejected (A-ASSOCIATE-RJ, permanent, "called AE
  title not recognised") because DicomCheckCalledAet is true;
- an unknown calling AE title may find, get and move because of the
  DicomAlwaysAllow* options; without them Orthanc accepts the association and
  then aborts it (A-ABORT) at the first C-FIND/C-GET/C-MOVE request;
- C-MOVE to an AE title not in DicomModalities, to a destination that refuses
  the connection, or of a key matching nothing ends in 0xC000 with no
  sub-operation counts and no Failed SOP Instance UID List;
- C-GET needs no registration of the caller beyond DicomAlwaysAllowGet.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.peers import LOCALHOST, PacsPeer, PeerProcess
from tests.peers.ports import free_port

ORTHANC_BINARIES = ("/usr/sbin/Orthanc", "/usr/bin/Orthanc")
# Debian's orthanc-dicomweb package.
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class OrthancError(RuntimeError):
    """A REST call to the test Orthanc failed."""


def orthanc_config(
    workdir: Path,
    *,
    ae_title: str,
    dicom_port: int,
    http_port: int,
    move_destinations: Mapping[str, int],
) -> dict[str, Any]:
    """The configuration file's content (Orthanc reads nothing else)."""
    return {
        "Name": f"qrfarm-test-{ae_title.lower()}",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "Plugins": [],  # the packaged plugins (worklists, folders) stay out
        "HttpServerEnabled": True,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        # Off by default: Orthanc would then answer whatever called AE is used.
        "DicomCheckCalledAet": True,
        # Find/get/move from callers absent from DicomModalities (QRFARM and
        # anything a test makes up); off by default since 1.9.0/1.9.7.
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomCheckModalityHost": False,
        # The only AE titles Orthanc will C-MOVE to.
        "DicomModalities": {
            ae: [ae, LOCALHOST, port] for ae, port in sorted(move_destinations.items())
        },
        # C-FIND answers are encoded in this, whatever the stored instances used.
        "DefaultEncoding": "Utf8",
        # Its default: the C-MOVE response comes after the C-STOREs.
        "SynchronousCMove": True,
        "SaveJobs": False,
        # A throw-away store: no fsync per instance keeps loading fast.
        "SyncStorageArea": False,
        "StorageCompression": False,
        "OverwriteInstances": False,
        # Synthetic data only: full identifiers in the log help debugging.
        "DeidentifyLogs": False,
    }


@dataclass(kw_only=True)
class OrthancPeer(PacsPeer):
    """A running Orthanc with its REST API on ``http_port`` (127.0.0.1)."""

    http_port: int
    workdir: Path
    process: PeerProcess = field(repr=False)
    version: str = ""

    @classmethod
    def start(
        cls,
        binary: str,
        workdir: Path,
        move_destinations: Mapping[str, int],
        *,
        ae_title: str = "ORTHANC",
        extra_config: Mapping[str, Any] | None = None,
        plugins: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> OrthancPeer:
        """Write a configuration into ``workdir``, start Orthanc, wait until ready.

        ``plugins``: shared libraries Orthanc loads (none by default; e.g.
        DICOMWEB_PLUGIN, with its "DicomWeb" section in ``extra_config``)."""
        workdir.mkdir(parents=True, exist_ok=True)
        dicom_port, http_port = free_port(), free_port()
        config = orthanc_config(
            workdir,
            ae_title=ae_title,
            dicom_port=dicom_port,
            http_port=http_port,
            move_destinations=move_destinations,
        )
        config.update(extra_config or {})
        if plugins:
            config["Plugins"] = list(plugins)
        config_path = workdir / "orthanc.json"
        config_path.write_text(json.dumps(config, indent=2))
        process = PeerProcess(
            "Orthanc",
            [binary, str(config_path)],
            cwd=workdir,
            log_path=workdir / "orthanc.log",
        )
        peer = cls(
            name="orthanc",
            ae_title=ae_title,
            port=dicom_port,
            http_port=http_port,
            workdir=workdir,
            process=process,
        )
        try:
            # Orthanc opens its DICOM port before the HTTP one; wait for both.
            process.wait_until_listening(dicom_port, timeout)
            process.wait_until_listening(http_port, timeout)
            version = peer.rest_json("GET", "/system")["Version"]
        except BaseException:
            process.stop()
            raise
        peer.version = str(version)
        return peer

    # --- REST -----------------------------------------------------------------

    def rest(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> bytes:
        """One REST call; raises OrthancError on an HTTP error status."""
        connection = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=60)
        try:
            return _request(connection, method, path, body, content_type)
        finally:
            connection.close()

    def rest_json(self, method: str, path: str, body: bytes | None = None) -> Any:
        return json.loads(self.rest(method, path, body))

    def load(self, files: Iterable[Path]) -> int:
        """Store the files through ``POST /instances``; returns how many were sent.

        One keep-alive connection: about 600 small instances a second here,
        well above what a DICOM C-STORE load with Nagle on would reach.
        """
        connection = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=60)
        count = 0
        try:
            for path in files:
                answer = json.loads(
                    _request(
                        connection, "POST", "/instances", path.read_bytes(), "application/dicom"
                    )
                )
                if answer.get("Status") not in ("Success", "AlreadyStored"):
                    raise OrthancError(f"Orthanc did not store {path}: {answer}")
                count += 1
        finally:
            connection.close()
        return count

    def instance_id(self, sop_uid: str) -> str:
        """Orthanc's own identifier of the instance with this SOP Instance UID."""
        matches = self.rest_json("POST", "/tools/lookup", sop_uid.encode("ascii"))
        for match in matches:
            if match.get("Type") == "Instance":
                return str(match["ID"])
        raise KeyError(f"Orthanc holds no instance {sop_uid}")

    def stored_bytes(self, sop_uid: str) -> bytes:
        return self.rest("GET", f"/instances/{self.instance_id(sop_uid)}/file")

    def count_instances(self) -> int:
        return int(self.rest_json("GET", "/statistics")["CountInstances"])

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> None:
        self.process.stop()


def _request(
    connection: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    content_type: str,
) -> bytes:
    headers = {"Content-Type": content_type} if body is not None else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    if response.status >= 400:
        raise OrthancError(f"{method} {path}: HTTP {response.status}: {data[:500]!r}")
    return data
