"""Where a C-GET's instances go: the farm's storage, one row per job and instance,
recorded as the storage SCP records (:func:`qrfarm.jobs.ingest.record_stored`)."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import InstanceSink, Status, StoreRequest
from qrfarm.dicom.identifiers import is_valid_uid
from qrfarm.dicom.sinks import check_whole
from qrfarm.errors import StorageError, StorageFull
from qrfarm.jobs.ingest import record_stored
from qrfarm.jobs.reconcile import expected_uids
from qrfarm.jobs.recording import Correlation, InstanceFacts, Match
from qrfarm.jobs.scope import keys_of, outside_move
from qrfarm.models import Job, MatchedBy
from qrfarm.storage import InstanceStorage

log = logging.getLogger(__name__)


class GetStore:
    def __init__(self, sessions: sessionmaker[Session], storage: InstanceStorage) -> None:
        self.sessions = sessions
        self.engine: Engine = sessions.kw["bind"]
        self.storage = storage

    def sink_for(self, job_id: int, calling_ae: str) -> InstanceSink:
        """The sink of one C-GET of ``job_id``: what the PACS sends is counted
        for the job only if it lies inside what the job asked for (its keys,
        and its expected list when one is known); else it is kept as an
        orphan naming the job and why, as the storage SCP does."""
        level, identifier, expected = self._scope(job_id)

        def belongs(facts: InstanceFacts) -> Correlation:
            refusal = outside_move(level, identifier, expected, keys_of(facts))
            if refusal is None:
                return Correlation([Match(job_id, MatchedBy.GET)])
            return Correlation([], claimed_job_id=job_id, refusal=refusal)

        def sink(request: StoreRequest) -> int:
            failure = check_whole(request)
            if failure is not None:
                return failure
            header = request.dataset()
            study = str(header.get("StudyInstanceUID", ""))
            series = str(header.get("SeriesInstanceUID", ""))
            if not (is_valid_uid(study) and is_valid_uid(series)):
                return Status.CANNOT_UNDERSTAND
            try:
                stored = self.storage.store(
                    study, series, request.sop_instance_uid, request.part10_bytes()
                )
            except (StorageFull, StorageError) as exc:
                log.error("C-GET instance %s not stored: %s", request.sop_instance_uid, exc)
                return Status.OUT_OF_RESOURCES
            facts = InstanceFacts(
                sop_class_uid=request.sop_class_uid,
                sop_instance_uid=request.sop_instance_uid,
                study_instance_uid=study,
                series_instance_uid=series,
                patient_id=str(header.get("PatientID", "")),
                transfer_syntax=request.transfer_syntax,
                calling_ae=calling_ae,
                called_ae=None,
                peer_host=None,
                originator_ae=None,
                originator_message_id=None,
                size=stored.size,
            )
            try:
                record_stored(
                    self.engine,
                    self.sessions,
                    self.storage,
                    facts,
                    stored,
                    lambda _: belongs(facts),
                )
            except SQLAlchemyError as exc:
                log.error("C-GET instance %s not recorded: %s", request.sop_instance_uid, exc)
                return Status.OUT_OF_RESOURCES
            return Status.SUCCESS

        return sink

    def _scope(self, job_id: int) -> tuple[str, dict[str, Any], frozenset[str] | None]:
        """The job's level, identifier and expected list (None: no list)."""
        with self.sessions() as session:
            job = session.get_one(Job, job_id)
            expected = frozenset(expected_uids(session, job_id)) if job.expected_count else None
            return job.level, dict(job.identifier), expected
