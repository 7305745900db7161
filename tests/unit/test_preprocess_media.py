"""The formats phones and browsers send: MP3, WebM/Opus, Ogg/Opus, M4A/AAC, video soundtracks,
HEIC and AVIF — decoded right, and refused clearly when hostile.

Every file is made here with the libraries themselves (libsndfile, PyAV,
pillow-heif, Pillow). Tests that need the optional ``media`` extra skip with
that reason where it is not installed; CI installs it.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.model.config import AudioSpec, ImageSpec
from fusionserve.service.preprocess import image as image_module
from fusionserve.service.preprocess import media
from fusionserve.service.preprocess.audio import decode_audio
from fusionserve.service.preprocess.image import decode_image
from fusionserve.service.preprocess.sniff import sniff
from tests.fixtures_media import (
    av_audio_bytes,
    avif_bytes,
    gif_bytes,
    gradient_image,
    heif_bytes,
    mp3_bytes,
    png_bytes,
    sine,
)

RATE = 16_000
needs_av = pytest.mark.skipif(
    not media.HAVE_AV, reason="needs the media extra: pip install 'fusionserve[media]'"
)
needs_heif = pytest.mark.skipif(
    "heif" not in image_module._DECODABLE, reason="needs the media extra: pip install 'fusionserve[media]'"
)
needs_avif = pytest.mark.skipif(
    "avif" not in image_module._DECODABLE, reason="needs Pillow >= 11.3: pip install 'fusionserve[media]'"
)


def aspec(max_samples: int = RATE, **kw: object) -> AudioSpec:
    return AudioSpec(sample_rate=RATE, max_samples=max_samples, **kw)  # type: ignore[arg-type]


def ispec(**kw: object) -> ImageSpec:
    return ImageSpec(height=48, width=64, **kw)  # type: ignore[arg-type]


def peak_hz(signal: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


def _webm(seconds: float = 0.8, **kw: object) -> bytes:
    return av_audio_bytes(sine(440, seconds, 48_000), 48_000, "webm", "libopus", **kw)  # type: ignore[arg-type]


def _m4a(seconds: float = 0.8, **kw: object) -> bytes:
    return av_audio_bytes(sine(440, seconds, 44_100), 44_100, "ipod", "aac", **kw)  # type: ignore[arg-type]


AV_FILES = {
    "webm-opus": lambda: _webm(),
    "webm-opus-live": lambda: _webm(streaming=True),
    "ogg-opus": lambda: av_audio_bytes(sine(440, 0.8, 48_000), 48_000, "ogg", "libopus"),
    "m4a-aac": lambda: _m4a(),
    "mp4-video-soundtrack": lambda: av_audio_bytes(sine(440, 0.8, 44_100), 44_100, "mp4", "aac", video=True),
    "webm-video-stereo": lambda: _webm(video=True, channels=2),
}


# ----------------------------------------------------------------------------- decoding right


def test_mp3_decodes_with_the_bundled_libsndfile():
    out = decode_audio(mp3_bytes(sine(440, 0.8, RATE)), aspec())
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 0.8 * RATE) < 0.1 * RATE  # LAME adds a little padding, never seconds
    assert abs(peak_hz(out) - 440) < 5
    assert 0.4 < float(np.abs(out[2000:-2000]).max()) < 0.6


@needs_av
@pytest.mark.parametrize("name", sorted(AV_FILES))
def test_browser_and_phone_audio_decodes_through_pyav(name):
    data = AV_FILES[name]()
    out = decode_audio(data, aspec())
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert abs(len(out) - 0.8 * RATE) < 0.1 * RATE
    assert abs(peak_hz(out) - 440) < 5
    assert 0.4 < float(np.abs(out[4000:-2000]).max()) < 0.65


@needs_av
def test_long_audio_keeps_only_the_first_max_samples():
    out = decode_audio(_webm(seconds=3.0), aspec(max_samples=RATE // 2))
    assert out.shape == (RATE // 2,)


# ----------------------------------------------------------------------------- hostile input


def test_truncated_mp3_is_invalid_input():
    data = mp3_bytes(sine(440, 1.0, RATE))
    with pytest.raises(InvalidInput, match=r"field 'audio'.*(truncated|corrupt)"):
        decode_audio(data[: len(data) // 3], aspec())


@needs_av
@pytest.mark.parametrize("make", [_webm, _m4a], ids=["webm", "m4a"])
def test_truncated_container_is_invalid_input_naming_the_field(make):
    data = make(seconds=2.0)
    with pytest.raises(InvalidInput, match=r"field 'audio'.*(truncated|corrupt|no audio)") as info:
        decode_audio(data[: len(data) // 3], aspec(max_samples=2 * RATE))
    assert not isinstance(info.value, LimitExceeded)


@needs_av
def test_declared_duration_over_the_bound_is_refused_before_decoding():
    with pytest.raises(LimitExceeded, match=r"field 'audio': audio lasts 3\.\d+ s, over max_input_seconds 2"):
        decode_audio(_webm(seconds=3.0), aspec(max_input_seconds=2.0))


def _lie_about_webm_duration(data: bytes, seconds: float) -> bytes:
    """Rewrite the Segment Info Duration (EBML id 0x4489, 8-byte float, in ms)."""
    at = data.index(b"\x44\x89\x88")
    return data[: at + 3] + struct.pack(">d", seconds * 1000) + data[at + 11 :]


@needs_av
def test_a_header_claiming_hours_is_refused_without_decoding():
    lying = _lie_about_webm_duration(_webm(seconds=0.5), 3 * 3600)
    with pytest.raises(LimitExceeded, match="max_input_seconds") as info:
        decode_audio(lying, aspec())
    assert info.value.details["limit"] == "max_input_seconds"


@needs_av
def test_a_header_claiming_less_than_sent_decodes_only_what_the_model_uses():
    lying = _lie_about_webm_duration(_webm(seconds=3.0), 0.5)
    out = decode_audio(lying, aspec(max_samples=RATE, max_input_seconds=2.0))
    assert out.shape == (RATE,)


@needs_av
def test_decode_past_its_time_budget_is_413_naming_it():
    with pytest.raises(
        LimitExceeded, match=r"field 'audio': decoding took over max_decode_ms 0\.001"
    ) as info:
        decode_audio(_webm(seconds=2.0), aspec(max_decode_ms=0.001))
    assert info.value.details["limit"] == "max_decode_ms"


def test_mp3_decode_budget_applies_too():
    with pytest.raises(LimitExceeded, match="max_decode_ms"):
        decode_audio(mp3_bytes(sine(440, 2.0, RATE)), aspec(max_samples=2 * RATE, max_decode_ms=0.001))


@needs_av
def test_video_without_sound_is_invalid_input():
    import io

    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(InvalidInput, match="field 'audio': the file has no audio track"):
        decode_audio(buf.getvalue(), aspec())


@needs_av
@pytest.mark.parametrize("magic", [b"\x1a\x45\xdf\xa3", b"\x00\x00\x00\x18ftypM4A "], ids=["webm", "m4a"])
def test_garbage_behind_a_container_magic_is_invalid_input(magic):
    data = magic + bytes(range(256)) * 8
    with pytest.raises(InvalidInput, match="field 'audio'") as info:
        decode_audio(data, aspec())
    assert type(info.value) is InvalidInput


@needs_av
def test_audio_under_the_image_field_says_what_it_is():
    with pytest.raises(UnsupportedMediaType, match=r"field 'image': a Matroska/WebM file is not an image"):
        decode_image(_webm(), ispec())


@needs_heif
def test_heic_under_the_audio_field_says_what_it_is():
    with pytest.raises(UnsupportedMediaType, match=r"field 'audio': .*detected HEIF"):
        decode_audio(heif_bytes(gradient_image()), aspec())


def test_mp3_under_the_image_field_is_unsupported():
    with pytest.raises(UnsupportedMediaType, match="an MP3 file is not an image"):
        decode_image(mp3_bytes(sine(440, 0.3, RATE)), ispec())


@needs_av
def test_without_pyav_the_415_names_the_extra(monkeypatch):
    monkeypatch.setattr(media, "HAVE_AV", False)
    with pytest.raises(UnsupportedMediaType, match=r"pip install 'fusionserve\[media\]'") as info:
        decode_audio(_webm(), aspec())
    assert info.value.details["extra"] == "fusionserve[media]"


def test_without_heif_support_the_415_names_the_extra(monkeypatch):
    monkeypatch.setattr(image_module, "_DECODABLE", frozenset({"png"}))
    heic_head = b"\x00\x00\x00\x18ftypheic" + bytes(64)
    assert sniff(heic_head) == "heif"
    with pytest.raises(UnsupportedMediaType, match=r"a HEIF file needs .* 'fusionserve\[media\]'"):
        decode_image(heic_head, ispec())


# ----------------------------------------------------------------------------- images


@needs_heif
def test_heic_decodes_like_the_png_of_the_same_pixels():
    pixels = gradient_image()
    out = decode_image(heif_bytes(pixels), ispec())
    want = decode_image(png_bytes(pixels), ispec())
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - want.astype(int)).mean() < 4  # lossy HEVC


@needs_avif
def test_avif_decodes_like_the_png_of_the_same_pixels():
    pixels = gradient_image()
    out = decode_image(avif_bytes(pixels), ispec())
    want = decode_image(png_bytes(pixels), ispec())
    assert np.abs(out.astype(int) - want.astype(int)).mean() < 4


@pytest.mark.parametrize(
    "make",
    [pytest.param(heif_bytes, marks=needs_heif), pytest.param(avif_bytes, marks=needs_avif)],
    ids=["heic", "avif"],
)
def test_truncated_modern_image_is_invalid_input(make):
    data = make(gradient_image(96, 128))
    with pytest.raises(InvalidInput, match=r"field 'image': corrupted or truncated image") as info:
        decode_image(data[: len(data) // 2], ispec())
    assert type(info.value) is InvalidInput


@pytest.mark.parametrize(
    "make",
    [pytest.param(heif_bytes, marks=needs_heif), pytest.param(avif_bytes, marks=needs_avif)],
    ids=["heic", "avif"],
)
def test_modern_image_over_max_pixels_is_413_before_decoding(make):
    data = make(gradient_image(96, 128))
    with pytest.raises(LimitExceeded, match=r"field 'image': .*max_pixels 1000"):
        decode_image(data, ispec(max_pixels=1000))


def _lie_about_heif_size(data: bytes, width: int, height: int) -> bytes:
    """Rewrite every ``ispe`` (image spatial extents) box: a decompression bomb's header."""
    out = bytearray(data)
    at = out.find(b"ispe")
    while at >= 0:
        out[at + 8 : at + 16] = struct.pack(">II", width, height)
        at = out.find(b"ispe", at + 4)
    return bytes(out)


