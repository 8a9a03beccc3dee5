"""OpenTelemetry traces: one trace per job, from its submit through the task,
the association, the responses and every C-STORE recorded for it.

A job's row keeps the W3C ``traceparent`` of its submit span; the worker and
the storage SCP start their spans as its children, so one trace spans the
processes. Spans are exported (OTLP over HTTP) when an endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable, or
``QRFARM_OTLP_ENDPOINT``); otherwise the tracer is OpenTelemetry's no-op one.

Spans carry no patient data: an exception is recorded by its type alone (its
message may quote a value: a pydicom error, an identifier refused), and UID
attributes (keys ending ``_uid``) are kept only while the process logs at
DEBUG. Names, IDs and birth dates are never given to a span.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import Attributes


def uids_allowed() -> bool:
    """UIDs go into spans only while qrfarm logs at DEBUG."""
    return logging.getLogger("qrfarm").isEnabledFor(logging.DEBUG)


def _allowed(attributes: Attributes) -> Attributes:
    if not attributes or uids_allowed():
        return attributes
    return {k: v for k, v in attributes.items() if not k.endswith(("_uid", "_uids"))}


class SafeTracer(trace.Tracer):
    """An OpenTelemetry tracer, with exceptions recorded by type and UIDs at DEBUG only."""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self._inner.start_span(
            name, context, kind, _allowed(attributes), links, start_time, False, False
        )

    @contextmanager  # OpenTelemetry's own decorator is private; the same protocol
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        with self._inner.start_as_current_span(
            name,
            context,
            kind,
            _allowed(attributes),
            links,
            start_time,
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=end_on_exit,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                kind_of = f"{type(exc).__module__}.{type(exc).__qualname__}"
                if record_exception:
                    span.add_event("exception", {"exception.type": kind_of})
                if set_status_on_exception:
                    span.set_status(Status(StatusCode.ERROR, kind_of))
                raise


tracer: trace.Tracer = SafeTracer(trace.get_tracer("qrfarm"))


def configure(service: str, endpoint: str | None = None) -> bool:
    """Export this process's spans when an OTLP endpoint is configured."""
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": f"qrfarm-{service}"}))
    url = endpoint.rstrip("/") + "/v1/traces"
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
    trace.set_tracer_provider(provider)
    return True


def enabled() -> bool:
    """Whether spans go anywhere (so that costly attributes can be skipped)."""
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, to store with a job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def context_of(traceparent: str | None) -> Context | None:
    """A parent context from a stored traceparent (None: a new trace)."""
    if not traceparent:
        return None
    return propagate.extract({"traceparent": traceparent})
