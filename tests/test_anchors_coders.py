"""Anchors (mmdet AnchorGenerator) and the box coders: brute force and hand-computed
values. (Bit-exact parity of anchors with the official code: tests/rcnn/test_golden_rpn.py,
whose sampled ``pos_bboxes`` / ``neg_bboxes`` are anchors.)"""
from __future__ import annotations

import math

import pytest
import torch

from codetr.anchors import AnchorGenerator
from codetr.boxes import cxcywh_to_xyxy, xyxy_to_cxcywh
from codetr.coders import delta_xywh_decode, delta_xywh_encode, ssd_decode, ssd_encode


def brute_anchors(stride, ratios, scales, h, w, offset=0.0):
    rows = []
    for y in range(h):
        for x in range(w):
            for r in ratios:
                for k in scales:
                    aw, ah = stride * k / math.sqrt(r), stride * k * math.sqrt(r)
                    cx, cy = x * stride + offset * stride, y * stride + offset * stride
                    rows.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return torch.tensor(rows, dtype=torch.float64)


def test_base_anchors_hand_computed():
    atss = AnchorGenerator([8], [1.0], octave_base_scale=8, scales_per_octave=1)
    assert atss.num_base_anchors == [1]
    assert atss.base_anchors[0].tolist() == [[-32.0, -32.0, 32.0, 32.0]]
    g = AnchorGenerator([4], [0.5, 1.0, 2.0], scales=[2.0])
    # ratio 0.5: h = 4 * 2 * sqrt(.5) = 5.657, w = 11.314; ratio 2: the transpose
    torch.testing.assert_close(g.base_anchors[0], torch.tensor(
        [[-5.6569, -2.8284, 5.6569, 2.8284], [-4.0, -4.0, 4.0, 4.0], [-2.8284, -5.6569, 2.8284, 5.6569]]), atol=1e-4, rtol=0)
    half = AnchorGenerator([16], [1.0], scales=[1.0], center_offset=0.5)
    assert half.base_anchors[0].tolist() == [[0.0, 0.0, 16.0, 16.0]]


def test_octave_scales_rounded_once_to_float32():
    g = AnchorGenerator([8], [1.0], octave_base_scale=4, scales_per_octave=3)
    expect = torch.tensor([4 * 2 ** (i / 3) for i in range(3)], dtype=torch.float64).float()
    assert torch.equal(g.scales, expect)


