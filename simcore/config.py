"""YAML loading that remembers where every value came from, preset inheritance, dotted overrides,
and validation against declarative schemas.

A `Doc` is plain data plus an origin map (key path -> "file:line"), so any later error can name the
file, the line and the key path of the value it is about.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simcore import units
from simcore.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
#: presets, energy tables, experiments and sweeps: an installed package carries them as simcore/configs
#: (pyproject.toml maps the top-level configs/ there); a clone or editable install reads configs/ itself
CONFIG_ROOT = (
    Path(__file__).resolve().parent / "configs"
    if (Path(__file__).resolve().parent / "configs").is_dir()
    else ROOT / "configs"
)
CONFIG_DIRS = [CONFIG_ROOT]
Path_ = tuple[str, ...]


@dataclass
class Doc:
    """Plain YAML data plus where each key path was written."""

    data: Any
    origin: dict[Path_, tuple[str, int | None]] = field(default_factory=dict)
    file: str = "<input>"

    def where(self, path: Path_) -> tuple[str, int | None]:
        """The nearest recorded origin of `path` or of one of its parents."""
        for i in range(len(path), -1, -1):
            if path[:i] in self.origin:
                return self.origin[path[:i]]
        return (self.file, None)

    def error(self, path: Path_, message: str) -> ConfigError:
        file, line = self.where(path)
        if file.startswith("--"):  # came from a CLI flag
            return ConfigError(message, file=None, key=f"{file} {'.'.join(path)}")
        return ConfigError(message, file=file, line=line, key=".".join(path) or None)

    def get(self, path: Path_, default: Any = None) -> Any:
        node = self.data
        for key in path:
            if isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            elif isinstance(node, Mapping) and key in node:
                node = node[key]
            else:
                return default
        return node

    def sub(self, path: Path_) -> Doc:
        """The part of the document under `path`, origins re-rooted."""
        n = len(path)
        origin = {p[n:]: o for p, o in self.origin.items() if p[:n] == path}
        if () not in origin:
            origin[()] = self.where(path)
        return Doc(self.get(path), origin, self.file)


def _short(path: str | Path) -> str:
    """Paths below the working directory are shown relative to it, others absolute."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


#: Limits on what one YAML file may ask for: nesting depth, values constructed (aliases count each time
#: they are expanded, so a few hundred bytes of "billion laughs" stop here), bytes read from disk.
MAX_DEPTH = 64
MAX_NODES = 100_000
MAX_FILE_BYTES = 4 * 2**20

