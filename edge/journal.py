"""The alert journal: every alert event is written to SQLite (WAL) before it is published, so a
subscriber that was away can fetch what it missed, and nothing recorded is lost on a crash.

Sequence numbers are per camera, start at 1 and are never reused, even after retention pruned
the rows that carried them (the high-water mark lives in its own table). One Journal object per
thread: SQLite connections are not shared between threads (the replay server opens its own).
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 1


class JournalError(RuntimeError):
    """The journal file cannot be used; the message names it and what to do."""


@dataclass
class JournalEvent:
    topic: str
    header: dict
    attachments: list[bytes]


class Journal:
    def __init__(self, path: str | Path, reader: bool = False):
        """`reader`: a second connection to a journal its writer already created (the replay
        server's); it changes nothing, so it never competes for the write lock at start-up,
        and it may be handed to the one thread that uses it."""
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None,
                                      check_same_thread=not reader)
            if reader:
                self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                return
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")  # alerts are rare; durability wins
            self._create()
        except sqlite3.DatabaseError as e:
            raise JournalError(f"journal {self.path} is not a usable SQLite database ({e}); move "
                               "it aside (keep it if its events matter) and start again") from None
        except OSError as e:
            raise JournalError(f"journal {self.path} cannot be created ({e}); set journal.path "
                               "or state_dir to a writable directory") from None

    def _create(self) -> None:
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
            self.db.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, "
                            "camera TEXT NOT NULL, seq INTEGER NOT NULL, time REAL NOT NULL, "
                            "topic TEXT NOT NULL, header TEXT NOT NULL, UNIQUE (camera, seq))")
            self.db.execute("CREATE TABLE IF NOT EXISTS attachments (event_id INTEGER NOT NULL, "
                            "position INTEGER NOT NULL, data BLOB NOT NULL, "
                            "PRIMARY KEY (event_id, position))")
            self.db.execute("CREATE TABLE IF NOT EXISTS sequences (camera TEXT PRIMARY KEY, "
                            "last_seq INTEGER NOT NULL)")
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        version = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0]
        if int(version) != SCHEMA_VERSION:
            raise JournalError(f"journal {self.path} has schema {version}, this pathwatch writes "
                               f"{SCHEMA_VERSION}; move the file aside")

    def journal_mode(self) -> str:
        return self.db.execute("PRAGMA journal_mode").fetchone()[0]

    def append(self, camera: str, topic: str, header: dict, attachments: list[bytes] = ()) -> dict:
        """Assign the camera's next seq, store the event durably, return the header with seq."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT last_seq FROM sequences WHERE camera=?", (camera,)).fetchone()
            seq = (row[0] if row else 0) + 1
            self.db.execute("INSERT OR REPLACE INTO sequences VALUES (?, ?)", (camera, seq))
            header = {**header, "seq": seq}
            cur = self.db.execute("INSERT INTO events (camera, seq, time, topic, header) VALUES "
                                  "(?, ?, ?, ?, ?)", (camera, seq, time.time(), topic,
                                                      json.dumps(header)))
            for i, data in enumerate(attachments):
                self.db.execute("INSERT INTO attachments VALUES (?, ?, ?)", (cur.lastrowid, i, data))
        return header

    def since(self, since: int | dict | None = None, camera: str | None = None,
              limit: int = 1000) -> list[JournalEvent]:
        """Events after `since` (one seq for every camera, or {camera: seq}), oldest first."""
        rows = self.db.execute("SELECT id, camera, seq, topic, header FROM events "
                               + ("WHERE camera=? " if camera else "") + "ORDER BY id",
                               (camera,) if camera else ()).fetchall()
        out = []
        for event_id, cam, seq, topic, header in rows:
            after = since.get(cam, 0) if isinstance(since, dict) else (since or 0)
            if seq <= after:
                continue
            blobs = [r[0] for r in self.db.execute(
                "SELECT data FROM attachments WHERE event_id=? ORDER BY position", (event_id,))]
            out.append(JournalEvent(topic, json.loads(header), blobs))
            if len(out) >= limit:
                break
        return out

    def last_seqs(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT camera, last_seq FROM sequences").fetchall())

    def count(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0]

    def prune(self, max_age_s: float | None = None, max_events: int | None = None) -> int:
        """Retention: drop events older than max_age_s and beyond the newest max_events."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            before = self.count()
            if max_age_s is not None:
                self.db.execute("DELETE FROM events WHERE time < ?", (time.time() - max_age_s,))
            if max_events is not None:
                self.db.execute("DELETE FROM events WHERE id NOT IN (SELECT id FROM events "
                                "ORDER BY id DESC LIMIT ?)", (max_events,))
            self.db.execute("DELETE FROM attachments WHERE event_id NOT IN (SELECT id FROM events)")
            removed = before - self.count()
        return removed

    def close(self) -> None:
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass
        self.db.close()
