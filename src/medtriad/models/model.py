"""`MultiModalModel`: an encoder and a projection head per modality, and a learnable logit scale.

``encode(batch)`` turns whatever modalities a batch holds into (B, embed_dim) unit vectors. A
batch is either a mapping ``{"cxr": (B, 1, H, W), "ecg": (B, leads, T), "report": texts}``
(optional ``"ecg_lead_mask"``: (B, leads) bool; ``"report"`` may instead be a mapping with
``input_ids`` and ``attention_mask`` from pre-tokenised shards), or any object whose ``.inputs`` is
such a mapping (the data loader's batch). Rows flagged absent in ``batch.present`` are still
encoded (their inputs are zero-filled); the losses ignore them. A modality missing from the
inputs is not encoded.

A saved model is a directory: ``config.yaml``, ``model.safetensors`` and, with a report encoder,
``report/`` (tokenizer and architecture), so `from_pretrained` needs nothing outside it; with
an X-ray encoder, trained models also hold ``reference_cxr.npz`` (`medtriad.explain.reference`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.config import Config, load_config, save_config
from medtriad.errors import ConfigError, DataError
from medtriad.models.ecg import build_ecg_encoder
from medtriad.models.heads import build_head
from medtriad.models.text import TextEncoder, resolve_text_path
from medtriad.models.vit import build_vit

log = logging.getLogger(__name__)

__all__ = ["MultiModalModel", "ParamCount", "build_model", "input_sizes"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TEXT_SOURCE_DIR = "report"


@dataclass(frozen=True)
class ParamCount:
    """Trainable and total parameter counts of one part of the model."""

    modality: str
    part: str
    trainable: int
    total: int
    note: str = ""

    @classmethod
    def of(cls, modality: str, part: str, module: nn.Module, note: str = "") -> ParamCount:
        params = list(module.parameters())
        return cls(
            modality,
            part,
            sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() for p in params),
            note,
        )


def input_sizes(config: Config) -> dict[str, int]:
    """Resolved input sizes: X-ray side, ECG samples and text tokens (model setting, else data's)."""
    m, d = config.model, config.data
    return {
        "cxr": m.cxr.image_size or d.cxr.size,
        "ecg": m.ecg.length or round(d.ecg.fs * d.ecg.seconds),
        "report": m.report.max_length or d.report.max_length,
    }


def build_encoder(
    modality: str,
    config: Config,
    *,
    text_source: str | Path | None = None,
    load_pretrained: bool = True,
) -> nn.Module:
    """The encoder of one modality; ``load_pretrained`` False skips external vision weights."""
    sizes = input_sizes(config)
    if modality == "cxr":
        cfg = config.model.cxr
        if not load_pretrained and cfg.pretrained:
            cfg = dataclasses.replace(cfg, pretrained=None)
        return build_vit(cfg, sizes["cxr"])
    if modality == "ecg":
        if sizes["ecg"] < config.model.ecg.patch_size:
            raise ConfigError(
                "model.ecg.patch_size", f"longer than the ECG ({sizes['ecg']} samples)"
            )
        return build_ecg_encoder(config.model.ecg, sizes["ecg"])
    if modality == "report":
        return TextEncoder(config.model.report, sizes["report"], source=text_source)
    raise ConfigError("data.modalities", f"no encoder for modality {modality!r}")


class MultiModalModel(nn.Module):
    """Encoders and heads per modality (``config.data.modalities``) and a learnable logit scale."""

    def __init__(
        self,
        config: Config,
        *,
        modalities: Sequence[str] | None = None,
        text_source: str | Path | None = None,
        load_pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        mc = config.model
        self.encoders = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        modalities = list(modalities if modalities is not None else config.data.modalities)
        if "report" in modalities and text_source is None:
            resolve_text_path(mc.report)  # fail before spending time on the other encoders
        for modality in modalities:
            encoder = build_encoder(
                modality, config, text_source=text_source, load_pretrained=load_pretrained
            )
            self.encoders[modality] = encoder
            self.heads[modality] = build_head(mc.head, encoder.dim, mc.embed_dim)
        self.log_logit_scale = nn.Parameter(
            torch.tensor(math.log(mc.logit_scale_init)), requires_grad=mc.learn_logit_scale
        )
        # the mean training X-ray without a finding (`medtriad.explain.reference`), saved with
        # the model; the occlusion map's ``reference`` fill reads it
        self.reference_cxr: Any = None

    # ----------------------------------------------------------------------- properties

    @property
    def modalities(self) -> list[str]:
        return list(self.encoders)

    @property
    def logit_scale(self) -> Tensor:
        """exp of the learnt log scale, capped at ``model.logit_scale_max``."""
        return self.log_logit_scale.exp().clamp(max=self.config.model.logit_scale_max)

    @property
    def device(self) -> torch.device:
        return self.log_logit_scale.device

    # ----------------------------------------------------------------------- encoding

    def tokenize(self, texts: Sequence[str | None]) -> dict[str, Tensor]:
        """Token ids and attention mask from the report encoder's tokenizer and max length."""
        return self._text_encoder().tokenize(texts)

    def _text_encoder(self) -> TextEncoder:
        if "report" not in self.encoders:
            raise ConfigError("data.modalities", "this model has no report encoder")
        return self.encoders["report"]  # type: ignore[return-value]

    def _tensor(self, modality: str, x: Any, ndim: int, channels: int) -> Tensor:
        if not isinstance(x, Tensor) or x.ndim != ndim or x.shape[1] != channels:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{modality} input must be a tensor of {ndim} dims with {channels} channels, got {shape}"
            )
        return x.to(self.device, torch.float32, non_blocking=True)

    def features(self, modality: str, x: Any, inputs: Mapping[str, Any] | None = None) -> Tensor:
        """Pooled encoder features (B, D) of one modality's input (before the head)."""
        encoder = self.encoders[modality]
        if modality == "cxr":
            return encoder(self._tensor(modality, x, 4, 1))
        if modality == "ecg":
            mask = None if inputs is None else inputs.get("ecg_lead_mask")
            return encoder(self._tensor(modality, x, 3, encoder.leads), mask)
        if modality == "report":
            return encoder(_texts(x))
        raise ConfigError("data.modalities", f"no encoder for modality {modality!r}")

    def encode(self, batch: Any, *, normalize: bool = True) -> dict[str, Tensor]:
        """{modality: (B, embed_dim)} for each modality of the model present in the batch's inputs.

        Vectors are float32 (also under autocast: a logit scale of 50 needs more than bf16's
        three digits) and L2-normalised unless ``normalize`` is False (for losses that need raw ones).
        """
        return self.encode_with_tokens(batch, (), normalize=normalize)[0]

    def encode_with_tokens(
        self, batch: Any, token_modalities: Sequence[str], *, normalize: bool = True
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """`encode`, plus the projected patch/time tokens of `token_modalities` (cxr, ecg):
        ``{modality: (B, N, embed_dim)}``, class token and registers left out, not normalised.

        One encoder pass gives both, for losses that read tokens (`medtriad.losses.local`).
        """
        inputs = getattr(batch, "inputs", batch)
        if not isinstance(inputs, Mapping):
            raise TypeError(f"a batch is a mapping or has .inputs, got {type(batch).__name__}")
        out: dict[str, Tensor] = {}
        tokens_out: dict[str, Tensor] = {}
        for modality in self.encoders:
            if inputs.get(modality) is None:
                continue
            if modality in token_modalities:
                encoder = self.encoders[modality]
                tokens = self.forward_tokens(modality, inputs[modality], inputs.get("ecg_lead_mask"))
                feats = encoder.pool_tokens(tokens)
                tokens_out[modality] = self.heads[modality](tokens[:, encoder.n_prefix :]).float()
            else:
                feats = self.features(modality, inputs[modality], inputs)
            z = self.heads[modality](feats).float()
            out[modality] = F.normalize(z, dim=-1) if normalize else z
        return out, tokens_out

    def forward(self, batch: Any) -> dict[str, Tensor]:
        return self.encode(batch)

    def forward_tokens(self, modality: str, x: Any, lead_mask: Tensor | None = None) -> Tensor:
        """Encoder token features: (B, 1 + N, D) for cxr/ecg (class token first), (B, L, D) for text."""
        if modality == "cxr":
            return self.encoders[modality].forward_tokens(self._tensor(modality, x, 4, 1))
        if modality == "ecg":
            encoder = self.encoders[modality]
            return encoder.forward_tokens(self._tensor(modality, x, 3, encoder.leads), lead_mask)
        text = self._text_encoder()
        return text.forward_tokens(_texts(x) if isinstance(x, Mapping) else text.tokenize(x))

    def project_tokens(self, modality: str, tokens: Tensor, *, normalize: bool = True) -> Tensor:
        """Apply a modality's head to each token: (B, N, D) -> (B, N, embed_dim).

        Meant for eval mode (patch-text similarity maps); in training a BatchNorm head would
        treat the tokens as one large batch and update its statistics.
        """
        b, n, d = tokens.shape
        z = self.heads[modality](tokens.reshape(b * n, d)).reshape(b, n, -1).float()
        return F.normalize(z, dim=-1) if normalize else z

    # ----------------------------------------------------------------------- parameters

    def parameter_summary(self) -> list[ParamCount]:
        """Trainable / total parameters per modality (encoder, head, both) and for the whole model."""
        rows: list[ParamCount] = []
        for modality in self.encoders:
            enc = ParamCount.of(modality, "encoder", self.encoders[modality])
            head = ParamCount.of(modality, "head", self.heads[modality])
            rows += [
                enc,
                head,
                ParamCount(
                    modality, "total", enc.trainable + head.trainable, enc.total + head.total
                ),
            ]
        rows.append(ParamCount.of("all", "total", self))
        return rows

    # ----------------------------------------------------------------------- saving

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.yaml``, ``model.safetensors`` (and ``report/``, and with a reference
        X-ray ``reference_cxr.npz``) into `directory`."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_config(self.config, directory / CONFIG_FILE)
        if "report" in self.encoders:
            self._text_encoder().save_source(directory / TEXT_SOURCE_DIR)
        if self.reference_cxr is not None:
            from medtriad.explain.reference import save_reference

            save_reference(self.reference_cxr, directory)
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_model(self, str(tmp))
        os.replace(tmp, directory / WEIGHTS_FILE)
        log.info("saved model to %s", directory)
        return directory

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, map_location: str | torch.device = "cpu"
    ) -> MultiModalModel:
        """Rebuild a model written by `save_pretrained` (nothing outside `directory` is read)."""
        from safetensors.torch import load_model

        directory = Path(directory)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise DataError(weights, "no saved model weights here")
        config = load_config(directory / CONFIG_FILE)
        source = directory / TEXT_SOURCE_DIR
        model = build_model(
            config, text_source=source if source.is_dir() else None, load_pretrained=False
        )
        try:
            load_model(model, str(weights), strict=True, device=str(map_location))
        except (RuntimeError, OSError) as exc:
            raise DataError(weights, f"weights do not fit the saved config: {exc}") from exc
        if "cxr" in model.encoders:
            from medtriad.explain.reference import load_reference

            model.reference_cxr = load_reference(directory, config.data.cxr.size)
        return model.to(map_location)


def _texts(x: Any) -> Sequence[str | None] | Mapping[str, Tensor]:
    if isinstance(x, Mapping):
        if "input_ids" not in x:
            raise ValueError("pre-tokenised report input needs 'input_ids'")
        return x
    if isinstance(x, str) or not isinstance(x, Sequence):
        raise TypeError(
            f"report input must be a list of texts or token ids, got {type(x).__name__}"
        )
    return x


def build_model(
    config: Config,
    *,
    modalities: Sequence[str] | None = None,
    text_source: str | Path | None = None,
    load_pretrained: bool = True,
) -> MultiModalModel:
    """The model a config describes, initialised reproducibly from ``config.seed``.

    The global random state is left as it was. ``modalities`` restricts the encoders built (default:
    ``config.data.modalities``); ``text_source`` and ``load_pretrained`` serve `from_pretrained`.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return MultiModalModel(
            config, modalities=modalities, text_source=text_source, load_pretrained=load_pretrained
        )
