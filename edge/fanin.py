"""Many daemons' alert streams in one place, losing none.

Two ways, for two kinds of sites:

- `Forwarder` (`pathwatch forward`): one endpoint pair for a whole site. Its XSUB side connects
  to every daemon's publisher and its XPUB side re-publishes everything (subscriptions travel
  upstream, so each daemon sends only what someone downstream wants). Its replay endpoint asks
  every daemon's replay endpoint and answers with the union, so a subscriber of the forwarder
  fills gaps exactly as it would with one daemon. Camera names must be unique across the
  daemons behind one forwarder (seq is per camera).
- `FleetSubscriber` (`pathwatch tail --connect A --replay RA --connect B --replay RB`): a client
  that follows several daemons directly, one AlertSubscriber each, so each daemon's gaps are
  filled from its own journal; every message says which daemon it came from.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import zmq

from .publisher import PublisherError, _bind
from .subscriber import AlertSubscriber, Message

log = logging.getLogger("pathwatch.fanin")
UPSTREAM_TIMEOUT_S = 3.0  # a replay upstream that does not answer fails the whole request

__all__ = ["Daemon", "FleetSubscriber", "Forwarder", "parse_upstream"]


@dataclass(frozen=True)
class Daemon:
    """One daemon's two endpoints, as a client connects to them."""
    pub: str
    replay: str | None

    @property
    def name(self) -> str:
        return self.pub


def parse_upstream(text: str) -> Daemon:
    """'PUB,REPLAY' (or 'PUB' alone: live only) -> Daemon; ValueError for anything else."""
    from .config import check_endpoint

    parts = text.split(",")
    if len(parts) > 2 or not parts[0]:
        raise ValueError(f"upstream {text!r} must be PUB or PUB,REPLAY (e.g. "
                         "tcp://cam-host-1:5556,tcp://cam-host-1:5557)")
    for p in parts:
        check_endpoint(p)
    return Daemon(parts[0], parts[1] if len(parts) == 2 else None)


