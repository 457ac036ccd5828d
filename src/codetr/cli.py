"""The ``codetr`` command line: demo, train, plot, eval, predict, convert, data (synth, check, show, import), models."""
from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """examples:
  codetr demo                                   # synthetic data -> train tiny model -> AP -> drawings
  codetr data synth data/shapes --train 1000 --val 200
  codetr train deformable_detr_tiny --data data/shapes --out runs/tiny --set train.epochs=12
  codetr train --config runs/tiny/config.json --set train.lr=1e-4   # a saved run's settings, one changed
  codetr plot runs/tiny                         # runs/tiny/curves.png: loss and AP curves
  codetr eval runs/tiny/last.ckpt --data data/shapes
  codetr data check data/shapes                 # counts, box sizes, problems
  codetr data import yolo datasets/coco8/images/train coco8_train.json
  codetr predict runs/tiny/last.ckpt data/shapes/val --out preds/
  codetr predict runs/tiny/last.ckpt clip.mp4 "photos/**/*.jpg" --out preds/ --device cpu
  codetr convert deformable_detr r50_deformable_detr-checkpoint.pth ddetr.ckpt
  codetr convert yolact yolact_base_54_800000.pth yolact.ckpt --config yolact_cfg.json
  torchrun --nproc_per_node 2 -m codetr train deformable_detr_tiny --data data/shapes
"""


CONFIG_HELP = ("run config file, JSON or YAML (YAML needs PyYAML): any --set key as nested keys, e.g. "
               "{\"train\": {\"epochs\": 24}}; a run folder's config.json repeats that run's settings. "
               "--data, --out and --set override it")
DEVICE_HELP = "auto (default: the GPU when torch sees one, else the CPU), cpu, cuda, cuda:1, mps"
AMP_HELP = ("the network pass in mixed precision: none (default, float32), bf16, fp16, or auto (bf16 where the "
            "device has bf16 units: recent GPUs, CPUs with AVX512-BF16 or AMX); post-processing stays float32")
PROCS_HELP = ("CPU training in this many single-threaded DDP processes (gloo); train.batch_size is per process "
              "(default: the recipe's train.procs, at most one per core). For GPUs use torchrun")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codetr", description="Modern object detectors in plain PyTorch.",
                                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_training_commands(sub)
    _add_model_commands(sub)
    _add_export_command(sub)
    ds = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    s = ds.add_parser("synth", help="write a synthetic COCO-format shapes dataset")
    s.add_argument("out")
    s.add_argument("--train", type=int, default=1000)
    s.add_argument("--val", type=int, default=200)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    _add_data_tools(ds)
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
    t.add_argument("model", nargs="?", default=None, help="zoo model name (see `codetr models`; default: the "
                                                        "--config file's 'model')")
    t.add_argument("--data", default=None, help="COCO-style root: annotations/instances_{train,val}.json, train/, "
                                                "val/ (default: the --config file's data settings)")
    t.add_argument("--config", default=None, metavar="FILE", help=CONFIG_HELP)
    t.add_argument("--out", default=None, help="run folder (default runs/<model>, or runs/<model>-N when that "
                                               "holds a run; with --resume the latest of them); a folder "
                                               "that holds a run is refused unless --resume")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides: train.epochs=24 train.lr=1e-4 data.train_scales=[96,128] ...")
    t.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from a checkpoint (default: <out>/last.ckpt)")
    t.add_argument("--init-from", default=None, metavar="CKPT",
                   help="fine-tune: start from a codetr checkpoint of the same family (a run's, or a `codetr "
                        "convert` output) trained on other classes (sets train.init_from)")
    t.add_argument("--procs", type=int, default=None, help=PROCS_HELP)

    pl = sub.add_parser("plot", help="draw a run folder's loss and AP curves (from its metrics.jsonl) as a PNG")
    pl.add_argument("run_dir", metavar="RUN_DIR", help="run folder (holds metrics.jsonl)")
    pl.add_argument("--out", default=None, metavar="PNG", help="PNG to write (default: RUN_DIR/curves.png, "
                                                              "redrawn; needs matplotlib)")
    pl.add_argument("--force", action="store_true", help="overwrite an existing --out")


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    from .registry import cli_names

    e = sub.add_parser("eval", help="COCO AP of a checkpoint on a dataset's val split")
    e.add_argument("checkpoint")
    e.add_argument("--data", default=None, help="COCO-style root: annotations/instances_val.json and val/")
    e.add_argument("--config", default=None, metavar="FILE", help="a run config file (JSON / YAML, e.g. a run's "
                   "config.json) whose data.* settings name the val split; other settings are unused")
    e.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="data overrides, e.g. "
                   "data.val_ann=ann.json data.val_images=imgs/ (after --config)")
    e.add_argument("--batch-size", type=int, default=4)
    e.add_argument("--device", default="auto", help=DEVICE_HELP)
    e.add_argument("--amp", default="none", choices=["none", "bf16", "fp16", "auto"], help=AMP_HELP)
    e.add_argument("--results", default=None, help="also write the COCO results json here")
    e.add_argument("--plot", default=None, metavar="PNG", help="precision-recall plot at IoU 0.5, per class and "
                   "all (default: pr_curve.png beside the checkpoint; needs matplotlib)")
    e.add_argument("--force", action="store_true", help="overwrite existing --results / --plot files")

    pr = sub.add_parser("predict", help="detect objects in images and videos; write predictions.json and drawings")
    pr.add_argument("checkpoint")
    pr.add_argument("inputs", nargs="+", help="image or video (.mp4 .avi .mov .mkv .webm; pip install "
                    "\"codetr[video]\") files, folders of them, or quoted glob patterns such as "
                    "'data/*/val/*.jpg' ('**': any depth). A video gives <out>/<name>.mp4 drawn and "
                    "<out>/<name>.json with per-frame detections")
    pr.add_argument("--out", default="predictions", help="output folder (default %(default)s)")
    pr.add_argument("--force", action="store_true", help="write into an --out folder that is not empty")
    pr.add_argument("--score-threshold", type=float, default=0.3)
    pr.add_argument("--batch-size", type=int, default=4, help="images or frames per forward pass (default %(default)s)")
    pr.add_argument("--device", default="auto", help=DEVICE_HELP)
    pr.add_argument("--amp", default="none", choices=["none", "bf16", "fp16", "auto"], help=AMP_HELP)

    c = sub.add_parser("convert", help="official checkpoint -> codetr checkpoint")
    c.add_argument("family", help=", ".join(cli_names()))
    c.add_argument("input", help="official checkpoint (.pth)")
    c.add_argument("output", help="codetr checkpoint to write")
    c.add_argument("--config", default=None, help="official config: JSON of official values, or an mmcv .py file "
                   "(Co-DETR, mmdet), if the checkpoint carries none")
    c.add_argument("--ema", action="store_true", help="DINO: convert the EMA weights ('ema_model')")


