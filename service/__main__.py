"""The ``fusionserve`` command line.

``serve`` and ``predict`` belong to the server (the load benchmark is
``benchmarks/serving.py``). ``train``,
``export``, ``build-repo`` and ``report`` come from ``models/`` and are the
only place the server's entry point reaches it — lazily, so serving ONNX never
imports torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("fusionserve")


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    p.add_argument("--model-repository", type=Path, help="default: the bundled repository, built if missing")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int, help="0 picks a free port; -1 disables gRPC")
    p.add_argument("--drain-timeout", type=float, dest="drain_timeout_s")
    p.add_argument("--decode-threads", type=int)
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", choices=["json", "text"])
    p.add_argument(
        "--model-control",
        choices=["none", "explicit"],
        help="none (default): repository load/unload refused; explicit: allowed (admin token)",
    )
    p.add_argument(
        "--allow-torchscript",
        action="store_const",
        const=True,
        help="load TorchScript model.pt files (they are code: trusted repositories only)",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.app import serve
    from service.config import Settings, default_repository_dir
    from service.logs import configure_logging

    overrides = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    if overrides.get("grpc_port") == -1:
        overrides["grpc_port"] = None
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        print(f"fusionserve: invalid settings: {problems}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    repository = settings.model_repository
    if repository is None:
        repository = default_repository_dir()
        if not repository.is_dir() or not any(repository.iterdir()):
            log.info("building the default model repository into %s (first run only)", repository)
            done = subprocess.run([sys.executable, "-m", "service", "build-repo", "--out", str(repository)])
            if done.returncode != 0:
                log.error("could not build the default repository (exit %d)", done.returncode)
                return done.returncode
    if not repository.is_dir():
        log.error("model repository %s does not exist", repository)
        return 2
    serve(settings, repository)
    return 0


def _add_predict(sub: Any) -> None:
    p = sub.add_parser("predict", help="send one request to a running server and print the answer")
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", required=True)
    p.add_argument("--version")
    p.add_argument("--image", type=Path)
    p.add_argument("--audio", type=Path)
    p.add_argument("--text")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--embed", action="store_true", help="ask for embeddings instead of a prediction")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=_predict)


def _predict(args: argparse.Namespace) -> int:
    from service.client import FusionClient, FusionClientError

    with FusionClient(args.url, timeout=args.timeout) as client:
        try:
            if args.embed:
                answer = client.embed(
                    args.model, image=args.image, audio=args.audio, text=args.text, version=args.version
                )
            else:
                answer = client.predict(
                    args.model,
                    image=args.image,
                    audio=args.audio,
                    text=args.text,
                    top_k=args.top_k,
                    version=args.version,
                )
        except FusionClientError as exc:
            print(f"error {exc.status}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(answer, indent=2))
    return 0


def _add_healthcheck(sub: Any) -> None:
    p = sub.add_parser(
        "healthcheck",
        help="probe this container's server (exit 0 when ready); TLS and mTLS from the same settings",
    )
    p.add_argument("--live", action="store_true", help="check liveness instead of readiness")
    p.add_argument("--timeout", type=float, default=4.0)
    p.set_defaults(func=_healthcheck)


def _healthcheck(args: argparse.Namespace) -> int:
    from service.config import Settings
    from service.healthcheck import probe

    ok, detail = probe(Settings(), live=args.live, timeout_s=args.timeout)
    print(detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusionserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    _add_predict(sub)
    _add_healthcheck(sub)
    try:
        from models.cli import register
    except ImportError:  # a slim install without models/
        pass
    else:
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
