"""The per-camera alert state machine: when alerts start, update, end, and stay quiet."""
import json
import math

import pytest

from pathwatch.edge.alerts import AlertPolicy, AlertTracker

THR = 1.0


def policy(trigger: int, window: int, **durations) -> AlertPolicy:
    """`trigger` of the last `window` frames over the threshold start an alert."""
    return AlertPolicy(trigger_frames=trigger, window_frames=window, **durations)


def feed(tracker, scores, t0=0.0, dt=0.1):
    """Feed scores one frame every dt seconds; returns every event with its frame's time."""
    events = []
    for i, s in enumerate(scores):
        events += tracker.update(t0 + i * dt, s, THR, [i % 4, 1], i)
    return events


def states(events):
    return [e.state for e in events]


def test_starts_only_when_n_of_the_last_m_frames_are_over():
    tr = AlertTracker("cam", AlertPolicy(trigger_frames=3, window_frames=5))
    assert feed(tr, [2, 0, 2, 0, 0, 2, 0, 0, 0]) == []  # never 3 within any 5
    assert not tr.active
    (start,) = feed(tr, [2, 0, 2, 0, 5], t0=1.0)  # 3 of 5, not consecutive
    assert start.state == "start" and tr.active
    assert start.time == pytest.approx(1.4) and start.started_at == start.time
    assert start.score == 5 and start.peak_score == 5 and start.tile == start.peak_tile == [0, 1]
    assert start.frames_over == 3 and start.frame_index == 4 and start.duration_s == 0
    assert start.camera == "cam" and start.threshold == THR and start.reason is None


def test_updates_are_rate_limited_and_carry_the_peak():
    tr = AlertTracker("cam", policy(1, 1, update_interval_s=1.0, quiet_s=5.0))
    scores = [2, 3, 9, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]
    ev = feed(tr, scores, dt=0.1)  # 2.4 s of frames over threshold
    assert states(ev) == ["start", "update", "update"]
    updates = ev[1:]
    assert [round(u.time, 3) for u in updates] == [1.0, 2.0]
    assert all(u.peak_score == 9 and u.peak_tile == [2, 1] for u in updates)
    assert updates[0].score == 2  # the current frame, not the peak
    assert updates[-1].frames_over == len(scores) - 4  # frames 0..20 (t=0..2.0) are all over
    assert updates[-1].duration_s == pytest.approx(2.0)


def test_ends_after_quiet_seconds_without_a_frame_over():
    tr = AlertTracker("cam", policy(1, 1, update_interval_s=100, quiet_s=1.0, cooldown_s=0))
    feed(tr, [5])
    # Dips below threshold shorter than quiet_s keep the alert open.
    assert feed(tr, [0] * 9 + [5] + [0] * 9, t0=0.1) == []
    assert tr.active
    ev = feed(tr, [0, 0], t0=2.0)  # last over at t=1.0; quiet from t=2.0
    assert states(ev) == ["end"] and not tr.active
    end = ev[0]
    assert end.reason == "quiet" and end.time == pytest.approx(2.0)
    assert end.duration_s == pytest.approx(2.0) and end.score == 0 and end.peak_score == 5


def test_no_new_alert_during_cooldown_then_a_new_one_with_a_new_id():
    tr = AlertTracker("cam", policy(2, 3, update_interval_s=100, quiet_s=0.5, cooldown_s=5.0))
    first = feed(tr, [5, 5, 0, 0, 0, 0, 0, 0])
    assert states(first) == ["start", "end"]
    end_time = first[-1].time
    assert tr.in_cooldown(end_time + 1)
    assert feed(tr, [5] * 40, t0=end_time + 0.1) == []  # up to end + 4.0 s
    second = feed(tr, [5, 5], t0=end_time + 5.0)
    assert states(second) == ["start"]
    assert second[0].alert_id != first[0].alert_id


