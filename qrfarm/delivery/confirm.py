"""Proof of arrival by C-FIND: which of the instances sent the destination holds.

An IMAGE-level find per series, asking for the SOP Instance UIDs sent (a UID
list, at most ``CHUNK`` a query): an instance is confirmed when the
destination answers with it.
"""

from __future__ import annotations

from collections.abc import Iterable

from qrfarm.dicom import Connection, Level, Root, build_query_identifier

CHUNK = 200


def confirm_by_find(conn: Connection, sent: Iterable[tuple[str, str, str]]) -> set[str]:
    """The SOP Instance UIDs among ``sent`` (study, series, SOP) that ``conn``'s
    peer answers an IMAGE-level find with."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for study, series, sop in sent:
        by_series.setdefault((study, series), []).append(sop)
    confirmed: set[str] = set()
    for (study, series), sops in sorted(by_series.items()):
        for start in range(0, len(sops), CHUNK):
            chunk = sops[start : start + CHUNK]
            query = build_query_identifier(
                Root.STUDY,
                Level.IMAGE,
                {
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": series,
                    "SOPInstanceUID": chunk if len(chunk) > 1 else chunk[0],
                },
                default_return_keys=False,
            )
            result = conn.find(query, Root.STUDY)
            if not result.ok:
                continue  # nothing confirmed from this query: left missing
            wanted = set(chunk)
            confirmed |= {
                str(m.SOPInstanceUID)
                for m in result.matches
                if "SOPInstanceUID" in m and str(m.SOPInstanceUID) in wanted
            }
    return confirmed
