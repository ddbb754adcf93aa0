/*
 * Reference kernels for checking simcore's decompositions numerically and for measuring host bandwidth.
 *
 * - cache-blocked GEMM (fp32, fp64), whole-matrix and single-tile entries;
 * - attention (fp32, fp64): plain softmax(Q K^T * scale + mask) V, and a tiled online-softmax
 *   (flash-style) version, whole-tensor and single (batch, head, query-block) work unit;
 * - a STREAM-like bandwidth loop (copy, scale, add, triad).
 *
 * Correctness and clarity come first; the kernels are single-threaded and use only libc/libm. Inner loops
 * are written so that plain -O3 vectorises them (no -ffast-math needed): unit stride with one independent
 * accumulator per element, reductions split over a fixed number of lanes, and a polynomial exp for the
 * softmax instead of a libm call per score.
 * All arrays are dense row-major. Layouts: Q and O [batch, heads, q_len, d], K and V
 * [batch, kv_heads, kv_len, d]; head h reads kv head h / (heads / kv_heads) (grouped-query attention).
 * The causal mask is aligned to the end of the kv sequence: query i sees keys j <= kv_len - q_len + i,
 * so a decode step (q_len = 1) sees every key. A query that sees no key gets an all-zero output row.
 *
 * Every entry returns 0 on success, REFK_EBADARG for arguments it rejects and REFK_ENOMEM when
 * scratch memory cannot be allocated. Every output element an entry owns is written, so callers can
 * poison outputs to catch gaps.
 *
 * The type-generic kernels live in the second half of this file, which includes itself once per
 * element type (float, double) with T, SFX, EXP and the EXP_* constants of refk_exp_neg defined for it.
 */

#ifndef REFK_TYPE_PASS

#define _POSIX_C_SOURCE 199309L

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

#define REFK_ABI_VERSION 1
#define REFK_EBADARG (-1)
#define REFK_ENOMEM (-2)

static int64_t refk_min(int64_t a, int64_t b) { return a < b ? a : b; }
static int64_t refk_max(int64_t a, int64_t b) { return a > b ? a : b; }

/* Version of the exported interface, checked by the Python loader against the one it expects. */
int refk_abi_version(void) { return REFK_ABI_VERSION; }

/* Scratch buffers start on a cache line: a misaligned 512-bit load or store straddles two lines, which
 * can halve a kernel's speed, and malloc only promises 16 bytes. */
#define REFK_ALIGN 64

/* malloc(bytes) moved up to a REFK_ALIGN boundary; *block receives the pointer to free (NULL on failure). */
static void *refk_alloc_aligned(size_t bytes, void **block) {
    *block = malloc(bytes + REFK_ALIGN - 1);
    if (*block == NULL) return NULL;
    return (void *)(((uintptr_t)*block + REFK_ALIGN - 1) & ~(uintptr_t)(REFK_ALIGN - 1));
}

/* ------------------------------------------------------------------------------------------------ */
/* STREAM-like bandwidth loop                                                                        */
/* ------------------------------------------------------------------------------------------------ */

/* The arrays escape through this pointer so the compiler must finish every kernel's stores before the
 * (external) clock call that ends its timing, and cannot drop stores as dead. */
static double *volatile refk_stream_sink;

static double refk_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/*
 * Runs copy (c = a), scale (b = s*c), add (c = a + b) and triad (a = b + s*c) over n doubles,
 * `repeats` times, and writes the best (smallest) elapsed seconds of each kernel into
 * best_seconds[0..3] in that order. A time below the clock resolution is reported as the resolution.
 * checksums[0..2] receive sum(a), sum(b), sum(c) after the last repeat so the caller can check
 * that the kernels really ran: starting from a = 1, b = 2, c = 0 every element follows the same
 * scalar recurrence.
 */
