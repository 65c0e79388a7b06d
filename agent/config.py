"""``warden.yaml``: the agent's configuration, validated whole, with defaults for everything.

An absent file is the embedded default (process backend, one replica of the packaged model on
127.0.0.1:8000, API on 127.0.0.1:9400). Durations are parsed once here into ``*_s`` seconds and
sizes into ``*_bytes``; paths are resolved relative to the config file's directory. Every problem
is reported at once as ``file:line: path: message``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.backends.base import ReleaseSpec
from agent.durations import quote
from agent.errors import ConfigError
from agent.yamlconf import (
    ByteSize,
    Document,
    Duration,
    PositiveDuration,
    choice,
    read_document,
    render,
    validate,
)

PACKAGED_DEFAULTS = Path(__file__).parent / "defaults"
PACKAGED_RULES = PACKAGED_DEFAULTS / "rules"
PACKAGED_CANARIES = PACKAGED_RULES / "canaries.yaml"
BACKEND_KINDS = ("process", "docker", "swarm")
ALERT_KINDS = ("alertmanager", "webhook", "slack")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_SERVICE = re.compile(r"[a-z0-9][a-z0-9_.-]*")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _matches(pattern: re.Pattern[str], what: str) -> AfterValidator:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"use {what}; got {quote(value)}")
        return value

    return AfterValidator(check)


def _env_name(value: str) -> str:
    if value and not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f"expected an environment variable name like WARDEN_TOKEN; got {quote(value)}"
        )
    return value


def _env_values(value: object) -> object:
    """Numbers in ``env:`` become text (``OMP_NUM_THREADS: 2``); anything else is checked as is."""
    if isinstance(value, dict):
        return {k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in value.items()}  # fmt: skip
    return value


def _not_empty(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value:
        raise ValueError("must not be empty")
    return value


def _default_command() -> tuple[str, ...]:
    return (sys.executable, "-m", "inference")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class BackendSettings(_Section):
    """Where and how replicas run."""

    kind: Annotated[
        Literal["process", "docker", "swarm"], BeforeValidator(choice("backend", BACKEND_KINDS))
    ] = "process"
    replicas: int = Field(1, ge=1)
    max_replicas: int = Field(4, ge=1)
    port: int = Field(8000, ge=1, le=65535)  # first replica; more on the next free ports
    host: str = "127.0.0.1"
    image: str = "warden-inference"  # docker/swarm: repository; releases are its tags
    network: str = ""
    command: Annotated[tuple[str, ...], AfterValidator(_not_empty)] = Field(
        default_factory=_default_command
    )  # process: argv prefix that starts the server
    extra_args: tuple[str, ...] = ()
    env: Annotated[dict[str, str], BeforeValidator(_env_values)] = Field(default_factory=dict)
    memory_limit_bytes: ByteSize = Field(None, alias="memory_limit")
    cpus: float | None = Field(None, gt=0)
    labels: dict[str, str] = Field(default_factory=dict)  # docker: extra labels on all it creates
    # docker: how the agent reaches replicas. published: their port 8000 published on 127.0.0.1
    # (an agent on the host); network: the container's address on `network` (an agent in a
    # container on that network); auto: network when `network` is set and the agent runs in a
    # container (/.dockerenv), else published.
    reach: Literal["auto", "published", "network"] = "auto"
    # swarm: published port of the first candidate replica of a staged rollout (the service's
    # replicas use port, port + 1, ...); default port + 100
    canary_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _replicas_fit(self) -> BackendSettings:
        if self.replicas > self.max_replicas:
            raise ValueError(
                f"replicas ({self.replicas}) is more than max_replicas ({self.max_replicas})"
            )
        return self


class ReleaseSettings(_Section):
    """The release to run when the agent has no history yet."""

    tag: Annotated[str, _matches(_TAG, 'letters, digits, "_", "." and "-" (a Docker tag)')] = (
        "default"
    )
    model: str = ""  # process: model directory; "" = the packaged default model
    task: str = ""  # "" = the server decides (auto)
    image: str = ""  # docker/swarm: full image reference; "" = backend.image:tag
    args: tuple[str, ...] = ()


class ProbeSettings(_Section):
    """How often replicas are probed."""

    interval_s: PositiveDuration = Field(1.0, alias="interval")
    timeout_s: PositiveDuration = Field(0.5, alias="timeout")
    canary_interval_s: PositiveDuration = Field(10.0, alias="canary_interval")
    # A replica that has not answered /health since it started is "starting", not failing,
    # for this long (a Kubernetes startup probe): torch and model load take seconds to minutes.
    startup_grace_s: Duration = Field(120.0, alias="startup_grace")


def _bind(value: str) -> str:
    _split_bind(value)
    return value


def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f'expected "host:port" like "127.0.0.1:9400"; got {quote(bind)}')
    return host, int(port)


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TokenSettings(_Section):
    """One named API token (``api.tokens``); the audit log records its name as ``by``.

    The secret itself is never in ``warden.yaml``: it comes from an environment variable or a
    file (a Docker/Kubernetes secret mount), so the config can be shared and committed.
    """

    name: Annotated[str, _matches(_TOKEN_NAME, 'letters, digits, "_", "." and "-"')]
    env: Annotated[str, AfterValidator(_env_name)] = ""
    file: Path | None = None  # relative to the config file

    @field_validator("file")
    @classmethod
    def _relative_to_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve_optional(value, info)

    @model_validator(mode="after")
    def _one_source(self) -> TokenSettings:
        if bool(self.env) == (self.file is not None):
            raise ValueError("give the secret's source as exactly one of env: or file:")
        return self


def _unique_names(tokens: tuple[TokenSettings, ...]) -> tuple[TokenSettings, ...]:
    names = [t.name for t in tokens]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"token names must be unique; {', '.join(twice)} is used twice")
    if "default" in names:
        raise ValueError('"default" is the name of the token_env token; choose another name')
    return tokens


class ApiSettings(_Section):
    """The agent's own HTTP API."""

    bind: Annotated[str, AfterValidator(_bind)] = "127.0.0.1:9400"
    token_env: Annotated[str, AfterValidator(_env_name)] = "WARDEN_TOKEN"  # noqa: S105 (a name)
    # more tokens, each with a name the audit log records (the token_env one is "default")
    tokens: Annotated[tuple[TokenSettings, ...], AfterValidator(_unique_names)] = ()
    read_open: bool = True  # read-only endpoints without a token; default: only on loopback
    # a client must send each whole request within this (slowloris; agent/slow_clients.py)
    request_timeout_s: PositiveDuration = Field(10.0, alias="request_timeout")

    @model_validator(mode="before")
    @classmethod
    def _read_open_default(cls, data: object) -> object:
        if isinstance(data, dict) and "read_open" not in data:
            try:
                host, _ = _split_bind(data.get("bind", "127.0.0.1:9400"))
            except (ValueError, AttributeError):
                return data  # the bind error is reported on its own
            return {**data, "read_open": is_loopback(host)}
        return data

    @property
    def host(self) -> str:
        """The address to listen on."""
        return _split_bind(self.bind)[0]

    @property
    def port(self) -> int:
        """The port to listen on."""
        return _split_bind(self.bind)[1]


