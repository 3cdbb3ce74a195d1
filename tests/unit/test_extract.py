"""extract_targets: every notation that names a target, and everything that only looks like one."""

from __future__ import annotations

import ipaddress
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tmsi.domain.extract import (
    NON_TARGET_V4,
    NON_TARGET_V6,
    ExtractedTargets,
    extract_targets,
)

ZONE = "dul.example.test"
OWN = ["192.0.2.248/29", "3fff:fff::/48"]


def run(text: str, **kwargs: object) -> ExtractedTargets:
    options: dict[str, object] = {"own_networks": OWN, "dnsbl_zone": ZONE}
    options.update(kwargs)
    return extract_targets(text, **options)  # type: ignore[arg-type]


def cidrs(text: str, **kwargs: object) -> list[str]:
    return run(text, **kwargs).cidrs


def reasons(text: str) -> dict[str, str]:
    return dict(run(text).ignored)


# --- notations that are targets -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("please delist 203.0.113.7", ["203.0.113.7/32"]),
        ("IP:203.0.113.7", ["203.0.113.7/32"]),
        ("[203.0.113.7]", ["203.0.113.7/32"]),
        ("(203.0.113.7)", ["203.0.113.7/32"]),
        ("ip=203.0.113.7&x=1", ["203.0.113.7/32"]),
        ("delist 203.0.113.7.", ["203.0.113.7/32"]),
        ("203.0.113.7, 203.0.113.8; 203.0.113.9", ["203.0.113.7/32", "203.0.113.8/32", "203.0.113.9/32"]),
        ("IP地址203.0.113.7已经改为静态", ["203.0.113.7/32"]),
        ("zero padded 203.000.113.007", ["203.0.113.7/32"]),
        ("https://dul.example.test/lookup/203.0.113.201", ["203.0.113.201/32"]),
        ("Client host [203.0.113.177] blocked using dul.example.test", ["203.0.113.177/32"]),
    ],
)
def test_single_ipv4(text: str, expected: list[str]) -> None:
    assert cidrs(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("198.51.100.0/24", ["198.51.100.0/24"]),
        ("198.51.100.0 / 26", ["198.51.100.0/26"]),
        ("198.51.100.0/255.255.255.0", ["198.51.100.0/24"]),
        ("203.0.113.7/32", ["203.0.113.7/32"]),
    ],
)
def test_cidr(text: str, expected: list[str]) -> None:
    assert cidrs(text) == expected


def test_slash_between_two_addresses_is_a_list() -> None:
    assert cidrs("203.0.113.7/203.0.113.8") == ["203.0.113.7/32", "203.0.113.8/32"]


@pytest.mark.parametrize(
    "text",
    ["203.0.113.7, .8 and .9", "203.0.113.7 ; .8 & .9", "203.0.113.7, .8, .9.", "203.0.113.7 und .8, .9"],
)
def test_last_octet_lists(text: str) -> None:
    assert cidrs(text) == ["203.0.113.7/32", "203.0.113.8/32", "203.0.113.9/32"]


def test_a_sentence_after_an_address_is_not_a_last_octet_list() -> None:
    assert cidrs("delist 203.0.113.7, .NET framework 4.8 is installed") == ["203.0.113.7/32"]


def test_cidr_with_host_bits_is_normalized_and_noted() -> None:
    result = run("block 203.0.113.77/26 please")
    assert result.cidrs == ["203.0.113.64/26"]
    assert result.notes == [("203.0.113.77/26", "host bits set; using the network 203.0.113.64/26")]
    assert result.sources["203.0.113.64/26"] == "203.0.113.77/26"


RANGE_10_20 = ["203.0.113.10/31", "203.0.113.12/30", "203.0.113.16/30", "203.0.113.20/32"]


