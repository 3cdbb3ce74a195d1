"""DNS verification of case targets: live checks with evidence, whole ranges, storage, re-verification.

Reading order: :func:`check_addresses` (the judgement on a batch of addresses: PTR, RFC 2317 CNAME,
FCrDNS, name classification), :func:`verify_network` (a whole target, chunked through the batching
resolver, progress, summary), :func:`verify_target` (one stored run), :func:`settle_case` (what the
outcome means for the case), :func:`reverify_due` (the schedule), and the ``job_*`` entry points.

A check is ``pass``, ``fail`` or ``unverifiable``. Only definite answers fail an address (NXDOMAIN or
NODATA for the PTR, a forward name without the address, a name the classifier rejects). Timeouts,
SERVFAIL, REFUSED, FORMERR and lame replies make it ``unverifiable``: never passed, never failed.

What is stored (``dns_checks``): every failing and unverifiable address with its full evidence; passing
addresses too while the target has at most ``STORE_PASSING_UP_TO`` addresses. Above that, passing
addresses live only in the run summary, compressed into ranges (``passing``), so that a /16 that passes
does not write 65,536 rows of identical-looking evidence; one passing address's evidence is kept there
as an example.

Live progress: a run row is committed with status ``running`` before the DNS work starts; the job wires
``progress_cb`` to :class:`ProgressWriter`, which writes done/passed/failed/unverifiable counts in its own
short transactions (at most every ``every_seconds``), so the UI can poll the run while it goes.

Splitting a long range over several workers: :func:`job_plan_chunks` creates the run and returns
``(run_id, chunk_cidr)`` work items (:func:`plan_chunks`); each worker calls :func:`job_verify_chunk`,
which verifies its chunk, stores its checks and merges its counts and ranges into the run under a row
lock; the worker that completes the last chunk finalizes the run, the target and the case.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import logging
import multiprocessing
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from tmsi.adapters.resolver import DnsAnswer, Resolver, make_resolver
from tmsi.config import Settings, load_settings
from tmsi.db import unit_of_work, utcnow
from tmsi.domain import rdns
from tmsi.domain.networks import IPAddress, IPNetwork, compress_addresses, parse_network
from tmsi.models import (
    Case,
    CaseStatus,
    CaseTarget,
    CheckResult,
    DnsCheck,
    NameVerdict,
    RunStatus,
    TargetStatus,
    VerificationRun,
)
from tmsi.services.delist import delist_targets

log = logging.getLogger(__name__)

STORE_PASSING_UP_TO = 256
CHUNK = 4096  # addresses per resolver batch: large enough to keep the sockets full, small for progress
MAX_CNAME_HOPS = 4
CLAIM_LEASE = timedelta(minutes=15)
CHECKED_STATUSES = frozenset(
    {TargetStatus.PENDING, TargetStatus.PASS, TargetStatus.FAIL, TargetStatus.UNVERIFIABLE}
)
OPEN_CASE_STATES = frozenset(
    {CaseStatus.NEW, CaseStatus.VERIFYING, CaseStatus.AWAITING_REQUESTER, CaseStatus.READY_FOR_DECISION}
)

ProgressCallback = Callable[["Progress"], None]
DelistFunc = Callable[..., Any]


# --- one address --------------------------------------------------------------------------------


@dataclass
class AddressResult:
    """The verdict on one address, why, and the answers it rests on."""

    address: str
    result: CheckResult
    headline: str  # the reason used to group addresses in summaries
    reasons: list[str]
    ptr_names: list[str] = field(default_factory=list)
    name_verdict: NameVerdict = NameVerdict.NONE
    answers: list[DnsAnswer] = field(default_factory=list)
    min_ttl: int | None = None  # of the answers that failed it (re-check no sooner), else of all answers
    checked_at: float = 0.0

    @property
    def passes(self) -> bool:
        return self.result == CheckResult.PASS

    def evidence(self) -> dict[str, Any]:
        return {"queries": [a.as_evidence() for a in self.answers]}

    def as_dict(self, *, full_evidence: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "ip": self.address,
            "result": self.result.value,
            "verdict": self.name_verdict.value,
            "ptr": self.ptr_names,
            "reasons": self.reasons,
            "min_ttl": self.min_ttl,
        }
        if full_evidence:
            data["evidence"] = self.evidence()
        else:
            data["evidence"] = [
                {
                    "q": f"{a.qname} {a.qtype}",
                    "rcode": a.rcode,
                    "error": str(a.error) if a.error else None,
                    "answers": [f"{r.name} {r.ttl} {r.rdtype} {r.value}" for r in a.records],
                    "resolver": a.resolver,
                    "ms": round(a.elapsed_ms, 1),
                }
                for a in self.answers
            ]
        return data


def reverse_name(address: IPAddress) -> str:
    if address.version == 4:
        return ".".join(reversed(str(address).split("."))) + ".in-addr.arpa."
    return ".".join(reversed(address.exploded.replace(":", ""))) + ".ip6.arpa."


def _describe_error(step: str, answer: DnsAnswer) -> str:
    where = f" from {answer.resolver}" if answer.resolver else ""
    detail = f" ({answer.detail})" if answer.detail else ""
    return f"{step} {answer.qname} {answer.qtype}: {answer.error}{detail}{where}: could not check"


class _Lookups:
    """Runs questions through the resolver in rounds, following CNAMEs the answers leave open."""

    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.cache: dict[tuple[str, str], DnsAnswer] = {}

    def run(self, questions: Iterable[tuple[str, str]]) -> None:
        todo = list(dict.fromkeys(q for q in questions if q not in self.cache))
        for _ in range(MAX_CNAME_HOPS + 1):
            if not todo:
                return
            for question, answer in zip(todo, self.resolver.resolve_many(todo), strict=True):
                self.cache[question] = answer
            follow: list[tuple[str, str]] = []
            for name, rdtype in todo:
                answer = self.cache[(name, rdtype)]
                if (
                    answer.ok
                    and answer.rcode == "NOERROR"
                    and any(r.rdtype == "CNAME" for r in answer.records)
                ):
                    owner, found, chain = answer.chase(rdtype)
                    if chain and not found and (owner, rdtype) not in self.cache:
                        follow.append((owner, rdtype))
            todo = list(dict.fromkeys(follow))

    def chain(self, name: str, rdtype: str) -> tuple[list[DnsAnswer], list[str], list[str]]:
        """(answers along the chain, final values, CNAMEs followed) for a question already run."""
        answers: list[DnsAnswer] = []
        cnames: list[str] = []
        key = (name, rdtype)
        for _ in range(MAX_CNAME_HOPS + 1):
            answer = self.cache.get(key)
            if answer is None:
                break
            answers.append(answer)
            if not answer.ok:
                return answers, [], cnames
            owner, found, chain = answer.chase(rdtype)
            cnames += chain
            if found or not chain:
                return answers, [r.value for r in found], cnames
            key = (owner, rdtype)
        return answers, [], cnames


def check_addresses(
    resolver: Resolver, addresses: Sequence[IPAddress], *, rules: rdns.Rules | None = None
) -> list[AddressResult]:
    """Verify a batch of addresses: all PTR look-ups at once, then all forward look-ups at once."""
    lookups = _Lookups(resolver)
    reverse = [reverse_name(a) for a in addresses]
    lookups.run((name, "PTR") for name in reverse)
    forward: list[tuple[str, str]] = []
    ptr_chains = []
    for address, name in zip(addresses, reverse, strict=True):
        chain = lookups.chain(name, "PTR")
        ptr_chains.append(chain)
        kind = "A" if address.version == 4 else "AAAA"
        forward += [(ptr, kind) for ptr in chain[1]]
    lookups.run(forward)
    now = time.time()
    return [
        _judge(address, chain, lookups, rules, now)
        for address, chain in zip(addresses, ptr_chains, strict=True)
    ]


def check_address(
    resolver: Resolver, address: str | IPAddress, *, rules: rdns.Rules | None = None
) -> AddressResult:
    """Verify one address (see check_addresses)."""
    addr = ipaddress.ip_address(address) if isinstance(address, str) else address
    return check_addresses(resolver, [addr], rules=rules)[0]


def _ttl(answers: Iterable[DnsAnswer]) -> int | None:
    ttls = [t for t in (a.min_ttl() for a in answers) if t is not None]
    return min(ttls) if ttls else None


def _judge(
    address: IPAddress,
    ptr_chain: tuple[list[DnsAnswer], list[str], list[str]],
    lookups: _Lookups,
    rules: rdns.Rules | None,
    now: float,
) -> AddressResult:
    text = str(address)
    ptr_answers, names, cnames = ptr_chain
    evidence = list(ptr_answers)
    via = f" (classless delegation via CNAME {' -> '.join(cnames)})" if cnames else ""
    broken = next((a for a in ptr_answers if not a.ok), None)
    if broken is not None or not ptr_answers:
        reason = _describe_error("PTR look-up", broken) if broken else "PTR look-up: no answer"
        return AddressResult(
            text,
            CheckResult.UNVERIFIABLE,
            f"PTR look-up: {broken.error if broken else 'none'}",
            [reason],
            answers=evidence,
            checked_at=now,
        )
    if not names:
        last = ptr_answers[-1]
        how = "NXDOMAIN" if last.rcode == "NXDOMAIN" else "no PTR records (NODATA)"
        return AddressResult(
            text,
            CheckResult.FAIL,
            "no PTR record",
            [f"no PTR record: {how}{via}"],
            answers=evidence,
            min_ttl=_ttl([last]),
            checked_at=now,
        )

    verdict = (
        rdns.classify_all(address, names, rules) if rules is not None else rdns.classify_all(address, names)
    )
    fails: list[str] = []
    unknown: list[str] = []
    failing_answers: list[DnsAnswer] = []
    headline = ""
    kind = "A" if address.version == 4 else "AAAA"
    for name in names:
        answers, values, _fwd_cnames = lookups.chain(name, kind)
        evidence += answers
        bad = next((a for a in answers if not a.ok), None)
        if bad is not None or not answers:
            unknown.append(
                _describe_error("forward look-up", bad) if bad else f"forward look-up {name}: no answer"
            )
            continue
        if not values:
            fails.append(f"PTR name {name} has no {kind} record ({answers[-1].rcode}): not forward-confirmed")
            headline = headline or f"PTR name has no {kind} record"
            failing_answers += answers
        elif not any(_same_address(v, address) for v in values):
            fails.append(
                f"PTR name {name} resolves to {', '.join(values)}, not {text}: not forward-confirmed"
            )
            headline = headline or "PTR name resolves to other addresses"
            failing_answers += answers
    if not verdict.passes:
        fails += verdict.reasons
        headline = f"PTR name is {verdict.verdict.value}"  # what the ISP must change first
        failing_answers += ptr_answers
    if fails:
        return AddressResult(
            text,
            CheckResult.FAIL,
            headline,
            fails + unknown,
            names,
            verdict.verdict,
            evidence,
            _ttl(failing_answers),
            now,
        )
    if unknown:
        return AddressResult(
            text,
            CheckResult.UNVERIFIABLE,
            "forward look-up failed",
            unknown + verdict.reasons,
            names,
            verdict.verdict,
            evidence,
            None,
            now,
        )
    reasons = [f"forward-confirmed{via}", *verdict.reasons]
    return AddressResult(
        text, CheckResult.PASS, "pass", reasons, names, verdict.verdict, evidence, _ttl(evidence), now
    )


def _same_address(value: str, address: IPAddress) -> bool:
    try:
        return ipaddress.ip_address(value) == address
    except ValueError:
        return False


# --- a whole range ------------------------------------------------------------------------------


@dataclass
class Progress:
    done: int
    total: int
    passed: int
    failed: int
    unverifiable: int


@dataclass
class RangeSummary:
    """The outcome of a target: counts, failing addresses grouped by reason as ranges, sampling note."""

    network: str
    total: int  # addresses in the network (may be astronomically large for IPv6)
    checked: int = 0
    passed: int = 0
    failed: int = 0
    unverifiable: int = 0
    failing: dict[str, list[IPAddress]] = field(default_factory=dict)
    unchecked: dict[str, list[IPAddress]] = field(default_factory=dict)
    passing: list[IPAddress] = field(default_factory=list)
    sampled: bool = False
    note: str = ""
    elapsed: float = 0.0
    min_failing_ttl: int | None = None
    results: list[AddressResult] = field(default_factory=list)

    @property
    def result(self) -> CheckResult:
        if self.failed:
            return CheckResult.FAIL
        if self.unverifiable or not self.checked:
            return CheckResult.UNVERIFIABLE
        return CheckResult.PASS

    def add(self, item: AddressResult, address: IPAddress) -> None:
        self.checked += 1
        if item.result == CheckResult.PASS:
            self.passed += 1
            self.passing.append(address)
            return
        groups = self.failing if item.result == CheckResult.FAIL else self.unchecked
        if item.result == CheckResult.FAIL:
            self.failed += 1
            if item.min_ttl is not None:
                self.min_failing_ttl = (
                    item.min_ttl if self.min_failing_ttl is None else min(self.min_failing_ttl, item.min_ttl)
                )
        else:
            self.unverifiable += 1
        groups.setdefault(item.headline, []).append(address)

    def as_dict(self) -> dict[str, Any]:
        def grouped(groups: dict[str, list[IPAddress]]) -> list[dict[str, Any]]:
            return [
                {"reason": reason, "count": len(addrs), "ranges": compress_addresses(addrs)}
                for reason, addrs in sorted(groups.items(), key=lambda kv: -len(kv[1]))
            ]

        return {
            "network": self.network,
            "result": self.result.value,
            "total": self.total,
            "checked": self.checked,
            "passed": self.passed,
            "failed": self.failed,
            "unverifiable": self.unverifiable,
            "failing": grouped(self.failing),
            "unverifiable_groups": grouped(self.unchecked),
            "passing": compress_addresses(self.passing),
            "sampled": self.sampled,
            "note": self.note,
            "elapsed_s": round(self.elapsed, 3),
            "rate": round(self.checked / self.elapsed, 1) if self.elapsed else None,
            "min_failing_ttl": self.min_failing_ttl,
        }

    def failing_rows(self, limit: int = 200) -> list[dict[str, str]]:
        """(address or range, reason) rows for the still_failing reply: exact addresses, runs as ranges."""
        rows: list[dict[str, str]] = []
        for groups, prefix in ((self.failing, ""), (self.unchecked, "could not check: ")):
            for reason, addrs in groups.items():
                rows += [{"address": r, "reason": prefix + reason} for r in compress_addresses(addrs)]
        return rows[:limit]


def addresses_to_check(
    network: IPNetwork, *, sample_v6: int, named_addresses: Iterable[IPAddress] = ()
) -> tuple[list[IPAddress], bool, str]:
    """Which addresses a target means: every address of an IPv4 network. An IPv6 prefix is never
    enumerated: the addresses the requester named inside it, or, when none were named, a sample of
    ``sample_v6`` (half the first addresses of the prefix, half pseudo-random ones seeded by the prefix,
    so that a re-check looks at the same addresses). Returns (addresses, sampled, note)."""
    if network.version == 4 or network.num_addresses <= sample_v6:
        return list(network), False, ""
    named = sorted({a for a in named_addresses if a.version == 6 and a in network}, key=int)
    if named:
        note = (
            f"IPv6 prefix {network} is not enumerated: checked the {len(named)} address(es) the requester "
            "named inside it"
        )
        return list(named), True, note
    first = max(1, sample_v6 // 2)
    base = int(network.network_address)
    chosen = [ipaddress.IPv6Address(base + i) for i in range(1, first + 1)]
    rng = random.Random(str(network))
    while len(chosen) < sample_v6:
        candidate = ipaddress.IPv6Address(base + rng.randrange(1, network.num_addresses))
        if candidate not in chosen:
            chosen.append(candidate)
    note = (
        f"IPv6 prefix {network} is not enumerated and the requester named no address in it: checked a "
        f"sample of {len(chosen)} ({first} first addresses, {len(chosen) - first} pseudo-random, seeded by "
        "the prefix); name the addresses that send mail to have exactly those checked"
    )
    return list(chosen), True, note


def verify_network(
    resolver: Resolver,
    network: IPNetwork | str,
    progress_cb: ProgressCallback | None = None,
    *,
    sample_v6: int = 16,
    named_addresses: Iterable[IPAddress] = (),
    rules: rdns.Rules | None = None,
    chunk_size: int = CHUNK,
    keep_passing: bool = True,
    workers: int = 1,
) -> RangeSummary:
    """Verify every address of an IPv4 network (an IPv6 prefix: named + sampled), chunk by chunk.

    ``summary.results`` keeps every non-passing result, and the passing ones only with ``keep_passing``
    (otherwise just the first, as an example). With ``workers`` > 1 and no passing results to keep, a
    large range is shared by that many processes (each with its own sockets and ``1/workers`` of the
    rate limit): classification and wire parsing are CPU-bound, so one process cannot use both cores.
    """
    net = parse_network(network, strict=False) if isinstance(network, str) else network
    addresses, sampled, note = addresses_to_check(net, sample_v6=sample_v6, named_addresses=named_addresses)
    summary = RangeSummary(str(net), net.num_addresses, sampled=sampled, note=note)
    started = time.monotonic()
    chunks = [addresses[start : start + chunk_size] for start in range(0, len(addresses), chunk_size)]

    def take(chunk: Sequence[IPAddress], items: Sequence[AddressResult | None]) -> None:
        for address, item in zip(chunk, items, strict=True):
            if item is None or item.passes:
                summary.add(_PASSED, address)
                if item is not None and (keep_passing or summary.passed == 1):
                    summary.results.append(item)
            else:
                summary.add(item, address)
                summary.results.append(item)
        if progress_cb is not None:
            progress_cb(
                Progress(
                    summary.checked, len(addresses), summary.passed, summary.failed, summary.unverifiable
                )
            )

    if workers > 1 and not keep_passing and len(addresses) >= PARALLEL_FROM:
        worker_resolver = resolver.for_workers(workers) if hasattr(resolver, "for_workers") else resolver
        # fork is cheap (no re-import) but unsafe once other threads exist (a job worker): forkserver then
        context = multiprocessing.get_context("fork" if threading.active_count() == 1 else "forkserver")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            futures = {pool.submit(_check_compact, worker_resolver, chunk, rules): chunk for chunk in chunks}
            for future in concurrent.futures.as_completed(futures):
                take(futures[future], future.result())
        summary.results.sort(key=lambda r: int(ipaddress.ip_address(r.address)))
    else:
        for chunk in chunks:
            take(chunk, check_addresses(resolver, chunk, rules=rules))
    summary.elapsed = time.monotonic() - started
    return summary


PARALLEL_FROM = 8192
_PASSED = AddressResult("", CheckResult.PASS, "pass", [])


def _check_compact(
    resolver: Resolver, chunk: Sequence[IPAddress], rules: rdns.Rules | None
) -> list[AddressResult | None]:
    """check_addresses in a worker process: passing results come back as None (cheap to send), except
    the chunk's first one (the example kept in the summary)."""
    results = check_addresses(resolver, chunk, rules=rules)
    first = next((i for i, r in enumerate(results) if r.passes), -1)
    return [r if (not r.passes or i == first) else None for i, r in enumerate(results)]


