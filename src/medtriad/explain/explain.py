"""`medtriad explain`: explain the match between two or three inputs, as arrays and as files.

For each given input, the *score* explained is its match with the other inputs (`MatchScore`):

* two inputs: their cosine similarity, whatever the training loss;
* three inputs: the tuple score of the loss's geometry, seen from each input with the other
  two embeddings fixed. Symile (``mip``): ``sum_k a_k b_k c_k`` is linear in each input, so the
  X-ray's maps are those of a match with the vector ``b * c``. Cosine losses: the sum of the
  input's pairwise similarities with the others (the similarity of the two others is a
  constant). GRAM (``volume``): minus the volume; its token-similarity map uses the sum of the
  others as the direction.

Methods per modality: X-ray and ECG ``similarity`` (token projection . target direction) and
``relevance`` (gradient-weighted attention rollout), X-ray ``occlusion`` per pixel (sliding
window), ECG ``occlusion`` per lead, report ``integrated_gradients`` per word (see
`medtriad.explain.attribution`).

`explain_inputs` reads files (or arrays), computes every map, and with ``out`` writes
``cxr.png``, ``ecg.png``, ``maps.npz``, ``explain.html`` (self-contained) and ``explain.json``
(scores, where each map peaks, method names). `cxr_maps` and `ecg_maps` are the batched array
functions underneath, for evaluation and serving.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from medtriad.data.ecg import CANONICAL_LEADS, Ecg
from medtriad.errors import ConfigError, DataError
from medtriad.explain import maps as M
from medtriad.explain import render
from medtriad.explain.attribution import (
    DEFAULT_OCCLUSION,
    MatchScore,
    Occlusion,
    TextAttribution,
    as_batch,
    attention_relevance,
    integrated_gradients,
    lead_occlusion,
    loss_geometry,
    patch_occlusion,
    resolve_fill,
    token_similarity,
    unit_embeddings,
)

log = logging.getLogger(__name__)

__all__ = [
    "CxrExplanation",
    "EcgExplanation",
    "Explanation",
    "cxr_maps",
    "ecg_maps",
    "explain_inputs",
    "load_explain_model",
    "match_scores",
    "model_folder",
]

TOKEN_METHODS = ("similarity", "relevance")
CXR_METHODS = (*TOKEN_METHODS, "occlusion")
JSON_FILE, HTML_FILE, NPZ_FILE = "explain.json", "explain.html", "maps.npz"
CxrInput = str | Path | np.ndarray
EcgInput = str | Path | np.ndarray | Ecg


# --------------------------------------------------------------------------- batched arrays


def cxr_maps(
    model: Any, images: Any, score: MatchScore, shifts: int = 1, occlusion: Occlusion | None = DEFAULT_OCCLUSION
) -> dict[str, np.ndarray]:
    """(B, 1, S, S) model-size X-rays -> {similarity, relevance: (B, h * shifts, w * shifts) patch
    maps; occlusion: (B, S, S) pixel map (`patch_occlusion`; left out when `occlusion` is None)}.

    ``shifts`` K > 1 samples the maps K times per patch along each axis (shift and stitch):
    the image is moved by patch / K pixel steps, centred on the unshifted grid, each shifted
    copy gives the maps of patches centred at its offset, and the K * K grids are interleaved.
    The result is the same method read on a K times finer grid of patch centres (K * K
    forwards); K must divide the patch size."""
    x = as_batch(images, 4)
    encoder = model.encoders["cxr"]
    grid, patch = encoder.grid, encoder.patch_size
    if shifts < 1 or patch % shifts:
        raise ConfigError("explain.shifts", f"must be a divisor of the patch size {patch}, got {shifts}")
    step = patch // shifts
    origin = (patch - step) // 2
    out = {k: np.zeros((len(x), grid[0] * shifts, grid[1] * shifts), np.float32) for k in TOKEN_METHODS}
    for ky in range(shifts):
        for kx in range(shifts):
            xs = M.shift_image(x, step * ky - origin, step * kx - origin)
            got = {
                "similarity": token_similarity(model, "cxr", xs, score.target()),
                "relevance": attention_relevance(model, "cxr", xs, score),
            }
            for k, v in got.items():
                out[k][:, ky::shifts, kx::shifts] = M.to_grid(v.cpu().numpy(), grid)
    if occlusion is not None:
        out["occlusion"] = patch_occlusion(model, x, score, occlusion).cpu().numpy()
    return out


def ecg_maps(
    model: Any, signals: Any, score: MatchScore, lead_mask: Any = None
) -> dict[str, np.ndarray]:
    """(B, 12, T) model-rate ECGs -> {similarity, relevance: (B, N) per time token;
    occlusion: (B, 12) score drop per lead}."""
    x = as_batch(signals, 3)
    mask = (
        None
        if lead_mask is None
        else torch.as_tensor(np.asarray(lead_mask), dtype=torch.bool).reshape(len(x), -1)
    )
    return {
        "similarity": token_similarity(model, "ecg", x, score.target(), mask).cpu().numpy(),
        "relevance": attention_relevance(model, "ecg", x, score, mask).cpu().numpy(),
        "occlusion": lead_occlusion(model, x, score, mask).cpu().numpy(),
    }


def match_scores(
    emb: dict[str, torch.Tensor], geometry: str
) -> tuple[dict[str, float], float | None]:
    """Pairwise cosine similarities ``{"a-b": s}`` of single-row embeddings, and the tuple score
    (geometry's, with three or more inputs; else None)."""
    names = list(emb)
    pairs = {
        f"{a}-{b}": float((emb[a][0] * emb[b][0]).sum())
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }
    if len(names) < 3:
        return pairs, None
    first, *rest = (emb[m][0] for m in names)
    if geometry == "cosine":
        return pairs, float(sum(pairs.values()))
    return pairs, float(MatchScore(tuple(rest), geometry)(first))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- results


@dataclass
class CxrExplanation:
    """X-ray maps. ``image``: the (S, S) model input; ``native``: the original image (None when
    an array already of the model's size was given). Maps per method as computed (``token_maps``:
    the patch grid, input pixels for occlusion), on the model input and on the original image;
    ``shifts``: token maps read that many times per patch along each axis; ``occlusion``: the
    (window, stride, fill) used, None when occlusion was off (`cxr_maps`)."""

    image: np.ndarray
    native: np.ndarray | None
    fit: str
    token_maps: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    native_maps: dict[str, np.ndarray]
    shifts: int = 1
    occlusion: tuple[int, int, str] | None = None

    def peaks(self) -> dict[str, tuple[int, int]]:
        """(row, col) of each map's maximum, in original pixels (input pixels without one)."""
        src = self.native_maps if self.native is not None else self.maps
        return {k: M.image_peak(v) for k, v in src.items()}


@dataclass
class EcgExplanation:
    """ECG maps: per time token and per sample of the (12, T) model input, and per lead."""

    signal: np.ndarray
    fs: float
    lead_mask: np.ndarray
    token_maps: dict[str, np.ndarray]
    maps: dict[str, np.ndarray]
    lead_importance: np.ndarray

    def peaks(self) -> dict[str, float]:
        """Time (s) of each map's maximum."""
        return {k: M.time_peak(v, self.fs) for k, v in self.maps.items()}


@dataclass
class Explanation:
    """Everything `explain_inputs` computed. ``targets`` says what each input's maps explain."""

    modalities: tuple[str, ...]
    geometry: str
    pair_scores: dict[str, float]
    tuple_score: float | None
    targets: dict[str, str]
    cxr: CxrExplanation | None = None
    ecg: EcgExplanation | None = None
    report: TextAttribution | None = None
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self, top_k: int = 5) -> dict[str, Any]:
        """The JSON summary: scores, methods, where each map peaks, top leads and words."""
        out: dict[str, Any] = {
            "modalities": list(self.modalities),
            "geometry": self.geometry,
            "scores": {"pairs": self.pair_scores, "tuple": self.tuple_score},
            "targets": self.targets,
            "methods": {},
            "peaks": {},
        }
        if self.cxr is not None:
            c = self.cxr
            out["methods"]["cxr"] = list(c.maps)
            out["peaks"]["cxr"] = {
                k: {
                    "row": r,
                    "col": col,
                    "value": _finite(
                        c.native_maps[k][r, col] if c.native is not None else c.maps[k][r, col]
                    ),
                }
                for k, (r, col) in c.peaks().items()
            }
            out["cxr"] = {
                "input_size": list(c.image.shape),
                "native_size": list(c.native.shape) if c.native is not None else None,
                "peak_units": "original pixels" if c.native is not None else "input pixels",
                "fit": c.fit,
                "shifts": c.shifts,
                "occlusion": dict(zip(("window", "stride", "fill"), c.occlusion)) if c.occlusion else None,
            }
        if self.ecg is not None:
            e = self.ecg
            order = np.argsort(-e.lead_importance, kind="stable")
            out["methods"]["ecg"] = [*e.maps, "occlusion"]
            out["peaks"]["ecg"] = {
                k: {"time_s": t, "value": _finite(e.maps[k][round(t * e.fs)])}
                for k, t in e.peaks().items()
            }
            out["ecg"] = {
                "fs": e.fs,
                "seconds": e.signal.shape[-1] / e.fs,
                "lead_importance": {
                    CANONICAL_LEADS[i]: _finite(v) for i, v in enumerate(e.lead_importance)
                },
                "top_leads": [CANONICAL_LEADS[i] for i in order[:3]],
            }
        if self.report is not None:
            r = self.report
            out["methods"]["report"] = ["integrated_gradients"]
            out["peaks"]["report"] = {
                "integrated_gradients": [{"word": w, "score": s} for w, s in r.top_words(top_k)]
            }
            out["report"] = {
                "steps": r.steps,
                "baseline": r.baseline,
                "score": r.score,
                "baseline_score": r.baseline_score,
                "sum_attributions": float(r.token_scores.sum()),
            }
        out["seconds"] = round(self.seconds, 3)
        out["files"] = self.files
        return out


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


