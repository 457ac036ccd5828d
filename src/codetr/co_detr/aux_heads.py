"""Co-DETR's auxiliary heads built from their official config dicts (``CoDETRConfig.rpn``,
``roi_heads``, ``atss_heads``) with codetr's parts, and their official test paths on the
query head's maps (``CoDETR.simple_test_bbox_head`` / ``simple_test_roi_head``).
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from ..dense.atss import ATSSHead, atss_head_from_mmdet
from ..rcnn import ProposalConfig
from ..rcnn.roi_head import RoIHead, roi_head_from_mmdet
from ..rcnn.rpn import rpn_from_mmdet
from ..sampling import AssignSampleConfig


class AuxHeads(nn.Module):
    """The RPN (shared by every RoI head), the RoI heads and the ATSS heads, with their
    train / test numbers. Module names: ``rpn_head``, ``roi_head.i``, ``bbox_head.j`` (official)."""

    def __init__(self, rpn: dict | None, roi_heads: Sequence[dict], atss_heads: Sequence[dict]) -> None:
        super().__init__()
        self.rpn_head = rpn_from_mmdet(rpn["head"]) if rpn else None
        self.rpn_train = AssignSampleConfig.from_mmdet(rpn["train"]) if rpn and rpn.get("train") else None
        self.rpn_proposal = ProposalConfig.from_mmdet(rpn["proposal"]) if rpn and rpn.get("proposal") else None
        self.rpn_test = ProposalConfig.from_mmdet(rpn["test"]) if rpn else None
        self.roi_head = nn.ModuleList(roi_head_from_mmdet(r["head"], r["train"], r["test"]) for r in roi_heads)
        self.bbox_head = nn.ModuleList(atss_head_from_mmdet(a["head"], a["train"], a["test"]) for a in atss_heads)
        if len(self.roi_head) and self.rpn_head is None:
            raise ValueError("RoI heads need the RPN's proposals")

    def test_proposals(self, maps: list[Tensor], img_shapes: Sequence[Sequence[int]]) -> list[Tensor]:
        """RPN test proposals per image [M, 5] (input pixels) on all L + 1 maps."""
        cls, reg = self.rpn_head(maps)
        return self.rpn_head.proposals(cls, reg, list(img_shapes), self.rpn_test)

    def two_stage_test(self, maps: list[Tensor], img_shapes: Sequence[Sequence[int]], index: int,
                       scale_factors: Sequence[Tensor] | None) -> list[tuple[Tensor, Tensor]]:
        """``simple_test_roi_head``: RPN test proposals, then RoI head ``index``; per image
        (dets [M, 5], labels [M]), boxes divided by ``scale_factors`` (w, h, w, h) when given."""
        head: RoIHead = self.roi_head[index]
        return head.predict(maps, self.test_proposals(maps, img_shapes), img_shapes, scale_factors)

    def one_stage_test(self, maps: list[Tensor], img_shapes: Sequence[Sequence[int]], index: int,
                       scale_factors: Sequence[Tensor] | None) -> list[tuple[Tensor, Tensor]]:
        """``simple_test_bbox_head``: ATSS head ``index`` on all L + 1 maps."""
        head: ATSSHead = self.bbox_head[index]
        return head.predict(head(maps), [tuple(s[:2]) for s in img_shapes], scale_factors)
