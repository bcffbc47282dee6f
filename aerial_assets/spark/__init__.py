"""Spark-side code: session settings, job shape, featurizers, executor-written files. No Dagster import."""

import os

#: the project's ignored cache folder (``.cache`` beside the package), where make targets put what the JVM loads:
#: the hadoop-azure jars (``make jars``) and the driver's class archive (``make install``, ``make jvm-archive``)
PROJECT_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), ".cache")
