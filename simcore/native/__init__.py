"""Native reference kernels (GEMM, attention, STREAM) built from refkernels.c and called through ctypes.

They execute the simulator's tile and flash decompositions on real numbers, so a blocking can be checked
against numpy, and measure the host's memory bandwidth. The library is compiled on first use with the
system C compiler (no build step at install time); arrays go in and come out as numpy arrays.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = [
    "STREAM_BYTES_PER_ELEMENT",
    "attention",
    "build",
    "flash_attention",
    "flash_attention_unit",
    "gemm",
    "gemm_tile",
    "library_path",
    "num_query_blocks",
    "stream",
    "stream_seconds",
]

_DIR = Path(__file__).resolve().parent
_SOURCE = _DIR / "refkernels.c"


def _library_file() -> Path:
    """Beside refkernels.c in a source checkout (a clone or editable install, as `make` builds it); for an
    installed package, which may be read-only and whose files pip owns, in the user's cache directory
    ($SIMCORE_CACHE_DIR, else $XDG_CACHE_HOME/simcore, else ~/.cache/simcore), named by a hash of the
    source so installs of different versions never load each other's library."""
    if (_DIR.parent.parent / "pyproject.toml").is_file() and os.access(_DIR, os.W_OK):
        return _DIR / "_refkernels.so"
    cache = os.environ.get("SIMCORE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "simcore"
    )
    digest = hashlib.sha256(_SOURCE.read_bytes()).hexdigest()[:16]
    return Path(cache) / f"_refkernels-{digest}.so"


_LIBRARY = _library_file()
_ABI_VERSION = 1
_NO_COMPILER = "no C compiler found: install gcc (or set CC) to build simcore's reference kernels"
_BASE_FLAGS = ["-std=c99", "-O3", "-fPIC", "-shared"]

#: Bytes each STREAM kernel moves per element, counted as STREAM does (one read or write = 8 bytes).
STREAM_BYTES_PER_ELEMENT: dict[str, int] = {"copy": 16, "scale": 16, "add": 24, "triad": 24}
#: sqrt(2) - 1 makes the four kernels' recurrence a -> (2s + s^2) a = a, so values stay O(1) for any repeats.
_STREAM_SCALAR = math.sqrt(2.0) - 1.0

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None

FloatArray = npt.NDArray[np.floating]


# ------------------------------------------------------------------------------------------------ build


def library_path() -> Path:
    """Where the compiled library lives (it may not exist yet)."""
    return _LIBRARY


def _find_compiler() -> list[str]:
    """$CC if it names an executable, else the first of cc, gcc, clang on PATH."""
    env = os.environ.get("CC", "").strip()
    if env:
        cmd = shlex.split(env)
        if cmd and shutil.which(cmd[0]):
            return cmd
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise RuntimeError(_NO_COMPILER)


def _stale() -> bool:
    return not _LIBRARY.exists() or _LIBRARY.stat().st_mtime < _SOURCE.stat().st_mtime


def _compile(compiler: list[str]) -> None:
    """Compile into a temporary file, then rename it into place so concurrent builds never see half a file."""
    _LIBRARY.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix="._refkernels.", suffix=".so", dir=_LIBRARY.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        errors = ""
        # -march=native where the compiler accepts it, otherwise a portable build; -fopenmp-simd lets
        # `#pragma omp simd` vectorise the softmax's max (no OpenMP runtime), and is dropped where unknown.
        for extra in (["-march=native", "-fopenmp-simd"], ["-march=native"], ["-fopenmp-simd"], []):
            cmd = [*compiler, *_BASE_FLAGS, *extra, "-o", str(tmp), str(_SOURCE), "-lm"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0:
                os.replace(tmp, _LIBRARY)
                return
            errors = proc.stderr.strip() or proc.stdout.strip()
        last = errors.splitlines()[-1] if errors else f"exit status {proc.returncode}"
        raise RuntimeError(f"compiling {_SOURCE.name} with {' '.join(compiler)} failed: {last}")
    finally:
        tmp.unlink(missing_ok=True)


def build(force: bool = False) -> Path:
    """Compile the library if it is missing or older than refkernels.c (or always, with force); return its path."""
    with _lock:
        if force or _stale():
            _compile(_find_compiler())
    return _LIBRARY


_P = ctypes.c_void_p
_I = ctypes.c_int64
_C = ctypes.c_int


def _declare(lib: ctypes.CDLL) -> None:
    """Argument and return types of every exported entry, so ctypes converts Python ints and floats exactly."""
    lib.refk_abi_version.argtypes = []
    lib.refk_abi_version.restype = _C
    lib.refk_stream.argtypes = [_I, _I, ctypes.c_double, _P, _P]
    lib.refk_stream.restype = _C
    for sfx, real in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        fn = getattr(lib, f"refk_gemm_{sfx}")
        fn.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I, _I]
        fn.restype = _C
        fn = getattr(lib, f"refk_gemm_tile_{sfx}")
        fn.argtypes = [_P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I, _C, _I, _I, _I]
        fn.restype = _C
        fn = getattr(lib, f"refk_attention_{sfx}")
        fn.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, real, _C]
        fn.restype = _C
        fn = getattr(lib, f"refk_flash_attention_{sfx}")
        fn.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, real, _C]
        fn.restype = _C
        fn = getattr(lib, f"refk_flash_unit_{sfx}")
        fn.argtypes = [_P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, _I, real, _C]
        fn.restype = _C


