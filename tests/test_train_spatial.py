"""The ``spatial`` (worst-of-k, Engstrom et al.) and ``spatial-augment`` training methods in the one loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from squiggles.checkpoints import read_card
from squiggles.errors import SquigglesError
from squiggles.train import TrainConfig, fit
from squiggles.train.methods import StepContext, method_threat
from squiggles.train.spatial import make_spatial, make_spatial_augment
from squiggles.transforms import Spatial
from tests.conftest import run_cli


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))


def _data(n: int = 32):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 4


def _ctx(progress: float = 1.0) -> StepContext:
    return StepContext(epoch=0, progress=progress, generator=torch.Generator().manual_seed(0), bounds=(0.0, 1.0))


def _seen(net: nn.Module, method, x, y, ctx):
    seen = []
    hook = net.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    loss, logits = method(net, x, y, ctx)
    hook.remove()
    return loss, logits, seen


def test_worst_of_k_trains_on_the_highest_loss_transform_in_the_box():
    x, y = _data()
    net = _cnn().train()
    loss, logits, seen = _seen(net, make_spatial(k=5, max_rotation=20, max_translation=1), x, y, _ctx())
    x_adv = seen[-1]  # the update's forward pass
    assert net.training and logits.shape == (32, 4) and not torch.equal(x_adv, x)
    assert torch.allclose(loss, F.cross_entropy(net(x_adv), y))
    # rows seen: the clean batch, the k draws, the search's verification, the update
    assert sum(len(z) for z in seen) == 32 * (1 + 5 + 1 + 1)
    # worst of k: at least as high a loss per example as the identity
    with torch.no_grad():
        ce = F.cross_entropy(net(x_adv), y, reduction="none")
        clean = F.cross_entropy(net(x), y, reduction="none")
    assert ce.mean() >= clean.mean()
    assert all(p.grad is None for p in net.parameters())


def test_warmup_starts_from_the_identity_and_augment_draws_one_transform():
    x, y = _data()
    net = _cnn()
    loss, _, seen = _seen(net, make_spatial(k=3, warmup=0.5), x, y, _ctx(progress=0.0))
    assert torch.allclose(seen[-1], x, atol=1e-6)
    loss, _, seen = _seen(net, make_spatial_augment(max_rotation=30), x, y, _ctx())
    assert len(seen) == 1 and not torch.equal(seen[0], x)
    assert torch.allclose(loss, F.cross_entropy(net(seen[0]), y))


def test_the_method_threat_is_the_spatial_box():
    t = method_threat("spatial", {"max_rotation": 15}, (0.0, 1.0))
    assert isinstance(t, Spatial) and t.max_rotation == 15 and t.max_translation == 3
    assert method_threat("standard", {}, (0.0, 1.0)) is None
    assert method_threat("pgd", {"eps": 0.1}, (0.0, 1.0)).name == "linf"


def test_bad_spatial_method_options():
    with pytest.raises(SquigglesError, match="k .* must be an integer >= 1"):
        make_spatial(k=0)
    with pytest.raises(SquigglesError, match="must be between 0 and 180"):
        make_spatial(max_rotation=270)
    with pytest.raises(SquigglesError, match="warmup"):
        make_spatial_augment(warmup=1.5)
    with pytest.raises(SquigglesError, match="draw .* must be one of uniform, grid"):
        make_spatial(draw="corners")


def test_grid_draws_train_on_a_grid_transform():
    x, y = _data()
    net = _cnn().train()
    _, _, seen = _seen(net, make_spatial(k=4, max_rotation=20, max_translation=1, draw="grid"), x, y, _ctx())
    s = Spatial(20, 1)
    moved = s.apply(x.repeat(len(s.grid()), 1, 1, 1), s.grid().repeat_interleave(len(x), 0)).view(-1, *x.shape)
    hits = (moved - seen[-1][None]).abs().flatten(2).amax(2) < 1e-5  # transforms x examples
    assert hits.any(0).all(), "every training image is its clean image under one of the grid's transforms"


def test_spatial_training_through_the_loop_is_guarded_resumable_and_reproducible(tmp_path):
    x, y = _data(64)
    cfg = TrainConfig(method="spatial", method_options={"k": 4, "max_rotation": 30, "max_translation": 1},
                      epochs=2, batch_size=16, lr=0.01, seed=1)
    a = fit(_cnn(), x, y, x, y, cfg, tmp_path / "a", bounds=(0.0, 1.0), progress=False, log=lambda m: None)
    b = fit(_cnn(), x, y, x, y, cfg, tmp_path / "b", bounds=(0.0, 1.0), progress=False, log=lambda m: None)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), b.model.state_dict().values(),
                                                 strict=True))
    assert a.guard is not None and a.guard["threat"]["threat"] == "spatial"
    assert [s["attack"] for s in a.guard["attacks"]] == ["spatial-random"] and len(a.guard["checks"]) == 2
    # stopped after the first epoch, then resumed: the same model as the uninterrupted run
    with pytest.raises(KeyboardInterrupt):
        fit(_cnn(), x, y, x, y, cfg, tmp_path / "c", bounds=(0.0, 1.0), progress=False, log=_stop_after_epoch_1)
    c = fit(_cnn(), x, y, x, y, cfg, tmp_path / "c", bounds=(0.0, 1.0), resume=True, progress=False,
            log=lambda m: None)
    assert all(torch.equal(p, q) for p, q in zip(a.model.state_dict().values(), c.model.state_dict().values(),
                                                 strict=True))


def _stop_after_epoch_1(message: str) -> None:
    if message.startswith("epoch 1/"):  # logged as epoch 1 ends, after its checkpoint
        raise KeyboardInterrupt


def test_train_spatial_from_the_cli_records_the_spatial_evaluation(tmp_path):
    out = tmp_path / "m"
    res = run_cli("train", "--model", "small-cnn", "--dataset", "digits", "--method", "spatial", "--max-rotation",
                  "20", "--max-translation", "1", "--worst-of", "3", "--epochs", "1", "--final-eval", "quick",
                  "--eval-n", "50", "--guard-n", "32", "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    card = read_card(out)
    ev = card.metrics["robust_eval"]
    assert ev["norm"] == "spatial" and [s["stage"] for s in ev["breakdown"]][1:] == ["grid", "worst-of-10",
                                                                                    "first-order"]
    assert card.recipe["method_options"]["k"] == 3
    bad = run_cli("train", "--dataset", "digits", "--method", "pgd", "--max-rotation", "10", "--out",
                  str(tmp_path / "b"))
    assert bad.returncode == 2 and "--method pgd takes no --max-rotation" in bad.stderr
