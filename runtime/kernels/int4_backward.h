/*
 * int4_backward.h - integer kernels for the backward products of 4-bit
 * training (issue 16): the input gradient dX = dY * W^T and the weight
 * gradient dW = X^T * dY of Conv and Gemm/MatMul when every operand is a
 * tensor of small integer codes times one float per tensor:
 *   - INT4/INT8 activations and weights from QuantizeInt4: v = fl(s * n),
 *     n = q - z (runtime/formats/int4.h), the scale s known;
 *   - gradients from QuantizeLog with radix 2 or 4 (runtime/formats/log.h):
 *     v = 0 or +-top * r^-k, i.e. +-unit * 2^e with unit the smallest
 *     level, so the integer code is a power of two (radix 4, 3 exponent
 *     bits: 4^6 = 4096 at most), recovered from the values themselves
 *     (every non-zero element shares one float mantissa).
 * Codes are int16 (|code| <= NBL_I4B_MAX_CODE = 2^14), products int16 x
 * int16 summed exactly in int32 over at most nbl_i4b_kchunk(max|a|, max|b|)
 * terms (K * max|a| * max|b| <= INT32_MAX; longer sums are split and added
 * in int64), and each output is rescaled once: y = (float)(acc * u_a * u_b)
 * with the product taken in double (acc and the units are exact there).
 *
 * GEMM layout: C[m][n] = sum_k A[m][k] * B[k][n]. A is int16 rows, k
 * contiguous, the row length padded to an even Kp with zeros; B is packed
 * in panels of NBL_I4B_NR = 16 columns, each [Kp/2][16][2] int16: for the
 * pair of k (2j, 2j+1) the 16 columns' two codes side by side, the operand
 * of vpdpwssd / vpmaddwd (one 32-bit lane = one column's pair).
 *
 * Three variants, chosen at run time (nbl_i4b_best_isa, through
 * runtime/core/cpu.h): AVX-512 (F+BW+VNNI, vpdpwssd, tiles of 6 x 32, or 12 x 16 where the product has one panel), AVX2 (vpmaddwd +
 * vpaddd, tiles of 6 x 16) and portable C. All accumulate the same integers
 * exactly, so all give identical results; the variants differ in speed only.
 */
#ifndef NBL_INT4_BACKWARD_H
#define NBL_INT4_BACKWARD_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

typedef enum { NBL_I4B_SCALAR = 0, NBL_I4B_AVX2 = 1, NBL_I4B_AVX512 = 2 } nbl_i4b_isa;

/* The variant to use on the calling thread: the best one that the one CPU
 * dispatch configuration allows (runtime/core/cpu.h: the CPU, the process
 * cap NBL_ISA=scalar|avx2|avx512, the session's cap), chosen where a kernel
 * starts and passed to the threads it runs. nbl_i4b_set_isa (tests,
 * benchmarks) overrides it for the process: a variant, or -1 for the
 * dispatch's choice; a variant the CPU lacks is never used (the next lower
 * one is). nbl_i4b_isa_supported: whether the CPU has the variant (no cap). */
nbl_i4b_isa nbl_i4b_best_isa(void);
int nbl_i4b_isa_supported(nbl_i4b_isa isa);
void nbl_i4b_set_isa(int isa);
/* "scalar", "avx2", "avx512". */
const char *nbl_i4b_isa_name(nbl_i4b_isa isa);

/* ------------------------------------------------------------------ codes */

#define NBL_I4B_MAX_CODE 16384 /* 2^14: pair sums of products stay far inside int32 */

/* An operand's grid: value = unit * code, |code| <= maxabs. */
typedef struct nbl_i4b_grid {
  float unit;
  int32_t maxabs;
} nbl_i4b_grid;

/* Power-of-two codes (log-quantized gradients): every x[i] must be +-0 or
 * +-unit * 2^e with 0 <= e <= 14, unit the smallest non-zero magnitude (all
 * non-zero elements share one float mantissa, none subnormal, none NaN or
 * Inf). Writes the codes +-2^e to q (NULL: check only) and the grid (an
 * all-zero x: unit 1, maxabs 0). Returns 0, or -1 when x is not on such a
 * grid (q then partly written). Vectorized per isa; every variant gives
 * the same result. */
int nbl_i4b_codes_pow2(nbl_i4b_isa isa, const float *x, int64_t n, int16_t *q, nbl_i4b_grid *g);

