"""`medtriad pretrain`: contrastive pre-training on one CPU or many GPUs.

One code path for every scale: a single process, or ``torchrun`` with DistributedDataParallel
(gloo on CPU, nccl on GPU). Each rank encodes its share of the global batch; the loss gathers
embeddings across ranks with gradient, so the optimisation equals one process on the whole
batch (BatchNorm is synchronised, DDP averages the gradients).

Exact large batches by gradient caching (``train.chunk_size``): the batch is encoded without
gradient in chunks, the loss and its gradient with respect to the cached embeddings are
computed once, then each chunk is encoded again under its saved RNG state and back-propagated
with the surrogate ``sum(embedding * cached_gradient)``. The result is the full-batch gradient
whenever the model has no batch-statistics layers (BatchNorm normalises each chunk by its own
statistics, as in any micro-batching).

A frozen text encoder's features are computed once per dataset and cached (``cache_text``),
which is the largest single saving on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from medtriad.config import LOCAL_SECTIONS, Config, LocalLossConfig, save_config
from medtriad.data.dataset import Batch, EpochBatches, make_loader, open_dataset
from medtriad.errors import ConfigError, DataError
from medtriad.train import checkpoint as ckpt
from medtriad.train.distributed import (
    DistEnv,
    barrier,
    init_distributed,
    mean_over_ranks,
    shutdown_distributed,
)
from medtriad.train.optim import build_optimizer, freeze_by_glob, lr_factor, set_lr
from medtriad.train.sentences import SentenceBank, build_sentence_bank, sentence_embeddings

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- pieces


class EncodeStep(nn.Module):
    """What DDP wraps: the model's embeddings plus its logit scale, so every parameter that the
    loss touches is part of the synchronised forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, Any]) -> tuple[dict[str, Tensor], Tensor, dict[str, tuple[Tensor, Tensor, Tensor]]]:
        """(embeddings, logit scale, local) where local maps each modality with
        ``inputs["sentences"]`` to (projected tokens, sentence embeddings, sentence mask)."""
        feats = inputs.get("report_features")
        sentences = inputs.get("sentences") or {}
        inputs = {k: v for k, v in inputs.items() if k != "sentences"}
        if feats is not None:
            inputs = {k: v for k, v in inputs.items() if k not in ("report", "report_features")}
        emb, tokens = self.model.encode_with_tokens(inputs, tuple(sentences))
        if feats is not None:
            z = self.model.heads["report"](feats).float()
            emb["report"] = F.normalize(z, dim=-1)
        local = {
            m: (tokens[m], sentence_embeddings(self.model, s), s["mask"].to(tokens[m].device))
            for m, s in sentences.items() if m in tokens
        }
        return emb, self.model.logit_scale, local


def _uniform_hash(index: np.ndarray, *keys: int) -> np.ndarray:
    """Deterministic uniform [0, 1) per (index, keys), independent of batch layout and rank."""
    x = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    for k in keys:
        x ^= np.uint64(k & 0xFFFFFFFFFFFFFFFF) + np.uint64(0x632BE59BD9B4E019) + (x << np.uint64(6)) + (x >> np.uint64(2))
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def modality_dropout(batch: Batch, probs: dict[str, float], seed: int, step: int) -> Batch:
    """Hide modality m from each sample with probability probs[m] (same draw on every rank)."""
    idx = batch.index.numpy()
    for k, (m, p) in enumerate(sorted(probs.items())):
        if p > 0 and m in batch.present:
            hide = torch.from_numpy(_uniform_hash(idx, seed, step, k) < p)
            batch = batch.drop(m, hide)
    return batch


@dataclass
class TextCache:
    """Frozen text-encoder features of every row of a dataset (indexed like the dataset)."""

    features: Tensor

    def lookup(self, index: Tensor) -> Tensor:
        return self.features[index]


