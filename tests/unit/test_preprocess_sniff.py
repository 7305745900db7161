"""Magic-number sniffing on real encoded files."""

from __future__ import annotations

import pytest

from fusionserve.service.preprocess.sniff import describe, sniff
from tests.fixtures_media import (
    bmp_bytes,
    flac_bytes,
    gif_bytes,
    gradient_image,
    image_bytes,
    jpeg_bytes,
    ogg_bytes,
    png_bytes,
    sine,
    wav_bytes,
    webp_bytes,
)

IMG = gradient_image(8, 8)
WAVE = sine(seconds=0.05)


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (jpeg_bytes(IMG), "jpeg"),
        (png_bytes(IMG), "png"),
        (webp_bytes(IMG), "webp"),
        (gif_bytes(IMG), "gif"),
        (bmp_bytes(IMG), "bmp"),
        (image_bytes(IMG, "TIFF"), "tiff"),
        (wav_bytes(WAVE), "wav"),
        (flac_bytes(WAVE), "flac"),
        (ogg_bytes(WAVE), "ogg"),
        (b"ID3\x04\x00" + bytes(20), "mp3"),
        (b"\xff\xfb\x90\x00" + bytes(20), "mp3"),
        (b"%PDF-1.4\n", "pdf"),
        (b"PK\x03\x04rest", "zip"),
        (b"\x00\x00\x00\x18ftypmp42", "mp4"),
        (b"\x00\x00\x00\x18ftypheic", "heif"),
        (b"RIFF\x00\x00\x00\x00AVI LIST", "avi"),
        ('{"json": "h\u00e9llo"}'.encode(), "text"),
    ],
)
def test_known_kinds(data, kind):
    assert sniff(data) == kind


@pytest.mark.parametrize(
    "data", [b"", b"\x00\x01\x02\x03", b"BM\x00", bytes(range(128, 200)), b"RIFF\x10\x00\x00\x00WAV"]
)
def test_unknown_or_too_short_is_none(data):
    assert sniff(data) is None


def test_descriptions_read_as_english():
    assert describe("wav") == "a WAV file"
    assert describe("ogg") == "an OGG file"
    assert describe("mp3") == "an MP3 file"
    assert describe(None) == "unrecognised data"