def _load() -> ctypes.CDLL:
    """Build if needed and load once per process."""
    global _lib
    if _lib is None:
        path = build()
        with _lock:
            if _lib is None:
                lib = ctypes.CDLL(str(path))
                _declare(lib)
                found = lib.refk_abi_version()
                if found != _ABI_VERSION:
                    raise RuntimeError(
                        f"{path} has interface version {found}, expected {_ABI_VERSION}: "
                        "rebuild with `python -m simcore.native build --force`"
                    )
                _lib = lib
    return _lib


def _check(rc: int, what: str) -> None:
    if rc == -2:
        raise MemoryError(f"{what}: the native kernel could not allocate its scratch memory")
    if rc != 0:
        raise ValueError(f"{what}: the native kernel rejected its arguments (code {rc})")


# ------------------------------------------------------------------------------------------- validation

_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _inputs(what: str, **arrays: npt.ArrayLike) -> tuple[list[np.ndarray], np.dtype]:
    """C-contiguous copies (where needed) of the inputs, which must share a dtype, float32 or float64."""
    out = [np.asarray(a) for a in arrays.values()]
    dtypes = {a.dtype for a in out}
    if len(dtypes) != 1:
        listed = ", ".join(f"{name}={a.dtype}" for name, a in zip(arrays, out, strict=True))
        raise ValueError(f"{what}: inputs must share one dtype, got {listed}")
    dtype = out[0].dtype
    if dtype not in _SUFFIX:
        raise ValueError(f"{what}: dtype must be float32 or float64, got {dtype}")
    return [np.ascontiguousarray(a) for a in out], dtype


def _output(
    what: str, name: str, out: np.ndarray | None, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """A fresh array, or the caller's `out` after checking it can be written in place by the kernel."""
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise ValueError(f"{what}: {name} must be a numpy array, got {type(out).__name__}")
    if out.shape != shape or out.dtype != dtype:
        raise ValueError(
            f"{what}: {name} must have shape {shape} and dtype {dtype}, got {out.shape} {out.dtype}"
        )
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"{what}: {name} must be a writeable C-contiguous array (it is written in place)")
    return out


def _no_overlap(what: str, out: np.ndarray, *inputs: np.ndarray) -> None:
    if any(np.shares_memory(out, a) for a in inputs):
        raise ValueError(f"{what}: the output must not share memory with an input")


