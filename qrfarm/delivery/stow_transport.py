"""STOW-RS as a forward's transport, and QIDO-RS as its proof of arrival.

A destination whose ``delivery_transport`` is "dicomweb" is sent to by
STOW-RS (:mod:`qrfarm.dicomweb.stow`): the instances in requests of at most
``MAX_BATCH_BYTES`` of files, each request to /studies/{uid} of one study so
that the service itself refuses anything of another. Each instance is
``ok`` when the answer names it stored (a Warning Reason is kept as its
status), failed with its Failure Reason when named failed, and not ok (to be
sent again) when the answer names it neither way. What was sent is then
confirmed by an IMAGE-level QIDO-RS search at the destination
(:func:`verify_by_transport`), as a DIMSE destination is by C-FIND.

Instances are sent as held: STOW-RS carries any transfer syntax, so the
forward's transcoding does not apply; its pseudonymising does.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session, sessionmaker

from qrfarm.dicom import Node
from qrfarm.dicom.sending import check_identity
from qrfarm.dicomweb import WebClient, WebService, WebTimeouts, open_client, stow, url_host
from qrfarm.errors import InvalidNode, QrfarmError
from qrfarm.jobs.nodes import web_service_of
from qrfarm.jobs.worker_deps import RunnerDeps
from qrfarm.models import NodeRecord

from .forward_verify import Verifier
from .transports import Outgoing, Sent, Transport, TransportFactory, TransportOptions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WebDelivery:
    """What sending by STOW-RS needs of the worker."""

    sessions: sessionmaker[Session]
    check_target: Callable[[str], None] | None
    timeouts: WebTimeouts


def web_destination(session: Session, node_id: int) -> WebService | None:
    """The DICOMweb service of destination ``node_id``, if it is sent to by
    STOW-RS (by its row: two archives may share an AE title and address)."""
    row = session.get(NodeRecord, node_id)
    if row is None or row.delivery_transport != "dicomweb":
        return None
    return web_service_of(row)


def _open(delivery: WebDelivery, node_id: int, node: Node) -> WebClient:
    with delivery.sessions() as session:
        service = web_destination(session, node_id)
    if service is None:
        raise InvalidNode(f"destination {node} is sent to by STOW-RS but has no DICOMweb URL")
    if delivery.check_target is not None:
        delivery.check_target(url_host(service.base_url))
    return open_client(service, delivery.timeouts)


def stow_factory(delivery: WebDelivery) -> TransportFactory:
    """The "dicomweb" entry of a worker's ForwardDeps.transports."""

    def make(options: TransportOptions) -> Transport:
        return StowTransport(delivery, options)

    return make


class StowTransport:
    def __init__(self, delivery: WebDelivery, options: TransportOptions) -> None:
        self.delivery = delivery
        self.options = options

    def send(self, items: Sequence[Outgoing], stop: threading.Event) -> list[Sent]:
        if not items:
            return []
        results: list[Sent] = []
        with _open(self.delivery, self.options.node_id, self.options.node) as web:
            by_path = {item.path: item for item in items}
            for batch in stow.batches([item.path for item in items]):
                if stop.is_set():
                    break
                try:
                    results += self._batch(web, [by_path[p] for p in batch])
                except QrfarmError as exc:
                    if not results:
                        raise  # nothing could be sent at all
                    done = {r.sop_instance_uid for r in results}
                    results += [
                        _not_sent(i, str(exc), exc.retriable)
                        for i in items
                        if i.sop_instance_uid not in done
                    ]
                    break
        return results

    def _batch(self, web: WebClient, items: list[Outgoing]) -> list[Sent]:
        results: list[Sent] = []
        loaded: list[tuple[Outgoing, Dataset]] = []
        for item in items:
            try:
                dataset: Dataset = dcmread(item.path)
                sop_class = str(dataset.get("SOPClassUID", ""))
                sop_instance = str(dataset.get("SOPInstanceUID", ""))
                check_identity((sop_class, sop_instance), item.sop_class_uid, item.sop_instance_uid)
                if self.options.rewrite is not None:
                    self.options.rewrite(dataset)
            except QrfarmError as exc:
                results.append(_not_sent(item, str(exc), exc.retriable))
                continue
            except Exception as exc:  # noqa: BLE001 (this instance fails, not the forward)
                # Not DICOM, or a data set the rewrite cannot take: named by
                # the error's type (its text may quote values).
                log.warning("forwarding %s failed: %s", item.sop_instance_uid, type(exc).__name__)
                results.append(_not_sent(item, f"could not be read: {type(exc).__name__}", False))
                continue
            loaded.append((item, dataset))
        by_study: dict[str, list[tuple[Outgoing, Dataset]]] = {}
        for pair in loaded:
            by_study.setdefault(str(pair[1].get("StudyInstanceUID", "")), []).append(pair)
        for study, group in sorted(by_study.items()):
            answer = stow.store_datasets(web, [d for _, d in group], study=study or None)
            results += [_outcome(item, ds, answer) for item, ds in group]
        return results


def _outcome(item: Outgoing, dataset: Dataset, answer: stow.StowAnswer) -> Sent:
    uid = str(dataset.SOPInstanceUID)
    study = str(dataset.get("StudyInstanceUID", ""))
    series = str(dataset.get("SeriesInstanceUID", ""))
    if uid in answer.stored:
        return Sent(
            sop_instance_uid=item.sop_instance_uid,
            sent_sop_instance_uid=uid,
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax=item.transfer_syntax,
            status=answer.warnings.get(uid, 0),
            ok=True,
        )
    if uid in answer.failed:
        reason = answer.failed[uid]
        return Sent(
            sop_instance_uid=item.sop_instance_uid,
            sent_sop_instance_uid=uid,
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax=None,
            status=reason,
            ok=False,
            reason="STOW-RS Failure Reason "
            + (f"0x{reason:04X}" if reason is not None else "not given"),
            # Out of resources (A7xx) may pass; the others are the instance's own.
            retriable=reason is not None and 0xA700 <= reason <= 0xA7FF,
        )
    return _not_sent(item, "not named in the STOW-RS answer", True)


def _not_sent(item: Outgoing, reason: str, retriable: bool) -> Sent:
    return Sent(
        sop_instance_uid=item.sop_instance_uid,
        sent_sop_instance_uid=item.sop_instance_uid,
        study_instance_uid="",
        series_instance_uid="",
        transfer_syntax=None,
        status=None,
        ok=False,
        reason=reason,
        retriable=retriable,
    )


def verify_by_transport(delivery: WebDelivery, by_find: Verifier) -> Verifier:
    """Proof of arrival by the destination's own transport: QIDO-RS at a
    destination sent to by STOW-RS, ``by_find`` (C-FIND) at any other."""

    def verify(
        deps: RunnerDeps, node_id: int, node: Node, sent: list[tuple[str, str, str]]
    ) -> set[str]:
        with delivery.sessions() as session:
            service = web_destination(session, node_id)
        if service is None:
            return by_find(deps, node_id, node, sent)
        with _open(delivery, node_id, node) as web:
            return stow.held_at(web, sent)

    return verify
