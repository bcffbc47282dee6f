"""``make run`` / ``make demo``: materialize every asset, every partition, with the current settings.

Stages run in dependency order, one Dagster run per partition, recorded in the persistent instance
under ``$AERIAL_DATA_ROOT/dagster_home`` so the UI (``make ui``) shows their history and metadata.
One county failing does not stop the others; the exit status says whether everything succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from collections.abc import Mapping, Sequence

# Dagster flags its beta and preview APIs at import time; they are pinned here, so keep the terminal for progress.
warnings.filterwarnings("ignore", message=r".* is currently in (beta|preview)")

from dagster import AssetKey, DagsterEventType, DagsterInstance, Definitions, MultiPartitionKey  # noqa: E402

from aerial_assets.backbones.zoo import zoo_entry  # noqa: E402
from aerial_assets.defs.definitions import build_defs  # noqa: E402
from aerial_assets.defs.partitions import county_partitions  # noqa: E402
from aerial_assets.defs.run_guard import (  # noqa: E402
    RunGuard,
    RunRefused,
    install_instance_yaml,
    run_tags,
    upgrade_instance_yaml,
)
from aerial_assets.defs.settings import RunDefaults, data_root  # noqa: E402
from aerial_assets.errors import AerialError, ConfigurationError, CountyError, StorageError  # noqa: E402
from aerial_assets.imagery.counties import County, resolve_county  # noqa: E402
from aerial_assets.imagery.tile_summaries import parse_tile_summary  # noqa: E402
from aerial_assets.maps.change import change_plan  # noqa: E402
from aerial_assets.records import ChampionRecord, PredictionsSummary  # noqa: E402
from aerial_assets.safety import csv_files  # noqa: E402
from aerial_assets.safety.redaction import redact  # noqa: E402
from aerial_assets.safety.yaml_files import load_yaml  # noqa: E402
from aerial_assets.spark.lines import check_connect_ml  # noqa: E402
from aerial_assets.spark.remote import connect_endpoint  # noqa: E402
from aerial_assets.spark.session import SparkSettings, start_early, stop_classic_session  # noqa: E402
from aerial_assets.storage.core import is_local, join, local_path  # noqa: E402
from aerial_assets.training.classifiers import check_algorithm  # noqa: E402
from aerial_assets.training.presets import DEFAULT_PRESET, PRESETS, get_preset, merged_run_config  # noqa: E402


def parse_list(value: str, check) -> list[str]:
    names = [v.strip() for v in value.split(",") if v.strip()]
    for name in names:
        check(name)
    return names


def prepare_home(env: dict[str, str]) -> None:
    """Use ``$AERIAL_DATA_ROOT/dagster_home`` unless DAGSTER_HOME is set; either way the home has the project's
    dagster.yaml (a DAGSTER_HOME of the user's that has none gets it; one that has its own keeps it)."""
    if env.get("DAGSTER_HOME"):
        os.makedirs(env["DAGSTER_HOME"], exist_ok=True)
        if os.path.exists(os.path.join(env["DAGSTER_HOME"], "dagster.yaml")):
            upgrade_instance_yaml(os.path.join(env["DAGSTER_HOME"], "dagster.yaml"))  # module paths of before
        else:  # a fresh home gets the project's settings too (run monitoring, the run launcher, one run at a time)
            install_instance_yaml(env["DAGSTER_HOME"])
        return
    root = data_root(env)
    # The run history is local; with a cloud data root (az://...) it stays under ./.aerial_data.
    home = join(local_path(root if is_local(root) else ".aerial_data"), "dagster_home")
    install_instance_yaml(home)  # atomically: make ui may be reading it at this moment
    env["DAGSTER_HOME"] = home
    os.environ["DAGSTER_HOME"] = home


class Runner:
    """Runs selections of the implicit asset job, partition by partition, and keeps score."""

    def __init__(self, defs: Definitions, instance: DagsterInstance, run_config: Mapping[str, object]):
        self.job = defs.resolve_implicit_global_asset_job_def()
        self.instance = instance
        self.run_config = run_config
        self.failures: list[str] = []  # "<assets> [<partition>]: <one-line cause>"
        self.failed_checks: list[str] = []  # "<severity> <asset>[<partition>] <check>: <description>"

    def _config_for(self, assets: Sequence[str]) -> dict[str, object]:
        ops = (self.run_config or {}).get("ops", {})
        config: dict[str, object] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
        if ops:
            config["ops"] = {k: v for k, v in ops.items() if k in assets}
        return config

    def run(self, assets: Sequence[str], partition_key: str | None = None, label: str = "",
            partition_range: tuple[str, str] | None = None) -> bool:
        """One run of ``assets`` for one partition, or for a range of partitions in a single run."""
        shown = label or partition_key or (f"{partition_range[0]}...{partition_range[1]}" if partition_range else "")
        what = f"{', '.join(assets)}" + (f" [{shown}]" if shown else "")
        print(f"==> materializing {what}", flush=True)
        # This process's pid and host: a later start can tell that a run whose process is gone is dead.
        tags = {**run_tags(), **({"dagster/asset_partition_range_start": partition_range[0],
                                  "dagster/asset_partition_range_end": partition_range[1]} if partition_range else {})}
        result = self.job.execute_in_process(
            run_config=self._config_for(assets),
            instance=self.instance,
            partition_key=partition_key,
            asset_selection=[AssetKey(a) for a in assets],
            raise_on_error=False,
            tags=tags,
        )
        causes = []
        for event in result.all_events:
            if event.is_step_failure:
                cause = one_line(step_cause(event.step_failure_data.error))
                causes.append(cause)
                print(f"    FAILED: {cause}", flush=True)
            elif (event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                  and not event.asset_check_evaluation_data.passed):
                check = event.asset_check_evaluation_data
                where = check.asset_key.to_user_string() + (f"[{check.partition}]" if check.partition else "")
                text = (f"{check.severity.value} {where} {check.check_name}: "
                        f"{one_line(check.description or 'failed (see its metadata in the UI)')}")
                self.failed_checks.append(text)
                print(f"    CHECK {text}", flush=True)
        if not result.success:
            self.failures.append(f"{what}: {'; '.join(causes) or 'failed (see the run in the UI)'}")
        return result.success


def step_cause(error) -> str:
    """The message that says why a step failed: Dagster wraps the asset's own exception ("Error occurred while
    executing op ...") and keeps it as the error's cause; the innermost such cause is the user's error."""
    while error.cause is not None and error.message.startswith(("Error occurred while executing",
                                                                "dagster._core.errors.DagsterExecutionStepExecutionError")):
        error = error.cause
    return error.message


def one_line(message: str, limit: int = 600) -> str:
    """An error message as one redacted line: Dagster's wrappers (``dagster._core...Failure:``) cut off."""
    text = " ".join(str(message).split())
    text = re.sub(r"^(?:[\w.]+\.)?(?:Failure|DagsterExecutionStepExecutionError)\s*:\s*", "", text)
    text = redact(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_counties(resources: Mapping[str, object], wanted: str | None) -> tuple[dict[str, County], list[str]]:
    """The county registry, every registered tile summary and the ``--counties`` keys, all checked now.

    ``make run`` scores counties after an hour of training; a typo in the registry or a bad summary CSV
    must stop it in seconds instead. Raises the registry's or the summary's error (a :class:`CountyError`).
    """
    storage = resources["storage"]
    registry = resources["counties"].load(storage)
    keys = parse_list(wanted, lambda k: k) if wanted else sorted(registry)
    missing = [k for k in keys if k not in registry]
    if missing:
        raise CountyError(f"counties not in the registry: {', '.join(missing)}; registered: "
                          f"{', '.join(sorted(registry)) or 'none'}")
    for key in keys:
        registry[key] = resolve_county(registry[key])  # a STAC catalog that cannot be read fails here, in seconds
        tiles = registry[key].tiles
        if tiles is not None:
            parse_tile_summary(storage.for_uri(tiles.summary).read_text(tiles.summary), tiles.summary, crs=tiles.crs)
    return registry, keys


def check_label_map(resources: Mapping[str, object]) -> None:
    """``AERIAL_LABEL_MAP`` parsed now, like every other setting: a bad map is one line and exit status 2, not a
    failed step with a traceback. Its classes are matched against the folders' when ``labeled_tiles`` runs."""
    resources["training_tiles"].load_label_map(resources["storage"])


def configuration_error(exc: Exception) -> int:
    """A configuration error as one line on stderr (no traceback: the message says what to fix); exit status 2."""
    print(f"make run: configuration error: {redact(' '.join(str(exc).split()))}", file=sys.stderr, flush=True)
    return 2


EPILOG = """\
settings (environment variables; docs/reference/settings.md lists them all):
  AERIAL_TRAINING_TILES   labelled tiles <class>/<image> (local folder or az://...); unset: the demo set
  AERIAL_TRAINING_RASTERS training tiles from rasters: YAML {imagery: [tif], landcover: tif, legend: yaml}
  AERIAL_DATA_ROOT        where outputs go (default ./.aerial_data; az://container/prefix for Azure)
  AERIAL_COUNTIES         the county registry (YAML); unset: the demo county
  AERIAL_SPARK_MASTER     local[N] (default local[2]), spark://host:7077, yarn
  SPARK_REMOTE            a Spark Connect URL (sc://host:15002), instead of a master
  AERIAL_DEPLOYMENT       local or azure (default: azure when an Azure URI and Azure credentials are set)
  AERIAL_PRESET           what to train and compare: {presets}

exit status: 0 all succeeded, 1 a step failed (listed at the end), 2 a configuration error (one line on
stderr naming the setting), 3 another run holds this data root.
"""


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    defaults = RunDefaults.from_env(os.environ if env is None else env)
    parser = argparse.ArgumentParser(
        prog="python -m aerial_assets.defs.run", description=__doc__,
        epilog=EPILOG.replace("{presets}", f"{' or '.join(PRESETS)} (default {DEFAULT_PRESET})"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=defaults.preset or DEFAULT_PRESET,
                        help="what to train and compare (default: $AERIAL_PRESET or "
                             f"{DEFAULT_PRESET}): " + "; ".join(f"{p.name}: {p.cost}" for p in PRESETS.values()))
    parser.add_argument("--backbones", default=defaults.backbones,
                        help="comma list of backbones to featurize with, instead of the preset's (default: "
                             "$AERIAL_BACKBONES or the preset's: " + "; ".join(
                                 f"{p.name}: {','.join(p.backbones)}" for p in PRESETS.values())
                             + "; docs/user-guide/presets.md lists them)")
    parser.add_argument("--algorithms", default=defaults.algorithms,
                        help="comma list of classifiers to train on each backbone, instead of the preset's (default: "
                             "$AERIAL_ALGORITHMS or the preset's: " + "; ".join(
                                 f"{p.name}: {','.join(p.algorithms)}" for p in PRESETS.values()) + ")")
    parser.add_argument("--counties", default=None, help="comma list of registry keys to score; default: every "
                        "county in the registry")
    parser.add_argument("--skip-counties", action="store_true", help="stop after the champion model (no scoring)")
    parser.add_argument("--verbose", action="store_true", help="the local Spark driver's whole log (as "
                        "AERIAL_VERBOSE=1); by default its start-up notices are left out")
    parser.add_argument("--config", default=None, metavar="YAML", help="run config for the assets' settings, as "
                        "Dagster takes it: ops: {asset_name: {config: {...}}}; it overrides the preset's settings "
                        "key by key")
    return parser


def load_run_config(path: str | None) -> dict[str, object]:
    """The ``--config`` YAML, or a :class:`ConfigurationError` saying what is wrong with the file."""
    if not path:
        return {}
    try:
        with open(path) as handle:
            text = handle.read()
    except OSError as exc:
        raise ConfigurationError(f"--config {path}: cannot read it ({exc.strerror or exc})") from exc
    loaded = load_yaml(text, f"--config {path}")
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not isinstance(loaded.get("ops", {}), dict):
        raise ConfigurationError(f"--config {path}: expected a mapping like 'ops: {{tile_features: {{config: "
                                 "{views: 8}}}}'")
    return loaded


def check_run_config(defs: Definitions, run_config: Mapping[str, object]) -> None:
    """Reject a run config that names an unknown asset or a setting the asset does not take, before any run."""
    from dagster import DagsterInvalidConfigError, validate_run_config

    job = defs.resolve_implicit_global_asset_job_def()
    ops = (run_config or {}).get("ops", {}) or {}
    known = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    unknown = sorted(set(ops) - known)
    if unknown:
        raise ConfigurationError(f"--config names unknown assets: {', '.join(unknown)}; the assets are: "
                                 f"{', '.join(sorted(known))}")
    try:
        validate_run_config(job, {"ops": dict(ops)})
    except DagsterInvalidConfigError as exc:
        first = exc.errors[0].message if exc.errors else str(exc)
        raise ConfigurationError(f"--config: {' '.join(first.split())}") from None


def main(argv: Sequence[str] | None = None) -> int:
    # Dagster flags beta APIs on every import; they are pinned here, so keep the terminal for progress.
    warnings.filterwarnings("ignore", category=Warning, module=r"dagster\..*")
    env = dict(os.environ)  # the one read of this process's environment; everything below takes ``env``
    args = build_parser(env).parse_args(argv)
    if args.verbose:
        env["AERIAL_VERBOSE"] = "1"

    preset = get_preset(args.preset)
    backbones = parse_list(args.backbones or ",".join(preset.backbones), zoo_entry)
    algorithms = parse_list(args.algorithms or ",".join(preset.algorithms), check_algorithm)
    prepare_home(env)
    try:  # one run per data root, held until this process ends; dead runs failed, their temporaries swept
        guard = RunGuard(env["DAGSTER_HOME"], data_root(env))
    except RunRefused as exc:
        print(f"make run: refused: {exc}", file=sys.stderr, flush=True)
        return 3
    user_config = load_run_config(args.config)
    run_config = merged_run_config(preset, None, user_config)
    defs = build_defs(env)
    for algorithm in algorithms:  # the preset's settings under the user's, for every run this process will launch
        check_run_config(defs, merged_run_config(preset, algorithm, user_config))
    print(f"preset {preset.name}: backbones {', '.join(backbones)}; classifiers {', '.join(algorithms)}; "
          f"{run_config['ops'].get('tile_features', {}).get('config', {}).get('views', 1)} view(s) per tile",
          flush=True)
    resources = defs.resources
    try:  # an unreachable storage account stops the run here, in seconds and one line, not step after step
        resources["storage"].storage.exists(resources["storage"].layout.root)
    except StorageError as exc:
        print(f"make run: {redact(exc)}", file=sys.stderr, flush=True)
        return 2
    try:  # the Spark line, the label map, the registry and its tile summaries: before an hour of training
        resources["mlflow"].check()  # an MLflow server that does not answer: before any step logs to it
        remote = SparkSettings.from_env(env).remote
        if remote:
            check_connect_ml(connect_endpoint(remote))
        check_label_map(resources)
        if not args.skip_counties:
            registry, keys = check_counties(resources, args.counties)
    except AerialError as exc:
        return configuration_error(exc)
    start_early(env, argv or [])  # settings checked: the Spark JVM comes up while Dagster prepares the first run
    instance = guard.instance
    runner = Runner(defs, instance, run_config)

    if env.get("AERIAL_TRAINING_RASTERS") and not env.get("AERIAL_TRAINING_TILES"):  # tiles from a land-cover raster
        if not runner.run(["raster_labeled_tiles"]):
            return report(runner, resources, [], env.get("DAGSTER_HOME", ""))
    if not runner.run(["labeled_tiles"]):
        return report(runner, resources, [], env.get("DAGSTER_HOME", ""))
    for backbone in backbones:
        runner.run(["backbone_models", "tile_features"], backbone)
    for backbone in backbones:
        for algorithm in algorithms:
            key = MultiPartitionKey({"backbone": backbone, "algorithm": algorithm})
            runner.run_config = merged_run_config(preset, algorithm, user_config)
            runner.run(["land_use_classifiers", "classifier_metrics"], key, f"{backbone}|{algorithm}")
    runner.run_config = run_config
    if not runner.run(["model_leaderboard", "champion_model"]) or args.skip_counties:
        return report(runner, resources, [], env.get("DAGSTER_HOME", ""))
    instance.add_dynamic_partitions(county_partitions.name, [k for k in keys if not instance.has_dynamic_partition(
        county_partitions.name, k)])
    for key in keys:
        assets = ["county_tiles", "county_predictions", "county_land_use_map"]
        # the map against the county's reference land cover, where one is registered
        runner.run([*assets, "county_map_agreement"] if registry[key].reference else assets, key)
    # Change between vintages, once every vintage of an area is scored; a vintage whose baseline has no predictions
    # (--counties left it out) is skipped with a line, not failed.
    layout, store = resources["storage"].layout, resources["storage"].storage
    changes, skipped = change_plan(registry, keys, lambda base: PredictionsSummary.exists(
        store, layout.county_predictions(base)))
    for key, base in skipped.items():
        print(f"==> not computing county_land_use_change [{key}]: its baseline {base} has no predictions (add {base} "
              "to --counties)", flush=True)
    for key in changes:
        runner.run(["county_land_use_change"], key)
    return report(runner, resources, keys, env.get("DAGSTER_HOME", ""))


def report(runner: Runner, resources: Mapping[str, object], counties: Sequence[str], home: str) -> int:
    layout = resources["storage"].layout
    store = resources["storage"].storage
    board = layout.leaderboard_csv()
    print()
    if store.exists(board):
        frame = csv_files.read_csv(store.read_text(board))
        print("Leaderboard (test split; champion chosen on validation macro-F1):")
        shown = ["backbone", "algorithm", "views", "accuracy", "macro_f1", "val_macro_f1", "ece", "n_train", "n_test",
                 "fit_seconds"]
        print(frame[[c for c in shown if c in frame.columns]].round(4).to_string(index=False))  # an older board: no ece
        print(f"  csv: {board}")
    for key in counties:
        png = join(layout.county_map(key), "land_use.png")
        if store.exists(png):
            print(f"Map of {key}: {png}")
            print(f"  GeoTIFF: {join(layout.county_map(key), 'land_use.tif')}")
            if store.exists(join(layout.county_map(key), "land_use.html")):
                print(f"  interactive map: {join(layout.county_map(key), 'land_use.html')}")
        if store.exists(PredictionsSummary.uri(layout.county_predictions(key))):
            scored = PredictionsSummary.read(store, layout.county_predictions(key))
            if (share := scored.trust.ood_share(scored.n_tiles)) is not None:
                print(f"  out of distribution: {100 * share:.1f} % of {scored.n_tiles} tiles (marked on the map)")
        change = join(layout.county_change(key), "change.png")
        if store.exists(change):
            print(f"Change map of {key}: {change}")
    mlflow_line = _mlflow_line(resources["mlflow"], store, layout)
    if mlflow_line:
        print(mlflow_line)
    print(f"Outputs under {layout.root}; run history in {home} (make ui)")
    if runner.failed_checks:
        print(f"{len(runner.failed_checks)} asset check(s) did not pass:", file=sys.stderr)
        for check in runner.failed_checks:
            print(f"  - {check}", file=sys.stderr)
    if runner.failures:
        print(f"{len(runner.failures)} step(s) failed:", file=sys.stderr)
        for failure in runner.failures:
            print(f"  - {failure}", file=sys.stderr)
        return 1
    return 0


def _mlflow_line(mlflow, store, layout) -> str:
    """Where the MLflow runs and the registered champion are (empty with AERIAL_MLFLOW=0)."""
    from aerial_assets.tracking.mlflow_store import public_address

    target = mlflow.target()
    if target is None:
        return ""
    where = "make mlflow-ui" if target.embedded else public_address(target.tracking_uri)
    line = f"MLflow: experiment {target.experiment} ({where})"
    if store.exists(ChampionRecord.uri(layout.champion())):
        registered = ChampionRecord.read(store, layout.champion()).mlflow_model
        if registered:
            line += f"; champion registered as models:/{target.model_name}@champion ({registered})"
    return line


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AerialError as exc:  # any other configuration error (an unknown backbone...): one line too
        sys.exit(configuration_error(exc))
    finally:
        stop_classic_session()  # a YARN application unregisters with its final status
