"""Benchmark of the rDNS name classifier: quality on the labelled set and names/s.

    .venv/bin/python bench/rdns_classifier.py [--names 200000] [--cli-names 100000]

Quality: precision of the passing verdicts (static, custom) and recall of the failing ones (generic,
dynamic) on tests/data/rdns_labelled.tsv, with the confusion matrix. Speed: the classifier in-process,
and ``tmsi rdns classify`` end to end (a subprocess reading a file, writing JSON lines), on names
re-rendered from the labelled set for random addresses so that no cache sees the same name twice.
CPU time is reported beside wall time because the machine is shared.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tmsi.domain import rdns  # noqa: E402
from tmsi.domain.rdns import classify_all, default_rules  # noqa: E402

LABELLED = ROOT / "tests" / "data" / "rdns_labelled.tsv"
VERDICTS = ["static", "custom", "generic", "dynamic"]
PASSING = {"static", "custom"}
TARGETS = {"precision_pass": 0.98, "recall_fail": 0.95, "names_per_s": 20_000}


def load_labelled() -> tuple[list[tuple[str, str, str]], dict[str, list[tuple[str, str, str]]]]:
    """All rows, and the rows of each batch (``# --- batch N: how it was labelled`` lines)."""
    rows: list[tuple[str, str, str]] = []
    batches: dict[str, list[tuple[str, str, str]]] = {}
    batch = "unmarked"
    for line in LABELLED.read_text(encoding="utf-8").splitlines():
        if line.startswith("# --- "):
            batch = line.removeprefix("# --- ")
        elif line and not line.startswith("#"):
            address, ptr, expected, _note = line.split("\t")
            rows.append((address, ptr, expected))
            batches.setdefault(batch, []).append((address, ptr, expected))
    return rows, batches


def quality(rows: list[tuple[str, str, str]]) -> dict[str, object]:
    confusion: Counter[tuple[str, str]] = Counter()
    for address, ptr, expected in rows:
        got = classify_all(address, ptr.split(" ") if ptr else [""]).verdict.value
        confusion[(expected, got)] += 1
    predicted_pass = sum(n for (_, got), n in confusion.items() if got in PASSING)
    right_pass = sum(n for (exp, got), n in confusion.items() if got in PASSING and exp in PASSING)
    expected_fail = sum(n for (exp, _), n in confusion.items() if exp not in PASSING)
    right_fail = sum(n for (exp, got), n in confusion.items() if exp not in PASSING and got not in PASSING)
    expected_pass = len(rows) - expected_fail
    return {
        "confusion": confusion,
        "precision_pass": right_pass / predicted_pass if predicted_pass else 1.0,
        "recall_fail": right_fail / expected_fail if expected_fail else 1.0,
        "recall_pass": right_pass / expected_pass if expected_pass else 1.0,
        "exact": sum(n for (exp, got), n in confusion.items() if exp == got) / len(rows),
        "wrong_pass": predicted_pass - right_pass,
    }


def _forms(address: ipaddress.IPv4Address) -> list[str]:
    o = address.packed
    return [
        "-".join(f"{x:03d}" for x in o),
        "".join(f"{x:03d}" for x in o),
        "-".join(str(x) for x in o),
        ".".join(str(x) for x in o),
        "_".join(str(x) for x in o),
        "-".join(str(x) for x in o[::-1]),
        ".".join(str(x) for x in o[::-1]),
        o.hex(),
        o.hex().upper(),
        str(int(address)),
    ]


def synthetic(rows: list[tuple[str, str, str]], count: int, seed: int = 4) -> list[tuple[str, str]]:
    """Names of the labelled set re-rendered for random addresses of the same /24 (IPv6 rows as they are)."""
    rng = random.Random(seed)
    out: list[tuple[str, str]] = []
    while len(out) < count:
        address, ptr, _ = rows[rng.randrange(len(rows))]
        try:
            old = ipaddress.IPv4Address(address)
        except ValueError:
            out.append((address, ptr))
            continue
        new = ipaddress.IPv4Address((int(old) & 0xFFFFFF00) | rng.randrange(1, 255))
        for before, after in zip(_forms(old), _forms(new), strict=True):
            ptr = ptr.replace(before, after)
        out.append((str(new), ptr))
    return out


def in_process_rate(names: list[tuple[str, str]], cold: bool = False) -> tuple[float, float]:
    """names/s (wall, CPU). ``cold`` empties the skeleton and label caches before every name: the worst
    case, as if no two names in the batch shared a naming scheme."""
    rules = default_rules()
    classify_all("192.0.2.1", ["warm.example"], rules)
    caches = (rdns._words, rdns._label_tokens, rdns._segment)
    wall, cpu = time.perf_counter(), time.process_time()
    for address, ptr in names:
        if cold:
            for cache in caches:
                cache.cache_clear()
        classify_all(address, ptr.split(" ") if ptr else [""], rules)
    return len(names) / (time.perf_counter() - wall), len(names) / (time.process_time() - cpu)


def _cli_command() -> tuple[list[str], str]:
    tmsi = shutil.which("tmsi", path=str(Path(sys.executable).parent))
    if tmsi:
        probe = subprocess.run([tmsi, "rdns", "--help"], capture_output=True, text=True, check=False)
        if probe.returncode == 0:
            return [tmsi, "rdns", "classify"], "tmsi rdns classify"
    code = "from tmsi.cli.rdns import rdns; rdns(prog_name='tmsi rdns')"
    return [
        sys.executable,
        "-c",
        code,
        "classify",
    ], "python -c tmsi.cli.rdns (group not registered in tmsi yet)"


def _timed(command: list[str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def cli_rates(names: list[tuple[str, str]]) -> dict[str, object]:
    command, how = _cli_command()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "names.tsv"
        data.write_text("".join(f"{a}\t{p}\n" for a, p in names), encoding="utf-8")
        empty = Path(tmp) / "empty.tsv"
        empty.write_text("", encoding="utf-8")
        start_wall, start_cpu = min(_timed([*command, str(empty)]) for _ in range(3))
        wall, cpu = min(_timed([*command, str(data)]) for _ in range(2))
    n = len(names)
    return {
        "how": how,
        "startup_wall": start_wall,
        "startup_cpu": start_cpu,
        "wall": wall,
        "cpu": cpu,
        "end_to_end_wall": n / wall,
        "end_to_end_cpu": n / cpu,
        "steady_wall": n / max(wall - start_wall, 1e-9),
        "steady_cpu": n / max(cpu - start_cpu, 1e-9),
    }


def render(
    rows: list[tuple[str, str, str]],
    batches: dict[str, list[tuple[str, str, str]]],
    q: dict[str, object],
    rate: tuple[float, float],
    cold: tuple[float, float],
    cli: dict,
) -> str:
    confusion: Counter[tuple[str, str]] = q["confusion"]  # type: ignore[assignment]
    ok = "meets"
    lines = [
        f"Labelled set: {len(rows)} names ({LABELLED.relative_to(ROOT)}); "
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
        "",
        "| measure | value | target |",
        "|---|---|---|",
        f"| precision of passing verdicts (static+custom) | {q['precision_pass']:.4f} | >= 0.98 "
        f"({ok if q['precision_pass'] >= TARGETS['precision_pass'] else 'MISSES'}) |",  # type: ignore[operator]
        f"| recall of failing verdicts (generic+dynamic) | {q['recall_fail']:.4f} | >= 0.95 "
        f"({ok if q['recall_fail'] >= TARGETS['recall_fail'] else 'MISSES'}) |",  # type: ignore[operator]
        f"| recall of passing verdicts | {q['recall_pass']:.4f} | |",
        f"| exact verdict agreement | {q['exact']:.4f} | |",
        f"| wrongful passes | {q['wrong_pass']} | |",
        f"| classifier in-process, names/s (wall / CPU) | {rate[0]:,.0f} / {rate[1]:,.0f} | >= 20,000 |",
        f"| same, caches emptied before every name, names/s | {cold[0]:,.0f} / {cold[1]:,.0f} | |",
        f"| CLI end to end incl. start-up, names/s (wall / CPU) | {cli['end_to_end_wall']:,.0f} / "
        f"{cli['end_to_end_cpu']:,.0f} | >= 20,000 |",
        f"| CLI without start-up, names/s (wall / CPU) | {cli['steady_wall']:,.0f} / "
        f"{cli['steady_cpu']:,.0f} | |",
        f"| CLI start-up, s (wall / CPU) | {cli['startup_wall']:.2f} / {cli['startup_cpu']:.2f} | |",
        "",
        f"CLI measured as: {cli['how']}",
        "",
        "Per batch of the labelled set (the rules were tuned on batch 1 only):",
        "",
        "| batch | names | precision(pass) | recall(fail) | exact verdict |",
        "|---|---|---|---|---|",
    ]
    for batch, batch_rows in batches.items():
        bq = quality(batch_rows)
        lines.append(
            f"| {batch} | {len(batch_rows)} | {bq['precision_pass']:.4f} | {bq['recall_fail']:.4f} "
            f"| {bq['exact']:.4f} |"
        )
    lines += [
        "",
        "Confusion matrix, whole set (rows: expected, columns: classifier):",
        "",
        "| expected \\ got | " + " | ".join(VERDICTS) + " |",
        "|---" * (len(VERDICTS) + 1) + "|",
    ]
    for expected in VERDICTS:
        lines.append(
            f"| {expected} | " + " | ".join(str(confusion[(expected, got)]) for got in VERDICTS) + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=200_000, help="names for the in-process rate")
    parser.add_argument("--cli-names", type=int, default=100_000, help="lines for the CLI run")
    args = parser.parse_args()
    rows, batches = load_labelled()
    q = quality(rows)
    names = synthetic(rows, args.names)
    rate = in_process_rate(names)
    cold = in_process_rate(names[: max(1, args.names // 4)], cold=True)
    cli = cli_rates(synthetic(rows, args.cli_names, seed=9))
    print(render(rows, batches, q, rate, cold, cli))


if __name__ == "__main__":
    main()
