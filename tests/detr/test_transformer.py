"""The deformable transformer stages: encoder output, sine embedding, box refinement, decoder
conventions, and no shape read back from the device inside the attention calls."""
import math

import pytest
import torch

import codetr
from codetr.nn import LevelLayout, SinePositionEncoding, sine_embed
from codetr.nn.deformable_attention import ring_offsets
from codetr.detr.transformer import encoder_proposals, refine_boxes

SMALL = dict(hidden_dim=64, num_heads=4, enc_layers=1, dec_layers=2, ffn_dim=64, num_queries=10, num_select=10)


def encoded(model, images, sizes):
    from codetr.detr.deformable_detr import multiscale_features
    maps = multiscale_features(model.backbone, model.input_proj, model.position, images, sizes)
    return maps, model.transformer.encoder(maps.srcs, maps.masks, maps.pos)


def test_level_layout():
    levels = LevelLayout.of([(4, 5), (2, 3), (1, 1)], torch.device("cpu"))
    assert levels.sizes == [20, 6, 1] and levels.starts == [0, 20, 26]
    assert levels.wh.tolist() == [[5, 4], [3, 2], [1, 1]]


def test_encoder_output_maps_are_the_memory_per_level():
    model = codetr.create("deformable_detr_tiny", num_classes=3, **SMALL).eval()
    images, sizes = torch.randn(2, 3, 64, 80), torch.tensor([[64, 80], [48, 60]])
    with torch.no_grad():
        maps, enc = encoded(model, images, sizes)
    assert enc.levels.shapes == [tuple(s.shape[-2:]) for s in maps.srcs]
    assert enc.valid_ratios.shape == (2, len(maps.srcs), 2)
    per_level = enc.to_maps()
    for m, src in zip(per_level, maps.srcs):
        assert m.shape == src.shape                                            # [B, C, H_l, W_l]
    assert torch.equal(torch.cat([m.flatten(2) for m in per_level], 2).transpose(1, 2), enc.memory)


