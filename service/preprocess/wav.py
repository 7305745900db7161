"""A small RIFF/WAVE reader: header facts and a numpy fast path for plain PCM.

Why not just soundfile: opening a file through soundfile's virtual I/O costs
about 150 µs before the first sample, while uncompressed PCM is one
``np.frombuffer`` away (a 1 s 16 kHz WAV decodes in a few µs). And only the
header tells whether a WAV was cut short: libsndfile silently shortens a
truncated ``data`` chunk to the bytes present. Anything this reader does not
handle (RF64, big-endian RIFX, ADPCM, µ-law...) is left to soundfile.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE
#: The ``data`` size streaming writers leave when they cannot seek back.
_UNKNOWN_SIZE = 0xFFFFFFFF


class TruncatedWav(ValueError):
    """The header declares more audio than the bytes hold."""


@dataclass(frozen=True)
class WavLayout:
    """Where a WAV's samples are and how to read them."""

    sample_rate: int
    channels: int
    frames: int
    data_offset: int
    dtype: str | None  # numpy dtype of one stored sample; None = let soundfile decode
    bits: int


def read_layout(data: bytes) -> WavLayout | None:
    """Parse a little-endian RIFF/WAVE header; None when it is not one this reader knows.

    Raises :class:`TruncatedWav` when the ``data`` chunk declares more bytes
    than are present.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int, int, int, int] | None = None
    offset = 12
    while offset + 8 <= len(data):
        chunk_id = data[offset : offset + 4]
        (size,) = struct.unpack_from("<I", data, offset + 4)
        body = offset + 8
        if chunk_id == b"fmt ":
            fmt = _parse_fmt(data, body, size)
        elif chunk_id == b"data":
            if fmt is None or (size == 0 and len(data) > body):
                return None  # no format yet, or an ambiguous zero size: soundfile decides
            return _layout(fmt, body, _data_size(size, len(data) - body))
        offset = body + size + (size & 1)
    if offset > len(data) or fmt is not None:
        raise TruncatedWav("the file ends before its audio data")
    return None


def _parse_fmt(data: bytes, body: int, size: int) -> tuple[int, int, int, int, int]:
    if size < 16 or body + 16 > len(data):
        raise TruncatedWav("the file ends inside its format header")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", data, body)
    if tag == _EXTENSIBLE and size >= 40 and body + 26 <= len(data):
        (tag,) = struct.unpack_from("<H", data, body + 24)  # first field of the sub-format GUID
    return tag, channels, rate, block_align, bits


def _data_size(declared: int, available: int) -> int:
    if declared == _UNKNOWN_SIZE:
        return available
    if declared > available:
        raise TruncatedWav(f"the header declares {declared} bytes of audio, {available} are present")
    return declared


def _layout(fmt: tuple[int, int, int, int, int], offset: int, size: int) -> WavLayout:
    tag, channels, rate, block_align, _bits = fmt  # container size decides; valid bits sit on top
    if channels <= 0 or rate <= 0 or block_align <= 0:
        raise TruncatedWav("the format header is inconsistent")  # reads as "corrupted" upstream
    container = block_align * 8 // channels
    dtype = _sample_dtype(tag, container) if block_align == channels * container // 8 else None
    return WavLayout(rate, channels, size // block_align, offset, dtype, container)


def _sample_dtype(tag: int, container_bits: int) -> str | None:
    if tag == _PCM:
        return {8: "u1", 16: "<i2", 24: "i3", 32: "<i4"}.get(container_bits)
    if tag == _FLOAT:
        return {32: "<f4", 64: "<f8"}.get(container_bits)
    return None


def decode_frames(data: bytes, layout: WavLayout, frames: int) -> np.ndarray:
    """The first ``frames`` frames as float32 ``[frames, channels]``, scaled like libsndfile."""
    count = frames * layout.channels
    dtype = layout.dtype
    if dtype == "i3":
        samples = _int24(data, layout.data_offset, count)
        scale = 1.0 / (1 << 31)
    else:
        assert dtype is not None
        samples = np.frombuffer(data, dtype=dtype, count=count, offset=layout.data_offset)
        scale = {"u1": 1 / 128, "<i2": 1 / 32768, "<i4": 1.0 / (1 << 31)}.get(dtype, 1.0)
    if dtype == "u1":
        out = samples.astype(np.float32)
        out -= 128.0
    else:
        out = samples.astype(np.float32)
    if scale != 1.0:
        out *= np.float32(scale)
    return out.reshape(frames, layout.channels)


def _int24(data: bytes, offset: int, count: int) -> np.ndarray:
    """Packed 24-bit little-endian samples, placed in the top bytes of int32."""
    raw = np.frombuffer(data, dtype=np.uint8, count=count * 3, offset=offset).reshape(count, 3)
    wide = np.zeros((count, 4), dtype=np.uint8)
    wide[:, 1:] = raw
    return wide.view("<i4").reshape(count)
