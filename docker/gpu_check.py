"""GPU check for fusionserve: proves the GPU stack really runs on the GPU.

Run by ``docker/gpu-check.sh`` inside a fresh virtualenv with the GPU wheels
(``onnxruntime-gpu``, a CUDA build of torch), or directly with
``python docker/gpu_check.py --repository DIR`` in an environment that has them.

Checks, in order, each one a row of the final table:

1. ``nvidia-smi`` sees a GPU (name, driver, memory).
2. ONNX Runtime is the GPU package and a session created with the CUDA
   provider really uses it: ``session.get_providers()[0] == "CUDAExecutionProvider"``
   (``get_available_providers()`` only says what was compiled in), and its
   result matches numpy.
3. torch is a CUDA build, ``torch.cuda.is_available()``, and a matmul on the
   GPU matches the CPU.
4. ``pytest -m gpu`` passes (and collected at least one test).
5. The serving benchmark (``benchmarks/serving.py``) on a copy of the model
   repository whose models are switched to GPU instances.

Exit status 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the server's own code, also without `pip install -e`
    sys.path.insert(0, str(ROOT))


@dataclass
class Row:
    """One line of the result table."""

    check: str
    ok: bool
    detail: str


def check_nvidia_smi() -> Row:
    """The driver sees at least one GPU."""
    if shutil.which("nvidia-smi") is None:
        return Row("nvidia-smi", False, "nvidia-smi not found (no NVIDIA driver?)")
    done = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        check=False,
    )
    gpus = [line.strip() for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not gpus:
        return Row("nvidia-smi", False, (done.stderr or done.stdout).strip()[:200])
    return Row("nvidia-smi", True, f"{len(gpus)} GPU(s): {gpus[0]}")


def _tiny_onnx_model(size: int) -> bytes:
    """A one-MatMul ONNX graph ``y = x @ w`` with a fixed weight, serialised."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "gpu_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", size])],
        initializer=[numpy_helper.from_array(weight, name="w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def check_onnxruntime() -> Row:
    """A session asked for CUDA runs on CUDA and computes the right answer."""
    import numpy as np
    import onnxruntime as ort

    from fusionserve.service.runtimes.onnx import preload_cuda_libraries

    preload_cuda_libraries()  # what the server does before its first GPU session
    size = 256
    model = _tiny_onnx_model(size)
    session = ort.InferenceSession(model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers = session.get_providers()
    x = np.random.default_rng(0).standard_normal((8, size), dtype=np.float32)
    (y,) = session.run(["y"], {"x": x})
    weight = np.arange(size * size, dtype=np.float32).reshape(size, size) / (size * size)
    close = bool(np.allclose(y, x @ weight, rtol=1e-3, atol=1e-3))
    ok = providers[0] == "CUDAExecutionProvider" and close and ort.get_device() == "GPU"
    return Row(
        "onnxruntime CUDA session",
        ok,
        f"onnxruntime {ort.__version__} ({ort.get_device()}), session providers {providers}, "
        f"matches numpy: {close}",
    )


def check_torch() -> Row:
    """torch is a CUDA build that sees the GPU and computes on it."""
    import torch

    if not torch.cuda.is_available():
        return Row("torch CUDA", False, f"torch {torch.__version__}, CUDA {torch.version.cuda}: no GPU")
    a = torch.randn(512, 512, generator=torch.Generator().manual_seed(0))
    on_gpu = (a.cuda() @ a.cuda()).cpu()
    close = bool(torch.allclose(on_gpu, a @ a, rtol=1e-3, atol=1e-2))
    return Row(
        "torch CUDA",
        close,
        f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}, "
        f"matmul matches CPU: {close}",
    )


def check_pytest_gpu() -> Row:
    """The project's GPU-marked tests pass, and there is at least one."""
    # Only the modules that hold GPU tests: the rest import the client SDKs of
    # the test extra, which a GPU host running this check need not have.
    marked = sorted(
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("test_*.py")
        if "pytest.mark.gpu" in path.read_text()
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *marked],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = lines[-1].strip("= ") if lines else done.stderr.strip()[-200:]
    collected = re.search(r"\d+ passed", summary) is not None
    if done.returncode != 0:
        print(done.stdout[-6000:], done.stderr[-2000:], sep="\n")
    return Row("pytest -m gpu", done.returncode == 0 and collected, summary)


def gpu_repository(source: Path, dest: Path) -> Path:
    """Copy a model repository and switch every model to one GPU instance."""
    shutil.copytree(source, dest)
    for config_path in dest.glob("*/config.yaml"):
        config = yaml.safe_load(config_path.read_text())
        config["instance_groups"] = [{"kind": "gpu", "count": 1, "devices": [0]}]
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def check_benchmark(
    repository: Path, seconds: float, concurrency: str, payload_dir: Path | None = None
) -> Row:
    """benchmarks/serving.py against GPU instances: served and raw throughput."""
    with tempfile.TemporaryDirectory(prefix="fusionserve-gpu-check-") as tmp:
        repo = gpu_repository(repository, Path(tmp) / "repository")
        out = Path(tmp) / "bench.json"
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "benchmarks" / "serving.py"),
                "--repository",
                str(repo),
                "--concurrency",
                concurrency,
                "--seconds",
                str(seconds),
                "--skip-off",
                "--json",
                str(out),
                *(["--payload-dir", str(payload_dir)] if payload_dir else []),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        print(done.stdout)
        if done.returncode != 0 or not out.exists():
            return Row("benchmark (GPU instances)", False, done.stderr.strip()[-300:])
        results = json.loads(out.read_text())
    best = max(results["loads"], key=lambda load: load["rps"])
    errors = sum(load["errors"] for load in results["loads"])
    raw = results["raw"]
    return Row(
        "benchmark (GPU instances)",
        errors == 0,
        f"served {best['rps']:.0f} req/s at c={best['concurrency']} (p99 {best['p99_ms']:.1f} ms, "
        f"mean batch {best['mean_batch']:.1f}, errors {errors}); raw {raw['best_rps']:.0f} rows/s "
        f"at b={raw['best_batch']}",
    )


def guarded(name: str, check: Callable[[], Row]) -> Row:
    """Run one check; an exception is a failed row, not a crash of the script."""
    try:
        return check()
    except Exception as exc:  # report every failure in the table
        return Row(name, False, f"{type(exc).__name__}: {exc}"[:300])


def render(rows: list[Row]) -> str:
    """The result table in Markdown, ready to paste into docs/deployment.md."""
    lines = ["| check | result | detail |", "|---|---|---|"]
    lines += [f"| {row.check} | {'PASS' if row.ok else 'FAIL'} | {row.detail} |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every check and print one table; exit 1 if any failed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repository", type=Path, help="model repository for the benchmark")
    parser.add_argument("--seconds", type=float, default=8.0, help="benchmark seconds per load level")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument("--skip-pytest", action="store_true")
    parser.add_argument(
        "--payload-dir", type=Path, help="benchmark payload files (hosts that cannot build the dataset)"
    )
    args = parser.parse_args(argv)

    rows = [
        guarded("nvidia-smi", check_nvidia_smi),
        guarded("onnxruntime CUDA session", check_onnxruntime),
        guarded("torch CUDA", check_torch),
    ]
    if not args.skip_pytest:
        rows.append(guarded("pytest -m gpu", check_pytest_gpu))
    if args.repository is not None:
        repository: Path = args.repository
        rows.append(
            guarded(
                "benchmark (GPU instances)",
                lambda: check_benchmark(repository, args.seconds, args.concurrency, args.payload_dir),
            )
        )
    else:
        rows.append(Row("benchmark (GPU instances)", False, "no --repository given"))
    print(render(rows))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
