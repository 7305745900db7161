"""Image decoding: real files from Pillow through ``decode_image``."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.model.config import ImageSpec
from fusionserve.service.preprocess.image import decode_image
from tests.fixtures_media import (
    bmp_bytes,
    decompression_bomb_png,
    digit_like_image,
    gif_bytes,
    gradient_image,
    image_bytes,
    jpeg_bytes,
    png_bytes,
    sine,
    wav_bytes,
    webp_bytes,
)


def spec(height: int = 48, width: int = 64, **kw: object) -> ImageSpec:
    return ImageSpec(height=height, width=width, **kw)  # type: ignore[arg-type]


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def _check_contract(out: np.ndarray, height: int, width: int) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (height, width, 3)
    assert out.flags.c_contiguous


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("encode", [png_bytes, webp_bytes, bmp_bytes], ids=["png", "webp-lossless", "bmp"])
def test_lossless_formats_round_trip_exactly(encode):
    img = gradient_image()
    out = decode_image(encode(img), spec())
    _check_contract(out, 48, 64)
    np.testing.assert_array_equal(out, img)


def test_jpeg_decodes_close_to_source():
    img = gradient_image()
    out = decode_image(jpeg_bytes(img, quality=95), spec())
    _check_contract(out, 48, 64)
    assert mean_abs(out, img) < 3


def test_gif_palette_decodes_close_to_source():
    img = gradient_image()
    out = decode_image(gif_bytes(img), spec())
    _check_contract(out, 48, 64)
    assert mean_abs(out, img) < 8


def test_mnist_style_png_keeps_digit_as_is():
    digit = digit_like_image(7)
    out = decode_image(png_bytes(digit), spec(28, 28))
    _check_contract(out, 28, 28)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], digit)


# ----------------------------------------------------------------------------- orientation


@pytest.mark.parametrize(
    ("orientation", "upright"),
    [
        (3, lambda a: np.rot90(a, 2)),
        (6, lambda a: np.rot90(a, -1)),  # "rotate 90° clockwise to display"
        (8, lambda a: np.rot90(a, 1)),
        (2, lambda a: a[:, ::-1]),
    ],
)
def test_exif_orientation_is_applied(orientation, upright):
    img = gradient_image(48, 64)
    expected = np.ascontiguousarray(upright(img))
    h, w = expected.shape[:2]
    out = decode_image(jpeg_bytes(img, exif_orientation=orientation), spec(h, w))
    assert mean_abs(out, expected) < 3
    if expected.shape == img.shape:
        assert mean_abs(out, img) > 20  # the stored, unrotated pixels would be far off


def test_exif_rotation_with_reduced_scale_decode():
    # Large enough that libjpeg decodes at 1/8 scale; rotation must still be right.
    img = gradient_image(480, 640)
    out = decode_image(jpeg_bytes(img, exif_orientation=6), spec(80, 60))
    upright = Image.fromarray(np.rot90(img, -1).copy())
    reference = np.asarray(upright.resize((60, 80), Image.Resampling.BILINEAR))
    assert mean_abs(out, reference) < 4


def test_png_exif_orientation_is_applied():
    img = gradient_image(48, 64)
    exif = Image.Exif()
    exif[0x0112] = 3
    out = decode_image(png_bytes(img, exif=exif.tobytes()), spec())
    np.testing.assert_array_equal(out, np.rot90(img, 2))


# ----------------------------------------------------------------------------- modes


def test_grayscale_becomes_three_equal_channels():
    gray = gradient_image()[:, :, 0]
    out = decode_image(png_bytes(gray, mode="L"), spec())
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)


def test_rgba_is_composited_on_black():
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[0, :, 3] = 255
    rgba[1, :, 3] = 128
    rgba[2:, :, 3] = 0
    out = decode_image(png_bytes(rgba), spec(4, 4))
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_allclose(out[1, 0], [100, 50, 25], atol=1)
    assert out[2:].max() == 0


def test_gray_alpha_is_composited_on_black():
    la = np.zeros((2, 2, 2), dtype=np.uint8)
    la[..., 0] = 240
    la[0, :, 1] = 255
    out = decode_image(png_bytes(la, mode="LA"), spec(2, 2))
    assert out[0].min() == 240 and out[1].max() == 0


def test_palette_becomes_rgb():
    img = np.zeros((8, 8, 3), dtype=np.uint8)
    img[:4] = (255, 0, 0)
    img[4:] = (0, 0, 255)
    data = png_bytes(img, mode="P")
    assert Image.open(io.BytesIO(data)).mode == "P"
    np.testing.assert_array_equal(decode_image(data, spec(8, 8)), img)


def test_palette_transparency_is_black():
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    pal.putpixel((0, 0), 0)
    buf = io.BytesIO()
    pal.save(buf, "PNG", transparency=1)  # index 1 (white) is fully transparent
    out = decode_image(buf.getvalue(), spec(4, 4))
    assert out.max() == 0


def test_cmyk_jpeg_becomes_rgb():
    img = gradient_image()
    data = jpeg_bytes(img, mode="CMYK")
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    assert mean_abs(decode_image(data, spec()), img) < 4


def test_16bit_grayscale_is_scaled_not_clipped():
    values = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    data = png_bytes(values)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data, spec(1, 4))
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])


def test_bilevel_becomes_black_and_white():
    img = np.zeros((8, 8), dtype=np.uint8)
    img[:, 4:] = 255
    out = decode_image(png_bytes(img, mode="1"), spec(8, 8))
    assert set(np.unique(out)) == {0, 255}
    assert out[:, :4].max() == 0 and out[:, 4:].min() == 255


# ----------------------------------------------------------------------------- resize


def test_stretch_ignores_aspect():
    out = decode_image(png_bytes(gradient_image(20, 80)), spec(32, 32, resize="stretch"))
    _check_contract(out, 32, 32)
    assert out[:, :, 1].min() < 10 and out[:, :, 1].max() > 245  # full height of the gradient kept


def test_letterbox_keeps_aspect_and_pads_black():
    img = np.full((20, 40, 3), 200, dtype=np.uint8)  # 2:1 into a square
    out = decode_image(png_bytes(img), spec(32, 32, resize="letterbox"))
    _check_contract(out, 32, 32)
    assert out[:8].max() == 0 and out[24:].max() == 0
    assert out[8:24].min() == 200


def test_letterbox_pads_left_and_right_for_tall_images():
    img = np.full((40, 10, 3), 90, dtype=np.uint8)
    out = decode_image(png_bytes(img), spec(20, 20, resize="letterbox"))
    assert out[:, :7].max() == 0 and out[:, 13:].max() == 0 and out[:, 8:12].min() == 90


def test_center_crop_fills_and_keeps_the_middle():
    img = np.zeros((30, 90, 3), dtype=np.uint8)
    img[:, :30] = (255, 0, 0)
    img[:, 30:60] = (0, 255, 0)
    img[:, 60:] = (0, 0, 255)
    out = decode_image(png_bytes(img), spec(15, 15, resize="center_crop"))
    _check_contract(out, 15, 15)
    # Resize-then-crop semantics: the filter may see a little past the crop at the very edge.
    inner = out[:, 1:-1]
    assert (inner[:, :, 1] == 255).all() and inner[:, :, [0, 2]].max() == 0
    assert out[:, :, 1].min() > 200


def test_reduced_scale_jpeg_matches_full_decode():
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:600, 0:800]
    img = np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=2).astype(np.uint8)
    img = np.clip(img + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)
    out = decode_image(jpeg_bytes(img), spec(60, 80))
    reference = np.asarray(Image.fromarray(img).resize((80, 60), Image.Resampling.BILINEAR))
    assert mean_abs(out, reference) < 6


# ----------------------------------------------------------------------------- limits and bad input


def test_over_max_bytes_is_refused():
    data = png_bytes(gradient_image())
    with pytest.raises(LimitExceeded, match="max_bytes"):
        decode_image(data, spec(max_bytes=len(data) - 1))


@pytest.mark.parametrize(
    "size", [(50_000, 50_000), (7_000, 7_000)], ids=["beyond-pillow-limit", "beyond-config"]
)
def test_decompression_bomb_is_refused_before_decoding(monkeypatch, size):
    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(LimitExceeded) as err:
        decode_image(decompression_bomb_png(*size), spec())
    assert "field 'image'" in str(err.value)
    assert err.value.details["limit"] == "max_pixels"


def test_real_image_over_configured_max_pixels_is_refused():
    with pytest.raises(LimitExceeded, match="100x100 = 10000 pixels exceeds max_pixels 5000"):
        decode_image(png_bytes(gradient_image(100, 100)), spec(max_pixels=5000))


@pytest.mark.parametrize("encode", [jpeg_bytes, png_bytes], ids=["jpeg", "png"])
@pytest.mark.parametrize("keep", [0.5, 0.2])
def test_truncated_files_are_invalid(encode, keep):
    data = encode(gradient_image(120, 160))
    with pytest.raises(InvalidInput, match="field 'image': corrupted or truncated image") as err:
        decode_image(data[: int(len(data) * keep)], spec())
    assert type(err.value) is InvalidInput


def test_corrupted_jpeg_scan_is_invalid():
    data = bytearray(jpeg_bytes(gradient_image()))
    scan = data.find(b"\xff\xda")
    data[scan + 20 : scan + 60] = b"\xff" * 40
    with pytest.raises(InvalidInput, match="corrupted or truncated image"):
        decode_image(bytes(data), spec())


def test_corrupted_png_header_is_invalid():
    data = bytearray(png_bytes(gradient_image()))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    with pytest.raises(InvalidInput, match="corrupted or truncated image"):
        decode_image(bytes(data), spec())


def test_corrupted_png_pixels_are_invalid():
    data = bytearray(png_bytes(gradient_image()))
    data[data.find(b"IDAT") + 10] ^= 0xFF
    with pytest.raises(InvalidInput, match="corrupted or truncated image"):
        decode_image(bytes(data), spec())


@pytest.mark.parametrize(
    ("payload", "said"),
    [
        (wav_bytes(sine(seconds=0.1)), "a WAV file is not an image"),
        (b"%PDF-1.7\n...", "a PDF file is not an image"),
        (b"just some words", "plain text is not an image"),
        (bytes(range(200, 256)) * 4, "unrecognised data is not an image"),
        (image_bytes(gradient_image(), "TIFF"), "a TIFF file is not supported"),
    ],
)
def test_non_images_are_unsupported_media(payload, said):
    with pytest.raises(UnsupportedMediaType, match=said):
        decode_image(payload, spec())


def test_empty_bytes_name_the_field():
    with pytest.raises(InvalidInput, match="field 'image': empty"):
        decode_image(b"", spec())


# ----------------------------------------------------------------------------- decoded arrays


def test_decoded_array_of_the_right_size_passes_through():
    img = gradient_image()
    np.testing.assert_array_equal(decode_image(img, spec()), img)


def test_decoded_arrays_are_resized_and_gray_widened():
    out = decode_image(gradient_image(96, 128), spec())
    _check_contract(out, 48, 64)
    gray = decode_image(gradient_image()[:, :, 0], spec(24, 32))
    _check_contract(gray, 24, 32)
    assert (gray[:, :, 0] == gray[:, :, 2]).all()


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, 4, 3), np.float32),
        np.zeros((4, 4, 4), np.uint8),
        np.zeros((2, 4, 4, 3), np.uint8),
        np.zeros((0, 4, 3), np.uint8),
    ],
    ids=["float", "rgba", "rank4", "empty"],
)
def test_bad_decoded_arrays_are_invalid(bad):
    with pytest.raises(InvalidInput, match="field 'image'"):
        decode_image(bad, spec())