def _dataset_fingerprint(dataset: Any, extra: str) -> str:
    h = hashlib.sha1(extra.encode())
    h.update("\n".join(dataset.df["sample_id"].astype(str)).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def build_text_cache(model: nn.Module, dataset: Any, cache_file: Path | None, batch_size: int = 128) -> TextCache:
    """Encode every report of `dataset` once with the frozen text encoder (saved to `cache_file`)."""
    encoder = model.encoders["report"]
    key = _dataset_fingerprint(dataset, f"{model.config.model.report}|{getattr(encoder, 'max_length', None)}")
    if cache_file is not None and cache_file.is_file():
        stored = torch.load(cache_file, map_location="cpu")
        if stored.get("key") == key:
            return TextCache(stored["features"].to(model.device))
    was_training = encoder.training
    encoder.eval()
    view = _restrict(dataset, ["report"])
    feats = []
    from medtriad.progress import track

    starts = range(0, len(view), batch_size)
    for s in track(starts, total=len(starts), description="caching text features"):
        b = view[np.arange(s, min(s + batch_size, len(view)))]
        feats.append(encoder(b.inputs["report"] if isinstance(b.inputs["report"], dict) else list(b.inputs["report"])).float())
    encoder.train(was_training)
    features = torch.cat(feats) if feats else torch.zeros(0)
    if cache_file is not None:
        tmp = cache_file.with_suffix(".tmp")
        torch.save({"key": key, "features": features.cpu()}, tmp)
        os.replace(tmp, cache_file)
    return TextCache(features.to(model.device))


def _restrict(dataset: Any, modalities: list[str]) -> Any:
    import copy

    view = copy.copy(dataset)
    view.modalities = list(modalities)
    return view


def _inputs(
    batch: Batch, cache: TextCache | None, device: torch.device, sentences: dict[str, SentenceBank] | None = None
) -> dict[str, Any]:
    inputs = dict(batch.inputs)
    if cache is not None and "report" in inputs:
        inputs["report"] = None
        inputs["report_features"] = cache.lookup(batch.index.to(cache.features.device))
    out = {k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) else
               ({kk: vv.to(device) for kk, vv in v.items()} if isinstance(v, dict) else v))
           for k, v in inputs.items()}
    if sentences:
        out["sentences"] = {m: bank.lookup(batch.index) for m, bank in sentences.items() if m in inputs}
    return out


def _split_inputs(inputs: dict[str, Any], rows: slice) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in inputs.items():
        if isinstance(v, Tensor):
            out[k] = v[rows]
        elif isinstance(v, dict):
            out[k] = {kk: vv[rows] for kk, vv in v.items()}
        elif isinstance(v, list):
            out[k] = v[rows]
        else:
            out[k] = v
    return out


