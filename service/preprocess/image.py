"""Image bytes (or an already-decoded array) → the model's uint8 ``[H, W, 3]``.

Untrusted uploads meet a codec here, so every step is bounded and ordered so
that the cheap checks run first: byte size, then the file's magic number, then
the header's pixel count (decompression bombs are refused before a single
pixel is decoded), then decoding.

Decisions a model author needs to know (the training pipeline should match):

- EXIF orientation is applied, so the array is upright as a viewer shows it.
- Transparency is composited on **black** (``rgb * alpha``): digit-style models
  draw light strokes on a dark background, and a transparent background must
  stay dark. Palette, grayscale, CMYK and 16-bit grayscale become RGB
  (16-bit values are scaled by 1/257, not clipped).
- Resampling is Pillow's antialiased ``BILINEAR`` (:data:`RESAMPLE`). Large
  JPEGs are first decoded at 1/2, 1/4 or 1/8 scale by libjpeg (``draft``)
  when the target is that much smaller, which is several times faster.
- ``stretch`` ignores aspect; ``letterbox`` keeps aspect and pads with black,
  centred; ``center_crop`` keeps aspect, fills the target and crops the centre;
  ``shortest_side`` scales the shortest side to ``shortest_side`` and crops the
  centre (torchvision's ``Resize(N)`` + ``CenterCrop``, done as one resampling
  of the source rectangle, so not bit-identical to torchvision's two steps).
- Normalisation, dtype, channel order and layout are not done here but on the
  whole batch (:func:`fusionserve.service.model.feeds.image_tensor`).
- Arrays returned may be read-only; callers copy them into a batch anyway.
- Animated GIF, WebP and AVIF: only the **first frame** is decoded and used.
- HEIC/HEIF (phones) needs the optional ``media`` extra (pillow-heif); AVIF
  needs Pillow >= 11.3 (which the extra requires). Without them such uploads
  get a 415 naming the extra. Their decoders run with one thread per call,
  like every other codec here; the pixel bound is checked on the header
  (``ispe``) before decoding.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, UnidentifiedImageError

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.model.config import ImageSpec
from fusionserve.service.preprocess.sniff import IMAGE_KINDS, describe, sniff

#: The one resampling filter of the serving path.
RESAMPLE = Image.Resampling.BILINEAR

#: The pip extra that brings HEIC/HEIF (and a Pillow that reads AVIF).
MEDIA_EXTRA = "fusionserve[media]"
#: Pillow plugins we let near untrusted bytes (``Image.open(formats=...)``), by sniffed kind.
_PLUGINS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP"}
#: Kinds that need the ``media`` extra.
_MEDIA_KINDS = frozenset({"heif", "avif"})


def _register_optional_plugins() -> None:
    """Add HEIF (pillow-heif) and AVIF (Pillow >= 11.3) where installed, one decode thread each."""
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        pillow_heif.options.DECODE_THREADS = 1
        _PLUGINS["heif"] = "HEIF"
    except ImportError:
        pass
    try:
        from PIL import AvifImagePlugin, features

        if features.check("avif"):
            AvifImagePlugin.DEFAULT_MAX_THREADS = 1
            _PLUGINS["avif"] = "AVIF"
    except ImportError:
        pass


_register_optional_plugins()
_PILLOW_FORMATS = tuple(_PLUGINS.values())
_DECODABLE = frozenset(_PLUGINS)

_ORIENTATION_TAG = 0x0112
#: EXIF orientation → the transpose that makes the image upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = frozenset({5, 6, 7, 8})

Image.init()  # import every plugin once, not on a request thread

#: The most memory one image may decode to (bytes: width x height x Pillow's bytes
#: per pixel), checked from the header before any pixel is decoded. Set once at
#: start-up from ``Settings.max_decoded_image_bytes`` (:func:`set_max_decoded_bytes`).
#: At most ``decode_threads`` images decode at once, which bounds the decode
#: memory of a request, and of the process, to ``decode_threads`` x this.
MAX_DECODED_BYTES = 160 * 1024 * 1024
#: Bytes per pixel as Pillow stores each mode; every mode not listed takes 4.
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Pixels converted per step when reducing 16/32-bit images to 8 bits.
_CHUNK_PIXELS = 1 << 20


def set_max_decoded_bytes(limit: int) -> None:
    global MAX_DECODED_BYTES
    MAX_DECODED_BYTES = limit


def decoded_bytes(width: int, height: int, mode: str) -> int:
    """What decoding an image of this size and mode takes, before any conversion."""
    return width * height * _BYTES_PER_PIXEL.get(mode, 4)


def decode_image(
    data: bytes | np.ndarray, spec: ImageSpec, field: str = "image", info: dict[str, int] | None = None
) -> np.ndarray:
    """Decode and resize one image to uint8 ``[spec.height, spec.width, 3]``.

    ``info``, when given, receives ``pixels``: the image's size as sent.

    Raises :class:`InvalidInput` (or its subclasses) naming ``field`` and the
    limit that was hit; never a codec's own exception.
    """
    if isinstance(data, np.ndarray):
        if info is not None and data.ndim >= 2:
            info["pixels"] = int(data.shape[0] * data.shape[1])
        return _from_array(data, spec, field)
    if len(data) == 0:
        raise InvalidInput(f"field {field!r}: empty image", field=field)
    if len(data) > spec.max_bytes:
        raise LimitExceeded(
            f"field {field!r}: {len(data)} bytes exceeds max_bytes {spec.max_bytes}",
            field=field,
            limit="max_bytes",
            max=spec.max_bytes,
            actual=len(data),
        )
    kind = sniff(data)
    if kind not in _DECODABLE:
        raise _unsupported(kind, field)
    return _decode_bytes(data, spec, field, info)


def header_pixels(data: bytes | np.ndarray) -> int:
    """The pixel count an image's header declares, without decoding it (0 when unreadable).

    For admission by cost (``max_queue_cost``); the decode that follows does
    every check and reports every problem.
    """
    if isinstance(data, np.ndarray):
        return int(data.shape[0] * data.shape[1]) if data.ndim >= 2 else 0
    if sniff(data) not in _DECODABLE:
        return 0
    try:
        with Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS) as im:
            return int(im.width * im.height)
    except Exception:  # the decode reports it properly
        return 0


def _unsupported(kind: str | None, field: str) -> UnsupportedMediaType:
    if kind in _MEDIA_KINDS:
        return UnsupportedMediaType(
            f"field {field!r}: {describe(kind)} needs the optional media support: "
            f"pip install '{MEDIA_EXTRA}'",
            field=field,
            detected=kind,
            extra=MEDIA_EXTRA,
        )
    if kind in IMAGE_KINDS:
        what = f"{describe(kind)} is not supported"
    else:
        what = f"{describe(kind)} is not an image"
    return UnsupportedMediaType(
        f"field {field!r}: {what} (send JPEG, PNG, WebP, GIF, BMP, HEIC or AVIF)", field=field, detected=kind
    )


def _decode_bytes(data: bytes, spec: ImageSpec, field: str, info: dict[str, int] | None = None) -> np.ndarray:
    im, orientation = _load(data, spec, field)
    if info is not None:
        info["pixels"] = im.width * im.height  # after a JPEG draft: the size actually decoded
    if orientation in _TRANSPOSE:
        im = im.transpose(_TRANSPOSE[orientation])
    return _resize_to_array(_to_l_or_rgb(im), spec)


def _load(data: bytes, spec: ImageSpec, field: str) -> tuple[Image.Image, int]:
    """Check the header, then decode the pixels; returns the image and its EXIF orientation.

    The only place Pillow touches untrusted bytes, so the only place its
    exceptions are translated.
    """
    try:
        im = Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)
        _check_pixels(im.width, im.height, spec, field)
        _check_decoded_bytes(im, field)
        is_jpeg = im.format in ("JPEG", "MPO")
        if is_jpeg:  # JPEG's EXIF is parsed with the header: decode at reduced scale
            orientation = _orientation(im)
            im.draft("RGB", _draft_size(im.size, orientation, spec))
        im.load()
        if not is_jpeg:
            orientation = _orientation(im)  # PNG may carry eXIf after the pixels
        return im, orientation
    except UnidentifiedImageError as exc:
        raise InvalidInput(
            f"field {field!r}: corrupted or truncated image (unreadable header)", field=field
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise LimitExceeded(
            f"field {field!r}: image has too many pixels (max_pixels {spec.max_pixels}; {exc})",
            field=field,
            limit="max_pixels",
            max=spec.max_pixels,
        ) from exc
    except (InvalidInput, MemoryError):
        raise
    except Exception as exc:
        if "Security limit" not in str(exc):  # libheif refuses huge declared sizes this way
            raise InvalidInput(
                f"field {field!r}: corrupted or truncated image ({_first_line(exc)})", field=field
            ) from exc
        raise LimitExceeded(
            f"field {field!r}: image has too many pixels (max_pixels {spec.max_pixels}; "
            f"the decoder's own limit refused the declared size)",
            field=field,
            limit="max_pixels",
            max=spec.max_pixels,
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _check_pixels(width: int, height: int, spec: ImageSpec, field: str) -> None:
    if width <= 0 or height <= 0:
        raise InvalidInput(f"field {field!r}: image has no pixels ({width}x{height})", field=field)
    if width * height > spec.max_pixels:
        raise LimitExceeded(
            f"field {field!r}: {width}x{height} = {width * height} pixels "
            f"exceeds max_pixels {spec.max_pixels}",
            field=field,
            limit="max_pixels",
            max=spec.max_pixels,
            actual=width * height,
        )


def _check_decoded_bytes(im: Image.Image, field: str) -> None:
    size = decoded_bytes(im.width, im.height, im.mode)
    if size > MAX_DECODED_BYTES:
        raise LimitExceeded(
            f"field {field!r}: a {im.width}x{im.height} {im.mode} image decodes to {size} bytes; "
            f"the limit is max_decoded_image_bytes={MAX_DECODED_BYTES}",
            field=field,
            limit="max_decoded_image_bytes",
            max=MAX_DECODED_BYTES,
            actual=size,
        )


def _orientation(im: Image.Image) -> int:
    if "exif" not in im.info:
        return 1
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a malformed EXIF block is not fatal: keep the stored orientation
        return 1
    return value if isinstance(value, int) else 1


def _scale(src: tuple[int, int], spec: ImageSpec) -> tuple[float, float]:
    """The x and y factors the final resize applies to an upright source."""
    sx, sy = spec.width / src[0], spec.height / src[1]
    if spec.resize == "letterbox":
        sx = sy = min(sx, sy)
    elif spec.resize == "center_crop":
        sx = sy = max(sx, sy)
    elif spec.resize == "shortest_side" and spec.shortest_side is not None:
        sx = sy = spec.shortest_side / min(src)
    return sx, sy


def _draft_size(stored: tuple[int, int], orientation: int, spec: ImageSpec) -> tuple[int, int]:
    """The smallest stored-orientation size that still holds every output pixel's detail."""
    swap = orientation in _SWAPS_AXES
    upright = (stored[1], stored[0]) if swap else stored
    sx, sy = _scale(upright, spec)
    need = (max(1, math.ceil(upright[0] * sx)), max(1, math.ceil(upright[1] * sy)))
    return (need[1], need[0]) if swap else need


