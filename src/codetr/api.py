"""Top-level entry points: ``create`` (zoo), ``load`` and ``save`` (codetr checkpoints)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

import torch

from .config import from_dict
from .detector import Detector, InputSpec
from .engine.checkpoint import CheckpointError, load_checkpoint, model_state, save_checkpoint
from .registry import FAMILIES, get_family
from .structures import ClassInfo
from .zoo import create, list_models

T = TypeVar("T")

MODEL_KEYS = ("family", "model_config", "classes", "input_spec", "model")  # written by model_state


def build_from_state(state: dict, source: str = "checkpoint") -> Detector:
    """Rebuild a model from the ``model_state`` part of a checkpoint and load its weights.
    A missing or hand-edited part raises a one-line ``CheckpointError`` naming ``source`` and the key."""
    model = model_from_state(state, source)
    _load_weights(model, state["model"], source)
    model.model_name = state.get("model_name", model.family)
    return model


def model_from_state(state: dict, source: str = "checkpoint") -> Detector:
    """The model the ``model_state`` part of a checkpoint describes, freshly initialised (its
    weights not loaded); errors as ``build_from_state``."""
    missing = [key for key in MODEL_KEYS if key not in state]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {missing}; a model checkpoint needs {list(MODEL_KEYS)}")
    family, known = state["family"], sorted(f.name for f in FAMILIES)
    if not isinstance(family, str) or family not in known:
        raise CheckpointError(f"{source}: unknown model family {family!r}; known: {known}")
    fam = get_family(family)
    config = _parse(source, "model_config", lambda: from_dict(fam.config, state["model_config"]))
    classes = _parse(source, "classes", lambda: ClassInfo.from_dict(state["classes"]))
    spec = _parse(source, "input_spec", lambda: from_dict(InputSpec, state["input_spec"]))
    if len(classes) != config.num_classes:
        raise CheckpointError(f"{source}: 'classes' has {len(classes)} categories but model_config.num_classes "
                              f"is {config.num_classes}")
    return _parse(source, "model_config", lambda: fam.model(config, classes, spec))


def _parse(source: str, key: str, build: Callable[[], T]) -> T:
    """``build()``, its ValueError / TypeError turned into a CheckpointError naming ``source`` and ``key``."""
    try:
        return build()
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{source}: bad {key!r}: {e}") from e


def _load_weights(model: Detector, weights: Any, source: str) -> None:
    """Strict load; mismatched shapes, missing and unexpected keys are reported (first few) in one line."""
    if not isinstance(weights, dict):
        raise CheckpointError(f"{source}: 'model' must be a state dict of tensors, got {type(weights).__name__}")
    expected = model.state_dict()
    wrong = [k for k, v in weights.items() if k in expected
             and (not isinstance(v, torch.Tensor) or v.shape != expected[k].shape)]
    if wrong:
        shown = "; ".join(f"{k}: {_shape(weights[k])} in the checkpoint, {list(expected[k].shape)} in the model"
                          for k in wrong[:3])
        more = f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""
        raise CheckpointError(f"{source}: {len(wrong)} weight(s) do not fit the {model.family} model built from its "
                              f"model_config: {shown}{more}")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the {model.family} model: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}")


def _shape(value: Any) -> str:
    return str(list(value.shape)) if isinstance(value, torch.Tensor) else f"a {type(value).__name__}"


def load(path: str | Path, map_location: str = "cpu") -> Detector:
    """A model from a codetr checkpoint (``last.ckpt`` of a run, or a ``codetr convert`` output)."""
    return build_from_state(load_checkpoint(path, map_location=map_location), f"checkpoint {str(path)!r}")


def save(model: Detector, path: str | Path, model_name: str | None = None) -> None:
    """Write a model-only checkpoint atomically (loadable with ``load``)."""
    save_checkpoint(path, model_state(model, model_name or getattr(model, "model_name", model.family)))


__all__ = ["create", "list_models", "load", "save", "build_from_state"]
