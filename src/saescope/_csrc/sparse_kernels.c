/* saescope's CPU kernels for the sparse path (saescope/native.py compiles this file with the
 * system C compiler on first use and calls it through ctypes; tests/test_native.py checks
 * every function against torch).
 *
 * Every function takes a range of rows [r0, r1) and a thread count nt: built with OpenMP it
 * splits the range among nt threads of the process's pool (torch's own); without OpenMP the
 * caller runs several ranges at once on Python threads. Scratch memory is per thread.
 *
 * topk_bias_*: the k largest of a[n, j] + b[j] per row of the bias-free encoder product a,
 *   as ascending latents with their values. Exact, ties to the lower latent; rows holding a
 *   NaN or an infinity are counted in the return value and left to the caller.
 * count_above_* / take_above_*: the entries with a[n, j] + b[j] > t[j] (>= when inclusive),
 *   CSR by row in two passes (count, then fill at the caller's offsets).
 * pattern_dot_*, segment_sum_*, decode_error_*, decode_backward_*: the gathers of the sparse
 *   decode and of the weight gradients (see each function).
 * remove_parallel_*: the decoder-gradient projection.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

/* The k-th largest of v[0, n) (1 <= k <= n), reordering v: quickselect, median-of-3 pivot. */
#define DEFINE_KTH(T, S)                                                                     \
    typedef struct {                                                                         \
        T v;                                                                                 \
        int64_t i;                                                                           \
    } pair_##S;                                                                              \
    static T kth_largest_##S(T *v, int64_t n, int64_t k) {                                   \
        int64_t lo = 0, hi = n - 1, want = k - 1;                                            \
        while (lo < hi) {                                                                    \
            T x = v[lo], y = v[lo + (hi - lo) / 2], z = v[hi];                               \
            T pv = x > y ? (y > z ? y : (x > z ? z : x)) : (x > z ? x : (y > z ? z : y));    \
            int64_t i = lo, j = hi;                                                          \
            while (i <= j) {                                                                 \
                while (v[i] > pv) i++;                                                       \
                while (pv > v[j]) j--;                                                       \
                if (i <= j) {                                                                \
                    T t = v[i];                                                              \
                    v[i++] = v[j];                                                           \
                    v[j--] = t;                                                              \
                }                                                                            \
            }                                                                                \
            if (want <= j)                                                                   \
                hi = j;                                                                      \
            else if (want >= i)                                                              \
                lo = i;                                                                      \
            else                                                                             \
                break;                                                                       \
        }                                                                                    \
        return v[want];                                                                      \
    }

DEFINE_KTH(float, f32)
DEFINE_KTH(double, f64)

/* One row, in two passes over it (it stays in L1/L2 between them). Pass 1 takes the maximum
 * of each group of g consecutive entries; the k-th largest group maximum is a value that at
 * least k entries reach, so the k best are among the entries >= it. With about 2k groups
 * only a few more than k entries clear that cut on typical rows. Pass 2 collects them and
 * the quickselect keeps the k best. Returns 1 when an entry is not finite. */
