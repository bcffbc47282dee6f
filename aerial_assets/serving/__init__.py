"""The champion outside Spark: its classifier as numpy arrays and a predictor from image bytes to land use.

No Dagster and no Spark import: these modules are what the MLflow model (:mod:`aerial_assets.serving.pyfunc`)
carries with it, so a serving endpoint needs numpy, pandas, Pillow, tifffile, pyarrow and onnxruntime only.
"""
