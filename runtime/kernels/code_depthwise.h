/*
 * code_depthwise.h - the depthwise machinery the two fused integer paths
 * share (INT4: int4_depthwise.c; ternary: ternary_depthwise.c). Both run
 * depthwise convolutions on their activation codes held as floats (small
 * integers, times weight codes, summed below 2^24: exact in any order), so
 * the kernels are the same; what differs is where the codes come from (the
 * caller's loader) and which statistic of the output the next layer's
 * quantizer takes (the largest |y|, or the min / max range). The
 * AVX-512 kernels here:
 *   rows3    3x3 layers (dilation 1, strides 1 or 2 both ways): output rows
 *            from the FP32 plane kernel's phase planes (nbl_dw_hooks.rows),
 *            a block of 4 rows x 32 columns in registers, each input vector
 *            loaded once for all the block's rows that read it;
 *   blocked  small planes (nbl_dw_blocked_wanted), 16 channels at a time:
 *            the codes go into a padded tile [row][col][16], each output
 *            pixel is one vector of 16 channels.
 * Both finish in registers with the same epilogue: y = act(sc * acc + b
 * [+ res]), Clip's semantics (NaN passes), then the statistic.
 * Internal to runtime/kernels/.
 */
#ifndef NBL_CODE_DEPTHWISE_H
#define NBL_CODE_DEPTHWISE_H

#include <stdint.h>

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

/* The statistic an epilogue keeps of the values it writes. */
enum {
  NBL_DWC_AMAX, /* the largest bit pattern of |y| (0x7f800000 or more: not finite) */
  NBL_DWC_RANGE /* min, max, and whether a NaN was written */
};

typedef struct nbl_dwc_stats {
  uint32_t amax;
  float lo, hi; /* +inf, -inf when nothing was written */
  int nan;
} nbl_dwc_stats;

/* y = act(sc * acc + bias [+ res]); act: v < lo ? lo : v, then v > hi ? hi : v. */
typedef struct nbl_dwc_epi {
  float sc;
  int act;
  float lo, hi;
  int stat; /* NBL_DWC_AMAX or NBL_DWC_RANGE */
} nbl_dwc_epi;

/* nbl_dwc_stats with nothing in it yet. */
void nbl_dwc_stats_init(nbl_dwc_stats *s);

/* 1 when nbl_dwc_rows3 takes geometry g (3x3, dilation 1, equal strides 1
 * or 2) and AVX-512F runs here; the caller adds its own switch and cap. */
int nbl_dwc_rows3_fits(const nbl_conv_geom *g);

/* Output rows oh0..oh1-1 (OW columns each) of one channel of a 3x3 layer
 * from the phase planes p, weights w[9] (floats), the epilogue e with the
 * channel's bias and (res non-NULL, row oh0 of the residual plane, indexed
 * like y) a residual, to y (row oh0); the statistic widened into *st.
 * AVX-512F only (nbl_dwc_rows3_fits). */
void nbl_dwc_rows3(const nbl_dw_phases *p, const float *w, int64_t oh0, int64_t oh1, int64_t OW,
                   const nbl_dwc_epi *e, float bias, const float *res, float *y,
                   nbl_dwc_stats *st);

/* What the blocked kernel asks of its caller. */
typedef struct nbl_dwc_io {
  /* the nc planes of channels c0.. of image n as float codes, one after
   * the other, to dst (nc * H * W floats) */
  void (*load_planes)(void *arg, int64_t n, int64_t c0, int64_t nc, float *dst);
  /* optional: the epilogue is the caller's, plane by plane: the blocked
   * kernel writes the raw sums and calls finish on each plane (n, m) */
  void (*finish)(void *arg, int64_t n, int64_t m, float *y, int64_t count);
  /* a task's statistic (several threads: the caller merges) */
  void (*merge)(void *arg, const nbl_dwc_stats *st);
  void *arg;
} nbl_dwc_io;

/* The depthwise layer g (multiplier 1, at most NBL_DW_MAX_TAPS taps) 16
 * channels at a time: weights w[c * k_sz + t] (floats), bias (per channel,
 * may be NULL), the epilogue e (unless io->finish), output y [N, C, out].
 * NBL_OK, NBL_ERR_OUT_OF_MEMORY, or NBL_ERR_UNSUPPORTED without AVX-512F
 * (nothing run). No message is set. */
nbl_status nbl_dwc_blocked(nbl_kctx *c, const nbl_conv_geom *g, const float *w, const float *bias,
                           const nbl_dwc_epi *e, const nbl_dwc_io *io, float *y);

#endif /* NBL_CODE_DEPTHWISE_H */
