/* The decode step over tensors in the model's dtype (float32 or bfloat16): softmax attention over a cache of keys
 * and values as stored, and the matrix-vector products of the weights (y = x W^T for a few rows x). A decode step
 * is bound by the bytes it reads; both read every stored byte once, from where it lies, without a widened copy.
 *
 * Attention, per KV head: each key is widened to float32 once and scored by the R query rows of its head (bf16
 * keys against a bf16 model's queries on AVX512-BF16's dot product instead); the softmax runs over the head's T
 * scores at once (common.h); p.v adds four tokens at a time into R float32 rows. A head may read listed tokens only
 * (sparse decoding's selection, read in place rather than gathered into a copy), and return its scores and
 * probabilities (the retrieval heads rank tokens by them). hh_dense_chunk is the same as one online-softmax step
 * over a block range of the quantized cache's bf16 or fp8 (e4m3, with a scale per token) formats.
 * Products: four weight rows at a time against every x row, so that each weight is read from memory once. In
 * bfloat16, on a CPU with AVX512-BF16, through its dot-product instruction (the product of two bfloat16 numbers is
 * exact in float32, and the sums are float32, as in torch's bfloat16 matmul); elsewhere each weight is widened to
 * float32 by a shift.
 *
 * Same math as the plain-PyTorch paths (attention/gqa_decode.py, torch.nn.functional.linear) in another order:
 * equal up to float rounding, which tests/unit/test_native_dense.py checks. Built and loaded with int4_decode.c
 * (hydrahead.kv.native).
 */
#include "common.h"

#if defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>
#define HAVE_BF16_DOT 1
#endif

#define DTYPE_FLOAT32 0
#define DTYPE_BFLOAT16 1
#define DTYPE_E4M3 2 /* float8_e4m3fn, read with a per-token scale (the fp8 KV cache) */
#define MAX_DIM 256 /* head_dim up to 256 */
/* tokens ahead whose rows are asked for early: the hardware prefetcher alone leaves a single core's stream at about
 * two thirds of the bandwidth a plain sum reaches (8 was best of 4-32 for 128 float32 channels) */
#define PREFETCH_TOKENS 8

/* ask for the cache lines of `bytes` bytes at `row` (a prefetch never faults, even past the end of a buffer) */
static inline void prefetch(const char *row, size_t bytes) {
    for (size_t b = 0; b < bytes; b += 64) __builtin_prefetch(row + b);
}

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

static inline size_t element_size(int64_t dtype) {
    return dtype == DTYPE_FLOAT32 ? 4 : dtype == DTYPE_BFLOAT16 ? 2 : 1;
}

/* `n` elements at `src` as float32: the row itself for float32, else widened into `buffer`. */
static inline const float *as_float(const void *src, int64_t dtype, int64_t n, float *restrict buffer) {
    if (dtype == DTYPE_FLOAT32) return (const float *)src;
    if (dtype == DTYPE_E4M3) {
        const uint8_t *b = (const uint8_t *)src;
        for (int64_t i = 0; i < n; i++) buffer[i] = e4m3_to_float(b[i]);
        return buffer;
    }
    const uint16_t *h = (const uint16_t *)src;
    for (int64_t i = 0; i < n; i++) buffer[i] = bf16_to_float(h[i]);
    return buffer;
}

/* The row of token `t` of a head at `base` (`step` bytes apart): the t-th, or the index[t]-th where an index is given
 * (sparse decoding's selected tokens, read in place instead of gathered into a copy). */
static inline const char *row_at(const char *base, size_t step, const int64_t *index, int64_t t) {
    return base + (size_t)(index ? index[t] : t) * step;
}

/* The row PREFETCH_TOKENS after t, asked for early (nothing past the last token). */
static inline void prefetch_ahead(const char *base, size_t step, const int64_t *index, int64_t t, int64_t T,
                                  size_t bytes) {
    if (t + PREFETCH_TOKENS < T) prefetch(row_at(base, step, index, t + PREFETCH_TOKENS), bytes);
}

