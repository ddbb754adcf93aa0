"""Native reference kernels against numpy in float64, on fresh random inputs every run.

Errors are relative Frobenius norms ||out - ref|| / ||ref||. Each run draws its seed from the OS and puts it
in every failure message; SIMCORE_TEST_SEED=<seed> replays a failing run. Outputs are poisoned with NaN
before each call so an element the kernel forgot to write cannot pass.

Tolerances, with u the unit roundoff of the kernel's dtype (np.finfo(dtype).eps = 2u):
- GEMM: each element is a length-K recursive sum; with random-sign terms the rounding errors add like a
  random walk, so the relative error is ~ sqrt(K)·u (the worst case K·u is never approached by random
  data). We allow 8·sqrt(K)·eps, a margin of >10x over the typical ~0.5·sqrt(K)·eps. fp32 with K=300:
  ~2e-5. For fp64 the numpy reference carries an error of the same size, which the bound also covers.
- Attention: a score is a length-d dot product (error ~ sqrt(d)·u, which exp turns into the same relative
  error of a weight), then the weights and the weighted sum of V are length-kv_len sums (~ sqrt(kv_len)·u);
  flash adds one rescale per key block (at most kv_len of them). We allow 8·(sqrt(d) + sqrt(kv_len) + 1)·eps;
  fp32 with d=64, kv_len=130: ~2e-5.
A wrong index, mask or rescale gives errors of order 1, far above these bounds.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pytest

from simcore import native

DTYPES = [np.float32, np.float64]


@dataclass
class Draw:
    """A generator with the seed that made it, so a failure can be replayed."""

    seed: int
    rng: np.random.Generator

    def normal(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        return self.rng.standard_normal(shape).astype(dtype)

    def tag(self, what: str) -> str:
        return f"{what} (seed {self.seed}; replay with SIMCORE_TEST_SEED={self.seed})"


@pytest.fixture
def draw() -> Draw:
    env = os.environ.get("SIMCORE_TEST_SEED")
    seed = int(env) if env else int(np.random.SeedSequence().entropy)
    return Draw(seed, np.random.default_rng(seed))


def rel_err(out: np.ndarray, ref: np.ndarray) -> float:
    ref = np.asarray(ref, dtype=np.float64)
    denom = np.linalg.norm(ref)
    diff = np.linalg.norm(np.asarray(out, dtype=np.float64) - ref)
    return float(diff / denom) if denom > 0 else float(diff)


def assert_close(out: np.ndarray, ref: np.ndarray, tol: float, draw: Draw, what: str) -> None:
    assert np.isfinite(out).all(), draw.tag(f"{what}: output has non-finite (unwritten) elements")
    err = rel_err(out, ref)
    assert err <= tol, draw.tag(f"{what}: relative error {err:.3e} > tolerance {tol:.3e}")


def gemm_tol(dtype: type, k: int) -> float:
    return 8 * math.sqrt(max(k, 1)) * float(np.finfo(dtype).eps)


def attn_tol(dtype: type, d: int, kv_len: int) -> float:
    return 8 * (math.sqrt(d) + math.sqrt(kv_len) + 1) * float(np.finfo(dtype).eps)


def nan_like(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.full(shape, np.nan, dtype=dtype)


# ------------------------------------------------------------------------------------------------- GEMM

GEMM_SHAPES = [(1, 1, 1), (7, 1, 65), (1, 130, 7), (65, 65, 65), (64, 64, 64), (130, 7, 129), (3, 200, 300)]
GEMM_BLOCKS = [(64, 64, 64), (1, 1, 1), (7, 5, 3), (32, 130, 16), (1000, 1000, 1000)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mnk", GEMM_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_gemm_matches_numpy(draw: Draw, dtype: type, mnk: tuple[int, int, int]) -> None:
    m, n, k = mnk
    a, b = draw.normal((m, k), dtype), draw.normal((k, n), dtype)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    for block in GEMM_BLOCKS:
        out = native.gemm(a, b, block=block, out=nan_like((m, n), dtype))
        assert out.dtype == dtype
        assert_close(out, ref, gemm_tol(dtype, k), draw, f"gemm {dtype.__name__} {mnk} block={block}")


def test_gemm_default_output_and_noncontiguous_inputs(draw: Draw) -> None:
    a, b = draw.normal((65, 34), np.float64), draw.normal((7, 17), np.float64)
    at, bt = a[:, ::2], b.T  # strided and transposed views are copied to C order
    out = native.gemm(at, bt)
    assert out.shape == (65, 7) and out.flags.c_contiguous
    assert_close(out, at @ bt, gemm_tol(np.float64, 17), draw, "gemm on views")
    k0 = native.gemm(np.zeros((3, 0)), np.zeros((0, 4)))  # empty inner dimension: C = 0
    assert np.array_equal(k0, np.zeros((3, 4)))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("accumulate", [False, True])
def test_gemm_tile_writes_only_its_tile(draw: Draw, dtype: type, accumulate: bool) -> None:
    m, n, k = 65, 130, 33
    a, b = draw.normal((m, k), dtype), draw.normal((k, n), dtype)
    for _ in range(20):
        m0, m1 = sorted(draw.rng.integers(0, m + 1, size=2))
        n0, n1 = sorted(draw.rng.integers(0, n + 1, size=2))
        k0, k1 = sorted(draw.rng.integers(0, k + 1, size=2))
        c = draw.normal((m, n), dtype)
        if not accumulate:
            c[m0:m1, n0:n1] = np.nan  # the tile must be overwritten
        before = c.copy()
        block = tuple(int(x) for x in draw.rng.integers(1, 40, size=3))
        native.gemm_tile(a, b, c, m0, m1, n0, n1, k0, k1, accumulate, block=block)
        what = f"gemm_tile {dtype.__name__} m[{m0}:{m1}] n[{n0}:{n1}] k[{k0}:{k1}] acc={accumulate}"
        outside = np.ones((m, n), dtype=bool)
        outside[m0:m1, n0:n1] = False
        assert np.array_equal(c[outside], before[outside], equal_nan=True), draw.tag(
            f"{what}: wrote outside tile"
        )
        ref = a[m0:m1, k0:k1].astype(np.float64) @ b[k0:k1, n0:n1].astype(np.float64)
        if accumulate:
            ref = ref + before[m0:m1, n0:n1].astype(np.float64)
        tile = c[m0:m1, n0:n1]
        if tile.size:
            assert_close(tile, ref, gemm_tol(dtype, k1 - k0 + accumulate), draw, what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_tile_decomposition_reproduces_gemm(draw: Draw, dtype: type) -> None:
    m, n, k = 130, 65, 129
    a, b = draw.normal((m, k), dtype), draw.normal((k, n), dtype)
    tm, tn, tk = 48, 20, 50  # tile sizes that divide none of the dimensions
    c = nan_like((m, n), dtype)
    for m0 in range(0, m, tm):
        for n0 in range(0, n, tn):
            for k0 in range(0, k, tk):
                end = (min(m0 + tm, m), min(n0 + tn, n), min(k0 + tk, k))
                native.gemm_tile(a, b, c, m0, end[0], n0, end[1], k0, end[2], accumulate=k0 > 0)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    assert_close(c, ref, gemm_tol(dtype, k), draw, f"tiled gemm {dtype.__name__}")


def test_gemm_rejects_bad_arguments() -> None:
    a, b = np.ones((3, 4)), np.ones((4, 5))
    with pytest.raises(ValueError, match="a \\[M, K\\] and b \\[K, N\\]"):
        native.gemm(a, np.ones((3, 5)))
    with pytest.raises(ValueError, match="share one dtype"):
        native.gemm(a, b.astype(np.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        native.gemm(a.astype(np.int64), b.astype(np.int64))
    with pytest.raises(ValueError, match="block"):
        native.gemm(a, b, block=(0, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        native.gemm(a, b, out=np.empty((3, 4)))
    c = np.zeros((3, 5))
    with pytest.raises(ValueError, match="0 <= k0 <= k1 <= 4"):
        native.gemm_tile(a, b, c, 0, 3, 0, 5, 2, 5, False)
    with pytest.raises(ValueError, match="0 <= m0 <= m1"):
        native.gemm_tile(a, b, c, 2, 1, 0, 5, 0, 4, False)
    with pytest.raises(ValueError, match="C-contiguous"):
        native.gemm_tile(a, b, np.zeros((5, 3)).T, 0, 3, 0, 5, 0, 4, False)
    with pytest.raises(ValueError, match="dtype"):
        native.gemm_tile(a, b, c.astype(np.float32), 0, 3, 0, 5, 0, 4, False)
    with pytest.raises(ValueError, match="share memory"):
        sq = np.ones((4, 4))
        native.gemm_tile(sq, sq, sq, 0, 4, 0, 4, 0, 4, True)


# -------------------------------------------------------------------------------------------- attention


def ref_attention(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool, scale: float | None
) -> np.ndarray:
    """float64 attention with GQA by repeating kv heads and the end-aligned causal mask."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    _, heads, q_len, d = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    k = np.repeat(k, heads // kv_heads, axis=1)
    v = np.repeat(v, heads // kv_heads, axis=1)
    s = np.einsum("bhid,bhjd->bhij", q, k) * (1 / math.sqrt(d) if scale is None else scale)
    if causal:
        i = np.arange(q_len)[:, None]
        j = np.arange(kv_len)[None, :]
        s = np.where(j <= kv_len - q_len + i, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    m = np.where(np.isfinite(m), m, 0.0)  # rows that see no key: all weights 0, output 0
    p = np.exp(s - m)
    denom = p.sum(axis=-1, keepdims=True)
    return np.einsum("bhij,bhjd->bhid", p, v) / np.where(denom > 0, denom, 1.0)


# (batch, heads, kv_heads, q_len, kv_len, d)
ATTN_CASES = {
    "tiny": (1, 1, 1, 1, 1, 1),
    "gqa-prefill": (2, 8, 2, 65, 65, 64),
    "gqa-decode": (1, 8, 2, 1, 130, 64),
    "chunked-prefill": (1, 4, 4, 7, 130, 32),
    "mqa-odd-d": (2, 2, 1, 130, 130, 17),
    "q-longer-than-kv": (1, 2, 2, 9, 5, 8),
}
FLASH_BLOCKS = [(64, 64), (1, 1), (7, 13), (16, 5), (128, 256)]


def attn_inputs(draw: Draw, case: tuple[int, ...], dtype: type) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b, h, kvh, lq, lk, d = case
    return (
        draw.normal((b, h, lq, d), dtype),
        draw.normal((b, kvh, lk, d), dtype),
        draw.normal((b, kvh, lk, d), dtype),
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("case", ATTN_CASES.values(), ids=ATTN_CASES.keys())
def test_attention_and_flash_match_numpy(
    draw: Draw, dtype: type, causal: bool, case: tuple[int, ...]
) -> None:
    q, k, v = attn_inputs(draw, case, dtype)
    ref = ref_attention(q, k, v, causal, None)
    tol = attn_tol(dtype, case[5], case[4])
    name = f"{dtype.__name__} causal={causal} case={case}"
    plain = native.attention(q, k, v, causal=causal, out=nan_like(q.shape, dtype))
    assert plain.dtype == dtype
    assert_close(plain, ref, tol, draw, f"attention {name}")
    for bq, bk in FLASH_BLOCKS:
        flash = native.flash_attention(q, k, v, causal, block_q=bq, block_k=bk, out=nan_like(q.shape, dtype))
        assert_close(flash, ref, tol, draw, f"flash Br={bq} Bc={bk} {name}")
        # Same maths, different summation order: flash equals plain attention up to rounding.
        assert_close(flash, plain, 2 * tol, draw, f"flash vs plain Br={bq} Bc={bk} {name}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_attention_scale_parameter(draw: Draw, dtype: type) -> None:
    q, k, v = attn_inputs(draw, (1, 4, 2, 33, 47, 16), dtype)
    tol = attn_tol(dtype, 16, 47)
    for scale in (0.3, 1.0):
        ref = ref_attention(q, k, v, True, scale)
        assert_close(native.attention(q, k, v, True, scale), ref, tol, draw, f"attention scale={scale}")
        got = native.flash_attention(q, k, v, True, scale, block_q=8, block_k=10)
        assert_close(got, ref, tol, draw, f"flash scale={scale}")


def test_causal_mask_is_aligned_to_the_end_of_kv(draw: Draw) -> None:
    q, k, v = attn_inputs(draw, (1, 2, 2, 1, 40, 8), np.float64)
    # Decode: the single query sees every key, so causal and non-causal agree.
    assert np.allclose(native.attention(q, k, v, causal=True), native.attention(q, k, v, causal=False))
    # Query longer than kv: the first q_len - kv_len queries see nothing and output zeros.
    q, k, v = attn_inputs(draw, (1, 2, 2, 9, 5, 8), np.float64)
    for out in (native.attention(q, k, v, True), native.flash_attention(q, k, v, True, block_q=2, block_k=3)):
        assert np.array_equal(out[:, :, :4], np.zeros_like(out[:, :, :4]))
        assert np.all(np.abs(out[:, :, 4:]).sum(axis=-1) > 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_flash_units_replay_the_full_kernel(draw: Draw, dtype: type, causal: bool) -> None:
    case = (2, 8, 2, 70, 130, 32)
    q, k, v = attn_inputs(draw, case, dtype)
    bq, bk = 16, 48
    full = native.flash_attention(q, k, v, causal, block_q=bq, block_k=bk)
    out = nan_like(q.shape, dtype)
    units = [
        (b, h, i)
        for b in range(case[0])
        for h in range(case[1])
        for i in range(native.num_query_blocks(case[3], bq))
    ]
    order = draw.rng.permutation(len(units))
    b, h, i = units[order[0]]
    native.flash_attention_unit(q, k, v, out, b, h, i, causal, block_q=bq, block_k=bk)
    written = ~np.isnan(out)
    expect = np.zeros(q.shape, dtype=bool)
    expect[b, h, i * bq : (i + 1) * bq] = True
    assert np.array_equal(written, expect), draw.tag(f"unit {(b, h, i)} wrote other rows or missed its own")
    for idx in order[1:]:
        native.flash_attention_unit(q, k, v, out, *units[idx], causal, block_q=bq, block_k=bk)
    # Same code path and blocks as the full kernel: bit-identical, whatever the unit order.
    assert np.array_equal(out, full), draw.tag("units replayed in random order differ from flash_attention")


def test_attention_rejects_bad_arguments() -> None:
    q, kv = np.ones((1, 4, 3, 8)), np.ones((1, 2, 5, 8))
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        native.attention(q, np.ones((1, 3, 5, 8)), np.ones((1, 3, 5, 8)))
    with pytest.raises(ValueError, match="k and v must both be"):
        native.attention(q, kv, np.ones((1, 2, 6, 8)))
    with pytest.raises(ValueError, match="k and v must both be"):
        native.flash_attention(q, np.ones((1, 2, 5, 4)), np.ones((1, 2, 5, 4)))
    with pytest.raises(ValueError, match="need q"):
        native.attention(q[0], kv, kv)
    with pytest.raises(ValueError, match="share one dtype"):
        native.attention(q, kv.astype(np.float32), kv)
    with pytest.raises(ValueError, match="block_q"):
        native.flash_attention(q, kv, kv, block_q=0)
    with pytest.raises(ValueError, match="scale"):
        native.attention(q, kv, kv, scale=float("nan"))
    out = np.zeros_like(q)
    with pytest.raises(ValueError, match="q_block must be an integer in \\[0, 2\\)"):
        native.flash_attention_unit(q, kv, kv, out, 0, 0, 2, block_q=2)
    with pytest.raises(ValueError, match="head must be"):
        native.flash_attention_unit(q, kv, kv, out, 0, 4, 0)
    with pytest.raises(ValueError, match="shape"):
        native.flash_attention_unit(q, kv, kv, np.zeros((1, 4, 3, 7)), 0, 0, 0)


# ----------------------------------------------------------------------------------------------- STREAM


def test_stream_reports_finite_positive_bandwidth() -> None:
    bw = native.stream(200_000, 3)  # the arrays' final contents are checked inside stream_seconds
    assert set(bw) == {"copy", "scale", "add", "triad"}
    for name, value in bw.items():
        assert math.isfinite(value) and value > 0, f"{name}: {value}"


def test_stream_counts_bytes_like_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    seconds = {"copy": 1.0, "scale": 2.0, "add": 4.0, "triad": 0.5}
    monkeypatch.setattr(native, "stream_seconds", lambda n, r: dict(seconds))
    n = 1_000_000
    bw = native.stream(n, 1)
    # triad a = b + s*c reads two arrays and writes one: 3 x 8 bytes per element.
    assert bw["triad"] == 24 * n / 0.5
    assert bw == {"copy": 16 * n / 1.0, "scale": 16 * n / 2.0, "add": 24 * n / 4.0, "triad": 24 * n / 0.5}


def test_stream_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_elements"):
        native.stream(0, 1)
    with pytest.raises(ValueError, match="repeats"):
        native.stream(10, 0)


# ------------------------------------------------------------------------------------------------ build


def test_build_is_idempotent_and_reports_missing_compiler(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    path = native.build()
    assert path.exists() and path == native.library_path()
    mtime = path.stat().st_mtime_ns
    assert native.build() == path and path.stat().st_mtime_ns == mtime  # up to date: not rebuilt
    monkeypatch.setenv("CC", "")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="^no C compiler found: install gcc \\(or set CC\\)"):
        native.build(force=True)
    assert path.exists()  # a failed rebuild leaves the working library in place
