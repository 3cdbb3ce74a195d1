import pytest

from tmsi.config import ConfigError, load_settings


def test_bad_variables_are_named(monkeypatch):
    monkeypatch.setenv("TMSI_IMAP_PORT", "not-a-port")
    monkeypatch.setenv("TMSI_OWN_NETWORKS", "192.0.2.0/24,203.0.113.7/24")
    with pytest.raises(ConfigError) as info:
        load_settings(_env_file=None)
    message = str(info.value)
    assert "TMSI_IMAP_PORT" in message
    assert "TMSI_OWN_NETWORKS" in message and "host bits" in message


def test_lists_are_comma_separated(monkeypatch):
    monkeypatch.setenv("TMSI_OWN_NETWORKS", "192.0.2.0/28, 2001:db8:ffff::/48")
    monkeypatch.setenv("TMSI_AUTHSERV_IDS", "mx1.example.test,mx2.example.test")
    settings = load_settings(_env_file=None)
    assert [str(n) for n in settings.own_networks] == ["192.0.2.0/28", "2001:db8:ffff::/48"]
    assert settings.authserv_ids == ["mx1.example.test", "mx2.example.test"]
    assert settings.database_url.startswith("sqlite:///instance/")
