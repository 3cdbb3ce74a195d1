"""The pure rDNS name classifier: the labelled set, the forms of the embedded address, token boundaries,
the decision rules, several PTR names, garbage input, and rules loaded from data."""

from __future__ import annotations

import ipaddress
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tmsi.domain.networks import NetworkError
from tmsi.domain.rdns import Classification, RulesError, classify, classify_all, load_rules
from tmsi.enums import NameVerdict

LABELLED = Path(__file__).resolve().parents[1] / "data" / "rdns_labelled.tsv"
PASSING = {"static", "custom"}


def _labelled() -> list[tuple[str, str, str, str]]:
    rows = []
    for line in LABELLED.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        address, ptr, expected, note = line.split("\t")
        rows.append((address, ptr, expected, note))
    return rows


ROWS = _labelled()


def _judge(address: str, ptr: str) -> Classification:
    return classify_all(address, ptr.split(" ") if ptr else [""])


def test_labelled_set_is_large_and_covers_every_verdict() -> None:
    counts = Counter(expected for _, _, expected, _ in ROWS)
    assert len(ROWS) >= 400
    assert set(counts) == {"static", "custom", "generic", "dynamic"}
    assert min(counts.values()) >= 50
    assert sum(1 for address, *_ in ROWS if ":" in address) >= 20
    assert sum(1 for _, ptr, *_ in ROWS if " " in ptr) >= 5


@pytest.mark.parametrize(("address", "ptr", "expected", "note"), ROWS, ids=[f"{r[1][:60]}" for r in ROWS])
def test_labelled_name(address: str, ptr: str, expected: str, note: str) -> None:
    result = _judge(address, ptr)
    assert result.reasons, "every verdict carries its reasons"
    assert result.passes == (expected in PASSING), (note, result.reasons)
    if note.startswith("known miss") and result.verdict.value != expected:
        pytest.xfail(f"{note}: got {result.verdict.value}")
    assert result.verdict.value == expected, (note, result.reasons)


def test_precision_and_recall_on_the_labelled_set_meet_the_targets() -> None:
    passed_right = passed_wrong = failed_right = failing_total = 0
    for address, ptr, expected, _ in ROWS:
        passes = _judge(address, ptr).passes
        should_pass = expected in PASSING
        if passes:
            passed_right += should_pass
            passed_wrong += not should_pass
        if not should_pass:
            failing_total += 1
            failed_right += not passes
    precision_pass = passed_right / (passed_right + passed_wrong)
    recall_fail = failed_right / failing_total
    assert precision_pass >= 0.98, precision_pass
    assert recall_fail >= 0.95, recall_fail


# --- the forms of the embedded address --------------------------------------------------------------------
@pytest.mark.parametrize(
    ("address", "ptr", "form"),
    [
        ("203.0.113.7", "203.0.113.7.isp.example", "address embedded dotted: 203.0.113.7 in labels 1-4"),
        ("203.0.113.7", "ip-203-0-113-7.isp.example", "address embedded dashed: 203-0-113-7 in label 1"),
        ("203.0.113.7", "h203_0_113_7.isp.example", "address embedded underscored: 203_0_113_7 in label 1"),
        ("203.0.113.7", "7.113.0.203.isp.example", "address embedded reversed dotted: 7.113.0.203"),
        (
            "203.0.113.7",
            "x203-000-113-007.isp.example",
            "address embedded zero-padded dashed: 203-000-113-007",
        ),
        ("203.0.113.7", "modemcable007.113-0-203.isp.example", "reversed zero-padded mixed-separator"),
        ("203.0.113.7", "a203000113007.isp.example", "zero-padded without separators: 203000113007"),
        ("203.0.113.7", "pcb007107.isp.example", "address embedded hex: cb007107 in label 1"),
        ("203.0.113.7", "p077100cb.isp.example", "address embedded reversed hex: 077100cb"),
        ("203.0.113.7", "cb-00-71-07.isp.example", "address embedded hex dashed: cb-00-71-07"),
        ("203.0.113.7", "n3405803783.isp.example", "address embedded decimal: 3405803783"),
        ("203.0.113.7", "dsl-113-7.isp.example", "address embedded partially (last 2 octets): 113-7"),
        ("203.0.113.7", "dsl-0-113-7.isp.example", "address embedded partially (last 3 octets): 0-113-7"),
        ("203.0.113.7", "dsl-7-113.isp.example", "partially (last 2 octets reversed): 7-113"),
        ("2001:db8:1::7", "2001-db8-1--7.isp.example", "IPv6 compressed dashed: 2001-db8-1--7"),
        ("2001:db8:1::7", "20010db8000100000000000000000007.isp.example", "IPv6 hex (32 nibbles)"),
        ("2001:db8:1::7", "h2001-db8-1-0-0-0-0-7.isp.example", "IPv6 dashed: 2001-db8-1-0-0-0-0-7"),
        ("2001:db8:1::7", "2001-0db8-0001-0000-0000-0000-0000-0007.isp.example", "IPv6 exploded dashed"),
        (
            "2001:db8:1::7",
            ipaddress.ip_address("2001:db8:1::7").reverse_pointer.removesuffix(".ip6.arpa") + ".isp.example",
            "IPv6 reversed nibble dotted",
        ),
    ],
)
def test_embedding_forms_are_named_in_the_reasons(address: str, ptr: str, form: str) -> None:
    result = classify(address, ptr)
    assert any(form in reason for reason in result.reasons), result.reasons
    assert not result.passes


