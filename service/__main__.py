"""The ``fusionserve`` command line.

``serve`` and ``predict`` belong to the server (the load benchmark is
``benchmarks/serving.py``). ``train``,
``export``, ``build-repo`` and ``report`` come from ``models/`` and are the
only place the server's entry point reaches it — lazily, so serving ONNX never
imports torch.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("fusionserve")

NO_REPOSITORY = """\
fusionserve: no model repository to serve.
  No --model-repository (or FUSIONSERVE_MODEL_REPOSITORY) was given, and the bundled
  default repository is not built yet at {path}.
  Building it trains the demo models and needs the training extra, which this install lacks.
  Either point at a repository you have:
      fusionserve serve --model-repository /path/to/model-repository
  or install the training extra and build the default one once (about five minutes):
      pip install "fusionserve[cpu,torch]" torch==2.13.0
      fusionserve build-repo"""


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model repository over HTTP and gRPC")
    p.add_argument("--model-repository", type=Path, help="default: the bundled repository, built if missing")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--http-port", type=int)
    p.add_argument("--grpc-port", type=int, help="0 picks a free port; -1 disables gRPC")
    p.add_argument("--drain-timeout", type=float, dest="drain_timeout_s")
    p.add_argument("--shutdown-grace", type=float, dest="shutdown_grace_s")
    p.add_argument("--max-inflight-bytes", type=int, dest="max_inflight_bytes")
    p.add_argument("--max-inflight-requests", type=int, dest="max_inflight_requests")
    p.add_argument("--decode-threads", type=int)
    p.add_argument(
        "--workers", type=int, help="server processes sharing the ports (default: one per available core)"
    )
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
    p.add_argument(
        "--allow-model-code",
        action="store_true",
        default=None,
        help="run entries' own preprocess/postprocess Python (code_file): only for a trusted repository",
    )
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        from pydantic import ValidationError

        from fusionserve.service.app import serve
        from fusionserve.service.config import Settings, default_repository_dir, default_repository_is_current
        from fusionserve.service.logs import configure_logging
    except ImportError as exc:  # a client-only install (no `cpu`/`gpu` extra)
        print(
            f"fusionserve serve: this install has no server ({exc.name} is missing); "
            'install one with: pip install "fusionserve[cpu]"  (or [gpu] on a CUDA host)',
            file=sys.stderr,
        )
        return 2

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
            if importlib.util.find_spec("torch") is None:
                print(NO_REPOSITORY.format(path=repository), file=sys.stderr)
                return 2
            log.info("building the default model repository into %s (first run only)", repository)
            rebuild = True
        elif not default_repository_is_current(repository):
            log.info("the default model repository in %s was built by older code: rebuilding", repository)
            rebuild = True
        else:
            rebuild = False
        if rebuild:
            done = subprocess.run(
                [sys.executable, "-m", "fusionserve", "build-repo", "--out", str(repository)]
            )
            if done.returncode != 0:
                log.error("could not build the default repository (exit %d)", done.returncode)
                return done.returncode
    if not repository.is_dir():
        log.error("model repository %s does not exist", repository)
        return 2
    from fusionserve.service.cpus import available_cpus

    workers = settings.workers or available_cpus()
    if workers == 1:
        return serve(settings, repository)
    from fusionserve.service.supervisor import Supervisor

    return Supervisor(settings, repository, workers).run()


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
    from fusionserve.service.client import FusionClient, FusionClientError

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
    from fusionserve.service.config import Settings
    from fusionserve.service.healthcheck import probe

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
        from fusionserve.models.cli import register
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
