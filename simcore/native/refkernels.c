/*
 * Reference kernels for checking simcore's decompositions numerically and for measuring host bandwidth.
 *
 * - cache-blocked GEMM (fp32, fp64), whole-matrix and single-tile entries;
 * - attention (fp32, fp64): plain softmax(Q K^T * scale + mask) V, and a tiled online-softmax
 *   (flash-style) version, whole-tensor and single (batch, head, query-block) work unit;
 * - a STREAM-like bandwidth loop (copy, scale, add, triad).
 *
 * Correctness and clarity come first; the kernels are single-threaded and use only libc/libm.
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
 * element type (float, double) with T, SFX, EXP defined for that type.
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

#define T float
#define SFX(name) name##_f32
#define EXP expf
#include __FILE__
#undef T
#undef SFX
#undef EXP

#define T double
#define SFX(name) name##_f64
#define EXP exp
#include __FILE__
#undef T
#undef SFX
#undef EXP

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

static T SFX(refk_dot)(const T *restrict x, const T *restrict y, int64_t d) {
    T s = (T)0;
    for (int64_t c = 0; c < d; ++c) s += x[c] * y[c];
    return s;
}

/* Number of keys query i may see: all of them, or under the causal mask those j <= kv_len - q_len + i. */
static int64_t SFX(refk_visible)(int64_t i, int64_t q_len, int64_t kv_len, int causal) {
    if (!causal) return kv_len;
    return refk_max(0, refk_min(kv_len, kv_len - q_len + i + 1));
}

/* O = softmax(Q K^T * scale + mask) V, one query row at a time with the full score row in scratch. */
int SFX(refk_attention)(const T *Q, const T *K, const T *V, T *O, int64_t batch, int64_t heads,
                        int64_t kv_heads, int64_t q_len, int64_t kv_len, int64_t d, T scale, int causal) {
    if (!SFX(refk_attn_args_ok)(batch, heads, kv_heads, q_len, kv_len, d)) return REFK_EBADARG;
    T *s = malloc((size_t)refk_max(kv_len, 1) * sizeof(T));
    if (s == NULL) return REFK_ENOMEM;
    const int64_t group = heads / kv_heads;
    for (int64_t b = 0; b < batch; ++b) {
        for (int64_t h = 0; h < heads; ++h) {
            const int64_t kvh = h / group;
            const T *q = Q + (b * heads + h) * q_len * d;
            const T *k = K + (b * kv_heads + kvh) * kv_len * d;
            const T *v = V + (b * kv_heads + kvh) * kv_len * d;
            T *o = O + (b * heads + h) * q_len * d;
            for (int64_t i = 0; i < q_len; ++i) {
                const T *qi = q + i * d;
                T *oi = o + i * d;
                const int64_t nvis = SFX(refk_visible)(i, q_len, kv_len, causal);
                for (int64_t c = 0; c < d; ++c) oi[c] = (T)0;
                if (nvis == 0) continue;
                T m = -(T)INFINITY;
                for (int64_t j = 0; j < nvis; ++j) {
                    s[j] = scale * SFX(refk_dot)(qi, k + j * d, d);
                    if (s[j] > m) m = s[j];
                }
                T l = (T)0;
                for (int64_t j = 0; j < nvis; ++j) {
                    s[j] = EXP(s[j] - m);
                    l += s[j];
                }
                for (int64_t j = 0; j < nvis; ++j) {
                    const T p = s[j];
                    const T *vj = v + j * d;
                    for (int64_t c = 0; c < d; ++c) oi[c] += p * vj[c];
                }
                for (int64_t c = 0; c < d; ++c) oi[c] /= l;
            }
        }
    }
    free(s);
    return 0;
}

/*
 * Online-softmax attention for query rows [i0, i1) of (batch b, head h), visiting keys in blocks of bc.
 * Per row it keeps the running max m, the running sum l of exp(s - m) and the unnormalised output acc;
 * a new block with max m' rescales both by exp(m - m'). Key blocks wholly above the causal diagonal of
 * the last row are skipped, as a flash kernel does. Scratch: acc [i1 - i0, d], m and l [i1 - i0], s [bc].
 */
