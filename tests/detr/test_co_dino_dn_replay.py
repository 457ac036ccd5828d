"""Co-DINO's denoising queries from the official fixture's recorded random draws."""
import pytest
import torch
from torch import nn

from codetr import rng
from codetr.detr.denoising import (build_dn_queries, co_dino_dn_boxes, co_dino_num_dn_groups, draw_dn_noise,
                                   num_dn_groups)
from tests.conftest import golden

PREFIX = "co_detr/co_dino_5scale_r50w16"
NUM_QUERY, NUM_DN_QUERIES, NUM_CLASSES = 80, 100, 20   # the fixture's config
LABEL_NOISE, BOX_NOISE = 0.5, 1.0


@pytest.mark.parametrize("num_dn_queries, max_objects, groups", [
    (100, 5, 20),    # the fixture
    (100, 3, 33),
    (100, 150, 1),   # budget smaller than one object per group: still one
    (100, 0, 1),     # no object in the batch
    (10, 3, 3),      # a small number is still a budget (DINO's rule: 2 * 10 = 20 groups)
])
def test_co_dino_group_count(num_dn_queries, max_objects, groups):
    assert co_dino_num_dn_groups(num_dn_queries, max_objects) == groups
    if num_dn_queries >= 50:
        assert num_dn_groups(num_dn_queries, max_objects) == groups   # where the rules agree


def test_co_dino_boxes_convert_then_divide():
    boxes = [torch.tensor([[10.0, 20.0, 30.0, 60.0]]), torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 8.0, 4.0]])]
    out = co_dino_dn_boxes(boxes, [(100, 50), (7, 7), (8, 16)])
    assert torch.equal(out, torch.tensor([[20 / 50, 40 / 100, 20 / 50, 40 / 100], [4 / 16, 2 / 8, 8 / 16, 4 / 8]]))


def _labels_of(content: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The class whose embedding row each query content equals exactly; -1 = padding (zeros)."""
    same = (content[:, :, None, :] == weight[None, None]).all(-1)   # [B, pad, K]
    assert (same.sum(-1) <= 1).all()
    return torch.where(same.any(-1), same.float().argmax(-1), torch.full(same.shape[:2], -1))


def test_replayed_draws_reproduce_the_official_dn_queries():
    inputs = golden(f"{PREFIX}_inputs.pt")["inputs"]
    train = golden(f"{PREFIX}_train.pt")["train"]
    weight = golden(f"{PREFIX}_checkpoint.pt")["state_dict"]["query_head.label_embedding.weight"]
    expected = train["dn_generator"]
    draws = train["random_calls"][:4]
    assert [d["phase"] for d in draws] == ["dn_generator"] * 4

    counts = [len(b) for b in inputs["gt_bboxes"]]
    groups = co_dino_num_dn_groups(NUM_DN_QUERIES, max(counts))
    assert groups == expected["dn_meta"]["num_dn_group"]
    sizes = [tuple(m["img_shape"][:2]) for m in train["img_metas_after_forward"]]
    boxes = co_dino_dn_boxes(inputs["gt_bboxes"], sizes)
    with rng.replay(draws):
        labels, noised = draw_dn_noise(torch.cat(inputs["gt_labels"]), boxes, groups, NUM_CLASSES,
                                       LABEL_NOISE, BOX_NOISE)
    label_enc = nn.Embedding(NUM_CLASSES, weight.shape[1])
    label_enc.weight.data.copy_(weight)
    with torch.no_grad():
        dn = build_dn_queries(counts, labels, noised, label_enc, groups, NUM_QUERY)

    assert dn.pad_size == expected["dn_meta"]["pad_size"]
    assert torch.equal(dn.attn_mask, expected["attn_mask"])
    assert torch.equal(dn.content, expected["dn_label_query"])
    # the noised labels, read back from the stored embeddings, slot by slot
    official_labels = _labels_of(expected["dn_label_query"], weight)
    assert torch.equal(_labels_of(dn.content, weight), official_labels)
    flipped = (labels != torch.cat(inputs["gt_labels"]).repeat(2 * groups)).sum()
    assert 0 < flipped <= draws[1]["value"].numel()          # some of the 64 redrawn labels changed
    # boxes: inverse sigmoid, within 1 ulp (codetr's log(x / (1 - x)) vs the official two logs)
    ulp = torch.nextafter(expected["dn_bbox_query"].abs(), torch.tensor(float("inf"))) - expected["dn_bbox_query"].abs()
    assert ((dn.boxes - expected["dn_bbox_query"]).abs() <= ulp).all()
    assert torch.equal(dn.boxes == 0, expected["dn_bbox_query"] == 0)


def test_randint_like_dtype_seeded_and_replayed():
    x = torch.zeros(6, 4)
    torch.manual_seed(3)
    direct = torch.randint_like(x, low=0, high=2, dtype=torch.float32)
    torch.manual_seed(3)
    assert torch.equal(rng.randint_like(x, 0, 2, dtype=torch.float32), direct)
    ints = torch.zeros(5, dtype=torch.long)
    with rng.replay([{"fn": "randint_like", "value": torch.tensor([[1, 0, 1, 1]] * 6)},
                     {"fn": "randint_like", "value": torch.arange(5)}]):
        signs = rng.randint_like(x, 0, 2, dtype=torch.float64)
        labels = rng.randint_like(ints, 0, 20)
    assert signs.dtype == torch.float64 and signs[0].tolist() == [1.0, 0.0, 1.0, 1.0]
    assert labels.dtype == torch.long and labels.tolist() == [0, 1, 2, 3, 4]
