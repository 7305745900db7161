"""Dynamic batching: the queue that forms batches (collation: :mod:`fusionserve.service.model.feeds`)."""

from fusionserve.service.batching.batcher import DynamicBatcher, Pending

__all__ = ["DynamicBatcher", "Pending"]
