"""Compressed audio from browsers and phones (WebM/Opus, MP4/M4A AAC, video soundtracks) via PyAV.

PyAV (ffmpeg's libraries) is the optional ``media`` extra; without it these
uploads get a 415 that names the extra. Untrusted bytes meet ffmpeg here, so
the exposure is kept small on purpose:

- The bytes are read **from memory only**: the container is opened on a
  ``BytesIO``, the demuxer is fixed from the sniffed type (never probed, so no
  playlist/concat demuxer that could open other URLs is reachable), the
  protocol whitelist names no real protocol and MP4 external data references
  stay disabled. Nothing is written to disk and no process is started.
- One decode thread per call (``thread_count = 1``): the server's decode pool
  is the parallelism.
- Bounds in the same order as for WAV/FLAC: byte size (checked by the
  caller), then the container's declared duration against
  ``max_input_seconds`` **before decoding**, then decoding only the first
  ``max_samples`` worth of the first audio track (other tracks, e.g. video,
  are never decoded), checking the wall-clock budget ``max_decode_ms``
  between packets. A stream that declares no duration (a live MediaRecorder
  WebM) is decoded up to the crop point and no further.
- Samples become float32 interleaved at the stream's own rate and channels;
  mixing down and resampling are the shared steps of :mod:`.audio`, so every
  format is treated alike.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import numpy as np

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.model.config import AudioSpec

#: The pip extra that brings PyAV (named in the 415 when it is missing).
MEDIA_EXTRA = "fusionserve[media]"
#: Sniffed kind → the one ffmpeg demuxer allowed to read it.
DEMUXERS = {"matroska": "matroska", "mp4": "mov"}
#: The container options that keep ffmpeg inside the buffer it was given.
_CONTAINER_OPTIONS = {
    "protocol_whitelist": "none",  # no real protocol has this name: nothing nested can open
    "enable_drefs": "0",  # MP4: never follow external data references
    "probesize": "5000000",
}
#: Decoded audio shorter than the declared duration by more than this is a truncated upload.
_TRUNCATION_SLACK_S = 0.25

try:  # the optional extra
    import av

    HAVE_AV = True
except ImportError:  # pragma: no cover - exercised where the extra is absent
    av = None  # type: ignore[assignment]
    HAVE_AV = False


def decode(data: bytes, kind: str, spec: AudioSpec, field: str) -> tuple[np.ndarray, int]:
    """Decode the first audio track: float32 ``[n, channels]`` frames and their rate.

    ``n`` covers at most ``max_samples`` at the model's rate (plus the
    resampler's margin, computed by ``needed(rate)``).
    """
    if not HAVE_AV:
        raise UnsupportedMediaType(
            f"field {field!r}: {kind} audio needs the optional media support: pip install '{MEDIA_EXTRA}'",
            field=field,
            detected=kind,
            extra=MEDIA_EXTRA,
        )
    started = time.perf_counter()
    try:
        with av.open(
            io.BytesIO(data), mode="r", format=DEMUXERS[kind], options=dict(_CONTAINER_OPTIONS)
        ) as container:
            stream = _audio_stream(container, field)
            declared = _declared_seconds(container, stream)
            if declared is not None:
                _check_declared(declared, spec, field)
            frames, rate = _decode_stream(container, stream, spec, field, started)
    except (InvalidInput, MemoryError):
        raise
    except Exception as exc:  # ffmpeg raises many types on hostile input; all mean "bad file"
        raise InvalidInput(
            f"field {field!r}: corrupted or truncated audio ({_short(exc)})", field=field
        ) from exc
    if frames.shape[0] == 0:
        raise InvalidInput(f"field {field!r}: truncated or empty audio (no samples decoded)", field=field)
    if declared is not None:
        _check_complete(frames.shape[0] / rate, declared, spec, field)
    return frames, rate


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]


def _audio_stream(container: Any, field: str) -> Any:
    if not container.streams.audio:
        raise InvalidInput(f"field {field!r}: the file has no audio track", field=field)
    stream = container.streams.audio[0]
    stream.codec_context.thread_count = 1
    return stream


def _declared_seconds(container: Any, stream: Any) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _check_declared(seconds: float, spec: AudioSpec, field: str) -> None:
    if seconds > spec.max_input_seconds:
        raise LimitExceeded(
            f"field {field!r}: audio lasts {seconds:.2f} s, "
            f"over max_input_seconds {spec.max_input_seconds:g}",
            field=field,
            limit="max_input_seconds",
            max=spec.max_input_seconds,
            actual=round(seconds, 3),
        )


def _check_complete(decoded_s: float, declared_s: float, spec: AudioSpec, field: str) -> None:
    expected = min(declared_s, spec.max_samples / spec.sample_rate)
    if decoded_s + _TRUNCATION_SLACK_S < expected:
        raise InvalidInput(
            f"field {field!r}: corrupted or truncated audio (header declares {declared_s:.2f} s, "
            f"{decoded_s:.2f} s decoded)",
            field=field,
        )


def check_budget(started: float, spec: AudioSpec, field: str) -> None:
    """413 once decoding has taken longer than ``max_decode_ms``."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    if elapsed_ms > spec.max_decode_ms:
        raise LimitExceeded(
            f"field {field!r}: decoding took over max_decode_ms {spec.max_decode_ms:g} "
            f"({elapsed_ms:.0f} ms); send shorter or simpler audio",
            field=field,
            limit="max_decode_ms",
            max=spec.max_decode_ms,
            actual=round(elapsed_ms, 1),
        )


