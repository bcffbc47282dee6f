"""Map a dataset's class folders onto a target taxonomy (e.g. AID's 30 scenes onto NLCD-style groups).

The original sample mapped NLCD codes to its six land-use classes; users with other datasets need the
same. The map is YAML::

    classes:                # target class -> the source folders it groups
      Developed: [Commercial, DenseResidential, Industrial]
      Forest: [Forest]
    ignore: [Airport]       # source classes deliberately left out

Every source class must be either mapped or ignored: a class that is neither is *unmapped*, and its
tiles stay in the catalog with status ``unmapped`` and a reason (they are reported, never silently
dropped). Ignored tiles get status ``ignored``. Pure Python, no Dagster import.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from aerial_assets.errors import ConfigurationError
from aerial_assets.records import ClassMapping, LabelMapReport
from aerial_assets.safety.redaction import short
from aerial_assets.safety.yaml_files import load_yaml
from aerial_assets.tables import TileStatus


@dataclass(frozen=True)
class LabelMap:
    """Source class -> target class, plus the source classes left out on purpose."""

    mapping: dict[str, str]
    ignored: frozenset[str] = field(default_factory=frozenset)
    source: str = ""


def parse_label_map(text: str, uri: str = "") -> LabelMap:
    """Parse the YAML map; a class mapped twice or both mapped and ignored is an error naming it."""
    where = f" in {uri}" if uri else ""
    doc = load_yaml(text, f"label map{where}") or {}
    if not isinstance(doc, dict) or not isinstance(doc.get("classes"), dict) or not doc["classes"]:
        raise ConfigurationError(f"label map{where} needs a non-empty 'classes:' mapping target -> [source classes]")
    mapping: dict[str, str] = {}
    for target, sources in doc["classes"].items():
        if not isinstance(target, str | int) or isinstance(target, bool):
            raise ConfigurationError(f"label map{where}: target {short(target)} is not a class name")
        if isinstance(sources, str):
            sources = [sources]
        if not isinstance(sources, list) or not sources:
            raise ConfigurationError(f"label map{where}: target {short(target)} needs a list of source classes")
        for src in sources:
            if not isinstance(src, str | int | float) or isinstance(src, bool):
                raise ConfigurationError(f"label map{where}: target {short(target)}: {short(src)} is not a class name")
            src = str(src)
            if src in mapping:
                raise ConfigurationError(
                    f"label map{where}: source class {short(src)} is mapped twice ({short(mapping[src])} and {short(target)})")
            mapping[src] = str(target)
    ignore = doc.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(c, str | int) for c in ignore):
        raise ConfigurationError(f"label map{where}: 'ignore' must be a list of class names, not {short(ignore)}")
    ignored = frozenset(str(c) for c in ignore)
    if both := sorted(ignored & set(mapping)):
        raise ConfigurationError(f"label map{where}: {', '.join(both)} both mapped and ignored")
    return LabelMap(mapping=mapping, ignored=ignored, source=uri)


def apply_label_map(catalog: pd.DataFrame, label_map: LabelMap) -> tuple[pd.DataFrame, LabelMapReport]:
    """Relabel usable tiles; keep the folder name in ``source_label``. Returns (catalog, report).

    The report lists, per source class, its target (or ``unmapped`` / ``ignored``) and tile count, and
    names the classes of the map that no folder had, which usually means a typo.
    """
    out = catalog.copy()
    out["source_label"] = out["label"]
    usable = out["status"] == TileStatus.OK
    target = out["label"].map(label_map.mapping)
    ignored = usable & out["label"].isin(label_map.ignored)
    unmapped = usable & target.isna() & ~ignored
    out.loc[usable & target.notna(), "label"] = target[usable & target.notna()]
    out.loc[ignored, "status"] = TileStatus.IGNORED.value
    out.loc[ignored, "reason"] = f"class ignored by the label map {label_map.source}".strip()
    out.loc[unmapped, "status"] = TileStatus.UNMAPPED.value
    out.loc[unmapped, "reason"] = out.loc[unmapped, "label"].map(
        lambda c: f"class {c!r} is not in the label map {label_map.source}: map it or list it under ignore:")
    present = set(catalog.loc[catalog["status"] == TileStatus.OK, "label"])
    counts = catalog.loc[catalog["status"] == TileStatus.OK, "label"].value_counts().to_dict()
    fallback = {src: TileStatus.IGNORED if src in label_map.ignored else TileStatus.UNMAPPED for src in present}
    classes = {src: ClassMapping(target=label_map.mapping.get(src, fallback[src]), tiles=int(counts.get(src, 0)))
               for src in sorted(present)}
    report = LabelMapReport(
        label_map=label_map.source or None, classes=classes,
        unmapped=sorted(c for c, v in classes.items() if v.target == TileStatus.UNMAPPED),
        ignored=sorted(c for c, v in classes.items() if v.target == TileStatus.IGNORED),
        not_found=sorted((set(label_map.mapping) | set(label_map.ignored)) - present),
        n_unmapped_tiles=int(unmapped.sum()), n_ignored_tiles=int(ignored.sum()),
    )
    return out, report
