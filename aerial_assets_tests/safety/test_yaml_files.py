"""One YAML loader with limits for every file a user hands over: an alias bomb, a deep nesting or an oversized file
is refused at once in one short line, by every reader (label map, legends, raster spec, registry)."""

import time

import pytest

from aerial_assets.errors import ConfigurationError, CountyError
from aerial_assets.imagery.counties import REGISTRY_MAX_BYTES, parse_registry
from aerial_assets.imagery.label_map import parse_label_map
from aerial_assets.imagery.raster_labels import load_legend, parse_spec
from aerial_assets.maps.agreement import parse_legend
from aerial_assets.safety.yaml_files import YamlLimits, load_yaml


def alias_bomb(levels: int = 8, width: int = 9, top: str = "classes") -> str:
    """The issue's 360-byte file: ``levels`` anchors, each a list of ``width`` aliases of the one before."""
    lines = ["a0: &a0 [" + ", ".join(["x"] * width) + "]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines.append(f"{top}: {{Forest: *a{levels}}}")
    return "\n".join(lines) + "\n"


READERS = [
    ("label map", lambda text: parse_label_map(text, "map.yaml"), ConfigurationError),
    ("training legend", lambda text: load_legend(text, "legend.yaml"), ConfigurationError),
    ("raster spec", lambda text: parse_spec(text, "spec.yaml"), ConfigurationError),
    ("reference legend", lambda text: parse_legend(text, "legend.yaml"), CountyError),
    ("registry", lambda text: parse_registry(text, "reg.yaml"), CountyError),
]


@pytest.mark.parametrize("name,read,error", READERS, ids=[r[0] for r in READERS])
@pytest.mark.parametrize("levels", [8, 9])
def test_an_alias_bomb_is_refused_at_once_in_one_short_line(name, read, error, levels):
    text = alias_bomb(levels, top="counties" if name == "registry" else "classes")
    assert len(text) < 600
    started = time.monotonic()
    with pytest.raises(error, match="expands to more than .* values \\(nested aliases\\?\\): not read") as info:
        read(text)
    assert time.monotonic() - started < 2.0
    assert len(str(info.value)) < 400


def test_deep_nesting_and_oversized_files_are_refused():
    with pytest.raises(ConfigurationError, match="nests deeper than 64 levels"):
        parse_label_map("classes: {A: " + "[" * 100 + "]" * 100 + "}", "map.yaml")
    with pytest.raises(ConfigurationError, match="over the limit of 1,000,000"):
        parse_label_map("classes: {A: [b]}\n#" + "x" * 1_000_001, "map.yaml")
    big = "counties:\n" + "".join(f"  c{i}: {{rasters: [/data/naip/{'x' * 80}_{i}.tif]}}\n" for i in range(90_000))
    assert len(big) > REGISTRY_MAX_BYTES
    started = time.monotonic()
    with pytest.raises(CountyError, match=f"over the limit of {REGISTRY_MAX_BYTES:,}"):
        parse_registry(big, "reg.yaml")
    assert time.monotonic() - started < 1.0  # refused before parsing


def test_ordinary_files_load_and_duplicates_are_refused_where_asked():
    assert load_yaml("a: [1, 2]\nb: &x {c: d}\ne: *x\n", "f") == {"a": [1, 2], "b": {"c": "d"}, "e": {"c": "d"}}
    assert load_yaml("", "f") is None
    assert load_yaml("a: 1\na: 2\n", "f") == {"a": 2}  # yaml's own rule, where duplicates do no harm
    with pytest.raises(ConfigurationError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", "f", unique_keys=True)
    with pytest.raises(ConfigurationError, match="not valid YAML"):
        load_yaml("a: [", "f")
    with pytest.raises(ConfigurationError, match="expands to more than 10 values"):
        load_yaml("a: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]", "f", limits=YamlLimits(max_nodes=10))


def test_label_map_errors_never_print_user_structures_whole():
    with pytest.raises(ConfigurationError) as info:
        parse_label_map("classes: {A: [{nested: " + "[1, 2, 3], " * 2000 + "}]}", "map.yaml")
    assert len(str(info.value)) < 300
    with pytest.raises(ConfigurationError, match="'ignore' must be a list of class names"):
        parse_label_map("classes: {A: [b]}\nignore: {x: 1}", "map.yaml")
