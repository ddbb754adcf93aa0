"""The results store: one JSON file per design point, keyed by what determines its result.

A result is a pure function of the resolved experiment, the simulator (its version and its source code)
and the files it reads for it (hardware presets and their bases, the model config, the energy tables),
so the key is a hash of exactly those. Each record is written to a temporary file, fsync'ed and renamed into
place: a sweep killed at any moment leaves every finished point complete and nothing half-written,
and a re-run skips what is there.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import simcore
from simcore.config import ROOT, Doc, load_preset
from simcore.errors import ConfigError

ENERGY_DIR = ROOT / "configs" / "energy"
_file_hashes: dict[tuple[str, int, int], str] = {}
_preset_files: dict[tuple[str, str], tuple[str, ...]] = {}


def canonical(data: Any) -> str:
    """JSON with sorted keys and no whitespace: equal configs give equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


#: Packages whose code computes results; the sweep, plotting and CLI code around them does not.
CODE_DIRS = ("simcore", "hardware", "models")
_NOT_RESULT_CODE = (
    "simcore/sweep/",
    "simcore/plots.py",
    "simcore/cli.py",
    "simcore/commands.py",
    "simcore/native/",
)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 over the simulator's own source files: results computed by different code never share a key,
    even when `__version__` was not bumped (development checkouts change the engine between releases)."""
    h = hashlib.sha256()
    for d in CODE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            rel = p.relative_to(ROOT).as_posix()
            if rel.startswith(_NOT_RESULT_CODE):
                continue
            h.update(rel.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, remembered per (path, mtime, size) so a sweep hashes each file once."""
    p = os.path.abspath(path)
    st = os.stat(p)
    k = (p, st.st_mtime_ns, st.st_size)
    h = _file_hashes.get(k)
    if h is None:
        h = _file_hashes[k] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return h


def _display(path: str) -> str:
    p = Path(path).resolve()
    try:
        return str(p.relative_to(ROOT))
    except ValueError:
        return str(p)


def _preset_chain(ref: str, context: Doc) -> tuple[str, ...]:
    """Files a hardware preset (by name or path) is built from: itself, its `base:` chain and, for a
    system, its device presets."""
    ck = (ref, str(Path(context.file).parent))
    if ck not in _preset_files:
        doc = load_preset("hardware", ref, context, ("base",))
        files = {f for f, _ in doc.origin.values() if f and os.path.isfile(f)}
        devices = doc.data.get("devices") if isinstance(doc.data, Mapping) else None
        if isinstance(devices, Mapping):
            for entry in devices.values():
                if isinstance(entry, Mapping) and isinstance(entry.get("base"), str):
                    files.update(_preset_chain(entry["base"], doc))
        _preset_files[ck] = tuple(sorted(files))
    return _preset_files[ck]


def input_files(config: Mapping[str, Any], file: str, base_file: str | None = None) -> list[str]:
    """Every file the simulator reads to run `config` (an experiment mapping, hardware normalized)."""
    from models.llm import CONFIG_DIR

    files: set[str] = set()
    if base_file:
        files.add(base_file)
    hw = config.get("hardware")
    context = Doc(hw, {}, file)
    if isinstance(hw, Mapping) and isinstance(hw.get("base"), str):
        files.update(_preset_chain(hw["base"], context))
        for entry in (hw.get("devices") or {}).values() if isinstance(hw.get("devices"), Mapping) else ():
            if isinstance(entry, Mapping) and isinstance(entry.get("base"), str):
                files.update(_preset_chain(entry["base"], context))
    model = config.get("model")
    if isinstance(model, str):
        p = Path(model) if Path(model).suffix else CONFIG_DIR / f"{model}.json"
        if p.is_file():
            files.add(str(p))
    files.update(str(p) for p in ENERGY_DIR.glob("*.yaml"))
    return sorted(files)


