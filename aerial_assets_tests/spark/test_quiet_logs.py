"""The local Spark driver's log: what ``make run`` prints of it leaves out the start-up notices a user cannot act on,
still shows real warnings, and ``AERIAL_VERBOSE=1`` gives Spark's own log back. Each case is a process of its own
that opens a real local session with the project's settings (a process holds one driver JVM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SCRIPT = """
from aerial_assets.spark.session import SparkSettings, prepare_launch, session_conf
from pyspark.sql import SparkSession
import os
settings = SparkSettings.from_env(os.environ)
prepare_launch(settings.master)
spark = SparkSession.builder.config(map=session_conf(settings)).getOrCreate()
print("rows", spark.range(1000).repartition(4).count(), flush=True)
# logistic regression on a separable set (6 classes, 200 rows of 6,000 features) with weak L2 regularisation: breeze's
# line search reaches the floating-point floor of the log loss and says so at ERROR level on both Spark lines
import numpy as np
from pyspark.ml.classification import LogisticRegression
from pyspark.ml.linalg import Vectors
rng = np.random.default_rng(0)
labels = np.arange(200) % 6
x = rng.standard_normal((6, 6000))[labels] + rng.standard_normal((200, 6000))
x = (x - x.mean(0)) / x.std(0)
frame = spark.createDataFrame([(Vectors.dense(r), float(c)) for r, c in zip(x, labels)], ["features", "label"])
print("fitted", LogisticRegression(regParam=0.001, family="multinomial").fit(frame).numClasses, flush=True)
# an MLP of 6,000 x 256 weights: its tasks carry 12 MB, which Spark notes as a "very large" task
from pyspark.ml.classification import MultilayerPerceptronClassifier
MultilayerPerceptronClassifier(layers=[6000, 256, 6], maxIter=1, seed=0).fit(frame)
jvm = spark.sparkContext._jvm
jvm.org.apache.logging.log4j.LogManager.getLogger("aerial_assets.check").warn("a warning users must see")
spark.stop()
"""
NOTICES = ("Using Spark's default log4j profile", "NativeCodeLoader", "resolves to a loopback address",
           "Set SPARK_LOCAL_IP", "Line search failed", "LBFGS", "task of very large size")


def _driver_log(**extra: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AERIAL_", "SPARK_LOCAL_IP"))}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**env, "PYSPARK_PYTHON": sys.executable, **extra})
    assert done.returncode == 0 and "rows 1000" in done.stdout and "fitted 6" in done.stdout, \
        done.stdout[-2000:] + done.stderr[-4000:]
    return done.stderr


def test_the_local_driver_log_leaves_out_start_up_notices_and_keeps_warnings():
    quiet = _driver_log()
    assert not [n for n in NOTICES if n in quiet], quiet
    assert "WARN check: a warning users must see" in quiet, quiet


def test_aerial_verbose_gives_sparks_own_log_back():
    verbose = _driver_log(AERIAL_VERBOSE="1")
    # a notice the quiet log leaves out, which Spark's own settings print on both lines (3.5 does not name its
    # default profile when pyspark starts the driver; 4.x does)
    assert "NativeCodeLoader" in verbose, verbose
    assert "Line search failed" in verbose, verbose  # the fit in SCRIPT does reach the floor the quiet log hides
    assert "task of very large size" in verbose, verbose  # and the MLP's tasks are that large
    assert "a warning users must see" in verbose
