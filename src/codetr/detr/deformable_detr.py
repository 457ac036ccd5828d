"""Deformable DETR (Zhu et al., ICLR 2021), with iterative box refinement and two-stage.

    images -> ResNet (C3..C5) -> 1x1 conv + GN per level (+ stride-2 extra levels)
           -> deformable encoder -> [two-stage: top-k encoder proposals]
           -> deformable decoder (boxes refined layer by layer)
           -> per layer: class logits (focal, no background) and boxes (sigmoid cxcywh)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones import BackboneConfig, build_backbone
from ..assign import HungarianMatcher
from ..boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from ..config_checks import DETR_MINIMUMS, require_at_least
from ..detector import ClassLayout, Detector, InputSpec, LossOutput
from ..nn import MLP, SinePositionEncoding
from ..structures import ClassInfo, Detections, Target, padding_mask
from .criterion import SetCriterion, loss_weights
from .transformer import DeformableTransformer, Intermediates, TokenSelection, predict_per_layer


@dataclass(frozen=True)
class DeformableDETRConfig:
    """Every number the model is built from. Defaults are the official R50 settings."""

    num_classes: int = 91
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    hidden_dim: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 1024
    dropout: float = 0.1
    num_feature_levels: int = 4
    enc_points: int = 4
    dec_points: int = 4
    num_queries: int = 300
    with_box_refine: bool = False
    two_stage: bool = False
    # two-stage proposals trained with their real labels and ranked by their best class (as DINO)
    # instead of class-agnostic (official Deformable DETR)
    enc_class_aware: bool = False
    # matching costs and loss weights
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cls_loss_coef: float = 2.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    focal_alpha: float = 0.25
    aux_loss: bool = True
    num_select: int = 100  # detections kept per image at inference

    def __post_init__(self) -> None:
        require_at_least(self, DETR_MINIMUMS)

    def to_dict(self) -> dict:
        return asdict(self)


def input_projections(in_channels: list[int], dim: int, num_levels: int) -> nn.ModuleList:
    """1x1 conv + GroupNorm per backbone level, then 3x3 stride-2 conv + GN for each extra level."""
    projs = [nn.Sequential(nn.Conv2d(c, dim, 1), nn.GroupNorm(32, dim)) for c in in_channels]
    prev = in_channels[-1]
    for _ in range(num_levels - len(in_channels)):
        projs.append(nn.Sequential(nn.Conv2d(prev, dim, 3, stride=2, padding=1), nn.GroupNorm(32, dim)))
        prev = dim
    for proj in projs:
        nn.init.xavier_uniform_(proj[0].weight, gain=1)
        nn.init.zeros_(proj[0].bias)
    return nn.ModuleList(projs)


class DeformableDETR(Detector):
    family = "deformable_detr"

    def __init__(self, config: DeformableDETRConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec)
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = c = config
        num_backbone_levels = min(c.num_feature_levels, 3)
        self.backbone = build_backbone(c.backbone, range(5 - num_backbone_levels, 5))
        self.position = SinePositionEncoding(c.hidden_dim // 2)
        self.input_proj = input_projections(self.backbone.out_channels, c.hidden_dim, c.num_feature_levels)
        self.transformer = DeformableTransformer(
            c.hidden_dim, c.num_heads, c.enc_layers, c.dec_layers, c.ffn_dim, c.dropout,
            c.num_feature_levels, c.enc_points, c.dec_points, c.two_stage, c.num_queries, c.enc_class_aware)
        if not c.two_stage:
            self.query_embed = nn.Embedding(c.num_queries, 2 * c.hidden_dim)
        self.class_embed, self.bbox_embed = self._build_heads()
        self.criterion = SetCriterion(
            c.num_classes, HungarianMatcher(c.cost_class, c.cost_bbox, c.cost_giou, c.focal_alpha),
            loss_weights(c.dec_layers - 1 if c.aux_loss else 0, c.two_stage,
                         c.cls_loss_coef, c.bbox_loss_coef, c.giou_loss_coef), c.focal_alpha,
            enc_class_aware=c.enc_class_aware)

    def _build_heads(self) -> tuple[nn.ModuleList, nn.ModuleList]:
        """One head per decoder layer (+1 for the encoder proposals in two-stage). Without box
        refinement the decoder layers share one head, as official."""
        c = self.config
        num_pred = c.dec_layers + (1 if c.two_stage else 0)

        def new_heads() -> tuple[nn.Linear, MLP]:
            cls, box = nn.Linear(c.hidden_dim, c.num_classes), MLP(c.hidden_dim, c.hidden_dim, 4, 3)
            nn.init.constant_(cls.bias, -math.log((1 - 0.01) / 0.01))  # prior probability 0.01
            nn.init.zeros_(box.layers[-1].weight)
            nn.init.zeros_(box.layers[-1].bias)
            return cls, box

        if c.with_box_refine:
            pairs = [new_heads() for _ in range(num_pred)]
        else:
            shared = new_heads()
            pairs = [shared] * c.dec_layers + ([new_heads()] if c.two_stage else [])
        initial_wh = 0.0 if c.two_stage else -2.0  # refined single-stage boxes start small
        with torch.no_grad():
            for _, box in pairs:
                box.layers[-1].bias[2:] = initial_wh
        return nn.ModuleList(p[0] for p in pairs), nn.ModuleList(p[1] for p in pairs)

    def class_layers(self) -> dict[str, ClassLayout]:
        """The class heads (focal: one logit per class, no background); two-stage's encoder head
        scores proposals class-agnostically in its row 0 unless ``enc_class_aware``."""
        c = self.config
        heads = {f"class_embed.{i}": ClassLayout(c.num_classes) for i in range(c.dec_layers)}
        if c.two_stage:
            heads[f"class_embed.{c.dec_layers}"] = ClassLayout(c.num_classes) if c.enc_class_aware \
                else ClassLayout.objectness(c.num_classes)
        return self.parameters_of(heads)

    # -- forward ---------------------------------------------------------------------------
    def forward_raw(self, images: Tensor, sizes: Tensor) -> dict:
        """The official output dict, plus '_inter': ``DeformableDETRIntermediates``."""
        c = self.config
        maps = multiscale_features(self.backbone, self.input_proj, self.position, images, sizes)
        enc = self.transformer.encoder(maps.srcs, maps.masks, maps.pos)
        out: dict = {}
        selection = None
        if c.two_stage:
            selection = self.transformer.select_proposals(enc, self.class_embed[c.dec_layers],
                                                          self.bbox_embed[c.dec_layers])
            boxes_unact = selection.gather(selection.coords_unact).detach()          # [B, Q, 4]
            query_pos, tgt = self.transformer.proposal_queries(boxes_unact)
            reference = boxes_unact.sigmoid()
            out["enc_outputs"] = {"pred_logits": selection.logits, "pred_boxes": selection.coords_unact.sigmoid()}
        else:
            query_pos, tgt = self.query_embed.weight.split(c.hidden_dim, dim=1)       # [Q, C] each
            B = images.shape[0]
            query_pos, tgt = query_pos[None].expand(B, -1, -1), tgt[None].expand(B, -1, -1)
            reference = self.transformer.reference_points(query_pos).sigmoid()        # [B, Q, 2]
        dec = self.transformer.decode(tgt, query_pos, reference, enc, self.bbox_embed if c.with_box_refine else None)
        logits, boxes = predict_per_layer(dec.hidden, dec.references, self.class_embed, self.bbox_embed)
        out.update(layer_outputs(logits, boxes, c.aux_loss))
        out["_inter"] = DeformableDETRIntermediates(maps.srcs, maps.masks, maps.pos, enc.memory, dec.hidden,
                                                    reference, torch.stack(dec.references[1:]), selection)
        return out

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        out = self.forward_raw(images, sizes)
        out.pop("_inter")
        if not self.training:
            return out
        if targets is None:
            raise ValueError("DeformableDETR in train mode needs targets")
        losses = self.float32_loss(self.criterion, out, detr_targets(targets, sizes))
        return LossOutput.weigh(losses, self.criterion.weight_dict)

    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Top ``num_select`` (query, class) pairs by sigmoid score over all queries x classes."""
        return topk_postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.config.num_select)


@dataclass
class MultiScaleMaps:
    """The encoder's input: per level projected features, padding masks and position encodings."""

    srcs: list[Tensor]   # [B, C, H_l, W_l]
    masks: list[Tensor]  # [B, H_l, W_l] True on padding
    pos: list[Tensor]    # [B, C, H_l, W_l]


def multiscale_features(backbone: nn.Module, input_proj: nn.ModuleList, position: nn.Module, images: Tensor,
                        sizes: Tensor) -> MultiScaleMaps:
    """Backbone levels through their projections, extra levels by stride-2 projections of the
    last backbone level (the first) or of the previous extra level; the image padding mask
    resized to each level (nearest); sine positions of the valid region."""
    feats = backbone(images)
    srcs = [proj(f) for proj, f in zip(input_proj, feats)]
    for proj in input_proj[len(feats):]:
        srcs.append(proj(feats[-1] if len(srcs) == len(feats) else srcs[-1]))
    return with_masks_and_positions(srcs, sizes, tuple(images.shape[-2:]), position)


def with_masks_and_positions(srcs: list[Tensor], sizes: Tensor, image_hw: tuple[int, int],
                             position: nn.Module) -> MultiScaleMaps:
    """Maps [B, C, H_l, W_l] of a padded batch of ``image_hw`` -> ``MultiScaleMaps``: the image
    padding mask (``sizes`` [B, 2] valid (h, w)) resized to each level (nearest) and the sine
    positions of each level's valid region."""
    mask = padding_mask(sizes, image_hw[0], image_hw[1])
    masks = [F.interpolate(mask[None].float(), size=s.shape[-2:]).to(torch.bool)[0] for s in srcs]
    pos = [position(m).to(s.dtype) for s, m in zip(srcs, masks)]
    return MultiScaleMaps(srcs, masks, pos)


