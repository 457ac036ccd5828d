"""Co-DETR positive-query targets (``get_aux_targets``) on hand-made cases: the query count M,
positives first, subsampling and padding through ``codetr.rng``, the ATSS features, and an
image short of negatives (where the official code fails)."""
import torch

from codetr import rng
from codetr.co_detr.aux_targets import get_aux_targets, num_aux_queries, select_queries
from codetr.dense.atss import PosCoords
from codetr.rcnn.roi_head import RoIPosCoords

K = 3  # classes; label 3 = background


def perms(*values):
    """Recorded randperm draws for ``rng.replay``."""
    return [{"fn": "randperm", "value": torch.tensor(v)} for v in values]


def test_query_count_is_the_most_positives_capped_and_at_least_nine():
    labels = [torch.tensor([0, 3, 1] + [2] * 10), torch.tensor([3, 3])]
    assert num_aux_queries(labels, K, max_pos_coords=300) == 12
    assert num_aux_queries(labels, K, max_pos_coords=10) == 10
    assert num_aux_queries([torch.tensor([0, 3]), torch.tensor([3])], K, 300) == 9
    assert num_aux_queries([torch.full((5,), K)], K, 300) == 9


def test_positives_first_then_random_negatives():
    labels = torch.tensor([3, 0, 3, 3, 2, 3])  # positives 1, 4; negatives 0, 2, 3, 5
    with rng.replay(perms([2, 0, 3, 1])):
        rows = select_queries(labels, K, num_queries=4)
    assert rows.tolist() == [1, 4, 3, 0]


def test_more_positives_than_queries_are_subsampled_without_padding():
    labels = torch.tensor([0, 1, 3, 2, 0])  # positives 0, 1, 3, 4
    with rng.replay(perms([3, 0, 2, 1])):
        rows = select_queries(labels, K, num_queries=3)
    assert rows.tolist() == [4, 0, 3]


def test_boxes_are_normalized_cxcywh_and_roi_feats_follow_their_rows():
    boxes = torch.tensor([[[0.0, 0.0, 40.0, 20.0], [10.0, 20.0, 30.0, 60.0]]])  # image (h, w) = (80, 40)
    targets = torch.tensor([[[0.0, 0.0, 20.0, 40.0], [0.0, 0.0, 0.0, 0.0]]])
    feats = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    pos_coords = RoIPosCoords(boxes, torch.tensor([[1, K]]), targets, feats)
    with rng.replay(perms([0])):  # image 0: 1 positive, 1 negative for 8 padding slots
        aux = get_aux_targets(pos_coords, [(80, 40)], K)
    torch.testing.assert_close(aux.coords[0, :2], torch.tensor([[0.5, 0.125, 1.0, 0.25], [0.5, 0.5, 0.5, 0.5]]))
    torch.testing.assert_close(aux.targets[0, 0], torch.tensor([0.25, 0.25, 0.5, 0.5]))
    torch.testing.assert_close(aux.feats[0, :2], feats[0])
    assert aux.matched().query.tolist() == [0] and aux.matched().labels.tolist() == [1]


def test_short_of_negatives_pads_with_empty_background_queries():
    """M >= 9 exceeds the rows of a head with fewer than 9 (e.g. few sampled RoIs): the official
    code fails on mismatched shapes; codetr takes every negative, then background queries at the
    empty box with zero features (label K, class weight 1, box weight 0)."""
    boxes = torch.tensor([[[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 12.0, 12.0], [2.0, 2.0, 6.0, 6.0]]])
    pos_coords = RoIPosCoords(boxes, torch.tensor([[3, 2, 3]]), boxes.clone(), torch.ones(1, 3, 5))
    with rng.replay(perms([1, 0])):  # image 0: 1 positive, 2 negatives for 8 padding slots
        aux = get_aux_targets(pos_coords, [(16, 16)], K)
    assert aux.labels.tolist() == [[2] + [3] * 8]
    assert aux.bbox_weights[0, :, 0].tolist() == [1] + [0] * 8 and (aux.label_weights == 1).all()
    torch.testing.assert_close(aux.coords[0, :3], torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.25, 0.25],
                                                                [0.25, 0.25, 0.5, 0.5]]))
    assert (aux.coords[0, 3:] == 0).all() and (aux.targets[0, 3:] == 0).all()
    assert (aux.feats[0, :3] == 1).all() and (aux.feats[0, 3:] == 0).all()


def test_atss_feats_are_the_position_feature_of_every_level_repeated_per_anchor():
    levels = [torch.randn(1, 2, 2, 3), torch.randn(1, 2, 1, 2)]  # 6 + 2 positions
    tokens = torch.cat([f.flatten(2) for f in levels], 2)[0].T   # [8, C]
    n = 16  # 2 anchors per position
    labels = torch.full((n,), K)
    labels[[1, 5, 14]] = torch.tensor([0, 1, 2])
    anchors = torch.rand(n, 4).cumsum(-1)
    with rng.replay(perms(list(range(13)))):
        aux = get_aux_targets(PosCoords([anchors], [labels], [anchors]), [(32, 32)], K, 300, levels)
    rows = [1, 5, 14] + [r for r in range(n) if r not in (1, 5, 14)][:6]
    torch.testing.assert_close(aux.feats[0], tokens[[r // 2 for r in rows]])


def test_no_positives_anywhere_gives_nine_negative_queries_per_image():
    labels = [torch.full((20,), K), torch.full((15,), K)]
    boxes = [torch.rand(20, 4), torch.rand(15, 4)]
    pos_coords = RoIPosCoords(torch.stack([b[:15] for b in boxes]), torch.stack([lab[:15] for lab in labels]),
                              torch.zeros(2, 15, 4), torch.randn(2, 15, 8))
    aux = get_aux_targets(pos_coords, [(10, 10), (10, 10)], K)  # unseeded draws: any 9 negatives
    assert aux.labels.shape == (2, 9) and (aux.labels == K).all() and aux.bbox_weights.sum() == 0
    assert aux.matched().query.numel() == 0 and aux.feats.shape == (2, 9, 8)
