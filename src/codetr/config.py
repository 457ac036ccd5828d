"""Typed run configuration: ``RunConfig`` = model name + model args + ``DataConfig`` + ``TrainConfig``.

Plain dataclasses, saved as a plain dict with every checkpoint (``to_dict``/``from_dict``
round trip). Command-line style overrides::

    cfg = apply_overrides(RunConfig(), ["train.epochs=24", "train.lr_multipliers.backbone=0.2",
                                        "data.train_scales=[96,128]", "model=dino_r50"])

Values are parsed as Python/JSON literals (a bare word stays a string) and checked against the
field's type; an unknown key raises ``ConfigError`` naming it and the valid keys.
"""
from __future__ import annotations

import ast
import difflib
import json
import types
import typing
import warnings
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

from torch import device as torch_device

# DataConfig fields older runs saved, now the model's InputSpec (RunConfig.from_dict drops them)
REMOVED_DATA_KEYS = frozenset({"mean", "std", "eval_min_size", "eval_max_size", "square"})
COCO_TRAIN_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]


class ConfigError(ValueError):
    """A config key or value that does not fit the config's schema."""


@dataclass
class DataConfig:
    """Where the data lives and how it is augmented for training.

    Either ``path``, a COCO-style root (``annotations/instances_{train,val}.json``, ``train/``,
    ``val/``), or explicit ``{train,val}_{ann,images}``; relative explicit paths are resolved
    against ``root`` (or ``path``) when given. ``split_paths`` does the resolution.

    Normalisation, channel order, the eval size and square resizing are the model's
    ``InputSpec`` (``model_args.input_spec.*``), never set here. A square model (YOLACT) trains
    on ``InputSpec.max_size`` squares: ``train_scales`` and ``max_size`` are then unused and
    ``crop`` switches on its SSD augmentation.
    """

    path: str | None = None
    root: str | None = None
    train_ann: str | None = None
    train_images: str | None = None
    val_ann: str | None = None
    val_images: str | None = None
    train_scales: list[int] = field(default_factory=lambda: list(COCO_TRAIN_SCALES))
    max_size: int = 1333                  # cap on the longer side in training
    crop: bool = True                     # DETR's random resize -> crop -> resize branch
    masks: bool = False                   # load instance masks for training (YOLACT)
    crop_scales: list[int] = field(default_factory=lambda: [400, 500, 600])
    crop_min_size: int = 384
    crop_max_size: int = 600
    num_workers: int = 2

    def __post_init__(self) -> None:
        sizes = {"max_size": self.max_size, "crop_min_size": self.crop_min_size, "crop_max_size": self.crop_max_size,
                 **{f"train_scales[{i}]": s for i, s in enumerate(self.train_scales)},
                 **{f"crop_scales[{i}]": s for i, s in enumerate(self.crop_scales)}}
        for name, value in sizes.items():
            if value < 1:
                raise ConfigError(f"data.{name} must be a size in pixels >= 1, got {value}")
        if not self.train_scales:
            raise ConfigError("data.train_scales is empty")
        if self.crop_min_size > self.crop_max_size:
            raise ConfigError(f"data.crop_min_size ({self.crop_min_size}) exceeds data.crop_max_size "
                              f"({self.crop_max_size})")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {self.num_workers}")

    def split_paths(self, split: str) -> tuple[Path, Path]:
        """(annotation file, image folder) of ``split`` ('train' or 'val')."""
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        ann, images = getattr(self, f"{split}_ann"), getattr(self, f"{split}_images")
        base = self.root or self.path
        if ann is None or images is None:
            if self.path is None:
                raise ConfigError(f"data: set data.path (COCO-style root) or data.{split}_ann "
                                  f"and data.{split}_images")
            ann = ann or f"annotations/instances_{split}.json"
            images = images or split
        resolve = (lambda p: Path(base) / p) if base else Path
        return resolve(ann), resolve(images)