/* scores [R, T] = q [R, D] . keys [T, D] (token stride `stride` elements; the tokens index[0..T) where an index
 * is given). With `bf16_query` (the query rows are bfloat16 numbers: a bfloat16 model's queries, passed unscaled)
 * bfloat16 keys are scored on AVX512-BF16's dot-product instruction, exactly; otherwise widened to float32. */
static void dense_scores(int64_t R, int64_t D, int64_t T, int64_t dtype, int bf16_query, const float *q,
                         const char *keys, int64_t stride, const int64_t *index, float *scores) {
    float row[MAX_DIM];
    const size_t step = (size_t)stride * element_size(dtype);
#ifdef HAVE_BF16_DOT
    if (dtype == DTYPE_BFLOAT16 && bf16_query && D % 32 == 0) { /* 32 products a step */
        __m512bh qh[MAX_ROWS][MAX_DIM / 32];
        for (int64_t r = 0; r < R; r++)
            for (int64_t j = 0; j < D / 32; j++)
                qh[r][j] = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(q + r * D + 32 * j + 16),
                                               _mm512_loadu_ps(q + r * D + 32 * j));
        for (int64_t t = 0; t < T; t++) {
            const uint16_t *k = (const uint16_t *)row_at(keys, step, index, t);
            prefetch_ahead(keys, step, index, t, T, (size_t)D * 2);
            for (int64_t r = 0; r < R; r++) {
                __m512 a = _mm512_setzero_ps();
                for (int64_t j = 0; j < D / 32; j++)
                    a = _mm512_dpbf16_ps(a, qh[r][j], (__m512bh)_mm512_loadu_si512(k + 32 * j));
                scores[r * T + t] = _mm512_reduce_add_ps(a);
            }
        }
        return;
    }
#endif
    for (int64_t t = 0; t < T; t++) {
        prefetch_ahead(keys, step, index, t, T, (size_t)D * element_size(dtype));
        const float *k = as_float(row_at(keys, step, index, t), dtype, D, row);
        for (int64_t r = 0; r < R; r++) {
            const float *qr = q + r * D;
            float dot = 0.0f;
            for (int64_t d = 0; d < D; d++) dot += qr[d] * k[d];
            scores[r * T + t] = dot;
        }
    }
}

/* acc [R, D] = alpha * acc + p [R, T] @ (scale_t * values_t) [T, D] (alpha NULL: acc starts from zero; scale NULL:
 * 1), four tokens at a time: each partial sum is loaded and stored once per four tokens, not once per token. */
static void dense_values(int64_t R, int64_t D, int64_t T, int64_t dtype, const float *p, const char *values,
                         int64_t stride, const int64_t *index, const float *scale, const float *alpha, float *out) {
    float acc[MAX_ROWS][MAX_DIM], rows[4][MAX_DIM];
    const size_t step = (size_t)stride * element_size(dtype);
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d++) acc[r][d] = alpha ? alpha[r] * out[r * D + d] : 0.0f;
    int64_t t = 0;
    for (; t + 4 <= T; t += 4) {
        for (int k = 0; k < 4; k++) prefetch_ahead(values, step, index, t + k, T, (size_t)D * element_size(dtype));
        const float *v0 = as_float(row_at(values, step, index, t), dtype, D, rows[0]);
        const float *v1 = as_float(row_at(values, step, index, t + 1), dtype, D, rows[1]);
        const float *v2 = as_float(row_at(values, step, index, t + 2), dtype, D, rows[2]);
        const float *v3 = as_float(row_at(values, step, index, t + 3), dtype, D, rows[3]);
        const float s0 = scale ? scale[t] : 1.0f, s1 = scale ? scale[t + 1] : 1.0f;
        const float s2 = scale ? scale[t + 2] : 1.0f, s3 = scale ? scale[t + 3] : 1.0f;
        for (int64_t r = 0; r < R; r++) {
            const float *pr = p + r * T + t;
            const float w0 = pr[0] * s0, w1 = pr[1] * s1, w2 = pr[2] * s2, w3 = pr[3] * s3;
            float *restrict a = acc[r];
            for (int64_t d = 0; d < D; d++) a[d] += w0 * v0[d] + w1 * v1[d] + w2 * v2[d] + w3 * v3[d];
        }
    }
    for (; t < T; t++) {
        const float *v = as_float(row_at(values, step, index, t), dtype, D, rows[0]);
        for (int64_t r = 0; r < R; r++) {
            const float w = p[r * T + t] * (scale ? scale[t] : 1.0f);
            for (int64_t d = 0; d < D; d++) acc[r][d] += w * v[d];
        }
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t d = 0; d < D; d++) out[r * D + d] = acc[r][d];
}

