"""The catastrophic-overfitting guard, the robust figure in the card, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import squiggles.train.guard as guard_mod
from squiggles.checkpoints import read_card
from squiggles.errors import SquigglesError
from squiggles.train import TrainConfig, train_model
from squiggles.train.guard import GuardConfig, is_collapse


def config(epochs: int = 3, **guard: object) -> TrainConfig:
    return TrainConfig(
        arch="small-cnn",
        dataset="digits",
        method="fgsm-rs",
        method_options={"eps": 0.1},
        epochs=epochs,
        lr=0.01,
        batch_size=64,
        guard=GuardConfig(n=64, **guard),  # type: ignore[arg-type]
    )


class FakeRobust:
    """Stands in for the guard's attack: returns scripted accuracies and remembers the weights it was shown."""

    def __init__(self, values: list[float], fail_at: int | None = None) -> None:
        self.values, self.fail_at, self.seen = values, fail_at, []

    def __call__(self, model, x, y, threat, stages, seed):  # noqa: ANN001, ANN204
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise KeyboardInterrupt("simulated crash")
        self.seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return self.values[len(self.seen) - 1]


def test_collapse_rule_and_config_errors():
    assert is_collapse(0.05, best=0.6, drop=0.2)
    assert not is_collapse(0.45, best=0.6, drop=0.2)
    assert not is_collapse(0.0, best=-1.0, drop=0.2), "no best yet: nothing to fall from"
    for bad, match in (({"drop": 1.5}, "drop"), ({"factor": 1.0}, "factor"), ({"n": 0}, "n must be")):
        with pytest.raises(SquigglesError, match=match):
            GuardConfig(**bad).validate()  # type: ignore[arg-type]


def test_collapse_rolls_back_lowers_the_step_and_is_recorded(tmp_path, monkeypatch):
    fake = FakeRobust([0.6, 0.05, 0.62, 0.7])  # epoch 2 collapses once, then recovers
    monkeypatch.setattr(guard_mod, "robust_accuracy", fake)
    lines: list[str] = []
    result, out = train_model(config(), tmp_path / "m", final_eval=None, progress=False, log=lines.append)
    assert len(fake.seen) == 4 and len(result.history) == 3
    assert [h.epoch for h in result.history] == [1, 2, 3]
    g = result.guard
    assert [c["epoch"] for c in g["checks"]] == [1, 2, 3]
    assert [c["step_scale"] for c in g["checks"]] == [1.0, 0.75, 0.75]
    (rb,) = g["rollbacks"]
    assert rb == {"epoch": 2, "robust": 0.05, "best": 0.6, "step_scale_before": 1.0, "step_scale_after": 0.75}
    assert any("catastrophic overfitting in epoch 2" in line and "rolled back" in line for line in lines)
    # The retried epoch 2 trained with another step, so it ended elsewhere than the collapsed attempt.
    assert any(not torch.equal(fake.seen[1][k], fake.seen[2][k]) for k in fake.seen[1])
    card = read_card(out)
    assert card.metrics["guard"]["rollbacks"] == g["rollbacks"]
    assert card.metrics["guard"]["attacks"][1]["attack"] == "apgd-t"


def test_guard_gives_up_after_max_rollbacks_keeping_the_last_good_model(tmp_path, monkeypatch):
    fake = FakeRobust([0.6, 0.0, 0.0])
    monkeypatch.setattr(guard_mod, "robust_accuracy", fake)
    lines: list[str] = []
    result, out = train_model(
        config(max_rollbacks=1), tmp_path / "m", final_eval=None, progress=False, log=lines.append
    )
    assert len(result.history) == 1 and len(result.guard["rollbacks"]) == 2
    assert any("still collapsing" in line for line in lines)
    saved = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(saved[k], fake.seen[0][k]) for k in saved), "the model of the last good epoch is kept"