int refk_stream(int64_t n, int64_t repeats, double scalar, double *best_seconds, double *checksums) {
    if (n < 1 || repeats < 1 || best_seconds == NULL || checksums == NULL) return REFK_EBADARG;
    double *a = malloc((size_t)n * sizeof(double));
    double *b = malloc((size_t)n * sizeof(double));
    double *c = malloc((size_t)n * sizeof(double));
    if (a == NULL || b == NULL || c == NULL) {
        free(a);
        free(b);
        free(c);
        return REFK_ENOMEM;
    }
    refk_stream_sink = a;
    refk_stream_sink = b;
    refk_stream_sink = c;
    for (int64_t j = 0; j < n; ++j) {
        a[j] = 1.0;
        b[j] = 2.0;
        c[j] = 0.0;
    }
    struct timespec res;
    double resolution = 1e-9;
    if (clock_getres(CLOCK_MONOTONIC, &res) == 0) {
        double r = (double)res.tv_sec + 1e-9 * (double)res.tv_nsec;
        if (r > 0.0) resolution = r;
    }
    for (int k = 0; k < 4; ++k) best_seconds[k] = INFINITY;
    for (int64_t r = 0; r < repeats; ++r) {
        double t[5];
        t[0] = refk_now();
        for (int64_t j = 0; j < n; ++j) c[j] = a[j];
        t[1] = refk_now();
        for (int64_t j = 0; j < n; ++j) b[j] = scalar * c[j];
        t[2] = refk_now();
        for (int64_t j = 0; j < n; ++j) c[j] = a[j] + b[j];
        t[3] = refk_now();
        for (int64_t j = 0; j < n; ++j) a[j] = b[j] + scalar * c[j];
        t[4] = refk_now();
        for (int k = 0; k < 4; ++k) {
            double dt = t[k + 1] - t[k];
            if (dt < resolution) dt = resolution;
            if (dt < best_seconds[k]) best_seconds[k] = dt;
        }
    }
    double sa = 0.0, sb = 0.0, sc = 0.0;
    for (int64_t j = 0; j < n; ++j) {
        sa += a[j];
        sb += b[j];
        sc += c[j];
    }
    checksums[0] = sa;
    checksums[1] = sb;
    checksums[2] = sc;
    refk_stream_sink = NULL;
    free(a);
    free(b);
    free(c);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ */
/* Instantiate the type-generic kernels for float and double                                        */
/* ------------------------------------------------------------------------------------------------ */

#define REFK_TYPE_PASS

/* Per type: the libm exp (one call per row and key block, for the flash rescale) and the constants of the
 * vectorised exp refk_exp_neg: unsigned integer of the same width, mantissa bits, 1.5 * 2^MANT (rounds to
 * an integer when added), flush-to-zero bound, Cody-Waite split of ln 2 (Cephes' constants: ln2_hi has 9
 * and 16 significant bits, so n * ln2_hi is exact) and the Taylor polynomial of e^r by Horner. */
#define T float
#define SFX(name) name##_f32
#define EXP expf
#define EXP_UINT uint32_t
#define EXP_MANT 23
#define EXP_SHIFT 0x1.8p23f
#define EXP_LO (-87.0f)
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO (-2.12194440e-4f)
/* Taylor to degree 7: sum of r^k / k!, k = 0..7 */
#define EXP_POLY(r)                                                                                        \
    (1.0f + (r) * (1.0f + (r) * (0.5f + (r) * (1.0f / 6 + (r) * (1.0f / 24 + (r) * (1.0f / 120 + (r) *     \
        (1.0f / 720 + (r) * (1.0f / 5040))))))))
#include __FILE__
#undef T
#undef SFX
#undef EXP
#undef EXP_UINT
#undef EXP_MANT
#undef EXP_SHIFT
#undef EXP_LO
#undef EXP_LN2_HI
#undef EXP_LN2_LO
#undef EXP_POLY

#define T double
#define SFX(name) name##_f64
#define EXP exp
#define EXP_UINT uint64_t
#define EXP_MANT 52
#define EXP_SHIFT 0x1.8p52
#define EXP_LO (-708.0)
#define EXP_LN2_HI 6.93145751953125e-1
#define EXP_LN2_LO 1.42860682030941723212e-6
/* Taylor to degree 13: sum of r^k / k!, k = 0..13 */
#define EXP_POLY(r)                                                                                        \
    (1.0 + (r) * (1.0 + (r) * (0.5 + (r) * (1.0 / 6 + (r) * (1.0 / 24 + (r) * (1.0 / 120 + (r) *           \
        (1.0 / 720 + (r) * (1.0 / 5040 + (r) * (1.0 / 40320 + (r) * (1.0 / 362880 + (r) * (1.0 / 3628800 + \
        (r) * (1.0 / 39916800 + (r) * (1.0 / 479001600 + (r) * (1.0 / 6227020800.0))))))))))))))
#include __FILE__
#undef T
#undef SFX
#undef EXP
#undef EXP_UINT
#undef EXP_MANT
#undef EXP_SHIFT
#undef EXP_LO
#undef EXP_LN2_HI
#undef EXP_LN2_LO
#undef EXP_POLY

#else /* REFK_TYPE_PASS: type-generic kernels, T is the element type */

/* ------------------------------------------------------------------------------------------------ */
/* GEMM                                                                                              */
/* ------------------------------------------------------------------------------------------------ */

/* C[m0:m1, n0:n1] += A[m0:m1, k0:k1] B[k0:k1, n0:n1], blocked mb x nb x kb; i-k-j order in a block so
 * the innermost loop streams rows of B and C with unit stride. */
static void SFX(refk_gemm_blocked)(const T *restrict A, const T *restrict B, T *restrict C, int64_t lda,
                                   int64_t ldb, int64_t ldc, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                                   int64_t k0, int64_t k1, int64_t mb, int64_t nb, int64_t kb) {
    for (int64_t i0 = m0; i0 < m1; i0 += mb) {
        const int64_t i1 = refk_min(i0 + mb, m1);
        for (int64_t p0 = k0; p0 < k1; p0 += kb) {
            const int64_t p1 = refk_min(p0 + kb, k1);
            for (int64_t j0 = n0; j0 < n1; j0 += nb) {
                const int64_t j1 = refk_min(j0 + nb, n1);
                for (int64_t i = i0; i < i1; ++i) {
                    const T *restrict arow = A + i * lda;
                    T *restrict crow = C + i * ldc;
                    for (int64_t p = p0; p < p1; ++p) {
                        const T a = arow[p];
                        const T *restrict brow = B + p * ldb;
                        for (int64_t j = j0; j < j1; ++j) crow[j] += a * brow[j];
                    }
                }
            }
        }
    }
}

/*
 * One tile of C = A B with A [M, K], B [K, N], C [M, N]:
 * C[m0:m1, n0:n1] (+)= A[m0:m1, k0:k1] B[k0:k1, n0:n1]. Without `accumulate` the tile is overwritten
 * (an empty k range then writes zeros); elements of C outside the tile are never touched.
 */
int SFX(refk_gemm_tile)(const T *A, const T *B, T *C, int64_t M, int64_t N, int64_t K, int64_t m0,
                        int64_t m1, int64_t n0, int64_t n1, int64_t k0, int64_t k1, int accumulate, int64_t mb,
                        int64_t nb, int64_t kb) {
    if (M < 0 || N < 0 || K < 0 || mb < 1 || nb < 1 || kb < 1) return REFK_EBADARG;
    if (m0 < 0 || m0 > m1 || m1 > M || n0 < 0 || n0 > n1 || n1 > N || k0 < 0 || k0 > k1 || k1 > K)
        return REFK_EBADARG;
    /* Blocks larger than the tile are the tile: also keeps i0 + mb from overflowing. */
    mb = refk_min(mb, refk_max(1, m1 - m0));
    nb = refk_min(nb, refk_max(1, n1 - n0));
    kb = refk_min(kb, refk_max(1, k1 - k0));
    if (!accumulate) {
        for (int64_t i = m0; i < m1; ++i)
            for (int64_t j = n0; j < n1; ++j) C[i * N + j] = (T)0;
    }
    SFX(refk_gemm_blocked)(A, B, C, K, N, N, m0, m1, n0, n1, k0, k1, mb, nb, kb);
    return 0;
}

/* C = A B with A [M, K], B [K, N], C [M, N]; every element of C is written. */
int SFX(refk_gemm)(const T *A, const T *B, T *C, int64_t M, int64_t N, int64_t K, int64_t mb, int64_t nb,
                   int64_t kb) {
    return SFX(refk_gemm_tile)(A, B, C, M, N, K, 0, M, 0, N, 0, K, 0, mb, nb, kb);
}

/* ------------------------------------------------------------------------------------------------ */
/* Attention                                                                                         */
/* ------------------------------------------------------------------------------------------------ */

static int SFX(refk_attn_args_ok)(int64_t batch, int64_t heads, int64_t kv_heads, int64_t q_len,
                                  int64_t kv_len, int64_t d) {
    return batch >= 0 && heads >= 1 && kv_heads >= 1 && heads % kv_heads == 0 && q_len >= 0 && kv_len >= 0 &&
           d >= 1;
}

/* Number of keys query i may see: all of them, or under the causal mask those j <= kv_len - q_len + i. */
static int64_t SFX(refk_visible)(int64_t i, int64_t q_len, int64_t kv_len, int causal) {
    if (!causal) return kv_len;
    return refk_max(0, refk_min(kv_len, kv_len - q_len + i + 1));
}

/* Lanes of the score-row loops: rows are processed in whole blocks of REFK_LANES (so no loop has a scalar
 * tail) and the row sum keeps REFK_LANES partial sums in a fixed association, so a row's result does not
 * depend on its buffer's alignment or on how the compiler vectorises (flash work units replay bit for bit).
 * 16 elements are whole 64-byte cache lines for both types. */
#define REFK_LANES 16

/* n rounded up to whole lane blocks: scratch leading dimensions and offsets, which keeps rows aligned. */
static int64_t SFX(refk_pad)(int64_t n) { return (n + REFK_LANES - 1) / REFK_LANES * REFK_LANES; }

/*
 * e^x for x <= 0 (a softmax argument s - max), by Cody-Waite range reduction and a Taylor polynomial, in
 * straight-line code the compiler vectorises (a libm call per element cannot be).
 *   n = round(x / ln 2), by adding and subtracting 1.5 * 2^MANT, which leaves n in the low bits of t;
 *   r = x - n ln2_hi - n ln2_lo, |r| <= ln2 / 2 + rounding: exact first step, ln2_hi has few bits;
 *   e^r by Horner on the Taylor series to degree N (EXP_POLY: 7 for float, 13 for double): the truncation
 *   is below 2 |r|^(N+1) / (N+1)! relative, 1e-8 for float and 1e-17 for double, under the unit roundoff;
 *   e^x = e^r 2^n by adding n to the exponent field of e^r.
 * Against a long-double exp over [EXP_LO, 0] the worst relative error is under 1 eps for both types; the
 * attention tests allow at least 24 eps.
 * Below EXP_LO (-87 float, -708 double) e^x is flushed to 0: such a weight is under 2^-125 (2^-1021) of
 * the row maximum's weight 1 and vanishes in the row sum; it also keeps e^r 2^n a normal number. NaN
 * propagates. Operation count for float, an FMA counted as 2 FLOPs: clamp 1, n 3, r 4, Horner 7 x 2,
 * exponent insertion 2 (integer shift and add), underflow select 2: 26, the CPU model's exp_flops.
 */
static inline T SFX(refk_exp_neg)(T x) {
    const T xc = x < EXP_LO ? EXP_LO : x;
    const T t = xc * (T)1.44269504088896340736 + EXP_SHIFT;
    const T n = t - EXP_SHIFT;
    T r = xc - n * EXP_LN2_HI;
    r = r - n * EXP_LN2_LO;
    union {
        T f;
        EXP_UINT u;
    } nt, p;
    nt.f = t;
    p.f = EXP_POLY(r);
    p.u += nt.u << EXP_MANT; /* the shift drops 1.5 * 2^MANT's bits above n: p * 2^n */
    return x < EXP_LO ? (T)0 : p.f;
}

/* Kt[c * ldk + j] = K[j * d + c] for j < n and 0 up to refk_pad(n) <= ldk: keys become columns, so score
 * loops run with unit stride over whole lane blocks. */
static void SFX(refk_transpose)(const T *restrict k, int64_t n, int64_t d, T *restrict kt, int64_t ldk) {
    for (int64_t c = 0; c < d; ++c) {
        for (int64_t j = 0; j < n; ++j) kt[c * ldk + j] = k[j * d + c];
        for (int64_t j = n; j < SFX(refk_pad)(n); ++j) kt[c * ldk + j] = (T)0;
    }
}

/*
 * s[j] = q . k_j for j < refk_pad(n), from Kt = K^T with leading dimension ldk (columns past the row's n
 * keys are masked keys or zeros; the softmax ignores them). The GEMM's i-k-j order: the innermost loop
 * runs over keys with unit stride, one independent accumulator per key, so it vectorises without
 * reassociating anything (each s[j] sums its d products in order c = 0, 1, ...). Two products are added
 * per pass over s, in order, which is what GCC -O3 makes of the GEMM's loop (unroll and jam): both
 * compile to the same instructions per vector (two multiplies, two adds, a load and a store of the
 * accumulator row), so with rows as short as the GEMM's (a flash key block) they run alike.
 */
static void SFX(refk_scores)(const T *restrict q, const T *restrict kt, int64_t ldk, int64_t n, int64_t d,
                             T *restrict s) {
    const int64_t np = SFX(refk_pad)(n);
    for (int64_t j = 0; j < np; ++j) s[j] = (T)0;
    int64_t c = 0;
    for (; c + 2 <= d; c += 2) {
        const T q0 = q[c], q1 = q[c + 1];
        const T *restrict k0 = kt + c * ldk;
        const T *restrict k1 = k0 + ldk;
        for (int64_t j = 0; j < np; ++j) s[j] = (s[j] + q0 * k0[j]) + q1 * k1[j];
    }
    if (c < d) {
        const T qc = q[c];
        const T *restrict kc = kt + c * ldk;
        for (int64_t j = 0; j < np; ++j) s[j] += qc * kc[j];
    }
}

/*
 * Softmax numerators of one row of n >= 1 raw scores in s[0:refk_pad(n)]: s[j] <- e^(scale s[j] - m) for
 * j < n and 0 after, with m the larger of m_prev and the row's maximum; returns m, and the sum of the new
 * s[j] in *sum. Separate passes over the contiguous row (scale and max, exp, sum), each a simple loop over
 * whole lane blocks that vectorises. Per score: a multiply, a max, a subtract, an add and one exp.
 * The max is exact in any order, so `omp simd` (-fopenmp-simd: no OpenMP runtime) may vectorise it; a
 * compiler without it runs the same loop in scalar code. The sum keeps REFK_LANES partial sums instead.
 */
static T SFX(refk_softmax_row)(T *restrict s, int64_t n, T scale, T m_prev, T *restrict sum) {
    const int64_t np = SFX(refk_pad)(n);
    T m = m_prev;
#pragma omp simd reduction(max : m)
    for (int64_t j = 0; j < np; ++j) {
        const T x = j < n ? scale * s[j] : -(T)INFINITY; /* e^-inf = 0 below */
        s[j] = x;
        m = x > m ? x : m;
    }
    for (int64_t j = 0; j < np; ++j) s[j] = SFX(refk_exp_neg)(s[j] - m);
    T lane[REFK_LANES];
    for (int u = 0; u < REFK_LANES; ++u) lane[u] = (T)0;
    for (int64_t j = 0; j < np; j += REFK_LANES)
        for (int u = 0; u < REFK_LANES; ++u) lane[u] += s[j + u];
    T l = (T)0;
    for (int u = 0; u < REFK_LANES; ++u) l += lane[u];
    *sum = l;
    return m;
}

/* o[0:d] += sum_j p[j] v_j over j < n: the GEMM's i-k-j loop again, unit stride over d, two keys per pass
 * added in order as in refk_scores. */
static void SFX(refk_weighted_sum)(const T *restrict p, const T *restrict v, int64_t n, int64_t d,
                                   T *restrict o) {
    int64_t j = 0;
    for (; j + 2 <= n; j += 2) {
        const T p0 = p[j], p1 = p[j + 1];
        const T *restrict v0 = v + j * d;
        const T *restrict v1 = v0 + d;
        for (int64_t c = 0; c < d; ++c) o[c] = (o[c] + p0 * v0[c]) + p1 * v1[c];
    }
    if (j < n) {
        const T pj = p[j];
        const T *restrict vj = v + j * d;
        for (int64_t c = 0; c < d; ++c) o[c] += pj * vj[c];
    }
}

/*
 * O = softmax(Q K^T * scale + mask) V, one query row at a time with the full score row in scratch. K of the
 * current (batch, kv head) is transposed once into scratch (kt [d, ldk]) and shared by the query heads of
 * its group.
 */
int SFX(refk_attention)(const T *Q, const T *K, const T *V, T *O, int64_t batch, int64_t heads,
                        int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t d, T scale, int causal) {
    if (!SFX(refk_attn_args_ok)(batch, heads, kv_heads, q_len, kv_len, d)) return REFK_EBADARG;
    const int64_t ldk = SFX(refk_pad)(refk_max(kv_len, 1));
    void *block;
    T *s = refk_alloc_aligned((size_t)(ldk + ldk * d) * sizeof(T), &block);
    if (s == NULL) return REFK_ENOMEM;
    T *kt = s + ldk;
    const int64_t group = heads / kv_heads;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t kvh = h / group;
            const T *q = Q + (b * heads + h) * q_len * d;
            const T *k = K + (b * kv_heads + kvh) * kv_len * d;
            const T *v = V + (b * kv_heads + kvh) * kv_len * d;
            T *o = O + (b * heads + h) * q_len * d;
            if (h % group == 0) SFX(refk_transpose)(k, kv_len, d, kt, ldk);
            for (int64_t i = 0; i < q_len; ++i) {
                T *oi = o + i * d;
                const int64_t nvis = SFX(refk_visible)(i, q_len, kv_len, causal);
                for (int64_t c = 0; c < d; ++c) oi[c] = (T)0;
                if (nvis == 0) continue;
                T l;
                SFX(refk_scores)(q + i * d, kt, ldk, nvis, d, s);
                SFX(refk_softmax_row)(s, nvis, scale, -(T)INFINITY, &l);
                SFX(refk_weighted_sum)(s, v, nvis, d, oi);
                for (int64_t c = 0; c < d; ++c) oi[c] /= l;
            }
        }
    }
    free(block);
    return 0;
}

