"""`curves.png`: training and validation loss, retrieval and the logit scale over steps."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_curves(metrics_file: str | Path, out: str | Path) -> Path:
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val/loss" in r]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if val:
        ax.plot([r["step"] for r in val], [r["val/loss"] for r in val], "o-", label="validation")
    ax.set(title="loss", xlabel="step")
    ax.legend()
    ax = axes[1]
    pairs = sorted({k.split("/")[1] for r in val for k in r if k.endswith("/R@5")})
    for pair in pairs:
        pts = [(r["step"], r[f"val/{pair}/R@5"]) for r in val if f"val/{pair}/R@5" in r]
        ax.plot(*zip(*pts), "o-", label=pair)
    ax.set(title="validation retrieval R@5", xlabel="step", ylim=(0, 1))
    if pairs:
        ax.legend(fontsize=7)
    ax = axes[2]
    ax.plot([r["step"] for r in train], [r["logit_scale"] for r in train])
    ax.set(title="logit scale", xlabel="step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)
