"""STOW-RS: instances stored at a DICOMweb service, and proof that it holds them.

What the service says is read from its answer (PS3.18 10.5.3): the
Referenced SOP Sequence (stored; with a Warning Reason when it changed or
coerced something) and the Failed SOP Sequence (not stored, with a Failure
Reason), in a 200, 202, 400 or 409 answer alike. An instance in neither is
not confirmed. :func:`held_at` then asks the service (QIDO-RS, IMAGE level)
for the SOP Instance UIDs sent: only those it answers with are confirmed.

dicomweb-client encodes one request's instances whole in memory (each data
set, then the multipart body), so a request carries at most
``MAX_BATCH_BYTES`` of files (one larger instance goes alone).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset

from qrfarm.errors import DicomWebResponseError

from .qido import PAGE_SIZE
from .service import WebClient, http_error

MAX_BATCH_BYTES = 32 << 20
MAX_BATCH_COUNT = 100
# UIDs asked about in one QIDO-RS search (a UID list in the query string).
CONFIRM_CHUNK = 50
# Pages read for one such search from a service that ignores the UID list
# (a study of up to 50,000 instances); what lies beyond stays unconfirmed.
MAX_CHECK_PAGES = 100


@dataclass
class StowAnswer:
    """What the service said of each SOP Instance UID sent."""

    stored: set[str] = field(default_factory=set)
    warnings: dict[str, int] = field(default_factory=dict)  # UID -> Warning Reason
    failed: dict[str, int | None] = field(default_factory=dict)  # UID -> Failure Reason


def store(
    web: WebClient,
    files: Sequence[Path],
    *,
    study: str | None = None,
    answer: StowAnswer | None = None,
) -> StowAnswer:
    """Store ``files`` (Part-10) in batches; what the service said of each.

    With ``study`` the request goes to /studies/{study}: the service then
    refuses any instance of another study (PS3.18 10.5.1), a check of its own
    on what is sent."""
    answer = answer or StowAnswer()
    for batch in batches(files):
        store_datasets(web, [dcmread(path) for path in batch], study=study, answer=answer)
    return answer


def store_datasets(
    web: WebClient,
    datasets: Sequence[Dataset],
    *,
    study: str | None = None,
    answer: StowAnswer | None = None,
) -> StowAnswer:
    """One STOW-RS request of ``datasets`` (the caller bounds how many); what
    the service said of each."""
    answer = answer or StowAnswer()
    _read_answer(_post(web, datasets, study), answer)
    return answer


def batches(files: Sequence[Path]) -> Iterator[list[Path]]:
    """``files`` in groups of at most MAX_BATCH_BYTES and MAX_BATCH_COUNT."""
    batch: list[Path] = []
    size = 0
    for path in files:
        length = path.stat().st_size
        if batch and (size + length > MAX_BATCH_BYTES or len(batch) >= MAX_BATCH_COUNT):
            yield batch
            batch, size = [], 0
        batch.append(path)
        size += length
    if batch:
        yield batch


def _post(web: WebClient, datasets: Sequence[Dataset], study: str | None) -> Dataset:
    try:
        return web.client.store_instances(datasets, study_instance_uid=study)
    except requests.HTTPError as exc:
        # 400 and 409 carry the same answer, with the failures in it.
        response = exc.response
        if response is not None and response.status_code in (400, 409):
            try:
                return Dataset.from_json(response.json())
            except (ValueError, TypeError, KeyError):
                pass
        raise http_error(exc, "STOW-RS") from exc
    except Exception as exc:
        raise http_error(exc, "STOW-RS") from exc


def _read_answer(body: Dataset, answer: StowAnswer) -> None:
    if not isinstance(body, Dataset):
        raise DicomWebResponseError("STOW-RS answered something other than a data set")
    for item in body.get("ReferencedSOPSequence", []) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if not uid:
            continue
        reason = _reason(item.get("WarningReason"))
        if reason is not None:
            answer.warnings[uid] = reason
        answer.stored.add(uid)
        answer.failed.pop(uid, None)
    for item in body.get("FailedSOPSequence", []) or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        if uid and uid not in answer.stored:
            answer.failed[uid] = _reason(item.get("FailureReason"))


def _reason(value: object) -> int | None:
    """A Warning or Failure Reason (US, one value); None when the service sent
    none, or something else (several values, text): not given."""
    if isinstance(value, int) and 0 <= value <= 0xFFFF:
        return value
    return None


def held_at(web: WebClient, sent: Iterable[tuple[str, str, str]]) -> set[str]:
    """The SOP Instance UIDs among ``sent`` (study, series, SOP) that the service
    answers an IMAGE-level QIDO-RS search with."""
    by_study: dict[str, list[str]] = {}
    for study, _series, sop in sent:
        by_study.setdefault(study, []).append(sop)
    held: set[str] = set()
    for study, sops in sorted(by_study.items()):
        for start in range(0, len(sops), CONFIRM_CHUNK):
            chunk = sops[start : start + CONFIRM_CHUNK]
            held |= _found(web, study, chunk)
    return held


def _found(web: WebClient, study: str, chunk: list[str]) -> set[str]:
    """Which of ``chunk`` (fewer than a page) the service finds in ``study``. A
    service that ignores the UID filter pages through the whole study: the
    next page is asked for only while pages bring UIDs not seen before (one
    that ignores offset repeats them), and at most MAX_CHECK_PAGES."""
    wanted = set(chunk)
    found: set[str] = set()
    seen: set[str] = set()
    offset = 0
    for _ in range(MAX_CHECK_PAGES):
        try:
            page: Any = web.client.search_for_instances(
                study_instance_uid=study,
                search_filters={"SOPInstanceUID": ",".join(chunk)},
                fields=["SOPInstanceUID"],
                limit=PAGE_SIZE,
                offset=offset,
            )
        except Exception as exc:
            raise http_error(exc, "QIDO-RS check of stored instances") from exc
        if not isinstance(page, list):
            raise DicomWebResponseError("QIDO-RS answered something other than a JSON array")
        before = len(seen)
        for raw in page:
            values = raw.get("00080018", {}).get("Value") if isinstance(raw, dict) else None
            if isinstance(values, list) and values:
                seen.add(str(values[0]))
                if str(values[0]) in wanted:
                    found.add(str(values[0]))
        if len(page) != PAGE_SIZE or found == wanted or len(seen) == before:
            return found
        offset += PAGE_SIZE
    return found
