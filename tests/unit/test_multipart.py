"""The strict multipart parser: what real clients send parses; anything malformed is refused."""

from __future__ import annotations

import httpx
import pytest

from fusionserve.service.errors import InvalidInput, LimitExceeded
from fusionserve.service.http.multipart import header_params, parse_multipart


def encoded_by_httpx(files: dict, data: dict | None = None) -> tuple[bytes, str]:
    request = httpx.Request("POST", "http://x/", files=files, data=data or {})
    return request.read(), request.headers["content-type"]


def test_parses_what_httpx_sends() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 10 + b"\r\n--not-a-boundary\r\n"
    body, ctype = encoded_by_httpx({"image": ("a b;c.png", png, "image/png"), "text": (None, "sept\u00e9")})
    parts = {p.name: p for p in parse_multipart(body, ctype, max_parts=5)}
    assert parts["image"].data == png and parts["image"].filename == "a b;c.png"
    assert parts["image"].content_type == "image/png"
    assert parts["text"].filename is None and parts["text"].data.decode() == "sept\u00e9"


def test_preamble_quoted_boundary_and_empty_part() -> None:
    body = (
        b'preamble to ignore\r\n--abc\r\nContent-Disposition: form-data; name="text"\r\n\r\n'
        b'\r\n--abc\r\nContent-Disposition: form-data; name="top_k"\r\n\r\n3\r\n--abc--\r\nepilogue'
    )
    parts = parse_multipart(body, 'multipart/form-data; boundary="abc"', max_parts=5)
    assert [(p.name, p.data) for p in parts] == [("text", b""), ("top_k", b"3")]


@pytest.mark.parametrize(
    ("body", "ctype", "needle"),
    [
        (
            b'--abc\r\nContent-Disposition: form-data; name="a"\r\n\r\nxx',
            "multipart/form-data; boundary=abc",
            "closing",
        ),
        (
            b'--abc\r\nContent-Disposition: form-data; name="a"',
            "multipart/form-data; boundary=abc",
            "headers",
        ),
        (b"no boundary here", "multipart/form-data; boundary=abc", "never occurs"),
        (b"--abc\r\n\r\nxx\r\n--abc--", "multipart/form-data; boundary=abc", "form-data"),
        (
            b"--abc\r\nContent-Disposition: form-data\r\n\r\nxx\r\n--abc--",
            "multipart/form-data; boundary=abc",
            "name",
        ),
        (b"--abcxx", "multipart/form-data; boundary=abc", "CRLF"),
        (b"--abc--", "multipart/form-data", "boundary"),
        (b"--abc--", "multipart/form-data; boundary=" + "x" * 80, "boundary"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, ctype: str, needle: str) -> None:
    with pytest.raises(InvalidInput, match=needle):
        parse_multipart(body, ctype, max_parts=5)


def test_too_many_parts() -> None:
    body, ctype = encoded_by_httpx({f"f{i}": (None, "x") for i in range(6)})
    with pytest.raises(LimitExceeded, match="more than 5 parts"):
        parse_multipart(body, ctype, max_parts=5)


def test_header_params_unquote() -> None:
    assert header_params('form-data; name="a\\"b"; filename=plain.txt') == {
        "name": 'a"b',
        "filename": "plain.txt",
    }
