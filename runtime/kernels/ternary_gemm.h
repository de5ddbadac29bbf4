/*
 * ternary_gemm.h - integer products with ternary weights (codes -1, 0, 1)
 * and INT8 activations, the kernels of the fused ternary path
 * (runtime/fusions/fuse_ternary.c, runtime/kernels/ternary_fused.c).
 *
 *   acc[m][p] = sum_k q(p, k) * W[m][k]        exact, int32
 *
 * q are the INT8 absmax codes of the activations (runtime/formats/ternary.h,
 * in -127..127). A weight of +-1 adds or subtracts the activation, 0 skips
 * it: no kernel multiplies by anything but a weight code. Two forms:
 *
 * Tiles (Conv, and Gemm/MatMul with 8 rows or more): output channels in
 * blocks of NBL_T_CR rows, pixels (or rows of A) in panels of NBL_T_PX.
 * The weights are packed once as [Mp/8][Kp/4][8][4] int8 codes; the
 * activations arrive as bytes u = q + 128 in panels [Kp/4][32][4] (pixel p,
 * k 4k4..4k4+3 at ((p/32 * Kp/4 + k4) * 32 + p%32) * 4), the operand of
 * vpdpbusd with pixels along the vector; 128 * sum_k W[m][k] is subtracted.
 *   AVX-512 VNNI: vpdpbusd with the weight codes broadcast (a multiply by
 *                 +-1 or 0, the sign-select form), 8 channels x 32 pixels in
 *                 16 registers;
 *   AVX2:         vpmaddubsw (u * w, pairs summed, at most 510 in magnitude
 *                 since |w| <= 1, so never saturating) accumulated in int16
 *                 for 64 k-quads (128 pairs: at most 32640), then widened
 *                 with vpmaddwd: two instructions per 32 products, where the
 *                 INT4 kernels need three;
 *   scalar:       acc += (q & -(w > 0)) - (q & -(w < 0)), adds and subtracts.
 *
 * Direct convolutions (one group, AVX-512 VNNI): the kernel shared with the
 * INT4 path (code_direct.h), with the tiles' epilogue as its hook
 * (nbl_t_direct_store).
 *
 * Vectors (Gemm/MatMul rows one at a time, for few rows, where the weights'
 * bytes dominate): the weights stay 2 bits a code, [M][Kv/64][16] bytes
 * (byte i of block b holds k = 64b + 4i + j in bits 2j..2j+1 as u = w + 1);
 * a 16-byte block becomes 64 byte codes with one broadcast, one shift and
 * one mask, and vpdpbusd(u, q) sums (w + 1) * q, from which sum_k q is
 * subtracted. The activation row is permuted once to match
 * (nbl_t_gemv_prep). AVX2 does the same in two halves with vpmaddubsw.
 *
 * The variant is chosen at run time through the one CPU dispatch
 * (runtime/core/cpu.h, so NBL_ISA and nbl_session_options.isa cap it):
 * AVX-512 needs F+BW+VL+VNNI, AVX2 needs AVX2; else scalar. Every variant gives
 * exactly the plain-C reference's accumulators (nbl_t_ref).
 */
#ifndef NBL_TERNARY_GEMM_H
#define NBL_TERNARY_GEMM_H

#include <stddef.h>
#include <stdint.h>

typedef enum { NBL_T_SCALAR = 0, NBL_T_AVX2 = 1, NBL_T_AVX512 = 2 } nbl_t_isa;

/* The best variant this CPU supports under the environment's cap (computed
 * once, thread-safe). */
nbl_t_isa nbl_t_best_isa(void);
/* 1 if this CPU can run variant isa. */
int nbl_t_isa_supported(nbl_t_isa isa);
/* "scalar", "avx2", "avx512vnni". */
const char *nbl_t_isa_name(nbl_t_isa isa);

#define NBL_T_CR 8  /* output channels per weight block */
#define NBL_T_PX 32 /* pixels per activation panel */

/* Weights W[m][k] (M x K codes in -1..1) in both forms. */
typedef struct nbl_t_weights {
  int64_t M, K;
  int64_t Mp, Kp;  /* M rounded up to 8, K rounded up to 4 */
  int8_t *w;       /* tiles: [Mp/8][Kp/4][8][4] (rows past M, k past K: 0) */
  int32_t *rowsum; /* [Mp]: sum_k W[m][k] */
  int64_t Kv;      /* K rounded up to 64 */
  uint8_t *v;      /* vectors (NULL unless asked for): [M][Kv/64][16], u = w + 1, padding u = 1 */
} nbl_t_weights;

/* Pack W[m][k] = q[m*sm + k*sk] (every code -1, 0 or 1); vectors: also the
 * 2-bit vector form. 0, or -1 when out of memory or a code is out of range
 * (*out is then empty). */
int nbl_t_pack(const int8_t *q, int64_t M, int64_t K, int64_t sm, int64_t sk, int vectors,
               nbl_t_weights *out);
void nbl_t_weights_free(nbl_t_weights *w);

/* What a tile's accumulators become: y = act(sc * acc + bias[m] + res)
 * (the multiply, then the adds in that order; act: Clip's float semantics
 * on [lo, hi] when act; bias may be NULL; res, when not NULL, a residual
 * indexed like Y: res[m * ld + p]). With amax the tile also records the
 * largest |y| it stored, as bits (0x7f800000 or more: not finite), which the
 * next fused layer's quantizer takes instead of scanning its input. */
typedef struct nbl_t_epi {
  float sc;
  const float *bias;
  int act;
  float lo, hi;
  const float *res;
  uint32_t *amax; /* non-NULL: raised to the largest bit pattern of a |y| (stored or not) */
  /* instead of the floats y: nothing (no_store; for amax), or (codes not
   * NULL) the INT8 codes clamp(rint(y / cs), -128, 127) to codes[m * ld + p]
   * (cs > 0 with 1 / cs finite): those nbl_t_quant makes of the floats */
  int no_store;
  int8_t *codes;
  float cs;
} nbl_t_epi;

