"""Co-DETR (Zong et al., ICCV 2023): Co-Deformable-DETR and Co-DINO with their auxiliary heads."""
from .co_detr import CoDETR
from .config import CoDETRConfig

__all__ = ["CoDETR", "CoDETRConfig"]
