"""Dependencies point one way: the models and their parts never import the engine, and no module
reads names off the package root (``codetr/__init__``, the public facade)."""
import ast
from pathlib import Path

import codetr

PACKAGE = Path(codetr.__file__).parent
BELOW_ENGINE = ["detr", "dense", "yolact", "assign", "nn", "ops", "backbones", "necks", "data"]


def module_package(path: Path) -> str:
    """The package a file's relative imports start from: codetr/detr/x.py -> 'codetr.detr'."""
    return ".".join(("codetr",) + path.relative_to(PACKAGE).parent.parts)


def imports(source: str, package: str) -> list[tuple[str, str | None]]:
    """(module, imported name or None) of every import statement, function-level ones included,
    relative imports resolved against ``package``."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            out += [(base, alias.name) for alias in node.names]
    return out


def is_engine(module: str, name: str | None) -> bool:
    full = f"{module}.{name}" if name else module
    return any(m == "codetr.engine" or m.startswith("codetr.engine.") for m in (module, full))


def test_import_resolution():
    found = imports("from ..engine import distributed\nfrom .. import engine\nimport codetr.engine.trainer\n"
                    "def f():\n    from .criterion import x\n", "codetr.dense")
    assert found == [("codetr.engine", "distributed"), ("codetr", "engine"), ("codetr.engine.trainer", None),
                     ("codetr.dense.criterion", "x")]
    assert all(is_engine(m, n) for m, n in found[:3]) and not is_engine(*found[3])


def test_models_and_their_parts_do_not_import_the_engine():
    files = [f for d in BELOW_ENGINE for f in sorted((PACKAGE / d).rglob("*.py"))]
    assert len(files) > 30
    offenders = [f"{f.relative_to(PACKAGE)}: {m}{'.' + n if n else ''}" for f in files
                 for m, n in imports(f.read_text(), module_package(f)) if is_engine(m, n)]
    assert not offenders, offenders


def test_no_module_reads_names_off_the_package_root():
    """``from codetr import X`` (or ``from .. import X`` reaching the root) only for submodules:
    names the root re-exports (``__version__``, ``create``) come from their own modules."""
    submodules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    files = [f for f in sorted(PACKAGE.rglob("*.py")) if f != PACKAGE / "__init__.py"]
    offenders = [f"{f.relative_to(PACKAGE)}: {n}" for f in files
                 for m, n in imports(f.read_text(), module_package(f)) if m == "codetr" and n not in submodules]
    assert not offenders, offenders
