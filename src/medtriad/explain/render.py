"""Drawing explanations: X-ray overlays, a 12-lead ECG with heat strips, highlighted report text,
and the self-contained ``explain.html`` that holds them all (PNGs inlined as base64).

Matplotlib runs on the Agg backend through its object API (no pyplot state), so rendering is
safe in a server thread.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medtriad.explain.maps import normalise

__all__ = ["ecg_png", "html_page", "overlay_png", "png_data_uri", "text_html"]

_CMAP = "jet"
_ALPHA = 0.45


def _png(fig: Figure, dpi: int = 100) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def overlay_png(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    title: str = "",
    peaks: Mapping[str, tuple[int, int]] | None = None,
) -> bytes:
    """The X-ray (H, W) beside one heat overlay per map (same shape, NaN transparent)."""
    n = 1 + len(maps)
    h, w = image.shape
    side = 3.2
    fig = Figure(figsize=(side * n * w / max(h, w) + 0.4 * n, side + 0.5))
    axes = fig.subplots(1, n, squeeze=False)[0]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
    axes[0].set_title("input", fontsize=9)
    for ax, (name, m) in zip(axes[1:], maps.items()):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="lanczos")
        ax.imshow(np.ma.masked_invalid(normalise(m)), cmap=_CMAP, alpha=_ALPHA, vmin=0, vmax=1)
        if peaks and name in peaks:
            r, c = peaks[name]
            ax.plot([c], [r], marker="+", color="white", markersize=12, mew=2)
        ax.set_title(name.replace("_", " "), fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def ecg_png(
    signal: np.ndarray,
    fs: float,
    strips: Mapping[str, np.ndarray],
    *,
    leads: Sequence[str],
    lead_importance: np.ndarray | None = None,
    lead_mask: np.ndarray | None = None,
    title: str = "",
) -> bytes:
    """A 12-lead ECG (one row per lead, mV grid) with one heat strip per map under it.

    Each strip is a (T,) map on the signal's time axis; lead labels carry the lead's
    occlusion importance when given; missing leads are drawn grey.
    """
    n_leads, t = signal.shape
    time = np.arange(t) / fs
    fig = Figure(figsize=(max(8.0, t / fs * 1.1), 0.55 * n_leads + 0.45 * len(strips) + 0.8))
    grid = fig.add_gridspec(
        n_leads + len(strips),
        1,
        height_ratios=[1.0] * n_leads + [0.6] * len(strips),
        hspace=0.08,
        top=0.95,
    )
    span = (
        float(np.nanmax(np.abs(signal)))
        if np.isfinite(signal).any() and np.abs(signal).max() > 0
        else 1.0
    )
    axes = [fig.add_subplot(grid[i]) for i in range(n_leads + len(strips))]
    for i, ax in enumerate(axes[:n_leads]):
        present = lead_mask is None or bool(lead_mask[i])
        ax.plot(time, signal[i], color="black" if present else "0.7", linewidth=0.6)
        ax.set_ylim(-span, span)
        ax.set_xlim(0, t / fs)
        ax.set_yticks([])
        ax.set_xticks(np.arange(0, t / fs + 1e-9, 0.2), minor=True)
        ax.grid(True, which="both", axis="x", color="#f4b6b6", linewidth=0.4)
        label = leads[i] if lead_importance is None else f"{leads[i]}\n{lead_importance[i]:+.3f}"
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
        ax.tick_params(which="both", labelbottom=False, length=0)
        for s in ax.spines.values():
            s.set_visible(False)
    for ax, (name, strip) in zip(axes[n_leads:], strips.items()):
        ax.imshow(
            normalise(strip)[None],
            aspect="auto",
            cmap=_CMAP,
            vmin=0,
            vmax=1,
            extent=(0, t / fs, 0, 1),
        )
        ax.set_yticks([])
        ax.set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=7)
        ax.tick_params(labelbottom=ax is axes[-1], labelsize=7)
    axes[-1].set_xlabel("time (s)", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _png(fig)


def text_html(
    parts: Sequence[str], spans: Sequence[tuple[int, int, int]], scores: np.ndarray
) -> str:
    """The report as HTML with each word's background shaded by its attribution.

    Red for positive, blue for negative, opacity proportional to |score| / max |score|; the
    score is in each word's tooltip. Text between words is kept as it is.
    """
    scores = np.asarray(scores, dtype=np.float64)
    top = float(np.abs(scores).max()) if len(scores) and np.abs(scores).max() > 0 else 1.0
    by_part: dict[int, list[tuple[int, int, float]]] = {}
    for (part, a, b), s in zip(spans, scores):
        by_part.setdefault(part, []).append((a, b, float(s)))
    out = []
    for p, text in enumerate(parts):
        pos, pieces = 0, []
        for a, b, s in sorted(by_part.get(p, [])):
            pieces.append(html.escape(text[pos:a]))
            rgb = "220,40,40" if s >= 0 else "40,90,220"
            pieces.append(
                f'<span class="w" style="background:rgba({rgb},{abs(s) / top:.2f})" '
                f'title="{s:+.4f}">{html.escape(text[a:b])}</span>'
            )
            pos = b
        pieces.append(html.escape(text[pos:]))
        out.append(f'<p class="report">{"".join(pieces)}</p>')
    return "\n".join(out)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse}
td,th{padding:.2em .8em;border-bottom:1px solid #eee;text-align:left}
img{max-width:100%} .report{line-height:1.9;font-size:1.02em} .w{border-radius:3px;padding:1px 1px}
.note{color:#666;font-size:.9em}
"""


def html_page(title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page from (heading, HTML body) sections."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )
