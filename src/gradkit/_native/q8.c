/* Block-wise 8-bit state codec (gradkit.memory.quantization), bit-identical to the torch path:
 * encode: per block, absmax = max |x| (NaN propagates), y = x / (absmax > 0 ? absmax : 1),
 * key = the float bits of y (made order-preserving for signed maps), code from the 17-bit-cell
 * lookup table: code = (table[(key >> 15) & 0x1FFFF] + (key & 0x7FFF)) >> 16.
 * decode: out = values[code] * absmax[block].
 * Only the float build defines them (state is fp32 whatever the parameter dtype). */
#include "gk.h"
#include <stdlib.h>
#include <string.h>

#ifndef GK_DOUBLE
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* One block: absmax (the largest |x| as the largest of the bit patterns with the sign cleared,
 * which orders non-negative floats as their values and puts NaN above inf; an integer max
 * vectorizes where the float compare-and-flag did not), then the codes. */
static inline void gk_q8_encode_block(const float *x, int64_t len, uint8_t *codes, float *absmax,
                                      const int32_t *table, int is_signed) {
    uint32_t top = 0;
    for (int64_t k = 0; k < len; ++k) {
        uint32_t bits;
        memcpy(&bits, &x[k], sizeof bits);
        bits &= 0x7FFFFFFFu;
        top = bits > top ? bits : top;
    }
    float m;
    if (top > 0x7F800000u)
        m = NAN;
    else
        memcpy(&m, &top, sizeof m);
    *absmax = m;
    const float scale = m > 0.0f ? m : 1.0f;
    int64_t k = 0;
#if defined(__AVX512F__)
    /* the scalar loop below, 16 values at a time (the table lookup is a gather) */
    const __m512 vs = _mm512_set1_ps(scale);
    const __m512i low31 = _mm512_set1_epi32(0x7FFFFFFF), low17 = _mm512_set1_epi32(0x1FFFF);
    const __m512i low15 = _mm512_set1_epi32(0x7FFF);
    for (; k + 16 <= len; k += 16) {
        __m512i key = _mm512_castps_si512(_mm512_div_ps(_mm512_loadu_ps(x + k), vs));
        if (is_signed)
            key = _mm512_xor_si512(key, _mm512_and_si512(_mm512_srai_epi32(key, 31), low31));
        const __m512i idx = _mm512_and_si512(_mm512_srai_epi32(key, 15), low17);
        const __m512i entry = _mm512_i32gather_epi32(idx, table, 4);
        const __m512i code =
            _mm512_srai_epi32(_mm512_add_epi32(entry, _mm512_and_si512(key, low15)), 16);
        _mm_storeu_si128((__m128i *)(codes + k), _mm512_cvtepi32_epi8(code));
    }
#endif
    for (; k < len; ++k) {
        const float y = x[k] / scale;
        int32_t key;
        memcpy(&key, &y, sizeof key);
        if (is_signed) key ^= (key >> 31) & 0x7FFFFFFF;
        const int32_t entry = table[(key >> 15) & 0x1FFFF];
        codes[k] = (uint8_t)((entry + (key & 0x7FFF)) >> 16);
    }
}

#if defined(__AVX512F__)
/* values[idx] for 16 codes at once from the 256-entry table held in 16 registers: eight
 * two-register permutes pick by the low 5 bits, three rounds of blends by bits 5, 6, 7. A gather
 * does the same with 16 loads and measured ~2.5 cycles per value here, this ~0.1. */
static inline __m512 gk_lookup256(const __m512 *t, __m512i idx) {
    __m512 l[8];
    for (int j = 0; j < 8; ++j) l[j] = _mm512_permutex2var_ps(t[2 * j], idx, t[2 * j + 1]);
    const __mmask16 b5 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(32));
    const __mmask16 b6 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(64));
    const __mmask16 b7 = _mm512_test_epi32_mask(idx, _mm512_set1_epi32(128));
    for (int j = 0; j < 4; ++j) l[j] = _mm512_mask_blend_ps(b5, l[2 * j], l[2 * j + 1]);
    for (int j = 0; j < 2; ++j) l[j] = _mm512_mask_blend_ps(b6, l[2 * j], l[2 * j + 1]);
    return _mm512_mask_blend_ps(b7, l[0], l[1]);
}
#endif

static inline void gk_q8_decode_block(const uint8_t *codes, int64_t len, float scale,
                                      const float *values, float *out) {
    int64_t k = 0;
#if defined(__AVX512F__)
    if (len >= 16) {
        __m512 t[16];
        for (int j = 0; j < 16; ++j) t[j] = _mm512_loadu_ps(values + 16 * j);
        const __m512 vs = _mm512_set1_ps(scale);
        for (; k + 16 <= len; k += 16) {
            const __m128i c = _mm_loadu_si128((const __m128i *)(codes + k));
            _mm512_storeu_ps(out + k, _mm512_mul_ps(gk_lookup256(t, _mm512_cvtepu8_epi32(c)), vs));
        }
    }
#endif
    for (; k < len; ++k) out[k] = values[codes[k]] * scale;
}

