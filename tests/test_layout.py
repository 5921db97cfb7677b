"""The import rules of the design: capture/ is the ground floor, sans-IO modules never import trio.

Every import counts, wherever it is written: at the top of a module, inside a function, under
``if TYPE_CHECKING:`` (for the folder rules), through ``importlib.import_module`` or ``__import__``
with a literal name, and through a lazy export (a module ``__getattr__`` importing modules that a
string table names). A sans-IO module must not name trio, nor reach it through any chain of runtime
imports, the ``__init__`` of each package on the way included (Python runs those first). Each source
file is parsed with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "wirecap"
ROOT = PACKAGE.parent
SANS_IO = [
    "capture/records.py",
    "capture/frames.py",
    "capture/decoding.py",
    "capture/index.py",
    "capture/redact.py",
    "proxy/config.py",
    "proxy/routing.py",
    "proxy/console.py",
    "faults/__init__.py",
    "faults/spec.py",
    "faults/plan.py",
    "faults/answers.py",
    "faults/rewrite.py",
    "faults/body.py",
    "replay/wire.py",
    "faults/additions.py",
]
#: Folder -> the other wirecap folders its modules may import.
RULES: dict[str, set[str]] = {
    "capture": set(),
    "llm": set(),
    "faults": {"llm"},
    "proxy": {"capture", "faults"},
    "inspect": {"capture", "llm"},
    "interop": {"capture", "llm"},
    "replay": {"capture", "llm", "inspect", "proxy", "faults"},
    "ui": {"capture", "llm", "inspect", "interop"},
    "fleet": {"capture"},
}
#: Modules at the top of the package: cli.py imports everything, ``python -m wirecap`` runs the
#: command line; any other (``wirecap/__init__.py``, run by every import) imports no folder.
TOP_RULES: dict[str, set[str] | None] = {"cli": None, "__main__": {"cli"}}


@dataclasses.dataclass(frozen=True)
class Import:
    """A module that a source file imports, and how."""

    module: str  # absolute dotted name
    line: int
    how: str  # "import", "from ... import", "importlib.import_module() through a string table", ...
    runtime: bool = True  # False under `if TYPE_CHECKING:`

    def describe(self) -> str:
        return f"line {self.line}: {self.how} {self.module}"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_of(module: str) -> Path | None:
    """The file of a wirecap module; None when there is none (e.g. a name inside a module)."""
    base = ROOT.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def literal_prefix(node: ast.expr) -> str:
    """The text an expression certainly starts with: ``f"wirecap.proxy.{home}"`` -> "wirecap.proxy."."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return literal_prefix(node.values[0])
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return literal_prefix(node.left)
    return ""


