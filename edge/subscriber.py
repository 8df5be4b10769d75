"""The client side of the alert stream: subscribe, notice gaps by seq, fill them from replay.

Alert events arrive in order per camera with consecutive `seq`. When a subscriber starts late
(`since`), misses messages (its queue overflowed, it reconnected) or a heartbeat shows a
camera's `last_seq` ahead of what it saw, it asks the replay endpoint for the missing events
and yields them in order, each (camera, seq) exactly once.

What cannot be recovered is said, not hidden: when the replay endpoint does not answer (or the
journal no longer holds the events) the stream yields a notice, topic `missed.<camera>` (or
`missed` when the camera is unknown), header `{"kind": "missed", "camera", "from_seq",
"to_seq", "reason"}`, and goes on; `replay_ok` / `replay_error` tell the endpoint's state.
After a failed request, replay is not tried again for `replay_retry_s`, so a dead endpoint
costs one timeout, not one per message.
"""
from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import zmq

from .journal import check_since
from .clock import iso_now
from .publisher import SCHEMA


class ReplayUnavailable(RuntimeError):
    """The replay endpoint did not answer in time, or refused the request."""


@dataclass
class Message:
    topic: str
    header: dict
    attachments: list[bytes]


def _camera_seq(header: dict) -> tuple[str | None, int | None]:
    cam, seq = header.get("camera"), header.get("seq")
    if isinstance(cam, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return cam, seq
    return None, None


class AlertSubscriber:
    """`since`: None follows the live stream only (a camera's first message sets where it
    stands); an int or {camera: seq} first replays everything after it, and the stream then
    continues from there without a hole."""

    def __init__(self, pub_addr: str, replay_addr: str | None, topics=("alert.",),
                 since: int | dict | None = None, context: zmq.Context | None = None,
                 replay_timeout_s: float = 3.0, replay_retry_s: float = 10.0,
                 rcvhwm: int = 10000, secure=None, backlog: int = 0):
        """`secure`: None, or a function that configures a client socket for CURVE
        (edge.security.client_options); it is applied to the SUB and every replay socket.
        `backlog`: with `since=None`, a camera first learned from a heartbeat starts with its
        last `backlog` journaled events (a live view shows recent alerts on connect)."""
        self.topics = tuple(topics)
        self.secure = secure
        self.since = None if since is None else check_since(since)
        self.context = context or zmq.Context.instance()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, rcvhwm)  # beyond it the publisher drops; replay refills
        for t in set(self.topics) | {"heartbeat"}:  # heartbeats reveal missed alerts
            self.sub.setsockopt(zmq.SUBSCRIBE, t.encode())
        try:
            if secure is not None:
                secure(self.sub)
            self.sub.connect(pub_addr)
        except zmq.ZMQError as e:
            self.sub.close(0)
            raise ValueError(f"cannot connect to {pub_addr}: {e.strerror}; give an address like "
                             "tcp://127.0.0.1:5556") from None
        self.replay_addr = replay_addr
        self.replay_timeout_s, self.replay_retry_s = replay_timeout_s, replay_retry_s
        self.backlog = max(0, int(backlog))
        # Highest seq yielded per camera; cameras absent count from `floor` (None: adopt the
        # first seq heard, a subscriber without `since` wants new events, not history).
        self.seen: dict[str, int] = dict(self.since) if isinstance(self.since, dict) else {}
        self.floor: int | None = None if self.since is None else \
            (self.since if isinstance(self.since, int) else 0)
        self.started_at = time.monotonic()
        self.last_message_at: float | None = None  # time.monotonic() of the last message heard
        self.replay_ok: bool | None = None  # None: not needed yet
        self.replay_error: str | None = None
        self.recovered = 0  # events obtained from replay
        self.missed = 0  # events reported as unrecoverable
        self.malformed = 0  # messages that were not the wire format (ignored)
        self._replay_blocked_until = 0.0

    def silent_s(self) -> float:
        """Seconds since the last message (any topic, heartbeats included) or since start."""
        return time.monotonic() - (self.last_message_at or self.started_at)

    def wants(self, topic: str) -> bool:
        return any(topic.startswith(t) for t in self.topics)

    # ------------------------------------------------------------------ replay
    def _request(self, request: dict) -> list[bytes]:
        if time.monotonic() < self._replay_blocked_until:
            raise ReplayUnavailable(self.replay_error or "replay endpoint unavailable")
        sock = self.context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            if self.secure is not None:
                self.secure(sock)
            sock.connect(self.replay_addr)
            sock.send(json.dumps(request).encode())
            if not sock.poll(int(self.replay_timeout_s * 1000)):
                self.replay_ok = False
                self.replay_error = (f"replay endpoint {self.replay_addr} did not answer within "
                                     f"{self.replay_timeout_s:g} s")
                self._replay_blocked_until = time.monotonic() + self.replay_retry_s
                raise ReplayUnavailable(self.replay_error)
            frames = sock.recv_multipart()
        except zmq.ZMQError as e:
            self.replay_ok, self.replay_error = False, f"replay endpoint {self.replay_addr}: {e}"
            raise ReplayUnavailable(self.replay_error) from None
        finally:
            sock.close(0)
        self.replay_ok, self.replay_error = True, None
        return frames

    def _page(self, since, camera: str | None) -> tuple[dict, list[Message]]:
        frames = self._request({"since": since, "camera": camera})
        try:
            summary = json.loads(frames[0])
            if "error" in summary:
                raise ReplayUnavailable(f"replay endpoint refused: {summary['error']}")
            batch, i = [], 1
            while i < len(frames):
                header = json.loads(frames[i])
                n = len(header.get("attachments", []))
                batch.append(Message(f"alert.{header['camera']}", header, frames[i + 1:i + 1 + n]))
                i += 1 + n
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ReplayUnavailable(f"replay endpoint {self.replay_addr} sent a malformed reply "
                                    f"({e})") from None
        return summary, batch

    def replay_iter(self, since: int | dict, camera: str | None = None) -> Iterator[Message]:
        """Every journaled event after `since`, oldest first, page by page."""
        if self.replay_addr is None:
            raise ReplayUnavailable("no replay endpoint configured")
        since = check_since(since)
        while True:
            summary, batch = self._page(since, camera)
            yield from batch
            if not summary.get("more") or not batch:
                return
            # Next page: every camera from where this page left it. An int `since` applies to
            # all cameras, so spell it out for each one the journal knows.
            position = dict(since) if isinstance(since, dict) else \
                {cam: since for cam in summary.get("last_seq", {})}
            for m in batch:
                cam, seq = _camera_seq(m.header)
                if cam is not None:
                    position[cam] = max(position.get(cam, 0), seq)
            since = position

    def replay(self, since: int | dict, camera: str | None = None) -> list[Message]:
        return list(self.replay_iter(since, camera))

    # ------------------------------------------------------------------ bookkeeping
    def _known(self, camera: str) -> int | None:
        return self.seen.get(camera, self.floor)

    def _accept(self, m: Message) -> bool:
        """Topic filter and (camera, seq) deduplication; records what was yielded."""
        if not self.wants(m.topic):
            return False
        cam, seq = _camera_seq(m.header)
        if cam is None:
            return True  # score/status/heartbeat messages carry no seq
        known = self._known(cam)
        if known is not None and seq <= known:
            return False  # a duplicate where replay and live overlap
        self.seen[cam] = seq
        return True

    def _missed(self, camera: str | None, first: int | None, last: int | None,
                reason: str) -> Message:
        if camera is not None and last is not None:
            self.missed += last - first + 1
            self.seen[camera] = max(self.seen.get(camera, 0), last)  # move on, reported
        header = {"schema": SCHEMA, "kind": "missed", "time": iso_now(), "camera": camera,
                  "from_seq": first, "to_seq": last, "reason": reason}
        return Message("missed" if camera is None else f"missed.{camera}", header, [])

    def _fill(self, camera: str, last: int) -> Iterator[Message]:
        """Yield the camera's events after what was seen, up to `last`, from replay; report
        what could not be had."""
        first = self._known(camera) + 1
        try:
            for m in self.replay_iter({camera: first - 1}, camera):
                seq = _camera_seq(m.header)[1]
                if seq > last:
                    break
                if seq > self._known(camera) + 1:  # a hole retention cut into the journal
                    yield self._missed(camera, self._known(camera) + 1, seq - 1,
                                       "not in the journal any more (retention)")
                if self._accept(m):
                    self.recovered += 1
                    yield m
        except ReplayUnavailable as e:
            reason = str(e)
        else:
            reason = "not in the journal any more (retention)"
        if self._known(camera) < last:
            yield self._missed(camera, self._known(camera) + 1, last, reason)

    def _catch_up(self, last_seq: dict) -> Iterator[Message]:
        """A heartbeat says how far each camera's journal is: fill cameras that are behind."""
        if not isinstance(last_seq, dict):
            return
        for cam, seq in last_seq.items():
            if not isinstance(seq, int) or not self.wants(f"alert.{cam}"):
                continue
            known = self._known(cam)
            if known is None:
                self.seen[cam] = max(0, seq - self.backlog)  # a live-only subscriber starts here
                known = self.seen[cam]
            if seq > known:
                yield from self._fill(cam, seq)

    def _initial(self) -> Iterator[Message]:
        since, self.since = self.since, None
        try:
            for m in self.replay_iter(since):
                if self._accept(m):
                    self.recovered += 1
                    yield m
        except ReplayUnavailable as e:
            # Cameras not known yet: the first live message or heartbeat says how much is
            # missing and retries (after replay_retry_s) or reports it per camera.
            yield self._missed(None, None, None, f"could not replay events after {since}: {e}")

    # ------------------------------------------------------------------ stream
    def _receive(self) -> Message | None:
        parts = self.sub.recv_multipart()
        self.last_message_at = time.monotonic()
        try:
            header = json.loads(parts[1])
            if not isinstance(header, dict):
                raise ValueError("header is not a JSON object")
            return Message(parts[0].decode(), header, parts[2:])
        except (IndexError, ValueError, UnicodeDecodeError):
            self.malformed += 1
            return None

    def events(self, timeout_s: float | None = None) -> Iterator[Message]:
        """Yield Messages in order; returns once `timeout_s` pass without any message
        (None: never). Can be called again to go on."""
        if self.since is not None:
            yield from self._initial()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = 200 if deadline is None else \
                min(200, max(0, int((deadline - time.monotonic()) * 1000)))
            if not self.sub.poll(wait_ms):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            msg = self._receive()
            if deadline is not None:
                deadline = time.monotonic() + timeout_s
            if msg is None:
                continue
            if msg.topic == "heartbeat":
                yield from self._catch_up(msg.header.get("last_seq"))
                if self.wants("heartbeat"):
                    yield msg
                continue
            cam, seq = _camera_seq(msg.header)
            if cam is not None and self.wants(msg.topic):
                known = self._known(cam)
                if known is not None and seq > known + 1:
                    yield from self._fill(cam, seq - 1)
            if self._accept(msg):
                yield msg

    def close(self) -> None:
        self.sub.close(0)


