/*
 * c11_tile.h - the register tile of the AVX-512 FP32 convolution product,
 * shared by its two callers: the im2col/1x1 product (c11_tile,
 * conv_avx512.c), whose rows of x are k ld apart, and the shifted-rows
 * convolution (fwd_tile, conv_shift.c), whose rows are found through a
 * tap-offset table. One body, so both give the same sums in the same order
 * (conv_paths.h promises bitwise the same outputs). Internal to
 * runtime/kernels/.
 */
#ifndef NBL_C11_TILE_H
#define NBL_C11_TILE_H

#if defined(__x86_64__)
#include "runtime/kernels/gemm.h"

#include <immintrin.h>
#include <stdint.h>

/* a[r][h] = sum over k < K of wb[8 k + r] row_k[16 h ..], r < 8, h < 2: 8
 * output channels x 32 outputs, row_k = x + off[k] (off non-NULL) or
 * x + k ld, loaded 16 floats at a time under the masks k0, k1 (lanes past
 * them read as 0); wb the channels' weights packed [K][8] (nbl_c11_pack).
 * The 16 sums stay in registers through the loop; k ascending, one fused
 * multiply-add per term. Inlined, so that a NULL off compiles to the plain
 * strided loop. */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_c11_sums(
    const float *x, const int64_t *off, int64_t ld, int64_t K, const float *wb, __mmask16 k0,
    __mmask16 k1, __m512 a[8][2]) {
  __m512 a00 = _mm512_setzero_ps(), a10 = a00, a20 = a00, a30 = a00, a40 = a00, a50 = a00,
         a60 = a00, a70 = a00;
  __m512 a01 = a00, a11 = a00, a21 = a00, a31 = a00, a41 = a00, a51 = a00, a61 = a00, a71 = a00;
  for (int64_t k = 0; k < K; k++, wb += 8) {
    const float *xk = off ? x + off[k] : x + k * ld;
    __m512 x0 = _mm512_maskz_loadu_ps(k0, xk), x1 = _mm512_maskz_loadu_ps(k1, xk + 16), w;
#define C11_ROW(r)                           \
  w = _mm512_set1_ps(wb[r]);                 \
  a##r##0 = _mm512_fmadd_ps(x0, w, a##r##0); \
  a##r##1 = _mm512_fmadd_ps(x1, w, a##r##1);
    C11_ROW(0) C11_ROW(1) C11_ROW(2) C11_ROW(3) C11_ROW(4) C11_ROW(5) C11_ROW(6) C11_ROW(7)
#undef C11_ROW
  }
  a[0][0] = a00, a[0][1] = a01, a[1][0] = a10, a[1][1] = a11;
  a[2][0] = a20, a[2][1] = a21, a[3][0] = a30, a[3][1] = a31;
  a[4][0] = a40, a[4][1] = a41, a[5][0] = a50, a[5][1] = a51;
  a[6][0] = a60, a[6][1] = a61, a[7][0] = a70, a[7][1] = a71;
}

/* The epilogue of one tile row: *v0, *v1 <- act(*v + bias), act (NULL: none)
 * with Clip's semantics, NaN passing through. */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_c11_bias_act(
    __m512 *v0, __m512 *v1, float bias, const nbl_act *act) {
  __m512 b = _mm512_set1_ps(bias);
  *v0 = _mm512_add_ps(*v0, b), *v1 = _mm512_add_ps(*v1, b);
  if (act) {
    __m512 lo = _mm512_set1_ps(act->lo), hi = _mm512_set1_ps(act->hi);
    *v0 = _mm512_min_ps(hi, _mm512_max_ps(lo, *v0));
    *v1 = _mm512_min_ps(hi, _mm512_max_ps(lo, *v1));
  }
}
#endif

#endif /* NBL_C11_TILE_H */
