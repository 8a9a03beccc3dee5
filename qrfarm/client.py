"""The producer's Python API: submit jobs, wait for them, read their results.

from qrfarm.client import Client
from qrfarm.dicom import Level

client = Client.from_settings()
job = client.move("pacs1", Level.STUDY, {"StudyInstanceUID": "1.2.3"})
summary = client.wait(job, timeout=600)
print(summary["state"], summary["recorded"], summary["missing_uids"])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from .config import Settings, broker_config
from .delivery import forward as forwarding
from .delivery import pseudonymise
from .dicom import Level, Root
from .dicom.identifiers import KeyValue
from .errors import DatabaseNotReady, WaitTimedOut
from .jobs import bulk, control
from .jobs.announce import can_listen, wait_for_end
from .jobs.bulk import BulkResult, JobFilter
from .jobs.dispatch import Dispatcher, celery_dispatcher
from .jobs.queries import find_results, job_state, job_summary, list_jobs
from .jobs.submit import JobRequest, SubmitRules, submit
from .models import ENDED_STATES, JobKind, JobState, make_engine, session_factory
from .models.migrate import is_current
from .nodes import echo as node_echo
from .notify.targets import validate_callback_url
from .workflow import audit, batch_report, batches, bulk_audit
from .workflow import prefetch as prefetches
from .workflow import retrieve as retrievals
from .workflow import rules as prefetch_rules
from .workflow.identity import PatientIdentifier
from .workflow.prefetch_summary import prefetch_summary


class Client:
    def __init__(self, settings: Settings, engine: Engine, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.engine = engine
        self.sessions: sessionmaker[Session] = session_factory(engine)
        self.dispatcher = dispatcher

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        settings = settings or Settings()
        engine = make_engine(settings.database_url)
        if not is_current(engine):
            raise DatabaseNotReady("the database is not at the latest schema: qrfarm db upgrade")
        broker, options = broker_config(settings)
        return cls(settings, engine, celery_dispatcher(broker, options))

    def close(self) -> None:
        self.engine.dispose()

    def submit(self, request: JobRequest) -> int:
        return submit(
            self.sessions, request, self.dispatcher, SubmitRules.from_settings(self.settings)
        )

    def find(
        self,
        node: str,
        level: Level,
        keys: Mapping[str, KeyValue],
        return_keys: Iterable[str] = (),
        *,
        root: Root = Root.STUDY,
        **kw: Any,
    ) -> int:
        return self.submit(JobRequest(JobKind.FIND, node, level, root, keys, return_keys, **kw))

    def move(
        self,
        node: str,
        level: Level,
        keys: Mapping[str, KeyValue],
        *,
        root: Root = Root.STUDY,
        destination: str | None = None,
        **kw: Any,
    ) -> int:
        return self.submit(
            JobRequest(JobKind.MOVE, node, level, root, keys, destination=destination, **kw)
        )

    def get(
        self,
        node: str,
        level: Level,
        keys: Mapping[str, KeyValue],
        *,
        root: Root = Root.STUDY,
        **kw: Any,
    ) -> int:
        return self.submit(JobRequest(JobKind.GET, node, level, root, keys, **kw))

    def status(self, job_id: int, *, responses: bool = False) -> dict[str, Any]:
        with self.sessions() as session:
            return job_summary(session, job_id, responses=responses)

    def results(self, job_id: int) -> list[dict[str, Any]]:
        """A find job's answers, as DICOM JSON."""
        with self.sessions() as session:
            return find_results(session, job_id)

    def wait(
        self, job_id: int, timeout: float | None = None, poll_s: float = 0.2
    ) -> dict[str, Any]:
        """Block until the job ends; its summary. Raises WaitTimedOut after ``timeout``.

        On PostgreSQL the end is heard the moment it commits (LISTEN/NOTIFY,
        checked again every second all the same); on SQLite the state is
        polled every ``poll_s``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if can_listen(self.engine):
            ended = wait_for_end(self.engine, job_id, deadline)
        else:
            ended = _poll(lambda: self._has_ended(job_id), deadline, poll_s)
        summary = self.status(job_id)
        if not ended and summary["state"] not in ENDED_STATES:
            raise WaitTimedOut(f"job {job_id} is still {summary['state']} after {timeout} s")
        return summary

    def progress(
        self, job_id: int, *, timeout: float | None = None, poll_s: float = 0.25
    ) -> Iterator[dict[str, Any]]:
        """The job's summary (without responses) each time its state, its progress
        (the latest pending response's counts, written by its worker about once a
        second) or its recorded count changes; the last one yielded is the job as
        it ended, or as it was when ``timeout`` ran out.

        What ``--wait`` shows as its progress bar and the console streams to
        the browser.
        """
        return self.progress_many([job_id], timeout=timeout, poll_s=poll_s)

    def progress_many(
        self, job_ids: Iterable[int], *, timeout: float | None = None, poll_s: float = 0.25
    ) -> Iterator[dict[str, Any]]:
        """``progress`` of several jobs at once: each job's summary first, then each
        change, until every one has ended (or ``timeout`` ran out)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for changed, live in self.progress_rounds(job_ids):
            yield from changed
            if not live or (deadline is not None and time.monotonic() >= deadline):
                return
            time.sleep(poll_s)

    def progress_rounds(
        self, job_ids: Iterable[int]
    ) -> Iterator[tuple[list[dict[str, Any]], bool]]:
        """One look at the jobs per step, without waiting between steps (the caller
        paces them): the summaries that changed since the last step (all of them
        at first), and whether any job has yet to end. Ends once none has."""
        seen: dict[int, tuple[Any, ...]] = {}
        live = list(dict.fromkeys(job_ids))
        while live:
            changed = []
            for job_id in list(live):
                summary = self.status(job_id)
                now = (summary["state"], summary["recorded"], *summary["progress"].values())
                if seen.get(job_id) != now:
                    seen[job_id] = now
                    changed.append(summary)
                if summary["state"] in ENDED_STATES:
                    live.remove(job_id)
            yield changed, bool(live)

    def jobs(self, *, state: JobState | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The latest jobs, newest first (summaries without responses)."""
        with self.sessions() as session:
            return list_jobs(session, state=state, limit=limit)

    def _has_ended(self, job_id: int) -> bool:
        # The state alone while waiting: the whole summary costs several queries.
        with self.sessions() as session:
            return job_state(session, job_id) in ENDED_STATES

    def cancel(self, job_id: int) -> str:
        """Ask for the job to stop: a queued one ends at once, a running one gets
        C-CANCEL from its worker; the job's state now."""
        return control.cancel(self.sessions, job_id).value

    def prefetch(
        self,
        patient_id: str,
        rule: str | prefetch_rules.Rule,
        *,
        current_accession: str | None = None,
        callback_url: str | None = None,
        external_reference: str | None = None,
        patient_identifiers: Iterable[tuple[str, str | None]] = (),
    ) -> int:
        """Fetch a patient's priors by a stored rule's name or a Rule; the prefetch's id.

        ``patient_identifiers``: every (ID, issuer) of the patient, ``patient_id``
        among them; each node is searched with the one of its own issuer."""
        identifiers = tuple(
            PatientIdentifier(id=pid, issuer=issuer) for pid, issuer in patient_identifiers
        )
        with self.sessions() as session:
            chosen = prefetch_rules.load_rule(session, rule) if isinstance(rule, str) else rule
        return prefetches.start(
            self.sessions,
            prefetches.PrefetchRequest(
                patient_id=patient_id,
                rule=chosen,
                rule_name=rule if isinstance(rule, str) else None,
                current_accession=current_accession,
                callback_url=callback_url,
                external_reference=external_reference,
                identifiers=identifiers,
            ),
            self.dispatcher,
            SubmitRules.from_settings(self.settings),
        )

    def prefetch_status(self, prefetch_id: int) -> dict[str, Any]:
        with self.sessions() as session:
            return prefetch_summary(session, prefetch_id)

    def retrieve(
        self,
        node: str,
        *,
        accession_number: str | None = None,
        patient_id: str | None = None,
        issuer: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
        study_instance_uid: str | None = None,
        destination: str | None = None,
        priority: int = 0,
        external_reference: str | None = None,
    ) -> int:
        """Retrieve by an accession number, a patient ID (and dates) or a study UID:
        the farm finds the matching studies, then moves each as a child job; the
        retrieval's id. No match or an ambiguous one ends it failed, saying so."""
        return retrievals.start(
            self.sessions,
            retrievals.RetrieveRequest(
                node=node,
                accession_number=accession_number,
                patient_id=patient_id,
                issuer=issuer,
                date_from=date_from,
                date_to=date_to,
                study_instance_uid=study_instance_uid,
                destination=destination,
                priority=priority,
                external_reference=external_reference,
            ),
            self.dispatcher,
            SubmitRules.from_settings(self.settings),
        )

    def retrieval(self, retrieval_id: int) -> dict[str, Any]:
        """A retrieval's summary: what was asked, the studies found, its jobs, its error."""
        with self.sessions() as session:
            return retrievals.summary(session, retrieval_id)

    def wait_retrieval(
        self, retrieval_id: int, timeout: float | None = None, poll_s: float = 0.3
    ) -> dict[str, Any]:
        """Block until the retrieval ends; its summary. WaitTimedOut after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def ended() -> bool:
            with self.sessions() as session:
                return retrievals.has_ended(session, retrieval_id)

        if not _poll(ended, deadline, poll_s):
            raise WaitTimedOut(f"retrieval {retrieval_id} has not ended after {timeout} s")
        return self.retrieval(retrieval_id)

    def cancel_retrieval(self, retrieval_id: int) -> str:
        """Cancel a retrieval and its jobs (a running move gets C-CANCEL); its state."""
        return retrievals.cancel(self.sessions, retrieval_id).value

    def echo(self, node: str, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """C-ECHO a registered node: status, category, ok, elapsed_ms, and ``detail``
        (why) when no association could be made. UnknownNode if it is not registered."""
        return node_echo.echo(self.sessions, self.settings, node, timeout_s=timeout_s)

    def retry(self, job_id: int) -> None:
        """Send a partial or failed job back to the queue (a partial retrieve asks
        only for what is missing); NotRetriable for a job in another state."""
        control.retry(self.sessions, job_id, self.dispatcher, self.settings.max_attempts)

    def forward(
        self,
        job_id: int,
        destination: str,
        *,
        transcode: bool | None = None,
        priority: int = 0,
        external_reference: str | None = None,
        callback_url: str | None = None,
    ) -> int:
        """Send what a finished job holds on to a registered node (a forward job,
        reconciled against what the destination confirms); its id."""
        if callback_url is not None:
            rules = SubmitRules.from_settings(self.settings)
            validate_callback_url(
                callback_url,
                allowed_hosts=rules.webhook_hosts,
                secret_configured=rules.webhooks_enabled,
            )
        return forwarding.submit_forward(
            self.sessions,
            forwarding.ForwardRequest(
                source_job_id=job_id,
                destination=destination,
                transcode=transcode,
                priority=priority,
                external_reference=external_reference,
                callback_url=callback_url,
                max_attempts=self.settings.max_attempts,
            ),
            self.dispatcher,
            self.settings.check_target,
        )

    def forwarding_options(
        self,
        node: str,
        *,
        via_farm: bool | None = None,
        transcode: bool | None = None,
        pseudonymise: bool | None = None,
    ) -> dict[str, bool]:
        """A node's forwarding options, changed where a value is given."""
        with self.sessions() as session, session.begin():
            row = forwarding.set_options(
                session, node, via_farm=via_farm, transcode=transcode, pseudonymise=pseudonymise
            )
            return forwarding.options_document(row)

    def pseudonyms(
        self, node: str, *, original: str | None = None, pseudonym: str | None = None
    ) -> list[dict[str, str]]:
        """What was replaced by what in deliveries to ``node`` (an admin's look-up)."""
        with self.sessions() as session:
            row = forwarding.destination_node(session, node)
            return pseudonymise.look_up(session, row.id, original=original, pseudonym=pseudonym)

    # -- batches: a list of retrieves at once ------------------------------------

    def submit_batch(
        self,
        data: bytes,
        source_format: str,
        *,
        priority: int | None = None,
        submitted_by: str | None = None,
    ) -> int:
        """A batch from CSV or JSON rows (qrfarm.workflow.batch_input); its id."""
        return batches.submit(
            self.sessions,
            batches.BatchRequest(data, source_format, priority, submitted_by),
            self.dispatcher,
            SubmitRules.from_settings(self.settings),
        )

    def batch(self, batch_id: int) -> dict[str, Any]:
        """Its progress and the rows refused."""
        with self.sessions() as session:
            return batch_report.summary(session, batch_id)

    def batch_results(self, batch_id: int) -> Iterator[str]:
        """Its results as CSV text, a piece at a time."""
        with self.sessions() as session:
            yield from batch_report.results_csv(session, batch_id)

    # -- many jobs at once: the CLI's and the console's bulk actions -------------

    def bulk_cancel(self, flt: JobFilter, *, actor: audit.Actor | None = None) -> BulkResult:
        """Cancel every job the filter names that has not ended; how many, which."""
        result = bulk.cancel(self.sessions, flt)
        bulk_audit.record(self.sessions, actor or audit.os_user(), "cancel", flt, result)
        return result

    def bulk_retry(self, flt: JobFilter, *, actor: audit.Actor | None = None) -> BulkResult:
        """Retry every partial or failed job the filter names; how many, which."""
        result = bulk.retry(self.sessions, flt, self.dispatcher, self.settings.max_attempts)
        bulk_audit.record(self.sessions, actor or audit.os_user(), "retry", flt, result)
        return result

    def reprioritise(
        self, flt: JobFilter, priority: int, *, actor: audit.Actor | None = None
    ) -> BulkResult:
        """Give every job the filter names that has not ended this priority."""
        result = bulk.reprioritise(self.sessions, flt, priority, self.dispatcher)
        bulk_audit.record(
            self.sessions,
            actor or audit.os_user(),
            "prioritise",
            flt,
            result,
            extra=f" to {priority}",
        )
        return result


def _poll(has_ended: Callable[[], bool], deadline: float | None, poll_s: float) -> bool:
    while not has_ended():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(poll_s)
    return True
