"""Report text: cleaning, section splitting, ECG statements and combined texts."""

from __future__ import annotations

import math
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from medtriad.data.text import (
    ECG_MARKER,
    RAD_MARKER,
    SECTION_SYNONYMS,
    check_report,
    clean_report,
    combine_report,
    join_statements,
    radiology_text,
    report_sentences,
    split_combined,
    split_sections,
    split_sentences,
)
from medtriad.errors import DataError

# Made-up report in the MIMIC-CXR layout: a title line, headers indented by one space, some
# alone on their line and some followed by text, de-identification as "___", CRLF endings.
MIMIC_STYLE = (
    "                                 FINAL REPORT\r\n"
    " EXAMINATION:  CHEST (PA AND LAT)\r\n"
    " \r\n"
    " INDICATION:  ___M with productive cough for two weeks.\r\n"
    " \r\n"
    " TECHNIQUE:  Upright frontal and lateral views.\r\n"
    " \r\n"
    " COMPARISON:  ___\r\n"
    " \r\n"
    " FINDINGS:\r\n"
    " \r\n"
    " Patchy opacity in the right lower lobe.  No pleural effusion.\r\n"
    " Cardiomediastinal silhouette is within normal limits.\r\n"
    " \r\n"
    " IMPRESSION:\r\n"
    " \r\n"
    " Right lower lobe pneumonia.\r\n"
)


def test_mimic_style_report_splits_into_sections():
    sections = split_sections(MIMIC_STYLE)
    assert sections == {
        "examination": "CHEST (PA AND LAT)",
        "indication": "M with productive cough for two weeks.",
        "technique": "Upright frontal and lateral views.",
        "findings": "Patchy opacity in the right lower lobe. No pleural effusion. "
        "Cardiomediastinal silhouette is within normal limits.",
        "impression": "Right lower lobe pneumonia.",
    }  # COMPARISON holds only "___": empty after cleaning, so left out; title dropped


def test_text_before_headers_is_preamble_and_headers_alone_on_a_line_count():
    report = "Portable chest, 08:00.\nfindings\nLungs are clear.\nImpression\nNormal study.\n"
    assert split_sections(report) == {
        "preamble": "Portable chest, 08:00.",
        "findings": "Lungs are clear.",
        "impression": "Normal study.",
    }


def test_headers_in_any_case_and_synonyms_map_to_one_key():
    report = (
        "Clinical History: fever.\n"
        "reason for exam: cough.\n"
        "Findings : clear lungs.\n"
        "CONCLUSION: no pneumonia.\n"
        "Recommendation(s): follow-up in six weeks.\n"
    )
    assert split_sections(report) == {
        "history": "fever.",
        "indication": "cough.",
        "findings": "clear lungs.",
        "impression": "no pneumonia.",
        "recommendation": "follow-up in six weeks.",
    }


def test_repeated_headers_are_concatenated_in_order():
    report = "FINDINGS: Lungs clear.\nIMPRESSION: Normal.\nFINDINGS: Bones intact.\n"
    sections = split_sections(report)
    assert sections["findings"] == "Lungs clear. Bones intact."
    assert sections["impression"] == "Normal."


def test_inline_headers_on_one_line_are_split():
    flat = "INDICATION: dyspnea. COMPARISON: None. FINDINGS: Heart normal. IMPRESSION: No acute."
    assert split_sections(flat) == {
        "indication": "dyspnea.",
        "comparison": "None.",
        "findings": "Heart normal.",
        "impression": "No acute.",
    }
    # lower-case header words count only where they open the text or a sentence
    mixed = "Findings: the exam history: none given. Impression: normal."
    assert split_sections(mixed) == {
        "findings": "the exam history: none given.",
        "impression": "normal.",
    }


def test_cleaned_report_splits_like_the_original():
    # clean_report flattens a report to one line; the single-line rules recover its sections
    assert split_sections(clean_report(MIMIC_STYLE)) == split_sections(MIMIC_STYLE)


