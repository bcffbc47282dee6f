import time

import pytest
from dagster import AssetKey

from aerial_assets.defs.definitions import build_defs
from aerial_assets.defs.run import parse_list
from aerial_assets.errors import ConfigurationError
from aerial_assets.training.classifiers import check_algorithm

ASSETS = ["labeled_tiles", "backbone_models", "tile_features", "land_use_classifiers", "classifier_metrics",
          "model_leaderboard", "champion_model", "county_tiles", "county_predictions", "county_land_use_map"]


def test_definitions_load_with_every_public_asset_and_group():
    defs = build_defs({})
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert set(ASSETS) <= keys
    groups = {graph.get(AssetKey(a)).group_name for a in ASSETS}
    assert groups == {"tiles", "backbones", "features", "training", "scoring", "maps"}
    for name in ASSETS:
        assert graph.get(AssetKey(name)).description, f"{name} has no description"


def test_schedule_is_stopped_by_default_and_sensor_exists():
    defs = build_defs({})
    schedule = defs.resolve_schedule_def("rescore_counties_schedule")
    assert schedule.default_status.value == "STOPPED"
    assert defs.resolve_sensor_def("county_registry_sensor") is not None


def test_environment_selects_resources_without_import_time_reads(tmp_path):
    defs = build_defs({"AERIAL_DATA_ROOT": str(tmp_path), "SPARK_REMOTE": "sc://host:15002"})
    assert defs.resources["storage"].data_root == str(tmp_path)
    assert defs.resources["spark"].remote == "sc://host:15002"


def test_unknown_names_list_valid_ones():
    with pytest.raises(ConfigurationError, match="valid algorithms: logistic_regression, random_forest"):
        parse_list("logistic_regression,svm", check_algorithm)
    with pytest.raises(ConfigurationError, match="valid algorithms"):
        check_algorithm("xgboost")


def test_spark_resource_is_dagster_pyspark_lazy_resource_with_the_project_settings():
    """dagster-pyspark's LazyPySparkResource underneath; the token never sits in the resource's own config."""
    from dagster_pyspark import LazyPySparkResource

    from aerial_assets.defs.resources import SparkResource

    local = SparkResource(master="local[3]", conf={"spark.sql.shuffle.partitions": "7"},
                          spark_config={"spark.executor.memory": "1g"})
    assert isinstance(local, LazyPySparkResource) and local._spark_session is None  # lazy: nothing opened yet
    config = local.session_config()
    assert config["spark.master"] == "local[3]" and config["spark.driver.bindAddress"] == "127.0.0.1"
    assert config["spark.sql.shuffle.partitions"] == "7" and config["spark.executor.memory"] == "1g"
    remote = SparkResource(remote="sc://127.0.0.1:15002", remote_token="s3cret")
    assert remote.session_config()["spark.remote"] == "sc://127.0.0.1:15002/;token=s3cret"
    assert "spark.master" not in remote.session_config() and "s3cret" not in str(remote.spark_config)
    built = build_defs({"AERIAL_SPARK_TOKEN": "s3cret", "SPARK_REMOTE": "sc://h:15002"}).resources["spark"]
    assert isinstance(built, LazyPySparkResource) and built.remote_token.env_var_name == "AERIAL_SPARK_TOKEN"


@pytest.mark.parametrize("env", [
    {},
    {"AERIAL_SPARK_MASTER": "local[3]", "AERIAL_SPARK_DRIVER_MEMORY": "6g", "AERIAL_SPARK_JARS": "/opt/a.jar"},
    {"AERIAL_SPARK_MASTER": "spark://127.0.0.1:7077"},
])
def test_make_runs_early_start_opens_the_session_the_resource_would(env):
    """An early start with other settings would open a JVM whose static settings (memory, jars, binding) the
    resource could no longer change: the two must compute the same configuration from the same environment."""
    from aerial_assets.spark.session import SparkSettings, session_conf

    resource = build_defs(env).resources["spark"]
    assert session_conf(SparkSettings.from_env(env)) == resource.session_config()


