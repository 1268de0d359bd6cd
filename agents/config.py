"""The agent's TOML configuration: every key optional, every mistake named.

A typo in a config key is an operator error we want to catch at start, not a setting silently
ignored, so unknown keys are refused. Errors name the file, the key path and what was wrong.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from pathlib import Path
from typing import Final, Literal

import msgspec

from agents.ops.restart import UNIT_NAME
from agents.protocol import METRICS_PORT, POOL_NAME, GpufleetError, clip

DEFAULT_CONFIG_PATH: Final = Path("/etc/gpufleet/agent.toml")
#: Bound on the ring buffer (a day at 1 Hz is 86,400): memory, not taste, sets it.
MAX_HISTORY_SAMPLES: Final = 1_000_000


class ConfigError(GpufleetError):
    """The config file is missing (when asked for explicitly), unreadable or invalid."""


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class AgentSection(_Section):
    node_name: str | None = None  # defaults to the host name
    socket: str = "/run/gpufleet/agent.sock"
    socket_group: str | None = None  # group that may connect; None keeps the process's group
    socket_mode: str = "0660"
    state_dir: str = "/var/lib/gpufleet"
    backend: Literal["auto", "nvml", "sim"] = "auto"
    interval: float = 1.0  # seconds between samples
    history: float = 900.0  # seconds of samples kept for new clients
    slow_interval: float = 15.0  # seconds between the slow reads (PCIe; energy at most 1/min)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class SimSection(_Section):
    gpus: int = 8
    seed: int = 0


class RolesSection(_Section):
    """Who may act. Anyone who can open the socket may read; root and the agent's own user
    are always operators."""

    operators: list[str] = []  # user names
    operator_groups: list[str] = []  # group names


class ClientsSection(_Section):
    max_queued_samples: int = 60  # per client; older samples are dropped past this
    max_queued_other: int = 1000  # responses and events are never dropped: past this, disconnect
    max_behind: float = 120.0  # seconds a client may stay behind before it is disconnected
    max_queued_bytes: int = 4 << 20  # per client, responses and events together
    max_clients: int = 64  # root may always connect, past this
    max_clients_per_user: int = 16
    hello_timeout: float = 10.0  # seconds a new client has to send its hello
    idle_timeout: float = 600.0  # seconds a non-streaming client may stay silent
    max_refusals: int = 20  # requests refused for role before the connection is closed


class SchedulerSection(_Section):
    """Who gives this node work, and how to reach it (design.md §3)."""

    kind: Literal["none", "slurm", "kubernetes"] = "none"
    node: str | None = None  # the node's name in the scheduler; defaults to agent.node_name
    #: Pools the node may be moved to (Slurm partitions, or values of the Kubernetes pool
    #: label). Empty: any pool (on Slurm, any partition that exists).
    pools: list[str] = []
    timeout: float = 30.0  # seconds one scontrol/sinfo/kubectl call may take
    poll: float = 10.0  # seconds between reads of the scheduler's view of the node
    scontrol: str = "scontrol"
    sinfo: str = "sinfo"
    slurm_conf: str | None = None  # SLURM_CONF for the commands; None: Slurm's default
    kubectl: str = "kubectl"
    kubeconfig: str | None = None
    pool_label: str = "gpufleet.io/pool"


class RestartSection(_Section):
    """The restart allowlist: nothing outside it can be restarted through the agent."""

    agent: bool = True  # the agent itself (systemctl restart agent_unit)
    node: bool = True  # reboot, only when drained (Slurm: scontrol reboot ASAP)
    gpu_reset: bool = True  # nvidia-smi --gpu-reset, only when that GPU is idle
    units: list[str] = []  # systemd units that may be restarted, e.g. "slurmd.service"
    agent_unit: str = "gpufleet-agent.service"
    systemctl: str = "systemctl"
    nvidia_smi: str = "nvidia-smi"
    timeout: float = 120.0  # seconds a restart command may take before it is killed


class MetricsSection(_Section):
    """Prometheus ``/metrics`` (issue 7): off unless ``listen`` names an address."""

    #: "HOST:PORT" with HOST an IP literal ("127.0.0.1:9401", "[::1]:9401", "0.0.0.0:9401",
    #: "[::]:9401"); empty: no exporter. Names are refused: what a name resolves to can change
    #: under a running agent, and an operator must see exactly what is exposed.
    listen: str = ""


class ListenAddress(msgspec.Struct, frozen=True):
    host: str  # an IP literal, without brackets
    port: int

    def __str__(self) -> str:
        """``host:port`` as a URL writes it (brackets around IPv6)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