def _rng_snapshot(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _rng_restore(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


# ----------------------------------------------------------------------------- the step


def _add_local(
    out: Any, local: dict[str, tuple[Tensor, Tensor, Tensor]], present: dict[str, Tensor], scale: Tensor, cfg: LocalLossConfig
) -> Any:
    """`out` with ``weight * local_alignment_loss`` of each modality added (parts: ``local/<m>``)."""
    from medtriad.losses import LossOutput
    from medtriad.losses.local import local_alignment_loss

    total, parts = out.total, dict(out.parts)
    for m, (tokens, sentences, mask) in local.items():
        rows = present[m] & present.get("report", torch.ones_like(present[m]))
        value = local_alignment_loss(tokens, sentences, mask, rows, scale, cfg.tau)
        if value is not None:
            total = total + cfg.weight * value
            parts[f"local/{m}"] = value.detach()
    return LossOutput(total, parts)


def contrastive_step(
    step_module: nn.Module,
    raw_module: EncodeStep,
    loss_fn: nn.Module,
    inputs: dict[str, Any],
    present: dict[str, Tensor],
    chunk_size: int | None,
    autocast: contextlib.AbstractContextManager[Any] | Any,
    scale_loss: Any = None,
    local: LocalLossConfig | None = None,
) -> Any:
    """Forward + backward of one batch; returns the loss output (gradients left in .grad).

    With `chunk_size` smaller than the batch, gradient caching is used (see module docstring).
    `step_module` is the DDP-wrapped `raw_module` (or the same object without DDP). With
    ``inputs["sentences"]`` and `local`, the local token-sentence term is added with its weight.
    """
    scale_loss = scale_loss or (lambda t: t)
    n = next(v for v in present.values()).shape[0]
    if not chunk_size or chunk_size >= n:
        with autocast():
            emb, scale, tokens = step_module(inputs)
        out = loss_fn(emb, present, scale)
        if tokens and local is not None:
            out = _add_local(out, tokens, present, scale, local)
        # `0 * scale` keeps the logit scale in the graph for losses that ignore it (DHN-NCE), so
        # DDP sees a gradient for every parameter
        scale_loss(out.total + 0.0 * scale.sum()).backward()
        return out

    slices = [slice(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    device = raw_module.model.device
    states, cached = [], []
    with torch.no_grad():
        for sl in slices:
            states.append(_rng_snapshot(device))
            with autocast():
                emb, scale, _ = raw_module(_split_inputs(inputs, sl))
            cached.append(emb)
    leaves = {m: torch.cat([c[m] for c in cached]).detach().requires_grad_(True) for m in cached[0]}
    scale_leaf = scale.detach().requires_grad_(True)
    out = loss_fn(leaves, present, scale_leaf)
    scale_loss(out.total).backward()
    after = _rng_snapshot(device)
    sync_ctx = getattr(step_module, "no_sync", None)
    for i, sl in enumerate(slices):
        last = i == len(slices) - 1
        _rng_restore(states[i], device)
        ctx = sync_ctx() if (sync_ctx is not None and not last) else contextlib.nullcontext()
        with ctx:
            with autocast():
                emb, scale, _ = step_module(_split_inputs(inputs, sl))
            surrogate = sum((emb[m] * leaves[m].grad[sl]).sum() for m in emb if leaves[m].grad is not None)
            if last and scale_leaf.grad is not None:
                surrogate = surrogate + (scale * scale_leaf.grad).sum()
            surrogate.backward()
    _rng_restore(after, device)
    return out


# ----------------------------------------------------------------------------- trainer


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: bool = False


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX tiles). There bf16
    autocast trains the demo about 1.2x faster than float32; elsewhere bf16 is emulated and
    slower, so ``precision: auto`` keeps float32."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto``: bf16 on GPUs that support it (else fp16), bf16 on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"


def _autocast_factory(precision: str, device: torch.device) -> tuple[Any, torch.amp.GradScaler | None]:
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


class MetricsLog:
    """Append-only ``metrics.jsonl`` (rank 0); on resume, rows after the checkpoint are dropped.
    With `tensorboard`, every numeric value also goes to ``tensorboard/`` beside it."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None, tensorboard: bool = False) -> None:
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ConfigError("train.tensorboard", "needs the tensorboard package (pip install tensorboard)") from exc
            self.writer = SummaryWriter(str(path.parent / "tensorboard"), purge_step=resume_step)
        if enabled and resume_step is not None and path.is_file():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            keep = [r for r in rows if r.get("step", 0) <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        elif enabled and resume_step is None:
            path.write_text("")

    def write(self, row: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            if self.writer is not None:
                for k, v in row.items():
                    if k not in ("step", "epoch") and isinstance(v, (int, float)):
                        self.writer.add_scalar(k, v, row["step"])
                self.writer.flush()


def _loss_params_all_reduce(loss_fn: nn.Module, env: DistEnv) -> None:
    if not env.distributed:
        return
    for p in loss_fn.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world


@torch.no_grad()
def validate(
    raw: EncodeStep, loss_fn: nn.Module, dataset: Any, cfg: Config, env: DistEnv, cache: TextCache | None
) -> dict[str, float]:
    """Validation loss and retrieval (R@1, R@5, R@10 for every ordered modality pair)."""
    from medtriad.evaluate.retrieval import pairwise_retrieval

    was = raw.training
    raw.eval()
    autocast, _ = _autocast_factory(cfg.train.precision, env.device)
    bs = min(cfg.train.batch_size, (len(dataset) // env.world) * env.world)
    if bs < env.world * 2:
        raw.train(was)
        return {}
    batches = EpochBatches(len(dataset), bs, seed=0, epoch=0, shuffle=False, rank=env.rank, world=env.world)
    losses, embs, pres = [], [], []
    for rows in batches:
        b = dataset[rows]
        with autocast():
            emb, scale, _ = raw(_inputs(b, cache, env.device))
        present = {m: b.present[m].to(env.device) for m in emb}
        losses.append(float(mean_over_ranks(loss_fn(emb, present, scale).total.detach())))
        embs.append({m: e.float() for m, e in emb.items()})
        pres.append(present)
    raw.train(was)
    emb = {m: torch.cat([e[m] for e in embs]) for m in embs[0]}
    present = {m: torch.cat([p[m] for p in pres]) for m in pres[0]}
    if env.distributed:
        def gather(t: Tensor) -> Tensor:
            parts = [torch.empty_like(t) for _ in range(env.world)]
            dist.all_gather(parts, t.contiguous())
            return torch.cat(parts)

        emb = {m: gather(e) for m, e in emb.items()}
        present = {m: gather(p) for m, p in present.items()}
    out: dict[str, float] = {"val/loss": float(np.mean(losses))}
    for pair, res in pairwise_retrieval({m: e.cpu() for m, e in emb.items()}, {m: p.cpu() for m, p in present.items()}).items():
        for k in ("R@1", "R@5", "R@10"):
            out[f"val/{pair}/{k}"] = res[k]
        out[f"val/{pair}/n"] = res["n"]
    return out


def _sentence_banks(
    model: nn.Module, dataset: Any, config: Config, run: Path | None, text_frozen: bool
) -> dict[str, SentenceBank]:
    """Sentence banks of the training set for `loss.local` (none when its weight is 0)."""
    lc = config.loss.local
    if lc.weight == 0:
        return {}
    key = "loss.local"
    if "report" not in model.encoders:
        raise ConfigError(f"{key}.weight", "the local term aligns tokens with report sentences: add report to data.modalities")
    missing = [m for m in lc.modalities if m not in model.encoders]
    if missing:
        raise ConfigError(f"{key}.modalities", f"{missing} are not in data.modalities")
    if config.model.head.type != "linear":
        raise ConfigError(
            "model.head.type", "the local term projects every token through the head; a BatchNorm head would "
            "fold the tokens into its batch statistics: use linear"
        )
    if config.train.chunk_size:
        raise ConfigError("train.chunk_size", "gradient caching does not carry the local term's token gradients: unset one of them")
    return {
        m: build_sentence_bank(
            model, dataset, LOCAL_SECTIONS[m], lc.max_sentences, list(config.data.report.sections),
            frozen=text_frozen, cache_file=None if run is None else run / f"sentence_cache_{m}.pt",
        )
        for m in lc.modalities
    }


def _check_shard_settings(dataset: Any, cfg: Config) -> None:
    settings = getattr(dataset, "settings", None)
    if settings is None:
        return
    for section in ("cxr", "ecg"):
        want = getattr(cfg.data, section).__dict__
        have = settings[section]
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            key = next(iter(diff))
            raise ConfigError(
                f"data.{section}.{key}",
                f"the shards were prepared with {have.get(key)!r}, the config asks for {want[key]!r}: "
                "prepare the shards again with this config",
            )


def train(
    config: Config,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    resume: str | None = None,
    progress: bool = True,
) -> TrainResult:
    """Pre-train `config` on `data` (a manifest or a shard folder) into run folder `out`.

    `resume` is ``"latest"`` or a checkpoint directory; training then continues exactly where
    the checkpoint left it (data order, RNG states, optimiser and schedule).
    """
    from medtriad.losses import clamp_logit_scale_, get_loss
    from medtriad.models import build_model
    from medtriad.train.syncbn import convert_batchnorm

    t_start = time.perf_counter()
    tc = config.train
    env = init_distributed(tc.device)
    try:
        if env.device.type == "cpu":
            threads = tc.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", env.world)))
            torch.set_num_threads(threads)
        ckpt.seed_everything(config.seed + env.rank)  # DropKey and augmentation draw from these
        run = Path(out)
        if env.is_main:
            run.mkdir(parents=True, exist_ok=True)
            save_config(config, run / "config.yaml")
        barrier()

        train_ds = open_dataset(data, config.data, split="train")
        val_ds = open_dataset(data, config.data, split="val")
        _check_shard_settings(train_ds, config)
        if len(train_ds) < tc.batch_size:
            raise DataError(data, f"{len(train_ds)} training studies, fewer than one batch of {tc.batch_size}")
        if tc.batch_size % env.world:
            raise ConfigError("train.batch_size", f"{tc.batch_size} is not divisible by {env.world} processes")

        model = build_model(config).to(env.device)
        freeze_by_glob(model, tc.freeze)
        text_frozen = "report" in model.encoders and not any(p.requires_grad for p in model.encoders["report"].parameters())
        use_cache = tc.cache_text and text_frozen
        if use_cache:
            model.encoders["report"].eval()
        if env.distributed:
            model = convert_batchnorm(model, env.device.type)
        loss_fn = get_loss(config.loss.name, **dict(config.loss.settings), regularizers=dict(config.loss.regularizers) or None)
        loss_fn = loss_fn.to(env.device)
        raw = EncodeStep(model)
        optimizer = build_optimizer(raw, tc.lr, tc.weight_decay, tuple(tc.betas), {f"{k}": v for k, v in tc.lr_mult.items()})
        extra = [p for p in loss_fn.parameters() if p.requires_grad]
        if extra:
            optimizer.add_param_group({"params": extra, "lr": tc.lr, "base_lr": tc.lr, "weight_decay": 0.0, "group": "loss"})
        autocast, scaler = _autocast_factory(tc.precision, env.device)

        steps_per_epoch = len(train_ds) // tc.batch_size
        total_steps = tc.epochs * steps_per_epoch
        if tc.max_steps is not None:
            total_steps = min(total_steps, tc.max_steps)

        start_step, start_epoch, start_batch = 0, 0, 0
        resume_dir = ckpt.latest_checkpoint(run) if resume == "latest" else (Path(resume) if resume else None)
        if resume == "latest" and resume_dir is None:
            log.info("no checkpoint in %s: starting from scratch", run)
        state: dict[str, Any] | None = None
        if resume_dir is not None:
            from safetensors.torch import load_model

            state = ckpt.load_trainer_state(resume_dir)
            load_model(model, str(resume_dir / "model.safetensors"), strict=True, device=str(env.device))
            optimizer.load_state_dict(state["optimizer"])
            loss_fn.load_state_dict(state["loss"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            start_step, start_epoch, start_batch = state["step"], state["epoch"], state["batch"]
            log.info("resuming from %s (step %d)", resume_dir, start_step)
        if env.is_main and "cxr" in model.encoders:
            from medtriad.explain.reference import build_reference_cxr, load_reference

            # the occlusion map's reference fill; saved with every checkpoint and the model
            kept = load_reference(resume_dir, config.data.cxr.size) if resume_dir is not None else None
            model.reference_cxr = kept or build_reference_cxr(train_ds)

        step_module: nn.Module = raw
        if env.distributed:
            ddp_kwargs: dict[str, Any] = {"broadcast_buffers": False}
            cx = config.model.cxr
            if "cxr" in model.encoders and cx.attention_radius is not None and cx.pool == "mean":
                # no patch reads the class token or registers, and the embedding does not either
                ddp_kwargs["find_unused_parameters"] = True
            if env.device.type == "cuda":
                ddp_kwargs["device_ids"] = [env.device]
            step_module = nn.parallel.DistributedDataParallel(raw, **ddp_kwargs)

        cache_train = cache_val = None
        if use_cache:
            cache_train = build_text_cache(model, train_ds, run / "text_cache_train.pt" if env.is_main else None)
            cache_val = build_text_cache(model, val_ds, run / "text_cache_val.pt" if env.is_main else None)
        local_cfg = config.loss.local
        sentence_banks = _sentence_banks(model, train_ds, config, run if env.is_main else None, text_frozen)

        if state is not None:
            ckpt.set_rng_state(state["rng"][env.rank] if env.rank < len(state["rng"]) else state["rng"][0])
        metrics = MetricsLog(run / "metrics.jsonl", env.is_main, start_step if state is not None else None, tc.tensorboard)
        elapsed_before = float(state.get("elapsed", 0.0)) if state else 0.0

        def save(step: int, epoch: int, batch: int) -> None:
            rngs = [None] * env.world
            if env.distributed:
                dist.all_gather_object(rngs, ckpt.rng_state())
            else:
                rngs = [ckpt.rng_state()]
            if env.is_main:
                st = {
                    "step": step, "epoch": epoch, "batch": batch, "optimizer": optimizer.state_dict(),
                    "loss": loss_fn.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                    "rng": rngs, "elapsed": elapsed_before + time.perf_counter() - t_start,
                }
                ckpt.save_checkpoint(run / "checkpoints" / f"step_{step:08d}", model, st)
                kept = sorted((run / "checkpoints").glob("step_*"), key=lambda p: p.name)
                for old in kept[: -tc.keep_checkpoints]:
                    shutil.rmtree(old, ignore_errors=True)
            barrier()

        step = start_step
        stopped_early = False
        last_val: dict[str, float] = {}
        samples_seen = 0
        t_loop = time.perf_counter()
        bar = _Progress(enabled=progress and env.is_main, total=total_steps, completed=step)
        deadline = None if tc.max_minutes is None else t_start + 60.0 * tc.max_minutes - elapsed_before
        step_module.train()
        if use_cache:
            model.encoders["report"].eval()
        with bar:
            epoch = start_epoch
            while step < total_steps and epoch < tc.epochs:
                first = start_batch if epoch == start_epoch else 0
                batches = EpochBatches(len(train_ds), tc.batch_size, config.seed, epoch, rank=env.rank, world=env.world, start=first)
                for i, batch in enumerate(make_loader(train_ds, batches, tc.workers), start=first):
                    if step >= total_steps:
                        break
                    batch = modality_dropout(batch, tc.modality_dropout, config.seed, step)
                    inputs = _inputs(batch, cache_train, env.device, sentence_banks)
                    if tc.augment.enabled:
                        from medtriad.train.augment import augment_cxr, augment_ecg

                        gen = torch.Generator().manual_seed(hash((config.seed, step, env.rank)) & 0x7FFFFFFF)
                        if "cxr" in inputs:
                            inputs["cxr"] = augment_cxr(inputs["cxr"], tc.augment, gen)
                        if "ecg" in inputs:
                            inputs["ecg"] = augment_ecg(inputs["ecg"], tc.augment, gen)
                    present = {m: p.to(env.device) for m, p in batch.present.items()}
                    sched_step = step
                    if deadline is not None:
                        # with a time budget the schedule follows whichever runs out first, steps
                        # or time, so the learning rate has annealed when the budget ends
                        spent = (time.perf_counter() - t_start + elapsed_before) / (60.0 * tc.max_minutes)
                        sched_step = max(step, min(total_steps, int(spent * total_steps)))
                    set_lr(optimizer, lr_factor(sched_step, tc.warmup_steps, total_steps, tc.min_lr_factor))
                    optimizer.zero_grad(set_to_none=True)
                    out = contrastive_step(
                        step_module, raw, loss_fn, inputs, present, tc.chunk_size, autocast,
                        scale_loss=(scaler.scale if scaler else None), local=local_cfg,
                    )
                    _loss_params_all_reduce(loss_fn, env)
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    grad_norm = None
                    if tc.grad_clip is not None:
                        grad_norm = float(torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.grad_clip))
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    clamp_logit_scale_(model.log_logit_scale, config.model.logit_scale_max)
                    step += 1
                    samples_seen += tc.batch_size
                    loss_value = float(mean_over_ranks(out.total.detach()))
                    if not math.isfinite(loss_value):
                        raise DataError(None, f"training diverged: loss is {loss_value} at step {step}")
                    rate = samples_seen / max(time.perf_counter() - t_loop, 1e-9)
                    bar.update(step, loss_value, rate)
                    if step % tc.log_every == 0 or step == total_steps:
                        row = {
                            "step": step, "epoch": epoch, "loss": loss_value,
                            **{f"loss/{k}": float(mean_over_ranks(v.detach())) for k, v in out.parts.items()},
                            "lr": optimizer.param_groups[0]["lr"], "logit_scale": float(model.logit_scale.detach()),
                            "samples_per_s": rate, "time": elapsed_before + time.perf_counter() - t_start,
                        }
                        if grad_norm is not None:
                            row["grad_norm"] = grad_norm
                        metrics.write(row)
                        if not bar.active:
                            log.info("step %d/%d loss %.4f (%.1f samples/s)", step, total_steps, loss_value, rate)
                    if step % tc.checkpoint_every == 0 and step < total_steps:
                        save(step, epoch, i + 1)
                    if deadline is not None and time.perf_counter() > deadline:
                        stopped_early = True
                        log.info("time budget of %.1f min spent at step %d", tc.max_minutes, step)
                        break
                else:
                    epoch += 1
                    if tc.validate_every and epoch % tc.validate_every == 0 and step < total_steps:
                        last_val = validate(raw, loss_fn, val_ds, config, env, cache_val)
                        metrics.write({"step": step, "epoch": epoch, **last_val})
                    continue
                break
        end_epoch = epoch
        last_val = validate(raw, loss_fn, val_ds, config, env, cache_val)
        metrics.write({"step": step, "epoch": end_epoch, **last_val})
        save(step, end_epoch, 0)
        if env.is_main:
            final = run / "model"
            tmp = run / "model.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            model_to_save = model
            model_to_save.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            from medtriad.train.curves import plot_curves

            plot_curves(run / "metrics.jsonl", run / "curves.png")
        barrier()
        return TrainResult(run_dir=run, steps=step, final_metrics=last_val, stopped_early=stopped_early)
    finally:
        shutdown_distributed()


class _Progress:
    """A live line: step, loss, samples/s, ETA (rank 0, on a terminal)."""

    def __init__(self, enabled: bool, total: int, completed: int) -> None:
        from medtriad.progress import make_progress

        self.progress = make_progress() if enabled else None
        self.total, self.completed = total, completed
        self.task: Any = None

    @property
    def active(self) -> bool:
        return self.progress is not None and not self.progress.disable

    def __enter__(self) -> _Progress:  # noqa: PYI034
        if self.progress is not None:
            self.progress.__enter__()
            self.task = self.progress.add_task("pre-training", total=self.total, completed=self.completed)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, rate: float) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=step, description=f"pre-training loss {loss:.3f} {rate:.0f}/s")

