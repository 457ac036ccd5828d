"""3D max filtering against a per-location loop; points and the ltrb coder."""
import torch
import torch.nn.functional as F

from codetr.dense.max_filter import MaxFiltering3D
from codetr.coders import ltrb_decode, ltrb_encode
from codetr.dense.points import flatten_levels, level_points


def naive_max_filter(module: MaxFiltering3D, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    feats = [module.conv(x) for x in inputs]
    outs = []
    for l, x in enumerate(inputs):
        H, W = x.shape[-2:]
        levels = [F.interpolate(feats[k], size=(H, W), mode="bilinear", align_corners=False) if k != l else feats[k]
                  for k in range(len(feats)) if abs(k - l) <= module.margin]
        best = torch.full_like(x, -float("inf"))
        for f in levels:
            for i in range(H):
                for j in range(W):
                    window = f[:, :, max(0, i - 1):i + 2, max(0, j - 1):j + 2]
                    best[:, :, i, j] = torch.maximum(best[:, :, i, j], window.amax(dim=(2, 3)))
        outs.append(F.relu(module.norm(best + x)))
    return outs


def test_max_filter_matches_naive_loop():
    torch.manual_seed(0)
    module = MaxFiltering3D(32, kernel_size=3, tau=2)
    inputs = [torch.randn(2, 32, s, s + 1) for s in (6, 3, 2, 1)]
    with torch.no_grad():
        for ours, ref in zip(module(inputs), naive_max_filter(module, inputs)):
            torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_max_filter_matches_official_maxpool3d_form():
    """The official form: MaxPool3d over the stacked neighbours, middle slice taken."""
    torch.manual_seed(1)
    module = MaxFiltering3D(32)
    inputs = [torch.randn(1, 32, s, s) for s in (8, 4, 2)]
    pool = torch.nn.MaxPool3d((3, 3, 3), stride=1, padding=(1, 1, 1))
    with torch.no_grad():
        feats = [module.conv(x) for x in inputs]
        for l, (x, ours) in enumerate(zip(inputs, module(inputs))):
            stack = torch.stack([feats[k] if k == l else F.interpolate(feats[k], size=x.shape[-2:], mode="bilinear")
                                 for k in range(max(0, l - 1), min(3, l + 2))], dim=2)
            ref = F.relu(module.norm(pool(stack)[:, :, min(l, 1)] + x))
            torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


def test_level_points():
    pts = level_points(2, 3, 8)
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_ltrb_round_trip():
    torch.manual_seed(0)
    points = torch.rand(50, 2) * 100
    boxes = torch.cat([points - torch.rand(50, 2) * 30, points + torch.rand(50, 2) * 30], dim=1)
    deltas = ltrb_encode(points, boxes)
    assert (deltas > 0).all()
    torch.testing.assert_close(ltrb_decode(points, deltas), boxes)
    torch.testing.assert_close(ltrb_encode(points, ltrb_decode(points, deltas)), deltas)
    # broadcast form used for [G, R] targets
    assert ltrb_encode(points[None], boxes[:3, None]).shape == (3, 50, 4)


def test_flatten_levels_order():
    a = torch.arange(2 * 3 * 2 * 2).view(2, 3, 2, 2).float()
    b = torch.arange(2 * 3 * 1 * 1).view(2, 3, 1, 1).float()
    flat = flatten_levels([a, b])
    assert flat.shape == (2, 5, 3)
    assert torch.equal(flat[0, 1], a[0, :, 0, 1]) and torch.equal(flat[1, 4], b[1, :, 0, 0])
