"""Attribution methods: what in one input drives its match with the other inputs.

Every method explains a *match score* of one input's embedding ``z`` (unit vector, the model's
``encode`` output) against the fixed embeddings of the other inputs (`MatchScore`):

* `token_similarity`: each X-ray patch / ECG time token, passed through the modality's head
  (`MultiModalModel.project_tokens`), compared with the score's target direction;
* `attention_relevance`: gradient-weighted attention rollout of the score. Per layer ``l``,
  ``Ā_l = mean_heads(relu(dS/dA_l * A_l))``; then ``R = (I + Ā_L) ... (I + Ā_1)``, not
  row-normalised (the relevance is compared within a map, so a common scale is irrelevant);
  the relevance of token ``j`` is ``R[cls, j]`` (for a mean-pooled encoder, the mean over the
  pooled tokens ``i`` of ``R[i, j]``);
* `lead_occlusion`: the score drop when one ECG lead is zeroed (all leads in one batch);
* `patch_occlusion`: for X-rays, the score drop when a square window is replaced by the image's
  mean and by a blurred copy (averaged), slid over the image; each pixel gets the mean drop of
  the windows that cover it;
* `integrated_gradients`: report token attributions on the input word embeddings, integrated
  from a baseline of ``[PAD]`` embeddings (special tokens kept) by Gauss-Legendre quadrature,
  then summed from sub-word tokens to words.

All methods run the model in eval mode (no DropKey, BatchNorm running statistics) and restore
its previous mode afterwards; inputs are batched, so a server or an evaluation can explain many
samples at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.data.text import split_combined
from medtriad.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_OCCLUSION",
    "GEOMETRIES",
    "OCCLUSION_FILLS",
    "MatchScore",
    "Occlusion",
    "TextAttribution",
    "attention_relevance",
    "embed_tokens",
    "eval_mode",
    "integrated_gradients",
    "lead_occlusion",
    "loss_geometry",
    "occlusion_fill_parts",
    "patch_occlusion",
    "resolve_fill",
    "rollout",
    "token_similarity",
]

Geometry = Literal["cosine", "mip", "volume"]
GEOMETRIES: tuple[str, ...] = ("cosine", "mip", "volume")
_LOSS_GEOMETRY = {"symile": "mip", "gram": "volume"}
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def loss_geometry(loss_name: str) -> Geometry:
    """How a loss compares a tuple: ``mip`` (Symile), ``volume`` (GRAM), else ``cosine``."""
    return _LOSS_GEOMETRY.get(loss_name, "cosine")  # type: ignore[return-value]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put `model` in eval mode for the block, then restore each submodule's own mode."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes.items():
            m.training = training


# --------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class MatchScore:
    """Score of an embedding ``z`` against fixed embeddings of the other inputs.

    ``cosine``: ``sum_o z . o`` (the sum of the pairwise similarities involving this input; with
    one other input, the cosine similarity). ``mip``: Symile's ``sum_k z_k prod_o o_k``.
    ``volume``: minus GRAM's volume ``sqrt(det G)`` of ``[z; others]`` (larger = better match).
    Each ``other`` is (d,) or (B, d); ``z`` is (..., B, d) and the score (..., B), so a stack of
    perturbed copies of a batch is scored in one call.
    """

    others: tuple[Tensor, ...]
    geometry: Geometry = "cosine"
    eps: float = 1e-6

    def __post_init__(self) -> None:
        if not self.others:
            raise ConfigError("explain", "a match needs at least one other input")
        if self.geometry not in GEOMETRIES:
            raise ConfigError(
                "explain.geometry", f"unknown geometry {self.geometry!r}; known: {GEOMETRIES}"
            )

    def target(self) -> Tensor:
        """The direction ``t`` with ``score(z) = z . t`` (for ``volume``: the sum of the others,
        the direction that shrinks the volume fastest from a matching tuple)."""
        if self.geometry == "mip":
            out = self.others[0]
            for o in self.others[1:]:
                out = out * o
            return out
        return torch.stack(torch.broadcast_tensors(*self.others)).sum(0)

    def __call__(self, z: Tensor) -> Tensor:
        if self.geometry != "volume":
            return (z * self.target().to(z)).sum(-1)
        rows = torch.stack(torch.broadcast_tensors(z, *(o.to(z) for o in self.others)), dim=-2)
        gram = rows @ rows.transpose(-1, -2)
        return -torch.linalg.det(gram).clamp_min(self.eps).sqrt()


def embed_tokens(
    model: Any, modality: str, tokens: Tensor, attention_mask: Tensor | None = None
) -> Tensor:
    """Unit embeddings (B, d) from encoder tokens, as `MultiModalModel.encode` computes them."""
    if modality == "report":
        if attention_mask is None:
            raise ValueError("report tokens need their attention mask")
        pooled = model.encoders["report"].pool(tokens, attention_mask)
    else:
        pooled = model.encoders[modality].pool_tokens(tokens)
    return F.normalize(model.heads[modality](pooled).float(), dim=-1)


# --------------------------------------------------------------------------- token maps


def token_similarity(
    model: Any, modality: str, x: Tensor, target: Tensor, lead_mask: Tensor | None = None
) -> Tensor:
    """(B, N) similarity of each patch/time token's projection with ``target`` ((d,) or (B, d)).

    The class token (and any registers) are left out; for X-rays, row-major over the patch
    grid. With a class-token encoder each projected token is normalised (a cosine map: the
    tokens are not what the score reads). With a mean-pooled encoder the projections are left unnormalised: for a linear head
    the embedding before normalisation is their mean, so the map is each token's exact share of
    the score (times a positive constant per input).
    """
    _check_token_modality(modality)
    encoder = model.encoders[modality]
    normalize = getattr(encoder, "pool", "cls") == "cls"
    prefix = getattr(encoder, "n_prefix", 1)
    with eval_mode(model), torch.no_grad():
        tokens = model.forward_tokens(modality, x, lead_mask)
        z = model.project_tokens(modality, tokens, normalize=normalize)[:, prefix:]
        t = target.to(z)
        return (z * (t[:, None] if t.ndim == 2 else t)).sum(-1)


def rollout(attentions: Sequence[Tensor], grads: Sequence[Tensor]) -> Tensor:
    """Gradient-weighted attention rollout: ``prod_l (I + mean_h relu(grad_l * A_l))``, (B, N, N).

    Layers are given in forward order; the first layer's factor is rightmost.
    """
    if not attentions or len(attentions) != len(grads):
        raise ValueError(
            f"need one gradient per attention map, got {len(attentions)} and {len(grads)}"
        )
    b, _, n, _ = attentions[0].shape
    relevance = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(b, n, n)
    for a, g in zip(attentions, grads):
        a_bar = (g * a).clamp_min(0).mean(dim=1)
        relevance = relevance + a_bar @ relevance
    return relevance


def attention_relevance(
    model: Any, modality: str, x: Tensor, score: MatchScore, lead_mask: Tensor | None = None
) -> Tensor:
    """(B, N) relevance of each patch/time token for ``score``.

    The row of `rollout` that the embedding reads: the class token's, or for a mean-pooled
    encoder the mean of the patch/time tokens' rows.
    """
    _check_token_modality(modality)
    encoder = model.encoders[modality]
    x = x.detach().to(model.device, torch.float32).requires_grad_(True)  # a graph even if frozen
    with eval_mode(model), torch.enable_grad(), encoder.capture_attention() as maps:
        tokens = model.forward_tokens(modality, x, lead_mask)
        s = score(embed_tokens(model, modality, tokens))
        grads = torch.autograd.grad(s.sum(), maps)
    relevance = rollout([m.detach() for m in maps], grads)
    p = getattr(encoder, "n_prefix", 1)  # class token (and registers) come first
    if getattr(encoder, "pool", "cls") == "mean":
        return relevance[:, p:, p:].mean(dim=1)
    return relevance[:, 0, p:]


def lead_occlusion(
    model: Any, x: Tensor, score: MatchScore, lead_mask: Tensor | None = None
) -> Tensor:
    """(B, leads) score drop when each ECG lead in turn is zeroed (all copies in one batch)."""
    x = x.to(model.device, torch.float32)
    b, leads, t = x.shape
    keep = torch.cat(
        [x.new_ones(1, leads), 1.0 - torch.eye(leads, device=x.device)]
    )  # (1 + leads, leads)
    copies = (x[None] * keep[:, None, :, None]).reshape(-1, leads, t)
    mask = None
    if lead_mask is not None:
        lm = lead_mask.to(x.device, torch.bool)
        mask = (lm[None] & keep.bool()[:, None]).reshape(-1, leads)
    with eval_mode(model), torch.no_grad():
        tokens = model.forward_tokens("ecg", copies, mask)
        s = score(embed_tokens(model, "ecg", tokens).reshape(1 + leads, b, -1))  # (1 + leads, B)
    return (s[:1] - s[1:]).T


OCCLUSION_FILLS = ("mean", "blur", "mirror", "reference")
"""The single fills. ``Occlusion.fill`` names one, or several joined by ``+`` (their drops
averaged) or by ``|`` (the largest drop kept); ``both`` = ``mean+blur``; ``auto`` is
``mean|reference`` for a model that holds a reference X-ray, ``mean|mirror`` otherwise."""
_FILL_ALIASES = {"both": "mean+blur"}
AUTO_FILL = "auto"
REFERENCE_FILL = "mean|reference"
FALLBACK_FILL = "mean|mirror"


def resolve_fill(fill: str, model: Any = None) -> str:
    """`fill` with ``auto`` made concrete for `model` (None: a model without a reference X-ray)."""
    if fill != AUTO_FILL:
        return fill
    return REFERENCE_FILL if getattr(model, "reference_cxr", None) is not None else FALLBACK_FILL


def occlusion_fill_parts(fill: str, model: Any = None) -> tuple[tuple[str, ...], str]:
    """(the single fills named by `fill`, how their drops combine: ``mean`` or ``max``);
    ConfigError for an unknown or repeated name, or ``+`` and ``|`` mixed."""
    spec = resolve_fill(fill, model)
    spec = _FILL_ALIASES.get(spec, spec)
    combine = "max" if "|" in spec else "mean"
    parts = tuple(spec.split("|" if combine == "max" else "+"))
    if any(p not in OCCLUSION_FILLS for p in parts) or len(set(parts)) != len(parts):
        raise ConfigError(
            "explain.occlusion.fill",
            f"must be 'auto', 'both' or one or more of {OCCLUSION_FILLS} joined by '+' (mean of the "
            f"drops) or by '|' (largest drop), got {fill!r}",
        )
    return parts, combine


@dataclass(frozen=True)
class Occlusion:
    """X-ray occlusion settings. ``window``: side of the square window in model-input pixels
    (None: the patch size); ``stride``: step between windows (None: a quarter of the window);
    ``fill``: what replaces a window, ``reference`` (the same window of the model's reference
    X-ray, the mean training X-ray without a finding, `medtriad.explain.reference`: a chest
    without the finding there, on average), ``mean`` (the image's mean intensity: removes shape
    and texture alike, but a grey window can look like an opacity), ``blur`` (a box-blurred
    copy, window-sized kernel: removes edges and fine texture, keeps the local brightness),
    ``mirror`` (the same window of the left-right mirrored image: the other side of a frontal
    chest film, so a one-sided finding is replaced by the normal side; a finding on both sides
    is left in place), or several, each one more pass of forwards: joined by ``+`` a window's
    drop is the mean of its fills' drops, joined by ``|`` the largest (the window matters if
    any replacement removes the evidence); ``both`` is ``mean+blur``. The default, ``auto``, is
    ``mean|reference`` for a model that holds a reference X-ray (every model the trainer saves)
    and ``mean|mirror`` otherwise, two passes each: on a cohort kept for choosing settings,
    ``mean|reference`` put the peak in the finding's region in at least 0.78 of the images for
    each of the five findings at stride 4 (0.82 at stride 2), ``mean|mirror`` in at least 0.71
    (0.75), ``reference`` alone in 0.75 (0.79) (`docs/decisions.md`)."""

    window: int | None = None
    stride: int | None = None
    fill: str = AUTO_FILL

    def resolve(self, patch: int, size: tuple[int, int]) -> tuple[int, int]:
        """(window, stride) for an encoder of `patch` pixels on inputs of `size`."""
        window = self.window or patch
        stride = self.stride or max(1, window // 4)
        if not 1 <= window <= min(size):
            raise ConfigError("explain.occlusion.window", f"must be in [1, {min(size)}] pixels, got {window}")
        if stride < 1:
            raise ConfigError("explain.occlusion.stride", f"must be at least 1, got {stride}")
        occlusion_fill_parts(self.fill)
        return window, stride


DEFAULT_OCCLUSION = Occlusion()


def _starts(length: int, window: int, stride: int) -> Tensor:
    """Window start offsets every `stride`, the last one flush with the border."""
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return torch.tensor(starts)


def _reference_base(model: Any, x: Tensor) -> Tensor:
    """The model's reference X-ray broadcast to `x`; ConfigError if it has none or another size."""
    ref = getattr(model, "reference_cxr", None)
    if ref is None:
        raise ConfigError(
            "explain.occlusion.fill",
            "'reference' needs a model with a reference X-ray (`medtriad reference RUN DATA` adds one); "
            "use 'auto' or another fill",
        )
    image = torch.as_tensor(ref.image, dtype=x.dtype, device=x.device)
    if image.shape != x.shape[1:]:
        raise ConfigError(
            "explain.occlusion.fill", f"the reference X-ray is {tuple(image.shape)}, the input {tuple(x.shape[1:])}"
        )
    return image[None].expand_as(x)


