"""Where document downloads may go (issue 12): pure decisions, table-tested.

`storage_path` comes from a row other components write, so its URL is untrusted: a
request to loopback, private, link-local, multicast or otherwise non-public addresses
is refused unless `OCR_DOCUMENT_ALLOWED_HOSTS` allows it (comma list of host names, IP
addresses and CIDR networks). The check is made on every address the host name
resolves to, for every redirect hop (see `http_fetch.py`, which then connects to the
checked address itself, so a second DNS answer cannot swap it).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


@dataclass(frozen=True)
class AllowedHosts:
    """OCR_DOCUMENT_ALLOWED_HOSTS, parsed."""

    names: frozenset[str] = frozenset()
    networks: tuple[IpNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, text: str) -> AllowedHosts:
        """'files.internal, 10.0.0.0/8, 127.0.0.1, ::1' -> names and networks.

        ValueError names the bad entry.
        """
        names: set[str] = set()
        networks: list[IpNetwork] = []
        for raw in text.split(","):
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            label = entry.rstrip(".")
            if (
                not label
                or "/" in label
                or not all(
                    part and len(part) <= 63 and part.replace("-", "").replace("_", "").isalnum()
                    for part in label.split(".")
                )
            ):
                raise ValueError(f"not a host name, IP address or CIDR network: {raw.strip()!r}")
            names.add(label)
        return cls(frozenset(names), tuple(networks))

    def allows(self, host: str, address: IpAddress) -> bool:
        name = host.strip("[]").lower().rstrip(".")
        if name in self.names:
            return True
        return any(address.version == n.version and address in n for n in self.networks)


def address_kind(address: IpAddress) -> str | None:
    """Pure: why an address is not a public one ('loopback', 'private', ...), or None."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_kind(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if address.is_reserved:
        return "reserved"
    if not address.is_global:
        return "not public"
    return None


def refusal(host: str, address: IpAddress, allowed: AllowedHosts) -> str | None:
    """Pure: None when a connection to `address` (for `host`) may go ahead, else why not."""
    kind = address_kind(address)
    if kind is None or allowed.allows(host, address):
        return None
    return f"{address} is {kind}"


def same_origin(a: str, b: str) -> bool:
    """Pure: same scheme, host and port (credentials may follow a redirect only then)."""
    pa, pb = urlsplit(a), urlsplit(b)
    defaults = {"http": 80, "https": 443}
    port_a = pa.port or defaults.get(pa.scheme.lower())
    port_b = pb.port or defaults.get(pb.scheme.lower())
    return (
        pa.scheme.lower() == pb.scheme.lower()
        and (pa.hostname or "") == (pb.hostname or "")
        and port_a == port_b
    )


def next_hop(current: str, location: str | None) -> str:
    """Pure: the absolute URL a redirect points to; ValueError if unusable."""
    if not location:
        raise ValueError("redirect without a Location header")
    target = urljoin(current, location.strip())
    scheme = urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"redirect to an unsupported scheme {scheme!r}")
    if not urlsplit(target).hostname:
        raise ValueError("redirect to a URL without a host")
    return target
