"""Tiny stand-ins for the engine tests: a Detector that learns to regress its targets' boxes,
a dataset of rectangles with random augmentation (torch, python and numpy RNGs), a loader of
the same shape as ``codetr.data.loader.build_loader``, an oracle detector and a COCO gt."""
from __future__ import annotations

import contextlib
import io
import random

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools.coco import COCO
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from codetr.config import DataConfig, RunConfig, TrainConfig
from codetr.detector import Detector, LossOutput, pad_images
from codetr.structures import Batch, ClassInfo, Detections, Target

CATEGORY_IDS = [3, 7]  # non-contiguous on purpose
SIZE = 16


def toy_boxes(index: int, h: int = SIZE, w: int = SIZE) -> Tensor:
    """Two fixed xyxy boxes of image ``index``: [2, 4]."""
    g = torch.Generator().manual_seed(1000 + index)
    xy = torch.rand(2, 2, generator=g) * torch.tensor([w / 2, h / 2])
    wh = 3 + torch.rand(2, 2, generator=g) * torch.tensor([w / 2 - 3, h / 2 - 3])
    return torch.cat([xy, xy + wh], 1).round()


class ToyDataset(Dataset):
    """Image ``i``: its two boxes painted in channels 0 and 1, value ``i`` at pixel (2, 0, 0)
    (the oracle reads it); ``augment``: random flip (torch RNG), brightness (python RNG) and
    noise (numpy RNG)."""

    def __init__(self, n: int = 8, augment: bool = True) -> None:
        self.n, self.augment = n, augment

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[Tensor, Target]:
        boxes = toy_boxes(i)
        image = torch.zeros(3, SIZE, SIZE)
        for c, (x1, y1, x2, y2) in enumerate(boxes.long().tolist()):
            image[c, y1:y2, x1:x2] = 1.0
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
                boxes = torch.stack([SIZE - boxes[:, 2], boxes[:, 1], SIZE - boxes[:, 0], boxes[:, 3]], 1)
            image = image * (0.9 + 0.2 * random.random())
            image = image + torch.from_numpy(np.random.normal(0, 0.01, image.shape).astype(np.float32))
        image[2, 0, 0] = float(i)
        target = Target(boxes=boxes, labels=torch.tensor([0, 1]), image_id=i + 1,
                        orig_size=(SIZE, SIZE), size=(SIZE, SIZE))
        return image, target


def collate(samples) -> Batch:
    images = [im for im, _ in samples]
    sizes = torch.tensor([im.shape[-2:] for im in images], dtype=torch.int64)
    return Batch(pad_images(images), sizes, [t for _, t in samples])


def build_loader(dataset, batch_size, shuffle, num_workers, seed=0, drop_last=False, distributed=False):
    """Same contract as codetr.data.loader.build_loader."""
    sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last) if distributed else None
    return DataLoader(dataset, batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=num_workers, collate_fn=collate, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(seed))


class TinyDetector(Detector):
    """conv 'backbone' -> pooled features -> (dropout) -> two queries' boxes and logits.
    Query q predicts object q of the target (fixed matching)."""

    family = "tiny"

    def __init__(self, classes: ClassInfo, dropout: float = 0.1) -> None:
        super().__init__(classes)
        self.backbone = nn.Conv2d(3, 8, 3, padding=1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.box_head = nn.Linear(8 * 16, 2 * 4)
        self.class_head = nn.Linear(8 * 16, 2 * len(classes))
        self.frozen = nn.Parameter(torch.ones(1), requires_grad=False)
        self.config = {"dropout": dropout}

    def forward(self, images: Tensor, sizes: Tensor, targets: list[Target] | None = None) -> dict | LossOutput:
        feats = F.adaptive_avg_pool2d(self.backbone(images).relu(), 4).flatten(1)  # [B, 128]
        feats = self.dropout(feats)
        boxes = self.box_head(feats).sigmoid().view(-1, 2, 4)                     # [B, 2, 4] xyxy / size
        logits = self.class_head(feats).view(-1, 2, len(self.classes))           # [B, 2, C]
        if not self.training:
            return {"pred_boxes": boxes, "pred_logits": logits}
        scale = sizes.flip(1).repeat(1, 2)[:, None].float()                       # [B, 1, 4] (w h w h)
        gt = torch.stack([t.boxes for t in targets]) / scale
        labels = torch.stack([t.labels for t in targets])
        l1 = (boxes - gt).abs().mean()
        ce = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return LossOutput({"loss_bbox": 5 * l1, "loss_ce": ce}, {"l1": l1.detach()})

    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        probs = outputs["pred_logits"].softmax(-1)
        out = []
        for boxes, p, (h, w) in zip(outputs["pred_boxes"], probs, sizes.tolist()):
            scores, labels = p.max(-1)
            out.append(Detections(boxes * boxes.new_tensor([w, h, w, h]), scores, labels))
        return out


class OracleDetector(Detector):
    """Returns the ground truth of the image whose index is written at pixel (2, 0, 0)."""

    family = "oracle"

    def __init__(self, classes: ClassInfo, with_masks: bool = False, empty: bool = False) -> None:
        super().__init__(classes)
        self.dummy = nn.Parameter(torch.zeros(1))
        self.with_masks, self.empty = with_masks, empty

    def forward(self, images: Tensor, sizes: Tensor, targets=None) -> dict:
        return {"index": images[:, 2, 0, 0].round().long()}

    def postprocess(self, outputs: dict, sizes: Tensor) -> list[Detections]:
        out = []
        for i in outputs["index"].tolist():
            boxes = toy_boxes(i)[: 0 if self.empty else 2]
            masks = box_masks(boxes) if self.with_masks else None
            out.append(Detections(boxes, torch.ones(len(boxes)), torch.tensor([0, 1])[: len(boxes)], masks))
        return out


def box_masks(boxes: Tensor) -> Tensor:
    masks = torch.zeros(len(boxes), SIZE, SIZE, dtype=torch.bool)
    for m, (x1, y1, x2, y2) in zip(masks, boxes.long().tolist()):
        m[y1:y2, x1:x2] = True
    return masks


def toy_coco(n: int) -> COCO:
    """COCO ground truth of ToyDataset(n) (unaugmented), with rectangle polygons."""
    images, anns = [], []
    for i in range(n):
        images.append({"id": i + 1, "height": SIZE, "width": SIZE, "file_name": f"{i}.png"})
        for label, (x1, y1, x2, y2) in enumerate(toy_boxes(i).tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": CATEGORY_IDS[label],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0,
                         "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": c, "name": f"c{c}"} for c in CATEGORY_IDS]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def classes() -> ClassInfo:
    return ClassInfo(list(CATEGORY_IDS), ["three", "seven"])


def run_config(out_dir, **train) -> RunConfig:
    base = dict(epochs=3, batch_size=2, lr=1e-2, lr_drop=2, warmup_iters=2, clip_max_norm=1.0,
                checkpoint_every_iters=2, log_every=2, eval_every=1, seed=5, device="cpu")
    return RunConfig(model="tiny_test", data=DataConfig(num_workers=0),
                     train=TrainConfig(**{**base, **train}), out_dir=str(out_dir))