def rules_for(settings: Settings) -> rdns.Rules | None:
    """The classifier rules: the packaged ones plus the lead's per-ISP file, if configured."""
    return rdns.load_rules(settings.rdns_rules_file) if settings.rdns_rules_file else None


# --- storing a run ------------------------------------------------------------------------------


def target_network(target: CaseTarget) -> IPNetwork:
    return parse_network(target.network, strict=False)


def named_addresses_for(target: CaseTarget) -> list[IPAddress]:
    """Single addresses the requester named inside this target (other targets of the case, or noted)."""
    network = target_network(target)
    named: list[IPAddress] = []
    for other in target.case.targets if target.case is not None else []:
        if other.id != target.id and other.prefixlen == (32 if other.version == 4 else 128):
            addr = ipaddress.ip_address(other.network.split("/")[0])
            if addr in network:
                named.append(addr)
    for text in (target.summary or {}).get("named_addresses", []):
        with contextlib.suppress(ValueError):
            named.append(ipaddress.ip_address(text))
    return named


def start_run(
    session: Session,
    target: CaseTarget,
    trigger: str,
    actor: str,
    *,
    now: datetime | None = None,
    settings: Settings | None = None,
) -> VerificationRun:
    """A run row in status ``running`` (the caller commits it first when the UI should see progress)."""
    settings = settings or load_settings()
    network = target_network(target)
    addresses, _sampled, _note = addresses_to_check(
        network, sample_v6=settings.ipv6_sample_size, named_addresses=named_addresses_for(target)
    )
    run = VerificationRun(
        case_id=target.case_id,
        target_id=target.id,
        network=target.network,
        trigger=trigger[:16],
        status=RunStatus.RUNNING,
        result=CheckResult.PENDING,
        total=len(addresses),
        done=0,
        summary={},
        started_at=now or utcnow(),
        requested_by=actor[:255],
    )
    session.add(run)
    session.flush()
    return run


