"""Shared fixtures: tiny deterministic data and models, and an isolated SQUIGGLES_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _deterministic_threads():
    torch.set_num_threads(1)
    yield


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """Two well-separated Gaussian blobs in 6 dimensions: 64 points, easy to fit."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(64) % 2
    x = torch.randn(64, 6, generator=g) * 0.3 + (y.float() * 2 - 1).unsqueeze(1)
    return x, y


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m squiggles ARGS`` in a subprocess, as a user would."""
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "squiggles", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> Path:
    """A small CNN trained on scikit-learn's digits (a second or two), saved as a model folder."""
    from squiggles.train import TrainConfig, train_model

    out = tmp_path_factory.mktemp("digits-model")
    config = TrainConfig(arch="small-cnn", dataset="digits", epochs=8, lr=0.01, batch_size=32)
    train_model(config, out, progress=False, log=lambda m: None)
    return out
