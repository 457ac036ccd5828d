"""codetr: modern object detectors in plain PyTorch."""
from .api import create, list_models, load, save
from .structures import Batch, ClassInfo, Detections, Target
from .version import __version__

__all__ = ["Batch", "ClassInfo", "Detections", "Target", "create", "list_models", "load", "save", "__version__"]