def _check_row(item: AddressResult, run: VerificationRun, target: CaseTarget) -> dict[str, Any]:
    addr = ipaddress.ip_address(item.address)
    return {
        "run_id": run.id,
        "target_id": target.id,
        "address": item.address,
        "version": addr.version,
        "address_key": addr.packed,
        "result": item.result,
        "name_verdict": item.name_verdict,
        "ptr_names": item.ptr_names,
        "reasons": item.reasons,
        "evidence": item.evidence(),
        "min_ttl": item.min_ttl,
        "checked_at": datetime.fromtimestamp(item.checked_at, tz=utcnow().tzinfo)
        if item.checked_at
        else utcnow(),
    }


def store_checks(
    session: Session,
    run: VerificationRun,
    target: CaseTarget,
    summary: RangeSummary,
    *,
    keep_passing: bool | None = None,
) -> int:
    """Insert the DnsCheck rows this run keeps (see module docstring); returns how many."""
    if keep_passing is None:
        keep_passing = max(run.total, summary.checked) <= STORE_PASSING_UP_TO
    rows = [_check_row(r, run, target) for r in summary.results if keep_passing or not r.passes]
    for start in range(0, len(rows), 5000):
        session.execute(insert(DnsCheck), rows[start : start + 5000])
    return len(rows)


