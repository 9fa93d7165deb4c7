"""The package map at the top of docs/design.md is the rule: every module sits in one room,
and a room imports only the rooms its row allows. The test reads the map and the code's
imports (including those inside functions and under TYPE_CHECKING), so the two cannot drift."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "hopscotch_export"
DESIGN = ROOT / "docs" / "design.md"


def read_map() -> tuple[dict[str, list[str]], dict[str, set[str] | None]]:
    """Room -> its members (``name`` or ``folder/``), and room -> the rooms it may import
    (None: anything)."""
    members: dict[str, list[str]] = {}
    allowed: dict[str, set[str] | None] = {}
    section = DESIGN.read_text().split("\n## ", 2)[1]
    assert section.startswith("Package map"), "docs/design.md must open with '## Package map'"
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("room", "") or set(cells[0]) <= set("-: "):
            continue
        room, modules, _job, may = cells
        members[room] = re.findall(r"`([\w/.]+)`", modules)
        allowed[room] = None if may == "anything" else {r.strip() for r in may.split(",") if r.strip() != "nothing"}
    return members, allowed


def module_names() -> list[str]:
    """Every module, dotted and relative to the package; a subpackage by its folder's name."""
    names = (".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py"))
    return sorted(n if n == "__init__" else n.removesuffix(".__init__") for n in names)


def room_of(module: str, members: dict[str, list[str]]) -> str:
    """The room holding ``module`` (dotted, relative to the package): the room naming it, or
    the folder holding it; a module named on its own row wins over its folder's row."""
    found = [
        (len(name), room)
        for room, names in members.items()
        for name in names
        if module == name or (name.endswith("/") and (module + ".").startswith(name[:-1].replace("/", ".") + "."))
    ]
    best = [room for size, room in found if size == max(found)[0]]
    assert len(best) == 1, f"hopscotch_export.{module} is in {len(best)} rooms of the map: {best}"
    return best[0]


def imports_of(module: str) -> set[str]:
    """The package modules ``module`` imports, dotted and relative to the package."""
    path = PACKAGE.joinpath(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    return imports_in(path.read_text(), [p for p in package if p]) - {module}


def imports_in(source: str, package: list[str]) -> set[str]:
    """The package modules a module in ``package`` (dotted parts) imports, anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] + ([node.module] if node.module else [])
            elif node.module and node.module.split(".")[0] == "hopscotch_export":
                base = node.module.split(".")[1:]
            else:
                continue
            names = {".".join(base + [a.name]) for a in node.names}
            found |= {n for n in names if _exists(n)} or {".".join(base) or "__init__"}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("hopscotch_export.") for a in node.names if a.name.startswith("hopscotch_export.")}
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def test_every_module_is_on_the_map() -> None:
    members, _ = read_map()
    for module in module_names():
        room_of(module, members)


def test_no_room_imports_what_the_map_forbids() -> None:
    members, allowed = read_map()
    broken = []
    for module in module_names():
        room = room_of(module, members)
        may = allowed[room]
        for target in sorted(imports_of(module)):
            other = room_of(target, members)
            if may is not None and other != room and other not in may:
                broken.append(f"{module} ({room}) imports {target} ({other})")
    assert not broken, "imports the map in docs/design.md forbids:\n" + "\n".join(broken)


def test_the_check_sees_imports_inside_functions() -> None:
    """An import deferred into a function (or under TYPE_CHECKING) still counts."""
    members, allowed = read_map()
    source = "import typing\nif typing.TYPE_CHECKING:\n    from ..plan import Plan\ndef f():\n    from ..verify import report\n"
    found = imports_in(source, ["search"])
    assert found == {"plan", "verify.report"}
    assert room_of("verify.report", members) not in (allowed[room_of("search.run", members)] or set())
