from .config import BackboneConfig, build_backbone
from .resnet import ResNetBackbone

__all__ = ["BackboneConfig", "ResNetBackbone", "build_backbone"]
