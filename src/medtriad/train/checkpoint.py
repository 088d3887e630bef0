"""Checkpoints as directories, written under a temporary name and swapped in atomically.

A checkpoint directory holds ``config.yaml`` and ``model.safetensors`` (what
`MultiModalModel.from_pretrained` reads, plus the text encoder's source files) and
``trainer_state.pt`` (optimiser, step, epoch, position in the epoch, RNG states). A kill at any
moment leaves either the previous checkpoint or the new one, never half of one.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtriad.errors import DataError


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (each rank passes its own seed)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: str | os.PathLike[str], model: Any, trainer_state: dict[str, Any]) -> Path:
    """Write model + trainer state to `directory` atomically (temporary sibling, then rename)."""
    final = Path(directory)
    tmp = final.with_name(final.name + ".tmp")
    old = final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(trainer_state, tmp / "trainer_state.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / "trainer_state.pt"
    if not path.is_file():
        raise DataError(path, "checkpoint has no trainer_state.pt")
    return torch.load(path, map_location="cpu", weights_only=False)


def latest_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The newest complete checkpoint of a run (``checkpoints/step_*``), recovering from a kill
    between the two renames of `save_checkpoint`."""
    ckpts = Path(run_dir) / "checkpoints"
    if not ckpts.is_dir():
        return None
    for old in ckpts.glob("*.old"):
        final = old.with_name(old.name[: -len(".old")])
        if not final.exists():
            os.replace(old, final)
    done = [p for p in ckpts.glob("step_*") if p.is_dir() and not p.name.endswith((".tmp", ".old"))
            and (p / "trainer_state.pt").is_file()]
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)
