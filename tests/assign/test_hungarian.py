"""Hungarian matcher: exhaustive search on small problems, batched == per image, empty targets."""
import itertools

import torch

from codetr.assign import HungarianMatcher, linear_assignment


def brute_force_min_cost(cost):
    n, m = cost.shape
    best = float("inf")
    for rows in itertools.permutations(range(n), m):
        best = min(best, sum(cost[r, c].item() for c, r in enumerate(rows)))
    return best


def test_linear_assignment_is_optimal():
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        n, m = 6, int(torch.randint(1, 5, (1,), generator=g))
        cost = torch.rand(n, m, generator=g, dtype=torch.float64)
        rows, cols = linear_assignment(cost)
        assert len(rows) == m and len(set(rows.tolist())) == m
        assert abs(cost[rows, cols].sum().item() - brute_force_min_cost(cost)) < 1e-9


def random_problem(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    B, Q, K = len(sizes), 7, 5
    logits = torch.randn(B, Q, K, generator=g)
    boxes = torch.rand(B, Q, 4, generator=g) * 0.5 + 0.25
    targets = [{"labels": torch.randint(0, K, (n,), generator=g),
                "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.25} for n in sizes]
    return logits, boxes, targets


def test_matcher_is_optimal_for_its_cost():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_problem(1, [3, 4])
    for b, (q, t) in enumerate(matcher(logits, boxes, targets)):
        cost = matcher.cost_matrix(logits[b], boxes[b], targets[b]["labels"], targets[b]["boxes"])
        assert abs(cost[q, t].sum().item() - brute_force_min_cost(cost)) < 1e-4


def test_batched_equals_per_image_and_empty_targets():
    matcher = HungarianMatcher()
    logits, boxes, targets = random_problem(2, [2, 0, 3])
    batched = matcher(logits, boxes, targets)
    assert len(batched[1][0]) == 0
    for b in range(3):
        single = matcher(logits[b:b + 1], boxes[b:b + 1], targets[b:b + 1])[0]
        assert torch.equal(single[0], batched[b][0]) and torch.equal(single[1], batched[b][1])
    none = matcher(logits, boxes, [{"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 3)
    assert all(len(q) == 0 for q, _ in none)
