"""Trustworthy robustness evaluation: the attack cascade, epsilon curves, sanity checks, resumable and sharded."""

from squiggles.evaluate.core import evaluate
from squiggles.evaluate.ensembles import ENSEMBLES, Stage
from squiggles.evaluate.result import EvalResult

__all__ = ["ENSEMBLES", "EvalResult", "Stage", "evaluate"]
