import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from security.digest import DigestError, content_digest, verify_content_digest


def test_rfc9530_example_value():
    # RFC 9530 §2 example: {"hello": "world"} with sha-256.
    body = b'{"hello": "world"}'
    assert content_digest(body) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert verify_content_digest(content_digest(body), body)


@settings(deadline=None)
@given(st.binary(max_size=2048), st.binary(min_size=1, max_size=16))
def test_any_body_change_detected(body, extra):
    assert verify_content_digest(content_digest(body), body)
    assert not verify_content_digest(content_digest(body), body + extra)


def test_sha512_member_is_checked_too():
    body = b"abc"
    sha512 = base64.b64encode(hashlib.sha512(b"other").digest()).decode()
    assert not verify_content_digest(content_digest(body) + f", sha-512=:{sha512}:", body)
    good512 = base64.b64encode(hashlib.sha512(body).digest()).decode()
    assert verify_content_digest(content_digest(body) + f", sha-512=:{good512}:", body)


def test_unknown_algorithms_ignored_but_sha256_required():
    body = b"abc"
    assert verify_content_digest(content_digest(body) + ", md5=:AAAA:", body)
    with pytest.raises(DigestError):
        verify_content_digest("sha-512=:AAAA:", body)


@pytest.mark.parametrize(
    "value",
    ["", "sha-256", "sha-256=abc", "sha-256=:not base64!:", "sha-256=:AA==:, sha-256=:AA==:", ","],
)
def test_malformed_headers_raise_digest_error(value):
    with pytest.raises(DigestError):
        verify_content_digest(value, b"")
