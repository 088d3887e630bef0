"""`medtriad synth`: write the built-in demo cohort in the real formats.

Layout of ``OUT``::

    manifest.parquet          one row per study (see medtriad.data.manifest)
    cohort.json               generator settings and counts
    cxr/<sample_id>.png       8-bit greyscale PA phantoms
    ecg/<sample_id>.hea/.dat  WFDB records, 12 leads, 500 Hz, 10 s, format 16
    annotations/<sample_id>.npz
                              ground truth for scoring explanations: ``mask_<finding>`` (bool
                              H x W) for every finding drawn, ``ecg_<wave>`` sample indices
                              (r_peaks, p_onsets, ...) of the ECG

Study ``i`` is generated from its own generator seeded with ``(seed, i)``, so the cohort is
identical whatever the number of workers, and an interrupted run resumes: finished chunks are
kept in ``.parts/`` and skipped when the command is run again with the same settings.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medtriad.data.manifest import assign_splits, write_manifest
from medtriad.data.synthetic.state import PatientState, sample_state
from medtriad.errors import ConfigError

log = logging.getLogger(__name__)

CHUNK = 50
MODALITY_NAMES = ("cxr", "ecg", "report")


@dataclass(frozen=True)
class CohortSettings:
    n: int
    seed: int = 0
    missing_fraction: float = 0.1
    image_size: int = 256
    ecg_fs: int = 500
    ecg_seconds: float = 10.0

    def check(self) -> None:
        if self.n < 1:
            raise ConfigError("n", f"must be at least 1, got {self.n}")
        if not 0.0 <= self.missing_fraction <= 1.0:
            raise ConfigError("missing_fraction", f"must lie in [0, 1], got {self.missing_fraction}")
        if self.image_size < 32:
            raise ConfigError("image_size", f"must be at least 32, got {self.image_size}")


def _study(settings: CohortSettings, index: int, out: Path) -> dict[str, object]:
    """Generate and write one study; returns its manifest row."""
    from PIL import Image

    from medtriad.data.ecg import CANONICAL_LEADS, write_wfdb_record
    from medtriad.data.synthetic.cxr_phantom import render_cxr
    from medtriad.data.synthetic.ecg_sim import simulate_ecg
    from medtriad.data.synthetic.reports import write_cardiology_statements, write_radiology_report
    from medtriad.data.text import combine_report, join_statements

    rng = np.random.default_rng([settings.seed, index])
    sid = f"D{index:06d}"
    state: PatientState = sample_state(rng, sample_id=sid, subject_id=f"P{index:06d}")
    missing = ""
    if rng.random() < settings.missing_fraction:
        missing = MODALITY_NAMES[int(rng.integers(len(MODALITY_NAMES)))]
    # Each modality draws from its own child generator, so a change to one generator leaves
    # the others' output unchanged.
    cxr_rng, ecg_rng, rep_rng = (np.random.default_rng([settings.seed, index, k]) for k in range(3))

    row: dict[str, object] = {"sample_id": sid, "subject_id": state.subject_id}
    arrays: dict[str, np.ndarray] = {}
    ctr = np.nan
    if missing != "cxr":
        phantom = render_cxr(state, cxr_rng, size=settings.image_size)
        rel = f"cxr/{sid}.png"
        Image.fromarray(phantom.image).save(out / rel, compress_level=1)
        row["cxr_path"] = rel
        arrays.update({f"mask_{k}": v for k, v in phantom.masks.items()})
        ctr = float(phantom.ctr)
    else:
        row["cxr_path"] = None
    if missing != "ecg":
        sim = simulate_ecg(state, ecg_rng, fs=settings.ecg_fs, seconds=settings.ecg_seconds)
        comments = [f"Age: {state.age}", f"Sex: {'Male' if state.sex == 'M' else 'Female'}", f"Rhythm: {state.rhythm}"]
        write_wfdb_record(out / "ecg" / sid, sim.signal, settings.ecg_fs, CANONICAL_LEADS, comments=comments)
        row["ecg_path"] = f"ecg/{sid}.hea"
        arrays.update({f"ecg_{k}": np.asarray(v, dtype=np.int32) for k, v in sim.annotations.items()})
    else:
        row["ecg_path"] = None
    if missing != "report":
        # A radiology report exists only for an X-ray, cardiology statements only for an ECG.
        radiology = write_radiology_report(state, rep_rng) if row["cxr_path"] else None
        cardiology = join_statements(write_cardiology_statements(state, rep_rng)) if row["ecg_path"] else None
        row["report_text"] = combine_report(radiology, cardiology)
    else:
        row["report_text"] = None
    if row["cxr_path"] or row["ecg_path"]:
        np.savez_compressed(out / "annotations" / f"{sid}.npz", **arrays)
        row["meta_annotation_path"] = f"annotations/{sid}.npz"
    else:
        row["meta_annotation_path"] = None
    row.update({f"label_{k}": v for k, v in state.labels().items()})
    st = state.as_dict()
    for key in ("age", "sex", "heart_failure", "rhythm", "heart_rate", "bbb", "severity",
                "effusion_side", "pneumothorax_side", "consolidation_side", "consolidation_zone"):
        row[f"meta_{key}"] = st[key]
    row["meta_ctr"] = ctr
    row["meta_missing"] = missing
    return row


def _chunk(args: tuple[CohortSettings, int, int, str]) -> int:
    settings, start, stop, out = args
    out_p = Path(out)
    rows = [_study(settings, i, out_p) for i in range(start, stop)]
    part = out_p / ".parts" / f"{start:08d}.parquet"
    tmp = part.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(tmp, index=False)
    os.replace(tmp, part)
    return stop - start


def generate_cohort(
    out: str | os.PathLike[str],
    n: int,
    seed: int = 0,
    missing_fraction: float = 0.1,
    image_size: int = 256,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Write a demo cohort of `n` studies to `out` and return the manifest's path."""
    settings = CohortSettings(n=n, seed=seed, missing_fraction=missing_fraction, image_size=image_size)
    settings.check()
    out_p = Path(out)
    for sub in ("cxr", "ecg", "annotations", ".parts"):
        (out_p / sub).mkdir(parents=True, exist_ok=True)
    stamp = out_p / ".parts" / "settings.json"
    if stamp.exists() and json.loads(stamp.read_text()) != asdict(settings):
        log.info("settings changed since the last run in %s: starting afresh", out_p)
        shutil.rmtree(out_p / ".parts")
        (out_p / ".parts").mkdir()
    stamp.write_text(json.dumps(asdict(settings)))

    starts = range(0, n, CHUNK)
    todo = [(settings, s, min(s + CHUNK, n), str(out_p)) for s in starts if not (out_p / ".parts" / f"{s:08d}.parquet").exists()]
    if len(todo) < len(starts):
        log.info("resuming: %d of %d chunks already written", len(starts) - len(todo), len(starts))
    from medtriad.progress import make_progress

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    with make_progress() as bar:
        task = bar.add_task("generating studies", total=n, completed=n - sum(t[2] - t[1] for t in todo))
        if not progress:
            bar.update(task, visible=False)
        if workers == 1:
            for t in todo:
                bar.advance(task, _chunk(t))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for done in pool.map(_chunk, todo):
                    bar.advance(task, done)

    parts = sorted((out_p / ".parts").glob("*.parquet"))
    df = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).sort_values("sample_id", ignore_index=True)
    df.insert(2, "split", assign_splits(df["subject_id"], seed))
    manifest = write_manifest(df, out_p / "manifest.parquet")
    summary = {
        "settings": asdict(settings),
        "studies": len(df),
        "missing": {m: int((df["meta_missing"] == m).sum()) for m in MODALITY_NAMES},
        "splits": {k: int(v) for k, v in df["split"].value_counts().items()},
        "prevalence": {c[6:]: float(df[c].mean()) for c in df.columns if c.startswith("label_")},
    }
    (out_p / "cohort.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out_p / ".parts")
    return manifest