/* Strides are in elements. q [B, H, R, D] float32 contiguous, unscaled (the scores are multiplied by `scale`;
 * bf16_query: its numbers are bfloat16 ones, see dense_scores); keys and values [B, Hk, N, D] in `dtype` (0 float32,
 * 1 bfloat16) with their (b, h, token) strides in `strides` (keys' three, then values'), the channels contiguous.
 * Query head slot h reads KV head heads[h] (or h where `heads` is NULL) at the tokens index[b * H + h, 0..T) (or
 * 0..T where `index` is NULL); keep [B * H, T] (uint8, or NULL for all) hides the tokens it marks 0. Out: out
 * [B, H, R, D] float32 = softmax(q k^T * scale) v (zeros for a row that sees no token); scores [B, H, R, T] float32
 * holds the softmax's probabilities; raw [B, H, R, T] float32 (unless NULL) the scaled scores before it (-inf where
 * hidden). Heads b * H + h in [first, last) only. Returns 0, or a negative number for shapes it does not take. */
int hh_dense_attention(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t dtype, int64_t bf16_query,
                       float scale, const float *q, const void *keys, const void *values, const int64_t *strides,
                       const int64_t *heads, const int64_t *index, const uint8_t *keep, float *scores, float *raw,
                       float *out, int64_t first, int64_t last) {
    if (R < 1 || R > MAX_ROWS || D < 1 || D > MAX_DIM || T < 1 || dtype < DTYPE_FLOAT32 || dtype > DTYPE_E4M3
        || first < 0 || last > B * H)
        return -1;
    const size_t size = element_size(dtype);
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = heads ? heads[bh % H] : bh % H;
        const char *k = (const char *)keys + (b * strides[0] + h * strides[1]) * size;
        const char *v = (const char *)values + (b * strides[3] + h * strides[4]) * size;
        const int64_t *tokens = index ? index + bh * T : NULL;
        float *s = scores + bh * R * T, *o = out + bh * R * D;
        float m[MAX_ROWS], l[MAX_ROWS], alpha[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
        }
        dense_scores(R, D, T, dtype, (int)bf16_query, q + bh * R * D, k, strides[2], tokens, s);
        for (int64_t r = 0; r < R; r++)
            for (int64_t t = 0; t < T; t++)
                s[r * T + t] = (keep && !keep[bh * T + t]) ? -INFINITY : s[r * T + t] * scale;
        if (raw) memcpy(raw + bh * R * T, s, sizeof(float) * (size_t)(R * T));
        online_softmax(R, T, s, m, l, alpha);
        dense_values(R, D, T, dtype, s, v, strides[5], tokens, NULL, NULL, o);
        for (int64_t r = 0; r < R; r++) {
            const float inverse = l[r] > 0.0f ? 1.0f / l[r] : 0.0f; /* a row that sees nothing: zeros */
            for (int64_t d = 0; d < D; d++) o[r * D + d] *= inverse;
            for (int64_t t = 0; t < T; t++) s[r * T + t] *= inverse;
        }
    }
    return 0;
}

