"""NVML sampling: the gauges it sets, and a no-op where NVML is missing."""

from __future__ import annotations

from types import SimpleNamespace

from fusionserve.service.gpu_metrics import sample_gpus, sample_once
from fusionserve.service.metrics import Metrics


class FakeNvml:
    def nvmlDeviceGetCount(self) -> int:
        return 2

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=(handle + 1) * 1024)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=40 + handle)


def test_sample_sets_memory_and_utilisation_per_device() -> None:
    metrics = Metrics()
    sample_once(FakeNvml(), metrics)
    value = metrics.registry.get_sample_value
    assert value("fusionserve_gpu_memory_used_bytes", {"device": "1"}) == 2048
    assert value("fusionserve_gpu_utilization_ratio", {"device": "0"}) == 0.40


async def test_no_nvml_means_no_task_and_no_series() -> None:
    metrics = Metrics()
    await sample_gpus(metrics)  # returns at once on this CPU machine
    assert "fusionserve_gpu_memory_used_bytes{" not in metrics.exposition()[0].decode()
