from .config import BackboneConfig, SwinConfig, build_backbone
from .pretrained import load_pretrained_backbone
from .resnet import ResNetBackbone

__all__ = ["BackboneConfig", "ResNetBackbone", "SwinConfig", "build_backbone", "load_pretrained_backbone"]
