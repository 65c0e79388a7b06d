"""The signal history ring behind the status page's charts, and the charts' geometry."""

from __future__ import annotations

from agent.history import SignalHistory
from agent.web.charts import CHARTS, HEIGHT, PAD, chart

T0 = 1_700_000_000.0
CANARY = next(spec for spec in CHARTS if spec.signal == "canary_pass_rate")
LATENCY = next(spec for spec in CHARTS if spec.signal == "latency_p95_ms")
DRIFT = next(spec for spec in CHARTS if spec.signal == "drift_p_value")


def test_ticks_inside_the_resolution_update_the_newest_point() -> None:
    history = SignalHistory(span_s=3600, resolution_s=10)

    for second in range(0, 25):  # one tick per second
        history.add(T0 + second, {"error_rate": float(second)})

    assert [(p.at - T0, p.values["error_rate"]) for p in history.points()] == [
        (0.0, 0.0),
        (10.0, 10.0),
        (20.0, 20.0),
        (24.0, 24.0),  # the newest tick, shown until the next point starts
    ]


def test_points_older_than_the_span_are_dropped() -> None:
    history = SignalHistory(span_s=60, resolution_s=10)

    for step in range(20):
        history.add(T0 + 10 * step, {"error_rate": 0.0})

    ats = [p.at - T0 for p in history.points()]
    assert ats[0] == 130.0  # 190 - 60
    assert ats[-1] == 190.0
    assert len(ats) == 7


def test_a_clock_going_back_does_not_reorder_the_ring() -> None:
    history = SignalHistory()
    history.add(T0 + 100, {"error_rate": 0.0})

    history.add(T0, {"error_rate": 1.0})

    assert [p.at for p in history.points()] == [T0 + 100]


def test_series_has_only_the_points_with_that_signal() -> None:
    history = SignalHistory(resolution_s=1)
    history.add(T0, {"error_rate": 0.0})
    history.add(T0 + 1, {"error_rate": 0.5, "drift_p_value": 0.2})

    assert history.series("drift_p_value") == [(T0 + 1, 0.2)]
    assert history.series("decay_p_value") == []


def test_fixed_range_chart_puts_1_at_the_top_and_0_at_the_bottom() -> None:
    drawn = chart(CANARY, [(T0, 1.0), (T0 + 60, 0.0)], span_s=3600)

    assert drawn.points == f"{PAD:.1f},{PAD:.1f} 297.0,{HEIGHT - PAD:.1f}"
    assert (drawn.last, drawn.low, drawn.high, drawn.window) == ("0%", "0%", "100%", "last 1 min")


def test_chart_window_follows_the_data_up_to_the_span() -> None:
    young = chart(LATENCY, [(T0, 10.0), (T0 + 300, 20.0)], span_s=3600)
    old = chart(LATENCY, [(T0, 10.0), (T0 + 7200, 20.0)], span_s=3600)

    assert young.window == "last 5 min"
    assert old.window == "last hour"
    assert (young.low, young.high) == ("0 ms", "20 ms")  # zero-based


def test_p_value_charts_draw_the_significance_line() -> None:
    drawn = chart(DRIFT, [(T0, 0.5)], span_s=3600)

    assert drawn.threshold_y == round(HEIGHT - PAD - (HEIGHT - 2 * PAD) * 0.05, 1)
    assert len(drawn.points.split()) == 2  # one point is drawn as a short line
