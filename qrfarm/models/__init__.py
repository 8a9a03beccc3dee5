"""The database of record: SQLAlchemy 2.x models, engines, Alembic migrations.

Imports nothing of qrfarm outside this package: SQLAlchemy and Alembic only.
"""

from .audit import AuditEvent
from .base import Base, table, utcnow
from .batches import Batch, BatchRow
from .delivery import CommitmentRequest, DeliveredInstance, NodeRole, VerifiedBy
from .forwarding import FarmRelay, Forward, ForwardedInstance, ForwardOptions, Pseudonym
from .instances import MatchedBy, OrphanInstance, ReceivedInstance
from .integration import (
    PREFETCH_ENDED,
    ApiToken,
    ConsoleSession,
    DeliveryState,
    Prefetch,
    PrefetchRule,
    PrefetchState,
    WebhookAttempt,
    WebhookDelivery,
)
from .jobs import (
    ENDED_STATES,
    Attempt,
    DimseResponse,
    ExpectedInstance,
    FindResult,
    Job,
    JobKind,
    JobState,
    MoveMessageId,
)
from .migrate import upgrade
from .nodes import NodeProfile, NodeRecord
from .retrievals import RETRIEVAL_ENDED, Retrieval, RetrievalState
from .session import make_engine, session_factory

__all__ = [
    "ENDED_STATES",
    "PREFETCH_ENDED",
    "RETRIEVAL_ENDED",
    "ApiToken",
    "Attempt",
    "AuditEvent",
    "Base",
    "Batch",
    "BatchRow",
    "CommitmentRequest",
    "ConsoleSession",
    "DeliveredInstance",
    "DeliveryState",
    "DimseResponse",
    "ExpectedInstance",
    "FarmRelay",
    "FindResult",
    "Forward",
    "ForwardOptions",
    "ForwardedInstance",
    "Job",
    "JobKind",
    "JobState",
    "MatchedBy",
    "MoveMessageId",
    "NodeProfile",
    "NodeRecord",
    "NodeRole",
    "OrphanInstance",
    "Prefetch",
    "PrefetchRule",
    "PrefetchState",
    "Pseudonym",
    "ReceivedInstance",
    "Retrieval",
    "RetrievalState",
    "VerifiedBy",
    "WebhookAttempt",
    "WebhookDelivery",
    "make_engine",
    "session_factory",
    "table",
    "upgrade",
    "utcnow",
]
