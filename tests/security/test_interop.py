"""Interop with the independent ``http-message-signatures`` implementation, both ways."""

import datetime
import time

import httpx2
import pytest
from http_message_signatures import HTTPMessageSigner, HTTPMessageVerifier, MappingKeyResolver
from http_message_signatures.algorithms import HMAC_SHA256
from http_message_signatures.exceptions import InvalidSignature
from http_message_signatures.httpx2 import adapt_message
from hypothesis import given, settings
from hypothesis import strategies as st

from security.nonces import InMemoryNonceStore
from security.signatures import Reason, RequestView, SignatureVerifier, Verified, sign_request
from tests.security.conftest import AGENT, KEY_ID, SECRET, keys

RESOLVER = MappingKeyResolver(public_keys={KEY_ID: SECRET}, private_keys={KEY_ID: SECRET})


def view_of(request: httpx2.Request) -> RequestView:
    path, _, query = request.url.raw_path.decode().partition("?")
    return RequestView(request.method, path, query, request.headers, request.content)


def their_signed(url: str, body: bytes, session: str | None, nonce: str) -> httpx2.Request:
    headers = {"Mcp-Session-Id": session} if session else {}
    request = httpx2.Request("POST" if body else "GET", url, content=body, headers=headers)
    components = ["@method", "@path"]
    if httpx2.URL(url).query:
        components.append("@query")
    if session:
        components.append("mcp-session-id")
    HTTPMessageSigner(signature_algorithm=HMAC_SHA256, key_resolver=RESOLVER).sign(
        adapt_message(request),
        key_id=KEY_ID,
        nonce=nonce,
        label="lh",
        created=datetime.datetime.now(datetime.UTC),
        covered_component_ids=components,
        body=body or None,  # the package adds and covers content-digest when given a body
    )
    return request


def our_verifier() -> SignatureVerifier:
    return SignatureVerifier(keys, InMemoryNonceStore())


@pytest.mark.parametrize(
    ("url", "body", "session"),
    [
        ("http://127.0.0.1:8765/mcp", b'{"jsonrpc":"2.0","id":1}', "s-123"),
        ("http://127.0.0.1:8765/mcp", b'{"a":1}', None),
        ("http://127.0.0.1:8765/mcp?x=1&y=%2Fz", b"", "s-9"),
        ("http://localhost/a%20b/mcp", b"", None),
    ],
)
async def test_their_signatures_verify_with_ours(url, body, session):
    request = their_signed(url, body, session, nonce="their-nonce")
    assert 'alg="hmac-sha256"' in request.headers["Signature-Input"]
    result = await our_verifier().verify(view_of(request))
    assert isinstance(result, Verified), result
    assert (result.agent, result.key_id, result.nonce) == (AGENT, KEY_ID, "their-nonce")


async def test_their_signature_with_tampered_body_rejected_by_ours():
    request = their_signed("http://h/mcp", b'{"a":1}', "s", nonce="n")
    view = view_of(request)
    tampered = RequestView(view.method, view.path, view.query, view.headers, b'{"a":2}')
    assert (await our_verifier().verify(tampered)).reason is Reason.DIGEST_MISMATCH


@pytest.mark.parametrize(
    ("url", "body", "session"),
    [
        ("http://127.0.0.1:8765/mcp", b'{"jsonrpc":"2.0","id":1}', "s-123"),
        ("http://127.0.0.1:8765/mcp?cursor=abc%3D", b"", None),
        ("http://127.0.0.1:8765/mcp", b"", "s-1"),
    ],
)
def test_our_signatures_verify_with_theirs(url, body, session):
    headers = {"Mcp-Session-Id": session} if session else {}
    request = httpx2.Request("POST" if body else "GET", url, content=body, headers=headers)
    path, _, query = request.url.raw_path.decode().partition("?")
    request.headers.update(
        sign_request(
            request.method, path, query, request.headers, body, KEY_ID, SECRET, nonce="ours"
        )
    )
    verifier = HTTPMessageVerifier(signature_algorithm=HMAC_SHA256, key_resolver=RESOLVER)
    results = verifier.verify(adapt_message(request), body=body)
    assert len(results) == 1
    (result,) = results
    assert result.label == "lh"
    assert result.parameters["keyid"] == KEY_ID
    assert result.nonce == "ours"
    assert abs(result.parameters["created"] - time.time()) < 60
    covered = list(result.covered_components)
    assert covered[:2] == ['"@method"', '"@path"']
    assert ('"content-digest"' in covered) == bool(body)
    assert ('"mcp-session-id"' in covered) == bool(session)
    assert ('"@query"' in covered) == ("?" in url)


def test_theirs_rejects_ours_when_tampered():
    request = httpx2.Request("POST", "http://h/mcp", content=b"{}", headers={"Mcp-Session-Id": "a"})
    request.headers.update(sign_request("POST", "/mcp", "", request.headers, b"{}", KEY_ID, SECRET))
    request.headers["Mcp-Session-Id"] = "b"
    verifier = HTTPMessageVerifier(signature_algorithm=HMAC_SHA256, key_resolver=RESOLVER)
    with pytest.raises(InvalidSignature):
        verifier.verify(adapt_message(request), body=b"{}")


SEGMENT = st.lists(st.sampled_from(list("abcXYZ019-._~!$&'()*+,;=:@")), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(SEGMENT.map("".join), min_size=1, max_size=4),
    query=st.none()
    | st.lists(st.sampled_from(list("abz09=&")), min_size=1, max_size=20).map("".join),
    body=st.binary(max_size=200),
    session=st.none() | st.from_regex(r"[0-9a-zA-Z-]{1,40}", fullmatch=True),
)
def test_interop_property_both_ways(segments, query, body, session):
    url = "http://127.0.0.1:8765/" + "/".join(segments) + (f"?{query}" if query else "")
    # theirs -> ours
    theirs = their_signed(url, body, session, nonce="p1")
    assert isinstance(our_verifier().check(view_of(theirs)), Verified)
    # ours -> theirs
    headers = {"Mcp-Session-Id": session} if session else {}
    request = httpx2.Request("POST" if body else "GET", url, content=body, headers=headers)
    view = view_of(request)
    request.headers.update(
        sign_request(request.method, view.path, view.query, request.headers, body, KEY_ID, SECRET)
    )
    verifier = HTTPMessageVerifier(signature_algorithm=HMAC_SHA256, key_resolver=RESOLVER)
    assert len(verifier.verify(adapt_message(request), body=body)) == 1