#ifdef __AVX2__
#define VECTOR_f32 16
static inline float hmax_f32(__m256 x) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    return _mm_cvtss_f32(h);
}
/* the maximum of a[j, end) + b[j, end) over whole 16-blocks, advancing j */
static inline float block_max_f32(const float *a, const float *b, int64_t *jp, int64_t end,
                                  int *bad) {
    int64_t j = *jp;
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, acc = _mm256_setzero_ps();
    const __m256 zero = _mm256_setzero_ps();
    for (; j + 16 <= end; j += 16) {
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
        __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
        acc = _mm256_add_ps(acc, _mm256_add_ps(_mm256_mul_ps(v0, zero), _mm256_mul_ps(v1, zero)));
        m0 = _mm256_max_ps(m0, v0);
        m1 = _mm256_max_ps(m1, v1);
    }
    *bad |= _mm256_movemask_ps(_mm256_cmp_ps(acc, acc, _CMP_UNORD_Q)) != 0;
    *jp = j;
    return hmax_f32(_mm256_max_ps(m0, m1));
}
/* append the entries of whole 16-blocks of [j, m) that are >= cut, advancing j */
static inline void block_take_f32(const float *a, const float *b, int64_t *jp, int64_t m,
                                  float cut, pair_f32 *p, int64_t *cp) {
    int64_t j = *jp, c = *cp;
    const __m256 vcut = _mm256_set1_ps(cut);
    for (; j + 16 <= m; j += 16) {
        __m256 v0 = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
        __m256 v1 = _mm256_add_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8));
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v0, vcut, _CMP_GE_OQ)) |
                        ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(v1, vcut, _CMP_GE_OQ)) << 8);
        if (mask) {
            float tmp[16];
            _mm256_storeu_ps(tmp, v0);
            _mm256_storeu_ps(tmp + 8, v1);
            while (mask) {
                int t = __builtin_ctz(mask);
                mask &= mask - 1;
                p[c].v = tmp[t];
                p[c].i = j + t;
                c++;
            }
        }
    }
    *jp = j;
    *cp = c;
}
#define BLOCK_MAX_f32(jp, end, bad) block_max_f32(a, b, jp, end, bad)
#define BLOCK_TAKE_f32(jp, cut, cp) block_take_f32(a, b, jp, m, cut, p, cp)
#else
#define VECTOR_f32 1
#define BLOCK_MAX_f32(jp, end, bad) (-INFINITY)
#define BLOCK_TAKE_f32(jp, cut, cp)
#endif
#define VECTOR_f64 1
#define BLOCK_MAX_f64(jp, end, bad) (-INFINITY)
#define BLOCK_TAKE_f64(jp, cut, cp)

#define DEFINE_ROW(T, S)                                                                     \
    static int topk_row_##S(const T *a, const T *b, int64_t m, int64_t k, int64_t g,         \
                            pair_##S *p, T *gm, int64_t *idx, T *val) {                      \
        int bad = 0;                                                                         \
        int64_t ng = 0, j = 0, c = 0;                                                        \
        while (j < m) { /* pass 1: group maxima */                                          \
            int64_t end = j + g < m ? j + g : m;                                             \
            T mx = BLOCK_MAX_##S(&j, end, &bad);                                             \
            for (; j < end; j++) {                                                           \
                T v = a[j] + b[j];                                                           \
                bad |= !(v - v == 0);                                                        \
                if (v > mx) mx = v;                                                          \
            }                                                                                \
            gm[ng++] = mx;                                                                   \
        }                                                                                    \
        if (bad) return 1; /* NaN breaks the orderings below; the caller falls back */       \
        T cut = ng > k ? kth_largest_##S(gm, ng, k) : -(T)INFINITY;                          \
        j = 0; /* pass 2: the entries >= cut, in ascending latent order */                   \
        BLOCK_TAKE_##S(&j, cut, &c);                                                         \
        for (; j < m; j++) {                                                                 \
            T v = a[j] + b[j];                                                               \
            if (v >= cut) {                                                                  \
                p[c].v = v;                                                                  \
                p[c].i = j;                                                                  \
                c++;                                                                         \
            }                                                                                \
        }                                                                                    \
        /* keep the k best in order: above the k-th value t, then ties at t by latent */     \
        int64_t ties = k;                                                                    \
        T t = -(T)INFINITY;                                                                  \
        if (c > k) {                                                                         \
            for (int64_t q = 0; q < c; q++) gm[q] = p[q].v;                                  \
            t = kth_largest_##S(gm, c, k);                                                   \
            ties = k;                                                                        \
            for (int64_t q = 0; q < c; q++) ties -= p[q].v > t;                              \
        }                                                                                    \
        int64_t o = 0;                                                                       \
        for (int64_t q = 0; q < c && o < k; q++) {                                           \
            int keep = p[q].v > t || (p[q].v == t && ties > 0);                              \
            ties -= p[q].v == t && keep;                                                     \
            idx[o] = p[q].i;                                                                 \
            val[o] = p[q].v;                                                                 \
            o += keep;                                                                       \
        }                                                                                    \
        return 0;                                                                            \
    }

