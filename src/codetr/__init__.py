"""codetr: modern object detectors in plain PyTorch."""
from .api import create, list_models, load, save
from .structures import Batch, ClassInfo, Detections, Target

__version__ = "0.1.0"
__all__ = ["Batch", "ClassInfo", "Detections", "Target", "create", "list_models", "load", "save", "__version__"]
