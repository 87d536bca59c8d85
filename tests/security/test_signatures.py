import asyncio
import base64

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from security.nonces import InMemoryNonceStore
from security.signatures import (
    Reason,
    Rejection,
    RequestView,
    ResolvedKey,
    SignatureVerifier,
    Verified,
    _parse_dictionary,
    _ser_bare,
    hmac_sha256,
    serialize_signature_params,
    sign_request,
    signature_base,
)
from tests.security.conftest import AGENT, KEY_ID, NOW, SECRET, FakeClock, keys, signed_view

BODY = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'


def with_headers(view: RequestView, **changes: str | None) -> RequestView:
    headers = dict(view.headers)
    for name, value in changes.items():
        name = name.replace("_", "-")
        for existing in [k for k in headers if k.lower() == name.lower()]:
            del headers[existing]
        if value is not None:
            headers[name] = value
    return RequestView(view.method, view.path, view.query, headers, view.body)


def hand_signed(
    components: list[tuple[str, str]],
    params: list[tuple[str, int | str]] | None = None,
    secret: bytes = SECRET,
) -> dict[str, str]:
    """Signature headers over exactly the given components and parameters."""
    if params is None:
        params = [("created", NOW), ("nonce", "n1"), ("keyid", KEY_ID), ("alg", "hmac-sha256")]
    sp = serialize_signature_params([c for c, _ in components], params)
    mac = hmac_sha256(secret, signature_base(components, sp))
    return {"Signature-Input": f"lh={sp}", "Signature": f"lh=:{base64.b64encode(mac).decode()}:"}


async def test_valid_request_is_verified(verifier):
    result = await verifier.verify(signed_view(nonce="n-ok"))
    assert result == Verified(AGENT, KEY_ID, "n-ok", NOW, "active")


def test_verdict_repr_hides_nonce():
    v = Verified(AGENT, KEY_ID, "secret-nonce-123", NOW)
    assert "secret-nonce-123" not in repr(v) and "secret-nonce-123" not in str(v)
    assert KEY_ID in repr(v)


async def test_query_and_no_body_and_no_session(verifier):
    view = signed_view(method="GET", query="a=1&b=%2F", body=b"", session=None)
    assert "content-digest" not in view.headers["Signature-Input"]
    assert '"@query"' in view.headers["Signature-Input"]
    assert isinstance(await verifier.verify(view), Verified)


async def test_multidict_headers_work(verifier):
    view = signed_view()
    md = CIMultiDict((k.upper(), v) for k, v in view.headers.items())
    result = await verifier.verify(RequestView(view.method, view.path, view.query, md, view.body))
    assert isinstance(result, Verified)


# ---------------------------------------------------------------- rejection reasons


@pytest.mark.parametrize(
    "changes",
    [
        {"signature_input": None, "signature": None},
        {"signature": None},
        {"signature_input": None},
    ],
)
async def test_missing_signature(verifier, changes):
    result = await verifier.verify(with_headers(signed_view(), **changes))
    assert result == Rejection(Reason.MISSING_SIGNATURE)


async def test_other_label_only_is_missing_signature(verifier):
    view = signed_view()
    other = with_headers(
        view,
        signature_input=view.headers["Signature-Input"].replace("lh=", "other=", 1),
        signature=view.headers["Signature"].replace("lh=", "other=", 1),
    )
    assert (await verifier.verify(other)).reason is Reason.MISSING_SIGNATURE


async def test_extra_labels_are_ignored(verifier):
    view = signed_view()
    both = with_headers(
        view,
        signature_input='proxy=("@method");created=1, ' + view.headers["Signature-Input"],
        signature="proxy=:AAAA:, " + view.headers["Signature"],
    )
    assert isinstance(await verifier.verify(both), Verified)


