"""Read an mmcv 1.x config (a ``.py`` file, or the text an mmdet 2.x checkpoint carries in
``meta['config']``) WITHOUT executing it.

The text is parsed with ``ast`` and only a data subset is evaluated:

- literals (str, int, float, bool, None), list / tuple / dict displays (``**x`` in a dict too);
- calls of ``dict``, ``list``, ``tuple`` and ``range`` (int arguments) with evaluated arguments,
  ``**x`` keywords included (``dict(type='Normalize', **img_norm_cfg)``);
- names bound by earlier top-level ``name = ...`` statements of the same file
  (``loss_weight=1.0*num_dec_layer*lambda_2``);
- ``+ - * / // %`` on numbers, unary ``-`` / ``+`` on numbers, ``+`` joining two str, two lists
  or two tuples (``list(range(0, 3)) + list(range(4, 7))``);
- indexing an evaluated dict / list / tuple with an evaluated key (``img_norm_cfg['mean']``);
- ``_base_ = 'x.py'`` or a list of such paths, relative to the file, merged as mmcv does: the
  bases may not share a top-level key, then the child overrides them key by key, recursing into
  dicts, except where the child's dict says ``_delete_=True`` (it then replaces the base's).

Everything else (imports, attribute access, other calls, lambdas, comprehensions, f-strings,
``**`` powers, dunder names such as ``__import__``, control flow) raises a one-line
``ValueError`` naming the line and the construct, before anything could run: nothing is ever
executed, so the refusal is the whole safety argument. The official Co-DETR configs use no
comprehension and no ``{{_base_.xxx}}`` substitution; both are refused (the latter parses as a
set display).

The result is plain data as mmcv's JSON dump (and the Co-DETR fixtures' ``common['config']``)
holds it: dicts, lists (tuples become lists), str, numbers, bools and None. Names starting with
``__`` (mmcv's private variables) and ``_base_`` are dropped from it, as mmcv drops them.
"""
from __future__ import annotations

import ast
import operator
from pathlib import Path
from typing import Any, Callable

_BASE_KEY = "_base_"
_DELETE_KEY = "_delete_"
_CALLS: dict[str, Callable[..., Any]] = {"dict": dict, "list": list, "tuple": tuple, "range": range}
_MAX_ITEMS = 1_000_000   # longest str / list a config may build (bounds `a = a + a` loops)
_MAX_INT = 2 ** 63       # largest int magnitude (bounds `a = a * a` loops)
_NUMBER_OPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_CONSTRUCTS = {  # friendlier names for refused node types; the class name otherwise
    "Import": "import", "ImportFrom": "import", "Attribute": "attribute access", "Lambda": "lambda",
    "ListComp": "list comprehension", "DictComp": "dict comprehension", "SetComp": "set comprehension",
    "GeneratorExp": "generator expression", "JoinedStr": "f-string", "Set": "set display "
    "(mmcv's {{_base_.xxx}} substitution is not supported)", "FunctionDef": "function definition",
    "ClassDef": "class definition", "Starred": "* unpacking", "Compare": "comparison",
    "BoolOp": "and/or", "IfExp": "conditional expression", "AugAssign": "augmented assignment",
}


def load_config_text(text: str, filename: str | Path | None = None) -> dict:
    """The config dict of mmcv config ``text``. ``filename`` names it in errors and anchors
    relative ``_base_`` paths (text with ``_base_`` and no filename is refused)."""
    return _to_plain(_load(text, Path(filename) if filename is not None else None, ()))


def load_config_file(path: str | Path) -> dict:
    """The config dict of the mmcv ``.py`` config at ``path`` (see ``load_config_text``)."""
    path = Path(path)
    return _to_plain(_load(_read(path), path, ()))


def _read(path: Path) -> str:
    if path.suffix != ".py":
        raise ValueError(f"{path}: only .py mmcv configs are read")
    if not path.is_file():
        raise FileNotFoundError(f"mmcv config not found: {path}")
    return path.read_text(encoding="utf-8")


