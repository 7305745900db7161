from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Item(_message.Message):
    __slots__ = ("image", "audio", "text")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    audio: bytes
    text: str
    def __init__(self, image: _Optional[bytes] = ..., audio: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "version", "items", "top_k", "request_id", "include")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    top_k: int
    request_id: str
    include: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., top_k: _Optional[int] = ..., request_id: _Optional[str] = ..., include: _Optional[_Iterable[str]] = ...) -> None: ...

class LabelScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("modalities", "predictions", "probabilities", "embedding", "embeddings", "attribution", "truncated")
    class EmbeddingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...
    class TruncatedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Truncation
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Truncation, _Mapping]] = ...) -> None: ...
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedScalarFieldContainer[str]
    predictions: _containers.RepeatedCompositeFieldContainer[LabelScore]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    embedding: Vector
    embeddings: _containers.MessageMap[str, Vector]
    attribution: Attribution
    truncated: _containers.MessageMap[str, Truncation]
    def __init__(self, modalities: _Optional[_Iterable[str]] = ..., predictions: _Optional[_Iterable[_Union[LabelScore, _Mapping]]] = ..., probabilities: _Optional[_Iterable[float]] = ..., embedding: _Optional[_Union[Vector, _Mapping]] = ..., embeddings: _Optional[_Mapping[str, Vector]] = ..., attribution: _Optional[_Union[Attribution, _Mapping]] = ..., truncated: _Optional[_Mapping[str, Truncation]] = ...) -> None: ...

class Truncation(_message.Message):
    __slots__ = ("given", "kept")
    GIVEN_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    given: int
    kept: int
    def __init__(self, given: _Optional[int] = ..., kept: _Optional[int] = ...) -> None: ...

class Attribution(_message.Message):
    __slots__ = ("kind", "values")
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    values: _containers.MessageMap[str, Vector]
    def __init__(self, kind: _Optional[str] = ..., values: _Optional[_Mapping[str, Vector]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "version", "results", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    results: _containers.RepeatedCompositeFieldContainer[Prediction]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "version", "items", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Vector(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("modalities", "embedding", "embeddings", "truncated")
    class EmbeddingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Vector
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Vector, _Mapping]] = ...) -> None: ...
    class TruncatedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Truncation
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Truncation, _Mapping]] = ...) -> None: ...
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    modalities: _containers.RepeatedScalarFieldContainer[str]
    embedding: Vector
    embeddings: _containers.MessageMap[str, Vector]
    truncated: _containers.MessageMap[str, Truncation]
    def __init__(self, modalities: _Optional[_Iterable[str]] = ..., embedding: _Optional[_Union[Vector, _Mapping]] = ..., embeddings: _Optional[_Mapping[str, Vector]] = ..., truncated: _Optional[_Mapping[str, Truncation]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("model", "version", "results", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    results: _containers.RepeatedCompositeFieldContainer[Embedding]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., results: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class PredictStreamResponse(_message.Message):
    __slots__ = ("request_id", "response", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    response: PredictResponse
    error: Status
    def __init__(self, request_id: _Optional[str] = ..., response: _Optional[_Union[PredictResponse, _Mapping]] = ..., error: _Optional[_Union[Status, _Mapping]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class VersionStatus(_message.Message):
    __slots__ = ("version", "state", "reason")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    version: str
    state: str
    reason: str
    def __init__(self, version: _Optional[str] = ..., state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("name", "kind", "source", "dims")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DIMS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    source: str
    dims: int
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., dims: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("name", "platform", "ready", "versions", "task", "description", "modalities", "outputs", "labels", "error")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PLATFORM_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    name: str
    platform: str
    ready: bool
    versions: _containers.RepeatedCompositeFieldContainer[VersionStatus]
    task: str
    description: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedCompositeFieldContainer[Output]
    labels: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, name: _Optional[str] = ..., platform: _Optional[str] = ..., ready: _Optional[bool] = ..., versions: _Optional[_Iterable[_Union[VersionStatus, _Mapping]]] = ..., task: _Optional[str] = ..., description: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[_Union[Output, _Mapping]]] = ..., labels: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...
