"""A client for the one part of Prometheus' HTTP API the console uses: instant queries.

The standard library's HTTP client, run on a worker thread, and msgspec to decode: a whole
fleet's answer is a few MB of JSON every refresh, which msgspec reads into typed structs
several times faster than ``json``; no HTTP library is worth a new dependency for one POST.
POST, not GET, so a long query never meets a URL length limit.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Final, Protocol

import msgspec

from agents.protocol import GpufleetError, clip

#: Seconds one query may take before the server counts as not answering.
QUERY_TIMEOUT_S: Final = 10.0
#: Largest answer read (bytes): far above a 40,000-GPU fleet's, far below harm.
MAX_ANSWER: Final = 512 << 20


class PromError(GpufleetError):
    """Prometheus could not be asked, or would not answer: one line for a person."""


class _Series(msgspec.Struct, frozen=True):
    metric: dict[str, str]
    value: tuple[float, str]


class _Data(msgspec.Struct, frozen=True):
    resultType: str  # the API's own spelling
    result: list[_Series]


class _Answer(msgspec.Struct, frozen=True):
    status: str
    data: _Data | None = None
    errorType: str | None = None
    error: str | None = None


_decoder = msgspec.json.Decoder(_Answer)


@dataclass(frozen=True, slots=True)
class Vector:
    """An instant query's result: when Prometheus evaluated it (its own clock, unix seconds)
    and each series' labels and value."""

    at: float
    series: list[tuple[dict[str, str], float]]


def decode_vector(body: bytes, query: str) -> Vector:
    """An API answer (``/api/v1/query``) as a Vector; PromError for an error or another
    result type."""
    try:
        answer = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise PromError(f"unreadable answer to {clip(query, 80)!r}: {clip(str(exc))}") from None
    if answer.status != "success" or answer.data is None:
        raise PromError(
            f"query {clip(query, 80)!r} failed: {answer.errorType or 'error'}: "
            f"{clip(answer.error or 'no reason given')}"
        )
    if answer.data.resultType != "vector":
        raise PromError(f"query {clip(query, 80)!r} gave a {answer.data.resultType}, not a vector")
    at = answer.data.result[0].value[0] if answer.data.result else 0.0
    return Vector(at, [(s.metric, float(s.value[1])) for s in answer.data.result])


class Querier(Protocol):
    def query(self, expr: str, at: float | None = None, timeout: float | None = None) -> Vector: ...


class PromClient:
    def __init__(self, url: str, timeout: float = QUERY_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        #: Bytes of every answer read so far (what a poll costs the network and the decoder).
        self.bytes_read = 0

    def query(self, expr: str, at: float | None = None, timeout: float | None = None) -> Vector:
        """One instant query (blocking: call it on a worker thread). ``at``: evaluate at
        that unix time, so that several queries read one moment of the fleet; ``timeout``:
        this query's, instead of the client's."""
        wait = self.timeout if timeout is None else timeout
        form = {"query": expr}
        if at is not None:
            form["time"] = f"{at:.3f}"
        request = urllib.request.Request(  # noqa: S310  (the scheme is checked by parse_source)
            f"{self.url}/api/v1/query",
            data=urllib.parse.urlencode(form).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(request, timeout=wait) as reply:  # noqa: S310
                body = reply.read(MAX_ANSWER)
        except urllib.error.HTTPError as exc:
            body = exc.read(MAX_ANSWER)  # the API says why in JSON (400 bad query, 503 ...)
            if not body.startswith(b"{"):
                raise PromError(f"{self.url}: HTTP {exc.code} {exc.reason}") from None
        except urllib.error.URLError as exc:
            raise PromError(f"cannot reach {self.url}: {_why(exc.reason)}") from None
        except TimeoutError:
            raise PromError(f"{self.url}: no answer in {wait:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise PromError(f"{self.url}: {_why(exc)}") from None
        self.bytes_read += len(body)
        return decode_vector(body, expr)


def _why(reason: object) -> str:
    if isinstance(reason, TimeoutError):
        return "timed out"
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return clip(str(reason))
