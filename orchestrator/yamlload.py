"""Reading a YAML file someone else wrote, without letting it hurt the reader.

``load_yaml_file(path, what)`` is ``yaml.safe_load`` plus the limits a driver needs
before it trusts a file:

- **size cap before parsing**: at most ``max_bytes`` are read (a ``/dev/zero`` or a
  multi-GB file is refused after reading ``max_bytes + 1`` bytes), and only regular
  files are read;
- **UTF-8**, the offending byte named by offset, line and column;
- **no anchors or aliases**: PyYAML expands an alias to the same object, so a 458-byte
  file of nested aliases ("billion laughs") became a 39 MB error message in the old
  loader; a workload has no need for them, so they are refused naming the line;
- **no duplicate keys** (PyYAML keeps the last one silently), named with both lines;
- **only string keys**, no merge keys (``<<``);
- **bounded nesting** (``max_depth``): PyYAML composes recursively, and a few thousand
  ``[`` used to end in a ``RecursionError`` traceback.

Anchors, aliases and depth are checked on the parser's event stream first, so nothing is
composed from a file that has them.

Every refusal is a ``YamlFileError`` whose message names the file and the line (and
column) and stays short: PyYAML's own text is cut to a few hundred characters and no
value is quoted at length.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

#: Largest YAML file read (a workload is a few KB; the biggest example is under 2 KB).
MAX_YAML_BYTES = 1 << 20
#: Deepest nesting of mappings and lists (a workload nests 4 deep; PyYAML's composer
#: recurses, so a few thousand levels ended in a RecursionError).
MAX_DEPTH = 32


class YamlFileError(ValueError):
    """A file that is not acceptable YAML; the message names the file and the place."""


def short(text: Any, limit: int = 60) -> str:
    """``repr`` of a value for an error message, at most ``limit`` characters; never
    builds the whole repr of a large container or int."""
    if isinstance(text, int) and not isinstance(text, bool) and text.bit_length() > 128:
        return f"<an integer of {text.bit_length()} bits>"
    if isinstance(text, (list, tuple, dict, set)):
        kind = type(text).__name__
        return f"<a {kind} of {len(text)} item{'s' if len(text) != 1 else ''}>"
    if isinstance(text, str) and len(text) > limit:
        return repr(text[: limit - 8]) + f"...({len(text)} chars)"
    r = repr(text)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def read_capped(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of a regular file, refusing one over ``max_bytes`` without reading more
    than ``max_bytes + 1``. ``what`` names the file's role in messages."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise YamlFileError(f"{what} {str(path)[:200]!r} cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise YamlFileError(f"{what} {str(path)[:200]!r} is not a regular file (a device, a folder or a pipe)")
    if st.st_size > max_bytes:
        raise YamlFileError(f"{what} {str(path)[:200]!r} is {st.st_size} bytes: allowed at most {max_bytes}")
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise YamlFileError(f"{what} {str(path)[:200]!r} cannot be read: {e.strerror or e}") from None
    if len(data) > max_bytes:  # grew since the stat
        raise YamlFileError(f"{what} {str(path)[:200]!r} is over {max_bytes} bytes: allowed at most {max_bytes}")
    return data


def decode_utf8(data: bytes, path: Path, what: str) -> str:
    """``data`` as text (a leading BOM dropped); a non-UTF-8 byte is named by offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise YamlFileError(f"{what} {str(path)[:200]!r} is not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} "
                            f"(line {line}, column {col})") from None
    return text.removeprefix("\ufeff")


#: libyaml's parser when PyYAML was built with it (30x faster: a 500 KB scalar parses in
#: 18 ms against 0.6 s), else PyYAML's pure-Python one. Only the parser differs; the
#: constructor (and so the checks below) is Python either way.
_BASE = getattr(yaml, "CSafeLoader", None) or yaml.SafeLoader


def _refuse(problem: str, mark) -> None:
    raise yaml.composer.ComposerError(None, None, problem, mark)


def _check_events(text: str, max_depth: int) -> None:
    """One pass over the parser's events: no alias, no anchor, nesting within bounds
    (stops at the first defect, before anything is composed or expanded)."""
    depth = 0
    for ev in yaml.parse(text, Loader=_BASE):
        if isinstance(ev, yaml.AliasEvent):
            _refuse("aliases (*name) are not allowed in this file", ev.start_mark)
        if getattr(ev, "anchor", None) is not None:
            _refuse("anchors (&name) are not allowed in this file", ev.start_mark)
        if isinstance(ev, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > max_depth:
                _refuse(f"nesting deeper than {max_depth} levels", ev.start_mark)
        elif isinstance(ev, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1


class _StrictLoader(_BASE):
    """The safe loader with mappings refusing merge keys, duplicate and non-string keys."""

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as e:  # a 6000-digit int, a 13th month: name the place
            if isinstance(e, yaml.YAMLError):
                raise
            raise yaml.constructor.ConstructorError(None, None, f"cannot read this {node.tag.rpartition(':')[2]} "
                                                    f"value ({str(e)[:120]})", node.start_mark) from None

    def construct_mapping(self, node, deep=False):
        seen: dict[str, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise yaml.constructor.ConstructorError(None, None, "merge keys (<<) are not allowed in this file",
                                                        key_node.start_mark)
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise yaml.constructor.ConstructorError(
                    None, None, f"a mapping key must be a string, not {type(key).__name__} {short(key, 40)}",
                    key_node.start_mark)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {short(key, 60)} (first at line {seen[key].line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _where(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "unknown place"


def _what(e: yaml.YAMLError) -> str:
    parts = [p for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p]
    text = "; ".join(parts) if parts else str(e).splitlines()[0]
    return text if len(text) <= 300 else text[:297] + "..."


def parse_yaml(text: str, path: Path, what: str = "YAML file", max_depth: int = MAX_DEPTH) -> Any:
    """The document in ``text`` (see the module docstring for what is refused)."""
    loader = None
    try:
        _check_events(text, max_depth)
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except yaml.reader.ReaderError as e:  # a character YAML does not allow (control characters)
        pos = int(getattr(e, "position", 0) or 0)
        line, col = text.count("\n", 0, pos) + 1, pos - (text.rfind("\n", 0, pos) + 1) + 1
        raise YamlFileError(f"{what} {str(path)[:200]!r}, line {line}, column {col}: character "
                            f"#x{int(getattr(e, 'character', 0)):04x} is not allowed in YAML") from None
    except yaml.YAMLError as e:
        raise YamlFileError(f"{what} {str(path)[:200]!r}, {_where(e)}: {_what(e)}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # a scalar PyYAML cannot build
        raise YamlFileError(f"{what} {str(path)[:200]!r}: {type(e).__name__}: {str(e)[:200]}") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml_file(path: str | Path, what: str = "YAML file", max_bytes: int = MAX_YAML_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """Read (capped), decode (UTF-8) and parse (strict) one YAML file."""
    p = Path(path)
    return parse_yaml(decode_utf8(read_capped(p, max_bytes, what), p, what), p, what, max_depth)
