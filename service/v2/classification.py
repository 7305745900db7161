"""Triton's classification extension: an output returned as its top classes.

A client asks for it per output with the parameter ``classification: <count>``
(tritonclient's ``InferRequestedOutput(name, class_count=n)``, over REST and
gRPC). That output then comes back as ``BYTES`` with shape ``[B, count]``
instead of its own values: each element is ``"<value>:<index>[:<label>]"``,
highest value first, ``value`` printed as C++'s ``std::to_string`` prints a
float (six decimals) as Triton does, and ``label`` the model's label of that
index (``probabilities`` only: its index is the class; other outputs carry
no labels). A count above the output's width returns the whole row sorted.

The counts are checked before the request reaches the model, so a bad one
costs no compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fusionserve.service.errors import InvalidInput
from fusionserve.service.model.outputs import top_indices
from fusionserve.service.v2.codec import RequestedOutput, Tensor

PARAMETER = "classification"


def requested_counts(requested: Sequence[RequestedOutput], datatypes: Mapping[str, str]) -> dict[str, int]:
    """Output name -> class count, for the outputs that ask for classification.

    ``datatypes`` maps each output the model yields to its V2 datatype.
    """
    counts: dict[str, int] = {}
    for output in requested:
        if PARAMETER not in output.parameters:
            continue
        count = output.parameters[PARAMETER]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise InvalidInput(
                f"output {output.name!r}: parameter {PARAMETER} must be a positive integer, got {count!r}"
            )
        if datatypes.get(output.name) == "BYTES":
            raise InvalidInput(f"output {output.name!r} is BYTES: classification needs a numeric output")
        counts[output.name] = count
    return counts


def classify(tensor: Tensor, count: int, labels: Sequence[str] | None) -> Tensor:
    """``tensor`` ([B, ...]) as its ``count`` highest values per row, as Triton formats them."""
    rows = np.asarray(tensor.data).reshape(tensor.shape[0] if tensor.shape else 1, -1)
    width = min(count, rows.shape[1])
    classes = np.empty((rows.shape[0], width), dtype=object)
    for r, values in enumerate(rows):
        best = top_indices(values, width)  # ties: the lower index first
        classes[r, :] = [_entry(float(values[i]), i, labels) for i in best]
    return Tensor(tensor.name, "BYTES", classes.shape, classes)


def _entry(value: float, index: int, labels: Sequence[str] | None) -> bytes:
    text = f"{value:f}:{index}"
    if labels is not None and index < len(labels):
        text += f":{labels[index]}"
    return text.encode("utf-8")
