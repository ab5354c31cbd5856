"""data.filter / data.val_filter: a row-selection language that cannot run code.

`pandas.DataFrame.query` is not a sandbox (`Country == @pd.io.common.os.getcwd()` calls into the
interpreter), and these strings come from whoever triggers a run. So an expression is parsed with the
standard `ast` module and accepted only when every node is on a short allow-list:

    comparisons      ==  !=  <  <=  >  >=   (chains such as 1 < Score <= 5 too)
    membership       in / not in, followed by a [list] or (tuple) of literals
    logic            and  or  not  (and parentheses)
    column names     bare identifiers (Country), or `backtick quoted` for names with spaces, as pandas allows
    literals         str, int, float, bool (and -1, -2.5)

Anything else (calls, attribute access, subscripts, arithmetic, lambdas, comprehensions, f-strings, `:=`,
`@` locals) is refused with one line naming the part that is not allowed. The accepted tree is then evaluated
here with pandas operations on boolean Series; no text is ever handed to Python's or pandas' evaluators.

Tables are read with every column as text, so a column compared with a number is read as numbers first
(cells that are not numbers match nothing but `!=`), and one compared with True/False reads true/false/1/0.

Parsing needs only the standard library, so config loading validates filters before Prefect starts.
"""
from __future__ import annotations

import ast
import difflib
import operator
import re
from dataclasses import dataclass, field

from lmforge.core.errors import LmforgeError

MAX_LENGTH = 4000     # characters; a filter is a line, not a program
MAX_DEPTH = 64        # nesting of and/or/not/comparisons, well past any real filter, far from the recursion limit
EXAMPLE = 'Country == "lebanon" and Topic in ["politics", "sports"]'

_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge}
_MEMBERSHIP = (ast.In, ast.NotIn)
_REFUSED = {  # node type -> the message's words for it
    ast.Call: "function calls are", ast.Attribute: "attribute access is", ast.Subscript: "subscripts are",
    ast.Lambda: "lambdas are", ast.ListComp: "comprehensions are", ast.SetComp: "comprehensions are",
    ast.DictComp: "comprehensions are", ast.GeneratorExp: "comprehensions are", ast.JoinedStr: "f-strings are",
    ast.FormattedValue: "f-strings are", ast.NamedExpr: "assignment expressions (:=) are",
    ast.BinOp: "arithmetic operators are", ast.IfExp: "conditional expressions are", ast.Dict: "dicts are",
    ast.Set: "sets are", ast.Starred: "starred expressions are", ast.Await: "await is", ast.Yield: "yield is",
    ast.YieldFrom: "yield is", ast.Slice: "slices are",
}
_WORD_FOR = {ast.BitAnd: "and", ast.BitOr: "or"}


@dataclass(frozen=True)
class _Part:
    key: str                  # the config key the expression came from, for messages
    text: str                 # as written
    tree: ast.expr            # validated
    quoted: dict[str, str]    # placeholder identifier -> backtick-quoted column name


@dataclass(frozen=True)
class RowFilter:
    """One or more validated expressions; a row is kept when all of them hold."""
    parts: tuple[_Part, ...] = field(default_factory=tuple)

    def __and__(self, other: "RowFilter") -> "RowFilter":
        return RowFilter(self.parts + other.parts)

    def mask(self, df, where: str = "the table"):
        """A boolean Series over df's rows: True where every expression holds."""
        import pandas as pd

        result = pd.Series(True, index=df.index)
        for part in self.parts:
            try:
                value = _Evaluator(df, part, where).condition(part.tree)
            except TypeError as exc:  # e.g. "a" < 1: types that do not order
                raise LmforgeError(f"{part.key}: {part.text!r} cannot be evaluated on {where}: {exc}",
                                   hint=_HINT.format(key=part.key)) from None
            result &= value if isinstance(value, pd.Series) else bool(value)
        return result


_HINT = ("compare columns with str/int/float/bool literals using == != < <= > >=, in [...], and, or, not; "
         "e.g. --set {key}='" + EXAMPLE + "'")