_T = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_T + "null", _T + "bool", _T + "int", _T + "float", _T + "str"}
_PLAIN_TAGS = _SCALAR_TAGS | {_T + "seq", _T + "map"}
#: implicit resolutions the safe loader would turn into something else than plain data: kept as text
_AS_TEXT = {_T + "timestamp", _T + "value", _T + "merge"}
_SAFE = yaml.constructor.SafeConstructor()
#: control characters a value may not hold (escaped in a quoted string): tab and line breaks are fine
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _Builder:
    """Turns a composed YAML node graph into plain data (dicts, lists, str, int, float, bool, None),
    recording the line of every key path; refuses explicit tags, merge keys, non-scalar keys, and
    documents nested deeper than MAX_DEPTH or expanding to more than MAX_NODES values."""

    def __init__(self, file: str, origin: dict) -> None:
        self.file, self.origin, self.nodes = file, origin, 0

    def error(self, message: str, node: yaml.Node, path: Path_) -> ConfigError:
        return ConfigError(message, self.file, node.start_mark.line + 1, ".".join(path) or None)

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            # named at the top-level key being built: an alias's node carries its anchor's line
            line = self.origin.get(path[:1], (self.file, node.start_mark.line + 1))[1]
            msg = f"more than {MAX_NODES:,} values (aliases expanding too far?)"
            raise ConfigError(msg, self.file, line, ".".join(path[:1]) or None)
        if len(path) > MAX_DEPTH:
            raise self.error(f"nested deeper than {MAX_DEPTH} levels", node, path)
        self.origin[path] = (self.file, node.start_mark.line + 1)
        tag = node.tag
        if isinstance(node, yaml.MappingNode):
            if tag != _T + "map":
                raise self.error(f"YAML tag {tag!r} is not supported (plain mappings only)", node, path)
            out: dict[str, Any] = {}
            for k_node, v_node in node.value:
                if not isinstance(k_node, yaml.ScalarNode):
                    raise self.error("a key must be a plain value, not a mapping or a list", k_node, path)
                if k_node.tag == _T + "merge":
                    raise self.error("merge keys ('<<') are not supported: write the keys out, or use "
                                     "`base:` to inherit a preset", k_node, path)  # fmt: skip
                key = str(self.scalar(k_node, path))
                if key in out:
                    raise self.error(f"duplicate key {key!r}", k_node, path + (key,))
                out[key] = self.build(v_node, path + (key,))
                self.origin[path + (key,)] = (self.file, k_node.start_mark.line + 1)
            return out
        if isinstance(node, yaml.SequenceNode):
            if tag != _T + "seq":
                raise self.error(f"YAML tag {tag!r} is not supported (plain lists only)", node, path)
            return [self.build(v, path + (str(i),)) for i, v in enumerate(node.value)]
        return self.scalar(node, path)

    def scalar(self, node: yaml.ScalarNode, path: Path_) -> Any:
        tag = node.tag
        if tag in _AS_TEXT and node.style is None:  # implicitly resolved (a date, '=', '<<'): the text
            return node.value
        if tag not in _SCALAR_TAGS:
            raise self.error(f"YAML tag {tag!r} is not supported (plain values only)", node, path)
        if _CONTROL.search(node.value):
            bad = _CONTROL.search(node.value).group(0)
            raise self.error(f"control character {bad!r} in {units.short_repr(node.value)}", node, path)
        try:  # the safe loader's own scalar constructors (no shared state: threads may parse at once)
            return _SAFE.yaml_constructors[tag](_SAFE, node)
        except (
            ValueError,
            OverflowError,
            KeyError,
            TypeError,
            yaml.YAMLError,
        ) as e:  # `!!bool x`, 5000 digits
            raise self.error(
                f"cannot read {units.short_repr(node.value)}: {str(e).splitlines()[0]}", node, path
            ) from None


_PARSED: dict[tuple[str, int, int], Doc] = {}


def read_text(path: str | Path, file: str | None = None) -> str:
    """The UTF-8 text of a regular file of at most MAX_FILE_BYTES; anything else (a directory, a device
    such as /dev/zero, a FIFO, a larger file, undecodable bytes) is a one-line ConfigError."""
    file = file or _short(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a YAML file", file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError("is a directory, not a YAML file", file)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError("not a regular file (a device, FIFO or socket cannot be read as YAML)", file)
        if st.st_size > MAX_FILE_BYTES:
            raise ConfigError(f"file too large ({st.st_size:,} bytes; at most {MAX_FILE_BYTES:,})", file)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            raise ConfigError(f"cannot read: {e.strerror}", file) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"file too large (more than {MAX_FILE_BYTES:,} bytes)", file)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})", file, line
        ) from None


def load_yaml(path: str | Path) -> Doc:
    """Parse one YAML file; every error becomes a one-line ConfigError with file and line.

    Parsed files are remembered per (path, mtime, size) and handed out as copies: presets are read once
    per process, not once per design point of a sweep (YAML parsing dominates loading an experiment).
    """
    file = _short(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file) from None
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key not in _PARSED or not stat.S_ISREG(st.st_mode):
        _PARSED[key] = parse_yaml(read_text(path, file), file)
    doc = _PARSED[key]
    return Doc(copy.deepcopy(doc.data), dict(doc.origin), file)


def _line_of(text: str, index: int | None) -> int | None:
    return None if index is None else text.count("\n", 0, index) + 1


_FLOW = re.compile(r"""[\[\]{}\n]|(?:^|(?<=\s))#[^\n]*|"(?:[^"\\]|\\.)*"|'(?:[^']|'')*'""")


