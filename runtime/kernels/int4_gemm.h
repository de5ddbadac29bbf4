/*
 * int4_gemm.h - integer GEMM micro-kernels for the fused INT4 fast path:
 * low-bit codes (INT4 x INT4, or INT8 x INT4 / INT8 x INT8 for 8-bit layers)
 * with exact INT32 accumulation.
 *
 *   C[m][n] = sum_k (A[m][k] - a_zero) * W[k][n]      (exact, int32)
 *
 * A (activations) are unsigned bytes u = q + off, chosen by the caller so
 * that every code and the zero point fit in 0..255; a_zero = z + off is the
 * byte that means 0. W (weights, codes in -128..127) is packed once
 * (nbl_i4_pack_weights) into panels of 16 columns, [K/4][16][4] bytes, the
 * operand layout of AVX-512 VNNI vpdpbusd; the correction a_zero * sum_k W
 * is subtracted per output column.
 *
 * Three variants share that layout, chosen at run time by the CPU dispatch
 * configuration (runtime/core/cpu.h): AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw + vpmaddwd,
 * used only when max|W| <= 64 so the 16-bit pair sums cannot saturate;
 * otherwise scalar), and portable C. All give identical results.
 */
#ifndef NBL_INT4_GEMM_H
#define NBL_INT4_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/kernel.h"
#include "runtime/formats/int4.h"

#define NBL_I4_NR 16 /* columns per packed panel */
#define NBL_I4_MR 6  /* rows per micro-tile */

typedef enum { NBL_I4_SCALAR = 0, NBL_I4_AVX2 = 1, NBL_I4_VNNI = 2 } nbl_i4_isa;

/* Weights packed for the micro-kernels. */
typedef struct nbl_i4_weights {
  int64_t K, N;   /* logical shape W[K][N] */
  int64_t Kp, Np; /* K rounded up to 4, N rounded up to 16 */
  int8_t *panels; /* Np/16 panels, each [Kp/4][16][4] bytes (64-byte aligned) */
  int8_t *panels_half; /* when maxabs > 64: panels >> 1 (the AVX2 kernel's split) */
  int32_t *colsum; /* [N]: sum_k W[k][n] */
  int maxabs;      /* max |W| */
} nbl_i4_weights;

/* The best variant the CPU supports and the ISA cap in force on this thread
 * allows (runtime/core/cpu.h: at the avx2 cap AVX2, at scalar scalar). */
nbl_i4_isa nbl_i4_best_isa(void);
/* 1 if this CPU can run variant isa (whatever the cap: tests run every one). */
int nbl_i4_isa_supported(nbl_i4_isa isa);
/* "scalar", "avx2" or "avx512vnni". */
const char *nbl_i4_isa_name(nbl_i4_isa isa);

/* Pack W[k][n] = w[k*sk + n*sn] (K x N codes in -128..127) into *out.
 * Returns 0, or -1 when out of memory (*out is then empty). */
int nbl_i4_pack_weights(const int8_t *w, int64_t K, int64_t N, int64_t sk, int64_t sn,
                        nbl_i4_weights *out);
void nbl_i4_weights_free(nbl_i4_weights *w);

/* Rows [m0, m1) of C = (A - a_zero) * W with variant isa (falls back to
 * scalar when isa is unsupported here or cannot be exact for these weights).
 * A is M x lda bytes (lda >= W->Kp; bytes K..Kp of a row are ignored as the
 * padded weights are 0); C is M x ldc int32, columns [0, N) written. */
void nbl_i4_gemm(nbl_i4_isa isa, const nbl_i4_weights *W, const uint8_t *A, int64_t lda,
                 int64_t m0, int64_t m1, int32_t a_zero, int32_t *C, int64_t ldc);


/* Convolution weights for nbl_i4_conv_gemm: W[m][k] (M x K codes) in blocks
 * of NBL_I4_CR rows, [M/8][Kp/4][8][4] bytes (rows past M and k past K are
 * zero), and the row sums for the zero-point correction. */
#define NBL_I4_CR 8
typedef struct nbl_i4_rows {
  int64_t M, K, Kp;
  int8_t *w;
  int8_t *w_half;  /* when maxabs > 64: w >> 1, same layout (the AVX2 kernel's split) */
  int32_t *rowsum; /* [M rounded up to 8] */
  int maxabs;
} nbl_i4_rows;
/* Pack W[m][k] = w[m*sm + k*sk]; 0, or -1 when out of memory (*out empty). */
int nbl_i4_pack_rows(const int8_t *w, int64_t M, int64_t K, int64_t sm, int64_t sk,
                     nbl_i4_rows *out);
void nbl_i4_rows_free(nbl_i4_rows *w);
/* The epilogue of nbl_i4_conv_gemm: y = act(sc * acc + bias[m]) (mul, then
 * add; act: Clip's float semantics lo/hi when act != 0; bias may be NULL). */
