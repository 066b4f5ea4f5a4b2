/* One chunk of decode attention over int4 values (scale and zero per token per group of `vg` channels) and int4
 * keys (scale and zero per channel per group of `kg` tokens) or tq4 keys (a 16-entry codebook per channel, times
 * the token's norm, scored against the rotated query), read packed: two codes per byte, channel 2i in the low
 * nibble and 2i+1 in the high one. Updates the online softmax's running max m, sum l and output acc in place.
 * The scoring and value halves are also exported alone (hh_int4_scores, hh_codebook_scores, hh_int4_values).
 *
 * Why it is fast without dequantizing: a key is z + s * c per channel, so q.k = q.z + (q * s).c. Per group of
 * kg tokens the query rows are multiplied by the group's scales once (qs) and dotted with its zeros once (qz);
 * each token then costs one pass over its codes, turned to floats once and shared by the R query rows. Values
 * are the same with the roles swapped: sum_t p_t (z + s c) = sum_t p_t z (one number per channel group) +
 * sum_t (p_t s) c, four tokens at a time. Even and odd channels are kept apart (the nibble order), so every
 * inner loop is contiguous and the compiler vectorizes it.
 *
 * With AVX-512 (the common case on x86 servers) the codes become floats sixteen at a time through a 16-entry table
 * held in one register (0..15 for int4, the codebook for tq4), the R rows' products stay in registers across a
 * token, and sixteen tokens' scores are summed across lanes at once; the common shapes are compiled with constant
 * sizes (SPECIALIZED). hh_grouped_chunk reads the FP4 formats (mxfp4, nvfp4) the same way: E2M1 codes through the
 * table, times the scale of each token's channel group (a UE8M0 or E4M3 byte, decoded here).
 *
 * The math is the reference's (hydrahead.kv.attention.online_softmax_attention) in another order: same result
 * up to float rounding, which tests/unit/test_kv_native.py checks. No -ffast-math: -inf (masked and empty
 * rows) must stay -inf. Plain C, no Python or torch headers: hydrahead.kv.native builds it with the system C
 * compiler on first use and calls it through ctypes.
 */
#include "common.h"

#define MAX_HALF 128 /* head_dim up to 256 */
#define MAX_GROUPS 64

static inline void unpack(const uint8_t *restrict codes, int half, float *restrict even, float *restrict odd) {
    for (int i = 0; i < half; i++) {
        even[i] = (float)(codes[i] & 15);
        odd[i] = (float)(codes[i] >> 4);
    }
}

/* The FP4 formats (mxfp4, nvfp4): E2M1 codes (a 16-entry table of signed values, from Python) with a scale per token
 * per group of G channels: a UE8M0 byte (2^(b - 127), MX) or an E4M3 byte times the block's float32 tensor scale
 * (NV). Keys and values are read alike: value = table[code] * scale. */
#define SCALE_UE8M0 1
#define SCALE_E4M3 2
#define MAX_SCALE_GROUPS 16

static inline float ue8m0_to_float(uint8_t b) {
    if (b == 255) return NAN;
    if (b == 0) return 0x1p-127f; /* the one power of two below float32's normal range */
    const uint32_t bits = (uint32_t)b << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Token t's `groups` scales as floats (times its tensor scale where there is one). */
static inline void token_scales(const uint8_t *scales, int64_t kind, int64_t t, int64_t groups,
                                const float *tensor_scale, float *out) {
    const float extra = tensor_scale ? tensor_scale[t] : 1.0f;
    for (int64_t g = 0; g < groups; g++) {
        const uint8_t b = scales[t * groups + g];
        out[g] = (kind == SCALE_UE8M0 ? ue8m0_to_float(b) : e4m3_to_float(b)) * extra;
    }
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#include <immintrin.h>
/* With AVX-512 the codes become floats sixteen at a time through a 16-entry table in one register (_mm512_permutexvar:
 * 0..15 for int4, the codebook for tq4, so tq4 costs what int4 does), and the products stay in registers across a
 * token; without it (or for a head_dim not a multiple of 32) the plain loops below, which the compiler vectorizes,
 * serve. */
#define HAVE_AVX512 1
#define MAX_PIECES (MAX_HALF / 16)
#define PREFETCH_TOKENS 8 /* as in dense_decode.c */

/* The 32 codes in 16 bytes as floats through `table`: even channels (low nibbles) and odd ones (high nibbles). */
static inline void table16(const uint8_t *codes, __m512 table, __m512 *even, __m512 *odd) {
    const __m128i bytes = _mm_loadu_si128((const __m128i *)codes), mask = _mm_set1_epi8(15);
    *even = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(bytes, mask)), table);
    *odd = _mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)), table);
}

/* The sums of 16 vectors' lanes, in one vector (out[k] = sum of v[k]'s lanes): halves, quarters, pairs, then
 * single lanes of two vectors added side by side (46 instructions where 16 separate sums take about twice that). */