/* Linear codes (QuantizeInt4 outputs): every x[i] must equal the float
 * product scale * (float)c for an integer |c| <= NBL_I4B_MAX_CODE (c =
 * rint(x / scale), checked by multiplying back). scale must be finite and
 * > 0. Writes c to q and the grid (unit = scale). Returns 0 or -1. */
int nbl_i4b_codes_linear(nbl_i4b_isa isa, const float *x, int64_t n, float scale, int16_t *q,
                         nbl_i4b_grid *g);

/* Power-of-two codes from a QuantizeLog's codes output (int8 log codes c,
 * |c| <= L <= 15; runtime/formats/log.h): q[i] = lut[codes[i] + 16] (q
 * NULL: check only, and *maxabs then a bound: the largest |lut| over the
 * range of the |codes| present), lut
 * the integers of the codes -15..15 (nbl_log_code_int; entries past +-L
 * unused), and *maxabs the largest |q[i]| (0 when all are zero). Returns
 * 0, or -1 when a code is past +-L (the codes of NaN and Inf among them:
 * the float kernel takes those) or its integer past
 * NBL_I4B_MAX_CODE (q then partly written). Vectorized per isa; every
 * variant gives the same result. */
int nbl_i4b_codes_log(nbl_i4b_isa isa, const int8_t *codes, int64_t n, int L, const int32_t lut[32], int16_t *q,
                      int32_t *maxabs);

/* Linear codes from a QuantizeInt4's codes output (int8 codes c with the
 * zero point z, runtime/formats/int4.h): q[i] = c[i] - z, *maxabs the largest
 * |q[i]|. Returns 0, or -1 when a code is outside -126..126 (the marks of
 * NaN and Inf: the float kernel takes those; q then partly written). With
 * X = scale * (c - z) these are the codes nbl_i4b_codes_linear recovers from
 * X's floats, on the grid of unit scale. Vectorized per isa; every variant
 * gives the same result. */
int nbl_i4b_codes_int8(nbl_i4b_isa isa, const int8_t *codes, int64_t n, int zero, int16_t *q, int32_t *maxabs);

/* The longest even k such that k * maxa * maxb <= INT32_MAX (so an int32
 * sum of k products never overflows), at least 2; maxa, maxb in
 * 0..NBL_I4B_MAX_CODE. */
int64_t nbl_i4b_kchunk(int32_t maxa, int32_t maxb);

/* ------------------------------------------------------------------ operands */

#define NBL_I4B_NR 16 /* columns per B panel */
#define NBL_I4B_MR 6  /* rows per micro-tile */

/* B packed in panels (see the header comment); p is 64-byte aligned and
 * reused between calls (nbl_i4b_panels_reserve grows it). */
typedef struct nbl_i4b_panels {
  int64_t K, N;   /* logical B[K][N] */
  int64_t Kp, np; /* K rounded up to even, number of panels ceil(N / 16) */
  int16_t *p;     /* np * Kp * 16 codes */
  size_t cap;     /* codes allocated */
} nbl_i4b_panels;

/* Make b hold a K x N operand (contents undefined). 0, or -1 out of memory. */
int nbl_i4b_panels_reserve(nbl_i4b_panels *b, int64_t K, int64_t N);
void nbl_i4b_panels_free(nbl_i4b_panels *b);
/* Pack B[k][n] = src[k * sk + n * sn] into b (reserved for K x N), zeros in
 * the padding; vectorized for sn == 1 (row pairs interleaved) and sk == 1
 * (32-bit units transposed) on AVX-512. Any isa gives the same bytes. */
void nbl_i4b_pack(nbl_i4b_isa isa, const int16_t *src, int64_t sk, int64_t sn, nbl_i4b_panels *b);
/* The same with B's rows by pointer: B[k][n] = rows[k][n] for k < K, n < N
 * (reserved for K x N). Any isa gives the same bytes. */
void nbl_i4b_pack_ptrs(nbl_i4b_isa isa, const int16_t *const *rows, nbl_i4b_panels *b);
/* A operand: dst[m * lda + k] = src[m * sm + k * sk] for m < M, k < K, and
 * zeros for k in [K, lda) (lda >= K rounded up to even). */
void nbl_i4b_pack_rows(const int16_t *src, int64_t M, int64_t K, int64_t sm, int64_t sk,
                       int16_t *dst, int64_t lda);

/* ------------------------------------------------------------------ GEMM */

typedef enum {
  NBL_I4B_STORE32,  /* int32 c[m][n] = acc (the caller guarantees it fits) */
  NBL_I4B_ADD64,    /* int64 c[m][n] += acc */
  NBL_I4B_SCALE_F32 /* float c[m][n] = (float)((double)acc * scale) */
} nbl_i4b_sink_kind;

