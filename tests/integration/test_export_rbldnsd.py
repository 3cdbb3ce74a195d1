"""Zone export served by a real rbldnsd: listed addresses answer 127.0.0.2 with the TXT naming the lookup
page; after a partial delisting and a re-export the delisted address is NXDOMAIN, its neighbours stay."""

from __future__ import annotations

import ipaddress
import os
from datetime import datetime, timedelta

import pytest
from sqlalchemy import select

from tmsi.db import unit_of_work, utcnow
from tmsi.domain.listfile import Entry
from tmsi.models import Delisting, ExportRun
from tmsi.services import export
from tmsi.services.delist import delist
from tmsi.services.listings import import_entries

pytestmark = pytest.mark.integration
ZONE = "dul.example.test"


def _list(session, *networks: str) -> None:
    import_entries(
        session, [Entry(i, ipaddress.ip_network(n), "generic rDNS", None) for i, n in enumerate(networks)]
    )


def test_exported_zone_answers_and_a_partial_delisting_takes_effect(session, settings, rbldnsd):
    _list(session, "198.51.100.0/24", "192.0.2.10", "2001:db8:1::/48")
    first = export.export_zone(session, settings)
    assert first["count_v4"] == 2 and first["count_v6"] == 1
    server = rbldnsd(ZONE, settings.zone_dir)

    assert server.query("198.51.100.77") == ["127.0.0.2"]
    lookup = f"{settings.base_url}/lookup?ip=198.51.100.77"
    assert server.query("198.51.100.77", "TXT") == [f"Dynamic IP 198.51.100.77 - see {lookup}"]
    assert server.query("192.0.2.10") == ["127.0.0.2"]
    assert server.query("2001:db8:1::7") == ["127.0.0.2"]
    assert server.query("192.0.2.11") is None

    delist(session, "198.51.100.77", actor="ana@example.test")
    delist(session, "2001:db8:1:7::/64", actor="ana@example.test")
    second = export.export_zone(session, settings)
    assert second["serial"] > first["serial"]
    assert second["count_v4"] == 1 + 8 and second["count_v6"] == 16
    server.reload()
    assert server.wait_for("198.51.100.77", None) is None
    for neighbour in ("198.51.100.76", "198.51.100.78", "198.51.100.0", "198.51.100.255"):
        assert server.query(neighbour) == ["127.0.0.2"], neighbour
    assert server.query("2001:db8:1:7::1") is None
    assert server.query("2001:db8:1:8::1") == ["127.0.0.2"]


def test_same_second_reexport_is_picked_up(session, settings, rbldnsd):
    """rbldnsd only sees a new mtime (whole seconds) or size: the export forces a new mtime."""
    _list(session, "192.0.2.20", "192.0.2.21")
    export.export_zone(session, settings)
    server = rbldnsd(ZONE, settings.zone_dir)
    assert server.query("192.0.2.21") == ["127.0.0.2"]
    path = settings.zone_dir / f"{ZONE}.ip4set"
    before = os.stat(path)
    delist(session, "192.0.2.21")
    _list(session, "192.0.2.22")  # same number of entries, same file size
    export.export_zone(session, settings)
    after = os.stat(path)
    assert after.st_size == before.st_size
    assert int(after.st_mtime) > int(before.st_mtime)
    server.reload()
    assert server.wait_for("192.0.2.21", None) is None
    assert server.query("192.0.2.22") == ["127.0.0.2"]


def test_combined_file_for_the_cli(session, settings, rbldnsd, tmp_path):
    _list(session, "203.0.113.0/25", "2001:db8:2::/48")
    data = tmp_path / "combined"
    data.mkdir()
    result = export.export_zone(session, settings, data / "dul.combined")
    assert result["count_v4"] == 1 and result["count_v6"] == 1
    server = rbldnsd(ZONE, data, datasets=[("combined", "dul.combined")])
    assert server.query("203.0.113.5") == ["127.0.0.2"]
    assert server.query("2001:db8:2::1") == ["127.0.0.2"]
    assert server.query("203.0.113.200") is None


