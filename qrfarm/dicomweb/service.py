"""A DICOMweb service (PS3.18) and the guarded HTTP client that reaches it.

The base URL is checked where it enters (:func:`check_base_url`; the caller
also passes its host through the outbound allow-list). The client made here
goes nowhere else: no proxy from the environment, no redirect to another
origin (refused before any connection there), a connect and a read timeout
on every request, and no retries of its own (a job's retries are the job
runner's, scheduled in the database).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import requests
import urllib3
from dicomweb_client import DICOMwebClient
from requests.auth import AuthBase, HTTPBasicAuth

from qrfarm.errors import (
    DicomWebError,
    DicomWebRedirectRefused,
    DicomWebResponseError,
    InvalidNode,
    QrfarmError,
)

log = logging.getLogger(__name__)

AuthKind = Literal["none", "bearer", "basic"]
AUTH_KINDS: tuple[AuthKind, ...] = ("none", "bearer", "basic")
MAX_URL_LENGTH = 2048
# A secret file larger than this is not a token or a password.
MAX_SECRET_BYTES = 16 << 10
# Same-origin redirects followed at most this many times.
MAX_REDIRECTS = 3
# A QIDO-RS or STOW-RS answer (JSON, read whole by dicomweb-client) larger
# than this, by its Content-Length, is refused before it is read: a page of
# QIDO-RS answers (qrfarm.dicomweb.qido.PAGE_SIZE) is a few MiB at most.
MAX_JSON_BYTES = 64 << 20


def check_base_url(url: str, what: str = "DICOMweb URL") -> SplitResult:
    """The parts of ``url`` if it can be a DICOMweb base URL; else InvalidNode
    naming the rule it breaks. Only http and https; no credentials, query or
    fragment in it (credentials go in the node's auth settings, where they are
    never shown)."""
    if len(url) > MAX_URL_LENGTH:
        raise InvalidNode(f"{what}: longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise InvalidNode(f"{what}: contains white space or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a port out of range
    except ValueError as exc:
        raise InvalidNode(f"{what}: not a valid URL ({exc})") from exc
    if parts.scheme not in ("http", "https"):
        raise InvalidNode(f"{what}: the scheme must be http or https, not {parts.scheme!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidNode(f"{what}: credentials in the URL are not accepted; use the node's auth")
    if not host:
        raise InvalidNode(f"{what}: names no host")
    if parts.query or parts.fragment:
        raise InvalidNode(f"{what}: a base URL has no query or fragment")
    return parts


def url_host(url: str) -> str:
    """The host of a checked base URL (what the outbound allow-list is asked about)."""
    return str(check_base_url(url).hostname)


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


@dataclass(frozen=True)
class WebTimeouts:
    connect_s: float = 10.0
    # Longest wait for the next bytes of an answer (a stalled server).
    read_s: float = 60.0


@dataclass(frozen=True)
class WebService:
    """Where a DICOMweb service is and how to authenticate; the secret is read
    from ``secret_file`` only when a client is made, and never shown."""

    base_url: str
    auth: AuthKind = "none"
    username: str | None = None
    secret_file: Path | None = field(default=None, repr=True)

    def __post_init__(self) -> None:
        check_base_url(self.base_url)
        if self.auth not in AUTH_KINDS:
            raise InvalidNode(
                f"DICOMweb auth {self.auth!r}: must be one of {', '.join(AUTH_KINDS)}"
            )
        if self.auth == "basic" and not self.username:
            raise InvalidNode("DICOMweb basic auth needs a user name")
        if self.auth != "none" and self.secret_file is None:
            raise InvalidNode(f"DICOMweb {self.auth} auth needs a secret file")
        if self.auth == "none" and (self.username or self.secret_file):
            raise InvalidNode("DICOMweb auth is none: no user name or secret file is used")

    @property
    def root(self) -> str:
        """The base URL without a trailing slash (dicomweb-client adds its paths)."""
        return self.base_url.rstrip("/")

    def __str__(self) -> str:
        return self.root


class _Bearer(AuthBase):
    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "Bearer(***)"


def _read_secret(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        # The file's name, never its content.
        raise InvalidNode(f"DICOMweb secret file {path} cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_SECRET_BYTES:
        raise InvalidNode(f"DICOMweb secret file {path}: over {MAX_SECRET_BYTES} bytes")
    try:
        secret = data.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise InvalidNode(f"DICOMweb secret file {path}: not UTF-8 text") from exc
    if not secret or any(ord(c) < 0x20 for c in secret):
        raise InvalidNode(f"DICOMweb secret file {path}: empty, or with control characters")
    return secret


class GuardedSession(requests.Session):
    """A session that stays with one origin: a redirect elsewhere raises
    DicomWebRedirectRefused from the response hook, before requests follows it."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.origin = _origin(base_url)
        # No HTTP(S)_PROXY, .netrc or CA bundle from the environment: the
        # connection goes to the checked host, with the checked credentials.
        self.trust_env = False
        self.max_redirects = MAX_REDIRECTS
        self.hooks["response"].append(self._check_redirect)
        self.hooks["response"].append(self._check_size)

    def _check_size(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if not media.endswith("json"):
            return  # WADO-RS parts are streamed to disk (qrfarm.dicomweb.wado)
        try:
            length = int(response.headers.get("content-length", "0"))
        except ValueError:
            length = 0
        if length > MAX_JSON_BYTES:
            response.close()
            raise DicomWebResponseError(
                f"a DICOMweb answer of {length} bytes, over {MAX_JSON_BYTES}: not read"
            )
        # The hook runs before requests reads the body: read it here, counting,
        # since a chunked answer (or one longer than it announced) has no
        # length to check first. dicomweb-client then parses what was read.
        chunks: list[bytes] = []
        total = 0
        for chunk in response.iter_content(64 << 10):
            total += len(chunk)
            if total > MAX_JSON_BYTES:
                response.close()
                raise DicomWebResponseError(
                    f"a DICOMweb answer longer than {MAX_JSON_BYTES} bytes: not read further"
                )
            chunks.append(chunk)
        response._content = b"".join(chunks)

    def _check_redirect(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        if not response.is_redirect:
            return
        target = urljoin(response.url, response.headers.get("location", ""))
        if _origin(target) != self.origin:
            response.close()
            scheme, host, port = _origin(target)
            raise DicomWebRedirectRefused(
                f"the DICOMweb service redirected to {scheme}://{host}:{port}, another origin"
                f" than {self.origin[0]}://{self.origin[1]}:{self.origin[2]}; not followed"
            )


@dataclass(frozen=True)
class WebClient:
    """dicomweb-client on a guarded session, and that session for what the
    library cannot stream (WADO-RS: qrfarm.dicomweb.wado)."""

    service: WebService
    client: DICOMwebClient
    session: GuardedSession
    timeout: tuple[float, float]

    @property
    def root(self) -> str:
        return self.service.root

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> WebClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_client(service: WebService, timeouts: WebTimeouts) -> WebClient:
    """A dicomweb-client for ``service`` on a GuardedSession (the caller has
    passed the URL's host through the outbound allow-list)."""
    # Their DEBUG lines write out each URL with its query string (patient
    # keys) and dicomweb-client's the request headers: never below INFO,
    # whatever the process logs at.
    for name in ("dicomweb_client", "urllib3.connectionpool"):
        library_log = logging.getLogger(name)
        if library_log.getEffectiveLevel() < logging.INFO:
            library_log.setLevel(logging.INFO)
    session = GuardedSession(service.root)
    if service.auth == "basic" and service.secret_file is not None:
        session.auth = HTTPBasicAuth(str(service.username), _read_secret(service.secret_file))
    elif service.auth == "bearer" and service.secret_file is not None:
        session.auth = _Bearer(_read_secret(service.secret_file))
    timeout = (timeouts.connect_s, timeouts.read_s)
    client = QidoClient(service.root, session=session, timeout=timeout)
    client.set_http_retry_params(retry=False)
    return WebClient(service, client, session, timeout)


class QidoClient(DICOMwebClient):
    """dicomweb-client, with query strings written as QIDO-RS servers read them.

    dicomweb-client percent-encodes every reserved character of a query
    value; Orthanc 1.10 with its DICOMweb plugin then takes ``%2A`` and
    ``%3F`` literally (``PatientID=P%2A`` matched nothing where ``P*``
    matched six studies). ``*``, ``?`` and ``,`` may stand unencoded in a
    query (RFC 3986 3.4), so they are sent so; everything else stays encoded.
    """

    def _http_get(
        self,
        url: str,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        stream: bool = False,
    ) -> Any:
        if params:
            pairs = []
            for key, value in params.items():
                values = value if isinstance(value, (list, tuple, set)) else [value]
                pairs += [f"{quote(str(key))}={quote(str(v), safe='*?,')}" for v in values]
            url = f"{url}?{'&'.join(pairs)}"
        return super()._http_get(url, None, headers, stream)


def http_error(exc: Exception, what: str) -> Exception:
    """A requests exception as qrfarm's: DicomWebError, retriable where it may pass;
    qrfarm's own errors (a refused redirect) pass through unchanged; any
    other is an answer that could not be read (DicomWebResponseError)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        status = exc.response.status_code
        reason = exc.response.reason or ""
        return DicomWebError(
            f"{what}: HTTP {status} {reason}".rstrip(),
            status=status,
            transient=status in (408, 429) or status >= 500,
        )
    if isinstance(exc, requests.Timeout):
        return DicomWebError(f"{what}: timed out", transient=True)
    if isinstance(exc, requests.ConnectionError):
        return DicomWebError(f"{what}: cannot connect ({type(exc).__name__})", transient=True)
    if isinstance(exc, requests.TooManyRedirects):
        return DicomWebError(f"{what}: more than {MAX_REDIRECTS} redirects", transient=False)
    if isinstance(exc, requests.RequestException):
        return DicomWebError(f"{what}: {type(exc).__name__}", transient=False)
    # urllib3's own, from a body read off the raw stream.
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        return DicomWebError(f"{what}: timed out", transient=True)
    if isinstance(exc, urllib3.exceptions.ProtocolError | urllib3.exceptions.SSLError):
        return DicomWebError(f"{what}: the connection broke ({type(exc).__name__})", transient=True)
    if isinstance(exc, urllib3.exceptions.HTTPError):
        return DicomWebError(f"{what}: {type(exc).__name__}", transient=False)
    if isinstance(exc, QrfarmError):
        return exc
    # Anything else came of reading the answer (dicomweb-client decoding JSON
    # or a body that is not what it should be): the answer is unusable.
    return DicomWebResponseError(f"{what}: the answer could not be read ({type(exc).__name__})")
