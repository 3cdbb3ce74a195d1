"""The Maildir and in-memory mailboxes emulate IMAP's UIDVALIDITY/UID semantics the poller relies on."""

from __future__ import annotations

import pytest

from tmsi.adapters.mailbox import MailboxError, MaildirMailbox, MemoryMailbox, batched


def test_maildir_uids_are_stable_ascending_and_survive_a_new_instance(tmp_path):
    box = MaildirMailbox(tmp_path / "mail")
    box.ensure_folders(["Processed", "Quarantine"])
    keys = [box.deliver("INBOX", f"Subject: m{i}\r\n\r\nbody {i}\r\n".encode()) for i in range(3)]
    assert len(set(keys)) == 3
    validity = box.select("INBOX")
    assert box.uids_after("INBOX") == [1, 2, 3]
    assert [raw for _, raw in box.fetch("INBOX", [2, 3])] == [
        b"Subject: m1\r\n\r\nbody 1\r\n",
        b"Subject: m2\r\n\r\nbody 2\r\n",
    ]
    again = MaildirMailbox(tmp_path / "mail")
    assert again.select("INBOX") == validity and again.uids_after("INBOX", 1) == [2, 3]
    again.move("INBOX", [1, 3], "Processed")
    box.deliver("INBOX", b"Subject: m3\r\n\r\nbody 3\r\n")
    assert box.uids_after("INBOX") == [2, 4]  # a moved UID is never reused
    assert box.uids_after("Processed") == [1, 2]
    assert (
        sorted(p.name.endswith(":2,") for p in (tmp_path / "mail" / ".Processed" / "cur").iterdir())
        == [True] * 2
    )


def test_maildir_lost_uid_list_means_a_new_uidvalidity(tmp_path):
    box = MaildirMailbox(tmp_path)
    box.deliver("INBOX", b"Subject: a\r\n\r\na\r\n")
    before = box.select("INBOX")
    (tmp_path / "tmsi-uidlist").unlink()
    assert box.select("INBOX") != before
    assert box.uids_after("INBOX") == [1]


def test_maildir_rejects_folder_names_that_escape(tmp_path):
    with pytest.raises(ValueError):
        MaildirMailbox(tmp_path).folder_path("../etc")


def test_memory_mailbox_renumber_and_crash_simulation():
    box = MemoryMailbox()
    box.add("INBOX", b"a")
    box.add("INBOX", b"b")
    validity = box.select("INBOX")
    box.move("INBOX", [1], "Processed")
    box.renumber("INBOX")
    assert box.select("INBOX") != validity and box.uids_after("INBOX") == [1]
    box.fail_moves = True
    with pytest.raises(MailboxError):
        box.move("INBOX", [1], "Processed")
    assert list(box.fetch("INBOX", [1])) == [(1, b"b")]


def test_batched():
    assert list(batched([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(batched([], 3)) == []
