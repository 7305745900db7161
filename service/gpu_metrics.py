"""GPU utilisation and memory gauges from NVML, where NVML exists.

A background task samples every few seconds. Without the ``nvidia-ml-py``
package or without a GPU (NVML fails to initialise) it does nothing, so CPU
hosts export no GPU series at all rather than zeros. Not yet run on a GPU
host (none has been available to the project).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fusionserve.service.metrics import Metrics

log = logging.getLogger("fusionserve.gpu")


def _nvml() -> Any | None:
    try:
        import pynvml  # from nvidia-ml-py (installed in the GPU image)
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError: no driver or no GPU
        return None
    return pynvml


def sample_once(nvml: Any, metrics: Metrics) -> None:
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        metrics.gpu_memory_used.labels(str(index)).set(memory.used)
        metrics.gpu_utilization.labels(str(index)).set(rates.gpu / 100.0)


async def sample_gpus(metrics: Metrics, interval_s: float = 5.0) -> None:
    """Run until cancelled; returns at once where NVML is unavailable."""
    nvml = await asyncio.to_thread(_nvml)
    if nvml is None:
        return
    log.info("sampling GPU metrics from NVML every %.0f s", interval_s)
    while True:
        try:
            await asyncio.to_thread(sample_once, nvml, metrics)
        except Exception as exc:  # a flaky driver must not take the server down
            log.warning("NVML sampling failed: %s", exc)
        await asyncio.sleep(interval_s)
