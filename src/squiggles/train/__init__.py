"""Training: one loop (`fit`), pluggable methods (`METHODS`), and `train_model` from recipe to saved model."""

# Importing these registers their methods in METHODS: pgd, fgsm-rs, trades; spatial, spatial-augment; noise,
# consistency, ibp, crown-ibp.
from squiggles.train import adversarial, certified, spatial  # noqa: E402,F401
from squiggles.train.loop import EpochStats, TrainConfig, TrainResult, fit
from squiggles.train.methods import METHODS, StepContext, make_method
from squiggles.train.run import train_model

__all__ = ["METHODS", "EpochStats", "StepContext", "TrainConfig", "TrainResult", "fit", "make_method", "train_model"]
