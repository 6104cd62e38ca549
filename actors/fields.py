"""Config fields declared once: default, bounds, choices and documentation.

A config dataclass (``ServerConfig``, ``PolicyConfig``, the device specs of
``slicer.actors.protocol``) declares each field once, in vLLM's ``EngineArgs`` style::

    max_batch: int = spec_field(16, lo=1, hi=1024, integer=True)
    \"\"\"Most decode steps run together in one batch.\"\"\"

and everything else is derived from that declaration: the workload parser checks a YAML
value with ``check`` (same bound, same message everywhere), ``yaml_fields`` says which
fields a YAML section may set, and ``add_flags`` / ``given_flags`` make command-line flags
(``--max-batch``) whose help is the field's docstring. Torch-free.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import itertools
import math
import re
import sys
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any

#: A number field with no tighter bound must lie within ±this (and be finite).
MAX_NUMBER = 1e15

_KEY = "slicer.spec"


@dataclass(frozen=True)
class Spec:
    """What values one field allows (kept in the field's ``metadata``)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] | None = None
    yaml: bool = True
    """False: a runtime field the workload never sets (filled by the runner)."""
    flag: str | bool | None = None
    """A command-line flag name (``--server-device``); None: derived from the field's
    name (``--max-batch``); False: no flag."""


def spec_field(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING,
               lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
               integer: bool = False, choices: typing.Sequence[str] | None = None, yaml: bool = True,
               flag: str | bool | None = None) -> Any:
    """A ``dataclasses.field`` whose metadata holds the allowed values. ``lo``/``hi``:
    bounds (``lo_open``/``hi_open``: strict); a number with no ``hi`` is at most
    ``MAX_NUMBER`` (no ``lo``: at least ``-MAX_NUMBER``). The field's doc is the
    docstring under it."""
    spec = Spec(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, integer=integer,
                choices=tuple(choices) if choices is not None else None, yaml=yaml, flag=flag)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_KEY: spec})


def spec_of(f: dataclasses.Field) -> Spec:
    """The field's ``Spec`` (an unconstrained YAML field when it has none)."""
    return f.metadata.get(_KEY) or Spec()


def has_spec(f: dataclasses.Field) -> bool:
    """Was the field declared with ``spec_field``?"""
    return _KEY in f.metadata


class FieldError(ValueError):
    """A value a field does not allow: ``path``, the ``value`` and what is ``allowed``."""

    def __init__(self, path: str, value: Any, allowed: str):
        super().__init__(f"{path}={_short(value)} is invalid: allowed {allowed}")
        self.path, self.value, self.allowed = path, value, allowed


def _short(v: Any, limit: int = 60) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 128:
        return f"<an integer of {v.bit_length()} bits>"
    if isinstance(v, (list, tuple, dict, set)):
        return f"<a {type(v).__name__} of {len(v)} item{'s' if len(v) != 1 else ''}>"
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


# ----------------------------------------------------------------------------- reading a class


@functools.cache
def _hint(cls: type, name: str) -> Any:
    """The evaluated type of one field (only that one: another field's type may exist
    only for type checkers, e.g. one that would import torch)."""
    t = _field(cls, name).type
    if isinstance(t, str):  # `from __future__ import annotations`
        t = eval(t, vars(sys.modules[cls.__module__]))  # the class's own annotation, as typing.get_type_hints does
    return t


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``(type, None allowed)`` of a hint such as ``float | None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), len(args) < len(typing.get_args(hint))
    return hint, hint is type(None)