def tail_line(m: Message) -> str:
    """One JSON line: the topic, the header, and the attachments' sizes (not their bytes)."""
    return json.dumps({"topic": m.topic, **m.header,
                       "attachment_bytes": [len(a) for a in m.attachments]})


def save_attachments(m: Message, directory: Path) -> list[Path]:
    """An event's attachments as files: DIR/<camera>/<alert_id>/<seq>-<name>. Names from the
    stream are reduced to plain file names, so no message can write outside DIR."""
    names = m.header.get("attachments") or []
    if not m.attachments or len(names) != len(m.attachments):
        return []
    plain = [re.sub(r"[^\w.-]", "_", str(x)).lstrip(".") or "_" for x in
             (m.header.get("camera"), m.header.get("alert_id"))]
    folder = directory.joinpath(*plain)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, blob in zip(names, m.attachments):
        path = folder / (f"{m.header.get('seq', 0)}-" + re.sub(r"[^\w.-]", "_", str(name)))
        path.write_bytes(blob)
        paths.append(path)
    return paths


def tail_main(pub: str, replay: str | None, since: int | dict | None = None,
              topics=("alert.",), out=None, stop_after: int | None = None,
              timeout_s: float | None = None, secure=None, err=None,
              silent_after_s: float = 5.0, save_dir: str | Path | None = None,
              subscriber=None) -> int:
    """`pathwatch tail`: print each event as one JSON line and flush. `stop_after`: exit after
    that many stream events (`missed` notices are printed but not counted); `timeout_s`: exit
    after that long without a message. While nothing (not even a heartbeat) is heard for
    `silent_after_s`, one notice goes to `err` (stderr), so stdout stays JSON only.
    `save_dir`: also write each event's attachments there; `subscriber`: one already made
    (an edge.fanin.FleetSubscriber following several daemons) instead of `pub`/`replay`.
    Returns the exit status (0)."""
    out, err = out or sys.stdout, err or sys.stderr
    sub = subscriber or AlertSubscriber(pub, replay, topics, since, secure=secure)
    n, warned = 0, False
    try:
        if stop_after is not None and stop_after <= 0:
            return 0
        while timeout_s is None or sub.silent_s() < timeout_s:
            for m in sub.events(timeout_s=0.5):
                if save_dir is not None:
                    save_attachments(m, Path(save_dir))
                out.write(tail_line(m) + "\n")
                out.flush()
                if m.header.get("kind") != "missed":
                    n += 1
                    if stop_after is not None and n >= stop_after:
                        return 0
            if warned and sub.silent_s() < silent_after_s:  # heartbeats count, shown or not
                err.write(f"pathwatch tail: hearing the daemon at {pub} again\n")
                err.flush()
                warned = False
            if not warned and sub.silent_s() >= silent_after_s:
                err.write(f"pathwatch tail: nothing from {pub} for {sub.silent_s():.0f} s (no "
                          "heartbeat); is `pathwatch run` running there, and, with CURVE, "
                          "are --server-key/--client-key right? Still waiting.\n")
                err.flush()
                warned = True
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
    return 0
