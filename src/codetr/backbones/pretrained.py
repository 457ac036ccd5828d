"""A backbone's starting weights (``BackboneConfig.pretrained``), loaded into a built detector when
a training run starts: torchvision ImageNet weights (ResNets), timm models, or a local file.

Downloads go through the usual caches: torchvision's ``$TORCH_HOME/hub/checkpoints`` and the
Hugging Face cache of timm (``$HF_HOME/hub``). A file found there is used without the network;
one that is neither there nor downloadable is a one-line error saying where to put it."""
from __future__ import annotations

import difflib
import logging
import re
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from ..config import ConfigError
from .config import BackboneConfig
from .resnet import ResNetBackbone

log = logging.getLogger("codetr")

TIMM_PREFIX = "timm:"
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")
# the family default of "torchvision": the weights of torchvision://resnet50 (DETR, mmdet, YOLACT)
TORCHVISION_DEFAULT = "IMAGENET1K_V1"
# classifier parts of an ImageNet network the backbone does not have: the ResNet's fc, timm's
# head and final norm (Swin's maps go through per-stage norms instead)
_CLASSIFIER_KEYS = re.compile(r"(fc|head)\..*|norm\.(weight|bias)")
# backbone parts a classification network does not have, kept as built when the weights lack
# them: the offsets, masks and bias of deformable convs (YOLACT++), Swin's per-stage output norms
_DETECTION_ONLY_KEYS = re.compile(r".*\.conv2\.(bias|conv_offset_mask\.(weight|bias))|norms\.\d+\.(weight|bias)")
# wrappers and prefixes a saved state dict may carry: {"state_dict": ...}, {"model": ...}, DDP's
# "module.", a detector's "backbone.", codetr's ResNetBackbone "body."
_WRAPPERS = ("state_dict", "model")
_PREFIXES = ("module.", "backbone.", "body.")
_SHOWN = 4  # key names listed in an error


def load_pretrained_backbone(model: nn.Module) -> str | None:
    """Load ``model.config.backbone.pretrained`` into ``model.backbone`` and return where the
    weights came from; None (nothing loaded) when ``pretrained`` is None. Every backbone tensor
    must be in the weights with its shape (but the parts only a detector has), and every weight
    must be a backbone tensor (but the classifier's): otherwise a one-line ValueError names them."""
    config, backbone = _backbone_of(model)
    if config.pretrained is None:
        _warn_frozen_from_scratch(config)
        return None
    source, state = _read(config)
    count = _load(backbone.body if isinstance(backbone, ResNetBackbone) else backbone, state, source)
    log.info("backbone: loaded %d tensors from %s", count, source)
    if config.norm == "bn" and config.kind == "resnet":
        log.info("backbone: norm='bn' trains the pretrained BatchNorm statistics (the official DETRs and mmdet "
                 "freeze them: model_args.backbone.norm=frozen_bn)")
    return source


def _backbone_of(model: nn.Module) -> tuple[BackboneConfig, nn.Module]:
    config = getattr(getattr(model, "config", None), "backbone", None)
    if not isinstance(config, BackboneConfig) or not isinstance(getattr(model, "backbone", None), nn.Module):
        raise ValueError(f"{type(model).__name__} has no backbone built from a BackboneConfig "
                         "(expected model.backbone and model.config.backbone)")
    return config, model.backbone


def _warn_frozen_from_scratch(config: BackboneConfig) -> None:
    if config.kind == "resnet" and config.norm == "frozen_bn":
        log.warning("backbone: random weights with frozen BatchNorm%s learn poorly; set "
                    "model_args.backbone.pretrained (e.g. IMAGENET1K_V1) or model_args.backbone.norm=bn",
                    " and a frozen stem" if config.frozen_stages >= 0 else "")


def _read(config: BackboneConfig) -> tuple[str, dict[str, Tensor]]:
    """(where the weights come from, their state dict) for ``config.pretrained``."""
    name = config.pretrained
    if name.startswith(TIMM_PREFIX):
        return name, _timm_state(name[len(TIMM_PREFIX):])
    if name.endswith(WEIGHT_SUFFIXES) or "/" in name or Path(name).exists():
        return name, _read_file(name)
    return _torchvision_state(config, name)


