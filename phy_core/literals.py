"""Read Python-syntax data files (``.prb``, ``.prm``, ``params.py``) without executing them.

These files look like Python, and older tools ran them with ``exec``: a
probe file could delete your data. phy parses them with `ast` and accepts
only assignments of literal values: numbers, strings, booleans, None, lists,
tuples, dicts and sets, arithmetic on those (``0.95 * .5``,
``experiment_name + '.dat'``), names assigned earlier in the file, and, where
the caller allows it, ``dict(key=value, ...)``. Anything else (a function
call, an import, an attribute access, a comprehension) is refused with the
file, the line and what was found.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import PhyError
from .textfile import read_text


class LiteralFileError(PhyError, ValueError):
    """A data file contains something other than literal assignments."""


_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANT_NAMES = {"True": True, "False": False, "None": None}
# Results bigger than this are refused: `[0] * 10**9` must not exhaust memory.
_MAX_SEQUENCE = 10_000_000


def _describe(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # pragma: no cover - unparse handles every node we see
        text = type(node).__name__
    return text if len(text) <= 60 else text[:57] + "..."


class _Evaluator:
    def __init__(self, filename: str, names: dict[str, Any], allowed_calls: set[str]) -> None:
        self.filename = filename
        self.names = names
        self.allowed_calls = allowed_calls

    def error(self, node: ast.AST, what: str) -> LiteralFileError:
        line = getattr(node, "lineno", "?")
        return LiteralFileError(
            f"{self.filename}, line {line}: {what} `{_describe(node)}` is not allowed. "
            "This file is read as data, never executed: use literal values only "
            "(numbers, strings, lists, tuples, dicts)."
        )

    def __call__(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self(item) for item in node.elts]
            kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
            try:
                return kind(items)
            except TypeError as exc:
                raise self.error(node, f"a set with unhashable items ({exc})") from None
        if isinstance(node, ast.Dict):
            if any(key is None for key in node.keys):
                raise self.error(node, "dict unpacking")
            try:
                return {self(k): self(v) for k, v in zip(node.keys, node.values)}
            except TypeError as exc:
                raise self.error(node, f"an unhashable dict key ({exc})") from None
        if isinstance(node, ast.Name):
            if node.id in _CONSTANT_NAMES:
                return _CONSTANT_NAMES[node.id]
            if node.id in self.names:
                return self.names[node.id]
            raise self.error(node, "the undefined name")
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return self._apply(node, _UNARY[type(node.op)], self(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return self._apply(node, _BINARY[type(node.op)], self(node.left), self(node.right))
        if isinstance(node, ast.Call):
            return self._call(node)
        if isinstance(node, ast.Attribute):
            raise self.error(node, "the attribute access")
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            raise self.error(node, "the comprehension")
        raise self.error(node, "the expression")

    def _apply(self, node: ast.AST, func, *args: Any) -> Any:
        for arg in args:
            if not isinstance(arg, (int, float, complex, str, list, tuple)):
                raise self.error(node, f"arithmetic on {type(arg).__name__}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            sizes = [len(a) for a in args if isinstance(a, (str, list, tuple))]
            counts = [a for a in args if isinstance(a, int)]
            if sizes and counts and sizes[0] * counts[0] > _MAX_SEQUENCE:
                raise self.error(node, "a sequence this large")
        try:
            return func(*args)
        except (TypeError, ZeroDivisionError, OverflowError) as exc:
            raise self.error(node, f"the operation ({exc})") from None

    def _call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in self.allowed_calls:
            raise self.error(node, "the function call")
        # Only dict(key=value, ...) is ever allowed: it builds a literal.
        if name != "dict" or node.args or any(k.arg is None for k in node.keywords):
            raise self.error(node, "the call form (only dict(key=value, ...) is accepted)")
        return {keyword.arg: self(keyword.value) for keyword in node.keywords}


def parse_literal_assignments(
    text: str, filename: str | Path = "<string>", allowed_calls: Iterable[str] = ()
) -> dict[str, Any]:
    """Parse ``name = literal`` assignments.

    Parameters
    ----------
    text : str
        The file's content.
    filename : str or Path
        Used in error messages.
    allowed_calls : iterable of str
        ``("dict",)`` accepts ``dict(key=value, ...)`` (klusta's PRM files use
        it). No other call is ever accepted.

    Returns
    -------
    values : dict
        ``{name: value}`` in file order. Names assigned earlier can be used
        in later values.

    Raises
    ------
    LiteralFileError
        For a syntax error or anything that is not a literal assignment.

    Examples
    --------
    >>> parse_literal_assignments("name = 'rat'\\nfiles = [name + '.dat']")
    {'name': 'rat', 'files': ['rat.dat']}
    """
    filename = str(filename)
    try:
        tree = ast.parse(text, filename=filename)
    except SyntaxError as exc:
        raise LiteralFileError(
            f"{filename}, line {exc.lineno}: syntax error: {exc.msg}"
        ) from None
    except ValueError as exc:  # e.g. null bytes
        raise LiteralFileError(f"{filename}: cannot be parsed: {exc}") from None
    values: dict[str, Any] = {}
    evaluate = _Evaluator(filename, values, set(allowed_calls))
    for statement in tree.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or a bare string: harmless
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            raise evaluate.error(statement, "the import")
        if not isinstance(statement, ast.Assign) or not all(
            isinstance(target, ast.Name) for target in statement.targets
        ):
            raise evaluate.error(statement, "the statement")
        value = evaluate(statement.value)
        for target in statement.targets:
            values[target.id] = value
    return values


def read_literal_file(path: str | Path, allowed_calls: Iterable[str] = ()) -> dict[str, Any]:
    """Read and parse a file of literal assignments (see `parse_literal_assignments`)."""
    return parse_literal_assignments(read_text(path, LiteralFileError), Path(path), allowed_calls)
