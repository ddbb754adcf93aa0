"""The results store: one JSON file per design point, keyed by what determines its result.

A result is a pure function of the resolved experiment, the simulator (its version and its source code)
and the files it reads for it (hardware presets and their bases, the model config, the energy tables),
so the key is a hash of exactly those. Each record is written to a temporary file and renamed into place,
with a checksum of its content: a sweep killed at any moment leaves every finished point complete and
nothing half-written, a re-run skips what is there, and a damaged or edited record is recomputed.
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

try:
    import fcntl
except ImportError:  # not POSIX: no cross-process claims
    fcntl = None  # type: ignore[assignment]

import simcore
from simcore.config import CONFIG_ROOT, ROOT, Doc, load_preset
from simcore.errors import ConfigError, SimError

ENERGY_DIR = CONFIG_ROOT / "energy"
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
class StoreError(SimError):
    """The store directory itself is unusable (a file where a directory should be, no permission)."""

    exit_code = 2


class StoreWarning(UserWarning):
    """A damaged store entry was set aside and its point recomputed, or a record could not be stored."""


def checksum(record: Mapping[str, Any]) -> str:
    """sha256 of a record's JSON (sorted keys, the default separators) without its `checksum` field: the
    value `put` stores in that field."""
    return hashlib.sha256(_body(record)).hexdigest()


def _body(record: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {k: v for k, v in record.items() if k != "checksum"}, sort_keys=True, default=float
    ).encode()


_HEAD = b'{"checksum": "'
_SEP = b'", '


def _intact(raw: bytes, rec: Mapping[str, Any]) -> bool:
    """Whether a parsed record matches its checksum. As `put` writes it, the checksum field comes first and
    the rest of the file is the body it covers, so only bytes are hashed; a file rewritten in another
    layout is checked by serializing the record again."""
    n = len(_HEAD)
    if raw.startswith(_HEAD) and raw[n + 64 : n + 67] == _SEP:
        if hashlib.sha256(b"{" + raw[n + 67 :]).hexdigest().encode() == raw[n : n + 64]:
            return True
    return rec.get("checksum") == checksum(rec)


class Claim:
    """A held claim on one point (an exclusive `flock` on `points/<k[:2]>/.<key>.claim`); see `Store.claim`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    def release(self) -> None:
        if self.fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # unlinked while still locked: a runner that opened it re-checks the inode
        os.close(self.fd)
        self.fd = -1


