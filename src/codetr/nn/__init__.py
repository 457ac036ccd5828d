"""Small modules shared by the detector families."""
from .deformable_attention import LevelLayout, MultiScaleDeformableAttention
from .layers import MLP, QuerySelfAttention, SinePositionEncoding, sine_embed

__all__ = ["LevelLayout", "MLP", "MultiScaleDeformableAttention", "QuerySelfAttention", "SinePositionEncoding",
           "sine_embed"]
