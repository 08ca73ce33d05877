"""The package layout of rlhfkit, checked by reading the source with ``ast`` (nothing is imported).

Checks: no import cycles between modules; no module imports one of a higher layer (see LAYERS);
only the entry points import ``rlhfkit.train``; no source file over MAX_FILE_LINES lines; no
function over MAX_FUNCTION_LINES lines (except the declarative tables in LONG_FUNCTIONS_ALLOWED).
Imports inside functions count as dependencies; imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "rlhfkit"
PACKAGE_DIR = SOURCE_ROOT / PACKAGE

# The layers of the package, lowest first. A module may import modules of its own layer or of a
# lower one, never of a higher one. Names are the first part after ``rlhfkit.`` (a top-level module
# or a subpackage); ``__init__`` is the package's own ``rlhfkit/__init__.py``.
LAYERS: list[tuple[str, ...]] = [
    ("__init__", "console", "config", "config_parse", "recipes"),  # 0: the version, terminal output, settings
    ("data",),  # 1: reading, checking and writing training records; chat encoding
    ("losses", "rl_losses", "models"),  # 2: the math (losses uses data.chat's IGNORE_INDEX); models and tokenizers
    ("rewards",),  # 3: reward functions (a reward model from models, or a Python function)
    ("rollout",),  # 4: sampling answers and their log-probabilities
    ("judge",),  # 5: AI judges and Constitutional AI revisions
    ("feedback",),  # 6: collecting human feedback (labelling app, AI-assisted labels)
    ("evaluate",),  # 7: win rates, reports, people's agreement (reads feedback's database)
    ("train",),  # 8: the training stages: SFT, reward model, PPO, DPO, ...
    ("serve", "iterate", "demo", "cli", "__main__"),  # 9: entry points and whole pipelines
]

TRAIN_IMPORTERS_ALLOWED = ("cli", "iterate", "demo", "train")
"""The only parts of the package that may import ``rlhfkit.train`` (modules and packages by these names)."""

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

LONG_FUNCTIONS_ALLOWED = {
    # the alembic migration that creates the feedback database: one declarative table of columns
    "feedback/migrations/versions/0001_initial.py::upgrade",
}
"""Functions allowed over MAX_FUNCTION_LINES, as ``PATH::QUALIFIED_NAME`` (PATH relative to rlhfkit/)."""


@dataclass(frozen=True)
class Import:
    """One import statement of ``importer`` that names the rlhfkit module ``imported``."""

    importer: str
    imported: str
    path: str  # the importer's file, relative to src/
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.importer} imports {self.imported}"


def module_name(path: Path) -> str:
    """The dotted module name of a source file: ``rlhfkit/data/__init__.py`` is ``rlhfkit.data``."""
    parts = list(path.relative_to(SOURCE_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def source_files() -> dict[str, Path]:
    """Every Python file of the package, by module name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


@cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def is_type_checking_block(node: ast.AST) -> bool:
    """Whether ``node`` is ``if TYPE_CHECKING:`` (or ``if typing.TYPE_CHECKING:``)."""
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(nodes: Iterable[ast.AST]) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``nodes``, at any depth, except those in TYPE_CHECKING blocks."""
    found = []
    for node in nodes:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif is_type_checking_block(node):
            found.extend(import_nodes(node.orelse))
        else:
            found.extend(import_nodes(ast.iter_child_nodes(node)))
    return found


def known_module(dotted: str) -> str | None:
    """The longest prefix of ``dotted`` that is a module of the package (None if there is none)."""
    parts = dotted.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in source_files():
            return candidate
        parts.pop()
    return None


def imported_modules(importer: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The package's modules that one import statement of module ``importer`` loads."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: resolve against the importer's package
            is_package = source_files()[importer].name == "__init__.py"
            base = importer.split(".")
            if not is_package:
                base.pop()
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        # ``from A import x`` loads module A.x when there is one, else takes the name x from A
        targets = [f"{origin}.{alias.name}" for alias in node.names]
    modules = [known_module(target) for target in targets if target.split(".")[0] == PACKAGE]
    return sorted({module for module in modules if module is not None and module != importer})


@cache
def all_imports() -> tuple[Import, ...]:
    """Every import between modules of the package."""
    found = []
    for importer, path in source_files().items():
        relative_path = str(path.relative_to(SOURCE_ROOT))
        for node in import_nodes([parsed(path)]):
            for imported in imported_modules(importer, node):
                found.append(Import(importer, imported, relative_path, node.lineno))
    return tuple(found)


def import_graph() -> dict[str, dict[str, Import]]:
    """For each module, the modules it imports, each with its first import statement."""
    graph: dict[str, dict[str, Import]] = {module: {} for module in source_files()}
    for edge in all_imports():
        graph[edge.importer].setdefault(edge.imported, edge)
    return graph


def strongly_connected_components(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's algorithm, without recursion: the groups of modules that reach each other."""
    index_of: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index_of:
            continue
        work = [(root, iter(graph[root]))]
        index_of[root] = lowest[root] = len(index_of)
        stack.append(root)
        on_stack.add(root)
        while work:
            module, successors = work[-1]
            successor = next(successors, None)
            if successor is not None:
                if successor not in index_of:
                    index_of[successor] = lowest[successor] = len(index_of)
                    stack.append(successor)
                    on_stack.add(successor)
                    work.append((successor, iter(graph[successor])))
                elif successor in on_stack:
                    lowest[module] = min(lowest[module], index_of[successor])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                lowest[parent] = min(lowest[parent], lowest[module])
            if lowest[module] == index_of[module]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == module:
                        break
                components.append(sorted(component))
    return components