static inline __m512 sum_lanes16(const __m512 *v) {
    __m512 w[8], x[4], y[2];
    for (int k = 0; k < 8; k++) /* 512 -> 256 bits: lanes 0-7 from v[2k], 8-15 from v[2k+1] */
        w[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0x44),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], 0xEE));
    for (int k = 0; k < 4; k++) /* -> 128 bits: quarter q holds v[4k + q] */
        x[k] = _mm512_add_ps(_mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(w[2 * k], w[2 * k + 1], 0xDD));
    for (int k = 0; k < 2; k++) { /* -> 64 bits: quarter j holds v[8k + j], then v[8k + 4 + j] */
        const __m512d a = _mm512_castps_pd(x[2 * k]), b = _mm512_castps_pd(x[2 * k + 1]);
        y[k] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    /* -> 32 bits: lane 4j + m holds v[j + 4m]; put back in order */
    const __m512 z = _mm512_add_ps(_mm512_shuffle_ps(y[0], y[1], 0x88), _mm512_shuffle_ps(y[0], y[1], 0xDD));
    const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    return _mm512_permutexvar_ps(order, z);
}

/* The lanes' groups: for piece j (channels 32j..32j+31, even ones in one vector, odd ones in the other), the group
 * of each lane's channel. */
static inline void lane_groups(int64_t pieces, int64_t group, __m512i *even, __m512i *odd) {
    for (int64_t j = 0; j < pieces; j++) {
        int32_t ge[16], go[16];
        for (int l = 0; l < 16; l++) {
            ge[l] = (int32_t)((32 * j + 2 * l) / group);
            go[l] = (int32_t)((32 * j + 2 * l + 1) / group);
        }
        even[j] = _mm512_loadu_si512(ge);
        odd[j] = _mm512_loadu_si512(go);
    }
}

/* Rows [R, D] (each times factor[r], or 1 where factor is NULL) split into even and odd channels, sixteen to a
 * register: the layout the table lookups produce. */
static inline void split_rows(int64_t R, int64_t D, const float *rows, const float *factor,
                              __m512 even[MAX_ROWS][MAX_PIECES], __m512 odd[MAX_ROWS][MAX_PIECES]) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < D / 32; j++) {
            float e[16], o[16];
            const float f = factor ? factor[r] : 1.0f;
            for (int l = 0; l < 16; l++) {
                e[l] = rows[r * D + 32 * j + 2 * l] * f;
                o[l] = rows[r * D + 32 * j + 2 * l + 1] * f;
            }
            even[r][j] = _mm512_loadu_ps(e);
            odd[r][j] = _mm512_loadu_ps(o);
        }
}

/* split_rows' inverse: rows [R, D] from their even and odd registers. */
static inline void join_rows(int64_t R, int64_t D, __m512 even[MAX_ROWS][MAX_PIECES], __m512 odd[MAX_ROWS][MAX_PIECES],
                             float *rows) {
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < D / 32; j++) {
            float e[16], o[16];
            _mm512_storeu_ps(e, even[r][j]);
            _mm512_storeu_ps(o, odd[r][j]);
            for (int l = 0; l < 16; l++) {
                rows[r * D + 32 * j + 2 * l] = e[l];
                rows[r * D + 32 * j + 2 * l + 1] = o[l];
            }
        }
}

/* dots[r, t] = q_even[r] . even_t + q_odd[r] . odd_t for the tokens [t0, t1) (codes at `codes`, half bytes each),
 * the query rows already split into even and odd channels (and scaled, for int4 keys): each token's products
 * summed in registers, then sixteen tokens' sums at once (sum_lanes16). */
static inline __attribute__((always_inline)) void table_dots(int64_t R, int64_t half, int64_t t0, int64_t t1,
                                                            int64_t T, const float *q_even, const float *q_odd,
                                                            const uint8_t *codes, __m512 table, float *dots) {
    const int64_t pieces = half / 16;
    __m512 qe[MAX_ROWS][MAX_PIECES], qo[MAX_ROWS][MAX_PIECES], partial[MAX_ROWS][16];
    for (int64_t r = 0; r < R; r++)
        for (int64_t j = 0; j < pieces; j++) {
            qe[r][j] = _mm512_loadu_ps(q_even + r * MAX_HALF + 16 * j);
            qo[r][j] = _mm512_loadu_ps(q_odd + r * MAX_HALF + 16 * j);
        }
    for (int64_t t = t0; t < t1; t++) {
        __builtin_prefetch(codes + (t + PREFETCH_TOKENS) * half);
        __m512 sum[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) sum[r] = _mm512_setzero_ps();
        for (int64_t j = 0; j < pieces; j++) {
            __m512 even, odd;
            table16(codes + t * half + 16 * j, table, &even, &odd);
            for (int64_t r = 0; r < R; r++)
                sum[r] = _mm512_fmadd_ps(qo[r][j], odd, _mm512_fmadd_ps(qe[r][j], even, sum[r]));
        }
        const int64_t k = (t - t0) % 16;
        for (int64_t r = 0; r < R; r++) partial[r][k] = sum[r];
        if (k == 15) /* sixteen tokens done */
            for (int64_t r = 0; r < R; r++) _mm512_storeu_ps(dots + r * T + t - 15, sum_lanes16(partial[r]));
    }
    const int64_t done = t0 + (t1 - t0) / 16 * 16; /* the last tokens, fewer than sixteen, one by one */
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = done; t < t1; t++) dots[r * T + t] = _mm512_reduce_add_ps(partial[r][t - done]);
}

/* add_int4_values with AVX-512: each token's codes become values (z + s c, the scale and zero of each channel's
 * group spread over the lanes by a permute), added into R accumulators kept in registers. */
