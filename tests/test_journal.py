"""The SQLite alert journal: per-camera seqs, durability, replay queries, retention, errors."""
import json
import sqlite3
import threading

import numpy as np
import pytest

from pathwatch.edge.journal import Journal, JournalError


def append(j, camera, state="start", attachments=()):
    return j.append(camera, f"alert.{camera}", {"camera": camera, "state": state}, list(attachments))


def keys(events):
    return [(e.header["camera"], e.header["seq"]) for e in events]


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "journal.sqlite")
    yield j
    j.close()


def test_seqs_are_per_camera_and_start_at_one(journal):
    assert [append(journal, c)["seq"] for c in "aabab"] == [1, 2, 1, 3, 2]
    assert journal.last_seqs() == {"a": 3, "b": 2}
    header = append(journal, "a", "end")
    assert header == {"camera": "a", "state": "end", "seq": 4}


def test_the_file_is_created_with_its_parents_in_wal_mode(tmp_path):
    path = tmp_path / "state" / "deeper" / "journal.sqlite"
    j = Journal(path)
    assert path.is_file() and j.journal_mode() == "wal"
    schema = sqlite3.connect(str(path)).execute("SELECT value FROM meta WHERE key='schema'")
    assert schema.fetchone()[0] == "1"
    j.close()


def test_events_and_seqs_survive_reopening(tmp_path):
    path = tmp_path / "journal.sqlite"
    j = Journal(path)
    append(j, "a", attachments=[b"\xff\xd8jpeg", b"\x89PNG"])
    append(j, "b")
    append(j, "a", "end")
    j.close()
    j = Journal(path)
    assert append(j, "a")["seq"] == 3  # continues, never restarts
    events = j.since(0)
    assert keys(events) == [("a", 1), ("b", 1), ("a", 2), ("a", 3)]
    assert events[0].topic == "alert.a" and events[0].attachments == [b"\xff\xd8jpeg", b"\x89PNG"]
    assert events[1].attachments == [] and events[2].header["state"] == "end"
    j.close()


def test_since_takes_one_seq_or_one_per_camera(journal):
    for c in "abcab":
        append(journal, c)
    assert keys(journal.since(1)) == [("a", 2), ("b", 2)]
    assert keys(journal.since(None)) == keys(journal.since(0))
    # Cameras not named replay from the start.
    assert keys(journal.since({"a": 2, "b": 1})) == [("c", 1), ("b", 2)]
    assert keys(journal.since({})) == keys(journal.since(0))
    assert keys(journal.since(0, camera="b")) == [("b", 1), ("b", 2)]
    assert keys(journal.since({"b": 1}, camera="b")) == [("b", 2)]
    assert keys(journal.since(0, limit=2)) == [("a", 1), ("b", 1)]
    assert journal.since(5) == [] and journal.since(0, camera="nobody") == []


@pytest.mark.parametrize("since, limit", [("3", 10), ({"a": "1"}, 10), (True, 10), (0, 0)])
def test_since_refuses_bad_arguments(journal, since, limit):
    with pytest.raises(ValueError, match="since|limit"):
        journal.since(since, limit=limit)


def test_prune_by_count_and_age_never_reuses_seqs(tmp_path, journal):
    for _ in range(5):
        append(journal, "a", attachments=[b"x" * 100])
    append(journal, "b", attachments=[b"y"])
    assert journal.prune(max_events=2) == 4
    assert keys(journal.since(0)) == [("a", 5), ("b", 1)]
    assert journal.prune(max_events=10) == 0
    assert append(journal, "a")["seq"] == 6 and journal.last_seqs() == {"a": 6, "b": 1}
    assert journal.prune(max_age_s=3600) == 0  # all younger than an hour
    assert journal.prune(max_age_s=-1) == 3  # all older than "one second from now"
    assert journal.count() == 0 and journal.last_seqs() == {"a": 6, "b": 1}
    assert append(journal, "b")["seq"] == 2
    blobs = sqlite3.connect(str(tmp_path / "journal.sqlite")).execute(
        "SELECT COUNT(*) FROM attachments").fetchone()[0]
    assert blobs == 0  # attachments go with their events
    with pytest.raises(ValueError, match="max_events"):
        journal.prune(max_events=-1)


def test_headers_are_stored_as_strict_json(journal):
    header = journal.append("a", "alert.a", {"camera": "a", "score": np.float32(2.5),
                                             "tile": (1, np.int64(2)), "z": float("nan")})
    stored = journal.since(0)[0].header
    assert stored == {"camera": "a", "score": 2.5, "tile": [1, 2], "z": None, "seq": 1}
    json.dumps(stored, allow_nan=False)
    assert header["seq"] == 1
    with pytest.raises(ValueError, match="JSON"):
        journal.append("a", "alert.a", {"camera": "a", "blob": object()})
    with pytest.raises(ValueError, match="camera"):
        journal.append("a", "alert.a", {"camera": "b"})
    with pytest.raises(TypeError, match="bytes"):
        journal.append("a", "alert.a", {"camera": "a"}, ["not bytes"])
    assert journal.last_seqs() == {"a": 1}  # refused appends take no seq


def test_a_file_that_is_not_a_database_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "journal.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError) as info:
        Journal(bad)
    message = str(info.value)
    assert str(bad) in message and "move it aside" in message and "\n" not in message
    assert bad.read_bytes() == b"this is not sqlite" * 100  # left untouched


def test_other_databases_and_other_schemas_are_refused(tmp_path):
    other = tmp_path / "other.sqlite"
    sqlite3.connect(str(other)).execute("CREATE TABLE photos (id INTEGER)").connection.commit()
    with pytest.raises(JournalError, match="something else"):
        Journal(other)
    newer = tmp_path / "newer.sqlite"
    Journal(newer).close()
    db = sqlite3.connect(str(newer))
    db.execute("UPDATE meta SET value='2' WHERE key='schema'")
    db.commit()
    db.close()
    with pytest.raises(JournalError, match="schema 2"):
        Journal(newer)


def test_an_unwritable_location_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(JournalError, match="cannot be created") as info:
        Journal(blocker / "journal.sqlite")
    assert str(blocker) in str(info.value)


def test_a_reader_in_another_thread_sees_what_the_writer_commits(tmp_path, journal):
    path = tmp_path / "journal.sqlite"
    reader = Journal(path, reader=True)
    with pytest.raises(JournalError, match="reading"):
        reader.append("a", "alert.a", {})
    seen, errors = [], []
    written = threading.Event()

    def read_in_thread():
        try:
            written.wait(10)
            seen.extend(keys(reader.since(0)))
            seen.append(reader.last_seqs())
        except Exception as e:  # surfaced below
            errors.append(e)
        finally:
            reader.close()

    thread = threading.Thread(target=read_in_thread)
    thread.start()
    append(journal, "a", attachments=[b"1"])
    append(journal, "b")
    written.set()
    thread.join(10)
    assert not errors and seen == [("a", 1), ("b", 1), {"a": 1, "b": 1}]
    with pytest.raises(JournalError, match="does not exist"):
        Journal(tmp_path / "missing.sqlite", reader=True)