def _too_deep_line(text: str) -> int | None:
    """The line where flow collections (`[`, `{`) first nest deeper than MAX_DEPTH, or None; quoted strings
    and comments are skipped. A cheap scan before parsing: PyYAML's parser takes time quadratic in the
    depth and its composer recurses, so a few kilobytes of brackets would take seconds to refuse."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth, line = 0, 1
    for m in _FLOW.finditer(text):
        tok = m.group(0)
        if tok == "\n":
            line += 1
        elif tok in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif tok in "]}":
            depth = max(depth - 1, 0)
        else:
            line += tok.count("\n")
    return None


def parse_yaml(text: str, file: str = "<string>") -> Doc:
    """Parse YAML text into a located Doc. Malformed YAML, tags, merge keys, control characters, nesting
    deeper than MAX_DEPTH and alias bombs are one-line ConfigErrors naming file and line."""
    deep = _too_deep_line(text)
    if deep is not None:
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", file, deep)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        what = (e.problem or e.context or "").strip()
        raise ConfigError(f"malformed YAML: {what}", file, line) from None
    except yaml.reader.ReaderError as e:  # a control character or other unprintable one
        raise ConfigError(f"malformed YAML: unprintable character {e.character!r} (code point "
                          f"{ord(e.character) if isinstance(e.character, str) else e.character:#x})",
                          file, _line_of(text, e.position)) from None  # fmt: skip
    except yaml.YAMLError as e:
        raise ConfigError(f"malformed YAML: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                          file) from None  # fmt: skip
    except RecursionError:  # block nesting (indentation) the scan above does not count
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", file) from None
    if node is None:
        return Doc({}, {(): (file, 1)}, file)
    origin: dict[Path_, tuple[str, int | None]] = {}
    try:
        data = _Builder(file, origin).build(node, ())
    except RecursionError:  # not reached: the builder stops at MAX_DEPTH
        raise ConfigError(f"nested deeper than {MAX_DEPTH} levels", file) from None
    return Doc(data, origin, file)


# ----------------------------------------------------------------------------------------- presets


def preset_dirs(kind: str) -> list[Path]:
    return [d / kind for d in CONFIG_DIRS if (d / kind).is_dir()]


_PRESETS: dict[str, dict[str, Path]] = {}


def _preset_index(kind: str, refresh: bool = False) -> dict[str, Path]:
    """Preset name -> file, scanned once per process (and again when a name is not found, so presets
    written during a session are seen)."""
    if refresh or kind not in _PRESETS:
        index: dict[str, Path] = {}
        for d in preset_dirs(kind):
            for p in sorted(d.rglob("*.yaml")):
                index.setdefault(p.stem, p)
        _PRESETS[kind] = index
    return _PRESETS[kind]


def preset_names(kind: str) -> list[str]:
    return sorted(_preset_index(kind, refresh=True))


def preset_path(kind: str, name: str) -> Path | None:
    return _preset_index(kind).get(name) or _preset_index(kind, refresh=True).get(name)


def resolve_ref(kind: str, ref: str, context: Doc | None = None, path: Path_ = ()) -> Path:
    """A preset name or a path to a YAML file."""
    p = Path(ref)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_absolute() and context is not None and not p.exists():
            p = Path(context.file).parent / p
        if p.exists():
            return p
        msg = f"no such file {ref!r}"
    else:
        found = preset_path(kind, ref)
        if found:
            return found
        msg = f"unknown {kind.rstrip('s')} preset {ref!r} (see `simcore hw list`)"
    if context is not None:
        raise context.error(path, msg)
    raise ConfigError(msg)


def merge(base: Doc, over: Doc) -> Doc:
    """Deep-merge `over` onto `base`; mappings merge key by key, anything else is replaced."""
    data = copy.deepcopy(base.data)
    origin = dict(base.origin)

    def walk(dst: dict, src: Mapping, path: Path_) -> None:
        for k, v in src.items():
            p = path + (k,)
            if isinstance(v, Mapping) and isinstance(dst.get(k), Mapping):
                walk(dst[k], v, p)
            else:
                dst[k] = copy.deepcopy(v)
                for q in [q for q in origin if q[: len(p)] == p]:
                    del origin[q]
            for q, o in over.origin.items():
                if q[: len(p)] == p and (q == p or not isinstance(v, Mapping) or q not in origin):
                    origin[q] = o

    if not isinstance(over.data, Mapping) or not isinstance(data, Mapping):
        return over
    walk(data, over.data, ())
    return Doc(data, origin, over.file)


#: (kind, path, chain so far) -> (stat keys of every file in the base chain, resolved preset)
_RESOLVED: dict[tuple[str, str, tuple[str, ...]], tuple[tuple[tuple[str, int, int], ...], Doc]] = {}


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return (path, st.st_mtime_ns, st.st_size)


def load_preset(kind: str, ref: str | Path, context: Doc | None = None, path: Path_ = (),
                _seen: tuple[str, ...] = ()) -> Doc:  # fmt: skip
    """Load a preset (by name or file) with its `base:` chain resolved; `base` is removed.

    Resolved presets are remembered per process while none of the files of their chain changes (a sweep
    resolves the same few presets at every point), and handed out as copies like `load_yaml`'s."""
    p = ref if isinstance(ref, Path) else resolve_ref(kind, ref, context, path)
    key = (kind, os.path.abspath(p), _seen)
    hit = _RESOLVED.get(key)
    try:
        fresh = hit is not None and all(_stat_key(k[0]) == k for k in hit[0])
    except OSError:
        fresh = False
    if hit is None or not fresh:
        doc = load_yaml(p)
        if not isinstance(doc.data, Mapping):
            raise doc.error((), "expected a mapping at the top level")
        seen = _seen + (str(p),)
        resolved = resolve_bases(kind, doc, seen)
        files = [key[1]]
        base = _base_path(kind, doc)
        if base is not None:  # resolve_bases has just remembered the base's own chain
            files += [k[0] for k in _RESOLVED[(kind, base, seen)][0]]
        hit = _RESOLVED[key] = (tuple(_stat_key(f) for f in files), resolved)
    return Doc(copy.deepcopy(hit[1].data), dict(hit[1].origin), hit[1].file)