DEFINE_ROW(float, f32)
DEFINE_ROW(double, f64)

/* g: the group length, a multiple of the vector width near M / (2k) */
#define DEFINE_TOPK(T, S)                                                                    \
    int64_t topk_bias_##S(const T *a, int64_t lda, const T *b, int64_t r0, int64_t r1,       \
                          int64_t m, int64_t k, int64_t *idx, T *val, int nt) {             \
        int64_t w = VECTOR_##S, g = (m / (2 * k) + w - 1) / w * w;                           \
        if (g < w) g = w;                                                                    \
        int64_t bad = 0;                                                                     \
        int fail = 0;                                                                        \
        _Pragma("omp parallel num_threads(nt) reduction(+ : bad) reduction(| : fail)") {     \
            pair_##S *p = (pair_##S *)malloc((size_t)m * sizeof(pair_##S));                  \
            T *gm = (T *)malloc((size_t)m * sizeof(T));                                      \
            _Pragma("omp for schedule(static)") for (int64_t r = r0; r < r1; r++) {          \
                if (!p || !gm) {                                                             \
                    fail = 1;                                                                \
                    continue;                                                                \
                }                                                                            \
                bad += topk_row_##S(a + r * lda, b, m, k, g, p, gm, idx + r * k, val + r * k); \
            }                                                                                \
            free(gm);                                                                        \
            free(p);                                                                         \
        }                                                                                    \
        return fail ? -1 : bad;                                                              \
    }

DEFINE_TOPK(float, f32)
DEFINE_TOPK(double, f64)