def _url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL; got {quote(value)}")
    return value


class AlertSettings(_Section):
    """One alert receiver."""

    kind: Annotated[
        Literal["alertmanager", "webhook", "slack"],
        BeforeValidator(choice("alert kind", ALERT_KINDS)),
    ]
    url: Annotated[str, AfterValidator(_url)]
    secret_env: Annotated[str, AfterValidator(_env_name)] = ""  # webhook: HMAC key's variable
    timeout_s: PositiveDuration = Field(5.0, alias="timeout")


class PolicySettings(_Section):
    """Remediation limits (the policy engine's knobs)."""

    cooldown_s: Duration = Field(60.0, alias="cooldown")
    actions_per_hour: int = Field(10, ge=0)
    verify_timeout_s: PositiveDuration = Field(60.0, alias="verify_timeout")
    bake_s: Duration = Field(300.0, alias="bake")
    crash_loop_backoff_initial_s: PositiveDuration = Field(10.0, alias="crash_loop_backoff_initial")
    crash_loop_backoff_max_s: PositiveDuration = Field(300.0, alias="crash_loop_backoff_max")
    restart_window_s: PositiveDuration = Field(600.0, alias="restart_window")
    dry_run: bool = False

    @model_validator(mode="after")
    def _backoff_order(self) -> PolicySettings:
        if self.crash_loop_backoff_max_s < self.crash_loop_backoff_initial_s:
            raise ValueError("crash_loop_backoff_max is shorter than crash_loop_backoff_initial")
        return self


