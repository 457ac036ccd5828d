from .channel_mapper import ChannelMapper, channel_mapper_from_mmdet
from .fpn import FPN, fpn_from_mmdet, mmdet_fpn_key_map

__all__ = ["ChannelMapper", "FPN", "channel_mapper_from_mmdet", "fpn_from_mmdet", "mmdet_fpn_key_map"]
