"""Recognise a payload's file type from its first bytes.

Decoders use this to refuse the wrong kind of file *before* handing it to a
codec, and to say in the error what the client actually sent ("a WAV file is
not an image") instead of a codec's cryptic complaint.
"""

from __future__ import annotations

#: Human names for the kinds ``sniff`` returns, for error messages.
DISPLAY_NAMES: dict[str, str] = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WebP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "ico": "ICO",
    "jpeg2000": "JPEG 2000",
    "heif": "HEIF",
    "avif": "AVIF",
    "psd": "PSD",
    "wav": "WAV",
    "flac": "FLAC",
    "ogg": "OGG",
    "mp3": "MP3",
    "aiff": "AIFF",
    "mp4": "MP4",
    "matroska": "Matroska/WebM",
    "avi": "AVI",
    "pdf": "PDF",
    "zip": "ZIP",
    "gzip": "gzip",
    "7z": "7z",
    "elf": "ELF executable",
    "text": "text",
}

IMAGE_KINDS = frozenset(
    {"jpeg", "png", "webp", "gif", "bmp", "tiff", "ico", "jpeg2000", "heif", "avif", "psd"}
)
AUDIO_KINDS = frozenset({"wav", "flac", "ogg", "mp3", "aiff"})

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "jpeg"),
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jpeg2000"),
    (b"\xff\x4f\xff\x51", "jpeg2000"),
    (b"8BPS", "psd"),
    (b"fLaC", "flac"),
    (b"OggS", "ogg"),
    (b"ID3", "mp3"),
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"PK\x05\x06", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x7fELF", "elf"),
    (b"\x1a\x45\xdf\xa3", "matroska"),
)

_RIFF_FORMS = {b"WAVE": "wav", b"WEBP": "webp", b"AVI ": "avi"}
_FTYP_BRANDS = {
    b"heic": "heif",
    b"heix": "heif",
    b"mif1": "heif",
    b"msf1": "heif",
    b"avif": "avif",
    b"avis": "avif",
}


def sniff(data: bytes) -> str | None:
    """Return the kind of file ``data`` starts like (``"png"``, ``"wav"``...), or None.

    Only the first few bytes are read, so this is cheap enough to run on every
    request. ``None`` means "not recognised", never "safe".
    """
    head = bytes(data[:64])
    for prefix, kind in _PREFIXES:
        if head.startswith(prefix):
            return kind
    if head[:4] in (b"RIFF", b"RIFX", b"RF64") and len(head) >= 12:
        return _RIFF_FORMS.get(head[8:12])
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return "aiff"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "mp4")
    if _looks_like_bmp(head):
        return "bmp"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0 and (head[1] & 0x06) != 0:
        return "mp3"  # MPEG audio frame sync with a valid layer
    if _looks_like_text(head):
        return "text"
    return None


def describe(kind: str | None) -> str:
    """Name a sniffed kind for a message: ``"a WAV file"``, ``"unrecognised data"``."""
    if kind is None:
        return "unrecognised data"
    if kind == "text":
        return "plain text"
    name = DISPLAY_NAMES.get(kind, kind)
    article = "an" if name[0] in "AEIOU" or name in ("MP3", "MP4") else "a"
    return f"{article} {name} file"


def _looks_like_bmp(head: bytes) -> bool:
    # "BM" alone is too weak; also require a known DIB header size.
    return (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    )


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        decoded = head.decode("utf-8")
    except UnicodeDecodeError:
        # The 64-byte window may cut a multi-byte character; retry without its tail.
        try:
            decoded = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in decoded)