class DecaySettings(_Section):
    """Accuracy decay detection against the last good release's baseline (docs/decay.md)."""

    enabled: bool = True
    alpha: float = Field(0.05, gt=0, lt=1)  # family-wise, Bonferroni over the tests that ran
    baseline_runs: int = Field(5, ge=1, le=100)  # canary runs pooled into a baseline
    min_confidence_drop: float = Field(0.05, ge=0, le=1)
    min_accuracy_drop: float = Field(0.05, ge=0, le=1)
    feedback_window: int = Field(500, ge=1, le=100_000)
    feedback_min_samples: int = Field(250, ge=1)

    @model_validator(mode="after")
    def _window_holds_the_minimum(self) -> DecaySettings:
        if self.feedback_min_samples > self.feedback_window:
            raise ValueError(
                f"feedback_min_samples ({self.feedback_min_samples}) is more than "
                f"feedback_window ({self.feedback_window}): the test could never run"
            )
        return self


def _base_dir(info: ValidationInfo) -> Path:
    context = info.context if isinstance(info.context, dict) else {}
    base = context.get("base_dir")
    return base if isinstance(base, Path) else Path.cwd()


def _resolve(value: Path, info: ValidationInfo) -> Path:
    return Path(os.path.normpath(_base_dir(info) / value.expanduser()))


def _resolve_optional(value: Path | None, info: ValidationInfo) -> Path | None:
    return None if value is None else _resolve(value, info)


def _existing(value: Path, info: ValidationInfo) -> Path:
    path = _resolve(value, info)
    if not path.exists():
        raise ValueError(f"no such file or directory: {path}")
    return path


class PrometheusSettings(_Section):
    """Prometheus integration (docs/observability.md)."""

    # file_sd target file the agent keeps up to date with its replicas; None: not written
    file_sd: Annotated[Path | None, AfterValidator(_resolve_optional)] = None


class DriftSettings(_Section):
    """Drift of live inputs against the reference window (docs/drift.md explains each default)."""

    enabled: bool = True
    engine: Annotated[
        Literal["scipy", "alibi"], BeforeValidator(choice("drift engine", ("scipy", "alibi")))
    ] = "scipy"
    test: Annotated[Literal["ks", "cvm"], BeforeValidator(choice("drift test", ("ks", "cvm")))] = (
        "ks"
    )
    correction: Annotated[
        Literal["bonferroni", "fdr"], BeforeValidator(choice("correction", ("bonferroni", "fdr")))
    ] = "bonferroni"
    alpha: float = Field(0.01, gt=0, le=0.5)  # false alarms per window, after correction
    min_statistic: float = Field(0.1, ge=0, le=1)  # KS distance a drifted feature must reach
    window: int = Field(500, ge=10)  # observations per tested window
    min_window: int = Field(200, ge=10)  # a window closed by max_age with fewer is skipped
    max_age_s: Duration | None = Field(None, alias="max_age")  # null: windows close by count
    consecutive: int = Field(2, ge=1, le=100)  # drifting windows in a row before drift_detected
    reference_size: int = Field(1000, ge=10)
    min_reference: int = Field(1000, ge=10)
    deploy_windows: int = Field(4, ge=1)  # a drift starting this soon after a deploy is its own
    interval_s: PositiveDuration = Field(5.0, alias="interval")  # how often observations are read
    reference_file: Annotated[Path | None, AfterValidator(_resolve_optional)] = None

    @model_validator(mode="after")
    def _sizes_fit(self) -> DriftSettings:
        if self.min_window > self.window:
            raise ValueError(f"min_window ({self.min_window}) is more than window ({self.window})")
        if self.min_reference > self.reference_size:
            raise ValueError(
                f"min_reference ({self.min_reference}) is more than reference_size "
                f"({self.reference_size}): a reference could never be captured"
            )
        if self.engine == "alibi" and self.test != "ks":
            raise ValueError("the alibi engine runs the KS test only; use test: ks")
        if self.reference_file is not None and not self.reference_file.is_file():
            raise ValueError(f"reference_file: no such file: {self.reference_file}")
        return self


