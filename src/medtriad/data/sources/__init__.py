"""Dataset preparers: each official release, as downloaded, into a validated manifest.

``prepare_dataset(name, root, out, **options)`` runs ``PREPARERS[name]``, which reads only the
release's own files, writes ``out/manifest.parquet`` (paths relative to `out`; no file is
copied) and ``out/prepare_summary.json`` (counts per split, label prevalence, modality coverage,
every dropped row counted under its reason), and returns the :class:`PrepareSummary`.
``summary_table(summary)`` renders it for printing. Each preparer is a plain function with
keyword options; ``option_help(name)`` gives each option's type, default and help text.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medtriad.data.sources import chexpert, cinc, covid_notes, edema, mimic, openi, ptbxl
from medtriad.data.sources.common import PrepareSummary, summary_table
from medtriad.errors import ConfigError

__all__ = ["PREPARERS", "PrepareSummary", "option_help", "prepare_dataset", "summary_table"]

PREPARERS: dict[str, Callable[..., PrepareSummary]] = {
    "mimic": mimic.prepare_mimic,
    "chexpert": chexpert.prepare_chexpert,
    "edema": edema.prepare_edema,
    "ptbxl": ptbxl.prepare_ptbxl,
    "openi": openi.prepare_openi,
    "cinc": cinc.prepare_cinc,
    "covid_notes": covid_notes.prepare_covid_notes,
}
_HELP: dict[str, dict[str, str]] = {
    "mimic": mimic.HELP,
    "chexpert": chexpert.HELP,
    "edema": edema.HELP,
    "ptbxl": ptbxl.HELP,
    "openi": openi.HELP,
    "cinc": cinc.HELP,
    "covid_notes": covid_notes.HELP,
}


def _preparer(name: str) -> Callable[..., PrepareSummary]:
    if name not in PREPARERS:
        raise ConfigError("dataset", f"unknown dataset {name!r}; known: {sorted(PREPARERS)}")
    return PREPARERS[name]


def option_help(name: str) -> dict[str, dict[str, Any]]:
    """Each keyword option of a preparer: {"type": resolved type hint, "default": value, "help": text}."""
    fn = _preparer(name)
    hints = typing.get_type_hints(fn)
    return {
        p.name: {"type": hints[p.name], "default": p.default, "help": _HELP[name][p.name]}
        for p in inspect.signature(fn).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def prepare_dataset(name: str, root: str | Path, out: str | Path, **options: Any) -> PrepareSummary:
    """Run the preparer `name` on the release in `root`, writing into `out`."""
    fn = _preparer(name)
    unknown = sorted(set(options) - set(option_help(name)))
    if unknown:
        raise ConfigError(
            unknown[0], f"not an option of 'prepare {name}'; options: {sorted(option_help(name))}"
        )
    return fn(Path(root), Path(out), **options)