def test_debounced_job_exports_once_and_links_the_delistings(factory, settings, rbldnsd):
    settings.export_debounce_seconds = 30
    with unit_of_work(factory) as session:
        _list(session, "192.0.2.0/28")
    with unit_of_work(factory) as session:
        delist(session, "192.0.2.3", actor="ana@example.test")
        delist(session, "192.0.2.4", actor="ana@example.test")
    with unit_of_work(factory) as session:
        (run,) = session.scalars(select(ExportRun)).all()
        requested = run.requested_at
    assert export.run_pending_export(settings, factory, now=requested + timedelta(seconds=5)) == {
        "exported": False
    }
    done = export.run_pending_export(settings, factory, now=requested + timedelta(seconds=31))
    assert done["exported"] and done["delistings"] == 2
    assert export.run_pending_export(settings, factory, force=True) == {"exported": False}
    with unit_of_work(factory) as session:
        run = session.scalars(select(ExportRun)).one()
        assert run.status == "done" and run.serial == done["serial"] and run.finished_at is not None
        for row in session.scalars(select(Delisting)):
            assert row.export_id == run.id
            assert row.propagation_deadline is not None and row.propagation_deadline > utcnow()
    server = rbldnsd(ZONE, settings.zone_dir)
    assert server.query("192.0.2.3") is None
    assert server.query("192.0.2.5") == ["127.0.0.2"]


def test_export_hook_runs_and_its_failure_is_recorded(factory, settings, tmp_path):
    marker = tmp_path / "hook-ran"
    settings.export_hook = f"sh -c 'echo $TMSI_EXPORT_SERIAL > {marker}'"
    with unit_of_work(factory) as session:
        _list(session, "192.0.2.40")
        export.request_export(session, "test")
    done = export.run_pending_export(settings, factory, force=True)
    assert marker.read_text().strip() == str(done["serial"])

    settings.export_hook = "sh -c 'echo broken >&2; exit 3'"
    with unit_of_work(factory) as session:
        export.request_export(session, "test again")
    failed = export.run_pending_export(settings, factory, force=True)
    assert "exited 3" in failed["error"] and "broken" in failed["error"]
    with unit_of_work(factory) as session:
        last = session.scalars(select(ExportRun).order_by(ExportRun.id.desc())).first()
        assert last is not None and last.status == "failed" and "broken" in (last.error or "")
    assert (settings.zone_dir / f"{ZONE}.ip4set").read_text().count("192.0.2.40") == 1


def test_exported_lines_match_the_domain_rendering(session, settings):
    from tmsi.domain import zone

    _list(session, "192.0.2.10", "198.51.100.128/25", "192.0.2.64/26", "2001:db8::25", "2001:db8:5::/48")
    result = export.export_zone(session, settings)
    for version, networks in (
        (4, ["192.0.2.10/32", "192.0.2.64/26", "198.51.100.128/25"]),
        (6, ["2001:db8::25/128", "2001:db8:5::/48"]),
    ):
        path = settings.zone_dir / zone.dataset_file(ZONE, version)
        expected = zone.render_dataset(
            networks,
            zone=ZONE,
            kind=zone.DATASETS[version],
            serial=result["serial"],
            generated_at=datetime.fromisoformat(result["generated_at"]),
            txt=zone.txt_template(settings.zone_txt_template, settings.base_url),
        )
        assert path.read_text() == "".join(expected)
        assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_a_run_lost_with_its_worker_is_marked_failed(factory, settings):
    long_ago = utcnow() - timedelta(hours=3)
    with unit_of_work(factory) as session:
        session.add(ExportRun(requested_at=long_ago, started_at=long_ago, status="running", reason="lost"))
    assert export.run_pending_export(settings, factory) == {"exported": False}
    with unit_of_work(factory) as session:
        (run,) = session.scalars(select(ExportRun)).all()
        assert run.status == "failed" and "abandoned" in (run.error or "")
