"""The agent's TOML config: every key optional, every mistake named with its file and key."""

from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import config as config_mod
from agents.config import (
    AgentConfig,
    AgentSection,
    ClientsSection,
    ConfigError,
    RestartSection,
    RolesSection,
    SchedulerSection,
    SimSection,
    load_config,
    parse_config,
    socket_mode,
    validate_config,
)

SRC = "/etc/test/agent.toml"


def parse(text: str) -> AgentConfig:
    return parse_config(text, SRC)


def refused(text: str | bytes) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, SRC)
    message = str(info.value)
    assert message.startswith(f"{SRC}: "), message
    return message


# ---------------------------------------------------------------------------------------------
# Loading


def test_missing_default_file_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", tmp_path / "nope" / "agent.toml")
    cfg = load_config(None)
    assert cfg == AgentConfig()
    assert cfg.agent.interval == 1.0
    assert cfg.agent.socket == "/run/gpufleet/agent.sock"
    assert cfg.clients.max_queued_samples == 60


def test_default_file_is_used_when_present(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\ninterval = 2.0\n")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", path)
    assert load_config(None).agent.interval == 2.0


def test_bad_default_file_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[agent]\nintervl = 2.0\n")
    monkeypatch.setattr(config_mod, "DEFAULT_CONFIG_PATH", path)
    with pytest.raises(ConfigError, match=str(path)):
        load_config(None)


def test_explicit_missing_path_is_an_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


def test_unreadable_path_is_an_error_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)  # a directory
    assert str(tmp_path) in str(info.value)
    assert "cannot read" in str(info.value)


def test_explicit_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[roles]\noperators = ["alice"]\n[sim]\ngpus = 2\n')
    cfg = load_config(path)
    assert cfg.roles.operators == ["alice"]
    assert cfg.sim.gpus == 2


# ---------------------------------------------------------------------------------------------
# Every key optional


@pytest.mark.parametrize(
    "text", ["", "\n# only a comment\n", "[agent]\n[sim]\n[roles]\n[clients]\n"]
)
def test_empty_config_is_all_defaults(text: str) -> None:
    assert parse(text) == AgentConfig()


ONE_KEY = [
    ("agent", "node_name", '"gpu-17"', "gpu-17"),
    ("agent", "socket", '"/tmp/a.sock"', "/tmp/a.sock"),
    ("agent", "socket_group", '"gpufleet"', "gpufleet"),
    ("agent", "socket_mode", '"0600"', "0600"),
    ("agent", "state_dir", '"/srv/gf"', "/srv/gf"),
    ("agent", "backend", '"sim"', "sim"),
    ("agent", "interval", "0.5", 0.5),
    ("agent", "history", "60", 60.0),
    ("agent", "slow_interval", "10", 10.0),
    ("agent", "log_level", '"debug"', "debug"),
    ("sim", "gpus", "4", 4),
    ("sim", "seed", "42", 42),
    ("roles", "operators", '["alice", "bob"]', ["alice", "bob"]),
    ("roles", "operator_groups", '["wheel"]', ["wheel"]),
    ("clients", "max_queued_samples", "5", 5),
    ("clients", "max_queued_other", "7", 7),
    ("clients", "max_behind", "30.5", 30.5),
    ("clients", "max_clients", "2", 2),
    ("clients", "max_queued_bytes", "65536", 65536),
    ("clients", "max_clients_per_user", "3", 3),
    ("clients", "idle_timeout", "30.0", 30.0),
    ("clients", "max_refusals", "5", 5),
    ("clients", "hello_timeout", "2.5", 2.5),
    ("scheduler", "kind", '"slurm"', "slurm"),
    ("scheduler", "node", '"n017"', "n017"),
    ("scheduler", "pools", '["gpu", "debug"]', ["gpu", "debug"]),
    ("scheduler", "timeout", "10", 10.0),
    ("scheduler", "poll", "5", 5.0),
    ("scheduler", "scontrol", '"/opt/slurm/bin/scontrol"', "/opt/slurm/bin/scontrol"),
    ("scheduler", "sinfo", '"/opt/slurm/bin/sinfo"', "/opt/slurm/bin/sinfo"),
    ("scheduler", "slurm_conf", '"/etc/slurm/slurm.conf"', "/etc/slurm/slurm.conf"),
    ("scheduler", "kubectl", '"/usr/local/bin/kubectl"', "/usr/local/bin/kubectl"),
    ("scheduler", "kubeconfig", '"/etc/gpufleet/kubeconfig"', "/etc/gpufleet/kubeconfig"),
    ("scheduler", "pool_label", '"example.com/pool"', "example.com/pool"),
    ("restart", "agent", "false", False),
    ("restart", "node", "false", False),
    ("restart", "gpu_reset", "false", False),
    ("restart", "units", '["slurmd.service"]', ["slurmd.service"]),
    ("restart", "agent_unit", '"gf.service"', "gf.service"),
    ("restart", "systemctl", '"/bin/systemctl"', "/bin/systemctl"),
    ("restart", "nvidia_smi", '"/usr/bin/nvidia-smi"', "/usr/bin/nvidia-smi"),
    ("restart", "timeout", "60", 60.0),
]


