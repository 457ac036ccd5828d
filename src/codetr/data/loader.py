"""Batching: ``collate`` pads (image, Target) samples into a ``Batch``; ``build_loader`` makes
the DataLoader (seeded shuffling, or a ``DistributedSampler`` whose ``set_epoch`` the caller
calls each epoch)."""
from __future__ import annotations

from functools import partial
from typing import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..detector import pad_images
from ..structures import Batch, Target


def collate(samples: Sequence[tuple[Tensor, Target]], size_divisibility: int = 1) -> Batch:
    """[(image [3, h_i, w_i], Target)] -> Batch: images [B, 3, H, W] zero padded at
    bottom/right (H, W multiples of ``size_divisibility``), sizes [B, 2] int64 valid (h, w)."""
    if not samples:
        raise ValueError("collate: empty list of samples")
    images = [image for image, _ in samples]
    sizes = torch.tensor([[int(im.shape[-2]), int(im.shape[-1])] for im in images], dtype=torch.int64)
    return Batch(pad_images(images, size_divisibility), sizes, [target for _, target in samples])


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int = 0,
                 drop_last: bool = False, distributed: bool = False, size_divisibility: int = 1) -> DataLoader:
    """DataLoader of ``Batch``es. Not distributed: shuffling (and the workers' base seed, hence
    the random augmentations) follow a ``torch.Generator`` seeded with ``seed``. Distributed:
    a ``DistributedSampler(shuffle, seed, drop_last)``; call ``loader.sampler.set_epoch(epoch)``
    before each epoch. Workers persist across epochs when ``num_workers > 0``."""
    generator = torch.Generator().manual_seed(seed)
    sampler = None
    if distributed:
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False  # the sampler shuffles
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=partial(collate, size_divisibility=size_divisibility),
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )
