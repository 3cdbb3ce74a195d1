"""RDAP (RFC 9082/9083) look-ups of IP networks: IANA bootstrap (RFC 9224), HTTP with timeouts.

``HttpRdap`` picks the base URL from the IANA bootstrap files shipped in ``tmsi/data/rdap`` (or
``Settings.rdap_bootstrap_dir``; ``Settings.rdap_base_urls`` overrides them for every network) and fetches
``<base>ip/<network>``.  ``InMemoryRdap`` answers from a dict, for unit tests.  Caching with expiry lives in
the service layer (the ``rdap_cache`` table), since it needs the session.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

MAX_BYTES = 2 * 1024 * 1024
USER_AGENT = "tmsi-rdap/0.1"


class RdapError(Exception):
    """RDAP could not be asked: ``kind`` is timeout | http | invalid | no_server | network."""

    def __init__(self, kind: str, message: str, url: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.url = url


@dataclass(frozen=True)
class RdapResponse:
    status: str  # ok | not_found
    url: str
    data: dict[str, Any]
    http_status: int = 200


class RdapClient(Protocol):
    def urls_for(self, network: str) -> list[str]: ...

    def fetch(self, url: str) -> RdapResponse: ...


# --- bootstrap ----------------------------------------------------------------------------------------
def validate_bootstrap(data: Any) -> str:
    """Check an IANA RDAP bootstrap document; return ``"ipv4"`` or ``"ipv6"``; raise ValueError if invalid."""
    if not isinstance(data, dict) or not isinstance(data.get("services"), list):
        raise ValueError("not an RDAP bootstrap file: no 'services' list")
    versions: set[int] = set()
    for i, service in enumerate(data["services"]):
        if not (
            isinstance(service, list) and len(service) == 2 and all(isinstance(x, list) for x in service)
        ):
            raise ValueError(f"service {i}: expected [[entries], [urls]]")
        entries, urls = service
        for url in urls:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                raise ValueError(f"service {i}: bad URL {url!r}")
        for entry in entries:
            try:
                versions.add(ipaddress.ip_network(str(entry), strict=False).version)
            except ValueError:
                raise ValueError(f"service {i}: bad network {entry!r}") from None
    if len(versions) != 1:
        raise ValueError(
            "a bootstrap file holds either IPv4 or IPv6 networks"
            if versions
            else "the bootstrap file names no networks"
        )
    return "ipv4" if versions == {4} else "ipv6"


def bootstrap_dir(configured: str = "") -> Path:
    if configured:
        return Path(configured)
    return Path(str(resources.files("tmsi.data").joinpath("rdap")))


class Bootstrap:
    """Longest-prefix match of a network to the RDAP base URLs of the registry that serves it."""

    def __init__(self, documents: Iterable[Mapping[str, Any]]) -> None:
        self.entries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, list[str]]] = []
        for doc in documents:
            for entries, urls in doc.get("services", []):
                # RFC 9224 section 3: prefer https when a service lists several URLs.
                ordered = sorted(urls, key=lambda u: not str(u).startswith("https://"))
                for entry in entries:
                    self.entries.append((ipaddress.ip_network(str(entry), strict=False), list(ordered)))
        self.entries.sort(key=lambda e: e[0].prefixlen, reverse=True)

    @classmethod
    def load(cls, directory: Path) -> Bootstrap:
        docs = []
        for name in ("ipv4.json", "ipv6.json"):
            path = directory / name
            if path.exists():
                docs.append(json.loads(path.read_text("utf-8")))
        return cls(docs)

    def base_urls(self, network: str) -> list[str]:
        net = ipaddress.ip_network(network, strict=False)
        for prefix, urls in self.entries:
            if prefix.version == net.version and net.subnet_of(prefix):  # type: ignore[arg-type]
                return urls
        return []


def install_bootstrap(files: Iterable[Path], directory: Path) -> list[tuple[Path, str]]:
    """Validate downloaded IANA files and replace ``ipv4.json``/``ipv6.json`` in ``directory`` atomically."""
    planned: list[tuple[Path, str, bytes]] = []
    for path in files:
        raw = path.read_bytes()
        try:
            kind = validate_bootstrap(json.loads(raw))
        except (ValueError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: {exc}") from None
        planned.append((path, kind, raw))
    directory.mkdir(parents=True, exist_ok=True)
    done = []
    for path, kind, raw in planned:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{kind}.", suffix=".json")
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / f"{kind}.json")
        done.append((path, kind))
    return done


def query_path(network: str) -> str:
    net = ipaddress.ip_network(network, strict=False)
    if net.prefixlen == net.max_prefixlen:
        return f"ip/{net.network_address}"
    return f"ip/{net}"


# --- clients --------------------------------------------------------------------------------------------
class HttpRdap:
    def __init__(
        self, *, base_urls: Iterable[str] = (), bootstrap: Bootstrap | None = None, timeout: float = 5.0
    ) -> None:
        self.base_urls = [u if u.endswith("/") else u + "/" for u in base_urls if u.strip()]
        self.bootstrap = bootstrap or Bootstrap([])
        self.timeout = timeout

    @classmethod
    def from_settings(cls, settings: Any) -> HttpRdap:
        return cls(
            base_urls=settings.rdap_base_urls,
            bootstrap=Bootstrap.load(bootstrap_dir(settings.rdap_bootstrap_dir)),
            timeout=settings.rdap_timeout,
        )

    def urls_for(self, network: str) -> list[str]:
        bases = self.base_urls or self.bootstrap.base_urls(network)
        return [(b if b.endswith("/") else b + "/") + query_path(network) for b in bases]

    def fetch(self, url: str) -> RdapResponse:
        if not url.startswith(("http://", "https://")):
            raise RdapError("invalid", f"not an HTTP URL: {url}", url)
        request = urllib.request.Request(  # noqa: S310 (scheme checked above)
            url, headers={"Accept": "application/rdap+json, application/json", "User-Agent": USER_AGENT}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 (scheme checked)
                body = response.read(MAX_BYTES + 1)
                status = response.status
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return RdapResponse("not_found", url, {}, 404)
            raise RdapError("http", f"HTTP {exc.code} from {url}", url) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise RdapError("timeout", f"no answer from {url} within {self.timeout:g} s", url) from None
            raise RdapError("network", f"{url}: {exc.reason}", url) from None
        except TimeoutError:
            raise RdapError("timeout", f"no answer from {url} within {self.timeout:g} s", url) from None
        except OSError as exc:
            raise RdapError("network", f"{url}: {exc}", url) from None
        if len(body) > MAX_BYTES:
            raise RdapError("invalid", f"answer from {url} is larger than {MAX_BYTES} bytes", url)
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RdapError("invalid", f"answer from {url} is not JSON: {exc}", url) from None
        if not isinstance(data, dict):
            raise RdapError("invalid", f"answer from {url} is not a JSON object", url)
        return RdapResponse("ok", url, data, status)


class InMemoryRdap:
    """RDAP answers from a dict ``{network: rdap json}``; networks in ``failing`` raise a timeout."""

    def __init__(
        self, objects: Mapping[str, dict[str, Any]] | None = None, failing: Iterable[str] = ()
    ) -> None:
        self.objects = {str(ipaddress.ip_network(k, strict=False)): v for k, v in (objects or {}).items()}
        self.failing = {str(ipaddress.ip_network(k, strict=False)) for k in failing}
        self.fetched: list[str] = []

    def urls_for(self, network: str) -> list[str]:
        return [f"memory://{query_path(network)}"]

    def _match(self, network: str) -> str | None:
        net = ipaddress.ip_network(network, strict=False)
        best: str | None = None
        for key in [*self.objects, *self.failing]:
            candidate = ipaddress.ip_network(key)
            if (
                candidate.version == net.version
                and net.subnet_of(candidate)  # type: ignore[arg-type]
                and (best is None or candidate.prefixlen > ipaddress.ip_network(best).prefixlen)
            ):
                best = key
        return best

    def fetch(self, url: str) -> RdapResponse:
        self.fetched.append(url)
        network = url.split("://ip/", 1)[-1]
        key = self._match(network)
        if key is not None and key in self.failing:
            raise RdapError("timeout", f"no answer for {network} (in-memory)", url)
        if key is None:
            return RdapResponse("not_found", url, {}, 404)
        return RdapResponse("ok", url, self.objects[key])
