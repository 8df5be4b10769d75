"""ZeroMQ side of the daemon: the PUB socket, the replay endpoint, and the bus that journals
alert events before publishing them.

Wire format (schema 1): multipart `[topic, header, *attachments]`. Topics `alert.<camera>`,
`score.<camera>`, `status.<camera>`, `heartbeat`. The header is UTF-8 JSON with `schema`,
`kind`, ISO-8601 UTC `time` and `camera`; alert headers add the per-camera `seq` from the
journal, `state`, `alert_id`, scores, tiles, `latency_ms` and `attachments`, the names of the
frames that follow (e.g. snapshot.jpg, heatmap.png). Heartbeats carry `last_seq` per camera so
a subscriber notices a missed alert even when no new one comes.

Sends never block: PUB with a small high-water mark, NOBLOCK and LINGER 0. A PUB socket drops
messages for a subscriber whose queue is full silently and for that subscriber only, so a slow
or dead subscriber costs neither the frame loop's time nor the other subscribers' messages. Such
a subscriber notices the loss by `seq` (or by a heartbeat's `last_seq`) and fetches what it
missed from the replay endpoint: a ROUTER socket served by its own thread from its own journal
connection. Request: JSON `{"since": seq | {camera: seq}, "camera": name, "limit": n}`; reply:
`[summary, header, *attachments, header, *attachments, ...]`, the summary being
`{"count": n, "more": bool, "last_seq": {camera: seq}}` or `{"error": "..."}`.
"""
from __future__ import annotations

import collections
import json
import logging
import sqlite3
import threading
import time

import cv2
import numpy as np
import zmq

from .alerts import AlertEvent
from .clock import iso_now
from .journal import Journal, check_since, dumps_header

SCHEMA = 1
REPLAY_KEYS = {"since", "camera", "limit"}
UNJOURNALED_MAX = 1000  # alert events kept in memory while the journal cannot be written
JOURNAL_RETRY_S = 5.0
log = logging.getLogger("pathwatch.publisher")

__all__ = ["SCHEMA", "AlertBus", "NoBus", "Publisher", "PublisherError", "ReplayServer", "encode_jpeg",
           "encode_png"]


class PublisherError(RuntimeError):
    """A socket that cannot be bound; says which address and what to do."""


def _check_image(image, what: str) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.size == 0 or image.ndim not in (2, 3) \
            or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"{what}: expected an HxW or HxWx3 image array, got {shape}")
    return image


def encode_jpeg(bgr: np.ndarray, quality: int = 85) -> bytes:
    """A BGR (or grayscale) uint8 frame as JPEG bytes, for the snapshot attachment."""
    image = _check_image(bgr, "encode_jpeg")
    if image.dtype != np.uint8:
        raise ValueError(f"encode_jpeg: expected uint8 pixels, got {image.dtype}; scale to 0..255")
    if not 1 <= quality <= 100:
        raise ValueError(f"encode_jpeg: quality {quality} is outside 1..100")
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"encode_jpeg: OpenCV could not encode a {image.shape} image")
    return buf.tobytes()


def encode_png(gray_or_bgr: np.ndarray) -> bytes:
    """A grayscale or BGR uint8/uint16 image as PNG bytes (lossless), for the heatmap."""
    image = _check_image(gray_or_bgr, "encode_png")
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png: expected uint8 or uint16 pixels, got {image.dtype}")
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"encode_png: OpenCV could not encode a {image.shape} image")
    return buf.tobytes()


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def network_reachable(address: str) -> bool:
    """A tcp bind other than loopback (ipc:// and inproc:// stay on the machine)."""
    local = any(h in address for h in ("127.0.0.1", "localhost", "[::1]"))
    return address.startswith("tcp://") and not local


def _bind(socket: zmq.Socket, address: str, what: str, secure=None) -> str:
    """Bind, or close the socket and raise a one-line error naming the address. `secure`, if
    given, configures the socket (CURVE) first: security options only apply before bind."""
    try:
        if secure is not None:
            secure(socket)
        socket.bind(address)
    except zmq.ZMQError as e:
        socket.close(0)
        raise PublisherError(f"cannot bind the {what} to {address}: {e.strerror}; another "
                             "pathwatch may be running there, or choose another address in "
                             "the publisher section of the config") from None
    endpoint = socket.getsockopt(zmq.LAST_ENDPOINT).decode()
    if network_reachable(address) and secure is None:
        log.warning("%s %s is reachable from the network without encryption", what, endpoint)
    return endpoint