MALFORMED_INPUTS = [
    "lh",  # bare key, not an inner list
    "lh=(",  # unterminated
    'lh=("@method" "@path");created=1;created=2;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method" "@method");created=1;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method" "@authority");created=1;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method";req "@path");created=1;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=(@method);created=1;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method");created="1";nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method");created=1;nonce=n;keyid="k";alg="hmac-sha256"',
    'lh=("@method");created=1;keyid="k";alg="hmac-sha256"',  # no nonce
    'lh=("@method");created=1;nonce="n";keyid="k";alg="hmac-sha256";expires=5',
    'lh=("@method");created=1;nonce="";keyid="k";alg="hmac-sha256"',
    'lh=("@method");created=1;nonce="' + "x" * 200 + '";keyid="k";alg="hmac-sha256"',
    'lh=("@method");created=1.5;nonce="n";keyid="k";alg="hmac-sha256"',
    'lh=("@method"),',  # trailing comma
    'lh=("@method"), lh=("@path")',  # duplicate label
    'lh=("\\q");created=1',  # bad escape
    'lh=("\u00e9")',  # non-ASCII
]


@pytest.mark.parametrize("sig_input", MALFORMED_INPUTS)
async def test_malformed_signature_input(verifier, sig_input):
    result = await verifier.verify(with_headers(signed_view(), signature_input=sig_input))
    assert result.reason is Reason.MALFORMED_SIGNATURE


@pytest.mark.parametrize("sig", ['lh="abc"', "lh=:!!!:", "lh=1", "lh", "lh=:AAAA", "lh=(:AA==:)"])
async def test_malformed_signature_value(verifier, sig):
    result = await verifier.verify(with_headers(signed_view(), signature=sig))
    assert result.reason is Reason.MALFORMED_SIGNATURE


@pytest.mark.parametrize("alg", ["hmac-sha512", "ed25519", "rsa-pss-sha512", "HMAC-SHA256", ""])
async def test_other_algorithm_rejected_even_with_valid_mac(verifier, alg):
    # A MAC that is valid over a base naming another algorithm must not be accepted
    # (no downgrade: the algorithm is fixed server-side).
    params = [("created", NOW), ("nonce", "n1"), ("keyid", KEY_ID), ("alg", alg)]
    view = signed_view()
    headers = hand_signed([("@method", "POST"), ("@path", "/mcp")], params)
    result = await verifier.verify(
        with_headers(view, **{k.replace("-", "_"): v for k, v in headers.items()})
    )
    assert result.reason is Reason.UNSUPPORTED_ALGORITHM


async def test_missing_alg_is_unsupported_algorithm(verifier):
    params = [("created", NOW), ("nonce", "n1"), ("keyid", KEY_ID)]
    headers = hand_signed([("@method", "POST"), ("@path", "/mcp")], params)
    view = RequestView("POST", "/mcp", "", headers, b"")
    assert (await verifier.verify(view)).reason is Reason.UNSUPPORTED_ALGORITHM


async def test_wrong_secret_is_invalid_signature(verifier):
    result = await verifier.verify(signed_view(secret=b"x" * 32))
    assert result == Rejection(Reason.INVALID_SIGNATURE, 401, AGENT, KEY_ID)


async def test_unknown_key_looks_like_invalid_signature_to_client(verifier):
    result = await verifier.verify(signed_view(key_id="k_nobody"))
    assert result.reason is Reason.UNKNOWN_KEY
    assert result.public_reason == "invalid_signature"
    assert result.public_body() == {"error": "unauthorized", "reason": "invalid_signature"}


@pytest.mark.parametrize(
    ("state", "reason"), [("revoked", Reason.REVOKED_KEY), ("expired", Reason.EXPIRED_KEY)]
)
async def test_dead_keys_refused_with_hidden_reason(clock, state, reason):
    v = SignatureVerifier(
        lambda k: ResolvedKey(AGENT, SECRET, state), InMemoryNonceStore(), clock=clock
    )
    result = await v.verify(signed_view())
    assert result.reason is reason
    assert result.agent == AGENT
    assert result.public_reason == "invalid_signature"