/*
 * Online-softmax attention for query rows [i0, i1) of (batch b, head h), visiting keys in blocks of bc.
 * Per row it keeps the running max m, the running sum l of exp(s - m) and the unnormalised output acc;
 * a new block with max m' rescales both by exp(m - m'). Key blocks wholly above the causal diagonal of
 * the last row are skipped, as a flash kernel does. Each key block is transposed once into kt and shared
 * by the block's rows. Scratch (refk_flash_scratch): acc [i1 - i0, lda], m and l [i1 - i0], s [bc],
 * kt [d, ldk].
 */
static void SFX(refk_flash_rows)(const T *Q, const T *K, const T *V, T *O, int64_t heads, int64_t kv_heads,
                                 int64_t q_len, int64_t kv_len, int64_t d, int64_t b, int64_t h, int64_t i0,
                                 int64_t i1, int64_t bc, T scale, int causal, T *restrict acc, T *restrict mrow,
                                 T *restrict lrow, T *restrict s, T *restrict kt) {
    const int64_t rows = i1 - i0;
    const int64_t lda = SFX(refk_pad)(d), ldk = SFX(refk_pad)(bc);
    const int64_t kvh = h / (heads / kv_heads);
    const T *q = Q + (b * heads + h) * q_len * d;
    const T *k = K + (b * kv_heads + kvh) * kv_len * d;
    const T *v = V + (b * kv_heads + kvh) * kv_len * d;
    T *o = O + (b * heads + h) * q_len * d;
    for (int64_t r = 0; r < rows; ++r) {
        mrow[r] = -(T)INFINITY;
        lrow[r] = (T)0;
        for (int64_t c = 0; c < d; ++c) acc[r * lda + c] = (T)0;
    }
    const int64_t kv_end = rows > 0 ? SFX(refk_visible)(i1 - 1, q_len, kv_len, causal) : 0;
    for (int64_t j0 = 0; j0 < kv_end; j0 += bc) {
        const int64_t j1 = j0 + refk_min(bc, kv_end - j0);
        SFX(refk_transpose)(k + j0 * d, j1 - j0, d, kt, ldk);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t jv = refk_min(j1, SFX(refk_visible)(i0 + r, q_len, kv_len, causal));
            if (jv <= j0) continue;
            T *ar = acc + r * lda;
            T psum;
            SFX(refk_scores)(q + (i0 + r) * d, kt, ldk, jv - j0, d, s);
            const T mnew = SFX(refk_softmax_row)(s, jv - j0, scale, mrow[r], &psum);
            const T corr = EXP(mrow[r] - mnew); /* 0 on the first visible block: m = -inf */
            lrow[r] = lrow[r] * corr + psum;
            for (int64_t c = 0; c < d; ++c) ar[c] *= corr;
            SFX(refk_weighted_sum)(s, v + j0 * d, jv - j0, d, ar);
            mrow[r] = mnew;
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        T *oi = o + (i0 + r) * d;
        const T *ar = acc + r * lda;
        if (lrow[r] == (T)0) {
            for (int64_t c = 0; c < d; ++c) oi[c] = (T)0;
        } else {
            for (int64_t c = 0; c < d; ++c) oi[c] = ar[c] / lrow[r];
        }
    }
}