def test_no_early_start_over_spark_connect_or_for_help():
    from aerial_assets.spark.session import start_early

    assert start_early({"SPARK_REMOTE": "sc://127.0.0.1:1"}) is None
    assert start_early({}, ["--help"]) is None


def test_the_early_start_plans_the_first_query_without_running_a_job(spark):
    from aerial_assets.spark.session import plan_first_query

    tables = spark.catalog.listTables()
    context = spark.sparkContext
    context.setJobGroup("plan-first-query", "planning only")
    try:
        plan = plan_first_query(spark)
        context.setJobGroup("marker", "a job after it")
        spark.range(1).count()
    finally:
        context.setLocalProperty("spark.jobGroup.id", None)
    assert "MapInPandas" in plan and "Exchange RoundRobinPartitioning(2)" in plan, plan
    # Spark's listener bus delivers jobs in order: once the marker job is seen, a job of the planning would be too
    tracker = context.statusTracker()
    deadline = time.monotonic() + 30
    while not tracker.getJobIdsForGroup("marker") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tracker.getJobIdsForGroup("marker")
    assert tracker.getJobIdsForGroup("plan-first-query") == []  # planned, never run: no executor slot taken
    assert spark.catalog.listTables() == tables  # its temporary view is gone


def test_local_driver_jvm_gives_back_heap_and_leaves_extra_options_to_the_user():
    from aerial_assets.spark.class_archive import driver_java_options
    from aerial_assets.spark.session import LOCAL_DRIVER_JAVA_OPTIONS, QUIET_LOG_CONFIG, classic_conf

    archive = driver_java_options()  # the class archive's flags, when make install built one (test_class_archive.py)
    local = classic_conf("local[2]", "4g", "")
    quiet_log = f"-Dlog4j2.configurationFile=file:{QUIET_LOG_CONFIG}"  # test_quiet_logs.py: what it leaves out
    assert local["spark.driver.defaultJavaOptions"] == " ".join(filter(None, [LOCAL_DRIVER_JAVA_OPTIONS, archive,
                                                                              quiet_log]))
    verbose = classic_conf("local[2]", "4g", "", verbose=True)  # AERIAL_VERBOSE: Spark's own log settings
    assert verbose["spark.driver.defaultJavaOptions"] == f"{LOCAL_DRIVER_JAVA_OPTIONS} {archive}".strip()
    assert "-XX:MaxHeapFreeRatio=30" in LOCAL_DRIVER_JAVA_OPTIONS
    assert "-XX:Tier4InvocationThreshold=20000" in LOCAL_DRIVER_JAVA_OPTIONS  # C2 waits for hot code (session.py)
    assert "spark.driver.extraJavaOptions" not in local  # the user's own options are appended after ours and win
    # a cluster's administrators own spark.driver.defaultJavaOptions (spark-defaults.conf): never replaced there
    assert "spark.driver.defaultJavaOptions" not in classic_conf("spark://127.0.0.1:7077", "4g", "")