async def test_grace_key_accepted_and_reported(clock):
    v = SignatureVerifier(
        lambda k: ResolvedKey(AGENT, SECRET, "grace"), InMemoryNonceStore(), clock=clock
    )
    result = await v.verify(signed_view())
    assert isinstance(result, Verified)
    assert result.key_state == "grace"


async def test_stale_and_future(verifier):
    assert (await verifier.verify(signed_view(created=NOW - 301))).reason is Reason.STALE_SIGNATURE
    assert (await verifier.verify(signed_view(created=NOW + 301))).reason is Reason.FUTURE_SIGNATURE


@settings(max_examples=200, deadline=None)
@given(offset=st.integers(-2000, 2000), skew=st.integers(0, 900), frac=st.floats(0, 0.999))
def test_skew_window_boundaries(offset, skew, frac):
    clock = FakeClock(NOW + frac)
    v = SignatureVerifier(keys, InMemoryNonceStore(skew), skew=skew, clock=clock)
    result = v.check(signed_view(created=NOW + offset))
    now = NOW + frac
    if NOW + offset < now - skew:
        assert result.reason is Reason.STALE_SIGNATURE
    elif NOW + offset > now + skew:
        assert result.reason is Reason.FUTURE_SIGNATURE
    else:
        assert isinstance(result, Verified)


def test_nonce_window_shorter_than_skew_refused():
    with pytest.raises(ValueError, match="shorter than skew"):
        SignatureVerifier(keys, InMemoryNonceStore(window=60), skew=300)


def test_exact_boundaries_accepted(clock):
    v = SignatureVerifier(keys, InMemoryNonceStore(), skew=300, clock=clock)
    assert isinstance(v.check(signed_view(created=NOW - 300)), Verified)
    assert isinstance(v.check(signed_view(created=NOW + 300)), Verified)
    assert v.check(signed_view(created=NOW - 301)).reason is Reason.STALE_SIGNATURE
    assert v.check(signed_view(created=NOW + 301)).reason is Reason.FUTURE_SIGNATURE


async def test_body_without_digest_coverage_is_missing_component(verifier):
    headers = hand_signed([("@method", "POST"), ("@path", "/mcp")])
    result = await verifier.verify(RequestView("POST", "/mcp", "", headers, BODY))
    assert result.reason is Reason.MISSING_COMPONENT


async def test_query_not_covered_is_missing_component(verifier):
    view = signed_view(query="")
    tampered = RequestView(view.method, view.path, "admin=1", view.headers, view.body)
    assert (await verifier.verify(tampered)).reason is Reason.MISSING_COMPONENT


async def test_session_header_added_after_signing_is_missing_component(verifier):
    view = signed_view(session=None)
    result = await verifier.verify(with_headers(view, mcp_session_id="someone-elses"))
    assert result.reason is Reason.MISSING_COMPONENT


async def test_uncovered_digest_header_is_missing_component(verifier):
    headers = hand_signed([("@method", "GET"), ("@path", "/mcp")])
    headers["Content-Digest"] = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
    result = await verifier.verify(RequestView("GET", "/mcp", "", headers, b""))
    assert result.reason is Reason.MISSING_COMPONENT


async def test_covered_header_absent_is_missing_component(verifier):
    headers = hand_signed([("@method", "GET"), ("@path", "/mcp"), ("mcp-session-id", "s")])
    result = await verifier.verify(RequestView("GET", "/mcp", "", headers, b""))
    assert result.reason is Reason.MISSING_COMPONENT


async def test_body_swapped_is_digest_mismatch(verifier):
    view = signed_view()
    swapped = RequestView(view.method, view.path, view.query, view.headers, b'{"evil":1}')
    assert (await verifier.verify(swapped)).reason is Reason.DIGEST_MISMATCH


