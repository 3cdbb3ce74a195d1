"""Range arithmetic on IPv4/IPv6 networks: strict parsing, dash ranges to CIDRs, index keys, exclusion.

Pure functions over :mod:`ipaddress` values; every other layer goes through here to turn text into
networks and networks into the fixed-width keys the listings index compares.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import TypeAlias

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network

KEY_WIDTH = {4: 4, 6: 16}


class NetworkError(ValueError):
    """Text that is not an address or a network, with a reason a person can act on."""


def parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise NetworkError(f"{text!r} is not an IPv4 or IPv6 address") from None


def parse_network(text: str, *, strict: bool = True) -> IPNetwork:
    """Parse an address or CIDR. With ``strict``, host bits set (``203.0.113.7/24``) are an error."""
    value = text.strip()
    if not value:
        raise NetworkError("empty address")
    if "/" not in value:
        return ipaddress.ip_network(parse_address(value))
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "has host bits set" in str(exc):
            if not strict:
                return ipaddress.ip_network(value, strict=False)
            base = ipaddress.ip_network(value, strict=False)
            raise NetworkError(f"{value} has host bits set; the network is {base}") from None
        raise NetworkError(f"{value!r} is not a valid CIDR network") from None


def range_to_cidrs(first: IPAddress, last: IPAddress) -> list[IPNetwork]:
    """The minimal list of CIDRs covering exactly ``first``..``last`` (inclusive)."""
    if first.version != last.version:
        raise NetworkError(f"{first} and {last} are of different IP versions")
    if int(last) < int(first):
        raise NetworkError(f"range {first}-{last} ends before it starts")
    return list(ipaddress.summarize_address_range(first, last))


def address_key(address: IPAddress) -> bytes:
    """Big-endian fixed-width bytes: sorts like the address within one IP version."""
    return address.packed


def first_last(network: IPNetwork) -> tuple[int, int]:
    """First and last address as integers (cheaper than ipaddress's broadcast_address)."""
    start = int(network.network_address)
    return start, start | ((1 << (network.max_prefixlen - network.prefixlen)) - 1)


def network_keys(network: IPNetwork) -> tuple[int, bytes, bytes]:
    """(version, start_key, end_key) of a network, as stored in the listings index."""
    start, end = first_last(network)
    nbytes = network.max_prefixlen // 8
    return network.version, start.to_bytes(nbytes, "big"), end.to_bytes(nbytes, "big")


def supernet_keys(network: IPNetwork) -> list[tuple[int, bytes]]:
    """(prefixlen, start_key) of every CIDR that contains ``network``, itself included.

    CIDRs either nest or are disjoint, so a listing overlaps ``network`` exactly when it is one of these
    supernets or starts inside ``network``: two index look-ups, never a scan.
    """
    width = network.max_prefixlen
    nbytes = width // 8
    value = int(network.network_address)
    full = (1 << width) - 1
    return [
        (plen, (value & (full ^ ((1 << (width - plen)) - 1))).to_bytes(nbytes, "big"))
        for plen in range(network.prefixlen + 1)
    ]


def exclude(network: IPNetwork, removed: IPNetwork) -> list[IPNetwork]:
    """``network`` minus ``removed`` as a minimal sorted CIDR list (``network`` whole if disjoint)."""
    if network.version != removed.version or not network.overlaps(removed):
        return [network]
    if network.subnet_of(removed):  # type: ignore[arg-type]
        return []
    return sorted(network.address_exclude(removed))  # type: ignore[arg-type]


def collapse(networks: Iterable[IPNetwork]) -> list[IPNetwork]:
    """Merge overlapping and adjacent networks of each version into the minimal CIDR list."""
    items = list(networks)
    v4 = [n for n in items if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in items if isinstance(n, ipaddress.IPv6Network)]
    return [*ipaddress.collapse_addresses(v4), *ipaddress.collapse_addresses(v6)]


def num_addresses(networks: Iterable[IPNetwork]) -> int:
    return sum(n.num_addresses for n in networks)


def compress_addresses(addresses: Iterable[IPAddress]) -> list[str]:
    """Runs of consecutive addresses as ``a-b`` ranges (or single addresses), sorted, for summaries."""
    ordered = sorted(set(addresses), key=lambda a: (a.version, int(a)))
    runs: list[str] = []
    start = prev = None
    for addr in ordered:
        if prev is not None and addr.version == prev.version and int(addr) == int(prev) + 1:
            prev = addr
            continue
        if start is not None:
            runs.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = addr
    if start is not None:
        runs.append(str(start) if start == prev else f"{start}-{prev}")
    return runs
