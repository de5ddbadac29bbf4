/*
 * int4_fused.h - the fused INT4 node: what the INT4 fusion
 * (runtime/fusions/fuse_int4.c) builds at plan time for a pattern
 *   QuantizeInt4(X) -> Conv | Gemm | MatMul <- constant quantized W
 * and what the fused node's kernel (nbl_i4_fused_def) runs:
 *   int4_fused.c      the kernel: activation parameters, weight packing,
 *                     Gemm/MatMul, the literal fallback
 *   int4_act.c        activation statistics and quantization to bytes
 *   int4_conv.c       dense and grouped Conv on the integer tiles, one-group
 *                     Conv by the direct kernel shared with ternary (code_direct.h)
 *   int4_depthwise.c  depthwise Conv on the codes, and the float epilogues
 * Internal to the INT4 path.
 */
#ifndef NBL_INT4_FUSED_H
#define NBL_INT4_FUSED_H

#include <math.h>
#include <stdatomic.h>

#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/int4_gemm.h"

enum { WS_QUANT, WS_DEQUANT };          /* where the weight codes come from */

struct nbl_i4_fused;

/* What a fused node found out, in its latest run, about the output it
 * wrote, for the fused node that consumes that output (whose xsrc it is):
 * cleared when the node starts a run, so a consumer (which runs after it in
 * the same run) never sees an older run's. */
typedef struct nbl_i4_handover {
  int range_known; /* every element is finite and lies in [lo, hi] */
  float lo, hi;
  /* non-NULL: the output holds, instead of floats, the activation bytes
   * code + code_off of the consumer codes_for's quantizer (scale
   * code_scale, zero point code_zero, codes code_qmin..code_qmax) */
  const struct nbl_i4_fused *codes_for;
  float code_scale;
  int code_zero, code_qmin, code_qmax, code_off;
} nbl_i4_handover;

typedef struct nbl_i4_fused {
  nbl_code_consumer cons; /* first member: the synthetic node; ins[3] the PACT alpha */
  nbl_q4_config xcfg;
  int wsrc;
  nbl_q4_config wcfg; /* WS_QUANT */
  float dq_scale;     /* WS_DEQUANT */
  int dq_zero;
  /* packed state */
  const void *wdata; /* W data the packing was made from */
  float w_scale;
  nbl_i4_weights *packed; /* Gemm/MatMul */
  nbl_i4_rows *rows;      /* Conv: one per group */
  nbl_i4_rows *direct;    /* Conv of one group on AVX-512 VNNI: W packed for the direct
                           * kernel (code_direct.h; k = tap, channel) */
  float *dw_w;            /* depthwise Conv: the weight codes as floats, [C][k_sz] */
  nbl_i4_isa isa;
  /* the one consumer of this node's output, a fused depthwise convolution
   * quantizing it: fed activation bytes instead of floats (link_codes) */
  struct nbl_i4_fused *link;
  /* the fused node that writes this node's X (NULL: none), and what this
   * node hands over about its own output */
  struct nbl_i4_fused *xsrc;
  nbl_i4_handover out;
} nbl_i4_fused;

/* The kernel of every fused node (op type "FusedInt4" in domain ai.nibble;
 * the node is the nbl_i4_fused it is the first member of). */
extern const nbl_op_def nbl_i4_fused_def;

/* (Re)pack f's weights from tensor w (the W source's value); 0, or -1 when
 * w cannot be represented exactly (the literal path runs instead). */
int nbl_i4_fused_pack(nbl_i4_fused *f, const nbl_rt_tensor *w);
/* Free f's packed weights (f itself stays). */
void nbl_i4_fused_unpack(nbl_i4_fused *f);

/* The fused activation (nbl_code_act). */
static inline float nbl_i4_act(const nbl_i4_fused *f, float v) { return nbl_code_act(&f->cons, v); }

/* 1 when every x[i] is finite. */
static inline int nbl_i4_all_finite(const float *x, int64_t n) {
  const uint32_t *b = (const uint32_t *)(const void *)x;
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= (b[i] & 0x7f800000u) == 0x7f800000u;
  return !bad;
}

