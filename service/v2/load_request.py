"""What a V2 repository load request may carry.

Triton's load takes two overrides as parameters: ``config`` (a model
configuration as JSON, used instead of the repository's) and
``file:<path>`` (model files sent with the request). fusionserve loads a
model only from its repository entry, validated as it is on start-up, so
it refuses both by name rather than load something other than what the
client sent and report success.
"""

from __future__ import annotations

from collections.abc import Iterable

from fusionserve.service.errors import InvalidInput, shown


def refuse_overrides(model: str, parameter_names: Iterable[str]) -> None:
    overrides = sorted(n for n in parameter_names if n == "config" or n.startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"load of {shown(model)}: parameters {overrides} would override the repository; "
            "fusionserve loads models only from their repository entry (edit config.yaml there)"
        )