#define DEFINE_ABOVE(T, S)                                                                   \
    void count_above_##S(const T *a, int64_t lda, const T *b, const T *t, int64_t t_stride,  \
                         int inclusive, int64_t r0, int64_t r1, int64_t m, int64_t *counts,  \
                         int nt) {                                                           \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *row = a + r * lda;                                                      \
            int64_t c = 0;                                                                   \
            if (inclusive)                                                                   \
                for (int64_t j = 0; j < m; j++) c += row[j] + b[j] >= t[j * t_stride];       \
            else                                                                             \
                for (int64_t j = 0; j < m; j++) c += row[j] + b[j] > t[j * t_stride];        \
            counts[r] = c;                                                                   \
        }                                                                                    \
    }                                                                                        \
    void take_above_##S(const T *a, int64_t lda, const T *b, const T *t, int64_t t_stride,   \
                        int inclusive, int64_t r0, int64_t r1, int64_t m,                    \
                        const int64_t *crow, int64_t *col, T *val, int nt) {                 \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            const T *row = a + r * lda;                                                      \
            int64_t o = crow[r];                                                             \
            for (int64_t j = 0; j < m; j++) {                                                \
                T v = row[j] + b[j];                                                         \
                if (inclusive ? v >= t[j * t_stride] : v > t[j * t_stride]) {                \
                    col[o] = j;                                                              \
                    val[o] = v;                                                              \
                    o++;                                                                     \
                }                                                                            \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_ABOVE(float, f32)
DEFINE_ABOVE(double, f64)

/* pattern_dot_*: out[j] = y[n] . table[col[j]] for the non-zeros j of rows n in [r0, r1)
 * (CSR by row): the gradient of the codes through the decoder. */
#define DEFINE_PATTERN_DOT(T, S)                                                             \
    void pattern_dot_##S(const int64_t *crow, const int64_t *col, const T *y,               \
                         const T *table, int64_t d, int64_t r0, int64_t r1, T *out, int nt) { \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
        for (int64_t n = r0; n < r1; n++) {                                                  \
            const T *restrict yn = y + n * d;                                                \
            for (int64_t j = crow[n]; j < crow[n + 1]; j++) {                                \
                const T *restrict t = table + col[j] * d;                                    \
                T s = 0;                                                                     \
                _Pragma("omp simd reduction(+ : s)")                                         \
                for (int64_t c = 0; c < d; c++) s += yn[c] * t[c];                           \
                out[j] = s;                                                                  \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_PATTERN_DOT(float, f32)
DEFINE_PATTERN_DOT(double, f64)

/* segment_sum_*: out[r] = sum over j in [seg[r], seg[r + 1]) of w[q] table[src[q]], q = perm[j],
 * for rows r in [r0, r1); out (R, d) is written whole: the encoder's weight gradient, with
 * segments = latents of the by-latent order and src = tokens. With AVX-512, float rows are
 * built 128 columns at a time in registers. */
#if defined(__AVX512F__)
static inline int64_t segment_sum_blocks_f32(const int64_t *seg, const int64_t *perm,
                                             const int64_t *src, const float *w,
                                             const float *table, int64_t d, int64_t r,
                                             float *out) {
    int64_t c0 = 0;
    for (; c0 + 128 <= d; c0 += 128) {
        __m512 o[8];
        for (int u = 0; u < 8; u++) o[u] = _mm512_setzero_ps();
        for (int64_t j = seg[r]; j < seg[r + 1]; j++) {
            int64_t q = perm[j];
            const float *t = table + src[q] * d + c0;
            __m512 v = _mm512_set1_ps(w[q]);
            for (int u = 0; u < 8; u++) o[u] = _mm512_fmadd_ps(v, _mm512_loadu_ps(t + 16 * u), o[u]);
        }
        for (int u = 0; u < 8; u++) _mm512_storeu_ps(out + r * d + c0 + 16 * u, o[u]);
    }
    return c0;
}
#define SEGMENT_SUM_BLOCKS_f32 c0 = segment_sum_blocks_f32(seg, perm, src, w, table, d, r, out);
#else
#define SEGMENT_SUM_BLOCKS_f32
#endif
#define SEGMENT_SUM_BLOCKS_f64

#define DEFINE_SEGMENT_SUM(T, S)                                                             \
    void segment_sum_##S(const int64_t *seg, const int64_t *perm, const int64_t *src,       \
                         const T *w, const T *table, int64_t d, int64_t r0, int64_t r1,      \
                         T *out, int nt) {                                                   \
        _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 64)")                    \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            int64_t c0 = 0;                                                                  \
            SEGMENT_SUM_BLOCKS_##S                                                           \
            T *restrict o = out + r * d;                                                     \
            for (int64_t c = c0; c < d; c++) o[c] = 0;                                       \
            for (int64_t j = seg[r]; j < seg[r + 1] && c0 < d; j++) {                        \
                int64_t q = perm[j];                                                         \
                const T *restrict t = table + src[q] * d;                                    \
                T v = w[q];                                                                  \
                for (int64_t c = c0; c < d; c++) o[c] += v * t[c];                           \
            }                                                                                \
        }                                                                                    \
    }

DEFINE_SEGMENT_SUM(float, f32)
DEFINE_SEGMENT_SUM(double, f64)

/* decode_error_*: the sparse decode and its error in one pass over each token's row:
 *   y_hat[n] = b + sum_j vals[j] W[col[j]]   e[n] = y_hat[n] - y[n]   sq[n] = |e[n]|^2
 * (b may be NULL) for rows [r0, r1) of a CSR by row (crow, col). With AVX-512, float rows
 * are built 128 columns at a time in 8 registers, each decoder row read once. */
#if defined(__AVX512F__)
static inline int64_t decode_error_blocks_f32(const int64_t *crow, const int64_t *col,
                                              const float *vals, const float *W,
                                              const float *b, const float *y, int64_t d,
                                              int64_t n, float *yhat, float *e, float *s) {
    int64_t c0 = 0;
    for (; c0 + 128 <= d; c0 += 128) {
        __m512 a[8];
        for (int u = 0; u < 8; u++) a[u] = b ? _mm512_loadu_ps(b + c0 + 16 * u) : _mm512_setzero_ps();
        for (int64_t j = crow[n]; j < crow[n + 1]; j++) {
            const float *w = W + col[j] * d + c0;
            __m512 v = _mm512_set1_ps(vals[j]);
            for (int u = 0; u < 8; u++) a[u] = _mm512_fmadd_ps(v, _mm512_loadu_ps(w + 16 * u), a[u]);
        }
        __m512 acc = _mm512_setzero_ps();
        for (int u = 0; u < 8; u++) {
            int64_t o = n * d + c0 + 16 * u;
            _mm512_storeu_ps(yhat + o, a[u]);
            __m512 ee = _mm512_sub_ps(a[u], _mm512_loadu_ps(y + o));
            _mm512_storeu_ps(e + o, ee);
            acc = _mm512_fmadd_ps(ee, ee, acc);
        }
        *s += _mm512_reduce_add_ps(acc);
    }
    return c0;
}
#define DECODE_ERROR_BLOCKS_f32 c0 = decode_error_blocks_f32(crow, col, vals, W, b, y, d, n, yhat, e, &s);
#else
#define DECODE_ERROR_BLOCKS_f32
#endif
#define DECODE_ERROR_BLOCKS_f64

#define DEFINE_DECODE_ERROR(T, S)                                                            \
    void decode_error_##S(const int64_t *crow, const int64_t *col, const T *vals, const T *W, \
                          const T *b, const T *y, int64_t d, int64_t r0, int64_t r1,         \
                          T *yhat, T *e, T *sq, int nt) {                                    \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
        for (int64_t n = r0; n < r1; n++) {                                                  \
            int64_t c0 = 0;                                                                  \
            T s = 0;                                                                         \
            DECODE_ERROR_BLOCKS_##S                                                          \
            T *restrict o = yhat + n * d;                                                    \
            for (int64_t c = c0; c < d; c++) o[c] = b ? b[c] : 0;                            \
            for (int64_t j = crow[n]; j < crow[n + 1] && c0 < d; j++) {                      \
                const T *restrict w = W + col[j] * d;                                        \
                T v = vals[j];                                                               \
                for (int64_t c = c0; c < d; c++) o[c] += v * w[c];                           \
            }                                                                                \
            for (int64_t c = c0; c < d; c++) {                                               \
                T ec = o[c] - y[n * d + c];                                                  \
                e[n * d + c] = ec;                                                           \
                s += ec * ec;                                                                \
            }                                                                                \
            sq[n] = s;                                                                       \
        }                                                                                    \
    }

DEFINE_DECODE_ERROR(float, f32)
DEFINE_DECODE_ERROR(double, f64)

/* decode_backward_*: both gradients of the sparse decode out = f W_dec in one pass over the
 * non-zeros by latent (tcrow, order: the by-latent CSR; rows: each non-zero's token), so each
 * row of grad_out = scale * gout is read once for both:
 *   grad_vals[q] = grad_out[rows[q]] . W_dec[l]    grad_W_dec[l] = sum_q vals[q] grad_out[rows[q]]
 * for latents l in [l0, l1); grad_W_dec (M, d) is written whole. */
#if defined(__AVX512F__)
/* latent l's rows, 128 columns at a time: W_dec's and the gradient's blocks stay in registers;
 * the dot products build up in gvals (zeroed by the caller). Returns the columns done. */
static inline int64_t decode_backward_blocks_f32(const int64_t *tcrow, const int64_t *order,
                                                 const int64_t *rows, const float *vals,
                                                 const float *gout, const float *wdec,
                                                 int64_t d, int64_t l, float scale,
                                                 float *gvals, float *gw) {
    int64_t c0 = 0;
    for (; c0 + 128 <= d; c0 += 128) {
        __m512 w[8], o[8];
        for (int u = 0; u < 8; u++) {
            w[u] = _mm512_loadu_ps(wdec + l * d + c0 + 16 * u);
            o[u] = _mm512_setzero_ps();
        }
        for (int64_t j = tcrow[l]; j < tcrow[l + 1]; j++) {
            int64_t q = order[j];
            const float *g = gout + rows[q] * d + c0;
            __m512 v = _mm512_set1_ps(vals[q]), dot = _mm512_setzero_ps();
            for (int u = 0; u < 8; u++) {
                __m512 gu = _mm512_loadu_ps(g + 16 * u);
                dot = _mm512_fmadd_ps(gu, w[u], dot);
                o[u] = _mm512_fmadd_ps(v, gu, o[u]);
            }
            gvals[q] += _mm512_reduce_add_ps(dot);
        }
        __m512 sc = _mm512_set1_ps(scale);
        for (int u = 0; u < 8; u++) _mm512_storeu_ps(gw + l * d + c0 + 16 * u, _mm512_mul_ps(o[u], sc));
    }
    return c0;
}
#define DECODE_BACKWARD_BLOCKS_f32                                                           \
    c0 = decode_backward_blocks_f32(tcrow, order, rows, vals, gout, wdec, d, l, (float)scale, \
                                    gvals, gw);
#else
#define DECODE_BACKWARD_BLOCKS_f32
#endif
#define DECODE_BACKWARD_BLOCKS_f64

#define DEFINE_DECODE_BACKWARD(T, S)                                                         \
    void decode_backward_##S(const int64_t *tcrow, const int64_t *order, const int64_t *rows, \
                             const T *vals, const T *gout, const T *wdec, int64_t d,         \
                             double scale, int64_t l0, int64_t l1, T *gvals, T *gw, int nt) { \
        _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 64)")                    \
        for (int64_t l = l0; l < l1; l++) {                                                  \
            int64_t c0 = 0;                                                                  \
            for (int64_t j = tcrow[l]; j < tcrow[l + 1]; j++) gvals[order[j]] = 0;           \
            DECODE_BACKWARD_BLOCKS_##S                                                       \
            const T *restrict w = wdec + l * d;                                              \
            T *restrict o = gw + l * d;                                                      \
            for (int64_t c = c0; c < d; c++) o[c] = 0;                                       \
            for (int64_t j = tcrow[l]; j < tcrow[l + 1] && c0 < d; j++) {                    \
                int64_t q = order[j];                                                        \
                const T *restrict g = gout + rows[q] * d;                                    \
                T v = vals[q], s = 0;                                                        \
                _Pragma("omp simd reduction(+ : s)")                                         \
                for (int64_t c = c0; c < d; c++) {                                           \
                    s += g[c] * w[c];                                                        \
                    o[c] += v * g[c];                                                        \
                }                                                                            \
                gvals[q] += s;                                                               \
            }                                                                                \
            for (int64_t c = c0; c < d; c++) o[c] *= (T)scale;                               \
            for (int64_t j = tcrow[l]; j < tcrow[l + 1]; j++) gvals[order[j]] *= (T)scale;   \
        }                                                                                    \
    }

DEFINE_DECODE_BACKWARD(float, f32)
DEFINE_DECODE_BACKWARD(double, f64)

/* remove_parallel_*: g[r] -= (g[r] . w[r]) / max(w[r] . w[r], eps2) w[r] for rows [r0, r1),
 * in place: the decoder-gradient projection, one pass over each row. */
#define DEFINE_REMOVE_PARALLEL(T, S)                                                         \
    void remove_parallel_##S(T *g, const T *w, int64_t d, int64_t r0, int64_t r1, double eps2, \
                             int nt) {                                                       \
        _Pragma("omp parallel for num_threads(nt) schedule(static)")                         \
        for (int64_t r = r0; r < r1; r++) {                                                  \
            T *restrict gr = g + r * d;                                                      \
            const T *restrict wr = w + r * d;                                                \
            T gw = 0, ww = 0;                                                                \
            _Pragma("omp simd reduction(+ : gw, ww)")                                        \
            for (int64_t c = 0; c < d; c++) {                                                \
                gw += gr[c] * wr[c];                                                         \
                ww += wr[c] * wr[c];                                                         \
            }                                                                                \
            T coef = gw / (ww > (T)eps2 ? ww : (T)eps2);                                     \
            for (int64_t c = 0; c < d; c++) gr[c] -= coef * wr[c];                           \
        }                                                                                    \
    }

DEFINE_REMOVE_PARALLEL(float, f32)
DEFINE_REMOVE_PARALLEL(double, f64)

/* 1 when built with OpenMP: the functions above then split their rows among nt threads of
 * the process's OpenMP pool (torch's own, as both load libgomp.so.1). */
int saescope_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
