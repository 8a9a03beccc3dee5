"""Settings: environment variables ``QRFARM_*`` and an optional TOML file.

The file (``QRFARM_CONFIG``, default ``./qrfarm.toml`` when present) names
the PACS nodes::

    ae_title = "QRFARM"
    allowed_hosts = ["127.0.0.1", "10.20.0.0/16"]

    [nodes.orthanc]
    ae_title = "ORTHANC"
    host = "127.0.0.1"
    port = 4242

Every outbound target passes the allow-list here, where targets enter, so
that nothing in the protocol layer can be pointed elsewhere by accident.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import TargetNotAllowed


class NodeSettings(BaseModel):
    """One configured PACS node."""

    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    max_associations: int = Field(default=4, ge=1)
    # Calling AE titles this PACS sends C-STOREs from, besides ae_title.
    store_ae_titles: list[str] = []
    # Hosts its C-STOREs come from: addresses, CIDR networks, host names
    # (resolved); empty: its own host. any_store_host admits its AE titles
    # from any address (a PACS behind NAT): an explicit opt-out.
    store_hosts: list[str] = []
    any_store_host: bool = False
    tls: bool = False
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # What it is to the farm: "source", "destination" or "both".
    role: str = "both"
    # DICOMweb: its base URL, auth ("none", "bearer", "basic") with a user
    # name and the file holding the secret, and which transport its jobs
    # ("retrieve_transport") and deliveries to it ("delivery_transport") use.
    dicomweb_url: str | None = None
    dicomweb_auth: Literal["none", "bearer", "basic"] = "none"
    dicomweb_username: str | None = None
    dicomweb_secret_file: Path | None = None
    retrieve_transport: Literal["dimse", "dicomweb"] = "dimse"
    delivery_transport: Literal["dimse", "dicomweb"] = "dimse"


def _config_file() -> Path | None:
    explicit = os.environ.get("QRFARM_CONFIG")
    if explicit:
        return Path(explicit)
    default = Path("qrfarm.toml")
    return default if default.is_file() else None


class Settings(BaseSettings):
    """Everything qrfarm reads from its environment, made once by an entry point."""

    model_config = SettingsConfigDict(env_prefix="QRFARM_", extra="forbid")

    ae_title: str = "QRFARM"
    # Hosts, IP addresses or networks qrfarm may connect to; "*" admits any.
    allowed_hosts: Annotated[list[str], NoDecode] = ["*"]
    # From the TOML file, or QRFARM_NODES as JSON ({"name": {"ae_title": ...}}).
    nodes: Annotated[dict[str, NodeSettings], NoDecode] = {}
    # The database of record: SQLite by default (one machine), PostgreSQL in a farm.
    database_url: str = "sqlite:///qrfarm.db"
    # Where received instances are stored: <root>/<study>/<series>/<sop>.dcm.
    storage_root: Path = Path("qrfarm-storage")
    scp_ae_title: str = "QRFARMSCP"
    scp_host: str = "127.0.0.1"
    scp_port: int = Field(default=11113, ge=0, le=65535)
    scp_max_associations: int = Field(default=32, ge=1)
    # Larger instances are refused (0xA700 with an Error Comment naming both
    # sizes) rather than filling the disk; deflated ones may not inflate past
    # it either. Received data sets go to disk as they arrive, whatever this is.
    scp_max_instance_bytes: int = Field(default=8 << 30, ge=1)
    # The largest PDU the SCP takes (announced in the association, and a
    # longer one ends the connection): what it holds in memory per association.
    scp_max_pdu: int = Field(default=1 << 20, ge=1 << 14)
    # A connection that has not asked for an association within this is closed,
    # and only this many per host may be waiting to: anonymous connections hold
    # no slot of scp_max_associations, which are taken only on admission.
    scp_associate_timeout_s: float = Field(default=5.0, gt=0)
    scp_max_pending_per_host: int = Field(default=8, ge=1)
    # Proxies in front of the SCP that send the PROXY protocol v2 header
    # (HAProxy's send-proxy-v2): addresses, networks or names. Connections
    # from them must begin with it; the PACS's own address is admitted.
    scp_proxy_protocol_from: Annotated[list[str], NoDecode] = []
    # DICOM TLS on a port of its own beside scp_port (unset: none), for PACS
    # that store over TLS: the SCP's certificate chain and key (both needed).
    # With a CA file every peer must present a client certificate that CA
    # signed; without, any TLS peer connects and is admitted, as on the plain
    # port, by AE title and host.
    scp_tls_port: int | None = Field(default=None, ge=0, le=65535)
    scp_tls_cert_file: Path | None = None
    scp_tls_key_file: Path | None = None
    scp_tls_ca_file: Path | None = None
    # Storage SCP processes sharing one listening socket (qrfarm scp
    # --processes): one per core spreads many associations over the cores,
    # past one process's GIL.
    scp_processes: int = Field(default=1, ge=1, le=64)
    # How the SCP receives: "asyncio" (one event loop speaking the upper layer
    # for storage only) or "pynetdicom" (its association threads).
    scp_receive_path: Literal["asyncio", "pynetdicom"] = "asyncio"
    # The calling AE title of qrfarm's own health probes: the SCP answers its
    # C-ECHO and refuses it any C-STORE.
    probe_ae_title: str = "QRFARMPROBE"
    # Answer a C-STORE only once the file is fsync'ed (off only for tests of speed).
    scp_fsync: bool = True
    # The late window, one setting for all three: how long after a move's
    # attempt ends its Message ID still names it, its UIDs still match
    # arrivals that name no originator, and the ID is not handed out again.
    move_late_window_s: float = Field(default=3600.0, gt=0)
    # The broker that carries work to the workers: Redis in a farm. Unset: an
    # embedded transport in data_dir (no other service needed).
    broker_url: str | None = None
    # Where the embedded broker, the association permits and serve's files live.
    data_dir: Path = Path("qrfarm-data")
    # Where a DICOMweb node's secret file must lie when it is named through
    # the REST API (unset: <data_dir>/secrets): a remote admin must not have
    # a worker read any file and send it to a URL as a password.
    dicomweb_secrets_dir: Path | None = None
    # Per-node association permits across the farm: Redis when set (defaults
    # to the broker when that is Redis), else lock files in data_dir.
    permits_redis_url: str | None = None
    # A Redis permit lives this long unless renewed; its holder renews it
    # every 2 s (or four times per TTL), in use or idle, and stops its
    # operation when it cannot. Only a dead holder's permit waits this long.
    permit_ttl_s: float = Field(default=60.0, gt=0)
    # A node that refused an association is held below that many; after each
    # such quiet period without a refusal it is tried with one more.
    association_probe_after_s: float = Field(default=600.0, gt=0)
    max_attempts: int = Field(default=5, ge=1)
    backoff_base_s: float = Field(default=2.0, gt=0)
    backoff_cap_s: float = Field(default=300.0, gt=0)
    # A running job's lease; a worker that dies loses it after this long.
    lease_ttl_s: float = Field(default=60.0, ge=2)
    reconcile_grace_s: float = Field(default=10.0, ge=0)
    # A move or get with instances missing asks again for exactly those while
    # attempts remain, before it is called partial.
    retry_partial: bool = True
    # A move to another node: how long to wait for the destination's Storage
    # Commitment report (it comes to the storage SCP) before verifying by C-FIND.
    commitment_report_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    # A destination last seen not to commit is asked again after this long
    # (Storage Commitment may have been switched on there).
    commitment_recheck_after_s: float = Field(default=86_400.0, gt=0)
    # A forward sends over at most this many associations at once (within the
    # destination's own limit, across the farm).
    forward_associations: int = Field(default=4, ge=1, le=64)
    scheduler_interval_s: float = Field(default=2.0, gt=0)
    redispatch_after_s: float = Field(default=120.0, gt=0)
    # The audit trail: rows older than this many days are removed by the
    # scheduler (0: kept for ever). Six years by default, as HIPAA keeps records.
    audit_retention_days: int = Field(default=2190, ge=0)
    # Webhooks: the Standard Webhooks secret that signs them ("whsec_" and a
    # base64 key; a job with a callback URL is refused while it is unset), and
    # how long to keep trying. Their hosts pass allowed_hosts, stricter for
    # addresses inside (qrfarm.notify.targets).
    webhook_secret: SecretStr | None = None
    webhook_max_attempts: int = Field(default=12, ge=1)
    webhook_backoff_base_s: float = Field(default=2.0, gt=0)
    webhook_backoff_cap_s: float = Field(default=600.0, gt=0)
    # Connecting, and each read and write; the deadline bounds a whole
    # attempt, resolution included; at most this much of an answer is read.
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_deadline_s: float = Field(default=30.0, gt=0)
    webhook_max_response_bytes: int = Field(default=64 << 10, ge=1)
    # Attempts under way at once, in all and per receiver (scheme, host, port).
    webhook_concurrency: int = Field(default=16, ge=1)
    webhook_per_destination: int = Field(default=2, ge=1)
    # CA certificates for https receivers; unset: the system's.
    webhook_ca_file: Path | None = None
    # The REST API (qrfarm api, part of qrfarm serve).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8080, ge=0, le=65535)
    # HTTPS: the API's certificate chain and key (both, or neither: plain
    # HTTP, for loopback or behind a TLS proxy).
    api_tls_cert_file: Path | None = None
    api_tls_key_file: Path | None = None
    # Request bodies past this are answered 413 before anything reads them
    # further or parses them, token or not (by Content-Length, or by counting a
    # chunked body as it streams): the largest body a route takes, a node or a
    # prefetch rule, is a few KiB.
    api_max_body_bytes: int = Field(default=1 << 20, ge=1024)
    # Requests per second each token may make on average, and how many it may
    # make at once (a token bucket per token; anonymous callers have one per
    # address). Kept in Redis when the farm has one (permits_redis_url), so
    # every API process spends from the same bucket; else in the process.
    # 0: no limit.
    api_rate_per_s: float = Field(default=20.0, ge=0)
    api_rate_burst: int = Field(default=100, ge=1)
    # The farm's metrics without a token on a port of their own, for a scraper
    # on an internal network (bound to metrics_host); /metrics on the API
    # port always needs a token. Unset: only that.
    api_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # The operator console (/console on the API): the key that signs its
    # session cookies (set it when several API processes serve one console;
    # unset: a random key per process, so sessions end when it restarts), and
    # how long a sign-in lasts.
    console_secret: SecretStr | None = None
    console_session_s: int = Field(default=8 * 3600, ge=60, le=7 * 24 * 3600)
    # The HL7 v2 MLLP listener (qrfarm hl7): which stored prefetch rule an
    # order or scheduling message starts, by message type ("ORM^O01"), and
    # the rule for any other supported type.
    hl7_host: str = "127.0.0.1"
    hl7_port: int = Field(default=2575, ge=0, le=65535)
    hl7_rules: dict[str, str] = {}
    hl7_default_rule: str | None = None
    # Who may send: addresses and CIDR networks of the senders (a RIS, an
    # interface engine); a connection from elsewhere is closed before a byte
    # is read. "*" admits any (the listener binds to loopback by default).
    hl7_allowed_sources: Annotated[list[str], NoDecode] = ["*"]
    # A connection that sends nothing (or no whole message) for this long is
    # closed: senders keep connections open between messages and reconnect,
    # and an idle one must not hold a slot for ever.
    hl7_idle_timeout_s: float = Field(default=300.0, gt=0)
    # Connections open at once, in all and from one address; one past either
    # is closed at once, so one sender cannot take every slot.
    hl7_max_connections: int = Field(default=64, ge=1)
    hl7_max_connections_per_source: int = Field(default=8, ge=1)
    # MLLP over TLS: the listener's certificate chain and key (both, or
    # neither: plain MLLP). With a CA file, senders must present a client
    # certificate that CA signed.
    hl7_tls_cert_file: Path | None = None
    hl7_tls_key_file: Path | None = None
    hl7_tls_ca_file: Path | None = None
    # Observability: JSON log lines, this process's Prometheus metrics on a
    # port (unset: not served; the API serves the farm's at /metrics), and
    # an OTLP/HTTP endpoint for traces (OTEL_EXPORTER_OTLP_ENDPOINT works too).
    log_format: Literal["text", "json"] = "text"
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    otlp_endpoint: str | None = None
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    connect_timeout: float = 10.0

    @field_validator(
        "allowed_hosts", "scp_proxy_protocol_from", "hl7_allowed_sources", mode="before"
    )
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        # The environment gives "127.0.0.1,10.0.0.0/8"; a TOML file gives a list.
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # "whsec_" and the key in base64, 24 to 64 bytes, as Standard Webhooks has it.
        if value is not None:
            text = value.get_secret_value()
            try:
                key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
            except binascii.Error:
                key = b""
            if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
                raise ValueError(
                    "a webhook secret is 'whsec_' and a base64 key of 24 to 64 bytes"
                    " (qrfarm webhook-secret prints a new one)"
                )
        return value

    @field_validator("nodes", mode="before")
    @classmethod
    def _nodes_json(cls, value: object) -> object:
        # An empty variable (as docker-compose passes an unset one) means none.
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def check_target(self, host: str) -> None:
        """Raise TargetNotAllowed unless ``host`` (and every address it resolves to) is allowed."""
        if "*" in self.allowed_hosts:
            return
        if host in self.allowed_hosts:
            return
        networks = []
        for entry in self.allowed_hosts:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue
        addresses = _resolve(host)
        if addresses and all(any(a in n for n in networks) for a in addresses):
            return
        allowed = ", ".join(self.allowed_hosts) or "nothing"
        raise TargetNotAllowed(
            f"host {host!r} is not in the outbound allow-list (QRFARM_ALLOWED_HOSTS: {allowed})"
        )


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):  # UnicodeError: a label empty or over 63 characters
        return []
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def broker_config(settings: Settings) -> tuple[str, dict[str, Any]]:
    """The Celery broker URL and transport options both producers and workers use."""
    if settings.broker_url:
        options: dict[str, Any] = {}
        if settings.broker_url.startswith(("redis://", "rediss://")):
            # An unacknowledged task comes back after this; retries are rows
            # in the database, so nothing waits this long in a worker.
            options["visibility_timeout"] = 3600
            # One list per priority lane (qrfarm.jobs.priority.BROKER_STEPS,
            # qrfarm.jobs.dispatch.broker_keys): urgent work is popped first.
            options["priority_steps"] = [0, 3, 6, 9]
            options["sep"] = "\x06\x16"
        return settings.broker_url, options
    folder = (settings.data_dir / "broker").resolve()
    (folder / "queue").mkdir(parents=True, exist_ok=True)
    (folder / "processed").mkdir(parents=True, exist_ok=True)
    (folder / "control").mkdir(parents=True, exist_ok=True)
    return "filesystem://localhost//", {
        "control_folder": str(folder / "control"),
        "data_folder_in": str(folder / "queue"),
        "data_folder_out": str(folder / "queue"),
        "processed_folder": str(folder / "processed"),
        "store_processed": False,
    }


def permits_redis_url(settings: Settings) -> str | None:
    if settings.permits_redis_url:
        return settings.permits_redis_url
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        return settings.broker_url
    return None
