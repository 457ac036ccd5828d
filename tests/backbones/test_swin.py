"""Swin backbone: official checkpoint names load through ``swin_from_official``; the forward
equals an independent reference of the official detection Swin (pad before shift, shifted-window
mask, relative position bias, patch-merging order) on sizes no window divides; any input size;
frozen stages; activation checkpointing; the config."""
import math

import pytest
import torch
import torch.nn.functional as F

from codetr.backbones import BackboneConfig, SwinConfig, build_backbone
from codetr.backbones.swin import SwinBackbone, swin_from_official
from codetr.config import ConfigError, from_dict

TINY = dict(embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=3)


def tiny_swin(seed: int = 0, **kwargs) -> SwinBackbone:
    torch.manual_seed(seed)
    return SwinBackbone(**{**TINY, "drop_path_rate": 0.0, **kwargs})


# --- the official layout, written from the paper / official code independently of swin.py -------

def position_index(window: int) -> torch.Tensor:
    """[w*w, w*w]: row of the bias table of token a relative to token b, tokens row-major,
    table row-major over (dy, dx) in [-(w-1), w-1]^2."""
    r, c = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    r, c = r.flatten(), c.flatten()
    dy, dx = r[:, None] - r[None, :], c[:, None] - c[None, :]
    return (dy + window - 1) * (2 * window - 1) + (dx + window - 1)


def to_official(state: dict, depths, window: int) -> dict:
    """SwinBackbone weights -> the official names: output norms ``norm{i}``, patch merging at the
    end of stage i-1 instead of the start of stage i, a stored relative_position_index per block."""
    official = {}
    for name, value in state.items():
        parts = name.split(".")
        if parts[0] == "norms":
            name = f"norm{parts[1]}.{parts[2]}"
        elif parts[0] == "layers" and parts[2] == "downsample":
            name = ".".join(["layers", str(int(parts[1]) - 1), *parts[2:]])
        official[name] = value
    for i, depth in enumerate(depths):
        for j in range(depth):
            official[f"layers.{i}.blocks.{j}.attn.relative_position_index"] = position_index(window)
    return official


def layer_norm(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[prefix + ".weight"], sd[prefix + ".bias"])