def test_header_words_inside_a_line_of_a_multiline_report_are_content():
    report = "FINDINGS: Lungs clear. IMPRESSION: repeated by dictation.\nIMPRESSION: Normal.\n"
    sections = split_sections(report)
    assert sections["findings"] == "Lungs clear. IMPRESSION: repeated by dictation."
    assert sections["impression"] == "Normal."


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("There are no XXXX of a pleural effusion.", "There are no of a pleural effusion."),
        ("Normal chest x-XXXX.", "Normal chest x."),
        ("XXXX-year-old XXXX with XXXX.", "year-old with."),
        ("Seen XXXX, XXXX XXXX today. ___", "Seen, today."),
        ("No change since ___ (___). Lungs clear.", "No change since. Lungs clear."),
        (
            "Called to Dr. [**Last Name (NamePattern4) 123**] at 10:30 .  .",
            "Called to Dr. at 10:30.",
        ),
        ("Date: XXXX, XXXX PM", "Date: PM"),
        ("XXXX. Heart normal.  \n\n Lungs\tclear. . ", "Heart normal. Lungs clear."),
    ],
)
def test_redaction_removed_without_double_spaces_or_orphan_punctuation(raw, clean):
    assert clean_report(raw) == clean


def test_clean_keeps_decimals_lists_and_times():
    text = "1. Nodule of 2.5 cm. 2. Effusion at 10:30, stable."
    assert clean_report(text) == text


@pytest.mark.parametrize("value", [None, math.nan, 3.0, b"FINDINGS: clear", ["a"]])
def test_missing_or_non_string_input_is_empty(value):
    assert clean_report(value) == ""
    assert split_sections(value) == {}
    assert radiology_text(value) == ""
    assert split_combined(value) == (None, None)


def test_radiology_text_picks_sections_in_order_and_falls_back():
    assert radiology_text(MIMIC_STYLE) == (
        split_sections(MIMIC_STYLE)["findings"] + " " + split_sections(MIMIC_STYLE)["impression"]
    )
    assert radiology_text(MIMIC_STYLE, ("impression",)) == "Right lower lobe pneumonia."
    assert radiology_text(MIMIC_STYLE, "impression") == "Right lower lobe pneumonia."
    no_sections = "INDICATION: cough.\nCOMPARISON: none."
    assert radiology_text(no_sections) == clean_report(no_sections)
    assert radiology_text("Lungs clear.   Heart normal.") == "Lungs clear. Heart normal."
    with pytest.raises(ValueError, match="unknown report sections"):
        radiology_text(MIMIC_STYLE, ("finding",))


def test_join_statements_drops_empties_and_duplicates_keeping_order():
    statements = [
        "  Sinus rhythm ",
        None,
        math.nan,
        "",
        "   ",
        "nan",
        "Left axis deviation",
        "sinus rhythm.",
        "Abnormal ECG.",
        "Left  axis deviation",
        "Possible anterior infarct,",
    ]
    assert join_statements(statements) == (
        "Sinus rhythm. Left axis deviation. Abnormal ECG. Possible anterior infarct."
    )
    assert join_statements([]) == ""
    assert join_statements([None, math.nan]) == ""
    assert join_statements(iter(["Sinus bradycardia"])) == "Sinus bradycardia."


@pytest.mark.parametrize("rad", [None, "", "Lungs clear.  Heart normal."])
@pytest.mark.parametrize("ecg", [None, "XXXX", "Sinus rhythm. Left axis deviation."])
def test_combine_and_split_combined_round_trip(rad, ecg):
    combined = combine_report(rad, ecg)
    rad_clean, ecg_clean = clean_report(rad) or None, clean_report(ecg) or None
    assert split_combined(combined) == (rad_clean, ecg_clean)
    assert (RAD_MARKER in combined) == (rad_clean is not None)
    assert (ECG_MARKER in combined) == (ecg_clean is not None)
    if rad_clean and ecg_clean:
        assert combined == f"{RAD_MARKER} {rad_clean} {ECG_MARKER} {ecg_clean}"
    assert clean_report(combined) == combined