void gk_q8_encode(int64_t n, const float *x, uint8_t *codes, float *absmax, const int32_t *table,
                  int64_t block, int is_signed, int nthreads) {
    const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * block, len = lo + block < n ? block : n - lo;
        gk_q8_encode_block(x + lo, len, codes + lo, absmax + b, table, is_signed);
    }
}

void gk_q8_decode(int64_t n, const uint8_t *codes, const float *absmax, const float *values,
                  float *out, int64_t block, int nthreads) {
    const int64_t blocks = (n + block - 1) / block;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t lo = b * block, len = lo + block < n ? block : n - lo;
        gk_q8_decode_block(codes + lo, len, absmax[b], values, out + lo);
    }
}

/* gk_q8_fused: one native update rule run over block-wise 8-bit state without fp32 copies of it.
 * `fn` is the float32 build of an element-wise kernel (GK_ARGS; no per-tensor reductions, no
 * per-tensor scalar state): every element's update depends on that element alone, so the kernel
 * may run on any slice of a tensor. Each thread takes whole slices of `chunk` values (a multiple
 * of the block size, so no block is split), decodes the slice's 8-bit state into a small
 * thread-local fp32 buffer that stays in cache, runs the kernel on the slice (one thread, nested
 * call), and encodes the buffer back: the decoded state never travels to memory, so the step moves
 * about p 8 + g 4 + 2 x state bytes per value instead of the unfused path's fp32 round trips.
 * The result is bit-identical to decoding whole tensors, running the kernel, encoding them again
 * (the codec is per block, the kernel per element).
 * ptrs: the kernel's [k][n] table, except that a quantized state entry (list j >= 2) points at its
 * uint8 codes and absmax[(j - 2) * n + i] at its fp32 block maxima; absmax NULL there means an
 * fp32 entry (small tensors stay fp32), passed to the kernel as it is. is_signed[j - 2] picks the
 * signed or unsigned code map (tables[s], values[s]). Returns 0, or -1 when scratch memory could
 * not be allocated (nothing was touched then). */
typedef void (*gk_kernel_f32)(int64_t, const int64_t *, const double *, void **, const double *,
                              double *, int);

int gk_q8_fused(void *fn, int64_t n, const int64_t *numel, const double *step, void **ptrs,
                const double *hp, int64_t nlists, void **absmax, const int32_t **tables,
                const float **values, const int *is_signed, int64_t block, int64_t chunk,
                int nthreads) {
    const gk_kernel_f32 kernel = (gk_kernel_f32)fn;
    const int64_t nq = nlists - 2;
    int failed = 0;
#pragma omp parallel num_threads(nthreads)
    {
        float *buf = malloc((size_t)(nq > 0 ? nq : 1) * (size_t)chunk * sizeof(float));
        void **local = malloc((size_t)(nlists > 2 ? nlists : 2) * sizeof(void *));
        if (buf == NULL || local == NULL) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp barrier /* every thread agrees before any of them writes */
        int all_ok;
#pragma omp atomic read
        all_ok = failed;
        all_ok = !all_ok;
        for (int64_t i = 0; all_ok && i < n; ++i) {
            const int64_t N = numel[i], slices = (N + chunk - 1) / chunk;
#pragma omp for schedule(static) nowait
            for (int64_t s = 0; s < slices; ++s) {
                const int64_t lo = s * chunk, len = lo + chunk < N ? chunk : N - lo;
                const int64_t b0 = lo / block;
                local[0] = (float *)ptrs[i] + lo;
                local[1] = (float *)ptrs[n + i] + lo;
                for (int64_t j = 0; j < nq; ++j) {
                    void *st = ptrs[(j + 2) * n + i];
                    const float *mx = absmax[j * n + i];
                    if (mx == NULL) {
                        local[j + 2] = (float *)st + lo;
                        continue;
                    }
                    float *dst = buf + j * chunk;
                    const float *vals = values[is_signed[j] ? 1 : 0];
                    const uint8_t *codes = (const uint8_t *)st + lo;
                    for (int64_t b = 0; b * block < len; ++b) {
                        const int64_t at = b * block, m = at + block < len ? block : len - at;
                        gk_q8_decode_block(codes + at, m, mx[b0 + b], vals, dst + at);
                    }
                    local[j + 2] = dst;
                }
                double scratch_out[GK_OUT] = {0, 0, 0, 0};
                kernel(1, &len, &step[i], local, hp, scratch_out, 1);
                for (int64_t j = 0; j < nq; ++j) {
                    float *mx = absmax[j * n + i];
                    if (mx == NULL) continue;
                    const int sg = is_signed[j] != 0;
                    const float *src = buf + j * chunk;
                    uint8_t *codes = (uint8_t *)ptrs[(j + 2) * n + i] + lo;
                    for (int64_t b = 0; b * block < len; ++b) {
                        const int64_t at = b * block, m = at + block < len ? block : len - at;
                        gk_q8_encode_block(src + at, m, codes + at, mx + b0 + b, tables[sg], sg);
                    }
                }
            }
        }
        free(buf);
        free(local);
    }
    return failed ? -1 : 0;
}
#endif /* GK_DOUBLE */
