"""Build the CPU image without a Docker engine and serve real requests from it.

    sudo .venv/bin/python docker/image_check.py [--repository DIR] [--text "..."]

This machine has no Docker engine, so the image is proven in four steps:

1. ``docker/local-base.sh`` makes a Debian bookworm base with debootstrap and
   imports it into podman (a stand-in for ``python:3.11-slim-bookworm``, which
   cannot be pulled here);
2. ``podman build --isolation=chroot --target cpu`` builds the Dockerfile's CPU
   target against it, executing every ``RUN`` step;
3. the image's root filesystem is exported (``podman create`` + ``export``);
4. the image's own ENTRYPOINT + CMD run there under ``chroot`` as the image's
   user, with the image's environment (only the bind address and ports are
   moved to free loopback ports) and a model repository bind-mounted read-only
   at the ``/models`` volume. Then: ``/health/live``, ``/health/ready``, a real
   predict when a repository is given, the image's HEALTHCHECK command, and
   SIGTERM, after which the server must exit 0.

Needs root (chroot, mounts), podman and debootstrap. The slow test
``tests/deploy/test_image_build.py`` drives the same functions.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "localhost/fusionserve-base:bookworm"
DEFAULT_TAG = "localhost/fusionserve:cpu-check"


def tools_missing() -> list[str]:
    """What this check needs and this machine lacks (empty when it can run)."""
    missing = [tool for tool in ("podman", "debootstrap", "chroot", "tar") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.append("root (chroot and mounts)")
    return missing


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it first; raise with its output tail if it fails."""
    print("+", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, text=True, capture_output=True, check=False, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")
    return done


def ensure_base(image: str = DEFAULT_BASE) -> None:
    """Create the local debootstrap base image unless podman already has it."""
    run([str(ROOT / "docker" / "local-base.sh"), image])


def build_image(
    tag: str = DEFAULT_TAG,
    base: str = DEFAULT_BASE,
    log: Path | None = None,
    context: Path = ROOT,
    no_cache: bool = False,
) -> str:
    """``podman build`` the CPU target of ``context``'s Dockerfile against ``base``; return the log.

    ``no_cache`` executes every ``RUN`` step again instead of reusing cached layers.
    """
    done = run(
        [
            "podman", "build", "--isolation=chroot", "--format", "docker", "--target", "cpu",
            *(["--no-cache"] if no_cache else []),
            "--build-arg", f"PYTHON_BASE={base}", "-t", tag, "-f", str(context / "Dockerfile"), str(context),
        ]
    )  # fmt: skip
    text = done.stdout + done.stderr
    if log is not None:
        log.write_text(text)
    return text


def image_config(tag: str = DEFAULT_TAG) -> dict[str, Any]:
    """The image's OCI/Docker config (User, Env, Entrypoint, Cmd, Healthcheck, ...)."""
    done = run(["podman", "image", "inspect", tag])
    inspected = json.loads(done.stdout)[0]
    config: dict[str, Any] = inspected["Config"]
    # podman reports a docker-format image's HEALTHCHECK beside Config, not in it.
    if not config.get("Healthcheck") and inspected.get("Healthcheck"):
        config["Healthcheck"] = inspected["Healthcheck"]
    return config


def export_rootfs(tag: str, dest: Path) -> Path:
    """Unpack the image's filesystem into ``dest`` (via a created, never started, container)."""
    dest.mkdir(parents=True, exist_ok=True)
    container = run(["podman", "create", tag]).stdout.strip()
    try:
        with subprocess.Popen(["podman", "export", container], stdout=subprocess.PIPE) as export:
            run(["tar", "-x", "--numeric-owner", "-C", str(dest)], stdin=export.stdout)
            if export.wait() != 0:
                raise RuntimeError("podman export failed")
    finally:
        run(["podman", "rm", container])
    return dest


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mounts)."""
    prefix = str(path.resolve())
    points = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def remove_tree(path: Path) -> None:
    """Delete a work folder, but never while anything is still mounted inside it.

    ``shutil.rmtree`` crosses mount points: with the host's /dev still
    bind-mounted into the root filesystem it would delete the host's devices.
    """
    left = mounts_under(path)
    if left:
        print(f"image-check: not removing {path}: still mounted: {left}", file=sys.stderr)
        return
    shutil.rmtree(path, ignore_errors=True)


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _user_spec(config: dict[str, Any]) -> str:
    user = str(config.get("User") or "0:0")
    return user if ":" in user else f"{user}:{user}"


@dataclass
class ChrootServer:
    """The image's default command running in its exported root filesystem."""

    rootfs: Path
    config: dict[str, Any]
    repository: Path | None = None
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    _mounts: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Base URL of the server's HTTP port."""
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> list[str]:
        """The image's environment, with the bind address and ports moved to loopback."""
        overrides = {
            "FUSIONSERVE_HOST": "127.0.0.1",
            "FUSIONSERVE_HTTP_PORT": str(self.http_port),
            "FUSIONSERVE_GRPC_PORT": str(self.grpc_port),
        }
        env = dict(item.split("=", 1) for item in self.config.get("Env") or [])
        env.update(overrides)
        return [f"{key}={value}" for key, value in env.items()]

    def in_image(self, argv: list[str]) -> list[str]:
        """A command line that runs ``argv`` inside the image as its user, env and workdir."""
        workdir = self.config.get("WorkingDir") or "/"
        return [
            "chroot", f"--userspec={_user_spec(self.config)}", str(self.rootfs),
            "/usr/bin/env", "-i", "-C", workdir, *self.env(), *argv,
        ]  # fmt: skip

    def _mount(self, args: list[str], target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        run(["mount", *args, str(target)])
        self._mounts.append(target)

    def start(self, log_path: Path) -> None:
        """Mount /proc, /dev and the repository, then start ENTRYPOINT + CMD."""
        self._mount(["-t", "proc", "proc"], self.rootfs / "proc")
        self._mount(["--rbind", "/dev"], self.rootfs / "dev")
        if self.repository is not None:
            target = self.rootfs / "models"
            self._mount(["--bind", str(self.repository)], target)
            run(["mount", "-o", "remount,bind,ro", str(target)])
        command = [*(self.config.get("Entrypoint") or []), *(self.config.get("Cmd") or [])]
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(self.in_image(command), stdout=log, stderr=subprocess.STDOUT)

    def log(self) -> str:
        """The server's output so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for(self, path: str, timeout: float = 180.0) -> httpx.Response:
        """Poll ``path`` until it answers 200; fail early if the server exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        last: httpx.Response | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                last = httpx.get(self.url + path, timeout=2)
                if last.status_code == 200:
                    return last
            time.sleep(0.2)
        status = last.status_code if last is not None else "no answer"
        raise TimeoutError(f"{path}: {status} after {timeout} s:\n{self.log()[-4000:]}")

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """Run the image's HEALTHCHECK command inside the image, as Docker would."""
        test = (self.config.get("Healthcheck") or {}).get("Test") or []
        if not test or test[0] not in ("CMD", "CMD-SHELL"):
            raise RuntimeError(f"image has no usable HEALTHCHECK: {test}")
        argv = test[1:] if test[0] == "CMD" else ["/bin/sh", "-c", test[1]]
        return subprocess.run(self.in_image(argv), text=True, capture_output=True, check=False)

    def terminate(self, timeout: float = 60.0) -> int:
        """Send SIGTERM (as ``docker stop`` does) and return the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def close(self) -> None:
        """Stop the server if it still runs and undo every mount, innermost first."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate(timeout=10)
        for target in reversed(self._mounts):
            subprocess.run(["umount", "-R", str(target)], check=False)
        self._mounts.clear()


@contextlib.contextmanager
def chroot_server(
    rootfs: Path, config: dict[str, Any], repository: Path | None, log_path: Path
) -> Iterator[ChrootServer]:
    """A started :class:`ChrootServer`, always unmounted afterwards."""
    server = ChrootServer(rootfs, config, repository)
    try:
        server.start(log_path)
        yield server
    finally:
        server.close()


def first_classifier(server: ChrootServer) -> dict[str, Any]:
    """The first model the server lists whose task is ``classify``."""
    models = httpx.get(server.url + "/v1/models", timeout=5).raise_for_status().json()["models"]
    for model in models:
        if model.get("task") == "classify":
            return dict(model)
    raise RuntimeError(f"no classifier among {[m.get('name') for m in models]}")


def predict(server: ChrootServer, model: str, files: dict[str, bytes], text: str | None) -> httpx.Response:
    """A multipart predict request (the native API) to the server in the image."""
    multipart = {name: (name, data) for name, data in files.items()}
    form = {"text": text} if text else None
    return httpx.post(
        f"{server.url}/v1/models/{model}/predict", files=multipart or None, data=form, timeout=30
    )


def main(argv: list[str] | None = None) -> int:
    """Build, export, serve, request; print what happened at each step."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tag", default=DEFAULT_TAG)
    parser.add_argument("--base", default=DEFAULT_BASE)
    parser.add_argument("--repository", type=Path, help="model repository to mount at /models")
    parser.add_argument("--image", type=Path, help="image file to send with the predict")
    parser.add_argument("--audio", type=Path, help="audio file to send with the predict")
    parser.add_argument("--text", default="seven", help="text to send with the predict")
    parser.add_argument("--skip-build", action="store_true", help="reuse the image already tagged")
    parser.add_argument("--no-cache", action="store_true", help="execute every RUN step again")
    parser.add_argument("--context", type=Path, default=ROOT, help="build context (default: this checkout)")
    args = parser.parse_args(argv)

    missing = tools_missing()
    if missing:
        print(f"image-check: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="fusionserve-image-check-", dir="/var/tmp"))
    try:
        if not args.skip_build:
            ensure_base(args.base)
            started = time.monotonic()
            build_image(args.tag, args.base, work / "build.log", args.context, args.no_cache)
            print(f"build: ok in {time.monotonic() - started:.0f} s (log {work / 'build.log'})")
        config = image_config(args.tag)
        print(
            "config:", json.dumps({k: config.get(k) for k in ("User", "Entrypoint", "Cmd", "ExposedPorts")})
        )
        rootfs = export_rootfs(args.tag, work / "rootfs")
        with chroot_server(rootfs, config, args.repository, work / "server.log") as server:
            live = server.wait_for("/health/live")
            print(f"GET /health/live -> {live.status_code} {live.text}")
            if args.repository is not None:
                ready = server.wait_for("/health/ready")
                print(f"GET /health/ready -> {ready.status_code} {ready.text}")
                model = first_classifier(server)
                files = {
                    name: path.read_bytes()
                    for name, path in (("image", args.image), ("audio", args.audio))
                    if path is not None
                }
                answer = predict(server, model["name"], files, args.text)
                print(f"POST /v1/models/{model['name']}/predict -> {answer.status_code} {answer.text[:300]}")
                check = server.healthcheck()
                print(f"HEALTHCHECK -> exit {check.returncode}")
            metrics = httpx.get(server.url + "/metrics", timeout=5)
            names = sorted(
                {line.split()[2] for line in metrics.text.splitlines() if line.startswith("# TYPE")}
            )
            print(f"GET /metrics -> {metrics.status_code}, {len(names)} metric families")
            code = server.terminate()
            print(f"SIGTERM -> exit {code}")
        return 0 if code == 0 else 1
    finally:
        remove_tree(work)


if __name__ == "__main__":
    sys.exit(main())