static inline __attribute__((always_inline)) void add_int4_values_avx512(
        int64_t R, int64_t D, int64_t T, int64_t vg, const float *weights, const uint8_t *codes,
        const uint16_t *scales, const uint16_t *zeros, const float *alpha, float *acc) {
    const int64_t half = D / 2, pieces = half / 16, vgroups = D / vg;
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __mmask16 group_mask = (__mmask16)((1u << vgroups) - 1);
    __m512i group_even[MAX_PIECES], group_odd[MAX_PIECES]; /* the group of each lane's channel */
    lane_groups(pieces, vg, group_even, group_odd);
    __m512 ae[MAX_ROWS][MAX_PIECES], ao[MAX_ROWS][MAX_PIECES];
    split_rows(R, D, acc, alpha, ae, ao);
    for (int64_t t = 0; t < T; t++) {
        __builtin_prefetch(codes + (t + PREFETCH_TOKENS) * half);
        const __m512 s = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(group_mask, scales + t * vgroups));
        const __m512 z = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(group_mask, zeros + t * vgroups));
        __m512 w[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) w[r] = _mm512_set1_ps(weights[r * T + t]);
        for (int64_t j = 0; j < pieces; j++) {
            __m512 even, odd;
            table16(codes + t * half + 16 * j, table, &even, &odd);
            even = _mm512_fmadd_ps(even, _mm512_permutexvar_ps(group_even[j], s),
                                   _mm512_permutexvar_ps(group_even[j], z));
            odd = _mm512_fmadd_ps(odd, _mm512_permutexvar_ps(group_odd[j], s), _mm512_permutexvar_ps(group_odd[j], z));
            for (int64_t r = 0; r < R; r++) {
                ae[r][j] = _mm512_fmadd_ps(w[r], even, ae[r][j]);
                ao[r][j] = _mm512_fmadd_ps(w[r], odd, ao[r][j]);
            }
        }
    }
    join_rows(R, D, ae, ao, acc);
}

/* Token t's FP4 codes in piece j as values: table[code] times the scale of each lane's group (`s`, the token's
 * scales; `ge` / `go` the lanes' groups). */
static inline void scaled_codes16(const uint8_t *codes, __m512 table, __m512 s, __m512i ge, __m512i go, __m512 *even,
                                  __m512 *odd) {
    table16(codes, table, even, odd);
    *even = _mm512_mul_ps(*even, _mm512_permutexvar_ps(ge, s));
    *odd = _mm512_mul_ps(*odd, _mm512_permutexvar_ps(go, s));
}

/* Token t's scales in one register (lanes past its groups zero). */
static inline __m512 token_scale_vector(const uint8_t *scales, int64_t kind, int64_t t, int64_t groups,
                                        const float *tensor_scale) {
    float sc[MAX_SCALE_GROUPS] = {0};
    token_scales(scales, kind, t, groups, tensor_scale, sc);
    return _mm512_loadu_ps(sc);
}

/* dots [R, T] = q . (table[code] * scale) for FP4 keys, each token's codes scaled in registers once for the R rows,
 * sixteen tokens' sums reduced at once. */
static inline __attribute__((always_inline)) void grouped_dots_avx512(
        int64_t R, int64_t D, int64_t T, int64_t group, int64_t kind, const float *q, const uint8_t *codes,
        const uint8_t *scales, const float *tensor_scale, __m512 table, float *dots) {
    const int64_t half = D / 2, pieces = half / 16, groups = D / group;
    __m512i ge[MAX_PIECES], go[MAX_PIECES];
    lane_groups(pieces, group, ge, go);
    __m512 qe[MAX_ROWS][MAX_PIECES], qo[MAX_ROWS][MAX_PIECES], partial[MAX_ROWS][16];
    split_rows(R, D, q, NULL, qe, qo);
    for (int64_t t = 0; t < T; t++) {
        __builtin_prefetch(codes + (t + PREFETCH_TOKENS) * half);
        const __m512 s = token_scale_vector(scales, kind, t, groups, tensor_scale);
        __m512 sum[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) sum[r] = _mm512_setzero_ps();
        for (int64_t j = 0; j < pieces; j++) {
            __m512 even, odd;
            scaled_codes16(codes + t * half + 16 * j, table, s, ge[j], go[j], &even, &odd);
            for (int64_t r = 0; r < R; r++)
                sum[r] = _mm512_fmadd_ps(qo[r][j], odd, _mm512_fmadd_ps(qe[r][j], even, sum[r]));
        }
        const int64_t k = t % 16;
        for (int64_t r = 0; r < R; r++) partial[r][k] = sum[r];
        if (k == 15)
            for (int64_t r = 0; r < R; r++) _mm512_storeu_ps(dots + r * T + t - 15, sum_lanes16(partial[r]));
    }
    const int64_t done = T / 16 * 16;
    for (int64_t r = 0; r < R; r++)
        for (int64_t t = done; t < T; t++) dots[r * T + t] = _mm512_reduce_add_ps(partial[r][t - done]);
}

