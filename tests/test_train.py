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


def _stop_after_first_epoch(msg: str) -> None:
    """A log that interrupts the run as epoch 1 ends, after its checkpoint is written."""
    if msg.startswith("epoch 1/"):
        raise KeyboardInterrupt


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

    rng_before = torch.get_rng_state()
    with pytest.raises(KeyboardInterrupt):
        fit(_net(), x, y, x, y, _config(), tmp_path / "cut", progress=False, log=_stop_after_first_epoch)
    assert torch.equal(torch.get_rng_state(), rng_before), "training must not disturb the caller's RNG"
    messages: list[str] = []
    resumed = fit(_net(), x, y, x, y, _config(), tmp_path / "cut", resume=True, progress=False, log=messages.append)
    assert messages[0].startswith("resuming after epoch 1")
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    for p, q in zip(full.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)


def test_resume_refuses_changed_settings(blobs, tmp_path):
    x, y = blobs
    fit(_net(), x, y, x, y, _config(), tmp_path, progress=False, log=_quiet)
    with pytest.raises(SquigglesError, match="different settings.*lr"):
        fit(_net(), x, y, x, y, _config(lr=0.02), tmp_path, resume=True, progress=False, log=_quiet)


def test_resume_with_no_checkpoint_yet_starts_the_run_and_says_so(blobs, tmp_path):
    """A run killed before its first checkpoint, rerun with --resume, is the uninterrupted run."""
    x, y = blobs
    full = fit(_net(), x, y, x, y, _config(), tmp_path / "full", progress=False, log=_quiet)
    messages: list[str] = []
    started = fit(_net(), x, y, x, y, _config(), tmp_path / "empty", resume=True, progress=False,
                  log=messages.append)
    assert "no checkpoint" in messages[0] and "starting the run from the beginning" in messages[0]
    assert [h.epoch for h in started.history] == [h.epoch for h in full.history]
    for p, q in zip(full.model.state_dict().values(), started.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)


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
        ("precision", "fp16", "fp32, bf16"),
        ("ema", 1.0, "decay must be 0"),
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


def test_bf16_runs_the_step_in_bfloat16_and_keeps_float32_weights(blobs, tmp_path):
    x, y = blobs
    seen: dict[str, set] = {"fp32": set(), "bf16": set()}
    for precision in seen:
        net = _net()
        net.register_forward_hook(lambda m, args, out, p=precision: seen[p].add(out.dtype))
        result = fit(net, x, y, x, y, _config(precision=precision), tmp_path / precision, progress=False, log=_quiet)
        assert result.test_acc >= 0.95
        assert all(t.dtype == torch.float32 for t in result.model.state_dict().values())
    # the step's forward runs in bfloat16; the per-epoch evaluation stays float32
    assert seen["bf16"] == {torch.bfloat16, torch.float32}
    assert seen["fp32"] == {torch.float32}


def test_resume_accepts_a_checkpoint_older_than_a_new_setting(blobs, tmp_path):
    # A checkpoint written before `precision` existed means the default; resuming it must not be refused.
    from squiggles._io import read_state, write_state

    x, y = blobs

    with pytest.raises(KeyboardInterrupt):
        fit(_net(), x, y, x, y, _config(), tmp_path, progress=False, log=_stop_after_first_epoch)
    tensors, header = read_state(tmp_path / CHECKPOINT, "checkpoint")
    del header["config"]["precision"]
    write_state(tmp_path / CHECKPOINT, tensors, header)
    with pytest.raises(SquigglesError, match="different settings.*precision"):
        fit(_net(), x, y, x, y, _config(precision="bf16"), tmp_path, resume=True, progress=False, log=_quiet)
    result = fit(_net(), x, y, x, y, _config(), tmp_path, resume=True, progress=False, log=_quiet)
    assert [h.epoch for h in result.history] == [1, 2, 3]


def test_weight_average_follows_the_ramped_decay():
    from squiggles.train.averaging import WeightAverage

    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    avg = WeightAverage(net, decay=0.5)
    expected = 0.0
    for t, w in enumerate([1.0, 2.0, 3.0, 4.0], start=1):
        with torch.no_grad():
            net.weight.fill_(w)
        avg.update(net)
        d = min(0.5, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * w
        assert avg.shadow["weight"].item() == pytest.approx(expected)
    assert avg.copy_to(nn.Linear(1, 1, bias=False)).weight.item() == pytest.approx(expected)
    with pytest.raises(SquigglesError, match=r"decay must be in \(0, 1\)"):
        WeightAverage(net, decay=1.0)


def test_ema_ships_the_average_and_resumes_exactly(blobs, tmp_path):
    x, y = blobs
    plain = fit(_net(), x, y, x, y, _config(), tmp_path / "plain", progress=False, log=_quiet).model
    full = fit(_net(), x, y, x, y, _config(ema=0.9), tmp_path / "full", progress=False, log=_quiet)
    assert full.test_acc >= 0.95
    # the shipped weights are the average, not the last iterate (which equals the plain run's)
    assert not torch.equal(full.model[0].weight, plain[0].weight)

    with pytest.raises(KeyboardInterrupt):
        fit(_net(), x, y, x, y, _config(ema=0.9), tmp_path / "cut", progress=False, log=_stop_after_first_epoch)
    resumed = fit(_net(), x, y, x, y, _config(ema=0.9), tmp_path / "cut", resume=True, progress=False, log=_quiet)
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(p, q)
