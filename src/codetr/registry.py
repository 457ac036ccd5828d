"""The detector families, in one table: the checkpoint loader (``api``), the official converters
(``convert``), the zoo and the command line all read ``FAMILIES``.

Adding a family = one ``Family`` row here, its zoo entries and (optionally) its recipes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .convert import defcn_official, deformable_detr_official, dino_official, yolact_official
from .convert import fcos_official, mmdet_atss_official
from .convert import co_detr_official, mmdet_faster_rcnn_official
from .co_detr import CoDETR, CoDETRConfig
from .dense.atss_detector import ATSS, ATSSConfig
from .dense.defcn import DeFCN, DeFCNConfig
from .dense.fcos import FCOS, FCOSConfig
from .detector import Detector
from .detr.deformable_detr import DeformableDETR, DeformableDETRConfig
from .detr.dino import DINO, DINOConfig
from .rcnn.faster_rcnn import FasterRCNN, FasterRCNNConfig
from .yolact.yolact import Yolact, YolactConfig

# (official checkpoint dict, official config values, strict, ema, source for messages) -> model
Converter = Callable[[dict, dict, bool, bool, str], Detector]


@dataclass(frozen=True)
class Family:
    """``name``: ``Detector.family``, saved in every checkpoint; ``model`` is built as
    ``model(config, classes, input_spec)`` from a ``config`` dataclass; ``convert`` reads an
    official checkpoint; ``cli_name``: ``codetr convert CLI_NAME ...``."""

    name: str
    model: type[Detector]
    config: type
    convert: Converter
    cli_name: str


FAMILIES: tuple[Family, ...] = (
    Family("deformable_detr", DeformableDETR, DeformableDETRConfig, deformable_detr_official, "deformable_detr"),
    Family("dino", DINO, DINOConfig, dino_official, "dino"),
    Family("yolact", Yolact, YolactConfig, yolact_official, "yolact"),
    Family("defcn", DeFCN, DeFCNConfig, defcn_official, "defcn"),
    Family("fcos", FCOS, FCOSConfig, fcos_official, "fcos"),
    Family("atss", ATSS, ATSSConfig, mmdet_atss_official, "mmdet_atss"),
    Family("co_detr", CoDETR, CoDETRConfig, co_detr_official, "co_detr"),
    Family("faster_rcnn", FasterRCNN, FasterRCNNConfig, mmdet_faster_rcnn_official, "mmdet_faster_rcnn"),
)


def get_family(name: str) -> Family:
    """The family whose ``name`` or ``cli_name`` is ``name``; a ValueError lists the known ones."""
    for family in FAMILIES:
        if name in (family.name, family.cli_name):
            return family
    raise ValueError(f"unknown family {name!r}; known: {', '.join(cli_names())}")


def cli_names() -> list[str]:
    return [family.cli_name for family in FAMILIES]


def _check(families: tuple[Family, ...]) -> None:
    """Names and CLI names unique; each name is its model class's ``family``."""
    for field in ("name", "cli_name"):
        values = [getattr(f, field) for f in families]
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate family {field}s in {values}")
    for family in families:
        if family.model.family != family.name:
            raise ValueError(f"family {family.name!r} lists {family.model.__name__}, whose family is "
                             f"{family.model.family!r}")


_check(FAMILIES)