def test_one_key_table_covers_every_key() -> None:
    sections = {
        "agent": AgentSection,
        "sim": SimSection,
        "roles": RolesSection,
        "clients": ClientsSection,
        "scheduler": SchedulerSection,
        "restart": RestartSection,
    }
    every = {(s, k) for s, cls in sections.items() for k in cls.__struct_fields__}
    assert {(s, k) for s, k, _, _ in ONE_KEY} == every


@pytest.mark.parametrize(("section", "key", "toml", "value"), ONE_KEY)
def test_each_key_alone_is_accepted_and_applied(
    section: str, key: str, toml: str, value: Any
) -> None:
    cfg = parse(f"[{section}]\n{key} = {toml}\n")
    assert getattr(getattr(cfg, section), key) == value
    # Nothing else moved.
    default = AgentConfig()
    for other in ("agent", "sim", "roles", "clients", "scheduler", "restart"):
        if other != section:
            assert getattr(cfg, other) == getattr(default, other)


# ---------------------------------------------------------------------------------------------
# Mistakes, named


@pytest.mark.parametrize(
    ("text", "where", "name"),
    [
        ("[agent]\nintervl = 2\n", "agent: ", "`intervl`"),
        ("[sim]\ngpu = 2\n", "sim: ", "`gpu`"),
        ("[roles]\noperator = ['a']\n", "roles: ", "`operator`"),
        ("[clients]\nmax_queued = 1\n", "clients: ", "`max_queued`"),
    ],
)
def test_unknown_key_is_named_with_its_section(text: str, where: str, name: str) -> None:
    message = refused(text)
    assert f"{SRC}: {where}" in message
    assert name in message
    assert "unknown" in message


def test_unknown_section_is_named() -> None:
    message = refused("[agnet]\ninterval = 1\n")
    assert "`agnet`" in message


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[agent]\ninterval = "fast"\n', "agent.interval"),
        ("[agent]\nsocket = 5\n", "agent.socket"),
        ('[agent]\nbackend = "cuda"\n', "agent.backend"),
        ('[sim]\ngpus = "8"\n', "sim.gpus"),
        ("[sim]\ngpus = 1.5\n", "sim.gpus"),
        ('[roles]\noperators = "alice"\n', "roles.operators"),
        ('[roles]\noperators = ["alice", 7]\n', "roles.operators[1]"),
        ("[clients]\nmax_clients = true\n", "clients.max_clients"),
        ("agent = 1\n", "agent"),
    ],
)
def test_wrong_type_names_the_key_path(text: str, path: str) -> None:
    message = refused(text)
    assert f"{SRC}: {path}: " in message


