"""The one trainer loop: shuffle, make the loss with a pluggable method, step, evaluate, checkpoint.

Every epoch ends with an atomic checkpoint; ``resume=True`` restores model, optimiser and RNG state and
continues at the next epoch, so a resumed run equals an uninterrupted one bit for bit on CPU.
Shuffling uses a generator seeded from ``(seed, epoch)`` and the schedule is a pure function of the step,
so neither needs saving.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from squiggles.distributed import barrier, rank_world
from squiggles.errors import SquigglesError
from squiggles.runtime import accuracy, keep_layout
from squiggles.train.averaging import WeightAverage
from squiggles.train.guard import Guard, GuardConfig, GuardState, restore, snapshot
from squiggles.train.methods import StepContext, make_method
from squiggles.train.schedule import SCHEDULES, learning_rate
from squiggles.train.state import CHECKPOINT, load_checkpoint, save_checkpoint

OPTIMIZERS = ("adam", "sgd")
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """Everything that determines a training run; recorded in the model card as the recipe."""

    arch: str = "small-cnn"
    dataset: str = "mnist"
    method: str = "standard"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "onecycle"
    milestones: list[int] = field(default_factory=list)
    seed: int = 0
    eval_n: int | None = None
    guard: GuardConfig | None = None  # None: on for adversarial methods, with the defaults
    # "bf16": the step's attack and loss run under bfloat16 autocast (weights, optimiser and every
    # evaluation stay float32); about 1.7x faster on CPUs with AVX512-BF16.
    precision: str = "fp32"
    # Decay of an exponential moving average of the weights (0: off); the average is the model evaluated each
    # epoch and shipped (squiggles.train.averaging).
    ema: float = 0.0
    # The settings the architecture's recipe filled in because the user left them out (squiggles.train.recipes).
    from_recipe: list[str] = field(default_factory=list)
    # A poisoning of the training set (squiggles.backdoor.poison.PoisonSpec as a dict), applied before the loop:
    # a dataset transform, not a method. None: the data as it is.
    poison: dict[str, Any] | None = None

    def validate(self) -> None:
        """Refuse nonsense early, with the name of the field and the fix."""
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (
                self.optimizer in OPTIMIZERS,
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}",
            ),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"),
            (
                self.ema == 0 or 0 < self.ema < 1,
                f"weight-average decay must be 0 (off) or in (0, 1), e.g. 0.999; got {self.ema}",
            ),
            (
                self.precision in PRECISIONS,
                f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise SquigglesError(message)
        if self.guard is not None:
            self.guard.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    test_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    model: nn.Module
    history: list[EpochStats]
    wall_time_s: float
    guard: dict[str, Any] | None = None  # the guard's checks and rollbacks, when it ran
    warnings: list[str] = field(default_factory=list)  # the end-of-run verdict (squiggles.train.verdict)

    @property
    def test_acc(self) -> float:
        return self.history[-1].test_acc


Logger = Callable[[str], None]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: TrainConfig,
    out_dir: Path,
    *,
    resume: bool = False,
    bounds: tuple[float, float] = (0.0, 1.0),
    progress: bool = True,
    log: Logger = print,
) -> TrainResult:
    """Train ``model`` in place by ``config`` and return it with the per-epoch history.

    Data tensors are moved to the model's device once. The global RNG (used by dropout) is forked, seeded
    from ``config.seed`` and saved in each checkpoint, so the caller's RNG is left as it was. Under
    torch.distributed (torchrun) each process trains on its shard of every batch through
    DistributedDataParallel and only rank 0 writes the checkpoint.
    """
    config.validate()
    device = next(model.parameters()).device
    check_precision(device, config.precision)
    train_x, train_y = train_x.to(device), train_y.to(device)
    optimizer = make_optimizer(model, config)
    rank, world = rank_world()
    trained = _wrap_ddp(model, world)
    log = log if rank == 0 else _silent
    steps_per_epoch = -(-len(train_x) // config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    ckpt = Path(out_dir) / CHECKPOINT
    guard = Guard.for_run(config.method, config.method_options, config.guard, train_x, train_y, bounds)
    average = WeightAverage(model, config.ema) if config.ema else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        history, start_epoch, elapsed, gstate = _maybe_resume(ckpt, model, optimizer, config, resume, log, average)
        if guard:
            guard.state = gstate
        epoch = start_epoch
        while epoch < config.epochs:
            t0 = time.perf_counter()
            snap = snapshot(model, optimizer) if guard else None
            avg_snap = _average_snapshot(average) if guard else None
            method = make_method(config.method, **_method_options(config, gstate))
            loop = _EpochLoop(
                trained, model, optimizer, method, config, steps_per_epoch, total_steps, bounds, rank, world, average
            )
            stats = loop.run(train_x, train_y, epoch, progress and rank == 0)
            if guard and not guard.check(model, epoch, log):  # the live weights: the training dynamics
                elapsed += time.perf_counter() - t0  # the lost epoch was spent all the same: the card says so
                restore(model, optimizer, snap)
                if average and avg_snap:
                    average.load(*avg_snap)
                if len(gstate.rollbacks) > guard.config.max_rollbacks:
                    log(
                        f"guard: still collapsing after {guard.config.max_rollbacks} rollbacks; "
                        f"stopping with the model of epoch {epoch}"
                    )
                    break
                continue  # the same epoch again, from the last good state, with the lower step
            shipped = average.copy_to(copy.deepcopy(model)) if average else model
            test_acc = accuracy(shipped, test_x, test_y) if len(test_x) else float("nan")
            seconds = time.perf_counter() - t0
            elapsed += seconds
            history.append(EpochStats(epoch + 1, stats[0], stats[1], test_acc, stats[2], seconds))
            header = {
                "epoch": epoch + 1,
                "config": config.to_dict(),
                "elapsed_s": elapsed,
                "history": [dataclasses.asdict(h) for h in history],
                "guard": gstate.to_dict(),
                "average_updates": average.updates if average else 0,
            }
            if rank == 0:
                save_checkpoint(ckpt, model, optimizer, header, average.tensors() if average else None)
            barrier()
            robust = f"  guard robust {guard.last_robust:.4f}" if guard else ""
            log(
                f"epoch {epoch + 1}/{config.epochs}: loss {stats[0]:.4f}  train acc {stats[1]:.4f}  "
                f"test acc {test_acc:.4f}{robust}  ({seconds:.1f}s)"
            )
            epoch += 1
    if average:
        average.copy_to(model)
    model.eval()
    return TrainResult(model, history, elapsed, guard.record() if guard else None)


def check_precision(device: torch.device, precision: str) -> None:
    """Refuse bfloat16 on a GPU without it, once, before training starts."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise SquigglesError("--precision bf16: this GPU does not support bfloat16; use --precision fp32")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """Mixed precision for the training step: matmuls and convolutions in bfloat16 when asked, else a no-op."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def _silent(message: str) -> None:
    """Processes other than rank 0 keep quiet, so a torchrun log reads like a single run's."""


