"""DeFCN (Wang et al., "End-to-End Object Detection with Fully Convolutional Network", CVPR
2021), as in the official cvpods code; its FCOS baseline is ``codetr.dense.fcos``.

    images -> ResNet (C3..C5) -> FPN (P3..P7, P6/P7 from P5) -> FCOS head (shared over levels)
           -> box tower -> 3D max filter -> filter logit;  score = sigmoid(cls) * sigmoid(filter)
    train: POTO one-to-one targets (+ auxiliary one-to-many focal loss on cls)
    test:  per-level top-k above a threshold, top detections per image, no NMS

Checkpoints of codetr before FCOS became its own family stored FCOS as family "defcn" with
``assigner="fcos"``: ``upgrade_legacy_fcos`` rewrites them.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from ..config_checks import require_at_least
from ..detector import InputSpec
from ..structures import ClassInfo
from .base import DenseDetector, OutputNames, ScoreComposition, class_only, times_quality
from .criterion import DeFCNCriterion
from .fcos import FCOS, FCOSConfig, PointConfig, cvpods_backbone_and_fpn, official_input_spec, point_parts
from .fcos_head import FCOSHead


@dataclass(frozen=True)
class DeFCNConfig(PointConfig):
    """Every number the model is built from. Defaults: the official POTO + 3DMF + aux R-50."""

    max_filter: bool = True               # 3DMF
    filter_kernel_size: int = 3
    filter_tau: int = 2
    poto_alpha: float = 0.8
    aux_topk: int | None = 9              # None / 0: no auxiliary loss
    reg_weight: float = 2.0

    def __post_init__(self) -> None:
        super().__post_init__()
        # a 3DMF window of one level (tau 0) and aux_topk 0 (no aux loss) are valid
        require_at_least(self, {"filter_kernel_size": 1, "filter_tau": 0, "aux_topk": 0})


class DeFCN(DenseDetector):
    """Eval outputs: per level ``box_cls`` [B, K, H, W] logits, ``box_delta`` [B, 4, H, W] ltrb
    in input pixels and, with 3DMF, ``box_filter`` [B, 1, H, W] logits."""

    family = "defcn"

    def __init__(self, config: DeFCNConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        c = config
        backbone, fpn = cvpods_backbone_and_fpn(c)
        head = FCOSHead(c.fpn_channels, c.num_classes, c.strides, c.num_convs, c.prior_prob, c.norm_reg_targets,
                        "filter" if c.max_filter else None, c.filter_kernel_size, c.filter_tau)
        criterion = DeFCNCriterion(c.num_classes, c.strides, c.poto_alpha, c.center_sampling_radius, c.aux_topk,
                                   c.focal_alpha, c.focal_gamma, c.reg_weight)
        names = OutputNames("box_cls", "box_delta", "box_filter" if c.max_filter else None)
        scores = ScoreComposition(times_quality if c.max_filter else class_only, class_only)
        super().__init__(c, classes, input_spec or official_input_spec(), backbone, fpn,
                         point_parts(c, head, names, criterion, scores))

    class_layers = FCOS.class_layers  # the same head (FCOSHead)


_LEGACY_FCOS_RENAMES = {"fcos_size_ranges": "size_ranges"}  # old joint config field -> FCOSConfig's


def upgrade_legacy_fcos(state: dict) -> dict:
    """A checkpoint of family "defcn" whose ``model_config`` has the old ``assigner`` field:
    ``"fcos"`` becomes family "fcos" with an ``FCOSConfig`` dict, ``"poto"`` a ``DeFCNConfig``
    dict (the other family's fields dropped). Weight names are unchanged. Others: as they are.
    Run after the flat backbone keys were nested (``nest_flat_backbone``)."""
    config = state.get("model_config")
    if state.get("family") != "defcn" or not isinstance(config, dict) or "assigner" not in config:
        return state
    if config["assigner"] == "fcos":
        renamed = {_LEGACY_FCOS_RENAMES.get(k, k): v for k, v in config.items()}
        keep = {f.name for f in fields(FCOSConfig)}
        return {**state, "family": "fcos", "model_config": {k: v for k, v in renamed.items() if k in keep}}
    keep = {f.name for f in fields(DeFCNConfig)}
    return {**state, "model_config": {k: v for k, v in config.items() if k in keep}}
