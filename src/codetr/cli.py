"""The ``codetr`` command line: demo, train, eval, predict, convert, data synth, models."""
from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """examples:
  codetr demo                                   # synthetic data -> train tiny model -> AP -> drawings
  codetr data synth data/shapes --train 1000 --val 200
  codetr train deformable_detr_tiny --data data/shapes --out runs/tiny --set train.epochs=12
  codetr eval runs/tiny/last.ckpt --data data/shapes
  codetr predict runs/tiny/last.ckpt data/shapes/val --out preds/
  codetr convert deformable_detr r50_deformable_detr-checkpoint.pth ddetr.ckpt
  codetr convert yolact yolact_base_54_800000.pth yolact.ckpt --config yolact_cfg.json
  torchrun --nproc_per_node 2 -m codetr train deformable_detr_tiny --data data/shapes
"""


PROCS_HELP = ("CPU training in this many single-threaded DDP processes (gloo); train.batch_size is per process "
              "(default: the recipe's train.procs, at most one per core). For GPUs use torchrun")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codetr", description="Modern object detectors in plain PyTorch.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(sub)
    _add_model_commands(sub)
    ds = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = ds.add_parser("synth", help="write a synthetic COCO-format shapes dataset")
    s.add_argument("out")
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    sub.add_parser("models", help="list the zoo's model names")
    return p


def _add_training_commands(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="make a synthetic dataset, train the tiny model, print COCO AP, draw predictions")
    d.add_argument("--out", default=None, help="output folder (data, checkpoints, drawings; default runs/demo, "
                                               "or runs/demo-N when that holds a run)")
    d.add_argument("--model", default="dino_tiny", help="zoo model to train (default: %(default)s)")
    d.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.epochs=4")
    d.add_argument("--train-images", type=int, default=1000, help="synthetic train images (default %(default)s)")
    d.add_argument("--val-images", type=int, default=200, help="synthetic val images (default %(default)s)")
    d.add_argument("--procs", type=int, default=None, help=PROCS_HELP)

    t = sub.add_parser("train", help="train a zoo model on a COCO-format dataset")
    t.add_argument("model", help="zoo model name (see `codetr models`)")
    t.add_argument("--data", required=True, help="COCO-style root: annotations/instances_{train,val}.json, train/, val/")
    t.add_argument("--out", default=None, help="run folder (default runs/<model>, or runs/<model>-N when that "
                                               "holds a run; with --resume the latest of them); a folder "
                                               "that holds a run is refused unless --resume")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides: train.epochs=24 train.lr=1e-4 data.train_scales=[96,128] ...")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (default: <out>/last.ckpt)")
    t.add_argument("--procs", type=int, default=None, help=PROCS_HELP)


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    from .registry import cli_names

    e = sub.add_parser("eval", help="COCO AP of a checkpoint on a dataset's val split")
    e.add_argument("checkpoint")
    e.add_argument("--data", required=True, help="COCO-style root: annotations/instances_val.json and val/")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--results", default=None, help="also write the COCO results json here")

    pr = sub.add_parser("predict", help="detect objects in images; write predictions.json and drawn images")
    pr.add_argument("checkpoint")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", default="predictions", help="output folder")
    pr.add_argument("--score-threshold", type=float, default=0.3)

    c = sub.add_parser("convert", help="official checkpoint -> codetr checkpoint")
    c.add_argument("family", help=", ".join(cli_names()))
    c.add_argument("input", help="official checkpoint (.pth)")
    c.add_argument("output", help="codetr checkpoint to write")
    c.add_argument("--config", default=None, help="JSON of official config values, if the file carries none")
    c.add_argument("--ema", action="store_true", help="DINO: convert the EMA weights ('ema_model')")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from . import commands
    try:
        return getattr(commands, args.command)(args) or 0
    except commands.USER_ERRORS as e:
        logging.getLogger("codetr").error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