def parse(text: str, key: str = "data.filter") -> RowFilter:
    """Validate `text` (from config key `key`) against the allow-list; a refusal names the offending part."""
    if len(text) > MAX_LENGTH:
        raise _error(key, f"the expression is {len(text)} characters, over the limit of {MAX_LENGTH}", "")
    source, quoted = _quote_columns(text, key)
    try:
        tree = ast.parse(source, mode="eval").body
    except SyntaxError as exc:
        raise _error(key, f"not a valid expression: {exc.msg}", text) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, absurd nesting
        raise _error(key, f"not a valid expression: {exc}", text) from None
    _Validator(source, quoted, key).condition(tree, 0)
    return RowFilter((_Part(key, text, tree, quoted),))


def all_of(*pairs: tuple[str, str]) -> RowFilter | None:
    """The filters among (key, text) pairs that are set, combined with AND (as trees, never as strings: a
    filter such as `A == "x") or ("1" == "1` must not reach into its neighbour); None when none is set."""
    filters = [parse(text, key) for key, text in pairs if text]
    if not filters:
        return None
    combined = filters[0]
    for f in filters[1:]:
        combined = combined & f
    return combined


def _error(key: str, what: str, snippet: str) -> LmforgeError:
    shown = f" (`{snippet[:80]}{'...' if len(snippet) > 80 else ''}`)" if snippet else ""
    return LmforgeError(f"{key}: {what}{shown}", hint=_HINT.format(key=key))


