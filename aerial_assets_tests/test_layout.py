"""The package layout that keeps the architecture visible: Dagster only in ``aerial_assets.defs``."""

import ast
from pathlib import Path

import aerial_assets

PACKAGE = Path(aerial_assets.__file__).resolve().parent


def _imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_nothing_outside_defs_imports_dagster():
    outside = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "defs" not in p.parents]
    assert len(outside) > 30  # the walk really saw the logic modules
    offenders = sorted(str(p.relative_to(PACKAGE)) for p in outside
                       if {"dagster", "dagster_pyspark", "dagster_azure"} & _imported_roots(p))
    assert offenders == []


def test_every_asset_module_imports_dagster_only_from_defs():
    """The reverse holds too: the assets live in ``defs/assets``, one module per group."""
    groups = sorted(p.stem for p in (PACKAGE / "defs" / "assets").glob("*.py") if not p.stem.startswith("_"))
    assert groups == ["agreement", "backbones", "features", "maps", "raster_labels", "scoring", "tiles", "training"]
    assert all("dagster" in _imported_roots(PACKAGE / "defs" / "assets" / f"{g}.py") for g in groups)


def test_no_top_level_module_besides_errors_records_tables_and_settings():
    """Everything else sits in a subpackage named for its concern (these four are the contracts all of them share)."""
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert set(top) <= {"__init__.py", "errors.py", "records.py", "tables.py", "settings.py"}
    assert {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()} == {
        "backbones", "defs", "imagery", "maps", "safety", "serving", "spark", "storage", "tracking", "training"}


def test_the_served_model_ships_every_module_it_imports_and_nothing_of_spark_or_dagster():
    """The MLflow model carries ``pyfunc.CODE_FILES`` and nothing else of the package: each of them may import only
    the others and the model's pip requirements (a new import elsewhere would break serving outside this project)."""
    import sys

    from aerial_assets.serving.pyfunc import CODE_FILES

    shipped = {f"aerial_assets.{f.removesuffix('.py').removesuffix('/__init__').replace('/', '.')}"
               for f in CODE_FILES} | {"aerial_assets"}
    allowed = {"numpy", "pandas", "PIL", "onnxruntime", "tifffile", "mlflow", "pyarrow", "aerial_assets"}
    for relative in CODE_FILES:
        tree = ast.parse((PACKAGE / relative).read_text())
        roots = _imported_roots(PACKAGE / relative) - set(sys.stdlib_module_names) - {"__future__"}
        assert roots <= allowed, f"{relative} imports {roots - allowed}"
        ours = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(
            "aerial_assets")} | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
                                 if a.name.startswith("aerial_assets")}
        assert ours <= shipped, f"{relative} imports {ours - shipped}, which the model does not carry"


def test_a_dagster_home_from_before_the_move_is_pointed_at_the_new_modules(tmp_path):
    from aerial_assets.defs import run_guard

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("run_launcher:\n  module: aerial_assets.run_guard\n  class: AerialRunLauncher\n"
                                       "compute_logs:\n  module: aerial_assets.compute_logs\n")
    run_guard.install_instance_yaml(str(home))
    text = (home / "dagster.yaml").read_text()
    assert "module: aerial_assets.defs.run_guard\n" in text
    assert "module: aerial_assets.defs.compute_logs\n" in text
    run_guard.install_instance_yaml(str(home))  # idempotent
    assert (home / "dagster.yaml").read_text() == text
    own = tmp_path / "own_home"  # a DAGSTER_HOME the user made (make run with DAGSTER_HOME set)
    own.mkdir()
    (own / "dagster.yaml").write_text("compute_logs:\n  module: aerial_assets.compute_logs\n")
    from aerial_assets.defs.run import prepare_home

    prepare_home({"DAGSTER_HOME": str(own)})
    assert (own / "dagster.yaml").read_text() == "compute_logs:\n  module: aerial_assets.defs.compute_logs\n"
    assert hasattr(run_guard, "AerialRunLauncher")  # the class the yaml names, at its new module


#: The layers of the package, lowest first: a package may import its own layer and the ones below, never above. The
#: foundation (the contracts, input safety and the storage layer) is what every other package stands on.
LAYERS = (
    {"errors", "tables", "settings", "records", "safety", "storage"},
    {"imagery", "backbones"},
    {"spark"},
    {"training", "maps", "serving"},
    {"tracking"},
    {"defs"},
)


def _module_graph() -> dict[str, set[str]]:
    """Every module of the package -> the package's modules it imports, at the top or inside a function (a lazy
    import is a dependency too: it only moves the failure to run time)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["aerial_assets", *path.relative_to(PACKAGE).with_suffix("").parts]
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target not in (name, "aerial_assets"):
                    graph[name].add(target)
    return graph


def test_no_module_imports_itself_through_others():
    graph = _module_graph()
    assert len(graph) > 80
    cycles, done, path = [], set(), []

    def visit(module: str) -> None:
        path.append(module)
        for target in sorted(graph[module]):
            if target in path:
                cycles.append(path[path.index(target):] + [target])
            elif target not in done:
                visit(target)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    assert cycles == []


def test_no_package_imports_a_layer_above_its_own():
    layer = {package: i for i, packages in enumerate(LAYERS) for package in packages}
    graph = _module_graph()
    packages = {m.split(".")[1] for m in graph if m.count(".") >= 1}
    assert packages == set(layer), "every package (and top-level module) belongs to a layer"
    upward = sorted(f"{m} -> {t}" for m, targets in graph.items() for t in targets
                    if layer[t.split(".")[1]] > layer[m.split(".")[1]])
    assert upward == []


def test_private_dagster_modules_only_where_dagster_has_no_public_api():
    """``dagster._*`` breaks on upgrades. The one place left is the run launcher (``defs/run_guard.py``): Dagster
    exports no public base class, context or health result for a launcher that reports a dead run worker."""
    tests = PACKAGE.parent / "aerial_assets_tests"
    files = [*PACKAGE.rglob("*.py"), *tests.rglob("*.py"), *(PACKAGE.parent / "benchmarks").rglob("*.py")]
    private = sorted(str(p.relative_to(PACKAGE.parent)) for p in files
                     if any(root.startswith("dagster._") for root in _imported_modules(p)))
    assert private == ["aerial_assets/defs/run_guard.py"]


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names
