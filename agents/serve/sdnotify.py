"""sd_notify(3) over the standard library: READY, WATCHDOG and STATUS for systemd.

Without NOTIFY_SOCKET (run by hand, in tests) every call is a no-op, so the daemon code does not
need to know whether systemd is watching.
"""

from __future__ import annotations

import contextlib
import os
import socket


class Notifier:
    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        # Abstract-namespace sockets are written with a leading "@" in the environment.
        self._addr = "\0" + addr[1:] if addr.startswith("@") else addr
        self._sock: socket.socket | None = None
        usec = env.get("WATCHDOG_USEC", "")
        wd_pid = env.get("WATCHDOG_PID", "")
        wd_for_us = not wd_pid or wd_pid == str(os.getpid())
        #: How often to ping, half the watchdog timeout as sd_watchdog_enabled(3) advises.
        self.watchdog_interval: float | None = (
            int(usec) / 2e6 if usec.isdigit() and int(usec) > 0 and wd_for_us else None
        )

    @property
    def enabled(self) -> bool:
        return bool(self._addr)

    def notify(self, *fields: str) -> None:
        if not self._addr:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # systemd gone or socket replaced: nothing useful to do but carry on sampling.
        with contextlib.suppress(OSError):
            self._sock.sendto("\n".join(fields).encode(), self._addr)

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