def test_ipv6_prefix_alone_or_another_ipv6_address_is_generic() -> None:
    prefix = classify("2001:db8:1::7", "2001-db8-1.isp.example")
    assert prefix.verdict is NameVerdict.GENERIC
    assert prefix.reasons[0] == "address embedded partially (IPv6 /48 prefix): 2001-db8-1 in label 1"
    other = classify("2001:db8:1::7", "2001-db8-ffff-1.isp.example")
    assert other.verdict is NameVerdict.GENERIC
    assert any("IPv6 address-like groups" in reason for reason in other.reasons)


def test_ipv4_mapped_ipv6_address_is_looked_for_in_its_ipv4_forms() -> None:
    result = classify("::ffff:203.0.113.7", "dsl-203-0-113-7.isp.example")
    assert result.verdict is NameVerdict.DYNAMIC
    assert result.reasons[0] == "address embedded dashed: 203-0-113-7 in label 1"


def test_a_different_address_in_the_name_is_generic_even_next_to_static() -> None:
    result = classify("203.0.113.7", "static-198-51-100-9.isp.example")
    assert result.verdict is NameVerdict.GENERIC
    assert any("another address (198.51.100.9)" in r for r in result.reasons)


def test_partial_octets_need_enough_digits_to_count() -> None:
    # "1-2" is too common in host names to be evidence for an address ending in .1.2
    assert classify("198.51.1.2", "vm1-2.example.net").verdict is NameVerdict.CUSTOM
    assert classify("198.51.100.42", "vm100-42.example.net").verdict is NameVerdict.GENERIC


# --- tokens: whole labels or label parts, never inside unrelated words --------------------------------------
@pytest.mark.parametrize(
    ("ptr", "token"),
    [
        ("dsl-203-0-113-7.isp.example", "'dsl'"),
        ("adsl123.isp.example", "'adsl'"),
        ("203-0-113-7.dynamicip.isp.example", "'dynamic' (dynamic) as part of 'dynamicip'"),
        ("dyn4-203-0-113-7.isp.example", "'dyn'"),
        ("203-0-113-7.3g.isp.example", "'3g'"),
        ("203-0-113-7.staticnet.isp.example", "'static' (static) as part of 'staticnet'"),
    ],
)
def test_tokens_match_as_labels_parts_and_compounds(ptr: str, token: str) -> None:
    result = classify("203.0.113.7", ptr)
    assert any(token in reason for reason in result.reasons), result.reasons


@pytest.mark.parametrize(
    "ptr",
    [
        "staticfiles.example.net",
        "resources.example.net",
        "mail-resources.example.net",
        "whirlpool.example.net",
        "dynamo.example.net",
        "poolside.example.net",
        "cabled.example.net",
        "dialog.example.net",
        "subnet-gw.example.net",
        "poolserver.example.net",
        "statistics.example.net",
    ],
)
def test_tokens_inside_unrelated_words_do_not_count(ptr: str) -> None:
    result = classify("192.0.2.10", ptr)
    assert result.verdict is NameVerdict.CUSTOM, result.reasons
    assert not any("token '" in reason for reason in result.reasons), result.reasons


def test_unrelated_word_next_to_the_address_is_generic_not_dynamic_or_static() -> None:
    assert classify("203.0.113.7", "whirlpool-203-0-113-7.isp.example").verdict is NameVerdict.GENERIC
    assert classify("203.0.113.7", "staticfiles-203-0-113-7.isp.example").verdict is NameVerdict.GENERIC


# --- the decision -------------------------------------------------------------------------------------------
def test_static_token_next_to_the_address_is_static() -> None:
    result = classify("203.0.113.7", "203-0-113-7.static.isp.example")
    assert result.verdict is NameVerdict.STATIC
    assert result.passes


def test_static_and_dynamic_together_is_ambiguous_and_fails() -> None:
    result = classify("203.0.113.7", "static-dyn-203-0-113-7.isp.example")
    assert result.verdict is NameVerdict.DYNAMIC
    assert any("ambiguous" in reason for reason in result.reasons)