class Store:
    """A directory of point records: `points/<k[:2]>/<key>.json`, each written atomically.

    A record is visible the moment it is renamed into place, so a killed sweep (SIGKILL, Ctrl-C) loses
    nothing and repeats nothing. Against power loss, a durable store flushes to disk once per batch of
    records (`flush`, called at the end of every chunk) rather than twice per record: a crash of the
    machine can cost at most the last batch, which is then recomputed, never stored twice.

    Each record carries `checksum` (see `checksum`); one that does not parse, names another key or fails
    its checksum is damaged (`load` says why) and recomputed, never served. Runners on one store share
    work through per-point claims (`claim`): a point is computed only by the runner that holds its claim,
    and a claim dies with its holder (a kernel lock), so a killed runner's points are simply taken over."""

    def __init__(self, root: str | Path, durable: bool = True) -> None:
        self.root = Path(root)
        self.points = self.root / "points"
        self.durable = durable
        self._unsynced = 0

    def path(self, key: str) -> Path:
        return self.points / key[:2] / f"{key}.json"

    def open(self) -> None:
        """Make sure the store can be used: its directories exist and are directories; else StoreError."""
        for p in (self.root, self.points):
            if p.exists() and not p.is_dir():
                raise StoreError(f"{p}: the results store needs a directory here, and this is a file; "
                                 f"move it away or choose another --out")  # fmt: skip
        try:
            self.points.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.root}: cannot create the results store: {e.strerror or e}") from None

    def load(self, key: str) -> tuple[dict[str, Any] | None, str | None]:
        """(record, None) when `key` is stored intact; (None, None) when it is absent; (None, why) when the
        entry is damaged (unreadable, truncated, another key, a checksum that does not match)."""
        path = self.path(key)
        try:
            data = _read(path)
        except (FileNotFoundError, NotADirectoryError):
            return None, None
        except IsADirectoryError:
            return None, "is a directory"
        except OSError as e:
            return None, f"cannot be read ({e.strerror or e})"
        try:
            rec = json.loads(data)
        except ValueError:
            return None, "is not valid JSON (truncated?)"
        if not isinstance(rec, dict):
            return None, "is not a record"
        if rec.get("key") != key:
            return None, f"holds key {str(rec.get('key'))[:16]!r}, not its own"
        if "checksum" not in rec:
            return None, "has no checksum"
        if not _intact(data, rec):
            return None, "fails its checksum (edited or corrupted)"
        return rec, None

    def get(self, key: str) -> dict[str, Any] | None:
        """The record for `key`, or None (missing or damaged: then it is simply recomputed)."""
        return self.load(key)[0]

    def keys(self) -> set[str]:
        """Keys of every record present (one directory scan; unreadable directories are left out)."""
        out: set[str] = set()
        try:
            subs = list(os.scandir(self.points))
        except OSError:
            return out
        for sub in subs:
            try:
                if sub.is_dir():
                    out.update(
                        e.name[:-5]
                        for e in os.scandir(sub.path)
                        if e.name.endswith(".json") and e.name[0] != "."
                    )
            except OSError:
                continue
        return out

    def set_aside(self, path: Path) -> Path:
        """Move a damaged entry out of the way (a directory where a record or a record directory
        should be): renamed to a hidden `.NAME.damaged-N` beside it, which nothing reads."""
        for n in range(1000):
            dest = path.parent / f".{path.name}.damaged-{n}"
            if not dest.exists() and not dest.is_symlink():
                os.rename(path, dest)
                return dest
        raise OSError(f"too many damaged copies of {path}")

    def prepare(self, key: str) -> str | None:
        """Clear the way for writing `key`: a file where its directory should be, or a directory where its
        record should be, is set aside. Returns what was done, "PATH was a ...; moved to ...", or None."""
        final = self.path(key)
        if final.parent.exists() and not final.parent.is_dir():
            target, kind = final.parent, "file"
        elif final.is_dir() and not final.is_symlink():
            target, kind = final, "directory"
        else:
            return None
        try:
            dest = self.set_aside(target)
        except OSError as e:
            return f"{target} is a {kind} in the way and cannot be moved ({e.strerror or e})"
        return f"{target} was a {kind}; moved to {dest.name}"

    def put(self, record: Mapping[str, Any]) -> Path:
        """Write one record atomically with its checksum: temp file, rename (flushed to disk by `flush`)."""
        key = record["key"]
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.parent / f".{key}.{os.getpid()}.tmp"
        body = _body(record)  # the checksum first, then the body it covers (see `_intact`)
        data = _HEAD + hashlib.sha256(body).hexdigest().encode() + _SEP + body[1:]
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

    def claim_path(self, key: str) -> Path:
        return self.points / key[:2] / f".{key}.claim"

    def claim(self, key: str, note: str = "") -> Claim | None:
        """Claim `key` for this process, or None if another live process holds it.

        The claim file is created (O_CREAT) and locked (`flock`, exclusive, non-blocking); it holds the pid,
        the start time and `note`. The kernel drops the lock when its holder dies, however it dies, so a
        stale claim is taken over by the next runner that asks. Releasing unlinks the file while still
        locked; a runner that opened the old file sees its inode gone and tries again, so exactly one
        runner holds a point at a time. Without `fcntl` (not POSIX) every claim succeeds."""
        if fcntl is None:
            return Claim(self.claim_path(key), -1)
        path = self.claim_path(key)
        for _ in range(100):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                except OSError:
                    return Claim(path, -1)
                continue
            except OSError:  # no claim can be made here, and no record stored: compute it unclaimed
                return Claim(path, -1)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return None
            fst = os.fstat(fd)
            try:
                st = os.stat(path)
                same = (st.st_ino, st.st_dev) == (fst.st_ino, fst.st_dev)
            except FileNotFoundError:
                same = False
            if same:
                if fst.st_size == 0:  # a fresh claim file (a taken-over one keeps its old text: harmless)
                    with contextlib.suppress(OSError):
                        os.pwrite(fd, f"{_self_id()} {note}".strip().encode() + b"\n", 0)
                return Claim(path, fd)
            os.close(fd)  # released and unlinked between our open and lock: try again
        return None

    def records(self, keys: Iterable[str] | None = None) -> list[dict[str, Any]]:
        ks = self.keys() if keys is None else keys
        return [r for r in (self.get(k) for k in ks) if r is not None]

    def clean(self) -> int:
        """Remove temp files left by writers that no longer run (a killed sweep) and claim files nobody
        holds, in one pass over the store; returns how many temp files went."""
        n = 0
        try:
            subs = [e.path for e in os.scandir(self.points) if e.is_dir()]
        except OSError:
            return 0
        for sub in subs:
            try:
                names = [e.name for e in os.scandir(sub) if e.name[0] == "."]
            except OSError:
                continue
            for name in names:
                if name.endswith(".tmp"):
                    try:
                        pid = int(name.rsplit(".", 2)[-2])
                    except ValueError:
                        continue
                    if not _alive(pid):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(os.path.join(sub, name))
                            n += 1
                elif name.endswith(".claim") and fcntl is not None:
                    claim = self.claim(name[1:-6])  # free: its holder died after computing it
                    if claim is not None:
                        claim.release()
        return n

    def write_text(self, name: str, text: str) -> Path:
        """A sweep-level file (summary CSV, sweep metadata), replaced atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / name
        tmp = self.root / f".{name}.{os.getpid()}.tmp"
        tmp.write_text(text)
        os.replace(tmp, final)
        return final


def _read(path: Path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@functools.lru_cache(maxsize=4)
def _self_id_for(pid: int) -> str:
    return f"pid {pid} started {_start_time(pid)}"


def _self_id() -> str:
    """This process as claim files name it (pid and start time), read from /proc once per process."""
    return _self_id_for(os.getpid())


def _start_time(pid: int) -> str:
    """A process's start time in clock ticks since boot (with the pid, it names one process), or '?'."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


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
