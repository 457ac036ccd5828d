"""Prior matching against a brute-force transcription of the rules, and the box coder."""
import pytest
import torch

from codetr.assign.prior_match import forced_pairs, match_priors, prior_states
from codetr.coders import ssd_decode, ssd_encode
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
    assert torch.allclose(m.loc[positive], ssd_encode(truths[m.truth_index[positive]], PRIORS[positive]))


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
    assert torch.allclose(ssd_decode(ssd_encode(boxes, PRIORS), PRIORS), boxes, atol=1e-6)
    # a zero offset decodes to the prior itself
    cx, cy, w, h = PRIORS.unbind(1)
    corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    assert torch.allclose(ssd_decode(torch.zeros_like(PRIORS), PRIORS), corners)


def test_priors_order_and_square_anchors():
    p = make_priors([(2, 3)], [[10]], [1, 0.5, 2], 100, square_anchors=True)
    assert p.shape == (2 * 3 * 3, 4)
    # row j, column i, then ratio: the 4th cell (j=1, i=0) starts at index 9
    assert torch.allclose(p[9], torch.tensor([0.5 / 3, 1.5 / 2, 0.1, 0.1]))
    assert torch.allclose(p[1, 2:], torch.tensor([0.1 * 0.5 ** 0.5] * 2))        # square: h = w
    q = make_priors([(2, 3)], [[10]], [1, 0.5, 2], 100, square_anchors=False)
    assert torch.allclose(q[1, 2:], torch.tensor([0.1 * 0.5 ** 0.5, 0.1 / 0.5 ** 0.5]))


def readable_states(iou, pos=0.5, neg=0.4):
    """The rule over a plain IoU table: each prior's best truth and threshold state; then,
    while truths and priors remain, the highest (truth, prior) pair (first truth, then first
    prior on ties) is forced positive and both leave. -> (truth per prior, state per prior)."""
    table = iou.tolist()
    num_truths, num_priors = len(table), len(table[0])
    truth_of = [max(range(num_truths), key=lambda g: (table[g][p], -g)) for p in range(num_priors)]
    state = []
    for p in range(num_priors):
        best = table[truth_of[p]][p]
        state.append(0 if best < neg else (1 if best >= pos else -1))
    free_truths, free_priors = set(range(num_truths)), set(range(num_priors))
    while free_truths and free_priors:
        g, p = max(((g, p) for g in free_truths for p in free_priors),
                   key=lambda gp: (table[gp[0]][gp[1]], -gp[0], -gp[1]))
        truth_of[p], state[p] = g, 1
        free_truths.remove(g)
        free_priors.remove(p)
    return torch.tensor(truth_of), torch.tensor(state)


# truths 0 and 1 share their best prior 0; 1 overlaps it more, so 0 is forced onto prior 1
# (IoU 0.3, below both thresholds); truth 2 takes prior 3; prior 2 is neutral (0.45 with
# truth 1), prior 4 background (0.3 with truth 2)
HAND_MADE = torch.tensor([[0.6, 0.3, 0.0, 0.1, 0.0],
                          [0.7, 0.2, 0.45, 0.0, 0.0],
                          [0.0, 0.0, 0.1, 0.35, 0.3]])


def test_forced_pairs_on_a_hand_made_table():
    truths, priors = forced_pairs(HAND_MADE)
    assert list(zip(truths.tolist(), priors.tolist())) == [(1, 0), (2, 3), (0, 1)]   # in matching order
    truth_index, state = prior_states(HAND_MADE, 0.5, 0.4)
    assert truth_index.tolist() == [1, 0, 1, 2, 2] and state.tolist() == [1, 1, -1, 1, 0]
    want_truth, want_state = readable_states(HAND_MADE)
    assert torch.equal(truth_index, want_truth) and torch.equal(state, want_state)


def test_forced_pairs_break_ties_by_truth_then_prior():
    tied = torch.tensor([[0.5, 0.5, 0.2],
                         [0.5, 0.5, 0.2]])
    truths, priors = forced_pairs(tied)
    assert list(zip(truths.tolist(), priors.tolist())) == [(0, 0), (1, 1)]
    # more truths than priors: the ones beyond the last prior get no forced prior
    truths, priors = forced_pairs(tied.t())
    assert list(zip(truths.tolist(), priors.tolist())) == [(0, 0), (1, 1)]


@pytest.mark.parametrize("seed", range(20))
def test_prior_states_equal_readable_loop_on_tied_tables(seed):
    g = torch.Generator().manual_seed(seed)
    num_truths, num_priors = 1 + seed % 5, [3, 7, 12][seed % 3]
    iou = torch.randint(0, 6, (num_truths, num_priors), generator=g) / 10   # few values: many ties
    truth_index, state = prior_states(iou, 0.5, 0.4)
    want_truth, want_state = readable_states(iou)
    assert torch.equal(state, want_state) and torch.equal(truth_index, want_truth)