@pytest.mark.parametrize(
    "text",
    [
        "203.0.113.10-203.0.113.20",
        "203.0.113.10 - 203.0.113.20",
        "203.0.113.10 to 203.0.113.20",
        "203.0.113.10 \u2013 203.0.113.20",  # en dash
        "203.0.113.10\u201420",  # em dash, short form
        "203.0.113.10-20",
        "203.0.113.10 - 20",
        "203.0.113.10~20",
        "203.0.113.[10-20]",
        "203.0.113.10 bis 203.0.113.20",
        "203.0.113.10 \u0434\u043e 203.0.113.20",  # Russian "do"
        "203.0.113.10\u81f3203.0.113.20",  # Chinese "zhi"
    ],
)
def test_dash_ranges_become_the_minimal_cidr_cover(text: str) -> None:
    result = run(text)
    assert result.cidrs == RANGE_10_20
    assert set(result.sources.values()) == {text.replace("\u2013", "-").replace("\u2014", "-")}


def test_range_covering_a_whole_block_is_one_cidr() -> None:
    assert cidrs("198.51.100.0-198.51.100.127") == ["198.51.100.0/25"]


def test_reversed_range_is_ignored_as_invalid() -> None:
    result = run("203.0.113.50-10")
    assert result.cidrs == []
    assert result.ignored == [("203.0.113.50-10", "invalid range")]


def test_a_bulleted_list_is_not_a_range() -> None:
    text = "Addresses:\n- 203.0.113.10\n- 203.0.113.20\n- 198.51.100.7\n-20 more to come"
    assert cidrs(text) == ["198.51.100.7/32", "203.0.113.10/32", "203.0.113.20/32"]


@pytest.mark.parametrize(
    "text",
    [
        "please release 203.0.113.7",
        "IP v 203.0.113.7",  # Czech/Slovak "v" (in)
        "Update: 203.0.113.7 is static",
        "step 2: 203.0.113.7",
    ],
)
def test_words_that_are_not_version_markers(text: str) -> None:
    assert cidrs(text) == ["203.0.113.7/32"]


@pytest.mark.parametrize("text", ["Python 3.11.*", "1.x", "x.5", "Name :: value", "a :: b"])
def test_prose_with_dots_and_colons(text: str) -> None:
    result = run(text)
    assert (result.cidrs, result.masked, result.ignored) == ([], False, [])


def test_prose_after_an_address_is_not_a_short_range() -> None:
    assert cidrs("delist 203.0.113.7 to 5 days ago") == ["203.0.113.7/32"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("203.0.113.*", ["203.0.113.0/24"]),
        ("203.0.113.x", ["203.0.113.0/24"]),
        ("203.0.113.X", ["203.0.113.0/24"]),
        ("203.0.113.xxx", ["203.0.113.0/24"]),
        ("198.51.*.*", ["198.51.0.0/16"]),
        ("198.51.x.x", ["198.51.0.0/16"]),
    ],
)
def test_wildcards(text: str, expected: list[str]) -> None:
    result = run(text)
    assert result.cidrs == expected
    assert not result.masked


@pytest.mark.parametrize(
    "text",
    [
        "**.92.**.**",
        "203.0.xxx.7",
        "203.***.113.7",
        "xxx.xxx.113.7",
        "203.0.113.1**",
        "203.0.xxx.xxx",
        "x.x.x.x",
    ],
)
def test_masked_addresses_set_the_flag_and_are_not_targets(text: str) -> None:
    result = run(f"my ip {text} is blocked")
    assert result.masked
    assert result.masked_samples == [text]
    assert result.cidrs == []