async def test_malformed_signed_digest_is_digest_mismatch(verifier):
    digest = "sha-256=:not-base64!:"
    headers = {"Content-Digest": digest}
    headers |= hand_signed([("@method", "POST"), ("@path", "/mcp"), ("content-digest", digest)])
    result = await verifier.verify(RequestView("POST", "/mcp", "", headers, BODY))
    assert result.reason is Reason.DIGEST_MISMATCH


async def test_replayed_nonce(verifier):
    view = signed_view(nonce="once")
    assert isinstance(await verifier.verify(view), Verified)
    result = await verifier.verify(view)
    assert result == Rejection(Reason.REPLAYED_NONCE, 401, AGENT, KEY_ID)


async def test_failed_requests_do_not_consume_nonces(verifier):
    # A forged request reusing a nonce must not burn it for the real client.
    forged = signed_view(nonce="n-shared", secret=b"y" * 32)
    assert (await verifier.verify(forged)).reason is Reason.INVALID_SIGNATURE
    bad_body = signed_view(nonce="n-shared")
    bad_body = RequestView(bad_body.method, bad_body.path, "", bad_body.headers, b"changed")
    assert (await verifier.verify(bad_body)).reason is Reason.DIGEST_MISMATCH
    assert isinstance(await verifier.verify(signed_view(nonce="n-shared")), Verified)


@pytest.mark.parametrize(
    "header", ["signature_input", "signature", "content_digest", "mcp_session_id"]
)
async def test_oversized_headers(verifier, header):
    result = await verifier.verify(with_headers(signed_view(), **{header: "a" * 1025}))
    assert result == Rejection(Reason.HEADER_TOO_LARGE, 431)


async def test_control_characters_in_covered_values_rejected(verifier):
    view = signed_view(session="abc")
    result = await verifier.verify(with_headers(view, mcp_session_id="abc\nx"))
    assert result.reason is Reason.MALFORMED_SIGNATURE


# ---------------------------------------------------------------- properties


MUTATIONS = st.sampled_from(["method", "path", "query", "session", "body"])


@settings(max_examples=300, deadline=None)
@given(
    field=MUTATIONS,
    query=st.from_regex(r"[a-z0-9=&%]{1,20}", fullmatch=True),
    session=st.from_regex(r"[!-~]{1,40}", fullmatch=True),
    body=st.binary(min_size=1, max_size=200),
    new=st.from_regex(r"[!-~]{1,20}", fullmatch=True),
    new_body=st.binary(max_size=200),
)
def test_any_change_to_a_covered_component_fails(field, query, session, body, new, new_body):
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    view = signed_view(method="POST", path="/mcp", query=query, body=body, session=session)
    assert isinstance(v.check(view), Verified)
    method, path, q, headers, b = view.method, view.path, view.query, dict(view.headers), view.body
    if field == "method":
        assume(new != method)
        method = new.upper()
        assume(method != "POST")
    elif field == "path":
        path = "/" + new
        assume(path != "/mcp")
    elif field == "query":
        assume(new != q)
        q = new
    elif field == "session":
        assume(new != session)
        headers["Mcp-Session-Id"] = new
    else:
        assume(new_body != b)
        b = new_body
    result = v.check(RequestView(method, path, q, headers, b))
    assert isinstance(result, Rejection)
    assert result.reason in {Reason.INVALID_SIGNATURE, Reason.DIGEST_MISMATCH}


@settings(max_examples=500, deadline=None)
@given(sig_input=st.text(max_size=300), sig=st.text(max_size=200))
def test_garbage_headers_never_raise(sig_input, sig):
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    result = v.check(
        RequestView("POST", "/mcp", "", {"Signature-Input": sig_input, "Signature": sig}, b"x")
    )
    assert isinstance(result, Rejection)


SF_CHARS = st.sampled_from(list('lh=()"@;,: ?*-_.0123456789abcdefgkmnpqrstyz/+AZ\\\t'))


