"""The package's layers: every module of `perceiver_io` and `converters` sits in one layer, imports only
from its own layer or below (imports inside functions count), and the import graph has no cycle. The
torch-free and jax-free modules stay so.

One reference goes up by design: the task registry (layer 2) names each task's model class and pipeline by
import path, resolved on first use; `test_registry_import_paths_name_higher_layers` checks those paths."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LAYERS: dict[str, tuple[str, ...]] = {
    "foundation": ("perceiver_io.errors", "perceiver_io.atomic", "perceiver_io.cache", "perceiver_io.layout",
                   "converters.stages"),
    "specifications": ("perceiver_io.official_config", "perceiver_io.configs", "perceiver_io.mapping",
                       "perceiver_io.transformers_names", "perceiver_io.task_inputs", "perceiver_io.registry",
                       "perceiver_io.tokenizer"),
    "modules": ("perceiver_io.attention", "perceiver_io.conv", "perceiver_io.position_encoding", "perceiver_io.encoder",
                "perceiver_io.decoders", "perceiver_io.preprocessors", "perceiver_io.postprocessors",
                "perceiver_io.perceiver", "perceiver_io.inputs", "perceiver_io.placement"),
    "task models": ("perceiver_io.tasks", "perceiver_io.compiled"),
    "conversion": ("perceiver_io.checkpoint_file", "converters.haiku_pickle", "converters.convert", "converters.export",
                   "converters.synthetic", "converters.jax_reference", "converters.parity", "converters.comparison",
                   "converters.verify", "converters.transformers_import"),
    "user-facing": ("perceiver_io.serialization", "perceiver_io.hub", "perceiver_io.hf_hub", "perceiver_io.images", "perceiver_io.pipelines",
                    "perceiver_io.flow", "converters.cli", "perceiver_io", "perceiver_io.__main__", "converters"),
}
"""Bottom to top, each module by name; a package of SUBPACKAGES holds its submodules too."""

SUBPACKAGES = ("converters.jax_reference",)

TORCH_FREE = ("perceiver_io.registry", "perceiver_io.checkpoint_file", "perceiver_io.tokenizer", "perceiver_io.hub",
              "perceiver_io.hf_hub",
              "converters.convert", "converters.haiku_pickle", "converters.synthetic")
"""Importing these (and the foundation and specification layers) loads neither torch nor jax: conversion
needs numpy only."""


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the two packages by dotted name (a package by its own name)."""
    modules = {}
    for package in ("perceiver_io", "converters"):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project's modules it imports, anywhere in its source. `from p import x` names the module
    p.x where x is one, and p itself for any name that is not (a package's own attribute)."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                names = {f"{module}.{alias.name}" for alias in node.names}
                imported.update(names & set(files))
                if names - set(files):
                    imported.add(module)
        graph[name] = {module for module in imported if module in files and module != name}
    return graph


def layer_of(module: str) -> int:
    for index, members in enumerate(LAYERS.values()):
        if any(module == member or (member in SUBPACKAGES and module.startswith(f"{member}.")) for member in members):
            return index
    raise KeyError(module)


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    names = list(LAYERS)
    return sorted(f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})"
                  for module, targets in graph.items() for target in targets if layer_of(target) > layer_of(module))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each module that lies on one (depth-first search)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_module_has_a_layer():
    unplaced = []
    for module in module_files():
        try:
            layer_of(module)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"place these modules in a layer of tests/test_layers.py LAYERS: {unplaced}"


def test_no_layer_imports_a_higher_one():
    violations = upward_imports(import_graph())
    assert not violations, "\n".join(violations)


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "\n".join(" -> ".join(cycle) for cycle in found)


def external_imports(path: Path) -> set[str]:
    """The top-level names of the packages a source file imports from outside the project."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return imported - {"perceiver_io", "converters"}


def reachable(graph: dict[str, set[str]], module: str) -> set[str]:
    """`module` and every project module it imports, directly or through others."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(graph[current])
    return seen


def test_the_port_reaches_no_jax():
    """No module of `perceiver_io` imports jax or haiku, itself or through any module it imports; but
    `python -m perceiver_io`, which is the command line (whose verify runs JAX when asked)."""
    graph, files = import_graph(), module_files()
    for name in graph:
        if name.startswith("perceiver_io") and name != "perceiver_io.__main__":
            found = {f"{module} imports {package}" for module in reachable(graph, name)
                     for package in external_imports(files[module]) & {"jax", "jaxlib", "haiku"}}
            assert not found, f"{name} reaches jax: {sorted(found)}"


def test_registry_import_paths_name_higher_layers():
    """Each task's model class and pipeline path names an existing object of the task-model layer or above."""
    from perceiver_io.registry import TASKS

    for task, spec in TASKS.items():
        for path in filter(None, (spec.model, spec.pipeline)):
            module, _, name = path.partition(":")
            assert layer_of(module) >= list(LAYERS).index("task models"), f"{task}: {path}"
            assert hasattr(importlib.import_module(module), name), f"{task}: {path} does not exist"


def test_the_checks_see_a_violation(tmp_path):
    """The checks above fail on a tree where a lower layer imports a higher one, through a cycle hidden
    inside a function; every form of import is resolved to the module it loads."""
    for package in ("perceiver_io", "converters", "converters/jax_reference"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    sources = {
        "perceiver_io/configs.py": "def f():\n    from converters.convert import g\n",
        "perceiver_io/errors.py": "from . import load\n",  # a lazy attribute of the package: the package
        "perceiver_io/layout.py": "from . import errors, load\n",  # a submodule and the package
        "perceiver_io/cache.py": "import perceiver_io.tasks as tasks\n",
        "perceiver_io/tasks.py": "",
        "converters/convert.py": "from perceiver_io import configs\n",
        "converters/jax_reference/scope.py": "from .. import stages\nfrom ..convert import g\n",
        "converters/stages.py": "",
    }
    for name, source in sources.items():
        (tmp_path / name).write_text(source)
    graph = import_graph(tmp_path)
    assert graph["perceiver_io.errors"] == {"perceiver_io"}
    assert graph["perceiver_io.layout"] == {"perceiver_io", "perceiver_io.errors"}
    assert graph["converters.jax_reference.scope"] == {"converters.stages", "converters.convert"}
    assert upward_imports(graph) == [
        "perceiver_io.cache (foundation) imports perceiver_io.tasks (task models)",
        "perceiver_io.configs (specifications) imports converters.convert (conversion)",
        "perceiver_io.errors (foundation) imports perceiver_io (user-facing)",
        "perceiver_io.layout (foundation) imports perceiver_io (user-facing)",
    ]
    assert cycles(graph) == [["converters.convert", "perceiver_io.configs", "converters.convert"]]


@pytest.mark.parametrize("layer", ["foundation", "specifications", "torch-free"])
def test_torch_free_modules_load_neither_torch_nor_jax(layer):
    modules = TORCH_FREE if layer == "torch-free" else LAYERS[layer]
    code = (f"import sys\nfor name in {list(modules)!r}:\n    __import__(name)\n"
            "print(sorted(m for m in ('torch', 'jax', 'haiku') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", f"{layer}: importing {modules} loads {result.stdout.strip()}"
