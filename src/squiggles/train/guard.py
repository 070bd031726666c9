"""The guard against catastrophic overfitting (Wong et al. 2020, arXiv 2001.03994, section 5).

Fast adversarial training can collapse within an epoch: the model learns to defeat the one-step attack it is
trained on while its robustness to a multi-step attack falls to about zero. After every epoch the guard measures
robust accuracy on a fixed training subset with a strong attack (APGD-CE then APGD-T, never PGD alone: a model
that masks its gradients fools PGD long before it fools targeted APGD); when that accuracy falls more than
``drop`` below the best seen so far, the trainer rolls back to the last good epoch and retries it with the attack
step multiplied by ``factor``. Every check and every rollback is logged and recorded in the model card.

Example:
    >>> from squiggles.train.guard import GuardConfig, is_collapse
    >>> is_collapse(0.02, best=0.71, drop=GuardConfig().drop)
    True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from squiggles.errors import SquigglesError
from squiggles.evaluation.ensembles import Stage
from squiggles.threat import ThreatModel

# A cheap but targeted ensemble: the untargeted and the targeted loss together catch masking that CE alone misses.
GUARD_STAGES = (
    Stage("apgd-ce", {"steps": 25}, "APGD-CE"),
    Stage("apgd-t", {"steps": 25, "n_target_classes": 3}, "APGD-T"),
)
# Targeted DLR needs 4 classes; with fewer, the margin loss plays its part (it does not saturate either).
FEW_CLASS_STAGES = (
    Stage("apgd-ce", {"steps": 25}, "APGD-CE"),
    Stage("apgd-ce", {"steps": 25, "loss": "margin"}, "APGD-margin"),
)


# Rotations and translations: the worst of 10 random transforms, the adversary the spatial method trains on.
SPATIAL_GUARD_STAGES = (Stage("spatial-random", {"k": 10}, "worst-of-10"),)


def guard_stages(num_classes: int, threat: Any = None) -> tuple[Stage, ...]:
    if threat is not None and threat.name == "spatial":
        return SPATIAL_GUARD_STAGES
    return GUARD_STAGES if num_classes >= 4 else FEW_CLASS_STAGES


@dataclass
class GuardConfig:
    """``n`` training points checked each epoch; collapse = robust accuracy more than ``drop`` below the best;
    on collapse the attack step is multiplied by ``factor``, at most ``max_rollbacks`` times in a run."""

    enabled: bool = True
    n: int = 256
    drop: float = 0.2
    factor: float = 0.75
    max_rollbacks: int = 3

    def validate(self) -> None:
        checks = [
            (self.n >= 1, f"guard n must be >= 1, got {self.n}"),
            (0 < self.drop < 1, f"guard drop is an accuracy difference in (0, 1), got {self.drop}"),
            (0 < self.factor < 1, f"guard factor must be in (0, 1) to lower the step, got {self.factor}"),
            (self.max_rollbacks >= 0, f"guard max_rollbacks must be >= 0, got {self.max_rollbacks}"),
        ]
        for ok, message in checks:
            if not ok:
                raise SquigglesError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GuardState:
    """What the guard knows, saved in every checkpoint so a resumed run decides exactly as an uninterrupted one."""

    step_scale: float = 1.0  # the factor on the recipe's attack step now in force
    best: float = -1.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GuardState:
        return cls(**d)


@dataclass
class Guard:
    """The guard of one run: its settings, the fixed subset, the threat model at the final eps, and its state."""

    config: GuardConfig
    x: Tensor
    y: Tensor
    threat: ThreatModel
    stages: tuple[Stage, ...] = GUARD_STAGES
    state: GuardState = field(default_factory=GuardState)

    @classmethod
    def for_run(
        cls,
        method: str,
        method_options: dict[str, Any],
        config: GuardConfig | None,
        x: Tensor,
        y: Tensor,
        bounds: tuple[float, float],
    ) -> Guard | None:
        """The guard for a training method, or None where it does not apply (standard training, eps 0, off)."""
        from squiggles.train.methods import UNGUARDED, method_threat

        if method == "standard" or method in UNGUARDED or (config is not None and not config.enabled):
            return None
        threat = method_threat(method, method_options, bounds)
        if threat is None:
            return None
        config = config or GuardConfig()
        gx, gy = guard_subset(x, y, config.n)
        num_classes = int(y.max().item()) + 1 if len(y) else 0
        return cls(config, gx, gy, threat, guard_stages(num_classes, threat))

    def check(self, model: nn.Module, epoch: int, log: Callable[[str], None]) -> bool:
        """Measure robust accuracy after ``epoch``; on collapse, record it, lower the step and return False
        (the caller rolls back)."""
        st = self.state
        robust = robust_accuracy(model, self.x, self.y, self.threat, self.stages, seed=epoch)
        if not is_collapse(robust, st.best, self.config.drop):
            st.best = max(st.best, robust)
            st.checks.append({"epoch": epoch + 1, "robust": robust, "step_scale": st.step_scale})
            return True
        new_scale = st.step_scale * self.config.factor
        st.rollbacks.append(
            {
                "epoch": epoch + 1,
                "robust": robust,
                "best": st.best,
                "step_scale_before": st.step_scale,
                "step_scale_after": new_scale,
            }
        )
        log(
            f"guard: catastrophic overfitting in epoch {epoch + 1} (robust accuracy {robust:.4f} on "
            f"{len(self.x)} training points, best so far {st.best:.4f}); rolled back to the end of epoch {epoch} "
            f"and multiplied the attack step by {self.config.factor} (now x{new_scale:.3g})"
        )
        st.step_scale = new_scale
        return False

    @property
    def last_robust(self) -> float:
        return self.state.checks[-1]["robust"] if self.state.checks else float("nan")

    def record(self) -> dict[str, Any]:
        """What the model card keeps: settings, attacks, threat model, every check and every rollback."""
        return {
            "config": self.config.to_dict(),
            "attacks": [s.describe() for s in self.stages],
            "threat": self.threat.describe(),
            **self.state.to_dict(),
        }


def is_collapse(robust: float, best: float, drop: float) -> bool:
    """Robust accuracy fell more than ``drop`` below the best seen: the signature of catastrophic overfitting."""
    return best >= 0 and robust < best - drop


def guard_subset(x: Tensor, y: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """The fixed subset: the first ``n`` training points (the same every epoch, every run and every process)."""
    return x[:n], y[:n]


def robust_accuracy(
    model: nn.Module, x: Tensor, y: Tensor, threat: ThreatModel, stages: tuple[Stage, ...], seed: int
) -> float:
    """Robust accuracy under ``stages`` (the evaluation cascade, sharded when torch.distributed is up)."""
    from squiggles.evaluation import evaluate

    res = evaluate(
        model, (x, y), threat, stages, batch_size=128, seed=seed, checks=False, keep_adv=False, progress=False
    )
    return float(res.robust_accuracy)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A copy of model, optimiser and RNG state to roll back to (the last good epoch)."""
    return {
        "model": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "optimizer": _clone(optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, snap: dict[str, Any]) -> None:
    model.load_state_dict(snap["model"])
    optimizer.load_state_dict(_clone(snap["optimizer"]))
    torch.set_rng_state(snap["rng"])


def _clone(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    return obj
