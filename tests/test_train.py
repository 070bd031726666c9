from __future__ import annotations

import pytest
import torch
from torch import nn

from squiggles.errors import SquigglesError
from squiggles.train import TrainConfig, fit
from squiggles.train.schedule import learning_rate
from squiggles.train.state import CHECKPOINT


def _net() -> nn.Module:
    torch.manual_seed(1)
    # Dropout makes the result depend on the global RNG, so resume must restore it exactly.
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def _config(**kw) -> TrainConfig:
    settings = {"arch": "mlp", "dataset": "blobs", "epochs": 3, "batch_size": 16, "lr": 0.01, "seed": 7}
    return TrainConfig(**{**settings, **kw})


def _quiet(msg: str) -> None:
    pass


def test_fit_learns_blobs_and_records_history(blobs, tmp_path):
    x, y = blobs
    result = fit(_net(), x, y, x, y, _config(), tmp_path, progress=False, log=_quiet)
    assert [h.epoch for h in result.history] == [1, 2, 3]
    assert result.test_acc >= 0.95
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert (tmp_path / CHECKPOINT).exists()
    assert not result.model.training


def test_same_seed_gives_bit_identical_weights(blobs, tmp_path):
    x, y = blobs
    a = fit(_net(), x, y, x, y, _config(), tmp_path / "a", progress=False, log=_quiet).model
    b = fit(_net(), x, y, x, y, _config(), tmp_path / "b", progress=False, log=_quiet).model
    c = fit(_net(), x, y, x, y, _config(seed=8), tmp_path / "c", progress=False, log=_quiet).model
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), c.state_dict().values(), strict=True))


def test_run_stopped_after_epoch_1_and_resumed_equals_uninterrupted(blobs, tmp_path):
    x, y = blobs
    full = fit(_net(), x, y, x, y, _config(), tmp_path / "full", progress=False, log=_quiet).model

    def stop_after_first_epoch(msg: str) -> None:
        if msg.startswith("epoch 1/"):
            raise KeyboardInterrupt

    rng_before = torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        fit(_net(), x, y, x, y, _config(), tmp_path / "cut", progress=False, log=stop_after_first_epoch)
    assert torch.equal(torch.get_rng_state(), rng_before), "training must not disturb the caller's RNG"
    messages: list[str] = []
    resumed = fit(_net(), x, y, x, y, _config(), tmp_path / "cut", resume=True, progress=False, log=messages.append)
    assert messages[0].startswith("resuming after epoch 1")
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for p, q in zip(full.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_changed_settings_and_missing_checkpoint(blobs, tmp_path):
    x, y = blobs
    fit(_net(), x, y, x, y, _config(), tmp_path, progress=False, log=_quiet)
    with pytest.raises(SquigglesError, match="different settings.*lr"):
        fit(_net(), x, y, x, y, _config(lr=0.02), tmp_path, resume=True, progress=False, log=_quiet)
    with pytest.raises(SquigglesError, match="no checkpoint"):
        fit(_net(), x, y, x, y, _config(), tmp_path / "empty", resume=True, progress=False, log=_quiet)


def test_sgd_and_step_schedule(blobs, tmp_path):
    x, y = blobs
    cfg = _config(optimizer="sgd", schedule="step", milestones=[2])
    result = fit(_net(), x, y, x, y, cfg, tmp_path, progress=False, log=_quiet)
    assert result.history[0].lr == pytest.approx(0.01)
    assert result.history[-1].lr == pytest.approx(0.001)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "epochs must be >= 1"),
        ("lr", -1.0, "learning rate"),
        ("optimizer", "rmsprop", "adam, sgd"),
        ("schedule", "cosine", "onecycle, step, constant"),
    ],
)
def test_bad_config_is_refused(blobs, tmp_path, field, value, message):
    x, y = blobs
    with pytest.raises(SquigglesError, match=message):
        fit(_net(), x, y, x, y, _config(**{field: value}), tmp_path, progress=False, log=_quiet)


def test_onecycle_rises_then_falls_to_zero():
    lrs = [learning_rate("onecycle", 1.0, s, 100, 10) for s in range(100)]
    peak = max(range(100), key=lrs.__getitem__)
    assert 25 <= peak <= 35 and lrs[peak] == pytest.approx(1.0, abs=0.05)
    assert lrs[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1 : peak + 1], strict=True))
