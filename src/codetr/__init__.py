"""codetr: modern object detectors in plain PyTorch."""
from .structures import Batch, ClassInfo, Detections, Target

__version__ = "0.1.0"
__all__ = ["Batch", "ClassInfo", "Detections", "Target", "__version__"]
