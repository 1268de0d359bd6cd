"""The agent's ``/metrics`` endpoint: an HTTP server on its own threads, off the event loop.

Opt-in (``[metrics] listen``). A scrape renders what the collector reads from the agent's
memory and touches neither the GPUs nor the event loop, so a slow or hostile scraper cannot
delay sampling or the socket's clients. What it may cost is bounded: at most
``MAX_CONCURRENT`` scrapes are rendered at once (others get 503 at once, not a queue), and a
connection that sends nothing is closed after ``REQUEST_TIMEOUT`` seconds.

A failure to bind (the port taken, the address not on this host) does not stop the agent: its
socket, sampling and actions matter more than its metrics. It logs the reason and tries again
every ``RETRY_BIND`` seconds; Prometheus shows the target down meanwhile.
"""

from __future__ import annotations

import gzip
import http.server
import logging
import socket
import threading
from typing import Any, Final

from prometheus_client.registry import CollectorRegistry

from agents.config import ListenAddress
from agents.export.metrics import MetricsCollector, render

log = logging.getLogger(f"gpufleet.{__name__}")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
MAX_CONCURRENT: Final = 4
REQUEST_TIMEOUT: Final = 10.0
RETRY_BIND: Final = 30.0
#: Below this many bytes a page is sent as it is even to a client that accepts gzip.
GZIP_MIN: Final = 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT
    protocol_version = "HTTP/1.1"  # keep-alive: Prometheus reuses its connection

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            if not self.server.slots.acquire(blocking=False):
                self._send(503, b"too many scrapes at once\n", "text/plain")
                return
            try:
                body = self.server.page()
            finally:
                self.server.slots.release()
            gz = "gzip" in self.headers.get("Accept-Encoding", "") and len(body) >= GZIP_MIN
            self._send(200, gzip.compress(body, 1) if gz else body, CONTENT_TYPE, gz)
        elif path == "/":
            self._send(200, b"gpufleet-agent: see /metrics\n", "text/plain")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str, gz: bool = False) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if gz:
            self.send_header("Content-Encoding", "gzip")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are routine: one per interval is noise in the journal."""
        log.debug("%s %s", self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    slots: threading.BoundedSemaphore
    registry: CollectorRegistry

    def page(self) -> bytes:
        return render(self.registry.collect())


class _Server6(_Server):
    address_family = socket.AF_INET6


class MetricsExporter:
    """Binds ``listen`` and serves the collector's metrics until ``close``."""

    def __init__(self, listen: ListenAddress, collector: MetricsCollector) -> None:
        self.listen = listen
        self.collector = collector
        # Our own registry: none of prometheus-client's default process and platform
        # collectors (the agent's CPU and memory are systemd's and node_exporter's to report).
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._server: _Server | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.bound = threading.Event()

    @property
    def port(self) -> int | None:
        """The port bound, once it is."""
        return None if self._server is None else int(self._server.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()

    def _bind(self) -> _Server:
        # The host is an IP literal (config.parse_listen): its family is in its spelling.
        server_class = _Server6 if ":" in self.listen.host else _Server
        server = server_class((self.listen.host, self.listen.port), _Handler)
        server.slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        server.registry = self.registry
        return server

    def _run(self) -> None:
        said = ""
        while not self._stop.is_set():
            try:
                server = self._bind()
            except OSError as exc:
                why = exc.strerror or str(exc)
                if why != said:
                    log.error(
                        "metrics: cannot listen on %s: %s (retrying every %.0f s)",
                        self.listen,
                        why,
                        RETRY_BIND,
                    )
                    said = why
                self._stop.wait(RETRY_BIND)
                continue
            with self._lock:  # close() either sees this server, or we see it was called
                if self._stop.is_set():
                    server.server_close()
                    return
                self._server = server
            log.info("metrics: serving http://%s/metrics", self.listen)
            self.bound.set()
            server.serve_forever(poll_interval=0.5)  # a shutdown() before this still ends it
            return

    def close(self) -> None:
        """Stop serving (blocks up to half a second: call it off the event loop)."""
        with self._lock:
            self._stop.set()
            server = self._server
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(5)
