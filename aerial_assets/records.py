"""The contracts between assets: every side file, as typed records. No Dagster import.

Tile statuses and the Spark tables' columns are in :mod:`aerial_assets.tables` (the executors import those).

Each side file (``summary.json``, ``backbone.json``, ``classifier.json``, ...) is one pydantic model here, with
its file name, its one reader (:meth:`SideFile.read`) and its one writer (:meth:`SideFile.write`). Readers
validate what they read, so a missing or mistyped field fails at the read with the file's URI rather than as
a ``KeyError`` deep inside a step, and defaults live in one place (the field) instead of in every reader.

The files stay plain JSON with the same keys as before (sorted, indented): users and other tools read them.
Unknown keys are ignored on reading, so a file written by a newer version still reads.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from aerial_assets.errors import AerialError
from aerial_assets.storage.core import Storage, join
from aerial_assets.tables import VIEW_COUNTS, TileStatus


def _view_count(views: int) -> int:
    if views not in VIEW_COUNTS:
        raise ValueError(f"views must be one of {VIEW_COUNTS}, got {views}")
    return views


def view_choice(zero_means: str):
    """A view count, or 0 meaning ``zero_means`` (for example "the model's")."""

    def check(views: int) -> int:
        if views != 0 and views not in VIEW_COUNTS:
            raise ValueError(f"views must be 0 ({zero_means}) or one of {VIEW_COUNTS}, got {views}")
        return views

    return Annotated[int, AfterValidator(check)]


# Dagster's config schema takes only string literals, so the allowed counts are a pydantic validator: a bad
# value fails when the step's config is built, before any work, in every asset that takes views.
ViewCount = Annotated[int, AfterValidator(_view_count)]
ViewChoice = view_choice("every view tile_features computed")
"""A view count, or 0: "the views the upstream output was computed with"."""
Augmentation = Literal["average", "augment"]


class Record(BaseModel):
    """A typed JSON document (frozen; unknown keys ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    #: Keys left out of the file when None (files written before the records omitted them, and readers test for
    #: their presence); every other None is written as null, as before.
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset()

    def to_json(self) -> str:
        data = self.model_dump(mode="json")
        for key in self.OMIT_IF_NONE:
            if data.get(key) is None:
                data.pop(key, None)
        return json.dumps(data, indent=2, sort_keys=True)


class SideFile(Record):
    """A record stored as ``<folder>/<FILE>`` in an asset's output folder."""

    FILE: ClassVar[str]

    @classmethod
    def uri(cls, folder: str) -> str:
        return join(folder, cls.FILE)

    @classmethod
    def exists(cls, store: Storage, folder: str) -> bool:
        return store.exists(cls.uri(folder))

    @classmethod
    def read(cls, store: Storage, folder: str) -> Self:
        uri = cls.uri(folder)
        try:
            return cls.model_validate_json(store.read_text(uri))
        except ValidationError as exc:
            raise AerialError(f"{uri} is not a valid {cls.__name__} (written by another version? re-materialize "
                              f"its asset): {exc.errors(include_url=False)}") from None

    def write(self, store: Storage, folder: str) -> None:
        store.write_text(self.uri(folder), self.to_json())


# --- tiles ------------------------------------------------------------------------------------------------

class LabeledTilesSummary(SideFile):
    """``labeled_tiles/summary.json``: what the catalog holds."""

    FILE: ClassVar[str] = "summary.json"
    source: str
    demo: bool
    layout: str
    tiles: int
    quarantined: int
    per_split: dict[str, int]
    classes: list[str]
    duplicates: dict[str, int]
    split_strategy: str
    spatial_groups: int
    block_size_m: float | None = None
    resized: int = 0
    mode_converted: int = 0
    gsd_m: float | None = None  # metres per pixel of the tiles, when known (declared, or from tile positions)
    gsd_source: str = "unknown"


class ClassMapping(Record):
    """Where a source class (a folder name) went: a target class, ``unmapped`` or ``ignored``; and its tiles."""

    target: str
    tiles: int


class LabelMapReport(SideFile):
    """``labeled_tiles/label_map.json``: how the dataset's classes were mapped (``label_map`` None: no map,
    classes are the folder names)."""

    FILE: ClassVar[str] = "label_map.json"
    label_map: str | None = None
    classes: dict[str, ClassMapping] = Field(default_factory=dict)
    unmapped: list[str] = Field(default_factory=list)
    ignored: list[str] = Field(default_factory=list)
    not_found: list[str] = Field(default_factory=list)  # classes of the map that no folder had (a typo?)
    n_unmapped_tiles: int = 0
    n_ignored_tiles: int = 0


class RasterLabelsSummary(SideFile):
    """``raster_labeled_tiles/summary.json``: tiles cut from imagery and labelled from a land-cover raster."""

    FILE: ClassVar[str] = "summary.json"
    tiles: int
    n_labelled: int
    n_unlabelled: int
    per_class: dict[str, int]
    unlabelled_by_reason: dict[str, int]
    rule: dict[str, Any]
    tile_size_m: float
    sources: dict[str, Any]


# --- backbones and features -------------------------------------------------------------------------------

class BackboneRecord(SideFile):
    """``backbone_models/<backbone>/backbone.json``: what the ONNX graph was built from."""

    FILE: ClassVar[str] = "backbone.json"
    model_config = ConfigDict(extra="allow", frozen=True)  # weights provenance differs by kind (base, INT8, combined)
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"parts"})
    backbone: str
    input_size: int
    feature_dim: int
    preprocessing: str
    kind: str = "base"
    weights_sha256: str = ""
    parts: list[str] | None = None  # a combination's networks


