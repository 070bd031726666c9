"""The evaluation panel: models that differ in what makes evaluation hard, each evaluated by squiggles' `quick`
and `standard` and by the reference AutoAttack (pyautoattack's standard version) on the same points, in one
run per model, with the per-point comparison.

    .venv/bin/python benchmarks/panel.py train                     # trains the panel into ~/.cache (once)
    .venv/bin/python benchmarks/panel.py run > panel.json          # every model: quick, standard, AutoAttack
    .venv/bin/python benchmarks/panel.py run --models small-pgd --which standard   # recheck ours only
    .venv/bin/python benchmarks/panel.py table benchmarks/results/panel   # the README's Markdown table

`run` keeps AutoAttack's per-point results (which points it left robust, which of its attacks broke the rest)
in ``benchmarks/results/panel/<model>.autoattack.json``; a later `run --which standard` compares against them
without rerunning AutoAttack (its strength is fixed by seed and points; time ratios only ever come from one
run, so a recheck reports none). Each model's full record goes to ``benchmarks/results/panel/<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import log, machine_info  # noqa: E402

import squiggles  # noqa: E402
import squiggles.attacks.apgd  # noqa: E402, F401  (imported now: a long run keeps the code it started with)
import squiggles.attacks.square  # noqa: E402, F401
import squiggles.evaluation.checks  # noqa: E402, F401
import squiggles.evaluation.remedied  # noqa: E402, F401
from squiggles.threat import make_threat  # noqa: E402

PANEL_DIR = Path.home() / ".cache" / "squiggles" / "panel"
RESULTS = Path(__file__).resolve().parent / "results" / "panel"


@dataclass(frozen=True)
class Member:
    """One model of the panel: how it is made, and the threat model and points it is evaluated on."""

    name: str
    hard_because: str
    train: list[str] | None  # `squiggles train` arguments, or None for a wrapper / a zoo model
    norm: str
    eps: float
    n: int
    base: str | None = None  # the panel model a broken defence wraps, or the zoo name
    defence: str | None = None


def _t(*args: str) -> list[str]:
    return ["--dataset", "mnist", "--seed", "0", "--quiet", *args]


PANEL: list[Member] = [
    Member("madry-standard", "standard CNN, Madry architecture", _t("--model", "madry-cnn"), "linf", 0.1, 200),
    Member("small-standard", "standard CNN, Wong et al.'s small architecture", _t("--model", "small-cnn"),
           "linf", 0.1, 500),
    Member("mlp-standard", "standard MLP", _t("--model", "mlp", "--epochs", "2"), "linf", 0.05, 500),
    Member("small-pgd", "PGD-trained (Madry et al.)",
           _t("--model", "small-cnn", "--method", "pgd", "--eps", "0.3", "--attack-steps", "10", "--epochs", "3"),
           "linf", 0.3, 500),
    Member("small-trades", "TRADES-trained",
           _t("--model", "small-cnn", "--method", "trades", "--eps", "0.3", "--attack-steps", "5", "--epochs", "3"),
           "linf", 0.3, 500),
    Member("madry-fgsm", "FGSM-RS-trained without the guard: collapsed (catastrophic overfitting)",
           _t("--model", "madry-cnn", "--method", "fgsm-rs", "--eps", "0.3", "--epochs", "2", "--no-guard",
              "--final-eval", "none"), "linf", 0.3, 200),
    Member("small-l2", "L2 PGD-trained",
           _t("--model", "small-cnn", "--method", "pgd", "--norm", "l2", "--eps", "2.0", "--epochs", "3"),
           "l2", 2.0, 500),
    Member("linf-model-under-l2", "Linf-trained zoo model attacked in L2: hides its L2 gradients", None, "l2", 2.0,
           200, base="zoo:mnist-linf-0.3"),
    Member("quantised", "broken defence: input quantisation (no gradient)", None, "linf", 0.1, 500,
           "small-standard", "quantise"),
    Member("gradient-blocker", "broken defence: a layer with a zero backward", None, "linf", 0.1, 500,
           "small-standard", "blocker"),
    Member("saturated-softmax", "broken defence: outputs softmax(1000 logits)", None, "linf", 0.1, 500,
           "small-standard", "softmax"),
    Member("random-noise", "broken defence: Gaussian noise on the input at test time", None, "linf", 0.1, 200,
           "small-standard", "noise"),
]
BY_NAME = {m.name: m for m in PANEL}


# --- the broken defences (the same four kinds as tests/test_broken_defences.py) -------------------------------


class Quantise(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return (x * 4).round() / 4


class _Block(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad)


class GradientBlocker(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _Block.apply(x)


class Scale(nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: Tensor) -> Tensor:
        return x * self.k


class Noise(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return (x + 0.2 * torch.randn_like(x)).clamp(0, 1)


def defend(net: nn.Module, kind: str) -> nn.Module:
    return {
        "quantise": lambda: nn.Sequential(Quantise(), net),
        "blocker": lambda: nn.Sequential(GradientBlocker(), net),
        "softmax": lambda: nn.Sequential(net, Scale(1000.0), nn.Softmax(1)),
        "noise": lambda: nn.Sequential(Noise(), net),
    }[kind]().eval()


def load_member(m: Member, panel_dir: Path) -> nn.Module:
    if m.base and m.base.startswith("zoo:"):
        from squiggles.zoo import load_zoo_model

        model = load_zoo_model(m.base[4:])
    elif m.defence:
        model = defend(load_member(BY_NAME[m.base], panel_dir), m.defence)
    else:
        folder = panel_dir / m.name
        if not (folder / "model.safetensors").exists():
            raise SystemExit(f"{folder} has no model; run `benchmarks/panel.py train` first")
        model = squiggles.load_model(folder)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


# --- train ---------------------------------------------------------------------------------------------------


def train(panel_dir: Path, names: list[str]) -> None:
    import subprocess

    for m in PANEL:
        if m.train is None or m.name not in names:
            continue
        out = panel_dir / m.name
        if (out / "model.safetensors").exists():
            log(f"{m.name}: already trained in {out}")
            continue
        cmd = [sys.executable, "-m", "squiggles", "train", *m.train, "--out", str(out), "--overwrite"]
        log(f"{m.name}: {' '.join(cmd[3:])}")
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        log(f"{m.name}: trained in {time.perf_counter() - start:.0f} s")


# --- run -----------------------------------------------------------------------------------------------------


def verified(model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor, threat: Any) -> tuple[Tensor, bool]:
    """Per-point robustness by one forward pass on the returned inputs, and whether they respect the threat."""
    inside = bool((threat.norm(x_adv - x) <= float(threat.eps) + 1e-5).all()) and bool(
        (x_adv >= threat.bounds[0]).all() and (x_adv <= threat.bounds[1]).all())
    with torch.no_grad():
        pred = torch.cat([model(x_adv[i: i + 250]).argmax(1) for i in range(0, len(x), 250)])
    return pred == y, inside


def stages_of(which: str) -> Any:
    """An ensemble by name; ``standard-bf16`` is `standard` with Square's search in bfloat16 (a candidate)."""
    from squiggles.evaluation.ensembles import ENSEMBLES, Stage

    if which != "standard-bf16":
        return which
    return tuple(Stage(s.attack, {**s.options, "precision": "bf16"}, s.label) if s.attack == "square" else s
                 for s in ENSEMBLES["standard"])


