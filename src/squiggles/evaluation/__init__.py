"""Trustworthy robustness evaluation: the attack cascade, epsilon curves, sanity checks, resumable and sharded."""

from squiggles.evaluation.core import evaluate
from squiggles.evaluation.ensembles import ENSEMBLES, Stage
from squiggles.evaluation.result import EvalResult

__all__ = ["ENSEMBLES", "EvalResult", "Stage", "evaluate"]