def _add_export_command(sub: argparse._SubParsersAction) -> None:
    from .export import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    x = sub.add_parser("export", help="codetr checkpoint -> ONNX graph (decoded predictions before top-k / NMS), "
                                      "checked in onnxruntime")
    x.add_argument("checkpoint")
    x.add_argument("output", metavar="OUT.onnx")
    x.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET}-{MAX_OPSET} (default %(default)s)")
    x.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input height and width the graph is traced at, and of a --static graph (default: the "
                        "model's InputSpec min_size x max_size; YOLACT: its max_size square)")
    shapes = x.add_mutually_exclusive_group()
    shapes.add_argument("--dynamic", dest="dynamic", action="store_true", default=True,
                        help="batch, height and width vary where the family allows (default)")
    shapes.add_argument("--static", dest="dynamic", action="store_false",
                        help="one image of --size")
    x.add_argument("--force", action="store_true", help="overwrite an existing OUT.onnx")


def _add_data_tools(ds: argparse._SubParsersAction) -> None:
    ck = ds.add_parser("check", help="counts per split and class, box sizes, and the problems of a COCO-format "
                                     "dataset (exit code 1 when there are problems)")
    ck.add_argument("source", metavar="DIR_OR_JSON", help="dataset root (annotations/instances_<split>.json, "
                                                          "<split>/) or one annotation json")
    ck.add_argument("--images", default=None, help="image folder of a json (default: <root>/<split>, else the "
                                                   "json's folder)")
    ck.add_argument("--no-decode", action="store_true", help="do not read the images (faster; no check of "
                                                             "missing, corrupt or resized images)")

    sh = ds.add_parser("show", help="draw the ground truth of a COCO-format dataset on its images")
    sh.add_argument("source", metavar="DIR_OR_JSON", help="dataset root or one annotation json")
    sh.add_argument("--out", required=True, help="folder for the drawn images (<out>/<split>/...)")
    sh.add_argument("--num", type=int, default=16, help="images per split (default %(default)s)")
    sh.add_argument("--images", default=None, help="image folder of a json")
    sh.add_argument("--force", action="store_true", help="draw into an --out folder that is not empty")

    im = ds.add_parser("import", help="YOLO-txt or Pascal VOC dataset -> a COCO-format json")
    im.add_argument("format", choices=["yolo", "voc"])
    im.add_argument("src", help="yolo: a folder of images/ and labels/ (or an images/<split> folder); "
                                "voc: a folder with Annotations/ and JPEGImages/")
    im.add_argument("out", help="COCO json to write")
    im.add_argument("--classes", default=None, help="class names: a YOLO data.yaml or a text file, one name a "
                                                    "line (default yolo: data.yaml or classes.txt in SRC or "
                                                    "its two parents; voc: the names found, sorted)")
    im.add_argument("--split", default=None, help="voc: only the ids of ImageSets/Main/<split>.txt")
    im.add_argument("--force", action="store_true", help="overwrite an existing OUT")


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