_LISTEN_RE: Final = re.compile(r"\[(?P<v6>[^\]]*)\]:(?P<p6>[^:]*)|(?P<v4>[^:\[\]]*):(?P<p4>[^:]*)")


def parse_listen(text: str) -> ListenAddress:
    """``[metrics] listen`` as an address, or ValueError saying what is accepted."""
    usage = (
        f"metrics.listen: {clip(text, 80)!r} is not HOST:PORT with HOST an IP address "
        f"(like 127.0.0.1:{METRICS_PORT}, [::1]:{METRICS_PORT}, or 0.0.0.0:{METRICS_PORT} "
        "for every interface)"
    )
    m = _LISTEN_RE.fullmatch(text.strip())
    if m is None:
        bare = text.strip()
        try:  # a bare address: the most likely slip, so say what to add
            addr = ipaddress.ip_address(bare.strip("[]"))
        except ValueError:
            raise ValueError(usage) from None
        if addr.version == 6 and not bare.startswith("["):
            raise ValueError(f"{usage}: an IPv6 address goes in brackets, the port after") from None
        raise ValueError(f"{usage}: the port is missing") from None
    host = m.group("v6") if m.group("v6") is not None else m.group("v4")
    port_text = m.group("p6") if m.group("p6") is not None else m.group("p4")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(usage) from None
    if m.group("v6") is not None and addr.version != 6:
        raise ValueError(f"{usage}: brackets are for IPv6 addresses")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"metrics.listen: port {clip(port_text, 20)!r} must be 1 to 65535")
    return ListenAddress(str(addr) if addr.version == 4 else host, int(port_text))


class AgentConfig(_Section):
    agent: AgentSection = msgspec.field(default_factory=AgentSection)
    sim: SimSection = msgspec.field(default_factory=SimSection)
    roles: RolesSection = msgspec.field(default_factory=RolesSection)
    clients: ClientsSection = msgspec.field(default_factory=ClientsSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)
    restart: RestartSection = msgspec.field(default_factory=RestartSection)
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)

    @property
    def node(self) -> str:
        """The node's name as the console and the scheduler know it."""
        return self.agent.node_name or socket.gethostname()

    @property
    def scheduler_node(self) -> str:
        """The node's name as its scheduler knows it (Slurm's NodeName may not be the host's)."""
        return self.scheduler.node or self.node

    @property
    def metrics_listen(self) -> ListenAddress | None:
        """Where to serve ``/metrics``, or None when it is off (validated at load)."""
        text = self.metrics.listen.strip()
        return parse_listen(text) if text else None

    @property
    def history_len(self) -> int:
        """How many samples the ring buffer holds."""
        return max(1, round(self.agent.history / self.agent.interval))


_PATH_RE: Final = re.compile(r" - at `\$\.?(.*)`$")


