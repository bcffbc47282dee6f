"""``python -m aerial_assets.defs.run`` as a user meets it: ``--help`` documents the options and the settings, and a
configuration error is one line on stderr that names the setting, with exit status 2 and no traceback.

Each case is a real subprocess of the CLI; none reaches Spark (the errors come before any run)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from aerial_assets_tests.safety.test_yaml_files import alias_bomb

REPO = Path(__file__).resolve().parents[2]


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AERIAL_", "AZURE_", "SPARK_REMOTE"))}
    base.pop("DAGSTER_HOME", None)
    return subprocess.run([sys.executable, "-m", "aerial_assets.defs.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=180, env={**base, "AERIAL_DATA_ROOT": str(tmp_path / "root"), **env})


def test_help_documents_the_options_the_settings_and_the_exit_status(tmp_path):
    done = cli(tmp_path, "--help")
    assert done.returncode == 0, done.stderr
    for text in ("--preset", "AERIAL_PRESET", "--backbones", "--algorithms", "--counties", "--skip-counties", "--config", "AERIAL_TRAINING_TILES",
                 "AERIAL_DATA_ROOT", "AERIAL_SPARK_MASTER", "SPARK_REMOTE", "AERIAL_DEPLOYMENT", "exit status"):
        assert text in done.stdout, text
    assert "mobilenet_v2,efficientnet_lite0" in " ".join(done.stdout.split())  # the defaults are shown


@pytest.mark.parametrize(("args", "env", "expected"), [
    ((), {"AERIAL_DEPLOYMENT": "aws"}, "unknown AERIAL_DEPLOYMENT 'aws'"),
    ((), {"AERIAL_SPARK_PARALLELISM": "many"}, "AERIAL_SPARK_PARALLELISM='many' is not a whole number"),
    ((), {"AERIAL_DATA_ROOT": "az://data/run"}, "AERIAL_DATA_ROOT=az://data/run is an Azure URI but no Azure credentials"),
    (("--backbones", "vgg99"), {}, "unknown backbone 'vgg99'"),
    (("--preset", "precise"), {}, "unknown preset 'precise'"),
    ((), {"AERIAL_PRESET": "precise"}, "unknown preset 'precise'"),
    (("--config", "{tmp}/missing.yaml"), {}, "missing.yaml: cannot read it"),
    (("--config", "{tmp}/broken.yaml"), {}, "broken.yaml: not valid YAML"),
    (("--config", "{tmp}/unknown_asset.yaml"), {}, "--config names unknown assets: tile_featurs"),
    (("--config", "{tmp}/unknown_setting.yaml"), {}, 'unexpected config entry "bogus"'),
    (("--config", "{tmp}/bomb.yaml"), {}, "bomb.yaml: expands to more than 200,000 values (nested aliases?)"),
    ((), {"AERIAL_LABEL_MAP": "{tmp}/bomb.yaml"}, "label map in {tmp}/bomb.yaml: expands to more than 200,000"),
    ((), {"AERIAL_LABEL_MAP": "{tmp}/broken.yaml"}, "label map in {tmp}/broken.yaml: not valid YAML"),
    ((), {"AERIAL_LABEL_MAP": "{tmp}/nolist.yaml"}, "needs a non-empty 'classes:' mapping"),
    ((), {"AERIAL_DATA_ROOT": "az://data/run?sv=1&sig=c2VjcmV0"}, "AERIAL_DATA_ROOT=az://data/run?<redacted> carries"),
])
def test_a_configuration_error_is_one_line_naming_the_setting(tmp_path, args, env, expected):
    (tmp_path / "broken.yaml").write_text("ops: {tile_features: [\n")
    (tmp_path / "unknown_asset.yaml").write_text("ops: {tile_featurs: {config: {views: 8}}}\n")
    (tmp_path / "unknown_setting.yaml").write_text("ops: {tile_features: {config: {views: 8, bogus: 1}}}\n")
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    (tmp_path / "nolist.yaml").write_text("ignore: [a]\n")
    expected = expected.format(tmp=tmp_path)
    done = cli(tmp_path, *[a.format(tmp=tmp_path) for a in args], **{k: v.format(tmp=tmp_path) for k, v in env.items()})
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr  # no traceback, no warnings: one line
    assert lines[0].startswith("make run: configuration error: ") and expected in lines[0], lines[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "c2VjcmV0" not in done.stdout + done.stderr  # a secret in a setting is never echoed
