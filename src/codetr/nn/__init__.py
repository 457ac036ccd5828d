"""Small modules shared by the detector families."""
from .deformable_attention import MultiScaleDeformableAttention
from .layers import MLP, SinePositionEncoding

__all__ = ["MLP", "MultiScaleDeformableAttention", "SinePositionEncoding"]
