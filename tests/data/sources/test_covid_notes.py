"""`prepare covid_notes`: modality and view filters, finding labels (flat and "/"-path), notes as
text; and the real covid-chestxray-dataset sample in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources.covid_notes import finding_labels, prepare_covid_notes
from medtriad.data.validate import validate_manifest

COLUMNS = [
    "patientid", "offset", "sex", "age", "finding", "RT_PCR_positive", "survival", "intubated", "intubation_present",
    "went_icu", "in_icu", "needed_supplemental_O2", "extubated", "temperature", "pO2_saturation", "leukocyte_count",
    "neutrophil_count", "lymphocyte_count", "view", "modality", "date", "location", "folder", "filename", "doi", "url",
    "license", "clinical_notes", "other_notes",
]  # fmt: skip
# patientid, finding, view, modality, filename, notes, image written
ROWS = [
    (
        "1",
        "COVID-19",
        "PA",
        "X-ray",
        "img1.jpg",
        "Bilateral patchy opacities in the periphery.",
        True,
    ),
    (
        "1",
        "COVID-19, ARDS",
        "AP Supine",
        "X-ray",
        "img2.png",
        "Diffuse bilateral airspace disease.",
        True,
    ),
    ("2", "COVID-19", "L", "X-ray", "img3.jpg", "Lateral view.", True),
    ("3", "COVID-19", "Axial", "CT", "ct1.png", "Ground-glass opacities.", True),
    ("4", "No Finding", "PA", "X-ray", "img4.jpg", "XXXX", True),
    ("5", "todo", "PA", "X-ray", "img5.jpg", "Right lower lobe consolidation.", True),
    (
        "6",
        "Pneumonia/Bacterial/Streptococcus",
        "PA",
        "X-ray",
        "img6.jpg",
        "Lobar consolidation.",
        True,
    ),
    ("7", "COVID-19", "PA", "X-ray", "img7.jpg", "Patchy opacities.", False),
    (
        "8",
        "Pneumonia/Fungal/Pneumocystis",
        "AP",
        "X-ray",
        "img8.jpg",
        "Interstitial opacities.",
        True,
    ),
]


@pytest.fixture
def root(tmp_path: Path, make) -> Path:
    root = tmp_path / "covid-chestxray-dataset"
    rows = []
    for i, (pid, finding, view, modality, fname, notes, has) in enumerate(ROWS):
        rows.append({"patientid": pid, "offset": i, "sex": "M", "age": 50 + i, "finding": finding, "view": view, "modality": modality,
                     "date": "2020", "location": "Italy", "folder": "images", "filename": fname, "license": "CC BY 4.0",
                     "clinical_notes": notes})  # fmt: skip
        if has:
            make.image(root / "images" / fname, seed=i)
    make.csv(root / "metadata.csv", rows, COLUMNS)
    return root


def test_rows_text_labels(root: Path, tmp_path: Path) -> None:
    s = prepare_covid_notes(root, tmp_path / "o")
    df = read_manifest(s.manifest).set_index("sample_id")
    assert list(df.index) == [
        "img1.jpg",
        "img2.png",
        "img4.jpg",
        "img5.jpg",
        "img6.jpg",
        "img8.jpg",
    ]
    assert s.dropped_rows["view L not frontal"]["ids"] == ["img3.jpg"]
    assert s.dropped_rows["modality CT not X-ray"]["ids"] == ["ct1.png"]
    assert s.dropped_rows["image file missing"]["ids"] == ["img7.jpg"]
    assert df.loc["img1.jpg", "report_text"] == "[RAD] Bilateral patchy opacities in the periphery."
    assert pd.isna(df.loc["img4.jpg", "report_text"])
    assert s.dropped_values["clinical_notes empty (no text)"]["ids"] == ["img4.jpg"]
    lab = df.filter(like="label_")
    assert lab.loc["img2.png"].to_dict() == {"label_covid19": 1, "label_pneumonia": 1, "label_viral": 1, "label_bacterial": 0,
                                             "label_fungal": 0, "label_ards": 1, "label_no_finding": 0}  # fmt: skip
    assert lab.loc["img6.jpg", "label_bacterial"] == 1 and lab.loc["img6.jpg", "label_covid19"] == 0
    assert lab.loc["img8.jpg", "label_fungal"] == 1 and lab.loc["img4.jpg", "label_no_finding"] == 1
    assert lab.loc["img5.jpg"].isna().all()
    assert (
        df.loc["img1.jpg", "split"] == df.loc["img2.png", "split"]
        and df.loc["img1.jpg", "subject_id"] == "1"
    )
    assert (tmp_path / "o" / df.loc["img1.jpg", "cxr_path"]).resolve() == (
        root / "images" / "img1.jpg"
    ).resolve()
    assert validate_manifest(s.manifest, workers=1, progress=False).ok
    keep_lateral = read_manifest(
        prepare_covid_notes(root, tmp_path / "p", frontal_only=False).manifest
    )
    assert "img3.jpg" in set(keep_lateral["sample_id"])


def test_finding_table() -> None:
    assert (
        finding_labels("Pneumonia/Viral/SARS")["viral"] == 1
        and finding_labels("Pneumonia/Viral/SARS")["covid19"] == 0
    )
    assert finding_labels("Mycoplasma Bacterial Pneumonia")["bacterial"] == 1
    assert finding_labels("Something new") is None and finding_labels(np.nan) is None


def test_real_covid_notes(shared: Path, tmp_path: Path) -> None:
    root = shared / "cxr" / "covid_notes"
    s = prepare_covid_notes(root, tmp_path / "o")
    df = read_manifest(s.manifest)
    meta = pd.read_csv(root / "metadata.csv")
    assert len(df) == int((meta["view"] != "L").sum()) and s.dropped_rows["view L not frontal"][
        "count"
    ] == int((meta["view"] == "L").sum())
    assert df.groupby("subject_id")["split"].nunique().max() == 1
    assert (
        df["label_covid19"].sum()
        == meta.loc[meta["view"] != "L", "finding"].str.contains("COVID-19").sum()
    )
    report = validate_manifest(s.manifest, workers=1, progress=False)
    assert report.ok, (report.schema, report.bad[:3])
