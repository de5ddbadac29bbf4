/*
 * int4_vq.h - the AVX-512 activation quantizer's vector core, shared by the
 * quantizer (int4_quant.c) and the convolution tiles that write activation
 * bytes straight from their epilogue (int4_gemm.c). Internal to
 * runtime/kernels/.
 */
#ifndef NBL_INT4_VQ_H
#define NBL_INT4_VQ_H

#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/simd16.h"

#if defined(__x86_64__)
/* The quantizer's constants as vectors, in registers for a whole row: the
 * output stores could alias the parameters, which would otherwise be
 * reloaded and converted for every vector. */
typedef struct quant_consts {
  __m512 inv, tie, scale, cmin, cmax, clo, chi; /* cmin, cmax: qmin - zero, qmax - zero */
  int clip;
  __mmask16 divide_all; /* all lanes take the division (1 / s is not usable) */
} quant_consts;

NBL_TARGET_VNNI static inline quant_consts quant_consts_of(const nbl_i4_quantizer *q) {
  const nbl_q4_params *p = q->p;
  quant_consts k = {_mm512_set1_ps(q->inv),
                    _mm512_set1_ps(q->tie),
                    _mm512_set1_ps(p->scale),
                    _mm512_set1_ps((float)(p->qmin - p->zero)),
                    _mm512_set1_ps((float)(p->qmax - p->zero)),
                    _mm512_set1_ps(p->clip_lo),
                    _mm512_set1_ps(p->clip_hi),
                    p->clip,
                    q->inv == 0.0f ? (__mmask16)0xffff : (__mmask16)0};
  return k;
}

/* Half-even codes minus the zero point, 16 floats at a time: the float
 * operations of nbl_q4_code (clamp, x / s, round to nearest even, + z,
 * clamp) with the zero point taken out of the last clamp, to qmin - z and
 * qmax - z: the same integers (r + z is exact below 2^24, and beyond the
 * code range both sides clamp to the same end; a NaN clamps to qmin - z
 * both ways). */
NBL_TARGET_VNNI static inline __m512 quant_centered16(const quant_consts *k, __m512 v) {
  if (k->clip) v = _mm512_min_ps(_mm512_max_ps(v, k->clo), k->chi);
  __m512 y = _mm512_mul_ps(v, k->inv);
  __m512 r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 d = _mm512_abs_ps(_mm512_sub_ps(y, r));
  __mmask16 near = _mm512_cmp_ps_mask(d, k->tie, _CMP_GT_OQ) | k->divide_all;
  if (near) {
    y = _mm512_mask_div_ps(y, near, v, k->scale);
    r = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  }
  return _mm512_min_ps(_mm512_max_ps(r, k->cmin), k->cmax);
}

#endif
#endif /* NBL_INT4_VQ_H */
