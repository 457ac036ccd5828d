"""Fine-tuning: a model that starts from the weights of a checkpoint trained on other classes
(``train.init_from``, ``codetr train MODEL --init-from CKPT``).

Every weight whose name and shape match is loaded. The class-dependent layers the family declares
(``Detector.class_layers``) keep the model's fresh initialisation when the class sets differ; the
rows of each class both name (case-insensitive) are copied from the checkpoint, and so are the rows
of no class (background, objectness) when the two have as many. Weights whose shapes differ
otherwise are skipped, and ``InitReport`` lists them with the names only one side has.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..api import model_from_state
from ..detector import ClassLayout, Detector
from ..structures import ClassInfo
from .checkpoint import CheckpointError, load_checkpoint

SHOWN = 30  # names listed per line of the table


@dataclass
class InitReport:
    """What ``init_from`` did, by state-dict name. ``carried``: the classes whose rows were
    copied, as (checkpoint name, category id, model name, category id); ``skipped``: (name,
    checkpoint shape, model shape)."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialised: list[str] = field(default_factory=list)
    carried: list[tuple[str, int, str, int]] = field(default_factory=list)
    skipped: list[tuple[str, list[int], list[int]]] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)   # in the checkpoint, not in the model
    missing: list[str] = field(default_factory=list)      # in the model, not in the checkpoint

    @property
    def complete(self) -> bool:
        """Whether every weight of each side found its counterpart (nothing skipped or missing)."""
        return not (self.skipped or self.unexpected or self.missing)

    def table(self) -> str:
        """The report, one line per kind."""
        lines = [f"init from {self.source}: loaded {len(self.loaded)} tensors",
                 f"  re-initialised (class layers): {_listing(self.reinitialised, 'none (the same classes)')}"]
        if self.reinitialised:
            carried = [f"{a} -> {b} (id {i} -> {j})" for a, i, b, j in self.carried]
            lines.append(f"  carried rows: {_listing(carried, 'none (no class name in common)')}")
        skipped = [f"{name} {theirs} -> {mine}" for name, theirs, mine in self.skipped]
        lines += [f"  skipped (shape mismatch): {_listing(skipped)}",
                  f"  not in the model (ignored): {_listing(self.unexpected)}",
                  f"  not in the checkpoint (fresh init): {_listing(self.missing)}"]
        return "\n".join(lines)


def _listing(names: list[str], empty: str = "none") -> str:
    if not names:
        return empty
    more = f", ... ({len(names)} in all)" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def init_from(model: Detector, checkpoint_path: str | Path) -> InitReport:
    """Initialise ``model`` from the codetr checkpoint at ``checkpoint_path`` (a run's, or one
    written by ``codetr convert``) of the same family, as the module docstring says. Raises
    FileNotFoundError / CheckpointError naming the file when it cannot be read or holds another
    family."""
    source = f"checkpoint {str(checkpoint_path)!r}"
    state = load_checkpoint(checkpoint_path, family=model.family)
    with torch.device("meta"):  # the checkpoint's model, for its class layers: no memory, no init
        donor = model_from_state(state, source)
    weights = state["model"]
    if not isinstance(weights, dict) or not all(isinstance(v, Tensor) for v in weights.values()):
        raise CheckpointError(f"{source}: 'model' must be a state dict of tensors")
    report = InitReport(source)
    own = model.state_dict()
    pairs = class_pairs(donor.classes, model.classes)
    same = [_key(n) for n in donor.classes.names] == [_key(n) for n in model.classes.names]
    new = _new_weights(own, weights, model.class_layers(), donor.class_layers(), pairs, same, report)
    if report.reinitialised:
        report.carried = [(donor.classes.names[d], donor.classes.category_ids[d],
                           model.classes.names[m], model.classes.category_ids[m]) for d, m in pairs]
    report.unexpected = [name for name in weights if name not in own]
    model.load_state_dict(new, strict=False)
    return report


def _new_weights(own: dict[str, Tensor], weights: dict[str, Tensor], layouts: dict[str, ClassLayout],
                 donor_layouts: dict[str, ClassLayout], pairs: list[tuple[int, int]], same_classes: bool,
                 report: InitReport) -> dict[str, Tensor]:
    """The tensors to load into the model (state dict ``own``) from the checkpoint's
    ``weights``: class layers re-initialised with the rows of ``pairs`` carried, unless the
    ``same_classes`` in the same layout. Fills ``report``'s lists but ``unexpected``."""
    new = {}
    for name, mine in own.items():
        theirs, layout = weights.get(name), layouts.get(name)
        if theirs is None:
            report.missing.append(name)
        elif layout is None or (same_classes and layout == donor_layouts.get(name)):
            if theirs.shape == mine.shape:
                new[name] = theirs
                report.loaded.append(name)
            else:
                report.skipped.append((name, list(theirs.shape), list(mine.shape)))
        elif not _same_beside(theirs, mine, layout.dim):
            report.skipped.append((name, list(theirs.shape), list(mine.shape)))
        else:
            new[name] = carry_rows(mine, theirs, layout, donor_layouts.get(name), pairs)
            report.reinitialised.append(name)
    return new


def _same_beside(a: Tensor, b: Tensor, dim: int) -> bool:
    """Whether ``a`` and ``b`` have the same shape but along ``dim``."""
    return a.dim() == b.dim() and all(x == y for i, (x, y) in enumerate(zip(a.shape, b.shape)) if i != dim)


def class_pairs(donor: ClassInfo, mine: ClassInfo) -> list[tuple[int, int]]:
    """(checkpoint label, model label) of each model class whose name (stripped, case-insensitive)
    a checkpoint class has (its first); unnamed classes match nothing."""
    first: dict[str, int] = {}
    for label, name in enumerate(donor.names):
        first.setdefault(_key(name), label)
    return [(first[_key(name)], label) for label, name in enumerate(mine.names) if _key(name) and _key(name) in first]


def _key(name: str) -> str:
    return name.strip().casefold()


def carry_rows(fresh: Tensor, theirs: Tensor, mine: ClassLayout, donor: ClassLayout | None,
               pairs: list[tuple[int, int]]) -> Tensor:
    """``fresh`` (the model's own init) with the checkpoint's rows (``theirs``, laid out as
    ``donor``) of every (checkpoint label, model label) pair copied in, and the rows of no class
    whose counts agree; only ``fresh`` when the layouts do not fit each other or the tensor."""
    out = fresh.clone()
    if donor is None or theirs.shape[donor.dim] != donor.size or \
            (donor.groups, donor.per_class, donor.dim) != (mine.groups, mine.per_class, mine.dim):
        return out
    src, dst = [], []
    for d, m in pairs:
        if d < donor.classes and m < mine.classes:  # a layout of no class rows (objectness) has none
            src += donor.class_rows(d)
            dst += mine.class_rows(m)
    for theirs_rows, my_rows in zip(donor.other_rows(), mine.other_rows()):
        if len(theirs_rows) == len(my_rows):
            src, dst = src + theirs_rows, dst + my_rows
    if dst:
        rows = theirs.index_select(mine.dim, torch.tensor(src)).to(out.dtype)
        out.index_copy_(mine.dim, torch.tensor(dst), rows)
    return out