def run_ours(model: nn.Module, x: Tensor, y: Tensor, threat: Any, ensemble: str) -> dict[str, Any]:
    """The evaluation as a user runs it: the cascade, the sanity checks and the remedies they call for."""
    start = time.perf_counter()
    res = squiggles.evaluate(model, (x, y), threat, stages_of(ensemble), batch_size=250, progress=False, seed=0)
    seconds = time.perf_counter() - start
    robust, inside = verified(model, x, res.x_adv[0], y, threat)
    names = [s["name"] for s in res.stages]
    codes = res.broken_by[0]
    broken_by = [names[c] if c >= 0 else {-1: "clean", -2: None, -3: "reused"}[int(c)] for c in codes.tolist()]
    return {
        "seconds": round(seconds, 2),
        "robust_accuracy": res.robust_accuracy,
        "unremedied_robust_accuracy": res.unremedied_robust_accuracy,
        # A random model's verdict on one more pass is a draw; the cascade's own verdict is what is reported.
        "verified_robust_accuracy": robust.float().mean().item(),
        "inside": inside,
        "breakdown": res.breakdown(0),
        "flags": [{k: f[k] for k in ("code", "message", "severity")} for f in res.flags],
        "remedies": res.remedies,
        "model_calls": res.model_calls(),
        "_robust": res.robust[0].clone(),
        "_broken_by": broken_by,
    }


OURS = ("quick", "standard", "standard-bf16")
ATTRIBUTED = {"apgd": "apgd-ce", "apgd_targeted": "apgd-t", "fab": "fab-t", "square": "square"}


