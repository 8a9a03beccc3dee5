"""Orthanc with Debian's DICOMweb plugin (orthanc-dicomweb): QIDO-RS, WADO-RS
and STOW-RS under /dicom-web/ on its HTTP port, 127.0.0.1 only.

Behaviour of Orthanc 1.10.1 with plugin 1.7 met by the tests (checked):
- QIDO-RS takes ``*`` and ``?`` as wildcards only when sent unencoded
  (``PatientID=P%2A`` matches nothing);
- WADO-RS with ``transfer-syntax=*`` answers each instance with the very file
  Orthanc stores;
- STOW-RS to /studies/{uid} answers 409 listing an instance of another study
  in the Failed SOP Sequence (Failure Reason 0x0110), the others stored.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.peers import require_peer
from tests.peers.orthanc import DICOMWEB_PLUGIN, ORTHANC_BINARIES, OrthancPeer

DICOMWEB_CONFIG = {"DicomWeb": {"Enable": True, "Root": "/dicom-web/"}}


def start_dicomweb_orthanc(workdir: Path, ae_title: str) -> OrthancPeer:
    """A started Orthanc with the DICOMweb plugin; skipped (failed on CI) without it."""
    binary = require_peer(*ORTHANC_BINARIES)
    if not Path(DICOMWEB_PLUGIN).is_file():
        message = f"Orthanc's DICOMweb plugin not installed: {DICOMWEB_PLUGIN}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return OrthancPeer.start(
        binary,
        workdir,
        {},
        ae_title=ae_title,
        plugins=[DICOMWEB_PLUGIN],
        extra_config=DICOMWEB_CONFIG,
    )


def dicomweb_url(peer: OrthancPeer) -> str:
    return f"http://127.0.0.1:{peer.http_port}/dicom-web"
