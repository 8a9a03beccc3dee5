"""DCMTK dcmqrscp as a test PACS: its own configuration and storage area in a temp dir.

Behaviour of dcmqrscp 3.6.7 met with this configuration (checked, not assumed):
- a wrong called AE title is rejected (A-ASSOCIATE-RJ, "called AE title not
  recognised"); an unknown calling AE title is accepted when the storage
  area's peers are ANY (the default here) and rejected when they are restricted;
- C-MOVE to an AE title missing from the HostTable ends in 0xA801 (move
  destination unknown) with zero counts; to a known destination that refuses
  the connection, in 0xA702 with every instance counted failed and listed in
  the Failed SOP Instance UID List;
- C-GET works without an association profile: the storage contexts proposed
  with the SCP role are accepted with it;
- it forks one child per association (the default kept here), so several
  associations run at once; the index file is locked between them;
- C-FIND answers keep each study's own Specific Character Set when the request
  names none (the conversion to ASCII it tries first fails and is logged);
- maxStudies above 500 is cut to 500 (with a warning), and studies beyond the
  quota are deleted: the quota below is the most it takes.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread

from tests.peers import PacsPeer, PeerProcess, PeerStartError, peer_env
from tests.peers.ports import free_port

DCMQRSCP = "/usr/bin/dcmqrscp"
STORESCU = "/usr/bin/storescu"

# HostTable entries need a port; a caller that is not a move destination gets
# one where nothing listens, so a C-MOVE to it fails at once (0xA702).
UNREACHABLE_PORT = 1


def _symbol(ae_title: str) -> str:
    """A HostTable symbolic name for an AE title."""
    return "ae_" + re.sub(r"[^A-Za-z0-9]", "_", ae_title).lower()


def dcmqrscp_config(
    *,
    port: int,
    ae_title: str,
    storage_dir: Path,
    move_destinations: Mapping[str, int],
    callers: Sequence[str],
    restrict_callers: bool,
) -> str:
    """The configuration file's text (format: DCMTK's dcmqrcnf.txt)."""
    hosts = {ae: UNREACHABLE_PORT for ae in callers}
    hosts.update(move_destinations)
    # Host names, not IP addresses: dcmqrscp resolves and compares names, and
    # 127.0.0.1 reverse-resolves to "localhost".
    host_lines = [f"{_symbol(ae)} = ({ae}, localhost, {p})" for ae, p in sorted(hosts.items())]
    peers = ", ".join(_symbol(ae) for ae in sorted(hosts)) if restrict_callers else "ANY"
    return "\n".join(
        [
            f"NetworkTCPPort  = {port}",
            "MaxPDUSize      = 16384",
            "MaxAssociations = 16",
            "",
            "HostTable BEGIN",
            *host_lines,
            "HostTable END",
            "",
            "VendorTable BEGIN",
            "VendorTable END",
            "",
            "AETable BEGIN",
            # (maxStudies, maxBytesPerStudy): over quota dcmqrscp deletes studies.
            f"{ae_title} {storage_dir} RW (500, 1024mb) {peers}",
            "AETable END",
            "",
        ]
    )


@dataclass(kw_only=True)
class DcmqrscpPeer(PacsPeer):
    """A running dcmqrscp serving one storage area."""

    workdir: Path
    storage_dir: Path
    config_path: Path
    process: PeerProcess = field(repr=False)
    _paths: dict[str, Path] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def start(
        cls,
        workdir: Path,
        move_destinations: Mapping[str, int],
        *,
        ae_title: str = "DCMQRSCP",
        callers: Sequence[str] = ("QRFARM",),
        restrict_callers: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
    ) -> DcmqrscpPeer:
        """Write a configuration into ``workdir``, start dcmqrscp, wait until it listens.

        ``callers`` are put in the HostTable; with ``restrict_callers`` only
        they and the move destinations may associate, otherwise any AE may.
        """
        storage_dir = workdir / "storage"
        storage_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        config_path = workdir / "dcmqrscp.cfg"
        config_path.write_text(
            dcmqrscp_config(
                port=port,
                ae_title=ae_title,
                storage_dir=storage_dir,
                move_destinations=move_destinations,
                callers=callers,
                restrict_callers=restrict_callers,
            )
        )
        process = PeerProcess(
            "dcmqrscp",
            [DCMQRSCP, "--config", str(config_path), *extra_args],
            cwd=workdir,
            log_path=workdir / "dcmqrscp.log",
        )
        try:
            process.wait_until_listening(port, timeout)
        except BaseException:
            process.stop()
            raise
        return cls(
            name="dcmqrscp",
            ae_title=ae_title,
            port=port,
            workdir=workdir,
            storage_dir=storage_dir,
            config_path=config_path,
            process=process,
        )

    def load(self, root: Path, *, calling_ae: str = "QRFARM", timeout: float = 120.0) -> None:
        """Send every ``*.dcm`` under ``root`` with DCMTK storescu (one association).

        ``+sp '*.dcm'``: without a pattern storescu stops at the first file
        that is not DICOM.
        """
        argv = [
            STORESCU,
            "-aet",
            calling_ae,
            "-aec",
            self.ae_title,
            "+sd",
            "+r",
            "+sp",
            "*.dcm",
            self.host,
            str(self.port),
            str(root),
        ]
        result = subprocess.run(
            argv, capture_output=True, text=True, env=peer_env(), timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise PeerStartError(
                f"storescu into dcmqrscp failed ({result.returncode}): "
                f"{result.stdout}{result.stderr}\n--- dcmqrscp log ---\n{self.log_tail()}"
            )
        self._paths.clear()

    def stored_files(self) -> list[Path]:
        """The files in the storage area (its index.dat left out)."""
        return sorted(p for p in self.storage_dir.iterdir() if p.name != "index.dat")

    def stored_path(self, sop_uid: str) -> Path:
        """The file dcmqrscp wrote for this SOP Instance UID."""
        if sop_uid not in self._paths:
            self._rescan()
        try:
            return self._paths[sop_uid]
        except KeyError:
            raise KeyError(f"dcmqrscp holds no instance {sop_uid}") from None

    def stored_bytes(self, sop_uid: str) -> bytes:
        return self.stored_path(sop_uid).read_bytes()

    def _rescan(self) -> None:
        # File names are dcmqrscp's own (e.g. CT_6b05ca3f006235f3.dcm), so the
        # UID is read from each file; only the header up to the UID is parsed.
        self._paths.clear()
        for path in self.stored_files():
            ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            self._paths[str(ds.SOPInstanceUID)] = path

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> None:
        self.process.stop()
