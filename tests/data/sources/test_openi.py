"""`prepare openi`: XML reports from NLMCXR_reports.tgz (or the extracted folder), the MeSH label
rules, report-only and image rows; and the real 3,955 reports in ../shared/data."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medtriad.data.manifest import read_manifest
from medtriad.data.sources.openi import mesh_labels, prepare_openi
from medtriad.data.validate import validate_manifest
from medtriad.errors import DataError


def xml(
    uid: int,
    findings: str,
    impression: str,
    major: list[str],
    auto: list[str] = (),
    images: list[str] = (),
    indication: str = "Cough",
) -> str:
    """One report in the Open-I XML layout (the parts the preparer reads, nested as released)."""
    texts = "".join(
        f'<AbstractText Label="{label}">{text}</AbstractText>'
        for label, text in (
            ("COMPARISON", "None."),
            ("INDICATION", indication),
            ("FINDINGS", findings),
            ("IMPRESSION", impression),
        )
        if text is not None
    )
    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(
        f"<automatic>{a}</automatic>" for a in auto
    )
    imgs = "".join(
        f'<parentImage id="{i}"><figureId>F1</figureId><caption>Xray Chest PA and Lateral</caption><panel type="single"><url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>'
        for i in images
    )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="CXR{uid}"/><pmcId id="{uid}"/>'
        f'<docSource>CXR</docSource><IUXRId id="{uid}"/><MedlineCitation Owner="Indiana University"><Article PubModel="Electronic">'
        f"<Abstract>{texts}</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{imgs}</eCitation>"
    )


REPORTS = {
    1: xml(
        1,
        "The heart is normal. Lungs clear.",
        "Normal chest x-XXXX.",
        ["normal"],
        images=["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"],
    ),
    2: xml(
        2,
        "Borderline cardiomegaly. No pleural effusions.",
        "No acute findings.",
        ["Cardiomegaly/borderline", "Pulmonary Artery/enlarged"],
        ["pleural effusions"],
        ["CXR2_IM-0652-1001"],
    ),
    3: xml(
        3,
        "Old right rib opacity. Catheter in place.",
        "No acute disease.",
        ["Opacity/ribs/right", "Catheters, Indwelling"],
        images=["CXR3_IM-0001-1001"],
    ),
    4: xml(
        4,
        "Right IJ catheter.",
        "No acute disease.",
        ["Catheters, Indwelling/right"],
        images=["CXR4_IM-0002-1001"],
    ),
    5: xml(5, None, None, ["No Indexing"], images=["CXR5_IM-0003-1001"], indication="Chest pain"),
    6: xml(
        6,
        "Left base opacity.",
        "Atelectasis.",
        ["Opacity/lung/base/left", "Pulmonary Atelectasis/base/left"],
    ),
    7: xml(7, "Clear.", "Normal.", ["normal"], images=["CXR7_IM-0004-1001"]),
    8: xml(
        8,
        "Blunted left angle. Prominent mediastinum.",
        "Small effusion.",
        ["Costophrenic Angle/left/blunted", "Mediastinum/prominent"],
        images=["CXR8_IM-0005-1001"],
    ),
}


def tgz(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "NLMCXR_reports.tgz"
    with tarfile.open(path, "w:gz") as tar:
        for uid, text in REPORTS.items():
            data = text.encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_report_only_rows_and_labels(tmp_path: Path) -> None:
    root = tgz(tmp_path / "openi").parent
    s = prepare_openi(root, tmp_path / "o")
    df = read_manifest(s.manifest).set_index("sample_id")
    assert list(df.index) == ["CXR1", "CXR2", "CXR3", "CXR4", "CXR6", "CXR7", "CXR8"]
    assert s.dropped_rows["no findings or impression"]["ids"] == ["CXR5"]
    assert (
        df.loc["CXR1", "report_text"] == "[RAD] The heart is normal. Lungs clear. Normal chest x."
    )
    assert df["cxr_path"].isna().all()
    lab = df.filter(like="label_")
    assert (
        lab.loc["CXR1", "label_no_finding"] == 1
        and lab.loc["CXR1"].drop("label_no_finding").eq(0).all()
    )
    r2 = lab.loc["CXR2"]
    assert (
        r2["label_cardiomegaly"] == 1
        and r2["label_pleural_effusion"] == 0
        and r2["label_no_finding"] == 0
    )
    r3 = lab.loc["CXR3"]
    assert (
        r3["label_lung_opacity"] == 0
        and r3["label_support_devices"] == 1
        and r3["label_no_finding"] == 0
    )
    assert (
        lab.loc["CXR4", "label_no_finding"] == 1 and lab.loc["CXR4", "label_support_devices"] == 1
    )
    assert lab.loc["CXR6", "label_lung_opacity"] == 1 and lab.loc["CXR6", "label_atelectasis"] == 1
    assert (
        lab.loc["CXR8", "label_pleural_effusion"] == 1
        and lab.loc["CXR8", "label_enlarged_cardiomediastinum"] == 1
    )
    assert df.loc["CXR2", "meta_mesh_major"] == "Cardiomegaly/borderline|Pulmonary Artery/enlarged"
    auto = read_manifest(
        prepare_openi(root, tmp_path / "a", use_automatic=True).manifest
    ).set_index("sample_id")
    assert auto.loc["CXR2", "label_pleural_effusion"] == 1


def test_image_rows_from_extracted_folder(tmp_path: Path, make) -> None:
    root = tmp_path / "openi"
    with tarfile.open(tgz(tmp_path / "pack")) as tar:
        tar.extractall(root, filter="data")
    images = tmp_path / "NLMCXR_png"
    for uid, ids in ((1, ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]), (2, ["CXR2_IM-0652-1001"]), (3, ["CXR3_IM-0001-1001"]),
                     (4, ["CXR4_IM-0002-1001"]), (5, ["CXR5_IM-0003-1001"]), (8, ["CXR8_IM-0005-1001"])):  # fmt: skip
        for i in ids:
            make.image(images / f"{i}.png", seed=uid)
    s = prepare_openi(root, tmp_path / "o", images=images, seed=2)
    df = read_manifest(s.manifest).set_index("sample_id")
    assert sorted(df.index) == sorted(["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001", "CXR2_IM-0652-1001", "CXR3_IM-0001-1001",
                                       "CXR4_IM-0002-1001", "CXR5_IM-0003-1001", "CXR8_IM-0005-1001"])  # fmt: skip
    assert s.dropped_rows["report lists no image"]["ids"] == ["CXR6"]
    assert s.dropped_rows["image file missing"]["ids"] == ["CXR7_IM-0004-1001"]
    assert pd.isna(df.loc["CXR5_IM-0003-1001", "report_text"]) and np.isnan(
        df.loc["CXR5_IM-0003-1001", "label_cardiomegaly"]
    )
    assert s.dropped_values["no findings or impression (image kept without text)"]["ids"] == [
        "CXR5_IM-0003-1001"
    ]
    assert (
        df.loc["CXR1_1_IM-0001-3001", "subject_id"]
        == df.loc["CXR1_1_IM-0001-4001", "subject_id"]
        == "CXR1"
    )
    assert df.loc["CXR1_1_IM-0001-3001", "split"] == df.loc["CXR1_1_IM-0001-4001", "split"]
    assert validate_manifest(s.manifest, workers=1, progress=False).ok


def test_mesh_rules() -> None:
    assert np.isnan(mesh_labels(["Technical Quality of Image Unsatisfactory "])["Cardiomegaly"])
    assert mesh_labels(["Cardiac Shadow/enlarged"])["Cardiomegaly"] == 1
    assert mesh_labels(["Thickening/pleura/right"])["Pleural Other"] == 1
    assert (
        mesh_labels(["Density/lung/base"])["Lung Opacity"] == 1
        and mesh_labels(["Density/sternum"])["Lung Opacity"] == 0
    )


def test_no_reports(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="NLMCXR_reports.tgz"):
        prepare_openi(tmp_path, tmp_path / "o")


def test_real_openi(shared: Path, tmp_path: Path) -> None:
    s = prepare_openi(shared / "reports" / "openi", tmp_path / "o")
    df = read_manifest(s.manifest).set_index("sample_id")
    assert len(df) + s.n_dropped == 3955
    assert df.loc["CXR2", "label_cardiomegaly"] == 1 and df.loc["CXR1", "label_no_finding"] == 1
    assert df["subject_id"].is_unique and df["report_text"].str.startswith("[RAD] ").all()
    report = validate_manifest(s.manifest, workers=1, progress=False)
    assert report.ok, (report.schema, report.bad[:3])