def _base_path(kind: str, doc: Doc) -> str | None:
    """Absolute path of a preset document's `base:`, or None."""
    base = doc.data.get("base") if isinstance(doc.data, Mapping) else None
    return os.path.abspath(resolve_ref(kind, base, doc, ("base",))) if isinstance(base, str) else None


def resolve_bases(kind: str, doc: Doc, seen: tuple[str, ...] = ()) -> Doc:
    base = doc.data.get("base") if isinstance(doc.data, Mapping) else None
    if base is None:
        return doc
    if not isinstance(base, str):
        raise doc.error(("base",), "expected a preset name or a YAML path")
    p = resolve_ref(kind, base, doc, ("base",))
    if str(p) in seen:
        raise doc.error(("base",), f"inheritance cycle through {base!r}")
    parent = load_preset(kind, p, _seen=seen)
    if isinstance(parent.data, dict) and "abstract" in parent.data:  # abstractness is not inherited
        parent = Doc({k: v for k, v in parent.data.items() if k != "abstract"},
                     {q: o for q, o in parent.origin.items() if q[:1] != ("abstract",)}, parent.file)  # fmt: skip
    data = {k: v for k, v in doc.data.items() if k != "base"}
    origin = {q: o for q, o in doc.origin.items() if q[:1] != ("base",)}
    return merge(parent, Doc(data, origin, doc.file))


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=3 TB/s' -> ('a.b', '3 TB/s'); the value is read as YAML so numbers and lists work."""
    if "=" not in text:
        raise ConfigError(f"expected KEY=VALUE, got {text!r}", key="--set")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"empty key in {text!r}", key="--set")
    if not raw.strip():
        value: Any = ""
    else:
        try:  # the value is read as YAML with the limits of a file (tags, depth, aliases); else it is text
            value = parse_yaml(raw, "--set").data
            if value == {} and "{" not in raw:  # only a comment: no value
                value = None
        except ConfigError:
            value = raw
    return key, value


def apply_overrides(doc: Doc, overrides: Iterable[str | tuple[str, Any]], flag: str = "--set") -> Doc:
    """Set dotted keys (`memory.bandwidth=4 TB/s`); unknown keys are caught later by validation."""
    data = copy.deepcopy(doc.data) if doc.data is not None else {}
    origin = dict(doc.origin)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = tuple(key.split("."))
        node = data
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part) if isinstance(node, dict) else None
            if nxt is None:
                node[part] = nxt = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])} is not a mapping", key=f"{flag} {key}")
            node = nxt
        node[parts[-1]] = value
        for q in [q for q in origin if q[: len(parts)] == parts]:
            del origin[q]
        origin[parts] = (flag, None)
    return Doc(data, origin, doc.file)


# ------------------------------------------------------------------------------------- experiments

#: `hardware: NAME` in an experiment is shorthand for `hardware: {base: NAME}` (a preset name or a YAML
#: path); this is the key path NAME really sets, so overrides and sweep axes can add keys next to it.
HARDWARE_BASE: Path_ = ("hardware", "base")


