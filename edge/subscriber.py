"""The client side of the alert stream: subscribe, notice gaps by seq, fill them from replay.

Alert events arrive in order per camera with consecutive `seq`. When a subscriber starts late
(`since`), misses messages (its queue overflowed, it was restarted) or a heartbeat shows a
camera's `last_seq` ahead of what it saw, it asks the replay endpoint for the missing events
and yields them in order, each exactly once.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass

import zmq


class ReplayUnavailable(RuntimeError):
    """The replay endpoint did not answer in time."""


@dataclass
class Message:
    topic: str
    header: dict
    attachments: list[bytes]


class AlertSubscriber:
    def __init__(self, pub_addr: str, replay_addr: str | None, topics=("alert.",),
                 since: int | dict | None = None, context: zmq.Context | None = None,
                 replay_timeout_s: float = 3.0):
        self.context = context or zmq.Context.instance()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 10000)
        self.topics = tuple(topics)
        for t in set(self.topics) | {"heartbeat"}:  # heartbeats reveal missed alerts
            self.sub.setsockopt(zmq.SUBSCRIBE, t.encode())
        self.sub.connect(pub_addr)
        self.replay_addr, self.replay_timeout_s = replay_addr, replay_timeout_s
        self.seen: dict[str, int] = {}
        self.since = since
        self.last_message_at: float | None = None
        self.replay_ok: bool | None = None
        self._pending: list[Message] = []

    # ------------------------------------------------------------------ replay
    def replay(self, since: int | dict, camera: str | None = None) -> list[Message]:
        if self.replay_addr is None:
            return []
        out: list[Message] = []
        while True:
            sock = self.context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.replay_addr)
            try:
                sock.send(json.dumps({"since": since, "camera": camera}).encode())
                if not sock.poll(int(self.replay_timeout_s * 1000)):
                    self.replay_ok = False
                    raise ReplayUnavailable(f"replay endpoint {self.replay_addr} did not answer "
                                            f"within {self.replay_timeout_s:g} s")
                frames = sock.recv_multipart()
            finally:
                sock.close(0)
            self.replay_ok = True
            summary = json.loads(frames[0])
            if "error" in summary:
                raise ReplayUnavailable(summary["error"])
            i = 1
            batch = []
            while i < len(frames):
                header = json.loads(frames[i])
                n = len(header.get("attachments", []))
                batch.append(Message(f"alert.{header['camera']}", header, frames[i + 1:i + 1 + n]))
                i += 1 + n
            out += batch
            if not summary.get("more") or not batch:
                return out
            # Continue after what arrived, camera by camera.
            since = dict(since) if isinstance(since, dict) else {}
            for m in batch:
                since[m.header["camera"]] = max(since.get(m.header["camera"], 0), m.header["seq"])

    def _fill(self, camera: str | None, upto: dict | None = None) -> list[Message]:
        since = dict(self.seen) if camera is None else {camera: self.seen.get(camera, 0)}
        try:
            events = self.replay(since if since else 0, camera)
        except ReplayUnavailable:
            return []
        return [m for m in events if self._accept(m)]

    def _accept(self, m: Message) -> bool:
        cam, seq = m.header.get("camera"), m.header.get("seq")
        if not any(m.topic.startswith(t) for t in self.topics):
            return False
        if seq is None:
            return True
        if seq <= self.seen.get(cam, 0):
            return False  # a duplicate from replay and live overlap
        self.seen[cam] = seq
        return True

    # ------------------------------------------------------------------ stream
    def events(self, timeout_s: float | None = None):
        """Yield Messages in order; returns after `timeout_s` without a message (None: never)."""
        if self.since is not None:
            try:
                initial = self.replay(self.since)
            except ReplayUnavailable:
                initial = []
            self.since = None
            for m in initial:
                if self._accept(m):
                    yield m
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait = 200 if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self.sub.poll(min(wait, 200)):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            parts = self.sub.recv_multipart()
            self.last_message_at = time.monotonic()
            if deadline is not None:
                deadline = time.monotonic() + timeout_s
            topic, header = parts[0].decode(), json.loads(parts[1])
            msg = Message(topic, header, parts[2:])
            if topic == "heartbeat":
                for m in self._catch_up(header.get("last_seq", {})):
                    yield m
                if "heartbeat" in self.topics:
                    yield msg
                continue
            seq, cam = header.get("seq"), header.get("camera")
            if seq is not None and self.seen.get(cam, 0) + 1 < seq and cam in self.seen:
                for m in self._fill(cam):
                    if m.header["seq"] < seq:
                        yield m
            if self._accept(msg):
                yield msg

    def _catch_up(self, last_seq: dict) -> list[Message]:
        """A heartbeat says how far each camera's journal is. Cameras never heard of start
        from there (a new subscriber wants new events, not history); cameras behind are
        filled from replay."""
        out = []
        for cam, seq in last_seq.items():
            if not any(f"alert.{cam}".startswith(t) for t in self.topics):
                continue
            if cam not in self.seen:
                self.seen[cam] = seq
            elif seq > self.seen[cam]:
                out += self._fill(cam)
        return out

    def close(self) -> None:
        self.sub.close(0)


def tail_main(pub: str, replay: str | None, since: int | None, topics=("alert.",), out=None,
              stop_after: int | None = None, timeout_s: float | None = None) -> int:
    """`pathwatch tail`: one JSON object per line (header + attachment sizes), flushed."""
    out = out or sys.stdout
    sub = AlertSubscriber(pub, replay, topics, since)
    n = 0
    try:
        for m in sub.events(timeout_s):
            line = {"topic": m.topic, **m.header,
                    "attachment_bytes": [len(a) for a in m.attachments]}
            out.write(json.dumps(line) + "\n")
            out.flush()
            n += 1
            if stop_after is not None and n >= stop_after:
                break
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    return 0