@dataclass
class TrainConfig:
    """Optimisation schedule. Iteration counts (``warmup_iters``, ``checkpoint_every_iters``,
    ``max_iters``) count loader batches; the LR schedule counts optimizer steps (equal when
    ``accumulate == 1``). ``lr_drop`` is an epoch (None: never drop)."""

    epochs: int = 50
    batch_size: int = 2
    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_multipliers: dict[str, float] = field(default_factory=lambda: {
        "backbone": 0.1, "sampling_offsets": 0.1, "reference_points": 0.1})
    clip_max_norm: float = 0.1            # <= 0 disables clipping
    lr_schedule: Literal["step", "cosine", "linear"] = "step"
    lr_drop: int | None = 40              # "step": epoch of the x lr_gamma drop
    lr_gamma: float = 0.1
    lr_final: float = 0.01                # "cosine" / "linear": final LR / lr
    warmup_iters: int = 0
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"   # auto: bf16 where the device has bf16 units
    channels_last: bool = False           # NHWC weights and images: faster convolutions on CPU (oneDNN)
    accumulate: int = 1
    eval_every: int = 1                   # epochs; <= 0 disables evaluation
    checkpoint_every_iters: int = 1000    # <= 0: only at epoch ends
    seed: int = 42
    init_from: str | None = None          # fine-tune: a checkpoint's weights, its class layers re-initialised
    log_every: int = 20
    max_iters: int | None = None
    device: str = "auto"                  # "auto", "cpu", "cuda", ...
    procs: int = 1                        # CPU only: single-thread DDP processes; batch_size is per process
    find_unused_parameters: bool = False
    ema_decay: float = 0.0                # > 0: evaluate and save an EMA of the weights
    ema_warmup: int = 0                   # optimizer steps over which the EMA decay ramps up
    tensorboard: bool | str = "auto"      # event files in the run folder; "auto": when tensorboard is installed

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("step", "cosine", "linear"):
            raise ConfigError(f"train.lr_schedule must be 'step', 'cosine' or 'linear', got {self.lr_schedule!r}")
        if self.amp not in ("none", "bf16", "fp16", "auto"):
            raise ConfigError(f"train.amp must be 'none', 'bf16', 'fp16' or 'auto', got {self.amp!r}")
        if not (isinstance(self.tensorboard, bool) or self.tensorboard == "auto"):
            raise ConfigError(f"train.tensorboard must be true, false or 'auto', got {self.tensorboard!r}")
        for name in ("epochs", "accumulate", "batch_size", "procs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_iters is not None and self.max_iters < 1:
            raise ConfigError(f"train.max_iters must be >= 1 or null, got {self.max_iters}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.device != "auto":
            try:
                torch_device(self.device)
            except RuntimeError:
                raise ConfigError(f"train.device must be 'auto' or a torch device such as 'cpu', 'cuda' or "
                                  f"'cuda:1', got {self.device!r}") from None


@dataclass
class RunConfig:
    model: str = "deformable_detr_r50"
    model_args: dict[str, Any] = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs/default"

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """A RunConfig from its dict. Preprocessing keys that DataConfig no longer has (saved
        with older runs) are dropped with a warning: the model's ``InputSpec`` holds them."""
        return from_dict(cls, without_removed_keys(d))


def without_removed_keys(d: Any) -> Any:
    """Run config dict ``d`` without the preprocessing keys DataConfig no longer has (saved with
    older runs), warning about each: the model's ``InputSpec`` holds them."""
    data = d.get("data") if isinstance(d, dict) else None
    if isinstance(data, dict) and REMOVED_DATA_KEYS & set(data):
        removed = sorted(REMOVED_DATA_KEYS & set(data))
        warnings.warn(f"ignoring data.{', data.'.join(removed)} of an older run config: preprocessing is the "
                      "model's InputSpec now (model_args.input_spec.*)", stacklevel=3)
        d = {**d, "data": {k: v for k, v in data.items() if k not in REMOVED_DATA_KEYS}}
    return d


def to_dict(cfg: Any) -> dict:
    """A config dataclass -> plain dict (lists, dicts, str, numbers, None)."""
    return json.loads(json.dumps(asdict(cfg)))


def from_dict(cls: type, d: dict, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a (possibly partial) dict, type-checking every value.
    A dict given for a nested config dataclass updates that field's default (see ``update``)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or cls.__name__}: expected a dict, got {type(d).__name__}")
    return cls(**_typed(cls, d, _default, prefix))


def update(cfg: Any, changes: dict, prefix: str = "") -> Any:
    """A copy of config dataclass ``cfg`` with ``changes`` (field -> value) applied, type-checked.
    A dict given for a nested config dataclass updates that config the same way, so
    ``update(yolact, {"backbone": {"depth": 101}})`` keeps the other backbone fields."""
    if not isinstance(changes, dict):
        raise ConfigError(f"{prefix or type(cfg).__name__}: expected a dict, got {type(changes).__name__}")
    return replace(cfg, **_typed(type(cfg), changes, lambda f: getattr(cfg, f.name), prefix))


def _default(f: Field) -> Any:
    return f.default if f.default_factory is MISSING else f.default_factory()


def _typed(cls: type, d: dict, current: Callable[[Field], Any], prefix: str) -> dict[str, Any]:
    """The type-checked values of ``d``'s fields of ``cls``; ``current(field)`` is the value a
    dict updates when the field is a config dataclass."""
    hints, by_name = typing.get_type_hints(cls), {f.name: f for f in fields(cls)}
    out = {}
    for key, value in d.items():
        _check_field(cls, key, prefix)
        base = current(by_name[key]) if is_dataclass(hints[key]) and isinstance(value, dict) else None
        if is_dataclass(base):
            out[key] = update(base, value, f"{prefix}{key}.")
        else:
            out[key] = _coerce(value, hints[key], prefix + key)
    return out


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    """A RunConfig from a config file (``read_config_file``) over the defaults, then ``overrides``."""
    return apply_overrides(apply_settings(RunConfig(), read_config_file(path), source=path), list(overrides))


def read_config_file(path: str | Path) -> dict:
    """The settings of a JSON or YAML (``.yaml`` / ``.yml``, read with PyYAML when installed)
    config file: a nested dict of run config keys, e.g. a run folder's ``config.json``. Errors
    are one line naming the file (and the line, for a malformed file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        settings = parse_yaml(text, path, instead="give the config as JSON")
    else:
        try:
            settings = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: malformed JSON: {e.msg} at line {e.lineno} column {e.colno} (YAML "
                              "config files end in .yaml or .yml)") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top, got {type(settings).__name__}")
    return without_removed_keys(settings)


def parse_yaml(text: str, path: str | Path, instead: str) -> Any:
    """The YAML ``text`` of file ``path``, read with PyYAML (optional); a one-line ConfigError
    for a malformed file, or without PyYAML, saying what to do ``instead``."""
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{path}: YAML files need PyYAML (pip install pyyaml); without it, {instead}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: malformed YAML: {getattr(e, 'problem', None) or e}{where}") from None


def apply_settings(cfg: Any, settings: dict, source: str | Path = "") -> Any:
    """``cfg`` with a nested dict of settings applied as ``apply_overrides`` applies
    ``key=value``: each leaf (a value that is not a non-empty dict) sets its dotted key, so a
    file can say everything ``--set`` can and a dict field such as ``model_args`` is updated,
    not replaced. ``source``: the file named in errors."""
    try:
        for keys, value in _leaves(settings, []):
            cfg = _set(cfg, keys, value, "")
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source else str(e)) from None
    return cfg


def _leaves(settings: dict, keys: list[str]) -> list[tuple[list[str], Any]]:
    """(key path, value) of every leaf of a nested dict; an empty dict is a leaf."""
    out = []
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            out += _leaves(value, keys + [str(key)])
        else:
            out.append((keys + [str(key)], value))
    return out


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Return a copy of ``cfg`` with each ``"a.b.c=value"`` applied in order."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        cfg = _set(cfg, key.strip().split("."), parse_value(text.strip()), "")
    return cfg


def parse_value(text: str) -> Any:
    """'24' -> 24, '[96,128]' -> [96, 128], 'true'/'null' (JSON) -> True/None, 'dino' -> 'dino'."""
    for parse in (ast.literal_eval, json.loads):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return text


def _set(obj: Any, keys: list[str], value: Any, prefix: str) -> Any:
    """``obj`` (dataclass or dict) with ``keys`` path set to ``value``, type-checked."""
    key, rest = keys[0], keys[1:]
    if is_dataclass(obj):
        _check_field(type(obj), key, prefix)
        hint = typing.get_type_hints(type(obj))[key]
        current = getattr(obj, key)
        if rest and not (is_dataclass(current) or isinstance(current, dict)):
            raise ConfigError(f"config key {prefix + key!r} is a {type(current).__name__}, "
                              f"it has no sub-key {rest[0]!r}")
        new = _set(current, rest, value, f"{prefix}{key}.") if rest else value
        return replace(obj, **{key: _coerce(new, hint, prefix + key)})
    # a dict field such as lr_multipliers / model_args: free keys, values typed by the schema
    new = dict(obj)
    if rest:
        new[key] = _set(obj.get(key, {}), rest, value, f"{prefix}{key}.")
    else:
        new[key] = value
    return new


def _check_field(cls: type, key: str, prefix: str) -> None:
    names = [f.name for f in fields(cls)]
    if key not in names:
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
        raise ConfigError(f"unknown config key {prefix + key!r} ({cls.__name__} has no field "
                          f"{key!r}; valid: {', '.join(names)}){hint}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` checked against type ``hint`` (ints accepted as floats, lists as tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise _type_error(key, value, hint)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r} must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, hint)
        item = args[0] if args else Any
        return origin(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, hint)
        return {k: _coerce(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise _type_error(key, value, hint)


def _type_error(key: str, value: Any, hint: Any) -> ConfigError:
    name = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
    return ConfigError(f"config key {key!r} expects {name}, got {value!r} ({type(value).__name__})")
