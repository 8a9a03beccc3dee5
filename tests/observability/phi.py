"""What counts as patient data in a text the farm wrote, and how it is found.

The terms come from the synthetic corpus's own files (one per patient): each
component of the patient's name, the Patient ID and the birth date.

How a term is matched, and why:

- As a whole token: not preceded or followed by an ASCII letter or digit, nor
  by a byte of a multi-byte character (>= 0x80). The IDs are short (``P001``)
  and the dates are eight digits: as substrings they could sit inside longer
  unrelated text (a UID component, a counter, a hash) and fail the test for
  nothing; as tokens they cannot, yet a leak always shows them as tokens
  (``PatientID=P001``, ``'P001'``, ``P001^^^HOSP``, ``(0010,0020) LO [P001]``).
- Case-insensitively (ASCII): HL7 senders and some PACS upper-case names.
- In every form the value could take on its way out: the decoded text, its
  raw encodings (the patient's own character set, and Latin-1 and UTF-8,
  which a PACS may re-encode into), those bytes as Python prints them
  (``M\\xfcller``, as in a logged ``bytes`` repr), and the JSON escape
  (``M\\u00fcller``, as in a JSON log line); a birth date also as
  ``1960-01-01`` (a ``datetime.date``, DICOM JSON converted).
- Every name component is at least three characters (``Doe``), so no term is
  a common fragment: a test that finds one has found a patient.

:func:`find_in` is held to a positive control in the test (the farm's own
find answers, which must contain every term), so it cannot pass by missing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.charset import python_encoding

from qrfarm.sandbox.synthetic import Corpus

_WORD = rb"A-Za-z0-9\x80-\xff"


@dataclass(frozen=True)
class Term:
    """One value to look for, with the patient it belongs to."""

    patient_id: str
    what: str  # "name", "id", "birth date"
    text: str
    pattern: re.Pattern[bytes]


@dataclass(frozen=True)
class Finding:
    source: str
    term: Term
    excerpt: str

    def __str__(self) -> str:
        term = self.term
        return f"{self.source}: {term.what} {term.text!r} of {term.patient_id}: {self.excerpt}"


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name_components: tuple[str, ...]
    birth_date: str
    encodings: tuple[str, ...]  # Python codecs the name may be written in


def corpus_patients(corpus: Corpus) -> list[Patient]:
    """Each patient of the corpus, read back from one of its files."""
    patients = []
    for patient_id, instances in sorted(corpus.patients().items()):
        ds = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
        charsets = ds.get("SpecificCharacterSet") or "ISO_IR 6"
        charsets = [charsets] if isinstance(charsets, str) else list(charsets)
        codecs = [python_encoding.get(c or "ISO_IR 6", "ascii") for c in charsets]
        name = str(ds.PatientName)
        components = tuple(c for c in re.split(r"[\^=]", name) if c)
        patients.append(
            Patient(
                patient_id,
                components,
                str(ds.PatientBirthDate),
                tuple(dict.fromkeys([*codecs, "latin_1", "utf_8"])),
            )
        )
    return patients


def _forms(text: str, encodings: Iterable[str]) -> list[bytes]:
    """The byte strings ``text`` may appear as (see the module's notes)."""
    forms: list[bytes] = []
    for variant in dict.fromkeys([text, text.upper()]):
        forms.append(variant.encode("utf-8"))
        forms.append(json.dumps(variant)[1:-1].encode("ascii"))
        for codec in encodings:
            try:
                raw = variant.encode(codec)
            except UnicodeEncodeError:
                continue
            forms.append(raw)
            forms.append(repr(raw)[2:-1].encode("ascii"))
    return list(dict.fromkeys(forms))


def _token(forms: Iterable[bytes]) -> re.Pattern[bytes]:
    alternatives = b"|".join(re.escape(f) for f in sorted(forms, key=len, reverse=True))
    return re.compile(
        rb"(?<![" + _WORD + rb"])(?:" + alternatives + rb")(?![" + _WORD + rb"])",
        re.IGNORECASE,
    )


def terms_of(patients: Iterable[Patient]) -> list[Term]:
    terms = []
    for p in patients:
        for component in p.name_components:
            terms.append(
                Term(p.patient_id, "name", component, _token(_forms(component, p.encodings)))
            )
        terms.append(
            Term(p.patient_id, "id", p.patient_id, _token(_forms(p.patient_id, ["ascii"])))
        )
        iso = f"{p.birth_date[:4]}-{p.birth_date[4:6]}-{p.birth_date[6:]}"
        terms.append(
            Term(
                p.patient_id,
                "birth date",
                p.birth_date,
                _token([p.birth_date.encode(), iso.encode()]),
            )
        )
    return terms


def find_in(source: str, data: bytes | str, terms: Iterable[Term]) -> list[Finding]:
    """Every occurrence of a term in ``data``, with the line around it."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    findings = []
    for term in terms:
        for match in term.pattern.finditer(raw):
            start = raw.rfind(b"\n", 0, match.start()) + 1
            end = raw.find(b"\n", match.end())
            line = raw[start : end if end >= 0 else len(raw)]
            findings.append(Finding(source, term, line[:300].decode("utf-8", "replace")))
    return findings


def find_in_files(paths: Iterable[Path], terms: list[Term]) -> list[Finding]:
    findings: list[Finding] = []
    for path in paths:
        findings += find_in(path.name, path.read_bytes(), terms)
    return findings
