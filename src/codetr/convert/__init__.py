"""Official checkpoints -> codetr models: ``load_official(family, checkpoint, config=None)``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .common import as_config_dict, load_checkpoint_file

FAMILIES = ("deformable_detr", "dino", "yolact", "defcn")


def load_official(family: str, checkpoint: str | Path | dict, config: dict | Any = None,
                  strict: bool = True, ema: bool = False) -> nn.Module:
    """Build the codetr model an official checkpoint describes and load its weights.

    ``checkpoint``: a path or an already loaded dict in the official layout. The architecture
    comes from the official configuration values: ``config`` when given (a dict or argparse
    Namespace of official names), else the ``args`` the checkpoint carries. Unmapped or missing
    keys raise (``strict``) or warn, each reported by name. ``ema``: load the ``'ema_model'``
    weights of a DINO checkpoint trained with EMA instead of ``'model'``.
    """
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_file(checkpoint)
    source = f"checkpoint {checkpoint}" if not isinstance(checkpoint, dict) else "checkpoint dict"
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    args = as_config_dict(config if config is not None else ckpt.get("args"))
    if family == "deformable_detr":
        from .deformable_detr import convert
        if "model" not in ckpt:
            raise ValueError(f"{source} has no 'model' entry (keys: {', '.join(map(str, ckpt))[:200]}); "
                             "official Deformable DETR checkpoints are {'model': state_dict, 'args': ...}")
        return convert(ckpt["model"], args, strict=strict)
    if family == "dino":
        from .dino import convert as convert_dino
        key = "ema_model" if ema else "model"
        if key not in ckpt:
            raise ValueError(f"{source} has no {key!r} entry (keys: {', '.join(map(str, ckpt))[:200]}); "
                             "official DINO checkpoints are {'model': state_dict, 'args': ..., ['ema_model': ...]}")
        return convert_dino(ckpt[key], args, strict=strict)
    if family == "yolact":
        from .yolact import convert as convert_yolact, unwrap_state
        return convert_yolact(unwrap_state(ckpt), args, strict=strict)
    if family == "defcn":
        from .defcn import convert as convert_defcn
        if "model" not in ckpt:
            raise ValueError(f"{source} has no 'model' entry (keys: {', '.join(map(str, ckpt))[:200]}); "
                             "official cvpods DeFCN/FCOS checkpoints are {'model': state_dict}")
        return convert_defcn(ckpt["model"], args, strict=strict)
    raise AssertionError(family)
