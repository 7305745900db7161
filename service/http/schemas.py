"""Pydantic models of what the HTTP API answers: documentation, not parsing.

The routes build their answers as plain dicts (faster than validating a model
per request); these classes describe the same shapes so the OpenAPI document
and the contract tests (``tests/integration/test_openapi_contract.py``) can
hold the routes to them. Unknown extra fields are allowed (pydantic's default
emits no ``additionalProperties: false``), so adding a field to an answer does
not break older clients, but a new field should be added here too.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

# --------------------------------------------------------------------- errors


class ErrorDetail(BaseModel):
    code: str = Field(description="stable machine-readable kind, e.g. `unsupported_media_type`")
    message: str = Field(description="what went wrong and what to do, for a person")
    details: dict[str, Any] | None = Field(default=None, description="the fields or values concerned")


class ErrorResponse(BaseModel):
    """The native error body of every `/v1`, `/health` and `/ui` route."""

    error: ErrorDetail
    request_id: str | None = Field(default=None, description="echoes or assigns X-Request-Id")


class V2ErrorResponse(BaseModel):
    """The Open Inference Protocol's error body, used by every `/v2` route."""

    error: str = Field(description="what went wrong")


# ----------------------------------------------------------------- native API


class LabelScore(BaseModel):
    label: str
    score: float = Field(description="probability of the label (softmax over all labels)")


class Attribution(BaseModel):
    kind: str = Field(description="`logits` (late fusion), `gate` (gated fusion) or `attention`")
    modalities: dict[str, Any] = Field(description="per modality present: its logits or its weight")


class PredictionResult(BaseModel):
    modalities: list[str] = Field(description="the modalities this row carried, e.g. `[image, audio]`")
    predictions: list[LabelScore] = Field(description="the top-k labels, most probable first")
    embedding: list[float] | None = Field(default=None, description="with `include=embeddings`: fused")
    embeddings: dict[str, list[float]] | None = Field(
        default=None, description="with `include=embeddings`: one per modality sent"
    )
    attribution: Attribution | None = Field(default=None, description="with `include=attribution`")
    truncated: dict[str, dict[str, int]] | None = Field(
        default=None, description="inputs cut to the model's bounds: `{modality: {given, kept}}`"
    )


class PredictResponse(PredictionResult):
    """One row (multipart or single JSON object)."""

    model: str
    version: str


class PredictBatchResponse(BaseModel):
    """The JSON batch form (`items`): one result per item, in order."""

    model: str
    version: str
    results: list[PredictionResult]


class EmbeddingResult(BaseModel):
    modalities: list[str]
    embedding: list[float] = Field(description="the fused, L2-normalised joint embedding")
    embeddings: dict[str, list[float]] = Field(description="one embedding per modality sent")


class EmbedResponse(EmbeddingResult):
    model: str
    version: str


class EmbedBatchResponse(BaseModel):
    model: str
    version: str
    results: list[EmbeddingResult]


class VersionState(BaseModel):
    version: str
    state: str = Field(description="READY, LOADING, UNAVAILABLE or FAILED")
    reason: str | None = None


class ModelMetadata(BaseModel):
    """Everything a client needs to call a model (config fields appear once it was read)."""

    name: str
    platform: str
    ready: bool
    versions: list[VersionState]
    error: str | None = Field(default=None, description="why the model failed to load, if it did")
    task: str | None = Field(default=None, description="`classification` or `embedding`")
    description: str | None = None
    backend: str | None = None
    modalities: dict[str, Any] | None = Field(default=None, description="each modality and its limits")
    outputs: list[dict[str, Any]] | None = None
    batching: dict[str, Any] | None = None
    instance_groups: list[dict[str, Any]] | None = None
    labels: list[str] | None = None


class ModelList(BaseModel):
    models: list[ModelMetadata]


class Live(BaseModel):
    live: bool
    reason: str | None = Field(default=None, description="when not live: why the process cannot recover")


class Ready(BaseModel):
    ready: bool
    reasons: list[str] | None = Field(default=None, description="when not ready: why, in words")
    models: dict[str, str] | None = Field(
        default=None, description="when not ready: each model that is not, and why"
    )


class ModelReady(BaseModel):
    name: str
    ready: bool


# --------------------------------------------------------------------- KServe V2


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2TensorSpec(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 marks a variable dimension")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorSpec]
    outputs: list[V2TensorSpec]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size` when the data follows the JSON header"
    )
    data: list[Any] | None = Field(default=None, description="row-major, flattened")


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None,
        description="`truncated` when an input was cut to the model's bounds: a JSON string, "
        'one entry per row (`null` for a row not cut), e.g. `[{"text": {"given": 40, "kept": 16}}]`',
    )
    outputs: list[V2OutputTensor]


class V2Duration(BaseModel):
    count: int
    ns: int


class V2InferenceStats(BaseModel):
    success: V2Duration
    fail: V2Duration
    queue: V2Duration
    compute_input: V2Duration
    compute_infer: V2Duration
    compute_output: V2Duration


class V2ModelStats(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: V2InferenceStats
    batch_stats: list[Any]


class V2StatsResponse(BaseModel):
    model_stats: list[V2ModelStats]


class V2RepositoryEntry(BaseModel):
    name: str
    version: str
    state: str
    reason: str


class V2RepositoryIndexRequest(BaseModel):
    ready: bool | None = Field(default=None, description="true: list only models that are ready")


class V2LoadRequest(BaseModel):
    parameters: dict[str, Any] | None = Field(
        default=None, description="`config` and `file:<path>` overrides are refused (400)"
    )


class Empty(BaseModel):
    """`{}`: the operation succeeded."""


Datatype = Literal[
    "BOOL",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
    "BYTES",
]


class V2InputTensor(BaseModel):
    name: str = Field(description="`image`, `audio`, `text` or the names in the model's metadata")
    shape: list[int] = Field(description="non-negative sizes; the first is the batch")
    datatype: Datatype
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_size`: the tensor's bytes follow the JSON header"
    )
    data: list[Any] | None = Field(default=None, description="row-major values (nested lists allowed)")


class V2RequestedOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data: true` or `classification: k` (Triton's extensions)"
    )


class V2InferRequest(BaseModel):
    id: str | None = None
    parameters: dict[str, Any] | None = Field(
        default=None, description="`binary_data_output: true` sends every output as raw bytes"
    )
    inputs: list[V2InputTensor]
    outputs: list[V2RequestedOutput] | None = None


class V2ModelConfig(BaseModel):
    """Triton's model configuration, as its clients parse it."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    input: list[dict[str, Any]]
    output: list[dict[str, Any]]
    dynamic_batching: dict[str, Any] | None = None


# ------------------------------------------------------------ OpenAI embeddings


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 little-endian float32")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIEmbeddingList(BaseModel):
    """`POST /v1/embeddings`' answer, as OpenAI's API gives it."""

    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage
