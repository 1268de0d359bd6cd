"""The Prometheus text exposition read back: each series' value by name and labels."""

from __future__ import annotations

import re

Series = dict[tuple[str, frozenset[tuple[str, str]]], float]
_LINE = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{(.*)\} (\S+)")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def parse(text: str) -> tuple[Series, dict[str, str], list[list[str]]]:
    """Series by (name, labels); each family's TYPE; each sample's label names in order."""
    series: Series = {}
    types: dict[str, str] = {}
    orders: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            m = _LINE.fullmatch(line)
            assert m, line
            labels = [(k, _unescape(v)) for k, v in _LABEL.findall(m.group(2))]
            orders.append([k for k, _ in labels])
            series[(m.group(1), frozenset(labels))] = float(m.group(3))
    return series, types, orders
