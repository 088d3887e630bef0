"""Report text: clean radiology reports, split them into sections, join ECG statements.

The text encoder sees one string per study. For a chest X-ray that string is the report's
findings and impression (`radiology_text`); for an ECG it is the machine statements joined into
sentences (`join_statements`); a study with both gets one text carrying section markers
(`combine_report`), which `split_combined` takes apart again so the encoder may read the two as a
sentence pair.

Cleaning (`clean_report`) removes de-identification tokens (Open-I ``XXXX``, MIMIC-CXR ``___``,
MIMIC-III ``[**...**]``), collapses all whitespace (newlines included) to single spaces, drops
orphan punctuation that the removals leave (``" ,"``, ``". ."``, ``"()"``) and keeps sentence
punctuation. It is idempotent: cleaning a cleaned text changes nothing.

Section headers (`split_sections`):

* multi-line text (MIMIC-CXR, Open-I rendered with one field a line): a header opens a line, in
  any case, followed by a colon and optional text (``"IMPRESSION: No acute process."``) or alone
  on its line (``" FINDINGS"``). Header-like words inside a line are content; Open-I has fields
  whose text itself contains "IMPRESSION: ... FINDINGS: ...".
* single-line text, or text without any line-opening header (a report flattened into a CSV
  cell, or `clean_report` output): a header is a known name followed by a colon anywhere,
  provided it is written in capitals or it opens the text or a sentence.

Synonyms map to one lowercase key (see `SECTION_SYNONYMS`): CONCLUSION and SUMMARY are
"impression" (both are the radiologist's summary), REASON FOR EXAM is "indication", CLINICAL
HISTORY is "history", FINDINGS AND IMPRESSION is "findings". Text before the first header is
"preamble"; title lines such as "FINAL REPORT" are dropped. A repeated header's texts are
concatenated in order. Section texts are cleaned, and empty sections are left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from medtriad.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_SECTIONS",
    "ECG_MARKER",
    "PREAMBLE",
    "RAD_MARKER",
    "SECTION_SYNONYMS",
    "check_report",
    "clean_report",
    "combine_report",
    "join_statements",
    "radiology_text",
    "report_sentences",
    "split_combined",
    "split_sections",
    "split_sentences",
]

RAD_MARKER = "[RAD]"
"""Opens the radiology part of a combined report."""
ECG_MARKER = "[ECG]"
"""Opens the cardiology (ECG statements) part of a combined report."""

PREAMBLE = "preamble"
"""Key of the text before the first section header."""
DEFAULT_SECTIONS = ("findings", "impression")
"""Sections the model reads from a radiology report."""

SECTION_SYNONYMS: Mapping[str, tuple[str, ...]] = {
    "findings": ("FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"),
    "impression": (
        "IMPRESSION",
        "IMPRESSIONS",
        "FINAL IMPRESSION",
        "CONCLUSION",
        "CONCLUSIONS",
        "SUMMARY",
        "OPINION",
    ),
    "indication": (
        "INDICATION",
        "INDICATIONS",
        "CLINICAL INDICATION",
        "CLINICAL INDICATIONS",
        "REASON FOR EXAM",
        "REASON FOR EXAMINATION",
        "REASON FOR STUDY",
        "REASON FOR REFERRAL",
    ),
    "history": (
        "HISTORY",
        "CLINICAL HISTORY",
        "MEDICAL HISTORY",
        "PATIENT HISTORY",
        "CLINICAL INFORMATION",
        "CLINICAL DETAILS",
        "CLINICAL DATA",
    ),
    "comparison": (
        "COMPARISON",
        "COMPARISONS",
        "COMPARISON STUDY",
        "COMPARISON STUDIES",
        "COMPARISON EXAM",
        "PRIOR STUDY",
        "PRIOR STUDIES",
    ),
    "technique": ("TECHNIQUE", "TECHNIQUES", "PROCEDURE"),
    "examination": ("EXAMINATION", "EXAM", "STUDY", "TYPE OF EXAMINATION", "EXAMINATION TYPE"),
    "recommendation": ("RECOMMENDATION", "RECOMMENDATIONS", "RECOMMENDATION(S)"),
    "notification": ("NOTIFICATION", "NOTIFICATIONS", "COMMUNICATION"),
    "addendum": ("ADDENDUM",),
    "wet_read": ("WET READ", "PFI", "PROVISIONAL FINDINGS IMPRESSION (PFI)"),
}
"""Canonical section key -> header spellings (matched case-insensitively, any spacing)."""

_TITLES = ("FINAL REPORT", "PRELIMINARY REPORT", "REPORT")
"""Title lines that carry no content; the text after one (until a header) is preamble."""

_TITLE = None  # canonical "key" of a title boundary


def _norm_name(name: str) -> str:
    return " ".join(name.upper().split())


_CANONICAL: dict[str, str | None] = {
    _norm_name(s): key for key, spellings in SECTION_SYNONYMS.items() for s in spellings
}
_CANONICAL.update({_norm_name(t): _TITLE for t in _TITLES})


def _alternation(names: Iterable[str], space: str) -> str:
    """Regex alternation of `names`, longest first, words joined by the `space` pattern."""
    ordered = sorted(set(names), key=len, reverse=True)
    return "|".join(space.join(re.escape(w) for w in n.split()) for n in ordered)


_HEADERS = [s for spellings in SECTION_SYNONYMS.values() for s in spellings]
_LINE_NAMES = _alternation(_HEADERS + list(_TITLES), r"[ \t]+")
_INLINE_NAMES = _alternation(_HEADERS, r"\s+")
_INLINE_TITLES = _alternation(("FINAL REPORT", "PRELIMINARY REPORT"), r"\s+")
# A header opening a line: followed by a colon (text may follow) or alone on its line.
_LINE_HEADER = re.compile(
    rf"^[ \t]*(?P<name>{_LINE_NAMES})[ \t]*(?::|(?=[ \t]*$))", re.IGNORECASE | re.MULTILINE
)
# A header anywhere: a name followed by a colon, not glued to the word before it.
_INLINE_HEADER = re.compile(rf"(?<!\S)(?P<name>{_INLINE_NAMES})\s*:", re.IGNORECASE)
# Titles inside a single line count only in capitals ("FINAL REPORT").
_INLINE_TITLE = re.compile(rf"(?<!\S)(?P<name>{_INLINE_TITLES})(?!\S)")
_SENTENCE_END = ".;!?"

# --- cleaning ------------------------------------------------------------------------------
_PUNCT_STRENGTH = "?!.;:,"  # a run of punctuation keeps its strongest mark
_REDACTION = re.compile(r"-?(?:X{3,}|_{2,}|\[\*\*[^\]]*?\*\*\])-?")
_EMPTY_BRACKETS = re.compile(r"\(\s*(?:[.,;:!?]\s*)*\)|\[\s*(?:[.,;:!?]\s*)*\]")
_WHITESPACE = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r" (?=[.,;:!?])")
_PUNCT_RUN = re.compile(r"[.,;:!?](?: ?[.,;:!?])+")
_LEADING_JUNK = re.compile(r"^[\s.,;:!?]+")
_HAS_WORD = re.compile(r"[^\W_]")
_MISSING_STRINGS = frozenset({"", "nan", "none", "null", "<na>", "n/a"})


def _strongest(match: re.Match[str]) -> str:
    run = match.group(0)
    return next(p for p in _PUNCT_STRENGTH if p in run)


def _is_missing(value: object) -> bool:
    """True for None, NaN (pandas' missing cell) and anything else that is not a string."""
    return not isinstance(value, str)


def clean_report(text: object) -> str:
    """One clean line of report text; "" for None, NaN or anything that is not a string.

    Removes redaction tokens (``XXXX``, ``___``, ``[**...**]``, with a hyphen glued to them),
    empty brackets, spaces before punctuation and orphan or repeated punctuation, and collapses
    whitespace (newlines and tabs too) to single spaces.
    """
    if _is_missing(text):
        return ""
    # Removals leave a space, so no new token forms across one; removing brackets may empty
    # the brackets around them or expose a "[**...**]", hence the loop.
    t = text
    while True:
        t = _REDACTION.sub(" ", t)
        t, n = _EMPTY_BRACKETS.subn(" ", t)
        if not n:
            break
    t = _WHITESPACE.sub(" ", t)
    t = _SPACE_BEFORE_PUNCT.sub("", t)
    t = _PUNCT_RUN.sub(_strongest, t)
    t = _LEADING_JUNK.sub("", t)
    return t.rstrip()


# --- sections -------------------------------------------------------------------------------
def _header_spans(text: str) -> list[tuple[int, int, str | None]]:
    """(start, end, key) of every section header in `text`, in order of appearance."""
    spans = [
        (m.start(), m.end(), _CANONICAL[_norm_name(m["name"])]) for m in _LINE_HEADER.finditer(text)
    ]
    if spans and "\n" in text.strip():
        return spans
    spans = []
    for m in _INLINE_HEADER.finditer(text):
        name = m["name"]
        before = text[: m.start()].rstrip()
        if name.isupper() or not before or before[-1] in _SENTENCE_END:
            spans.append((m.start(), m.end(), _CANONICAL[_norm_name(name)]))
    spans.extend((m.start(), m.end(), _TITLE) for m in _INLINE_TITLE.finditer(text))
    spans.sort()
    return spans


def _raw_sections(text: object) -> dict[str, list[str]]:
    """Uncleaned pieces of every section, keyed by canonical name (repeats kept in order)."""
    if _is_missing(text):
        return {}
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    pieces: dict[str, list[str]] = {}
    key, pos = PREAMBLE, 0
    for start, end, new_key in _header_spans(text):
        if start < pos:  # overlaps a header already taken
            continue
        pieces.setdefault(key, []).append(text[pos:start])
        key = PREAMBLE if new_key is _TITLE else new_key
        pos = end
    pieces.setdefault(key, []).append(text[pos:])
    return pieces


def _clean_pieces(pieces: list[str]) -> str:
    return clean_report(" ".join(clean_report(p) for p in pieces))


def split_sections(text: object) -> dict[str, str]:
    """Cleaned sections of a radiology report, keyed by canonical lowercase name.

    Keys are those of `SECTION_SYNONYMS` plus "preamble" (text before the first header);
    sections that are empty after cleaning are left out, repeated headers are concatenated.
    """
    out = {}
    for key, pieces in _raw_sections(text).items():
        cleaned = _clean_pieces(pieces)
        if cleaned:
            out[key] = cleaned
    return out


def radiology_text(text: object, sections: Iterable[str] | str = DEFAULT_SECTIONS) -> str:
    """The model's radiology input: the chosen sections, cleaned, joined in the order given.

    Falls back to the whole cleaned report when none of the chosen sections has text, so a
    report without headers (or with only, say, an indication) still yields its content.
    """
    wanted = (sections,) if isinstance(sections, str) else tuple(sections)
    known = set(SECTION_SYNONYMS) | {PREAMBLE}
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise ValueError(f"unknown report sections {unknown}; known: {sorted(known)}")
    raw = _raw_sections(text)
    parts = [_clean_pieces(raw[s]) for s in dict.fromkeys(wanted) if s in raw]
    joined = " ".join(p for p in parts if p)
    return joined if joined else clean_report(text)


def check_report(text: object, path_or_id: str | Path | None) -> str:
    """`clean_report(text)`, raising DataError(path_or_id, "empty report") if no word is left."""
    cleaned = clean_report(text)
    if not _HAS_WORD.search(cleaned):
        raise DataError(path_or_id, "empty report")
    return cleaned


# --- cardiology and combined texts ----------------------------------------------------------
_TRAILING_SOFT_PUNCT = re.compile(r"[\s,;:\-]+$")
_MARKERS = re.compile(f"{re.escape(RAD_MARKER)}|{re.escape(ECG_MARKER)}")


def join_statements(statements: Iterable[str | None]) -> str:
    """Machine ECG statements (e.g. MIMIC-IV-ECG report_0..report_17) as one text.

    Each statement is cleaned; missing ones (None, NaN, non-strings, "", "nan", "None") are
    dropped, as are repeats (compared case-insensitively, ignoring the final period) keeping
    the first; each ends with a period unless it ends with ".", "!" or "?".
    """
    seen: set[str] = set()
    out: list[str] = []
    for s in statements:
        if _is_missing(s) or s.strip().lower() in _MISSING_STRINGS:
            continue
        s = _TRAILING_SOFT_PUNCT.sub("", clean_report(s))
        if not _HAS_WORD.search(s):
            continue
        key = s.rstrip(".").casefold()
        if key in seen:
            continue
        seen.add(key)
        out.append(s if s[-1] in ".!?" else s + ".")
    return " ".join(out)


def _clean_part(text: object) -> str:
    return clean_report(_MARKERS.sub(" ", clean_report(text)))


def combine_report(radiology: str | None, cardiology: str | None) -> str:
    """One text for a study: ``"[RAD] <radiology> [ECG] <cardiology>"``.

    Each part is cleaned (markers inside a part are removed so the result splits back
    unambiguously); an empty or missing part is left out with its marker; "" if both are.
    """
    parts = []
    for marker, part in ((RAD_MARKER, radiology), (ECG_MARKER, cardiology)):
        cleaned = _clean_part(part)
        if cleaned:
            parts.append(f"{marker} {cleaned}")
    return " ".join(parts)


def split_combined(text: object) -> tuple[str | None, str | None]:
    """Inverse of `combine_report`: (radiology, cardiology), None for an absent part.

    Text without markers is taken as radiology; text before the first marker joins the
    radiology part; repeated markers are concatenated.
    """
    cleaned = clean_report(text)
    parts: dict[str, list[str]] = {RAD_MARKER: [], ECG_MARKER: []}
    marker, pos = RAD_MARKER, 0
    for m in _MARKERS.finditer(cleaned):
        parts[marker].append(cleaned[pos : m.start()])
        marker, pos = m.group(0), m.end()
    parts[marker].append(cleaned[pos:])
    rad = clean_report(" ".join(parts[RAD_MARKER]))
    ecg = clean_report(" ".join(parts[ECG_MARKER]))
    return (rad or None, ecg or None)


# --- sentences --------------------------------------------------------------------------------
_SENTENCE_SPLIT = re.compile(r"(?<=[.;!?])\s+")
_LIST_NUMBER = re.compile(r"^\(?\d{1,2}[.)]\s*")
_MIN_SENTENCE_LETTERS = 3


def split_sentences(text: object) -> list[str]:
    """A cleaned text cut into sentences at ``. ; ! ?`` followed by a space.

    List numbers (``"1. "``) are dropped from a sentence's start, and pieces with fewer than
    three letters (a lone number, an orphan abbreviation) are left out."""
    out = []
    for piece in _SENTENCE_SPLIT.split(clean_report(text)):
        piece = _LIST_NUMBER.sub("", piece).strip()
        if sum(ch.isalpha() for ch in piece) >= _MIN_SENTENCE_LETTERS:
            out.append(piece)
    return out


def report_sentences(
    text: object, sections: Iterable[str] | str = DEFAULT_SECTIONS
) -> dict[str, list[str]]:
    """Sentences of a (combined) report by part: ``{"radiology": [...], "cardiology": [...]}``.

    The radiology part is read as the model's radiology input (`radiology_text`: findings and
    impression, else the whole part), so an indication or an examination line, which describe
    the request rather than the image, yields no sentence."""
    radiology, cardiology = split_combined(text)
    return {
        "radiology": split_sentences(radiology_text(radiology, sections)) if radiology else [],
        "cardiology": split_sentences(cardiology) if cardiology else [],
    }
