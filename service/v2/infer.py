"""One V2 inference against the data plane, shared by the REST and gRPC doors.

The door hands over a ``parse`` callable so that every refusal before the
core (malformed tensors, unknown inputs, unknown model) is counted once in
the request metrics, whichever door it came through.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fusionserve.service.client_ids import check_client_id
from fusionserve.service.errors import FusionServeError, InvalidInput
from fusionserve.service.model.rows import RawInputs
from fusionserve.service.v2.classification import classify, requested_counts
from fusionserve.service.v2.codec import InferRequest, Tensor
from fusionserve.service.v2.mapping import (
    LABELS,
    PROBABILITIES,
    SCORES,
    check_requested,
    embedding_outputs,
    extra_prediction_outputs,
    includes_for,
    output_specs,
    prediction_outputs,
    require_config,
    rows_from_inputs,
    top_k_of,
)

if TYPE_CHECKING:
    from fusionserve.service.dataplane import DataPlaneApi, ModelInfo
    from fusionserve.service.model.config import ModelConfig

    FastResult = tuple[ModelInfo, ModelConfig, list[RawInputs], InferRequest]

#: Triton's request parameter for a server-side timeout, in microseconds (0: none).
TIMEOUT_PARAMETER = "timeout"
#: The longest ``timeout`` accepted (one hour, as ``X-Request-Timeout-Ms``), in microseconds.
MAX_TIMEOUT_US = 3_600_000_000


@dataclass
class InferResponse:
    model: str
    version: str
    id: str
    outputs: list[Tensor]
    #: What was asked: the REST door reads its binary-output flags from it.
    request: InferRequest
    #: Per row, the inputs cut to the model's bounds (``fusionserve.service.v2.truncation``).
    truncated: list[dict[str, tuple[int, int]]]


def _timeout(parameters: dict[str, object], transport_s: float | None) -> float | None:
    """The tighter of the transport's deadline and the request's ``timeout`` parameter."""
    value = parameters.get(TIMEOUT_PARAMETER)
    if value is None:
        return transport_s
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TIMEOUT_US:
        raise InvalidInput(
            f"parameter {TIMEOUT_PARAMETER} must be an integer in 0..{MAX_TIMEOUT_US} (microseconds)",
            field=f"parameters.{TIMEOUT_PARAMETER}",
        )
    if value == 0:  # as in Triton: no timeout of its own
        return transport_s
    own = value / 1e6
    return own if transport_s is None else min(own, transport_s)


#: A door's shortcut from its request to rows for the common case (see
#: ``fusionserve.service.grpc.v2_tensors.fast_request``): given the model's input names,
#: the rows and the request's id and parameters, or None to take the general path.
FastPath = Callable[[list[str]], "tuple[list[RawInputs], InferRequest] | None"]


def _fast(dataplane: DataPlaneApi, model: str, version: str | None, fast: FastPath) -> FastResult | None:
    try:
        info = dataplane.model_info(model, version)
    except FusionServeError:  # the general path reports it, in its own order
        return None
    if info.config is None:
        return None
    taken = fast([m.value for m in info.config.modalities.present()])
    return None if taken is None else (info, info.config, *taken)


async def run_infer(
    dataplane: DataPlaneApi,
    model: str,
    version: str | None,
    parse: Callable[[], InferRequest],
    *,
    timeout_s: float | None,
    protocol: str,
    fast: FastPath | None = None,
) -> InferResponse:
    try:
        shortcut = _fast(dataplane, model, version, fast) if fast is not None else None
        if shortcut is not None:
            info, config, rows, request = shortcut
            wanted: list[str] = []
            classes: dict[str, int] = {}
        else:
            request = parse()
            info = dataplane.model_info(model, version)
            config = require_config(model, info.config, info.error)
            wanted = check_requested(config, info.labels, request.outputs)
            classes = {}
            if request.outputs:  # classification is asked per requested output
                datatypes = {spec.name: spec.datatype for spec in output_specs(config, info.labels)}
                classes = requested_counts(request.outputs, datatypes)
            rows = rows_from_inputs(model, config, request.inputs)
        check_client_id(request.id)  # echoed in the answer: bounded like x-request-id
        timeout = _timeout(request.parameters, timeout_s)
        top_k = top_k_of(request.parameters) if config.task == "classify" else 0
    except FusionServeError as exc:
        dataplane.record_rejected(model, protocol, exc)
        raise
    if config.task == "classify":
        predictions = await dataplane.predict(
            model,
            version,
            rows,
            top_k=top_k,
            include=includes_for(config, wanted),
            timeout_s=timeout,
            protocol=protocol,
        )
        basic = [n for n in wanted if n in (PROBABILITIES, LABELS, SCORES)]
        outputs = (
            prediction_outputs(
                [p.labels for p in predictions],
                [p.scores for p in predictions],
                [p.probabilities for p in predictions],
                basic,
            )
            if basic or not wanted
            else []
        )
        outputs += extra_prediction_outputs(config, predictions, wanted)
        if wanted:
            order = {name: i for i, name in enumerate(wanted)}
            outputs.sort(key=lambda t: order[t.name])
        served = predictions[0].version
        truncated = [p.truncated for p in predictions]
    else:
        embeddings = await dataplane.embed(model, version, rows, timeout_s=timeout, protocol=protocol)
        outputs = embedding_outputs(
            config, [e.fused for e in embeddings], [e.per_modality for e in embeddings], wanted
        )
        served = embeddings[0].version
        truncated = [e.truncated for e in embeddings]
    if classes:
        outputs = [
            classify(t, classes[t.name], info.labels if t.name == PROBABILITIES else None)
            if t.name in classes
            else t
            for t in outputs
        ]
    return InferResponse(model, served, request.id, outputs, request, truncated)
