"""Content codings of V2 bodies: what is read, what is refused, what is sent back."""

from __future__ import annotations

import gzip
import zlib

import pytest

from fusionserve.service.errors import InvalidInput, LimitExceeded, UnsupportedMediaType
from fusionserve.service.http.content_coding import compress, decompress, request_coding, response_coding

BODY = b'{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a seven"]}]}' * 50


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("", None),
        ("identity", None),
        ("gzip", "gzip"),
        (" GZip ", "gzip"),
        ("deflate", "deflate"),
    ],
)
def test_request_codings_read(header: str | None, coding: str | None) -> None:
    assert request_coding(header) == coding


@pytest.mark.parametrize("header", ["br", "zstd", "gzip, deflate", "compress"])
def test_other_request_codings_are_415(header: str) -> None:
    with pytest.raises(UnsupportedMediaType, match="not supported"):
        request_coding(header)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_round_trip(coding: str) -> None:
    assert decompress(compress(BODY, coding), coding, len(BODY)) == BODY


def test_tritonclient_bodies_are_read() -> None:
    """What tritonclient sends: gzip.compress, and zlib.compress for deflate."""
    assert decompress(gzip.compress(BODY), "gzip", 10**6) == BODY
    assert decompress(zlib.compress(BODY), "deflate", 10**6) == BODY


def test_bomb_is_refused_without_inflating_it() -> None:
    bomb = gzip.compress(b"\0" * (50 * 1024 * 1024))  # 50 MiB of zeros in ~50 KiB
    assert len(bomb) < 100 * 1024
    with pytest.raises(LimitExceeded, match="max_body_bytes=1048576"):
        decompress(bomb, "gzip", 1024 * 1024)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not compressed at all", "not valid gzip"),
        (gzip.compress(BODY)[:-20], "truncated"),
        (gzip.compress(BODY) + b"junk", "bytes after"),
    ],
)
def test_malformed_bodies_are_400(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decompress(body, "gzip", 10**6)


@pytest.mark.parametrize(
    ("header", "coding"),
    [
        (None, None),
        ("gzip", "gzip"),
        ("deflate", "deflate"),
        ("gzip, deflate", "gzip"),
        ("deflate;q=1, gzip;q=0.5", "deflate"),
        ("gzip;q=0", None),
        ("br", None),
        ("*", "gzip"),
        ("gzip;q=0, *", "deflate"),
        ("identity", None),
        ("gzip;q=nonsense, deflate", "deflate"),
    ],
)
def test_response_coding_follows_the_client(header: str | None, coding: str | None) -> None:
    assert response_coding(header) == coding
