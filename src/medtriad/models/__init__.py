"""Encoders (ViT with DropKey, ECG transformer, Hugging Face text) and the multi-modal model."""

from medtriad.models.model import MultiModalModel, ParamCount, build_model

__all__ = ["MultiModalModel", "ParamCount", "build_model"]