/* Scratch of refk_flash_rows for up to `rows` rows, each buffer on a cache line; returns the block to free
 * (NULL when out of memory) and the buffers in order acc, m, l, s, kt. */
static void *SFX(refk_flash_scratch)(int64_t rows, int64_t d, int64_t bc, T **buf) {
    const int64_t sizes[5] = {rows * SFX(refk_pad)(d), rows, rows, bc, d * SFX(refk_pad)(bc)};
    int64_t total = 0;
    for (int i = 0; i < 5; ++i) total += SFX(refk_pad)(sizes[i]);
    void *block;
    T *p = refk_alloc_aligned((size_t)total * sizeof(T), &block);
    if (p == NULL) return NULL;
    for (int i = 0; i < 5; ++i) {
        buf[i] = p;
        p += SFX(refk_pad)(sizes[i]);
    }
    return block;
}

/*
 * One work unit of flash attention: query block q_block (rows [q_block*block_q, min(+block_q, q_len)))
 * of batch b, head h. Writes exactly those rows of O and nothing else, so the units of a blocking can be
 * run in any order and together produce the same bits as refk_flash_attention with the same blocks.
 */
int SFX(refk_flash_unit)(const T *Q, const T *K, const T *V, T *O, int64_t batch, int64_t heads,
                         int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t d, int64_t b, int64_t h,
                         int64_t q_block, int64_t block_q, int64_t block_k, T scale, int causal) {
    if (!SFX(refk_attn_args_ok)(batch, heads, kv_heads, q_len, kv_len, d)) return REFK_EBADARG;
    if (block_q < 1 || block_k < 1 || b < 0 || b >= batch || h < 0 || h >= heads || q_block < 0)
        return REFK_EBADARG;
    if (q_block >= q_len / block_q + (q_len % block_q != 0)) return REFK_EBADARG;
    const int64_t i0 = q_block * block_q;
    const int64_t i1 = i0 + refk_min(block_q, q_len - i0);
    const int64_t bc = refk_max(1, refk_min(block_k, kv_len));
    T *w[5];
    void *block = SFX(refk_flash_scratch)(i1 - i0, d, bc, w);
    if (block == NULL) return REFK_ENOMEM;
    SFX(refk_flash_rows)(Q, K, V, O, heads, kv_heads, q_len, kv_len, d, b, h, i0, i1, bc, scale, causal, w[0],
                         w[1], w[2], w[3], w[4]);
    free(block);
    return 0;
}

