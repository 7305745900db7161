"""Inputs cut to a model's bounds, as a V2 response parameter.

The native answer says per row what was cut (``"truncated": {"text":
{"given": 40, "kept": 16}}``). A V2 response has one ``parameters`` map for
the whole batch, and the protocol's parameter values are scalars (a JSON
string, number or bool; gRPC's ``InferParameter``), so the same per-row
figures travel as one JSON string under ``truncated``: a list with one entry
per row of the batch, ``null`` for a row nothing was cut from. The parameter
is absent when no row was cut, so an answer for inputs within bounds is
unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from fusionserve.service.model.outputs import truncated_json

#: The response parameter's name (REST ``parameters``; gRPC ``string_param``).
TRUNCATED_PARAMETER = "truncated"


def truncated_parameter(rows: Sequence[dict[str, tuple[int, int]]]) -> str | None:
    """``[{"text": {"given": 40, "kept": 16}}, null]``, or None when no row was cut."""
    if not any(rows):
        return None
    per_row = [truncated_json(row) if row else None for row in rows]
    return json.dumps(per_row, separators=(",", ":"))