def _check(cfg: AgentConfig) -> None:
    """Checks msgspec's types cannot express; each raises naming the key."""
    a = cfg.agent
    for key in ("interval", "history", "slow_interval"):
        if not math.isfinite(getattr(a, key)):
            raise ValueError(f"agent.{key}: must be a finite number of seconds")
    if not 0.05 <= a.interval <= 3600:
        raise ValueError("agent.interval: must be between 0.05 and 3600 seconds")
    if a.history < a.interval:
        raise ValueError("agent.history: must be at least one interval")
    if a.history / a.interval > MAX_HISTORY_SAMPLES:
        raise ValueError(
            f"agent.history: {a.history:g} s at {a.interval:g} s intervals is more than "
            f"{MAX_HISTORY_SAMPLES} samples"
        )
    if not a.interval <= a.slow_interval <= 3600:
        raise ValueError("agent.slow_interval: must be between agent.interval and 3600 seconds")
    mode = socket_mode(a.socket_mode)
    if mode & 0o002:
        raise ValueError(f"agent.socket_mode: {a.socket_mode} is world-writable; use 0660")
    if not a.socket.startswith("/"):
        raise ValueError(f"agent.socket: {a.socket!r} must be an absolute path")
    if not 1 <= cfg.sim.gpus <= 64:
        raise ValueError("sim.gpus: must be between 1 and 64")
    c = cfg.clients
    for key in (
        "max_queued_samples",
        "max_queued_other",
        "max_queued_bytes",
        "max_clients",
        "max_clients_per_user",
        "max_refusals",
    ):
        if getattr(c, key) < 1:
            raise ValueError(f"clients.{key}: must be at least 1")
    for key in ("max_behind", "hello_timeout", "idle_timeout"):
        if not (math.isfinite(getattr(c, key)) and getattr(c, key) > 0):
            raise ValueError(f"clients.{key}: must be a positive number of seconds")
    for section, key in (("scheduler", "timeout"), ("scheduler", "poll"), ("restart", "timeout")):
        value = getattr(getattr(cfg, section), key)
        if not (math.isfinite(value) and 0 < value <= 3600):
            raise ValueError(f"{section}.{key}: must be between 0 and 3600 seconds")
    for pool in cfg.scheduler.pools:
        if not POOL_NAME.fullmatch(pool):
            raise ValueError(f"scheduler.pools: {pool!r} is not a pool name")
    for unit in cfg.restart.units:
        if not UNIT_NAME.fullmatch(unit):
            raise ValueError(
                f"restart.units: {unit!r} is not a systemd unit name (like slurmd.service)"
            )
    if not UNIT_NAME.fullmatch(cfg.restart.agent_unit):
        raise ValueError(f"restart.agent_unit: {cfg.restart.agent_unit!r} is not a unit name")
    cfg.metrics_listen  # noqa: B018 (parsed for its errors)


def socket_mode(text: str) -> int:
    try:
        mode = int(text, 8)
    except ValueError:
        raise ValueError(f"agent.socket_mode: {text!r} is not an octal mode like 0660") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"agent.socket_mode: {text!r} is not a file mode")
    return mode


def parse_config(
    data: bytes | str, source: str = "<config>", *, validate: bool = True
) -> AgentConfig:
    """Decode and (unless told not to) validate; ConfigError names ``source`` and the key."""
    try:
        cfg = msgspec.toml.decode(data, type=AgentConfig)
    except msgspec.ValidationError as exc:
        text = clip(str(exc), 1000)  # a quoted TOML key may hold a newline: keep one line
        m = _PATH_RE.search(text)
        where = m.group(1) if m else ""
        what = _PATH_RE.sub("", text)
        if where:
            raise ConfigError(f"{source}: {where}: {what}") from None
        raise ConfigError(f"{source}: {what}") from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{source}: not valid UTF-8 (byte {exc.start})") from None
    if validate:
        validate_config(cfg, source)
    return cfg


def validate_config(cfg: AgentConfig, source: str) -> None:
    """Raise ConfigError naming ``source`` and the key if ``cfg`` breaks a rule."""
    try:
        _check(cfg)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(path: Path | None, *, validate: bool = True) -> AgentConfig:
    """The config at ``path``; with no path, the default file if it exists, else defaults.

    ``validate=False`` is for a caller that overrides values first and validates the result
    (a file's ``history = 0.5`` is fine with ``--interval 0.05`` on the command line)."""
    explicit = path is not None
    target = path if path is not None else DEFAULT_CONFIG_PATH
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{target}: no such file") from None
        return AgentConfig()
    except OSError as exc:
        raise ConfigError(f"{target}: cannot read: {exc.strerror}") from None
    return parse_config(data, str(target), validate=validate)
