"""Prometheus' answers as the real server gave them (tests/fixtures/prometheus/answers.json,
recorded as tests/unit/test_promsource.py says), served without a server: for the tests of the
console's Prometheus source that are about the console, not the server."""

from __future__ import annotations

import json
import re
from typing import Any

from console.sources.prometheus.client import PromError, Vector, decode_vector
from console.sources.prometheus.view import QUERIES
from tests.conftest import FIXTURES

ANSWERS: dict[str, Any] = json.loads((FIXTURES / "prometheus" / "answers.json").read_text())
KEYS = {q.expr: q.key for q in QUERIES}
NOT_EXPORTED: dict[str, Any] = {"status": "success", "data": {"resultType": "vector", "result": []}}
_NARROWED = re.compile(r'\{Hostname=~("(?:[^"\\]|\\.)*")\}')


class Recorded:
    """Answers as the server gave them, less the series of ``gone`` hosts; or a fault."""

    def __init__(self) -> None:
        self.gone: set[str] = set()
        self.fault: str | None = None
        self.keys: list[str] = []  # every query's key, in the order asked
        #: Every query's key and the hosts it was narrowed to (a regex; None: all).
        self.asked_for: list[tuple[str, str | None]] = []
        #: Answers a test changed (by key), instead of the recorded ones.
        self.changed: dict[str, dict[str, Any]] = {}
        self.failing: set[str] = set()  # queries (their expressions) that time out
        self.timeouts: list[float | None] = []  # each query's timeout, as asked

    def query(self, expr: str, at: float | None = None, timeout: float | None = None) -> Vector:
        self.timeouts.append(timeout)
        if self.fault is not None:
            raise PromError(self.fault)
        if _NARROWED.sub("", expr) in self.failing:
            raise PromError(f"http://prom.example:9090: no answer in {timeout:g} s")
        # A query narrowed to some hosts (console.sources.prometheus.view.only): the recorded
        # answer to the whole query, less the other hosts' series.
        narrowed = _NARROWED.search(expr)
        hosts = re.compile(json.loads(narrowed.group(1))) if narrowed else None
        key = KEYS[_NARROWED.sub("", expr)]
        self.keys.append(key)
        self.asked_for.append((key, narrowed and json.loads(narrowed.group(1))))
        # A query added after the recording (the inventory's time): the recorded agents did
        # not export it, as an older agent does not; nothing is made up for it unless a test
        # says so (``changed``).
        doc = json.loads(json.dumps(self.changed.get(key) or ANSWERS.get(key, NOT_EXPORTED)))
        doc["data"]["result"] = [
            s
            for s in doc["data"]["result"]
            if s["metric"]["Hostname"] not in self.gone
            and (hosts is None or hosts.fullmatch(s["metric"]["Hostname"]))
        ]
        return decode_vector(json.dumps(doc).encode(), expr)
