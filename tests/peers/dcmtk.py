"""DCMTK's command line tools as reference clients and as a move destination.

Always by full system path: pynetdicom installs its own findscu, storescp,
storescu, ... into the virtual environment, and those are not DCMTK.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import tempfile
import time
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pydicom import Dataset, dcmread

from tests.peers import LOCALHOST, PacsPeer, PeerProcess, PeerStartError, peer_env
from tests.peers.ports import nothing_listens

ECHOSCU = "/usr/bin/echoscu"
FINDSCU = "/usr/bin/findscu"
STORESCP = "/usr/bin/storescp"
STORESCU = "/usr/bin/storescu"

QueryRoot = Literal["patient", "study"]


class DcmtkError(RuntimeError):
    """A DCMTK tool exited with an error; the message carries its output."""


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv), capture_output=True, text=True, env=peer_env(), timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise DcmtkError(
            f"{' '.join(argv)} exited with {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def echoscu(
    host: str, port: int, called_ae: str, *, calling_ae: str = "QRFARM", timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """C-ECHO with DCMTK echoscu; the result is returned, not checked.

    A rejection shows as exit code 1 and "Association Rejected" with the
    result, source and reason in stderr. (pynetdicom may report a fast
    rejection as an abort: the peer closes the connection right after the
    A-ASSOCIATE-RJ and pynetdicom's requestor can see the closed socket first.)
    """
    argv = [ECHOSCU, "-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(
        argv, capture_output=True, text=True, env=peer_env(), timeout=timeout, check=False
    )


def findscu(
    peer: PacsPeer,
    root: QueryRoot,
    level: str,
    keys: Sequence[str],
    *,
    calling_ae: str = "QRFARM",
    timeout: float = 60.0,
) -> list[Dataset]:
    """The C-FIND answers DCMTK's findscu gets, as data sets, in answer order.

    ``keys`` are findscu ``-k`` arguments: ``"PatientID=P001"`` to match,
    ``"StudyDate"`` for a return key. QueryRetrieveLevel is set from ``level``.
    """
    model = {"patient": "-P", "study": "-S"}[root]
    with tempfile.TemporaryDirectory(prefix="findscu-") as out:
        argv = [
            FINDSCU,
            model,
            "-aet",
            calling_ae,
            "-aec",
            peer.ae_title,
            "-k",
            f"QueryRetrieveLevel={level}",
        ]
        for key in keys:
            argv += ["-k", key]
        # -X writes each answer to rsp0001.dcm, rsp0002.dcm, ... in -od.
        argv += ["-X", "-od", out, peer.host, str(peer.port)]
        _run(argv, timeout)
        return [dcmread(path, force=True) for path in sorted(Path(out).glob("rsp*.dcm"))]


def storescu(
    host: str,
    port: int,
    called_ae: str,
    files: Sequence[Path],
    *,
    calling_ae: str = "QRFARM",
    tls_ca: Path | None = None,
    timeout: float = 120.0,
) -> None:
    """Send files with DCMTK storescu on one association.

    With ``tls_ca`` the connection is TLS without a client certificate
    (``+tla``), the server's certificate checked against ``tls_ca``.
    """
    argv = [STORESCU, "-aet", calling_ae, "-aec", called_ae]
    if tls_ca is not None:
        argv += ["+tla", "+cf", str(tls_ca)]
    argv += [host, str(port), *(str(f) for f in files)]
    _run(argv, timeout)


@lru_cache(maxsize=1)
def storescp_has_tls() -> bool:
    """Whether this storescp was built with TLS (OpenSSL) support."""
    result = subprocess.run([STORESCP, "--help"], capture_output=True, text=True, check=False)
    return "+tls" in result.stdout


class StoreScp:
    """DCMTK storescp receiving into ``output_dir``; started by the constructor.

    Files are written bit-preserving (``+B``: the data set exactly as it came
    over the wire) and named ``<modality>.<SOP Instance UID>.dcm``. All
    transfer syntaxes it knows are accepted (``+xa``).
    """

    def __init__(
        self,
        ae_title: str,
        port: int,
        output_dir: Path,
        *,
        tls: tuple[Path, Path] | None = None,
        extra_args: Sequence[str] = (),
        log_path: Path | None = None,
        timeout: float = 15.0,
    ) -> None:
        self.ae_title = ae_title
        self.host = LOCALHOST
        self.port = port
        self.output_dir = output_dir
        output_dir.mkdir(parents=True, exist_ok=True)
        if not nothing_listens(port):  # e.g. a storescp left over from an earlier test
            raise PeerStartError(f"storescp {ae_title}: {LOCALHOST}:{port} is already in use")
        argv = [STORESCP, "-aet", ae_title, "-od", str(output_dir), "+B", "+xa", "-fe", ".dcm"]
        if tls is not None:
            key, cert = tls
            # -ic: no client certificate asked for; the server side is what is tested.
            argv += ["+tls", str(key), str(cert), "-ic"]
        argv += [*extra_args, str(port)]
        log = log_path or output_dir.parent / f"storescp-{ae_title}-{port}.log"
        self.process = PeerProcess(f"storescp {ae_title}", argv, cwd=output_dir, log_path=log)
        try:
            self.process.wait_until_listening(port, timeout)
        except BaseException:
            self.process.stop()
            raise

    def received_files(self) -> list[Path]:
        return sorted(self.output_dir.glob("*.dcm"))

    def received_sop_uids(self) -> set[str]:
        """SOP Instance UIDs of the files received so far."""
        return {
            str(
                dcmread(p, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]).SOPInstanceUID
            )
            for p in self.received_files()
        }

    def wait_for_files(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least ``count`` files arrived (for asynchronous moves)."""
        deadline = time.monotonic() + timeout
        while len(files := self.received_files()) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return files

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> StoreScp:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def make_tls_certificate(directory: Path, host: str = LOCALHOST) -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` and its key: (key.pem, cert.pem).

    RSA 2048 and SHA-256, as DCMTK's default BCP 195 profile accepts; the
    certificate is its own CA, so a client trusts it with ``+cf cert.pem``
    (DCMTK) or ``ssl.SSLContext.load_verify_locations`` (Python).
    """
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.IPAddress(ipaddress.ip_address(host)),
                    x509.DNSName("localhost"),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path