def _positive_int(what: str, name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


# ------------------------------------------------------------------------------------------------- GEMM


def gemm(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    block: tuple[int, int, int] = (64, 64, 64),
    *,
    out: np.ndarray | None = None,
) -> FloatArray:
    """C = A·B with the cache-blocked kernel; block = (mb, nb, kb). Pass `out` to write into an existing array."""
    (a, b), dtype = _inputs("gemm", a=a, b=b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: need a [M, K] and b [K, N], got a {a.shape} and b {b.shape}")
    mb, nb, kb = _blocks("gemm", block)
    (m, k), n = a.shape, b.shape[1]
    c = _output("gemm", "out", out, (m, n), dtype)
    _no_overlap("gemm", c, a, b)
    lib = _load()
    _check(
        getattr(lib, f"refk_gemm_{_SUFFIX[dtype]}")(_ptr(a), _ptr(b), _ptr(c), m, n, k, mb, nb, kb), "gemm"
    )
    return c


def _blocks(what: str, block: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(block) != 3:
        raise ValueError(f"{what}: block must be (mb, nb, kb), got {block!r}")
    return tuple(_positive_int(what, f"block[{i}]", v) for i, v in enumerate(block))  # type: ignore[return-value]


def gemm_tile(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    c: np.ndarray,
    m0: int,
    m1: int,
    n0: int,
    n1: int,
    k0: int,
    k1: int,
    accumulate: bool,
    block: tuple[int, int, int] = (64, 64, 64),
) -> np.ndarray:
    """C[m0:m1, n0:n1] (+)= A[m0:m1, k0:k1]·B[k0:k1, n0:n1] in place; the rest of C is untouched.

    One tile of a decomposed GEMM: replaying a decomposition tile by tile (accumulate=False for a tile's
    first k-slice, True after) must reproduce the full product. `c` must be a writeable C-contiguous
    [M, N] array of the inputs' dtype; it is also returned.
    """
    (a, b), dtype = _inputs("gemm_tile", a=a, b=b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm_tile: need a [M, K] and b [K, N], got a {a.shape} and b {b.shape}")
    (m, k), n = a.shape, b.shape[1]
    c = _output("gemm_tile", "c", c, (m, n), dtype)
    _no_overlap("gemm_tile", c, a, b)
    bounds = {"m": (m0, m1, m), "n": (n0, n1, n), "k": (k0, k1, k)}
    for axis, (lo, hi, size) in bounds.items():
        if not all(isinstance(x, int | np.integer) and not isinstance(x, bool) for x in (lo, hi)):
            raise ValueError(f"gemm_tile: {axis}0 and {axis}1 must be integers, got {lo!r} and {hi!r}")
        if not 0 <= lo <= hi <= size:
            raise ValueError(
                f"gemm_tile: need 0 <= {axis}0 <= {axis}1 <= {size}, got {axis}0={lo}, {axis}1={hi}"
            )
    mb, nb, kb = _blocks("gemm_tile", block)
    lib = _load()
    fn = getattr(lib, f"refk_gemm_tile_{_SUFFIX[dtype]}")
    args = (m, n, k, int(m0), int(m1), int(n0), int(n1), int(k0), int(k1), int(bool(accumulate)), mb, nb, kb)
    _check(fn(_ptr(a), _ptr(b), _ptr(c), *args), "gemm_tile")
    return c


# -------------------------------------------------------------------------------------------- attention


def _attention_inputs(
    what: str, q: npt.ArrayLike, k: npt.ArrayLike, v: npt.ArrayLike, scale: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.dtype, tuple[int, int, int, int, int, int], float]:
    """Checked inputs, dtype, (batch, heads, kv_heads, q_len, kv_len, d) and the softmax scale."""
    (q, k, v), dtype = _inputs(what, q=q, k=k, v=v)
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(
            f"{what}: need q [batch, heads, q_len, d] and k, v [batch, kv_heads, kv_len, d], "
            f"got q {q.shape}, k {k.shape}, v {v.shape}"
        )
    batch, heads, q_len, d = q.shape
    if k.shape != v.shape or k.shape[0] != batch or k.shape[3] != d:
        raise ValueError(
            f"{what}: k and v must both be [batch={batch}, kv_heads, kv_len, d={d}], got k {k.shape}, v {v.shape}"
        )
    kv_heads, kv_len = k.shape[1], k.shape[2]
    if heads < 1 or kv_heads < 1 or d < 1 or heads % kv_heads:
        raise ValueError(
            f"{what}: heads ({heads}) must be a positive multiple of kv_heads ({kv_heads}) and d ({d}) positive"
        )
    if scale is None:
        scale = 1.0 / math.sqrt(d)
    if not isinstance(scale, int | float | np.floating) or not math.isfinite(scale):
        raise ValueError(f"{what}: scale must be a finite number, got {scale!r}")
    return q, k, v, dtype, (batch, heads, kv_heads, q_len, kv_len, d), float(scale)


def attention(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    causal: bool = False,
    scale: float | None = None,
    *,
    out: np.ndarray | None = None,
) -> FloatArray:
    """O = softmax(Q·Kᵀ·scale + mask)·V, the unblocked reference that flash blockings are compared against.

    q [batch, heads, q_len, d], k and v [batch, kv_heads, kv_len, d] (GQA: head h reads kv head
    h // (heads // kv_heads)). The causal mask is aligned to the end of the kv sequence: query i sees keys
    j <= kv_len - q_len + i, so decode (q_len = 1) sees all keys; a query that sees none gets zeros.
    scale defaults to 1/sqrt(d).
    """
    q, k, v, dtype, dims, scale = _attention_inputs("attention", q, k, v, scale)
    o = _output("attention", "out", out, q.shape, dtype)
    _no_overlap("attention", o, q, k, v)
    fn = getattr(_load(), f"refk_attention_{_SUFFIX[dtype]}")
    _check(fn(_ptr(q), _ptr(k), _ptr(v), _ptr(o), *dims, scale, int(bool(causal))), "attention")
    return o


def flash_attention(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
    *,
    out: np.ndarray | None = None,
) -> FloatArray:
    """Attention by online softmax over query blocks of block_q rows and key blocks of block_k keys.

    Same conventions as `attention`; the result differs from it only by rounding. Key blocks wholly above
    the causal diagonal are skipped, as a flash kernel would.
    """
    q, k, v, dtype, dims, scale = _attention_inputs("flash_attention", q, k, v, scale)
    bq = _positive_int("flash_attention", "block_q", block_q)
    bk = _positive_int("flash_attention", "block_k", block_k)
    o = _output("flash_attention", "out", out, q.shape, dtype)
    _no_overlap("flash_attention", o, q, k, v)
    fn = getattr(_load(), f"refk_flash_attention_{_SUFFIX[dtype]}")
    _check(fn(_ptr(q), _ptr(k), _ptr(v), _ptr(o), *dims, bq, bk, scale, int(bool(causal))), "flash_attention")
    return o


def num_query_blocks(q_len: int, block_q: int) -> int:
    """How many query blocks (work units per batch and head) a q_len split into block_q rows has."""
    return -(-q_len // block_q)


def flash_attention_unit(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    out: np.ndarray,
    batch: int,
    head: int,
    q_block: int,
    causal: bool = False,
    scale: float | None = None,
    block_q: int = 64,
    block_k: int = 64,
) -> np.ndarray:
    """Run one flash work unit, (batch, head, query block q_block), writing only its rows of `out`.

    Lets a simulated schedule be replayed unit by unit: running every unit, in any order, gives the same
    bits as `flash_attention` with the same blocks. `out` must be a writeable C-contiguous array shaped
    and typed like q; it is returned.
    """
    what = "flash_attention_unit"
    q, k, v, dtype, dims, scale = _attention_inputs(what, q, k, v, scale)
    bq = _positive_int(what, "block_q", block_q)
    bk = _positive_int(what, "block_k", block_k)
    o = _output(what, "out", out, q.shape, dtype)
    _no_overlap(what, o, q, k, v)
    n_batch, heads, q_len = dims[0], dims[1], dims[3]
    units = num_query_blocks(q_len, bq)
    for name, value, limit in (("batch", batch, n_batch), ("head", head, heads), ("q_block", q_block, units)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 0 <= value < limit:
            raise ValueError(f"{what}: {name} must be an integer in [0, {limit}), got {value!r}")
    fn = getattr(_load(), f"refk_flash_unit_{_SUFFIX[dtype]}")
    args = (*dims, int(batch), int(head), int(q_block), bq, bk, scale, int(bool(causal)))
    _check(fn(_ptr(q), _ptr(k), _ptr(v), _ptr(o), *args), what)
    return o


# ----------------------------------------------------------------------------------------------- STREAM


def _stream_expected(repeats: int) -> tuple[float, float, float]:
    """Final a, b, c of every element, by the same scalar recurrence the C loop applies elementwise."""
    a, b, c, s = 1.0, 2.0, 0.0, _STREAM_SCALAR
    for _ in range(repeats):
        c = a
        b = s * c
        c = a + b
        a = b + s * c
    return a, b, c


def stream_seconds(n_elements: int = 10_000_000, repeats: int = 10) -> dict[str, float]:
    """Best-of-`repeats` seconds of STREAM copy, scale, add and triad over arrays of n_elements doubles.

    The arrays' final contents are checked, so a kernel the compiler skipped cannot report a time.
    """
    n = _positive_int("stream", "n_elements", n_elements)
    r = _positive_int("stream", "repeats", repeats)
    seconds = np.zeros(4, dtype=np.float64)
    sums = np.zeros(3, dtype=np.float64)
    _check(_load().refk_stream(n, r, _STREAM_SCALAR, _ptr(seconds), _ptr(sums)), "stream")
    # Each element ends within a few ulps per repeat of the scalar recurrence (FMA contraction may differ).
    for name, got, want in zip("abc", sums, _stream_expected(r), strict=True):
        if not math.isclose(got, n * want, rel_tol=1e-6):
            raise RuntimeError(
                f"stream: array {name} sums to {got!r}, expected {n * want!r}; the kernels misbehaved"
            )
    return dict(zip(STREAM_BYTES_PER_ELEMENT, (float(t) for t in seconds), strict=True))


def stream(n_elements: int = 10_000_000, repeats: int = 10) -> dict[str, float]:
    """Sustained memory bandwidth in bytes/s per STREAM kernel (best of `repeats`), bytes counted as STREAM does.

    Use arrays several times larger than the last-level cache (the default, 3 x 80 MB, suits most hosts),
    or the figures measure cache bandwidth instead.
    """
    seconds = stream_seconds(n_elements, repeats)
    return {name: STREAM_BYTES_PER_ELEMENT[name] * n_elements / t for name, t in seconds.items()}
