"""Dynamic batching: the queue that forms batches, and collation to graph feeds."""

from service.batching.batcher import DynamicBatcher, Pending
from service.batching.collate import collate, split_outputs

__all__ = ["DynamicBatcher", "Pending", "collate", "split_outputs"]
