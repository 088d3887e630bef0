"""The evaluation report: matplotlib figures (Agg) and one self-contained HTML page.

Figures are PNG bytes embedded as ``<img src="data:image/png;base64,...">``, so ``report.html``
needs nothing beside it. Tables show ``point [low, high]`` with the 95% patient-bootstrap
interval. Every figure function returns PNG bytes and never touches the global pyplot state.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtriad.evaluate.metrics import roc_points

__all__ = [
    "confusion_figure",
    "embedding_map_figure",
    "image",
    "probe_figure",
    "retrieval_curve_figure",
    "robustness_figure",
    "roc_figure",
    "table",
    "write_report",
]


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _grid(n: int, cols: int = 4) -> tuple[int, int]:
    c = max(1, min(cols, n))
    return -(-n // c), c


def roc_figure(y: np.ndarray, scores: np.ndarray, classes: Sequence[str], title: str) -> bytes:
    """ROC curve of every class with its AUROC in the legend (rows with unknown labels skipped)."""
    from medtriad.evaluate.metrics import auroc

    fig = _figure(6, 5)
    ax = fig.add_subplot()
    for c, name in enumerate(classes):
        k = np.isfinite(y[:, c]) & (y[:, c] >= 0)
        yc, sc = y[k, c], scores[k, c]
        if len(np.unique(yc)) < 2:
            continue
        fpr, tpr = roc_points(yc, sc)
        ax.plot(fpr, tpr, label=f"{name} ({auroc(yc, sc):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1),
    )
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def confusion_figure(
    y: np.ndarray,
    scores: np.ndarray,
    classes: Sequence[str],
    thresholds: Sequence[float],
    title: str,
    softmax: bool = False,
) -> bytes:
    """2 x 2 confusion matrix per class at its threshold; for mutually exclusive classes
    (``softmax``) one C x C matrix of true vs arg-max class over rows with exactly one positive."""
    if softmax:
        known = np.isfinite(y).all(axis=1)
        single = known & ((np.nan_to_num(y) == 1).sum(axis=1) == 1)
        true = np.argmax(np.nan_to_num(y[single]), axis=1)
        pred = np.argmax(scores[single], axis=1)
        n = len(classes)
        m = np.zeros((n, n), int)
        np.add.at(m, (true, pred), 1)
        fig = _figure(1.2 + 0.55 * n, 1.0 + 0.5 * n)
        ax = fig.add_subplot()
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="black")
        ax.set_xticks(range(n), classes, rotation=60, fontsize=7, ha="right")
        ax.set_yticks(range(n), classes, fontsize=7)
        ax.set(xlabel="predicted (arg-max)", ylabel="true", title=title)
        return _png(fig)
    rows, cols = _grid(len(classes))
    fig = _figure(2.2 * cols, 2.1 * rows)
    for c, name in enumerate(classes):
        ax = fig.add_subplot(rows, cols, c + 1)
        k = np.isfinite(y[:, c]) & (y[:, c] >= 0)
        truth = y[k, c] == 1
        pred = scores[k, c] >= thresholds[c]
        m = np.array(
            [
                [np.sum(~truth & ~pred), np.sum(~truth & pred)],
                [np.sum(truth & ~pred), np.sum(truth & pred)],
            ]
        )
        ax.imshow(m, cmap="Blues")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
        ax.set_xticks([0, 1], ["neg", "pos"], fontsize=7)
        ax.set_yticks([0, 1], ["neg", "pos"], fontsize=7)
        ax.set_title(name, fontsize=8)
    fig.suptitle(f"{title} (rows: true, columns: predicted)", fontsize=9)
    return _png(fig)


def retrieval_curve_figure(curves: Mapping[str, Sequence[float]], title: str) -> bytes:
    """R@K against K for each retrieval direction."""
    fig = _figure(6, 4.5)
    ax = fig.add_subplot()
    for name, curve in curves.items():
        if len(curve):
            ax.plot(np.arange(1, len(curve) + 1), curve, label=name)
    ax.set(xlabel="K", ylabel="R@K", title=title, ylim=(0, 1.02))
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    return _png(fig)


def robustness_figure(
    curves: Mapping[str, Mapping[str, Sequence[float | None]]],
    clean: Mapping[str, float | None],
    title: str,
) -> bytes:
    """One panel per metric: its value against severity (0 = clean) for each corruption.

    `curves`: metric -> corruption -> value at each severity; `clean`: metric -> clean value.
    """
    metrics = [m for m in curves if curves[m]]
    rows, cols = _grid(len(metrics), 3)
    fig = _figure(4.6 * cols, 3.8 * rows)
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, i + 1)
        for name, values in curves[metric].items():
            ys = [clean.get(metric)] + list(values)
            ax.plot(
                range(len(ys)),
                [np.nan if v is None else v for v in ys],
                marker="o",
                markersize=3,
                label=name,
            )
        ax.set(xlabel="severity (0 = clean)", title=metric)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def embedding_map_figure(
    points: Mapping[str, np.ndarray], colours: Mapping[str, np.ndarray], label: str, method: str
) -> bytes:
    """2-D embedding map per modality, points coloured by `label` (grey where unknown)."""
    mods = list(points)
    fig = _figure(4.5 * max(1, len(mods)), 4.2)
    for i, m in enumerate(mods):
        ax = fig.add_subplot(1, max(1, len(mods)), i + 1)
        xy, c = points[m], colours[m]
        unknown = ~np.isfinite(c)
        if unknown.any():
            ax.scatter(xy[unknown, 0], xy[unknown, 1], s=6, c="lightgrey", label="unknown")
        for value, colour in ((0.0, "tab:blue"), (1.0, "tab:red")):
            sel = c == value
            if sel.any():
                ax.scatter(xy[sel, 0], xy[sel, 1], s=6, c=colour, label=f"{label}={int(value)}")
        ax.set(title=f"{m} ({method})", xticks=[], yticks=[])
        ax.legend(fontsize=7, markerscale=2)
    return _png(fig)


def probe_figure(curves: Mapping[str, Mapping[str, float | None]], title: str) -> bytes:
    """Macro AUROC against label fraction for each probe / fine-tuning series."""
    fig = _figure(6, 4.2)
    ax = fig.add_subplot()
    for name, points in curves.items():
        fr = sorted(points, key=float)
        ax.plot(
            [float(f) for f in fr],
            [np.nan if points[f] is None else points[f] for f in fr],
            marker="o",
            label=name,
        )
    ax.set_xscale("log")
    ax.set(xlabel="label fraction of training patients", ylabel="macro AUROC", title=title)
    ax.legend(fontsize=7)
    return _png(fig)


# --------------------------------------------------------------------------- HTML

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}figure{margin:1em 0}
figcaption{font-size:.85em;color:#555}img{max-width:100%}.note{color:#666;font-size:.9em}
"""


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)) and len(v) == 3:
        lo, p, hi = v
        if p is None:
            return "-"
        ci = "" if lo is None else f" <small>[{lo:.3f}, {hi:.3f}]</small>"
        return f"{p:.3f}{ci}"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 1000 else f"{v:.0f}"
    return html.escape(str(v))


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; cells may be ``[low, point, high]`` triples, numbers or strings."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def image(png: bytes, caption: str, name: str) -> str:
    """An embedded PNG figure with a caption; `name` becomes its ``data-figure`` attribute."""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure data-figure="{html.escape(name)}"><img alt="{html.escape(caption)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}</figcaption></figure>'
    )


def write_report(
    path: str | os.PathLike[str], title: str, sections: Sequence[tuple[str, str]]
) -> Path:
    """Write the page: `sections` are (heading, HTML body) pairs, in order."""
    parts = [f"<h1>{html.escape(title)}</h1>"]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>\n{body}")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        + "\n".join(parts)
        + "\n</body></html>\n"
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, p)
    return p
