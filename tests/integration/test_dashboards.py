"""grafana/: the dashboards' JSON is well formed, the provisioning points at it, and every panel's
query (templating variables expanded) returns data from a real Prometheus that scraped the real
server and agent under load and through one kill -9 (``obs_stack``). Grafana itself cannot run
here; Prometheus' HTTP API answers the queries exactly as it would answer Grafana.

Range panels are evaluated with ``/api/v1/query_range`` over the whole test (what a time-series
panel shows), instant ones (stat, table) with ``/api/v1/query`` now. "Data" means a non-empty
result with at least one finite value.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.conftest import REPO_ROOT
from tests.integration.conftest_obs import ObsStack
from tests.integration.obs_support import prometheus_query

pytestmark = [pytest.mark.integration, pytest.mark.prometheus]

GRAFANA = REPO_ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "warden-prometheus"
PANEL_TYPES = {"timeseries", "stat", "table", "state-timeline", "bargauge", "gauge", "text"}
# Grafana's built-in variables, with the values Grafana would use for this test's short window.
BUILTINS = {"__rate_interval": "15s", "__interval": "5s", "__range": "5m", "__range_s": "300"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# Panels fed by signals that exist only with a GPU (NVML), or only once drift windows and a decay
# baseline exist: checked by their own test (drift/decay must have data, GPU only with a GPU).
CONDITIONAL = re.compile(r"gpu_|drift_|decay_|canary_accuracy_drop")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str
    instant: bool

    @property
    def name(self) -> str:
        return f"{self.dashboard} / {self.panel} [{self.ref}]"


def load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # panels inside a collapsed row


def panel_queries(path: Path) -> list[PanelQuery]:
    """Every Prometheus query of a dashboard: panel targets and annotation queries."""
    dashboard = load(path)
    out = [
        PanelQuery(
            dashboard=dashboard["title"],
            panel=panel["title"],
            ref=target["refId"],
            expr=target["expr"],
            instant=bool(target.get("instant")) and not target.get("range"),
        )
        for panel in all_panels(dashboard)
        if panel["type"] != "row"
        for target in panel.get("targets", [])
    ]
    out += [
        PanelQuery(
            dashboard=dashboard["title"],
            panel=f"annotation {annotation['name']}",
            ref="-",
            expr=annotation["expr"],
            instant=False,
        )
        for annotation in dashboard["annotations"]["list"]
        if annotation.get("datasource", {}).get("type") == "prometheus"
    ]
    return out


def variables_used(expr: str) -> set[str]:
    return {next(g for g in m.groups() if g) for m in VARIABLE.finditer(expr)}


def expand(expr: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        return values[next(g for g in match.groups() if g)]

    return VARIABLE.sub(value, expr)


# --- structure --------------------------------------------------------------------------------


def test_there_are_the_three_dashboards() -> None:
    titles = sorted(load(p)["title"] for p in DASHBOARDS)
    assert titles == ["Warden / Agent", "Warden / Drift and decay", "Warden / Service overview"]
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_json_is_well_formed(path: Path) -> None:
    dashboard = load(path)
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    assert dashboard["uid"] and dashboard["title"] and dashboard["time"]["from"]
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids)
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    cells: set[tuple[int, int]] = set()
    defined = {v["name"] for v in dashboard["templating"]["list"]} | set(BUILTINS)
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["type"] in PANEL_TYPES, panel["type"]
        assert panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(set(refs)) == len(refs), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == DATASOURCE_UID
            undefined = variables_used(target["expr"]) - defined
            assert not undefined, f"{panel['title']}: undefined variables {undefined}"


def test_a_templating_variable_is_defined_and_used() -> None:
    used = 0
    for path in DASHBOARDS:
        dashboard = load(path)
        names = {v["name"] for v in dashboard["templating"]["list"]}
        used += sum(
            bool(variables_used(q.expr) & names) for q in panel_queries(path)
        )  # fmt: skip
    assert used >= 3


def test_provisioning_points_at_the_dashboards_and_the_datasource() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yaml").read_text())
    (prometheus,) = datasources["datasources"]
    assert (prometheus["type"], prometheus["uid"]) == ("prometheus", DATASOURCE_UID)
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/warden.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    compose = REPO_ROOT / "docker-compose.yml"
    if compose.exists():  # the provider's path is where compose mounts grafana/dashboards
        volumes = yaml.safe_load(compose.read_text())["services"]["grafana"]["volumes"]
        assert f"./grafana/dashboards:{provider['options']['path']}:ro" in volumes


# --- every query against the live Prometheus -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Evaluated:
    query: PanelQuery
    expr: str  # with variables expanded
    series: int
    finite: bool


def _variable_values(stack: ObsStack, variable: dict[str, Any]) -> str:
    """What Grafana offers for a ``label_values(metric, label)`` variable, as a regex."""
    match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["definition"])
    assert match, f"unsupported variable query {variable['definition']}"
    metric, label = match.groups()
    series = httpx.get(
        f"{stack.prometheus_url}/api/v1/series",
        params={"match[]": metric, "start": stack.started_at, "end": time.time()},
        timeout=5.0,
    ).json()["data"]
    values = sorted({s[label] for s in series if label in s})
    assert values, f"variable ${variable['name']} has no values ({variable['definition']})"
    return "(" + "|".join(_regex_escape(v) for v in values) + ")"


def _regex_escape(value: str) -> str:
    """Grafana's escaping of a value inside a PromQL regex string (backslash doubled)."""
    return re.sub(r"([\\.^$|?*+()\[\]{}])", r"\\\\\1", value)


