from tmsi.domain.listfile import Entry, LineError, parse_listing_file


def test_csv_with_header_reasons_and_times():
    data = (
        "network,reason,listed_at\n203.0.113.0/24,generic rDNS,2026-01-02T03:04:05Z\n2001:db8:1::/48,pool,\n"
    )
    items = list(parse_listing_file(data))
    assert all(isinstance(i, Entry) for i in items)
    assert [str(i.network) for i in items] == ["203.0.113.0/24", "2001:db8:1::/48"]  # type: ignore[union-attr]
    assert items[0].listed_at.year == 2026  # type: ignore[union-attr]


def test_csv_bad_lines_carry_line_number_and_reason():
    data = "203.0.113.7/24,x\nnot-an-ip,y\n198.51.100.0/24,ok,yesterday\n"
    items = list(parse_listing_file(data, "csv"))
    errors = [i for i in items if isinstance(i, LineError)]
    assert [(e.line, "host bits" in e.reason or "not" in e.reason) for e in errors] == [
        (1, True),
        (2, True),
        (3, True),
    ]
    assert "host bits set" in errors[0].reason


def test_rbldnsd_text_default_reason_ranges_and_abbreviations():
    data = (
        "$SOA 3600 ns.example.test. hostmaster.example.test. 1 3600 600 86400 300\n"
        ":127.0.0.2:Dynamic IP $\n"
        "# comment\n"
        "192.0.2.10\n"
        "198.51.100.0/24 :127.0.0.2:ISP pool\n"
        "203.0.113.10-13\n"
        "203.0\n"
        "!203.0.113.5\n"
    )
    items = list(parse_listing_file(data))
    entries = [i for i in items if isinstance(i, Entry)]
    errors = [i for i in items if isinstance(i, LineError)]
    assert [str(e.network) for e in entries] == [
        "192.0.2.10/32",
        "198.51.100.0/24",
        "203.0.113.10/31",
        "203.0.113.12/31",
        "203.0.0.0/16",
    ]
    assert entries[0].reason == "Dynamic IP $"
    assert entries[1].reason == "ISP pool"
    assert len(errors) == 1 and errors[0].line == 8
