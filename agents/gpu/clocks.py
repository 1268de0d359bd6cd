"""Clocks-event ("throttle") reason bits, decoded to the names operators read.

The bit values are NVML's ``nvmlClocksEventReason*`` constants; they are spelled out (in
``agents.protocol.CLOCK_REASONS``, beside the words shown for them) so the simulator and the
tests need no driver. ``sw_power_cap`` is the normal state of a busy GPU
(design.md §2); the thermal ones are what an operator should be alarmed by.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from agents.protocol import CLOCK_REASONS

#: NVML's bits, from the one table of reasons (``agents.protocol.CLOCK_REASONS``).
CLOCK_REASON_BITS: Final[dict[int, str]] = {bit: name for name, (bit, _) in CLOCK_REASONS.items()}

THERMAL_REASONS: Final = frozenset({"sw_thermal_slowdown", "hw_thermal_slowdown"})


def decode_clock_reasons(mask: int) -> list[str]:
    """Names for each set bit, lowest first; unknown bits as ``bit_0x...`` so none is hidden."""
    names = [name for bit, name in CLOCK_REASON_BITS.items() if mask & bit]
    unknown = mask & ~sum(CLOCK_REASON_BITS)
    bit = 1
    while unknown:
        if unknown & bit:
            names.append(f"bit_{bit:#x}")
            unknown &= ~bit
        bit <<= 1
    return names


_BITS_BY_NAME: Final = {name: bit for bit, name in CLOCK_REASON_BITS.items()}


def encode_clock_reasons(names: Iterable[str]) -> int:
    """The mask back from ``decode_clock_reasons``' names, ``bit_0x...`` ones included (the
    simulator builds its readings this way; the exporter serves NVML's mask from a sample)."""
    mask = 0
    for name in names:
        bit = _BITS_BY_NAME.get(name)
        if bit is None and name.startswith("bit_0x"):
            bit = int(name[4:], 16)
        mask |= bit or 0
    return mask
