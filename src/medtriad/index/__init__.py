"""Retrieval index: studies embedded by a trained model, searchable by any mix of modalities."""

from medtriad.index.store import Hit, IndexStore, build_index, resolve_model_dir

__all__ = ["Hit", "IndexStore", "build_index", "resolve_model_dir"]