/* AVX-512 (VNNI) runs here and the INT4 path is not capped below it (a
 * cap to avx2 or scalar runs no AVX-512 code of the INT4 path at all). */
int nbl_i4_avx512(void);

/* ------------------------------------------------------------------ output ranges */

/* A range merged from several threads; published in the node's hand-over
 * when it is finite, for the next fused node's quantizer. */
typedef struct nbl_i4_shared_range {
  _Atomic float lo, hi;
  _Atomic int nan;
} nbl_i4_shared_range;

static inline void nbl_i4_range_init(nbl_i4_shared_range *r) {
  atomic_init(&r->lo, INFINITY);
  atomic_init(&r->hi, -INFINITY);
  atomic_init(&r->nan, 0);
}

static inline void nbl_i4_range_merge(nbl_i4_shared_range *r, const nbl_i4_range *v) {
  float cur = atomic_load(&r->lo);
  while (v->lo < cur && !atomic_compare_exchange_weak(&r->lo, &cur, v->lo)) {
  }
  cur = atomic_load(&r->hi);
  while (v->hi > cur && !atomic_compare_exchange_weak(&r->hi, &cur, v->hi)) {
  }
  if (v->nan) atomic_store(&r->nan, 1);
}

static inline void nbl_i4_range_publish(nbl_i4_fused *f, nbl_i4_shared_range *r) {
  float lo = atomic_load(&r->lo), hi = atomic_load(&r->hi);
  if (!atomic_load(&r->nan) && isfinite(lo) && isfinite(hi) && lo <= hi) {
    f->out.range_known = 1;
    f->out.lo = lo;
    f->out.hi = hi;
  }
}

/* 1 when f's input X holds f's activation bytes (not floats): the fused
 * node that wrote X sent them (nbl_i4_handover.codes_for). */
static inline int nbl_i4_x_is_codes(const nbl_i4_fused *f) {
  return f->xsrc && f->xsrc->out.codes_for == f;
}

/* ------------------------------------------------------------------ int4_act.c */

/* Minimum and maximum of X's floats, split by pixel bands for large rank-4
 * tensors; returns 0 if some element is NaN or +-Inf. */
int nbl_i4_scan(nbl_kctx *c, const nbl_rt_tensor *X, float *lo, float *hi);
/* nbl_q4_choose for scale_source=max on n finite values whose min/max are
 * known: the same float operations (runtime/formats/int4.c), without a
 * second pass over the data. */
void nbl_i4_params_from_range(const nbl_q4_config *cfg, int64_t n, float lo, float hi,
                              nbl_q4_params *p);
/* u[i] = code(x[i]) + off for i < n, across the threads. */
void nbl_i4_quantize_x(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                       const float *x, uint8_t *u, int64_t n, int off);
/* The bytes of rank-4 X [N, C, H, W] into planes of Hp x Wp at u, input
 * (ih, iw) at (ih + pt, iw + pl); the rest must already hold the pad byte. */
void nbl_i4_quantize_padded(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                            const nbl_rt_tensor *X, uint8_t *u, int64_t Hp, int64_t Wp,
                            int64_t pt, int64_t pl, int off);

/* ------------------------------------------------------------------ the op paths */

/* Conv of rank-4 X with activation parameters p (int4_conv.c). */
nbl_status nbl_i4_run_conv(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p);
/* Depthwise Conv (f packed as such, no fused Add) of geometry g into y, with
 * bias (may be NULL) and scale sc = s_x * s_w (int4_depthwise.c). Returns
 * NBL_ERR_UNSUPPORTED without a message (nothing run) for shapes the
 * depthwise kernels do not take; on NBL_OK the output's range is published. */
nbl_status nbl_i4_run_depthwise(nbl_kctx *c, nbl_i4_fused *f, const nbl_conv_geom *g,
                                const nbl_q4_params *p, const float *bias, float sc, float *y);
/* The fake-quantize + float composition of the fused node with activation
 * parameters p: the path for anything the integer kernels cannot take
 * exactly (int4_fused.c). */
nbl_status nbl_i4_run_literal(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p);

#endif /* NBL_INT4_FUSED_H */
