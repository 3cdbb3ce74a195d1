"""``tmsi run`` (web + worker + scheduler in one command, with the offline demo when nothing is
configured), ``tmsi worker`` (Huey consumer) and ``tmsi jobs`` (the schedule table; run a job now)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any, NoReturn

import click

from tmsi.config import ConfigError, Settings, load_settings

# Variables whose presence means "this deployment is configured": then no demo is loaded.
CONFIGURED_VARIABLES = ("TMSI_DATABASE_URL", "TMSI_MAILBOX_KIND", "TMSI_IMAP_HOST", "TMSI_IMAP_USER")
STOP_TIMEOUT = 20.0


def config_error(exc: ConfigError) -> NoReturn:
    """A bad configuration is a message naming the variable and the fix, and exit status 2."""
    click.echo(f"tmsi: {exc}", err=True)
    sys.exit(2)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        config_error(exc)


def _setup_logging(settings: Settings, *, quiet_huey: bool = False) -> None:
    import logging

    from tmsi.logging import configure_logging

    configure_logging(settings.log_level, settings.log_json)
    if quiet_huey and settings.log_level.upper() != "DEBUG":
        # One "executing"/"executed" pair per task every few seconds drowns the useful lines.
        logging.getLogger("huey").setLevel(logging.WARNING)
        logging.getLogger("huey.consumer").setLevel(logging.INFO)


def _factory(settings: Settings) -> Any:
    from tmsi.db import make_engine, make_sessionmaker

    return make_sessionmaker(make_engine(settings.database_url))


# ---- tmsi worker -------------------------------------------------------------------------------
@click.command("worker")
@click.option(
    "--workers",
    "-w",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="concurrent tasks in this consumer",
)
@click.option("--worker-type", type=click.Choice(["thread", "process"]), default="thread", show_default=True)
@click.option("--no-periodic", is_flag=True, help="do not run the scheduler in this consumer")
def worker(workers: int, worker_type: str, no_periodic: bool) -> None:
    """Run the Huey consumer: the scheduled jobs (see `tmsi jobs list`) and fanned-out work."""
    settings = settings_or_exit()
    _setup_logging(settings, quiet_huey=True)
    if settings.huey_storage == "memory":
        config_error(
            ConfigError("TMSI_HUEY_STORAGE=memory runs tasks inline (tests only); use sqlite or redis")
        )
    if settings.is_sqlite and workers > 1 and worker_type == "process":
        click.echo("tmsi: SQLite allows one writer; using thread workers", err=True)
        worker_type = "thread"
    from tmsi.jobs import build_huey

    try:
        app = build_huey(settings)
    except ConfigError as exc:
        config_error(exc)
    consumer = app.huey.create_consumer(
        workers=workers,
        worker_type=worker_type,
        periodic=not no_periodic,
        # A SQLite queue has exactly one consumer, so locks left by a killed one are stale.
        flush_locks=settings.huey_storage == "sqlite",
        check_worker_health=True,
        max_delay=2.0,
    )
    consumer.run()


# ---- tmsi jobs -----------------------------------------------------------------------------------
@click.group("jobs")
def jobs() -> None:
    """The schedule table, and running one job now."""


@jobs.command("list")
def jobs_list() -> None:
    """Every schedule: interval, whether enabled and whether its service function exists."""
    from tmsi.jobs import describe

    settings = settings_or_exit()
    try:
        rows = describe(settings)
    except ConfigError as exc:
        config_error(exc)
    for row in rows:
        state = "on " if row["enabled"] else "off"
        here = "" if row["available"] else "  (not available yet)"
        click.echo(f"{row['name']:<20} every {row['every_s']:>7.0f}s  {state} {row['target']}{here}")


@jobs.command("run")
@click.argument("name")
def jobs_run(name: str) -> None:
    """Run job NAME once, now, in this process (the same function the worker calls)."""
    from tmsi.jobs import SCHEDULE_BY_NAME, run_job, run_target

    settings = settings_or_exit()
    _setup_logging(settings)
    if name not in SCHEDULE_BY_NAME:
        raise click.BadParameter(f"unknown job; one of {', '.join(SCHEDULE_BY_NAME)}", param_hint="NAME")
    factory = _factory(settings)
    outcome = run_job(name, settings, factory)
    schedule = SCHEDULE_BY_NAME[name]
    for item in outcome.fanout:
        run_target(schedule.fanout or "", settings, factory, *item)
    click.echo(
        json.dumps(
            {
                "job": name,
                "ran": outcome.ran,
                "reason": outcome.reason,
                "seconds": round(outcome.seconds, 3),
                "result": repr(outcome.result),
            }
        )
    )
    if not outcome.ran and "held elsewhere" not in outcome.reason:
        sys.exit(1)


def _check_worker_settings(settings: Settings) -> None:
    """What the worker would refuse at its start, refused here before anything is started."""
    from tmsi.jobs import parse_job_intervals

    try:
        parse_job_intervals(settings)
        if settings.huey_storage == "redis" and not settings.redis_url:
            raise ConfigError(
                "TMSI_HUEY_STORAGE=redis needs TMSI_REDIS_URL (for example redis://127.0.0.1:6379/0)"
            )
    except ConfigError as exc:
        config_error(exc)


# ---- tmsi run ------------------------------------------------------------------------------------
def wants_demo(settings: Settings, environ: dict[str, str] | os._Environ[str]) -> bool:
    if settings.demo:
        return True
    return not any(environ.get(var) for var in CONFIGURED_VARIABLES) and settings.mailbox_kind == "none"


class Children:
    """The web server and the consumer, in their own process groups: Ctrl-C reaches only us, and we
    stop them in order (SIGTERM to gunicorn, SIGINT = graceful to Huey), wait, then exit."""

    def __init__(self) -> None:
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.procs[name] = subprocess.Popen(
            argv,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def dead(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        stop_signals = {"web": signal.SIGTERM, "worker": signal.SIGINT}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(stop_signals.get(name, signal.SIGTERM))
        deadline = time.monotonic() + STOP_TIMEOUT
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _die_with_parent() -> None:
    """In the child, before exec: if ``tmsi run`` itself is killed (SIGKILL, a crashed terminal), the
    kernel sends the child SIGTERM instead of leaving an orphaned web server or worker (Linux only)."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _wait_ready(url: str, children: Children, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if children.dead():
            return False
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2) as resp:  # noqa: S310 (our own loopback URL)
                if resp.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


