from __future__ import annotations

import pytest
import torch

from squiggles.errors import SquigglesError
from squiggles.goals import Targeted, Untargeted, as_goal, least_likely, next_class, random_other, resolve_goal
from squiggles.losses import cross_entropy, dlr, margin

LOGITS = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 5.0, 1.0]])


def test_untargeted_without_labels_uses_predictions_and_records_it():
    goal = resolve_goal(as_goal(None), LOGITS)
    assert goal.labels.tolist() == [0, 2] and goal.labels_source == "pred" and not goal.targeted
    assert resolve_goal(as_goal(torch.tensor([0, 1])), LOGITS).success(LOGITS).tolist() == [False, True]


def test_targeted_success_and_target_equal_label_is_an_error():
    goal = resolve_goal(Targeted(torch.tensor([1, 2]), labels=torch.tensor([0, 1])), LOGITS)
    assert goal.success(LOGITS).tolist() == [False, True]
    with pytest.raises(SquigglesError, match="equal the true label"):
        resolve_goal(Targeted(torch.tensor([0, 2]), labels=torch.tensor([0, 1])), LOGITS)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (torch.tensor([0, 9]), r"lie in \[0, 3\]"),
        (torch.tensor([0]), "shape"),
        (torch.tensor([0.0, 1.0]), "integer"),
    ],
)
def test_bad_labels_are_refused(labels, message):
    with pytest.raises(SquigglesError, match=message):
        resolve_goal(Untargeted(labels), LOGITS)


def test_target_helpers():
    y = torch.tensor([0, 3, 9])
    assert next_class(y, 10).tolist() == [1, 4, 0]
    t = random_other(y.repeat(100), 10, torch.Generator().manual_seed(0))
    assert (t != y.repeat(100)).all() and len(t.unique()) == 10
    assert least_likely(LOGITS).tolist() == [3, 0]


def test_losses_by_hand():
    y = torch.tensor([0, 2])
    assert margin(LOGITS, y).tolist() == [-2.0, -3.0]
    assert margin(LOGITS, y, torch.tensor([1, 3])).tolist() == [-2.0, -4.0]
    # DLR: -(z_y - max other) / (z_pi1 - z_pi3)
    assert dlr(LOGITS, y).tolist() == pytest.approx([-(3 - 1) / (3 - 0), -(5 - 2) / (5 - 1)])
    assert dlr(LOGITS * 7 + 3, y).tolist() == pytest.approx(dlr(LOGITS, y).tolist())  # scale/shift invariant
    ce = cross_entropy(LOGITS, y)
    assert ce.shape == (2,) and torch.allclose(cross_entropy(LOGITS, y, y), -ce)
    with pytest.raises(SquigglesError, match="at least 3 classes"):
        dlr(torch.zeros(2, 2), torch.tensor([0, 1]))
