"""The product as a person operates it: the real Dagster webserver and daemon, driven over GraphQL, and the
UI checked in real headless Chromium (screenshots saved under test-artifacts/)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from aerial_assets.imagery.counties import County, render_registry
from aerial_assets_tests.standalone_cluster import stop_group

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LOCATION = "aerial_assets"
REPOSITORY = "__repository__"
GRAPH_ASSETS = ["labeled_tiles", "backbone_models", "tile_features", "land_use_classifiers", "classifier_metrics",
                "model_leaderboard", "champion_model"]
COUNTY_ASSETS = ["county_tiles", "county_predictions", "county_land_use_map"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Dagster:
    """``dagster dev`` (webserver + daemon) in its own process group, stopped by process id."""

    def __init__(self, home: Path, env: dict[str, str], log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "dev", "-h", "127.0.0.1", "-p", str(self.port), "-w",
             str(REPO / "workspace.yaml")],
            cwd=REPO, env={**os.environ, **env, "DAGSTER_HOME": str(home)}, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dagster dev exited with {self.proc.returncode}; see {self.log.name}")
            try:
                status = self.gql("{ workspaceOrError { ... on Workspace { locationEntries { name "
                                  "locationOrLoadError { __typename } } } } }")
                entries = status["workspaceOrError"]["locationEntries"]
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                    return
                if entries and entries[0]["locationOrLoadError"]["__typename"] == "PythonError":
                    raise RuntimeError(f"code location failed to load: {entries}")
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError("dagster dev did not become ready")

    def gql(self, query: str, variables: dict | None = None) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(f"{self.url}/graphql", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        if payload.get("errors"):
            raise AssertionError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def stop(self) -> None:
        stop_group(self.proc, timeout=60)
        self.log.close()


def _keys(names):
    return [{"path": [n]} for n in names]


def _launch_backfill(dagster: Dagster, params: dict) -> str:
    data = dagster.gql(
        "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename "
        "... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } "
        "... on PartitionSetNotFoundError { message } ... on InvalidSubsetError { message } } }",
        {"p": params},
    )["launchPartitionBackfill"]
    assert data["__typename"] == "LaunchBackfillSuccess", data
    return data["backfillId"]


def _wait_backfill(dagster: Dagster, backfill_id: str, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = dagster.gql(
            "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }",
            {"id": backfill_id},
        )
        status = data["partitionBackfillOrError"]["status"]
        if status in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
            return status
        time.sleep(3)
    raise TimeoutError(f"backfill {backfill_id} did not finish")


def _wait_runs(dagster: Dagster, run_ids: list[str], timeout: float = 600) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = dagster.gql(
            "query($ids: [String!]) { runsOrError(filter: {runIds: $ids}) { ... on Runs { results { runId status } } } }",
            {"ids": run_ids},
        )
        statuses = [r["status"] for r in data["runsOrError"]["results"]]
        if len(statuses) == len(run_ids) and all(s in ("SUCCESS", "FAILURE", "CANCELED") for s in statuses):
            return statuses
        time.sleep(3)
    raise TimeoutError("runs did not finish")


def _materialized_partitions(dagster: Dagster, asset: str) -> set[str]:
    data = dagster.gql(
        "query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { ... on Asset { "
        "assetMaterializations(limit: 50) { partition runId } } } }",
        {"k": {"path": [asset]}},
    )
    return {m["partition"] or "" for m in data["assetOrError"]["assetMaterializations"]}


@pytest.fixture(scope="module")
def dagster_ui(tiny_tiles, tiny_county, tmp_path_factory):
    base = tmp_path_factory.mktemp("ui")
    home = base / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    raster, _ = tiny_county
    registry = base / "counties.yaml"
    registry.write_text(render_registry({"tiny_ui": County("tiny_ui", "Tiny county", [str(raster)])}))
    ARTIFACTS.mkdir(exist_ok=True)
    env = {"AERIAL_DATA_ROOT": str(base / "data"), "AERIAL_TRAINING_TILES": str(tiny_tiles),
           "AERIAL_COUNTIES": str(registry), "PYSPARK_PYTHON": sys.executable}
    dagster = Dagster(home, env, ARTIFACTS / "dagster_dev.log")
    dagster.data_root = base / "data"
    try:
        dagster.wait_ready()
        dagster.gql("mutation { setNuxSeen }")
        yield dagster
    finally:
        dagster.stop()


#: the classifiers the UI's backfill trains: each partition is a run of its own (a process and a Spark session, about
#: a minute here), so the test keeps to two; graph_run (test_graph.py) trains every algorithm
UI_ALGORITHMS = ("linear_discriminant", "logistic_regression")


def _graph_selection(backbone: str) -> list[dict]:
    """The graph's assets for one backbone and two algorithms, as the UI's partition picker selects them (the
    zoo's other backbones are left out: some need weights the user supplies, and the test keeps to one)."""
    def ranges(keys):
        return {"ranges": [{"start": k, "end": k} for k in keys]}

    per_asset = {"backbone_models": [backbone], "tile_features": [backbone],
                 "land_use_classifiers": [f"{a}|{backbone}" for a in UI_ALGORITHMS],
                 "classifier_metrics": [f"{a}|{backbone}" for a in UI_ALGORITHMS]}
    return [{"assetKey": {"path": [name]}, **({"partitions": ranges(per_asset[name])} if name in per_asset else {})}
            for name in GRAPH_ASSETS]


@pytest.fixture(scope="module")
def operated(dagster_ui):
    """Materialize the graph, add a county and backfill it, run the re-scoring schedule once: as in the UI."""
    graph = _launch_backfill(dagster_ui, {"partitionsByAssets": _graph_selection("mobilenet_v2"),
                                          "title": "whole graph, one backbone"})
    graph_status = _wait_backfill(dagster_ui, graph)
    added = dagster_ui.gql(
        "mutation($r: RepositorySelector!) { addDynamicPartition(repositorySelector: $r, partitionsDefName: "
        "\"counties\", partitionKey: \"tiny_ui\") { __typename } }",
        {"r": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}},
    )["addDynamicPartition"]["__typename"]
    county = _launch_backfill(dagster_ui, {"assetSelection": _keys(COUNTY_ASSETS), "partitionNames": ["tiny_ui"],
                                           "title": "county backfill"})
    county_status = _wait_backfill(dagster_ui, county)
    return {"graph_status": graph_status, "added": added, "county_status": county_status}


