"""The ``[metrics]`` setting and the HTTP endpoint serving ``/metrics``, on real sockets."""

from __future__ import annotations

import gzip
import http.client
import socket
import threading
from collections.abc import Iterator

import pytest
from prometheus_client.metrics_core import Metric

from agents.config import ConfigError, ListenAddress, parse_config, parse_listen
from agents.export.exporter import MAX_CONCURRENT, MetricsExporter
from agents.export.metrics import MetricsCollector
from agents.gpu.base import GpuInventory
from agents.protocol import GpuInfo, NodeState, Sample
from tests.conftest import wait_for
from tests.integration.sshd import free_port


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:9401", "127.0.0.1", 9401),
        ("0.0.0.0:9401", "0.0.0.0", 9401),
        ("[::1]:9401", "::1", 9401),
        ("[::]:19401", "::", 19401),
        (" 10.1.2.3:80 ", "10.1.2.3", 80),
    ],
)
def test_listen_addresses_accepted(text: str, host: str, port: int) -> None:
    assert parse_listen(text) == ListenAddress(host, port)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("127.0.0.1", "the port is missing"),
        ("::1", "IPv6 address goes in brackets"),
        ("::1:9401", "IPv6 address goes in brackets"),
        ("[127.0.0.1]:9401", "brackets are for IPv6"),
        ("localhost:9401", "HOST an IP address"),
        ("gpu01.example:9401", "HOST an IP address"),
        ("127.0.0.1:0", "must be 1 to 65535"),
        ("127.0.0.1:65536", "must be 1 to 65535"),
        ("127.0.0.1:http", "must be 1 to 65535"),
        (":9401", "HOST an IP address"),
        ("http://127.0.0.1:9401", "HOST an IP address"),
    ],
)
def test_bad_listen_addresses_refused_with_the_reason(text: str, said: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(f'[metrics]\nlisten = "{text}"\n', "/etc/gpufleet/agent.toml")
    message = str(err.value)
    assert message.startswith("/etc/gpufleet/agent.toml: metrics.listen: "), message
    assert said in message


def test_metrics_off_unless_configured() -> None:
    assert parse_config("").metrics_listen is None
    assert parse_config('[metrics]\nlisten = ""\n').metrics_listen is None
    with pytest.raises(ConfigError, match="metrics: Object contains unknown field `port`"):
        parse_config("[metrics]\nport = 9401\n")  # unknown keys are refused, as everywhere


def _collector(sample: Sample | None = None) -> MetricsCollector:
    inv = GpuInventory(backend="sim", gpus=[GpuInfo(index=0, uuid="GPU-x", name="H100")])
    return MetricsCollector(
        node="n1", latest=lambda: sample, gpus=lambda: inv, state=lambda: NodeState(),
        interval=1.0, scheduler="none",
    )  # fmt: skip


@pytest.fixture
def exporter() -> Iterator[MetricsExporter]:
    exp = MetricsExporter(ListenAddress("127.0.0.1", free_port()), _collector())
    exp.start()
    assert exp.bound.wait(10)
    yield exp
    exp.close()


def fetch(
    port: int, path: str, host: str = "127.0.0.1", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_serves_text_format_whatever_is_asked(exporter: MetricsExporter) -> None:
    assert exporter.port is not None
    status, headers, body = fetch(
        exporter.port, "/metrics",
        Accept="application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
    )  # fmt: skip
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert b'gpufleet_agent_info{Hostname="n1"' in body
    assert b"# EOF" not in body  # not OpenMetrics


def test_gzip_when_accepted(exporter: MetricsExporter) -> None:
    assert exporter.port is not None
    _, _, plain = fetch(exporter.port, "/metrics")
    status, headers, body = fetch(exporter.port, "/metrics", **{"Accept-Encoding": "gzip"})
    if len(plain) >= 1024:
        assert headers.get("content-encoding") == "gzip"
        body = gzip.decompress(body)
    assert status == 200 and body == plain


def test_other_paths(exporter: MetricsExporter) -> None:
    assert exporter.port is not None
    assert fetch(exporter.port, "/")[0] == 200
    assert fetch(exporter.port, "/nope")[0] == 404


def test_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            port = s.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    exp = MetricsExporter(ListenAddress("::1", port), _collector())
    exp.start()
    try:
        assert exp.bound.wait(10)
        assert fetch(port, "/metrics", host="::1")[0] == 200
    finally:
        exp.close()


def test_port_taken_does_not_raise_and_says_why(caplog: pytest.LogCaptureFixture) -> None:
    """The agent keeps serving its socket; the exporter logs and retries."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        exp = MetricsExporter(ListenAddress("127.0.0.1", port), _collector())
        with caplog.at_level("ERROR", logger="gpufleet.agents.export.exporter"):
            exp.start()
            wait_for(lambda: "cannot listen on 127.0.0.1" in caplog.text, "the log line", 10)
        assert not exp.bound.is_set()
        exp.close()  # while it waits to retry: returns at once
    assert "Address already in use" in caplog.text


class _Blocking(MetricsCollector):
    """A collector that holds every scrape until released: only to fill the scrape slots."""

    def __init__(self) -> None:
        super().__init__(
            node="n", latest=lambda: None, gpus=lambda: GpuInventory(backend="none", gpus=[]),
            state=lambda: None, interval=1.0, scheduler="none",
        )  # fmt: skip
        self.release = threading.Event()
        self.inside = threading.Semaphore(0)

    def collect(self) -> Iterator[Metric]:
        self.inside.release()
        self.release.wait(10)
        return super().collect()


def test_concurrent_scrapes_are_bounded() -> None:
    blocking = _Blocking()
    exp = MetricsExporter(ListenAddress("127.0.0.1", free_port()), blocking)
    exp.start()
    assert exp.bound.wait(10) and exp.port is not None
    port = exp.port
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(fetch(port, "/metrics")[0]))
        for _ in range(MAX_CONCURRENT)
    ]
    try:
        for t in threads:
            t.start()
        for _ in range(MAX_CONCURRENT):
            assert blocking.inside.acquire(timeout=10)
        assert fetch(port, "/metrics")[0] == 503  # a fifth is turned away, not queued
    finally:
        blocking.release.set()
        for t in threads:
            t.join(10)
        exp.close()
    assert results == [200] * MAX_CONCURRENT