def _wrap_ddp(model: nn.Module, world: int) -> nn.Module:
    """The module the update's forward goes through: the model itself, or DistributedDataParallel around it."""
    if world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def _average_snapshot(average: WeightAverage | None) -> tuple[dict[str, torch.Tensor], int] | None:
    """The weight average's state at the last good epoch, for the guard's rollback."""
    return ({k: v.clone() for k, v in average.tensors().items()}, average.updates) if average else None


def _method_options(config: TrainConfig, gstate: GuardState) -> dict[str, Any]:
    options = dict(config.method_options)
    if gstate.step_scale != 1.0:
        options["step_scale"] = options.get("step_scale", 1.0) * gstate.step_scale
    return options


def _maybe_resume(
    ckpt: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    resume: bool,
    log: Logger,
    average: WeightAverage | None = None,
) -> tuple[list[EpochStats], int, float, GuardState]:
    if not resume:
        return [], 0, 0.0, GuardState()
    if not ckpt.exists():
        # Killed before its first checkpoint: there is nothing to continue, so a script that always passes
        # --resume after a crash simply starts the run.
        log(f"--resume: no checkpoint at {ckpt} yet; starting the run from the beginning")
        return [], 0, 0.0, GuardState()
    header = load_checkpoint(ckpt, model, optimizer, average)
    saved = header["config"]
    defaults = TrainConfig().to_dict()  # a field newer than the checkpoint means its default
    diff = [k for k, v in config.to_dict().items() if saved.get(k, defaults[k]) != v]
    if diff:
        raise SquigglesError(
            f"--resume: the checkpoint was made with different settings ({', '.join(diff)}); "
            "rerun with the original settings or use a new --out folder"
        )
    log(f"resuming after epoch {header['epoch']} from {ckpt}")
    history = [EpochStats(**h) for h in header["history"]]
    gstate = GuardState.from_dict(header["guard"]) if header.get("guard") else GuardState()
    return history, int(header["epoch"]), float(header["elapsed_s"]), gstate