/* Where the GEMM's exact sums go: element (m, n) at c[m * ldc + n], or at
 * c[n * ldc + m] when trans is set. With wq > 0 (NBL_I4B_SCALE_F32, not
 * trans) the columns are positions over rows of wq of which the first w are
 * kept: column n = i * wq + j goes to c[m * ldc + i * w + j] when j < w,
 * else nowhere (a product computed over a padded width, written without
 * the padding). */
typedef struct nbl_i4b_sink {
  nbl_i4b_sink_kind kind;
  void *c;
  int64_t ldc;
  int trans;
  double scale;  /* NBL_I4B_SCALE_F32 */
  int64_t wq, w; /* NBL_I4B_SCALE_F32 over a padded width (wq 0: none) */
} nbl_i4b_sink;

/* Rows [m0, m1) x columns [n0, n1) of C = A * B (A: rows of lda >= B->Kp
 * codes; B packed; n0 a multiple of NBL_I4B_NR, n1 clamped to B->N), every
 * sum exact: int32 over chunks of kchunk k (even, from nbl_i4b_kchunk of
 * the operands' maxabs), chunks added in int64, written to the sink. The
 * ranges let threads split the rows or the columns. */
void nbl_i4b_gemm(nbl_i4b_isa isa, const int16_t *A, int64_t lda, int64_t m0, int64_t m1, int64_t n0, int64_t n1,
                  const nbl_i4b_panels *B, int64_t kchunk, const nbl_i4b_sink *out);

/* nbl_i4b_gemm with A's rows by pointer: row m at rows[m] (B->Kp codes
 * readable from it; no lda). */
void nbl_i4b_gemm_rows(nbl_i4b_isa isa, const int16_t *const *rows, int64_t m0, int64_t m1, int64_t n0,
                       int64_t n1, const nbl_i4b_panels *B, int64_t kchunk, const nbl_i4b_sink *out);

/* nbl_i4b_gemm with B's pair rows by pointer instead of packed panels: the
 * codes of B[2j][n] and B[2j + 1][n] at Bj[j][2n] and Bj[j][2n + 1], for
 * the Kp / 2 pairs j (Kp even); each row readable up to the end of the
 * 32-column block that holds column n1 - 1, and holding codes within the
 * bound kchunk was computed from up to there (what lies past n1 is summed
 * but not written anywhere). No packing: the caller lays B out so (for
 * example two channels' codes interleaved, int4_backward_conv.c). */
void nbl_i4b_gemm_pairs(nbl_i4b_isa isa, const int16_t *A, int64_t lda, int64_t m0, int64_t m1, int64_t n0,
                        int64_t n1, const int16_t *const *Bj, int64_t Kp, int64_t kchunk, const nbl_i4b_sink *out);

/* ------------------------------------------------------------------ stride phases of dX */

/* One spatial axis of a convolution's dX split by stride phase: the input
 * positions s i + a (i < the phase's count, ceil((len - a) / s)) take the
 * taps k with a + pb - k d divisible by s, each reading dY at i + off, off =
 * (a + pb - k d) / s: a unit-stride correlation per phase (both dX paths:
 * the AMX tiles, int4_amx.c, and the VNNI phases, int4_backward_conv.c).
 * Phase a has nt[a] taps kt[a k + t] (increasing) with offsets ot[a k + t];
 * pad is the zeros dY needs ahead of it so that every phase reads from
 * position 0, ext its extent with them (at least n_out + pad). */
typedef struct nbl_i4b_phase_axis {
  int64_t s, pad, ext;
  int64_t *nt, *kt, *ot;
} nbl_i4b_phase_axis;
/* 0, or -1 out of memory (x then still freed by nbl_i4b_phase_axis_free). */
int nbl_i4b_phase_axis_init(nbl_i4b_phase_axis *x, int64_t s, int64_t k, int64_t d, int64_t pb, int64_t n_out,
                            int64_t len);
void nbl_i4b_phase_axis_free(nbl_i4b_phase_axis *x);

/* ------------------------------------------------------------------ the backward products
 * (runtime/kernels/int4_backward_conv.c) */

/* Results of nbl_i4b_conv_grad: each float output y = (float)(acc * s)
 * (NULL: not computed), and/or the exact accumulators (tests; NULL: not
 * kept). dx: X's shape, dw: W's, db: [M]. */
