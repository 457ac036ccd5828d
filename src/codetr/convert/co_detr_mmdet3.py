"""mmdet 3.x Co-DINO state dicts -> the key layout of the official Sense-X/Co-DETR (mmdet 2.x)
checkpoints, the layout codetr's Co-DETR converter reads.

mmdet 3.x ships Co-DETR as ``projects/CO-DETR`` of open-mmlab/mmdetection. Its modules keep
the 2.x names (mmdet's ResNet, ChannelMapper, mmcv-style transformer layers, RPN head,
Shared2FC RoI head, ATSS head) with one move: the denoising label embedding belongs to the
``CdnQueryGenerator`` module, ``query_head.dn_generator.label_embedding.weight`` (2.x:
``query_head.label_embedding.weight``). mmengine's data preprocessor registers its ``mean`` /
``std`` as non-persistent buffers; a state dict that carries them anyway has them dropped (the
2.x layout keeps normalisation in the config's ``img_norm_cfg``).

Every other key must match one of the 2.x patterns below, else it is reported by name: only the
ResNet layout is covered (mmdet 3.x's SwinTransformer names differ from Co-DETR's own Swin).
"""
from __future__ import annotations

from typing import Mapping

from torch import Tensor

from .common import Rule, map_keys

MMDET2, MMDET3 = "mmdet2", "mmdet3"
_LABEL_EMBEDDING = {MMDET2: "query_head.label_embedding.weight",
                    MMDET3: "query_head.dn_generator.label_embedding.weight"}

_PARAM = r"\.(weight|bias)"
_SAME_IN_BOTH = [  # 2.x key patterns that mmdet 3.x uses unchanged
    r"backbone\.(conv1\.weight|bn1\..+)",
    r"backbone\.layer\d+\.\d+\.(conv\d\.weight|bn\d\..+|downsample\.\d+\..+)",
    r"neck\.(convs|extra_convs)\.\d+\.(conv|gn)" + _PARAM,
    r"query_head\.transformer\.level_embeds",
    r"query_head\.transformer\.(encoder|decoder)\.layers\.\d+\.(attentions|ffns|norms)\..+",
    r"query_head\.transformer\.decoder\.(ref_point_head\.\d+|norm)" + _PARAM,
    r"query_head\.transformer\.(enc_output|enc_output_norm)" + _PARAM,
    r"query_head\.transformer\.query_embed\.weight",
    r"query_head\.transformer\.(aux_pos_trans|aux_pos_trans_norm|pos_feats_trans|pos_feats_norm)\.\d+" + _PARAM,
    r"query_head\.(downsample\.\d+|cls_branches\.\d+|reg_branches\.\d+\.\d+)" + _PARAM,
    r"rpn_head\.(rpn_conv|rpn_cls|rpn_reg)" + _PARAM,
    r"roi_head\.\d+\.bbox_head\.(fc_cls|fc_reg|shared_fcs\.\d+)" + _PARAM,
    r"bbox_head\.\d+\.((cls|reg)_convs\.\d+\.(conv|gn)|atss_(cls|reg|centerness))" + _PARAM,
    r"bbox_head\.\d+\.scales\.\d+\.scale",
]
MMDET3_RULES: list[Rule] = [
    (r"query_head\.dn_generator\.label_embedding\.weight", _LABEL_EMBEDDING[MMDET2]),
    (r"data_preprocessor\.(mean|std)", None),
    *[(pattern, r"\g<0>") for pattern in _SAME_IN_BOTH],
]


def co_dino_layout(state: Mapping[str, Tensor]) -> str:
    """``'mmdet2'`` (official Sense-X/Co-DETR) or ``'mmdet3'`` (mmdetection's projects/CO-DETR):
    told apart by where the denoising label embedding lives. Neither or both: ValueError."""
    found = [layout for layout, key in _LABEL_EMBEDDING.items() if key in state]
    if len(found) != 1:
        raise ValueError(f"not a Co-DINO state dict of a known layout: expected exactly one of "
                         f"{', '.join(_LABEL_EMBEDDING.values())}, found {len(found)}")
    return found[0]


def mmdet3_to_official(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmdet 3.x Co-DINO state dict renamed to the official 2.x keys (same tensors, not
    copied). Keys no rule knows raise a ValueError listing every one of them."""
    mapped, unmapped = map_keys(dict(state), MMDET3_RULES)
    if unmapped:
        raise ValueError(f"{len(unmapped)} mmdet 3.x Co-DINO keys have no official 2.x name: "
                         + ", ".join(unmapped))
    return mapped