def next_check_delay(settings: Settings, attempts: int, min_ttl: int | None) -> timedelta | None:
    """Delay before re-check number ``attempts`` (1-based), never shorter than the failing TTL;
    None once the schedule has run out."""
    schedule = settings.reverify_schedule
    if attempts > len(schedule):
        return None
    delay = parse_duration(schedule[attempts - 1])
    return max(delay, timedelta(seconds=min_ttl or 0))


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``4h``, ``1d``, ``2w`` (a bare number means seconds)."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    if value and value[-1] in units:
        return timedelta(seconds=float(value[:-1]) * units[value[-1]])
    return timedelta(seconds=float(value))


def record_run(
    session: Session,
    run: VerificationRun,
    target: CaseTarget,
    summary: RangeSummary,
    *,
    settings: Settings,
    now: datetime | None = None,
    store: bool = True,
) -> VerificationRun:
    """Finish ``run`` from ``summary`` and bring the target (and the case's overall result) up to date."""
    now = now or utcnow()
    data = summary.as_dict()
    if store and summary.passed and summary.checked > STORE_PASSING_UP_TO:
        example = next((r for r in summary.results if r.passes), None)
        if example is not None:
            data["passing_example"] = example.as_dict(full_evidence=True)
    if store:
        data["stored_checks"] = store_checks(session, run, target, summary)
    run.status = RunStatus.DONE
    run.result = summary.result
    run.total = max(run.total, summary.checked)
    run.done = summary.checked
    run.passed, run.failed, run.unverifiable = summary.passed, summary.failed, summary.unverifiable
    run.summary = data
    run.min_ttl = summary.min_failing_ttl
    run.finished_at = now

    target.last_checked_at = now
    if target.check_attempts > len(settings.reverify_schedule):
        target.check_attempts = 0  # an exhausted target checked again (requester replied): a new round
    reasons = [f"{g['reason']}: {', '.join(g['ranges'][:20])}" for g in data["failing"]]
    reasons += [
        f"could not check ({g['reason']}): {', '.join(g['ranges'][:20])}" for g in data["unverifiable_groups"]
    ]
    target.summary = {
        **{k: v for k, v in (target.summary or {}).items() if k == "named_addresses"},
        "run_id": run.id,
        "result": summary.result.value,
        "checked": summary.checked,
        "passed": summary.passed,
        "failed": summary.failed,
        "unverifiable": summary.unverifiable,
        "reasons": reasons,
        "failing": summary.failing_rows(),
        "note": summary.note,
        "checked_at": now.isoformat(),
    }
    if target.status in CHECKED_STATUSES:
        target.status = {
            CheckResult.PASS: TargetStatus.PASS,
            CheckResult.FAIL: TargetStatus.FAIL,
        }.get(summary.result, TargetStatus.UNVERIFIABLE)
    if summary.result == CheckResult.PASS:
        target.check_attempts = 0
        target.next_check_at = None
    else:
        target.check_attempts += 1
        delay = next_check_delay(settings, target.check_attempts, summary.min_failing_ttl)
        target.next_check_at = now + delay if delay is not None else None
    if target.case is not None:
        target.case.verification_result = case_verification_result(target.case)
    session.flush()
    return run


