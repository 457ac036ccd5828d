"""Loading official checkpoints safely and mapping their keys with explicit tables."""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from ..data.coco_names import COCO_CATEGORIES
from ..structures import ClassInfo

log = logging.getLogger(__name__)

# The one class an official checkpoint pickles besides tensors and plain containers: the
# argparse Namespace of DINO / Deformable DETR. Nothing else is executed.
_SAFE_GLOBALS: list[Any] = [argparse.Namespace]


def load_checkpoint_file(path: str | Path) -> dict:
    """torch.load with weights_only=True plus the few classes official checkpoints contain."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, or a pickle with code we refuse to run
        raise ValueError(f"cannot load checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def as_config_dict(args: Any) -> dict:
    """An official ``args`` (argparse Namespace or dict) as a plain dict."""
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return dict(vars(args))
    if isinstance(args, dict):
        return dict(args)
    raise TypeError(f"official config must be a dict or argparse.Namespace, got {type(args).__name__}")


def read_config(config: str | Path) -> dict:
    """An official config given as a file or text: a ``.json`` file (official values by name),
    else an mmcv ``.py`` file or its text, read without executing it (``mmcv_config``)."""
    from .mmcv_config import load_config_file, load_config_text

    if isinstance(config, Path) or "\n" not in config:
        path = Path(config)
        if path.suffix == ".json":
            return json.loads(path.read_text())
        return load_config_file(path)
    return load_config_text(config)


def coco_classes() -> ClassInfo:
    """COCO's 80 detection categories, label i = the i-th smallest category id: the label order
    of official 80-class COCO heads (mmdet, cvpods, YOLACT). DETR's 91 id-indexed slots are
    ``deformable_detr.coco_id_slots``."""
    ids = sorted(COCO_CATEGORIES)
    return ClassInfo(ids, [COCO_CATEGORIES[i] for i in ids])


Rule = tuple[str, str | None]  # (regex on the official key, replacement; None = drop)


def map_keys(state: dict[str, Tensor], rules: Iterable[Rule]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename every key by the first matching rule. Returns (mapped, unmapped official keys);
    a rule with replacement None drops the key on purpose (e.g. aliases)."""
    rules = [(re.compile(p), r) for p, r in rules]
    mapped, unmapped = {}, []
    for key, value in state.items():
        for pattern, repl in rules:
            if pattern.fullmatch(key):
                if repl is not None:
                    mapped[pattern.sub(repl, key)] = value
                break
        else:
            unmapped.append(key)
    return mapped, unmapped


def load_mapped(model: torch.nn.Module, mapped: dict[str, Tensor], unmapped: list[str], source: str,
                strict: bool = True, ignore_missing: Callable[[str], bool] = lambda k: False) -> None:
    """Load ``mapped`` into ``model`` and report, by name, every official key that has no place
    and every model key the checkpoint does not fill. With ``strict`` either is an error."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in mapped and not ignore_missing(k)]
    unexpected = [k for k in mapped if k not in expected]
    bad_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                 for k, v in mapped.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if unmapped or unexpected:
        problems.append(f"{len(unmapped) + len(unexpected)} checkpoint keys have no place in the model: "
                        + ", ".join((unmapped + unexpected)[:20]))
    if missing:
        problems.append(f"{len(missing)} model keys are missing from the checkpoint: " + ", ".join(missing[:20]))
    if bad_shape:
        problems.append("shape mismatches: " + "; ".join(bad_shape[:20]))
    if problems:
        message = f"{source}: " + " | ".join(problems)
        if strict:
            raise ValueError(message + " (is this a checkpoint of the right model and configuration?)")
        log.warning(message)
    model.load_state_dict({k: v for k, v in mapped.items() if k in expected and v.shape == expected[k].shape},
                          strict=False)
