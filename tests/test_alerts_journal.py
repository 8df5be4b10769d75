"""The alert state machine and the SQLite journal."""
import sqlite3

import pytest

from edge.alerts import AlertPolicy, AlertTracker
from edge.journal import Journal, JournalError


def feed(tracker, scores, dt=0.2, t0=0.0, thr=1.0):
    events = []
    for i, s in enumerate(scores):
        events += tracker.update(t0 + i * dt, s, thr, [i % 3, 0], i)
    return events


def test_start_after_n_of_m_then_updates_then_end_and_cooldown():
    tr = AlertTracker("cam", AlertPolicy(3, 5, update_interval_s=1.0, quiet_s=1.0, cooldown_s=5.0))
    assert feed(tr, [2, 0, 2, 0]) == []  # 2 of 4: not yet
    ev = feed(tr, [2], t0=0.8)
    assert [e.state for e in ev] == ["start"] and tr.active
    ev = feed(tr, [3] * 10 + [9] + [0] * 8, t0=1.0)
    states = [e.state for e in ev]
    assert states.count("update") == 2 and states[-1] == "end"
    assert len({e.alert_id for e in ev}) == 1 and ev[-1].peak_score == 9 and ev[-1].reason == "quiet"
    assert ev[-1].duration_s == pytest.approx(ev[-1].time - ev[-1].started_at)
    assert feed(tr, [5] * 10, t0=6.0) == []  # cooldown
    again = feed(tr, [5] * 5, t0=12.0)
    assert again[0].state == "start" and again[0].alert_id != ev[0].alert_id


def test_close_ends_an_open_alert():
    tr = AlertTracker("cam", AlertPolicy(1, 1))
    start = feed(tr, [4])[0]
    end = tr.close(10.0)
    assert end.state == "end" and end.alert_id == start.alert_id and end.reason == "shutdown"
    assert tr.close(11.0) is None
    with pytest.raises(ValueError, match="trigger_frames"):
        AlertPolicy(6, 5)


def test_journal_seq_per_camera_persists_and_replays(tmp_path):
    path = tmp_path / "state" / "journal.sqlite"
    j = Journal(path)
    assert j.journal_mode() == "wal"
    h = j.append("a", "alert.a", {"state": "start"}, [b"jpeg", b"png"])
    assert h["seq"] == 1
    j.append("b", "alert.b", {"state": "start"})
    j.append("a", "alert.a", {"state": "end"})
    j.close()
    j = Journal(path)
    assert j.append("a", "alert.a", {"state": "start"})["seq"] == 3
    assert j.last_seqs() == {"a": 3, "b": 1}
    assert [(e.header["camera"] if "camera" in e.header else e.topic, e.header["seq"])
            for e in j.since(1)] == [("alert.a", 2), ("alert.a", 3)]
    first = j.since(0)[0]
    assert first.attachments == [b"jpeg", b"png"]
    assert [e.header["seq"] for e in j.since({"a": 2, "b": 0})] == [1, 3]
    assert [e.header["seq"] for e in j.since(0, camera="b")] == [1]


def test_retention_never_reuses_seqs(tmp_path):
    j = Journal(tmp_path / "j.sqlite")
    for _ in range(5):
        j.append("a", "alert.a", {}, [b"x"])
    assert j.prune(max_events=2) == 3 and j.count() == 2
    assert j.append("a", "alert.a", {})["seq"] == 6
    assert j.prune(max_age_s=-1) == 3  # everything is older than "one second in the future"
    left = sqlite3.connect(str(tmp_path / "j.sqlite")).execute("SELECT COUNT(*) FROM attachments")
    assert left.fetchone()[0] == 0


def test_a_file_that_is_not_a_journal_is_refused(tmp_path):
    bad = tmp_path / "journal.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(JournalError, match="not a usable SQLite database"):
        Journal(bad)
