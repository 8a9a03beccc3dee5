"""The protocol layer: pynetdicom and pydicom only, no database, no queue.

Typical use::

    from qrfarm.dicom import Connection, Level, Node, Operation, Root, build_query_identifier
    from qrfarm.dicom.contexts import qr_contexts

    node = Node("ORTHANC", "127.0.0.1", 4242)
    with Connection.open(node, qr_contexts([Operation.FIND])) as conn:
        result = conn.find(build_query_identifier(Root.STUDY, Level.STUDY, {"PatientID": "P1"}))
        for match in result.matches:
            print(match.StudyInstanceUID)
"""

from .connection import Connection, InstanceSink, StoreRequest, Timeouts
from .contexts import DEFAULT_STORAGE_SOP_CLASSES, qr_contexts, storage_contexts
from .identifiers import (
    DEFAULT_RETURN_KEYS,
    build_query_identifier,
    build_retrieve_identifier,
    parse_key,
    validate_query_identifier,
    validate_retrieve_identifier,
)
from .model import UNIQUE_KEY, Level, Operation, Root, sop_class
from .node import Node, TlsSettings
from .responses import OperationResult, Response, Status, StatusCategory, StoredInstance
from .sinks import DirectorySink, MemorySink

__all__ = [
    "DEFAULT_RETURN_KEYS",
    "DEFAULT_STORAGE_SOP_CLASSES",
    "UNIQUE_KEY",
    "Connection",
    "DirectorySink",
    "InstanceSink",
    "Level",
    "MemorySink",
    "Node",
    "Operation",
    "OperationResult",
    "Response",
    "Root",
    "Status",
    "StatusCategory",
    "StoreRequest",
    "StoredInstance",
    "Timeouts",
    "TlsSettings",
    "build_query_identifier",
    "build_retrieve_identifier",
    "parse_key",
    "qr_contexts",
    "sop_class",
    "storage_contexts",
    "validate_query_identifier",
    "validate_retrieve_identifier",
]
