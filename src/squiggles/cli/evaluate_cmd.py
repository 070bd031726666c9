"""``squiggles evaluate``: robust accuracy by the attack cascade, at one budget or along a curve.

Under ``torchrun --nproc_per_node=N -m squiggles evaluate ...`` the points are sharded across the processes
and the merged result equals the single-process one; rank 0 writes it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from squiggles.cli.common import (
    add_common,
    add_data_args,
    add_model_args,
    nonneg_float,
    positive_int,
    remove_state_files,
    resolve_data,
    resolve_model,
    say,
)
from squiggles.errors import SquigglesError

EXAMPLES = """examples:
  squiggles evaluate --model runs/madry --dataset mnist --norm linf --eps 0.1 --n 1000 --out eval/madry.json
  squiggles evaluate --model runs/robust --norm linf --eps 0.1 0.2 0.3 0.4 --attacks quick --out eval/curve.json
  squiggles evaluate --model runs/robust --eps 0.3 --attacks apgd-ce,square --out eval/custom.json
  torchrun --nproc_per_node=2 -m squiggles evaluate --model runs/robust --eps 0.3 --out eval/sharded.json
  squiggles evaluate --model mnist-standard --threat spatial --n 1000 --out eval/spatial.json
      # rotations within +-30 degrees and shifts within +-3 px: grid, worst-of-10, first-order
  squiggles evaluate --model mnist-standard --threat patch --patch-area 0.01 0.04 --n 500 --out eval/patch.json
      # one square patch per image covering 1% or 4% of it: placed by saliency, then 8 random positions
  squiggles evaluate --model mypkg.endpoint:make --access labels --queries 10000 --norm linf --eps 0.3 \
      --n 200 --out eval/labels.json      # label-only: RayS (linf) or HSJA (l2), any callable as the model
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="robust accuracy by the attack cascade (one eps or a curve)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--threat", default="norm", choices=("norm", "spatial", "patch"),
                   help="norm: a --norm ball of radius --eps (default); spatial: rotations and translations; "
                   "patch: one square patch per image of --patch-area")
    p.add_argument("--norm", default="linf", choices=("linf", "l2", "l1"))
    p.add_argument("--eps", type=nonneg_float, nargs="+",
                   help="one budget, or several for a curve (required for --threat norm; for --threat spatial the "
                   "fraction of the box, default 1)")
    p.add_argument("--max-rotation", type=nonneg_float, default=30.0,
                   help="--threat spatial: largest rotation either way, in degrees (default 30)")
    p.add_argument("--max-translation", type=nonneg_float, default=3.0,
                   help="--threat spatial: largest shift along each axis, in pixels (default 3)")
    p.add_argument("--patch-area", type=nonneg_float, nargs="+", metavar="FRACTION",
                   help="--threat patch: the patch's share of the image, one or several for a curve (e.g. 0.04)")
    p.add_argument(
        "--attacks",
        default="standard",
        help="ensemble (standard, quick) or comma-separated attack names (default: standard)",
    )
    p.add_argument(
        "--access",
        default="gradients",
        choices=("gradients", "scores", "labels"),
        help="what the attacks may read of the model: gradients (white-box, default), scores (Square only) or "
        "labels (RayS for linf, HSJA for l2; --model may then be any package.module:factory returning a callable)",
    )
    p.add_argument("--queries", type=positive_int, help="model calls per point for the black-box and label-only stages")
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--state", help="progress file (default: OUT with .state.safetensors); rerun to resume")
    p.add_argument("--no-checks", action="store_true", help="skip the sanity checks (and so the remedies)")
    p.add_argument(
        "--no-remedies",
        action="store_true",
        help="report the cascade's figure only, without attacking again through the remedies a check calls for "
        "(logits behind a softmax, EOT, straight-through gradients, more black-box queries)",
    )
    p.add_argument("--out", required=True, help="results JSON file (a curve plot is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from squiggles._io import ensure_writable_dir

    out = Path(args.out)
    if out.suffix != ".json":
        raise SquigglesError(f"--out {args.out!r}: give a .json file name for the results")
    from squiggles.evaluation.ensembles import resolve_stages

    _patch_budgets(args)
    if args.eps is None:
        if args.threat == "norm":
            raise SquigglesError("--eps is required for --threat norm (one budget, or several for a curve)")
        args.eps = [1.0]
    if args.threat == "spatial":
        from squiggles.transforms import Spatial

        Spatial(args.max_rotation, args.max_translation, eps=max(args.eps))  # bad bounds fail before any write
    resolve_stages(args.attacks, args.access, _norm(args), args.queries)  # a bad combination fails before any write
    ensure_writable_dir(out.parent)
    if out.exists() and not args.overwrite:
        raise SquigglesError(f"{out} already exists; use --overwrite or another --out")
    from squiggles.distributed import torchrun_group

    with torchrun_group(args.device) as rank:
        return _evaluate_and_write(args, out, rank)


def _evaluate_and_write(args: argparse.Namespace, out: Path, rank: int | None) -> int:
    import torch

    from squiggles._io import write_json
    from squiggles.distributed import rank_device
    from squiggles.evaluation import evaluate
    from squiggles.report.figures import eps_curve
    from squiggles.runtime import resolve_device
    device = resolve_device(rank_device(args.device))
    model, card = resolve_model(args, any_callable=args.access == "labels")
    if isinstance(model, torch.nn.Module):
        model.to(device)
    data = resolve_data(args)
    threat = _threat(args, data)
    state = Path(args.state) if args.state else out.with_suffix(".state.safetensors")
    result = evaluate(
        model,
        data,
        threat,
        args.attacks,
        eps=args.eps,
        batch_size=args.batch_size,
        seed=args.seed,
        state_path=state,
        checks=not args.no_checks,
        remedies=not args.no_remedies,
        progress=not args.quiet and not rank,
        device=device,
        access=args.access,
        queries=args.queries,
    )
    if rank:
        return 0
    report = {**result.to_json(), "model": args.model, "model_card": card, "dataset": args.dataset, "split": args.split}
    if len(result.eps) > 1:
        plot = eps_curve(
            out.with_suffix(".curve.png"),
            {Path(args.model).name: (result.eps, [c["robust_accuracy"] for c in result.curve()])},
            _norm(args),
        )
        report["files"] = [plot.name]
    write_json(out, report)
    remove_state_files(state)
    print(result.table())
    say(args, f"results in {out}")
    return 0


def _patch_budgets(args: argparse.Namespace) -> None:
    """--patch-area is the patch threat's budget (its eps); it belongs to that threat alone."""
    if args.threat != "patch":
        if args.patch_area is not None:
            raise SquigglesError("--patch-area is for --threat patch; add --threat patch, or drop --patch-area")
        return
    if args.eps is not None:
        raise SquigglesError("--threat patch takes its budget from --patch-area (a fraction of the image), not --eps")
    if args.patch_area is None:
        raise SquigglesError("--threat patch needs --patch-area, the patch's share of the image (e.g. 0.04)")
    from squiggles.patches import PatchArea

    for area in args.patch_area:
        PatchArea(area)  # a bad area fails before any write
    args.eps = list(args.patch_area)


def _norm(args: argparse.Namespace) -> str:
    return args.threat if args.threat in ("spatial", "patch") else args.norm


def _threat(args: argparse.Namespace, data: Any) -> Any:
    if args.threat == "spatial":
        from squiggles.transforms import Spatial, check_images

        check_images(data.x[:1])
        return Spatial(args.max_rotation, args.max_translation, data.bounds, eps=args.eps[0])
    if args.threat == "patch":
        from squiggles.patches import PatchArea
        from squiggles.transforms import check_images

        check_images(data.x[:1])
        if PatchArea(max(args.eps), data.bounds).patch_for(data.x[:1]) is None:
            h, w = data.x.shape[-2:]
            raise SquigglesError(f"--patch-area {max(args.eps):g} is less than one pixel of these {h} x {w} images; "
                                 f"give at least {1 / (h * w):.4g}")
        return PatchArea(args.eps[0], data.bounds)
    from squiggles.threat import make_threat

    return make_threat(args.norm, args.eps[0], data.bounds)
