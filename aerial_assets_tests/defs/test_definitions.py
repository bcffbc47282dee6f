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


def test_local_driver_jvm_gives_back_heap_and_leaves_extra_options_to_the_user():
    from aerial_assets.spark.session import LOCAL_DRIVER_JAVA_OPTIONS, classic_conf

    local = classic_conf("local[2]", "4g", "")
    assert local["spark.driver.defaultJavaOptions"] == LOCAL_DRIVER_JAVA_OPTIONS
    assert "-XX:MaxHeapFreeRatio=30" in LOCAL_DRIVER_JAVA_OPTIONS
    assert "spark.driver.extraJavaOptions" not in local  # the user's own options are appended after ours and win
    assert "spark.driver.defaultJavaOptions" not in classic_conf("spark://127.0.0.1:7077", "4g", "")
