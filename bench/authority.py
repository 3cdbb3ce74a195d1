"""Benchmark: authority evaluation of 10,000 DKIM-signed delisting requests with a warm DNS cache.

Setup (not timed): a local Knot serves 50 sender domains ``ispNN.example`` (a DKIM key per domain, made
here with openssl, plus SPF and DMARC records) and PTR names ``static-A.ispNN.example`` for 192.0.2.0/24
and 198.51.100.0/24. Each request is a distinct message from ``noc@noc.ispNN.example`` (a subdomain
sender), signed with dkimpy, delivered from the domain's mail server, naming one address whose PTR name
is under the sender's domain; every tenth names an address whose PTR belongs to a carrier, so RDAP (an
in-memory stand-in for the warm ``rdap_cache``) decides, via the sender's RDAP contact.

Timed: :func:`tmsi.services.authority.evaluate_authority` for every request (header parsing, trust rule,
DKIM verification, SPF for MAIL FROM and HELO, the DMARC record, entitlement, flags), with the DNS
questions going through ``CachingDns`` in front of ``DnspythonDns`` pointed at Knot. One warm-up pass over
one request per domain fills the cache; the timed pass must then ask Knot nothing. Every evaluation must
pass, or the benchmark fails. Rows: our MTA gives no results (everything checked here) and our MTA's
trusted Authentication-Results decide (no DKIM/SPF work).

Signing is set-up cost: dkimpy signs with pure-Python RSA without CRT (15 ms per 2048-bit signature), so
the bench signs through a CRT variant of the same PKCS#1 v1.5 operation (the signatures verify with stock
dkimpy, which is what is measured). Keys are 1024-bit by default (``--bits 2048`` for the other row).

Run: ``.venv/bin/python -m bench.authority [--count N] [--bits B] [--append-readme]``.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dkim
import dkim.crypto

from tests.authority_support import DkimKey, delivered, make_key, request_body
from tests.services.knot import knot_server, soa_header
from tmsi.adapters.authority_dns import CachingDns, DnspythonDns
from tmsi.adapters.rdap import InMemoryRdap
from tmsi.config import Settings
from tmsi.models import CheckResult
from tmsi.services.authority import PtrFacts, evaluate_authority, rdap_facts

ROOT = Path(__file__).resolve().parent
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]
DOMAINS = 50
NETWORKS = ("192.0.2", "198.51.100")


def _crt_sign(hash_obj: Any, private_key: dict[str, int]) -> bytes:
    """PKCS#1 v1.5 signature with the CRT (same bytes as dkimpy's, about 3x faster)."""
    modlen = len(dkim.crypto.int2str(private_key["modulus"]))
    m = dkim.crypto.str2int(dkim.crypto.EMSA_PKCS1_v1_5_encode(hash_obj, modlen))
    p, q = private_key["prime1"], private_key["prime2"]
    s1 = pow(m, private_key["exponent1"], p)
    s2 = pow(m, private_key["exponent2"], q)
    h = (private_key["coefficient"] * (s1 - s2)) % p
    return dkim.crypto.int2str(s2 + h * q, modlen)


def zones(keys: dict[str, DkimKey]) -> dict[str, str]:
    out: dict[str, str] = {}
    for i, (domain, key) in enumerate(keys.items()):
        out[domain] = (
            soa_header(domain)
            + key.zone_line(domain)
            + '@ IN TXT "v=spf1 mx -all"\n'
            + "@ IN MX 10 mail\n"
            + f"mail IN A 203.0.113.{i + 1}\n"
            + 'mail IN TXT "v=spf1 a -all"\n'
            + f'noc IN TXT "v=spf1 ip4:203.0.113.{i + 1} -all"\n'
            + '_dmarc IN TXT "v=DMARC1; p=reject"\n'
        )
    for prefix in NETWORKS:
        a, b, c = prefix.split(".")
        zone = f"{c}.{b}.{a}.in-addr.arpa"
        out[zone] = soa_header(zone) + "".join(
            f"{host} IN PTR static-{host}.isp{host % DOMAINS:02d}.example.\n" for host in range(1, 255)
        )
    return out


def _install_fast_signing() -> None:
    dkim.crypto.RSASSA_PKCS1_v1_5_sign = _crt_sign
    dkim.RSASSA_PKCS1_v1_5_sign = _crt_sign  # dkim imported the name
    dkim.parse_pem_private_key = functools.lru_cache(maxsize=None)(dkim.parse_pem_private_key)


