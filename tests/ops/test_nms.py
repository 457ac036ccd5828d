"""NMS ops: soft_nms / batched_nms against the Co-DINO fixture's ``eval.batched_nms_calls``
(exact), and nms / batched_nms / soft_nms / multiclass_nms against slow references."""
from __future__ import annotations

import pytest
import torch

from codetr.ops.nms import batched_nms, multiclass_nms, nms, soft_nms
from tests.conftest import golden


def random_boxes(n: int, seed: int, span: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * span / 3 + 1
    return torch.cat([xy, xy + wh], 1), torch.rand(n, generator=g)  # distinct scores


def ref_iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ref_greedy(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Textbook greedy NMS in float64, visiting by descending score."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    kept: list[int] = []
    for i in order:
        if all(ref_iou(boxes[i].tolist(), boxes[j].tolist()) <= thr for j in kept):
            kept.append(i)
    return kept


def ref_soft_nms(boxes, scores, thr, sigma, min_score, method):
    """Scalar Soft-NMS with mmcv's list bookkeeping (swap selected to the front, replace a
    dropped box by the last one), float32 arithmetic through 0-d tensors."""
    b = [row.clone() for row in boxes.float()]
    s = [x.clone() for x in scores.float()]
    idx = list(range(len(b)))
    area = [(r[2] - r[0]) * (r[3] - r[1]) for r in b]
    dets, n, i = [], len(b), 0
    while i < n:
        m = max(range(i, n), key=lambda k: (float(s[k]), -k))
        for arr in (b, s, idx, area):
            arr[i], arr[m] = arr[m], arr[i]
        dets.append(torch.cat([b[i], s[i].view(1)]))
        pos = i + 1
        while pos < n:
            w = torch.clamp(torch.minimum(b[i][2], b[pos][2]) - torch.maximum(b[i][0], b[pos][0]), min=0)
            h = torch.clamp(torch.minimum(b[i][3], b[pos][3]) - torch.maximum(b[i][1], b[pos][1]), min=0)
            ovr = w * h / (area[i] + area[pos] - w * h)
            if method == "linear":
                weight = 1 - ovr if ovr >= thr else torch.tensor(1.0)
            elif method == "naive":
                weight = torch.tensor(0.0 if ovr >= thr else 1.0)
            else:
                weight = torch.exp(-(ovr * ovr) / sigma)
            s[pos] = s[pos] * weight
            if s[pos] < min_score:
                for arr in (b, s, idx, area):
                    arr[pos] = arr[n - 1]
                n -= 1
                continue
            pos += 1
        i += 1
    return torch.stack(dets), torch.tensor(idx[:n])


@pytest.fixture(scope="module")
def nms_calls():
    return golden("co_detr/co_dino_5scale_r50w16_eval.pt")["eval"]["batched_nms_calls"]


def test_soft_nms_matches_fixture_exactly(nms_calls):
    for call in nms_calls:
        cfg = dict(call["nms_cfg"])
        assert cfg["type"] == "soft_nms"
        dets, keep = batched_nms(call["boxes"], call["scores"], call["idxs"], cfg)
        assert torch.equal(keep, call["keep"])
        assert torch.equal(dets, call["dets"])


def test_soft_nms_fixture_split_path_same_set(nms_calls):
    """The per-group path (split_thr below N) keeps the same boxes and decayed scores."""
    call = nms_calls[0]
    dets, keep = batched_nms(call["boxes"], call["scores"], call["idxs"], dict(call["nms_cfg"], split_thr=1))
    assert sorted(keep.tolist()) == sorted(call["keep"].tolist())
    order = call["keep"].argsort()
    torch.testing.assert_close(dets[keep.argsort()], call["dets"][order], rtol=0, atol=0)


@pytest.mark.parametrize("method", ["linear", "naive", "gaussian"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_soft_nms_matches_scalar_reference(method, seed):
    boxes, scores = random_boxes(60, seed, span=40.0)  # crowded: many decays and drops
    scores[5] = scores[9]  # a tie
    dets, inds = soft_nms(boxes, scores, 0.3, 0.5, min_score=0.2, method=method)
    ref_dets, ref_inds = ref_soft_nms(boxes, scores, 0.3, 0.5, 0.2, method)
    assert torch.equal(inds, ref_inds)
    tol = 2e-7 if method == "gaussian" else 0.0  # exp may differ by an ulp
    torch.testing.assert_close(dets, ref_dets, rtol=tol, atol=tol)
    assert 0 < len(inds) < 60


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_greedy_reference(seed):
    boxes, scores = random_boxes(200, seed)
    dets, keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == ref_greedy(boxes, scores, 0.5)
    assert torch.equal(dets, torch.cat([boxes[keep], scores[keep, None]], 1))
    _, cut = nms(boxes, scores, 0.5, max_num=7)
    assert torch.equal(cut, keep[:7])
    _, high = nms(boxes, scores, 0.5, score_threshold=0.6)
    high_idx = torch.nonzero(scores > 0.6).reshape(-1)  # mmcv filters, then suppresses
    assert high.tolist() == [int(high_idx[j]) for j in ref_greedy(boxes[high_idx], scores[high_idx], 0.5)]


def ref_batched(boxes, scores, idxs, thr) -> list[int]:
    """Greedy NMS per group, then all kept sorted by descending score."""
    kept = []
    for g in idxs.unique().tolist():
        members = torch.nonzero(idxs == g).reshape(-1)
        kept += [int(members[i]) for i in ref_greedy(boxes[members], scores[members], thr)]
    return sorted(kept, key=lambda i: -float(scores[i]))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("split_thr", [10000, 1])
def test_batched_nms_matches_reference(seed, split_thr):
    boxes, scores = random_boxes(300, seed)
    idxs = torch.randint(0, 5, (300,), generator=torch.Generator().manual_seed(seed))
    dets, keep = batched_nms(boxes, scores, idxs, {"type": "nms", "iou_threshold": 0.4, "split_thr": split_thr})
    assert keep.tolist() == ref_batched(boxes, scores, idxs, 0.4)
    assert torch.equal(dets, torch.cat([boxes[keep], scores[keep, None]], 1))
    _, agnostic = batched_nms(boxes, scores, idxs, {"iou_threshold": 0.4}, class_agnostic=True)
    assert agnostic.tolist() == ref_greedy(boxes, scores, 0.4)


def test_batched_nms_split_max_num_and_empty():
    boxes, scores = random_boxes(100, 7)
    idxs = torch.arange(100) % 3
    _, keep = batched_nms(boxes, scores, idxs, {"iou_threshold": 0.5, "split_thr": 1, "max_num": 5})
    assert keep.tolist() == ref_batched(boxes, scores, idxs, 0.5)[:5]
    dets, keep = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), {"iou_threshold": 0.5})
    assert dets.shape == (0, 5) and keep.shape == (0,)
    dets, keep = batched_nms(boxes, scores, idxs, None)
    assert torch.equal(dets[:, 4], scores.sort(descending=True).values)


def test_multiclass_nms_matches_reference():
    n, k = 50, 4
    boxes, _ = random_boxes(n * k, 3)
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(n, k + 1, generator=g)
    factors = torch.rand(n, generator=g)
    dets, labels, inds = multiclass_nms(boxes.reshape(n, 4 * k), scores, 0.3, {"iou_threshold": 0.5},
                                        max_num=20, score_factors=factors, return_inds=True)
    flat_boxes = boxes.reshape(n * k, 4)
    cand = torch.nonzero(scores[:, :k].reshape(-1) > 0.3).reshape(-1)  # threshold before factors
    cand_scores = (scores[:, :k] * factors[:, None]).reshape(-1)[cand]
    ref = ref_batched(flat_boxes[cand], cand_scores, cand % k, 0.5)[:20]
    assert inds.tolist() == cand[ref].tolist()
    assert torch.equal(labels, cand[ref] % k)
    torch.testing.assert_close(dets[:, 4], cand_scores[ref], rtol=0, atol=0)
    shared, _ = multiclass_nms(boxes[:n], scores, 2.0, {"iou_threshold": 0.5})  # nothing passes
    assert shared.shape == (0, 5)