@dataclass
class _EpochLoop:
    """One pass over the shuffled data. ``trained`` takes the update's forward (the model, or DDP around it);
    under torch.distributed each process takes its share ``rank::world`` of every global batch, so the averaged
    gradient is the full batch's, as in a single process."""

    trained: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    method: Any
    config: TrainConfig
    steps_per_epoch: int
    total_steps: int
    bounds: tuple[float, float]
    rank: int = 0
    world: int = 1
    average: WeightAverage | None = None

    def run(self, x: torch.Tensor, y: torch.Tensor, epoch: int, progress: bool) -> tuple[float, float, float]:
        """Returns (mean loss, accuracy on the training batches, last lr), over all processes."""
        config = self.config
        order_gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(len(x), generator=order_gen).to(x.device)
        # Attacks inside adversarial methods draw from their own generator, fixed by (seed, epoch, rank).
        attack_gen = torch.Generator(device=x.device).manual_seed(config.seed * 100_019 + epoch + 7_919 * self.rank)
        loss_sum = torch.zeros((), device=x.device)
        correct = torch.zeros((), device=x.device)
        seen = torch.zeros((), device=x.device)
        bar = tqdm(
            range(self.steps_per_epoch),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not progress,
            leave=False,
            unit="batch",
        )
        lr = config.lr
        for i in bar:
            step = epoch * self.steps_per_epoch + i
            lr = learning_rate(
                config.schedule, config.lr, step, self.total_steps, self.steps_per_epoch, config.milestones
            )
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            idx = order[i * config.batch_size : (i + 1) * config.batch_size][self.rank :: self.world]
            xb, yb = x[idx], y[idx]
            ctx = StepContext(
                epoch=epoch,
                progress=step / self.total_steps,
                generator=attack_gen,
                bounds=self.bounds,
                attack_model=self.model if self.trained is not self.model else None,
            )
            self.trained.train()
            # keep_layout: the optimizer and DDP's buckets hold the parameters' storage.
            with keep_layout(), autocast(x.device, config.precision):
                loss, logits = self.method(self.trained, xb, yb, ctx)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.average:
                self.average.update(self.model)
            loss_sum += loss.detach() * len(yb)
            correct += (logits.detach().argmax(1) == yb).sum()
            seen += len(yb)
            if progress and i % 20 == 0:
                bar.set_postfix(loss=f"{loss_sum.item() / seen.item():.4f}", acc=f"{correct.item() / seen.item():.4f}")
        bar.close()
        totals = torch.stack([loss_sum, correct, seen]).double()
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        return (totals[0] / totals[2]).item(), (totals[1] / totals[2]).item(), lr
