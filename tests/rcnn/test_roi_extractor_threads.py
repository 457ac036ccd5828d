"""The RoI extractor's CPU thread split gives the values of one RoIAlign call."""
import torch
from torchvision.ops import roi_align

from codetr.rcnn.roi_extractor import RoIExtractor


def test_thread_split_equals_one_call_in_values_and_gradients():
    torch.manual_seed(0)
    feat = torch.randn(2, 8, 40, 50, requires_grad=True)
    xy = torch.rand(200, 2) * 150
    rois = torch.cat([torch.randint(0, 2, (200, 1)).float(), xy, xy + 5 + torch.rand(200, 2) * 60], 1)
    extractor = RoIExtractor([4], output_size=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        split = extractor.pool(feat, rois, 4)
        (split ** 2).sum().backward()
        grad_split, feat.grad = feat.grad, None
        with torch.no_grad():
            assert not extractor.pool(feat, rois, 4).requires_grad   # no_grad reaches the workers
    finally:
        torch.set_num_threads(threads)
    one = roi_align(feat, rois, 7, spatial_scale=0.25, sampling_ratio=0, aligned=True)
    (one ** 2).sum().backward()
    assert torch.equal(split, one)
    torch.testing.assert_close(grad_split, feat.grad, rtol=1e-5, atol=1e-6)