def _rebind(socket: zmq.Socket, endpoint: str) -> None:
    """Unbinding a listening endpoint closes the connections it accepted; binding it again
    admits new handshakes, which the authenticator checks against its current keys."""
    socket.unbind(endpoint)
    socket.bind(endpoint)


class Publisher:
    """The PUB socket. Thread-safe: capture threads publish status while the frame loop
    publishes alerts, and a ZeroMQ socket must not be used by two threads at once.
    `secure`: None, or a function that configures a server socket (edge.security)."""

    def __init__(self, bind: str = "tcp://127.0.0.1:5556", sndhwm: int = 100,
                 context: zmq.Context | None = None, secure=None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, sndhwm)
        self.socket.setsockopt(zmq.LINGER, 0)  # close() never waits for a dead subscriber
        self.endpoint = _bind(self.socket, bind, "publisher", secure)
        self.sent = 0
        # Sends the socket refused (zmq.Again). A full queue of one subscriber is not counted
        # here: PUB drops for that subscriber alone without telling the sender; subscribers
        # see it as a seq gap.
        self.dropped = 0
        self._lock = threading.Lock()
        self._closed = False

    def send(self, topic: str, header: dict, attachments=()) -> bool:
        """Publish without blocking; False when the message was dropped (or after close)."""
        parts = [topic.encode(), dumps_header(header).encode(), *attachments]
        with self._lock:
            if self._closed:
                return False
            try:
                # Zero-copy for the (large) attachment frames; small messages copy faster.
                self.socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=len(parts) < 3)
            except zmq.Again:
                self.dropped += 1
                return False
            self.sent += 1
        return True

    def rebind(self) -> None:
        """Cut every subscriber's connection (they reconnect by themselves, with a fresh
        handshake): after a CURVE key was revoked, its holder must not keep listening."""
        with self._lock:
            if not self._closed:
                _rebind(self.socket, self.endpoint)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.socket.close(0)


