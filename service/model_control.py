"""Who may change what the server serves: Triton's model-control modes.

``none`` (the default) refuses every repository load and unload, whoever
asks: one unload takes a model out of service and, with strict readiness,
the whole replica out of its load balancer. ``explicit`` allows them; the
doors' auth then asks for the admin token when one is set, and settings
refuse ``explicit`` without a token unless the server binds a loopback
address (``fusionserve.service.config``). The repository index stays readable.
"""

from __future__ import annotations

from fusionserve.service.errors import PermissionDenied


def require_model_control(mode: str, action: str, model: str) -> None:
    """Raise PermissionDenied (403 / PERMISSION_DENIED) unless repository calls are on."""
    if mode != "explicit":
        raise PermissionDenied(
            f"{action} of model {model[:128]!r} refused: the server runs with model_control={mode}; "
            "start it with --model-control explicit (FUSIONSERVE_MODEL_CONTROL=explicit) "
            "to allow repository load/unload"
        )
