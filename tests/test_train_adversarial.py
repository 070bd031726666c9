"""Adversarial training methods as pure loss functions plugged into the one trainer loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from squiggles.checkpoints import read_card
from squiggles.errors import SquigglesError
from squiggles.threat import Linf
from squiggles.train import TrainConfig, fit
from squiggles.train.adversarial import current_eps, make_fgsm_rs, make_pgd, make_trades, trades_kl
from squiggles.train.methods import StepContext
from tests.conftest import run_cli


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def _ctx(progress: float = 0.5) -> StepContext:
    return StepContext(epoch=0, progress=progress, generator=torch.Generator().manual_seed(0), bounds=(-5.0, 5.0))


def test_eps_warmup_is_linear_then_flat():
    assert [current_eps(0.3, 0.5, p) for p in (0.0, 0.25, 0.5, 0.9)] == pytest.approx([0.0, 0.15, 0.3, 0.3])
    assert current_eps(0.3, 0.0, 0.0) == 0.3


@pytest.mark.parametrize("make", [make_pgd, make_fgsm_rs])
def test_attack_methods_train_on_in_budget_examples_and_keep_train_mode(blobs, make):
    x, y = blobs
    net = _net().train()
    seen = []
    hook = net[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    loss, logits = make(eps=0.2)(net, x, y, _ctx())
    hook.remove()
    x_adv = seen[-1]  # the last forward pass is the update's, on the adversarial batch
    assert (Linf(0.2).norm(x_adv - x) <= 0.2 + 1e-6).all() and not torch.equal(x_adv, x)
    assert torch.allclose(loss, F.cross_entropy(net(x_adv), y))
    assert logits.shape == (64, 2) and net.training
    assert all(p.grad is None for p in net.parameters())


def test_warmup_start_trains_on_clean_inputs(blobs):
    x, y = blobs
    net = _net()
    loss, _ = make_pgd(eps=0.3, warmup=0.5)(net, x, y, _ctx(progress=0.0))
    assert torch.allclose(loss, F.cross_entropy(net(x), y))


def test_trades_kl_is_batchmean_and_beta_zero_is_plain_ce(blobs):
    clean, adv = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    p, q = F.softmax(clean, 1), F.softmax(adv, 1)
    assert trades_kl(clean, adv).item() == pytest.approx(((p * (p / q).log()).sum(1)).mean().item(), rel=1e-6)
    x, y = blobs
    net = _net()
    loss, logits = make_trades(eps=0.2, beta=0.0)(net, x, y, _ctx())
    assert torch.allclose(loss, F.cross_entropy(net(x), y)) and torch.allclose(logits, net(x))
    assert make_trades(eps=0.2, beta=6.0)(net, x, y, _ctx())[0] > loss


def test_pgd_training_through_the_loop_is_recorded_and_reproducible(blobs, tmp_path):
    x, y = blobs
    cfg = TrainConfig(method="pgd", method_options={"eps": 0.3, "steps": 3}, epochs=2, batch_size=16, lr=0.01, seed=1)
    a = fit(_net(), x, y, x, y, cfg, tmp_path / "a", bounds=(-5.0, 5.0), progress=False, log=lambda m: None)
    b = fit(_net(), x, y, x, y, cfg, tmp_path / "b", bounds=(-5.0, 5.0), progress=False, log=lambda m: None)
    assert a.test_acc > 0.9
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                 strict=True))


def test_bad_method_options():
    with pytest.raises(SquigglesError, match="eps must be >= 0"):
        make_pgd(eps=-0.1)
    with pytest.raises(SquigglesError, match="warmup"):
        make_fgsm_rs(warmup=2.0)
    with pytest.raises(SquigglesError, match="beta"):
        make_trades(beta=-1.0)


def test_cli_method_flags(tmp_path):
    res = run_cli("train", "--dataset", "digits", "--eps", "0.3", "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "--method standard takes no --eps" in res.stderr
    res = run_cli("train", "--dataset", "digits", "--method", "pgd", "--eps", "-0.3", "--out", str(tmp_path / "b"))
    assert res.returncode == 2 and "--eps: must be >= 0" in res.stderr
    res = run_cli("train", "--dataset", "digits", "--method", "fgsm-rs", "--eps", "0.1", "--epochs", "1", "--quiet",
                  "--precision", "bf16", "--out", str(tmp_path / "c"))
    assert res.returncode == 0, res.stderr
    assert read_card(tmp_path / "c").recipe["precision"] == "bf16"
    res = run_cli("train", "--dataset", "digits", "--precision", "fp16", "--out", str(tmp_path / "d"))
    assert res.returncode == 2 and "invalid choice: 'fp16'" in res.stderr
    res = run_cli("train", "--dataset", "digits", "--method", "trades", "--ema", "1.5", "--out", str(tmp_path / "e"))
    assert res.returncode == 2 and "weight-average decay must be 0 (off) or in (0, 1)" in res.stderr
    assert not (tmp_path / "e").exists(), "a refused run leaves no folder behind"


def test_training_attacks_keep_the_weights_layout(tmp_path):
    # The optimizer and DDP's gradient buckets hold the parameters' storage, so the trainer's attacks must not
    # switch a CNN to channels-last weights as stand-alone attacks do (squiggles.runtime.keep_layout).
    from squiggles.models import build_model
    from squiggles.train.guard import GuardConfig

    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 1, 8, 8, generator=g), torch.arange(32) % 10
    cnn = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10)
    conv = next(p for p in cnn.parameters() if p.dim() == 4 and p.shape[1] > 1)
    seen = []
    cnn.register_forward_pre_hook(lambda m, args: seen.append(conv.is_contiguous()))
    # the guard's between-epoch evaluation may use the fast layout; only the steps are under test here
    cfg = TrainConfig(method="pgd", method_options={"eps": 0.1, "steps": 2}, epochs=1, batch_size=16, seed=0,
                      guard=GuardConfig(enabled=False))
    fit(cnn, x, y, x, y, cfg, tmp_path, bounds=(0.0, 1.0), progress=False, log=lambda m: None)
    assert len(seen) > 4 and all(seen)
