"""Section extraction on all 3,955 Open-I (Indiana University) chest X-ray reports.

The original XML keeps each section in its own <AbstractText Label=...>; the test renders every
report as plain text with one "LABEL: text" line per section, as a report file would read, and
checks that `split_sections` gives each section back exactly.
"""

from __future__ import annotations

import csv
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from medtriad.data.text import clean_report, radiology_text, split_sections

OPENI = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "reports" / "openi"
TGZ = OPENI / "NLMCXR_reports.tgz"
CSV = OPENI / "openi_reports.csv"
N_REPORTS = 3955
LABELS = ("comparison", "indication", "findings", "impression")


def _parse(xml_bytes: bytes) -> tuple[str, list[tuple[str, str]]]:
    """(uid, [(label, text), ...] in document order) of one Open-I XML report."""
    root = ET.fromstring(xml_bytes)
    uid = root.find("uId").get("id")
    fields = [
        (node.get("Label", "").lower(), node.text or "") for node in root.iter("AbstractText")
    ]
    return uid, fields


def _render(fields: list[tuple[str, str]]) -> str:
    """A plain-text report: one "LABEL: text" line per section, Windows line endings."""
    return "\r\n".join(f"{label.upper()}: {text}" for label, text in fields)


@pytest.fixture(scope="module")
def reports() -> dict[str, list[tuple[str, str]]]:
    if not TGZ.is_file():
        pytest.skip(f"Open-I reports not found at {TGZ}")
    out = {}
    with tarfile.open(TGZ, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                uid, fields = _parse(tar.extractfile(member).read())
                out[uid] = fields
    return out


def test_every_xml_section_is_extracted_exactly(reports):
    assert len(reports) == N_REPORTS
    counts = dict.fromkeys(LABELS, 0)
    for uid, fields in reports.items():
        assert {label for label, _ in fields} == set(LABELS), uid
        sections = split_sections(_render(fields))
        for label, text in fields:
            expected = clean_report(text)
            assert sections.get(label, "") == expected, (uid, label)
            counts[label] += bool(expected)
        # nothing falls outside the four headers
        assert set(sections) <= set(LABELS), (uid, sorted(sections))
    # the extraction found findings/impression wherever the XML has text for them
    raw = {
        label: sum(bool(t.strip()) for f in reports.values() for lab, t in f if lab == label)
        for label in ("findings", "impression")
    }
    assert counts["findings"] == raw["findings"] > 3000
    assert counts["impression"] == raw["impression"] > 3800


def test_radiology_text_keeps_findings_and_impression(reports):
    neither = set()
    for uid, fields in reports.items():
        text = dict(fields)
        report = _render(fields)
        wanted = [clean_report(text[k]) for k in ("findings", "impression")]
        got = radiology_text(report)
        if any(wanted):
            assert got == " ".join(w for w in wanted if w), uid
        else:
            neither.add(uid)
            assert got == clean_report(report), uid  # falls back to the whole report
            assert got, uid
    with CSV.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == N_REPORTS
    csv_neither = {
        r["uid"] for r in rows if not r["findings"].strip() and not r["impression"].strip()
    }
    assert neither == csv_neither
    assert 0 < len(neither) < 100


def test_all_reports_process_fast(reports):
    rendered = [_render(fields) for fields in reports.values()]
    start = time.perf_counter()
    for text in rendered:
        split_sections(text)
    split_s = time.perf_counter() - start
    start = time.perf_counter()
    for text in rendered:
        radiology_text(text)
    rad_s = time.perf_counter() - start
    assert split_s < 1.0 and rad_s < 1.0, (split_s, rad_s)