def _load(text: str, path: Path | None, chain: tuple[Path, ...]) -> dict:
    """Evaluate one file and merge it over its bases; ``chain`` holds the files that include it."""
    names = _Evaluator(str(path) if path else "<config text>").run(text)
    bases = names.pop(_BASE_KEY, [])
    own = {k: v for k, v in names.items() if not k.startswith("__")}
    merged: dict = {}
    for base in [bases] if isinstance(bases, str) else bases:
        merged = _merge_bases(merged, _load_base(base, path, chain), base)
    return _merge(own, merged, "")


def _load_base(base: Any, path: Path | None, chain: tuple[Path, ...]) -> dict:
    where = path or "<config text>"
    if not isinstance(base, str):
        raise ValueError(f"{where}: _base_ must be a path or a list of paths, got {base!r}")
    if path is None:
        raise ValueError(f"config text has _base_ = {base!r}; pass filename= to resolve it")
    base_path = (path.parent / base).resolve()
    if base_path in chain or base_path == path.resolve():
        raise ValueError(f"{where}: _base_ {base!r} includes itself (cycle through {base_path})")
    return _load(_read(base_path), base_path, chain + (path.resolve(),))


def _merge_bases(merged: dict, base: dict, name: str) -> dict:
    """Bases side by side: mmcv refuses a top-level key defined by two of them."""
    shared = sorted(merged.keys() & base.keys())
    if shared:
        raise ValueError(f"_base_ {name!r} redefines keys of an earlier base: {', '.join(shared)}")
    return {**merged, **base}


def _merge(child: dict, base: dict, prefix: str) -> dict:
    """``child`` over ``base``: dict values merge recursively unless the child's says
    ``_delete_=True``; any other value replaces the base's. ``_delete_`` keys are dropped."""
    out = dict(base)
    for key, value in child.items():
        if isinstance(value, dict):
            replace = value.get(_DELETE_KEY, False)
            value = {k: v for k, v in value.items() if k != _DELETE_KEY}
            if key in base and not replace:
                if not isinstance(base[key], dict):
                    raise ValueError(f"config key {prefix}{key}: a dict cannot be merged into the base's "
                                     f"{type(base[key]).__name__} (add _delete_=True to replace it)")
                value = _merge(value, base[key], f"{prefix}{key}.")
            else:
                value = _merge(value, {}, f"{prefix}{key}.")
        out[key] = value
    return out


