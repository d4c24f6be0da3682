"""Where document downloads may go (issue 12): address classes, the allow list, redirects."""

from __future__ import annotations

import ipaddress

import pytest

from control_plane.queue.fetch_policy import (
    AllowedHosts,
    address_kind,
    next_hop,
    refusal,
    same_origin,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
        ("100.64.0.1", "not public"),  # carrier-grade NAT
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "private"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
    ],
)
def test_address_kind(address: str, kind: str | None) -> None:
    assert address_kind(ipaddress.ip_address(address)) == kind


@pytest.mark.parametrize(
    ("allowed", "host", "address", "refused"),
    [
        ("", "files.example", "93.184.216.34", False),  # public: always fine
        ("", "127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.0.0.1", "127.0.0.1", False),
        ("127.0.0.1", "localhost", "127.0.0.1", False),  # the address is listed
        ("localhost", "localhost", "127.0.0.1", False),  # the name is listed
        ("localhost", "127.0.0.1", "127.0.0.1", True),
        ("10.0.0.0/8", "nas.internal", "10.9.8.7", False),
        ("10.0.0.0/8", "nas.internal", "192.168.0.1", True),
        ("NAS.Internal.", "nas.internal", "10.9.8.7", False),  # case, trailing dot
        ("::1", "localhost", "::1", False),
        ("[::1]", "localhost", "::1", False),
        ("::1", "localhost", "127.0.0.1", True),
        ("files.example", "metadata", "169.254.169.254", True),
    ],
)
def test_refusal(allowed: str, host: str, address: str, refused: bool) -> None:
    why = refusal(host, ipaddress.ip_address(address), AllowedHosts.parse(allowed))
    assert (why is not None) is refused
    if refused:
        assert why.startswith(f"{address} is ")


@pytest.mark.parametrize("bad", ["a b", "http://x", "x/y/z", "-", "a..b", "10.0.0.0/33"])
def test_allowed_hosts_refuses_bad_entries(bad: str) -> None:
    with pytest.raises(ValueError, match="not a host name, IP address or CIDR"):
        AllowedHosts.parse(f"ok.example, {bad}")


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("https://x.supabase.co/a", "https://x.supabase.co:443/b", True),
        ("https://x.supabase.co/a", "http://x.supabase.co/a", False),
        ("https://x.supabase.co/a", "https://cdn.example/a", False),
        ("http://127.0.0.1:8000/a", "http://127.0.0.1:8001/a", False),
        ("http://Host/a", "http://host/b", True),
    ],
)
def test_same_origin(a: str, b: str, same: bool) -> None:
    assert same_origin(a, b) is same


@pytest.mark.parametrize(
    ("current", "location", "expected"),
    [
        ("http://a/x/y.pdf", "/z.pdf", "http://a/z.pdf"),
        ("http://a/x/y.pdf", "z.pdf", "http://a/x/z.pdf"),
        ("http://a/x", "https://b/c?sig=1", "https://b/c?sig=1"),
        ("http://a/x", "//b/c", "http://b/c"),
    ],
)
def test_next_hop(current: str, location: str, expected: str) -> None:
    assert next_hop(current, location) == expected


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (None, "without a Location"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("gopher://x/", "unsupported scheme 'gopher'"),
    ],
)
def test_next_hop_refuses(location: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        next_hop("http://a/x", location)
