"""Parameter counts per modality (trainable / total), as rows and as a rich table.

`model_summary` builds the model a config describes. When the config requires a text checkpoint
that is not set (``model.report.require_path`` with ``model.report.path`` null), the report rows
are counted on a RoBERTa-base architecture built on the meta device (no weights, no memory) and
marked as estimated, so the other modalities can still be inspected.
"""

from __future__ import annotations

import logging

import torch
from rich.table import Table

from medtriad.config import Config
from medtriad.models.heads import build_head
from medtriad.models.model import ParamCount, build_encoder, build_model
from medtriad.models.text import TextEncoder

log = logging.getLogger(__name__)

__all__ = ["model_summary", "summary_table"]

ESTIMATE_NOTE = "RoBERTa-base estimate"


def _roberta_base_estimate(config: Config) -> list[ParamCount]:
    """Report rows for a RoBERTa-base encoder with the configured LoRA/freeze settings and head."""
    from transformers import AutoModel, RobertaConfig

    cfg = config.model.report
    with torch.device("meta"):
        backbone = AutoModel.from_config(
            RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1)
        )
        backbone.pooler = None
        if cfg.lora.enabled:
            backbone = TextEncoder._add_lora(backbone, cfg, "model.report")
        elif cfg.freeze:
            backbone.requires_grad_(False)
        head = build_head(config.model.head, backbone.config.hidden_size, config.model.embed_dim)
    enc = ParamCount.of("report", "encoder", backbone, ESTIMATE_NOTE)
    hd = ParamCount.of("report", "head", head)
    return [
        enc,
        hd,
        ParamCount(
            "report", "total", enc.trainable + hd.trainable, enc.total + hd.total, ESTIMATE_NOTE
        ),
    ]


def _report_rows(config: Config) -> list[ParamCount]:
    report = config.model.report
    if report.path is None and report.require_path:
        log.warning(
            "model.report.path is not set: report parameters are estimated on a RoBERTa-base "
            "architecture; set it to count the real checkpoint"
        )
        return _roberta_base_estimate(config)
    encoder = build_encoder("report", config)
    head = build_head(config.model.head, encoder.dim, config.model.embed_dim)
    enc, hd = ParamCount.of("report", "encoder", encoder), ParamCount.of("report", "head", head)
    return [
        enc,
        hd,
        ParamCount("report", "total", enc.trainable + hd.trainable, enc.total + hd.total),
    ]


def model_summary(config: Config) -> list[ParamCount]:
    """Trainable / total parameter counts per modality (encoder, head, total) and for the whole model.

    X-ray and ECG encoders are built on the meta device (shapes only: fast, no memory, no weight
    files read); the report encoder is read from its checkpoint, or estimated (see module doc).
    """
    others = [m for m in config.data.modalities if m != "report"]
    with torch.device("meta"):
        model = build_model(config, modalities=others, load_pretrained=False)
    rows = model.parameter_summary()
    every, rows = rows[-1], rows[:-1]
    if "report" in config.data.modalities:
        text = _report_rows(config)
        rows += text
        every = ParamCount(
            "all",
            "total",
            every.trainable + text[-1].trainable,
            every.total + text[-1].total,
            text[-1].note,
        )
    return rows + [every]


def _count(n: int) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 100_000 else f"{n:,}"


def summary_table(rows: list[ParamCount]) -> Table:
    """A rich table of `model_summary` rows."""
    table = Table(title="Parameters", show_lines=False)
    for name, justify in (
        ("modality", "left"),
        ("part", "left"),
        ("trainable", "right"),
        ("total", "right"),
        ("trainable %", "right"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        share = f"{100 * row.trainable / row.total:.2f}" if row.total else "-"
        style = "bold" if row.part == "total" else None
        table.add_row(
            row.modality,
            row.part,
            _count(row.trainable),
            _count(row.total),
            share,
            row.note,
            style=style,
        )
    return table