def test_sine_embed_formula_and_order():
    coords = torch.rand(3, 4)
    F = 6
    out = sine_embed(coords, F, temperature=100.0, order=(1, 0, 2, 3))
    assert out.shape == (3, 4 * F)
    for n, c in enumerate((1, 0, 2, 3)):
        for i in range(F):
            angle = coords[:, c] * 2 * math.pi / 100.0 ** (2 * (i // 2) / F)
            expected = angle.sin() if i % 2 == 0 else angle.cos()
            torch.testing.assert_close(out[:, n * F + i], expected)
    with pytest.raises(ValueError, match="even"):
        sine_embed(coords, 5)


def test_position_encoding_is_the_sine_embedding_of_normalized_counts():
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    mask[:, :, 3] = True                                                       # last column padding
    pos = SinePositionEncoding(4, temperature_h=20.0, temperature_w=30.0, offset=0.0)(mask)  # [1, 8, 3, 4]
    y = torch.tensor([1.0, 2.0, 3.0]) / (3 + 1e-6)
    x = torch.tensor([1.0, 2.0, 3.0, 3.0]) / (3 + 1e-6)
    torch.testing.assert_close(pos[0, :4, :, 0].T, sine_embed(y[:, None], 4, 20.0))
    torch.testing.assert_close(pos[0, 4:, 0, :].T, sine_embed(x[:, None], 4, 30.0))


def test_ring_offsets_lie_on_square_rings():
    offsets = ring_offsets(8, 3, 4)                                            # [M, L, P, 2]
    assert offsets.shape == (8, 3, 4, 2)
    torch.testing.assert_close(offsets.abs().amax(-1), torch.arange(1.0, 5.0).expand(8, 3, 4))
    assert torch.equal(offsets[:, 0], offsets[:, 2])                           # same on every level
    torch.testing.assert_close(offsets[2, 0, 0], torch.tensor([0.0, 1.0]), atol=1e-6, rtol=0)  # head 2: 90 degrees


def test_encoder_proposals_centre_sizes_and_padding():
    levels = LevelLayout.of([(2, 2), (1, 1)], torch.device("cpu"))
    padding = torch.tensor([[False, True, False, True, False]])               # level 0: right column
    proposals, usable = encoder_proposals(padding, levels)
    boxes = proposals.sigmoid()
    # centres relative to the valid 1 x 2 (w x h) part of level 0
    torch.testing.assert_close(boxes[0, 0], torch.tensor([0.5, 0.25, 0.05, 0.05]))
    torch.testing.assert_close(boxes[0, 2], torch.tensor([0.5, 0.75, 0.05, 0.05]))
    torch.testing.assert_close(boxes[0, 4], torch.tensor([0.5, 0.5, 0.1, 0.1]))  # level 1: side 0.05 * 2
    assert usable[0, :, 0].tolist() == [True, False, True, False, True]
    assert proposals[0, 1].isinf().all() and proposals[0, 3].isinf().all()


def test_refine_boxes_on_points_and_boxes():
    delta = torch.tensor([[0.5, -0.5, 1.0, -1.0]])
    point = torch.tensor([[0.3, 0.6]])
    box = refine_boxes(delta, point)
    torch.testing.assert_close(box[:, 2:], delta[:, 2:].sigmoid())            # size predicted directly
    torch.testing.assert_close(box[:, :2], (delta[:, :2] + torch.logit(point)).sigmoid())
    ref = torch.tensor([[0.3, 0.6, 0.2, 0.4]])
    torch.testing.assert_close(refine_boxes(torch.zeros(1, 4), ref), ref)


@pytest.mark.parametrize("zoo", ["deformable_detr_tiny", "dino_tiny"])
def test_decode_conventions_on_both_transformers(zoo):
    """references[0] is the input; look-forward-twice keeps the refined boxes attached; the
    attention mask reaches the self-attention (a query that sees only itself ignores the others)."""
    model = codetr.create(zoo, num_classes=3, **SMALL).eval()
    images, sizes = torch.randn(1, 3, 64, 64), torch.tensor([[64, 64]])
    _, enc = encoded(model, images, sizes)
    B, Q, C = 1, 5, model.config.hidden_dim
    tgt, reference = torch.randn(B, Q, C), torch.rand(B, Q, 4) * 0.5 + 0.25
    args = (tgt, torch.randn(B, Q, C)) if zoo.startswith("deformable") else (tgt,)
    for twice in (False, True):
        dec = model.transformer.decode(*args, reference, enc, model.bbox_embed, look_forward_twice=twice)
        assert dec.hidden.shape == (2, B, Q, C) and len(dec.references) == 3
        assert dec.references[0] is reference
        assert all(r.requires_grad == twice for r in dec.references[1:])
    alone = torch.zeros(Q, Q, dtype=torch.bool)
    alone[0, 1:] = alone[1:, 0] = True                                         # query 0 on its own
    other = torch.cat([tgt[:, :1], torch.randn(B, Q - 1, C)], 1)
    args_other = (other,) + args[1:]
    for mask, independent in ((alone, True), (None, False)):
        a = model.transformer.decode(*args, reference, enc, model.bbox_embed, attn_mask=mask).hidden[:, :, 0]
        b = model.transformer.decode(*args_other, reference, enc, model.bbox_embed, attn_mask=mask).hidden[:, :, 0]
        assert torch.allclose(a, b, atol=1e-6) == independent


@pytest.mark.parametrize("zoo", ["deformable_detr_tiny", "dino_tiny"])
def test_no_shape_read_back_in_the_transformer(zoo, monkeypatch):
    """Shapes are Python ints computed once: encoder, query selection and decoder never call
    .tolist() / .item() (each a device sync on a GPU)."""
    model = codetr.create(zoo, num_classes=3, **SMALL).eval()
    images, sizes = torch.randn(2, 3, 64, 80), torch.tensor([[64, 80], [48, 60]])
    from codetr.detr.deformable_detr import multiscale_features
    maps = multiscale_features(model.backbone, model.input_proj, model.position, images, sizes)

    def refuse(*args, **kwargs):
        raise AssertionError("host read-back inside the transformer")

    with torch.no_grad():
        monkeypatch.setattr(torch.Tensor, "tolist", refuse)
        monkeypatch.setattr(torch.Tensor, "item", refuse)
        enc = model.transformer.encoder(maps.srcs, maps.masks, maps.pos)
        if zoo.startswith("dino"):
            sel = model.transformer.select_queries(enc, model.enc_class_embed, model.enc_bbox_embed)
            tgt = model.transformer.content_queries(2, sel.topk.shape[1])
            model.transformer.decode(tgt, sel.gather(sel.coords_unact).sigmoid(), enc, model.bbox_embed)
        else:
            sel = model.transformer.select_proposals(enc, model.class_embed[-1], model.bbox_embed[-1])
            boxes = sel.gather(sel.coords_unact)
            query_pos, tgt = model.transformer.proposal_queries(boxes)
            model.transformer.decode(tgt, query_pos, boxes.sigmoid(), enc, model.bbox_embed)


@pytest.mark.parametrize("zoo", ["deformable_detr_tiny", "dino_tiny"])
def test_encoder_in_query_chunks_equals_one_pass(zoo, monkeypatch):
    """Without autograd on CPU the encoder layers run their queries in chunks of EVAL_CHUNK
    tokens over one value table: the memory equals the one-pass (autograd) memory, padding included."""
    from codetr.detr import transformer
    model = codetr.create(zoo, num_classes=3, **SMALL).eval()
    images, sizes = torch.randn(2, 3, 64, 80), torch.tensor([[64, 80], [40, 52]])
    _, whole = encoded(model, images, sizes)
    monkeypatch.setattr(transformer, "EVAL_CHUNK", 37)           # not a divisor of S: a short last chunk
    with torch.no_grad():
        _, parts = encoded(model, images, sizes)
        assert parts.memory.shape[1] > 2 * 37 and transformer.chunked(parts.memory)
    torch.testing.assert_close(parts.memory, whole.memory.detach(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("with_mask", [False, True])
def test_query_self_attention_equals_torch_multihead_attention(with_mask):
    """The decoder's self-attention is nn.MultiheadAttention's computation under its parameter
    names: its state dict loads strictly and the outputs agree, a boolean mask blocking (True)
    the same pairs; the gradients too."""
    from codetr.nn import QuerySelfAttention
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    ours = QuerySelfAttention(32, 4)
    ours.load_state_dict(ref.state_dict(), strict=True)
    tgt, pos = torch.randn(2, 7, 32, requires_grad=True), torch.randn(2, 7, 32)
    blocked = (torch.rand(7, 7) < 0.4).fill_diagonal_(False) if with_mask else None
    q = tgt + pos
    expected = ref(q, q, tgt, attn_mask=blocked, need_weights=False)[0]
    got = ours(q, tgt, blocked)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    grad_ref, = torch.autograd.grad(expected.square().sum(), tgt)
    grad_ours, = torch.autograd.grad(got.square().sum(), tgt)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-5, atol=1e-6)
    if with_mask:   # the mask matters: without it the outputs differ
        assert not torch.allclose(ours(q, tgt, None), expected, atol=1e-4)