def _to_l_or_rgb(im: Image.Image) -> Image.Image:
    """Reduce any mode to ``L`` or ``RGB``; alpha is composited on black."""
    mode = im.mode
    if mode in ("RGB", "L"):
        return im
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    elif mode in ("RGBa", "La"):
        im, mode = im.convert(mode.upper()), mode.upper()
    if mode in ("RGBA", "LA"):
        canvas = Image.new(mode[:-1], im.size, 0)
        canvas.paste(im, mask=im)  # black * (1 - alpha) + colour * alpha
        return canvas
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I"):
        return _high_depth_gray(im)
    return im.convert("RGB")  # CMYK, YCbCr, RGBX, LAB...


def _high_depth_gray(im: Image.Image) -> Image.Image:
    """16-bit grayscale (``I;16*``, ``I``) → ``L``, scaling 0..65535 to 0..255.

    Memory-frugal: converted a strip of rows (about a million pixels) at a
    time into the 8-bit result, so a 40-megapixel image costs its decoded
    pixels plus 40 MB, not full-size copies as int64 and float64 (~800 MB).
    ``(v + 128) // 257`` equals ``rint(v / 257)`` for every 16-bit ``v`` (no
    value lies halfway).
    """
    width, height = im.size
    out = np.empty((height, width), dtype=np.uint8)
    rows = max(1, _CHUNK_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        strip = np.asarray(im.crop((0, top, width, min(height, top + rows))))
        if strip.dtype.kind == "f":
            out[top : top + strip.shape[0]] = np.rint(np.clip(strip, 0, 255))
        else:
            out[top : top + strip.shape[0]] = (np.clip(strip, 0, 65535).astype(np.uint32) + 128) // 257
    return Image.fromarray(out, "L")


def _resize_to_array(im: Image.Image, spec: ImageSpec) -> np.ndarray:
    target = (spec.width, spec.height)
    if spec.resize == "letterbox" and im.size != target:
        return _letterbox(im, spec)
    if not _unchanged(im.size, spec):
        box = _crop_box(im.size, spec) if spec.resize in ("center_crop", "shortest_side") else None
        im = im.resize(target, RESAMPLE, box=box)
    return _as_rgb_array(im)


def _unchanged(size: tuple[int, int], spec: ImageSpec) -> bool:
    """True when the resize would return the source as it is."""
    if spec.resize == "shortest_side":
        return size == (spec.width, spec.height) and spec.shortest_side == min(size)
    return size == (spec.width, spec.height)


def _crop_box(size: tuple[int, int], spec: ImageSpec) -> tuple[float, float, float, float]:
    """The centred source rectangle with the target's aspect ratio."""
    s, _ = _scale(size, spec)
    w, h = spec.width / s, spec.height / s
    left, top = (size[0] - w) / 2, (size[1] - h) / 2
    return (left, top, left + w, top + h)


def _letterbox(im: Image.Image, spec: ImageSpec) -> np.ndarray:
    s, _ = _scale(im.size, spec)
    w = min(spec.width, max(1, round(im.width * s)))
    h = min(spec.height, max(1, round(im.height * s)))
    fitted = _as_rgb_array(im.resize((w, h), RESAMPLE) if (w, h) != im.size else im)
    canvas = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
    top, left = (spec.height - h) // 2, (spec.width - w) // 2
    canvas[top : top + h, left : left + w] = fitted
    return canvas


def _as_rgb_array(im: Image.Image) -> np.ndarray:
    values = np.asarray(im)
    if values.ndim == 2:  # grayscale was resized on one channel; widen only now
        return np.repeat(values[:, :, None], 3, axis=2)
    return values


def _from_array(values: np.ndarray, spec: ImageSpec, field: str) -> np.ndarray:
    """Accept a decoded uint8 ``[h, w, 3]`` or ``[h, w]`` array and resize it."""
    if values.dtype != np.uint8:
        raise InvalidInput(f"field {field!r}: decoded image must be uint8, got {values.dtype}", field=field)
    if not (values.ndim == 2 or (values.ndim == 3 and values.shape[2] == 3)):
        raise InvalidInput(
            f"field {field!r}: decoded image must be [H, W, 3] or [H, W], got shape {list(values.shape)}",
            field=field,
        )
    _check_pixels(values.shape[1], values.shape[0], spec, field)
    if values.ndim == 3 and _unchanged((values.shape[1], values.shape[0]), spec):
        return np.ascontiguousarray(values)
    return _resize_to_array(Image.fromarray(np.ascontiguousarray(values)), spec)