def test_masked_next_to_a_real_address() -> None:
    result = run("**.92.**.** (that is 203.0.113.92)")
    assert result.masked
    assert result.cidrs == ["203.0.113.92/32"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2001:db8::1", ["2001:db8::1/128"]),
        ("[2001:db8:4400:100::25]", ["2001:db8:4400:100::25/128"]),
        ("2001:db8:1::/48", ["2001:db8:1::/48"]),
        ("2001:DB8:1::/48", ["2001:db8:1::/48"]),
        ("2001:0db8:0001:0000:0000:0000:0000:0001", ["2001:db8:1::1/128"]),
        ("2001:db8::1-2001:db8::3", ["2001:db8::1/128", "2001:db8::2/127"]),
        ("::ffff:203.0.113.33", ["203.0.113.33/32"]),  # IPv4-mapped names the IPv4 address
        ("2001:db8::5/64", ["2001:db8::/64"]),
    ],
)
def test_ipv6(text: str, expected: list[str]) -> None:
    assert cidrs(text) == expected


@pytest.mark.parametrize("text", ["10:30:45", "00:1a:2b:3c:4d:5e", "a::b::c", "12:00 to 13:00"])
def test_times_and_mac_addresses_are_not_ipv6(text: str) -> None:
    assert cidrs(text) == []


# --- reverse names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$ dig 7.113.0.203.dul.example.test", ["203.0.113.7/32"]),
        ("7.113.0.203.DUL.EXAMPLE.TEST.", ["203.0.113.7/32"]),
        ("44.100.51.198.in-addr.arpa. 3600 IN PTR static-44.biz.isp.example.", ["198.51.100.44/32"]),
        ("113.0.203.in-addr.arpa", ["203.0.113.0/24"]),
        ("7.0/26.100.51.198.in-addr.arpa", ["198.51.100.7/32"]),  # RFC 2317 host name
        ("0/26.100.51.198.in-addr.arpa", ["198.51.100.0/26"]),  # RFC 2317 delegated block
        ("64-127.100.51.198.in-addr.arpa", ["198.51.100.64/26"]),
        (
            "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
            ["2001:db8::25/128"],
        ),
        ("8.b.d.0.1.0.0.2.ip6.arpa", ["2001:db8::/32"]),
        (
            "5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.dul.example.test",
            ["2001:db8::25/128"],
        ),
    ],
)
def test_dnsbl_and_arpa_names_name_the_address_they_encode(text: str, expected: list[str]) -> None:
    result = run(text)
    assert result.cidrs == expected


def test_another_dnsbl_zone_is_just_a_host_name() -> None:
    result = run("7.113.0.203.zen.blocklist.example")
    assert result.cidrs == []
    assert result.ignored == [("7.113.0.203", "inside host name")]


def test_without_a_zone_our_query_names_are_host_names() -> None:
    assert run("7.113.0.203.dul.example.test", dnsbl_zone="").cidrs == []


# --- not targets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("10.1.2.3", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("100.64.0.1", "shared"),
        ("127.0.0.1", "loopback"),
        ("169.254.1.1", "link-local"),
        ("224.0.0.5", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("255.255.255.255", "reserved"),
        ("192.0.0.8", "reserved"),
        ("198.18.0.1", "reserved"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fd00::1", "private"),
        ("ff02::1", "multicast"),
        ("2001::1", "reserved"),
        ("192.0.2.250", "own network"),
        ("3fff:fff::25", "own network"),
    ],
)
def test_non_target_addresses(text: str, reason: str) -> None:
    result = run(f"please delist {text} now")
    assert result.cidrs == []
    assert result.ignored == [(text, reason)]


@pytest.mark.parametrize(
    "text",
    ["192.0.2.1", "198.51.100.1", "203.0.113.1", "2001:db8::1", "3fff::1"],
)
def test_documentation_ranges_are_targets(text: str) -> None:
    # All fixtures use them as public addresses; ipaddress flags some of them as private/reserved.
    assert len(cidrs(text)) == 1


