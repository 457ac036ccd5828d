import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GOLDEN_DIRS = [Path(os.environ["CODETR_GOLDEN"])] if os.environ.get("CODETR_GOLDEN") else []
GOLDEN_DIRS.append(REPO.parent / "shared" / "golden")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


def golden(relpath: str) -> dict:
    """Load a fixture of ../shared/golden (or $CODETR_GOLDEN). Missing fixtures fail under CI
    (CI=true) and skip elsewhere, naming where they were looked for."""
    for d in GOLDEN_DIRS:
        if (d / relpath).is_file():
            return torch.load(d / relpath, weights_only=True)
    where = ", ".join(str(d / relpath) for d in GOLDEN_DIRS)
    if os.environ.get("CI"):
        pytest.fail(f"golden fixture missing under CI; looked in: {where}")
    pytest.skip(f"golden fixture not found; looked in: {where} (set CODETR_GOLDEN)")