@settings(max_examples=1000, deadline=None)
@given(st.lists(SF_CHARS, max_size=120).map("".join))
def test_structured_garbage_never_raises(text):
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    view = RequestView("POST", "/mcp", "q=1", {"Signature-Input": text, "Signature": text}, b"x")
    assert isinstance(v.check(view), Rejection)


def test_garbage_never_fills_the_nonce_store():
    store = InMemoryNonceStore()
    v = SignatureVerifier(keys, store, clock=FakeClock())

    async def run():
        for i in range(50):
            await v.verify(signed_view(nonce=f"n{i}", secret=b"z" * 32))
            await v.verify(signed_view(nonce=f"m{i}", created=NOW - 10_000))

    asyncio.run(run())
    assert len(store) == 0


# ---------------------------------------------------------------- RFC 9421 known answer


RFC_KEY = base64.b64decode(
    "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
)


def test_rfc9421_b25_hmac_sha256_known_answer():
    # Appendix B.2 request (POST /foo?param=Value&Pet=dog, Host: example.com) signed in
    # B.2.5 over "date" "@authority" "content-type" with the B.1.5 shared secret.
    request_headers = {
        "Host": "example.com",
        "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
        "Content-Type": "application/json",
    }
    sig_input = (
        'sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret"'
    )
    parsed = _parse_dictionary(sig_input)
    items, params = parsed["sig-b25"]
    ids = [v for v, _ in items]
    sp = serialize_signature_params(ids, params)
    assert "sig-b25=" + sp == sig_input  # parse + re-serialize round-trips
    values = {
        "date": request_headers["Date"],
        "@authority": request_headers["Host"],
        "content-type": request_headers["Content-Type"],
    }
    base = signature_base([(i, values[i]) for i in ids], sp)
    assert base == (
        b'"date": Tue, 20 Apr 2021 02:07:55 GMT\n'
        b'"@authority": example.com\n'
        b'"content-type": application/json\n'
        b'"@signature-params": ("date" "@authority" "content-type")'
        b';created=1618884473;keyid="test-shared-secret"'
    )
    mac = hmac_sha256(RFC_KEY, base)
    assert "sig-b25=:" + base64.b64encode(mac).decode() + ":" == (
        "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:"
    )


def test_signature_params_serialization_escapes_strings():
    sp = serialize_signature_params(["@method"], [("nonce", 'a"b\\c'), ("created", 5)])
    assert sp == '("@method");nonce="a\\"b\\\\c";created=5'
    parsed = _parse_dictionary("x=" + sp)
    assert parsed["x"][1] == [("nonce", 'a"b\\c'), ("created", 5)]
    assert _ser_bare(True) == "?1"


def test_sign_request_accepts_full_url():
    a = sign_request("GET", "http://h:1/mcp?x=1", "", {}, b"", KEY_ID, SECRET, nonce="n", created=1)
    b = sign_request("GET", "/mcp", "x=1", {}, b"", KEY_ID, SECRET, nonce="n", created=1)
    assert a == b


PCHAR = st.sampled_from(list("abcXYZ0129-._~!$&'()*+,;=:@%/"))


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "DELETE", "PUT"]),
    path=st.lists(PCHAR, max_size=40).map(lambda cs: "/" + "".join(cs)),
    query=st.lists(st.sampled_from(list("ab=&%20?/:@+")), max_size=30).map("".join),
    body=st.binary(max_size=300),
    session=st.none() | st.from_regex(r"[!-~]{1,60}", fullmatch=True),
)
def test_whatever_we_sign_we_verify(method, path, query, body, session):
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    view = signed_view(method=method, path=path, query=query, body=body, session=session)
    result = v.check(view)
    assert isinstance(result, Verified), result


def test_sign_request_defaults_are_fresh():
    a = sign_request("POST", "/mcp", "", {}, b"x", KEY_ID, SECRET)
    b = sign_request("POST", "/mcp", "", {}, b"x", KEY_ID, SECRET)
    assert a["Signature-Input"] != b["Signature-Input"]  # new nonce each time
    assert a["Content-Digest"] == b["Content-Digest"]


