"""Admission by cost: the work a model version has accepted and not yet answered, bounded.

``max_queue_cost`` bounds the summed cost (``Batching.costs``) of the items a
model version holds: decoding, queued or computing. An item reserves its
cost in the decode thread **after its header is read and before its pixels
are decoded** (an image's cost is known from its header; audio and text add
their part once decoded), and releases it when its request is answered. An
item that would pass the bound is refused with :class:`Overloaded` (429)
unless nothing is held, so one large upload always gets through on an idle
server, but a burst of large uploads is shed by what it costs while small
items keep flowing. Thread-safe: decode threads reserve, the event loop
releases.
"""

from __future__ import annotations

import threading

from fusionserve.service.errors import Overloaded


class CostGate:
    def __init__(self, bound: float | None, model: str) -> None:
        self.bound = bound
        self.model = model
        self._held = 0.0
        self._lock = threading.Lock()

    @property
    def held(self) -> float:
        return self._held

    def reserve(self, cost: float) -> None:
        """Hold ``cost`` more, or raise :class:`Overloaded` when that would pass the bound."""
        with self._lock:
            if self.bound is not None and self._held > 0 and self._held + cost > self.bound:
                raise Overloaded(
                    f"model {self.model} holds work of cost {self._held:g}; this item's {cost:g} "
                    f"would pass max_queue_cost={self.bound:g}",
                    model=self.model,
                    max_queue_cost=self.bound,
                )
            self._held += cost

    def adjust(self, delta: float) -> None:
        """Correct a reservation once the item's decoded size is known (never refuses)."""
        with self._lock:
            self._held = max(0.0, self._held + delta)

    def release(self, cost: float) -> None:
        with self._lock:
            self._held = max(0.0, self._held - cost)
