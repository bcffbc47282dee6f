"""Small helpers every asset uses to write its folder and describe it."""


from typing import Any

import pandas as pd

from aerial_assets.safety.redaction import redact


def markdown_table(frame: pd.DataFrame, floatfmt: str = ".4f") -> str:
    """A pandas frame as a markdown table (no tabulate dependency)."""
    cols = list(frame.columns)
    lines = ["| " + " | ".join(str(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        cells = [format(v, floatfmt) if isinstance(v, float) else str(v) for v in row.values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


_TYPES = {"i": "int", "u": "int", "f": "float", "b": "bool", "M": "string", "O": "string", "U": "string"}


def table_schema(frame: pd.DataFrame, descriptions: dict[str, str] | None = None):
    """A Dagster ``TableSchema`` of a pandas frame's columns (the UI's column view, ``dagster/column_schema``)."""
    from dagster import TableColumn, TableSchema

    described = descriptions or {}
    return TableSchema(columns=[
        TableColumn(name=str(c), type=_TYPES.get(frame[c].dtype.kind, str(frame[c].dtype)),
                    description=described.get(str(c))) for c in frame.columns])


def spark_table_schema(schema, descriptions: dict[str, str] | None = None):
    """A Dagster ``TableSchema`` of a Spark ``StructType`` (a Spark-written dataset's columns, never read here)."""
    from dagster import TableColumn, TableSchema

    described = descriptions or {}
    return TableSchema(columns=[TableColumn(name=f.name, type=f.dataType.simpleString(),
                                            description=described.get(f.name)) for f in schema.fields])


def declared_columns(fields: tuple[tuple[str, str], ...], descriptions: dict[str, str] | None = None):
    """A Dagster ``TableSchema`` of a table's columns known before any run (``tables.TableSchema`` fields): declared
    on the asset, so the UI and the generated reference show them before the first materialization."""
    from dagster import TableColumn, TableSchema

    described = descriptions or {}
    return TableSchema(columns=[TableColumn(name=name, type=kind, description=described.get(name))
                                for name, kind in fields])


def _cell(value: Any, digits: int) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return round(value, digits)
    return value if isinstance(value, bool | int | str) else str(value)


def metadata_table(frame: pd.DataFrame, digits: int = 4):
    """A pandas frame as ``MetadataValue.table``: the UI renders it as a sortable table with typed columns,
    which a markdown string is not."""
    from dagster import MetadataValue, TableRecord

    frame = frame.reset_index(drop=True)
    records = [TableRecord({str(c): _cell(v, digits) for c, v in row.items()}) for row in frame.to_dict("records")]
    return MetadataValue.table(records=records, schema=table_schema(frame))


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
            failed[key] = redact(f"{type(exc).__name__}: {exc}")
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
                                       "per_county": metadata_table(summary)})


def no_scored_tiles(storage, key: str):
    """The :class:`CountyError` for a county with no scored tile, with its tiles counted by what happened to them
    (nodata, quarantined when tiling, quarantined when scoring, by reason) instead of a guess."""
    from aerial_assets.errors import CountyError
    from aerial_assets.records import CountyTilesSummary
    from aerial_assets.safety import csv_files
    from aerial_assets.safety.quarantine import reasons_text
    from aerial_assets.storage.core import join
    from aerial_assets.storage.layout import QUARANTINE
    from aerial_assets.tables import TileStatus

    layout, store = storage.layout, storage.storage
    parts = []
    if CountyTilesSummary.exists(store, layout.county_tiles(key)):
        counts = CountyTilesSummary.read(store, layout.county_tiles(key)).counts
        parts.append(f"{sum(counts.values())} tile(s) cut: {counts.get(TileStatus.OK, 0)} usable, "
                     f"{counts.get(TileStatus.NODATA, 0)} mostly nodata, {counts.get(TileStatus.QUARANTINED, 0)} "
                     "quarantined when tiling")
    quarantine = join(layout.county_predictions(key), QUARANTINE)
    if store.exists(quarantine):
        frame = csv_files.read_csv(store.read_text(quarantine), dtype=str, keep_default_na=False)
        if len(frame):
            parts.append(f"{len(frame)} quarantined when scoring ({reasons_text(frame['reason'])}; see {quarantine})")
    return CountyError(f"county {key} has no scored tile: {'; '.join(parts) or 'county_tiles has no record'}")
