"""The alert journal: every alert event is written to SQLite before it is published, so a
subscriber that was away can fetch what it missed, and nothing recorded is lost on a crash.

Layout (schema 1): `meta` (key/value, holds the schema version), `events` (one row per event:
camera, seq, insert time, topic, header JSON), `attachments` (the event's binary frames, in
order) and `sequences` (each camera's last seq). Sequence numbers are per camera, start at 1
and are never reused, even after retention pruned the rows that carried them: the high-water
mark lives in `sequences`, not in `events`.

Threads: a Journal is one SQLite connection, and a connection belongs to one thread. Open one
Journal per thread on the same file (the daemon writes through one, the replay server reads
through its own); WAL mode lets the reader see committed events while the writer goes on.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1
BUSY_WAIT_S = 2.0  # how long the writer waits for a lock held elsewhere before failing
_TABLES = {"meta", "events", "attachments", "sequences"}


class JournalError(RuntimeError):
    """The journal file cannot be used; the message names it and what to do."""


@dataclass
class JournalEvent:
    topic: str
    header: dict
    attachments: list[bytes]


def _plain(value):
    """JSON-safe copy: numpy scalars and arrays become Python numbers and lists, non-finite
    floats become None (JSON has no NaN), tuples become lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy, no import
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps_header(header: dict) -> str:
    """A header as strict JSON text, the same bytes in the journal and on the wire."""
    try:
        return json.dumps(_plain(header), allow_nan=False, separators=(",", ":"))
    except TypeError as e:
        raise ValueError(f"alert header is not JSON-serialisable ({e}); pass plain numbers, "
                         "strings, lists and dicts") from None


def check_since(since) -> int | dict[str, int]:
    """Validate a replay position: a seq for every camera, or {camera: seq}; None means 0."""
    if since is None:
        return 0
    if isinstance(since, int) and not isinstance(since, bool):
        return since
    if isinstance(since, dict) and all(isinstance(k, str) and isinstance(v, int)
                                       and not isinstance(v, bool) for k, v in since.items()):
        return since
    raise ValueError(f"'since' must be a seq number or {{camera: seq}}, not {since!r}")