def test_combine_removes_markers_inside_parts_and_unmarked_text_is_radiology():
    combined = combine_report(f"Lungs clear {ECG_MARKER} here.", "Sinus rhythm.")
    assert split_combined(combined) == ("Lungs clear here.", "Sinus rhythm.")
    assert split_combined("Lungs clear.") == ("Lungs clear.", None)


def test_check_report_raises_naming_the_id_when_nothing_is_left():
    with pytest.raises(DataError, match="s123/report.txt: empty report") as err:
        check_report("XXXX. ___", "s123/report.txt")
    assert err.value.path == "s123/report.txt"
    with pytest.raises(DataError, match="CXR9"):
        check_report(None, "CXR9")
    assert check_report("Lungs XXXX clear.", "CXR1") == "Lungs clear."


def test_every_synonym_is_recognised_as_a_line_header():
    for key, spellings in SECTION_SYNONYMS.items():
        for spelling in spellings:
            assert split_sections(f"{spelling.lower()}: some text\n") == {key: "some text"}


def test_four_thousand_reports_process_in_well_under_a_second():
    reports = [MIMIC_STYLE.replace("two", str(i)) for i in range(4000)]
    start = time.perf_counter()
    out = [radiology_text(r) for r in reports]
    elapsed = time.perf_counter() - start
    assert len(set(out)) == 1 and "XXXX" not in out[0]
    assert elapsed < 0.5, elapsed


_WORDS = "XXXX XXX XX X x - ___ _ [**Name**] [** **] ( ) [ ] . , ; : ! ? word 2.5 FINDINGS: [RAD]"
_FRAGMENTS = st.sampled_from(_WORDS.split() + [" ", "  ", "\n", "\r\n", "\t", "\xa0"])
_TEXTS = st.one_of(st.text(max_size=80), st.lists(_FRAGMENTS, max_size=40).map("".join))


@settings(max_examples=400, deadline=None)
@given(_TEXTS)
@example("[**[]**]")  # emptying "[]" exposes a de-id bracket
@example("((XXXX)) [ ( ) ]")  # nested brackets empty from the inside out
def test_clean_report_is_idempotent_and_leaves_no_tokens_or_double_spaces(text):
    cleaned = clean_report(text)
    assert clean_report(cleaned) == cleaned
    assert "XXXX" not in cleaned
    assert "___" not in cleaned
    assert "  " not in cleaned
    assert cleaned == cleaned.strip()
    assert "\n" not in cleaned


@settings(max_examples=200, deadline=None)
@given(_TEXTS, _TEXTS)
def test_split_combined_inverts_combine_report(rad, ecg):
    rad_part = clean_report(rad.replace("[", " ").replace("]", " ")) or None
    ecg_part = clean_report(ecg.replace("[", " ").replace("]", " ")) or None
    assert split_combined(combine_report(rad_part, ecg_part)) == (rad_part, ecg_part)


def test_split_sentences_cuts_at_sentence_marks_and_drops_list_numbers() -> None:
    text = "1. Small right effusion.  2. No pneumothorax; heart size normal! Is there edema? 3."
    assert split_sentences(text) == [
        "Small right effusion.",
        "No pneumothorax;",
        "heart size normal!",
        "Is there edema?",
    ]
    assert split_sentences("") == [] and split_sentences(None) == []
    assert split_sentences("Decimal 1.5 cm nodule.") == ["Decimal 1.5 cm nodule."]


def test_report_sentences_reads_findings_and_impression_and_the_ecg_part() -> None:
    text = combine_report(
        "INDICATION: Dyspnea. FINDINGS: Heart is enlarged. No effusion. IMPRESSION: Cardiomegaly.",
        "Atrial fibrillation. Low QRS voltages.",
    )
    parts = report_sentences(text)
    assert parts["radiology"] == ["Heart is enlarged.", "No effusion.", "Cardiomegaly."]
    assert parts["cardiology"] == ["Atrial fibrillation.", "Low QRS voltages."]
    only_ecg = report_sentences(combine_report(None, "Sinus rhythm."))
    assert only_ecg == {"radiology": [], "cardiology": ["Sinus rhythm."]}