def run_autoattack(model: nn.Module, x: Tensor, y: Tensor, threat: Any) -> dict[str, Any]:
    """pyautoattack's standard version, seed 0, with each broken point attributed to the attack that broke it
    (each attack object's ``perturb`` is wrapped; the points of a batch are found by their row of ``x``)."""
    import logging

    from pyautoattack import AutoAttack

    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    norm = {"linf": "Linf", "l2": "L2", "l1": "L1"}[threat.name]
    adversary = AutoAttack(model, norm=norm, eps=float(threat.eps), version="standard", seed=0, device="cpu")
    rows = {x[i].numpy().tobytes(): i for i in range(len(x))}
    broken_by: list[str | None] = [None] * len(x)
    for attr, name in ATTRIBUTED.items():
        _attribute(getattr(adversary, attr), name, model, rows, broken_by)
    start = time.perf_counter()
    x_adv, _ = adversary.run_standard_evaluation(x, y, batch_size=250)
    seconds = time.perf_counter() - start
    robust, inside = verified(model, x, x_adv, y, threat)
    with torch.no_grad():
        clean = torch.cat([model(x[i: i + 250]).argmax(1) for i in range(0, len(x), 250)]) == y
    for i in range(len(x)):
        if not clean[i]:
            broken_by[i] = "clean"
        elif robust[i]:
            broken_by[i] = None
    return {"seconds": round(seconds, 2), "robust_accuracy": robust.float().mean().item(), "inside": inside,
            "_robust": robust, "_broken_by": broken_by}


