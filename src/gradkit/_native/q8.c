/* Block-wise 8-bit state codec (gradkit.memory.quantization), bit-identical to the torch path:
 * encode: per block, absmax = max |x| (NaN propagates), y = x / (absmax > 0 ? absmax : 1),
 * key = the float bits of y (made order-preserving for signed maps), code from the 17-bit-cell
 * lookup table: code = (table[(key >> 15) & 0x1FFFF] + (key & 0x7FFF)) >> 16.
 * decode: out = values[code] * absmax[block].
 * Only the float build defines them (state is fp32 whatever the parameter dtype). */
#include "gk.h"
#include <string.h>

#ifndef GK_DOUBLE
void gk_q8_encode(int64_t n, const float *x, uint8_t *codes, float *absmax, const int32_t *table,
                  int64_t block, int is_signed, int nthreads) {
    const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * block, hi = lo + block < n ? lo + block : n;
        float m = 0.0f;
        int nan = 0;
        for (int64_t k = lo; k < hi; ++k) {
            const float a = fabsf(x[k]);
            m = a > m ? a : m;
            nan |= a != a;
        }
        if (nan) m = NAN;
        absmax[b] = m;
        const float scale = m > 0.0f ? m : 1.0f;
        for (int64_t k = lo; k < hi; ++k) {
            const float y = x[k] / scale;
            int32_t key;
            memcpy(&key, &y, sizeof key);
            if (is_signed) key ^= (key >> 31) & 0x7FFFFFFF;
            const int32_t entry = table[(key >> 15) & 0x1FFFF];
            codes[k] = (uint8_t)((entry + (key & 0x7FFF)) >> 16);
        }
    }
}

void gk_q8_decode(int64_t n, const uint8_t *codes, const float *absmax, const float *values,
                  float *out, int64_t block, int nthreads) {
    const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * block, hi = lo + block < n ? lo + block : n;
        const float s = absmax[b];
        for (int64_t k = lo; k < hi; ++k) out[k] = values[codes[k]] * s;
    }
}
#endif
