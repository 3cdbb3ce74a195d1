"""Extra DNS test helpers for the verification tests: a lossy, misbehaving UDP proxy in front of Knot.

``LossyProxy(upstream_host, upstream_port, drop_every=5, forge_every=7)`` listens on a free loopback port
and forwards every query to the upstream server. It drops the first reply to every ``drop_every``-th
distinct question (the client must retry), and before the real reply to every ``forge_every``-th it sends
a forged one with the same message id but another question (the client must match on the question too).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading

import dns.message
import dns.rrset

from tests.services.ports import free_port


class LossyProxy:
    def __init__(
        self, upstream_host: str, upstream_port: int, *, drop_every: int = 5, forge_every: int = 7
    ) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.drop_every = drop_every
        self.forge_every = forge_every
        self.host = "127.0.0.1"
        self.port = free_port()
        self.dropped = 0
        self.forged = 0
        self._seen: dict[str, int] = {}  # question text -> order of first appearance
        self._dropped_once: set[str] = set()
        self._clients: dict[int, tuple[tuple[str, int], str]] = {}
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._front.bind((self.host, self.port))
        self._back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._back.connect(self.upstream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lossy-dns", daemon=True)
        self._thread.start()

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def _loop(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._front, self._back], [], [], 0.1)
            for sock in readable:
                with contextlib.suppress(OSError, ValueError):
                    if sock is self._front:
                        self._from_client()
                    else:
                        self._from_upstream()

    def _from_client(self) -> None:
        wire, client = self._front.recvfrom(65535)
        query = dns.message.from_wire(wire)
        question = query.question[0].to_text()
        self._seen.setdefault(question, len(self._seen) + 1)
        self._clients[query.id] = (client, question)
        self._back.send(wire)

    def _from_upstream(self) -> None:
        wire = self._back.recv(65535)
        reply = dns.message.from_wire(wire)
        client, question = self._clients.pop(reply.id, (None, ""))
        if client is None:
            return
        order = self._seen[question]
        if order % self.drop_every == 0 and question not in self._dropped_once:
            self._dropped_once.add(question)
            self.dropped += 1
            return
        if order % self.forge_every == 0:
            forged = dns.message.make_response(dns.message.make_query("forged.example.test.", "PTR"))
            forged.id = reply.id
            forged.answer.append(
                dns.rrset.from_text("forged.example.test.", 60, "IN", "PTR", "evil.example.test.")
            )
            self._front.sendto(forged.to_wire(), client)
            self.forged += 1
        self._front.sendto(wire, client)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._front.close()
        self._back.close()