def test_cluster_executors_get_the_jit_thresholds_unless_the_cluster_sets_their_default_options(tmp_path):
    from aerial_assets.spark.session import EXECUTOR_JAVA_OPTIONS, classic_conf, spark_defaults

    assert "-XX:Tier4InvocationThreshold=20000" in EXECUTOR_JAVA_OPTIONS
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "spark-defaults.conf").write_text("# a comment\nspark.executor.extraJavaOptions -Dlog4j.debug=false\n")
    admin = tmp_path / "admin"
    admin.mkdir()
    (admin / "spark-defaults.conf").write_text("! an old-style comment\nspark.eventLog.enabled=true\n"
                                               "spark.executor.defaultJavaOptions : -XX:+UseParallelGC -Xss4m\n")
    assert spark_defaults({"SPARK_CONF_DIR": str(admin)}) == {
        "spark.eventLog.enabled": "true", "spark.executor.defaultJavaOptions": "-XX:+UseParallelGC -Xss4m"}
    assert spark_defaults({"SPARK_CONF_DIR": str(tmp_path / "absent")}) == {}
    for master in ("spark://127.0.0.1:7077", "yarn"):
        conf = classic_conf(master, "4g", "", {"SPARK_CONF_DIR": str(plain)})
        assert conf["spark.executor.defaultJavaOptions"] == EXECUTOR_JAVA_OPTIONS
        assert "spark.executor.extraJavaOptions" not in conf  # the user's own come after ours and win
        assert "spark.executor.defaultJavaOptions" not in classic_conf(master, "4g", "", {"SPARK_CONF_DIR": str(admin)})
    # local masters run their executors inside the driver JVM, which has the thresholds already
    assert "spark.executor.defaultJavaOptions" not in classic_conf("local[2]", "4g", "", {"SPARK_CONF_DIR": str(plain)})


# Every read of another asset's output, as the asset bodies do it (see each asset's code), with the partitions it
# reads: "same" the same partition, "backbone" the classifier's backbone, "all" any partition, "-" unpartitioned.
DECLARED_READS = {
    "raster_labeled_tiles": {},
    "labeled_tiles": {"raster_labeled_tiles": "-"},
    "backbone_models": {"labeled_tiles": "-"},
    "tile_features": {"labeled_tiles": "-", "backbone_models": "same"},
    "land_use_classifiers": {"labeled_tiles": "-", "tile_features": "backbone"},
    "classifier_metrics": {"labeled_tiles": "-", "land_use_classifiers": "same", "tile_features": "backbone"},
    "model_leaderboard": {"labeled_tiles": "-", "classifier_metrics": "all", "land_use_classifiers": "all",
                          "tile_features": "all"},
    "champion_model": {"labeled_tiles": "-", "model_leaderboard": "-", "classifier_metrics": "all",
                       "land_use_classifiers": "all", "tile_features": "all", "backbone_models": "all"},
    "county_tiles": {},
    "county_predictions": {"county_tiles": "same", "champion_model": "-", "model_leaderboard": "-",
                           "land_use_classifiers": "all", "backbone_models": "all"},
    "county_land_use_map": {"county_predictions": "same"},
    "county_land_use_change": {"county_predictions": "same"},
    "county_map_agreement": {"county_land_use_map": "same", "county_predictions": "same"},
}


def test_every_read_of_another_asset_is_declared_with_its_partition_mapping():
    """Lineage, staleness and "materialize upstream" in the UI are only as true as these declarations."""
    from dagster import AllPartitionMapping, IdentityPartitionMapping, MultiToSingleDimensionPartitionMapping

    graph = build_defs({}).resolve_asset_graph()
    kinds = {AllPartitionMapping: "all", IdentityPartitionMapping: "same",
             MultiToSingleDimensionPartitionMapping: "backbone"}
    declared = {}
    for name in DECLARED_READS:
        node = graph.get(AssetKey(name))
        reads = {}
        for parent in node.parent_keys:
            if graph.get(parent).partitions_def is None:
                reads[parent.to_user_string()] = "-"
            else:
                reads[parent.to_user_string()] = kinds[type(graph.get_partition_mapping(node.key, parent))]
        declared[name] = reads
    assert declared == DECLARED_READS
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == set(DECLARED_READS)


def test_the_baseline_vintage_read_has_a_check_because_no_partition_mapping_can_name_it():
    """``county_land_use_change[area@year]`` also reads an earlier vintage's predictions, chosen by config among
    dynamic partitions: no built-in partition mapping names it, and Dagster deprecates custom ones (they do not
    reach the UI). The check that compares the recorded scoring runs with the stored ones stands in for it."""
    graph = build_defs({}).resolve_asset_graph()
    checks = {k.name for k in graph.asset_check_keys if k.asset_key == AssetKey("county_land_use_change")}
    assert "county_land_use_change_inputs_current" in checks
