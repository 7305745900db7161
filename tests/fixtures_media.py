"""Real encoded test media, made in memory (no files in the repository).

Every helper returns what a client would upload: bytes written by Pillow or
libsndfile, so tests exercise the real codecs. Reuse them from any test::

    from tests.fixtures_media import jpeg_bytes, wav_bytes, sine, digit_like_image
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

# ----------------------------------------------------------------------------- images


def gradient_image(height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 ``[h, w, 3]``: red grows left→right, green top→bottom, blue constant.

    Every pixel differs from its neighbours, so flips and rotations are visible.
    """
    ys, xs = np.mgrid[0:height, 0:width]
    red = (xs * 255 // max(1, width - 1)).astype(np.uint8)
    green = (ys * 255 // max(1, height - 1)).astype(np.uint8)
    blue = np.full((height, width), 96, dtype=np.uint8)
    return np.stack([red, green, blue], axis=2)


# Seven-segment strokes (x0, y0, x1, y1) on a 0..1 square, per digit.
_SEGMENTS = {
    "a": (0.25, 0.15, 0.75, 0.15),
    "b": (0.75, 0.15, 0.75, 0.5),
    "c": (0.75, 0.5, 0.75, 0.85),
    "d": (0.25, 0.85, 0.75, 0.85),
    "e": (0.25, 0.5, 0.25, 0.85),
    "f": (0.25, 0.15, 0.25, 0.5),
    "g": (0.25, 0.5, 0.75, 0.5),
}
_DIGIT_SEGMENTS = ["abcdef", "bc", "abged", "abgcd", "fgbc", "afgcd", "afgedc", "abc", "abcdefg", "abcdfg"]


def digit_like_image(digit: int = 7, size: int = 28) -> np.ndarray:
    """uint8 ``[size, size]``: a white seven-segment digit on black, MNIST-style."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    width = max(1, size // 9)
    for seg in _DIGIT_SEGMENTS[digit]:
        x0, y0, x1, y1 = (v * (size - 1) for v in _SEGMENTS[seg])
        draw.line((x0, y0, x1, y1), fill=255, width=width)
    return np.asarray(canvas).copy()


def image_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **save: Any) -> bytes:
    """Encode ``array`` with Pillow as ``fmt`` ("PNG", "JPEG"...), optionally converted to ``mode``."""
    image = Image.fromarray(array)
    if mode is not None and image.mode != mode:
        image = image.convert(mode, palette=Image.Palette.ADAPTIVE) if mode == "P" else image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **save)
    return buf.getvalue()


def jpeg_bytes(
    array: np.ndarray, quality: int = 95, exif_orientation: int | None = None, mode: str | None = None
) -> bytes:
    """A JPEG; ``exif_orientation`` (1..8) writes that EXIF tag, ``mode="CMYK"`` a CMYK JPEG."""
    save: dict[str, Any] = {"quality": quality}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        save["exif"] = exif.tobytes()
    return image_bytes(array, "JPEG", mode=mode, **save)


def png_bytes(array: np.ndarray, mode: str | None = None, **save: Any) -> bytes:
    """A PNG; ``mode`` converts first ("L", "LA", "RGBA", "P", "1"...). uint16 arrays give 16-bit PNGs."""
    return image_bytes(array, "PNG", mode=mode, **save)


def webp_bytes(array: np.ndarray, lossless: bool = True, **save: Any) -> bytes:
    return image_bytes(array, "WEBP", lossless=lossless, **save)


def gif_bytes(array: np.ndarray) -> bytes:
    return image_bytes(array, "GIF")


def bmp_bytes(array: np.ndarray) -> bytes:
    return image_bytes(array, "BMP")


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def decompression_bomb_png(width: int = 50_000, height: int = 50_000) -> bytes:
    """A well-formed PNG header claiming ``width`` x ``height`` 8-bit RGB pixels.

    The IHDR is real (valid CRC) but the pixel data holds only one row, so a
    decoder that starts decoding fails or allocates ``width*height*3`` bytes;
    a safe decoder refuses from the header alone.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (1 + 3 * min(width, 4096)))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------- audio


def sine(freq: float = 440.0, seconds: float = 1.0, rate: int = 16_000, amplitude: float = 0.5) -> np.ndarray:
    """float32 ``[round(seconds * rate)]`` sine wave."""
    t = np.arange(round(seconds * rate), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _sound_bytes(wave: np.ndarray, rate: int, fmt: str, subtype: str, channels: int) -> bytes:
    data = np.asarray(wave)
    if data.ndim == 1 and channels > 1:
        data = np.repeat(data[:, None], channels, axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def wav_bytes(wave: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16", channels: int = 1) -> bytes:
    """A WAV of ``wave`` (``[T]``, or ``[T, C]`` for distinct channels); ``channels`` repeats a mono wave."""
    return _sound_bytes(wave, rate, "WAV", subtype, channels)


def flac_bytes(wave: np.ndarray, rate: int = 16_000, subtype: str = "PCM_16", channels: int = 1) -> bytes:
    return _sound_bytes(wave, rate, "FLAC", subtype, channels)


def ogg_bytes(wave: np.ndarray, rate: int = 16_000, channels: int = 1) -> bytes:
    """OGG/Vorbis (lossy: compare spectra, not samples)."""
    return _sound_bytes(wave, rate, "OGG", "VORBIS", channels)


def mp3_bytes(wave: np.ndarray, rate: int = 16_000, channels: int = 1) -> bytes:
    """MP3 written by the libsndfile bundled with soundfile (LAME)."""
    return _sound_bytes(wave, rate, "MP3", "MPEG_LAYER_III", channels)


def av_audio_bytes(
    wave: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    *,
    channels: int = 1,
    video: bool = False,
    streaming: bool = False,
) -> bytes:
    """Audio encoded by ffmpeg's libraries through PyAV, in memory.

    ``container``: ``"webm"``, ``"ogg"``, ``"mp4"``, ``"ipod"`` (M4A); ``codec``:
    ``"libopus"``, ``"aac"``, ``"libvorbis"``. ``video`` adds a small video track
    first (a phone's or browser's screen/camera recording); ``streaming`` writes
    a WebM without a duration (as a browser's MediaRecorder does).
    """
    import av  # the optional media extra; callers skip without it

    buf = io.BytesIO()
    options = {"live": "1"} if streaming else {}
    with av.open(buf, mode="w", format=container, options=options) as out:
        vstream = None
        if video:
            vstream = out.add_stream("libvpx" if container == "webm" else "mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        layout = "mono" if channels == 1 else "stereo"
        astream = out.add_stream(codec, rate=rate, layout=layout)
        samples = np.asarray(wave, dtype=np.float32)
        planar = np.repeat(samples[None, :], channels, axis=0)
        step = astream.codec_context.frame_size or 960
        for start in range(0, planar.shape[1], step):
            chunk = np.ascontiguousarray(planar[:, start : start + step])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = start
            for packet in astream.encode(frame):
                out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
        if vstream is not None:
            for i in range(max(1, round(len(samples) / rate * 10))):
                image = np.full((48, 64, 3), (i * 20) % 255, dtype=np.uint8)
                vframe = av.VideoFrame.from_ndarray(image, format="rgb24")
                vframe.pts = i
                for packet in vstream.encode(vframe):
                    out.mux(packet)
            for packet in vstream.encode(None):
                out.mux(packet)
    return buf.getvalue()


def heif_bytes(array: np.ndarray) -> bytes:
    """HEIC written by pillow-heif (x265), as an iPhone would send."""
    import pillow_heif  # the optional media extra

    pillow_heif.register_heif_opener()
    return image_bytes(array, "HEIF", quality=90)


def avif_bytes(array: np.ndarray) -> bytes:
    """AVIF written by Pillow's own AVIF plugin (Pillow >= 11.3)."""
    return image_bytes(array, "AVIF", quality=90)


# ----------------------------------------------------------------------------- text


def write_wordlevel_tokenizer(path: Path, words: Iterable[str]) -> Path:
    """Write a tiny WordLevel ``tokenizer.json``: lowercase, split on whitespace,
    punctuation removed, ``[PAD]`` = 0, ``[UNK]`` = 1, then ``words`` in order (ids 2...)."""
    vocab = {"[PAD]": 0, "[UNK]": 1}
    for word in words:
        vocab.setdefault(word.lower(), len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(behavior="removed")]
    )
    tokenizer.save(str(path))
    return path
