"""The model subcommands of ``fusionserve``: train, export, build-repo, report, inspect, verify.

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

    p = subparsers.add_parser(
        "export", help="write a repository entry from a checkpoint, or from any nn.Module with a config.yaml"
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a checkpoint written by fusionserve train")
    source.add_argument("--module", metavar="FILE.py:FACTORY", help="a function returning your nn.Module")
    p.add_argument("--config", type=Path, help="with --module: the entry's config.yaml (its mapping)")
    p.add_argument("--labels", type=Path, help="with --module: labels.txt of a classifier")
    p.add_argument("--tokenizer", type=Path, help="with --module: tokenizer.json of a text model")
    p.add_argument("--atol", type=float, default=1e-4, help="with --module: parity tolerance")
    p.add_argument("--repo", type=Path, required=True, help="model repository directory")
    p.add_argument("--name", help="model name (the entry's directory; default: the config's name)")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--format", choices=["onnx", "torchscript", "both"], default="both")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser("build-repo", help="build the default model repository from scratch")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.set_defaults(func=cmd_build_repo)

    p = subparsers.add_parser(
        "inspect", help="print a graph's inputs/outputs and write a starter config.yaml"
    )
    p.add_argument("model_file", type=Path, help="model.onnx or model.pt")
    p.add_argument("--out", type=Path, default=None, help="write the starter config here (default: stdout)")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser("verify", help="load an entry as the server will, run it, compare with yours")
    p.add_argument("entry_dir", type=Path, help="<repository>/<model>")
    p.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="your preprocessing: a .py with preprocess(files), or a .npz",
    )
    p.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="MODALITY=PATH",
        help="input to use (image=a.png, audio=b.wav, text='words' or text=@file.txt); default: generated",
    )
    p.add_argument("--atol", type=float, default=1e-4)
    p.set_defaults(func=cmd_verify)

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

    from fusionserve.models.build_repo import Trainer, default_cache_dir
    from fusionserve.models.checkpoint import load_checkpoint, save_checkpoint
    from fusionserve.models.data.dataset import build_dataset
    from fusionserve.models.fusion import STRATEGIES
    from fusionserve.models.train import TrainConfig, configure_determinism

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
    from fusionserve.models.checkpoint import CheckpointError, load_checkpoint
    from fusionserve.models.entries import export_checkpoint
    from fusionserve.models.export import ExportError

    formats = ("onnx", "torchscript") if args.format == "both" else (args.format,)
    if args.module:
        return _export_module(args, formats)
    if not args.name:
        print("error: --checkpoint needs --name", file=sys.stderr)
        return 2
    try:
        ckpt = load_checkpoint(args.checkpoint)
        entry = export_checkpoint(ckpt, args.name, args.repo, args.version, formats)
    except (CheckpointError, ExportError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {entry} version {args.version} ({', '.join(formats)})")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from fusionserve.models.starter import describe, starter_config

    if not args.model_file.is_file():
        print(f"error: {args.model_file}: no such file", file=sys.stderr)
        return 2
    try:
        print(describe(args.model_file), file=sys.stderr if args.out is None else sys.stdout)
        text, leftovers = starter_config(args.model_file)
    except Exception as exc:  # onnx/torch raise many types for a file they cannot read
        print(f"error: {args.model_file}: cannot read the graph: {exc}", file=sys.stderr)
        return 1
    for line in leftovers:
        print(f"warning: {line}", file=sys.stderr)
    if args.out is None:
        print(text, end="")
    else:
        args.out.write_text(text, encoding="utf-8")
        print(f"wrote {args.out}: check every line marked '# guess'")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from fusionserve.models.serve_check import read_files, verify

    pairs = dict(item.split("=", 1) for item in args.file if "=" in item)
    bad = [
        item
        for item in args.file
        if "=" not in item or item.split("=", 1)[0] not in ("image", "audio", "text")
    ]
    if bad:
        print(f"error: --file takes image=PATH, audio=PATH or text=WORDS, got {bad}", file=sys.stderr)
        return 2
    try:
        files = read_files(pairs) if pairs else None
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = verify(args.entry_dir, args.reference, files, args.atol)
    print("\n".join(report.lines))
    print("FAILED" if report.failed else "all checks passed")
    return 1 if report.failed else 0


def _export_module(args: argparse.Namespace, formats: tuple[str, ...]) -> int:
    """``export --module FILE.py:FACTORY --config config.yaml``: any nn.Module through export_entry."""
    import importlib.util

    from fusionserve.models.export import ExportError, export_entry
    from fusionserve.service.errors import ConfigError
    from fusionserve.service.model.config import load_model_config

    if args.config is None:
        print("error: --module needs --config (the entry's config.yaml)", file=sys.stderr)
        return 2
    file, _, factory = args.module.rpartition(":")
    if not file or not factory:
        print(f"error: --module takes FILE.py:FACTORY, got {args.module!r}", file=sys.stderr)
        return 2
    try:
        config = load_model_config(args.config)
        if args.name and args.name != config.name:
            config = config.model_validate({**config.model_dump(), "name": args.name})
        spec = importlib.util.spec_from_file_location("fusionserve_export_module", file)
        if spec is None or spec.loader is None:
            raise ValueError(f"{file}: not a Python file")
        source = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(source)
        module = getattr(source, factory)()
        labels = args.labels.read_text(encoding="utf-8").splitlines() if args.labels else None
        entry = export_entry(
            module,
            config=config,
            labels=[label for label in labels if label.strip()] if labels else None,
            tokenizer_path=args.tokenizer,
            repo_dir=args.repo,
            version=args.version,
            formats=formats,
            atol=args.atol,
        )
    except (ConfigError, ExportError, OSError, ValueError, AttributeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {entry} version {args.version} ({', '.join(formats)})")
    return 0


def cmd_build_repo(args: argparse.Namespace) -> int:
    _setup(args.quiet)
    from fusionserve.models.build_repo import BuildOptions, build_repo
    from fusionserve.models.report import format_report

    t0 = time.perf_counter()
    report = build_repo(
        BuildOptions(out=args.out, seed=args.seed, cache_dir=args.cache, progress=not args.quiet)
    )
    print(format_report(report))
    print(f"repository {args.out} built in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from fusionserve.models.report import ReportError, format_report, read_report, recompute

    repo = args.repo
    if repo is None:
        from fusionserve.service.config import default_repository_dir

        repo = default_repository_dir()
    try:
        report = recompute(repo, args.cache, args.seed) if args.recompute else read_report(repo)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.json else format_report(report), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusionserve.models.cli")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