def frames_needed(rate: int, spec: AudioSpec) -> int:
    """Input frames that cover ``max_samples`` output samples, plus a 10 ms margin so the
    resampler's filter sees real signal at the end of the kept window (every decoder uses it)."""
    if rate == spec.sample_rate:
        return spec.max_samples
    return math.ceil(spec.max_samples * rate / spec.sample_rate) + math.ceil(rate * 0.01)


def _decode_stream(
    container: Any, stream: Any, spec: AudioSpec, field: str, started: float
) -> tuple[np.ndarray, int]:
    from fusionserve.service.preprocess.audio import MAX_CHANNELS

    chunks: list[np.ndarray] = []
    have = 0
    rate = 0
    wanted = 0
    resampler: Any = None
    for packet in container.demux(stream):
        check_budget(started, spec, field)
        for frame in packet.decode():
            if resampler is None:
                rate, channels = frame.sample_rate, frame.layout.nb_channels
                if rate <= 0 or channels <= 0 or rate > 768_000:
                    raise InvalidInput(
                        f"field {field!r}: corrupted audio stream ({rate} Hz, {channels} channels)",
                        field=field,
                    )
                if channels > MAX_CHANNELS:
                    raise LimitExceeded(
                        f"field {field!r}: {channels} channels exceeds the limit of {MAX_CHANNELS}",
                        field=field,
                        limit="channels",
                        max=MAX_CHANNELS,
                        actual=channels,
                    )
                wanted = frames_needed(rate, spec)
                # Sample format only: channels and rate stay, mixing/resampling is shared.
                resampler = av.AudioResampler(format="flt", layout=frame.layout, rate=rate)
            if frame.sample_rate != rate:
                raise InvalidInput(f"field {field!r}: the sample rate changes mid-stream", field=field)
            for out in resampler.resample(frame):
                values = out.to_ndarray().reshape(-1, out.layout.nb_channels)
                chunks.append(values)
                have += values.shape[0]
        if resampler is not None and have >= wanted:
            break
    if not chunks:
        return np.zeros((0, 1), dtype=np.float32), max(rate, 1)
    frames = np.concatenate(chunks)[:wanted]
    if not math.isfinite(float(frames.sum(dtype=np.float64))):
        raise InvalidInput(f"field {field!r}: audio contains NaN or infinite samples", field=field)
    return np.ascontiguousarray(frames, dtype=np.float32), rate
