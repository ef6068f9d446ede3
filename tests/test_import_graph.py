"""The package's import graph, read from the source with ``ast``: no cycle, and dependencies point down.

Every import counts, also those inside functions (a lazy import is still a dependency); only imports under
``if TYPE_CHECKING:`` are left out, since they never run. ``python tests/test_import_graph.py`` prints the
graph between the package's parts.
"""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "gatedattn"

# What each part may import (besides itself, errors and fileio, which every part may use).
ALLOWED = {
    "config": set(),
    "modeling": {"config"},
    "data": {"config"},
    "reporting": set(),
    "artifacts": {"config", "modeling", "data"},
    "evaluation": {"config", "modeling", "data", "artifacts", "reporting"},
    "analysis": {"config", "modeling", "data", "artifacts", "reporting"},
    # training runs the sink probes of analysis during training (train.probe_every); analysis never imports training
    "training": {"config", "modeling", "data", "artifacts", "reporting", "evaluation", "analysis", ROOT},
    "experiments": {"config", "modeling", "data", "artifacts", "reporting", "evaluation", "analysis", "training"},
}
LEAVES = {"errors", "fileio"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / ROOT).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[:len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module
                for alias in child.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in known and m != module}


def module_graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(m, p, set(mods)) for m, p in mods.items()}


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def part_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m, deps in graph.items():
        out.setdefault(part(m), set()).update(part(d) for d in deps if part(d) != part(m))
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert _cycle(module_graph()) is None


def test_no_import_cycle_between_parts():
    assert _cycle(part_graph(module_graph())) is None


def test_dependencies_point_down():
    wrong = []
    for m, deps in module_graph().items():
        if part(m) not in ALLOWED:
            continue  # the cli and the package root sit on top
        allowed = ALLOWED[part(m)] | LEAVES | {part(m)}
        wrong += [f"{m} -> {d}" for d in sorted(deps) if part(d) not in allowed]
    assert not wrong, wrong


def test_the_checker_sees_a_planted_cycle_and_a_wrong_edge(tmp_path):
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    graph = module_graph()
    assert "gatedattn.modeling.model" in graph["gatedattn.artifacts.checkpoints"]  # edges are found
    assert "gatedattn.data.tokenizer" in graph["gatedattn.artifacts.loading"]


def test_no_private_name_is_imported_across_parts():
    mods = _modules()
    wrong = []
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level and node.level > 1:
                wrong += [f"{m}: {a.name}" for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not wrong, wrong


if __name__ == "__main__":
    for name, deps in sorted(part_graph(module_graph()).items()):
        print(f"{name:12} -> {', '.join(sorted(deps)) or '(nothing)'}")