/* acc [R, D] = alpha * acc + sum_t p[r, t] (table[code_t] * scale_t) for FP4 values. */
static inline __attribute__((always_inline)) void add_grouped_values_avx512(
        int64_t R, int64_t D, int64_t T, int64_t group, int64_t kind, const float *weights, const uint8_t *codes,
        const uint8_t *scales, const float *tensor_scale, __m512 table, const float *alpha, float *acc) {
    const int64_t half = D / 2, pieces = half / 16, groups = D / group;
    __m512i ge[MAX_PIECES], go[MAX_PIECES];
    lane_groups(pieces, group, ge, go);
    __m512 ae[MAX_ROWS][MAX_PIECES], ao[MAX_ROWS][MAX_PIECES];
    split_rows(R, D, acc, alpha, ae, ao);
    for (int64_t t = 0; t < T; t++) {
        __builtin_prefetch(codes + (t + PREFETCH_TOKENS) * half);
        const __m512 s = token_scale_vector(scales, kind, t, groups, tensor_scale);
        __m512 w[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) w[r] = _mm512_set1_ps(weights[r * T + t]);
        for (int64_t j = 0; j < pieces; j++) {
            __m512 even, odd;
            scaled_codes16(codes + t * half + 16 * j, table, s, ge[j], go[j], &even, &odd);
            for (int64_t r = 0; r < R; r++) {
                ae[r][j] = _mm512_fmadd_ps(w[r], even, ae[r][j]);
                ao[r][j] = _mm512_fmadd_ps(w[r], odd, ao[r][j]);
            }
        }
    }
    join_rows(R, D, ae, ao, acc);
}
#endif

/* Scores of R query rows against T int4 keys (scale and zero per channel per group of kg tokens) of one head:
 * per group, the scaled query and its dot with the zeros, then one pass over each token's codes. */
static inline __attribute__((always_inline)) void int4_scores(int64_t R, int64_t D, int64_t T, int64_t kg,
                                                             const float *q, const uint8_t *codes,
                        const uint16_t *scales, const uint16_t *zeros, float *scores) {
    const int64_t half = D / 2;
    float q_even[MAX_ROWS][MAX_HALF], q_odd[MAX_ROWS][MAX_HALF], even[MAX_HALF], odd[MAX_HALF];
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < half; i++) {
            q_even[r][i] = q[r * D + 2 * i];
            q_odd[r][i] = q[r * D + 2 * i + 1];
        }
    for (int64_t g = 0; g < T / kg; g++) {
        float scale_even[MAX_HALF], scale_odd[MAX_HALF], zero[2 * MAX_HALF];
        for (int64_t i = 0; i < half; i++) {
            scale_even[i] = half_to_float(scales[g * D + 2 * i]);
            scale_odd[i] = half_to_float(scales[g * D + 2 * i + 1]);
        }
        for (int64_t d = 0; d < D; d++) zero[d] = half_to_float(zeros[g * D + d]);
        float qs_even[MAX_ROWS][MAX_HALF], qs_odd[MAX_ROWS][MAX_HALF], qz[MAX_ROWS];
        for (int64_t r = 0; r < R; r++) {
            float dot = 0.0f;
            for (int64_t i = 0; i < half; i++) {
                qs_even[r][i] = q_even[r][i] * scale_even[i];
                qs_odd[r][i] = q_odd[r][i] * scale_odd[i];
                dot += q_even[r][i] * zero[2 * i] + q_odd[r][i] * zero[2 * i + 1];
            }
            qz[r] = dot;
        }
#ifdef HAVE_AVX512
        if (half % 16 == 0) {
            const __m512 levels = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            table_dots(R, half, g * kg, (g + 1) * kg, T, &qs_even[0][0], &qs_odd[0][0], codes, levels, scores);
            for (int64_t r = 0; r < R; r++)
                for (int64_t t = g * kg; t < (g + 1) * kg; t++) scores[r * T + t] += qz[r];
            continue;
        }
#endif
        for (int64_t t = g * kg; t < (g + 1) * kg; t++) {
            unpack(codes + t * half, (int)half, even, odd);
            for (int64_t r = 0; r < R; r++) {
                float dot = 0.0f;
                for (int64_t i = 0; i < half; i++) dot += qs_even[r][i] * even[i] + qs_odd[r][i] * odd[i];
                scores[r * T + t] = qz[r] + dot;
            }
        }
    }
}

/* Scores against T codebook keys (tq4: a 16-entry codebook value per channel, times the token's norm), the query
 * already in the codebook's rotated space. */
static inline __attribute__((always_inline)) void codebook_scores(int64_t R, int64_t D, int64_t T, const float *q,
                                                                 const uint8_t *codes,
                            const float *codebook, const float *norms, float *scores) {
    const int64_t half = D / 2;
    float q_even[MAX_ROWS][MAX_HALF], q_odd[MAX_ROWS][MAX_HALF], even[MAX_HALF], odd[MAX_HALF], table[16];
    for (int k = 0; k < 16; k++) table[k] = codebook[k];
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < half; i++) {
            q_even[r][i] = q[r * D + 2 * i];
            q_odd[r][i] = q[r * D + 2 * i + 1];
        }
#ifdef HAVE_AVX512
    if (half % 16 == 0) {
        table_dots(R, half, 0, T, T, &q_even[0][0], &q_odd[0][0], codes, _mm512_loadu_ps(table), scores);
        for (int64_t r = 0; r < R; r++)
            for (int64_t t = 0; t < T; t++) scores[r * T + t] *= norms[t];
        return;
    }
#endif
    for (int64_t t = 0; t < T; t++) {
        const uint8_t *c = codes + t * half;
        for (int64_t i = 0; i < half; i++) {
            even[i] = table[c[i] & 15];
            odd[i] = table[c[i] >> 4];
        }
        for (int64_t r = 0; r < R; r++) {
            float dot = 0.0f;
            for (int64_t i = 0; i < half; i++) dot += q_even[r][i] * even[i] + q_odd[r][i] * odd[i];
            scores[r * T + t] = dot * norms[t];
        }
    }
}

