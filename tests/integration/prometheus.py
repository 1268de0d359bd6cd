"""A real Prometheus server on loopback, scraping the targets a test gives it.

Debian's ``prometheus`` package (2.42 here), installed by the tests when missing, run as a
plain process, never as the package's service: its own config and TSDB directory in the test's
temporary directory, listening on 127.0.0.1 at a free port, scraping every second. Targets come
from a ``file_sd`` file, so a test can change them while the server runs (Prometheus watches the
file). Shared by the agent's exporter tests and the console's Prometheus source tests::

    with running_prometheus(tmp, ["127.0.0.1:9401"]) as prom:
        prom.wait_up(1)
        prom.query("DCGM_FI_DEV_GPU_UTIL")   # -> [{"metric": {...}, "value": [ts, "37"]}, ...]

or the ``prometheus_factory`` fixture, which stops every server it started.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import system_tool, wait_for
from tests.integration.sshd import free_port

#: A scrape target: "host:port", or "host:port" with labels Prometheus attaches to its series.
Target = str | tuple[str, Mapping[str, str]]


def _sd_doc(targets: Sequence[Target]) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for target in targets:
        addr, labels = (target, {}) if isinstance(target, str) else target
        groups.append({"targets": [addr], "labels": dict(labels)})
    return groups


def _write_targets(root: Path, targets: Sequence[Target]) -> None:
    """Atomically, so Prometheus never reads half a file."""
    sd = root / "targets.json"
    tmp = sd.with_suffix(".tmp")
    tmp.write_text(json.dumps(_sd_doc(targets)))
    os.replace(tmp, sd)


@dataclass
class PrometheusServer:
    root: Path
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.root / "prometheus.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: str) -> Any:
        """GET ``/api/v1/<path>``; the ``data`` of a success, AssertionError otherwise."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = self.get(f"/api/v1/{path}{query}")
        doc = json.loads(body)
        assert status == 200 and doc.get("status") == "success", doc
        return doc["data"]

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        """One plain HTTP GET to the server (loopback only, so no scheme to audit)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result vector: ``[{"metric": labels, "value": [ts, "v"]}]``."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("targets", state="active")["activeTargets"]
        return active

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Replace the scrape targets (Prometheus picks the file up within a second)."""
        _write_targets(self.root, targets)

    def wait_up(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until ``count`` targets are active and each has been scraped successfully."""

        def up() -> list[dict[str, Any]] | None:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.log()}"
            active = self.targets()
            ok = len(active) == count and all(t["health"] == "up" for t in active)
            return active if ok else None

        return wait_for(up, f"{count} Prometheus target(s) up", timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_prometheus(
    root: Path,
    targets: Sequence[Target],
    *,
    scrape_interval: str = "1s",
    scrape_timeout: str | None = None,
) -> PrometheusServer:
    """Start Prometheus scraping ``targets``' ``/metrics``; returns once it answers ready.
    A target's labels may set ``__metrics_path__`` (bench/prom_scale.py serves many nodes
    from one address, a path each) and ``instance``."""
    binary = system_tool("prometheus")
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (root / "prometheus.yml").write_text(
        "global:\n"
        f"  scrape_interval: {scrape_interval}\n"
        f"  scrape_timeout: {scrape_timeout or scrape_interval}\n"
        f"  evaluation_interval: {scrape_interval}\n"
        "scrape_configs:\n"
        "  - job_name: gpufleet\n"
        "    file_sd_configs:\n"
        f"      - files: [{json.dumps(str(root / 'targets.json'))}]\n"
        "        refresh_interval: 1s\n"
    )
    _write_targets(root, targets)
    log = (root / "prometheus.log").open("ab")
    proc = subprocess.Popen(
        [binary, f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h", "--log.level=warn"],
        stdout=log, stderr=log, cwd=root,
    )  # fmt: skip
    log.close()
    server = PrometheusServer(root, port, proc)

    def ready() -> bool:
        assert server.proc.poll() is None, f"prometheus exited:\n{server.log()}"
        try:
            return server.get("/-/ready", timeout=2)[0] == 200
        except OSError:  # not listening yet
            return False

    try:
        wait_for(ready, "Prometheus to be ready", 30)
    except BaseException:
        server.stop()
        raise
    return server


@contextlib.contextmanager
def running_prometheus(
    root: Path, targets: Sequence[Target], *, scrape_interval: str = "1s"
) -> Iterator[PrometheusServer]:
    server = start_prometheus(root, targets, scrape_interval=scrape_interval)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., PrometheusServer]]:
    """``make(targets, scrape_interval="1s")``: a started server; all are stopped after."""
    made: list[PrometheusServer] = []

    def make(targets: Sequence[Target], *, scrape_interval: str = "1s") -> PrometheusServer:
        server = start_prometheus(
            tmp_path / f"prometheus{len(made)}", targets, scrape_interval=scrape_interval
        )
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()
