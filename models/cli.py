"""The ``train``, ``export``, ``build-repo`` and ``report`` subcommands of ``fusionserve``.

``register`` adds them to the top-level parser (``service/__main__.py``).
Nothing heavy is imported here at module level: torch and the training code
load only when one of these commands runs, so ``fusionserve serve`` of ONNX
models never pays for them.
"""

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

STRATEGY_HELP = "early, late, tensor, lowrank, gated, attention, crossmodal, singlestream, or contrastive"


def register(subparsers: Any) -> None:
    """Add the model subcommands to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("train", help="train one fusion strategy (or the contrastive model)")
    p.add_argument("--strategy", required=True, help=STRATEGY_HELP)
    p.add_argument("--epochs", type=int, default=None, help="epochs of the fusion (or embedding) stage")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write (.pt)")
    _common(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("export", help="write a repository entry from a checkpoint")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--repo", type=Path, required=True, help="model repository directory")
    p.add_argument("--name", required=True, help="model name (the entry's directory)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--format", choices=["onnx", "torchscript", "both"], default="both")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("build-repo", help="build the default model repository from scratch")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_build_repo)

    p = subparsers.add_parser("report", help="print the accuracy report of a built repository")
    p.add_argument("--repo", type=Path, default=None, help="repository (default: the server's default)")
    p.add_argument("--recompute", action="store_true", help="re-measure from the exported ONNX files")
    p.add_argument("--seed", type=int, default=0, help="dataset seed (with --recompute)")
    p.add_argument("--cache", type=Path, default=None, help="cache directory (with --recompute)")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.set_defaults(func=cmd_report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None, help="cache directory (default ~/.cache/fusionserve)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _setup(quiet: bool = False) -> None:
    import warnings

    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(message)s")
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")


def cmd_train(args: argparse.Namespace) -> int:
    _setup(args.quiet)
    from dataclasses import replace

    from models.build_repo import Trainer, default_cache_dir
    from models.checkpoint import load_checkpoint, save_checkpoint
    from models.data.dataset import build_dataset
    from models.fusion import STRATEGIES
    from models.train import TrainConfig, configure_determinism

    if args.strategy != "contrastive" and args.strategy not in STRATEGIES:
        print(f"error: unknown fusion strategy {args.strategy!r}; known: {STRATEGY_HELP}", file=sys.stderr)
        return 2
    configure_determinism()
    cfg = TrainConfig()
    if args.epochs is not None:
        field = "embed_epochs" if args.strategy == "contrastive" else "fusion_epochs"
        cfg = replace(cfg, **{field: args.epochs})
    cache = args.cache or default_cache_dir()
    ds = build_dataset(args.seed, cache_dir=cache / "dataset", progress=not args.quiet)
    dataset_hash = ds.content_hash()
    trainer = Trainer(ds, dataset_hash, cfg, args.seed, cache, not args.quiet)
    path = trainer.embedder() if args.strategy == "contrastive" else trainer.fusion(args.strategy)
    ckpt = load_checkpoint(path)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, ckpt.kind, ckpt.spec, ckpt.build(), ckpt.meta)
    print(f"wrote {args.out}: {ckpt.meta.get('metrics')}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _setup()
    from models.checkpoint import CheckpointError, load_checkpoint
    from models.entries import export_checkpoint
    from models.export import ExportError

    formats = ("onnx", "torchscript") if args.format == "both" else (args.format,)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        entry = export_checkpoint(ckpt, args.name, args.repo, args.version, formats)
    except (CheckpointError, ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {entry} version {args.version} ({', '.join(formats)})")
    return 0


def cmd_build_repo(args: argparse.Namespace) -> int:
    _setup(args.quiet)
    from models.build_repo import BuildOptions, build_repo
    from models.report import format_report

    t0 = time.perf_counter()
    report = build_repo(
        BuildOptions(out=args.out, seed=args.seed, cache_dir=args.cache, progress=not args.quiet)
    )
    print(format_report(report))
    print(f"repository {args.out} built in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from models.report import ReportError, format_report, read_report, recompute

    repo = args.repo
    if repo is None:
        from service.config import default_repository_dir

        repo = default_repository_dir()
    try:
        report = recompute(repo, args.cache, args.seed) if args.recompute else read_report(repo)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
