"""Top-level entry points: ``create`` (zoo), ``load`` and ``save`` (codetr checkpoints)."""
from __future__ import annotations

from pathlib import Path

from .detector import Detector, InputSpec
from .detr.deformable_detr import DeformableDETR, DeformableDETRConfig
from .detr.dino import DINO, DINOConfig
from .dense.defcn import DeFCN, DeFCNConfig
from .engine.checkpoint import CheckpointError, load_checkpoint, model_state, save_checkpoint
from .structures import ClassInfo
from .yolact.yolact import Yolact, YolactConfig
from .zoo import create, list_models

# family name -> (model class, config dataclass): how a checkpoint is rebuilt
FAMILIES: dict[str, tuple[type[Detector], type]] = {
    "deformable_detr": (DeformableDETR, DeformableDETRConfig),
    "dino": (DINO, DINOConfig),
    "yolact": (Yolact, YolactConfig),
    "defcn": (DeFCN, DeFCNConfig),
}


def build_from_state(state: dict, source: str = "checkpoint") -> Detector:
    """Rebuild a model from the ``model_state`` part of a checkpoint and load its weights."""
    family = state["family"]
    if family not in FAMILIES:
        raise CheckpointError(f"{source}: unknown model family {family!r}; known: {sorted(FAMILIES)}")
    model_cls, config_cls = FAMILIES[family]
    try:
        config = config_cls(**state["model_config"])
    except TypeError as e:
        raise CheckpointError(f"{source}: model_config does not fit {config_cls.__name__}: {e}") from e
    model = model_cls(config, ClassInfo.from_dict(state["classes"]), InputSpec.from_dict(state["input_spec"]))
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not fit the {family} model: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}")
    model.model_name = state.get("model_name", family)
    return model


def load(path: str | Path, map_location: str = "cpu") -> Detector:
    """A model from a codetr checkpoint (``last.ckpt`` of a run, or a ``codetr convert`` output)."""
    return build_from_state(load_checkpoint(path, map_location=map_location), f"checkpoint {str(path)!r}")


def save(model: Detector, path: str | Path, model_name: str | None = None) -> None:
    """Write a model-only checkpoint atomically (loadable with ``load``)."""
    save_checkpoint(path, model_state(model, model_name or getattr(model, "model_name", model.family)))


__all__ = ["create", "list_models", "load", "save", "build_from_state"]
