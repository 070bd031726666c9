"""Training for certificates: noise and consistency for smoothing, IBP and CROWN-IBP for verified robustness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from squiggles.certify.bounds import margin_bounds, verified
from squiggles.errors import SquigglesError
from squiggles.train import TrainConfig, fit
from squiggles.train.certified import make_consistency, make_noise, ramp
from squiggles.train.guard import Guard
from squiggles.train.methods import METHODS, StepContext, make_method
from tests.conftest import run_cli


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def _ctx(progress: float = 0.5, seed: int = 0) -> StepContext:
    return StepContext(epoch=0, progress=progress, generator=torch.Generator().manual_seed(seed), bounds=(-5.0, 5.0))


def test_ramp_is_zero_then_linear_then_one():
    assert [ramp(p, 0.1, 0.4) for p in (0.0, 0.1, 0.3, 0.5, 0.9)] == pytest.approx([0, 0, 0.5, 1, 1])
    assert ramp(0.05, 0.0, 0.0) == 1.0


def test_noise_is_cross_entropy_on_noisy_inputs(blobs):
    x, y = blobs
    net = _net()
    loss, _ = make_noise(sigma=0.5)(net, x, y, _ctx(seed=3))
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert loss.item() == pytest.approx(F.cross_entropy(net(x + 0.5 * noise), y).item(), rel=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-3)


def test_consistency_adds_to_the_noisy_cross_entropy(blobs):
    x, y = blobs
    net = _net()
    plain, _ = make_consistency(sigma=0.5, m=1, lbd=0.0, eta=0.0)(net, x, y, _ctx(seed=3))
    noisy, _ = make_noise(sigma=0.5)(net, x, y, _ctx(seed=3))
    assert plain.item() == pytest.approx(noisy.item(), rel=1e-6)
    full, _ = make_consistency(sigma=0.5, m=2, lbd=10.0, eta=0.5)(net, x, y, _ctx(seed=3))
    ce_only, _ = make_consistency(sigma=0.5, m=2, lbd=0.0, eta=0.0)(net, x, y, _ctx(seed=3))
    assert full.item() > ce_only.item(), "the KL and entropy terms are non-negative and not all zero"


def test_ibp_starts_clean_and_mixes_in_the_worst_case(blobs):
    x, y = blobs
    net = _net()
    method = make_method("ibp", eps=0.3, start=0.2, warmup=0.5)
    early, _ = method(net, x, y, _ctx(progress=0.1))
    assert early.item() == pytest.approx(F.cross_entropy(net(x), y).item(), rel=1e-6)
    late, _ = method(net, x, y, _ctx(progress=0.9))
    clean = F.cross_entropy(net(x), y)
    worst = F.cross_entropy(-margin_bounds(net, x, y, "linf", 0.33, "ibp", (-5.0, 5.0)), y)
    assert late.item() == pytest.approx((0.5 * clean + 0.5 * worst).item(), rel=1e-5)
    assert worst.item() > clean.item()


def test_ibp_training_verifies_what_standard_training_does_not(blobs, tmp_path):
    x, y = blobs
    results = {}
    for method, options in (("standard", {}), ("crown-ibp", {"eps": 0.9, "start": 0.0, "warmup": 0.5})):
        net = _net(1)
        config = TrainConfig(arch="mlp", method=method, method_options=options, epochs=30, batch_size=16, lr=0.01,
                             schedule="constant")
        fit(net, x, y, x, y, config, out_dir=tmp_path / method, bounds=(-5.0, 5.0), progress=False, log=lambda m: None)
        with torch.no_grad():
            results[method] = verified(margin_bounds(net, x, y, "linf", 0.9, "ibp", (-5.0, 5.0)), y).float().mean()
    assert results["crown-ibp"] > 0.7 and results["crown-ibp"] > results["standard"] + 0.15


def test_certified_methods_are_registered_and_unguarded(blobs):
    x, y = blobs
    for name in ("noise", "consistency", "ibp", "crown-ibp"):
        assert name in METHODS
        assert Guard.for_run(name, {"eps": 0.3} if "ibp" in name else {}, None, x, y, (0.0, 1.0)) is None


def test_bad_options_and_unsupported_layers_are_named(blobs):
    with pytest.raises(SquigglesError, match="--sigma"):
        make_noise(sigma=0.0)
    with pytest.raises(SquigglesError, match="m .* >= 1"):
        make_consistency(m=0)
    with pytest.raises(SquigglesError, match="shares of training"):
        make_method("ibp", start=1.5)
    x, y = blobs
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    with pytest.raises(SquigglesError, match=r"Dropout.*without dropout"):
        make_method("ibp", eps=0.1, start=0.0)(net, x, y, _ctx(progress=0.9))


def test_cli_refuses_a_bad_sigma(tmp_path):
    res = run_cli("train", "--model", "small-cnn", "--dataset", "digits", "--method", "noise", "--sigma", "0",
                  "--out", str(tmp_path / "m"))
    assert res.returncode == 2 and "--sigma" in res.stderr
    res = run_cli("train", "--model", "small-cnn", "--dataset", "digits", "--method", "pgd", "--sigma", "0.5",
                  "--out", str(tmp_path / "m"))
    assert res.returncode == 2 and "takes no --sigma" in res.stderr


def test_the_consistency_weight_flag_reaches_the_loss():
    import argparse

    from squiggles.cli import train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--method", "consistency", "--consistency-weight", "5", "--sigma", "0.5",
                              "--out", "unused"])
    assert train_cmd._method_options(args) == {"sigma": 0.5, "lbd": 5.0}
    args = parser.parse_args(["train", "--method", "noise", "--consistency-weight", "5", "--out", "unused"])
    with pytest.raises(SquigglesError, match="takes no --consistency-weight"):
        train_cmd._method_options(args)