/* Flash attention over all (batch, head, query-block) units, query blocks of block_q, key blocks of block_k. */
int SFX(refk_flash_attention)(const T *Q, const T *K, const T *V, T *O, int64_t batch, int64_t heads,
                              int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t d, int64_t block_q,
                              int64_t block_k, T scale, int causal) {
    if (!SFX(refk_attn_args_ok)(batch, heads, kv_heads, q_len, kv_len, d)) return REFK_EBADARG;
    if (block_q < 1 || block_k < 1) return REFK_EBADARG;
    block_q = refk_min(block_q, refk_max(1, q_len)); /* same rows per unit; keeps i0 + block_q in range */
    const int64_t rows = block_q;
    const int64_t bc = refk_max(1, refk_min(block_k, kv_len));
    T *w[5];
    void *block = SFX(refk_flash_scratch)(rows, d, bc, w);
    if (block == NULL) return REFK_ENOMEM;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t i0 = 0; i0 < q_len; i0 += block_q)
                SFX(refk_flash_rows)(Q, K, V, O, heads, kv_heads, q_len, kv_len, d, b, h, i0,
                                     refk_min(i0 + block_q, q_len), bc, scale, causal, w[0], w[1], w[2], w[3],
                                     w[4]);
    free(block);
    return 0;
}

#endif /* REFK_TYPE_PASS */