def test_documentation_ranges_are_absent_from_the_non_target_table() -> None:
    documentation = [ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")]
    for cidr, _reason in NON_TARGET_V4:
        assert not any(ipaddress.ip_network(cidr).overlaps(d) for d in documentation), cidr
    for cidr, _reason in NON_TARGET_V6:
        assert not ipaddress.ip_network(cidr).overlaps(ipaddress.ip_network("2001:db8::/32")), cidr


def test_a_range_partly_in_our_own_network_keeps_the_rest() -> None:
    result = run("192.0.2.240/28")
    assert result.cidrs == ["192.0.2.240/29"]
    assert result.notes == [("192.0.2.240/28", "our own network 192.0.2.248/29 left out")]
    assert result.ignored == []


def test_a_large_range_over_reserved_space_keeps_only_public_parts() -> None:
    result = run("198.16.0.0/13", max_prefix_v4=8)
    covered = sum(ipaddress.ip_network(c).num_addresses for c in result.cidrs)
    assert covered == 2**19 - 2**17  # 198.16.0.0/13 minus 198.18.0.0/15
    assert not any(
        ipaddress.ip_network(c).overlaps(ipaddress.ip_network("198.18.0.0/15")) for c in result.cidrs
    )


@pytest.mark.parametrize(
    "text",
    [
        "version 1.2.3.4",
        "Version: 1.2.3.4",
        "ver. 1.2.3.4",
        "v1.2.3.4",
        "build 5.6.7.8",
        "firmware 5.6.7.8",
        "Firefox/102.0.1.2",
        "Thunderbird/102.0.1.2",
        "section 1.2.3.4",
    ],
)
def test_version_strings(text: str) -> None:
    result = run(f"running {text} here")
    assert result.cidrs == []
    assert [reason for _, reason in result.ignored] == ["version string"]


def test_lowercase_path_segment_is_not_a_product_version() -> None:
    assert cidrs("https://lookup.example/ip/203.0.113.5") == ["203.0.113.5/32"]


@pytest.mark.parametrize(
    "text", ["2010.8.14", "12.05.2026", "2026-05-12", "14.08.2010 10:38:34", "2010.8.14 10.38.34"]
)
def test_dates_and_times(text: str) -> None:
    result = run(f"changed on {text}.")
    assert result.cidrs == []
    assert [reason for _, reason in result.ignored] == ["date/time"]


def test_oids_and_longer_dotted_numbers_are_not_addresses() -> None:
    assert cidrs("OID 1.3.6.1.4.1.2021.10.1 and 1.2.203.0.113.7.9") == []


@pytest.mark.parametrize(
    ("text", "ignored"),
    [
        ("static-203-0-113-7.example.net", "static-203-0-113-7.example.net"),
        ("dsl-203-0-113-8.pool.example.net.", "dsl-203-0-113-8.pool.example.net"),
        ("203.0.113.7.example.net", "203.0.113.7"),
        ("7.113.0.203.dyn.isp.example", "7.113.0.203"),
        ("mail.203.0.113.9", "203.0.113.9"),
        ("203.0.113.9-static.isp.example", "203.0.113.9"),
    ],
)
def test_addresses_inside_host_names_are_not_targets(text: str, ignored: str) -> None:
    result = run(f"our PTR is {text} now")
    assert result.cidrs == []
    assert result.ignored == [(ignored, "inside host name")]


def test_host_name_next_to_its_address() -> None:
    result = run("203.0.113.7 -> static-203-0-113-7.biz.isp.example")
    assert result.cidrs == ["203.0.113.7/32"]


# --- normalization and output shape -------------------------------------------------------------


def test_fullwidth_digits_and_defanged_dots() -> None:
    assert cidrs("\uff12\uff10\uff13\uff0e\uff10\uff0e\uff11\uff11\uff13\uff0e\uff12\uff10\uff10") == [
        "203.0.113.200/32"
    ]
    assert cidrs("203.0.113[.]99 and 198[.]51[.]100[.]7 and 192.0.2(.)8") == [
        "192.0.2.8/32",
        "198.51.100.7/32",
        "203.0.113.99/32",
    ]


def test_ideographic_full_stops() -> None:
    assert cidrs("IP\u662f203\u30020\u3002113\u30027\u3002\u53e6198.51.100.1\u3002") == [
        "198.51.100.1/32",
        "203.0.113.7/32",
    ]


def test_output_is_sorted_deduplicated_and_nested_networks_collapse() -> None:
    result = run("2001:db8::1 203.0.113.7 203.0.113.0/24 192.0.2.5 192.0.2.5 192.0.2.6 2001:db8::/64")
    assert result.cidrs == ["192.0.2.5/32", "192.0.2.6/32", "203.0.113.0/24", "2001:db8::/64"]
    assert all(isinstance(n, ipaddress.IPv4Network | ipaddress.IPv6Network) for n in result.networks)
    assert result.sources == {
        "192.0.2.5/32": "192.0.2.5",
        "192.0.2.6/32": "192.0.2.6",
        "203.0.113.0/24": "203.0.113.0/24",
        "2001:db8::/64": "2001:db8::/64",
    }


def test_adjacent_networks_are_not_merged() -> None:
    assert cidrs("203.0.113.0/25 203.0.113.128/25") == ["203.0.113.0/25", "203.0.113.128/25"]


@pytest.mark.parametrize(
    ("text", "kwargs", "oversized"),
    [
        ("198.0.0.0/15", {}, ["198.0.0.0/15"]),
        ("198.51.0.0/16", {}, []),
        ("2001:db8::/32", {}, ["2001:db8::/32"]),
        ("2001:db8::/48", {}, []),
        ("203.0.113.0/24", {"max_prefix_v4": 25}, ["203.0.113.0/24"]),
        ("2001:db8::/56", {"max_prefix_v6": 64}, ["2001:db8::/56"]),
    ],
)
def test_oversized_networks_are_kept_and_flagged(
    text: str, kwargs: dict[str, int], oversized: list[str]
) -> None:
    result = run(text, **kwargs)
    assert result.cidrs == [ipaddress.ip_network(text, strict=False).compressed]
    assert result.oversized == oversized


def test_own_networks_accept_strings_and_networks() -> None:
    own = [ipaddress.ip_network("203.0.113.0/25"), "2001:db8::/32"]
    assert extract_targets("203.0.113.5 203.0.113.200 2001:db8::1", own_networks=own).cidrs == [
        "203.0.113.200/32"
    ]


def test_empty_and_addressless_text() -> None:
    assert run("").cidrs == []
    result = run("Please delist our IP, it is static now. Thanks!")
    assert (result.cidrs, result.masked, result.ignored) == ([], False, [])


def test_large_text_is_fast() -> None:
    line = "customer 4711, 203.0.113.{n}, static-203-0-113-{n}.biz.isp.example, since 2026-05-12, v1.2.3.4\n"
    text = "".join(line.format(n=i % 250 + 1) for i in range(20000))  # ~1.8 MB
    started = time.perf_counter()
    result = run(text)
    assert time.perf_counter() - started < 10
    assert len(result.cidrs) == 250


def test_only_the_head_of_a_huge_text_is_read() -> None:
    result = run("203.0.113.1 " + "x" * 100 + " 203.0.113.2", max_chars=50)
    assert result.cidrs == ["203.0.113.1/32"]
    assert result.notes == [("124 characters", "only the first 50 characters were read")]


@given(st.text(alphabet="0123456789.:-/*x abcdef\u2013[]()", max_size=80))
def test_arbitrary_text_never_raises_and_yields_only_public_targets(text: str) -> None:
    result = run(text)
    for network in result.networks:
        assert not any(
            network.version == ipaddress.ip_network(cidr).version
            and network.overlaps(ipaddress.ip_network(cidr))
            for cidr, _ in (*NON_TARGET_V4, *NON_TARGET_V6)
        )
        own = [ipaddress.ip_network(cidr) for cidr in OWN]
        assert not any(network.version == o.version and network.overlaps(o) for o in own)
