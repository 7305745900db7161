"""The wheel that every image installs carries all the files the server reads at run time.

Images install the project with ``pip install .`` (a wheel, not an editable
checkout), so a data file that setuptools leaves out (a descriptor set, a JSON
schema, a bundled proto) works in the checkout and breaks in the container.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.deploy.refs import ROOT

#: Source folders of the server's packages and their import names in the wheel
#: (``fusionserve/service`` is a symlink to the top-level ``service/``).
PACKAGES = {"service": "fusionserve/service"}
SKIP_SUFFIXES = (".py", ".pyc", ".pyo")


def runtime_data_files() -> set[str]:
    """Non-Python files inside the server's packages, as wheel paths."""
    found: set[str] = set()
    for folder, installed in PACKAGES.items():
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in SKIP_SUFFIXES:
                found.add(f"{installed}/{path.relative_to(ROOT / folder).as_posix()}")
    return found


def test_wheel_ships_every_runtime_data_file(tmp_path: Path) -> None:
    data_files = runtime_data_files()
    if not data_files:
        pytest.skip("the server packages hold no data files")
    # Build from a copy: setuptools writes build/ and *.egg-info into the source tree.
    build = tmp_path / "src"
    for name in ("service", "models", "proto", "fusionserve"):
        # symlinks=True: fusionserve/service and fusionserve/models stay relative links.
        shutil.copytree(
            ROOT / name, build / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, build / name)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=build,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("fusionserve-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(data_files - shipped)
    assert not missing, f"not in the wheel (add them to [tool.setuptools.package-data]): {missing}"
    # One import namespace: no top-level service or models package next to fusionserve.
    top_level = {name.split("/")[0] for name in shipped if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"fusionserve"}, top_level
    assert "fusionserve/service/app.py" in shipped
    assert "fusionserve/models/fusion.py" in shipped