/* acc [R, D] = alpha * acc + sum_t p[r, t] v_t for T int4 values (scale and zero per token per group of vg
 * channels): sum_t p_t (z + s c) = sum_t p_t z (per channel group) + sum_t (p_t s) c, even and odd channels
 * apart. */
static inline __attribute__((always_inline)) void add_int4_values(int64_t R, int64_t D, int64_t T, int64_t vg,
                                                                 const float *weights, const uint8_t *codes,
                            const uint16_t *scales, const uint16_t *zeros, const float *alpha, float *acc) {
    const int64_t half = D / 2, vgroups = D / vg, group_half = vg / 2;
#ifdef HAVE_AVX512
    if (half % 16 == 0 && vgroups <= 16) {
        add_int4_values_avx512(R, D, T, vg, weights, codes, scales, zeros, alpha, acc);
        return;
    }
#endif
    float acc_even[MAX_ROWS][MAX_HALF], acc_odd[MAX_ROWS][MAX_HALF], zero_sum[MAX_ROWS][MAX_GROUPS];
    float even[MAX_HALF], odd[MAX_HALF];
    for (int64_t r = 0; r < R; r++) {
        for (int64_t i = 0; i < half; i++) {
            acc_even[r][i] = acc[r * D + 2 * i] * alpha[r];
            acc_odd[r][i] = acc[r * D + 2 * i + 1] * alpha[r];
        }
        for (int64_t g = 0; g < vgroups; g++) zero_sum[r][g] = 0.0f;
    }
    int64_t t = 0;
    /* four tokens at a time: each partial sum is loaded and stored once per four tokens, not once per token */
    for (; t + 4 <= T; t += 4) {
        float even4[4][MAX_HALF], odd4[4][MAX_HALF];
        for (int k = 0; k < 4; k++) unpack(codes + (t + k) * half, (int)half, even4[k], odd4[k]);
        for (int64_t g = 0; g < vgroups; g++) {
            float scale[4], zero[4];
            for (int k = 0; k < 4; k++) {
                scale[k] = half_to_float(scales[(t + k) * vgroups + g]);
                zero[k] = half_to_float(zeros[(t + k) * vgroups + g]);
            }
            for (int64_t r = 0; r < R; r++) {
                const float *p = weights + r * T + t;
                const float w0 = p[0] * scale[0], w1 = p[1] * scale[1], w2 = p[2] * scale[2], w3 = p[3] * scale[3];
                zero_sum[r][g] += p[0] * zero[0] + p[1] * zero[1] + p[2] * zero[2] + p[3] * zero[3];
                float *restrict ae = acc_even[r] + g * group_half, *restrict ao = acc_odd[r] + g * group_half;
                const int64_t o = g * group_half;
                for (int64_t j = 0; j < group_half; j++) {
                    ae[j] += w0 * even4[0][o + j] + w1 * even4[1][o + j] + w2 * even4[2][o + j] + w3 * even4[3][o + j];
                    ao[j] += w0 * odd4[0][o + j] + w1 * odd4[1][o + j] + w2 * odd4[2][o + j] + w3 * odd4[3][o + j];
                }
            }
        }
    }
    for (; t < T; t++) {
        unpack(codes + t * half, (int)half, even, odd);
        for (int64_t g = 0; g < vgroups; g++) {
            const float scale = half_to_float(scales[t * vgroups + g]), zero = half_to_float(zeros[t * vgroups + g]);
            for (int64_t r = 0; r < R; r++) {
                const float p = weights[r * T + t], w = p * scale;
                zero_sum[r][g] += p * zero;
                float *restrict ae = acc_even[r] + g * group_half, *restrict ao = acc_odd[r] + g * group_half;
                const float *ce = even + g * group_half, *co = odd + g * group_half;
                for (int64_t j = 0; j < group_half; j++) {
                    ae[j] += w * ce[j];
                    ao[j] += w * co[j];
                }
            }
        }
    }
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < half; i++) {
            acc[r * D + 2 * i] = acc_even[r][i] + zero_sum[r][(2 * i) / vg];
            acc[r * D + 2 * i + 1] = acc_odd[r][i] + zero_sum[r][(2 * i + 1) / vg];
        }
}

/* One head's scores [R, T] -> the chunk's attention step: bias added (or NULL), the online softmax's update of m
 * and l, and acc rescaled and added p.v of the int4 values. */
static inline __attribute__((always_inline)) void attend_int4_values(int64_t R, int64_t D, int64_t T, int64_t vg,
                                                                    float *scores, const float *bias,
                               const uint8_t *codes, const uint16_t *scales, const uint16_t *zeros, float *m, float *l,
                               float *acc) {
    if (bias)
        for (int64_t i = 0; i < R * T; i++) scores[i] += bias[i];
    float alpha[MAX_ROWS];
    online_softmax(R, T, scores, m, l, alpha);
    add_int4_values(R, D, T, vg, scores, codes, scales, zeros, alpha, acc);
}

/* Runs the statement(s) with R_ and D_ set to R and D as compile-time constants for the common shapes (Qwen3's
 * head_dim 128 with 2 or 4 query rows per KV head, head_dim 64), so that the inlined loops above are unrolled and
 * their accumulators kept in registers, and as plain variables for any other shape. */