class ReplayServer:
    """Serves the journal to subscribers that missed events (see the module docstring)."""

    def __init__(self, bind: str = "tcp://127.0.0.1:5557", journal_path=None,
                 context: zmq.Context | None = None, secure=None, max_limit: int = 1000,
                 max_reply_bytes: int = 64 << 20):
        if journal_path is None:
            raise ValueError("ReplayServer needs journal_path, the file the daemon journals to")
        self.context = context or zmq.Context.instance()
        # Open the journal first: a missing or bad file must not leave a bound socket behind.
        self.journal = Journal(journal_path, reader=True)  # used by the serving thread only
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        try:
            self.endpoint = _bind(self.socket, bind, "replay endpoint", secure)
        except PublisherError:
            self.journal.close()
            raise
        self.journal_path, self.max_limit = journal_path, max_limit
        self.max_reply_bytes = max_reply_bytes  # a page ends early rather than grow unbounded
        self.served = 0
        self._stop, self._rebind = threading.Event(), threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name="pathwatch.replay", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if self._rebind.is_set():  # the socket belongs to this thread
                    self._rebind.clear()
                    _rebind(self.socket, self.endpoint)
                if not dict(poller.poll(100)):  # short, so stop() and rebind() are prompt
                    continue
                frames = self.socket.recv_multipart()
                # ROUTER prefixes the peer identity; REQ peers add an empty delimiter after it.
                split = 2 if len(frames) > 1 and frames[1] == b"" else 1
                envelope, body = frames[:split], frames[split:]
                self.socket.send_multipart(envelope + self._reply(body))
                self.served += 1
        finally:
            self.journal.close()
            self.socket.close(0)

    def _reply(self, body: list[bytes]) -> list[bytes]:
        try:
            return self._answer(body)
        except ValueError as e:
            return [json.dumps({"error": f"bad replay request: {e}"}).encode()]
        except Exception as e:  # the endpoint must outlive any one request
            log.exception("replay request failed")
            return [json.dumps({"error": f"replay failed: {e}"}).encode()]

    def _parse(self, body: list[bytes]) -> tuple:
        if len(body) != 1:
            raise ValueError(f"expected one JSON frame, got {len(body)} frames")
        try:
            req = json.loads(body[0])
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(req, dict):
            raise ValueError("the request must be a JSON object like {\"since\": 0}")
        unknown = set(req) - REPLAY_KEYS
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; use {sorted(REPLAY_KEYS)}")
        since = check_since(req.get("since"))
        camera = req.get("camera")
        if camera is not None and not isinstance(camera, str):
            raise ValueError("'camera' must be a camera name")
        limit = req.get("limit")
        limit = self.max_limit if limit is None else limit
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError("'limit' must be a whole number >= 1")
        return since, camera, min(limit, self.max_limit)

    def _answer(self, body: list[bytes]) -> list[bytes]:
        since, camera, limit = self._parse(body)
        events = self.journal.since(since, camera, limit + 1)  # one extra tells `more`
        more = len(events) > limit
        frames, size, count = [], 0, 0
        for e in events[:limit]:
            event_frames = [dumps_header(e.header).encode(), *e.attachments]
            size += sum(len(f) for f in event_frames)
            if count and size > self.max_reply_bytes:
                more = True
                break
            frames += event_frames
            count += 1
        summary = {"count": count, "more": more, "last_seq": self.journal.last_seqs()}
        return [json.dumps(summary).encode(), *frames]

    def rebind(self) -> None:
        """Cut every open connection within about 0.1 s (see Publisher.rebind)."""
        self._rebind.set()

    def stop(self) -> None:
        """Stop serving within about 0.1 s; closes the socket and the journal connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        elif not self.socket.closed:  # never started: nothing else will close them
            self.journal.close()
            self.socket.close(0)


class AlertBus:
    """Journal first, then publish: an alert a subscriber missed is always in the journal.
    Thread-safe; the journal connection it was given must belong to the calling thread
    (or only ever be used under this bus).

    A journal that cannot be written (locked by another process, a full or read-only disk)
    does not stop alerts: they are numbered here, published with `journaled: false`, and kept
    in memory (at most UNJOURNALED_MAX, oldest dropped and counted as lost) until a write
    works again, tried every JOURNAL_RETRY_S; the `journal` topic, the heartbeat and the
    log say so."""

    def __init__(self, journal: Journal, publisher: Publisher):
        self.journal, self.publisher = journal, publisher
        self._lock = threading.Lock()
        self._seqs = journal.last_seqs()  # numbered here, so a failing journal cannot stall it
        self._pending: collections.deque[tuple[str, str, dict, list[bytes]]] = collections.deque()
        self.lost = 0
        self.journal_error: str | None = None
        self._retry_at = 0.0

    def alert(self, event: AlertEvent, extra: dict | None = None,
              attachments: dict[str, bytes] | None = None) -> dict:
        """Journal the event (assigning its seq), publish it, return the header as sent."""
        attachments = attachments or {}
        header = {"schema": SCHEMA, "kind": "alert", **event.to_header(), **(extra or {}),
                  "attachments": list(attachments)}
        topic = f"alert.{event.camera}"
        blobs = list(attachments.values())
        with self._lock:
            header = self._record(event.camera, topic, header, blobs)
        self.publisher.send(topic, header, blobs)
        return header

    def _record(self, camera: str, topic: str, header: dict, blobs: list[bytes]) -> dict:
        if self._flush():  # in order: nothing is written past an event still waiting
            try:
                header = self.journal.append(camera, topic, header, blobs)  # it numbers
                self._seqs[camera] = header["seq"]
                return header
            except sqlite3.Error as e:
                self._failed(e)
        seq = self._seqs[camera] = self._seqs.get(camera, 0) + 1
        header = {**header, "seq": seq}
        if len(self._pending) >= UNJOURNALED_MAX:
            lost = self._pending.popleft()
            self.lost += 1
            log.error("journal: no room to keep alert event %s seq %s for later; it is lost",
                      lost[0], lost[2]["seq"])
        self._pending.append((camera, topic, header, blobs))
        return {**header, "journaled": False}

    def _flush(self) -> bool:
        """Write the events kept while the journal failed; True when none is left."""
        if self._pending and time.monotonic() < self._retry_at:
            return False
        while self._pending:
            camera, topic, header, blobs = self._pending[0]
            try:
                self.journal.append(camera, topic, header, blobs, seq=header["seq"])
            except sqlite3.IntegrityError:  # that seq was taken meanwhile by another writer
                renumbered = self.journal.append(camera, topic, header | {"seq": None}, blobs)
                self._seqs[camera] = max(self._seqs[camera], renumbered["seq"])
                log.warning("journal: alert event %s seq %s was journaled as seq %s (another "
                            "process wrote to this journal)", camera, header["seq"],
                            renumbered["seq"])
            except sqlite3.Error as e:
                self._failed(e)
                return False
            self._pending.popleft()
        if self.journal_error is not None:
            self.journal_error = None
            log.warning("journal: writable again; every kept event is written")
            self._journal_status("ok", "writable again; every kept event is written")
        return True

    def _failed(self, e: Exception) -> None:
        self._retry_at = time.monotonic() + JOURNAL_RETRY_S
        if self.journal_error is None:
            self.journal_error = str(e)
            log.error("journal %s cannot be written (%s); alerts are still published and kept "
                      "in memory until it can", self.journal.path, e)
            self._journal_status("failing", f"cannot be written ({e}); alerts are published "
                                 "with journaled: false and kept in memory")

    def _journal_status(self, state: str, detail: str) -> None:
        self.publisher.send("journal", {"schema": SCHEMA, "kind": "journal", "time": iso_now(),
                                        "camera": None, "state": state, "detail": detail,
                                        "unjournaled": len(self._pending), "lost": self.lost})

    def close(self) -> None:
        """At shutdown: one last try to write what is kept; what cannot be is said."""
        with self._lock:
            self._retry_at = 0.0
            if not self._flush():
                log.error("journal: %d alert events published but never written: %s",
                          len(self._pending), ", ".join(f"{c} seq {h['seq']}" for c, _, h, _
                                                         in self._pending))

    def journal_state(self) -> dict:
        return {"ok": self.journal_error is None, "unjournaled": len(self._pending),
                "lost": self.lost, "error": self.journal_error}

    def score(self, camera: str, header: dict) -> None:
        self.publisher.send(f"score.{camera}", {"schema": SCHEMA, "kind": "score",
                                                "time": iso_now(), "camera": camera, **header})

    def status(self, camera: str, state: str, detail: str = "") -> None:
        self.publisher.send(f"status.{camera}", {"schema": SCHEMA, "kind": "status",
                                                 "time": iso_now(), "camera": camera,
                                                 "state": state, "detail": detail})

    def heartbeat(self, extra: dict | None = None) -> None:
        """Not journaled. `last_seq` lets a subscriber see alerts it missed; `journal` says
        whether alerts are being written. Kept events are retried here too."""
        with self._lock:
            self._flush()
            try:  # the journal's own marks count too: another writer may have added events
                for camera, seq in self.journal.last_seqs().items():
                    self._seqs[camera] = max(seq, self._seqs.get(camera, 0))
            except sqlite3.Error:
                pass  # a failing journal: the marks numbered here are the news
            last, journal = dict(sorted(self._seqs.items())), self.journal_state()
        self.publisher.send("heartbeat", {"schema": SCHEMA, "kind": "heartbeat",
                                          "time": iso_now(), "camera": None, "last_seq": last,
                                          "dropped": self.publisher.dropped, "journal": journal,
                                          **(extra or {})})

    def stats(self, payload: dict) -> None:
        """Per-camera figures on the `stats` topic (not journaled)."""
        self.publisher.send("stats", {"schema": SCHEMA, "kind": "stats", "time": iso_now(),
                                      "camera": None, **payload})

    def prune(self, max_age_s: float, max_events: int) -> int:
        """Journal retention; returns how many events were removed (0 while it fails)."""
        with self._lock:
            try:
                return self.journal.prune(max_age_s=max_age_s, max_events=max_events)
            except sqlite3.Error as e:
                log.warning("journal: retention skipped this time (%s)", e)
                return 0


class NoBus:
    """Where nothing is published (`pathwatch calibrate`): the bus's calls, no sockets, no
    journal."""

    def alert(self, event: AlertEvent, extra: dict | None = None,
              attachments: dict[str, bytes] | None = None) -> dict:
        return {}

    def score(self, camera: str, header: dict) -> None:
        pass

    def status(self, camera: str, state: str, detail: str = "") -> None:
        pass

    def heartbeat(self, extra: dict | None = None) -> None:
        pass

    def stats(self, payload: dict) -> None:
        pass

    def prune(self, max_age_s: float, max_events: int) -> int:
        return 0

    def journal_state(self) -> dict:
        return {"ok": True, "unjournaled": 0, "lost": 0, "error": None}

    def close(self) -> None:
        pass
