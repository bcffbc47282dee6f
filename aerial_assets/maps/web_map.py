"""Interactive HTML maps of a county's tiles (folium / Leaflet): pan, zoom, click a tile. No Dagster import.

Every tile is drawn as its longitude/latitude rectangle on one canvas layer, coloured by class, over an
OpenStreetMap base layer, with a legend; clicking a tile opens a popup (label, class probabilities, model id).
The tiles travel to the page as compact column arrays, not one GeoJSON feature per tile (about 80 bytes a tile
with six classes: 5.2 MB for 65,563 tiles), built from a stream of frames so the driver never holds a table of
every tile; the page itself grows with the tiles, so callers cap it (``max_tiles``) and say so. Hand-written
script on top of folium because folium's own GeoJson layer would repeat every property name per tile.

Class names come from users' folder names: the page sets them as text (``textContent``), never as HTML.
The page is self-contained: Leaflet's script and stylesheet are inlined from the ``xstatic-leaflet`` package (its
images as data URIs), so the map opens offline and from any folder; only the OpenStreetMap base layer needs the
network, and without it the tiles are drawn on a plain background. folium's jQuery, Bootstrap and Font Awesome
defaults are dropped: nothing here uses them.
"""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pandas as pd

LEAFLET_VERSION = "1.9.3"  # folium 0.20's own pin, and xstatic-leaflet's (pyproject.toml)
DEFAULT_MAX_TILES = 250_000


@cache
def leaflet_assets() -> tuple[str, str]:
    """(leaflet.js, leaflet.css) from the installed ``xstatic-leaflet``, the stylesheet's images as data URIs.
    Read once per process; a missing or other version of the package is an error that says how to install it."""
    try:
        from xstatic.pkg import leaflet
    except ImportError:
        raise RuntimeError("the interactive map needs the package xstatic-leaflet (make install installs it)") from None
    if leaflet.VERSION != LEAFLET_VERSION:
        raise RuntimeError(f"xstatic-leaflet {leaflet.VERSION} is installed; the maps are built for Leaflet "
                           f"{LEAFLET_VERSION} (make install pins it)")
    data = Path(leaflet.BASE_DIR)
    script = (data / "leaflet.js").read_text(encoding="utf-8")
    style = (data / "leaflet.css").read_text(encoding="utf-8")

    def inline(match: re.Match) -> str:
        image = data / match.group(1)
        if not image.is_file():
            return match.group(0)
        return f"url(data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()})"

    style = re.sub(r"url\((images/[\w.-]+\.png)\)", inline, style)
    # inlined: a closing tag inside either would end the element early
    return script.replace("</script", "<\\/script"), style.replace("</style", "<\\/style")


@dataclass(frozen=True)
class MapLayer:
    """What the page shows: ``labels[i]`` in ``colours[i]``; a tile's value indexes them (``fill`` = drawn grey)."""

    title: str
    labels: Sequence[str]
    colours: Sequence[str]
    popup_fields: Sequence[str]  # column names shown in the popup, after the label
    model_id: str = ""
    fill_label: str = ""  # label of value -1 (e.g. "unchanged"), drawn light grey
    trust: Sequence[str] = ()  # labels of trust values 1, 2, ... (low confidence, out of distribution); () = none


class TileArrays:
    """Accumulates tiles frame by frame into the page's column arrays (rounded: 1e-6 deg is ~0.1 m)."""

    def __init__(self, fields: Sequence[str], trust: bool = False):
        self.fields = list(fields)
        self.bounds: list[float] = []
        self.values: list[int] = []
        self.trust: list[int] | None = [] if trust else None
        self.extra: list[list] = [[] for _ in self.fields]

    def add(self, frame: pd.DataFrame) -> None:
        """``frame``: min_lon, min_lat, max_lon, max_lat, value (int, -1 for the fill label), the popup fields,
        and ``trust`` (0 trusted, 1 low confidence, 2 out of distribution) when the layer marks it."""
        corners = frame[["min_lon", "min_lat", "max_lon", "max_lat"]].to_numpy(float).round(6)
        self.bounds.extend(corners.ravel().tolist())
        self.values.extend(int(v) for v in frame["value"])
        if self.trust is not None:
            self.trust.extend(int(v) for v in frame["trust"].fillna(0))
        for i, name in enumerate(self.fields):
            column = frame[name]
            values = column.round(3) if column.dtype.kind == "f" else column.astype(str)
            self.extra[i].extend(None if pd.isna(v) else v for v in values.tolist())

    def __len__(self) -> int:
        return len(self.values)

    def to_json(self) -> str:
        payload = {"b": self.bounds, "v": self.values, "f": self.fields, "x": self.extra}
        if self.trust is not None:
            payload["t"] = self.trust
        # "</" would end the inline <script>; JSON allows the escaped form
        return json.dumps(payload, separators=(",", ":"), allow_nan=False).replace("</", "<\\/")


