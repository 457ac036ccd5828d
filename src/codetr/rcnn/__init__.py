"""Two-stage (R-CNN family) parts: the region proposal network (``rpn``), RoI feature extraction
(``roi_extractor``), the Shared2FC box head (``bbox_head``) and Co-DETR's RoI head (``roi_head``)."""
from .bbox_head import Shared2FCBBoxHead
from .roi_extractor import RoIExtractor
from .roi_head import CoRoIHead
from .rpn import ProposalConfig, RPNHead, rpn_image_targets, rpn_losses, rpn_proposals

__all__ = ["CoRoIHead", "ProposalConfig", "RPNHead", "RoIExtractor", "Shared2FCBBoxHead",
           "rpn_image_targets", "rpn_losses", "rpn_proposals"]