/* Output channels [m0, m1) (m0 a multiple of 8) x pixels [p0, p1) (p0 a
 * multiple of 32) of acc[m][p] from the panels X4 (pixel 0 first; whole
 * panels up to p1: bytes of pixels past p1 and of k >= K may be anything).
 * Writes acc to Ci[m * ld + p] when Ci is not NULL, else the epilogue of it
 * to Y[m * ld + p]. isa falls back to scalar when unsupported here. */
void nbl_t_tile(nbl_t_isa isa, const nbl_t_weights *W, const uint8_t *X4, int64_t m0, int64_t m1,
                int64_t p0, int64_t p1, int32_t *Ci, float *Y, int64_t ld, const nbl_t_epi *e);

/* The epilogue hook of the direct convolution kernel (code_direct.h) for
 * the ternary path: tile_avx512's epilogue e (the same operations in the
 * same order) on the valid lanes of a tile's corrected sums, to Y[(m + r) *
 * ld + at...] (e's res and codes indexed the same), so the direct kernel
 * writes what nbl_t_tile writes from the im2col panels. ctx: an
 * nbl_t_direct_out; AVX-512 VNNI only (the caller's nbl_cd_tile checks). */
typedef struct nbl_t_direct_out {
  const nbl_t_epi *e;
  float *Y;
  int64_t ld;
} nbl_t_direct_out;
void nbl_t_direct_store(const void *ctx, int64_t m, int nm, const int32_t *acc,
                        const uint16_t k[2], const int64_t at[2]);

/* The activation row for nbl_t_gemv: a[64b + 16j + i] = q[64b + 4i + j] for
 * k < K, 0 up to Kv; returns sum_k q[k]. */
int32_t nbl_t_gemv_prep(const int8_t *q, int64_t K, int64_t Kv, int8_t *a);
/* out[m - m0] = sum_k q[k] * W[m][k] for m in [m0, m1), from the vector form
 * (W packed with vectors = 1) and a row made by nbl_t_gemv_prep. */
void nbl_t_gemv(nbl_t_isa isa, const nbl_t_weights *W, const int8_t *a, int32_t qsum, int64_t m0,
                int64_t m1, int32_t *out);

/* The plain-C reference: acc[m * P + p] = sum_k q[p * K + k] * w[m * K + k]
 * (a multiply in int32, for the tests). */
void nbl_t_ref(const int8_t *q, const int8_t *w, int64_t P, int64_t M, int64_t K, int32_t *acc);

/* Activations. max|x| over x[0..n) into *mx; returns 0 when some x is NaN or
 * +-Inf (then *mx is meaningless), else 1. */
int nbl_t_absmax(nbl_t_isa isa, const float *x, int64_t n, float *mx);
/* u[i] = clamp(rint(x[i] / s), -128, 127) + off (off 128: unsigned bytes for
 * the tiles; 0: the signed codes as bytes), the codes of
 * nbl_absmax8_fake_quant; x finite, s > 0. */
void nbl_t_quant(nbl_t_isa isa, const float *x, uint8_t *u, int64_t n, float s, int off);

/* Row of W values as float codes (from floats x with scale s as
 * nbl_t_quant_f, or when x is NULL from the codes q), the even columns to
 * ev[0..], the odd ones to od[0..]: a stride-2 depthwise layer's phases. */
void nbl_t_deint2_f(nbl_t_isa isa, const float *x, const int8_t *q, int64_t W, float s, float *ev,
                    float *od);
/* f[i] = q[i] as a float (codes handed over as bytes). */
void nbl_t_codes_f(nbl_t_isa isa, const int8_t *q, float *f, int64_t n);
/* f[i] = clamp(rint(x[i] / s), -128, 127) as a float (the same codes); x finite. */
void nbl_t_quant_f(nbl_t_isa isa, const float *x, float *f, int64_t n, float s);
/* The epilogue on floats in place: y[i] = act(sc * y[i] + bias + res[i])
 * (res may be NULL; act: Clip's semantics on [lo, hi]), the same operations
 * in the same order as the tiles' epilogue. Returns the largest bit pattern
 * of |y[i]| written (0x7f800000 or more: some value is not finite). */
uint32_t nbl_t_finish(nbl_t_isa isa, float *y, int64_t n, float sc, float bias, const float *res,
                      int act, float lo, float hi);

/* Depthwise rows: output rows [oh0, oh1) (OW columns each) of one channel
 * from the zero-padded phase planes of the FP32 depthwise kernel (gemm.h
 * nbl_dw_phases: padded row r, column q at ph[((r % R) * S + q % S) * plane
 * + (r / R) * Wp + q / S]) holding activation codes as floats: acc = the sum
 * over the KH x KW taps (dilations dh, dw) of w[t] * x, each weight -1, 0 or
 * 1 an add, nothing or a subtract (exact integer sums, so equal to any other
 * order), then the epilogue e with the channel's bias (e->res and e->amax as
 * for the tiles, res indexed like y) to y[(oh - oh0) * OW + ow]. Returns 1,
 * or 0 when isa has no such kernel (AVX-512 only; nothing written). */
int nbl_t_dw_rows(nbl_t_isa isa, const float *ph, int64_t plane, int64_t Wp, int64_t R, int64_t S,
                  int64_t KH, int64_t KW, int64_t dh, int64_t dw, const float *w, int64_t oh0,
                  int64_t oh1, int64_t OW, float *y, const nbl_t_epi *e, float bias);

#endif /* NBL_TERNARY_GEMM_H */
