"""How FleetLinks bounds SSH handshakes: fleet-wide, and per jump host (one sshd, whose
MaxStartups drops connections past 10, for every node behind it). Nothing connects here."""

from __future__ import annotations

from console.fleetlinks import CONNECTING_PER_JUMP, FleetLinks
from console.inventory import parse_inventory
from console.link import LinkOptions

FLEET = """
[[group]]
name = "a"
nodes = "a[1-3]"
jump = "bastion-a"
[[group]]
name = "b"
nodes = "b[1-2]"
jump = "bastion-b"
[[group]]
name = "direct"
nodes = "d[1-2]"
"""


async def test_nodes_behind_one_jump_host_share_its_bound() -> None:
    links = FleetLinks(parse_inventory(FLEET, "f").nodes, LinkOptions()).links
    via = {name: link._via for name, link in links.items()}
    assert via["a1"] is via["a2"] is via["a3"]
    assert via["b1"] is via["b2"] and via["b1"] is not via["a1"]
    assert via["d1"] is None and via["d2"] is None, "each has its own sshd"
    assert via["a1"] is not None and via["a1"]._value == CONNECTING_PER_JUMP
    assert len({id(link._connecting) for link in links.values()}) == 1, "one fleet-wide bound"
