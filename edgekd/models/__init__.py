"""Model registry, teacher loading and checkpoints."""

from edgekd.models.registry import create_model, get_entry, list_models, register_model

__all__ = ["create_model", "get_entry", "list_models", "register_model"]
