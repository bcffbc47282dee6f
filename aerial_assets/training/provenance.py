"""Which stored outputs belong together: the catalog's sha256 and a fingerprint of the stored features, and the
checks that a classifier, its metrics and the features it was trained on still match. No Dagster import.

Every training output records the identity of what it was computed from (``upstream``,
:class:`aerial_assets.records.FeaturesIdentity`), and every later step checks it against what is stored now:
a failed or skipped upstream step must never let a later step train, score or rank on older outputs.
"""

import hashlib

from aerial_assets.errors import AerialError
from aerial_assets.records import ClassifierRecord, FeaturesIdentity, FeaturesSummary, MetricsRecord
from aerial_assets.storage.core import Storage
from aerial_assets.storage.layout import Layout


def catalog_sha(store: Storage, layout: Layout) -> str:
    """sha256 of the stored ``labeled_tiles/catalog.parquet`` (the same digest tile_features records)."""
    uri = layout.catalog()
    if not store.exists(uri):
        raise AerialError("labeled_tiles has no catalog: materialize labeled_tiles first")
    return hashlib.sha256(store.read_bytes(uri)).hexdigest()


def features_identity(store: Storage, layout: Layout, backbone: str) -> FeaturesIdentity:
    """What the stored ``tile_features[backbone]`` were computed from, and a fingerprint of them.

    ``catalog_sha256`` is the one tile_features recorded. ``features_sha256`` is the sha256 of its
    ``summary.json`` and of the names and sizes of the Parquet files, all written in one atomic folder:
    Spark names every part file with a fresh id per write, so each materialization (even of identical
    features) gets its own fingerprint, and no timing coincidence in the summary can make two agree.
    """
    folder = layout.tile_features(backbone)
    if not FeaturesSummary.exists(store, folder):
        raise AerialError(f"tile_features[{backbone}] has no summary.json (never materialized, or written by an "
                          f"older version): materialize tile_features for partition {backbone}")
    raw = store.read_bytes(FeaturesSummary.uri(folder))
    digest = hashlib.sha256(raw)
    parquet = layout.features(backbone)
    if store.exists(parquet):
        for entry in store.list_files(parquet):
            digest.update(f"\n{entry.relative_path}\t{entry.size}".encode())
    summary = FeaturesSummary.model_validate_json(raw)
    return FeaturesIdentity(catalog_sha256=summary.catalog_sha256, features_sha256=digest.hexdigest())


def features_problem(identity: FeaturesIdentity, catalog: str, backbone: str) -> str:
    """'' when the features were computed from the current catalog, else why not and what to re-materialize."""
    if identity.catalog_sha256 == catalog:
        return ""
    return (f"tile_features[{backbone}] was computed from another catalog (sha256 "
            f"{identity.catalog_sha256[:12] or 'not recorded'}, current labeled_tiles {catalog[:12]}): its "
            f"last materialization failed or predates the current labeled_tiles. Re-materialize tile_features for "
            f"partition {backbone}")


def current_features(store: Storage, layout: Layout, backbone: str) -> FeaturesIdentity:
    """The identity of ``tile_features[backbone]``, after checking it belongs to the current catalog (raises
    naming the asset to re-materialize otherwise)."""
    identity = features_identity(store, layout, backbone)
    if problem := features_problem(identity, catalog_sha(store, layout), backbone):
        raise AerialError(problem)
    return identity


def computed_views(store: Storage, layout: Layout, backbone: str) -> int:
    """How many views tile_features stored for ``backbone`` (1 when never materialized)."""
    folder = layout.tile_features(backbone)
    return FeaturesSummary.read(store, folder).views if FeaturesSummary.exists(store, folder) else 1


def upstream_text(upstream: FeaturesIdentity | None) -> str:
    if upstream is None:
        return "no provenance recorded"
    return f"catalog {upstream.catalog_sha256[:12]}, features {upstream.features_sha256[:12]}"


def provenance_problem(store: Storage, layout: Layout, backbone: str, algorithm: str, catalog: str,
                       features: dict[str, FeaturesIdentity | str]) -> str:
    """'' when the metrics of ``backbone|algorithm`` belong to the current upstream, else why not (and what to
    re-materialize): the classifier must still be stored, the metrics must be of that very model, and both
    must have been computed on the stored features, themselves computed from the current catalog.

    ``features`` caches each backbone's identity (or the reason it has none) across partitions.
    """
    key = f"{backbone}|{algorithm}"
    metrics = MetricsRecord.read(store, layout.classifier_metrics(backbone, algorithm))
    clf_dir = layout.classifier(backbone, algorithm)
    if not (ClassifierRecord.exists(store, clf_dir) and store.exists(layout.classifier_pipeline(backbone, algorithm))):
        return (f"its classifier ({metrics.model_id}) is no longer stored: re-materialize "
                f"land_use_classifiers and classifier_metrics for {key}")
    info = ClassifierRecord.read(store, clf_dir)
    if metrics.model_id != info.model_id:
        return (f"the metrics are of {metrics.model_id}, the stored classifier is {info.model_id}: "
                f"re-materialize classifier_metrics for {key}")
    if backbone not in features:
        try:
            features[backbone] = features_identity(store, layout, backbone)
        except AerialError as exc:
            features[backbone] = str(exc)
    identity = features[backbone]
    if isinstance(identity, str):
        return identity
    if problem := features_problem(identity, catalog, backbone):
        return f"{problem}, then land_use_classifiers and classifier_metrics for {key}"
    upstream = info.upstream
    if upstream is None:
        return (f"trained before provenance was recorded: re-materialize land_use_classifiers and "
                f"classifier_metrics for {key}")
    if upstream.catalog_sha256 != catalog:
        return (f"trained on another catalog ({upstream_text(upstream)}): re-materialize land_use_classifiers "
                f"and classifier_metrics for {key}")
    if upstream != identity:
        return (f"trained on older tile_features[{backbone}] ({upstream_text(upstream)}, current "
                f"{upstream_text(identity)}): re-materialize land_use_classifiers and classifier_metrics for {key}")
    if metrics.upstream != upstream:
        return (f"the metrics were computed on other features than the classifier's: re-materialize "
                f"classifier_metrics for {key}")
    return ""
