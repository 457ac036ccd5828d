"""Prior matching against a brute-force transcription of the rules, and the box coder."""
import pytest
import torch

from codetr.assign.prior_match import decode_boxes, encode_boxes, match_priors
from codetr.yolact.priors import make_priors


def iou(a, b, over_a=False):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    return inter / area_a if over_a else inter / (area_a + area_b - inter)


def brute_force(truths, labels, priors, crowds, pos=0.5, neg=0.4, crowd_thr=0.7):
    boxes = [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2] for cx, cy, w, h in priors.tolist()]
    gts = truths.tolist()
    table = [[iou(g, p) for p in boxes] for g in gts]
    best = [max(range(len(gts)), key=lambda g: (table[g][p], -g)) for p in range(len(boxes))]
    overlap = [table[best[p]][p] for p in range(len(boxes))]
    free_g, free_p = set(range(len(gts))), set(range(len(boxes)))
    for _ in gts:  # the highest remaining (truth, prior) pair, first in (truth, prior) order on ties
        g, p = max(((g, p) for g in sorted(free_g) for p in sorted(free_p)),
                   key=lambda gp: (table[gp[0]][gp[1]], -gp[0], -gp[1]))
        best[p], overlap[p] = g, 2.0
        free_g.discard(g)
        free_p.discard(p)
    labels_out = []
    for p in range(len(boxes)):
        label = int(labels[best[p]]) + 1 if overlap[p] >= pos else (-1 if overlap[p] >= neg else 0)
        if label <= 0 and crowds is not None and max(iou(boxes[p], c, over_a=True) for c in crowds.tolist()) > crowd_thr:
            label = -1
        labels_out.append(label)
    return torch.tensor(labels_out), torch.tensor(best)


def random_boxes(n, generator):
    xy = torch.rand(n, 2, generator=generator) * 0.7
    wh = torch.rand(n, 2, generator=generator) * 0.4 + 0.05
    return torch.cat([xy, xy + wh], 1)


# random priors (cx, cy, w, h): a regular grid has exact IoU ties, which float64 and float32 break differently
PRIORS = torch.cat([torch.rand(80, 2, generator=torch.Generator().manual_seed(99)),
                    torch.rand(80, 2, generator=torch.Generator().manual_seed(98)) * 0.5 + 0.05], 1)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("with_crowd", [False, True])
def test_match_equals_brute_force(seed, with_crowd):
    g = torch.Generator().manual_seed(seed)
    truths = random_boxes(1 + seed % 4, g)
    labels = torch.randint(0, 5, (len(truths),), generator=g)
    crowds = random_boxes(2, g) if with_crowd else None
    m = match_priors(truths, labels, PRIORS, crowds)
    want_labels, want_truth = brute_force(truths, labels, PRIORS, crowds)
    assert torch.equal(m.labels, want_labels)
    positive = m.labels > 0
    assert torch.equal(m.truth_index[positive], want_truth[positive])
    assert torch.allclose(m.loc[positive], encode_boxes(truths[m.truth_index[positive]], PRIORS[positive]))


def test_every_truth_gets_a_prior_even_below_threshold():
    # a thin box overlaps no prior by 0.5, yet it is forced onto its best one
    truths = torch.tensor([[0.1, 0.1, 0.12, 0.5], [0.6, 0.6, 0.9, 0.9]])
    m = match_priors(truths, torch.tensor([3, 1]), PRIORS)
    assert set(m.truth_index[m.labels > 0].tolist()) == {0, 1}
    assert (m.labels == 4).sum() == 1


def test_crowd_makes_background_neutral_but_not_positives():
    truths = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    crowd = torch.tensor([[-1.0, -1.0, 2.0, 2.0]])  # covers every prior entirely
    plain = match_priors(truths, torch.tensor([0]), PRIORS)
    crowded = match_priors(truths, torch.tensor([0]), PRIORS, crowd)
    assert torch.equal(crowded.labels[plain.labels > 0], plain.labels[plain.labels > 0])
    assert bool((crowded.labels[plain.labels <= 0] == -1).all())


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(len(PRIORS), g)
    assert torch.allclose(decode_boxes(encode_boxes(boxes, PRIORS), PRIORS), boxes, atol=1e-6)
    # a zero offset decodes to the prior itself
    cx, cy, w, h = PRIORS.unbind(1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    assert torch.allclose(decode_boxes(torch.zeros_like(PRIORS), PRIORS), corners)


def test_priors_order_and_square_anchors():
    p = make_priors([(2, 3)], [[10]], [1, 0.5, 2], 100, square_anchors=True)
    assert p.shape == (2 * 3 * 3, 4)
    # row j, column i, then ratio: the 4th cell (j=1, i=0) starts at index 9
    assert torch.allclose(p[9], torch.tensor([0.5 / 3, 1.5 / 2, 0.1, 0.1]))
    assert torch.allclose(p[1, 2:], torch.tensor([0.1 * 0.5 ** 0.5] * 2))        # square: h = w
    q = make_priors([(2, 3)], [[10]], [1, 0.5, 2], 100, square_anchors=False)
    assert torch.allclose(q[1, 2:], torch.tensor([0.1 * 0.5 ** 0.5, 0.1 / 0.5 ** 0.5]))