def test_the_window_starts_afresh_after_an_end():
    tr = AlertTracker("cam", policy(3, 5, update_interval_s=100, quiet_s=0.3, cooldown_s=0))
    assert states(feed(tr, [5, 5, 5, 0, 0, 0, 0])) == ["start", "end"]
    # Frames over threshold from before the end must not count towards the next start.
    assert feed(tr, [5, 5], t0=1.0) == []
    assert states(feed(tr, [5], t0=1.2)) == ["start"]


def test_alert_id_is_stable_over_an_alert_and_unique():
    tr = AlertTracker("door", policy(1, 1, update_interval_s=0.2, quiet_s=0.5, cooldown_s=0))
    ev = feed(tr, [5] * 10 + [0] * 6)
    assert states(ev)[0] == "start" and states(ev)[-1] == "end" and "update" in states(ev)
    assert len({e.alert_id for e in ev}) == 1
    assert ev[0].alert_id.startswith("door-19700101T000000-")
    # Same camera, same start time (a restart replaying the same video): still distinct ids.
    ids = {feed(AlertTracker("door", policy(1, 1)), [5])[0].alert_id for _ in range(50)}
    assert len(ids) == 50


def test_close_ends_an_open_alert_and_nothing_otherwise():
    tr = AlertTracker("cam", policy(1, 1, cooldown_s=10))
    assert tr.close(0.0) is None
    start = feed(tr, [4, 7, 3])[0]
    end = tr.close(10.0, "reload")
    assert end.state == "end" and end.alert_id == start.alert_id and end.reason == "reload"
    assert end.score == 3 and end.peak_score == 7 and end.tile == [2, 1] and end.peak_tile == [1, 1]
    assert end.duration_s == pytest.approx(10.0) and end.frame_index is None
    assert not tr.active and tr.close(11.0) is None
    assert feed(tr, [5], t0=15.0) == []  # close() starts the cooldown too
    assert tr.close(30.0, "shutdown") is None


def test_to_header_is_strict_json_with_iso_times():
    tr = AlertTracker("cam", policy(1, 1, update_interval_s=0))
    tr.update(1_700_000_000.0, 5.123456, THR, (3, 2), 7)
    (update,) = tr.update(1_700_000_001.5, math.nan, THR, (0, 0), 8)
    h = update.to_header()
    json.dumps(h, allow_nan=False)
    assert h["time"] == "2023-11-14T22:13:21.500Z"
    assert h["started_at"] == "2023-11-14T22:13:20.000Z"
    assert h["score"] is None and h["peak_score"] == 5.1235 and h["peak_tile"] == [3, 2]
    assert h["state"] == "update" and h["duration_s"] == 1.5 and h["frame_index"] == 8


@pytest.mark.parametrize("kwargs, field", [
    ({"trigger_frames": 6, "window_frames": 5}, "trigger_frames"),
    ({"trigger_frames": 0}, "trigger_frames"),
    ({"quiet_s": -1}, "quiet_s"),
    ({"cooldown_s": float("nan")}, "cooldown_s"),
    ({"update_interval_s": -0.5}, "update_interval_s"),
])
def test_policy_refuses_impossible_settings(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AlertPolicy(**kwargs)


@pytest.mark.parametrize("kwargs, field", [
    ({"trigger_frame": 3}, "trigger_frame"),  # a misspelt key is not quietly ignored
    ({"trigger_frames": True}, "trigger_frames"),  # nor is a boolean read as 1
])
def test_policy_refuses_unknown_keys_and_booleans(kwargs, field):
    with pytest.raises(ValueError, match=field):
        AlertPolicy(**kwargs)


def test_policy_defaults_and_is_frozen():
    # The tracker sizes its window from the policy once: changing it afterwards must fail.
    p = AlertPolicy()
    assert (p.trigger_frames, p.window_frames, p.update_interval_s, p.quiet_s, p.cooldown_s) == \
        (3, 5, 2.0, 3.0, 10.0)
    with pytest.raises(ValueError, match="frozen"):
        p.window_frames = 9
