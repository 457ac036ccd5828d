from __future__ import annotations

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from codetr.data import CocoDetection, build_loader, collate, eval_transforms
from codetr.detector import InputSpec
from codetr.structures import Batch, Target


def _sample(h: int, w: int, n: int) -> tuple[torch.Tensor, Target]:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * n).reshape(-1, 4)
    return torch.ones(3, h, w), Target(boxes, torch.zeros(n, dtype=torch.int64), size=(h, w))


def test_collate_shapes_and_padding():
    batch = collate([_sample(5, 7, 2), _sample(6, 4, 0)])
    assert isinstance(batch, Batch) and batch.images.shape == (2, 3, 6, 7)
    assert batch.sizes.dtype == torch.int64 and batch.sizes.tolist() == [[5, 7], [6, 4]]
    assert batch.images[0, :, :5, :7].eq(1).all() and batch.images[0, :, 5:].eq(0).all()
    assert batch.images[1, :, :, 4:].eq(0).all() and batch.images[1, :, :, :4].eq(1).all()
    assert [len(t) for t in batch.targets] == [2, 0]
    assert collate([_sample(5, 7, 1)], size_divisibility=4).images.shape == (1, 3, 8, 8)


def _dataset(synth_root):
    return CocoDetection(synth_root["train_json"], synth_root["train_images"], transforms=eval_transforms(InputSpec(min_size=64, max_size=100)))


def test_build_loader_batches_and_seeded_shuffle(synth_root):
    ds = _dataset(synth_root)
    loader = build_loader(ds, batch_size=4, shuffle=True, num_workers=0, seed=5, size_divisibility=32)
    batch = next(iter(loader))
    assert batch.images.shape[0] == 4 and batch.images.shape[-1] % 32 == 0 and batch.images.shape[-2] % 32 == 0
    assert batch.sizes.min() == 64 and len(batch.targets) == 4

    def order(seed):
        return list(iter(build_loader(range(24), 24, True, 0, seed=seed, size_divisibility=1).batch_sampler))[0]

    assert order(5) == order(5) and order(5) != order(6) and sorted(order(5)) == list(range(24))
    assert build_loader(ds, 4, False, 2).persistent_workers
    assert len(build_loader(ds, 5, False, 0, drop_last=True)) == 4


def test_build_loader_distributed(synth_root, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        loader = build_loader(_dataset(synth_root), batch_size=3, shuffle=True, num_workers=0, seed=1,
                              distributed=True)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.seed == 1
        loader.sampler.set_epoch(0)
        first = list(loader.sampler)
        loader.sampler.set_epoch(1)
        assert sorted(first) == sorted(loader.sampler) and first != list(loader.sampler)
        assert len(next(iter(loader))) == 3
    finally:
        dist.destroy_process_group()
