"""DINO: DETR with Improved deNoising anchOr boxes (Zhang et al., ICLR 2023).

    images -> ResNet (C3..C5, or C2..C5 for 5 scales) -> 1x1 conv + GN per level (+ 1 extra level)
           -> deformable encoder (sine positions, temperature 20)
           -> mixed query selection: top-k encoder tokens -> anchor boxes; learned content queries
           -> [train: + contrastive denoising queries (denoising.py), masked self-attention]
           -> decoder refining 4-d anchors layer by layer (look forward twice)
           -> per layer: class logits (focal, no background) and boxes (sigmoid cxcywh)

Same parts as Deformable DETR (encoder, MSDA, input projections, backbone, matcher); the
differences live here, in dino_transformer.py, denoising.py and dino_criterion.py.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn
from torchvision.ops import nms

from ..assign import HungarianMatcher
from ..backbones import BackboneConfig, build_backbone
from ..config_checks import DETR_MINIMUMS, require_at_least
from ..detector import ClassLayout, Detector, InputSpec, LossOutput
from ..nn import MLP, SinePositionEncoding
from ..structures import ClassInfo, Detections, Target
from .deformable_detr import detr_targets, input_projections, layer_outputs, multiscale_features, topk_postprocess
from .denoising import DenoisingQueries, build_dn_queries, draw_dn_noise, num_dn_groups
from .dino_criterion import GIOU_EPS, DINOCriterion, dino_loss_weights
from .dino_transformer import DINO_EPS, DINOTransformer
from .transformer import Intermediates, TokenSelection, predict_per_layer


@dataclass(frozen=True)
class DINOConfig:
    """Every number the model is built from. Defaults: official ``config/DINO/DINO_4scale.py`` (R50)."""

    num_classes: int = 91
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    return_interm_indices: list[int] = field(default_factory=lambda: [1, 2, 3])  # 0 = C2 .. 3 = C5
    num_feature_levels: int = 4
    hidden_dim: int = 256
    num_heads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    ffn_dim: int = 2048
    dropout: float = 0.0
    enc_points: int = 4
    dec_points: int = 4
    num_queries: int = 900
    pe_temperature_h: float = 20.0
    pe_temperature_w: float = 20.0
    dec_pred_class_embed_share: bool = True
    dec_pred_bbox_embed_share: bool = True
    two_stage_class_embed_share: bool = False
    two_stage_bbox_embed_share: bool = False
    use_detached_boxes_dec_out: bool = False
    # contrastive denoising: dn_number 0 turns it off
    dn_number: int = 100
    dn_box_noise_scale: float = 0.4
    dn_label_noise_ratio: float = 0.5
    dn_labelbook_size: int | None = None  # label embeddings - 1; None: num_classes
    # matching costs and loss weights
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    cls_loss_coef: float = 1.0
    bbox_loss_coef: float = 5.0
    giou_loss_coef: float = 2.0
    interm_loss_coef: float = 1.0
    no_interm_box_loss: bool = False
    focal_alpha: float = 0.25
    aux_loss: bool = True
    num_select: int = 300           # detections kept per image at inference
    nms_iou_threshold: float = -1.0  # > 0: class-agnostic NMS on the kept detections

    def __post_init__(self) -> None:
        require_at_least(self, {**DETR_MINIMUMS, "dn_number": 0})

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def labelbook_size(self) -> int:
        return self.num_classes if self.dn_labelbook_size is None else self.dn_labelbook_size


def prediction_heads(dim: int, num_classes: int) -> tuple[nn.Linear, MLP]:
    """Class head (bias at prior probability 0.01) and 3-layer box head (last layer zero)."""
    cls, box = nn.Linear(dim, num_classes), MLP(dim, dim, 4, 3)
    nn.init.constant_(cls.bias, -math.log((1 - 0.01) / 0.01))
    nn.init.zeros_(box.layers[-1].weight)
    nn.init.zeros_(box.layers[-1].bias)
    return cls, box


class DINO(Detector):
    family = "dino"

    def __init__(self, config: DINOConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec)
        check_config(config, len(self.classes))
        self.config = c = config
        self.backbone = build_backbone(c.backbone, [i + 1 for i in c.return_interm_indices])
        self.position = SinePositionEncoding(c.hidden_dim // 2, c.pe_temperature_h, c.pe_temperature_w, offset=0.0)
        self.input_proj = input_projections(self.backbone.out_channels, c.hidden_dim, c.num_feature_levels)
        self.transformer = DINOTransformer(
            c.hidden_dim, c.num_heads, c.enc_layers, c.dec_layers, c.ffn_dim, c.dropout, c.num_feature_levels,
            c.enc_points, c.dec_points, c.num_queries)
        self.label_enc = nn.Embedding(c.labelbook_size + 1, c.hidden_dim)  # denoising label queries
        self._build_heads()
        self.criterion = DINOCriterion(
            c.num_classes, HungarianMatcher(c.cost_class, c.cost_bbox, c.cost_giou, c.focal_alpha, giou_eps=GIOU_EPS),
            dino_loss_weights(c.dec_layers - 1 if c.aux_loss else 0, c.dn_number > 0, c.cls_loss_coef,
                              c.bbox_loss_coef, c.giou_loss_coef, c.interm_loss_coef, c.no_interm_box_loss),
            c.focal_alpha, enc_class_aware=True)

    def _build_heads(self) -> None:
        """Decoder heads, one per layer or one shared (official default), and the encoder's
        heads, copies of the initial ones unless shared (``two_stage_*_embed_share``)."""
        c = self.config
        cls, box = prediction_heads(c.hidden_dim, c.num_classes)

        def per_layer(head: nn.Module, share: bool) -> nn.ModuleList:
            return nn.ModuleList(head if share else copy.deepcopy(head) for _ in range(c.dec_layers))

        self.class_embed = per_layer(cls, c.dec_pred_class_embed_share)
        self.bbox_embed = per_layer(box, c.dec_pred_bbox_embed_share)
        self.enc_class_embed = cls if c.two_stage_class_embed_share else copy.deepcopy(cls)
        self.enc_bbox_embed = box if c.two_stage_bbox_embed_share else copy.deepcopy(box)

    def class_layers(self) -> dict[str, ClassLayout]:
        """The decoder's and the encoder's class heads (one logit per class, no background) and
        the denoising label embeddings: row i embeds class i, the ``labelbook_size + 1 -
        num_classes`` rows after them are never drawn."""
        c = self.config
        heads = {name: ClassLayout(c.num_classes) for name in
                 [f"class_embed.{i}" for i in range(c.dec_layers)] + ["enc_class_embed"]}
        heads["label_enc"] = ClassLayout(c.num_classes, trailing=c.labelbook_size + 1 - c.num_classes)
        return self.parameters_of(heads)

    # -- forward ---------------------------------------------------------------------------
    def denoising_queries(self, targets: list[dict[str, Tensor]],
                          noise: tuple[Tensor, Tensor] | None = None) -> DenoisingQueries:
        """Noised ground-truth queries for DETR-format targets. ``noise`` = (labels, boxes) in
        ``draw_dn_noise``'s layout replaces the random draw (tests feed recorded noise)."""
        c = self.config
        counts = [len(t["labels"]) for t in targets]
        groups = num_dn_groups(c.dn_number, max(counts, default=0))
        if noise is None and sum(counts) > 0:
            labels = torch.cat([t["labels"] for t in targets])
            boxes = torch.cat([t["boxes"] for t in targets])
            noise = draw_dn_noise(labels, boxes, groups, c.num_classes, c.dn_label_noise_ratio, c.dn_box_noise_scale)
        if noise is None:  # no object in the batch: no denoising query
            noise = (torch.zeros(0, dtype=torch.long), torch.zeros(0, 4))
        return build_dn_queries(counts, noise[0], noise[1], self.label_enc, groups, c.num_queries)

    def forward_raw(self, images: Tensor, sizes: Tensor, targets: list[dict[str, Tensor]] | None = None,
                    dn_noise: tuple[Tensor, Tensor] | None = None) -> dict:
        """The official output dict (+ '_inter': ``DINOIntermediates``). With DETR-format
        ``targets`` in train mode, denoising queries are added and reported in ``dn_meta``."""
        c = self.config
        maps = multiscale_features(self.backbone, self.input_proj, self.position, images, sizes)
        dn = None  # noise drawn before the encoder runs, as official (same random stream)
        if self.training and targets is not None and c.dn_number > 0:
            dn = self.denoising_queries(targets, dn_noise)
        enc = self.transformer.encoder(maps.srcs, maps.masks, maps.pos)
        selection = self.transformer.select_queries(enc, self.enc_class_embed, self.enc_bbox_embed)
        anchors_unact = selection.gather(selection.coords_unact)   # [B, Q, 4] attached: encoder loss
        memory_topk = selection.gather(selection.memory)           # [B, Q, C]
        tgt = self.transformer.content_queries(images.shape[0], anchors_unact.shape[1])
        reference_unact, attn_mask = anchors_unact.detach(), None
        pad = dn.pad_size if dn is not None else 0
        if pad > 0:  # denoising queries first
            end = pad + tgt.shape[1]  # fewer matching queries than num_queries: see content_queries
            tgt = torch.cat([dn.content, tgt], 1)
            reference_unact = torch.cat([dn.boxes, reference_unact], 1)
            attn_mask = dn.attn_mask[:end, :end]
        dec = self.transformer.decode(tgt, reference_unact.sigmoid(), enc, self.bbox_embed, attn_mask,
                                      look_forward_twice=not c.use_detached_boxes_dec_out)
        hidden = dec.hidden + 0.0 * self.label_enc.weight[0, 0]  # label_enc always in the graph (DDP), as official
        logits, boxes = predict_per_layer(hidden, dec.references, self.class_embed, self.bbox_embed, DINO_EPS)
        out = layer_outputs(logits[:, :, pad:], boxes[:, :, pad:], c.aux_loss)
        out["interm_outputs"] = {"pred_logits": self.enc_class_embed(memory_topk),
                                 "pred_boxes": anchors_unact.sigmoid()}
        if dn is not None:
            out["dn_meta"] = {"pad_size": pad, "num_dn_group": dn.num_groups}
            if pad > 0:
                out["dn_meta"]["output_known_lbs_bboxes"] = layer_outputs(logits[:, :, :pad], boxes[:, :, :pad],
                                                                          c.aux_loss)
        out["_inter"] = DINOIntermediates(maps.srcs, maps.masks, maps.pos, enc.memory, hidden,
                                          torch.stack(dec.references), selection, anchors_unact, memory_topk, dn)
        return out

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        detr = detr_targets(targets, sizes) if targets is not None else None
        if self.training and detr is None:
            raise ValueError("DINO in train mode needs targets")
        out = self.forward_raw(images, sizes, detr)
        out.pop("_inter")
        if not self.training:
            return out
        return LossOutput.weigh(self.float32_loss(self.criterion, out, detr), self.criterion.weight_dict)

    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        """Top ``num_select`` (query, class) pairs over queries x classes, no NMS by default."""
        dets = topk_postprocess(outputs["pred_logits"], outputs["pred_boxes"], sizes, self.config.num_select)
        if self.config.nms_iou_threshold > 0:
            keep = [nms(d.boxes, d.scores, self.config.nms_iou_threshold) for d in dets]
            dets = [Detections(d.boxes[k], d.scores[k], d.labels[k]) for d, k in zip(dets, keep)]
        return dets