#define SPECIALIZED(R, D, ...)                                                                                       \
    do {                                                                                                             \
        if ((D) == 128 && (R) == 2) { const int64_t R_ = 2, D_ = 128; __VA_ARGS__; }                                 \
        else if ((D) == 128 && (R) == 4) { const int64_t R_ = 4, D_ = 128; __VA_ARGS__; }                            \
        else if ((D) == 128) { const int64_t R_ = (R), D_ = 128; __VA_ARGS__; }                                      \
        else if ((D) == 64) { const int64_t R_ = (R), D_ = 64; __VA_ARGS__; }                                        \
        else { const int64_t R_ = (R), D_ = (D); __VA_ARGS__; }                                                      \
    } while (0)

static int bad_shape(int64_t R, int64_t D, int64_t T, int64_t kg, int64_t vg) {
    return R < 1 || R > MAX_ROWS || D < 2 || D % 2 || D / 2 > MAX_HALF || kg < 1 || T % kg || vg < 2 || vg % 2 ||
           D % vg || D / vg > MAX_GROUPS;
}

/* Strides are in elements. Shapes: q [B, H, R, D] contiguous; codes of keys and values [B, H, T, D/2] with token
 * stride D/2; int4 keys' scale and zero [B, H, T/kg, D] with group stride D (hh_int4_chunk), or tq4 keys' norms
 * [B, H, T] float32 with the 16-entry codebook (hh_codebook_int4_chunk); values' scale and zero [B, H, T, D/vg]
 * with token stride D/vg; bias [B, H, R, T] contiguous or NULL; m and l [B, H, R], acc [B, H, R, D], contiguous,
 * updated in place. `strides` holds the (b, h) strides of each key tensor, then of each value tensor. Only the
 * heads b * H + h in [first, last) are computed, so that callers can split a call over threads. Returns 0, or a
 * negative number for shapes it does not take. */
int hh_int4_chunk(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t kg, int64_t vg, const float *q,
                  const uint8_t *kc, const uint16_t *ks, const uint16_t *kz, const uint8_t *vc, const uint16_t *vs,
                  const uint16_t *vz, const int64_t *strides, const float *bias, float *m, float *l, float *acc,
                  int64_t first, int64_t last) {
    if (bad_shape(R, D, T, kg, vg) || first < 0 || last > B * H) return -1;
    float *scores = malloc(sizeof(float) * (size_t)(R * T));
    if (!scores) return -2;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        SPECIALIZED(R, D,
            int4_scores(R_, D_, T, kg, q + bh * R * D, kc + b * strides[0] + h * strides[1],
                        ks + b * strides[2] + h * strides[3], kz + b * strides[4] + h * strides[5], scores);
            attend_int4_values(R_, D_, T, vg, scores, bias ? bias + bh * R * T : NULL,
                               vc + b * strides[6] + h * strides[7], vs + b * strides[8] + h * strides[9],
                               vz + b * strides[10] + h * strides[11], m + bh * R, l + bh * R, acc + bh * R * D));    }
    free(scores);
    return 0;
}

int hh_codebook_int4_chunk(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t vg, const float *q,
                           const uint8_t *kc, const float *codebook, const float *norms, const uint8_t *vc,
                           const uint16_t *vs, const uint16_t *vz, const int64_t *strides, const float *bias,
                           float *m, float *l, float *acc, int64_t first, int64_t last) {
    if (bad_shape(R, D, T, 1, vg) || first < 0 || last > B * H) return -1;
    float *scores = malloc(sizeof(float) * (size_t)(R * T));
    if (!scores) return -2;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        SPECIALIZED(R, D,
            codebook_scores(R_, D_, T, q + bh * R * D, kc + b * strides[0] + h * strides[1], codebook,
                            norms + b * strides[2] + h * strides[3], scores);
            attend_int4_values(R_, D_, T, vg, scores, bias ? bias + bh * R * T : NULL,
                               vc + b * strides[4] + h * strides[5], vs + b * strides[6] + h * strides[7],
                               vz + b * strides[8] + h * strides[9], m + bh * R, l + bh * R, acc + bh * R * D));
    }
    free(scores);
    return 0;
}

/* The two halves alone, for sparse decoding's retrieval heads, which need every token's score (to rank tokens) as
 * well as the dense output: scores [B, H, R, T] of int4 or tq4 keys, and out [B, H, R, D] = sum_t p[.., t] v_t of
 * int4 values for given weights p [B, H, R, T]. Same layouts and strides as above (strides: the key tensors' or the
 * value tensors' (b, h) pairs). */
int hh_int4_scores(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t kg, const float *q,
                   const uint8_t *kc, const uint16_t *ks, const uint16_t *kz, const int64_t *strides, float *out,
                   int64_t first, int64_t last) {
    if (bad_shape(R, D, T, kg, 2) || first < 0 || last > B * H) return -1;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        SPECIALIZED(R, D,
            int4_scores(R_, D_, T, kg, q + bh * R * D, kc + b * strides[0] + h * strides[1],
                        ks + b * strides[2] + h * strides[3], kz + b * strides[4] + h * strides[5], out + bh * R * T));
    }
    return 0;
}

