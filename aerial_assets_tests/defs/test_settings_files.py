"""The files and settings ``make run`` reads before any step: the registry sensor parses the registry only when it
changed; a fresh DAGSTER_HOME gets the project's dagster.yaml; a location setting that carries a credential is
refused without echoing it; the interactive map is one self-contained file."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, instance_for_test

from aerial_assets.defs.automation import county_registry_sensor
from aerial_assets.defs.definitions import build_resources
from aerial_assets.defs.resources import CountyRegistryResource, StorageResource
from aerial_assets.defs.run import prepare_home
from aerial_assets.errors import ConfigurationError
from aerial_assets.maps.web_map import MapLayer, tiles_html


def _evaluate(instance: DagsterInstance, registry: Path, root: Path, cursor: str | None) -> SensorResult:
    context = build_sensor_context(instance=instance, cursor=cursor, resources={
        "storage": StorageResource(data_root=str(root)), "counties": CountyRegistryResource(uri=str(registry))})
    return county_registry_sensor(context)


def test_the_registry_sensor_parses_the_registry_only_when_it_changed(tmp_path):
    registry = tmp_path / "counties.yaml"
    registry.write_text("counties:\n  a: {rasters: [a.tif]}\n")
    with instance_for_test() as instance:
        first = _evaluate(instance, registry, tmp_path, None)
        assert [r.partition_key for r in first.run_requests] == ["a"] and first.cursor
        unchanged = _evaluate(instance, registry, tmp_path, first.cursor)
        assert not unchanged.run_requests and "unchanged" in unchanged.skip_reason.skip_message
        registry.write_text("counties:\n  a: {rasters: [a.tif]}\n  b: {rasters: [b.tif]}\n")
        changed = _evaluate(instance, registry, tmp_path, first.cursor)
        assert changed.cursor != first.cursor
        assert {r.partition_key for r in changed.run_requests} == {"a", "b"}  # a was never added to this instance


def test_a_fresh_dagster_home_gets_the_projects_instance_settings(tmp_path):
    home = tmp_path / "fresh_home"
    prepare_home({"DAGSTER_HOME": str(home)})
    text = (home / "dagster.yaml").read_text()
    assert "AerialRunLauncher" in text and "run_monitoring" in text and "max_concurrent_runs: 1" in text


@pytest.mark.parametrize("name", ["AERIAL_DATA_ROOT", "AERIAL_TRAINING_TILES", "AERIAL_COUNTIES", "AERIAL_LABEL_MAP"])
def test_a_location_setting_with_a_credential_is_refused_without_echoing_it(name):
    secret = "c2VjcmV0c2lnbmF0dXJl"
    with pytest.raises(ConfigurationError) as info:
        build_resources({name: f"az://cont/run?sv=2024-01-01&sig={secret}"})
    assert secret not in str(info.value) and f"{name}=az://cont/run?<redacted> carries a credential" in str(info.value)
    with pytest.raises(ConfigurationError, match="carries a credential") as info:
        build_resources({name: f"https://user:{secret}@host/x"})
    assert secret not in str(info.value)


def test_the_interactive_map_is_one_file_that_loads_nothing_but_base_map_tiles():
    frame = pd.DataFrame({"min_lon": [0.0], "min_lat": [0.0], "max_lon": [0.1], "max_lat": [0.1], "value": [0],
                          "p": [0.5]})
    page, drawn = tiles_html([frame], MapLayer("t", ["</script><b>A"], ["#ff0000"], ["p"]))
    assert drawn == 1
    assert not re.findall(r"<script[^>]+src=|<link[^>]+href=", page)  # no external script or stylesheet
    assert "L.version" in page or "Leaflet" in page  # Leaflet itself is inline
    assert page.count("</script>") == page.count("<script")  # nothing inlined closes a script early
    assert "url(images/" not in page  # Leaflet's images are data URIs