_SCRIPT = """
(function () {
  var map = {{ this._parent.get_name() }};
  var data = {{ this.data }};
  var layer = {{ this.layer }};
  var renderer = L.canvas({padding: 0.5});
  var TRUST = [{line: "#ffffff", dash: "2 2", opacity: 0.35}, {line: "#000000", dash: "4 3", opacity: 0.2}];
  var group = L.featureGroup();
  function text(tag, content, style) {
    var el = document.createElement(tag);
    el.textContent = content;
    if (style) { el.style.cssText = style; }
    return el;
  }
  function popup(i) {
    var box = document.createElement("div");
    var v = data.v[i];
    box.appendChild(text("b", v < 0 ? layer.fill_label : layer.labels[v]));
    var t = data.t ? data.t[i] : 0;
    if (t > 0) {
      box.appendChild(document.createElement("br"));
      box.appendChild(text("span", layer.trust[t - 1], "color:#b00"));
    }
    for (var k = 0; k < data.f.length; k++) {
      var value = data.x[k][i];
      if (value === null) { continue; }
      box.appendChild(document.createElement("br"));
      box.appendChild(text("span", data.f[k] + ": " + value));
    }
    if (layer.model_id) {
      box.appendChild(document.createElement("br"));
      box.appendChild(text("span", "model: " + layer.model_id, "color:#555"));
    }
    return box;
  }
  for (var i = 0; i < data.v.length; i++) {
    var b = data.b.slice(4 * i, 4 * i + 4);
    var v = data.v[i];
    var colour = v < 0 ? "#d9d9d9" : layer.colours[v];
    var t = data.t ? data.t[i] : 0;
    var style = {renderer: renderer, stroke: false, fillColor: colour, fillOpacity: 0.75};
    if (t > 0) {  // untrusted: faded fill and an outline, dashed for out of distribution
      style = {renderer: renderer, stroke: true, weight: 1, color: TRUST[t - 1].line, dashArray: TRUST[t - 1].dash,
               fillColor: colour, fillOpacity: TRUST[t - 1].opacity};
    }
    var rect = L.rectangle([[b[1], b[0]], [b[3], b[2]]], style);
    rect.bindPopup((function (j) { return function () { return popup(j); }; })(i));
    group.addLayer(rect);
  }
  group.addTo(map);
  if (data.v.length) { map.fitBounds(group.getBounds()); }
  var legend = L.control({position: "topright"});
  legend.onAdd = function () {
    var box = L.DomUtil.create("div", "aerial-legend");
    box.style.cssText = "background:white;padding:6px 8px;font:12px sans-serif;line-height:18px;border-radius:4px";
    box.appendChild(text("b", layer.title));
    var entries = layer.labels.map(function (l, k) { return [l, layer.colours[k]]; });
    if (layer.fill_label) { entries.unshift([layer.fill_label, "#d9d9d9"]); }
    entries.forEach(function (entry) {
      var row = document.createElement("div");
      row.className = "aerial-legend-class";
      row.appendChild(text("span", "\\u00a0\\u00a0\\u00a0\\u00a0", "background:" + entry[1] + ";margin-right:6px"));
      row.appendChild(text("span", entry[0]));
      box.appendChild(row);
    });
    (layer.trust || []).forEach(function (label, k) {
      if (!label) { return; }
      var row = document.createElement("div");
      row.className = "aerial-legend-trust";
      row.appendChild(text("span", "\u00a0\u00a0\u00a0\u00a0", "background:rgba(150,150,150," + TRUST[k].opacity
                           + ");outline:1px dashed " + (k ? "#000" : "#999") + ";margin-right:6px"));
      row.appendChild(text("span", label));
      box.appendChild(row);
    });
    return box;
  };
  legend.addTo(map);
  window.aerialTiles = group;
})();
"""


def tiles_html(frames: Iterable[pd.DataFrame], layer: MapLayer, max_tiles: int = DEFAULT_MAX_TILES) -> tuple[str, int]:
    """The standalone HTML page and the number of tiles drawn. Raises ``ValueError`` past ``max_tiles``."""
    import folium
    from branca.element import MacroElement
    from jinja2 import Template

    arrays = TileArrays(layer.popup_fields, trust=bool(layer.trust))
    for frame in frames:
        arrays.add(frame)
        if len(arrays) > max_tiles:
            raise ValueError(f"more than {max_tiles} tiles")

    class LeafletOnlyMap(folium.Map):  # Leaflet is inlined below, from the installed package
        default_js: list = []
        default_css: list = []

    fmap = LeafletOnlyMap(location=[0, 0], zoom_start=2, tiles="OpenStreetMap", control_scale=True,
                          prefer_canvas=True)
    settings = {"labels": list(layer.labels), "colours": list(layer.colours), "title": layer.title,
                "model_id": layer.model_id, "fill_label": layer.fill_label, "trust": list(layer.trust)}

    class Tiles(MacroElement):
        """The tiles, legend and popups: a script rendered after the map it draws on (its parent)."""

        _template = Template("{% macro script(this, kwargs) %}" + _SCRIPT + "{% endmacro %}")

        def __init__(self) -> None:
            super().__init__()
            self._name = "AerialTiles"
            self.data = arrays.to_json()
            self.layer = json.dumps(settings).replace("</", "<\\/")

    Tiles().add_to(fmap)
    page = fmap.get_root().render()
    script, style = leaflet_assets()
    head = f"<head>\n<title>{html.escape(layer.title)}</title>\n<style>{style}</style>\n<script>{script}</script>"
    return page.replace("<head>", head, 1), len(arrays)