int hh_codebook_scores(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, const float *q, const uint8_t *kc,
                       const float *codebook, const float *norms, const int64_t *strides, float *out, int64_t first,
                       int64_t last) {
    if (bad_shape(R, D, T, 1, 2) || first < 0 || last > B * H) return -1;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        SPECIALIZED(R, D,
            codebook_scores(R_, D_, T, q + bh * R * D, kc + b * strides[0] + h * strides[1], codebook,
                            norms + b * strides[2] + h * strides[3], out + bh * R * T));
    }
    return 0;
}

int hh_int4_values(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t vg, const float *p,
                   const uint8_t *vc, const uint16_t *vs, const uint16_t *vz, const int64_t *strides, float *out,
                   int64_t first, int64_t last) {
    if (bad_shape(R, D, T, 1, vg) || first < 0 || last > B * H) return -1;
    const float zeros[MAX_ROWS] = {0};
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        float *o = out + bh * R * D; /* written from zero: alpha 0 leaves nothing of what it held */
        for (int64_t i = 0; i < R * D; i++) o[i] = 0.0f;
        SPECIALIZED(R, D,
            add_int4_values(R_, D_, T, vg, p + bh * R * T, vc + b * strides[0] + h * strides[1],
                            vs + b * strides[2] + h * strides[3], vz + b * strides[4] + h * strides[5], zeros, o));
    }
    return 0;
}

/* One token's FP4 codes as floats: row[c] = table[code_c] * scale of c's group. */
static inline void grouped_row(int64_t D, int64_t group, const uint8_t *codes, const float *table, const float *sc,
                               float *row) {
    for (int64_t i = 0; i < D / 2; i++) {
        row[2 * i] = table[codes[i] & 15] * sc[(2 * i) / group];
        row[2 * i + 1] = table[codes[i] >> 4] * sc[(2 * i + 1) / group];
    }
}

/* One chunk of the online softmax over FP4 keys and values (`hh_int4_chunk`'s contract): codes [B, H, T, D/2] with
 * token stride D/2, scale codes [B, H, T, D/group] (uint8: `kind` 1 UE8M0, 2 E4M3) with token stride D/group,
 * tensor scales [B, H, T] float32 contiguous or NULL, for keys then values; `table` the 16 values of the codes;
 * `strides` the (b, h) strides of key codes, key scales, value codes, value scales. */
int hh_grouped_chunk(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, int64_t group, int64_t kind,
                     const float *table, const float *q, const uint8_t *kc, const uint8_t *ks, const float *kts,
                     const uint8_t *vc, const uint8_t *vs, const float *vts, const int64_t *strides, const float *bias,
                     float *m, float *l, float *acc, int64_t first, int64_t last) {
    if (R < 1 || R > MAX_ROWS || D < 2 || D % 2 || D / 2 > MAX_HALF || group < 2 || D % group ||
        D / group > MAX_SCALE_GROUPS || (kind != SCALE_UE8M0 && kind != SCALE_E4M3) || T < 1 || first < 0 ||
        last > B * H)
        return -1;
    float *scores = malloc(sizeof(float) * (size_t)(R * T));
    if (!scores) return -2;
    const int64_t half = D / 2, groups = D / group;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        const uint8_t *kcodes = kc + b * strides[0] + h * strides[1], *kscales = ks + b * strides[2] + h * strides[3];
        const uint8_t *vcodes = vc + b * strides[4] + h * strides[5], *vscales = vs + b * strides[6] + h * strides[7];
        const float *ktensor = kts ? kts + bh * T : NULL, *vtensor = vts ? vts + bh * T : NULL;
        const float *qh = q + bh * R * D;
        float *mh = m + bh * R, *lh = l + bh * R, *acch = acc + bh * R * D, alpha[MAX_ROWS];
#ifdef HAVE_AVX512
        if (half % 16 == 0) {
            const __m512 levels = _mm512_loadu_ps(table);
            SPECIALIZED(R, D, grouped_dots_avx512(R_, D_, T, group, kind, qh, kcodes, kscales, ktensor, levels,
                                                  scores));
            for (int64_t i = 0; i < R * T; i++) scores[i] += bias ? bias[bh * R * T + i] : 0.0f;
            online_softmax(R, T, scores, mh, lh, alpha);
            SPECIALIZED(R, D, add_grouped_values_avx512(R_, D_, T, group, kind, scores, vcodes, vscales, vtensor,
                                                        levels, alpha, acch));
            continue;
        }
#endif
        float row[2 * MAX_HALF], sc[MAX_SCALE_GROUPS];
        for (int64_t t = 0; t < T; t++) {
            token_scales(kscales, kind, t, groups, ktensor, sc);
            grouped_row(D, group, kcodes + t * half, table, sc, row);
            for (int64_t r = 0; r < R; r++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < D; d++) dot += qh[r * D + d] * row[d];
                scores[r * T + t] = dot + (bias ? bias[(bh * R + r) * T + t] : 0.0f);
            }
        }
        online_softmax(R, T, scores, mh, lh, alpha);
        for (int64_t i = 0; i < R * D; i++) acch[i] *= alpha[i / D];
        for (int64_t t = 0; t < T; t++) {
            token_scales(vscales, kind, t, groups, vtensor, sc);
            grouped_row(D, group, vcodes + t * half, table, sc, row);
            for (int64_t r = 0; r < R; r++)
                for (int64_t d = 0; d < D; d++) acch[r * D + d] += scores[r * T + t] * row[d];
        }
    }
    free(scores);
    return 0;
}

#define GATHER_AHEAD 16 /* selected tokens whose rows are prefetched ahead of the one being read */