def case_verification_result(case: Case) -> CheckResult:
    statuses = [t.status for t in case.targets if t.status in CHECKED_STATUSES]
    if not statuses:
        return CheckResult.NONE if not case.targets else case.verification_result
    if any(s == TargetStatus.PENDING for s in statuses):
        return CheckResult.PENDING
    if all(s == TargetStatus.PASS for s in statuses):
        return CheckResult.PASS
    if any(s == TargetStatus.PASS for s in statuses):
        return CheckResult.PARTIAL
    if any(s == TargetStatus.FAIL for s in statuses):
        return CheckResult.FAIL
    return CheckResult.UNVERIFIABLE


def verify_target(
    session: Session,
    target: CaseTarget,
    resolver: Resolver,
    trigger: str = "manual",
    actor: str = "system",
    *,
    settings: Settings | None = None,
    progress_cb: ProgressCallback | None = None,
    now: datetime | None = None,
) -> VerificationRun:
    """Verify ``target`` now and store the run, its checks and the target's new state (never commits).

    The DNS work happens inside the caller's transaction; a job that wants the run visible while it
    goes uses :func:`job_verify_target` instead (three short transactions around the DNS work).
    """
    settings = settings or load_settings()
    run = start_run(session, target, trigger, actor, now=now, settings=settings)
    summary = verify_network(
        resolver,
        target_network(target),
        progress_cb,
        sample_v6=settings.ipv6_sample_size,
        named_addresses=named_addresses_for(target),
        rules=rules_for(settings),
        keep_passing=run.total <= STORE_PASSING_UP_TO,
        workers=settings.dns_workers,
    )
    return record_run(session, run, target, summary, settings=settings, now=now)


