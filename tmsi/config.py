"""One Settings object built from ``TMSI_*`` environment variables (and an optional ``.env``).

Every variable is declared here with its type and default; pydantic coerces and validates it, and
:func:`load_settings` turns a validation failure into a message naming the variable and the fix.
Tests build ``Settings(...)`` directly instead of touching ``os.environ``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tmsi.domain.networks import IPNetwork

CommaList = Annotated[list[str], NoDecode]
NetworkList = Annotated[list[IPNetwork], NoDecode]


class ConfigError(RuntimeError):
    """Configuration that cannot work; the message names each bad variable and how to fix it."""


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TMSI_", env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=False
    )

    # --- core -------------------------------------------------------------------------------------
    database_url: str = Field(
        "sqlite:///instance/tmsi.db", description="SQLAlchemy URL; postgresql+psycopg://…"
    )
    secret_key: str = Field("dev-insecure-change-me", description="Flask session/CSRF signing key")
    environment: Literal["development", "production", "test"] = "development"
    base_url: str = Field(
        "http://127.0.0.1:8000", description="public URL of the web UI, used in mail and TXT"
    )
    log_level: str = "INFO"
    log_json: bool = False
    instance_path: Path = Path("instance")

    # --- mailbox (ingest) -------------------------------------------------------------------------
    mailbox_address: str = Field("dul@example.test", description="our dul@ address")
    mailbox_kind: Literal["imap", "maildir", "none"] = "none"
    imap_host: str = "127.0.0.1"
    imap_port: int = 993
    imap_user: str = ""
    imap_password: str = ""
    imap_tls: Literal["implicit", "starttls", "none"] = "implicit"
    imap_verify_tls: bool = True
    imap_ca_file: str = ""
    imap_source_folder: str = "INBOX"
    imap_processed_folder: str = "Processed"
    imap_quarantine_folder: str = "Quarantine"
    imap_batch_size: int = Field(200, ge=1, le=5000)
    ingest_defer: bool = Field(
        False, description="the poller only stores mail; workers process it (job_process_stored), in parallel"
    )
    ingest_parse_workers: int = Field(
        0,
        ge=0,
        le=16,
        description="processes that parse the next fetched batch while the poller stores the current one "
        "(0: the poller parses)",
    )
    maildir_path: Path = Path("instance/maildir")
    own_networks: NetworkList = Field(default_factory=list, description="our own infrastructure CIDRs")
    authserv_ids: CommaList = Field(default_factory=list, description="our MTA's authserv-ids")
    dnsbl_zone: str = "dul.example.test"
    max_target_prefix_v4: int = Field(16, ge=0, le=32)
    max_target_prefix_v6: int = Field(48, ge=0, le=128)
    autoreply_per_sender_per_hour: int = Field(5, ge=0)
    max_message_bytes: int = Field(50 * 1024 * 1024, ge=1024)

    # --- outgoing mail ----------------------------------------------------------------------------
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_tls: Literal["implicit", "starttls", "none"] = "none"
    smtp_timeout: float = 30.0
    smtp_verify_tls: bool = Field(True, description="verify the SMTP server certificate (STARTTLS/implicit)")
    smtp_ca_file: str = ""
    mail_domain: str = Field("example.test", description="domain of our Message-IDs")
    outbox_max_attempts: int = Field(12, ge=1)

    # --- DNS verification -------------------------------------------------------------------------
    resolver_kind: Literal["dns", "zonefile"] = "dns"
    resolvers: CommaList = Field(default_factory=lambda: ["127.0.0.1"], description="host or host:port")
    resolver_zone_files: CommaList = Field(
        default_factory=list, description="zone files for resolver_kind=zonefile"
    )
    dns_timeout: float = Field(2.0, gt=0)
    dns_retries: int = Field(2, ge=0)
    dns_max_in_flight: int = Field(150, ge=1)
    dns_rate_limit: float = Field(20000.0, gt=0, description="queries/s per resolver")
    dns_workers: int = Field(2, ge=1, le=16, description="processes sharing a range of >= 8192 addresses")
    ipv6_sample_size: int = Field(16, ge=1)
    reverify_schedule: CommaList = Field(
        default_factory=lambda: ["15m", "1h", "4h", "12h"] + ["1d"] * 14,
        description="delays between re-checks of a failing target",
    )
    rdns_rules_file: str = Field("", description="extra per-ISP classifier rules (TOML)")
    auto_delist: bool = Field(False, description="delist automatically when authority and verification pass")

    # --- authority --------------------------------------------------------------------------------
    rdap_bootstrap_dir: str = ""
    rdap_base_urls: CommaList = Field(default_factory=list)
    rdap_timeout: float = 5.0
    rdap_cache_seconds: int = 86400
    authority_own_hosts: CommaList = Field(
        default_factory=list, description="host names of our MTAs/mail stores besides the authserv-ids"
    )
    authority_dns_cache_seconds: int = Field(
        3600, ge=0, description="upper bound on cached DKIM/SPF/DMARC answers"
    )
    dkim_min_key_bits: int = Field(1024, ge=512)

    # --- propagation ------------------------------------------------------------------------------
    zone_dir: Path = Path("instance/zone")
    zone_txt_template: str = "Dynamic IP $ - see {base_url}/lookup?ip=$"
    export_hook: str = Field("", description="command run after each export (reload, rsync)")
    export_debounce_seconds: float = 30.0
    dnsbl_nameservers: CommaList = Field(default_factory=list, description="host:port of our DNSBL servers")
    propagation_deadline_seconds: int = 900
    regression_interval_days: int = 30
    public_lookup_rate_limit: str = Field("60 per minute", description="per client: /lookup and its API")
    public_check_rate_limit: str = Field("6 per minute", description="per client: live rDNS checks")

    # --- web, workers -----------------------------------------------------------------------------
    redis_url: str = ""
    ratelimit_storage_url: str = "memory://"
    huey_storage: Literal["sqlite", "redis", "memory"] = "sqlite"
    session_idle_minutes: int = 60
    session_cookie_secure: bool = False
    trusted_proxies: int = Field(
        0,
        ge=0,
        le=5,
        description="reverse proxies in front of the web server that set X-Forwarded-For/-Proto/-Host; "
        "0: none, the headers are ignored (a client could forge them)",
    )
    db_pool_size: int = Field(
        5,
        ge=1,
        le=200,
        description="database connections each pool keeps per process: at least the process's threads "
        "(TMSI_WEB_THREADS for gunicorn); requests beyond it open and close a connection each",
    )
    queue_cache_seconds: float = Field(
        2.0, ge=0, le=2, description="reuse a rendered queue table this long (per process); 0: never"
    )
    poll_interval_seconds: int = 60
    retention_days: int = Field(
        0, ge=0, description="purge raw mail of closed cases after N days; 0 keeps it"
    )
    demo: bool = False
    job_intervals: CommaList = Field(
        default_factory=list, description="per-job interval overrides: send_outbox=10s,reverify_due=1m"
    )

    @field_validator("own_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        items = _split_commas(value)
        return [ipaddress.ip_network(item, strict=True) if isinstance(item, str) else item for item in items]

    @field_validator(
        "authserv_ids",
        "resolvers",
        "resolver_zone_files",
        "reverify_schedule",
        "rdap_base_urls",
        "dnsbl_nameservers",
        "authority_own_hosts",
        "job_intervals",
        mode="before",
    )
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def load_settings(**overrides: Any) -> Settings:
    """Build Settings from the environment; on error raise ConfigError naming each variable."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            lines.append(f"TMSI_{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None