@dataclass
class DINOIntermediates(Intermediates):
    """What ``forward_raw`` computed on the way, for inspection and the parity tests."""

    srcs: list[Tensor]                # encoder input per level [B, C, H_l, W_l]
    masks: list[Tensor]               # [B, H_l, W_l]
    pos: list[Tensor]                 # [B, C, H_l, W_l]
    memory: Tensor                    # [B, S, C]
    hs: Tensor                        # [L, B, pad + Q, C] normed decoder outputs
    references: Tensor                # [L + 1, B, pad + Q, 4] (see ``DecoderOutput``)
    selection: TokenSelection         # mixed query selection
    ref_unact: Tensor                 # [B, Q, 4] selected anchors, logit space, attached
    memory_topk: Tensor               # [B, Q, C] their projected memory
    dn: DenoisingQueries | None       # train mode with denoising only

    @property
    def enc_logits(self) -> Tensor:
        return self.selection.logits

    @property
    def selection_scores(self) -> Tensor:
        return self.selection.scores

    @property
    def topk(self) -> Tensor:
        return self.selection.topk

    @property
    def output_proposals(self) -> Tensor:
        return self.selection.proposals

    @property
    def init_box_proposal(self) -> Tensor:
        """[B, Q, 4] the selected tokens' proposals before the box head, sigmoid."""
        return self.selection.gather(self.selection.proposals).sigmoid()


