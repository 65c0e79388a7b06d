"""``warden drift test``: the agent's drift detector, offline, on two files of feature vectors.

Exit status: 0 no drift, 1 drift, 2 bad input (the message says what: mismatched dimensions, too
few samples, NaNs, an unreadable file, alibi-detect missing).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console

from agent.errors import WardenError

drift_app = typer.Typer(
    help="Test feature files for drift with the same detector the agent runs.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXIT_NO_DRIFT, EXIT_DRIFT, EXIT_BAD_INPUT = 0, 1, 2


@drift_app.command("test")
def test_files(
    reference: Annotated[
        Path, typer.Option("--reference", help="Reference rows (.npy/.csv/.jsonl).")
    ],
    current: Annotated[Path, typer.Option("--current", help="Current rows (.npy/.csv/.jsonl).")],
    alpha: Annotated[float, typer.Option(help="Significance after correction.")] = 0.01,
    engine: Annotated[Literal["scipy", "alibi"], typer.Option(help="scipy or alibi.")] = "scipy",
    correction: Annotated[
        Literal["bonferroni", "fdr"], typer.Option(help="Multiple-testing correction.")
    ] = "bonferroni",
    test: Annotated[Literal["ks", "cvm"], typer.Option(help="Per-feature test.")] = "ks",
    min_statistic: Annotated[
        float, typer.Option(help="KS distance a drifted feature must reach.")
    ] = 0.1,
    min_reference: Annotated[int, typer.Option(help="Fewest reference rows accepted.")] = 1000,
    min_current: Annotated[int, typer.Option(help="Fewest current rows accepted.")] = 200,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Did CURRENT drift from REFERENCE? Per-feature tests, corrected p-value, decision.

    Example: warden drift test --reference ref.npy --current today.jsonl --json
    (JSON lines may be observations as served by GET /v1/observations.)
    """
    from agent.drift import engine as drift_engine
    from agent.drift.detector import DriftSettings, check_inputs
    from agent.drift.files import load_features

    settings = DriftSettings(
        alpha=alpha, correction=correction, min_statistic=min_statistic, test=test
    )
    try:
        ref, cur = check_inputs(
            load_features(reference),
            load_features(current),
            min_reference=min_reference,
            min_current=min_current,
        )
        result = drift_engine(engine)(ref, cur, settings)
    except (WardenError, ValueError) as exc:
        err.print(f"error: {exc}", markup=False, highlight=False)
        raise typer.Exit(EXIT_BAD_INPUT) from exc
    if as_json:
        out.print(json.dumps(result.to_dict()), markup=False, highlight=False)
    else:
        verdict = "DRIFT" if result.drift else "no drift"
        out.print(
            f"{verdict}: corrected p-value {result.p_value:.4g} (alpha {alpha:g}, "
            f"{correction}), largest KS statistic {result.statistic:.4f}, "
            f"{len(result.drifted)}/{len(result.p_values)} features drifted "
            f"({result.n_reference} reference rows, {result.n_current} current, engine {engine})",
            markup=False,
            highlight=False,
        )
        for i, (p, q, s) in enumerate(
            zip(result.p_values, result.corrected, result.statistics, strict=True)
        ):
            mark = " *" if i in result.drifted else ""
            out.print(f"  f{i:<3} p {p:.4g}  corrected {q:.4g}  KS {s:.4f}{mark}", markup=False)
    raise typer.Exit(EXIT_DRIFT if result.drift else EXIT_NO_DRIFT)
