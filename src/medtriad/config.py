"""Typed configuration: dataclasses, YAML in and out, strict validation.

A config file is YAML whose keys mirror the dataclasses below. Unknown keys, wrong types and
out-of-range values raise `ConfigError` naming the dotted key (e.g. ``data.ecg.fs``), so a typo
never silently falls back to a default. Any value can be overridden with ``dotted.key=value``
strings (the CLI's ``--set``), parsed as YAML scalars.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from medtriad.errors import ConfigError

T = TypeVar("T")

# --------------------------------------------------------------------------- sections


@dataclass
class CxrConfig:
    """How X-rays are turned into model inputs."""

    size: int = 64
    fit: Literal["pad", "crop"] = "pad"
    clahe: bool = False

    def check(self, key: str) -> None:
        _positive(self.size, f"{key}.size")


@dataclass
class EcgConfig:
    """How ECG records are turned into model inputs (float32 (12, fs*seconds) in mV)."""

    fs: int = 100
    seconds: float = 10.0
    highpass: float | None = 0.5
    lowpass: float | None = 40.0
    nan_policy: Literal["raise", "interpolate", "zero"] = "interpolate"
    normalize: Literal["none", "zscore", "minmax"] = "none"

    def check(self, key: str) -> None:
        _positive(self.fs, f"{key}.fs")
        _positive(self.seconds, f"{key}.seconds")
        if self.lowpass is not None and self.lowpass >= self.fs / 2:
            raise ConfigError(f"{key}.lowpass", f"{self.lowpass} Hz is not below Nyquist ({self.fs / 2} Hz)")


@dataclass
class ReportConfig:
    """How report text is prepared before tokenisation."""

    sections: list[str] = field(default_factory=lambda: ["findings", "impression"])
    max_length: int = 128

    def check(self, key: str) -> None:
        _positive(self.max_length, f"{key}.max_length")


MODALITIES: tuple[str, ...] = ("cxr", "ecg", "report")


@dataclass
class DataConfig:
    """Which modalities are used and how each is preprocessed."""

    modalities: list[str] = field(default_factory=lambda: list(MODALITIES))
    cxr: CxrConfig = field(default_factory=CxrConfig)
    ecg: EcgConfig = field(default_factory=EcgConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def check(self, key: str) -> None:
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown:
            raise ConfigError(f"{key}.modalities", f"unknown modality {unknown}; known: {list(MODALITIES)}")
        if len(set(self.modalities)) < 2:
            raise ConfigError(f"{key}.modalities", "contrastive pre-training needs at least two modalities")


EncoderSize = Literal["mini", "tiny", "small", "base", "custom"]
DropKeySchedule = Literal["constant", "linear_decrease", "linear_increase"]
TokenPool = Literal["cls", "mean"]

ENCODER_SIZES: dict[str, tuple[int, int, int]] = {
    "mini": (128, 4, 4),
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "base": (768, 12, 12),
}
"""Transformer presets as (width, depth, heads); ``base`` is ViT-B, ``mini`` fits a 2-core demo."""


def _transformer_dims(cfg: Any, key: str) -> tuple[int, int, int]:
    """(dim, depth, heads) of an encoder config: the preset, with explicit values taking precedence."""
    if cfg.size == "custom":
        missing = [k for k in ("dim", "depth", "heads") if getattr(cfg, k) is None]
        if missing:
            raise ConfigError(f"{key}.{missing[0]}", "size 'custom' needs explicit dim, depth and heads")
        return cfg.dim, cfg.depth, cfg.heads
    dim, depth, heads = ENCODER_SIZES[cfg.size]
    return (cfg.dim or dim, cfg.depth or depth, cfg.heads or heads)


def _check_transformer(cfg: Any, key: str) -> None:
    for name in ("dim", "depth", "heads"):
        value = getattr(cfg, name)
        if value is not None:
            _positive(value, f"{key}.{name}")
    dim, _, heads = _transformer_dims(cfg, key)
    if dim % heads:
        raise ConfigError(f"{key}.heads", f"width {dim} is not divisible by {heads} heads")
    _positive(cfg.mlp_ratio, f"{key}.mlp_ratio")
    if not 0.0 <= cfg.dropkey < 1.0:
        raise ConfigError(f"{key}.dropkey", f"must be in [0, 1), got {cfg.dropkey}")


@dataclass
class VitConfig:
    """The X-ray encoder: a Vision Transformer on 1-channel images, with DropKey.

    ``size`` picks a preset (``base`` = ViT-B); ``dim``/``depth``/``heads`` override it (all three
    are needed for ``custom``). ``image_size`` null means ``data.cxr.size``. ``stem: conv`` replaces
    the patchifying convolution by stride-2 3x3 convolutions (the patch size must then be a power
    of two). ``dropkey`` is the largest per-layer probability of masking an attention logit in
    training; ``dropkey_schedule`` spreads it over the layers. ``pretrained`` is a local timm-format
    ViT checkpoint (``.safetensors`` or ``.pth``) to start from. ``pool`` picks the image feature:
    ``cls`` (the class token, as MoRE) or ``mean`` (the mean of the patch tokens; with a linear
    head, the embedding is then the mean of the patches' projections, so the patch-text similarity
    map is an exact decomposition of the match). ``registers`` adds that many learned tokens
    (no position) that take part in attention but not in the embedding or the maps: a place for
    global information other than the patches. ``attention_radius`` R makes every layer's patch
    attention local: a patch reads only the patches within R rows and columns (not the class
    token or registers), so its token describes its neighbourhood and the maps stay where the
    evidence is; 0 leaves each patch token to its own patch (the stem's receptive field), null is
    global attention.
    """

    size: EncoderSize = "mini"
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    patch_size: int = 8
    image_size: int | None = None
    stem: Literal["patch", "conv"] = "patch"
    dropkey: float = 0.1
    dropkey_schedule: DropKeySchedule = "linear_decrease"
    pretrained: str | None = None
    pool: TokenPool = "cls"
    registers: int = 0
    attention_radius: int | None = None

    def check(self, key: str) -> None:
        _check_transformer(self, key)
        _positive(self.patch_size, f"{key}.patch_size")
        if self.attention_radius is not None:
            if self.attention_radius < 0:
                raise ConfigError(f"{key}.attention_radius", f"must be >= 0 or null, got {self.attention_radius}")
            if self.registers:
                raise ConfigError(
                    f"{key}.registers",
                    "with attention_radius no patch reads the registers, so they would change nothing: set 0",
                )
        if self.image_size is not None:
            _positive(self.image_size, f"{key}.image_size")
        if self.registers < 0:
            raise ConfigError(f"{key}.registers", f"must be >= 0, got {self.registers}")
        if self.stem == "conv" and self.patch_size & (self.patch_size - 1):
            raise ConfigError(f"{key}.patch_size", f"stem 'conv' needs a power of two, got {self.patch_size}")

    def dims(self, key: str = "model.cxr") -> tuple[int, int, int]:
        """(dim, depth, heads) after applying the preset."""
        return _transformer_dims(self, key)


@dataclass
class EcgEncoderConfig:
    """The ECG encoder: convolutional patches over time, then DropKey transformer blocks.

    The stem is Conv1d(leads -> ``stem_channels``, kernel = stride = ``patch_size``), ReLU,
    BatchNorm, Conv1d(-> width, kernel ``kernel_size``, stride 1, same padding), ReLU, BatchNorm
    (MoRE: 256 channels, patch 5, kernel 5). ``length`` null means ``data.ecg.fs * seconds``.
    ``pool``: ``cls`` (the class token) or ``mean`` (the mean of the time tokens), as for X-rays.
    """

    size: EncoderSize = "mini"
    dim: int | None = None
    depth: int | None = None
    heads: int | None = None
    mlp_ratio: float = 4.0
    leads: int = 12
    length: int | None = None
    patch_size: int = 5
    stem_channels: int = 256
    kernel_size: int = 5
    dropkey: float = 0.1
    dropkey_schedule: DropKeySchedule = "linear_decrease"
    pool: TokenPool = "cls"

    def check(self, key: str) -> None:
        _check_transformer(self, key)
        for name in ("leads", "patch_size", "stem_channels", "kernel_size"):
            _positive(getattr(self, name), f"{key}.{name}")
        if self.length is not None and self.length < self.patch_size:
            raise ConfigError(f"{key}.length", f"{self.length} samples is shorter than one patch ({self.patch_size})")

    def dims(self, key: str = "model.ecg") -> tuple[int, int, int]:
        """(dim, depth, heads) after applying the preset."""
        return _transformer_dims(self, key)


@dataclass
class LoraConfig:
    """Low-rank adapters on the text encoder (base weights frozen). MoRE: r=16, alpha=8, 0.1."""

    enabled: bool = True
    r: int = 16
    alpha: float = 8.0
    dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["query", "value"])

    def check(self, key: str) -> None:
        _positive(self.r, f"{key}.r")
        _positive(self.alpha, f"{key}.alpha")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{key}.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.enabled and not self.target_modules:
            raise ConfigError(f"{key}.target_modules", "LoRA needs at least one target module")


@dataclass
class TextEncoderConfig:
    """The report encoder: a Hugging Face encoder read from a local directory.

    ``path`` null means the bundled all-MiniLM-L6-v2; with ``require_path`` set, null is an error
    at build time (the config names a checkpoint the user must supply). ``freeze`` keeps the whole
    encoder fixed (no LoRA), so its embeddings may be cached. ``pair_sections`` feeds radiology and
    cardiology text as a sentence pair. ``max_length`` null means ``data.report.max_length``.
    """

    path: str | None = None
    require_path: bool = False
    pooling: Literal["cls", "mean"] = "mean"
    lora: LoraConfig = field(default_factory=LoraConfig)
    freeze: bool = False
    pair_sections: bool = False
    max_length: int | None = None

    def check(self, key: str) -> None:
        if self.freeze and self.lora.enabled:
            raise ConfigError(f"{key}.freeze", "a frozen encoder cannot train LoRA adapters: set lora.enabled false")
        if self.max_length is not None:
            _positive(self.max_length, f"{key}.max_length")


@dataclass
class HeadConfig:
    """Projection heads. ``more``: Linear-BN-ReLU-Linear-BN; ``linear``: one Linear.

    ``hidden`` null means the encoder's width.
    """

    type: Literal["more", "linear"] = "more"
    hidden: int | None = None

    def check(self, key: str) -> None:
        if self.hidden is not None:
            _positive(self.hidden, f"{key}.hidden")


@dataclass
class ModelConfig:
    """Encoders and heads per modality, the embedding width and the initial logit scale."""

    embed_dim: int = 128
    head: HeadConfig = field(default_factory=HeadConfig)
    logit_scale_init: float = 1 / 0.07
    logit_scale_max: float = 100.0
    learn_logit_scale: bool = True
    cxr: VitConfig = field(default_factory=VitConfig)
    ecg: EcgEncoderConfig = field(default_factory=EcgEncoderConfig)
    report: TextEncoderConfig = field(default_factory=TextEncoderConfig)

    def check(self, key: str) -> None:
        _positive(self.embed_dim, f"{key}.embed_dim")
        _positive(self.logit_scale_init, f"{key}.logit_scale_init")
        if self.logit_scale_max < self.logit_scale_init:
            raise ConfigError(
                f"{key}.logit_scale_max", f"{self.logit_scale_max} is below logit_scale_init {self.logit_scale_init}"
            )


LOCAL_SECTIONS: dict[str, str] = {"cxr": "radiology", "ecg": "cardiology"}
"""The report part whose sentences each modality's tokens are aligned with."""


@dataclass
class LocalLossConfig:
    """Local alignment of tokens with report sentences (`medtriad.losses.local`).

    ``weight`` 0 switches it off. ``modalities`` are the inputs whose tokens take part (X-ray
    patches against radiology sentences, ECG time tokens against cardiology ones); ``tau`` is
    the soft-maximum temperature over tokens; ``max_sentences`` caps the sentences read per
    report part (the first ones are kept).
    """

    weight: float = 0.0
    tau: float = 0.1
    modalities: list[str] = field(default_factory=lambda: ["cxr"])
    max_sentences: int = 16

    def check(self, key: str) -> None:
        if self.weight < 0:
            raise ConfigError(f"{key}.weight", f"must not be negative, got {self.weight}")
        _positive(self.tau, f"{key}.tau")
        _positive(self.max_sentences, f"{key}.max_sentences")
        unknown = [m for m in self.modalities if m not in LOCAL_SECTIONS]
        if unknown:
            raise ConfigError(f"{key}.modalities", f"{unknown} have no tokens to align; use {sorted(LOCAL_SECTIONS)}")


@dataclass
class LossConfig:
    """The contrastive objective: a registered loss, its settings, weighted regularisers, and
    the local token-sentence term.

    ``settings`` go to the loss's constructor (e.g. ``label_smoothing`` for ``clip``);
    ``regularizers`` maps a regulariser name (``uniformity``, ``cross_uniformity``,
    ``alignment``) to its weight; ``local`` adds `LocalLossConfig`'s term with its weight.
    """

    name: str = "more"
    settings: dict[str, Any] = field(default_factory=dict)
    regularizers: dict[str, float] = field(default_factory=dict)
    local: LocalLossConfig = field(default_factory=LocalLossConfig)


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied to whole batches on the training device.

    X-ray: random resized crop (area fraction ``cxr_crop_scale``..1, aspect kept) with small
    rotation, brightness/contrast jitter and Gaussian noise. ECG: per-record amplitude scaling,
    a random circular time shift and Gaussian noise (mV).
    """

    enabled: bool = False
    cxr_crop_scale: float = 0.7
    cxr_rotate_deg: float = 5.0
    cxr_brightness: float = 0.1
    cxr_contrast: float = 0.1
    cxr_noise: float = 0.01
    ecg_scale: float = 0.1
    ecg_shift: float = 0.5
    ecg_noise: float = 0.02

    def check(self, key: str) -> None:
        if not 0.0 < self.cxr_crop_scale <= 1.0:
            raise ConfigError(f"{key}.cxr_crop_scale", f"must lie in (0, 1], got {self.cxr_crop_scale}")


@dataclass
class TrainConfig:
    """The optimisation: batch, schedule, precision, checkpoints.

    ``batch_size`` is the global batch (all processes together); ``chunk_size`` turns on
    gradient caching: each process encodes its share in chunks of this many samples, so the
    contrastive batch can be far larger than what fits in memory at once. ``max_minutes`` stops
    training (with a checkpoint and validation) when the time budget is spent.
    """

    epochs: int = 10
    max_steps: int | None = None
    max_minutes: float | None = None
    batch_size: int = 64
    chunk_size: int | None = None
    lr: float = 5e-4
    min_lr_factor: float = 0.0
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    lr_mult: dict[str, float] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)
    modality_dropout: dict[str, float] = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: str = "auto"
    workers: int = 0
    threads: int | None = None
    cache_text: bool = True
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    validate_every: int = 1  # epochs between validations (0: only at the end)
    tensorboard: bool = False

    def check(self, key: str) -> None:
        _positive(self.epochs, f"{key}.epochs")
        _positive(self.batch_size, f"{key}.batch_size")
        _positive(self.lr, f"{key}.lr")
        _positive(self.checkpoint_every, f"{key}.checkpoint_every")
        _positive(self.log_every, f"{key}.log_every")
        if self.validate_every < 0:
            raise ConfigError(f"{key}.validate_every", f"must be 0 or more, got {self.validate_every}")
        for name in ("max_steps", "max_minutes", "chunk_size", "grad_clip", "threads"):
            value = getattr(self, name)
            if value is not None:
                _positive(value, f"{key}.{name}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"{key}.betas", f"needs two values in [0, 1), got {self.betas}")
        for m, p in self.modality_dropout.items():
            if m not in MODALITIES:
                raise ConfigError(f"{key}.modality_dropout.{m}", f"unknown modality; known: {list(MODALITIES)}")
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"{key}.modality_dropout.{m}", f"must lie in [0, 1), got {p}")
        for m in self.lr_mult:
            if m not in (*MODALITIES, "other"):
                raise ConfigError(f"{key}.lr_mult.{m}", f"unknown modality; known: {[*MODALITIES, 'other']}")


@dataclass
class Config:
    """A whole experiment; a run is reproducible from this object."""

    name: str = "medtriad"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------- checks


def _positive(value: float, key: str) -> None:
    if value <= 0:
        raise ConfigError(key, f"must be positive, got {value}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(_type_name(a) for a in get_args(tp))}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`, converting containers; raise with `key`."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(key, f"must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, f"must not be null (expected {_type_name(tp)})")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        args = get_args(tp)
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {str(k): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {_type_name(tp)}")


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(key or "<root>", f"expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        where = ", ".join(f"{key}.{k}" if key else str(k) for k in unknown)
        raise ConfigError(where, f"unknown key; known keys here: {sorted(names)}")
    kwargs = {name: _convert(value, hints[name], f"{key}.{name}" if key else name) for name, value in data.items()}
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        check(key or cls.__name__.lower())
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-Python (YAML-safe) form of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, creating intermediate mappings."""
    parts = dotted.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(".".join(parts[: i + 1]), "is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is parsed as a YAML scalar or list."""
    if "=" not in item:
        raise ConfigError(item, "override must look like dotted.key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(item, "override has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"cannot parse value {raw!r}: {exc}") from exc
    return key, value


def load_config(path: str | os.PathLike[str] | None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply ``key=value`` overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(None, f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(None, f"{p} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(None, f"{p} must hold a mapping at the top level")
        data = loaded or {}
    for item in overrides:
        key, value = parse_override(item)
        set_dotted(data, key, value)
    return from_dict(Config, data)


def save_config(config: Any, path: str | os.PathLike[str]) -> None:
    """Write a config dataclass as YAML (atomically: temporary file, then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
    os.replace(tmp, p)