def expand_hardware_shorthand(doc: Doc) -> Doc:
    """An experiment document with `hardware: NAME` written out as `hardware: {base: NAME}`, the origin of
    `hardware.base` being where NAME was written; a document without the shorthand is returned as it is.
    An experiment that is not a mapping is a ConfigError."""
    if not isinstance(doc.data, Mapping):
        raise doc.error((), "an experiment must be a mapping")
    top, base = HARDWARE_BASE
    if not isinstance(doc.data.get(top), str):
        return doc
    data = copy.deepcopy(doc.data)
    data[top] = {base: data[top]}
    origin = dict(doc.origin)
    origin[HARDWARE_BASE] = doc.where((top,))
    return Doc(data, origin, doc.file)


# ------------------------------------------------------------------------------------------ schema


REQUIRED = object()

#: The largest value an integer parameter takes unless its Param says otherwise (`maximum=`): a count of
#: devices, SMs, lanes, tokens or sequences beyond it is a typo, and would only make a run hang.
MAX_INT = 2**24


@dataclass(frozen=True)
class Param:
    """One documented parameter: its unit kind (parsed to SI) or Python type, default and meaning.

    Numbers are finite; `minimum`/`maximum` bound them (exclusive unless stated); integers are >= 0 unless
    `minimum` says otherwise and at most MAX_INT unless `maximum` does."""

    doc: str
    unit: str | None = None
    default: Any = REQUIRED
    type: type = float
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    exclusive_min: bool = True  # bandwidths, capacities, clocks must be > 0 unless stated
    maximum: float | None = None
    exclusive_max: bool = False  # fractions are in (0, 1]

    def convert(self, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if self.unit:
            out = units.parse(value, self.unit)
        elif self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {units.short_repr(value)}")
            out = value
        elif self.type is int:
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"expected an integer, got {value!r}")
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise ValueError(f"expected an integer, got {units.short_repr(value)}")
            out = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {units.short_repr(value)}")
            try:
                out = float(value)
            except OverflowError:
                raise ValueError(f"{units.short_repr(value)} is out of range") from None
        elif self.type is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(f"expected a string, got {units.short_repr(value)}")
            out = str(value)
        else:
            try:
                out = self.type(value)
            except (TypeError, KeyError, OverflowError, IndexError) as e:
                raise ValueError(f"expected a {getattr(self.type, '__name__', 'value')}, got "
                                 f"{units.short_repr(value)} ({e})") from None  # fmt: skip
        if self.choices and out not in self.choices:
            raise ValueError(
                f"expected one of {', '.join(map(str, self.choices))}, got {units.short_repr(value)}"
            )
        if isinstance(out, int | float) and not isinstance(out, bool):
            self._check_range(out, value)
        return out

    def _check_range(self, out: float, value: Any) -> None:
        if isinstance(out, float) and not math.isfinite(out):
            raise ValueError(f"must be a finite number, got {units.short_repr(value)}")
        if self.minimum is not None:
            if out <= self.minimum if self.exclusive_min else out < self.minimum:
                rel = ">" if self.exclusive_min else ">="
                raise ValueError(f"must be {rel} {self.minimum:g}, got {units.short_repr(value)}")
        elif isinstance(out, int) and out < 0:  # integers count things (lanes, links, generations)
            raise ValueError(f"must be >= 0, got {units.short_repr(value)}")
        top = self.maximum if self.maximum is not None else (MAX_INT if isinstance(out, int) else None)
        if top is not None and (out >= top if self.exclusive_max else out > top):
            rel = "<" if self.exclusive_max else "<="
            raise ValueError(f"must be {rel} {top if isinstance(top, int) else f'{top:g}'}, got "
                             f"{units.short_repr(value)}")  # fmt: skip


def positive(doc: str, unit: str | None = None, default: Any = REQUIRED, type: type = float,
             maximum: float | None = None) -> Param:  # fmt: skip
    """A quantity > 0 (bandwidths, capacities, clocks, counts >= 1), finite, at most `maximum`."""
    return Param(doc, unit, default, type, minimum=0, maximum=maximum)


def nonneg(doc: str, unit: str | None = None, default: Any = REQUIRED, type: type = float,
           maximum: float | None = None) -> Param:  # fmt: skip
    """A quantity >= 0 (latencies, idle power, energies), finite, at most `maximum`."""
    return Param(doc, unit, default, type, minimum=0, exclusive_min=False, maximum=maximum)


def fraction(doc: str, default: Any = REQUIRED) -> Param:
    """A share in (0, 1]: efficiencies, the compute share of power."""
    return Param(doc, None, default, float, minimum=0, maximum=1)