class FeaturesSummary(SideFile):
    """``tile_features/<backbone>/summary.json``: which catalog and graph the features came from."""

    FILE: ClassVar[str] = "summary.json"
    backbone: str
    views: ViewCount = 1
    feature_dim: int
    n_tiles: int
    seconds: float
    catalog_sha256: str = ""
    model_sha256: str = ""
    run_id: str = ""
    reused_parts: list[str] = Field(default_factory=list)
    engine: str = "onnxruntime"  # where the graph ran (AERIAL_FEATURIZE_ENGINE); both give the same features


class FeaturesIdentity(Record):
    """What a classifier was trained on: the catalog's sha256 and a fingerprint of the stored features
    (``training.provenance.features_identity``). Equal identities mean the very same stored features."""

    catalog_sha256: str
    features_sha256: str


# --- training ---------------------------------------------------------------------------------------------

class OodRecord(Record):
    """The out-of-distribution model stored beside a classifier (``novelty.npz``): its threshold and where the
    threshold came from (:mod:`aerial_assets.training.novelty`)."""

    threshold: float
    quantile: float
    heldout: str        # "validation" or "train fifth"
    n_heldout: int
    n_fit: int
    shrinkage: float
    rank: int
    training_gsd_m: float | None = None  # metres per pixel of the training tiles, when known
    training_gsd_source: str = "unknown"


class ClassifierRecord(SideFile):
    """``land_use_classifiers/<backbone>/<algorithm>/classifier.json``: a fitted classifier."""

    FILE: ClassVar[str] = "classifier.json"
    model_id: str
    backbone: str
    algorithm: str
    classes: list[str]
    params: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, Any] = Field(default_factory=dict)
    n_train: int
    n_train_rows: int = 0
    views: ViewCount = 1
    augmentation: Augmentation = "average"
    fit_seconds: float
    train_counts: dict[str, int] = Field(default_factory=dict)
    upstream: FeaturesIdentity | None = None
    ood: OodRecord | None = None  # None: trained before the out-of-distribution model existed


class ReportRecord(Record):
    """One split's classification report (``training.metrics.ClassificationReport.to_dict``)."""

    classes: list[str]
    confusion_matrix: list[list[int]]
    accuracy: float
    macro_f1: float
    precision: list[float]
    recall: list[float]
    f1: list[float]
    support: list[int]


class OodTestRecord(Record):
    """The test split seen by the out-of-distribution model: how many tiles it flags, and whether the flag marks
    the errors more than the correct predictions (accuracy of the tiles in and out of distribution)."""

    threshold: float
    share_out: float
    n_out: int
    accuracy_in: float | None = None   # None: no tile on that side
    accuracy_out: float | None = None


class MetricsRecord(SideFile):
    """``classifier_metrics/<backbone>/<algorithm>/metrics.json``: a classifier on the held-out splits."""

    FILE: ClassVar[str] = "metrics.json"
    backbone: str
    algorithm: str
    model_id: str
    n_train: int
    fit_seconds: float
    test: ReportRecord
    validation: ReportRecord
    views: ViewCount = 1
    augmentation: Augmentation = "average"
    params: dict[str, Any] = Field(default_factory=dict)
    upstream: FeaturesIdentity | None = None
    calibration: dict[str, Any] = Field(default_factory=dict)
    mlflow_run_id: str | None = None  # the MLflow run of this evaluation (None with AERIAL_MLFLOW=0)
    ood: OodTestRecord | None = None  # the test split through the out-of-distribution model (None: no such model)


class ChampionRecord(SideFile):
    """``champion_model/champion.json``: the model that scores counties, with its backbone's record, so the
    bundle (``model.onnx`` + ``pipeline_model``) is self-describing."""

    FILE: ClassVar[str] = "champion.json"
    model_id: str
    backbone: str
    algorithm: str
    classes: list[str]
    why: str
    views: ViewCount = 1
    augmentation: Augmentation = "average"
    params: dict[str, Any] = Field(default_factory=dict)
    val_macro_f1: float
    val_accuracy: float
    test_accuracy: float
    test_macro_f1: float
    test_ece: float | None = None
    backbone_record: BackboneRecord
    upstream: FeaturesIdentity | None = None
    left_out: dict[str, str] = Field(default_factory=dict)
    mlflow_model: str | None = None  # "<registered name>/<version>" of this champion (None with AERIAL_MLFLOW=0)
    ood: OodRecord | None = None  # its out-of-distribution model (novelty.npz in the bundle); None: trained before it


