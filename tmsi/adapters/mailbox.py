"""The shared mailbox behind one small Protocol: IMAP (imapclient), a local Maildir, and an in-memory box.

The poller only needs: select a folder (its UIDVALIDITY), list UIDs after a UID, fetch raw bytes by UID
in bounded batches, move UIDs to another folder, make sure folders exist, and wait for new mail.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import secrets
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tmsi.config import Settings

log = logging.getLogger(__name__)

# A fetch round-trip asks for at most this many bytes of message bodies, so memory stays flat however
# large the batch; one message larger than this is fetched alone.
FETCH_BYTES_BUDGET = 8 * 1024 * 1024


class MailboxError(RuntimeError):
    """The mailbox could not be reached or refused an operation (a system failure, logged at error)."""


class Mailbox(Protocol):
    """A mailbox the poller drains. UIDs are per folder and valid while the folder's UIDVALIDITY holds."""

    @property
    def name(self) -> str:
        """A stable identifier of the mailbox (cursor, delivery and lock key), without secrets."""
        ...

    def ensure_folders(self, folders: Iterable[str]) -> None: ...

    def select(self, folder: str) -> int:
        """Select ``folder``; return its UIDVALIDITY."""
        ...

    def uids_after(self, folder: str, last_uid: int = 0) -> list[int]:
        """UIDs in ``folder`` greater than ``last_uid``, ascending."""
        ...

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        """(uid, raw bytes) for each UID still present, in UID order, without setting \\Seen."""
        ...

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None: ...

    def wait(self, folder: str, timeout: float) -> bool:
        """Block until new mail may have arrived (IDLE) or ``timeout`` passed; True if the server said so."""
        ...

    def close(self) -> None: ...