def count(doc: str, default: Any = REQUIRED, maximum: int = MAX_INT) -> Param:
    """An integer >= 1 and at most `maximum` (devices, SMs, lanes, sequences)."""
    return Param(doc, None, default, int, minimum=0, maximum=maximum)


@dataclass(frozen=True)
class MapOf:
    """A mapping from free-form keys (e.g. dtypes) to values of one Param kind."""

    item: Param
    doc: str
    keys: tuple[str, ...] = ()  # allowed keys; empty = any
    default: Any = None  # REQUIRED: the mapping must be given, with at least one entry


Schema = Mapping[str, "Param | MapOf | Mapping"]


#: The value `walk_schema` reports for a key the data does not hold.
ABSENT = object()

Entry = Param | MapOf | Mapping[str, Any]


def walk_schema(schema: Schema, data: Any = None, path: Path_ = ()) -> Iterator[tuple[Path_, Entry, Any]]:
    """Every entry of `schema`, depth first in declaration order, as (key path, entry, value): a Param,
    a MapOf, or a nested block, which comes before its own entries. The value is what the mapping
    `data` holds at that path, ABSENT where it holds nothing (a block whose value is not a mapping is
    walked with its entries ABSENT). The one walk behind validation, `describe`, `hw show` and the
    sweep's defaults; a consumer that raises on a block stops the walk before it descends into it.
    """
    values = data if isinstance(data, Mapping) else {}
    for key, entry in schema.items():
        p = path + (key,)
        value = values.get(key, ABSENT)
        yield p, entry, value
        if not isinstance(entry, Param | MapOf):
            yield from walk_schema(entry, value, p)


def _check_block(doc: Doc, path: Path_, data: Any, schema: Schema, ignore: tuple[str, ...] = ()) -> None:
    """A block's value must be a mapping (or empty) holding only keys its schema declares."""
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise doc.error(path, f"expected a mapping, got {type(data).__name__} {data!r}")
    unknown = [k for k in data if k not in schema and k not in ignore]
    if unknown:
        k = unknown[0]
        known = ", ".join(sorted(schema))
        raise doc.error(path + (k,), f"unknown key {k!r} (known: {known})")


