"""The Spark workload whose classes go into the driver JVM's class-data-sharing archive
(:mod:`aerial_assets.spark.class_archive` runs ``python -m aerial_assets.spark.archive_workload <archive>`` in a child
process; the JVM dumps the archive when it exits).

A module of its own because it opens a session with :mod:`aerial_assets.spark.session`'s settings, and the session
module reads the archive's path from ``class_archive``: kept apart, neither imports the other's importer.
"""

from __future__ import annotations

import os
import sys


def run(out: str) -> None:
    """What a graph run's driver does, in small: SQL, Arrow both ways, pandas UDFs, Parquet, a shuffle, pyspark.ml
    fitting, saving and loading. The archive holds the classes loaded here; others load from the jars as before."""
    import pandas as pd
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.classification import LogisticRegression, RandomForestClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StandardScaler, StringIndexer, VectorAssembler
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    from aerial_assets.spark.session import LOCAL_DRIVER_JAVA_OPTIONS, SparkSettings, session_conf

    conf = session_conf(SparkSettings())
    # a JVM that maps an archive (an older one) cannot dump a new one: the base options only
    conf["spark.driver.defaultJavaOptions"] = f"{LOCAL_DRIVER_JAVA_OPTIONS} -XX:ArchiveClassesAtExit={out}"
    spark = SparkSession.builder.config(map=conf).getOrCreate()
    frame = spark.createDataFrame(pd.DataFrame({"id": range(400), "label": [f"c{i % 3}" for i in range(400)],
                                                "x": [float(i % 17) for i in range(400)]}))
    doubled = frame.repartition(4).mapInPandas(lambda parts: (p.assign(y=p.x * 2) for p in parts),
                                               "id long, label string, x double, y double")
    folder = os.path.join(os.path.dirname(out), "workload.parquet")
    doubled.write.mode("overwrite").parquet(folder)
    data = spark.read.parquet(folder).join(frame.select("id"), "id").orderBy("id")
    data.groupBy("label").agg(F.count("*"), F.avg("x")).collect()
    data.toPandas()
    stages = [StringIndexer(inputCol="label", outputCol="target"),
              VectorAssembler(inputCols=["x", "y"], outputCol="raw"), StandardScaler(inputCol="raw", outputCol="v")]
    for model in (LogisticRegression(featuresCol="v", labelCol="target", maxIter=5),
                  RandomForestClassifier(featuresCol="v", labelCol="target", numTrees=3)):
        fitted = Pipeline(stages=[*stages, model]).fit(data)
        path = os.path.join(os.path.dirname(out), "model")
        fitted.write().overwrite().save(path)
        scored = PipelineModel.load(path).transform(data)
        MulticlassClassificationEvaluator(labelCol="target").evaluate(scored)
    print(f"JVM {spark._jvm.java.lang.ProcessHandle.current().pid()}", flush=True)


if __name__ == "__main__":
    run(sys.argv[1])