def batched(items: Sequence[int], size: int) -> Iterator[list[int]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


# --------------------------------------------------------------------------------------------------
# IMAP


def tls_context(verify: bool, ca_file: str = "") -> ssl.SSLContext:
    """Certificate and host name verification on, unless the deployment explicitly turned it off."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ImapMailbox:
    """A mailbox on an IMAP server via imapclient; connects lazily and reconnects after an error."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        user: str,
        password: str,
        tls: str = "implicit",
        verify_tls: bool = True,
        ca_file: str = "",
        timeout: float = 60.0,
    ) -> None:
        if tls not in ("implicit", "starttls", "none"):
            raise ValueError(f"imap tls must be implicit, starttls or none, not {tls!r}")
        self.host, self.port, self.user, self.password = host, port, user, password
        self.tls, self.verify_tls, self.ca_file, self.timeout = tls, verify_tls, ca_file, timeout
        self._client: Any = None
        self._selected: str | None = None
        self._capabilities: frozenset[bytes] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> ImapMailbox:
        return cls(
            host=settings.imap_host,
            port=settings.imap_port,
            user=settings.imap_user,
            password=settings.imap_password,
            tls=settings.imap_tls,
            verify_tls=settings.imap_verify_tls,
            ca_file=settings.imap_ca_file,
        )

    @property
    def name(self) -> str:
        return f"imap://{self.user}@{self.host}:{self.port}"

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> Any:
        from imapclient import IMAPClient

        context = tls_context(self.verify_tls, self.ca_file)
        try:
            client = IMAPClient(
                self.host,
                port=self.port,
                ssl=self.tls == "implicit",
                ssl_context=context,
                timeout=self.timeout,
            )
            if self.tls == "starttls":
                client.starttls(context)
            client.login(self.user, self.password)
        except (OSError, ssl.SSLError) as exc:
            raise MailboxError(f"{self.name}: cannot connect: {exc}") from exc
        except client_errors() as exc:
            raise MailboxError(f"{self.name}: login refused: {exc}") from exc
        self._capabilities = frozenset(client.capabilities())
        return client

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
            self._selected = None
        return self._client

    def has_capability(self, name: str) -> bool:
        _ = self.client
        return name.upper().encode() in self._capabilities

    def _drop(self) -> None:
        client, self._client, self._selected = self._client, None, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.logout()

    def close(self) -> None:
        self._drop()

    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except MailboxError:
            self._drop()
            raise
        except (OSError, ssl.SSLError, *client_errors()) as exc:  # type: ignore[misc]
            self._drop()
            raise MailboxError(f"{self.name}: {what}: {exc}") from exc

    # -- operations ------------------------------------------------------------------------------
    def ensure_folders(self, folders: Iterable[str]) -> None:
        with self._errors("create folder"):
            for folder in folders:
                if not self.client.folder_exists(folder):
                    self.client.create_folder(folder)
                    log.info("created IMAP folder %s on %s", folder, self.name)

    def _select(self, folder: str) -> dict[bytes, Any]:
        info: dict[bytes, Any] = self.client.select_folder(folder)
        self._selected = folder
        return info

    def select(self, folder: str) -> int:
        with self._errors(f"select {folder}"):
            info = self._select(folder)
            return int(info[b"UIDVALIDITY"])

    def _ensure_selected(self, folder: str) -> None:
        if self._selected != folder:
            self._select(folder)

    def uids_after(self, folder: str, last_uid: int = 0) -> list[int]:
        with self._errors(f"search {folder}"):
            self._ensure_selected(folder)
            # "UID n:*" always matches the highest UID even when it is below n (RFC 3501 6.4.8): filter.
            found = self.client.search(["UID", f"{last_uid + 1}:*"])
            return sorted(uid for uid in found if uid > last_uid)

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        if not uids:
            return
        with self._errors(f"fetch sizes in {folder}"):
            self._ensure_selected(folder)
            sizes = {
                uid: int(data.get(b"RFC822.SIZE", 0))
                for uid, data in self.client.fetch(uids, ["RFC822.SIZE"]).items()
            }
        group: list[int] = []
        budget = 0
        for uid in sorted(sizes):
            if group and budget + sizes[uid] > FETCH_BYTES_BUDGET:
                yield from self._fetch_bodies(folder, group)
                group, budget = [], 0
            group.append(uid)
            budget += sizes[uid]
        if group:
            yield from self._fetch_bodies(folder, group)

    def _fetch_bodies(self, folder: str, uids: list[int]) -> Iterator[tuple[int, bytes]]:
        with self._errors(f"fetch from {folder}"):
            self._ensure_selected(folder)
            # BODY.PEEK[] leaves \Seen alone: a message we did not commit looks untouched to people.
            data = self.client.fetch(uids, ["BODY.PEEK[]"])
        for uid in uids:
            item = data.pop(uid, None)
            if item is None:  # expunged meanwhile by someone else
                continue
            raw = item.get(b"BODY[]")
            if isinstance(raw, bytes):
                yield uid, raw

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if not uids:
            return
        with self._errors(f"move {folder} -> {destination}"):
            self._ensure_selected(folder)
            if b"MOVE" in self._capabilities:
                self.client.move(list(uids), destination)
                return
            # RFC 6851 fallback: COPY, flag \Deleted, then expunge only these UIDs (UIDPLUS) so that
            # messages someone else flagged \Deleted in the folder are not expunged by us.
            self.client.copy(list(uids), destination)
            self.client.add_flags(list(uids), [b"\\Deleted"], silent=True)
            if b"UIDPLUS" in self._capabilities:
                self.client.uid_expunge(list(uids))
            else:
                self.client.expunge()

    def wait(self, folder: str, timeout: float) -> bool:
        """IDLE (RFC 2177) when the server offers it, else sleep: the caller polls after either."""
        if timeout <= 0:
            return False
        try:
            with self._errors(f"idle on {folder}"):
                self._ensure_selected(folder)
                if b"IDLE" not in self._capabilities:
                    time.sleep(timeout)
                    return False
                self.client.idle()
                try:
                    responses = self.client.idle_check(timeout=timeout)
                finally:
                    self.client.idle_done()
                return any(
                    isinstance(r, tuple) and len(r) > 1 and r[1] in (b"EXISTS", b"RECENT") for r in responses
                )
        except MailboxError as exc:
            log.error("%s", exc)
            time.sleep(min(timeout, 5.0))
            return False