@needs_heif
def test_a_heic_header_declaring_a_bomb_is_413_before_decoding():
    bomb = _lie_about_heif_size(heif_bytes(gradient_image(32, 32)), 60_000, 60_000)
    with pytest.raises(LimitExceeded, match=r"field 'image': .*max_pixels") as info:
        decode_image(bomb, ispec(max_pixels=40_000_000))
    assert info.value.details["limit"] == "max_pixels"


@needs_heif
def test_a_heic_header_contradicting_its_stream_is_invalid_input():
    lying = _lie_about_heif_size(heif_bytes(gradient_image(32, 32)), 2_000, 2_000)
    with pytest.raises(InvalidInput, match=r"field 'image': corrupted or truncated image") as info:
        decode_image(lying, ispec())
    assert type(info.value) is InvalidInput


@needs_avif
def test_an_avif_header_contradicting_its_stream_is_invalid_input():
    bomb = _lie_about_heif_size(avif_bytes(gradient_image(32, 32)), 20_000, 20_000)
    with pytest.raises(InvalidInput, match="field 'image'"):
        decode_image(bomb, ispec(max_pixels=40_000_000))


def _animated(fmt: str) -> bytes:
    import io

    from PIL import Image

    first = Image.fromarray(np.full((48, 64, 3), 250, np.uint8))
    second = Image.fromarray(np.zeros((48, 64, 3), np.uint8))
    buf = io.BytesIO()
    first.save(buf, format=fmt, save_all=True, append_images=[second], duration=100, loop=0, lossless=True)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_use_their_first_frame(fmt):
    out = decode_image(_animated(fmt), ispec())
    assert out.min() > 200  # the bright first frame, not the black second one


def test_gif_still_decodes():
    assert decode_image(gif_bytes(gradient_image()), ispec()).shape == (48, 64, 3)
