"""The county's trust report: ground sample distances from raster headers, upsampling on read, and the one-line
warning with the causes it can measure (and the unknowns, said so)."""

import pytest

from aerial_assets.maps.trust import imagery_trust, likely_causes, raster_gsd_m, stac_properties, trust_warning
from aerial_assets.records import CountyTilesSummary, ImageryTrust, OodRecord

UTM = {"crs": "EPSG:32614", "transform": [5.0, 0.0, 500000.0, 0.0, -5.0, 5200000.0], "height": 1000}
FEET = {"crs": "EPSG:2276", "transform": [2.0, 0.0, 2e6, 0.0, -2.0, 7e6], "height": 100}  # NAD83 Texas North Central, US ft
DEGREES = {"crs": "EPSG:4326", "transform": [1e-5, 0.0, -100.0, 0.0, -1e-5, 60.0005], "height": 100}


def test_raster_gsd_is_in_metres_whatever_the_crs_unit():
    assert raster_gsd_m(UTM) == pytest.approx(5.0)
    assert raster_gsd_m(FEET) == pytest.approx(2 * 0.3048006, rel=1e-5)
    # 1e-5 degree of longitude at latitude 60: half of 1.11 m
    assert raster_gsd_m(DEGREES) == pytest.approx(1e-5 * 111_320 * 0.5, rel=1e-3)
    assert raster_gsd_m({"folder": "tiles/"}) is None


def _tiles(*sources):
    return CountyTilesSummary(county="c", name="c", crs="EPSG:32614", tile_size_m=224.0, sources=list(sources),
                              counts={"ok": 10})


def _ood(gsd=0.6, source="declared (AERIAL_TRAINING_GSD_M)"):
    return OodRecord(threshold=3.0, quantile=0.99, heldout="validation", n_heldout=30, n_fit=200, shrinkage=0.1,
                     rank=16, training_gsd_m=gsd, training_gsd_source=source)


def test_tiles_of_5_m_imagery_are_upsampled_5x_and_the_resolution_gap_is_named():
    trust = imagery_trust([(0, 45, 80), (1, 224, 20)], _tiles(UTM, {**UTM, "transform": [1.0, 0, 0, 0, -1.0, 0]}),
                          224, n_out=70, threshold=3.0, ood=_ood())
    assert (trust.n_upsampled, trust.n_size_known, trust.county_gsd_m) == (80, 100, 5.0)
    warning = trust_warning("area@2020", trust, 100, 0.10)
    assert warning.startswith("area@2020: 70.0 % of tiles are out of distribution (limit 10 %)")
    assert "5 m per pixel, the training tiles 0.6 m (declared (AERIAL_TRAINING_GSD_M)): 8.3x (a likely cause)" in warning
    assert "80 % of tiles are upsampled more than 2x to the network's 224 px input" in warning
    assert trust_warning("area@2020", trust, 100, 0.75) is None
    assert stac_properties(trust, 100) == {"aerial:ood_share": 0.7, "aerial:ood_threshold": 3.0, "aerial:gsd_m": 5.0,
                                           "aerial:training_gsd_m": 0.6, "aerial:upsampled_share": 0.8}


def test_unknowns_are_said_so():
    files = imagery_trust([(-1, 0, 50)], _tiles({"folder": "f", "summary": "s.csv"}), 224, 40, 3.0,
                          _ood(None, "unknown"))
    causes = likely_causes(files)
    assert causes[0].startswith("the training tiles' ground sample distance is unknown (set AERIAL_TRAINING_GSD_M")
    assert causes[1].startswith("how much tiles are upsampled is unknown")
    no_model = ImageryTrust()
    assert no_model.ood_share(100) is None and trust_warning("c", no_model, 100, 0.1) is None
    assert "aerial:ood_share" not in stac_properties(no_model, 100)
