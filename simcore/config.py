"""YAML loading that remembers where every value came from, preset inheritance, dotted overrides,
and validation against declarative schemas.

A `Doc` is plain data plus an origin map (key path -> "file:line"), so any later error can name the
file, the line and the key path of the value it is about.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from simcore import units
from simcore.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIRS = [ROOT / "configs"]
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


def _construct(node: yaml.Node, file: str, path: Path_, origin: dict) -> Any:
    origin[path] = (file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for k_node, v_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(k_node)))
            if key in out:
                raise ConfigError(
                    f"duplicate key {key!r}", file, k_node.start_mark.line + 1, ".".join(path + (key,))
                )
            out[key] = _construct(v_node, file, path + (key,), origin)
            origin[path + (key,)] = (file, k_node.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, file, path + (str(i),), origin) for i, v in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


_PARSED: dict[tuple[str, int, int], Doc] = {}


def load_yaml(path: str | Path) -> Doc:
    """Parse one YAML file; syntax errors become one-line ConfigErrors with file and line.

    Parsed files are remembered per (path, mtime, size) and handed out as copies: presets are read once
    per process, not once per design point of a sweep (YAML parsing dominates loading an experiment).
    """
    file = _short(path)
    try:
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
        if key not in _PARSED:
            _PARSED[key] = parse_yaml(Path(path).read_text(), file)
    except FileNotFoundError:
        raise ConfigError("no such file", file) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file) from None
    doc = _PARSED[key]
    return Doc(copy.deepcopy(doc.data), dict(doc.origin), file)


def parse_yaml(text: str, file: str = "<string>") -> Doc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        raise ConfigError(f"malformed YAML: {e.problem or e.context}", file, line) from None
    if node is None:
        return Doc({}, {(): (file, 1)}, file)
    origin: dict[Path_, tuple[str, int | None]] = {}
    return Doc(_construct(node, file, (), origin), origin, file)


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
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
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


@dataclass(frozen=True)
class Param:
    """One documented parameter: its unit kind (parsed to SI) or Python type, default and meaning."""

    doc: str
    unit: str | None = None
    default: Any = REQUIRED
    type: type = float
    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    exclusive_min: bool = True  # bandwidths, capacities, clocks must be > 0 unless stated

    def convert(self, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        if self.unit:
            out = units.parse(value, self.unit)
        elif self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {value!r}")
            out = value
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
                raise ValueError(f"expected an integer, got {value!r}")
            out = int(value)
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            out = float(value)
        elif self.type is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(f"expected a string, got {value!r}")
            out = str(value)
        else:
            out = self.type(value)
        if self.choices and out not in self.choices:
            raise ValueError(f"expected one of {', '.join(map(str, self.choices))}, got {value!r}")
        if self.minimum is not None and isinstance(out, int | float):
            bad = out <= self.minimum if self.exclusive_min else out < self.minimum
            if bad:
                rel = ">" if self.exclusive_min else ">="
                raise ValueError(f"must be {rel} {self.minimum:g}, got {value!r}")
        return out


def positive(doc: str, unit: str | None = None, default: Any = REQUIRED, type: type = float) -> Param:
    return Param(doc, unit, default, type, minimum=0)


def nonneg(doc: str, unit: str | None = None, default: Any = REQUIRED, type: type = float) -> Param:
    return Param(doc, unit, default, type, minimum=0, exclusive_min=False)


@dataclass(frozen=True)
class MapOf:
    """A mapping from free-form keys (e.g. dtypes) to values of one Param kind."""

    item: Param
    doc: str
    keys: tuple[str, ...] = ()  # allowed keys; empty = any
    default: Any = None


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


def dataclass_schema(*classes: type) -> dict[str, Param]:
    """The schema block the fields of `classes` declare, in field order (first class first).

    A field is documented by a Param in `metadata["param"]` (`param_field(...)`, or
    `dataclasses.field(default=..., metadata={"param": ...})`, whose default fills a Param that has none);
    fields without one are left out. A field several classes share is declared by the first; the others
    may word its doc differently but must validate it alike (unit, type, default, choices, minimum),
    else TypeError, as for a field whose default differs from its Param's.
    """
    out: dict[str, Param] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            param = f.metadata.get("param")
            if param is None:
                continue
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
