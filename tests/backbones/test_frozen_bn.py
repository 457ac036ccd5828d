"""codetr's FrozenBatchNorm2d (one fused F.batch_norm pass) against torchvision's (multiply + add)."""
import torch
from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBN

from codetr.backbones.resnet import FrozenBatchNorm2d, ResNetBackbone


def frozen_pair(channels: int = 16) -> tuple[TorchvisionFrozenBN, FrozenBatchNorm2d]:
    reference = TorchvisionFrozenBN(channels)
    g = torch.Generator().manual_seed(0)
    for buffer in reference.buffers():
        buffer.copy_(torch.rand(buffer.shape, generator=g) + 0.5)
    ours = FrozenBatchNorm2d(channels)
    ours.load_state_dict(reference.state_dict())   # the same keys: official / torchvision checkpoints load
    return reference, ours


def test_same_values_and_input_gradient_in_both_layouts():
    reference, ours = frozen_pair()
    for layout in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 5, 7).contiguous(memory_format=layout).requires_grad_()
        expected, actual = reference(x), ours(x)
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(torch.autograd.grad(actual.square().sum(), x)[0],
                                   torch.autograd.grad(expected.square().sum(), x)[0], rtol=1e-5, atol=1e-5)
        assert actual.is_contiguous(memory_format=layout)


def test_bfloat16_maps_stay_bfloat16_under_autocast():
    """torchvision's float32 scale promotes a bf16 conv output to float32; ours keeps bf16."""
    reference, ours = frozen_pair()
    x = torch.randn(1, 16, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = torch.nn.functional.conv2d(x, torch.randn(16, 16, 3, 3), padding=1)
        assert reference(y).dtype == torch.float32 and ours(y).dtype == torch.bfloat16
        torch.testing.assert_close(ours(y).float(), reference(y), rtol=1e-2, atol=1e-2)


def test_resnet_uses_it_for_frozen_bn():
    backbone = ResNetBackbone(depth=18, norm="frozen_bn")
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
