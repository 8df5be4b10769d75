"""sd_notify without a library: one datagram per state change to $NOTIFY_SOCKET.

READY=1 goes out once the bundle is loaded and the cameras are opened; WATCHDOG=1 is sent from
the frame loop (so a hung loop stops the pings and systemd restarts the service), four times
per WatchdogSec: systemd asks for at least two, and with four a ping that comes late (a slow
pass of the loop) still leaves more than half of WatchdogSec to spare.
"""
from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None = None):
        self.address = address
        self.interval_s = watchdog_usec / 4e6 if watchdog_usec else None
        self._last_ping = 0.0
        self._sock = None
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            # An abstract socket is written with a leading '@' in the environment.
            self._target = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_environment(cls) -> "Notifier":
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if pid and pid.isdigit() and int(pid) != os.getpid():
            usec = None  # the watchdog belongs to another process
        return cls(os.environ.get("NOTIFY_SOCKET"), int(usec) if usec and usec.isdigit() else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, state: str) -> bool:
        """Send one state line; WATCHDOG=1 is rate-limited. Returns whether a datagram went out."""
        if self._sock is None:
            return False
        if state == "WATCHDOG=1":
            now = time.monotonic()
            if self.interval_s is None or now - self._last_ping < self.interval_s:
                return False
            self._last_ping = now
        try:
            self._sock.sendto(state.encode(), self._target)
        except OSError:
            return False  # systemd gone (e.g. during shutdown): nothing useful to do
        return True