class BalancerSettings(_Section):
    """How user traffic is split between releases (docs/rollout.md): needed for staged rollouts.

    kind none: clients reach the replicas directly. haproxy: HAProxy binds backend.host:port and
    the replicas move to the ports above it. replicas (Swarm only): clients on backend.network
    resolve `alias` to every task that serves (DNS round robin), and a release's share of the
    traffic is its share of those tasks. auto: haproxy when it is installed and the backend is
    process (what `warden up` uses unless the config says otherwise). `replicas` is never chosen
    by auto: it changes how the Swarm services are created (alias, DNS mode, health check).
    """

    kind: Annotated[
        Literal["none", "haproxy", "replicas", "auto"],
        BeforeValidator(choice("balancer kind", ("none", "haproxy", "replicas", "auto"))),
    ] = "none"
    # replicas: the DNS name clients use on backend.network; "" = the service's name
    alias: str = ""
    slots: int = Field(16, ge=2, le=256)  # servers HAProxy declares; replicas + candidates
    # external: HAProxy runs elsewhere (docker-compose.yml's haproxy service) and starts with the
    # config the agent writes into `directory`; the agent never starts or stops it.
    external: bool = False
    directory: Annotated[Path | None, AfterValidator(_resolve_optional)] = None  # state_dir/haproxy
    bind: str = ""  # HAProxy's public address; default backend.host:backend.port


class RolloutSettings(_Section):
    """Defaults of `warden deploy --steps` (docs/rollout.md explains each limit)."""

    steps: tuple[int, ...] = (10, 50, 100)
    step_duration_s: PositiveDuration = Field(120.0, alias="step_duration")
    start_timeout_s: PositiveDuration = Field(300.0, alias="start_timeout")
    drain_timeout_s: PositiveDuration = Field(10.0, alias="drain_timeout")
    max_p95_ratio: float = Field(2.0, gt=1)
    min_p95_delta_ms: float = Field(20.0, ge=0)
    min_requests: int = Field(50, ge=1)
    max_error_delta: float = Field(0.01, ge=0, le=1)
    error_alpha: float = Field(0.01, gt=0, lt=1)
    load_test_requests: int = Field(200, ge=10, le=100_000)
    load_test_concurrency: int = Field(4, ge=1, le=64)

    @model_validator(mode="after")
    def _steps_rise_to_100(self) -> RolloutSettings:
        steps = self.steps
        if not steps or any(not 0 < s <= 100 for s in steps) or list(steps) != sorted(steps):
            raise ValueError(f"steps must rise from above 0 to at most 100; got {list(steps)}")
        return self


def default_rules_path(base_dir: Path) -> Path:
    """``rules/`` next to the config file, else the copy packaged with the agent."""
    local = base_dir / "rules"
    return local if local.is_dir() else PACKAGED_RULES


def default_canaries_path(base_dir: Path) -> Path:
    """``rules/canaries.yaml`` next to the config file, else the packaged golden set."""
    local = base_dir / "rules" / "canaries.yaml"
    return local if local.is_file() else PACKAGED_CANARIES


