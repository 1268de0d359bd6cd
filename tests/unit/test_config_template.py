"""The commented agent.toml that install writes: it loads, its defaults are the code's, and it
names every key, so an operator reading it sees every setting there is."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest

from agents.config import AgentConfig, parse_config
from agents.install import DEFAULT_GROUP, config_template

#: A commented setting, as opposed to a line of prose: ``# key = value``.
COMMENTED_KEY = re.compile(r"^# ([a-z_]+) = ", re.MULTILINE)


def _uncommented(text: str) -> str:
    return COMMENTED_KEY.sub(r"\1 = ", text)


def _sections(text: str) -> dict[str, set[str]]:
    """Each [section] of the template and the keys it names, set or commented."""
    out: dict[str, set[str]] = {}
    current = ""
    for line in text.splitlines():
        if m := re.fullmatch(r"\[([a-z_]+)\]\s*(#.*)?", line):
            current = m.group(1)
            out.setdefault(current, set())
        elif m := re.match(r"^(?:# )?([a-z_]+) = ", line):
            out.setdefault(current, set()).add(m.group(1))
    return out


def _schema() -> dict[str, dict[str, Any]]:
    """Every section of the config and each key's default, from the code itself."""
    defaults = AgentConfig()
    return {
        section.name: {
            f.name: getattr(getattr(defaults, section.name), f.name)
            for f in msgspec.structs.fields(section.type)
        }
        for section in msgspec.structs.fields(AgentConfig)
    }


def test_template_loads_with_the_agents_own_loader() -> None:
    cfg = parse_config(config_template(), "agent.toml")
    want = AgentConfig()
    want = msgspec.structs.replace(
        want, agent=msgspec.structs.replace(want.agent, socket_group=DEFAULT_GROUP)
    )
    assert cfg == want, "the template's active lines must change nothing but the socket group"


def test_template_points_the_socket_at_the_chosen_group() -> None:
    assert parse_config(config_template("gpuview"), "t").agent.socket_group == "gpuview"


def test_every_commented_default_is_the_codes_default() -> None:
    """Uncommenting every setting must load, and give the code's defaults: a comment that says
    ``interval = 1.0`` while the code says 2.0 would mislead whoever reads it."""
    cfg = parse_config(_uncommented(config_template()), "agent.toml (uncommented)")
    for section, keys in _schema().items():
        for key, default in keys.items():
            if default is None:
                continue  # no TOML null: the template shows an example and says the default
            if (section, key) == ("agent", "socket_group"):
                continue
            got = getattr(getattr(cfg, section), key)
            assert got == default, f"[{section}] {key}: template {got!r}, code {default!r}"


@pytest.mark.parametrize("section", sorted(_schema()))
def test_every_key_of_every_section_is_in_the_template(section: str) -> None:
    """The drift check: a key added to agents/config.py must be added to the template."""
    named = _sections(config_template())
    assert section in named, f"[{section}] is missing from agents/systemd/agent.toml"
    missing = set(_schema()[section]) - named[section]
    assert not missing, f"[{section}] keys missing from agents/systemd/agent.toml: {missing}"
    unknown = named[section] - set(_schema()[section])
    assert not unknown, f"[{section}] keys the config does not have: {unknown}"