def test_guard_state_survives_a_crash_and_resume(tmp_path, monkeypatch):
    values = [0.6, 0.05, 0.62, 0.7]
    monkeypatch.setattr(guard_mod, "robust_accuracy", FakeRobust(values))
    whole, _ = train_model(config(), tmp_path / "whole", final_eval=None, progress=False, log=lambda m: None)
    # The same run crashes in the guard check after epoch 3 (its 4th call), then resumes from epoch 2's checkpoint.
    monkeypatch.setattr(guard_mod, "robust_accuracy", FakeRobust(values, fail_at=3))
    with pytest.raises(KeyboardInterrupt):
        train_model(config(), tmp_path / "crash", final_eval=None, progress=False, log=lambda m: None)
    monkeypatch.setattr(guard_mod, "robust_accuracy", FakeRobust(values[3:]))
    resumed, _ = train_model(
        config(), tmp_path / "crash", resume=True, final_eval=None, progress=False, log=lambda m: None
    )
    assert resumed.guard["rollbacks"] == whole.guard["rollbacks"]
    assert resumed.guard["checks"] == whole.guard["checks"]
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed run continues with the lowered step"


def test_card_records_the_cascade_robust_accuracy(tmp_path):
    cfg = config(epochs=2)
    _, out = train_model(cfg, tmp_path / "m", final_eval="quick", final_eval_n=60, progress=False, log=lambda m: None)
    m = read_card(out).metrics
    assert 0.0 <= m["robust_accuracy"] <= m["robust_eval"]["clean_accuracy"] <= 1.0
    assert m["robust_eval"]["points"] == 60 and m["robust_eval"]["attacks"] == "quick"
    assert m["robust_eval"]["norm"] == "linf" and m["robust_eval"]["eps"] == pytest.approx(0.1)
    assert [s["stage"] for s in m["robust_eval"]["breakdown"]] == ["clean", "APGD-CE", "APGD-T"]
    card = read_card(out)
    assert card.recipe["method_defaults"]["attack_mode"] == "eval", "the attack mode is recorded with the recipe"
    assert card.recipe["guard"]["n"] == 64
    from squiggles.zoo import card_command

    assert "--guard-n 64" in card_command(card) and "method_defaults" not in card_command(card)
    with pytest.raises(SquigglesError, match="unknown final evaluation"):
        train_model(cfg, tmp_path / "n", final_eval="strongest", progress=False, log=lambda m: None)


TRAIN = ["train", "--model", "small-cnn", "--dataset", "digits", "--method", "fgsm-rs", "--eps", "0.1", "--epochs",
         "6", "--lr", "0.01", "--batch-size", "16", "--guard-n", "32", "--final-eval", "none", "--quiet"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "squiggles", *args]


def test_sigkill_then_resume_gives_the_uninterrupted_model(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    whole = tmp_path / "whole"
    assert subprocess.run(_cli(*TRAIN, "--out", str(whole)), env=env, capture_output=True).returncode == 0
    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*TRAIN, "--out", str(killed)), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.monotonic() + 120
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # mid-run: at least one epoch saved, the current one lost
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run must still have been going when it was killed"
    assert not (killed / "model.safetensors").exists()
    res = subprocess.run(_cli(*TRAIN, "--out", str(killed), "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = load_file(str(whole / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_card(killed).metrics["guard"]["checks"] == read_card(whole).metrics["guard"]["checks"]


def test_rollback_also_rewinds_the_weight_average(tmp_path, monkeypatch):
    # With --ema the shipped model is the average; after the guard gives up it must be the average of the last
    # good epoch (the one in that epoch's checkpoint), untouched by the collapsed attempts.
    import dataclasses

    fake = FakeRobust([0.6, 0.0, 0.0])
    monkeypatch.setattr(guard_mod, "robust_accuracy", fake)
    cfg = dataclasses.replace(config(max_rollbacks=1), ema=0.9)
    result, out = train_model(cfg, tmp_path / "m", final_eval=None, progress=False, log=lambda m: None)
    assert len(result.history) == 1
    saved = load_file(str(out / "model.safetensors"))
    ckpt = load_file(str(out / "checkpoint.safetensors"))
    assert all(torch.equal(saved[k], ckpt[f"average/{k}"]) for k in saved)
    assert not all(torch.equal(saved[k], fake.seen[0][k]) for k in saved), "the average, not the last weights"