def _refs(config: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a config that choose which files are read (presets, model)."""
    hw = config.get("hardware")
    if not isinstance(hw, Mapping):
        return (repr(hw), repr(config.get("model")))
    devices = hw.get("devices")
    dev = tuple(sorted((str(k), repr(v.get("base")) if isinstance(v, Mapping) else "")
                       for k, v in devices.items())) if isinstance(devices, Mapping) else ()  # fmt: skip
    return (repr(hw.get("base")), dev, repr(config.get("model")))


def point_key(
    config: Mapping[str, Any], file: str, base_file: str | None = None, memo: dict | None = None
) -> tuple[str, dict[str, str]]:
    """(key, {input file: sha256}) of a resolved experiment mapping. `memo` (one dict per sweep run)
    remembers the inputs of configs that read the same presets and model."""
    ref = (_refs(config), file, base_file)
    inputs = memo.get(ref) if memo is not None else None
    if inputs is None:
        try:
            inputs = {_display(f): file_hash(f) for f in input_files(config, file, base_file)}
        except ConfigError:
            inputs = {}  # an unknown preset: the point fails when it runs, and is recorded as such
        if memo is not None:
            memo[ref] = inputs
    text = canonical({"config": config, "version": simcore.__version__, "code": code_fingerprint(),
                      "inputs": sorted(inputs.values())})  # fmt: skip
    return hashlib.sha256(text.encode()).hexdigest(), inputs


# -------------------------------------------------------------------------------------------- store
class Store:
    """A directory of point records: `points/<k[:2]>/<key>.json`, each written atomically.

    A record is visible the moment it is renamed into place, so a killed sweep (SIGKILL, Ctrl-C) loses
    nothing and repeats nothing. Against power loss, a durable store flushes to disk once per batch of
    records (`flush`, called at the end of every chunk) rather than twice per record: a crash of the
    machine can cost at most the last batch, which is then recomputed, never stored twice."""

    def __init__(self, root: str | Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.points = self.root / "points"
        self.durable = durable
        self._unsynced = 0

    def path(self, key: str) -> Path:
        return self.points / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The record for `key`, or None (missing, or unreadable: then it is simply recomputed)."""
        try:
            with open(self.path(key), "rb") as f:
                rec = json.loads(f.read())
        except (FileNotFoundError, NotADirectoryError, ValueError):
            return None
        return rec if isinstance(rec, dict) and rec.get("key") == key else None

    def keys(self) -> set[str]:
        """Keys of every record present (one directory scan)."""
        out: set[str] = set()
        if not self.points.is_dir():
            return out
        for sub in os.scandir(self.points):
            if sub.is_dir():
                out.update(e.name[:-5] for e in os.scandir(sub.path) if e.name.endswith(".json"))
        return out

    def put(self, record: Mapping[str, Any]) -> Path:
        """Write one record atomically: temp file, rename (flushed to disk by `flush`)."""
        key = record["key"]
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{os.getpid()}.tmp"
        data = json.dumps(record, sort_keys=True, default=float).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        self._unsynced += 1
        return final

    def flush(self) -> None:
        """Make every record written so far durable (one sync for the whole batch)."""
        if self.durable and self._unsynced:
            os.sync()
        self._unsynced = 0

    def records(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        ks = self.keys() if keys is None else keys
        return [r for r in (self.get(k) for k in ks) if r is not None]

    def clean(self) -> int:
        """Remove temp files left by writers that no longer run (a killed sweep); returns how many."""
        n = 0
        if not self.points.is_dir():
            return 0
        for tmp in self.points.glob("*/.*.tmp"):
            try:
                pid = int(tmp.name.rsplit(".", 2)[-2])
            except ValueError:
                continue
            if not _alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    n += 1
        return n

    def write_text(self, name: str, text: str) -> Path:
        """A sweep-level file (summary CSV, sweep metadata), replaced atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, final)
        return final


def _alive(pid: int) -> bool:
    """Whether a process still runs (a zombie, killed but not yet reaped, does not)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