class Forwarder:
    """XSUB -> XPUB for the live stream, and a merging replay endpoint (see the module doc).
    `secure_server`: configures the two bound sockets (CURVE towards subscribers);
    `secure_client`: configures the sockets towards the daemons."""

    def __init__(self, upstreams: list[Daemon], bind: str, replay_bind: str | None,
                 context: zmq.Context | None = None, secure_server=None, secure_client=None):
        if not upstreams:
            raise ValueError("a forwarder needs at least one upstream daemon (--upstream PUB,REPLAY)")
        self.upstreams = upstreams
        self.context = context or zmq.Context.instance()
        self.secure_client = secure_client
        self._stop = threading.Event()
        self.xsub = self.context.socket(zmq.XSUB)
        self.xsub.setsockopt(zmq.LINGER, 0)
        if secure_client is not None:
            secure_client(self.xsub)
        for d in upstreams:
            self.xsub.connect(d.pub)
        self.xpub = self.context.socket(zmq.XPUB)
        self.xpub.setsockopt(zmq.LINGER, 0)
        self.xpub.setsockopt(zmq.SNDHWM, 1000)  # beyond it a slow subscriber loses live messages
        try:
            self.endpoint = _bind(self.xpub, bind, "forwarder", secure_server)
            self.router = None
            if replay_bind is not None:
                self.router = self.context.socket(zmq.ROUTER)
                self.router.setsockopt(zmq.LINGER, 0)
                self.replay_endpoint = _bind(self.router, replay_bind, "forwarder replay",
                                             secure_server)
        except PublisherError:
            self.xsub.close(0)
            self.xpub.close(0)
            raise
        self.forwarded = self.replays = 0
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Live forwarding and replay each on a thread of their own (each owns its sockets),
        so a slow daemon's replay never holds up the live stream."""
        self._threads = [threading.Thread(target=self._forward, name="pathwatch.forward",
                                          daemon=True)]
        if self.router is not None:
            self._threads.append(threading.Thread(target=self._serve_replay, daemon=True,
                                                  name="pathwatch.forward.replay"))
        for t in self._threads:
            t.start()

    def _forward(self) -> None:
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if self.xsub in ready:  # daemons -> subscribers, never blocking on one
                    parts = self.xsub.recv_multipart(copy=False)
                    try:
                        self.xpub.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                        self.forwarded += 1
                    except zmq.Again:
                        pass
                if self.xpub in ready:  # subscriptions travel upstream
                    self.xsub.send_multipart(self.xpub.recv_multipart())
        finally:
            self.xsub.close(0)
            self.xpub.close(0)

    def _serve_replay(self) -> None:
        try:
            while not self._stop.is_set():
                if not self.router.poll(100):
                    continue
                frames = self.router.recv_multipart()
                split = 2 if len(frames) > 1 and frames[1] == b"" else 1
                self.router.send_multipart(frames[:split] + self._replay(frames[split:]))
                self.replays += 1
        finally:
            self.router.close(0)

    def _replay(self, body: list[bytes]) -> list[bytes]:
        """Ask every daemon; the union of their answers, or an error naming the daemon that
        did not answer (all or nothing: a partial answer would read as events lost)."""
        summary = {"count": 0, "more": False, "last_seq": {}}
        frames: list[bytes] = []
        for d in self.upstreams:
            if d.replay is None:
                continue
            try:
                answer = self._ask(d.replay, body)
                head = json.loads(answer[0])
            except (zmq.ZMQError, ValueError, IndexError, TimeoutError) as e:
                return [json.dumps({"error": f"daemon {d.replay} did not answer ({e})"}).encode()]
            if "error" in head:
                return [json.dumps({"error": f"daemon {d.replay}: {head['error']}"}).encode()]
            summary["count"] += head.get("count", 0)
            summary["more"] = summary["more"] or bool(head.get("more"))
            summary["last_seq"].update(head.get("last_seq") or {})
            frames += answer[1:]
        return [json.dumps(summary).encode(), *frames]

    def _ask(self, address: str, body: list[bytes]) -> list[bytes]:
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.secure_client is not None:
                self.secure_client(sock)
            sock.connect(address)
            sock.send_multipart(body)
            if not sock.poll(int(UPSTREAM_TIMEOUT_S * 1000)):
                raise TimeoutError(f"no answer within {UPSTREAM_TIMEOUT_S:g} s")
            return sock.recv_multipart()
        finally:
            sock.close(0)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(UPSTREAM_TIMEOUT_S + 2.0)
        if not self._threads:  # never started: nothing else closes them
            for sock in (self.xsub, self.xpub, self.router):
                if sock is not None:
                    sock.close(0)


class FleetSubscriber:
    """Several daemons followed at once, each by its own AlertSubscriber on its own thread
    (ZeroMQ sockets stay with the thread that made them); messages come out of one queue,
    each header with `daemon` set to the publisher address it came from."""

    def __init__(self, daemons: list[Daemon], topics=("alert.",), since=None, secure=None,
                 maxsize: int = 10000):
        self.daemons, self.topics, self.since, self.secure = daemons, topics, since, secure
        self.queue: queue.Queue[Message] = queue.Queue(maxsize)
        self._stop = threading.Event()
        self.subscribers: dict[str, AlertSubscriber] = {}
        self._threads = [threading.Thread(target=self._follow, args=(d,), daemon=True,
                                          name=f"pathwatch.fleet:{d.pub}") for d in daemons]
        for t in self._threads:
            t.start()

    def _follow(self, d: Daemon) -> None:
        sub = AlertSubscriber(d.pub, d.replay, self.topics, self.since, secure=self.secure)
        self.subscribers[d.name] = sub
        try:
            while not self._stop.is_set():
                for m in sub.events(timeout_s=0.2):
                    m.header["daemon"] = d.name
                    while not self._stop.is_set():
                        try:
                            self.queue.put(m, timeout=0.2)  # a slow reader slows its followers
                            break
                        except queue.Full:
                            continue
                    if self._stop.is_set():
                        break
        finally:
            sub.close()

    def events(self, timeout_s: float | None = None) -> Iterator[Message]:
        """Messages from every daemon as they come; returns after `timeout_s` without one."""
        while True:
            try:
                yield self.queue.get(timeout=timeout_s)
            except queue.Empty:
                return

    def silent_s(self) -> float:
        """Seconds since any daemon was last heard (heartbeats included)."""
        subs = list(self.subscribers.values())
        return min((s.silent_s() for s in subs), default=0.0)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2.0)