class WardenConfig(_Section):
    """The whole of ``warden.yaml``, validated; sections are frozen pydantic models."""

    service: Annotated[str, _matches(_SERVICE, 'lowercase letters, digits, "_", "." and "-"')] = (
        "inference"
    )
    # docker: label warden.project=<project> scopes the containers this agent owns
    project: Annotated[str, _matches(_SERVICE, 'lowercase letters, digits, "_", "." and "-"')] = (
        "warden"
    )
    backend: BackendSettings = Field(default_factory=BackendSettings)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    canaries: Annotated[Path, AfterValidator(_existing)] = PACKAGED_CANARIES
    rules: Annotated[Path, AfterValidator(_existing)] = PACKAGED_RULES
    state_dir: Annotated[Path, AfterValidator(_resolve)] = Path(".warden")
    api: ApiSettings = Field(default_factory=ApiSettings)
    alerts: tuple[AlertSettings, ...] = ()
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    policy: PolicySettings = Field(default_factory=PolicySettings)
    decay: DecaySettings = Field(default_factory=DecaySettings)
    drift: DriftSettings = Field(default_factory=DriftSettings)
    balancer: BalancerSettings = Field(default_factory=BalancerSettings)
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    maintenance: bool = False

    @model_validator(mode="after")
    def _split_by_replicas_needs_swarm(self) -> WardenConfig:
        if self.balancer.kind == "replicas" and (
            self.backend.kind != "swarm" or not self.backend.network
        ):
            raise ValueError(
                "balancer kind replicas splits traffic by Swarm tasks behind a DNS name: it "
                "needs backend kind swarm and backend.network (an overlay network the clients "
                "are on); use kind haproxy for the process and docker backends"
            )
        b = self.backend
        if b.kind == "swarm":  # candidate slots: canary + traffic replicas, 16 + max_replicas
            first = b.canary_port or b.port + 100
            last = first + 16 + b.max_replicas - 1
            if last > 65535 or (first < b.port + b.max_replicas and b.port < last + 1):
                raise ValueError(
                    f"backend.canary_port: the candidate replicas' ports {first}-{last} must not "
                    f"overlap the replicas' ports {b.port}-{b.port + b.max_replicas - 1} and must "
                    "stay below 65536"
                )
        return self

    def splits_by_replicas(self) -> bool:
        """``balancer.kind: replicas`` (Swarm; never chosen by auto)."""
        return self.balancer.kind == "replicas"

    def traffic_alias(self) -> str:
        """The DNS name clients resolve when traffic is split by replicas ("" otherwise)."""
        if not self.splits_by_replicas():
            return ""
        return self.balancer.alias or self.service

    @model_validator(mode="before")
    @classmethod
    def _paths_default_next_to_the_file(cls, data: object, info: ValidationInfo) -> object:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            return data
        base = _base_dir(info)
        defaults = {
            "rules": default_rules_path(base),
            "canaries": default_canaries_path(base),
            "state_dir": Path(".warden"),
        }
        return defaults | data

    def initial_release(self) -> ReleaseSpec:
        """The ``release:`` section as the backend's ``ReleaseSpec``."""
        image = self.release.image
        if not image and self.backend.kind != "process":
            image = f"{self.backend.image}:{self.release.tag}"
        return ReleaseSpec(
            tag=self.release.tag,
            model=self.release.model,
            task=self.release.task,
            image=image,
            args=self.release.args,
        )


def load_config(path: Path | None, *, base_dir: Path | None = None) -> WardenConfig:
    """Load ``warden.yaml`` (``None``: the embedded default, paths relative to ``base_dir`` or
    the current directory). Raises ``ConfigError`` listing every problem."""
    if path is None:
        doc = Document(file="(defaults)")
        base = (base_dir or Path.cwd()).absolute()
    else:
        doc = read_document(path)
        base = (base_dir or path.parent).absolute()
    if doc.problems and doc.data is None:
        raise ConfigError(render(doc.problems))
    config, problems = validate(WardenConfig, doc, context={"base_dir": base})
    problems = doc.problems + problems
    if config is None or problems:
        raise ConfigError(render(problems))
    return config


__all__ = [
    "AlertSettings",
    "ApiSettings",
    "BackendSettings",
    "BalancerSettings",
    "DecaySettings",
    "DriftSettings",
    "PolicySettings",
    "ProbeSettings",
    "PrometheusSettings",
    "ReleaseSettings",
    "RolloutSettings",
    "TokenSettings",
    "WardenConfig",
    "is_loopback",
    "load_config",
]
