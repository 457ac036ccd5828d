from .resnet import ResNetBackbone

__all__ = ["ResNetBackbone"]