def _quote_columns(text: str, key: str) -> tuple[str, dict[str, str]]:
    """Replace each `backtick quoted` column name with a placeholder identifier, so `ast` can parse the rest.
    String literals are skipped over (a backtick inside quotes is text), and `@` outside them (pandas' local
    variable references, the classic way out of DataFrame.query) is refused here, with the whole reference."""
    prefix = "_lmforge_quoted_"
    while prefix in text:
        prefix += "_"
    out, quoted, names, i = [], {}, {}, 0
    while i < len(text):
        c = text[i]
        if c in "'\"":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif c == "`":
            end = text.find("`", i + 1)
            if end < 0:
                raise _error(key, "a backtick-quoted column name is not closed", text[i:])
            name = text[i + 1:end]
            if not name:
                raise _error(key, "an empty backtick-quoted column name", text[i:end + 1])
            if name not in names:
                names[name] = f"{prefix}{len(names)}"
                quoted[names[name]] = name
            out.append(names[name])
            i = end + 1
        elif c == "@":
            ref = re.match(r"@[\w.]*(\([^()]*\))?", text[i:]).group(0)
            raise _error(key, "`@` references to Python variables are not allowed", ref)
        else:
            out.append(c)
            i += 1
    return "".join(out), quoted


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at `start` (single or triple quoted; a backslash escapes the
    next character in every kind of literal); len(text) when it is not closed (ast then reports it)."""
    q = text[start]
    triple = text.startswith(q * 3, start)
    close = q * 3 if triple else q
    i = start + len(close)
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text.startswith(close, i):
            return i + len(close)
        elif text[i] == "\n" and not triple:
            return len(text)
        else:
            i += 1
    return len(text)


def _column_name(identifier: str, quoted: dict[str, str]) -> str:
    return quoted.get(identifier, identifier)


class _Validator:
    """Walks the tree and raises at the first node that is not on the allow-list."""

    def __init__(self, source: str, quoted: dict[str, str], key: str):
        self.source, self.quoted, self.key = source, quoted, key

    def snippet(self, node: ast.AST) -> str:
        text = ast.get_source_segment(self.source, node) or ""
        for placeholder, name in self.quoted.items():
            text = text.replace(placeholder, f"`{name}`")
        return text

    def refuse(self, node: ast.AST, what: str | None = None) -> LmforgeError:
        if what is None:
            if isinstance(node, ast.BinOp) and type(node.op) in _WORD_FOR:
                what = f"`{'&' if isinstance(node.op, ast.BitAnd) else '|'}` is not allowed; write " \
                       f"`{_WORD_FOR[type(node.op)]}`"
            elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Invert):
                what = "`~` is not allowed; write `not`"
            elif type(node) in _REFUSED:
                what = f"{_REFUSED[type(node)]} not allowed"
            else:
                what = f"{type(node).__name__} expressions are not allowed"
        return _error(self.key, what, self.snippet(node))

    def condition(self, node: ast.AST, depth: int) -> None:
        """Something true or false per row: a comparison, and/or/not of conditions, or True/False."""
        if depth > MAX_DEPTH:
            raise self.refuse(node, f"the expression nests more than {MAX_DEPTH} levels deep")
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.condition(value, depth + 1)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            self.condition(node.operand, depth + 1)
        elif isinstance(node, ast.Compare):
            self.comparison(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            pass
        elif isinstance(node, ast.Name):
            name = _column_name(node.id, self.quoted)
            raise self.refuse(node, f"a column on its own is not a condition; compare it, e.g. `{name} == \"yes\"`")
        else:
            raise self.refuse(node)

    def comparison(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, (ast.Is, ast.IsNot)):
                raise self.refuse(node, f"`{'is' if isinstance(op, ast.Is) else 'is not'}` is not allowed; "
                                        "write == or !=")
            left, right = operands[i], operands[i + 1]
            if isinstance(op, _MEMBERSHIP):
                self.literal_list(right)
            elif type(op) not in _COMPARE:
                raise self.refuse(node)
            self.value(left)
            if not isinstance(op, _MEMBERSHIP):
                self.value(right)

    def value(self, node: ast.AST) -> None:
        """A column or a literal."""
        if isinstance(node, ast.Name):
            return
        if isinstance(node, (ast.List, ast.Tuple)):
            raise self.refuse(node, "a list is only allowed after `in` / `not in`")
        self.literal(node)

    def literal(self, node: ast.AST) -> None:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            if isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float):
                return
            raise self.refuse(node, "a sign is only allowed before a number")
        if isinstance(node, ast.Constant):
            if type(node.value) not in (str, int, float, bool):
                raise self.refuse(node, "only str, int, float and bool literals are allowed")
            return
        if isinstance(node, ast.Name):
            raise self.refuse(node, "only literals are allowed in the list after `in`")
        raise self.refuse(node)

    def literal_list(self, node: ast.AST) -> None:
        if not isinstance(node, (ast.List, ast.Tuple)):
            raise self.refuse(node, "`in` / `not in` must be followed by a [list] of literals")
        for element in node.elts:
            self.literal(element)


class _Evaluator:
    """Evaluates a validated tree on one DataFrame; every node type here was allowed by _Validator."""

    def __init__(self, df, part: _Part, where: str):
        self.df, self.part, self.where = df, part, where

    def condition(self, node: ast.AST):
        if isinstance(node, ast.BoolOp):
            values = [self.condition(v) for v in node.values]
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            result = values[0]
            for v in values[1:]:
                result = combine(result, v)
            return result
        if isinstance(node, ast.UnaryOp):  # `not`
            value = self.condition(node.operand)
            return (not value) if isinstance(value, bool) else ~value
        if isinstance(node, ast.Constant):
            return node.value
        return self.comparison(node)

    def comparison(self, node: ast.Compare):
        operands = [node.left, *node.comparators]
        result = True
        for i, op in enumerate(node.ops):
            left = self.value(operands[i])
            if isinstance(op, _MEMBERSHIP):
                hit = False
                for element in operands[i + 1].elts:
                    hit = hit | _compare(operator.eq, left, self.value(element))
                step = (not hit if isinstance(hit, bool) else ~hit) if isinstance(op, ast.NotIn) else hit
            else:
                step = _compare(_COMPARE[type(op)], left, self.value(operands[i + 1]))
            result = result & step
        return result

    def value(self, node: ast.AST):
        if isinstance(node, ast.Name):
            name = _column_name(node.id, self.part.quoted)
            if name not in self.df.columns:
                columns = [str(c) for c in self.df.columns]
                close = difflib.get_close_matches(name, columns, n=1)
                raise LmforgeError(f"{self.part.key}: no column {name!r} in {self.where}"
                                   + (f"; did you mean {close[0]!r}?" if close else ""),
                                   hint=f"columns are: {', '.join(columns[:20])}; quote names with spaces in "
                                        "backticks, e.g. `my column` == \"x\"")
            return self.df[name]
        if isinstance(node, ast.UnaryOp):
            return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        return node.value


def _compare(op, left, right):
    """op(left, right) where either side may be a column: a text column meets a number as numbers, and a
    bool as true/false."""
    left, right = _as_comparable(left, right), _as_comparable(right, left)
    return op(left, right)


def _as_comparable(value, other):
    import pandas as pd

    if not isinstance(value, pd.Series) or pd.api.types.is_numeric_dtype(value) or isinstance(other, str):
        return value
    if isinstance(other, bool):
        return value.astype(str).str.strip().str.lower().map({"true": True, "false": False, "1": True, "0": False})
    if isinstance(other, (int, float)):
        return pd.to_numeric(value, errors="coerce")
    return value
