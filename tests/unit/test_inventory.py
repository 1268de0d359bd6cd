"""The fleet inventory: hostlist groups, SSH settings, and one clear error for a bad file."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from console.model.inventory import (
    DEFAULT_SOCKET,
    InventoryError,
    find_inventory,
    load_inventory,
    parse_inventory,
)

FLEET = """
[defaults]
user = "ops"
identity = "~/.ssh/fleet_ed25519"

[[group]]
name = "train"
pool = "train"
nodes = "gpu[01-04,20]"
jump = "bastion"
scheduler_name = "{short}"

[[group]]
name = "infer"
nodes = "inf[1-2].dc1.example"
user = "svc"
port = 2222
socket = "/run/gpufleet-alt/agent.sock"
"""


def test_groups_expand_into_nodes_with_their_settings() -> None:
    inv = parse_inventory(FLEET, "fleet.toml")
    assert [n.name for n in inv.nodes] == [
        "gpu01", "gpu02", "gpu03", "gpu04", "gpu20", "inf1.dc1.example", "inf2.dc1.example",
    ]  # fmt: skip
    gpu20 = inv.by_name()["gpu20"]
    assert (gpu20.pool, gpu20.user, gpu20.port, gpu20.jump) == ("train", "ops", None, "bastion")
    assert gpu20.identity == "~/.ssh/fleet_ed25519"
    assert gpu20.socket == DEFAULT_SOCKET
    assert gpu20.scheduler_name == "gpu20"
    inf = inv.by_name()["inf1.dc1.example"]
    assert (inf.pool, inf.user, inf.port) == ("infer", "svc", 2222), "pool defaults to the group"
    assert inf.socket == "/run/gpufleet-alt/agent.sock"
    assert inf.scheduler_name == "inf1.dc1.example"


def test_short_scheduler_name_takes_the_first_label() -> None:
    inv = parse_inventory(
        '[[group]]\nname = "a"\nnodes = "n1.x.org"\nscheduler_name = "{short}"\n', "f"
    )
    assert inv.nodes[0].scheduler_name == "n1"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "f.toml: no [[group]] tables: an inventory needs at least one group of nodes"),
        ('[[group]]\nname = "a"\nnodes = "gpu[01-"\n',
         "f.toml: group[0] ('a').nodes: bad hostlist 'gpu[01-': unbalanced brackets"),
        ('[[group]]\nname = "a"\nnodez = "x"\nnodes = "x"\n',
         "f.toml: group[0]: Object contains unknown field `nodez`"),
        ('[[group]]\nname = "a"\n', "f.toml: group[0]: Object missing required field `nodes`"),
        ('[[group]]\nname = "a"\nnodes = "x"\nport = "22"\n',
         "f.toml: group[0].port: Expected `int | null`, got `str`"),
        ('[[group]]\nname = "a"\nnodes = "x"\nport = 70000\n',
         "f.toml: group[0] ('a').port: 70000 is not a TCP port"),
        ('[[group]]\nname = "a"\nnodes = "x[1-2]"\n[[group]]\nname = "b"\nnodes = "x2"\n',
         "f.toml: group[1] ('b').nodes: x2 is already in group 'a'"),
        ('[[group]]\nname = "a"\nnodes = "x"\n[[group]]\nname = "a"\nnodes = "y"\n',
         "f.toml: group[1] ('a').name: a group of that name is already defined"),
        ('[[group]]\nname = "a"\nnodes = "x"\nsocket = "rel.sock"\n',
         "f.toml: group[0] ('a').socket: 'rel.sock' must be an absolute path"),
        ('[[group]]\nname = "a"\nnodes = "x"\nscheduler_name = "{host}"\n',
         "f.toml: group[0] ('a').scheduler_name: '{host}' may use only {name} and {short} "
         "('host')"),
        ('[[group]]\nname = "a b"\nnodes = "x"\n',
         "f.toml: group[0].name: 'a b' is not a usable name"),
        ('[[group]]\nname = "a"\nnodes = "x;rm"\n',
         "f.toml: group[0] ('a').nodes: 'x;rm' is not a host name"),
        ("[[group]\n", "f.toml: not valid TOML: "),
        # What OpenSSH's valid_hostname / valid_ruser refuse: a ProxyCommand would give them
        # to a shell.
        ('[[group]]\nname = "a"\nnodes = "x"\nhostname = "127.0.0.1;touch x;"\n',
         "f.toml: group[0] ('a').hostname: '127.0.0.1;touch x;' contains characters OpenSSH "
         "refuses in a host name"),
        ('[defaults]\nhostname = "$(id)"\n[[group]]\nname = "a"\nnodes = "x"\n',
         "f.toml: defaults.hostname: '$(id)' contains characters OpenSSH refuses"),
        ('[[group]]\nname = "a"\nnodes = "x"\nhostname = "-oProxyCommand=x"\n',
         "f.toml: group[0] ('a').hostname: '-oProxyCommand=x' starts with '-'"),
        ('[[group]]\nname = "a"\nnodes = "x"\nhostname = "a\\u001b[2Jb"\n',
         "f.toml: group[0] ('a').hostname: 'a\\x1b[2Jb' contains characters"),
        ('[[group]]\nname = "a"\nnodes = "x"\nuser = "ops`id`"\n',
         "f.toml: group[0] ('a').user: 'ops`id`' contains characters OpenSSH refuses in a user"),
        ('[[group]]\nname = "a"\nnodes = "x"\nuser = "ops -x"\n',
         "f.toml: group[0] ('a').user: 'ops -x' has '-' after a space"),
        ('[[group]]\nname = "a"\nnodes = "x"\njump = "ops@bastion;reboot"\n',
         "f.toml: group[0] ('a').jump: 'ops@bastion;reboot': hop 'ops@bastion;reboot' contains"),
        ('[[group]]\nname = "a"\nnodes = "x"\njump = "b1,o|p@b2:22"\n',
         "f.toml: group[0] ('a').jump: 'b1,o|p@b2:22': hop 'o|p@b2:22' contains characters "
         "OpenSSH refuses in a user name"),
        ('[[group]]\nname = "a"\nnodes = "x"\njump = "bastion:99999"\n',
         "f.toml: group[0] ('a').jump: 'bastion:99999': hop 'bastion:99999': '99999' is not"),
    ],
)  # fmt: skip
def test_a_bad_file_is_one_error_naming_file_key_and_problem(text: str, message: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory(text, "f.toml")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_names_openssh_accepts_are_kept() -> None:
    inv = parse_inventory(
        '[[group]]\nname = "a"\nnodes = "x"\nhostname = "gpu1.example.org"\n'
        'user = "ops.team"\njump = "ops@bastion1:2222,bastion2"\n',
        "f.toml",
    )
    [node] = inv.nodes
    assert (node.hostname, node.user, node.jump) == (
        "gpu1.example.org", "ops.team", "ops@bastion1:2222,bastion2",
    )  # fmt: skip


def test_toml_syntax_errors_name_the_line() -> None:
    with pytest.raises(InventoryError, match=r"line 3"):
        parse_inventory('[[group]]\nname = "a"\nnodes = \n', "f.toml")


def test_huge_hostlists_are_refused_not_expanded() -> None:
    with pytest.raises(InventoryError, match=r"bad hostlist"):
        parse_inventory('[[group]]\nname = "a"\nnodes = "n[1-100000000]"\n', "f.toml")


def test_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.toml"
    from_env = tmp_path / "env.toml"
    assert find_inventory(explicit, {"GPUFLEET_INVENTORY": str(from_env)}) == explicit
    assert find_inventory(None, {"GPUFLEET_INVENTORY": str(from_env)}) == from_env
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    user_file = home / ".config" / "gpufleet" / "fleet.toml"
    system_file = tmp_path / "etc-fleet.toml"
    monkeypatch.setattr("console.model.inventory.SYSTEM_INVENTORY", system_file)
    with pytest.raises(InventoryError, match=r"no inventory: pass --inventory PATH"):
        find_inventory(None, {})
    system_file.write_text("")
    assert find_inventory(None, {}) == system_file
    user_file.parent.mkdir(parents=True)
    user_file.write_text("")
    assert find_inventory(None, {}) == user_file


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(InventoryError, match=r"fleet.toml: no such file$"):
        load_inventory(tmp_path / "fleet.toml")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_an_inventory_or_an_inventory_error(text: str) -> None:
    try:
        inv = parse_inventory(text, "fuzz.toml")
    except InventoryError as exc:
        message = str(exc)
    else:
        assert inv.nodes
        return
    assert message.startswith("fuzz.toml: ")
    assert "\n" not in message


@settings(max_examples=200, deadline=None)
@given(st.from_regex(r"[a-z]{1,4}(\[[0-9]{1,3}(-[0-9]{1,3})?(,[0-9]{1,3})*\])?", fullmatch=True))
def test_hostlist_shaped_groups_never_crash(nodes: str) -> None:
    try:
        inv = parse_inventory(f'[[group]]\nname = "g"\nnodes = "{nodes}"\n', "h.toml")
    except InventoryError as exc:
        message = str(exc)
    else:
        assert len({n.name for n in inv.nodes}) == len(inv.nodes)
        return
    assert message.startswith("h.toml: group[0] ('g').nodes: ")


def test_a_key_with_a_newline_still_gives_one_line() -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory('[[group]]\nname = "a"\nnodes = "x"\n"evil\\nkey" = 1\n', "f.toml")
    assert "\n" not in str(err.value)
    assert "evil\\nkey" in str(err.value)


def test_many_agents_behind_one_address() -> None:
    """A host running several agents (the demo fleet does): one address, one socket each."""
    inv = parse_inventory(
        '[defaults]\nhostname = "127.0.0.1"\nport = 2222\nknown_hosts = "/tmp/kh"\n'
        '[[group]]\nname = "d"\nnodes = "demo[1-2]"\nsocket = "/run/demo/{name}.sock"\n',
        "f",
    )
    a, b = inv.nodes
    assert (a.hostname, a.port, a.known_hosts) == ("127.0.0.1", 2222, "/tmp/kh")
    assert (a.socket, b.socket) == ("/run/demo/demo1.sock", "/run/demo/demo2.sock")