def _torchvision_state(config: BackboneConfig, name: str) -> tuple[str, dict[str, Tensor]]:
    """A torchvision ResNet weights enum member (``"torchvision"``: ``TORCHVISION_DEFAULT``)."""
    if config.kind != "resnet":
        raise ConfigError(f"backbone.pretrained={name!r}: torchvision weights are for ResNets; a {config.kind} "
                          f"takes '{TIMM_PREFIX}<model name>' or a {' / '.join(WEIGHT_SUFFIXES)} file")
    weights_enum = torchvision.models.get_model_weights(f"resnet{config.depth}")
    member = TORCHVISION_DEFAULT if name == "torchvision" else name
    if member not in weights_enum.__members__:
        choices = ", ".join(["torchvision", *weights_enum.__members__])
        raise ConfigError(f"backbone.pretrained={name!r} is not a weight of {weights_enum.__name__} ({choices}), "
                          f"'{TIMM_PREFIX}<timm model name>' or a {' / '.join(WEIGHT_SUFFIXES)} file")
    weights = weights_enum[member]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        state = torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", check_hash=True,
                                                   weights_only=True)
    except OSError as e:  # URLError, HTTPError, timeouts: no network
        raise FileNotFoundError(f"backbone weights {weights.url} are not in {folder} and the download failed "
                                f"({_first_line(e)}): download that file into {folder} "
                                f"($TORCH_HOME/hub/checkpoints), {_alternatives('.pth')}") from None
    return f"{weights_enum.__name__}.{weights.name} ({folder / Path(weights.url).name})", state


def _timm_state(name: str) -> dict[str, Tensor]:
    """The weights of timm's pretrained model ``name`` (``arch`` or ``arch.tag``), without its classifier."""
    import timm
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except RuntimeError:  # a known architecture with an unknown tag
        cfg = None
    if cfg is None or not (cfg.hf_hub_id or cfg.url):
        close = difflib.get_close_matches(name, timm.list_pretrained(), n=5, cutoff=0.6)
        raise ConfigError(f"backbone.pretrained='{TIMM_PREFIX}{name}' is not a pretrained timm model; close names: "
                          f"{', '.join(close) or 'none'} (all: timm.list_pretrained())")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0).state_dict()
    except OSError as e:  # not cached and no network (huggingface_hub / urllib errors are OSErrors)
        raise _timm_download_error(name, cfg.hf_hub_id, cfg.url, e) from None


def _timm_download_error(name: str, hf_hub_id: str | None, url: str | None, error: OSError) -> FileNotFoundError:
    """Where timm looked for ``name``'s weights (the Hugging Face cache, or torch.hub's for a URL)
    and how to put them there."""
    from huggingface_hub import constants

    if hf_hub_id:
        folder = f"the Hugging Face cache {constants.HF_HUB_CACHE}"
        fetch = f"download the repo {hf_hub_id} into it (`hf download {hf_hub_id}`; $HF_HOME/hub)"
    else:
        folder = str(Path(torch.hub.get_dir()) / "checkpoints")
        fetch = f"download {url} into that folder"
    return FileNotFoundError(f"backbone weights {TIMM_PREFIX}{name} are not in {folder} and the download failed "
                             f"({type(error).__name__}): {fetch}, {_alternatives('.safetensors')}")


def _read_file(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a .pth / .pt / .safetensors file, out of a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper and without the prefixes ``module.``, ``backbone.``, ``body.``
    (a prefix, when some keys have it, selects those keys: a detector's ``backbone.*``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.pretrained: no file {str(path)!r}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    elif path.suffix in WEIGHT_SUFFIXES:
        from ..convert.common import load_checkpoint_file

        state = load_checkpoint_file(path)
    else:
        raise ValueError(f"backbone.pretrained: {str(path)!r} is not a {' / '.join(WEIGHT_SUFFIXES)} file")
    tensors = _unwrapped(state)
    if not tensors:
        raise ValueError(f"backbone.pretrained: {str(path)!r} holds no tensors")
    return tensors


def _unwrapped(state: dict) -> dict[str, Tensor]:
    """The tensors of ``state`` out of its wrappers, without the prefixes."""
    while wrapped := next((state[k] for k in _WRAPPERS if isinstance(state.get(k), dict)), None):
        state = wrapped
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _load(target: nn.Module, state: dict[str, Tensor], source: str) -> int:
    """Copy ``state`` into ``target`` (strict but for the classifier and the detection-only
    parts); returns the number of tensors copied."""
    expected = {k: v for k, v in target.state_dict().items() if not k.endswith("num_batches_tracked")}
    given = {k: v for k, v in state.items()
             if not (_CLASSIFIER_KEYS.fullmatch(k) or k.endswith("num_batches_tracked"))}
    missing = [k for k in expected if k not in given and not _DETECTION_ONLY_KEYS.fullmatch(k)]
    unexpected = [k for k in given if k not in expected]
    if missing or unexpected:
        raise ValueError(f"backbone weights {source} do not fit the backbone: {_some(missing)} missing, "
                         f"{_some(unexpected)} not in the backbone")
    for key, value in given.items():
        if value.shape != expected[key].shape:
            raise ValueError(f"backbone weights {source}: {key} is {list(value.shape)}, the backbone's is "
                             f"{list(expected[key].shape)}")
    target.load_state_dict(given, strict=False)
    return len(given)


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN]) + (", ..." if len(keys) > _SHOWN else "")
    return f"{len(keys)} keys ({shown})" if keys else "0 keys"


def _alternatives(suffix: str) -> str:
    return (f"or set model_args.backbone.pretrained=/path/file{suffix} (a local copy), or "
            "model_args.backbone.pretrained=null to train from scratch")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