def _evaluate(stack: ObsStack, query: PanelQuery, values: dict[str, str]) -> Evaluated:
    expr = expand(query.expr, values)
    if query.instant:
        result = prometheus_query(stack.prometheus_url, expr)
        points = [s["value"][1] for s in result]
    else:
        result = stack.query_range(expr)
        points = [v for s in result for _, v in s["values"]]
    finite = any(math.isfinite(float(p)) for p in points)
    return Evaluated(query=query, expr=expr, series=len(result), finite=finite)


@pytest.fixture(scope="module")
def evaluated(obs_stack: ObsStack) -> list[Evaluated]:
    """Every panel and annotation query of every dashboard, evaluated once."""
    out = []
    for path in DASHBOARDS:
        dashboard = load(path)
        values = dict(BUILTINS)
        for variable in dashboard["templating"]["list"]:
            values[variable["name"]] = _variable_values(obs_stack, variable)
        out += [_evaluate(obs_stack, q, values) for q in panel_queries(path)]
    return out


def _exported_signals(stack: ObsStack) -> set[str]:
    text = httpx.get(f"{stack.agent_url}/metrics", timeout=5.0).text
    return set(re.findall(r'^warden_signal\{[^}]*signal="(\w+)"', text, re.MULTILINE))


def _sources(expr: str, exported: set[str]) -> set[str]:
    """The exported signals a query's ``signal`` matchers select."""
    found = set()
    for op, pattern in re.findall(r'signal(=~?)"([^"]+)"', expr):
        regex = re.compile(pattern if op == "=~" else re.escape(pattern))
        found |= {name for name in exported if regex.fullmatch(name)}
    return found


def test_every_panel_query_returns_data(evaluated: list[Evaluated]) -> None:
    checked = [e for e in evaluated if not CONDITIONAL.search(e.query.expr)]
    assert len(checked) >= 40
    empty = [f"{e.query.name}: {e.expr}" for e in checked if not e.series or not e.finite]
    assert empty == [], "panels without data:\n" + "\n".join(empty)


def test_drift_and_decay_panels_have_data_and_gpu_ones_follow_the_gpu_signals(
    obs_stack: ObsStack, evaluated: list[Evaluated]
) -> None:
    """The agent exports drift and decay signals (the obs stack sends enough traffic for drift
    windows, and its release was promoted with a canary baseline): those panels must have data.
    GPU panels have data exactly when the agent exports GPU signals (NVML on a GPU machine);
    on this CPU-only machine they are empty, like Grafana's "No data"."""
    conditional = [e for e in evaluated if CONDITIONAL.search(e.query.expr)]
    assert len(conditional) >= 8
    exported = _exported_signals(obs_stack)
    assert "cpu_percent" in exported  # the agent's signals are there at all
    empty = [e for e in conditional if not e.series or not e.finite]
    broken = [f"{e.query.name}: {e.expr}" for e in empty if _sources(e.expr, exported)]
    assert broken == [], "panels without data although the agent exports their signals:\n" + (
        "\n".join(broken)
    )
    not_gpu = [f"{e.query.name}: {e.expr}" for e in empty if "gpu_" not in e.expr]
    assert not_gpu == [], "drift/decay panels without data:\n" + "\n".join(not_gpu)
    gpu_exported = any(name.startswith("gpu_") for name in exported)
    assert not (gpu_exported and empty), "GPU signals are exported but GPU panels are empty"