typedef struct nbl_i4b_conv_out {
  float *dx, *dw, *db;
  int64_t *dx_acc, *dw_acc, *db_acc;
  double dx_scale, dw_scale, db_scale;
} nbl_i4b_conv_out;

/* ConvGrad in integers for geometry g (any spatial rank, groups,
 * depthwise): dy codes [N, M, out...], x codes [N, C, in...] (needed for
 * dW), w codes [M, C/group, k...] (needed for dX), with their maxabs;
 *   dB[m] = sum dY,  dW = sum over images and pixels of dY * im2col(X),
 *   dX = col2im(W^T * dY),
 * as ConvGrad's fast float path (runtime/ops/grad_conv.c) but exact; the
 * caller sets the scales (dx: u_dy * u_w, dw: u_dy * u_x, db: u_dy).
 * Threads of ctx (may be NULL: one thread). Returns NBL_OK or
 * NBL_ERR_OUT_OF_MEMORY (no message set). */
nbl_status nbl_i4b_conv_grad(nbl_kctx *ctx, nbl_i4b_isa isa, const nbl_conv_geom *g,
                             const int16_t *dy, int32_t dy_max, const int16_t *x, int32_t x_max,
                             const int16_t *w, int32_t w_max, const nbl_i4b_conv_out *out);

/* Y[M][N] = op(A) * op(B) in integers, Y = (float)(acc * scale) (y NULL:
 * not stored) and/or the exact accumulators acc[M][N] (NULL: not kept).
 * op(A)[m][k] = a[transA ? k * M + m : m * K + k], likewise B (K x N).
 * Returns NBL_OK or NBL_ERR_OUT_OF_MEMORY (no message set). */
nbl_status nbl_i4b_matmul(nbl_kctx *ctx, nbl_i4b_isa isa, int64_t M, int64_t N, int64_t K,
                          const int16_t *a, int transA, int32_t a_max, const int16_t *b,
                          int transB, int32_t b_max, double scale, float *y, int64_t *acc);

/* ------------------------------------------------------------------ AMX tiles
 * (runtime/kernels/int4_amx.c) */

/* Whether the CPU has AMX-INT8 and Linux granted the tile state (no cap). */
int nbl_i4b_amx_supported(void);
/* Whether nbl_i4b_conv_grad called with isa takes the AMX products: isa is
 * NBL_I4B_AVX512, the CPU has AMX, and the cap in force on the calling
 * thread allows it (runtime/core/cpu.h: NBL_ISA=amx or no cap) - or, after
 * nbl_i4b_set_amx(1) (tests, benchmarks), whatever the cap; after
 * nbl_i4b_set_amx(0) never; nbl_i4b_set_amx(-1) restores the default. */
int nbl_i4b_amx_on(nbl_i4b_isa isa);
void nbl_i4b_set_amx(int on);
/* How many products (a dW or a dX) the AMX tiles computed in this process. */
long nbl_i4b_amx_runs(void);

/* An operand of the AMX products: its int16 codes q (maxabs their bound),
 * or (q NULL; dY only) a QuantizeLog's int8 codes k8 (every one within the
 * 32-entry table t16: the code of k8[i] is t16[k8[i] + 16]; maxabs their
 * bound), or (q NULL; X of dW only) its float values f, linear codes c = rint(f /
 * unit) made while the tiles' planes are packed (no int16 copy), checked as
 * nbl_i4b_codes_linear does (unit * c == f) and required in -127..127; a
 * value that fails makes the product decline (*done = 0), and the caller
 * recovers the codes itself (maxabs: unused). (dY is taken as codes: made
 * in one sweep over the floats, they stay in cache for the packing, which
 * a second sweep over the floats does not.) X of dW may also come (q NULL)
 * as QuantizeInt4's int8 codes c8 with its zero point (runtime/formats/int4.h:
 * codes c = c8 - zero, unit the scale; c8 NULL: the floats): a code that
 * is not one (a non-finite mark) or a c past -127..127 declines likewise. */
typedef struct nbl_i4b_src {
  const int16_t *q;
  const int8_t *k8;
  const int16_t *t16;
  const float *f;
  const int8_t *c8;
  int32_t zero;
  float unit;
  int32_t maxabs;
} nbl_i4b_src;

/* Whether nbl_i4b_amx_conv_dw / _dx can take layer g (its geometry; the
 * codes and the sizes are judged there). */
int nbl_i4b_amx_dw_fits(const nbl_conv_geom *g);
int nbl_i4b_amx_dx_fits(const nbl_conv_geom *g);