@click.command("run")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--web-workers", default=2, show_default=True, type=click.IntRange(1, 32))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 32), help="consumer threads")
@click.option("--demo/--no-demo", default=None, help="default: demo when nothing is configured")
def run(host: str, port: int, web_workers: int, workers: int, demo: bool | None) -> None:
    """Web server, worker and scheduler together; with the offline demo when nothing is configured."""
    settings = settings_or_exit()
    use_demo = wants_demo(settings, os.environ) if demo is None else demo
    env = dict(os.environ)
    if use_demo:
        from tmsi import demo as demo_mod

        env.update(demo_mod.demo_environment(settings.instance_path))
        os.environ.update(env)
        settings = settings_or_exit()
    _setup_logging(settings)
    _check_worker_settings(settings)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    env.setdefault("TMSI_BASE_URL", url)

    from tmsi.cli.db import upgrade

    click.echo(f"tmsi: migrating {_redact(settings.database_url)}")
    upgrade(settings.database_url)
    sign_in = None
    sink = None
    if use_demo:
        from tmsi import demo as demo_mod

        demo_mod.prepare_files(settings)
        sign_in = demo_mod.seed(settings, _factory(settings))
        # Replies go to a local sink that files them in <instance>/demo/sent (no real mail leaves).
        sink = demo_mod.SentMailSink(demo_mod.demo_dir(settings.instance_path) / "sent")
        env.update(
            {"TMSI_SMTP_HOST": "127.0.0.1", "TMSI_SMTP_PORT": str(sink.start()), "TMSI_SMTP_TLS": "none"}
        )

    children = Children()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    previous: dict[int, Callable[..., Any] | int | None] = {
        sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    python = sys.executable
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    children.start("web", gunicorn_command(bind, "--workers", str(web_workers), "--no-control-socket"), env)
    children.start(
        "worker",
        [python, "-c", "from tmsi.cli import main; main()", "worker", "--workers", str(workers)],
        env,
    )
    code = 0
    try:
        if _wait_ready(url, children):
            _banner(url, sign_in)
        elif not stopping:
            click.echo(
                f"tmsi: the {children.dead() or 'web'} process did not start; see the log above", err=True
            )
            code = 1
        while code == 0 and not stopping:
            died = children.dead()
            if died:
                click.echo(f"tmsi: the {died} process exited; stopping", err=True)
                code = 1
                break
            time.sleep(0.3)
    finally:
        click.echo("tmsi: stopping web server and worker…")
        children.stop()
        if sink is not None:
            sink.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("tmsi: stopped")
    sys.exit(code)


def gunicorn_command(bind: str, *options: str) -> list[str]:
    """gunicorn serving tmsi on ``bind`` (``host:port``, ``[v6]:port`` or ``unix:path``) with the
    production settings (``tmsi.gunicorn_conf``); ``options`` add to or override them."""
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "-c",
        "python:tmsi.gunicorn_conf",
        "--bind",
        bind,
        *options,
        "tmsi.wsgi:app",
    ]


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def _banner(url: str, sign_in: Any) -> None:
    lines = ["", f"  tmsi is running at {url}/", f"  readiness: {url}/readyz   metrics: {url}/metrics"]
    if sign_in is not None:
        lines += [
            "",
            "  Demo: sample requests arrive from a local Maildir, DNS answers come from bundled zone files.",
            f"  Sign in as {sign_in.email} with password: {sign_in.password}",
            "  (the password is new on every start; it is printed only here)",
        ]
    lines += ["", "  Press Ctrl-C to stop.", ""]
    click.echo("\n".join(lines))


# ---- tmsi demo -----------------------------------------------------------------------------------
@click.group("demo")
def demo() -> None:
    """The offline demo's sample data."""


@demo.command("fill-mailbox")
def demo_fill_mailbox() -> None:
    """Deliver the sample requests into the configured mailbox (Maildir or IMAP)."""
    from tmsi import demo as demo_mod

    settings = settings_or_exit()
    try:
        count = demo_mod.fill_configured_mailbox(settings)
    except ValueError as exc:
        config_error(ConfigError(str(exc)))
    click.echo(f"delivered {count} sample requests to the {settings.mailbox_kind} mailbox")
