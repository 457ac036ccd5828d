"""Contrastive denoising queries of DINO (Zhang et al., ICLR 2023, Sec. 3.2).

Each ground-truth box is copied into ``num_groups`` groups; every group holds one positive
copy (box corners moved by less than ``box_noise_scale`` x half its size: to be reconstructed)
and one negative copy (moved by 1 to 2 x that: to be classified as background). Labels of
both are flipped to a random class with probability ``label_noise_ratio / 2``.

Query layout (``single_pad`` = the largest object count in the batch, images padded to it):

    [ group 0: positives | negatives ][ group 1: ... ] ... [ matching queries ]
      <-  single_pad  -> <- single_pad ->
    pad_size = 2 * single_pad * num_groups

The noise is drawn by ``draw_dn_noise`` alone, through the ``codetr.rng`` seam and in the
official order of random calls, so a test can replay recorded noise; ``build_dn_queries`` is
deterministic. Co-DINO (Co-DETR's ``DnQueryGenerator``) shares the noise, query and mask
builders and differs only in its group rule (``co_dino_num_dn_groups``) and in taking pixel
xyxy boxes (``co_dino_dn_boxes``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import rng
from ..boxes import cxcywh_to_xyxy, inverse_sigmoid, xyxy_to_cxcywh


def num_dn_groups(dn_number: int, max_objects: int) -> int:
    """Number of (positive, negative) groups, as the official code derives it: 2 * dn_number
    groups, unless that is >= 100, in which case ``dn_number`` is a query budget and the groups
    are 2 * dn_number // (2 * max_objects). At least 1; 1 when no image has objects."""
    groups = 2 * dn_number
    if max_objects == 0:
        return 1
    if groups >= 100:
        groups = groups // (2 * max_objects)
    return max(groups, 1)


