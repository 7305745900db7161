"""The worker pool: model instances that pull batches and run them."""

from fusionserve.service.workers.pool import Instance, PoolStats, WorkerPool

__all__ = ["Instance", "PoolStats", "WorkerPool"]