/* Decode attention at selected tokens only (sparse decoding's sparse heads over a packed cache): head slot s of
 * batch row b reads stored KV head heads[s] at the tokens index[b, s, 0..k) of the packed range, each key and value
 * decoded alone (int4 keys per channel: the scale and zero of the token's group; tq4 keys: codebook values times
 * the token's norm, against a rotated query; int4 values per token) and attended with bias [B, S, R, k] (-inf for
 * a token the head must not see), one online-softmax step from m, l, acc as hh_int4_chunk takes them. q [B, S, R,
 * D] scaled (rotated for tq4 keys). `strides` holds the (b, h) strides of key codes, key scales (tq4: norms), key
 * zeros (tq4: unused), value codes, value scales, value zeros. */
int hh_int4_gathered(int64_t B, int64_t S, int64_t R, int64_t D, int64_t k, int64_t kg, int64_t vg,
                     int64_t codebook_keys, const float *q, const int64_t *heads, const int64_t *index,
                     const float *bias, const uint8_t *kc, const void *ks, const uint16_t *kz, const float *codebook,
                     const uint8_t *vc, const uint16_t *vs, const uint16_t *vz, const int64_t *strides, float *m,
                     float *l, float *acc, int64_t first, int64_t last) {
    if (bad_shape(R, D, kg, kg, vg) || k < 1 || first < 0 || last > B * S) return -1;
    float *scores = malloc(sizeof(float) * (size_t)(R * k));
    if (!scores) return -2;
    const int64_t half = D / 2, vgroups = D / vg;
    float row[2 * MAX_HALF], alpha[MAX_ROWS];
    for (int64_t bs = first; bs < last; bs++) {
        const int64_t b = bs / S, h = heads[bs % S];
        const uint8_t *kcodes = kc + b * strides[0] + h * strides[1], *vcodes = vc + b * strides[6] + h * strides[7];
        const uint16_t *vscale = vs + b * strides[8] + h * strides[9], *vzero = vz + b * strides[10] + h * strides[11];
        const int64_t *tokens = index + bs * k;
        const float *qh = q + bs * R * D;
        float key_scale[2 * MAX_HALF], key_zero[2 * MAX_HALF];
        int64_t group = -1;
        for (int64_t j = 0; j < k; j++) {
            const int64_t t = tokens[j];
            const uint8_t *c = kcodes + t * half;
            if (j + GATHER_AHEAD < k) { /* random rows: ask for later ones early, or each waits on memory */
                const int64_t ahead = tokens[j + GATHER_AHEAD];
                __builtin_prefetch(kcodes + ahead * half);
                __builtin_prefetch(vcodes + ahead * half);
                __builtin_prefetch(vscale + ahead * vgroups);
                __builtin_prefetch(vzero + ahead * vgroups);
                if (codebook_keys) __builtin_prefetch((const float *)ks + b * strides[2] + h * strides[3] + ahead);
            }
            if (codebook_keys) {
                const float norm = ((const float *)ks)[b * strides[2] + h * strides[3] + t];
                for (int64_t i = 0; i < half; i++) {
                    row[2 * i] = codebook[c[i] & 15] * norm;
                    row[2 * i + 1] = codebook[c[i] >> 4] * norm;
                }
            } else {
                if (t / kg != group) { /* the token's group of keys: its channel scales and zeros, as floats */
                    group = t / kg;
                    const uint16_t *scale = (const uint16_t *)ks + b * strides[2] + h * strides[3] + group * D;
                    const uint16_t *zero = kz + b * strides[4] + h * strides[5] + group * D;
                    for (int64_t d = 0; d < D; d++) {
                        key_scale[d] = half_to_float(scale[d]);
                        key_zero[d] = half_to_float(zero[d]);
                    }
                }
                for (int64_t i = 0; i < half; i++) {
                    row[2 * i] = key_zero[2 * i] + key_scale[2 * i] * (float)(c[i] & 15);
                    row[2 * i + 1] = key_zero[2 * i + 1] + key_scale[2 * i + 1] * (float)(c[i] >> 4);
                }
            }
            for (int64_t r = 0; r < R; r++) {
                float dot = 0.0f;
                for (int64_t d = 0; d < D; d++) dot += qh[r * D + d] * row[d];
                scores[r * k + j] = dot + bias[(bs * R + r) * k + j];
            }
        }
        online_softmax(R, k, scores, m + bs * R, l + bs * R, alpha);
        float *a = acc + bs * R * D;
        for (int64_t i = 0; i < R * D; i++) a[i] *= alpha[i / D];
        for (int64_t j = 0; j < k; j++) {
            const int64_t t = tokens[j];
            const uint8_t *c = vcodes + t * half;
            for (int64_t g = 0; g < vgroups; g++) { /* a group is vg channels: vg / 2 bytes */
                const float scale = half_to_float(vscale[t * vgroups + g]);
                const float zero = half_to_float(vzero[t * vgroups + g]);
                for (int64_t i = g * vg / 2; i < (g + 1) * vg / 2; i++) {
                    row[2 * i] = zero + scale * (float)(c[i] & 15);
                    row[2 * i + 1] = zero + scale * (float)(c[i] >> 4);
                }
            }
            for (int64_t r = 0; r < R; r++) {
                const float p = scores[r * k + j];
                for (int64_t d = 0; d < D; d++) a[r * D + d] += p * row[d];
            }
        }
    }
    free(scores);
    return 0;
}
