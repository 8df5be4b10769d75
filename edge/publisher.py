"""ZeroMQ side of the daemon: the PUB socket, the replay endpoint, and the bus that journals
alert events before publishing them.

Wire format (schema 1): multipart `[topic, header, *attachments]`. Topics `alert.<camera>`,
`score.<camera>`, `status.<camera>`, `heartbeat`. The header is UTF-8 JSON with `schema`,
`kind`, ISO-8601 UTC `time` and `camera`; alert headers add the per-camera `seq` from the
journal and `attachments`, the names of the frames that follow (e.g. snapshot.jpg,
heatmap.png). Heartbeats carry `last_seq` per camera so a subscriber notices a missed alert
even when no new one comes.

Sends never block: PUB with a small high-water mark and NOBLOCK, LINGER 0. A slow or dead
subscriber loses messages (counted), never the frame loop's time; it recovers alerts from the
replay endpoint, a ROUTER socket served by its own thread from its own journal connection.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone

import cv2
import numpy as np
import zmq

from .alerts import AlertEvent
from .journal import Journal

SCHEMA = 1
log = logging.getLogger("pathwatch.publisher")


class PublisherError(RuntimeError):
    """A socket that cannot be bound; says which address and what to do."""


def iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""


def encode_png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    return buf.tobytes() if ok else b""


def _bind(socket: zmq.Socket, address: str) -> str:
    try:
        socket.bind(address)
    except zmq.ZMQError as e:
        socket.close(0)
        raise PublisherError(f"cannot bind {address}: {e.strerror}; another pathwatch may be "
                             "running, or choose another address in publisher.*") from None
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    if address.startswith("tcp://") and not any(h in address for h in ("127.0.0.1", "localhost", "[::1]")):
        log.warning("%s is reachable from the network without encryption", endpoint)
    return endpoint


class Publisher:
    def __init__(self, bind: str = "tcp://127.0.0.1:5556", sndhwm: int = 100,
                 context: zmq.Context | None = None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = _bind(self.socket, bind)
        self.sent = 0
        # PUB drops silently for a subscriber whose queue is full; this only counts sends the
        # socket itself refused (no peer buffer at all), which is rare.
        self.dropped = 0
        self._lock = threading.Lock()  # capture threads publish status; ZeroMQ sockets are not thread-safe

    def send(self, topic: str, header: dict, attachments=()) -> bool:
        parts = [topic.encode(), json.dumps(header, allow_nan=False).encode(), *attachments]
        with self._lock:
            try:
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts) < 3)
            except zmq.Again:
                self.dropped += 1
                return False
        self.sent += 1
        return True

    def close(self) -> None:
        with self._lock:
            self.socket.close(0)


class ReplayServer:
    """Answers `{"since": int | {camera: seq}, "camera": ..., "limit": n}` with
    `[summary, header, *attachments, header, ...]` from the journal."""

    def __init__(self, bind: str, journal_path, context: zmq.Context | None = None,
                 max_limit: int = 1000):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.endpoint = _bind(self.socket, bind)
        self.journal_path, self.max_limit = journal_path, max_limit
        self.journal = Journal(journal_path, reader=True)  # used by the serving thread only
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="replay", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        journal = self.journal
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if not dict(poller.poll(100)):
                    continue
                frames = self.socket.recv_multipart()
                # REQ peers put an empty delimiter between the identity and the body.
                split = frames.index(b"") + 1 if b"" in frames[:2] else 1
                envelope, body = frames[:split], frames[split:]
                self.socket.send_multipart(envelope + self._answer(journal, body))
        finally:
            journal.close()
            self.socket.close(0)

    def _answer(self, journal: Journal, body: list[bytes]) -> list[bytes]:
        try:
            req = json.loads(body[0]) if body else None
            if not isinstance(req, dict):
                raise ValueError("request must be a JSON object")
            since = req.get("since", 0)
            if not isinstance(since, (int, dict)) or isinstance(since, bool):
                raise ValueError("'since' must be a seq number or {camera: seq}")
            limit = min(int(req.get("limit", self.max_limit)), self.max_limit)
            events = journal.since(since, req.get("camera"), limit + 1)
        except (ValueError, TypeError, UnicodeDecodeError) as e:
            return [json.dumps({"error": f"bad replay request: {e}"}).encode()]
        more = len(events) > limit
        events = events[:limit]
        out = [json.dumps({"count": len(events), "more": more, "last_seq": journal.last_seqs()}).encode()]
        for e in events:
            out.append(json.dumps(e.header).encode())
            out.extend(e.attachments)
        return out

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)


class AlertBus:
    """Journal first, then publish: an alert a subscriber missed is always in the journal."""

    def __init__(self, journal: Journal, publisher: Publisher):
        self.journal, self.publisher = journal, publisher
        self._lock = threading.Lock()

    def alert(self, event: AlertEvent, extra: dict, attachments: dict[str, bytes]) -> dict:
        header = {"schema": SCHEMA, "kind": "alert", "time": iso_time(event.time),
                  **event.to_header(), **extra, "attachments": list(attachments)}
        header.pop("time", None)
        header["time"] = iso_time(event.time)
        with self._lock:
            header = self.journal.append(event.camera, f"alert.{event.camera}", header,
                                         list(attachments.values()))
        self.publisher.send(f"alert.{event.camera}", header, list(attachments.values()))
        return header

    def score(self, camera: str, fields: dict) -> None:
        self.publisher.send(f"score.{camera}", {"schema": SCHEMA, "kind": "score",
                                                "time": iso_now(), "camera": camera, **fields})

    def status(self, camera: str, state: str, detail: str = "") -> None:
        self.publisher.send(f"status.{camera}", {"schema": SCHEMA, "kind": "status",
                                                 "time": iso_now(), "camera": camera,
                                                 "state": state, "detail": detail})

    def heartbeat(self, extra: dict | None = None) -> None:
        with self._lock:
            last = self.journal.last_seqs()
        self.publisher.send("heartbeat", {"schema": SCHEMA, "kind": "heartbeat",
                                          "time": iso_now(), "camera": None, "last_seq": last,
                                          "dropped": self.publisher.dropped, **(extra or {})})
