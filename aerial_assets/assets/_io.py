"""Small helpers every asset uses to write its folder and describe it."""


import json
from typing import Any

import pandas as pd

from aerial_assets.storage import Storage, join


def write_json(store: Storage, folder: str, name: str, payload: dict[str, Any]) -> None:
    store.write_text(join(folder, name), json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(store: Storage, folder: str, name: str) -> dict[str, Any]:
    return json.loads(store.read_text(join(folder, name)))


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A pandas frame as a markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_per_county(context, work):
    """Run ``work(key) -> metadata`` for every county partition of the run, isolating failures.

    A backfill runs many counties in one run (one Spark session). One county failing must not lose
    the others: the counties that succeeded are recorded as materialized, then the step fails naming
    the counties that did not, with their errors (a retry of the backfill re-runs only those).
    """
    from dagster import AssetMaterialization, Failure, MaterializeResult, MetadataValue

    done: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for key in context.partition_keys:
        try:
            done[key] = work(key)
        except Exception as exc:  # noqa: BLE001 - any county's failure is reported, not allowed to stop the rest
            failed[key] = f"{type(exc).__name__}: {exc}"
            context.log.error(f"county {key} failed: {failed[key]}")
    if failed:
        for key, metadata in done.items():
            context.log_event(AssetMaterialization(asset_key=context.asset_key, partition=key, metadata=metadata))
        raise Failure(
            description=f"{len(failed)} of {len(context.partition_keys)} counties failed: "
                        + "; ".join(f"{k}: {v}" for k, v in failed.items()),
            metadata={"failed_counties": MetadataValue.json(failed), "succeeded": ", ".join(done) or "none"},
        )
    if len(done) == 1:
        return MaterializeResult(metadata=next(iter(done.values())))
    summary = pd.DataFrame([{"county": k, **{m: v for m, v in meta.items() if isinstance(v, int | float | str)}}
                            for k, meta in done.items()])
    return MaterializeResult(metadata={"counties_in_run": ", ".join(done),
                                       "per_county": MetadataValue.md(markdown_table(summary))})