/* One chunk of a decode step's online softmax over keys and values in `dtype` (0 float32, 1 bfloat16, 2
 * float8_e4m3fn): `hh_int4_chunk`'s contract (int4_decode.c) for the caches that store the model's numbers or fp8.
 * q [B, H, R, D] float32 contiguous, already scaled; keys and values [B, H, T, D] with their (b, h, token) strides
 * in `strides` (keys' three, then values'); key_scale and value_scale [B, H, T] float32 contiguous (fp8's scale per
 * token) or NULL; bias [B, H, R, T] contiguous or NULL; m and l [B, H, R], acc [B, H, R, D], contiguous, updated in
 * place. Heads b * H + h in [first, last) only. Returns 0, or a negative number for shapes it does not take. */
int hh_dense_chunk(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t dtype, const float *q,
                   const void *keys, const void *values, const int64_t *strides, const float *key_scale,
                   const float *value_scale, const float *bias, float *m, float *l, float *acc, int64_t first,
                   int64_t last) {
    if (R < 1 || R > MAX_ROWS || D < 1 || D > MAX_DIM || T < 1 || dtype < DTYPE_FLOAT32 || dtype > DTYPE_E4M3
        || first < 0 || last > B * H)
        return -1;
    float *scores = malloc(sizeof(float) * (size_t)(R * T));
    if (!scores) return -2;
    const size_t size = element_size(dtype);
    float alpha[MAX_ROWS];
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        const char *k = (const char *)keys + (b * strides[0] + h * strides[1]) * size;
        const char *v = (const char *)values + (b * strides[3] + h * strides[4]) * size;
        dense_scores(R, D, T, dtype, 0, q + bh * R * D, k, strides[2], NULL, scores); /* q is scaled: widen keys */
        for (int64_t r = 0; r < R; r++)
            for (int64_t t = 0; t < T; t++) {
                float x = scores[r * T + t];
                if (key_scale) x *= key_scale[bh * T + t];
                if (bias) x += bias[(bh * R + r) * T + t];
                scores[r * T + t] = x;
            }
        online_softmax(R, T, scores, m + bh * R, l + bh * R, alpha);
        dense_values(R, D, T, dtype, scores, v, strides[5], NULL, value_scale ? value_scale + bh * T : NULL, alpha,
                     acc + bh * R * D);
    }
    free(scores);
    return 0;
}

/* y[m, n] = sum_k x[m, k] w[n, k] for the weight rows n in [first, last): x [M, K] and w [N, K] contiguous, in
 * `dtype`; y [M, N] float32. The float32 path (float32 weights, or bfloat16 widened by a shift). */
static void linear_widened(int64_t M, int64_t N, int64_t K, int64_t dtype, const float *x, const void *w, float *y,
                           int64_t first, int64_t last) {
    const float *wf = (const float *)w;
    const uint16_t *wh = (const uint16_t *)w;
    int64_t n = first;
    for (; n + 4 <= last; n += 4) {
        prefetch((const char *)w + (size_t)((n + 4) * K) * element_size(dtype), (size_t)(4 * K) * element_size(dtype));
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
            if (dtype == DTYPE_FLOAT32) {
                const float *w0 = wf + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
                for (int64_t k = 0; k < K; k++) {
                    a0 += xm[k] * w0[k];
                    a1 += xm[k] * w1[k];
                    a2 += xm[k] * w2[k];
                    a3 += xm[k] * w3[k];
                }
            } else {
                const uint16_t *w0 = wh + n * K, *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
                for (int64_t k = 0; k < K; k++) {
                    a0 += xm[k] * bf16_to_float(w0[k]);
                    a1 += xm[k] * bf16_to_float(w1[k]);
                    a2 += xm[k] * bf16_to_float(w2[k]);
                    a3 += xm[k] * bf16_to_float(w3[k]);
                }
            }
            float *ym = y + m * N + n;
            ym[0] = a0, ym[1] = a1, ym[2] = a2, ym[3] = a3;
        }
    }
    for (; n < last; n++)
        for (int64_t m = 0; m < M; m++) {
            const float *xm = x + m * K;
            float a = 0.0f;
            for (int64_t k = 0; k < K; k++)
                a += xm[k] * (dtype == DTYPE_FLOAT32 ? wf[n * K + k] : bf16_to_float(wh[n * K + k]));
            y[m * N + n] = a;
        }
}

