"""The Python files of a Transformers-native export (``trust_remote_code=True``), made from didi's own source.

``configuration_didi.py`` is :mod:`didi.interop.hf_remote.configuration_didi` as it is. ``modeling_didi.py`` is
:mod:`didi.interop.hf_remote.modeling_didi` with its imports of didi replaced by the source of the didi objects they
name and of every didi object those use in turn (:func:`copied`), each taken verbatim from its module, modules in
dependency order and names in source order, so that the network and the sampler a Transformers user runs are the
ones didi runs and cannot drift from them. Imports are those of the copied modules and of the template, kept where
the assembled file uses them.
"""
from __future__ import annotations

import ast
import builtins
import importlib
import importlib.util
import sys
from pathlib import Path

from ..version import __version__

TEMPLATES = Path(__file__).with_name("hf_remote")
CONFIGURATION_FILE, MODELING_FILE = "configuration_didi.py", "modeling_didi.py"


def _module_source(name: str) -> tuple[str, ast.Module]:
    path = importlib.import_module(name).__file__
    source = Path(path).read_text(encoding="utf-8")
    return source, ast.parse(source)


def _segment(source: str, node: ast.stmt) -> str:
    """The source of a top-level statement, decorators included."""
    lines = source.splitlines()
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "\n".join(lines[first - 1:node.end_lineno])


def _defines(node: ast.stmt, name: str) -> bool:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    return isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.target.id == name


def _definition(module: str, name: str) -> ast.stmt:
    node = next((n for n in _module_source(module)[1].body if _defines(n, name)), None)
    if node is None:
        raise LookupError(f"{module} defines no top-level {name!r} (the remote code copies definitions only)")
    return node


def copied_source(module: str, name: str) -> str:
    """The source of the top-level definition of ``name`` in ``module``, verbatim."""
    return _segment(_module_source(module)[0], _definition(module, name))


def _didi_imports(tree: ast.Module, package: str) -> dict[str, tuple[str, str]]:
    """Names a module imports from didi: bound name -> (absolute module, name there)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module != "__future__" and (
                node.level or (node.module or "").split(".")[0] == "didi"):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level \
                else node.module
            out.update({alias.asname or alias.name: (base, alias.name) for alias in node.names})
    return out


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def copied(roots: list[tuple[str, str]], provided: set[str] = frozenset()) -> list[tuple[str, list[str]]]:
    """The didi definitions that ``roots`` ((module, name) pairs) need, themselves included: every name a copied
    definition uses (annotations too) that its module defines or imports from didi, except names in ``provided``
    (bound by the template itself). Modules come after the modules they use; names in their module's order."""
    needed: dict[str, set[str]] = {}
    uses: dict[str, set[str]] = {}
    pending = list(roots)
    while pending:
        module, name = pending.pop()
        if name in needed.setdefault(module, set()):
            continue
        needed[module].add(name)
        _, tree = _module_source(module)
        own = {n for node in tree.body for n in _names_defined(node)}
        imported = _didi_imports(tree, importlib.import_module(module).__package__)
        for used in sorted(_names(_definition(module, name)) - provided):
            if used in own and used != name:
                pending.append((module, used))
            elif used in imported:
                pending.append(imported[used])
                uses.setdefault(module, set()).add(imported[used][0])
    order: list[str] = []

    def visit(module: str) -> None:
        if module not in order:
            for dependency in sorted(uses.get(module, ())):
                visit(dependency)
            order.append(module)

    for module in sorted(needed):
        visit(module)
    return [(m, [n for node in _module_source(m)[1].body for n in _names_defined(node) if n in needed[m]])
            for m in order]