/* dW [M][C][k] += the exact products of nbl_i4b_conv_grad on AMX tiles (2-D,
 * one group, unit dilations, any pads, strides up to the kernel's size, C >=
 * 4; x's codes within -127..127, dy's maxabs <= NBL_I4B_MAX_CODE). *done = 0
 * (nothing written) when the geometry or the codes do not fit, or when the
 * padded planes would pass 256 MB: the caller takes another path. Call only
 * when nbl_i4b_amx_on. Returns NBL_OK or NBL_ERR_OUT_OF_MEMORY. */
nbl_status nbl_i4b_amx_conv_dw(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const nbl_i4b_src *x,
                               int64_t *dw64, int *done);
/* dX of nbl_i4b_conv_grad (out->dx and/or out->dx_acc, every element
 * written) on AMX tiles: 2-D, one group, unit dilations, any pads and
 * strides (an output phase that no tap reaches is zeros: the 1x1 stride-2
 * shortcuts), w_max <= 127; *done = 0 otherwise (nothing written). */
nbl_status nbl_i4b_amx_conv_dx(nbl_kctx *ctx, const nbl_conv_geom *g, const nbl_i4b_src *dy, const int16_t *w,
                               int32_t w_max, const nbl_i4b_conv_out *out, int *done);

/* The forward product of nbl_i4b_conv_forward on AMX tiles (2-D, one group,
 * unit dilations, column stride 1 or 2, C >= 4): x's codes recovered as
 * there (xk NULL) or taken from QuantizeInt4's codes xk, c = xk - xz
 * (runtime/formats/int4.h: a non-finite mark declines), and required in
 * -128..127, w8 the weight codes [M][C][k] (int8),
 * y = sc * (float)acc + bias[m] (mul, then add; bias NULL: + 0.0f) and/or
 * acc, as the VNNI path writes them. *done = 0 (whatever was written is to
 * be overwritten) when the layer or the codes do not fit: the caller runs
 * its own path, which also judges the grid. */
nbl_status nbl_i4b_amx_conv_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx,
                                    const int8_t *xk, int xz, const int8_t *w8, float sc, const float *bias, float *y,
                                    int32_t *acc, int *done);

/* ------------------------------------------------------------------ the forward product
 * (runtime/kernels/int4_coded_conv.c) */

/* Conv of geometry g (2 spatial dims, any strides, pads, dilations, groups)
 * on coded operands: x = sx * cx with integer codes cx spanning at most 256
 * values, 0 among them (4-bit or 8-bit, signed, unsigned or affine: |cx| <=
 * 255), w = sw * cw with cw in -128..127 (checked here: the codes are
 * recovered as nbl_i4b_codes_linear does, the weights packed on every
 * call), as exact int32 sums acc = sum cx * cw on the AVX-512 VNNI (or AVX2,
 * scalar) tiles of int4_gemm.h; y (NULL: not stored) gets fl(sx * sw) * acc
 * + bias[m] in float (mul, then add; bias may be NULL), acc (NULL: not
 * kept; tests) the sums, both [N, M, out...]. *off_grid = 1 (nothing
 * meaningful written) when an operand is not on such a grid or the rank is
 * not 2: the caller runs the float Conv instead. Threads of ctx (may be
 * NULL). Returns NBL_OK or NBL_ERR_OUT_OF_MEMORY (no message set). */
nbl_status nbl_i4b_conv_forward(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx, const float *w,
                                float sw, const float *bias, float *y, int32_t *acc, int *off_grid);
/* nbl_i4b_conv_forward with X's QuantizeInt4 codes handed over as well (xk
 * of x's shape, xz the zero point: runtime/formats/int4.h; NULL: none): the
 * AMX tiles read them instead of recovering them from x (the same codes
 * where x is the op's Y, so the same outputs); the other paths, and the
 * tiles where a code is a non-finite mark, read x; x NULL (the QuantizeInt4's
 * Y dropped): the values of the codes, nbl_q4_value8, where x is read). */
nbl_status nbl_i4b_conv_forward_codes(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, float sx,
                                      const int8_t *xk, int xz, const float *w, float sw, const float *bias, float *y,
                                      int32_t *acc, int *off_grid);
/* Whether nbl_i4b_conv_forward runs layers with at most 18 taps per output
 * (C * KH * KW; unit strides and dilations, one group) by its direct float
 * product (the same outputs as the other paths): 1 or -1 (the default)
 * where AVX-512 is allowed, 0 never (tests comparing the paths). */
void nbl_i4b_set_small_k(int on);

#endif /* NBL_INT4_BACKWARD_H */