# --- what the outcome means for the case --------------------------------------------------------


def _default_delist() -> DelistFunc:
    return delist_targets


def settle_case(
    session: Session,
    case: Case,
    settings: Settings,
    *,
    actor: str = "system",
    delist: DelistFunc | bool | None = True,
    now: datetime | None = None,
) -> str:
    """Move the case along after a verification. Returns what happened (for logs and tests):

    ``ready`` every checked target passes → ready_for_decision; ``delisted`` same, and policy allowed
    automatic delisting (``auto_delist`` and authority pass); ``still_failing`` the schedule ran out for
    every failing target → awaiting_requester with the still_failing reply; ``verifying`` re-checks are
    still scheduled; ``unchanged`` the case is not open or nothing applies.
    """
    from tmsi.services import audit, cases, replies

    now = now or utcnow()
    if case.status not in OPEN_CASE_STATES:
        return "unchanged"
    case.verification_result = case_verification_result(case)
    checked = [t for t in case.targets if t.status in CHECKED_STATUSES]
    if not checked or any(t.status == TargetStatus.PENDING for t in checked):
        return "unchanged"
    if all(t.status == TargetStatus.PASS for t in checked):
        delist_fn = _default_delist() if delist is True else (delist or None)
        from tmsi.services import policy
        from tmsi.services.authority import is_auto_delist_eligible

        if callable(delist_fn) and is_auto_delist_eligible(case, policy.effective(session, settings)):
            audit.record(
                session,
                action="verify.auto_delist",
                actor=actor,
                case=case,
                detail={"targets": [t.network for t in checked]},
            )
            delist_fn(
                session,
                case,
                checked,
                actor=actor,
                reason="automatic: authority proven and all addresses pass",
            )
            return "delisted"
        if case.status != CaseStatus.READY_FOR_DECISION:
            cases.transition(
                session,
                case,
                CaseStatus.READY_FOR_DECISION,
                actor=actor,
                reason="every address passes verification",
                now=now,
            )
        return "ready"
    if any(t.next_check_at is not None for t in checked if t.status != TargetStatus.PASS):
        if case.status in (CaseStatus.NEW, CaseStatus.READY_FOR_DECISION):
            reason = (
                "verification started" if case.status == CaseStatus.NEW else "an address no longer passes"
            )
            cases.transition(session, case, CaseStatus.VERIFYING, actor=actor, reason=reason, now=now)
        return "verifying"
    if case.status == CaseStatus.AWAITING_REQUESTER:
        return "unchanged"
    failing: list[dict[str, str]] = []
    for target in checked:
        if target.status != TargetStatus.PASS:
            failing += (target.summary or {}).get("failing", []) or [
                {"address": target.network, "reason": target.status.value}
            ]
    cases.transition(
        session,
        case,
        CaseStatus.AWAITING_REQUESTER,
        actor=actor,
        reason="re-verification schedule exhausted; addresses still fail",
        now=now,
    )
    replies.queue_reply(session, case, "still_failing", settings, extra={"failing": failing}, now=now)
    audit.record(
        session, action="verify.still_failing", actor=actor, case=case, detail={"failing": failing[:200]}
    )
    return "still_failing"


# --- re-verification ------------------------------------------------------------------------------


def worker_id() -> str:
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def due_query(now: datetime, limit: int) -> Any:
    return (
        select(CaseTarget)
        .join(Case, Case.id == CaseTarget.case_id)
        .where(
            CaseTarget.status.in_([TargetStatus.FAIL, TargetStatus.UNVERIFIABLE, TargetStatus.PENDING]),
            CaseTarget.next_check_at.is_not(None),
            CaseTarget.next_check_at <= now,
            or_(CaseTarget.claimed_until.is_(None), CaseTarget.claimed_until < now),
            Case.status.in_(OPEN_CASE_STATES),
        )
        .order_by(CaseTarget.next_check_at, CaseTarget.id)
        .limit(limit)
    )


def due_targets(session: Session, now: datetime, limit: int = 50) -> list[CaseTarget]:
    """Targets whose re-check is due and that nobody holds; on PostgreSQL the rows are locked with
    SKIP LOCKED so that concurrent workers each get different ones."""
    stmt = due_query(now, limit)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True, of=CaseTarget)
    return list(session.scalars(stmt))