def test_static_word_away_from_the_address_outweighs_lighter_consumer_words() -> None:
    assert classify("203.0.113.7", "203-0-113-7.cust.x.static.isp.example").verdict is NameVerdict.STATIC
    assert classify("203.0.113.7", "203-0-113-7.dsl.x.biz.isp.example").verdict is NameVerdict.STATIC


def test_static_word_away_from_the_address_loses_to_an_equally_heavy_dynamic_word(tmp_path: Path) -> None:
    extra = tmp_path / "heavy.toml"
    extra.write_text(
        "[categories.heavy]\nkind = 'dynamic'\nweight = 9\ntokens = ['kunde9']\n", encoding="utf-8"
    )
    rules = load_rules(str(extra))
    far = classify("203.0.113.7", "203-0-113-7.kunde9.x.biz.isp.example", rules)
    assert far.verdict is NameVerdict.DYNAMIC
    assert any("not next to the address" in reason for reason in far.reasons)
    near = classify("203.0.113.7", "biz-203-0-113-7.kunde9.isp.example", rules)
    assert near.verdict is NameVerdict.STATIC


def test_static_word_in_the_registered_domain_does_not_count() -> None:
    result = classify("203.0.113.7", "203-0-113-7.static-isp.example")
    assert result.verdict is NameVerdict.GENERIC
    assert any("ignored" in reason for reason in result.reasons)


def test_registered_domain_uses_the_public_suffix_list() -> None:
    # bigpond.net.au is the registered domain: "static" sits in the host part
    result = classify("203.0.113.7", "cpe-203-0-113-7.static.nsw.bigpond.net.au")
    assert result.verdict is NameVerdict.STATIC


def test_weak_token_without_address_needs_a_line_id_outside_server_names() -> None:
    assert classify("203.0.113.7", "adsl77.isp.example").verdict is NameVerdict.DYNAMIC
    assert classify("203.0.113.7", "cust1.dsl.isp.example").verdict is NameVerdict.DYNAMIC
    # the digits of mx1/smtp02 number servers, not lines; a server word does not excuse a line id
    assert classify("203.0.113.7", "mx1.cable.isp.example").verdict is NameVerdict.CUSTOM
    assert classify("203.0.113.7", "smtp02.dsl.isp.example").verdict is NameVerdict.CUSTOM
    assert classify("203.0.113.7", "mail.adsl123.isp.example").verdict is NameVerdict.DYNAMIC
    assert classify("203.0.113.7", "mail.home.isp.example").verdict is NameVerdict.CUSTOM


def test_hand_made_names_are_custom_and_pass() -> None:
    for ptr in ("mail.example.net", "mx1.example.org", "smtp-out.example.test"):
        result = classify("203.0.113.7", ptr)
        assert result.verdict is NameVerdict.CUSTOM
        assert result.passes


def test_address_as_object_or_text_gives_the_same_verdict() -> None:
    text = classify("198.51.100.42", "dsl-198-51-100-42.isp.example")
    obj = classify(ipaddress.IPv4Address("198.51.100.42"), "dsl-198-51-100-42.isp.example")
    assert text == obj


def test_a_bad_address_is_an_error_but_a_bad_name_is_not() -> None:
    with pytest.raises(NetworkError):
        classify("203.0.113.999", "mail.example.net")
    assert classify("203.0.113.7", "\x00\x01").verdict is NameVerdict.GENERIC


# --- names: case, dots, IDN, length, garbage --------------------------------------------------------------
def test_upper_case_and_trailing_dot_do_not_matter() -> None:
    lower = classify("203.0.113.7", "c-203-0-113-7.hsd1.ca.comcast.example")
    upper = classify("203.0.113.7", "C-203-0-113-7.HSD1.CA.COMCAST.EXAMPLE.")
    assert lower == upper


def test_unicode_and_punycode_names_agree() -> None:
    assert classify("192.0.2.1", "mail.münchen.example") == classify(
        "192.0.2.1", "mail.xn--mnchen-3ya.example"
    )
    assert classify("192.0.2.1", "dsl-192-0-2-1.münchen.example").verdict is NameVerdict.DYNAMIC


@pytest.mark.parametrize(
    ("ptr", "why"),
    [
        ("", "empty name"),
        (".", "empty name"),
        ("a..b.example", "empty label"),
        ("localhost", "single label"),
        ("203.0.113.7", "address literal"),
        ("x" * 64 + ".example", "longer than 63"),
        (".".join(["a" * 63] * 4), "limit is 253"),
        ("mail example.net", "not allowed"),
        ("7.113.0.203.in-addr.arpa", "reverse-zone"),
        ("-.-", "no letter or digit"),
        ("xn--zz-.example", "not valid punycode"),
        ("ü" * 10_000, "limit is 253"),
        ("router.lan.", "private top-level name"),
        ("mail.localhost", "private top-level name"),
    ],
)
def test_invalid_names_are_generic_with_the_reason(ptr: str, why: str) -> None:
    result = classify("203.0.113.7", ptr)
    assert result.verdict is NameVerdict.GENERIC
    assert result.reasons[0].startswith("invalid name:")
    assert why in result.reasons[0]