@pytest.mark.parametrize("mode", ["0666", "0662", "0777", "0002", "0006", "0606"])
def test_world_writable_socket_mode_is_refused(mode: str) -> None:
    message = refused(f'[agent]\nsocket_mode = "{mode}"\n')
    assert "agent.socket_mode" in message
    assert "world-writable" in message


@pytest.mark.parametrize("mode", ["0660", "0640", "0600", "0664", "0700", "660", "0o660"])
def test_safe_socket_modes_are_accepted(mode: str) -> None:
    cfg = parse(f'[agent]\nsocket_mode = "{mode}"\n')
    assert not socket_mode(cfg.agent.socket_mode) & 0o002


@pytest.mark.parametrize("mode", ["0x1b0", "rw-rw----", "", "0668", "9", "01000", "-1", "0660 a"])
def test_bad_octal_socket_mode_is_refused(mode: str) -> None:
    message = refused(f'[agent]\nsocket_mode = "{mode}"\n')
    assert "agent.socket_mode" in message


def test_socket_mode_value() -> None:
    assert socket_mode("0660") == 0o660
    assert socket_mode("600") == 0o600
    with pytest.raises(ValueError, match="octal"):
        socket_mode("abc")


@pytest.mark.parametrize("path", ["agent.sock", "run/agent.sock", "./agent.sock", "~/a.sock"])
def test_relative_socket_path_is_refused(path: str) -> None:
    message = refused(f'[agent]\nsocket = "{path}"\n')
    assert "agent.socket" in message
    assert "absolute" in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[agent]\ninterval = 0\n", "agent.interval"),
        ("[agent]\ninterval = -1\n", "agent.interval"),
        ("[agent]\ninterval = 3601\n", "agent.interval"),
        ("[agent]\ninterval = nan\n", "agent.interval"),
        ("[agent]\ninterval = 2\nhistory = 1\n", "agent.history"),
        ("[agent]\ninterval = 2\nslow_interval = 1\n", "agent.slow_interval"),
        ("[agent]\nslow_interval = 3601\n", "agent.slow_interval"),
        ("[sim]\ngpus = 0\n", "sim.gpus"),
        ("[sim]\ngpus = 65\n", "sim.gpus"),
        ("[clients]\nmax_queued_samples = 0\n", "clients.max_queued_samples"),
        ("[clients]\nmax_queued_other = 0\n", "clients.max_queued_other"),
        ("[clients]\nmax_clients = -3\n", "clients.max_clients"),
        ("[clients]\nmax_queued_bytes = 0\n", "clients.max_queued_bytes"),
        ("[clients]\nmax_clients_per_user = 0\n", "clients.max_clients_per_user"),
        ("[clients]\nidle_timeout = 0\n", "clients.idle_timeout"),
        ("[clients]\nmax_refusals = 0\n", "clients.max_refusals"),
        ("[clients]\nmax_behind = 0\n", "clients.max_behind"),
        ("[clients]\nhello_timeout = 0\n", "clients.hello_timeout"),
        ("[scheduler]\ntimeout = 0\n", "scheduler.timeout"),
        ("[scheduler]\npoll = inf\n", "scheduler.poll"),
        ("[scheduler]\npools = ['gpu', 'a b']\n", "scheduler.pools"),
        ("[restart]\ntimeout = -1\n", "restart.timeout"),
        ("[restart]\nunits = ['sshd']\n", "restart.units"),
        ("[restart]\nunits = ['--now.service']\n", "restart.units"),
        ("[restart]\nunits = ['a;b.service']\n", "restart.units"),
        ("[restart]\nagent_unit = 'gpufleet agent'\n", "restart.agent_unit"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(text: str, key: str) -> None:
    assert f"{SRC}: {key}: " in refused(text)


def test_invalid_toml_names_the_file() -> None:
    message = refused("[agent\ninterval = 1\n")
    assert "not valid TOML" in message


def test_validate_config_names_source() -> None:
    import msgspec

    cfg = msgspec.structs.replace(AgentConfig(), sim=SimSection(gpus=0))
    with pytest.raises(ConfigError, match=r"^cli: sim\.gpus"):
        validate_config(cfg, "cli")


@pytest.mark.parametrize(
    ("interval", "history", "expected"),
    [(1.0, 900.0, 900), (0.5, 900.0, 1800), (2.0, 60.0, 30), (5.0, 5.0, 1), (0.3, 1.0, 3)],
)
def test_history_len_is_history_over_interval(
    interval: float, history: float, expected: int
) -> None:
    cfg = parse(f"[agent]\ninterval = {interval}\nhistory = {history}\nslow_interval = 5\n")
    assert cfg.history_len == expected


def test_history_len_default() -> None:
    assert AgentConfig().history_len == 900


@pytest.mark.parametrize("value", ["nan", "inf", "+inf"])
def test_non_finite_history_is_refused(value: str) -> None:
    refused(f"[agent]\nhistory = {value}\n")


def test_huge_history_is_refused_or_usable() -> None:
    try:
        cfg = parse("[agent]\nhistory = 1e300\n")
    except ConfigError:
        return
    collections.deque(maxlen=cfg.history_len)  # what Sampler builds from it


def test_nan_max_behind_is_refused() -> None:
    refused("[clients]\nmax_behind = nan\n")


def test_non_utf8_file_is_a_config_error() -> None:
    refused(b'[agent]\nnode_name = "caf\xe9"\n')


# ---------------------------------------------------------------------------------------------
# Fuzzing: nothing but ConfigError ever comes out


def _parse_or_config_error(data: str | bytes) -> AgentConfig | None:
    try:
        cfg = parse_config(data, SRC)
    except ConfigError as exc:
        message = str(exc)
        cfg = None
    if cfg is None:
        assert message.startswith(f"{SRC}: ")
        return None
    assert isinstance(cfg, AgentConfig)
    return cfg


@settings(max_examples=500)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_config_error(text: str) -> None:
    _parse_or_config_error(text)


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_arbitrary_text_as_utf8_bytes_raises_only_config_error(text: str) -> None:
    _parse_or_config_error(text.encode())


SECTIONS = ["agent", "sim", "roles", "clients", "agnet", "agent.sub"]
KEYS = sorted(
    {
        *AgentSection.__struct_fields__,
        *SimSection.__struct_fields__,
        *RolesSection.__struct_fields__,
        *ClientsSection.__struct_fields__,
        "intervl",
        "x",
    }
)

toml_scalars = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(
        lambda f: repr(f) if math.isfinite(f) else "0.0"
    ),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=10).map(lambda s: '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'),
    st.sampled_from(['"0660"', '"0666"', '"/run/a.sock"', '"sim"', "1979-05-27", "12:00:00"]),
)
toml_values = st.one_of(
    toml_scalars,
    st.lists(toml_scalars, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]"),
    st.dictionaries(st.sampled_from(KEYS), toml_scalars, max_size=2).map(
        lambda d: "{" + ", ".join(f"{k} = {v}" for k, v in d.items()) + "}"
    ),
)


@st.composite
def toml_documents(draw: st.DrawFn) -> str:
    lines: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            lines.append(f"[{draw(st.sampled_from(SECTIONS))}]")
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f"{draw(st.sampled_from(KEYS))} = {draw(toml_values)}")
    return "\n".join(lines) + "\n"


@settings(max_examples=500)
@given(toml_documents())
def test_toml_shaped_documents_raise_only_config_error(text: str) -> None:
    cfg = _parse_or_config_error(text)
    if cfg is not None:
        # An accepted config is usable: the ring size is a positive whole number.
        assert isinstance(cfg.history_len, int)
        assert cfg.history_len >= 1
        assert not socket_mode(cfg.agent.socket_mode) & 0o002
        assert cfg.agent.socket.startswith("/")
