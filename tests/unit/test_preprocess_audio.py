"""Audio decoding: real WAV/FLAC/OGG files from libsndfile through ``decode_audio``."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.model.config import AudioSpec
from fusionserve.service.preprocess import wav
from fusionserve.service.preprocess.audio import decode_audio
from tests.fixtures_media import flac_bytes, gradient_image, ogg_bytes, png_bytes, sine, wav_bytes

RATE = 16_000


def spec(max_samples: int = 2 * RATE, **kw: object) -> AudioSpec:
    return AudioSpec(sample_rate=RATE, max_samples=max_samples, **kw)  # type: ignore[arg-type]


def peak_hz(signal: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[np.argmax(spectrum)])


def _check_contract(out: np.ndarray, length: int) -> None:
    assert out.dtype == np.float32 and out.ndim == 1 and out.flags.c_contiguous
    assert out.shape == (length,)


# ----------------------------------------------------------------------------- formats


def test_pcm16_wav_decodes_to_the_waveform():
    wave = sine(440, 1.0, RATE)
    out = decode_audio(wav_bytes(wave, RATE), spec())
    _check_contract(out, RATE)
    np.testing.assert_allclose(out, wave, atol=1 / 32768)


_WAV_ENCODINGS = [
    (c, s)
    for c in ("WAV", "WAVEX")
    for s in ("PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW")
] + [("WAV", "IMA_ADPCM")]


@pytest.mark.parametrize(("container", "subtype"), _WAV_ENCODINGS)
def test_every_wav_encoding_matches_libsndfile(container, subtype):
    """The numpy fast path (PCM, float) and the soundfile path (µ-law, ADPCM) agree with libsndfile."""
    wave = np.stack([sine(440, 0.25, RATE), sine(1000, 0.25, RATE, 0.3)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, wave, RATE, format=container, subtype=subtype)
    reference, _ = sf.read(io.BytesIO(buf.getvalue()), dtype="float32", always_2d=True)
    out = decode_audio(buf.getvalue(), spec())
    np.testing.assert_allclose(out, reference.mean(axis=1), atol=1e-6)


def test_flac_decodes_exactly():
    wave = sine(440, 0.5, RATE)
    out = decode_audio(flac_bytes(wave, RATE), spec())
    np.testing.assert_allclose(out, wave, atol=1 / 32768)


def test_ogg_vorbis_decodes_with_its_pitch():
    out = decode_audio(ogg_bytes(sine(440, 1.0, RATE), RATE), spec())
    assert abs(len(out) - RATE) <= 64
    assert abs(peak_hz(out, RATE) - 440) < 3


# ----------------------------------------------------------------------------- channels and rates


def test_stereo_is_mixed_to_the_mean():
    left, right = sine(440, 0.5, RATE, 0.4), sine(660, 0.5, RATE, 0.2)
    out = decode_audio(wav_bytes(np.stack([left, right], axis=1), RATE, subtype="FLOAT"), spec())
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_six_channels_are_mixed():
    chans = np.stack([np.full(800, c / 10, dtype=np.float32) for c in range(6)], axis=1)
    out = decode_audio(wav_bytes(chans, RATE, subtype="FLOAT"), spec())
    np.testing.assert_allclose(out, np.full(800, 0.25), atol=1e-6)


def test_44k1_stereo_is_resampled_to_16k_keeping_frequency():
    wave = sine(440, 1.0, 44_100)
    out = decode_audio(wav_bytes(wave, 44_100, channels=2), spec())
    _check_contract(out, RATE)
    assert abs(peak_hz(out, RATE) - 440) < 2
    assert 0.45 < np.abs(out[1000:-1000]).max() < 0.55  # amplitude kept, no aliasing blow-up


def test_8k_is_upsampled_to_16k():
    out = decode_audio(wav_bytes(sine(1000, 0.5, 8000), 8000), spec())
    _check_contract(out, 8000)
    assert abs(peak_hz(out, RATE) - 1000) < 3


def test_long_audio_keeps_the_first_max_samples():
    wave = np.concatenate([sine(440, 1.0, RATE), sine(2000, 1.0, RATE)])
    out = decode_audio(wav_bytes(wave, RATE, subtype="FLOAT"), spec(max_samples=RATE))
    np.testing.assert_array_equal(out, wave[:RATE])


def test_resampled_crop_matches_resampling_everything():
    wave = sine(300, 3.0, 44_100) + sine(3000, 3.0, 44_100, 0.2)
    full = decode_audio(wav_bytes(wave, 44_100, subtype="FLOAT"), spec(max_samples=3 * RATE))
    cropped = decode_audio(wav_bytes(wave, 44_100, subtype="FLOAT"), spec(max_samples=RATE))
    _check_contract(cropped, RATE)
    np.testing.assert_allclose(cropped, full[:RATE], atol=1e-5)  # the decoded margin covers the filter


# ----------------------------------------------------------------------------- limits


def test_over_max_bytes_is_refused():
    data = wav_bytes(sine(seconds=0.1))
    with pytest.raises(LimitExceeded, match="max_bytes"):
        decode_audio(data, spec(max_bytes=len(data) - 1))


@pytest.mark.parametrize("encode", [wav_bytes, flac_bytes], ids=["wav", "flac"])
def test_duration_over_limit_is_refused_before_decoding(monkeypatch, encode):
    def no_decoding(*args, **kwargs):
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(wav, "decode_frames", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    with pytest.raises(LimitExceeded, match=r"lasts 3\.00 s, over max_input_seconds 2.5") as err:
        decode_audio(encode(sine(seconds=3.0), RATE), spec(max_input_seconds=2.5))
    assert err.value.details["limit"] == "max_input_seconds"


def test_duration_limit_uses_the_file_rate():
    # 2 s at 44.1 kHz is 2 s, whatever the model's rate.
    data = wav_bytes(sine(seconds=2.0, rate=44_100), 44_100)
    with pytest.raises(LimitExceeded, match=r"2\.00 s"):
        decode_audio(data, spec(max_input_seconds=1.5))
    assert decode_audio(data, spec(max_input_seconds=2.0)).shape == (2 * RATE,)


# ----------------------------------------------------------------------------- bad input


def test_truncated_wav_is_invalid():
    data = wav_bytes(sine(seconds=1.0))
    said = r"truncated WAV .*declares 32000 bytes of audio, 9956 are present"
    with pytest.raises(InvalidInput, match=said):
        decode_audio(data[:10_000], spec())


@pytest.mark.parametrize("cut", [30, 44], ids=["inside-format", "before-samples"])
def test_wav_cut_in_its_header_is_invalid(cut):
    with pytest.raises(InvalidInput, match="truncated WAV"):
        decode_audio(wav_bytes(sine())[:cut], spec())


@pytest.mark.parametrize("encode", [flac_bytes, ogg_bytes], ids=["flac", "ogg"])
def test_truncated_flac_and_ogg_are_invalid(encode):
    data = encode(sine(seconds=1.0), RATE)
    with pytest.raises(InvalidInput, match="truncated"):
        decode_audio(data[: len(data) // 2], spec())


def test_streamed_wav_with_unknown_size_uses_the_bytes_present():
    data = bytearray(wav_bytes(sine(seconds=0.5)))
    data[40:44] = struct.pack("<I", 0xFFFFFFFF)
    assert decode_audio(bytes(data), spec()).shape == (8000,)


def test_wav_with_extra_chunks_before_data():
    data = wav_bytes(sine(seconds=0.25))
    extra = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"  # odd size, padded
    patched = data[:36] + extra + data[36:]
    patched = patched[:4] + struct.pack("<I", len(patched) - 8) + patched[8:]
    np.testing.assert_array_equal(decode_audio(patched, spec()), decode_audio(data, spec()))


def test_png_under_audio_is_unsupported_media():
    said = r"field 'audio': not a WAV/FLAC/OGG/MP3/WebM/MP4 audio file \(detected PNG\)"
    with pytest.raises(UnsupportedMediaType, match=said):
        decode_audio(png_bytes(gradient_image()), spec())


@pytest.mark.parametrize(
    ("payload", "detected"),
    [(b"%PDF-1.4" + bytes(100), "PDF"), (b"hello", "text"), (bytes(range(128, 256)), "unrecognised data")],
)
def test_other_non_audio_is_unsupported_media(payload, detected):
    with pytest.raises(UnsupportedMediaType, match=f"detected {detected}"):
        decode_audio(payload, spec())


def test_riff_without_data_chunk_is_invalid():
    with pytest.raises(InvalidInput, match="corrupted"):
        decode_audio(b"RIFF\x00\x00\x00\x00WAVE" + bytes(100), spec())


def test_empty_bytes_and_empty_audio_are_invalid():
    with pytest.raises(InvalidInput, match="field 'audio': empty"):
        decode_audio(b"", spec())
    with pytest.raises(InvalidInput, match="no samples"):
        decode_audio(wav_bytes(np.zeros(0, np.float32)), spec())


def test_audio_too_short_for_the_model_rate_is_invalid():
    with pytest.raises(InvalidInput, match="too short"):
        decode_audio(wav_bytes(sine(rate=44_100)[:1], 44_100), spec())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_invalid(bad):
    wave = sine(seconds=0.1)
    wave[100] = bad
    with pytest.raises(InvalidInput, match="NaN or infinite"):
        decode_audio(wav_bytes(wave, subtype="FLOAT"), spec())


# ----------------------------------------------------------------------------- decoded arrays


def test_decoded_waveform_is_cropped():
    wave = sine(seconds=1.5)
    out = decode_audio(wave, spec(max_samples=RATE))
    _check_contract(out, RATE)
    np.testing.assert_array_equal(out, wave[:RATE])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(10, np.float64),
        np.zeros((10, 2), np.float32),
        np.zeros(0, np.float32),
        np.array([0.0, np.nan], np.float32),
        np.zeros(20 * RATE, np.float32),
    ],
    ids=["float64", "stereo", "empty", "nan", "too-long"],
)
def test_bad_decoded_waveforms_are_invalid(bad):
    with pytest.raises(InvalidInput, match="field 'audio'"):
        decode_audio(bad, spec(max_input_seconds=10))


def _flac_without_length(wave: np.ndarray) -> bytes:
    """A FLAC whose STREAMINFO says "total samples unknown", as written to a pipe."""
    data = bytearray(flac_bytes(wave, RATE))
    streaminfo = 8  # after "fLaC" and the metadata block header
    data[streaminfo + 13] &= 0xF0  # the 36-bit sample count: low 4 bits of this byte and the next 4 bytes
    data[streaminfo + 14 : streaminfo + 18] = bytes(4)
    return bytes(data)


def test_flac_of_unknown_length_is_refused():
    with pytest.raises(InvalidInput, match="does not state its length"):
        decode_audio(_flac_without_length(sine(440, 0.5, RATE)), spec())