typedef struct nbl_i4_range {
  float lo, hi; /* min and max of the non-NaN values written */
  int nan;      /* 1: a NaN was written */
} nbl_i4_range;
struct nbl_i4_quantizer;
typedef struct nbl_i4_epi {
  float sc;
  const float *bias;
  int act;
  float lo, hi;
  nbl_i4_range *range; /* non-NULL: widened to cover every value computed */
  /* instead of storing y: no_store = 1 computes the range only; codes
   * (non-NULL) receives the bytes code(y) + off of quantizer q, indexed like
   * Y, as nbl_i4_quantize_u8 would compute them from the stored y */
  int no_store;
  uint8_t *codes;
  const struct nbl_i4_quantizer *q;
  int off;
  /* non-NULL: a residual indexed like Y, added to sc * acc + bias before the
   * activation (a fused Add) */
  const float *res;
} nbl_i4_epi;
/* Widen r to [lo, hi] (values that are not NaN) and note a NaN. */
static inline void nbl_i4_range_widen(nbl_i4_range *r, float lo, float hi, int nan) {
  if (lo < r->lo) r->lo = lo;
  if (hi > r->hi) r->hi = hi;
  if (nan) r->nan = 1;
}
/* Output channels [m0, m1) (m0 a multiple of NBL_I4_CR) x pixels [p0, p1)
 * (p0 a multiple of 32) of acc[m][p] = sum_k (x(p, k) - a_zero) * W[m][k],
 * exact int32. X4 holds the activation bytes in panels of 32 pixels, each
 * [Kp/4][32][4]: x(p, k) at X4[((p/32 * Kp/4 + k/4) * 32 + p%32) * 4 + k%4]
 * (the operand of vpdpbusd with pixels along the vector), whole panels up to
 * p1 (pixels past p1 and bytes of k >= K may hold any value). Writes acc to
 * Ci[m * ld + p] when Ci is not NULL, else the epilogue e of it to
 * Y[m * ld + p]. Variants as for nbl_i4_gemm. */
void nbl_i4_conv_gemm(nbl_i4_isa isa, const nbl_i4_rows *W, const uint8_t *X4, int32_t a_zero,
                      int64_t m0, int64_t m1, int64_t p0, int64_t p1, int32_t *Ci, float *Y,
                      int64_t ld, const nbl_i4_epi *e);
/* The epilogue hook of the direct convolution kernel (code_direct.h) for
 * the INT4 path: nbl_i4_conv_gemm's epilogue e (AVX-512 VNNI's operations in
 * its order: the same floats, codes and range) on the valid lanes of a
 * tile's corrected sums, to Y[(m + r) * ld + at...] (e's res and codes
 * indexed the same). ctx: an nbl_i4_direct_out; AVX-512 VNNI only (the
 * caller's nbl_cd_tile checks). */
typedef struct nbl_i4_direct_out {
  const nbl_i4_epi *e;
  float *Y;
  int64_t ld;
} nbl_i4_direct_out;
void nbl_i4_direct_store(const void *ctx, int64_t m, int nm, const int32_t *acc,
                         const uint16_t k[2], const int64_t at[2]);
/* A prepared activation quantizer: the parameters, and what the vector path
 * derives from them, computed once per tensor (nbl_i4_quantizer_init) rather
 * than per row. It points to cfg and p, which must outlive it. */
typedef struct nbl_i4_quantizer {
  const nbl_q4_config *cfg;
  const nbl_q4_params *p;
  float inv, tie; /* 1 / scale (0: always divide); 0.5 - the near-tie band */
  int vec;        /* the half-even vector path that applies: 2 AVX-512, 1 AVX2, 0 none */
} nbl_i4_quantizer;
void nbl_i4_quantizer_init(nbl_i4_quantizer *q, const nbl_q4_config *cfg, const nbl_q4_params *p);

/* Activation bytes: u[i] = code(x[i]) + off, the code exactly as
 * nbl_q4_quantize_codes computes it (index0 = linear index of x[0]); x must
 * be finite. Vectorized for half-even rounding on AVX-512 and AVX2. */
void nbl_i4_quantize_u8(const nbl_i4_quantizer *q, const float *x, uint8_t *u, size_t n,
                        uint64_t index0, int off);

/* f[i] = code(x[i]) - zero as a float (an exact small integer), the code as
 * nbl_i4_quantize_u8 computes it; x must be finite. */
void nbl_i4_quantize_centered(const nbl_i4_quantizer *q, const float *x, float *f, size_t n,
                              uint64_t index0);
/* Activation bytes u (code + off) back to centered floats u - bias, bias =
 * off + zero: rows of w bytes to f + r * ld, or rows of w bytes (row r at
 * u + r * us) split into even (ev + r * ld) and odd (od + r * ld) columns. */
void nbl_i4_codes_centered_rows(const uint8_t *u, size_t w, size_t rows, float *f, size_t ld,
                                int bias);
void nbl_i4_codes_centered_deint2(const uint8_t *u, size_t w, size_t rows, size_t us, float *ev,
                                  float *od, size_t ld, int bias);
/* nbl_i4_quantize_centered of rows rows of w floats, row r from x + r * w to
 * f + r * ld. */
void nbl_i4_quantize_centered_rows(const nbl_i4_quantizer *q, const float *x, size_t w,
                                   size_t rows, float *f, size_t ld, uint64_t index0);
/* nbl_i4_quantize_centered of rows rows of w floats, row r from x + r * xs
 * (element index index0 + r * xs), its even columns i to ev[r * ld + i / 2]
 * and odd ones to od[r * ld + i / 2]. */
void nbl_i4_quantize_centered_deint2(const nbl_i4_quantizer *q, const float *x, size_t w,
                                     size_t rows, size_t xs, float *ev, float *od, size_t ld,
                                     uint64_t index0);
/* The byte offset for codes of p: off with qmin+off >= 0, qmax+off <= 255
 * and zero+off in 0..255 (always exists for bits <= 8, |zero| <= 128). */
int nbl_i4_act_offset(const nbl_q4_params *p);

#endif /* NBL_INT4_GEMM_H */
