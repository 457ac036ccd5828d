"""Two CPU processes (gloo) train through train() with DistributedDataParallel and evaluate;
the metrics of ranks that log different keys."""
import json
import math
import os
from pathlib import Path

import pytest
import torch

from codetr import distributed as du
from tests.processes import free_port, run_processes


def test_single_process_helpers():
    assert not du.init_distributed() and du.world_size() == 1 and du.is_main()
    assert du.all_gather_object({"a": 1}) == [{"a": 1}]
    assert torch.equal(du.all_reduce_mean(torch.tensor([2.0])), torch.tensor([2.0]))
    assert du.mean_count_over_ranks(torch.tensor(3)) == 3.0 and du.mean_count_over_ranks(0) == 1.0
    assert du.nanmean_over_ranks(torch.tensor([1.0, math.nan])).isnan().tolist() == [False, True]
    du.barrier()
    du.cleanup()


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    from codetr.engine.evaluate import collect_results, evaluate
    from codetr.engine.trainer import train, unwrap

    from .fakes import OracleDetector, TinyDetector, classes, run_config
    from .test_trainer import ToyCocoDataset

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        cfg = run_config(out_dir, epochs=2, checkpoint_every_iters=0, log_every=1)
        torch.manual_seed(rank)  # different inits: DDP must broadcast rank 0's weights
        trainer = train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), ToyCocoDataset(5, False))
        assert du.world_size() == 2 and trainer.model is not unwrap(trainer.model)
        val_loader = trainer.val_loader  # DistributedSampler: 3 images per rank, one repeated
        _, image_ids = collect_results(trainer.model, val_loader, classes())
        oracle = evaluate(OracleDetector(classes()), val_loader, ToyCocoDataset(5, False).coco, classes())
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        summary = {"image_ids": image_ids, "oracle": oracle, "steps": trainer.global_step,
                   "weights_equal": all(torch.equal(w, weights) for w in du.all_gather_object(weights)),
                   "mean_rank": du.all_reduce_mean(torch.tensor([float(rank)])).item(), "best": trainer.best}
        # stopped after 3 iterations (mid-epoch 1), then resumed: same losses on every rank
        for max_iters, resume in ((3, None), (None, "auto")):
            cfg = run_config(Path(out_dir, "b"), epochs=2, checkpoint_every_iters=0, log_every=1,
                             max_iters=max_iters, eval_every=0)
            torch.manual_seed(rank)
            train(cfg, TinyDetector(classes()), ToyCocoDataset(8, True), resume=resume)
        if du.is_main():
            Path(out_dir, "summary.json").write_text(json.dumps(summary))
    finally:
        du.cleanup()


def test_ddp_two_cpu_processes(tmp_path):
    run_processes(_worker, (2, free_port(), str(tmp_path)), timeout_s=120)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 4  # 8 images / 2 ranks / batch 2 = 2 per epoch, 2 epochs
    assert summary["image_ids"] == [1, 2, 3, 4, 5]  # gathered from both ranks, repeat dropped
    assert summary["oracle"]["AP"] == pytest.approx(1.0)
    assert summary["weights_equal"] and summary["mean_rank"] == 0.5
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [1, 2, 3, 4]  # rank 0 writes once
    assert [r["epoch"] for r in records if r["type"] == "eval"] == [0, 1]
    assert (tmp_path / "last.ckpt").is_file() and "AP" in summary["best"]
    resumed = [json.loads(line) for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in records if r["type"] == "train"]


def _flush_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """MetricsLogger.flush on two ranks that log different keys (rank 0 ``a_rank0``, rank 1
    ``z_rank1``) and a shared ``loss``."""
    from types import SimpleNamespace

    from codetr.engine.trainer import MetricsLogger

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    du.init_distributed()
    try:
        records: list[dict] = []
        logger = MetricsLogger()
        logger.trainer = SimpleNamespace(global_step=2, epoch=0, iter=2, lr=0.1, total_iters=4, log=records.append)
        logger.before_train()
        only = {"a_rank0": 1.0} if rank == 0 else {"z_rank1": 3.0}
        logger.window = [{"loss": 1.0 + rank, **only}, {"loss": 2.0 + rank, **only}]
        logger.flush()
        logger.bar.close()
        if du.is_main():
            Path(out_dir, "record.json").write_text(json.dumps(records[0]))
    finally:
        du.cleanup()


def test_ranks_logging_different_keys_do_not_mix(tmp_path):
    """Each key is averaged over the ranks that logged it, whatever the other ranks log."""
    run_processes(_flush_worker, (2, free_port(), str(tmp_path)), timeout_s=60)
    record = json.loads((tmp_path / "record.json").read_text())
    assert (record["a_rank0"], record["z_rank1"], record["loss"]) == (1.0, 3.0, 2.0)