def test_whole_graph_and_county_backfill_succeed_with_expected_materializations(dagster_ui, operated):
    assert operated["graph_status"] in ("COMPLETED", "COMPLETED_SUCCESS"), operated
    assert operated["added"] == "AddDynamicPartitionSuccess"
    assert operated["county_status"] in ("COMPLETED", "COMPLETED_SUCCESS"), operated
    assert _materialized_partitions(dagster_ui, "labeled_tiles") == {""}
    assert "mobilenet_v2" in _materialized_partitions(dagster_ui, "tile_features")
    assert {f"{a}|mobilenet_v2" for a in UI_ALGORITHMS} == \
        _materialized_partitions(dagster_ui, "classifier_metrics")
    for asset in COUNTY_ASSETS:
        assert _materialized_partitions(dagster_ui, asset) == {"tiny_ui"}, asset


def test_rescoring_schedule_runs_once(dagster_ui, operated):
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                "scheduleName": "rescore_counties_schedule"}
    tick = dagster_ui.gql(
        "mutation($s: ScheduleSelector!, $t: Float) { scheduleDryRun(selectorData: $s, timestamp: $t) { "
        "... on DryRunInstigationTick { evaluationResult { skipReason error { message } runRequests { runKey "
        "tags { key value } runConfigYaml } } } } }",
        {"s": selector, "t": time.time()},
    )["scheduleDryRun"]["evaluationResult"]
    assert tick["error"] is None, tick
    requests = tick["runRequests"]
    assert [t["value"] for r in requests for t in r["tags"] if t["key"] == "dagster/partition"] == ["tiny_ui"]
    params = [{
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY,
                     "jobName": "rescore_county_job"},
        "runConfigData": r["runConfigYaml"],
        "executionMetadata": {"tags": r["tags"]},
        "mode": "default",
    } for r in requests]
    launched = dagster_ui.gql(
        "mutation($p: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $p) { "
        "... on LaunchMultipleRunsResult { launchMultipleRunsResult { __typename ... on LaunchRunSuccess { "
        "run { runId } } ... on PythonError { message } } } } }",
        {"p": params},
    )["launchMultipleRuns"]["launchMultipleRunsResult"]
    run_ids = [r["run"]["runId"] for r in launched]
    assert _wait_runs(dagster_ui, run_ids) == ["SUCCESS"]
    latest = dagster_ui.gql(
        "{ assetOrError(assetKey: {path: [\"county_predictions\"]}) { ... on Asset { "
        "assetMaterializations(limit: 1) { runId partition } } } }")
    assert latest["assetOrError"]["assetMaterializations"][0]["runId"] == run_ids[0]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_lineage_and_leaderboard_render_in_a_real_browser(dagster_ui, operated):
    import pandas as pd
    from playwright.sync_api import sync_playwright

    board = pd.read_csv(dagster_ui.data_root / "model_leaderboard" / "leaderboard.csv")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            # The whole graph: everything upstream of the county map, groups expanded.
            page.goto(f"{dagster_ui.url}/assets/county_land_use_map?view=lineage&lineageScope=upstream"
                      "&lineageDepth=10", wait_until="networkidle")
            for name in ("labeled_tiles", "backbone_models", "tile_features", "classifier_metrics",
                         "model_leaderboard", "champion_model", "county_tiles", "county_predictions"):
                page.get_by_text(name, exact=True).first.wait_for(timeout=60_000)
            page.screenshot(path=str(ARTIFACTS / "lineage.png"))
            page.goto(f"{dagster_ui.url}/assets/model_leaderboard", wait_until="networkidle")
            page.get_by_text("logistic_regression").first.wait_for(timeout=60_000)
            text = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
        finally:
            browser.close()
    for row in board.itertuples():
        assert row.algorithm in text and row.backbone in text
        # a Dagster table shows the numbers as stored (rounded to 4 digits), without trailing zeros
        assert f"{round(row.accuracy, 4):g}" in text and f"{round(row.macro_f1, 4):g}" in text
