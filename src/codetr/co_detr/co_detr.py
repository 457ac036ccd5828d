"""Co-DETR: DETRs with collaborative hybrid assignments training (Zong et al., ICCV 2023).

    images -> ResNet -> ChannelMapper (1x1 conv + GN per level, stride-2 extra levels)
           -> query head (query_head.py): deformable encoder, two-stage selection, decoder
                -> per layer logits / boxes, and the encoder memory as L + 1 maps
           -> [train] auxiliary heads on those maps (one-to-many assignments, Sec. 3.2):
                RPN + RoI head(s) (Faster R-CNN), ATSS head(s)
           -> [train] their positives as customised positive queries through the decoder (Sec. 3.3)

At test time only the query head runs (``eval_module`` 'detr', the official default); 'one-stage'
and 'two-stage' test an auxiliary head instead (ATSS, resp. RPN + RoI head ``eval_index``).

Eval outputs (``model(images, sizes)``), official names: ``all_cls_scores`` [L, B, Q, K] logits,
``all_bbox_preds`` [L, B, Q, 4] sigmoid cxcywh relative to each valid image,
``enc_outputs_as_feats`` (L_enc + 1 maps [B, C, H_l, W_l]); Co-Deformable-DETR:
``enc_outputs_class`` [B, S, K], ``enc_outputs_coord`` [B, S, 4] (sigmoid, every token);
Co-DINO: ``enc_topk_scores`` [B, Q, K], ``enc_topk_anchors`` [B, Q, 4] (the selected tokens).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from ..backbones import build_backbone
from ..backends import host_to_device
from ..boxes import cxcywh_to_xyxy
from ..assign.hungarian import PixelHungarianMatcher
from ..dense.atss_detector import atss_class_layouts
from ..detector import ClassLayout, Detector, InputSpec, LossOutput
from ..detr.criterion import FocalClassLoss, QualityFocalClassLoss
from ..detr.dino_transformer import DINOTransformer
from ..detr.transformer import DeformableTransformer, Intermediates
from ..necks import ChannelMapper
from ..nn import SinePositionEncoding
from ..ops.nms import batched_nms
from ..rcnn.faster_rcnn import roi_class_layouts
from ..structures import ClassInfo, Detections, Target
from .aux_heads import AuxHeads
from .aux_targets import get_aux_targets
from .criterion import CoDETRCriterion, GroundTruth, LossWeights
from .config import CoDETRConfig
from .query_head import CoDeformableDETRHead, CoDINOHead, CoQueryHead, PositiveQueries, QueryHeadOutput


def build_query_head(c: CoDETRConfig) -> CoQueryHead:
    """The config's query head (variant 'deformable' or 'dino') with its transformer."""
    position = SinePositionEncoding(c.pe_num_feats, c.pe_temperature, c.pe_temperature, offset=c.pe_offset)
    layers = (c.embed_dims, c.num_heads, c.enc_layers, c.dec_layers, c.ffn_dim, c.dropout, c.num_levels,
              c.enc_points, c.dec_points)
    positive = None
    if c.with_pos_coord and c.num_co_heads > 0:
        positive = PositiveQueries(c.embed_dims, c.num_co_heads, split=c.variant == "deformable",
                                   with_coord_feat=c.with_coord_feat)
    if c.variant == "deformable":
        transformer = DeformableTransformer(*layers, two_stage=True, num_queries=c.num_queries)
        head = CoDeformableDETRHead(transformer, position, c.num_classes, c.num_queries, c.mixed_selection,
                                    c.look_forward_twice, positive)
    else:
        transformer = DINOTransformer(*layers, num_queries=c.num_queries)
        head = CoDINOHead(transformer, position, c.num_classes, positive, c.dn_label_noise, c.dn_box_noise,
                          c.dn_num_queries)
    transformer.encoder.checkpoint_layers = c.enc_checkpoint_layers
    return head


def build_criterion(c: CoDETRConfig) -> CoDETRCriterion:
    """The query-head losses with the config's weights, costs and class loss."""
    cls = FocalClassLoss(c.focal_alpha, c.focal_gamma) if c.cls_loss == "focal" else QualityFocalClassLoss(c.qfl_beta)
    matcher = PixelHungarianMatcher(c.cost_class, c.cost_bbox, c.cost_giou, c.focal_alpha, c.focal_gamma)
    return CoDETRCriterion(cls, LossWeights(c.cls_weight, c.bbox_weight, c.giou_weight),
                           class_agnostic_encoder=c.variant == "deformable", match_encoder_first=c.variant == "dino",
                           matcher=matcher, lambda_1=c.lambda_1)


