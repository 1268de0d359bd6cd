"""Fixtures for the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.sshd import Sshd, start_sshd


@pytest.fixture
def sshd(short_tmp: Path) -> Iterator[Sshd]:
    """A private sshd on loopback for one test, stopped after it."""
    server = start_sshd(short_tmp / "sshd")
    yield server
    server.stop()
