"""Dynamic batching: the queue that forms batches (collation lives in :mod:`service.model.feeds`)."""

from service.batching.batcher import DynamicBatcher, Pending

__all__ = ["DynamicBatcher", "Pending"]