class CoDETR(Detector):
    family = "co_detr"

    def __init__(self, config: CoDETRConfig, classes: ClassInfo | None = None,
                 input_spec: InputSpec | None = None) -> None:
        super().__init__(classes or ClassInfo.anonymous(config.num_classes), input_spec)
        if len(self.classes) != config.num_classes:
            raise ValueError(f"{len(self.classes)} classes given for num_classes={config.num_classes}")
        self.config = c = config
        self.backbone = build_backbone(c.backbone, c.backbone_stages)
        self.neck = ChannelMapper(self.backbone.out_channels, c.embed_dims, c.neck_kernel_size, c.num_levels)
        self.query_head = build_query_head(c)
        self.aux_heads = AuxHeads(c.rpn, c.roi_heads, c.atss_heads)
        self.criterion = build_criterion(c)

    def class_layers(self) -> dict[str, ClassLayout]:
        """The query head's class branches (one logit per class; Co-Deformable-DETR's encoder
        branch, index L, scores proposals class-agnostically in row 0), Co-DINO's denoising label
        embeddings, each RoI head's classifier and regressor and each ATSS head's classifier (the
        RPN is class-agnostic)."""
        c, k = self.config, self.num_classes
        encoder = ClassLayout.objectness(k) if c.variant == "deformable" else ClassLayout(k)
        heads = {f"query_head.cls_branches.{i}": ClassLayout(k) for i in range(c.dec_layers)}
        heads[f"query_head.cls_branches.{c.dec_layers}"] = encoder
        if c.variant == "dino":
            heads["query_head.label_embedding"] = ClassLayout(k)
        for i, roi in enumerate(self.aux_heads.roi_head):
            heads.update(roi_class_layouts(f"aux_heads.roi_head.{i}.bbox_head", roi.bbox_head))
        for j, atss in enumerate(self.aux_heads.bbox_head):
            heads.update(atss_class_layouts(f"aux_heads.bbox_head.{j}", atss))
        return self.parameters_of(heads)

    # -- forward ---------------------------------------------------------------------------
    def head_sizes(self, images: Tensor, sizes: Tensor) -> Tensor:
        """The ``img_shape`` every head sees: the valid sizes, or the padded batch size for all
        images when ``with_attn_mask`` is off (the official LSJ configs: no padding mask)."""
        if self.config.with_attn_mask:
            return sizes
        return host_to_device([tuple(images.shape[-2:])], sizes.device, sizes.dtype).expand(len(sizes), 2)

    def features(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(backbone maps, neck maps [B, C, H_l, W_l])."""
        feats = self.backbone(images)
        return feats, self.neck(feats)

    def forward_raw(self, images: Tensor, sizes: Tensor) -> dict:
        """The query head's official outputs (module docstring) + '_inter': ``CoDETRIntermediates``."""
        feats, neck = self.features(images)
        out = self.query_head(neck, self.head_sizes(images, sizes), tuple(images.shape[-2:]))
        raw = {"all_cls_scores": out.logits, "all_bbox_preds": out.boxes, **encoder_outputs(out, self.config.variant),
               "enc_outputs_as_feats": out.maps}
        raw["_inter"] = CoDETRIntermediates(feats, neck, out)
        return raw

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        if not self.training:
            out = self.forward_raw(images, sizes)
            out.pop("_inter")
            return out
        if targets is None:
            raise ValueError("Co-DETR in train mode needs targets")
        return as_loss_output(self.forward_train(images, sizes, targets))

    # -- train (official ``CoDETR.forward_train``, notes section 1) ---------------------------
    def forward_train(self, images: Tensor, sizes: Tensor, targets: list[Target]) -> dict[str, Tensor | list[Tensor]]:
        """The official loss dict, keys in the official order: query head (+ ``enc_``, ``dn_``),
        RPN (per-level lists), RoI head i (suffix i), ATSS head j (suffix ``len(roi) + j``), then
        each auxiliary head k's positive queries (``_aux{k}``). Every value is already weighted.
        The auxiliary heads run on the encoder's maps before the decoder, so that their positive
        queries join the main queries' decoder pass (``CoQueryHead.decode``); the random draws
        keep the official order (denoising noise, samplers, positive-query subsampling)."""
        c, qh = self.config, self.query_head
        head_sizes, hw = self.head_sizes(images, sizes), tuple(images.shape[-2:])
        gt = GroundTruth([t.non_crowd().boxes for t in targets], [t.non_crowd().labels for t in targets],
                         [tuple(s) for s in head_sizes.tolist()])
        _, neck = self.features(images)
        dn = qh.denoising_queries(gt.boxes, gt.labels, head_sizes) if isinstance(qh, CoDINOHead) else None
        enc = qh.encode(neck, head_sizes, hw)
        maps = qh.aux_maps(enc)
        aux_losses, pos_coords = self.aux_head_losses(maps, gt, pad_shapes(sizes, self.input_spec))
        aux_targets = [] if qh.positive is None else [
            get_aux_targets(coords, gt.img_hw, self.num_classes, c.max_pos_coords, maps) for coords in pos_coords]
        head, positive = qh.decode(enc, maps, dn, [(t.coords, t.feats) for t in aux_targets])
        dn_meta = None if dn is None else {"pad_size": dn.pad_size, "num_dn_group": dn.num_groups}
        losses = dict(self.float32_loss(self.criterion, head.logits, head.boxes, *encoder_outputs(head, c.variant).values(),
                                        gt, dn_meta))
        losses.update(aux_losses)
        for k, (t, (logits, boxes)) in enumerate(zip(aux_targets, positive)):
            losses.update(self.float32_loss(self.criterion.aux_losses, logits, boxes, t, gt.img_hw, k))
        return losses

    def aux_head_losses(self, maps: list[Tensor], gt: GroundTruth, pad: list[tuple[int, int]]
                        ) -> tuple[dict[str, Tensor | list[Tensor]], list]:
        """RPN, RoI and ATSS losses on the query head's L + 1 maps (official keys and suffixes)
        and every head's ``pos_coords`` (RoI heads first, then ATSS)."""
        heads, losses, pos_coords = self.aux_heads, {}, []
        if heads.rpn_head is not None:
            cls, reg = heads.rpn_head(maps)
            losses.update(heads.rpn_head.loss(cls, reg, gt.boxes, pad, heads.rpn_train))
            proposals = heads.rpn_head.proposals(cls, reg, gt.img_hw, heads.rpn_proposal)
        for i, roi in enumerate(heads.roi_head):
            out = roi.loss(maps, proposals, gt.boxes, gt.labels)
            losses.update({f"{k}{i}": v for k, v in out.losses.items()})
            pos_coords.append(out.pos_coords)
        for j, atss in enumerate(heads.bbox_head):
            out = atss.loss(atss(maps), gt.boxes, gt.labels, pad)
            losses.update({f"{k}{j + len(heads.roi_head)}": v for k, v in out.losses.items()})
            pos_coords.append(out.pos_coords)
        return losses, pos_coords

    # -- test --------------------------------------------------------------------------------
    @torch.no_grad()
    def postprocess(self, outputs: dict, sizes: Tensor, scale_factors: Tensor | Sequence[Tensor] | None = None
                    ) -> list[Detections]:
        """Detections of the ``eval_module`` head, in each image's valid-size pixels, or divided
        by ``scale_factors`` (w, h, w, h) per image when given (official ``rescale``: the NMS then
        runs on the rescaled boxes, as official)."""
        c = self.config
        if c.eval_module == "detr":
            return self.query_postprocess(outputs["all_cls_scores"][-1], outputs["all_bbox_preds"][-1], sizes,
                                          scale_factors)
        img_shapes = [tuple(s) for s in sizes.tolist()]
        maps, heads = outputs["enc_outputs_as_feats"], self.aux_heads
        test = heads.one_stage_test if c.eval_module == "one-stage" else heads.two_stage_test
        return [Detections(d[:, :4], d[:, 4], l) for d, l in test(maps, img_shapes, c.eval_index, scale_factors)]

    def query_postprocess(self, logits: Tensor, boxes: Tensor, sizes: Tensor,
                          scale_factors: Tensor | Sequence[Tensor] | None) -> list[Detections]:
        """The query head's detections of a batch: logits [B, Q, K], boxes [B, Q, 4] -> per image
        the top (query, class) pairs by sigmoid score (``max_per_img``; ``num_queries`` when an NMS
        follows), over ``score_thr``, boxes xyxy clipped to the image, / the scale factor; then
        the configured (soft-)NMS per class. Everything up to the NMS runs on the device with
        fixed shapes; reading the number of kept pairs is its one host sync."""
        c = self.config
        k = min(c.num_queries if c.nms else c.max_per_img, logits[0].numel())
        scores, labels, xyxy = query_topk(logits, boxes, sizes, k)
        if scale_factors is not None:
            xyxy = xyxy / as_factors(scale_factors, xyxy)[:, None]
        kept = (scores > c.score_thr).sum(1).tolist()   # scores are sorted: the kept pairs are a prefix
        dets = [Detections(xyxy[i, :n], scores[i, :n], labels[i, :n]) for i, n in enumerate(kept)]
        return [self.query_nms(d) for d in dets] if c.nms else dets

    def query_nms(self, det: Detections) -> Detections:
        """The configured (soft-)NMS per class, then the best ``max_per_img``."""
        if len(det) == 0:
            return det
        dets, kept = batched_nms(det.boxes, det.scores, det.labels, dict(self.config.nms))
        dets, labels = dets[:self.config.max_per_img], det.labels[kept][:self.config.max_per_img]
        return Detections(dets[:, :4], dets[:, 4], labels)

    def query_detections(self, logits: Tensor, boxes: Tensor, hw: tuple[int, int],
                         scale_factor: Tensor | None) -> Detections:
        """``query_postprocess`` of one image: logits [Q, K], boxes [Q, 4], its valid (h, w)."""
        sizes = torch.tensor([hw], device=boxes.device)
        return self.query_postprocess(logits[None], boxes[None], sizes,
                                      None if scale_factor is None else [scale_factor])[0]

    @torch.no_grad()
    def detect(self, images: Tensor, sizes: Tensor, orig_sizes: Sequence[tuple[int, int]],
               amp: torch.dtype | None = None) -> list[Detections]:
        """``eval_forward`` + postprocess with the official ``rescale``: boxes divided by the resize
        factors (w / ow, h / oh) before the NMS, so detections come out in original pixels."""
        outputs = self.eval_forward(images, sizes, amp)
        orig = host_to_device(orig_sizes, sizes.device, torch.float32)             # [B, 2] (oh, ow)
        # float32 division of integers rounds as the official float64 quotient cast to float32
        factors = (sizes.float() / orig).flip(1).repeat(1, 2)                     # [B, 4] (w/ow, h/oh, w/ow, h/oh)
        return self.postprocess(outputs, sizes, factors)


def query_topk(logits: Tensor, boxes: Tensor, sizes: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """logits [B, Q, K], boxes [B, Q, 4] sigmoid cxcywh, sizes [B, 2] valid (h, w) -> each image's
    top ``k`` (query, class) pairs by sigmoid score, best first: scores [B, k], labels [B, k] and
    boxes [B, k, 4] xyxy in pixels, clipped to the valid image."""
    B, Q, K = logits.shape
    scores, index = logits.sigmoid().reshape(B, Q * K).topk(k, dim=1)
    labels, query = index % K, index // K
    wh = sizes.flip(1).repeat(1, 2).to(boxes.dtype)[:, None]                        # [B, 1, 4] (w, h, w, h)
    xyxy = cxcywh_to_xyxy(torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))) * wh
    return scores, labels, torch.min(xyxy.clamp(min=0), wh)


