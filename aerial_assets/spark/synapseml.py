"""SynapseML on a Spark session: its JVM jars for the Scala 2.12 line, whether its classes load on a session, and the
one line that says why not. No Dagster import.

SynapseML (the original sample's MMLSpark) is a JVM library with a thin Python package (``synapseml`` on PyPI,
installed on every line: pure Python, its classes call the JVM). Maven Central has Scala 2.12 builds of it only, which
run on Spark 3.5; Spark 4.x is Scala 2.13. So availability is decided by the session, by whether its JVM loads
SynapseML's classes, never by a version number: a 4.x cluster that has SynapseML installed (Microsoft Fabric 2.0's
runtime ships a build for Spark 4) can use it. Over Spark Connect the client reaches no JVM class by name, so
SynapseML's Python classes cannot drive it there.
"""

from __future__ import annotations

import importlib
import os

from aerial_assets.errors import ConfigurationError
from aerial_assets.spark import PROJECT_CACHE
from aerial_assets.spark.jobs import is_connect
from aerial_assets.spark.lines import bundled_jar_version

JARS_DIR = os.path.join(PROJECT_CACHE, "synapseml-jars")
LIGHTGBM_CLASS = "com.microsoft.azure.synapse.ml.lightgbm.LightGBMClassifier"
ONNX_MODEL_CLASS = "com.microsoft.azure.synapse.ml.onnx.ONNXModel"
#: What a cluster without SynapseML puts on ``spark.jars.packages`` (docs/deployment/spark-lines.md): the Scala 2.12 build.
PACKAGES = ("com.microsoft.azure:synapseml-core_2.12:1.1.3,com.microsoft.azure:synapseml-lightgbm_2.12:1.1.3,"
            "com.microsoft.azure:synapseml-deep-learning_2.12:1.1.0")


def scala_version() -> str | None:
    """The Scala binary version of the installed pyspark (``scala-library`` 2.12.18 -> ``2.12``)."""
    version = bundled_jar_version("scala-library")
    return ".".join(version.split(".")[:2]) if version else None


def synapseml_jars(folder: str = JARS_DIR) -> list[str]:
    """The jars ``make jars PYSPARK=3.5.x`` fetched (pom-synapseml.xml), once complete, when the installed pyspark
    runs their Scala (2.12): on a 4.x venv they would fail at the first class they load, so they are left off."""
    if not os.path.exists(os.path.join(folder, ".complete")) or scala_version() != "2.12":
        return []
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if name.endswith(".jar"))


def loads_class(session, name: str) -> bool:
    """Whether the session's JVM loads class ``name`` the way SynapseML's Python classes will reach it (py4j's
    class lookup, which sees ``spark.jars``). Always False over Spark Connect (no JVM on this side)."""
    if is_connect(session):
        return False
    try:
        session.sparkContext._jvm.py4j.reflection.ReflectionUtil.classForName(name)
    except Exception:  # noqa: BLE001 - py4j raises Py4JJavaError (ClassNotFoundException) or Py4JError
        return False
    return True


def require(session, what: str, class_name: str) -> None:
    """Stop at once, in one line, when ``what`` (an algorithm, an engine) needs SynapseML's ``class_name`` and the
    session cannot load it: why, and the Spark line that has it."""
    if loads_class(session, class_name):
        return
    if is_connect(session):
        why = "over Spark Connect the client cannot drive SynapseML's JVM classes"
        fix = "use a classic session (AERIAL_SPARK_MASTER=local[N], yarn or spark://...) on the 3.5 line"
    else:
        why = f"this Spark session cannot load {class_name}"
        fix = ("SynapseML is published for the Spark 3.5 line (Scala 2.12) only: make install PYSPARK=3.5.9 && make "
               "jars PYSPARK=3.5.9, then make run PYSPARK=3.5.9; on a cluster, install SynapseML (spark.jars.packages "
               f"{PACKAGES.split(',')[0]},...; docs/deployment/spark-lines.md)")
    raise ConfigurationError(f"{what} needs SynapseML, but {why}: {fix}")


SYNAPSEML_PREFIX = "com.microsoft.azure.synapse.ml."


def import_synapseml(module: str = "synapse.ml.lightgbm"):
    """Import one of SynapseML's Python modules, keeping pyspark.ml's model loading for every other stage.

    On import SynapseML replaces pyspark.ml's ``JavaParams._from_java`` and ``DefaultParamsReader.loadParamsInstance``
    with versions that map its JVM class names (``com.microsoft.azure.synapse.ml.*``) to its Python classes, but
    that also refuse any Python class outside ``pyspark.`` and ``synapse.ml.``: after it, a saved pipeline holding
    the project's own discriminant no longer loads in that process. So its ``_from_java`` serves SynapseML's stages
    only and pyspark's the others, and pyspark's ``loadParamsInstance`` is put back (SynapseML's stages are JVM stages,
    loaded through ``_from_java``). Its two other replacements (Python values to Java in params and calls) convert a
    superset of what pyspark's do and stay.
    """
    from pyspark.ml.util import DefaultParamsReader
    from pyspark.ml.wrapper import JavaParams

    pyspark_from_java = JavaParams.__dict__["_from_java"]
    pyspark_load = DefaultParamsReader.__dict__["loadParamsInstance"]
    loaded = importlib.import_module(module)
    synapse_from_java = JavaParams.__dict__["_from_java"]
    if synapse_from_java is not pyspark_from_java:  # the first import of SynapseML, which replaced them
        def from_java(java_stage):
            if java_stage.getClass().getName().startswith(SYNAPSEML_PREFIX):
                return synapse_from_java.__func__(java_stage)
            return pyspark_from_java.__func__(java_stage)

        JavaParams._from_java = staticmethod(from_java)
        DefaultParamsReader.loadParamsInstance = pyspark_load
    return loaded
