"""Official checkpoints -> codetr models: ``load_official(family, checkpoint, config=None)``.

One reader per official repository (``*_official`` below) takes the loaded official file and
the official config values and hands the state dict to that family's key table
(``convert/<family>.py``); ``codetr.registry`` names each family's reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from ..detector import Detector
from .common import as_config_dict, load_checkpoint_file, read_config


def load_official(family: str, checkpoint: str | Path | dict, config: dict | Any = None,
                  strict: bool = True, ema: bool = False) -> Detector:
    """Build the codetr model an official checkpoint describes and load its weights.

    ``checkpoint``: a path or an already loaded dict in the official layout. The architecture
    comes from the official configuration values: ``config`` when given (a dict or argparse
    Namespace of official names, or a JSON / mmcv ``.py`` file or mmcv config text:
    ``common.read_config``), else the ``args`` the checkpoint carries. Unmapped or missing
    keys raise (``strict``) or warn, each reported by name. ``ema``: load the ``'ema_model'``
    weights of a DINO checkpoint trained with EMA instead of ``'model'``.
    """
    from ..registry import get_family  # the registry imports the readers below

    reader = get_family(family).convert
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_checkpoint_file(checkpoint)
    source = f"checkpoint {checkpoint}" if not isinstance(checkpoint, dict) else "checkpoint dict"
    if isinstance(config, (str, Path)):
        config = read_config(config)
    args = as_config_dict(config if config is not None else ckpt.get("args"))
    return reader(ckpt, args, strict, ema, source)


def _entry(ckpt: dict, key: str, source: str, layout: str) -> dict[str, Tensor]:
    """``ckpt[key]``, or a ValueError naming ``source``, its keys and the official ``layout``."""
    if key not in ckpt:
        raise ValueError(f"{source} has no {key!r} entry (keys: {', '.join(map(str, ckpt))[:200]}); {layout}")
    return ckpt[key]


def deformable_detr_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .deformable_detr import convert

    state = _entry(ckpt, "model", source, "official Deformable DETR checkpoints are {'model': state_dict, 'args': ...}")
    return convert(state, args, strict=strict)


def dino_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .dino import convert

    state = _entry(ckpt, "ema_model" if ema else "model", source,
                   "official DINO checkpoints are {'model': state_dict, 'args': ..., ['ema_model': ...]}")
    return convert(state, args, strict=strict)


def yolact_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .yolact import convert, unwrap_state

    return convert(unwrap_state(ckpt), args, strict=strict)


def defcn_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .defcn import convert

    state = _entry(ckpt, "model", source, "official cvpods DeFCN/FCOS checkpoints are {'model': state_dict}")
    return convert(state, args, strict=strict)


def fcos_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    """cvpods FCOS only (``defcn_official`` reads both DeFCN and FCOS checkpoints)."""
    if "head.centerness.weight" not in _entry(ckpt, "model", source, "official cvpods FCOS checkpoints are "
                                              "{'model': state_dict}"):
        raise ValueError(f"{source} is not a cvpods FCOS checkpoint (no 'head.centerness.weight'); "
                         "DeFCN checkpoints convert with family 'defcn'")
    return defcn_official(ckpt, args, strict, ema, source)


def mmdet_atss_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .mmdet_atss import convert
    from .mmdet import mmdet_config

    _entry(ckpt, "state_dict", source, "mmdet checkpoints are {'meta': {..., 'config': ...}, 'state_dict': ...}")
    return convert(ckpt, mmdet_config(ckpt, args), strict=strict)


def mmdet_faster_rcnn_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .mmdet import mmdet_config
    from .mmdet_faster_rcnn import convert

    _entry(ckpt, "state_dict", source, "mmdet checkpoints are {'meta': {..., 'config': ...}, 'state_dict': ...}")
    return convert(ckpt, mmdet_config(ckpt, args), strict=strict)


def co_detr_official(ckpt: dict, args: dict, strict: bool, ema: bool, source: str) -> Detector:
    from .co_detr import convert

    _entry(ckpt, "state_dict", source, "official Co-DETR (mmdet 2.x) checkpoints are {'meta': ..., 'state_dict': ...}")
    return convert(ckpt, args, strict=strict)
