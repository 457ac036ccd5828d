"""Range checks for the model config dataclasses (``DINOConfig`` ...): a count of 0 or below
(queries, layers, channels, classes) crashes deep inside a model or, worse, builds one that runs
and silently misbehaves, so each config's ``__post_init__`` refuses it here in one line."""
from __future__ import annotations

from dataclasses import fields
from typing import Any


def require_at_least(config: Any, minimums: dict[str, int]) -> None:
    """Raise a one-line ValueError naming ``Class.field`` and its value for the first field of
    the dataclass ``config`` that is not an int >= its minimum in ``minimums``. ``None`` passes
    where the field's type allows it (e.g. ``res2_channels: int | None``)."""
    optional = {f.name for f in fields(config) if "None" in str(f.type)}
    for name, least in minimums.items():
        value = getattr(config, name)
        if value is None and name in optional:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{type(config).__name__}.{name} must be an int >= {least}, got {value!r}")


# fields every family has (the backbone's minimums: BackboneConfig)
COMMON_MINIMUMS = {"num_classes": 1}
# DeformableDETRConfig and DINOConfig; 0 encoder layers is a valid (encoder-free) ablation
DETR_MINIMUMS = {**COMMON_MINIMUMS, "hidden_dim": 1, "num_heads": 1, "enc_layers": 0, "dec_layers": 1,
                 "ffn_dim": 1, "num_feature_levels": 1, "enc_points": 1, "dec_points": 1, "num_queries": 1,
                 "num_select": 1}