def co_dino_num_dn_groups(num_dn_queries: int, max_objects: int) -> int:
    """Number of groups of Co-DINO's dynamic denoising: ``num_dn_queries // max_objects``, at
    least 1; 1 when no image has objects. Unlike ``num_dn_groups`` the number is a budget at
    every size (DINO reads a ``dn_number`` below 50 as a fixed 2 * dn_number groups); from 50 up
    the two rules agree."""
    if max_objects == 0:
        return 1
    return max(num_dn_queries // max_objects, 1)


def co_dino_dn_boxes(boxes: list[Tensor], image_sizes: list[tuple[int, int]]) -> Tensor:
    """Co-DINO's denoising input boxes: per image xyxy pixel boxes [n_i, 4] and its (h, w)
    ``img_shape``; converted to cxcywh first, then divided by [w, h, w, h] (this order, not
    the reverse, which can differ in the last bit). Returns all images' boxes [N, 4]."""
    out = [xyxy_to_cxcywh(b) / b.new_tensor([w, h, w, h]) for b, (h, w) in zip(boxes, image_sizes)]
    return torch.cat(out) if out else torch.zeros(0, 4)


def draw_dn_noise(labels: Tensor, boxes: Tensor, num_groups: int, num_classes: int,
                  label_noise_ratio: float, box_noise_scale: float) -> tuple[Tensor, Tensor]:
    """Noised copies of the batch's objects.

    labels [N] and boxes [N, 4] (normalized cxcywh) of all images concatenated. Returns labels
    [2 * G * N] and boxes [2 * G * N, 4] (cxcywh in [0, 1]) ordered group by group, each group
    the N positives then the N negatives. Random calls follow the official order, so a seeded
    generator state reproduces the official noise.
    """
    n = labels.shape[0]
    noised_labels = labels.repeat(2 * num_groups)
    clean = boxes.repeat(2 * num_groups, 1)
    if label_noise_ratio > 0:
        flip = rng.rand_like(noised_labels.float()) < label_noise_ratio * 0.5
        chosen = torch.nonzero(flip).view(-1)
        noised_labels = noised_labels.scatter(0, chosen, rng.randint_like(chosen, 0, num_classes))
    noised_boxes = clean
    if box_noise_scale > 0:
        half_wh = clean[:, 2:].repeat(1, 2) / 2                                  # [2GN, 4]
        sign = rng.randint_like(clean, 0, 2, dtype=torch.float32) * 2.0 - 1.0
        magnitude = rng.rand_like(clean)
        negative = (torch.arange(2 * num_groups * n, device=boxes.device) // n) % 2 == 1
        magnitude = magnitude + negative[:, None].to(magnitude.dtype)            # negatives in [1, 2)
        corners = cxcywh_to_xyxy(clean) + magnitude * sign * half_wh * box_noise_scale
        noised_boxes = xyxy_to_cxcywh(corners.clamp(min=0.0, max=1.0))
    return noised_labels, noised_boxes


def dn_attention_mask(single_pad: int, num_groups: int, num_queries: int, device: torch.device) -> Tensor:
    """[pad + Q, pad + Q] bool, True = may not attend. Matching queries see no denoising query
    (they would read the answer); denoising groups see only themselves and the matching queries."""
    pad = 2 * single_pad * num_groups
    group = torch.arange(pad, device=device) // max(2 * single_pad, 1)
    mask = torch.zeros(pad + num_queries, pad + num_queries, dtype=torch.bool, device=device)
    mask[:pad, :pad] = group[:, None] != group[None, :]
    mask[pad:, :pad] = True
    return mask


@dataclass
class DenoisingQueries:
    """Denoising part of the decoder input for one batch."""

    content: Tensor      # [B, pad, C]  label embeddings (zeros on padding)
    boxes: Tensor        # [B, pad, 4]  unsigmoided noised boxes (zeros on padding)
    attn_mask: Tensor    # [pad + Q, pad + Q] bool
    num_groups: int
    pad_size: int

    @property
    def single_pad(self) -> int:
        return self.pad_size // (2 * self.num_groups)


def build_dn_queries(counts: list[int], noised_labels: Tensor, noised_boxes: Tensor, label_enc: nn.Embedding,
                     num_groups: int, num_queries: int) -> DenoisingQueries:
    """Scatter the noised objects (``draw_dn_noise`` layout) of images with ``counts`` objects
    into padded per-image query slots: object j of image b, copy k (k even: positive of group
    k // 2, odd: its negative) goes to slot k * single_pad + j of image b."""
    B, single_pad = len(counts), max(counts, default=0)
    pad = 2 * single_pad * num_groups
    dim = label_enc.embedding_dim
    device = label_enc.weight.device
    content = label_enc.weight.new_zeros(B, pad, dim)
    boxes = label_enc.weight.new_zeros(B, pad, 4)
    if pad > 0 and sum(counts) > 0:
        image = torch.cat([torch.full((c,), b, dtype=torch.long) for b, c in enumerate(counts)])
        index = torch.cat([torch.arange(c) for c in counts])
        copies = torch.arange(2 * num_groups)
        image = image.repeat(2 * num_groups).to(device)
        slot = (index[None] + copies[:, None] * single_pad).flatten().to(device)
        content = content.index_put((image, slot), label_enc(noised_labels.long()))
        boxes = boxes.index_put((image, slot), inverse_sigmoid(noised_boxes, eps=1e-3))
    return DenoisingQueries(content, boxes, dn_attention_mask(single_pad, num_groups, num_queries, device),
                            num_groups, pad)


def dn_positive_indices(counts: list[int], num_groups: int, pad_size: int,
                        device: torch.device) -> list[tuple[Tensor, Tensor]]:
    """The fixed assignment of the denoising loss: per image (query index, target index) of
    every positive copy, group by group (no Hungarian matching: each copy knows its object)."""
    group_size = pad_size // num_groups
    out = []
    for c in counts:
        target = torch.arange(c, device=device).repeat(num_groups)
        query = target + (torch.arange(num_groups, device=device) * group_size).repeat_interleave(c)
        out.append((query, target))
    return out