def layer_outputs(logits: Tensor, boxes: Tensor, aux_loss: bool) -> dict:
    """[L, B, Q, *] per-layer predictions -> {'pred_logits', 'pred_boxes'(, 'aux_outputs')}."""
    out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
    if aux_loss:
        out["aux_outputs"] = [{"pred_logits": a, "pred_boxes": b} for a, b in zip(logits[:-1], boxes[:-1])]
    return out


@dataclass
class DeformableDETRIntermediates(Intermediates):
    """What ``forward_raw`` computed on the way, for inspection and the parity tests."""

    srcs: list[Tensor]             # encoder input per level [B, C, H_l, W_l]
    masks: list[Tensor]            # [B, H_l, W_l]
    pos: list[Tensor]              # [B, C, H_l, W_l]
    memory: Tensor                 # [B, S, C]
    hs: Tensor                     # [L, B, Q, C] decoder outputs
    init_reference: Tensor         # [B, Q, 2 | 4] the decoder's input references
    inter_references: Tensor       # [L, B, Q, 2 | 4] the references after each layer
    selection: TokenSelection | None  # two-stage only

    @property
    def selection_scores(self) -> Tensor:
        return self.selection.scores

    @property
    def topk(self) -> Tensor:
        return self.selection.topk

    @property
    def output_proposals(self) -> Tensor:
        return self.selection.proposals


def detr_targets(targets: list[Target], sizes: Tensor) -> list[dict[str, Tensor]]:
    """codetr Targets (absolute xyxy) -> DETR targets (normalized cxcywh of the valid image).
    Crowd boxes are not matched, as in the official COCO loader."""
    out = []
    for t, (h, w) in zip(targets, sizes.tolist()):
        t = t.non_crowd()
        scale = t.boxes.new_tensor([w, h, w, h])
        out.append({"labels": t.labels, "boxes": xyxy_to_cxcywh(t.boxes / scale)})
    return out


def topk_postprocess(logits: Tensor, boxes: Tensor, sizes: Tensor, num_select: int) -> list[Detections]:
    """logits [B, Q, K], boxes [B, Q, 4] normalized cxcywh -> per image the ``num_select`` best
    (query, class) pairs, boxes xyxy in the pixels of each image's valid size."""
    B, Q, K = logits.shape
    scores, index = logits.sigmoid().view(B, -1).topk(min(num_select, Q * K), dim=1)
    query, labels = index // K, index % K
    xyxy = torch.gather(cxcywh_to_xyxy(boxes), 1, query[..., None].expand(-1, -1, 4))
    h, w = sizes.unbind(1)
    xyxy = xyxy * torch.stack([w, h, w, h], 1)[:, None].to(xyxy.dtype)
    return [Detections(xyxy[i], scores[i], labels[i]) for i in range(B)]
