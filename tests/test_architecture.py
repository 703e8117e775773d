"""The package's structure (docs/architecture.md): imports flow one way, files keep to one job.

The import graph counts every import, at module level or inside a function alike, and an import of
``scalabl.a.b`` depends on ``scalabl.a`` too (Python runs the package's ``__init__`` first). The
root ``scalabl/__init__.py`` only re-exports lazily, so it is no dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "scalabl"
MAX_LINES = 420  # "about 400": one job per file
GROUND_FLOOR = ("scalabl.choices", "scalabl.bayesian")  # import nothing of scalabl but the enums


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    """The package module an imported name lives in (``scalabl.a.b.func`` -> ``scalabl.a.b``)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str) -> set[str]:
    """Every scalabl module ``module`` imports, anywhere in its file, with their parent packages (but
    its own: those are imported before it)."""
    path = MODULES[module]
    own = {module.rsplit(".", k)[0] for k in range(1, module.count(".") + 1)}
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            target = resolve(name)
            while target and target not in own:
                found.add(target)
                target = target.rpartition(".")[0]
    found.discard(module)
    return found


GRAPH = {m: imports_of(m) for m in MODULES if m != "scalabl"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_late_import_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_ground_floor_imports_nothing_above_it():
    for module in GROUND_FLOOR:
        assert GRAPH[module] <= {"scalabl.choices"}, module


def test_the_config_layer_needs_no_model_code():
    """Options are read without torch: config imports only choices, data and tasks of scalabl."""
    for module, deps in GRAPH.items():
        if module.startswith("scalabl.config"):
            assert deps <= {
                "scalabl.choices",
                "scalabl.data",
                "scalabl.qa",
                "scalabl.tasks",
                "scalabl.examples",
            } | {m for m in MODULES if m.startswith("scalabl.config")}, module


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_files_keep_to_one_job(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("import scalabl", ("torch", "peft", "bitsandbytes", "transformers")),
        ("import scalabl.cli; scalabl.cli.build_parser()", ("torch", "peft", "bitsandbytes")),
        # named targets: no peft (the default targets are peft's mapping, which imports it)
        (
            "from scalabl.cli import main; main(['plan', '--model', 'llama-2-7b', '--targets', 'q_proj,v_proj'])",
            ("peft", "bitsandbytes"),
        ),
        ("from scalabl import RunConfig; RunConfig()", ("torch", "peft", "bitsandbytes")),
        # the core imports no extra: the harness and Ray are imported by their own modules only
        (
            "import scalabl.runs, scalabl.bench, scalabl.export, scalabl.hub, scalabl.cli; scalabl.cli.build_parser()",
            ("lm_eval", "ray", "fastapi", "laplace", "lm_polygraph", "ivon"),
        ),
    ],
)
def test_start_up_imports_only_what_it_uses(code, absent):
    """``scalabl --help``, ``scalabl plan`` and the configs load no optional extra (nor torch for --help)."""
    probe = f"import sys; {code}; print('loaded:', [m for m in {absent!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "loaded: []"
