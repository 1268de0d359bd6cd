"""The tests' one way to wait on a condition (tests/conftest.py): it returns what the
condition found, and a timeout names what was awaited."""

from __future__ import annotations

import itertools

import pytest

from tests.conftest import until, wait_for


def test_wait_for_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert wait_for(lambda: (n := next(counter)) >= 3 and n, "the third poll", 5) == 3


def test_wait_for_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"after 0.05 s waiting for the moon"):
        wait_for(lambda: None, "the moon", 0.05)


async def test_until_returns_the_first_truthy_value() -> None:
    counter = itertools.count()
    assert await until(lambda: (n := next(counter)) >= 3 and n, "the third poll", 5) == 3


async def test_until_names_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"after 0.05 s waiting for the sun"):
        await until(lambda: [], "the sun", 0.05)
