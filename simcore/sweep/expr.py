"""Safe arithmetic over dotted names, for sweep constraints, derived figures and objectives.

Sweep files are data, so their expressions must not be able to run code: the text is parsed with
`ast` and only a small whitelist of node types (numbers, strings, names, `a.b.c` key paths,
arithmetic, comparisons, `and/or/not`, `x if c else y`, a few math functions) is accepted. Evaluation
walks closures built once at load time; nothing is passed to `eval`.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

Env = Mapping[str, Any]
Fn = Callable[[Env], Any]


class ExprError(ValueError):
    """The text is not an allowed expression (raised at load time)."""


class MissingName(LookupError):
    """A name the expression needs has no value for this point (e.g. a metric the scenario lacks)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _pow(a: Any, b: Any) -> Any:
    if isinstance(b, int | float) and abs(b) > 1024:  # keep `9 ** 9 ** 9` from eating the machine
        raise ValueError(f"exponent {b!r} too large")
    return a**b


_BIN: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: _pow,
}  # fmt: skip
_UNARY: dict[type, Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Not: operator.not_,
}
_CMP: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}  # fmt: skip
FUNCTIONS: dict[str, Callable[..., Any]] = {
    "min": min, "max": max, "abs": abs, "round": round, "sqrt": math.sqrt, "exp": math.exp, "log": math.log,
    "log2": math.log2, "log10": math.log10, "ceil": math.ceil, "floor": math.floor, "int": int, "float": float,
}  # fmt: skip


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` as a string when `node` is a plain name or a chain of attributes on one."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return None


class Expr:
    """A compiled expression: `names` it reads, `__call__(env)` to evaluate it against a flat mapping."""

    def __init__(self, text: str) -> None:
        self.text = text.strip()
        try:
            tree = ast.parse(self.text, mode="eval")
        except SyntaxError as e:
            raise ExprError(f"not a valid expression: {text!r} ({e.msg})") from None
        self.names: set[str] = set()
        self._fn = self._compile(tree.body)

    def __repr__(self) -> str:
        return f"Expr({self.text!r})"

    def __call__(self, env: Env) -> Any:
        return self._fn(env)

    def _compile(self, node: ast.AST) -> Fn:
        if isinstance(node, ast.Constant):
            if not isinstance(node.value, int | float | str | bool) or node.value is None:
                raise ExprError(f"constant {node.value!r} not allowed in {self.text!r}")
            v = node.value
            return lambda env: v
        name = dotted(node)
        if name is not None:
            if name in FUNCTIONS:
                raise ExprError(f"function {name!r} used as a value in {self.text!r}")
            self.names.add(name)

            def lookup(env: Env, name: str = name) -> Any:
                try:
                    return env[name]
                except KeyError:
                    raise MissingName(name) from None

            return lookup
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            op, a, b = _BIN[type(node.op)], self._compile(node.left), self._compile(node.right)
            return lambda env: op(a(env), b(env))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            uop, x = _UNARY[type(node.op)], self._compile(node.operand)
            return lambda env: uop(x(env))
        if isinstance(node, ast.BoolOp):
            parts = [self._compile(v) for v in node.values]
            if isinstance(node.op, ast.And):
                return lambda env: all(p(env) for p in parts)
            return lambda env: any(p(env) for p in parts)
        if isinstance(node, ast.Compare) and all(type(o) in _CMP for o in node.ops):
            first = self._compile(node.left)
            rest = [
                (_CMP[type(o)], self._compile(c)) for o, c in zip(node.ops, node.comparators, strict=True)
            ]

            def compare(env: Env) -> bool:
                left = first(env)
                for cmp, right_fn in rest:
                    right = right_fn(env)
                    if not cmp(left, right):
                        return False
                    left = right
                return True

            return compare
        if isinstance(node, ast.IfExp):
            test, yes, no = self._compile(node.test), self._compile(node.body), self._compile(node.orelse)
            return lambda env: yes(env) if test(env) else no(env)
        if isinstance(node, ast.Tuple | ast.List):
            items = [self._compile(e) for e in node.elts]
            return lambda env: tuple(i(env) for i in items)
        if isinstance(node, ast.Call):
            fname = node.func.id if isinstance(node.func, ast.Name) else None
            if fname not in FUNCTIONS or node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
                allowed = ", ".join(sorted(FUNCTIONS))
                raise ExprError(f"only plain calls of {allowed} are allowed in {self.text!r}")
            fn, args = FUNCTIONS[fname], [self._compile(a) for a in node.args]
            return lambda env: fn(*(a(env) for a in args))
        raise ExprError(f"{type(node).__name__.lower()} not allowed in {self.text!r}")