class ImportFinder(ast.NodeVisitor):
    """Collects the imports of one module, in every statement and every function."""

    def __init__(self, path: Path) -> None:
        name = module_name(path)
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.found: list[Import] = []
        self.unresolved: list[str] = []  # dynamic imports whose module cannot be told
        self.runtime = True
        self.depth = 0  # functions entered
        self.tables: dict[str, int] = {}  # strings in dict, list, tuple and set literals -> line
        self.dynamic: list[tuple[ast.expr, int, int]] = []  # non-literal import_module calls
        self.lazy_exports = False  # a module-level __getattr__

    def add(self, module: str, line: int, how: str, depth: int | None = None) -> None:
        """Record an import; ``depth`` is the function nesting where it is written (default: here)."""
        if (self.depth if depth is None else depth) > 0:
            how += " inside a function"
        if not self.runtime:
            how += " under TYPE_CHECKING"
        self.found.append(Import(module, line, how, self.runtime))

    def absolute(self, name: str, level: int) -> str:
        """``name`` of a relative import ``level`` dots deep, made absolute."""
        if not level:
            return name
        base = self.package.split(".")
        base = base[: len(base) - level + 1]
        return ".".join([*base, name] if name else base)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if not (
            (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
            or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        ):
            self.generic_visit(node)
            return
        self.runtime, runtime = False, self.runtime
        for statement in node.body:
            self.visit(statement)
        self.runtime = runtime
        for statement in node.orelse:
            self.visit(statement)

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        if node.name == "__getattr__" and not self.depth:
            self.lazy_exports = True
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(alias.name, node.lineno, "import")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self.absolute(node.module or "", node.level)
        for alias in node.names:
            sub = f"{base}.{alias.name}"  # `from wirecap import cli` imports wirecap.cli
            self.add(sub if source_of(sub) else base, node.lineno, "from ... import")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                dots = len(arg.value) - len(arg.value.lstrip("."))
                self.add(self.absolute(arg.value[dots:], dots), node.lineno, f"{name}()")
            else:
                self.dynamic.append((arg, node.lineno, self.depth))
        self.generic_visit(node)

    def visit_table(self, node: ast.Dict | ast.List | ast.Tuple | ast.Set) -> None:
        items = [*node.keys, *node.values] if isinstance(node, ast.Dict) else node.elts
        for item in items:
            if isinstance(item, ast.Constant) and isinstance(item.value, str):
                self.tables.setdefault(item.value, item.lineno)
        self.generic_visit(node)

    visit_Dict = visit_List = visit_Tuple = visit_Set = visit_table

    def finish(self) -> None:
        """Resolve what only the whole module tells: the modules that a non-literal
        ``import_module`` call or a lazy ``__getattr__`` reaches through the string tables."""
        for arg, line, depth in self.dynamic:
            prefix = literal_prefix(arg)
            if prefix.startswith("."):
                dots = len(prefix) - len(prefix.lstrip("."))
                prefix = f"{self.absolute('', dots)}.{prefix[dots:]}"
            reached = {prefix + s for s in self.tables if source_of(prefix + s)}
            for module in sorted(reached):
                self.add(module, line, "import_module() through a string table", depth)
            if not reached:
                self.unresolved.append(f"line {line}: import_module({ast.unparse(arg)})")
        if self.lazy_exports:
            for text, line in sorted(self.tables.items()):
                if text.startswith("wirecap.") and source_of(text):
                    self.add(text, line, "a lazy export (module __getattr__) of")


@dataclasses.dataclass(frozen=True)
class Module:
    imports: tuple[Import, ...]
    unresolved: tuple[str, ...]


@functools.cache
def parse(path: Path) -> Module:
    finder = ImportFinder(path)
    finder.visit(ast.parse(path.read_text(), str(path)))
    finder.finish()
    return Module(tuple(finder.found), tuple(finder.unresolved))


def all_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def folder_of(path: Path) -> str:
    """The folder under wirecap/ a module is in, or the name of a top-level module."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def runs(path: Path) -> list[tuple[str, Path]]:
    """The wirecap files that importing ``path`` runs, each with the step that runs it: the
    ``__init__`` of each package it is in (Python runs those first), then its runtime imports."""
    steps = []
    parts = module_name(path).split(".")
    for i in range(1, len(parts)):
        init = source_of(".".join(parts[:i]))
        if init is not None:
            steps.append((f"is in the package {'.'.join(parts[:i])}", init))
    for imp in parse(path).imports:
        target = source_of(imp.module) if imp.runtime else None
        if target is not None and target != path:
            steps.append((imp.describe(), target))
    return steps


def trio_chain(start: Path) -> list[str] | None:
    """How importing ``start`` reaches trio, one step a line; None when it does not. ``start``
    itself may not import trio even for type checking."""
    seen = {start}
    queue: list[tuple[Path, list[str]]] = [(start, [])]
    while queue:
        path, chain = queue.pop(0)
        for imp in parse(path).imports:
            if (imp.runtime or path == start) and imp.module.split(".")[0] == "trio":
                return [*chain, f"{relative(path)} {imp.describe()}"]
        for step, target in runs(path):
            if target not in seen:
                seen.add(target)
                queue.append((target, [*chain, f"{relative(path)} {step}"]))
    return None


@pytest.mark.parametrize("module", SANS_IO)
def test_sans_io_modules_do_not_import_trio(module):
    path = PACKAGE / module
    assert path.is_file(), f"sans-IO module wirecap/{module} is gone: update SANS_IO"
    chain = trio_chain(path)
    assert chain is None, (
        f"wirecap/{module} is sans-IO, so importing it must not import trio; it does:\n    "
        + "\n -> ".join(chain)
    )


def violations(path: Path) -> list[str]:
    """Each import of ``path`` that breaks a rule, with the rule."""
    folder = folder_of(path)
    if folder in RULES:
        allowed: set[str] | None = RULES[folder] | {folder}
        others = ", ".join(f"{f}/" for f in sorted(RULES[folder]))
        rule = f"{folder}/ may import {f'only {others}' if others else 'no other wirecap folder'}"
    else:
        allowed = TOP_RULES.get(folder, set())
        rule = f"wirecap/{path.name} may import {', '.join(sorted(allowed or ())) or 'no wirecap folder'}"
    module = parse(path)
    found = [
        f"{relative(path)} {u}: a dynamic import this test cannot follow" for u in module.unresolved
    ]
    for imp in module.imports:
        parts = imp.module.split(".")
        if parts[0] != "wirecap" or len(parts) < 2:
            continue
        if parts[1] == "cli" and folder not in ("cli", "__main__"):
            found.append(f"{relative(path)} {imp.describe()}: nothing imports cli.py")
        elif allowed is not None and parts[1] in RULES and parts[1] not in allowed:
            found.append(f"{relative(path)} {imp.describe()}: {rule}")
    return found


@pytest.mark.parametrize("folder", [*RULES, *TOP_RULES, "__init__"])
def test_package_import_rules(folder):
    broken = [v for p in all_modules() if folder_of(p) == folder for v in violations(p)]
    assert not broken, "import rule broken:\n    " + "\n    ".join(broken)


def test_every_folder_has_a_rule():
    folders = {folder_of(p) for p in all_modules() if p.parent != PACKAGE}
    assert folders <= RULES.keys(), (
        f"wirecap folders without an import rule: {folders - RULES.keys()}"
    )
