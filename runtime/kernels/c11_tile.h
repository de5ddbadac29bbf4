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

/* nbl_c11_sums continued: a[r][h] = init[r][h] + the sums below (the
 * accumulators start from init, 16 vectors [8][2][16] 64-byte aligned, when
 * it is not NULL; then the same fused multiply-adds in the same order as one
 * call over the whole K, so a K split into blocks gives the same bits). */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_c11_sums_from(
    const float *x, const int64_t *off, int64_t ld, int64_t K, const float *wb, __mmask16 k0,
    __mmask16 k1, const float *init, __m512 a[8][2]) {
  __m512 a00 = _mm512_setzero_ps(), a10 = a00, a20 = a00, a30 = a00, a40 = a00, a50 = a00,
         a60 = a00, a70 = a00;
  __m512 a01 = a00, a11 = a00, a21 = a00, a31 = a00, a41 = a00, a51 = a00, a61 = a00, a71 = a00;
  if (init) {
#define C11_INIT(r)                                   \
  a##r##0 = _mm512_load_ps(init + 32 * r);            \
  a##r##1 = _mm512_load_ps(init + 32 * r + 16);
    C11_INIT(0) C11_INIT(1) C11_INIT(2) C11_INIT(3) C11_INIT(4) C11_INIT(5) C11_INIT(6) C11_INIT(7)
#undef C11_INIT
  }
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
  nbl_c11_sums_from(x, off, ld, K, wb, k0, k1, NULL, a);
}

/* Rows in a block of the blocked product below: a block of the panel (128
 * rows of 32 floats, 16 KB) stays in the L1 cache while every channel
 * block passes over it. Read from the L2 instead, as a whole-K pass over
 * rows of more than about 300 does, the tile ran at 40-60 % of its speed
 * on L1 data. */
#define NBL_C11_KC 128

/* pan[k][0..31] = row k of a tile (x + off[k], or x + k ld when off is
 * NULL) under the masks k0, k1, lanes past them 0; pan 64-byte aligned. */
__attribute__((target("avx512f"))) static inline void nbl_c11_panel(const float *x,
                                                                   const int64_t *off, int64_t ld,
                                                                   int64_t K, __mmask16 k0,
                                                                   __mmask16 k1, float *pan) {
  for (int64_t k = 0; k < K; k++, pan += 32) {
    const float *xk = off ? x + off[k] : x + k * ld;
    _mm512_store_ps(pan, _mm512_maskz_loadu_ps(k0, xk));
    _mm512_store_ps(pan + 16, _mm512_maskz_loadu_ps(k1, xk + 16));
  }
}

/* One block of kn rows of a K-blocked product: a = the block's sums over
 * pan (rows of 32 floats) and wb, started from the partial sums in ac
 * unless first; when more blocks follow, a is kept in ac for them ([8][32]
 * floats, 64-byte aligned). */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_c11_kblock(
    const float *pan, int64_t kn, const float *wb, float *ac, int first, int more, __m512 a[8][2]) {
  nbl_c11_sums_from(pan, NULL, 32, kn, wb, 0xFFFF, 0xFFFF, first ? NULL : ac, a);
  if (more)
    for (int r = 0; r < 8; r++) {
      _mm512_store_ps(ac + 32 * r, a[r][0]);
      _mm512_store_ps(ac + 32 * r + 16, a[r][1]);
    }
}

/* What a caller of nbl_c11_blocked does with channel block m's sums. */
typedef void (*nbl_c11_epi_fn)(void *u, int64_t m, __m512 a[8][2]);

/* The sums of one tile of 32 outputs, whose rows are pan[K][32]
 * (nbl_c11_panel), for the channel blocks m = m0, m0 + 8, .. < m1 (weights
 * wp packed [M/8][K][8], nbl_c11_pack), each handed to epi(u, m, a): K in
 * blocks of NBL_C11_KC rows, each block over all the channel blocks, the
 * partial sums kept in acc ([(m1 - m0 + 7) / 8][8][32] floats, 64-byte
 * aligned). The same bits as nbl_c11_sums over the whole K. */
__attribute__((target("avx512f"), always_inline)) static inline void nbl_c11_blocked(
    const float *pan, int64_t K, const float *wp, int64_t m0, int64_t m1, float *acc,
    nbl_c11_epi_fn epi, void *u) {
  for (int64_t k0 = 0; k0 < K; k0 += NBL_C11_KC) {
    int64_t kn = K - k0 < NBL_C11_KC ? K - k0 : NBL_C11_KC;
    for (int64_t m = m0; m < m1; m += 8) {
      __m512 a[8][2];
      nbl_c11_kblock(pan + k0 * 32, kn, wp + m * K + k0 * 8, acc + (m - m0) * 32, k0 == 0,
                     k0 + kn < K, a);
      if (k0 + kn == K) epi(u, m, a);
    }
  }
}

/* The end of one vector of outputs headed for y (lanes under mask k):
 * v + the residual at y when act has one, then act's clamp (Clip's
 * semantics, NaN passing through); act NULL: v unchanged. The bias is added
 * before (the conv's output is sum + bias, then the fused Add's operand). */
__attribute__((target("avx512f"), always_inline)) static inline __m512 nbl_c11_act(
    __m512 v, const nbl_act *act, const float *y, __mmask16 k) {
  if (!act) return v;
  if (act->res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, nbl_act_res(act, y)));
  if (act->kind) v = _mm512_min_ps(_mm512_set1_ps(act->hi), _mm512_max_ps(_mm512_set1_ps(act->lo), v));
  return v;
}
#endif

#endif /* NBL_C11_TILE_H */