def _sign(job: tuple[bytes, str, str, bytes]) -> bytes:
    body, selector, domain, pem = job
    return dkim.sign(body, selector.encode(), domain.encode(), pem, include_headers=SIGNED) + body


def build_requests(keys: dict[str, DkimKey], count: int, workers: int) -> list[tuple[bytes, str, str, str]]:
    """(signed message, target network, PTR name, sender) per request."""
    domains = list(keys)
    jobs, meta = [], []
    for n in range(count):
        host = n % 254 + 1
        domain = domains[host % DOMAINS]
        prefix = NETWORKS[(n // 254) % 2]
        sender = f"noc@noc.{domain}"
        ptr = f"static-{host}.{domain}"
        if n % 10 == 9:  # an address of the carrier: RDAP names the sender's domain as contact
            ptr = f"dsl-{host}.carrier.example"
        body = request_body(
            sender,
            subject=f"Delist {prefix}.{host}",
            message_id=f"<req-{n}@{domain}>",
            body=f"Hello,\r\nplease delist {prefix}.{host} (request {n}).\r\n",
        )
        jobs.append((body, keys[domain].selector, domain, keys[domain].private_pem))
        meta.append((f"{prefix}.{host}/32", ptr, sender))
    with multiprocessing.Pool(workers, initializer=_install_fast_signing) as pool:
        signed = pool.map(_sign, jobs, chunksize=64)
    return [(raw, *m) for raw, m in zip(signed, meta, strict=True)]


def delivered_requests(
    signed: list[tuple[bytes, str, str, str]], keys: dict[str, DkimKey], with_results: bool
) -> list[tuple[bytes, str, str]]:
    out = []
    for raw, network, ptr, sender in signed:
        domain = sender.split("@noc.", 1)[1]
        index = list(keys).index(domain)
        results = None
        if with_results:
            results = (
                f"dkim=pass header.d={domain} header.s={keys[domain].selector}; spf=pass "
                f"smtp.mailfrom={sender}; dmarc=pass header.from=noc.{domain}"
            )
        out.append(
            (
                delivered(
                    raw,
                    client_ip=f"203.0.113.{index + 1}",
                    helo=f"mail.{domain}",
                    mailfrom=sender,
                    our_results=results,
                ),
                network,
                ptr,
            )
        )
    return out


def run(
    requests: list[tuple[bytes, str, str]], settings: Settings, dns: CachingDns, rdap: InMemoryRdap
) -> dict[str, Any]:
    warm: dict[str, Any] = {}  # stands in for the warm rdap_cache table

    def lookup(net: str) -> Any:
        if net not in warm:
            warm[net] = rdap_facts(None, rdap, net, settings)
        return warm[net]

    # warm-up: one request per domain fills the DNS cache
    seen: set[str] = set()
    for raw, network, ptr in requests:
        domain = ptr.split(".", 1)[1]
        if domain in seen and len(seen) >= DOMAINS:
            break
        seen.add(domain)
        evaluate_authority(raw, [(network, PtrFacts([ptr], "ok", "verification"))], settings, dns, lookup)
    misses_before = dns.misses
    latencies = []
    results: dict[str, int] = {}
    started = time.perf_counter()
    cpu_started = time.process_time()
    for raw, network, ptr in requests:
        t0 = time.perf_counter()
        outcome = evaluate_authority(
            raw, [(network, PtrFacts([ptr], "ok", "verification"))], settings, dns, lookup
        )
        latencies.append(time.perf_counter() - t0)
        results[outcome.result.value] = results.get(outcome.result.value, 0) + 1
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    if results != {CheckResult.PASS.value: len(requests)}:
        raise SystemExit(f"unexpected results: {results}")
    latencies.sort()
    return {
        "count": len(requests),
        "seconds": elapsed,
        "rate": len(requests) / elapsed,
        "cpu_rate": len(requests) / cpu,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "dns_misses": dns.misses - misses_before,
    }


_SHARED: dict[str, Any] = {}


def _run_slice(bounds: tuple[int, int]) -> dict[str, Any]:
    nameserver = _SHARED["nameserver"]
    settings = Settings(authserv_ids=["mx.example.test"], resolvers=[nameserver], _env_file=None)
    dns = CachingDns(DnspythonDns([nameserver], timeout=2.0))
    return run(_SHARED["requests"][bounds[0] : bounds[1]], settings, dns, _SHARED["rdap"])


def run_parallel(
    requests: list[tuple[bytes, str, str]], nameserver: str, rdap: InMemoryRdap, processes: int
) -> dict[str, Any]:
    """The same evaluation split over ``processes`` forked workers, each with its own warmed DNS cache."""
    _SHARED.update(requests=requests, nameserver=nameserver, rdap=rdap)
    step = -(-len(requests) // processes)
    slices = [(i, min(i + step, len(requests))) for i in range(0, len(requests), step)]
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        parts = pool.map(_run_slice, slices)
    count = sum(p["count"] for p in parts)
    seconds = max(p["seconds"] for p in parts)
    return {
        "count": count,
        "seconds": seconds,
        "rate": count / seconds,
        "cpu_rate": count / sum(p["count"] / p["cpu_rate"] for p in parts),
        "p50_ms": statistics.median(p["p50_ms"] for p in parts),
        "p99_ms": max(p["p99_ms"] for p in parts),
        "dns_misses": sum(p["dns_misses"] for p in parts),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument(
        "--bits", type=int, default=1024, help="RSA key size (2048 makes the set-up 4x longer)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes that sign the requests (set-up)")
    parser.add_argument("--processes", type=int, default=2, help="also run the first path on N processes")
    parser.add_argument("--append-readme", action="store_true")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tmsi-bench-authority-") as tmp:
        keys = {
            f"isp{i:02d}.example": make_key(Path(tmp), f"s{i}", f"isp{i:02d}.example", args.bits)
            for i in range(DOMAINS)
        }
    carrier = {
        f"{prefix}.0/24": {
            "handle": f"NET-{prefix}",
            "entities": [
                {
                    "roles": ["abuse"],
                    "vcardArray": ["vcard", [["email", {}, "text", f"abuse@isp{i:02d}.example"]]],
                }
                for i in range(DOMAINS)
            ],
        }
        for prefix in NETWORKS
    }
    rdap = InMemoryRdap(carrier)
    rows = []
    with knot_server(zones(keys)) as knot:
        settings = Settings(
            authserv_ids=["mx.example.test"], resolvers=[knot.nameserver], dns_timeout=2.0, _env_file=None
        )
        signed = build_requests(keys, args.count, args.workers)
        direct = delivered_requests(signed, keys, with_results=False)
        trusted = delivered_requests(signed, keys, with_results=True)
        setup = time.perf_counter() - t0
        for label, requests in (
            ("no MTA results: DKIM + SPF + DMARC checked here", direct),
            ("our MTA's Authentication-Results trusted", trusted),
        ):
            dns = CachingDns(DnspythonDns([knot.nameserver], timeout=2.0))
            row = run(requests, settings, dns, rdap)
            row["label"] = label + ", 1 process"
            rows.append(row)
        if args.processes > 1:
            row = run_parallel(direct, knot.nameserver, rdap, args.processes)
            row["label"] = f"no MTA results, {args.processes} processes"
            rows.append(row)
    table = [
        f"Authority evaluation, {args.count:,} DKIM-signed requests ({args.bits}-bit keys, {DOMAINS} "
        f"domains), warm DNS cache (CachingDns -> Knot on loopback); set-up {setup:.1f} s",
        "",
        "| path | requests | seconds | requests/s (wall) | requests per CPU-second | p50 ms | p99 ms "
        "| DNS queries in the timed pass |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['label']} | {r['count']:,} | {r['seconds']:.2f} | {r['rate']:,.0f} | "
            f"{r['cpu_rate']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['dns_misses']} |"
        )
    load = os.getloadavg()
    table.append("")
    table.append(f"Load average during the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores, shared).")
    text = "\n".join(table)
    print(text)
    if args.append_readme:
        with (ROOT / "README.md").open("a", encoding="utf-8") as fh:
            fh.write(
                f"\n## Authority (bench/authority.py), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
                "\n\n"
                f"{text}\n\nTarget: >= 500 requests/s with everything checked here (no MTA results).\n"
            )
    return 0 if max(r["rate"] for r in rows if r["label"].startswith("no MTA")) >= 500 else 1


if __name__ == "__main__":
    sys.exit(main())
