"""Deformable DETR under DDP: 2 CPU processes (gloo) train a few iterations through the CLI's
run() and evaluate; the loss normaliser is the box count averaged across ranks."""
import json
import os
from dataclasses import replace

import pytest
import torch

from tests.processes import free_port, run_processes


def _worker(rank: int, port: int, data_dir: str, out_dir: str) -> None:
    from codetr.commands import run
    from codetr.config import apply_overrides
    from codetr import distributed as du
    from codetr.detr import criterion
    from codetr.recipes import recipe

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    normalisers = []  # (normaliser, this rank's box count) per criterion call
    original = criterion.box_normaliser

    def recording(targets):
        value = original(targets)
        normalisers.append((value, sum(len(t["labels"]) for t in targets)))
        return value

    criterion.box_normaliser = recording
    try:
        cfg = replace(recipe("deformable_detr_tiny"), out_dir=out_dir)
        cfg = apply_overrides(cfg, [f"data.path={data_dir}", "train.epochs=1", "train.eval_every=1",
                                    "train.batch_size=2", "data.num_workers=0", "data.train_scales=[64]",
                                    "data.max_size=80", "model_args.input_spec.min_size=64",
                                    "model_args.input_spec.max_size=80",
                                    "model_args.hidden_dim=64", "model_args.enc_layers=1",
                                    "model_args.dec_layers=2", "model_args.ffn_dim=64", "model_args.num_queries=10"])
        trainer = run(cfg)
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        buffers = torch.cat([b.detach().flatten().double() for b in trainer.model.buffers()])
        gathered = du.all_gather_object((weights, normalisers, buffers))
        if du.is_main():
            summary = {"weights_equal": torch.equal(gathered[0][0], gathered[1][0]),
                       "buffers_equal": torch.equal(gathered[0][2], gathered[1][2]),
                       "normalisers": [g[1] for g in gathered], "metrics": trainer.last_metrics,
                       "steps": trainer.global_step}
            with open(os.path.join(out_dir, "summary.json"), "w") as f:
                json.dump(summary, f)
    finally:
        du.cleanup()


def test_two_process_training_and_evaluation(tmp_path):
    from codetr.data.synth import write_synthetic_coco
    write_synthetic_coco(tmp_path / "data", num_train=8, num_val=4, image_size=64, seed=3)
    run_processes(_worker, (free_port(), str(tmp_path / "data"), str(tmp_path / "run")))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # gradients all-reduced in bfloat16 (the recipe's amp=auto on a bf16 CPU) still leave
    # every rank the same weights; BatchNorm statistics are rank 0's once saved
    assert summary["steps"] == 2 and summary["weights_equal"] and summary["buffers_equal"]
    assert {"AP", "AP50"} <= set(summary["metrics"])
    # every step's normaliser is the mean over ranks of that step's box counts
    for (n0, c0), (n1, c1) in zip(*summary["normalisers"]):
        assert n0 == n1 == pytest.approx(max((c0 + c1) / 2, 1.0))