#ifdef HAVE_BF16_DOT
/* The bfloat16 path on AVX512-BF16 (K a multiple of 32): 32 products per instruction, summed in float32. */
static void linear_bf16_dot(int64_t M, int64_t N, int64_t K, const uint16_t *x, const uint16_t *w, float *y,
                            int64_t first, int64_t last) {
    int64_t n = first;
    for (; n + 4 <= last; n += 4) {
        prefetch((const char *)(w + (n + 4) * K), (size_t)(4 * K) * 2); /* the next four rows */
        for (int64_t m = 0; m < M; m++) {
            const uint16_t *xm = x + m * K, *w0 = w + n * K;
            __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t k = 0; k < K; k += 32) {
                const __m512bh xk = (__m512bh)_mm512_loadu_si512(xm + k);
                a0 = _mm512_dpbf16_ps(a0, xk, (__m512bh)_mm512_loadu_si512(w0 + k));
                a1 = _mm512_dpbf16_ps(a1, xk, (__m512bh)_mm512_loadu_si512(w0 + K + k));
                a2 = _mm512_dpbf16_ps(a2, xk, (__m512bh)_mm512_loadu_si512(w0 + 2 * K + k));
                a3 = _mm512_dpbf16_ps(a3, xk, (__m512bh)_mm512_loadu_si512(w0 + 3 * K + k));
            }
            float *ym = y + m * N + n;
            ym[0] = _mm512_reduce_add_ps(a0), ym[1] = _mm512_reduce_add_ps(a1);
            ym[2] = _mm512_reduce_add_ps(a2), ym[3] = _mm512_reduce_add_ps(a3);
        }
    }
    for (; n < last; n++)
        for (int64_t m = 0; m < M; m++) {
            __m512 a = _mm512_setzero_ps();
            for (int64_t k = 0; k < K; k += 32)
                a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(x + m * K + k),
                                     (__m512bh)_mm512_loadu_si512(w + n * K + k));
            y[m * N + n] = _mm512_reduce_add_ps(a);
        }
}
#endif

/* y [M, N] float32 = x [M, K] @ w [N, K]^T for the weight rows [first, last) (M at most MAX_ROWS; x and w
 * contiguous, both in `dtype`). */
int hh_linear(int64_t M, int64_t N, int64_t K, int64_t dtype, const void *x, const void *w, float *y, int64_t first,
              int64_t last) {
    if (M < 1 || M > MAX_ROWS || K < 1 || first < 0 || last > N || (dtype != DTYPE_FLOAT32 && dtype != DTYPE_BFLOAT16))
        return -1;
#ifdef HAVE_BF16_DOT
    if (dtype == DTYPE_BFLOAT16 && K % 32 == 0) {
        linear_bf16_dot(M, N, K, (const uint16_t *)x, (const uint16_t *)w, y, first, last);
        return 0;
    }
#endif
    float *widened = NULL;
    if (dtype == DTYPE_BFLOAT16) {
        widened = malloc(sizeof(float) * (size_t)(M * K));
        if (!widened) return -2;
        as_float(x, dtype, M * K, widened);
    }
    linear_widened(M, N, K, dtype, widened ? widened : (const float *)x, w, y, first, last);
    free(widened);
    return 0;
}

/* Which bfloat16 path hh_linear takes here: 1 the AVX512-BF16 dot product, 0 widening by a shift. */
int hh_linear_bf16_dot(void) {
#ifdef HAVE_BF16_DOT
    return 1;
#else
    return 0;
#endif
}
