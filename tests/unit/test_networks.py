import ipaddress

import pytest

from tmsi.domain.networks import (
    NetworkError,
    compress_addresses,
    exclude,
    network_keys,
    parse_network,
    range_to_cidrs,
    supernet_keys,
)


def test_parse_network_host_bits_are_an_error_that_names_the_network():
    with pytest.raises(NetworkError, match=r"host bits set; the network is 203\.0\.113\.0/24"):
        parse_network("203.0.113.7/24")


@pytest.mark.parametrize("text", ["", "203.0.113", "300.1.1.1", "2001:db8::/200", "abc"])
def test_parse_network_rejects_garbage(text):
    with pytest.raises(NetworkError):
        parse_network(text)


def test_single_address_is_a_host_network():
    assert parse_network(" 2001:db8::7 ") == ipaddress.ip_network("2001:db8::7/128")


def test_range_to_cidrs_is_minimal_and_exact():
    nets = range_to_cidrs(ipaddress.ip_address("203.0.113.10"), ipaddress.ip_address("203.0.113.50"))
    assert [str(n) for n in nets] == [
        "203.0.113.10/31",
        "203.0.113.12/30",
        "203.0.113.16/28",
        "203.0.113.32/28",
        "203.0.113.48/31",
        "203.0.113.50/32",
    ]
    assert sum(n.num_addresses for n in nets) == 41


def test_keys_sort_like_addresses():
    a = network_keys(parse_network("198.51.100.0/24"))
    b = network_keys(parse_network("203.0.113.0/24"))
    assert a[1] < b[1] and a[2] < b[1]
    assert supernet_keys(parse_network("203.0.113.0/24"))[-1] == (24, bytes([203, 0, 113, 0]))
    assert len(supernet_keys(parse_network("2001:db8::1"))) == 129


def test_exclude_splits_minimally():
    rest = exclude(parse_network("203.0.113.0/24"), parse_network("203.0.113.7"))
    assert len(rest) == 8
    assert sum(n.num_addresses for n in rest) == 255
    assert exclude(parse_network("203.0.113.0/24"), parse_network("198.51.100.0/24")) == [
        parse_network("203.0.113.0/24")
    ]
    assert exclude(parse_network("203.0.113.4/30"), parse_network("203.0.113.0/24")) == []


def test_compress_addresses_groups_runs():
    addrs = [ipaddress.ip_address(f"203.0.113.{i}") for i in (1, 2, 3, 7, 9, 10)]
    assert compress_addresses(addrs) == ["203.0.113.1-203.0.113.3", "203.0.113.7", "203.0.113.9-203.0.113.10"]
