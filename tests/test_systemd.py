"""The systemd unit and the sd_notify protocol against a real datagram socket."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pathwatch.edge.systemd import Notifier

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "pathwatch.service"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path):
    exe = Path(sys.executable).with_name("pathwatch")
    unit = tmp_path / "pathwatch.service"
    unit.write_text(UNIT.read_text().replace("/opt/pathwatch/venv/bin/pathwatch", str(exe)))
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    text = UNIT.read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DeviceAllow=char-video4linux",
                 "SupplementaryGroups=video render", "StateDirectory=pathwatch",
                 "CacheDirectory=pathwatch", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert line in text


def _settings(text):
    """Each key of the [Service] section to the list of its assignments, in order."""
    out, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and line and not line.startswith(("#", ";")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_hardening_rates_2_5_or_better_and_keeps_devices_and_network(tmp_path):
    unit = tmp_path / "pathwatch.service"
    unit.write_text(UNIT.read_text())
    res = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                         capture_output=True, text=True, env={**os.environ, "SYSTEMD_COLORS": "0"})
    m = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", res.stdout)
    if m is None and res.returncode != 0 and re.search(r"unrecognized option|[Uu]nknown (command|verb)"
                                                       r"|offline|not supported", res.stderr):
        pytest.skip(f"systemd-analyze security --offline unsupported: {res.stderr.strip()[:200]}")
    assert m is not None, res.stdout + res.stderr
    assert float(m.group(1)) <= 2.5, res.stdout

    # ... and the settings that keep cameras, GPUs, the network and the runtimes working.
    s = _settings(UNIT.read_text())
    truthy = {"yes", "true", "on", "1"}
    assert s["DevicePolicy"] == ["closed"]
    allowed = {v.split()[0]: v.split()[1] for v in s["DeviceAllow"]}
    for dev in ("char-video4linux", "/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm",
                "/dev/nvhost-ctrl", "/dev/nvmap", "char-nvidia-frontend", "char-drm"):
        assert allowed.get(dev) == "rw", dev
    families = s["RestrictAddressFamilies"][-1].split()
    assert families[0] != "~" and not families[0].startswith("~")
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= set(families)
    assert not set(s.get("PrivateDevices", [])) & truthy  # would hide /dev/video*
    assert not set(s.get("MemoryDenyWriteExecute", [])) & truthy  # ORT/TensorRT JIT
    assert s.get("ProcSubset", ["all"])[-1] != "pid"  # /proc/cpuinfo, /proc/driver/nvidia
    assert "IPAddressDeny" not in s  # cameras live on arbitrary addresses
    assert s["SupplementaryGroups"] == ["video render"]
    filters = s["SystemCallFilter"]
    assert filters[0] == "@system-service"
    denied = {name for f in filters if f.startswith("~") for name in f[1:].split()}
    assert not denied & {"@resources", "@ipc", "@memlock", "ioctl", "mmap", "sched_setaffinity"}
    assert s["SystemCallErrorNumber"] == ["EPERM"]


def _socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def _drain(sock, seconds):
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            pass
    return got


def test_notifier_rate_limits_watchdog_pings(tmp_path):
    sock, path = _socket(tmp_path)
    n = Notifier(path, watchdog_usec=400_000)  # ping at most every 0.1 s (a quarter)
    assert n.send("READY=1")
    sent = sum(n.send("WATCHDOG=1") for _ in range(50))
    assert sent == 1
    time.sleep(0.25)
    assert n.send("WATCHDOG=1")
    assert _drain(sock, 0.3) == ["READY=1", "WATCHDOG=1", "WATCHDOG=1"]
    assert not Notifier(None).send("READY=1")


def test_daemon_notifies_ready_then_watchdog_and_stops_pinging_when_stuck(tmp_path, default_env):
    sock, path = _socket(tmp_path)
    env = {**default_env, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen([sys.executable, "-m", "pathwatch.cli", "run", "--config",
                             str(default_env["PATHWATCH_TEST_CONFIG"])], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        msgs, deadline = [], time.monotonic() + 240
        while "READY=1" not in msgs and time.monotonic() < deadline and proc.poll() is None:
            msgs += _drain(sock, 0.5)
        assert "READY=1" in msgs, proc.stderr.read() if proc.poll() is not None else "no READY"
        assert _drain(sock, 1.5).count("WATCHDOG=1") >= 3
        os.kill(proc.pid, signal.SIGSTOP)  # a hung process sends nothing
        _drain(sock, 0.3)
        assert _drain(sock, 1.0) == []
        os.kill(proc.pid, signal.SIGCONT)
        assert "WATCHDOG=1" in _drain(sock, 1.5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert "STOPPING=1" in _drain(sock, 0.5)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_log_lines_for_journald_carry_the_priority(tmp_path):
    """Under journald (stderr is the stream $JOURNAL_STREAM names) each line is
    '<priority>LEVEL message'; an inherited variable that names another stream is ignored."""
    script = textwrap.dedent("""
        import logging, os, sys
        from pathwatch.cli.daemon_commands import setup_logging
        st = os.fstat(2)
        os.environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino + int(sys.argv[1])}"
        setup_logging("info", "text")
        logging.getLogger("pathwatch").warning("alert start a=1")
        logging.getLogger("pathwatch").info("camera demo: online")
    """)
    lines = {}
    for offset in (0, 1):
        err = tmp_path / f"stderr{offset}"
        with open(err, "w") as f:
            subprocess.run([sys.executable, "-c", script, str(offset)], stderr=f, check=True,
                           cwd=Path(__file__).resolve().parent.parent)
        lines[offset] = err.read_text().splitlines()
    assert lines[0] == ["<4>WARNING alert start a=1", "<6>INFO camera demo: online"]
    assert len(lines[1]) == 2 and lines[1][0].endswith(" WARNING alert start a=1")
    assert not lines[1][0].startswith("<")
