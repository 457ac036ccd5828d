"""Fixtures of the codetr.data tests: a hand-written COCO json and a small synthetic set."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codetr.data import write_synthetic_coco

from coco_samples import coco_dict, write_coco


@pytest.fixture
def tiny_coco(tmp_path: Path) -> tuple[Path, Path]:
    return write_coco(tmp_path, coco_dict())


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_coco(tmp_path_factory.mktemp("synth"), num_train=24, num_val=6, image_size=96, seed=3)


@pytest.fixture(autouse=True)
def single_thread():
    """The data tests use tiny tensors, where intra-op threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
