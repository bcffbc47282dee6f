"""The docs stay in step with the code: generated pages equal what the code says now, nothing undocumented slips
in, README stays a front page, and ``make docs`` builds from a clean clone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import Definitions, asset

from aerial_assets.defs import reference
from aerial_assets.settings import AerialSettings, settings_fields
from aerial_assets.storage.layout import OUTPUT_LAYOUT, Layout
from aerial_assets_tests.sockets import answer, free_port, listening_addresses
from benchmarks import results

REPO = Path(__file__).resolve().parents[2]


def test_the_generated_pages_and_readme_settings_equal_what_the_code_says():
    assert reference.stale_files() == [], "run `make docs` and commit the pages"
    assert (REPO / "docs" / "benchmarks" / "latest.md").read_text() == results.page(), "run `make docs`"


def test_every_asset_of_the_code_location_has_its_section_with_partitions_dependencies_and_checks():
    page = (REPO / "docs" / "reference" / "assets.md").read_text()
    defs = reference._defs()
    for spec in defs.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        section = page.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert f"| group | `{spec.group_name}` |" in section, name
        for dep in spec.deps:
            assert f"[`{dep.asset_key.to_user_string()}`]" in section, (name, dep)
    assert "`labeled_tiles_leakage` (blocking)" in page
    assert "| `features` | `array<float>` |" in page  # tile_features' declared columns


def test_an_undocumented_asset_or_setting_fails_the_generation():
    @asset
    def undocumented_asset():
        return 1

    with pytest.raises(reference.ReferenceError, match="asset undocumented_asset has no docstring"):
        reference.assets_page(Definitions(assets=[undocumented_asset]))
    fields = [*settings_fields(), ("AERIAL_NEW_SETTING", "unset", "Data", "")]
    with pytest.raises(reference.ReferenceError, match="setting AERIAL_NEW_SETTING has no meaning"):
        reference.settings_page(fields)


def test_the_settings_page_lists_every_setting_in_its_section():
    page = (REPO / "docs" / "reference" / "settings.md").read_text()
    for env, default, section, doc in settings_fields():
        assert f"| `{env}` | {default} | {doc} |" in page.split(f"## {section}\n", 1)[1], env


def test_every_output_folder_the_layout_names_is_documented():
    root = "/root"
    layout = Layout(root)
    documented = {folder.split("/")[0] for folder, _ in OUTPUT_LAYOUT}
    for name in dir(layout):
        if name.startswith("_") or not callable(getattr(layout, name)):
            continue
        method = getattr(layout, name)
        argc = method.__code__.co_argcount - 1
        uri = method(*["x"] * argc)
        assert uri.startswith(root + "/"), (name, uri)
        assert uri[len(root) + 1:].split("/")[0] in documented, (name, uri)


def test_the_cli_page_has_every_public_make_target_and_the_runs_help():
    page = (REPO / "docs" / "reference" / "cli.md").read_text()
    targets = dict(reference.make_targets())
    for target in ("demo", "run", "test", "test-fast", "ui", "docs", "docs-serve", "bench-accuracy", "bench-county",
                   "bench-features", "bench-cluster", "yarn", "jars"):
        assert target in targets and f"| `make {target}` |" in page, target
    assert "--preset" in page and "exit status" in page


def test_a_bad_setting_is_one_line_naming_it_and_a_secret_is_never_shown(monkeypatch):
    # from_env reads the mapping it is given and nothing else: not this process's environment
    monkeypatch.setenv("AERIAL_DATA_ROOT", "/elsewhere")
    monkeypatch.setenv("AERIAL_SPARK_MASTER", "yarn")
    with pytest.raises(Exception, match=r"AERIAL_SPARK_PARALLELISM='many' is not a whole number"):
        AerialSettings.from_env({"AERIAL_SPARK_PARALLELISM": "many"})
    with pytest.raises(Exception, match=r"AERIAL_VERBOSE='sometimes' is not a yes/no value"):
        AerialSettings.from_env({"AERIAL_VERBOSE": "sometimes"})
    settings = AerialSettings.from_env({"AZURE_STORAGE_ACCOUNT_KEY": "c2VjcmV0a2V5", "AERIAL_SPARK_PARALLELISM": " 8 ",
                                        "AERIAL_JVM_ARCHIVE": "off", "AERIAL_DATA_ROOT": "  "})
    assert "c2VjcmV0a2V5" not in repr(settings) and settings.azure_account_key.get_secret_value() == "c2VjcmV0a2V5"
    assert settings.spark_parallelism == 8 and settings.jvm_archive is False and settings.data_root == ".aerial_data"
    assert settings.spark_master == "local[2]"
    assert AerialSettings().data_root == "/elsewhere" and AerialSettings().spark_master == "yarn"  # the process's own


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 250, len(lines)
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "no dates in README (CHANGELOG.md, benchmark results)"
    assert not re.search(r"\b[Rr]uns? \d+\b", text), "no run histories in README"
    assert not re.search(r"\b(I|my|me|we|our)\b", text), "no first person in README"
    for link in re.findall(r"\]\(((?:docs/|CHANGELOG)[^)#]*)", text):
        assert (REPO / link).exists(), link
    known = {env for env, _, _, _ in settings_fields()}
    for env in re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.M):
        assert env in known, env


def test_every_decision_record_is_in_the_nav_and_the_index():
    nav = (REPO / "mkdocs.yml").read_text()
    index = (REPO / "docs" / "decisions" / "index.md").read_text()
    records = sorted(p.name for p in (REPO / "docs" / "decisions").glob("0*.md"))
    assert len(records) >= 6
    for name in records:
        assert f"decisions/{name}" in nav and f"({name})" in index, name


@pytest.mark.slow
def test_make_docs_builds_the_site_strictly_from_a_clean_clone(tmp_path):
    """The committed tree (HEAD) builds with ``mkdocs build --strict`` and regenerating it changes nothing."""
    if not shutil.which("git") or not (REPO / ".git").exists():
        pytest.skip("needs the repository's git history")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=300)
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AERIAL_")}
    # this venv, taken as installed (-o: never remade, though the clone's pyproject.toml is newer than its stamp)
    done = subprocess.run(["make", "-o", f"{venv}/.installed", "docs", f"VENV={venv}"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (clone / "site" / "index.html").exists() and (clone / "site" / "reference" / "assets.html").exists()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout.strip() == "", f"make docs changed committed files: {status.stdout}"


@pytest.mark.slow
def test_make_docs_serve_serves_the_site_on_loopback_only():
    import signal

    port = free_port()
    venv = Path(sys.prefix)
    server = subprocess.Popen(["make", "-o", f"{venv}/.installed", "docs-serve", f"VENV={venv}", f"DOCS_PORT={port}"],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        page = answer(f"http://127.0.0.1:{port}/")
        assert "aerial_assets" in page, "the docs server did not answer on 127.0.0.1"
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only: no 0.0.0.0, no IPv6
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # make and mkdocs, by the process group this test started
        server.wait(timeout=30)