# --- counties and maps ------------------------------------------------------------------------------------

class CountyTilesSummary(SideFile):
    """``county_tiles/<county>/summary.json``: a county's tiles, counted by status."""

    FILE: ClassVar[str] = "summary.json"
    county: str
    name: str = ""
    area: str = ""
    year: int | None = None
    crs: str
    tile_size_m: float
    sources: list[dict[str, Any]] = Field(default_factory=list)  # rasters (header each) or one tile folder
    counts: dict[str, int] = Field(default_factory=dict)

    def count(self, status: TileStatus) -> int:
        return int(self.counts.get(status, 0))


class ImageryTrust(Record):
    """How far a county's scored tiles are from the training tiles: the out-of-distribution count and the causes
    that can be measured (ground sample distance, upsampling on read). Built by :mod:`aerial_assets.maps.trust`."""

    ood_threshold: float | None = None       # None: the model predates out-of-distribution scores
    n_out_of_distribution: int | None = None
    training_gsd_m: float | None = None
    training_gsd_source: str = "unknown"
    county_gsd_m: float | None = None        # median over the scored tiles' rasters; None for ready-made tile files
    input_size: int = 224                    # the backbone's input, in pixels
    n_upsampled: int | None = None           # tiles whose window is resampled more than 2x up to the input
    n_size_known: int = 0                    # tiles whose window size in pixels is known before decoding

    def ood_share(self, n_tiles: int) -> float | None:
        if self.n_out_of_distribution is None or n_tiles <= 0:
            return None
        return self.n_out_of_distribution / n_tiles

    def upsampled_share(self) -> float | None:
        return None if self.n_upsampled is None or not self.n_size_known else self.n_upsampled / self.n_size_known


class PredictionsSummary(SideFile):
    """``county_predictions/<county>/summary.json``: which model scored the county, and the counts per class."""

    FILE: ClassVar[str] = "summary.json"
    county: str
    model_id: str
    classes: list[str]
    counts: dict[str, int]
    views: ViewCount = 1
    crs: str
    year: int | None = None
    area: str | None = None
    n_tiles: int
    n_quarantined: int
    seconds: float
    spark_tasks: int
    sample_frac: float = 1.0
    champion: bool = True
    run_id: str = ""
    engine: str = "onnxruntime"  # where the backbone graph ran (AERIAL_FEATURIZE_ENGINE)
    trust: ImageryTrust = Field(default_factory=ImageryTrust)  # out of distribution, resolution, upsampling


class LandUseMapSummary(SideFile):
    """``county_land_use_map/<county>/summary.json``: the map's grid and the tiles per class."""

    FILE: ClassVar[str] = "summary.json"
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({"cell_m"})  # only square cells in metres have a size in m
    county: str
    model_id: str
    crs: str
    classes: list[str]
    grid: list[int]
    cell_x: float
    cell_y: float
    cell_m: float | None = None
    counts: list[int]
    smoothing: bool
    tiles_changed_by_smoothing: int
    min_confidence: float | None = None  # below it a tile is marked low confidence (land_use_trust.tif: 1)
    trust_counts: dict[str, int] = Field(default_factory=dict)  # tiles trusted / low confidence / out of distribution


class ChangeSummary(SideFile):
    """``county_land_use_change/<county>/summary.json``: transitions since the baseline vintage, and which
    scoring of the baseline and of this vintage they were computed from (``*_model_id`` / ``*_run_id``)."""

    FILE: ClassVar[str] = "summary.json"
    county: str
    baseline: str
    classes: list[str]
    matrix: list[list[int]]
    became: dict[str, int]
    baseline_model_id: str = ""
    baseline_run_id: str = ""
    model_id: str = ""
    run_id: str = ""


class AgreementRecord(SideFile):
    """``county_agreement/<county>/agreement.json``: the map against a reference land-cover raster, or why there
    is none (``reference`` None and a ``note``; the other keys are then absent, as they always were)."""

    FILE: ClassVar[str] = "agreement.json"
    OMIT_IF_NONE: ClassVar[frozenset[str]] = frozenset({
        "note", "classes", "crs", "grid", "map_cells", "reference_labelled_cells", "raw", "smoothed", "smoothing_gain"})
    county: str
    reference: dict[str, str] | None
    note: str | None = None
    classes: list[str] | None = None
    crs: str | None = None
    grid: list[int] | None = None
    map_cells: int | None = None
    reference_labelled_cells: int | None = None
    raw: dict[str, Any] | None = None
    smoothed: dict[str, Any] | None = None
    smoothing_gain: float | None = None