def test_a_253_character_name_is_accepted() -> None:
    name = ".".join(["a" * 63] * 3) + "." + "b" * 53 + ".example"
    assert len(name) == 253
    assert classify("203.0.113.7", name).verdict is NameVerdict.CUSTOM
    assert classify("203.0.113.7", name + ".").verdict is NameVerdict.CUSTOM  # the root dot is not counted
    assert classify("203.0.113.7", "b" + name).verdict is NameVerdict.GENERIC


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_gives_a_verdict_with_reasons(ptr: str) -> None:
    result = classify("203.0.113.7", ptr)
    assert result.verdict in {
        NameVerdict.STATIC,
        NameVerdict.CUSTOM,
        NameVerdict.GENERIC,
        NameVerdict.DYNAMIC,
    }
    assert result.reasons


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=2**32 - 1),
    st.sampled_from(["dsl-{}.isp.example", "{}.dyn.isp.example"]),
)
def test_every_dashed_address_with_a_pool_token_fails(number: int, template: str) -> None:
    address = ipaddress.IPv4Address(number)
    result = classify(address, template.format(str(address).replace(".", "-")))
    assert result.verdict is NameVerdict.DYNAMIC


# --- several PTR records ------------------------------------------------------------------------------------
def test_no_ptr_is_none() -> None:
    result = classify_all("203.0.113.7", [])
    assert result.verdict is NameVerdict.NONE
    assert not result.passes


def test_worst_verdict_wins_and_reasons_name_each_record() -> None:
    result = classify_all("203.0.113.7", ["mail.example.net", "dsl-203-0-113-7.isp.example"])
    assert result.verdict is NameVerdict.DYNAMIC
    assert not result.passes
    assert any(r.startswith("mail.example.net: ") for r in result.reasons)
    assert any(r.startswith("dsl-203-0-113-7.isp.example: ") for r in result.reasons)
    assert result.reasons[-1] == "1 of 2 PTR names fail: every name must pass"


def test_all_passing_records_pass_with_the_weaker_verdict() -> None:
    result = classify_all("203.0.113.7", ["static-203-0-113-7.isp.example", "mail.example.net"])
    assert result.verdict is NameVerdict.CUSTOM
    assert result.passes


# --- rules are data ----------------------------------------------------------------------------------------
def test_extra_rules_file_adds_isp_patterns_and_tokens(tmp_path: Path) -> None:
    name = "gw-203-0-113-7.acme-isp.example"
    assert classify("203.0.113.7", name).verdict is NameVerdict.GENERIC
    extra = tmp_path / "extra.toml"
    extra.write_text(
        """
[[isp]]
domain = "acme-isp.example"
pattern = '^gw-'
verdict = "static"
reason = "ACME business gateway"

[categories.acme]
kind = "dynamic"
weight = 10
tokens = ["zuhause"]
""",
        encoding="utf-8",
    )
    rules = load_rules(str(extra))
    result = classify("203.0.113.7", name, rules)
    assert result.verdict is NameVerdict.STATIC
    assert any("ACME business gateway" in reason for reason in result.reasons)
    assert classify("203.0.113.7", "203-0-113-7.zuhause.isp.example", rules).verdict is NameVerdict.DYNAMIC
    # the packaged rules are untouched
    assert classify("203.0.113.7", name).verdict is NameVerdict.GENERIC


def test_extra_rules_can_change_decision_thresholds(tmp_path: Path) -> None:
    extra = tmp_path / "strict.toml"
    extra.write_text("[decision]\nno_address_id_digits = 3\n", encoding="utf-8")
    assert classify("203.0.113.7", "dsl7.isp.example").verdict is NameVerdict.DYNAMIC
    assert classify("203.0.113.7", "dsl7.isp.example", load_rules(str(extra))).verdict is NameVerdict.CUSTOM


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[isp]]\ndomain = 'x.example'\npattern = '('\nverdict = 'static'\n", "bad regex"),
        ("[[isp]]\npattern = 'x'\nverdict = 'static'\n", "'domain'"),
        ("[categories.x]\nkind = 'odd'\nweight = 1\ntokens = []\n", "kind must be"),
        ("[categories.x]\nkind = 'static'\nweight = 1\ntokens = ['two words']\n", "letters and digits"),
        ("[decision]\nunknown_knob = 3\n", "unknown_knob"),
        ("not toml at all [", "invalid TOML"),
    ],
)
def test_bad_rule_files_are_reported_with_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(RulesError) as info:
        load_rules(str(path))
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_missing_rules_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(str(tmp_path / "nope.toml"))
