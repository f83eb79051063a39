"""The package's seams: one parameter table for DAG and CLI, the DAG folder found by
configuration, gmm_core free of the pipeline, no import cycles inside emflow."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from emflow.airflow.environment import dags_folder
from emflow.run.params import DEFAULT_PARAMS, PARAMS, add_cli_options

REPO = Path(__file__).resolve().parents[3]


def test_cli_options_come_from_the_parameter_table():
    import argparse

    parser = argparse.ArgumentParser()
    add_cli_options(parser, n_components=8)
    args = parser.parse_args([])
    cli = [spec for spec in PARAMS if spec.cli]
    assert {spec.name for spec in cli} == set(vars(args))
    assert args.n_components == 8 and args.max_iter == DEFAULT_PARAMS["max_iter"]
    actions = {a.dest: a for a in parser._actions}
    assert tuple(actions["backend"].choices) == next(
        s.choices for s in PARAMS if s.name == "backend"
    )


def test_dags_folder_comes_from_configuration_or_the_package(tmp_path, monkeypatch):
    monkeypatch.delenv("EMFLOW_DAGS_FOLDER", raising=False)
    assert (dags_folder() / "gmm_retrain.py").is_file()  # a source checkout's dags/
    (tmp_path / "gmm_retrain.py").write_text("# elsewhere\n")
    monkeypatch.setenv("EMFLOW_DAGS_FOLDER", str(tmp_path))
    assert dags_folder() == tmp_path.resolve()
    monkeypatch.setenv("EMFLOW_DAGS_FOLDER", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="EMFLOW_DAGS_FOLDER"):
        dags_folder()
    # the wheel ships the DAG files inside the package, where dags_folder() looks next
    wheel = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    assert wheel["targets"]["wheel"]["force-include"]["dags"] == "emflow/_dags"


def test_gmm_core_and_validation_import_nothing_of_the_pipeline():
    code = (
        "import sys, gmm_core, validation, validation.drift, validation.quarantine; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('emflow', 'mlflow', 'airflow')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout
    assert out.strip() == "[]"


def _module_imports(path: Path, package_root: Path) -> set[str]:
    """Modules of ``emflow`` imported at the top level of ``path`` (not inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("emflow"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("emflow"))
    return found


def test_no_import_cycles_and_no_module_over_450_lines():
    for path in [*(REPO / "validation").rglob("*.py"), *(REPO / "dags").rglob("*.py")]:
        assert len(path.read_text().splitlines()) <= 470, f"{path} is over ~450 lines"
    root = REPO / "emflow"
    modules = {}
    for path in root.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
        assert len(path.read_text().splitlines()) <= 470, f"{path} is over ~450 lines"
    graph = {
        name: {m for m in _module_imports(path, root) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*trail, node, nxt]))
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


# which emflow packages each package may import (also inside functions): the arrows of
# docs/architecture.md point one way
ALLOWED = {
    "emflow.model": {"emflow.model", "emflow.records"},
    "emflow.registry": {"emflow.registry", "emflow.model", "emflow.config", "emflow.records"},
    "emflow.run": {
        "emflow.run",
        "emflow.model",
        "emflow.registry",
        "emflow.config",
        "emflow.records",
        "emflow.metrics",
    },
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_import_downwards_only(package):
    folder = REPO / package.replace(".", "/")
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module]
                if isinstance(node, ast.ImportFrom) and node.module
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            for name in names:
                if name.startswith("emflow."):
                    top = ".".join(name.split(".")[:2])
                    assert top in ALLOWED[package], f"{path.name} imports {name}"