def client_errors() -> tuple[type[Exception], ...]:
    from imapclient.exceptions import IMAPClientError

    return (IMAPClientError, TimeoutError)


# --------------------------------------------------------------------------------------------------
# Maildir


UIDLIST = "tmsi-uidlist"


def _maildir_key(filename: str) -> str:
    """The unique part of a Maildir file name (flags after ``:2,`` change, the key does not)."""
    return filename.split(":", 1)[0]


class MaildirMailbox:
    """A local Maildir (Maildir++ folders as ``.Name`` sub-maildirs of the root; INBOX is the root).

    IMAP semantics are emulated per folder by a small ``tmsi-uidlist`` file: a UIDVALIDITY fixed when the
    list is created, and an ascending UID given to each file the first time it is seen. Deleting the
    list is the Maildir equivalent of a UIDVALIDITY change.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @classmethod
    def from_settings(cls, settings: Settings) -> MaildirMailbox:
        return cls(settings.maildir_path)

    @property
    def name(self) -> str:
        return f"maildir:{self.root.resolve()}"

    def folder_path(self, folder: str) -> Path:
        if folder.upper() == "INBOX":
            return self.root
        if "/" in folder or folder.startswith("."):
            raise ValueError(f"invalid Maildir folder name {folder!r}")
        return self.root / f".{folder}"

    def _create(self, path: Path) -> None:
        for sub in ("tmp", "new", "cur"):
            (path / sub).mkdir(parents=True, exist_ok=True)

    def ensure_folders(self, folders: Iterable[str]) -> None:
        self._create(self.root)
        for folder in folders:
            self._create(self.folder_path(folder))

    def deliver(self, folder: str, raw: bytes) -> str:
        """Write a message the way an MTA does (tmp/ then rename into new/); returns its key."""
        path = self.folder_path(folder)
        self._create(path)
        key = f"{time.time_ns()}.P{os.getpid()}Q{next(_counter)}.tmsi"
        tmp = path / "tmp" / key
        tmp.write_bytes(raw)
        os.replace(tmp, path / "new" / key)
        return key

    def _files(self, path: Path) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for sub in ("new", "cur"):
            directory = path / sub
            if directory.is_dir():
                for entry in os.scandir(directory):
                    if entry.is_file() and not entry.name.startswith("."):
                        files[_maildir_key(entry.name)] = Path(entry.path)
        return files

    def _state(self, folder: str) -> tuple[int, int, dict[str, int], dict[str, Path]]:
        """(uidvalidity, next_uid, key -> uid, key -> path), assigning UIDs to new files and saving."""
        path = self.folder_path(folder)
        self._create(path)
        files = self._files(path)
        listfile = path / UIDLIST
        uidvalidity, next_uid, uids = 0, 1, {}
        if listfile.exists():
            lines = listfile.read_text("ascii").splitlines()
            head = lines[0].split() if lines else []
            if len(head) == 2:
                uidvalidity, next_uid = int(head[0]), int(head[1])
                for line in lines[1:]:
                    uid, _, key = line.partition(" ")
                    if key in files:
                        uids[key] = int(uid)
        if not uidvalidity:
            # Any value other than the previous one will do (RFC 3501); 31 bits fit every database.
            uidvalidity = secrets.randbelow(2**31 - 2) + 1
        new = sorted(
            (key for key in files if key not in uids), key=lambda k: (files[k].stat().st_mtime_ns, k)
        )
        for key in new:
            uids[key] = next_uid
            next_uid += 1
        tmp = listfile.with_name(UIDLIST + ".tmp")
        body = "".join(f"{uid} {key}\n" for key, uid in sorted(uids.items(), key=lambda item: item[1]))
        tmp.write_text(f"{uidvalidity} {next_uid}\n{body}", "ascii")
        os.replace(tmp, listfile)
        return uidvalidity, next_uid, uids, files

    def select(self, folder: str) -> int:
        return self._state(folder)[0]

    def uids_after(self, folder: str, last_uid: int = 0) -> list[int]:
        _, _, uids, _ = self._state(folder)
        return sorted(uid for uid in uids.values() if uid > last_uid)

    def _by_uid(self, folder: str) -> dict[int, Path]:
        _, _, uids, files = self._state(folder)
        return {uid: files[key] for key, uid in uids.items()}

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        paths = self._by_uid(folder)
        for uid in sorted(uids):
            path = paths.get(uid)
            if path is None:
                continue
            try:
                yield uid, path.read_bytes()
            except FileNotFoundError:
                continue

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        paths = self._by_uid(folder)
        target = self.folder_path(destination)
        self._create(target)
        for uid in uids:
            path = paths.get(uid)
            if path is None:
                continue
            name = path.name if ":2," in path.name else f"{path.name}:2,"
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, target / "cur" / name)

    def wait(self, folder: str, timeout: float) -> bool:
        """Poll ``new/`` once a second until something appears or ``timeout`` passes."""
        new_dir = self.folder_path(folder) / "new"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if new_dir.is_dir() and any(True for _ in os.scandir(new_dir)):
                return True
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        return False

    def close(self) -> None:
        return None


_counter = itertools.count(1)


# --------------------------------------------------------------------------------------------------
# in memory


@dataclass
class MemoryFolder:
    uidvalidity: int
    next_uid: int = 1
    messages: dict[int, bytes] = field(default_factory=dict)


class MemoryMailbox:
    """A mailbox in a dict, for unit tests; ``fail_moves`` simulates a crash right after the commit."""

    def __init__(self, name: str = "memory://test") -> None:
        self._name = name
        self.folders: dict[str, MemoryFolder] = {}
        self._validity = itertools.count(int(time.time()))
        self.fail_moves = False
        self.moves: list[tuple[str, list[int], str]] = []
        self.fetched: list[int] = []

    @property
    def name(self) -> str:
        return self._name

    def _folder(self, folder: str) -> MemoryFolder:
        if folder not in self.folders:
            self.folders[folder] = MemoryFolder(uidvalidity=next(self._validity))
        return self.folders[folder]

    def add(self, folder: str, raw: bytes) -> int:
        box = self._folder(folder)
        uid = box.next_uid
        box.next_uid += 1
        box.messages[uid] = raw
        return uid

    def renumber(self, folder: str) -> None:
        """A UIDVALIDITY change: same messages, new UIDVALIDITY, UIDs assigned again from 1."""
        old = self._folder(folder)
        new = MemoryFolder(uidvalidity=next(self._validity))
        for uid in sorted(old.messages):
            new.messages[new.next_uid] = old.messages[uid]
            new.next_uid += 1
        self.folders[folder] = new

    def ensure_folders(self, folders: Iterable[str]) -> None:
        for folder in folders:
            self._folder(folder)

    def select(self, folder: str) -> int:
        return self._folder(folder).uidvalidity

    def uids_after(self, folder: str, last_uid: int = 0) -> list[int]:
        return sorted(uid for uid in self._folder(folder).messages if uid > last_uid)

    def fetch(self, folder: str, uids: Sequence[int]) -> Iterator[tuple[int, bytes]]:
        box = self._folder(folder)
        for uid in sorted(uids):
            if uid in box.messages:
                self.fetched.append(uid)
                yield uid, box.messages[uid]

    def move(self, folder: str, uids: Sequence[int], destination: str) -> None:
        if self.fail_moves:
            raise MailboxError("simulated crash before the move")
        source = self._folder(folder)
        for uid in uids:
            raw = source.messages.pop(uid, None)
            if raw is not None:
                self.add(destination, raw)
        self.moves.append((folder, list(uids), destination))

    def wait(self, folder: str, timeout: float) -> bool:
        return bool(self._folder(folder).messages)

    def close(self) -> None:
        return None


def mailbox_from_settings(settings: Settings) -> Mailbox | None:
    """The configured mailbox (``TMSI_MAILBOX_KIND``), or None when ingest is switched off."""
    if settings.mailbox_kind == "imap":
        return ImapMailbox.from_settings(settings)
    if settings.mailbox_kind == "maildir":
        return MaildirMailbox.from_settings(settings)
    return None
