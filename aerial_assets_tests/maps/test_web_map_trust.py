"""The interactive map marks untrusted tiles distinctly, with a legend: opened in real headless Chromium, offline."""

import shutil

import pandas as pd
import pytest

from aerial_assets.maps.web_map import MapLayer, tiles_html

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_out_of_distribution_and_low_confidence_tiles_are_drawn_apart_with_legend_and_popup(tmp_path):
    from playwright.sync_api import sync_playwright

    frame = pd.DataFrame({"min_lon": [10.0, 10.01, 10.02], "min_lat": [50.0] * 3, "max_lon": [10.01, 10.02, 10.03],
                          "max_lat": [50.01] * 3, "value": [0, 1, 0], "prob_a": [0.9, 0.4, 0.7],
                          "prob_b": [0.1, 0.6, 0.3], "trust": [0, 1, 2]})
    layer = MapLayer("Predicted land use: t", ["a", "b"], ["#1a9641", "#d7191c"], ("prob_a", "prob_b"), "m1",
                     trust=("low confidence (< 0.5)", "out of distribution: not to be trusted"))
    html, drawn = tiles_html([frame], layer)
    page_file = tmp_path / "map.html"
    page_file.write_text(html)
    errors = []
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            page = browser.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.route("**/*", lambda r, req: r.continue_() if req.url == page_file.as_uri() else r.abort())
            page.goto(page_file.as_uri(), wait_until="load")
            page.wait_for_function("window.aerialTiles !== undefined", timeout=30_000)
            rows = page.eval_on_selector_all(".aerial-legend-trust", "els => els.map(e => e.textContent)")
            styles = page.evaluate("window.aerialTiles.getLayers().map(l => [l.options.stroke, l.options.dashArray, "
                                   "l.options.fillOpacity, l.options.color])")
            page.evaluate("window.aerialTiles.getLayers()[2].openPopup()")
            popup = page.inner_text(".leaflet-popup-content")
        finally:
            browser.close()
    assert not errors, errors
    assert drawn == 3
    assert rows == ["\u00a0" * 4 + "low confidence (< 0.5)", "\u00a0" * 4 + "out of distribution: not to be trusted"]
    trusted, low, ood = styles
    assert trusted[0] is False and trusted[2] == 0.75
    assert low[0] is True and low[1] == "2 2" and low[2] < trusted[2]
    assert ood[0] is True and ood[1] == "4 3" and ood[2] < low[2] and ood[3] == "#000000"
    assert "out of distribution: not to be trusted" in popup