def reference_attention(y, sd, p, heads, window, shift):
    """y [B, Hp, Wp, C] (padded, already rolled) -> window attention output, same shape."""
    b, hp, wp, c = y.shape
    n = window * window
    tokens = y.reshape(b, hp // window, window, wp // window, window, c).transpose(2, 3).reshape(b, -1, n, c)
    q, k, v = F.linear(tokens, sd[p + "qkv.weight"], sd[p + "qkv.bias"]).reshape(b, -1, n, 3, heads, c // heads) \
        .permute(3, 0, 1, 4, 2, 5)                                   # each [B, nW, heads, N, d]
    table = sd[p + "relative_position_bias_table"]                   # [(2w-1)^2, heads]
    bias = table[sd[p + "relative_position_index"]].permute(2, 0, 1)  # [heads, N, N]
    logits = q @ k.transpose(-1, -2) / math.sqrt(c // heads) + bias
    if shift:
        # rolled row r holds original row (r + shift) % Hp: rows that wrapped round must not see the others
        wrapped_r = (torch.arange(hp) + shift >= hp)[:, None].expand(hp, wp)
        wrapped_c = (torch.arange(wp) + shift >= wp)[None, :].expand(hp, wp)
        group = (2 * wrapped_r + wrapped_c).reshape(hp // window, window, wp // window, window).transpose(1, 2)
        group = group.reshape(-1, n)                                 # [nW, N]
        logits = logits + -100.0 * (group[:, None, :, None] != group[:, None, None, :])
    out = (logits.softmax(-1) @ v).permute(0, 1, 3, 2, 4).reshape(b, -1, n, c)
    out = F.linear(out, sd[p + "proj.weight"], sd[p + "proj.bias"])
    return out.reshape(b, hp // window, wp // window, window, window, c).transpose(2, 3).reshape(b, hp, wp, c)


def reference_block(x, sd, p, heads, window, shift):
    b, h, w, c = x.shape
    y = F.pad(layer_norm(x, sd, p + "norm1"), (0, 0, 0, -w % window, 0, -h % window))  # pad, then shift
    y = torch.roll(y, (-shift, -shift), (1, 2))
    y = torch.roll(reference_attention(y, sd, p + "attn.", heads, window, shift), (shift, shift), (1, 2))
    x = x + y[:, :h, :w]
    hidden = F.gelu(F.linear(layer_norm(x, sd, p + "norm2"), sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
    return x + F.linear(hidden, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def reference_merge(x, sd, p):
    """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]: channels of the 2x2 neighbours in (row, col)
    offset order (0,0), (1,0), (0,1), (1,1), then LayerNorm and a linear map."""
    x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
    x = torch.cat([x[:, dr::2, dc::2] for dr, dc in ((0, 0), (1, 0), (0, 1), (1, 1))], dim=-1)
    return F.linear(layer_norm(x, sd, p + "norm"), sd[p + "reduction.weight"])


def reference_swin(sd, images, depths, heads, window, out_indices):
    """The official SwinTransformerV1 (eval) on official-layout weights ``sd``."""
    h, w = images.shape[-2:]
    x = F.conv2d(F.pad(images, (0, -w % 4, 0, -h % 4)), sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"],
                 stride=4).permute(0, 2, 3, 1)
    x = layer_norm(x, sd, "patch_embed.norm")
    outs = []
    for i, depth in enumerate(depths):
        for j in range(depth):
            x = reference_block(x, sd, f"layers.{i}.blocks.{j}.", heads[i], window, window // 2 if j % 2 else 0)
        if i in out_indices:
            outs.append(layer_norm(x, sd, f"norm{i}").permute(0, 3, 1, 2))
        if i < len(depths) - 1:
            x = reference_merge(x, sd, f"layers.{i}.downsample.")
    return outs


# --- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(97, 130), (36, 36)])
def test_official_weights_load_and_match_the_reference(size):
    """Official-layout weights through the key map into a differently initialised backbone:
    the same outputs as the source model and as the reference official forward (float64)."""
    source, target = tiny_swin(0).double().eval(), tiny_swin(1).double().eval()
    official = to_official(source.state_dict(), TINY["depths"], TINY["window_size"])
    target.load_state_dict(swin_from_official(official, target.state_dict().keys()))
    images = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = target(images), source(images)
        reference = reference_swin(official, images, TINY["depths"], TINY["num_heads"], TINY["window_size"],
                                   (0, 1, 2, 3))
    for a, b, r in zip(ours, theirs, reference):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-9)


def test_key_map_lists_every_problem():
    model = tiny_swin()
    official = to_official(model.state_dict(), TINY["depths"], TINY["window_size"])
    del official["norm3.weight"]
    official["absolute_pos_embed"] = torch.zeros(1)
    official["layers.3.downsample.norm.bias"] = torch.zeros(1)
    official["layers.0.blocks.1.attn.relative_position_index"] = position_index(3).flip(0)
    with pytest.raises(ValueError) as error:
        swin_from_official(official, model.state_dict().keys())
    message = str(error.value)
    for name in ("absolute_pos_embed", "norms.3.weight", "layers.4.downsample.norm.bias",
                 "layers.0.blocks.1.attn.relative_position_index"):
        assert name in message


def test_any_input_size_gives_maps_at_the_strides():
    model = tiny_swin(out_stages=(2, 3, 4))
    outs = model(torch.randn(2, 3, 97, 130))
    assert model.out_channels == [16, 32, 64] and model.strides == [8, 16, 32]
    assert [tuple(o.shape) for o in outs] == [(2, c, math.ceil(97 / s), math.ceil(130 / s))
                                              for c, s in zip(model.out_channels, model.strides)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_frozen_stages_get_no_gradient_and_stay_in_eval():
    model = tiny_swin(frozen_stages=2, drop_path_rate=0.2).train()
    sum(o.sum() for o in model(torch.randn(1, 3, 40, 52))).backward()
    frozen = [model.patch_embed, model.layers[0], model.layers[1]]
    assert all(p.grad is None and not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.grad is not None for m in (model.layers[2], model.norms) for p in m.parameters())
    assert not any(m.training for m in frozen) and model.layers[2].training


def test_with_cp_gives_the_same_outputs_and_gradients():
    """Activation checkpointing in training mode, drop path on: the recomputation replays the
    same random drops, so outputs and gradients equal the plain run's."""
    plain, recomputed = tiny_swin(drop_path_rate=0.3).train(), tiny_swin(drop_path_rate=0.3, with_cp=True).train()
    images = torch.randn(2, 3, 45, 61)
    results = []
    for model in (plain, recomputed):
        torch.manual_seed(5)
        outs = model(images)
        sum((o * torch.linspace(0, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, [p.grad for p in model.parameters()]))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a + grads_a, outs_b + grads_b):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_config_selects_swin_and_old_configs_stay_resnet():
    old = from_dict(BackboneConfig, {"depth": 50, "frozen_stages": 1})  # saved before kind / swin existed
    assert old.kind == "resnet" and old == BackboneConfig()
    config = from_dict(BackboneConfig, {"kind": "swin", "frozen_stages": -1, "swin": dict(TINY)})
    backbone = build_backbone(config, (2, 3, 4))
    assert isinstance(backbone, SwinBackbone) and backbone.out_channels == [16, 32, 64]
    with pytest.raises(ConfigError, match="must be one of"):
        from_dict(BackboneConfig, {"kind": "vit"})
    with pytest.raises(ValueError, match="ResNet options"):
        BackboneConfig(kind="swin", dcn_layers=(0, 1, 1, 1))
    with pytest.raises(ValueError, match="not divisible"):
        SwinConfig(embed_dims=96, num_heads=(5, 6, 12, 24))


def test_co_dino_swin_large_shapes():
    """The default SwinConfig is Co-DINO's Swin-L: 192 wide, depths (2, 2, 18, 2), heads
    (6, 12, 24, 48), window 12 (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        backbone = build_backbone(BackboneConfig(kind="swin", frozen_stages=-1), (1, 2, 3, 4))
    assert backbone.out_channels == [192, 384, 768, 1536] and backbone.strides == [4, 8, 16, 32]
    assert [len(layer.blocks) for layer in backbone.layers] == [2, 2, 18, 2]
    assert backbone.layers[3].blocks[0].attn.num_heads == 48
    assert backbone.layers[2].blocks[1].window_size == (12, 12) and backbone.layers[2].blocks[1].shift_size == (6, 6)
    assert backbone.layers[3].blocks[1].drop_path2.drop_prob == pytest.approx(0.3)
    count = swin_parameter_count(192, (2, 2, 18, 2), (6, 12, 24, 48), 12)
    assert sum(p.numel() for p in backbone.parameters()) == count


def swin_parameter_count(dims, depths, heads, window):
    """Patch embedding (4x4 conv + LayerNorm); per block 2 LayerNorms, qkv, proj, MLP 4x and a
    (2w-1)^2 x heads bias table; per merging (from C) LayerNorm(4C) + 4C -> 2C; output norms."""
    count = 3 * 16 * dims + dims + 2 * dims
    for i, (depth, n_heads) in enumerate(zip(depths, heads)):
        c = dims * 2 ** i
        count += depth * (12 * c * c + 13 * c + (2 * window - 1) ** 2 * n_heads) + 2 * c
        count += 8 * (c // 2) + 8 * (c // 2) ** 2 if i else 0
    return count  # Swin-L: 195.2 M
