"""FPN shapes and wiring; ResNet width options (cvpods' RESNETS.*) keep torchvision's layout."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

from codetr.backbones import ResNetBackbone
from codetr.necks.fpn import FPN


@pytest.mark.parametrize("num_extra,extra_from", [(0, "p5"), (2, "p5"), (2, "c5")])
def test_fpn_levels(num_extra, extra_from):
    fpn = FPN([8, 16, 32], 32, num_extra, extra_from)
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    outs = fpn(feats)
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2, 1][:3 + num_extra]
    assert len(fpn.extra) == num_extra
    # top-down: P5 depends only on C5; P3 = out(lat(C3) + up(lat(C4) + up(lat(C5))))
    with torch.no_grad():
        top = fpn.lateral[2](feats[2])
        mid = fpn.lateral[1](feats[1]) + F.interpolate(top, scale_factor=2.0)
        p3 = fpn.output[0](fpn.lateral[0](feats[0]) + F.interpolate(mid, scale_factor=2.0))
        torch.testing.assert_close(fpn(feats)[0], p3)
        if num_extra:
            src = fpn.output[2](top) if extra_from == "p5" else feats[2]
            torch.testing.assert_close(outs[3], fpn.extra[0](src))
            torch.testing.assert_close(outs[4], fpn.extra[1](F.relu(outs[3])))


def test_standard_resnet50_loads_torchvision_weights():
    tv = torchvision.models.resnet50(weights=None)
    ours = ResNetBackbone(50, "bn", frozen_stages=-1)
    missing, unexpected = ours.body.load_state_dict(tv.state_dict(), strict=False)
    assert missing == [] and sorted(unexpected) == ["fc.bias", "fc.weight"]


def test_width_options_as_cvpods_quarter_r50():
    m = ResNetBackbone(50, "frozen_bn", stem_channels=16, res2_channels=64, width_per_group=16, stride_in_1x1=True)
    assert m.out_channels == [128, 256, 512]
    assert m.body.conv1.out_channels == 16 and m.body.layer1[0].downsample is not None  # 16 -> 64 needs a shortcut
    block = m.body.layer2[0]
    assert (block.conv1.out_channels, block.conv1.stride, block.conv2.stride) == (32, (2, 2), (1, 1))
    outs = m(torch.randn(1, 3, 64, 96))
    assert [tuple(o.shape[1:]) for o in outs] == [(128, 8, 12), (256, 4, 6), (512, 2, 3)]


def test_basic_block_widths():
    m = ResNetBackbone(18, "bn", frozen_stages=-1, stem_channels=32, res2_channels=32)
    assert m.out_channels == [64, 128, 256]
    assert [tuple(o.shape[1:]) for o in m(torch.randn(1, 3, 64, 64))] == [(64, 8, 8), (128, 4, 4), (256, 2, 2)]
    # default widths are torchvision's model, unchanged
    assert ResNetBackbone(18, "bn").body.layer1[0].conv1.in_channels == 64


def test_bad_widths_raise():
    with pytest.raises(ValueError, match="bottlenecks"):
        ResNetBackbone(50, "bn", res2_channels=192, width_per_group=10)
