/*
 * ternary_fused.h - the fused ternary node: QuantizeAbsmax8(X) and a
 * constant ternary weight (QuantizeTernary of a float initializer, or
 * DequantizeTernary of packed codes) into Conv / Gemm / MatMul, run as one
 * integer kernel (ternary_fused.c over ternary_gemm.h). The pattern is found
 * at plan time by runtime/fusions/fuse_ternary.c, which fills this state.
 *
 * Per run: the activation scale s_x = max|X| / 127 (per tensor; per row of
 * A for Gemm/MatMul with per_row) is recomputed, X becomes INT8 codes
 * (bit-identical to QuantizeAbsmax8's), the weight codes were packed once,
 * and each output is sc * acc + bias (sc = s_x * s_w, times alpha for Gemm)
 * with a fused Relu/Clip after it; a Conv may also take the residual Add
 * that alone consumes its output (+ r before the activation). Depthwise
 * convolutions sum the codes as floats (every sum is an integer below 2^24,
 * so exact; ternary_depthwise.c). A fused Conv may hand its output to the
 * fused depthwise layer that alone quantizes it as that layer's INT8 codes
 * (link, codes_for). A non-finite X, or a shape the integer path does not
 * take, runs the literal composition (fake-quantize X and W, the float op's
 * reference kernel, the activation): results never depend on the path
 * beyond float rounding. Convolutions of one group and strides 1 (not
 * unpadded 1x1) or 2 (not 1x1) run the direct kernel on AVX-512 VNNI
 * (code_direct.h, the kernel shared with INT4: no im2col; weights packed a
 * second time, tdirect),
 * bit-identical to the im2col tiles.
 */
#ifndef NBL_TERNARY_FUSED_H
#define NBL_TERNARY_FUSED_H

#include "runtime/core/kernel.h"
#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/gemm.h"
#include "runtime/formats/ternary.h"
#include "runtime/kernels/ternary_gemm.h"

enum { NBL_TF_WQUANT, NBL_TF_WPACKED };

typedef struct nbl_t_fused {
  nbl_code_consumer cons; /* first member: the synthetic node; ins[1] float W or packed
                           * codes, ins[3] the packed scale */
  int per_row;      /* Gemm/MatMul: one activation scale per row */
  int wsrc;
  nbl_tern_packing packing; /* NBL_TF_WPACKED */
  /* packed state */
  const void *wdata; /* the W data it was packed from */
  float w_scale;
  nbl_t_weights *tw; /* Conv: one per group; Gemm/MatMul: one (W rows = output columns) */
  nbl_t_weights *tdirect; /* Conv of one group: W packed for the direct kernel (k = tap, channel) */
  float *dw_w;       /* depthwise Conv: the weight codes as floats, [C][k_sz] */
  nbl_t_isa isa;
  /* hand-over of the activation statistic: a Conv's epilogue records the
   * largest |y| it wrote (amax_bits, for the tensor at amax_data), and the
   * fused node reading that tensor (xsrc = the producer, linked at plan
   * time) takes its scale from it instead of scanning the tensor again */
  struct nbl_t_fused *xsrc;
  int amax_ok;
  uint32_t amax_bits;
  const void *amax_data;
  /* hand-over of the codes: the one consumer of this node's output, a
   * fused depthwise Conv quantizing it (linked at plan time, unless the
   * values are watched), may receive its INT8 codes instead of the floats
   * (code_scale its scale, code_data the tensor, codes_for the consumer;
   * codes_for is cleared when a run starts) */
  struct nbl_t_fused *link;
  const struct nbl_t_fused *codes_for;
  float code_scale;
  const void *code_data;
} nbl_t_fused;

/* (Re)pack f's weights from the W source tensor w (and the scale tensor of
 * a packed weight, else NULL). 0, or -1 when the integer path cannot take
 * it (a non-finite float weight, bad codes, out of memory); f is then left
 * without packed weights. */
int nbl_t_fused_pack(nbl_t_fused *f, const nbl_rt_tensor *w, const nbl_rt_tensor *scale);
/* Free f's packed weights (not f). */
void nbl_t_fused_release(nbl_t_fused *f);

/* ternary_depthwise.c: the depthwise Conv of f (geometry g, multiplier 1)
 * on the input's codes, from its floats x quantized with scale s or (x
 * NULL) its INT8 codes xq: y = act(sc * acc + bias[m] + res) (bias and res
 * may be NULL; res indexed like y; act: apply f's activation), *amax the
 * largest bits of a |y| written. NBL_OK, NBL_ERR_OUT_OF_MEMORY, or another
 * status when no depthwise kernel takes the shape (nothing written; no
 * message set). */
nbl_status nbl_t_run_depthwise(nbl_kctx *c, const nbl_t_fused *f, const nbl_conv_geom *g,
                               const float *x, const int8_t *xq, float s, float sc,
                               const float *bias, const float *res, int act, float *y,
                               uint32_t *amax);

/* The kernel of the fused nodes. */
extern const nbl_op_def nbl_t_fused_def;

/* Process-wide count of fused runs that took the integer path (the rest ran
 * the literal composition); for tests. */
long nbl_t_integer_runs(void);
/* Of them, the runs whose products ran variant isa (the variant chosen
 * when the session was planned, under its cap); for tests. */
long nbl_t_isa_runs(nbl_t_isa isa);
/* Process-wide count of fused runs whose activation scale came from the
 * producer's hand-over (no scan); for tests. */
long nbl_t_amax_reuses(void);

#endif /* NBL_TERNARY_FUSED_H */
