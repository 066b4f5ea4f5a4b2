/* What the native decode kernels share (int4_decode.c, dense_decode.c): float16 and float8_e4m3fn numbers to float, a
 * vectorizable exp for the softmax, and the online softmax's step over one head's scores. Static inline, so each kernel file has its
 * own copy. */
#ifndef HYDRAHEAD_NATIVE_COMMON_H
#define HYDRAHEAD_NATIVE_COMMON_H
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ROWS 8 /* query rows per KV head (hydrahead.kv.native.MAX_ROWS) */

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

/* The online softmax's step for one head's scores [R, T] (bias added): new running max m, p = exp(s - max) in
 * place of the scores, l updated; alpha[r] = exp(old max - new max) rescales what was summed before. */
static inline void online_softmax(int64_t R, int64_t T, float *scores, float *m, float *l, float *alpha) {
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

/* float8_e4m3fn to float32: its exponent and mantissa bits placed where float32's sit give the value times 2^-120
 * (subnormals included), so one multiply by 2^120 finishes it. 0x7f / 0xff (NaN) read as +-480; the encoder
 * saturates at 448 and never writes them. */
static inline float e4m3_to_float(uint8_t b) {
    const uint32_t bits = ((uint32_t)(b & 0x7f) << 20) | ((uint32_t)(b & 0x80) << 24);
    float f;
    memcpy(&f, &bits, sizeof f);
    return f * 0x1p120f;
}

#endif