def _private(path: Path) -> None:
    """The journal holds camera snapshots: owner only (SQLite gives its -wal and -shm files
    the database file's mode). An existing file we own is tightened too."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_uid == os.getuid():
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Journal:
    def __init__(self, path: str | Path, reader: bool = False):
        """Open (creating it and its directory if needed) the journal at `path`.

        `reader=True`: a read-only second connection to a journal its writer already created
        (the replay server's). It never takes the write lock, and it may be created in one
        thread and handed to the one thread that then uses it."""
        self.path = Path(path).expanduser()
        self.reader = reader
        try:
            if not reader:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _private(self.path)
            elif not self.path.is_file():
                raise JournalError(f"journal {self.path} does not exist; start the daemon (which "
                                   "creates it) or point the replay server at the right file")
            # The writer waits briefly for a lock: the frame loop writes, and a journal that
            # another process holds is a fault to report and ride out, not to wait on.
            self.db = sqlite3.connect(str(self.path), timeout=10.0 if reader else BUSY_WAIT_S,
                                      isolation_level=None, check_same_thread=not reader)
        except OSError as e:
            raise JournalError(f"journal {self.path} cannot be created ({e}); set journal.path "
                               "or state_dir to a writable directory") from None
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path} cannot be opened ({e}); check that the path "
                               "is a file in a writable directory") from None
        try:
            if not reader:
                self.db.execute("PRAGMA journal_mode=WAL")
                # Alerts are rare; losing one already reported as recorded would be worse.
                self.db.execute("PRAGMA synchronous=FULL")
                self._create()
            self._check_schema()
        except sqlite3.DatabaseError as e:
            self.db.close()
            if "locked" in str(e) or "busy" in str(e):
                raise JournalError(f"journal {self.path} is locked by another process (another "
                                   "pathwatch on the same state_dir, or a tool holding it open); "
                                   "stop it, or set journal.path") from None
            raise JournalError(f"journal {self.path} is not a usable SQLite database ({e}); move "
                               "it aside (keep it if its events matter) and start again") from None
        except JournalError:
            self.db.close()
            raise

    # ------------------------------------------------------------------ schema
    def _create(self) -> None:
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise JournalError(f"journal {self.path} is an SQLite database of something else "
                               f"(tables {sorted(tables)}); choose another journal path")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, "
                            "camera TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, "
                            "topic TEXT NOT NULL, header TEXT NOT NULL, UNIQUE (camera, seq))")
            self.db.execute("CREATE INDEX IF NOT EXISTS events_time ON events (time)")
            self.db.execute("CREATE TABLE IF NOT EXISTS attachments (event_id INTEGER NOT NULL, "
                            "position INTEGER NOT NULL, data BLOB NOT NULL, "
                            "PRIMARY KEY (event_id, position))")
            self.db.execute("CREATE TABLE IF NOT EXISTS sequences (camera TEXT PRIMARY KEY, "
                            "last_seq INTEGER NOT NULL)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _check_schema(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
        if row is None or str(row[0]) != str(SCHEMA_VERSION):
            found = "no schema version" if row is None else f"schema {row[0]}"
            raise JournalError(f"journal {self.path} has {found}, this pathwatch uses schema "
                               f"{SCHEMA_VERSION}; move the file aside or use a matching pathwatch")

    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    # ------------------------------------------------------------------ writing
    def append(self, camera: str, topic: str, header: dict, attachments: list[bytes] = (),
               seq: int | None = None) -> dict:
        """Assign the camera's next seq (or store the `seq` given, which the bus numbered while
        the journal could not be written), store the event durably (committed when this
        returns), and return the header with `seq` filled in."""
        if self.reader:
            raise JournalError(f"journal {self.path} was opened for reading; append through "
                               "the writer's Journal")
        if header.get("camera", camera) != camera:
            raise ValueError(f"journal append: header camera {header['camera']!r} is not "
                             f"{camera!r}")
        blobs = list(attachments)
        for i, data in enumerate(blobs):
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"journal append: attachment {i} is {type(data).__name__}, "
                                "not bytes; encode it first (encode_jpeg/encode_png)")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # the seq read and its use are one transaction
            row = self.db.execute("SELECT last_seq FROM sequences WHERE camera=?",
                                  (camera,)).fetchone()
            last = row[0] if row else 0
            seq = last + 1 if seq is None else seq
            self.db.execute("INSERT OR REPLACE INTO sequences VALUES (?, ?)",
                            (camera, max(seq, last)))
            header = {**header, "seq": seq}
            cur = self.db.execute("INSERT INTO events (camera, seq, time, topic, header) "
                                  "VALUES (?, ?, ?, ?, ?)",
                                  (camera, seq, time.time(), topic, dumps_header(header)))
            self.db.executemany("INSERT INTO attachments VALUES (?, ?, ?)",
                                [(cur.lastrowid, i, bytes(d)) for i, d in enumerate(blobs)])
        return header

    def prune(self, max_age_s: float | None = None, max_events: int | None = None) -> int:
        """Retention: drop events older than `max_age_s` and all but the newest `max_events`.
        Returns how many were dropped. Seqs are not reused afterwards."""
        if max_age_s is not None and math.isnan(max_age_s):
            raise ValueError("journal prune: max_age_s must be a number of seconds")
        if max_events is not None and max_events < 0:
            raise ValueError(f"journal prune: max_events is {max_events}; it must be >= 0")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            removed = 0
            if max_age_s is not None:
                removed += self.db.execute("DELETE FROM events WHERE time < ?",
                                           (time.time() - max_age_s,)).rowcount
            if max_events is not None:
                removed += self.db.execute("DELETE FROM events WHERE id NOT IN (SELECT id FROM "
                                           "events ORDER BY id DESC LIMIT ?)",
                                           (max_events,)).rowcount
            if removed:
                self.db.execute("DELETE FROM attachments WHERE event_id NOT IN "
                                "(SELECT id FROM events)")
        return removed

    # ------------------------------------------------------------------ reading
    def since(self, since: int | dict[str, int] | None = None, camera: str | None = None,
              limit: int = 1000) -> list[JournalEvent]:
        """Events with seq above `since` (one seq for every camera, or {camera: seq}, cameras
        not named counting from 0), optionally of one camera, oldest first (insert order),
        at most `limit`."""
        since = check_since(since)
        if camera is not None and not isinstance(camera, str):
            raise ValueError(f"'camera' must be a camera name, not {camera!r}")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"'limit' must be a whole number >= 1, not {limit!r}")
        if isinstance(since, dict) and since:
            cases = " ".join("WHEN ? THEN ?" for _ in since)
            where, args = f"seq > CASE camera {cases} ELSE 0 END", \
                [x for kv in since.items() for x in kv]
        else:
            where, args = "seq > ?", [since if isinstance(since, int) else 0]
        if camera is not None:
            where, args = where + " AND camera = ?", args + [camera]
        # One read transaction: a prune between the two queries cannot strip attachments.
        self.db.execute("BEGIN")
        try:
            rows = self.db.execute(f"SELECT id, topic, header FROM events WHERE {where} "
                                   "ORDER BY id LIMIT ?", (*args, limit)).fetchall()
            out = []
            for event_id, topic, header in rows:
                blobs = [r[0] for r in self.db.execute(
                    "SELECT data FROM attachments WHERE event_id=? ORDER BY position", (event_id,))]
                out.append(JournalEvent(topic, json.loads(header), blobs))
        finally:
            self.db.execute("COMMIT")
        return out

    def open_alerts(self) -> list[dict]:
        """The last header of every alert whose `end` was never journaled (the daemon was
        killed or crashed while it was open), oldest first."""
        rows = self.db.execute(
            "SELECT header FROM events WHERE id IN (SELECT MAX(id) FROM events "
            "WHERE topic LIKE 'alert.%' GROUP BY camera, json_extract(header, '$.alert_id')) "
            "AND json_extract(header, '$.state') != 'end' ORDER BY id").fetchall()
        return [json.loads(r[0]) for r in rows]

    def last_seqs(self) -> dict[str, int]:
        """{camera: last seq assigned}, including cameras whose events were all pruned."""
        return dict(self.db.execute("SELECT camera, last_seq FROM sequences ORDER BY camera"))

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def close(self) -> None:
        if not self.reader:
            try:  # fold the WAL back so the file alone holds everything
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
        self.db.close()