def _names_defined(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        return [node.name]
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
        return [node.target.id]
    return []


def _imports(tree: ast.Module, *, level: int = 0) -> list[ast.stmt]:
    """Top-level imports at exactly ``level`` (0: absolute, didi's excluded; 1: the template's sibling file)."""
    return [n for n in tree.body if isinstance(n, ast.Import) and level == 0
            or isinstance(n, ast.ImportFrom) and n.level == level and n.module != "__future__"
            and not (level == 0 and (n.module or "").split(".")[0] == "didi")]


def _bound(alias: ast.alias) -> str:
    return alias.asname or alias.name.split(".")[0]


def _import_lines(statements: list[ast.stmt], used: set[str]) -> list[str]:
    """The imports of ``statements`` that bind a name in ``used``, merged per module: stdlib, third party, local."""
    plain: set[str] = set()
    from_names: dict[tuple[int, str], set[str]] = {}
    for node in statements:
        for alias in node.names:
            if _bound(alias) not in used:
                continue
            text = alias.name + (f" as {alias.asname}" if alias.asname else "")
            if isinstance(node, ast.Import):
                plain.add(text)
            else:
                from_names.setdefault((node.level, node.module or ""), set()).add(text)

    def group(module: str, level: int) -> int:
        return 2 if level else 0 if module.split(".")[0] in sys.stdlib_module_names else 1

    entries = [(group(m, 0), 0, m, f"import {m}") for m in plain]
    entries += [(group(m, lvl), 1, m, f"from {'.' * lvl}{m} import {', '.join(sorted(names))}")
                for (lvl, m), names in from_names.items()]
    lines, previous = [], None
    for section, _, _, line in sorted(entries):
        if previous is not None and section != previous:
            lines.append("")
        lines.append(line)
        previous = section
    return lines


def _template() -> tuple[ast.Module, str, list[tuple[str, str]], set[str]]:
    """The modeling template: its tree, its own code (after the imports), the didi objects it imports and the
    names it binds itself."""
    template = (TEMPLATES / MODELING_FILE).read_text(encoding="utf-8")
    tree = ast.parse(template)
    last_import = max(n.end_lineno for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))
    own = "\n".join(template.splitlines()[last_import:]).strip("\n")
    roots = [(m, n) for m, n in _didi_imports(tree, __package__ + ".hf_remote").values()
             if not m.startswith(__package__ + ".hf_remote")]  # not its sibling configuration_didi
    provided = {_bound(a) for n in _imports(tree) + _imports(tree, level=1) for a in n.names}
    provided |= {n for node in tree.body for n in _names_defined(node)}
    return tree, own, roots, provided


def remote_objects() -> list[tuple[str, list[str]]]:
    """The didi definitions copied into ``modeling_didi.py``, by module (:func:`copied` of the template's imports)."""
    _, _, roots, provided = _template()
    return copied(roots, provided)


def modeling_source() -> str:
    """``modeling_didi.py`` of an export: the template's docstring, the imports, the copied didi source, the
    template's own classes."""
    tree, own, _, _ = _template()
    sections, imports = [], _imports(tree) + _imports(tree, level=1)
    for module, names in remote_objects():
        imports += _imports(_module_source(module)[1])
        body = "\n\n\n".join(copied_source(module, name) for name in names)
        sections.append(f"# {'-' * 76}\n# {module} (verbatim)\n\n{body}")
    sections.append(f"# {'-' * 76}\n# Transformers classes (didi.interop.hf_remote.modeling_didi)\n\n{own}")
    body = "\n\n\n".join(sections)
    used = _names(ast.parse(body)) - set(dir(builtins))
    docstring = ast.get_docstring(tree, clean=False)
    header = (f'"""{docstring}\nWritten by didi {__version__} (`didi export`); regenerated by every export, do not '
              'edit.\n"""')
    return "\n".join([header, "from __future__ import annotations", "", *_import_lines(imports, used), "",
                      body, ""])


def write_remote_code(directory: Path) -> list[Path]:
    """Write ``configuration_didi.py`` and ``modeling_didi.py`` into ``directory``."""
    files = {CONFIGURATION_FILE: (TEMPLATES / CONFIGURATION_FILE).read_text(encoding="utf-8"),
             MODELING_FILE: modeling_source()}
    for name, text in files.items():
        (Path(directory) / name).write_text(text, encoding="utf-8")
    return [Path(directory) / name for name in files]