static void SFX(refk_flash_rows)(const T *Q, const T *K, const T *V, T *O, int64_t heads, int64_t kv_heads,
                                 int64_t q_len, int64_t kv_len, int64_t d, int64_t b, int64_t h, int64_t i0,
                                 int64_t i1, int64_t bc, T scale, int causal, T *restrict acc, T *restrict mrow,
                                 T *restrict lrow, T *restrict s) {
    const int64_t rows = i1 - i0;
    const int64_t kvh = h / (heads / kv_heads);
    const T *q = Q + (b * heads + h) * q_len * d;
    const T *k = K + (b * kv_heads + kvh) * kv_len * d;
    const T *v = V + (b * kv_heads + kvh) * kv_len * d;
    T *o = O + (b * heads + h) * q_len * d;
    for (int64_t r = 0; r < rows; ++r) {
        mrow[r] = -(T)INFINITY;
        lrow[r] = (T)0;
        for (int64_t c = 0; c < d; ++c) acc[r * d + c] = (T)0;
    }
    const int64_t kv_end = rows > 0 ? SFX(refk_visible)(i1 - 1, q_len, kv_len, causal) : 0;
    for (int64_t j0 = 0; j0 < kv_end; j0 += bc) {
        const int64_t j1 = j0 + refk_min(bc, kv_end - j0);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t jv = refk_min(j1, SFX(refk_visible)(i0 + r, q_len, kv_len, causal));
            if (jv <= j0) continue;
            const T *qi = q + (i0 + r) * d;
            T *ar = acc + r * d;
            T bm = -(T)INFINITY;
            for (int64_t j = j0; j < jv; ++j) {
                const T sj = scale * SFX(refk_dot)(qi, k + j * d, d);
                s[j - j0] = sj;
                if (sj > bm) bm = sj;
            }
            const T mnew = mrow[r] > bm ? mrow[r] : bm;
            const T corr = EXP(mrow[r] - mnew); /* 0 on the first visible block: m = -inf */
            T psum = (T)0;
            for (int64_t j = j0; j < jv; ++j) {
                const T p = EXP(s[j - j0] - mnew);
                s[j - j0] = p;
                psum += p;
            }
            lrow[r] = lrow[r] * corr + psum;
            for (int64_t c = 0; c < d; ++c) ar[c] *= corr;
            for (int64_t j = j0; j < jv; ++j) {
                const T p = s[j - j0];
                const T *vj = v + j * d;
                for (int64_t c = 0; c < d; ++c) ar[c] += p * vj[c];
            }
            mrow[r] = mnew;
        }
    }
    for (int64_t r = 0; r < rows; ++r) {
        T *oi = o + (i0 + r) * d;
        const T *ar = acc + r * d;
        if (lrow[r] == (T)0) {
            for (int64_t c = 0; c < d; ++c) oi[c] = (T)0;
        } else {
            for (int64_t c = 0; c < d; ++c) oi[c] = ar[c] / lrow[r];
        }
    }
}

static T *SFX(refk_flash_scratch)(int64_t rows, int64_t d, int64_t bc) {
    return malloc((size_t)(rows * d + 2 * rows + bc) * sizeof(T));
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
    T *scratch = SFX(refk_flash_scratch)(i1 - i0, d, bc);
    if (scratch == NULL) return REFK_ENOMEM;
    T *acc = scratch, *mrow = acc + (i1 - i0) * d, *lrow = mrow + (i1 - i0), *s = lrow + (i1 - i0);
    SFX(refk_flash_rows)(Q, K, V, O, heads, kv_heads, q_len, kv_len, d, b, h, i0, i1, bc, scale, causal,
                         acc, mrow, lrow, s);
    free(scratch);
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
    T *scratch = SFX(refk_flash_scratch)(rows, d, bc);
    if (scratch == NULL) return REFK_ENOMEM;
    T *acc = scratch, *mrow = acc + rows * d, *lrow = mrow + rows, *s = lrow + rows;
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t h = 0; h < heads; ++h)
            for (int64_t i0 = 0; i0 < q_len; i0 += block_q)
                SFX(refk_flash_rows)(Q, K, V, O, heads, kv_heads, q_len, kv_len, d, b, h, i0,
                                     refk_min(i0 + block_q, q_len), bc, scale, causal, acc, mrow, lrow, s);
    free(scratch);
    return 0;
}

#endif /* REFK_TYPE_PASS */