@pytest.mark.parametrize("offset", [0.0, 0.5])
def test_grid_anchors_brute_force(offset):
    g = AnchorGenerator([4, 8, 16], [0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3, center_offset=offset)
    sizes = [(5, 7), (3, 4), (1, 2)]
    grids = g.grid_anchors(sizes, "cpu")
    for stride, (h, w), grid in zip([4, 8, 16], sizes, grids):
        assert grid.dtype == torch.float32 and grid.shape == (h * w * 9, 4)
        ref = brute_anchors(stride, [0.5, 1.0, 2.0], g.scales.double().tolist(), h, w, offset)
        torch.testing.assert_close(grid.double(), ref, atol=1e-5, rtol=0)


def test_valid_flags_rule_and_order():
    g = AnchorGenerator([8, 16, 32, 64, 128], [0.5, 1.0, 2.0], octave_base_scale=4, scales_per_octave=3)
    sizes = [(40, 40), (20, 20), (10, 10), (5, 5), (3, 3)]
    flags = g.valid_flags(sizes, (240, 320), "cpu")
    # rows ceil(240 / s) capped by H, all 40 / 20 / ... columns: 1606 cells x 9 (the fixture's 14454)
    assert sum(int(f.sum()) for f in flags) == 14454
    cell = flags[0].reshape(40, 40, 9)
    assert cell[:30].all() and not cell[30:].any()
    flags = g.valid_flags([(3, 3)] * 5, (17, 9, 3), "cpu")  # (h, w, c) accepted; ceil(17/8)=3, ceil(9/8)=2
    assert flags[0].reshape(3, 3, 9)[:, :2].all() and not flags[0].reshape(3, 3, 9)[:, 2].any()


def test_generator_argument_errors():
    with pytest.raises(ValueError):
        AnchorGenerator([8], [1.0])
    with pytest.raises(ValueError):
        AnchorGenerator([8], [1.0], scales=[1.0], octave_base_scale=4, scales_per_octave=1)
    with pytest.raises(ValueError):
        AnchorGenerator([8], [1.0], scales=[1.0]).grid_anchors([(2, 2), (1, 1)], "cpu")


def test_encode_hand_computed():
    p = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    g = torch.tensor([[5.0, 0.0, 25.0, 10.0]])
    # centres (5, 10) -> (15, 5), sizes (10, 20) -> (20, 10)
    d = delta_xywh_encode(p, g)
    torch.testing.assert_close(d, torch.tensor([[1.0, -0.25, math.log(2), math.log(0.5)]]))
    d = delta_xywh_encode(p, g, means=(0.1, 0, 0, 0), stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(d, torch.tensor([[9.0, -2.5, math.log(2) / 0.2, math.log(0.5) / 0.2]]))


def test_decode_inverts_encode_and_multiclass():
    g = torch.Generator().manual_seed(0)
    p = torch.rand(50, 2, generator=g) * 50
    p = torch.cat([p, p + 1 + torch.rand(50, 2, generator=g) * 30], 1)
    t = torch.rand(50, 2, generator=g) * 50
    t = torch.cat([t, t + 1 + torch.rand(50, 2, generator=g) * 30], 1)
    stds, means = (0.1, 0.1, 0.2, 0.2), (0.0, 0.0, 0.0, 0.0)
    d = delta_xywh_encode(p, t, means, stds)
    torch.testing.assert_close(delta_xywh_decode(p, d, means, stds), t, atol=1e-4, rtol=1e-5)
    two = delta_xywh_decode(p, torch.cat([d, torch.zeros_like(d)], 1), means, stds)  # [N, 8]
    torch.testing.assert_close(two[:, :4], t, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(two[:, 4:], p, atol=1e-4, rtol=1e-5)


def test_decode_clamps_size_and_clips_border():
    roi = torch.tensor([[10.0, 10.0, 20.0, 20.0]])
    big = delta_xywh_decode(roi, torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    limit = abs(math.log(16 / 1000))
    w, h = 10 * math.exp(limit), 10 * math.exp(-limit)
    torch.testing.assert_close(big, torch.tensor([[15 - w / 2, 15 - h / 2, 15 + w / 2, 15 + h / 2]]))
    clipped = delta_xywh_decode(roi, torch.tensor([[0.0, 0.0, 10.0, -10.0]]), max_shape=(30, 100, 3))
    assert clipped[0, 0] == 0 and clipped[0, 2] == 100
    unclipped = delta_xywh_decode(roi, torch.tensor([[0.0, 0.0, 10.0, -10.0]]), max_shape=(30, 100), clip_border=False)
    torch.testing.assert_close(unclipped, big)
    assert delta_xywh_decode(torch.zeros(0, 4), torch.zeros(0, 8)).shape == (0, 8)
    with pytest.raises(ValueError):
        delta_xywh_encode(torch.zeros(2, 4), torch.zeros(3, 4))


def test_ssd_coder():
    g = torch.Generator().manual_seed(0)
    priors = torch.cat([torch.rand(30, 2, generator=g), torch.rand(30, 2, generator=g) * 0.5 + 0.05], 1)
    torch.testing.assert_close(ssd_encode(cxcywh_to_xyxy(priors), priors), torch.zeros(30, 4), atol=1e-5, rtol=0)
    offsets = torch.randn(30, 4, generator=g)
    boxes = ssd_decode(offsets, priors)
    # the rule: centre moves by v0 * offset prior sizes, sizes scale by exp(v1 * offset)
    torch.testing.assert_close(xyxy_to_cxcywh(boxes), torch.cat(
        [priors[:, :2] + 0.1 * offsets[:, :2] * priors[:, 2:], priors[:, 2:] * torch.exp(0.2 * offsets[:, 2:])], 1))
    torch.testing.assert_close(ssd_encode(boxes, priors), offsets, atol=1e-4, rtol=1e-4)
    # any leading shape, priors broadcast
    assert ssd_decode(offsets.view(3, 10, 4), priors[:10]).shape == (3, 10, 4)
