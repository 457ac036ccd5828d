"""codetr checkpoints: atomic writes, ``weights_only`` loads, errors that name the file.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` accepts (tensors, lists,
dicts, str, numbers, None). Keys written by ``model_state`` + the trainer:

    codetr_version, family, model_name, model_config, classes, input_spec, model,
    optimizer, scheduler, scaler, epoch, iter, global_step, rng, run_config, best

``epoch``/``iter`` give the position to resume at: batch ``iter`` of epoch ``epoch``.
"""
from __future__ import annotations

import os
import random
import re
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
import torch
from torch import nn

from ..backbones.config import nest_flat_backbone
from ..dense.defcn import upgrade_legacy_fcos
from ..version import __version__

REQUIRED_KEYS = ("codetr_version", "family")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or is not the one expected."""


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success flush, fsync and rename it onto
    ``path``. On any error the temporary file is removed and ``path`` is left untouched. The
    file gets the permissions of any new file (0666 less the umask), not mkstemp's 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write ``state`` to ``path`` atomically; stamps ``codetr_version``. ``state`` must carry
    ``family`` (see ``model_state``)."""
    if "family" not in state:
        raise ValueError("save_checkpoint: state has no 'family' key; build it with model_state()")
    state = {"codetr_version": __version__, **state}
    try:
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    except OSError as e:  # full disk, read-only folder
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}") from e


def load_checkpoint(path: str | Path, family: str | None = None, model_name: str | None = None,
                    map_location: Any = "cpu", weights_only: bool = True) -> dict:
    """Read a codetr checkpoint. ``family``/``model_name``, when given, must match the
    checkpoint's. Raises ``FileNotFoundError`` or ``CheckpointError`` naming ``path``."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt"))
        hint = f" (it holds {', '.join(inside)}: pass one of them)" if inside else ""
        raise FileNotFoundError(f"checkpoint {str(path)!r} is a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=weights_only)
    except Exception as e:  # truncated zip, pickle errors, unsupported globals
        first_line = str(e).strip().split("\n")[0]  # torch's unpickling errors run over many lines
        raise CheckpointError(f"cannot read checkpoint {str(path)!r} (corrupt or not written by "
                              f"torch.save): {type(e).__name__}: {first_line}") from e
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{str(path)!r} is not a codetr checkpoint (missing {missing}); "
                              "official checkpoints go through codetr.convert")
    state = upgrade_state(state)  # before the family check: an upgrade may change the family
    for key, expected in (("family", family), ("model_name", model_name)):
        found = state.get(key)
        if expected is not None and found != expected:
            raise CheckpointError(f"checkpoint {str(path)!r} holds a model of {key} {found!r}, "
                                  f"expected {expected!r}")
    return state


# Weight names that changed since checkpoints were first written, per family: (pattern, new name).
# DETRs: the encoder became a module of its own (layers + level embedding), as officially named.
_RENAMED_WEIGHTS: dict[str, list[tuple[re.Pattern, str]]] = {
    family: [(re.compile(r"^transformer\.encoder\.(\d+)\."), r"transformer.encoder.layers.\1."),
             (re.compile(r"^transformer\.level_embed$"), "transformer.encoder.level_embed")]
    for family in ("deformable_detr", "dino")
}


def upgrade_state(state: dict) -> dict:
    """A checkpoint of an earlier codetr with its weights under today's names (the model, and
    the live model of an EMA run), parameter order, hence optimizer state, unchanged; and its flat
    ``model_config`` backbone keys (``backbone_depth``, ``stem_channels`` ...) nested as today's
    ``model_config["backbone"]`` (``BackboneConfig``); FCOS of family "defcn" as family "fcos"."""
    family = state.get("family")
    rules = _RENAMED_WEIGHTS.get(family, []) if isinstance(family, str) else []
    for key in ("model", "live_model"):
        if rules and isinstance(state.get(key), dict):
            state[key] = {_renamed(name, rules): value for name, value in state[key].items()}
    if isinstance(state.get("model_config"), dict):
        state["model_config"] = nest_flat_backbone(state["model_config"])
    return upgrade_legacy_fcos(state)  # FCOS saved as family "defcn" with assigner "fcos"


def _renamed(name: str, rules: list[tuple[re.Pattern, str]]) -> str:
    for pattern, new in rules:
        name, count = pattern.subn(new, name)
        if count:
            break
    return name


def model_state(model: nn.Module, model_name: str) -> dict:
    """The model part of a checkpoint: weights plus what is needed to rebuild the model."""
    model = getattr(model, "module", model)  # DDP
    config = model.config
    config = asdict(config) if is_dataclass(config) else dict(config or {})
    return {"family": model.family, "model_name": model_name, "model_config": config,
            "classes": model.classes.to_dict(), "input_spec": model.input_spec.to_dict(),
            "model": model.state_dict()}


def rng_state() -> dict:
    """Python, numpy, torch CPU and CUDA generator states as tensors/lists (weights_only safe)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss],
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of ``rng_state``."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
