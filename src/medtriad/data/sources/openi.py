"""``openi``: the Indiana University chest X-ray collection (Open-I, NLM): ``NLMCXR_reports.tgz``
(or its extracted ``ecgen-radiology/*.xml``) and, optionally, the PNG images ``NLMCXR_png/``.

Each XML report gives its id (``<uId id="CXR1"/>``), sections (``<AbstractText Label=...>``:
COMPARISON, INDICATION, FINDINGS, IMPRESSION), MeSH terms (``<MeSH><major>``, ``<automatic>``)
and images (``<parentImage id="CXR1_1_IM-0001-3001">``). The collection has no patient ids:
each report is its own subject (one report per patient in the collection).

Rows: without images, one per report (``sample_id`` = report id); a report whose chosen
``sections`` are all empty is dropped ("no findings or impression"). With an image folder
(``images``, or ``NLMCXR_png`` inside `root`), one per image: a report listing no image is
dropped ("report lists no image"), an image file that is missing too ("image file missing"), and
a report without text keeps its images with no text. The XML gives no view, so frontal and
lateral images are both kept.

Labels (CheXpert-style, ``label_<snake_case>``) from the MeSH major terms by
:data:`MESH_HEADINGS` (the heading before the first "/") and :data:`MESH_QUALIFIED` (heading +
qualifier); opacity-like headings whose qualifiers name a non-lung structure (ribs, clavicle,
...) do not count. A report indexed "normal" has No Finding = 1 and every other label 0. Any
other indexed report: a mapped label is 1, an unmapped one 0 (the MeSH indexing codes every
finding the report states), No Finding is 1 only if every term maps to Support Devices. A report
with no terms (or only "No Indexing" / "Technical Quality of Image Unsatisfactory") has all
labels empty. ``use_automatic`` also counts the automatic terms, which are extracted by a
program and include negated findings ("no pleural effusion" gives "Pleural Effusion"): off by
default. Split: patient(report)-level, seeded.
"""

from __future__ import annotations

import re
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.sources.common import (
    Drops,
    PrepareSummary,
    files_exist,
    finish,
    random_splits,
    rel_prefix,
    slug,
    split_list,
)
from medtriad.data.sources.mimic_cxr import CHEXPERT_LABELS
from medtriad.data.text import check_report, clean_report, combine_report
from medtriad.errors import ConfigError, DataError

TGZ = "NLMCXR_reports.tgz"
XML_FOLDER = "ecgen-radiology"
IMAGE_FOLDER = "NLMCXR_png"
SECTIONS = ("comparison", "indication", "findings", "impression")

MESH_HEADINGS: dict[str, str] = {
    "cardiomegaly": "Cardiomegaly",
    "opacity": "Lung Opacity",
    "density": "Lung Opacity",
    "infiltrate": "Lung Opacity",
    "airspace disease": "Lung Opacity",
    "pulmonary atelectasis": "Atelectasis",
    "consolidation": "Consolidation",
    "pulmonary edema": "Edema",
    "pulmonary congestion": "Edema",
    "pleural effusion": "Pleural Effusion",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
    "hydropneumothorax": "Pneumothorax",
    "hemopneumothorax": "Pneumothorax",
    "nodule": "Lung Lesion",
    "mass": "Lung Lesion",
    "fractures, bone": "Fracture",
    "catheters, indwelling": "Support Devices",
    "implanted medical device": "Support Devices",
    "medical device": "Support Devices",
    "surgical instruments": "Support Devices",
    "tube, inserted": "Support Devices",
    "stents": "Support Devices",
    "pleura": "Pleural Other",
}
"""MeSH major heading (lowercase) -> CheXpert label."""
MESH_QUALIFIED: dict[tuple[str, str], str] = {
    ("cardiac shadow", "enlarged"): "Cardiomegaly",
    ("heart", "enlarged"): "Cardiomegaly",
    ("mediastinum", "enlarged"): "Enlarged Cardiomediastinum",
    ("mediastinum", "prominent"): "Enlarged Cardiomediastinum",
    ("mediastinum", "widened"): "Enlarged Cardiomediastinum",
    ("costophrenic angle", "blunted"): "Pleural Effusion",
    ("thickening", "pleura"): "Pleural Other",
}
"""(heading, any qualifier) -> CheXpert label, for headings that only count with a qualifier."""
NON_LUNG = frozenset(
    {"ribs", "clavicle", "sternum", "humerus", "shoulder", "spine", "thoracic vertebrae", "breast",
     "adipose tissue", "heart", "mitral valve", "mediastinum"}
)  # fmt: skip
"""Qualifiers that make an opacity-like or lesion heading describe something other than lung."""
_LUNG_ONLY = {"Lung Opacity", "Lung Lesion"}
NOT_FINDINGS = frozenset({"no indexing", "technical quality of image unsatisfactory"})
AUTOMATIC_TERMS: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "atelectases": "Atelectasis",
    "focal atelectasis": "Atelectasis",
    "pleural effusions": "Pleural Effusion",
    "bilateral pleural effusion": "Pleural Effusion",
    "effusion": "Pleural Effusion",
    "edema": "Edema",
    "edemas": "Edema",
    "interstitial pulmonary edema": "Edema",
    "infiltrates": "Lung Opacity",
    "rib fracture": "Fracture",
    "rib fractures": "Fracture",
    "fracture": "Fracture",
    "central venous catheter": "Support Devices",
    "central venous catheters": "Support Devices",
    "pacemaker, artificial": "Support Devices",
    "picc": "Support Devices",
    "picc line": "Support Devices",
}
"""Automatic (free-text) terms, lowercase -> CheXpert label, besides the MeSH headings."""

