import pytest

from security.origin import OriginRejection, origin_policy

POLICY = origin_policy("127.0.0.1", 8765)


@pytest.mark.parametrize(
    "host", ["127.0.0.1:8765", "localhost:8765", "LOCALHOST:8765", "[::1]:8765", "localhost.:8765"]
)
def test_local_hosts_allowed_without_origin(host):
    assert POLICY.check(host, None) is None


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "evil.example:8765",
        "127.0.0.1:9999",
        "localhost",
        "127.0.0.1:8765/x",
        "a@b:8765",
        "[::1",
    ],
)
def test_foreign_hosts_rejected(host):
    assert POLICY.check(host, None) == OriginRejection("forbidden_host", 403)


@pytest.mark.parametrize(
    "origin",
    [
        "http://localhost:8765",
        "http://127.0.0.1:8765",
        "https://[::1]:8765",
        "HTTP://LocalHost:8765/",
    ],
)
def test_local_origins_allowed(origin):
    assert POLICY.check("localhost:8765", origin) is None


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "http://evil.example",
        "http://localhost:8766",
        "http://localhost",
        "file://x",
        "garbage",
        "http://localhost:8765/path",
    ],
)
def test_foreign_origins_rejected(origin):
    # DNS rebinding: Host says localhost, but the page's origin is foreign.
    assert POLICY.check("localhost:8765", origin) == OriginRejection("forbidden_origin", 403)


def test_rebinding_host_name_rejected():
    # A rebound name resolves to 127.0.0.1 but the Host header carries the attacker's name.
    assert (
        POLICY.check("attacker.example:8765", "http://attacker.example:8765").reason
        == "forbidden_host"
    )


def test_configured_names_and_origins():
    policy = origin_policy(
        "0.0.0.0",
        8765,
        extra_hosts=["bridge.internal", "gw:9000"],
        extra_origins=["https://console.example.com"],
    )
    assert policy.check("bridge.internal", None) is None  # via a proxy on 80
    assert policy.check("bridge.internal:8765", "http://bridge.internal:8765") is None
    assert policy.check("gw:9000", "https://console.example.com") is None
    assert policy.check("0.0.0.0:8765", None).reason == "forbidden_host"
    assert policy.check("gw:9000", "https://console.example.com:444").reason == "forbidden_origin"


def test_ipv6_bind_address():
    policy = origin_policy("::1", 8000)
    assert policy.check("[::1]:8000", "http://[::1]:8000") is None


def test_invalid_configuration_rejected():
    with pytest.raises(ValueError):
        origin_policy("127.0.0.1", 1, extra_hosts=["a/b"])
    with pytest.raises(ValueError):
        origin_policy("127.0.0.1", 1, extra_origins=["ftp://x"])
