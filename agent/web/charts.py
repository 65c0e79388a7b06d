"""Small server-rendered SVG line charts (sparklines) for the status page.

The page has no chart library and no build step: the geometry is computed here and the template
draws one ``<polyline>`` per chart, so a chart costs a few hundred bytes and works offline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agent.durations import format_number
from agent.history import CANARY_PASS_RATE, SignalHistory

WIDTH, HEIGHT, PAD = 300.0, 60.0, 3.0
MIN_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChartSpec:
    signal: str
    title: str
    fmt: Callable[[float], str]
    fixed_range: tuple[float, float] | None = None  # p-values and ratios: always 0..1
    threshold: float | None = None  # a dashed line where the rules usually care


@dataclass(frozen=True, slots=True, kw_only=True)
class Chart:
    signal: str
    title: str
    points: str  # SVG polyline "x,y x,y ..."
    last: str
    low: str
    high: str
    threshold_y: float | None
    count: int
    window: str  # "last 4 min": the x axis spans the data, from one minute up to the ring's span


def _percent(value: float) -> str:
    return f"{value * 100:.0f}%"


def _p_value(value: float) -> str:
    return format_number(value)


def _ms(value: float) -> str:
    return f"{format_number(value)} ms"


CHARTS: tuple[ChartSpec, ...] = (
    ChartSpec(signal=CANARY_PASS_RATE, title="canary pass rate", fmt=_percent, fixed_range=(0, 1)),
    ChartSpec(
        signal="drift_p_value",
        title="drift p-value",
        fmt=_p_value,
        fixed_range=(0, 1),
        threshold=0.05,
    ),
    ChartSpec(
        signal="decay_p_value",
        title="decay p-value",
        fmt=_p_value,
        fixed_range=(0, 1),
        threshold=0.05,
    ),
    ChartSpec(signal="latency_p95_ms", title="p95 latency", fmt=_ms),
    ChartSpec(signal="error_rate", title="error rate", fmt=_percent, fixed_range=(0, 1)),
)


def build_charts(history: SignalHistory) -> tuple[list[Chart], list[str]]:
    """Charts for the signals that have data, and the titles of those that have none yet."""
    charts, missing = [], []
    for spec in CHARTS:
        series = history.series(spec.signal)
        if series:
            charts.append(chart(spec, series, span_s=history.span_s))
        else:
            missing.append(spec.title)
    return charts, missing


def chart(spec: ChartSpec, series: Sequence[tuple[float, float]], *, span_s: float) -> Chart:
    """Scale ``series`` into the chart box. x: the data's own time span (at least a minute, at
    most ``span_s``) up to the newest point, so a young agent's chart is not a dot at the right
    edge. y: the fixed range, else zero to the largest value (a zero-based axis does not make
    small wobbles look like spikes)."""
    values = [v for _, v in series]
    low, high = spec.fixed_range or (min(0.0, *values), max(values))
    end = series[-1][0]
    window_s = min(span_s, max(MIN_WINDOW_S, end - series[0][0]))
    start = end - window_s

    def x(at: float) -> float:
        return PAD + (WIDTH - 2 * PAD) * max(0.0, at - start) / window_s

    def y(value: float) -> float:
        if high <= low:
            return HEIGHT / 2
        share = (min(max(value, low), high) - low) / (high - low)
        return HEIGHT - PAD - (HEIGHT - 2 * PAD) * share

    coords = [(x(at), y(v)) for at, v in series]
    if len(coords) == 1:  # one point is a line across the newest few pixels, not nothing
        coords.insert(0, (coords[0][0] - 4, coords[0][1]))
    return Chart(
        signal=spec.signal,
        title=spec.title,
        points=" ".join(f"{cx:.1f},{cy:.1f}" for cx, cy in coords),
        last=spec.fmt(values[-1]),
        low=spec.fmt(low),
        high=spec.fmt(high),
        threshold_y=round(y(spec.threshold), 1) if spec.threshold is not None else None,
        count=len(series),
        window="last hour" if window_s >= 3600 else f"last {max(1, round(window_s / 60))} min",
    )
