"""Which vintages ``make run`` computes the change of: those whose baseline is scored; the others are named."""

from aerial_assets.imagery.counties import parse_registry
from aerial_assets.maps.change import change_plan

REGISTRY = """
counties:
  town:
    vintages: {2022: [b.tif], 2018: [a.tif], 2020: [c.tif]}
  plain: {rasters: x.tif}
"""


def test_a_vintage_whose_baseline_is_not_scored_is_skipped_with_its_baseline():
    reg = parse_registry(REGISTRY, "registry.yaml")
    keys = ["plain", "town@2018", "town@2022"]  # --counties left town@2020 (town@2022's baseline) out
    run, skipped = change_plan(reg, keys, lambda base: base in keys)
    assert run == [] and skipped == {"town@2022": "town@2020"}
    run, skipped = change_plan(reg, keys, lambda base: True)  # scored in an earlier run
    assert run == ["town@2022"] and skipped == {}
    every = sorted(reg)
    assert change_plan(reg, every, lambda base: base in every) == (["town@2020", "town@2022"], {})