def yaml_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` a YAML section may set (declaration order)."""
    return [f for f in dataclasses.fields(cls) if f.init and spec_of(f).yaml]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its docstring (the string literal under the field), read from the
    source of ``cls`` and its dataclass bases; {} when the source is not available."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for a, b in itertools.pairwise(body):
            if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                    and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                docs[a.target.id] = inspect.cleandoc(b.value.value)
    return docs


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring, on one line."""
    text = " ".join(doc.split())
    m = re.match(r"(.+?[.!?])(\s|$)", text)
    return m.group(1) if m else text


# ----------------------------------------------------------------------------- checking


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e12 else f"{x:g}"


def allowed_text(spec: Spec, typ: Any) -> str:
    """What a field allows, in words (the tail of an error message)."""
    if typ is bool:
        return "true or false"
    if spec.choices is not None:
        return "one of " + ", ".join(spec.choices)
    if typ in (int, float) or spec.integer or spec.lo is not None or spec.hi is not None:
        lo = -MAX_NUMBER if spec.lo is None else spec.lo
        hi = MAX_NUMBER if spec.hi is None else spec.hi
        if spec.lo_open and spec.hi_open:
            return f"a number in ({_fmt(lo)}, {_fmt(hi)})"
        return ("an integer" if spec.integer else "a finite number") + \
            f" {'>' if spec.lo_open else '>='} {_fmt(lo)} and {'<' if spec.hi_open else '<='} {_fmt(hi)}"
    return f"a {getattr(typ, '__name__', 'value')}"


def check(cls: type, name: str, value: Any, path: str | None = None) -> Any:
    """``value`` for field ``name`` of ``cls`` as the field holds it (an integer field's
    ``2.0`` is 2, a float field's ``2`` is 2.0), or ``FieldError``. Numbers are never
    booleans (``true`` is not 1), never NaN or ±Inf; ``None`` only where the type allows."""
    f = _field(cls, name)
    spec = spec_of(f)
    typ, nullable = _base_type(_hint(cls, name))
    if typ is int and not spec.integer:  # an int field is whole whether or not its spec says so
        spec = dataclasses.replace(spec, integer=True)
    path = name if path is None else path
    if value is None and nullable:
        return None

    def bad() -> FieldError:
        return FieldError(path, value, allowed_text(spec, typ))

    if typ is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if spec.choices is not None:
        if not isinstance(value, str) or value not in spec.choices:
            raise bad()
        return value
    if typ in (int, float) or spec.integer:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise bad()
        if isinstance(value, float) and (not math.isfinite(value) or (spec.integer and not value.is_integer())):
            raise bad()
        lo = -MAX_NUMBER if spec.lo is None else spec.lo
        hi = MAX_NUMBER if spec.hi is None else spec.hi
        if not ((value > lo if spec.lo_open else value >= lo) and (value < hi if spec.hi_open else value <= hi)):
            raise bad()
        return int(value) if spec.integer else float(value)
    if typ is str and not isinstance(value, str):
        raise bad()
    return value


# ----------------------------------------------------------------------------- command-line flags


def flag_name(f: dataclasses.Field) -> str | None:
    """The field's flag (``--max-batch``), or None when it has none."""
    spec = spec_of(f)
    if not spec.yaml or spec.flag is False:
        return None
    return spec.flag if isinstance(spec.flag, str) else "--" + f.name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser | Any, cls: type, *, section: str = "") -> None:
    """One flag per YAML field of ``cls``: its type, its choices, the first sentence of
    its docstring as help (with the default named) and its bounds checked as it is
    parsed. A flag not given is None (``given_flags`` leaves it out), so it overrides
    the workload only when it is given (``section``: the workload section it overrides,
    named in the help)."""
    docs = field_docs(cls)
    for f in yaml_fields(cls):
        flag = flag_name(f)
        if flag is None:
            continue
        typ, _ = _base_type(_hint(cls, f.name))
        default = f.default if f.default is not dataclasses.MISSING else None
        doc = first_sentence(docs.get(f.name, f.name)).replace("``", "")
        where = f"the workload's {section}.{f.name}, else " if section else ""
        help_ = f"{doc} (default: {where}{default})".replace("%", "%%")
        kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_}
        if typ is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif spec_of(f).choices is not None:
            kw["choices"] = spec_of(f).choices
        else:
            kw.update(type=_flag_type(cls, f.name, flag), metavar=f.name.upper())
        parser.add_argument(flag, **kw)


def _flag_type(cls: type, name: str, flag: str):
    typ, _ = _base_type(_hint(cls, name))

    def parse(text: str) -> Any:
        try:
            value: Any = float(text) if typ in (int, float) or spec_of(_field(cls, name)).integer else text
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        try:
            return check(cls, name, value, flag)
        except FieldError as e:
            raise argparse.ArgumentTypeError(f"{_short(text)} is invalid: allowed {e.allowed}") from None

    parse.__name__ = name
    return parse


def _field(cls: type, name: str) -> dataclasses.Field:
    return next(f for f in dataclasses.fields(cls) if f.name == name)


def given_flags(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """Field name -> value of the flags of ``cls`` given on the command line."""
    return {f.name: getattr(args, f.name) for f in yaml_fields(cls)
            if flag_name(f) is not None and getattr(args, f.name, None) is not None}