HELP = {
    "images": "Folder of the Open-I images (NLMCXR_png); default: NLMCXR_png inside --root if present. Without images the manifest is report-only.",
    "image_ext": "Image file extension in that folder (png, or dcm for NLMCXR_dcm).",
    "sections": "Comma-separated sections for the text: findings, impression, indication, comparison.",
    "use_automatic": "Also map the automatic MeSH terms (they include negated findings).",
    "seed": "Seed of the patient-level split.",
    "check_files": "Check that every image exists (drop the row if not).",
}


def _xml_sources(root: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every XML report: from the .tgz if present, else from the folder."""
    tgz = root / TGZ if (root / TGZ).is_file() else (root if root.is_file() else None)
    if tgz is not None:
        try:
            with tarfile.open(tgz, "r:gz") as tar:
                for member in tar:
                    if member.isfile() and member.name.endswith(".xml"):
                        fh = tar.extractfile(member)
                        if fh is not None:
                            yield f"{tgz}:{member.name}", fh.read()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise DataError(tgz, f"unreadable archive ({exc})") from exc
        return
    folder = root / XML_FOLDER if (root / XML_FOLDER).is_dir() else root
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise DataError(root, f"no {TGZ} and no XML reports in it or in {XML_FOLDER}/")
    for f in files:
        yield str(f), f.read_bytes()


def _parse(name: str, data: bytes) -> dict[str, object]:
    try:
        doc = ET.fromstring(data)
    except ET.ParseError as exc:
        raise DataError(name, f"not valid XML ({exc})") from exc
    uid = doc.find("uId")
    if uid is None or not uid.get("id"):
        raise DataError(name, "no <uId id=...>")
    sections = {s: "" for s in SECTIONS}
    for node in doc.iter("AbstractText"):
        label = (node.get("Label") or "").lower()
        if label in sections:
            sections[label] = " ".join(filter(None, (sections[label], "".join(node.itertext()))))
    mesh = doc.find("MeSH")
    major = [(m.text or "").strip() for m in mesh.findall("major")] if mesh is not None else []
    auto = [(m.text or "").strip() for m in mesh.findall("automatic")] if mesh is not None else []
    images = [p.get("id") for p in doc.findall("parentImage") if p.get("id")]
    return {
        "uid": uid.get("id"),
        **sections,
        "major": [m for m in major if m],
        "automatic": [a for a in auto if a],
        "images": images,
    }


def _term_labels(term: str) -> set[str]:
    parts = [p.strip().lower() for p in term.split("/")]
    heading, qualifiers = parts[0], parts[1:]
    found = set()
    label = MESH_HEADINGS.get(heading)
    if label is not None and not (label in _LUNG_ONLY and any(q in NON_LUNG for q in qualifiers)):
        found.add(label)
    found.update(lab for (h, q), lab in MESH_QUALIFIED.items() if h == heading and q in qualifiers)
    return found


def mesh_labels(major: list[str], automatic: list[str] = ()) -> dict[str, float]:
    """CheXpert-style labels of one report's MeSH terms (rules in the module docstring)."""
    terms = [t for t in major if t.strip().lower() not in NOT_FINDINGS]
    if not terms:
        return {name: np.nan for name in CHEXPERT_LABELS}
    if all(t.strip().lower() == "normal" for t in terms):
        return {name: float(name == "No Finding") for name in CHEXPERT_LABELS}
    positive: set[str] = set()
    only_devices = True
    for t in terms:
        if t.strip().lower() == "normal":
            continue
        found = _term_labels(t)
        positive |= found
        only_devices &= found == {"Support Devices"}
    for a in automatic:
        key = a.strip().lower()
        lab = AUTOMATIC_TERMS.get(key) or MESH_HEADINGS.get(key)
        if lab is not None:
            positive.add(lab)
            only_devices &= lab == "Support Devices"
    labels = {name: float(name in positive) for name in CHEXPERT_LABELS}
    labels["No Finding"] = float(only_devices)
    return labels


def _uid_order(uid: str) -> tuple[int, str]:
    m = re.search(r"\d+", uid)
    return (int(m.group()) if m else -1, uid)


def prepare_openi(
    root: Path,
    out: Path,
    *,
    images: Path | None = None,
    image_ext: str = "png",
    sections: str = "findings,impression",
    use_automatic: bool = False,
    seed: int = 0,
    check_files: bool = True,
) -> PrepareSummary:
    """Write the Open-I manifest into `out` (rules in the module docstring)."""
    started = time.perf_counter()
    options = {k: v for k, v in locals().items() if k not in ("root", "out", "started")}
    section_list = split_list("sections", sections)
    bad = [s for s in section_list if s not in SECTIONS]
    if bad:
        raise ConfigError("sections", f"unknown sections {bad}; known: {list(SECTIONS)}")
    root, out = Path(root), Path(out)
    if images is None and (root / IMAGE_FOLDER).is_dir():
        images = root / IMAGE_FOLDER
    rows, values, notes = Drops(), Drops(), []

    reports = sorted(
        (_parse(n, d) for n, d in _xml_sources(root)), key=lambda r: _uid_order(str(r["uid"]))
    )
    rep = pd.DataFrame(reports)
    dup = rep["uid"].duplicated()
    rep = rows.filter(rep, ~dup.to_numpy(), "duplicate report id", "uid").reset_index(drop=True)
    texts = []
    for r in rep.itertuples(index=False):
        joined = " ".join(clean_report(getattr(r, s)) for s in section_list)
        try:
            texts.append(check_report(joined, r.uid))
        except DataError:
            texts.append(None)
    rep["radiology"] = texts
    label_rows = [
        mesh_labels(m, a if use_automatic else ()) for m, a in zip(rep["major"], rep["automatic"])
    ]
    labels = pd.DataFrame(label_rows, columns=list(CHEXPERT_LABELS))
    labels.columns = [f"label_{slug(c)}" for c in CHEXPERT_LABELS]
    rep = pd.concat([rep, labels], axis=1)
    no_text = rep["radiology"].isna()
    what = " or ".join(section_list)

    if images is None:
        df = rows.filter(rep, ~no_text.to_numpy(), f"no {what}", "uid").reset_index(drop=True)
        df["sample_id"] = df["uid"]
        df["cxr_path"] = pd.NA
    else:
        images = Path(images)
        if not images.is_dir():
            raise DataError(images, "image folder not found")
        rep = rows.filter(
            rep, (rep["images"].str.len() > 0).to_numpy(), "report lists no image", "uid"
        )
        df = rep.explode("images", ignore_index=True).rename(columns={"images": "image_id"})
        df["sample_id"] = df["image_id"].astype(str)
        df = rows.filter(
            df, ~df["sample_id"].duplicated().to_numpy(), "image listed by two reports", "sample_id"
        )
        df["image_rel"] = df["sample_id"] + "." + image_ext.lstrip(".")
        if check_files:
            df = rows.filter(
                df, files_exist(images, df["image_rel"]), "image file missing", "sample_id"
            )
        df = df.reset_index(drop=True)
        values.add(
            f"no {what} (image kept without text)", df.loc[df["radiology"].isna(), "sample_id"]
        )
        df["cxr_path"] = rel_prefix(images, out) + df["image_rel"]
    subject = df["uid"].astype(str)
    manifest = pd.DataFrame(
        {
            "sample_id": df["sample_id"],
            "subject_id": subject,
            "split": random_splits(subject, seed, (0.8, 0.1, 0.1)),
            "cxr_path": df["cxr_path"],
            "ecg_path": pd.NA,
            "report_text": [
                combine_report(t, None) if isinstance(t, str) else None for t in df["radiology"]
            ],
            **{c: df[c] for c in labels.columns},
            "meta_indication": df["indication"].map(clean_report),
            "meta_comparison": df["comparison"].map(clean_report),
            "meta_mesh_major": df["major"].map("|".join),
            "meta_mesh_automatic": df["automatic"].map("|".join),
        }
    )
    return finish(
        manifest,
        dataset="openi",
        root=root,
        out=out,
        options=options,
        rows=rows,
        values=values,
        notes=notes,
        started=started,
    )