def check_config(c: DINOConfig, num_labels: int) -> None:
    """Clear errors for configurations the model cannot be built from."""
    if num_labels != c.num_classes:
        raise ValueError(f"{num_labels} classes given for num_classes={c.num_classes}")
    if sorted(c.return_interm_indices) != list(c.return_interm_indices) or \
            not set(c.return_interm_indices) <= {0, 1, 2, 3}:
        raise ValueError(f"return_interm_indices must be increasing backbone stages in 0..3, "
                         f"got {c.return_interm_indices}")
    if c.num_feature_levels < len(c.return_interm_indices):
        raise ValueError(f"num_feature_levels={c.num_feature_levels} < {len(c.return_interm_indices)} backbone levels")
    if c.labelbook_size + 1 < c.num_classes:
        raise ValueError(f"dn_labelbook_size={c.dn_labelbook_size} gives {c.labelbook_size + 1} label embeddings "
                         f"for {c.num_classes} classes")
    if (c.two_stage_class_embed_share or c.two_stage_bbox_embed_share) and \
            not (c.dec_pred_class_embed_share and c.dec_pred_bbox_embed_share):
        raise ValueError("sharing the encoder heads needs shared decoder heads (official assertion)")
    if c.hidden_dim % 2:
        raise ValueError(f"hidden_dim must be even for the sine box embedding, got {c.hidden_dim}")