def as_factors(scale_factors: Tensor | Sequence[Tensor], like: Tensor) -> Tensor:
    """Per-image (w, h, w, h) factors as one [B, 4] tensor of ``like``'s dtype and device."""
    if isinstance(scale_factors, Tensor):
        return scale_factors.to(like)
    return torch.stack([torch.as_tensor(f, dtype=like.dtype) for f in scale_factors]).to(like.device)


def pad_shapes(sizes: Tensor, spec: InputSpec) -> list[tuple[int, int]]:
    """Each image's ``pad_shape`` (h, w): its valid size rounded up to the pad divisor; the
    RPN / ATSS anchors outside it are invalid."""
    d = spec.size_divisibility
    return [(-(-h // d) * d, -(-w // d) * d) for h, w in sizes.tolist()]


def as_loss_output(losses: dict[str, Tensor | list[Tensor]]) -> LossOutput:
    """The official dict as ``BaseDetector._parse_losses`` reads it: per-level lists summed;
    keys containing 'loss' are the training loss, the rest (``acc0``) logs."""
    flat = {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items()}
    return LossOutput({k: v for k, v in flat.items() if "loss" in k},
                      {k: v.detach() for k, v in flat.items() if "loss" not in k})


def encoder_outputs(out: QueryHeadOutput, variant: str) -> dict[str, Tensor]:
    """The two-stage outputs under the official names of each variant (module docstring)."""
    sel = out.selection
    if variant == "deformable":
        return {"enc_outputs_class": sel.logits, "enc_outputs_coord": sel.coords_unact.sigmoid()}
    return {"enc_topk_scores": sel.gather(sel.logits), "enc_topk_anchors": sel.gather(sel.coords_unact).sigmoid()}


@dataclass
class CoDETRIntermediates(Intermediates):
    """What ``forward_raw`` computed on the way, for inspection and the parity tests."""

    backbone_feats: list[Tensor]   # [B, C_s, H_s, W_s] per backbone stage
    neck_feats: list[Tensor]       # [B, C, H_l, W_l] per encoder level
    head: QueryHeadOutput
