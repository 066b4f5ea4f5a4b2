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
 * The math is the reference's (hydrahead.kv.attention.online_softmax_attention) in another order: same result
 * up to float rounding, which tests/unit/test_kv_native.py checks. No -ffast-math: -inf (masked and empty
 * rows) must stay -inf. Plain C, no Python or torch headers: hydrahead.kv.native builds it with the system C
 * compiler on first use and calls it through ctypes.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROWS 8
#define MAX_HALF 128 /* head_dim up to 256 */
#define MAX_GROUPS 64

#if defined(__F16C__)
#include <immintrin.h>
static inline float half_to_float(uint16_t h) { return _cvtsh_ss(h); }
#else
static inline float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu, bits;
    if (exponent == 0x1fu) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else if (exponent) {
        bits = sign | ((exponent + 112u) << 23) | (mantissa << 13);
    } else if (mantissa) { /* subnormal half: normalise */
        int e = -1;
        do { mantissa <<= 1; e++; } while (!(mantissa & 0x400u));
        bits = sign | ((uint32_t)(112 - e) << 23) | ((mantissa & 0x3ffu) << 13);
    } else {
        bits = sign;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
#endif

/* exp(x) for x <= 0 (every argument here is a score minus a running max, or -inf): 2^k * p(r) with
 * x = k ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial (relative error ~2e-7). Written as plain arithmetic so the
 * loops that call it vectorize; below -87.3 (and for -inf) it returns 0, as float32 exp underflows there. */
static inline float exp_nonpositive(float x) {
    const float log2e = 1.44269504088896341f, ln2_hi = 0.693359375f, ln2_lo = -2.12194440e-4f;
    float clamped = x < -87.3f ? -87.3f : x;
    float k = floorf(clamped * log2e + 0.5f);
    float r = clamped - k * ln2_hi - k * ln2_lo;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    int32_t bits = ((int32_t)k + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return x < -87.3f ? 0.0f : p * scale;
}

static inline void unpack(const uint8_t *restrict codes, int half, float *restrict even, float *restrict odd) {
    for (int i = 0; i < half; i++) {
        even[i] = (float)(codes[i] & 15);
        odd[i] = (float)(codes[i] >> 4);
    }
}

/* Scores of R query rows against T int4 keys (scale and zero per channel per group of kg tokens) of one head:
 * per group, the scaled query and its dot with the zeros, then one pass over each token's codes. */
static void int4_scores(int64_t R, int64_t D, int64_t T, int64_t kg, const float *q, const uint8_t *codes,
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
static void codebook_scores(int64_t R, int64_t D, int64_t T, const float *q, const uint8_t *codes,
                            const float *codebook, const float *norms, float *scores) {
    const int64_t half = D / 2;
    float q_even[MAX_ROWS][MAX_HALF], q_odd[MAX_ROWS][MAX_HALF], even[MAX_HALF], odd[MAX_HALF], table[16];
    for (int k = 0; k < 16; k++) table[k] = codebook[k];
    for (int64_t r = 0; r < R; r++)
        for (int64_t i = 0; i < half; i++) {
            q_even[r][i] = q[r * D + 2 * i];
            q_odd[r][i] = q[r * D + 2 * i + 1];
        }
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

/* The online softmax's step for one head's scores [R, T] (bias added): new running max m, p = exp(s - max) in
 * place of the scores, l updated; alpha[r] = exp(old max - new max) rescales what was summed before. */
static void online_softmax(int64_t R, int64_t T, float *scores, float *m, float *l, float *alpha) {
    for (int64_t r = 0; r < R; r++) {
        float *s = scores + r * T;
        float top = -INFINITY;
        for (int64_t t = 0; t < T; t++) top = s[t] > top ? s[t] : top;
        float m_old = m[r], m_new = m_old > top ? m_old : top;
        float m_safe = isinf(m_new) ? 0.0f : m_new; /* a row with no visible key yet stays empty */
        float sum = 0.0f;
        alpha[r] = exp_nonpositive(m_old - m_safe);
        for (int64_t t = 0; t < T; t++) {
            s[t] = exp_nonpositive(s[t] - m_safe);
            sum += s[t];
        }
        m[r] = m_new;
        l[r] = l[r] * alpha[r] + sum;
    }
}

/* acc [R, D] = alpha * acc + sum_t p[r, t] v_t for T int4 values (scale and zero per token per group of vg
 * channels): sum_t p_t (z + s c) = sum_t p_t z (per channel group) + sum_t (p_t s) c, even and odd channels
 * apart. */
static void add_int4_values(int64_t R, int64_t D, int64_t T, int64_t vg, const float *weights, const uint8_t *codes,
                            const uint16_t *scales, const uint16_t *zeros, const float *alpha, float *acc) {
    const int64_t half = D / 2, vgroups = D / vg, group_half = vg / 2;
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
static void attend_int4_values(int64_t R, int64_t D, int64_t T, int64_t vg, float *scores, const float *bias,
                               const uint8_t *codes, const uint16_t *scales, const uint16_t *zeros, float *m, float *l,
                               float *acc) {
    if (bias)
        for (int64_t i = 0; i < R * T; i++) scores[i] += bias[i];
    float alpha[MAX_ROWS];
    online_softmax(R, T, scores, m, l, alpha);
    add_int4_values(R, D, T, vg, scores, codes, scales, zeros, alpha, acc);
}

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
        int4_scores(R, D, T, kg, q + bh * R * D, kc + b * strides[0] + h * strides[1],
                    ks + b * strides[2] + h * strides[3], kz + b * strides[4] + h * strides[5], scores);
        attend_int4_values(R, D, T, vg, scores, bias ? bias + bh * R * T : NULL, vc + b * strides[6] + h * strides[7],
                           vs + b * strides[8] + h * strides[9], vz + b * strides[10] + h * strides[11], m + bh * R,
                           l + bh * R, acc + bh * R * D);
    }
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
        codebook_scores(R, D, T, q + bh * R * D, kc + b * strides[0] + h * strides[1], codebook,
                        norms + b * strides[2] + h * strides[3], scores);
        attend_int4_values(R, D, T, vg, scores, bias ? bias + bh * R * T : NULL, vc + b * strides[4] + h * strides[5],
                           vs + b * strides[6] + h * strides[7], vz + b * strides[8] + h * strides[9], m + bh * R,
                           l + bh * R, acc + bh * R * D);
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
        int4_scores(R, D, T, kg, q + bh * R * D, kc + b * strides[0] + h * strides[1],
                    ks + b * strides[2] + h * strides[3], kz + b * strides[4] + h * strides[5], out + bh * R * T);
    }
    return 0;
}

int hh_codebook_scores(int64_t B, int64_t H, int64_t R, int64_t D, int64_t T, const float *q, const uint8_t *kc,
                       const float *codebook, const float *norms, const int64_t *strides, float *out, int64_t first,
                       int64_t last) {
    if (bad_shape(R, D, T, 1, 2) || first < 0 || last > B * H) return -1;
    for (int64_t bh = first; bh < last; bh++) {
        const int64_t b = bh / H, h = bh % H;
        codebook_scores(R, D, T, q + bh * R * D, kc + b * strides[0] + h * strides[1], codebook,
                        norms + b * strides[2] + h * strides[3], out + bh * R * T);
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
        add_int4_values(R, D, T, vg, p + bh * R * T, vc + b * strides[0] + h * strides[1],
                        vs + b * strides[2] + h * strides[3], vz + b * strides[4] + h * strides[5], zeros, o);
    }
    return 0;
}