def claim_due(factory: sessionmaker[Session], now: datetime, limit: int, holder: str) -> list[int]:
    """Claim due targets with a lease in one short transaction; returns the claimed target ids.

    One statement: ``UPDATE case_targets SET claimed_by, claimed_until WHERE id IN (due ids) AND
    (unclaimed or lease expired) RETURNING id``. On PostgreSQL the inner SELECT takes its rows ``FOR UPDATE
    SKIP LOCKED``, so concurrent workers get disjoint sets without waiting; on SQLite the statement takes
    the write lock first, so workers simply run one after another. Either way a target has one owner.
    """
    due_ids = due_query(now, limit).with_only_columns(CaseTarget.id)
    with unit_of_work(factory) as session:
        if session.get_bind().dialect.name == "postgresql":
            due_ids = due_ids.with_for_update(skip_locked=True, of=CaseTarget)
        stmt = (
            update(CaseTarget)
            .where(
                CaseTarget.id.in_(due_ids.scalar_subquery()),
                or_(CaseTarget.claimed_until.is_(None), CaseTarget.claimed_until < now),
            )
            .values(claimed_by=holder, claimed_until=now + CLAIM_LEASE)
            .returning(CaseTarget.id)
            .execution_options(synchronize_session=False)
        )
        return sorted(session.scalars(stmt))


def reverify_due(
    session_factory: sessionmaker[Session],
    resolver: Resolver,
    now: datetime | None = None,
    *,
    settings: Settings | None = None,
    limit: int = 50,
    delist: DelistFunc | bool | None = True,
    actor: str = "system",
) -> int:
    """Re-check every due target (claimed under a lease), settle each case; returns targets checked."""
    settings = settings or load_settings()
    now = now or utcnow()
    holder = worker_id()
    done = 0
    for target_id in claim_due(session_factory, now, limit, holder):
        try:
            run_target_verification(
                session_factory,
                target_id,
                resolver,
                settings,
                trigger="reverify",
                actor=actor,
                delist=delist,
                now=now,
                holder=holder,
            )
            done += 1
        except Exception:
            log.exception("re-verification of target %s failed", target_id)
            with unit_of_work(session_factory) as session:
                session.execute(
                    update(CaseTarget)
                    .where(CaseTarget.id == target_id, CaseTarget.claimed_by == holder)
                    .values(claimed_by=None, claimed_until=None)
                )
    return done


# --- jobs -----------------------------------------------------------------------------------------


class ProgressWriter:
    """progress_cb for jobs: writes the run's counters in its own short transactions, at most every
    ``every_seconds`` (and always at the end), so the UI can poll ``verification_runs`` while it runs."""

    def __init__(self, factory: sessionmaker[Session], run_id: int, every_seconds: float = 0.5) -> None:
        self.factory = factory
        self.run_id = run_id
        self.every = every_seconds
        self.last = 0.0
        self.writes = 0

    def __call__(self, progress: Progress) -> None:
        moment = time.monotonic()
        if moment - self.last < self.every and progress.done < progress.total:
            return
        self.last = moment
        with unit_of_work(self.factory) as session:
            session.execute(
                update(VerificationRun)
                .where(VerificationRun.id == self.run_id)
                .values(
                    done=progress.done,
                    total=progress.total,
                    passed=progress.passed,
                    failed=progress.failed,
                    unverifiable=progress.unverifiable,
                )
            )
        self.writes += 1


def run_status(run: VerificationRun) -> dict[str, Any]:
    """What the UI/API polls while a run goes (and shows after): progress counters and, when done, the
    summary."""
    percent = round(100.0 * run.done / run.total, 1) if run.total else (100.0 if run.finished_at else 0.0)
    data: dict[str, Any] = {
        "id": run.id,
        "target_id": run.target_id,
        "network": run.network,
        "status": run.status.value,
        "result": run.result.value,
        "total": run.total,
        "done": run.done,
        "percent": percent,
        "passed": run.passed,
        "failed": run.failed,
        "unverifiable": run.unverifiable,
        "started_at": run.started_at.isoformat() if run.started_at else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
    }
    if run.status in (RunStatus.DONE, RunStatus.FAILED):
        data["summary"] = {
            k: v for k, v in (run.summary or {}).items() if k not in ("chunks", "passing_example")
        }
    return data


def run_target_verification(
    factory: sessionmaker[Session],
    target_id: int,
    resolver: Resolver,
    settings: Settings,
    *,
    trigger: str = "manual",
    actor: str = "system",
    delist: DelistFunc | bool | None = True,
    now: datetime | None = None,
    holder: str | None = None,
) -> int:
    """Verify one target in three short transactions (start, progress, finish); returns the run id."""
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        run = start_run(session, target, trigger, actor, now=now, settings=settings)
        run_id, total = run.id, run.total
        network = target_network(target)
        named = named_addresses_for(target)
        if target.case.status == CaseStatus.NEW:
            from tmsi.services import cases

            cases.transition(
                session, target.case, CaseStatus.VERIFYING, actor=actor, reason="verification started"
            )
    try:
        summary = verify_network(
            resolver,
            network,
            ProgressWriter(factory, run_id),
            sample_v6=settings.ipv6_sample_size,
            named_addresses=named,
            rules=rules_for(settings),
            keep_passing=total <= STORE_PASSING_UP_TO,
            workers=settings.dns_workers,
        )
    except Exception as exc:
        with unit_of_work(factory) as session:
            failed = session.get_one(VerificationRun, run_id)
            failed.status, failed.finished_at = RunStatus.FAILED, utcnow()
            failed.summary = {"error": f"{type(exc).__name__}: {exc}"}
        raise
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        run = session.get_one(VerificationRun, run_id)
        record_run(session, run, target, summary, settings=settings, now=now)
        if holder is None or target.claimed_by == holder:
            target.claimed_by, target.claimed_until = None, None
        settle_case(session, target.case, settings, actor=actor, delist=delist, now=now)
    return run_id


