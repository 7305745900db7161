"""The inference routes' paths, recognised in one place.

Three parts of the HTTP door ask "is this an inference request, and for
which model?": the gateway's bearer-token check, the fast route
(:mod:`.fastpath`) and the transport's shed (:mod:`.transport`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PATH = re.compile(r"^/(v1|v2)/models/([^/]+)(?:/versions/([^/]+))?/(predict|embed|infer)$")
#: The actions each door serves: native predict/embed, V2 infer.
_ACTIONS = {"v1": ("predict", "embed"), "v2": ("infer",)}


@dataclass(frozen=True)
class InferencePath:
    door: str  # "v1" (native) or "v2"
    model: str
    version: str | None
    action: str  # "predict", "embed" or "infer"


def inference_path(path: str) -> InferencePath | None:
    """What an inference route's path names (None for any other path)."""
    found = _PATH.match(path)
    if found is None:
        return None
    door, model, version, action = found.groups()
    if action not in _ACTIONS[door]:
        return None
    return InferencePath(door, model, version, action)


def inference_model(path: str) -> str | None:
    """The model an inference path names (None when the path is no inference route)."""
    found = inference_path(path)
    return None if found is None else found.model