def cycle_through(start: str, members: set[str], graph: dict[str, dict[str, Import]]) -> list[Import]:
    """A shortest import cycle from ``start`` back to itself, staying inside ``members``."""
    came_from: dict[str, Import] = {}
    frontier = [start]
    while frontier:
        following = []
        for module in frontier:
            for successor, edge in graph[module].items():
                if successor not in members or successor in came_from:
                    continue
                came_from[successor] = edge
                if successor == start:
                    path = [edge]
                    while path[0].importer != start:
                        path.insert(0, came_from[path[0].importer])
                    return path
                following.append(successor)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # cannot happen inside a component


def layer_of(module: str) -> int | None:
    """The index in LAYERS of a module's part of the package (None if LAYERS does not list it)."""
    parts = module.split(".")
    part = parts[1] if len(parts) > 1 else "__init__"
    for level, names in enumerate(LAYERS):
        if part in names:
            return level
    return None


def describe_layer(level: int) -> str:
    return f"layer {level} ({', '.join(LAYERS[level])})"


def is_in_part(module: str, part: str) -> bool:
    """Whether ``module`` is ``rlhfkit.PART`` or inside it."""
    return module == f"{PACKAGE}.{part}" or module.startswith(f"{PACKAGE}.{part}.")


def functions_with_qualified_names(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) for every def and async def under ``tree``, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + node.name
            yield name, node
            yield from functions_with_qualified_names(node, name + ".<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from functions_with_qualified_names(node, prefix + node.name + ".")
        else:
            yield from functions_with_qualified_names(node, prefix)


def own_line_count(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """A function's lines, from its ``def`` line to its last one, less the lines of the functions
    nested in it (those are measured on their own)."""
    nested_lines = set()
    for node in ast.walk(function):
        if node is not function and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            nested_lines.update(range(node.lineno, node.end_lineno + 1))
    return function.end_lineno - function.lineno + 1 - len(nested_lines)


# ---------------------------------------------------------------- the checks


def test_every_part_of_the_package_has_a_layer():
    unlisted = sorted({module for module in source_files() if layer_of(module) is None})
    assert not unlisted, "modules whose part of the package is not in LAYERS (add it there):\n" + "\n".join(
        unlisted
    )


def test_no_import_cycles():
    graph = import_graph()
    cycles = []
    for component in strongly_connected_components(graph):
        if len(component) > 1:
            path = cycle_through(component[0], set(component), graph)
            steps = "\n".join(f"    {edge}" for edge in path)
            cycles.append(f"{' -> '.join([edge.importer for edge in path] + [component[0]])}\n{steps}")
    assert not cycles, "import cycles between modules of rlhfkit:\n" + "\n".join(cycles)


def test_no_module_imports_a_higher_layer():
    upward = []
    for edge in all_imports():
        importer_level, imported_level = layer_of(edge.importer), layer_of(edge.imported)
        if importer_level is not None and imported_level is not None and imported_level > importer_level:
            upward.append(
                f"{edge}: {describe_layer(importer_level)} imports {describe_layer(imported_level)}"
            )
    assert not upward, "imports of a higher layer (see LAYERS in tests/test_layout.py):\n" + "\n".join(upward)


def test_only_entry_points_import_train():
    train_importers = [
        str(edge)
        for edge in all_imports()
        if is_in_part(edge.imported, "train")
        and not any(is_in_part(edge.importer, part) for part in TRAIN_IMPORTERS_ALLOWED)
    ]
    allowed = ", ".join(f"{PACKAGE}.{part}" for part in TRAIN_IMPORTERS_ALLOWED)
    assert not train_importers, f"only {allowed} may import {PACKAGE}.train:\n" + "\n".join(train_importers)


def test_no_long_source_files():
    long_files = []
    for path in source_files().values():
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_FILE_LINES:
            long_files.append(f"{path.relative_to(SOURCE_ROOT)}: {lines} lines")
    assert not long_files, f"source files over {MAX_FILE_LINES} lines (split them):\n" + "\n".join(long_files)


def test_no_long_functions():
    long_functions = []
    for path in source_files().values():
        relative_path = path.relative_to(PACKAGE_DIR).as_posix()
        for name, node in functions_with_qualified_names(parsed(path)):
            lines = own_line_count(node)
            if lines > MAX_FUNCTION_LINES and f"{relative_path}::{name}" not in LONG_FUNCTIONS_ALLOWED:
                long_functions.append(f"{path.relative_to(SOURCE_ROOT)}:{node.lineno}: {name}: {lines} lines")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(
        long_functions
    )


def test_allowed_long_functions_exist():
    """Every LONG_FUNCTIONS_ALLOWED entry names a real function (so stale entries get removed)."""
    existing = {
        f"{path.relative_to(PACKAGE_DIR).as_posix()}::{name}"
        for path in source_files().values()
        for name, _ in functions_with_qualified_names(parsed(path))
    }
    stale = sorted(LONG_FUNCTIONS_ALLOWED - existing)
    assert not stale, "LONG_FUNCTIONS_ALLOWED names functions that do not exist:\n" + "\n".join(stale)