def validate(doc: Doc, schema: Schema, path: Path_ = (), ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check `doc.data` at `path` against `schema`; return SI-converted values with defaults filled.

    Unknown keys, missing required keys, wrong units and out-of-range values raise ConfigError naming
    file, line and key path. `ignore` lists keys allowed at the top level without being validated.
    """
    data = doc.get(path, {})
    _check_block(doc, path, data, schema, ignore)
    out: dict[str, Any] = {}
    blocks: dict[Path_, dict[str, Any]] = {path: out}  # converted mapping of each block
    for p, spec, value in walk_schema(schema, data, path):
        parent, key = blocks[p[:-1]], p[-1]
        if isinstance(spec, Param):
            if value is ABSENT:
                if spec.default is REQUIRED:
                    raise doc.error(p[:-1], f"missing required key {key!r} ({spec.doc})")
                parent[key] = spec.default
                continue
            try:
                parent[key] = spec.convert(value)
            except ValueError as e:
                raise doc.error(p, str(e)) from None
        elif isinstance(spec, MapOf):
            if value is ABSENT and spec.default is REQUIRED:
                raise doc.error(p[:-1], f"missing required key {key!r} ({spec.doc})")
            if value is not ABSENT and spec.default is REQUIRED and not value:
                raise doc.error(p, f"needs at least one entry ({spec.doc})")
            sub = (spec.default if value is ABSENT else value) or {}
            if not isinstance(sub, Mapping):
                raise doc.error(p, f"expected a mapping, got {sub!r}")
            conv = {}
            for k, v in sub.items():
                if spec.keys and k not in spec.keys:
                    raise doc.error(p + (k,), f"unknown key {k!r} (known: {', '.join(spec.keys)})")
                try:
                    conv[k] = spec.item.convert(v)
                except ValueError as e:
                    raise doc.error(p + (k,), str(e)) from None
            parent[key] = conv
        else:
            _check_block(doc, p, None if value is ABSENT else value, spec)
            parent[key] = blocks[p] = {}
    return out


def describe(schema: Schema, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key path, unit/type, default, doc) rows: the reference `simcore hw params` prints."""
    rows = []
    for path, spec, _ in walk_schema(schema):
        name = prefix + ".".join(path)
        if isinstance(spec, Param):
            kind = spec.unit or spec.type.__name__
            if spec.default is REQUIRED:
                dflt = "required"
            elif spec.default is None:
                dflt = "-"
            else:
                dflt = units.fmt(float(spec.default), spec.unit) if spec.unit else str(spec.default)
            doc = spec.doc + (f" ({' | '.join(map(str, spec.choices))})" if spec.choices else "")
            rows.append((name, kind, dflt, doc))
        elif isinstance(spec, MapOf):
            keys = f" ({', '.join(spec.keys)})" if spec.keys else ""
            rows.append((name + ".<key>", spec.item.unit or spec.item.type.__name__, "-", spec.doc + keys))
    return rows


def schema_defaults(schema: Schema) -> dict[str, Any]:
    """Dotted key -> default of every Param in `schema` (None where the key is required)."""
    return {".".join(p): None if spec.default is REQUIRED else spec.default
            for p, spec, _ in walk_schema(schema) if isinstance(spec, Param)}  # fmt: skip


def param_field(param: Param) -> Any:
    """A dataclass field documented by `param`, its default the Param's:
    `batch: int = param_field(positive("sequences in the batch", type=int, default=1))`."""
    default = dataclasses.MISSING if param.default is REQUIRED else param.default
    return dataclasses.field(default=default, metadata={"param": param})


def block_field(cls: type) -> Any:
    """A dataclass field that is a nested YAML block (a mapping) whose keys are the documented fields of
    the dataclass `cls`; it defaults to `cls()`, so every field of `cls` needs a default:
    `requests: Requests = block_field(Requests)` accepts `requests: {count: 50, rate_per_s: 5}`."""
    return dataclasses.field(default_factory=cls, metadata={"block": cls})


def dataclass_schema(*classes: type) -> dict[str, Param | dict[str, Any]]:
    """The schema block the fields of `classes` declare, in field order (first class first).

    A field is documented by a Param in `metadata["param"]` (`param_field(...)`, or
    `dataclasses.field(default=..., metadata={"param": ...})`, whose default fills a Param that has none),
    or is a nested block (`block_field(cls)`: the schema of `cls`'s fields); fields without either are
    left out. A field several classes share is declared by the first; the others may word its doc
    differently but must validate it alike (unit, type, default, choices, minimum; a block: the same
    class), else TypeError, as for a field whose default differs from its Param's.
    """
    out: dict[str, Param | dict[str, Any]] = {}
    blocks: dict[str, type] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            block = f.metadata.get("block")
            if block is not None:
                if blocks.setdefault(f.name, block) is not block or not isinstance(out.get(f.name, {}), dict):
                    raise TypeError(
                        f"{cls.__name__}.{f.name} is a block unlike the {f.name!r} declared before"
                    )
                out.setdefault(f.name, dataclass_schema(block))
                continue
            param = f.metadata.get("param")
            if param is None:
                continue
            if f.name in blocks:
                raise TypeError(f"{cls.__name__}.{f.name} is a parameter, declared before as a block")
            if not isinstance(param, Param):
                raise TypeError(f"{cls.__name__}.{f.name}: metadata['param'] is not a Param: {param!r}")
            if f.default is not dataclasses.MISSING:
                if param.default is REQUIRED:
                    param = dataclasses.replace(param, default=f.default)
                elif f.default != param.default:
                    raise TypeError(f"{cls.__name__}.{f.name} defaults to {f.default!r}, its Param to "
                                    f"{param.default!r}")  # fmt: skip
            first = out.setdefault(f.name, param)
            if dataclasses.replace(first, doc="") != dataclasses.replace(param, doc=""):
                raise TypeError(f"{cls.__name__}.{f.name} is validated unlike the {f.name!r} declared before "
                                f"({param} vs {first})")  # fmt: skip
    return out


def build_dataclass(cls: type, values: Mapping[str, Any]) -> Any:
    """An instance of dataclass `cls` from validated `values` (what `validate` returns for its block):
    keys that are not fields of `cls` are left out, nested blocks (`block_field`) are built from theirs."""
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, block = values[f.name], f.metadata.get("block")
        nested = block is not None and isinstance(value, Mapping)
        kw[f.name] = build_dataclass(block, value) if nested else value
    return cls(**kw)