# --------------------------------------------------------------------------- inputs


def model_folder(source: str | os.PathLike[str]) -> Path:
    """The saved model folder of a run folder (``RUN_DIR/model``) or of a model folder."""
    from medtriad.models.model import WEIGHTS_FILE

    path = Path(source)
    for candidate in (path / "model", path):
        if (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise DataError(path, "neither a run folder with model/ nor a saved model folder")


def load_explain_model(source: Any, device: str | torch.device = "cpu") -> Any:
    """A model from a `MultiModalModel`, a run folder (``RUN_DIR/model``) or a model folder."""
    from medtriad.models.model import MultiModalModel

    if isinstance(source, MultiModalModel):
        return source
    return MultiModalModel.from_pretrained(model_folder(source), map_location=device)


def _prepare_cxr(model: Any, cxr: CxrInput) -> tuple[np.ndarray, np.ndarray | None]:
    """(S, S) model input and the native image (None when `cxr` is already model-sized)."""
    from medtriad.data.cxr import clahe, decode_cxr, read_cxr, resize_cxr

    c = model.config.data.cxr
    if isinstance(cxr, (str, Path)):
        return read_cxr(cxr, size=c.size, fit=c.fit, clahe=c.clahe)[0], decode_cxr(cxr)
    img = np.asarray(cxr, dtype=np.float32)
    img = img[0] if img.ndim == 3 and img.shape[0] == 1 else img
    if img.ndim != 2 or not np.isfinite(img).all():
        raise DataError(
            None, f"an X-ray array must be finite (H, W) or (1, H, W), got shape {img.shape}"
        )
    if img.shape == (c.size, c.size):
        return img, None
    return resize_cxr(clahe(img) if c.clahe else img, c.size, c.fit), img


def _prepare_ecg(model: Any, ecg: EcgInput) -> tuple[np.ndarray, np.ndarray, float]:
    """(12, T) model input, its lead mask and rate."""
    from medtriad.data.ecg import read_ecg_input

    e = model.config.data.ecg
    n = round(e.fs * e.seconds)
    if isinstance(ecg, (str, Path)):
        ecg = read_ecg_input(ecg, e)
    if isinstance(ecg, Ecg):
        if ecg.fs != e.fs or ecg.signal.shape[-1] != n:
            raise DataError(
                ecg.path,
                f"ECG is {ecg.signal.shape[-1]} samples at {ecg.fs:g} Hz; "
                f"the model takes {n} at {e.fs:g} Hz",
            )
        return ecg.signal, ecg.lead_mask, float(ecg.fs)
    sig = np.asarray(ecg, dtype=np.float32)
    if sig.shape != (len(CANONICAL_LEADS), n) or not np.isfinite(sig).all():
        raise DataError(
            None, f"an ECG array must be finite (12, {n}) at {e.fs:g} Hz, got shape {sig.shape}"
        )
    return sig, np.ones(len(CANONICAL_LEADS), dtype=bool), float(e.fs)


def _check_inputs(model: Any, given: dict[str, Any]) -> None:
    if len(given) < 2:
        raise ConfigError(
            "explain",
            f"a match needs at least two of --cxr, --ecg and --text; got {sorted(given) or 'none'}",
        )
    missing = [m for m in given if m not in model.encoders]
    if missing:
        raise ConfigError(
            "data.modalities", f"the model has no encoder for {missing} (it has {model.modalities})"
        )
    text = given.get("report")
    if text is not None and not str(text).strip():
        raise DataError(None, "the report text is empty")


# --------------------------------------------------------------------------- orchestration


def explain_inputs(
    source: Any,
    *,
    cxr: CxrInput | None = None,
    ecg: EcgInput | None = None,
    text: str | None = None,
    out: str | Path | None = None,
    ig_steps: int = 32,
    ig_baseline: Literal["pad", "zeros"] = "pad",
    shifts: int = 1,
    occlusion: Occlusion | None = DEFAULT_OCCLUSION,
    device: str | torch.device = "cpu",
) -> Explanation:
    """Explain the match of two or three inputs under a model (a `MultiModalModel`, a run
    folder or a model folder); with `out`, write PNGs, ``explain.html`` and ``explain.json``.
    ``shifts`` reads the X-ray token maps on a finer grid; ``occlusion`` sets the X-ray
    occlusion map's window, stride and fill, None leaves it out (see `cxr_maps`).

    Raises ConfigError with fewer than two inputs or an input the model has no encoder for,
    DataError for an unreadable or misshapen input.
    """
    t0 = time.perf_counter()
    given = {m: v for m, v in (("cxr", cxr), ("ecg", ecg), ("report", text)) if v is not None}
    model = load_explain_model(source, device)
    _check_inputs(model, given)
    names = [m for m in model.modalities if m in given]
    geometry = loss_geometry(model.config.loss.name) if len(names) >= 3 else "cosine"

    inputs: dict[str, Any] = {}
    cxr_in = ecg_in = None
    if "cxr" in given:
        cxr_in = _prepare_cxr(model, given["cxr"])
        inputs["cxr"] = torch.from_numpy(cxr_in[0])[None, None]
    if "ecg" in given:
        ecg_in = _prepare_ecg(model, given["ecg"])
        inputs["ecg"] = torch.from_numpy(ecg_in[0])[None]
        inputs["ecg_lead_mask"] = torch.from_numpy(ecg_in[1])[None]
    if "report" in given:
        inputs["report"] = [str(given["report"])]
    emb = unit_embeddings(model, inputs)
    pairs, tuple_score = match_scores({m: emb[m] for m in names}, geometry)
    scores = {
        m: MatchScore(tuple(emb[o] for o in names if o != m), geometry)  # type: ignore[arg-type]
        for m in names
    }
    targets = {m: _target_text(m, [o for o in names if o != m], geometry) for m in names}
    result = Explanation(tuple(names), geometry, pairs, tuple_score, targets)

    if cxr_in is not None:
        image, native = cxr_in
        fit = model.config.data.cxr.fit
        grids = {
            k: v[0] for k, v in cxr_maps(model, inputs["cxr"], scores["cxr"], shifts, occlusion).items()
        }
        occ = None
        if occlusion is not None:
            occ = (*occlusion.resolve(model.encoders["cxr"].patch_size, image.shape), resolve_fill(occlusion.fill, model))
        result.cxr = CxrExplanation(
            image=image,
            native=native,
            fit=fit,
            token_maps=grids,
            maps={k: M.upsample_grid(v, image.shape) for k, v in grids.items()},
            native_maps={
                k: M.grid_to_native(v, native.shape, image.shape, fit) for k, v in grids.items()
            }
            if native is not None
            else {},
            shifts=shifts,
            occlusion=occ,
        )
    if ecg_in is not None:
        signal, lead_mask, fs = ecg_in
        got = ecg_maps(model, inputs["ecg"], scores["ecg"], inputs["ecg_lead_mask"])
        tokens = {k: got[k][0] for k in TOKEN_METHODS}
        result.ecg = EcgExplanation(
            signal=signal,
            fs=fs,
            lead_mask=lead_mask,
            token_maps=tokens,
            maps={k: M.upsample_time(v, signal.shape[-1]) for k, v in tokens.items()},
            lead_importance=got["occlusion"][0],
        )
    if "report" in given:
        result.report = integrated_gradients(
            model, str(given["report"]), scores["report"], steps=ig_steps, baseline=ig_baseline
        )
    result.seconds = time.perf_counter() - t0
    if out is not None:
        write_explanation(result, out)
    log.info("explained %s in %.2f s", "+".join(names), result.seconds)
    return result


def _target_text(modality: str, others: list[str], geometry: str) -> str:
    if len(others) == 1:
        return f"cosine similarity with the {others[0]} embedding"
    joined = " and ".join(others)
    return {
        "mip": f"Symile MIP with the {joined} embeddings fixed",
        "cosine": f"sum of cosine similarities with the {joined} embeddings",
        "volume": f"minus GRAM volume with the {joined} embeddings fixed",
    }[geometry]


# --------------------------------------------------------------------------- files

_CXR_NOTE = (
    "similarity: each patch's embedding . the target direction; relevance: gradient-weighted "
    "attention rollout of the score. + marks each peak."
)
_ECG_NOTE = (
    "Under each lead name: the score drop when that lead is zeroed. Strips: time-token "
    "similarity and gradient-weighted attention relevance."
)


def write_explanation(result: Explanation, out: str | Path) -> dict[str, str]:
    """Write PNGs, ``maps.npz``, ``explain.html`` and ``explain.json`` into `out`.

    Returns the written file names by kind (also stored in ``result.files``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    arrays: dict[str, np.ndarray] = {}
    sections: list[tuple[str, str]] = [("Scores", _scores_html(result))]
    if result.cxr is not None:
        c = result.cxr
        shown, shown_maps = (c.native, c.native_maps) if c.native is not None else (c.image, c.maps)
        png = render.overlay_png(
            shown, shown_maps, peaks=c.peaks(), title=f"X-ray: {result.targets['cxr']}"
        )
        (out / "cxr.png").write_bytes(png)
        files["cxr"] = "cxr.png"
        sections.append(
            (
                "Chest X-ray",
                _img(png, "X-ray maps") + _note(_CXR_NOTE),
            )
        )
        arrays.update({f"cxr_{k}": v for k, v in c.maps.items()})
        arrays.update({f"cxr_native_{k}": v for k, v in c.native_maps.items()})
    if result.ecg is not None:
        e = result.ecg
        png = render.ecg_png(
            e.signal,
            e.fs,
            e.maps,
            leads=CANONICAL_LEADS,
            lead_importance=e.lead_importance,
            lead_mask=e.lead_mask,
            title=f"ECG: {result.targets['ecg']}",
        )
        (out / "ecg.png").write_bytes(png)
        files["ecg"] = "ecg.png"
        sections.append(
            (
                "ECG",
                _img(png, "ECG maps") + _note(_ECG_NOTE),
            )
        )
        arrays.update({f"ecg_{k}": v for k, v in e.maps.items()})
        arrays["ecg_occlusion"] = e.lead_importance
    if result.report is not None:
        r = result.report
        sections.append(
            (
                "Report",
                render.text_html(r.parts, r.word_spans, r.word_scores)
                + _note(
                    f"Integrated gradients ({r.steps} steps, {r.baseline} baseline) of: "
                    f"{result.targets['report']}. Red raises the score, blue lowers it. "
                    f"Score {r.score:+.4f}, baseline {r.baseline_score:+.4f}, "
                    f"sum of attributions {r.token_scores.sum():+.4f}."
                ),
            )
        )
        arrays["report_word_scores"] = r.word_scores
    np.savez_compressed(out / NPZ_FILE, **arrays)
    files.update(npz=NPZ_FILE, html=HTML_FILE, json=JSON_FILE)
    result.files = files
    (out / HTML_FILE).write_text(
        render.html_page("medtriad explanation", sections), encoding="utf-8"
    )
    (out / JSON_FILE).write_text(json.dumps(result.to_json(), indent=2), encoding="utf-8")
    return files


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{alt}" src="{render.png_data_uri(png)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _scores_html(result: Explanation) -> str:
    rows = "".join(f"<tr><td>{k}</td><td>{v:+.4f}</td></tr>" for k, v in result.pair_scores.items())
    if result.tuple_score is not None:
        rows += f"<tr><td>tuple ({result.geometry})</td><td>{result.tuple_score:+.4f}</td></tr>"
    return f"<table><tr><th>match</th><th>score</th></tr>{rows}</table>"
