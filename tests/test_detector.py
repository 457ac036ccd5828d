"""What the Detector base class gives every family: full-precision losses under autocast, and
the train-mode loss contract (``LossOutput``)."""
import pytest
import torch
from torch import nn

from codetr.detector import Detector, LossOutput, as_float32
from codetr.structures import ClassInfo


class Linear(Detector):
    def __init__(self):
        super().__init__(ClassInfo.anonymous(2))
        self.layer = nn.Linear(4, 2)


def test_float32_loss_runs_the_criterion_in_full_precision():
    model, seen = Linear(), {}

    def criterion(outputs, targets):
        seen.update(dtypes=[outputs["logits"].dtype, outputs["aux"][0].dtype, targets["labels"].dtype],
                    autocast=torch.is_autocast_enabled("cpu"), product=(outputs["logits"] @ outputs["logits"].T).dtype)
        return {"loss": outputs["logits"].square().sum()}

    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.layer(torch.randn(3, 4))
        assert logits.dtype == torch.bfloat16
        losses = model.float32_loss(criterion, {"logits": logits, "aux": [logits]}, {"labels": torch.tensor([1])})
    assert seen == {"dtypes": [torch.float32, torch.float32, torch.int64], "autocast": False,
                    "product": torch.float32}
    losses["loss"].backward()  # the gradient flows back through the cast
    assert model.layer.weight.grad is not None and model.layer.weight.grad.dtype == torch.float32


def test_as_float32_keeps_structure_and_other_leaves():
    tree = {"a": (torch.ones(1, dtype=torch.float16), 3), "b": [torch.ones(1, dtype=torch.float64), "x"]}
    out = as_float32(tree)
    assert out["a"][0].dtype == torch.float32 and out["a"][1] == 3 and isinstance(out["a"], tuple)
    assert out["b"][0].dtype == torch.float64 and out["b"][1] == "x"


def test_loss_output_weighs_named_terms_and_logs_the_rest():
    x = torch.tensor(2.0, requires_grad=True)
    out = LossOutput.weigh({"loss_a": x * 1, "loss_b": x * 3, "loss_xy": x * 5, "error": x * 7},
                           {"loss_a": 2.0, "loss_b": 0.5})
    assert out.losses == {"loss_a": 4.0, "loss_b": 3.0} and out.logs == {"loss_xy": 10.0, "error": 14.0}
    assert not any(v.requires_grad for v in out.logs.values())  # logs never reach the backward
    out.total().backward()
    assert out.total() == 7.0 and x.grad == 2.0 + 1.5
    with pytest.raises(KeyError, match="loss_c"):
        LossOutput.weigh({"loss_a": x}, {"loss_a": 1.0, "loss_c": 1.0})
