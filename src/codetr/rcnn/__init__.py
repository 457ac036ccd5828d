"""Two-stage (R-CNN family) parts: the region proposal network (``rpn``), RoI feature extraction
(``roi_extractor``), the Shared2FC box head (``bbox_head``) and the RoI head (``roi_head``,
with Co-DETR's ``pos_coords``); ``faster_rcnn`` composes them into the Faster R-CNN detector."""
from .bbox_head import Shared2FCBBoxHead
from .faster_rcnn import FasterRCNN, FasterRCNNConfig
from .roi_extractor import RoIExtractor
from .roi_head import RoIHead
from .rpn import ProposalConfig, RPNHead, rpn_image_targets, rpn_losses, rpn_proposals

__all__ = ["FasterRCNN", "FasterRCNNConfig", "ProposalConfig", "RPNHead", "RoIExtractor", "RoIHead",
           "Shared2FCBBoxHead", "rpn_image_targets", "rpn_losses", "rpn_proposals"]