def patch_occlusion(
    model: Any, x: Tensor, score: MatchScore, settings: Occlusion = DEFAULT_OCCLUSION, chunk: int = 2048
) -> Tensor:
    """(B, H, W) score drop per X-ray input pixel: the mean, over the windows that cover the
    pixel, of ``score(x) - score(x with the window filled)``.

    Every window position of every image is scored in batches of up to `chunk` occluded copies
    (about ``((H - window) / stride + 1) ** 2`` forwards per image and fill). The map is model-agnostic:
    it measures what the score needs rather than reading the model's internals, at the
    resolution of the stride rather than the patch grid.
    """
    x = x.to(model.device, torch.float32)
    b, c, h, w = x.shape
    window, stride = settings.resolve(model.encoders["cxr"].patch_size, (h, w))
    bases = []
    parts, combine = occlusion_fill_parts(settings.fill, model)
    for part in parts:
        if part == "reference":
            bases.append(_reference_base(model, x))
        elif part == "mean":
            bases.append(x.mean(dim=(1, 2, 3), keepdim=True).expand_as(x))
        elif part == "blur":
            k = window | 1  # an odd kernel keeps the blur centred
            bases.append(F.avg_pool2d(F.pad(x, (k // 2,) * 4, mode="replicate"), k, stride=1))
        else:  # mirror: the window's content on the other side of the image
            bases.append(x.flip(-1))
    ys, xs = _starts(h, window, stride), _starts(w, window, stride)
    rows = (torch.arange(h)[None] >= ys[:, None]) & (torch.arange(h)[None] < ys[:, None] + window)
    cols = (torch.arange(w)[None] >= xs[:, None]) & (torch.arange(w)[None] < xs[:, None] + window)
    masks = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, h, w).to(x)  # (M, H, W)
    drops = x.new_zeros(len(masks), b)
    per = max(1, chunk // b)
    with eval_mode(model), torch.no_grad():
        s0 = score(embed_tokens(model, "cxr", model.forward_tokens("cxr", x)))
        for i in range(0, len(masks), per):
            m = masks[i : i + per, None, None]  # (m, 1, 1, H, W)
            per_fill = []
            for base in bases:
                copies = torch.lerp(x[None], base[None], m).reshape(-1, c, h, w)
                z = embed_tokens(model, "cxr", model.forward_tokens("cxr", copies))
                per_fill.append(s0 - score(z.reshape(len(m), b, -1)))
            stacked = torch.stack(per_fill)
            drops[i : i + per] = stacked.amax(0) if combine == "max" else stacked.mean(0)
    return torch.einsum("mb,mhw->bhw", drops, masks) / masks.sum(0)


def _check_token_modality(modality: str) -> None:
    if modality not in ("cxr", "ecg"):
        raise ConfigError("explain", f"token maps exist for cxr and ecg, not {modality!r}")


# --------------------------------------------------------------------------- report words


@dataclass
class TextAttribution:
    """Integrated-gradients attributions of one report, per token and per word.

    ``parts`` are the text pieces the tokenizer saw (radiology, cardiology when encoded as a
    pair); each word is ``(part, start, end)`` character offsets into its part. ``delta`` is
    ``score - baseline_score``, which the token attributions sum to up to quadrature error.
    """

    tokens: list[str]
    token_scores: np.ndarray
    words: list[str]
    word_scores: np.ndarray
    word_spans: list[tuple[int, int, int]]
    parts: list[str]
    score: float
    baseline_score: float
    steps: int
    baseline: str

    @property
    def delta(self) -> float:
        return self.score - self.baseline_score

    def top_words(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` words with the largest attributions, best first."""
        order = np.argsort(-self.word_scores, kind="stable")[:k]
        return [(self.words[i], float(self.word_scores[i])) for i in order]


def _text_parts(encoder: Any, text: str) -> list[str]:
    """The pieces `TextEncoder.tokenize` feeds its tokenizer for `text` (markers removed)."""
    radiology, cardiology = split_combined(text or "")
    if encoder.pair_sections and radiology and cardiology:
        return [radiology, cardiology]
    return [" ".join(p for p in (radiology, cardiology) if p)]


def _word_groups(
    enc: Any, parts: list[str]
) -> tuple[list[str], list[tuple[int, int, int]], np.ndarray]:
    """Words (text, span) and each token's word index (-1 for special tokens)."""
    word_ids, seq_ids, offsets = enc.word_ids(0), enc.sequence_ids(0), enc["offset_mapping"][0]
    keys: dict[tuple[int, int], int] = {}
    spans: list[list[int]] = []
    index = np.full(len(word_ids), -1, dtype=np.int64)
    for i, (w, s) in enumerate(zip(word_ids, seq_ids)):
        if w is None or s is None:
            continue
        start, end = (int(v) for v in offsets[i])
        k = keys.setdefault((s, w), len(spans))
        if k == len(spans):
            spans.append([s, start, end])
        else:
            spans[k][1], spans[k][2] = min(spans[k][1], start), max(spans[k][2], end)
        index[i] = k
    words = [parts[s][a:b] for s, a, b in spans]
    return words, [(s, a, b) for s, a, b in spans], index


def integrated_gradients(
    model: Any,
    text: str,
    score: MatchScore,
    *,
    steps: int = 32,
    baseline: Literal["pad", "zeros"] = "pad",
    batch_size: int = 16,
) -> TextAttribution:
    """Integrated gradients of ``score`` w.r.t. the report's input word embeddings.

    The path runs from a baseline (``pad``: the ``[PAD]`` token's embedding at every non-special
    position; ``zeros``: zero vectors there) to the input; special tokens ([CLS], [SEP]) keep
    their embeddings, so their attribution is zero. The path integral uses `steps`
    Gauss-Legendre nodes (exact for polynomials of degree < 2 * steps, far smaller
    completeness error than a Riemann sum at the same cost). Token attributions are summed over
    the embedding dimension and over the sub-word tokens of each word.
    """
    if steps < 1:
        raise ConfigError("explain.ig_steps", f"must be at least 1, got {steps}")
    if baseline not in ("pad", "zeros"):
        raise ConfigError("explain.ig_baseline", f"must be 'pad' or 'zeros', got {baseline!r}")
    if "report" not in model.encoders:
        raise ConfigError("data.modalities", "this model has no report encoder")
    encoder = model.encoders["report"]
    tokenizer = encoder.tokenizer
    parts = _text_parts(encoder, text)
    enc = tokenizer(
        *([p] for p in parts),
        truncation=True,
        max_length=encoder.max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_tensors="pt",
    )
    if len(tokenizer(*parts, truncation=False)["input_ids"]) > enc["input_ids"].shape[1]:
        log.warning("report cut at %d tokens: later words get no attribution", encoder.max_length)
    words, spans, word_index = _word_groups(enc, parts)
    device = model.device
    inputs = {k: enc[k].to(device) for k in _MODEL_INPUTS if k in enc}
    if getattr(encoder.hf_config, "type_vocab_size", 2) < 2:
        inputs.pop("token_type_ids", None)
    embedding = encoder.backbone.get_input_embeddings()
    ids = inputs["input_ids"]
    special = enc["special_tokens_mask"].to(device).bool()[0]
    with torch.no_grad():
        x = embedding(ids)[0].float()  # (L, D)
        if baseline == "pad" and tokenizer.pad_token_id is not None:
            fill = embedding(torch.tensor([tokenizer.pad_token_id], device=device))[0].float()
        else:
            fill = torch.zeros_like(x[0])
        base = torch.where(special[:, None], x, fill.expand_as(x))
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1) / 2, dtype=torch.float32, device=device)
    w = torch.tensor(weights / 2, dtype=torch.float32, device=device)

    def run(emb: Tensor) -> Tensor:
        n = len(emb)
        kw = {k: v.expand(n, -1) for k, v in inputs.items() if k != "input_ids"}
        tokens = encoder.backbone(
            inputs_embeds=emb.to(embedding.weight.dtype), **kw
        ).last_hidden_state
        return score(embed_tokens(model, "report", tokens, kw["attention_mask"]))

    grad_sum = torch.zeros_like(x)
    with eval_mode(model):
        with torch.no_grad():
            ends = run(torch.stack([x, base]))
        for chunk in range(0, steps, batch_size):
            a = alphas[chunk : chunk + batch_size, None, None]
            path = (base + a * (x - base)).detach().requires_grad_(True)
            with torch.enable_grad():
                (g,) = torch.autograd.grad(run(path).sum(), path)
            grad_sum += (w[chunk : chunk + batch_size, None, None] * g).sum(0)
    token_scores = ((x - base) * grad_sum).sum(-1).cpu().numpy().astype(np.float64)
    gap = abs(token_scores.sum() - float(ends[0] - ends[1]))
    if gap > 0.05 * max(np.abs(token_scores).sum(), 1e-12):
        log.warning(
            "integrated gradients: attributions miss the score change by %.3g; raise the steps", gap
        )
    word_scores = np.zeros(len(words), dtype=np.float64)
    keep = word_index >= 0
    np.add.at(word_scores, word_index[keep], token_scores[keep])
    return TextAttribution(
        tokens=tokenizer.convert_ids_to_tokens(ids[0].tolist()),
        token_scores=token_scores,
        words=words,
        word_scores=word_scores,
        word_spans=spans,
        parts=parts,
        score=float(ends[0]),
        baseline_score=float(ends[1]),
        steps=steps,
        baseline=baseline,
    )


def as_batch(x: np.ndarray | Tensor, ndim: int) -> Tensor:
    """A float32 tensor with a leading batch dimension added when `x` has ``ndim - 1`` dims."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=torch.float32)
    return t[None] if t.ndim == ndim - 1 else t


def unit_embeddings(model: Any, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    """`MultiModalModel.encode` in eval mode without gradients."""
    with eval_mode(model), torch.no_grad():
        return model.encode(dict(inputs))
