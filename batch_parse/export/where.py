"""`--where`: a small, safe row filter over the output's scalar columns (no eval of user text).

Grammar: clauses `COLUMN OP VALUE` joined by `and`; OP is one of == != < <= > >=; VALUE is a
number, a 'quoted' or "quoted" string, true or false. Example:

    face_score >= 0.99 and status == 'ok' and mouth_confidence < 0.8

Rows whose column is null never match (SQL's rule), so `face_score > 0` also drops no_face rows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_parse.output.schema import BASE_SCHEMA, CORRECTION_FIELDS, STATUS_ERROR, STATUS_NO_FACE, STATUS_OK

_OPERATORS = {"==": pc.equal, "!=": pc.not_equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}
_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|<=|>=|<|>)"
    r"|(?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
    r"|(?P<string>'[^']*'|\"[^\"]*\")"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_STATUSES = (STATUS_OK, STATUS_NO_FACE, STATUS_ERROR)


def scalar_columns() -> dict[str, pa.DataType]:
    """The columns a clause may name: numbers, strings and booleans (not lists, bytes or times); the
    correction columns too, which only imported sets have (`batch-parse import`)."""
    return {
        f.name: f.type
        for f in (*BASE_SCHEMA, *CORRECTION_FIELDS)
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_string(f.type) or pa.types.is_boolean(f.type)
    }


@dataclass(frozen=True)
class Clause:
    column: str
    op: str
    value: float | int | str | bool

    def __str__(self) -> str:
        return f"{self.column} {self.op} {self.value!r}"


@dataclass(frozen=True)
class Where:
    """A parsed --where: the clauses all rows must satisfy."""

    clauses: tuple[Clause, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.column for c in self.clauses))

    def mask(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Boolean per row: every clause holds (null never holds)."""
        keep = np.ones(batch.num_rows, dtype=bool)
        for clause in self.clauses:
            result = _OPERATORS[clause.op](batch.column(clause.column), pa.scalar(clause.value, batch.schema.field(clause.column).type))
            keep &= pc.fill_null(result, False).to_numpy(zero_copy_only=False)
        return keep

    def __str__(self) -> str:
        return " and ".join(map(str, self.clauses))


def parse_where(text: str) -> Where:
    """Parse `column OP value [and ...]`; ValueError naming the problem for anything else."""
    tokens = _tokenize(text)
    if not tokens:
        raise ValueError("empty --where: give clauses like \"face_score >= 0.9 and status == 'ok'\"")
    columns = scalar_columns()
    clauses = []
    position = 0
    while True:
        if len(tokens) - position < 3:
            raise ValueError(f"incomplete clause at the end of --where {text!r}: expected COLUMN OP VALUE")
        (kind_c, column), (kind_o, op), (kind_v, raw) = tokens[position : position + 3]
        if kind_c != "word":
            raise ValueError(f"--where: expected a column name, got {column!r}")
        if column not in columns:
            raise ValueError(f"--where: unknown or non-scalar column {column!r}; scalar columns: {', '.join(columns)}")
        if kind_o != "op":
            raise ValueError(f"--where: expected one of {' '.join(_OPERATORS)} after {column}, got {op!r}")
        clauses.append(Clause(column, op, _value(column, columns[column], kind_v, raw)))
        position += 3
        if position == len(tokens):
            return Where(tuple(clauses))
        kind, word = tokens[position]
        if kind != "word" or word.lower() != "and":
            raise ValueError(f"--where: clauses are joined by 'and' only, got {word!r}")
        position += 1


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens, position, text = [], 0, text.strip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if text[position] == "=" and not text.startswith("==", position):
            raise ValueError("--where: compare with ==, not =")
        if not match or match.end() == position:
            raise ValueError(f"--where: cannot read {text[position:][:20]!r} (strings need matching quotes)")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        position = match.end()
        while position < len(text) and text[position].isspace():
            position += 1
    return tokens


def _value(column: str, type_: pa.DataType, kind: str, raw: str) -> float | int | str | bool:
    if pa.types.is_string(type_):
        if kind != "string":
            raise ValueError(f"--where: {column} is a string column: quote the value, e.g. {column} == '{raw}'")
        value = raw[1:-1]
        if column == "status" and value not in _STATUSES:
            raise ValueError(f"--where: status is one of {', '.join(_STATUSES)}, not {value!r}")
        return value
    if pa.types.is_boolean(type_):
        if kind != "word" or raw.lower() not in ("true", "false"):
            raise ValueError(f"--where: {column} is true or false, not {raw}")
        return raw.lower() == "true"
    if kind != "number":
        raise ValueError(f"--where: {column} is a number column, not compared with {raw}")
    if pa.types.is_integer(type_):
        if not re.fullmatch(r"[-+]?\d+", raw):  # ids are 64-bit: never through float
            raise ValueError(f"--where: {column} holds whole numbers, not {raw}")
        value = int(raw)
        bits = type_.bit_width
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if pa.types.is_signed_integer(type_) else (0, (1 << bits) - 1)
        if not lo <= value <= hi:
            raise ValueError(f"--where: {column} holds {bits}-bit whole numbers ({lo}..{hi}); {raw} is out of range")
        return value
    value = float(raw)
    if not math.isfinite(value):  # 1e400 would silently be infinity
        raise ValueError(f"--where: {raw} is out of range for {column} (a finite number, at most about 1.8e308)")
    return value
