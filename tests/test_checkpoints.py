from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from squiggles.checkpoints import ModelCard, load_model, load_user_model, read_card, save_model
from squiggles.errors import ModelError
from squiggles.models import build_model


def _card(**kw):
    return ModelCard(
        arch="small-cnn", arch_kwargs={"in_shape": [1, 8, 8], "num_classes": 10}, dataset="digits", seed=3, **kw
    )


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = build_model("small-cnn", in_shape=(1, 8, 8), num_classes=10)
    save_model(net, tmp_path, _card(metrics={"clean_accuracy": 0.5}))
    loaded = load_model(tmp_path)
    assert not loaded.training
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(loaded(x), net.eval()(x))
    card = json.loads((tmp_path / "card.json").read_text())
    for key in ("arch", "arch_kwargs", "dataset", "bounds", "recipe", "metrics", "seed", "wall_time_s", "versions"):
        assert key in card
    assert card["versions"]["torch"] == torch.__version__
    assert read_card(tmp_path).metrics == {"clean_accuracy": 0.5}


def test_existing_model_is_not_overwritten(tmp_path):
    net = build_model("linear", in_shape=(3,), num_classes=2)
    save_model(net, tmp_path, {"arch": "linear", "arch_kwargs": {"in_shape": [3], "num_classes": 2}})
    before = (tmp_path / "model.safetensors").read_bytes()
    with pytest.raises(ModelError, match="already exists"):
        save_model(build_model("linear", in_shape=(3,), num_classes=2), tmp_path, {"arch": "linear"})
    assert (tmp_path / "model.safetensors").read_bytes() == before


def test_missing_card_and_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="no card.json"):
        load_model(tmp_path)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelError, match="do not fit"):
        load_user_model("squiggles.models:linear", tmp_path / "w.safetensors", in_shape=(3,), num_classes=2)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="not a readable safetensors"):
        load_user_model("squiggles.models:linear", tmp_path / "junk.safetensors", in_shape=(3,), num_classes=2)
    with pytest.raises(ModelError, match="does not exist"):
        load_user_model("squiggles.models:linear", tmp_path / "nope.safetensors", in_shape=(3,), num_classes=2)


def test_user_factory_with_weights(tmp_path):
    net = build_model("linear", in_shape=(3,), num_classes=2)
    save_file(dict(net.state_dict()), str(tmp_path / "w.safetensors"))
    mine = load_user_model("squiggles.models:linear", tmp_path / "w.safetensors", in_shape=(3,), num_classes=2)
    x = torch.rand(4, 3)
    assert torch.equal(mine(x), net(x))