def job_verify_target(
    settings: Settings,
    factory: sessionmaker[Session],
    target_id: int,
    trigger: str = "manual",
    actor: str = "system",
    resolver: Resolver | None = None,
    delist: DelistFunc | bool | None = True,
) -> int:
    """Job entry point: verify one target (UI button, new case); returns the run id."""
    return run_target_verification(
        factory,
        target_id,
        resolver or make_resolver(settings),
        settings,
        trigger=trigger,
        actor=actor,
        delist=delist,
    )


def job_reverify_due(
    settings: Settings,
    factory: sessionmaker[Session],
    now: datetime | None = None,
    resolver: Resolver | None = None,
    delist: DelistFunc | bool | None = True,
) -> int:
    """Job entry point (every minute): re-verify due targets; returns how many were checked."""
    return reverify_due(factory, resolver or make_resolver(settings), now, settings=settings, delist=delist)


# --- one long range over several workers --------------------------------------------------------


def plan_chunks(network: IPNetwork | str, size: int = 4096) -> list[str]:
    """Split an IPv4 network into CIDR chunks of at most ``size`` addresses (IPv6: the prefix itself,
    since only a sample is checked)."""
    net = parse_network(network, strict=False) if isinstance(network, str) else network
    if net.version == 6 or net.num_addresses <= size:
        return [str(net)]
    new_prefix = net.max_prefixlen - max(0, size.bit_length() - 1)
    return [str(sub) for sub in net.subnets(new_prefix=max(new_prefix, net.prefixlen))]


def job_plan_chunks(
    settings: Settings,
    factory: sessionmaker[Session],
    target_id: int,
    size: int = 4096,
    trigger: str = "manual",
    actor: str = "system",
) -> list[tuple[int, str]]:
    """Create the run and return ``(run_id, chunk)`` work items, one per worker task."""
    with unit_of_work(factory) as session:
        target = session.get_one(CaseTarget, target_id)
        run = start_run(session, target, trigger, actor, settings=settings)
        chunks = plan_chunks(target_network(target), size)
        run.summary = {"chunks_planned": chunks, "chunks": {}}
        return [(run.id, chunk) for chunk in chunks]


def job_verify_chunk(
    settings: Settings,
    factory: sessionmaker[Session],
    run_id: int,
    chunk: str,
    resolver: Resolver | None = None,
    delist: DelistFunc | bool | None = True,
) -> bool:
    """Verify one chunk of a run and merge it in; returns True when this chunk completed the run."""
    resolver = resolver or make_resolver(settings)
    with unit_of_work(factory) as session:
        run = session.get_one(VerificationRun, run_id)
        target = session.get_one(CaseTarget, run.target_id)
        named = named_addresses_for(target)
        keep_passing = run.total <= STORE_PASSING_UP_TO
    summary = verify_network(
        resolver,
        chunk,
        sample_v6=settings.ipv6_sample_size,
        named_addresses=named,
        rules=rules_for(settings),
        keep_passing=keep_passing,
    )
    with unit_of_work(factory) as session:
        stmt = select(VerificationRun).where(VerificationRun.id == run_id)
        if session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update()
        run = session.scalars(stmt).one()
        target = session.get_one(CaseTarget, run.target_id)
        data = dict(run.summary or {})
        parts = dict(data.get("chunks", {}))
        if chunk in parts:
            return False  # a retried task: this chunk was merged already
        parts[chunk] = summary.as_dict()
        store_checks(session, run, target, summary, keep_passing=keep_passing)
        data["chunks"] = parts
        run.summary = data
        run.done += summary.checked
        run.passed += summary.passed
        run.failed += summary.failed
        run.unverifiable += summary.unverifiable
        if summary.min_failing_ttl is not None:
            run.min_ttl = (
                summary.min_failing_ttl if run.min_ttl is None else min(run.min_ttl, summary.min_failing_ttl)
            )
        if set(parts) < set(data.get("chunks_planned", [])):
            return False
        merged = merge_summaries(run.network, [parts[c] for c in data["chunks_planned"]], run.min_ttl)
        record_run(session, run, target, merged, settings=settings, store=False)
        run.summary = {**run.summary, "chunks_planned": data["chunks_planned"], "chunks": parts}
        settle_case(session, target.case, settings, delist=delist)
        return True


def merge_summaries(network: str, parts: Sequence[dict[str, Any]], min_ttl: int | None) -> RangeSummary:
    """One RangeSummary from the ``as_dict()`` of its chunks (addresses re-expanded from the ranges)."""
    net = parse_network(network, strict=False)
    merged = RangeSummary(str(net), net.num_addresses, min_failing_ttl=min_ttl)
    for part in parts:
        merged.checked += part["checked"]
        merged.passed += part["passed"]
        merged.failed += part["failed"]
        merged.unverifiable += part["unverifiable"]
        merged.elapsed = max(merged.elapsed, part.get("elapsed_s", 0.0))
        merged.passing += expand_ranges(part["passing"])
        for key, groups in (("failing", merged.failing), ("unverifiable_groups", merged.unchecked)):
            for group in part[key]:
                groups.setdefault(group["reason"], []).extend(expand_ranges(group["ranges"]))
    return merged


def expand_ranges(ranges: Iterable[str]) -> list[IPAddress]:
    out: list[IPAddress] = []
    for text in ranges:
        first, _, last = text.partition("-")
        start = ipaddress.ip_address(first)
        end = ipaddress.ip_address(last) if last else start
        kind = type(start)
        out += [kind(i) for i in range(int(start), int(end) + 1)]
    return out