def _to_plain(value: Any) -> Any:
    """Plain JSON-like data: tuples as lists, containers copied."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


class _Evaluator:
    """Evaluates the data subset of one config file's top-level statements."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.names: dict[str, Any] = {}

    def run(self, text: str) -> dict[str, Any]:
        """Top-level names bound by ``text``, in assignment order."""
        try:
            tree = ast.parse(text, filename=self.source)
        except SyntaxError as e:
            raise ValueError(f"{self.source}, line {e.lineno}: not valid Python ({e.msg})") from None
        try:
            for statement in tree.body:
                self.statement(statement)
        except RecursionError:
            raise ValueError(f"{self.source}: config nested too deeply") from None
        return self.names

    def refuse(self, node: ast.AST, what: str | None = None) -> ValueError:
        what = what or _CONSTRUCTS.get(type(node).__name__, type(node).__name__)
        return ValueError(f"{self.source}, line {getattr(node, 'lineno', '?')}: {what} is not allowed "
                          f"in a config (only data is read, nothing is executed)")

    def statement(self, node: ast.stmt) -> None:
        if isinstance(node, ast.Expr):
            value = self.expr(node.value)  # refuses code by its own name, e.g. a call of 'open'
            if isinstance(value, str):
                return  # a docstring
            raise self.refuse(node, "expression statement")
        if not isinstance(node, ast.Assign):
            name = type(node).__name__
            raise self.refuse(node, _CONSTRUCTS.get(name, f"{name} statement"))
        if len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise self.refuse(node, "assignment to anything but one plain name")
        name = node.targets[0].id
        if _is_dunder(name) or name in _CALLS:
            raise self.refuse(node, f"assignment to {name!r}")
        self.names[name] = self.expr(node.value)

    def expr(self, node: ast.expr) -> Any:
        method = getattr(self, f"_{type(node).__name__}", None)
        if method is None:
            raise self.refuse(node)
        return method(node)

    def _Constant(self, node: ast.Constant) -> Any:
        if node.value is not None and not isinstance(node.value, (str, int, float)):
            raise self.refuse(node, f"constant of type {type(node.value).__name__}")
        return node.value

    def _Name(self, node: ast.Name) -> Any:
        if _is_dunder(node.id):
            raise self.refuse(node, f"dunder name {node.id!r}")
        if node.id not in self.names:
            raise self.refuse(node, f"name {node.id!r} (not assigned above in this file)")
        return self.names[node.id]

    def _List(self, node: ast.List) -> list:
        return [self.expr(e) for e in node.elts]

    def _Tuple(self, node: ast.Tuple) -> tuple:
        return tuple(self.expr(e) for e in node.elts)

    def _Dict(self, node: ast.Dict) -> dict:
        out: dict = {}
        for key, value in zip(node.keys, node.values):
            if key is None:  # {**x}
                out.update(self.mapping(value))
            else:
                name = self.expr(key)
                if not isinstance(name, (str, int, float)):
                    raise self.refuse(key, f"dict key of type {type(name).__name__}")
                out[name] = self.expr(value)
        return out

    def _Call(self, node: ast.Call) -> Any:
        if not isinstance(node.func, ast.Name) or node.func.id not in _CALLS:
            called = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise self.refuse(node, f"call of {called!r}")
        args = [self.expr(a) for a in node.args]
        kwargs: dict = {}
        for kw in node.keywords:
            kwargs.update(self.mapping(kw.value) if kw.arg is None else {kw.arg: self.expr(kw.value)})
        if node.func.id == "range":
            return self.range(node, args, kwargs)
        try:
            return _CALLS[node.func.id](*args, **kwargs)
        except (TypeError, ValueError) as e:
            raise self.refuse(node, f"{node.func.id}(...) with these arguments ({e})") from None

    def range(self, node: ast.Call, args: list, kwargs: dict) -> list:
        if kwargs or not 1 <= len(args) <= 3 or not all(type(a) is int for a in args):
            raise self.refuse(node, "range(...) with anything but 1 to 3 int arguments")
        values = range(*args)
        if len(values) > _MAX_ITEMS:
            raise self.refuse(node, f"range of {len(values)} items")
        return list(values)

    def _BinOp(self, node: ast.BinOp) -> Any:
        left, right = self.expr(node.left), self.expr(node.right)
        if _is_number(left) and _is_number(right) and type(node.op) in _NUMBER_OPS:
            try:
                value = _NUMBER_OPS[type(node.op)](left, right)
            except ZeroDivisionError:
                raise self.refuse(node, "division by zero") from None
            if isinstance(value, int) and abs(value) > _MAX_INT:
                raise self.refuse(node, "an integer this large")
            return value
        if isinstance(node.op, ast.Add) and type(left) is type(right) and isinstance(left, (str, list, tuple)):
            if len(left) + len(right) > _MAX_ITEMS:
                raise self.refuse(node, f"a value of {len(left) + len(right)} items")
            return left + right
        raise self.refuse(node, f"operator {type(node.op).__name__} on {type(left).__name__} and "
                                f"{type(right).__name__}")

    def _UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.expr(node.operand)
        if isinstance(node.op, (ast.USub, ast.UAdd)) and _is_number(value):
            return -value if isinstance(node.op, ast.USub) else +value
        raise self.refuse(node, f"unary {type(node.op).__name__} on {type(value).__name__}")

    def _Subscript(self, node: ast.Subscript) -> Any:
        container, key = self.expr(node.value), self.expr(node.slice)
        if not isinstance(container, (dict, list, tuple)) or isinstance(key, (dict, list, tuple)):
            raise self.refuse(node, f"indexing a {type(container).__name__} with a {type(key).__name__}")
        try:
            return container[key]
        except (KeyError, IndexError, TypeError) as e:
            raise self.refuse(node, f"index {key!r} ({type(e).__name__})") from None

    def mapping(self, node: ast.expr) -> dict:
        """The dict a ``**x`` unpacks."""
        value = self.expr(node)
        if not isinstance(value, dict):
            raise self.refuse(node, f"** of a {type(value).__name__}")
        return value


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float))
