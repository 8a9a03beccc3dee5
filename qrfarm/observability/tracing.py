"""OpenTelemetry traces: one trace per job, from its submit through the task,
the association, the responses and every C-STORE recorded for it.

A job's row keeps the W3C ``traceparent`` of its submit span; the worker and
the storage SCP start their spans as its children, so one trace spans the
processes. Spans are exported (OTLP over HTTP) when an endpoint is set
(``OTEL_EXPORTER_OTLP_ENDPOINT``, the standard variable, or
``QRFARM_OTLP_ENDPOINT``); otherwise the tracer is OpenTelemetry's no-op one.
"""

from __future__ import annotations

import os

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

tracer = trace.get_tracer("qrfarm")


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
