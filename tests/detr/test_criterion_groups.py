"""The DETR set loss as a sum over output groups: each group brings its assignment, normaliser
and class loss (as Co-DETR's auxiliary groups will)."""
import torch

from codetr.assign import HungarianMatcher
from codetr.detr.criterion import (FocalClassLoss, LossGroup, Matched, SetCriterion, fixed_assignment,
                                   loss_weights)
from codetr.losses import sigmoid_focal_loss

TARGETS = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])},
           {"labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]


def outputs(num_queries=3, num_classes=4):
    boxes = torch.full((2, num_queries, 4), 0.3)
    boxes[0, 1] = TARGETS[0]["boxes"][0]  # query 1 of image 0 is exactly the object
    return {"pred_logits": torch.zeros(2, num_queries, num_classes), "pred_boxes": boxes}


def test_a_group_with_its_own_assignment_normaliser_and_class_loss():
    seen = {}

    def class_loss(logits, boxes, matched, normaliser):
        seen.update(query=matched.query.tolist(), labels=matched.labels.tolist(), normaliser=normaliser)
        return logits.sum() * 0 + 7.0

    crit = SetCriterion(4, HungarianMatcher(), loss_weights(0, False, 2, 5, 2))
    indices = [(torch.tensor([2]), torch.tensor([0])), (torch.zeros(0, dtype=torch.long),) * 2]
    group = LossGroup("_aux7", outputs(), TARGETS, fixed_assignment(indices), 4.0, class_loss)
    terms = crit.terms([group])
    assert seen == {"query": [2], "labels": [2], "normaliser": 4.0}
    assert set(terms) == {"loss_ce_aux7", "loss_bbox_aux7", "loss_giou_aux7", "cardinality_error_aux7"}
    assert terms["loss_ce_aux7"] == 7.0
    # L1 of query 2 (0.3, 0.3, 0.3, 0.3) vs the object (0.5, 0.5, 0.2, 0.2), / 4
    torch.testing.assert_close(terms["loss_bbox_aux7"], torch.tensor((0.2 + 0.2 + 0.1 + 0.1) / 4.0))


def test_deformable_detr_groups_and_official_logs():
    crit = SetCriterion(4, HungarianMatcher(), loss_weights(1, True, 2, 5, 2))
    out = {**outputs(), "aux_outputs": [outputs()], "enc_outputs": outputs()}
    groups = crit.groups(out, TARGETS)
    assert [g.suffix for g in groups] == ["", "_0", "_enc"]
    assert [g.log_class_error for g in groups] == [True, False, False]
    assert groups[2].targets[0]["labels"].tolist() == [0]  # encoder proposals are class-agnostic
    terms = crit(out, TARGETS)
    assert set(crit.weight_dict) < set(terms) and terms["loss_bbox"] == 0 == terms["loss_giou"]
    # zero logits: every query predicts class 0, not the last: |3 - 1| and |3 - 0| per image
    assert terms["cardinality_error"] == 2.5 and terms["class_error"] == 100.0
    no_objects = crit(outputs(), [TARGETS[1], TARGETS[1]])
    assert no_objects["class_error"] == 100.0 and no_objects["loss_bbox"] == 0  # official, no target


def test_focal_class_loss_is_the_official_normalisation():
    """Summed over queries and classes / normaliser == official mean over queries x Q / normaliser."""
    logits = torch.randn(2, 5, 3)
    matched = Matched.gather([(torch.tensor([1]), torch.tensor([0])), (torch.tensor([4]), torch.tensor([0]))],
                             [{"labels": torch.tensor([2]), "boxes": torch.rand(1, 4)}] * 2)
    onehot = torch.zeros_like(logits)
    onehot[[0, 1], [1, 4], [2, 2]] = 1
    official = sigmoid_focal_loss(logits, onehot).mean(1).sum() / 3.0 * 5
    torch.testing.assert_close(FocalClassLoss()(logits, torch.rand(2, 5, 4), matched, 3.0), official)