def test_public_names_only():
    import security

    assert all(not name.startswith("_") for name in security.__all__)
    assert all(hasattr(security, name) for name in security.__all__)
    assert {"SignatureVerifier", "sign_request", "LighthouseAuth", "Reason"} <= set(
        security.__all__
    )
    assert {r.value for r in Reason} == {
        "missing_signature",
        "malformed_signature",
        "unsupported_algorithm",
        "invalid_signature",
        "unknown_key",
        "revoked_key",
        "expired_key",
        "stale_signature",
        "future_signature",
        "missing_component",
        "digest_mismatch",
        "unsupported_digest",
        "predates_nonce_store",
        "replayed_nonce",
        "header_too_large",
    }


def _general_parse(verifier: SignatureVerifier, sig_input: str, sig: str) -> object:
    """What `_parse` decides without its canonical-form fast path."""
    canonical = verifier._parse_canonical
    verifier._parse_canonical = lambda *_: None  # type: ignore[method-assign]
    try:
        return verifier._parse(sig_input, sig)
    finally:
        verifier._parse_canonical = canonical  # type: ignore[method-assign]


def _same_verdict(verifier: SignatureVerifier, sig_input: str, sig: str) -> None:
    fast = verifier._parse_canonical(sig_input, sig)
    general = _general_parse(verifier, sig_input, sig)
    if fast is None:
        return  # the general parser decides alone
    assert not isinstance(general, Rejection), (sig_input, sig, general)
    fields = ("components", "params", "created", "nonce", "key_id", "signature")
    assert [getattr(fast, f) for f in fields] == [getattr(general, f) for f in fields]
    # The text the fast path signs over is exactly the general path's serialization.
    assert fast.params_text == serialize_signature_params(general.components, general.params)


_CANONICAL_VARIANTS = st.lists(
    st.sampled_from(
        [
            '"@method"',
            '"@path"',
            '"@query"',
            '"content-digest"',
            '"mcp-session-id"',
            '"@authority"',
            '"@method" ',
            ' "@path"',
            '"x\\"y"',
        ]
    ),
    max_size=6,
)


@settings(max_examples=1000, deadline=None)
@given(
    components=_CANONICAL_VARIANTS,
    params=st.permutations(
        ["created=1700000000", 'nonce="n1"', f'keyid="{KEY_ID}"', 'alg="hmac-sha256"']
    ),
    extra=st.sampled_from(["", ";created=5", ";x=1", ';nonce="a\\"b"', ";y=?1", ";z=tok"]),
    created=st.sampled_from(["1700000000", "0", "-5", "0012", '"1700000000"', "1.5"]),
    nonce=st.sampled_from(['"n1"', '""', '"a;b=1"', "tok", '"' + "n" * 200 + '"']),
    sig=st.sampled_from(["lh=:AAAA:", "lh=:AAA:", "lh=:!!:", "lh=:AAAA:, x=:AAAA:", " lh=:AAAA:"]),
)
def test_canonical_fast_path_agrees_with_the_general_parser(
    components, params, extra, created, nonce, sig
):
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    joined = [p.replace("1700000000", created) if p.startswith("created") else p for p in params]
    joined = [p.replace('"n1"', nonce) if p.startswith("nonce") else p for p in joined]
    sig_input = "lh=(" + " ".join(components) + ")" + "".join(";" + p for p in joined) + extra
    _same_verdict(v, sig_input, sig)


def test_signed_requests_take_the_canonical_fast_path():
    view = signed_view(nonce="n-fast")
    v = SignatureVerifier(keys, InMemoryNonceStore(), clock=FakeClock())
    sig_input, sig = view.headers["Signature-Input"], view.headers["Signature"]
    assert v._parse_canonical(sig_input, sig) is not None
    _same_verdict(v, sig_input, sig)
