"""A syntax check of CEL expressions (the Common Expression Language's grammar), as Istio's
Telemetry validation parses `accessLogging[].filter.expression` before accepting it: an
expression Envoy cannot parse would make it refuse the whole listener.

Only the syntax is checked (Istio's env.Parse), not names or types.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
    (?P<space>\s+|//[^\n]*)
  | (?P<string>[rR]?[bB]?[rR]?('''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"
        |'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
  | (?P<number>0[xX][0-9a-fA-F]+[uU]?
        |(?:[0-9]+\.[0-9]+|\.[0-9]+)(?:[eE][+-]?[0-9]+)?
        |[0-9]+[eE][+-]?[0-9]+
        |[0-9]+[uU]?)
  | (?P<ident>[_a-zA-Z][_a-zA-Z0-9]*)
  | (?P<op>\|\||&&|==|!=|<=|>=|[<>+\-*/%!?:.,()\[\]{}])
    """,
    re.VERBOSE | re.DOTALL,
)
_RESERVED = frozenset(
    [
        "as",
        "break",
        "const",
        "continue",
        "else",
        "for",
        "function",
        "if",
        "import",
        "let",
        "loop",
        "package",
        "namespace",
        "return",
        "var",
        "void",
        "while",
    ]
)
_RELATIONS = frozenset({"<", "<=", ">=", ">", "==", "!=", "in"})


class CelSyntaxError(ValueError):
    """Why an expression is not valid CEL."""


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    at = 0
    while at < len(text):
        found = _TOKEN.match(text, at)
        if found is None:
            raise CelSyntaxError(f"unexpected character {text[at]!r} at {at}")
        kind = found.lastgroup
        if kind == "ident" and found.group() in _RESERVED:
            raise CelSyntaxError(f"reserved identifier {found.group()!r} at {at}")
        if kind == "string":
            out.append('"')  # any literal string stands for a value
        elif kind == "number":
            out.append("0")
        elif kind != "space":
            out.append(found.group())
        at = found.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.at = 0

    def peek(self) -> str:
        return self.tokens[self.at] if self.at < len(self.tokens) else ""

    def take(self, wanted: str | None = None) -> str:
        token = self.peek()
        if not token or (wanted is not None and token != wanted):
            shown = repr(token) if token else "the end"
            what = repr(wanted) if wanted is not None else "an operand"
            raise CelSyntaxError(f"expected {what}, found {shown}")
        self.at += 1
        return token

    def expr(self) -> None:
        self.binary(0)
        if self.peek() == "?":
            self.take("?")
            self.binary(0)
            self.take(":")
            self.expr()

    _LEVELS: tuple[frozenset[str], ...] = (
        frozenset({"||"}),
        frozenset({"&&"}),
        _RELATIONS,
        frozenset({"+", "-"}),
        frozenset({"*", "/", "%"}),
    )

    def binary(self, level: int) -> None:
        if level == len(self._LEVELS):
            self.unary()
            return
        self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            self.take()
            self.binary(level + 1)

    def unary(self) -> None:
        while self.peek() in ("!", "-"):
            self.take()
        self.member()

    def member(self) -> None:
        self.primary()
        while self.peek() in (".", "["):
            if self.take() == ".":
                self.ident()
                if self.peek() == "(":
                    self.call_args()
                elif self.peek() == "{":  # a qualified message name: a.b.Name{field: value}
                    self.take("{")
                    self.sequence("}", pairs=True)
            else:
                self.expr()
                self.take("]")

    def ident(self) -> None:
        token = self.take()
        if not re.fullmatch(r"[_a-zA-Z][_a-zA-Z0-9]*", token) or token == "in":
            raise CelSyntaxError(f"expected an identifier, found {token!r}")

    def call_args(self) -> None:
        self.take("(")
        if self.peek() != ")":
            self.expr()
            while self.peek() == ",":
                self.take(",")
                self.expr()
        self.take(")")

    def primary(self) -> None:
        token = self.peek()
        if token == "(":
            self.take("(")
            self.expr()
            self.take(")")
        elif token == "[":
            self.take("[")
            self.sequence("]", pairs=False)
        elif token == "{":
            self.take("{")
            self.sequence("}", pairs=True)
        elif token in ('"', "0"):
            self.take()
        else:
            if token == ".":
                self.take(".")
            self.ident()
            if self.peek() == "(":
                self.call_args()
            elif self.peek() == "{":  # a message construction: Name{field: value}
                self.take("{")
                self.sequence("}", pairs=True)

    def sequence(self, end: str, pairs: bool) -> None:
        """A list or map/message body up to end, trailing comma allowed."""
        while self.peek() != end:
            self.expr()
            if pairs:
                self.take(":")
                self.expr()
            if self.peek() != ",":
                break
            self.take(",")
        self.take(end)


def cel_syntax_problem(expression: str) -> str:
    """Why expression is not valid CEL syntax, or ""."""
    try:
        tokens = _tokens(expression)
        if not tokens:
            raise CelSyntaxError("empty expression")
        parser = _Parser(tokens)
        parser.expr()
        if parser.at != len(tokens):
            raise CelSyntaxError(f"unexpected {tokens[parser.at]!r} after the expression")
    except CelSyntaxError as exc:
        return str(exc)
    except RecursionError:
        return "expression nested too deeply"
    return ""