def _attribute(attack: Any, name: str, model: nn.Module, rows: dict[bytes, int], broken_by: list) -> None:
    perturb = attack.perturb

    def wrapped(x: Tensor, y: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        adv = perturb(x, y, *args, **kwargs)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != y
        for j in fooled.nonzero().flatten().tolist():
            i = rows.get(x[j].cpu().numpy().tobytes())
            if i is not None and broken_by[i] is None:
                broken_by[i] = name
        return adv

    attack.perturb = wrapped


def compare(ours: dict[str, Any], aa: dict[str, Any]) -> dict[str, Any]:
    """The points each broke that the other did not, with the attack that broke them."""
    r_ours, r_aa = ours["_robust"], torch.as_tensor(aa["robust"] if "robust" in aa else aa["_robust"])
    only_aa = (r_ours & ~r_aa).nonzero().flatten().tolist()
    only_ours = (~r_ours & r_aa).nonzero().flatten().tolist()
    aa_by = aa.get("broken_by") or aa.get("_broken_by")
    return {
        "broken_only_by_autoattack": [{"point": i, "by": aa_by[i]} for i in only_aa],
        "broken_only_by_squiggles": [{"point": i, "by": ours["_broken_by"][i]} for i in only_ours],
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"benchmark": "panel", "machine": machine_info(args.threads), "models": {}}
    test = squiggles.load_dataset("mnist", "test", progress=False)
    for name in args.models:
        m = BY_NAME[name]
        n = args.n or m.n
        x, y = test.x[:n].contiguous(), test.y[:n].contiguous()
        model = load_member(m, Path(args.panel_dir))
        threat = make_threat(m.norm, m.eps, test.bounds)
        row: dict[str, Any] = {"hard_because": m.hard_because, "threat": threat.describe(), "n": n,
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        torch.manual_seed(0)  # the random defence draws from the global RNG
        with torch.no_grad():
            row["clean_accuracy"] = (model(x).argmax(1) == y).float().mean().item()
        stored = RESULTS / f"{name}.autoattack.json"
        for which in args.which:
            log(f"{name}: {which} on {n} points at {m.norm} {m.eps:g} ...")
            torch.manual_seed(0)
            row[which] = run_autoattack(model, x, y, threat) if which == "autoattack" else run_ours(
                model, x, y, threat, which)
            log(f"{name}: {which} {row[which]['robust_accuracy']:.4f} in {row[which]['seconds']} s")
        aa = row.get("autoattack")
        if aa is not None:
            stored.write_text(json.dumps({"model": name, "threat": row["threat"], "n": n, "seed": 0,
                                          "pyautoattack": _version("pyautoattack"), "seconds": aa["seconds"],
                                          "robust_accuracy": aa["robust_accuracy"],
                                          "robust": aa["_robust"].int().tolist(), "broken_by": aa["_broken_by"]}))
        elif stored.exists():
            aa = json.loads(stored.read_text())
            if aa["n"] != n:
                aa = None
        for which in OURS:
            if which in row and aa is not None:
                row[f"{which}_vs_autoattack"] = compare(row[which], aa)
                if "autoattack" in row:  # time ratios only from one run
                    row[f"{which}_vs_autoattack"]["time_ratio"] = round(row[which]["seconds"] / aa["seconds"], 3)
        for which in args.which:
            row[which].pop("_robust", None)
            row[which]["broken_by"] = row[which].pop("_broken_by", None)
        (RESULTS / f"{name}.json").write_text(json.dumps(row, indent=1, default=str))
        report["models"][name] = row
        log(json.dumps({name: _summary(row)}))
    return report


def _summary(row: dict[str, Any]) -> dict[str, Any]:
    out = {"clean": row["clean_accuracy"]}
    for which in (*OURS, "autoattack"):
        if which in row:
            out[which] = (row[which]["robust_accuracy"], row[which]["seconds"])
    for which in OURS:
        cmp = row.get(f"{which}_vs_autoattack")
        if cmp:
            out[f"{which}_only_aa"] = len(cmp["broken_only_by_autoattack"])
            out[f"{which}_only_ours"] = len(cmp["broken_only_by_squiggles"])
    return out


def _version(module: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# --- table ---------------------------------------------------------------------------------------------------


def table(folder: Path) -> str:
    """The README's panel table from the per-model records: one column per evaluation that was run."""
    rows = [(m, json.loads((folder / f"{m.name}.json").read_text())) for m in PANEL
            if (folder / f"{m.name}.json").exists()]
    ours = [w for w in OURS if any(w in row for _, row in rows)]
    compared = [w for w in ours if w != "quick"]
    head = ["model", "hard because", "threat, points", "clean", *[f"`{w}`" for w in ours], "AutoAttack"]
    for w in compared:
        head += [f"`{w}` time / AA's", f"broken only by AA / only by `{w}`"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m, row in rows:
        threat = row["threat"]
        cells = [f"`{m.name}`", m.hard_because, f"{threat['norm']} {threat['eps']:g}, {row['n']}",
                 f"{100 * row['clean_accuracy']:.1f}%", *[_accuracy(row.get(w)) for w in ours],
                 _accuracy(row.get("autoattack"))]
        for w in compared:
            cmp = row.get(f"{w}_vs_autoattack") or {}
            ratio = cmp.get("time_ratio")
            cells += [f"{ratio:.3f}" if ratio is not None else "-",
                      f"{_who(cmp['broken_only_by_autoattack'])} / {_who(cmp['broken_only_by_squiggles'])}"
                      if cmp else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _accuracy(r: dict[str, Any] | None) -> str:
    if not r:
        return "-"
    text = f"{100 * r['robust_accuracy']:.1f}% ({r['seconds']:.0f} s)"
    before = r.get("unremedied_robust_accuracy")
    if before is not None and abs(before - r["robust_accuracy"]) > 1e-9:
        text += f" [{100 * before:.1f}% before remedies]"
    return text


def _who(items: list[dict[str, Any]]) -> str:
    """``3 (square 2, fab-t 1)``: how many points, and by which attack."""
    by: dict[str, int] = {}
    for it in items:
        by[str(it["by"])] = by.get(str(it["by"]), 0) + 1
    return f"{len(items)}" + (f" ({', '.join(f'{k} {v}' for k, v in by.items())})" if by else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the panel's models (skips those already trained)")
    t.add_argument("--panel-dir", default=str(PANEL_DIR))
    t.add_argument("--models", nargs="+", default=[m.name for m in PANEL], choices=list(BY_NAME))
    r = sub.add_parser("run", help="evaluate the panel; one JSON object on stdout")
    r.add_argument("--panel-dir", default=str(PANEL_DIR))
    r.add_argument("--models", nargs="+", default=[m.name for m in PANEL], choices=list(BY_NAME))
    r.add_argument("--which", nargs="+", default=["quick", "standard", "autoattack"],
                   choices=(*OURS, "autoattack"))
    r.add_argument("--n", type=int, help="points per model (default: each model's own, 500 or 200)")
    r.add_argument("--threads", type=int, default=2)
    tb = sub.add_parser("table", help="the Markdown table from a results folder")
    tb.add_argument("folder", nargs="?", default=str(RESULTS))
    args = p.parse_args()
    if args.command == "train":
        train(Path(args.panel_dir), args.models)
    elif args.command == "run":
        print(json.dumps(run(args), indent=1, default=str))
    else:
        print(table(Path(args.folder)))


if __name__ == "__main__":
    main()
