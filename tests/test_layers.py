"""The layer rule of docs/design.md ("Layers: what may import what"): a module imports only
modules of its own layer or lower ones, function-local imports included. The layers are read
from the design document's table, so the document and this test cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DESIGN = ROOT / "docs" / "design.md"


def layers() -> dict[str, int]:
    """``{module or package: layer}`` from the design document's table."""
    table = {}
    for line in DESIGN.read_text().splitlines():
        row = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if row:
            for name in re.findall(r"`(posttrain[\w.]*)`", row.group(2)):
                table[name] = int(row.group(1))
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """The layer of the longest table entry that is ``module`` or a package above it."""
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in table:
            return table[name]
    return None


def imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``posttrain`` import in a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] == "posttrain"]


def test_the_design_document_lists_every_module():
    table = layers()
    assert len(set(table.values())) >= 8, table
    modules = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in (ROOT / "posttrain").rglob("*.py")]
    assert [m for m in modules if layer_of(m, table) is None] == []


def test_no_module_imports_a_layer_above_its_own():
    table = layers()
    violations = []
    for path in sorted((ROOT / "posttrain").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        own = layer_of(module, table)
        for line, name in imports(path):
            target = layer_of(name, table)
            if target is None:  # `from posttrain import X`: X is a module below the package, or a name of it
                target = layer_of(name, {**table, "posttrain": table["posttrain.__init__"]})
            if target is not None and target > own:
                violations.append(f"{path.relative_to(ROOT)}:{line} (layer {own}) imports {name} (layer {target})")
    assert violations == []


def test_the_rule_catches_an_upward_import(tmp_path):
    # the check itself: a data module importing the loop is reported
    table = layers()
    assert layer_of("posttrain.data.collate", table) < layer_of("posttrain.train.loop", table)
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from posttrain.train.loop import Trainer\n")
    assert imports(probe) == [(2, "posttrain.train.loop.Trainer")]
