"""HTTP content codings of V2 inference bodies: gzip and deflate, both ways.

tritonclient's HTTP client compresses a request when asked
(``request_compression_algorithm``: ``Content-Encoding: gzip`` or
``deflate``, the latter a zlib stream as HTTP means it) and asks for a
compressed answer (``response_compression_algorithm``: ``Accept-Encoding``).
Triton serves both, so fusionserve does too.

A compressed body is inflated to at most ``max_body_bytes``, the same bound
as an uncompressed one: a small body that would inflate past it (a zip
bomb) is refused with 413 without ever being held whole in memory.
"""

from __future__ import annotations

import gzip
import zlib

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType

#: zlib window bits of each coding we read (gzip header, zlib header).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
_IDENTITY = {"", "identity"}


def request_coding(header: str | None) -> str | None:
    """The one coding a ``Content-Encoding`` header names (None: none); others are 415."""
    codings = [c.strip().lower() for c in (header or "").split(",")]
    codings = [c for c in codings if c not in _IDENTITY]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _WBITS:
        raise UnsupportedMediaType(
            f"Content-Encoding {header!r} is not supported; send gzip, deflate or identity"
        )
    return codings[0]


def decompress(body: bytes, coding: str, limit: int) -> bytes:
    """``body`` decompressed, refused once it would exceed ``limit`` bytes."""
    inflater = zlib.decompressobj(_WBITS[coding])
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidInput(f"request body is not valid {coding} data: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise LimitExceeded(f"request body inflates beyond max_body_bytes={limit}")
    if not inflater.eof:
        raise InvalidInput(f"request body is truncated {coding} data")
    if inflater.unused_data:
        raise InvalidInput(f"request body has bytes after its {coding} data")
    return data


def response_coding(accept_encoding: str | None) -> str | None:
    """gzip or deflate when the client's ``Accept-Encoding`` takes one (q > 0), else None.

    The client's preference (highest q) wins, gzip on a tie; ``*`` stands for
    a coding the header does not name.
    """
    named: dict[str, float] = {}
    for item in (accept_encoding or "").split(","):
        name, _, params = item.strip().partition(";")
        key, _, value = params.strip().partition("=")
        try:
            quality = float(value) if key.strip().lower() == "q" else 1.0
        except ValueError:
            continue
        named[name.strip().lower()] = quality
    offers = [(named.get(c, named.get("*", 0.0)), c == "gzip", c) for c in ("gzip", "deflate")]
    quality, _, coding = max(offers)
    return coding if quality > 0 else None


def compress(payload: bytes, coding: str) -> bytes:
    """``payload`` compressed with ``coding`` (as ``response_coding`` chose it)."""
    return gzip.compress(payload, mtime=0) if coding == "gzip" else zlib.compress(payload)
