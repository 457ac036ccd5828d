"""mmdet 3.x Co-DINO key layout -> the official Sense-X/Co-DETR (mmdet 2.x) layout."""
import pytest
import torch

from codetr.convert.co_detr_mmdet3 import co_dino_layout, mmdet3_to_official
from tests.conftest import golden

# 2.x name -> 3.x name, read from open-mmlab/mmdetection: projects/CO-DETR/codetr/co_dino_head.py
# (``CoDINOHead.init_denoising`` builds ``self.dn_generator = CdnQueryGenerator(...)``) and
# mmdet/models/layers/transformer/dino_layers.py (``CdnQueryGenerator.__init__`` builds
# ``self.label_embedding = nn.Embedding(num_classes, embed_dims)``). transformer.py,
# co_atss_head.py, co_roi_head.py and the ResNet / ChannelMapper / RPN modules keep 2.x names.
TO_MMDET3 = {"query_head.label_embedding.weight": "query_head.dn_generator.label_embedding.weight"}
# mmengine's DetDataPreprocessor buffers (non-persistent there; tolerated if a file has them)
PREPROCESSOR = {"data_preprocessor.mean": torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1),
                "data_preprocessor.std": torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)}


@pytest.fixture(scope="module")
def official():
    return golden("co_detr/co_dino_5scale_r50w16_checkpoint.pt")["state_dict"]


def _as_mmdet3(official: dict) -> dict:
    return {TO_MMDET3.get(k, k): v for k, v in official.items()}


def test_layout_detection(official):
    assert co_dino_layout(official) == "mmdet2"
    assert co_dino_layout(_as_mmdet3(official)) == "mmdet3"
    with pytest.raises(ValueError, match="found 0"):
        co_dino_layout({"backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="found 2"):
        co_dino_layout({**official, **_as_mmdet3(official)})


@pytest.mark.parametrize("with_preprocessor", [False, True])
def test_mmdet3_maps_back_to_the_official_keys_and_tensors(official, with_preprocessor):
    mmdet3 = _as_mmdet3(official)
    if with_preprocessor:
        mmdet3 = {**PREPROCESSOR, **mmdet3}
    assert set(mmdet3) != set(official)
    mapped = mmdet3_to_official(mmdet3)
    assert set(mapped) == set(official)
    assert all(mapped[k] is official[k] for k in official)


def test_unknown_keys_are_named(official):
    mmdet3 = _as_mmdet3(official)
    extra = {"query_head.foo.weight": torch.zeros(1),
             "backbone.stages.0.blocks.0.attn.w_msa.qkv.weight": torch.zeros(1)}   # a 3.x Swin key
    with pytest.raises(ValueError, match="2 mmdet 3.x Co-DINO keys") as err:
        mmdet3_to_official({**mmdet3, **extra})
    assert all(k in str(err.value) for k in extra)


def test_an_official_state_dict_is_not_taken_for_mmdet3(official):
    with pytest.raises(ValueError, match="query_head.label_embedding.weight"):
        mmdet3_to_official(official)
