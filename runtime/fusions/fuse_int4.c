/* fuse_int4.c - the INT4 fast path: QuantizeInt4(x) -> Conv/Gemm/MatMul with
 * a constant quantized weight, run as one integer kernel (see int4_gemm.h).
 *
 * Pattern (found at plan time, sessions without `reference`):
 *   X --QuantizeInt4--> Xq --\
 *                              Conv | Gemm | MatMul  --> Y
 *   W --QuantizeInt4--> Wq --/     (input 0 = Xq, input 1 = Wq)
 * where W is an initializer (float32), or instead of the weight quantizer a
 * DequantizeLinear(Wq int4/int8 initializer, scalar scale [, scalar zero
 * point]) as written by pack-int4. The consumer then runs a synthetic node
 * with inputs [X, W, bias, alpha]: X is quantized on the fly (per-tensor
 * scale recomputed every run with the runtime/formats/int4.h math, codes bit-identical),
 * W was quantized and packed once here, products accumulate exactly in
 * int32, and each output is rescaled once: y = s_x*s_w*acc + bias (the
 * affine zero point of X is subtracted as z*sum(q_w) per output channel).
 * The quantizer nodes are dropped from the schedule when nothing else uses
 * their outputs. A Relu or constant-bound Clip that alone consumes Y is
 * applied in the epilogue; so is, for a dense Conv, an Add of Y and a value
 * ready before the Conv runs (a residual), and a Relu/Clip after that Add
 * (fuse_residual). The nodes absorbed leave the schedule too, so an on_value
 * callback does not see the values between them.
 *
 * Anything the integer path cannot express exactly at run time (non-finite
 * X, a Gemm bias shape other than scalar/[N]/[M,N], ...) runs the literal
 * composition instead: fake-quantize X and W, then the float op's reference
 * kernel, so results never depend on the path.
 *
 * Supported: Conv 2-D (strides, pads, auto_pad, dilations, groups,
 * depthwise), Gemm with transA = 0, MatMul with a rank-2 weight. Skipped
 * (left unfused): other ranks, weights that are not constants, weight codes
 * minus zero point outside int8.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/exec.h"
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/simd16.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

enum { FK_CONV, FK_GEMM, FK_MATMUL };

static _Atomic long g_int_runs; /* fused kernel runs that took the integer path */
enum { WS_QUANT, WS_DEQUANT };

typedef struct fused {
  nbl_node node; /* the synthetic node (first member: the kernel casts back) */
  nbl_id ins[5]; /* X, W source, bias, alpha, residual (NBL_NONE when absent) */
  const nbl_node *orig;
  nbl_id qx, wnode; /* the quantizer nodes */
  int kind;
  nbl_q4_config xcfg;
  int wsrc;
  nbl_q4_config wcfg; /* WS_QUANT */
  float dq_scale;     /* WS_DEQUANT */
  int dq_zero;
  int64_t wdims[NBL_MAX_RANK];
  int wrank;
  int trans_b;
  float alpha, beta;
  /* packed state */
  const void *wdata; /* W data the packing was made from */
  float w_scale;
  int groups;
  nbl_i4_weights *packed; /* Gemm/MatMul */
  nbl_i4_rows *rows;      /* Conv: one per group */
  float *dw_w;            /* depthwise Conv: the weight codes as floats, [C][k_sz] */
  float *dw_wt;           /* the same as [C / 16][k_sz][16], zero-padded to whole blocks */
  nbl_i4_isa isa;
  /* a Relu/Clip consuming the op's only output, applied in the epilogue */
  int act;
  float act_lo, act_hi;
  nbl_id act_node;
  /* an Add of the conv's output (conv_out) and a residual (ins[4]) computed
   * in the epilogue, before the activation, which then follows the Add */
  const nbl_node *res_add;
  nbl_id res_node, conv_out;
  char op[32]; /* the synthetic node's op type, for profiles: "Int4Conv+Clip" */
  /* the one consumer of this node's output, a fused depthwise convolution
   * quantizing it: fed activation bytes instead of floats (link_codes) */
  struct fused *link;
} fused;

/* The fused activation: Clip's float semantics (t = v < lo ? lo : v; t > hi ? hi : t),
 * Relu being lo = 0, hi = +inf; NaN passes through as in the elementwise kernels. */
static inline float act_apply(const fused *f, float v) {
  if (!f->act) return v;
  float t = v < f->act_lo ? f->act_lo : v;
  return t > f->act_hi ? f->act_hi : t;
}

struct nbl_i4_fusion {
  int n_nodes;
  fused **by_node;
};

/* Decode QuantizeInt4 attributes; -1 when the fused path should not take it
 * (the reference kernel then reports the bad attribute). */
static int parse_q4(const nbl_node *n, nbl_q4_config *cfg) {
  return nbl_q4_config_decode(n, cfg, NULL, 0) == NBL_OK ? 0 : -1;
}

static const nbl_node *producer(const nbl_graph *g, nbl_id v) {
  if (v == NBL_NONE || g->values[v].producer == NBL_NONE) return NULL;
  return &g->nodes[g->values[v].producer];
}

static int all_finite(const float *x, int64_t n) {
  const uint32_t *b = (const uint32_t *)(const void *)x;
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; i++) bad |= (b[i] & 0x7f800000u) == 0x7f800000u;
  return !bad;
}


/* AVX-512 (VNNI) available here and not capped by NBL_INT4_ISA (so that a
 * cap to avx2 or scalar runs no AVX-512 code of the INT4 path at all);
 * cached (every thread computes the same value). */
static int have_vnni(void) {
  static _Atomic int cached = -1;
  int v = atomic_load_explicit(&cached, memory_order_relaxed);
  if (v < 0) {
    v = nbl_i4_best_isa() == NBL_I4_VNNI;
    atomic_store_explicit(&cached, v, memory_order_relaxed);
  }
  return v;
}

/* ------------------------------------------------------------------ activation statistics */

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int scan_avx512(const float *x, int64_t n, float *lo,
                                                          float *hi) {
  __m512 vlo = _mm512_set1_ps(INFINITY), vhi = _mm512_set1_ps(-INFINITY);
  const __m512i em = _mm512_set1_epi32(0x7f800000);
  __mmask16 bad = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 v = _mm512_loadu_ps(x + i);
    bad |= _mm512_cmpeq_epi32_mask(_mm512_and_si512(_mm512_castps_si512(v), em), em);
    vlo = _mm512_min_ps(vlo, v);
    vhi = _mm512_max_ps(vhi, v);
  }
  float l = _mm512_reduce_min_ps(vlo), h = _mm512_reduce_max_ps(vhi);
  int ok = bad == 0;
  for (; i < n; i++) {
    if (!isfinite(x[i])) ok = 0;
    if (x[i] < l) l = x[i];
    if (x[i] > h) h = x[i];
  }
  *lo = l;
  *hi = h;
  return ok;
}
#endif

/* Minimum and maximum of x; returns 0 if some element is NaN or +-Inf. */
static int scan_x(const float *x, int64_t n, float *lo, float *hi) {
#if defined(__x86_64__)
  if (have_vnni()) return scan_avx512(x, n, lo, hi);
#endif
  float l = INFINITY, h = -INFINITY;
  int ok = all_finite(x, n);
  for (int64_t i = 0; ok && i < n; i++) {
    if (x[i] < l) l = x[i];
    if (x[i] > h) h = x[i];
  }
  *lo = l;
  *hi = h;
  return ok;
}

/* nbl_q4_choose for scale_source=max on finite data with known min/max: the
 * same float operations (see runtime/formats/int4.c), without a second pass over x. */
static void params_from_range(const nbl_q4_config *cfg, int64_t n, float lo, float hi,
                              nbl_q4_params *p) {
  memset(p, 0, sizeof *p);
  nbl_q4_range(cfg, &p->qmin, &p->qmax);
  if (n == 0) lo = hi = 0.0f;
  float s;
  if (cfg->mode == NBL_Q4_SYMMETRIC) {
    float m = 0.0f;
    if (-lo > m) m = -lo;
    if (hi > m) m = hi;
    s = m / (float)p->qmax;
    if (!(s > 0.0f) || !isfinite(s)) s = 1.0f;
    p->scale = s;
    return;
  }
  s = (hi - lo) / (float)(p->qmax - p->qmin);
  if (!(s > 0.0f) || !isfinite(s)) s = 1.0f;
  float z = nearbyintf((float)p->qmin - lo / s);
  if (z < -128.0f) z = -128.0f;
  if (z > 127.0f) z = 127.0f;
  p->scale = s;
  p->zero = (int)z;
}


/* ------------------------------------------------------------------ epilogues */

#if defined(__x86_64__)
/* The float epilogue of the AVX-512 kernels on a vector of exact sums:
 * v = sc * acc + bias, then the activation's clamp (as in tile_vnni: NaN
 * kept), the lanes of m widened into the running min/max, and NaN noted when
 * one is possible (a non-finite scale or bias). The flags and the
 * activation's bounds are copied in at init: stores to y could alias f. */
typedef struct i4_epi {
  __m512 vs, vb, clo, chi, vmin, vmax;
  int act, maybe_nan;
  __mmask16 nan;
} i4_epi;

__attribute__((target("avx512f"), always_inline)) static inline void
i4_epi_init(i4_epi *e, const fused *f, float sc, float bias) {
  e->act = f->act != 0;
  e->maybe_nan = !isfinite(sc) || !isfinite(bias);
  e->vs = _mm512_set1_ps(sc);
  e->vb = _mm512_set1_ps(bias);
  e->clo = _mm512_set1_ps(e->act ? f->act_lo : -INFINITY);
  e->chi = _mm512_set1_ps(e->act ? f->act_hi : INFINITY);
  e->vmin = _mm512_set1_ps(INFINITY);
  e->vmax = _mm512_set1_ps(-INFINITY);
  e->nan = 0;
}

__attribute__((target("avx512f"), always_inline)) static inline __m512
i4_epi_apply(i4_epi *e, __m512 acc, __mmask16 m) {
  __m512 v = _mm512_add_ps(_mm512_mul_ps(acc, e->vs), e->vb);
  if (e->act) v = _mm512_min_ps(e->chi, _mm512_max_ps(e->clo, v));
  e->vmin = _mm512_mask_min_ps(e->vmin, m, e->vmin, v);
  e->vmax = _mm512_mask_max_ps(e->vmax, m, e->vmax, v);
  if (e->maybe_nan) e->nan |= _mm512_mask_cmp_ps_mask(m, v, v, _CMP_UNORD_Q);
  return v;
}

/* the range of what the epilogue produced */
__attribute__((target("avx512f"), always_inline)) static inline nbl_i4_range
i4_epi_range(const i4_epi *e) {
  nbl_i4_range rg = {_mm512_reduce_min_ps(e->vmin), _mm512_reduce_max_ps(e->vmax), e->nan != 0};
  return rg;
}

/* y[i] = act(sc * y[i] + bv): the same arithmetic on exact float sums;
 * rg (non-NULL) is widened to the values written. */
__attribute__((target("avx512f"))) static void epi_f_avx512(const fused *f, float *y, int64_t n,
                                                            float sc, float bv,
                                                            nbl_i4_range *rg) {
  i4_epi e;
  i4_epi_init(&e, f, sc, bv);
  for (int64_t i = 0; i < n; i += 16) {
    __mmask16 m = nbl_tail_mask(n - i);
    _mm512_mask_storeu_ps(y + i, m, i4_epi_apply(&e, _mm512_maskz_loadu_ps(m, y + i), m));
  }
  if (rg) {
    nbl_i4_range r = i4_epi_range(&e);
    nbl_i4_range_widen(rg, r.lo, r.hi, r.nan);
  }
}
#endif

#if defined(__x86_64__)
/* epi_f_avx512 on AVX2, 8 lanes: the same operations and operand orders. */
__attribute__((target("avx2"))) static void epi_f_avx2(const fused *f, float *y, int64_t n,
                                                       float sc, float bv, nbl_i4_range *rg) {
  const int act = f->act != 0, maybe_nan = !isfinite(sc) || !isfinite(bv);
  const __m256 vs = _mm256_set1_ps(sc), vb = _mm256_set1_ps(bv);
  const __m256 clo = _mm256_set1_ps(act ? f->act_lo : -INFINITY),
               chi = _mm256_set1_ps(act ? f->act_hi : INFINITY);
  __m256 vmin = _mm256_set1_ps(INFINITY), vmax = _mm256_set1_ps(-INFINITY);
  int nan = 0;
  for (int64_t i = 0; i < n; i += 8) {
    __m256 mf = _mm256_castsi256_ps(nbl_tail8(n - i));
    __m256 v = _mm256_add_ps(_mm256_mul_ps(nbl_load8(y + i, n - i), vs), vb);
    if (act) v = _mm256_min_ps(chi, _mm256_max_ps(clo, v));
    nbl_store8(y + i, n - i, v);
    nan |= nbl_minmax8(&vmin, &vmax, v, mf, maybe_nan);
  }
  if (rg) nbl_i4_range_widen(rg, nbl_hmin8(vmin), nbl_hmax8(vmax), nan != 0);
}
#endif

static void epilogue_f(const fused *f, float *y, int64_t n, float sc, float bv, nbl_i4_range *rg) {
#if defined(__x86_64__)
  if (have_vnni()) {
    epi_f_avx512(f, y, n, sc, bv, rg);
    return;
  }
  if (nbl_i4_best_isa() == NBL_I4_AVX2) {
    epi_f_avx2(f, y, n, sc, bv, rg);
    return;
  }
#endif
  for (int64_t i = 0; i < n; i++) {
    y[i] = act_apply(f, sc * y[i] + bv);
    if (rg) nbl_i4_range_widen(rg, y[i], y[i], y[i] != y[i]);
  }
}

/* ------------------------------------------------------------------ weights */

static void free_packed(fused *f) {
  if (f->packed) nbl_i4_weights_free(&f->packed[0]);
  if (f->rows)
    for (int i = 0; i < f->groups; i++) nbl_i4_rows_free(&f->rows[i]);
  free(f->packed);
  free(f->rows);
  free(f->dw_w);
  free(f->dw_wt);
  f->packed = NULL;
  f->rows = NULL;
  f->dw_w = NULL;
  f->dw_wt = NULL;
}

/* Integer weight codes (q - z) of tensor w (the W source) into *codes
 * (malloc'd) and the scale into *scale. Returns 0, or -1 if w cannot be
 * represented exactly (non-finite, codes out of int8, bad type, OOM). */
static int weight_codes(const fused *f, const nbl_rt_tensor *w, int8_t **codes, float *scale) {
  int64_t n = w->numel;
  int8_t *q = malloc((size_t)(n ? n : 1));
  if (!q) return -1;
  if (f->wsrc == WS_QUANT) {
    if (w->dtype != NBL_DT_FLOAT || !all_finite(w->data, n)) goto fail;
    nbl_q4_params p;
    if (nbl_q4_choose(&f->wcfg, w->data, (size_t)n, 0.0f, &p, NULL) != 0) goto fail;
    nbl_q4_quantize_codes(&f->wcfg, &p, w->data, q, (size_t)n, 0);
    for (int64_t i = 0; i < n; i++) {
      int v = q[i] - p.zero;
      if (v < -128 || v > 127) goto fail;
      q[i] = (int8_t)v;
    }
    *scale = p.scale;
  } else {
    if (w->dtype != NBL_DT_INT4 && w->dtype != NBL_DT_INT8) goto fail;
    if (!isfinite(f->dq_scale) || f->dq_scale <= 0) goto fail;
    for (int64_t i = 0; i < n; i++) {
      int v = (int)nbl_rt_get_i64(w, i) - f->dq_zero;
      if (v < -128 || v > 127) goto fail;
      q[i] = (int8_t)v;
    }
    *scale = f->dq_scale;
  }
  *codes = q;
  return 0;
fail:
  free(q);
  return -1;
}

/* (Re)pack the weight from tensor w; 0 or -1. */
static int pack(fused *f, const nbl_rt_tensor *w) {
  free_packed(f);
  int8_t *q = NULL;
  float s = 0;
  if (weight_codes(f, w, &q, &s) != 0) return -1;
  int ok;
  if (f->kind == FK_CONV) {
    /* per group: W[m][k] with k over (c, kh, kw), the weight's own order */
    int64_t Mg = f->wdims[0] / f->groups, Kg = f->wdims[1] * f->wdims[2] * f->wdims[3];
    f->rows = calloc((size_t)f->groups, sizeof(nbl_i4_rows));
    ok = f->rows != NULL;
    for (int gi = 0; ok && gi < f->groups; gi++)
      ok = nbl_i4_pack_rows(q + gi * Mg * Kg, Mg, Kg, Kg, 1, &f->rows[gi]) == 0;
    if (ok && Mg == 1 && f->wdims[1] == 1) { /* depthwise */
      f->dw_w = malloc(sizeof(float) * (size_t)(f->groups * Kg + 1));
      ok = f->dw_w != NULL;
      for (int64_t i = 0; ok && i < f->groups * Kg; i++) f->dw_w[i] = q[i];
      int64_t C16 = (f->groups + 15) / 16 * 16;
      f->dw_wt = ok ? calloc((size_t)(C16 * Kg), sizeof(float)) : NULL;
      ok = f->dw_wt != NULL;
      for (int64_t c = 0; ok && c < f->groups; c++)
        for (int64_t k = 0; k < Kg; k++) f->dw_wt[(c / 16 * Kg + k) * 16 + c % 16] = q[c * Kg + k];
    }
  } else {
    f->packed = calloc(1, sizeof(nbl_i4_weights));
    ok = f->packed != NULL;
    if (ok && f->kind == FK_GEMM && f->trans_b)
      ok = nbl_i4_pack_weights(q, f->wdims[1], f->wdims[0], 1, f->wdims[1], &f->packed[0]) == 0;
    else if (ok)
      ok = nbl_i4_pack_weights(q, f->wdims[0], f->wdims[1], f->wdims[1], 1, &f->packed[0]) == 0;
  }
  free(q);
  if (!ok) {
    free_packed(f);
    return -1;
  }
  f->w_scale = s;
  f->wdata = w->data;
  return 0;
}

/* ------------------------------------------------------------------ literal fallback */

/* Fake-quantize X (params p) and W, then the float op's reference kernel. */
/* The fused Add (and activation) the slow way: output 0 holds conv + bias;
 * it becomes Add(conv, residual) by the Add kernel itself (any broadcast,
 * the operands in the Add's order), then the activation. */
static nbl_status finish_residual(nbl_kctx *c, const fused *f) {
  const nbl_rt_tensor *R = c->n_in > 4 ? c->in[4] : NULL;
  if (!R) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the residual input of the fused Add is missing");
  nbl_rt_tensor *y = nbl_kctx_out(c, 0), t = {0};
  nbl_status st = nbl_rt_tensor_alloc(&t, y->dtype, y->rank, y->dims);
  if (st != NBL_OK) return nbl_kerr(c, st, "out of memory");
  memcpy(t.data, y->data, t.nbytes);
  const nbl_rt_tensor *ins[2];
  int ci = f->res_add->inputs[0] == f->conv_out ? 0 : 1;
  ins[ci] = &t;
  ins[1 - ci] = R;
  nbl_node an = *f->res_add;
  an.outputs = f->node.outputs;
  an.n_outputs = f->node.n_outputs;
  nbl_kctx c2 = *c;
  c2.node = &an;
  c2.n_in = 2;
  c2.in = ins;
  const nbl_op_def *def = nbl_op_lookup("", "Add", c->opset);
  st = def ? def->ref(&c2) : nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no Add kernel at opset %d", c->opset);
  nbl_rt_tensor_free(&t);
  if (st == NBL_OK && f->act) {
    y = nbl_kctx_out(c, 0);
    if (y->dtype != NBL_DT_FLOAT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "the fused Add's output is not float32");
    float *yv = y->data;
    for (int64_t i = 0; i < y->numel; i++) yv[i] = act_apply(f, yv[i]);
  }
  return st;
}

static nbl_status run_literal(nbl_kctx *c, fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  nbl_rt_tensor xh = {0}, wh = {0};
  nbl_status st = nbl_rt_tensor_alloc(&xh, NBL_DT_FLOAT, X->rank, X->dims);
  if (st == NBL_OK) st = nbl_rt_tensor_alloc(&wh, NBL_DT_FLOAT, W->rank, W->dims);
  if (st != NBL_OK) {
    nbl_rt_tensor_free(&xh);
    return nbl_kerr(c, st, "out of memory");
  }
  nbl_q4_fake_quant(&f->xcfg, p, X->data, xh.data, (size_t)X->numel, 0);
  float *wv = wh.data;
  if (f->wsrc == WS_QUANT) {
    nbl_q4_params pw;
    const char *why = "";
    if (W->dtype != NBL_DT_FLOAT ||
        nbl_q4_choose(&f->wcfg, W->data, (size_t)W->numel, 0.0f, &pw, &why) != 0) {
      nbl_rt_tensor_free(&xh);
      nbl_rt_tensor_free(&wh);
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "weight quantizer: %s",
                      W->dtype != NBL_DT_FLOAT ? "W must be float32" : why);
    }
    nbl_q4_fake_quant(&f->wcfg, &pw, W->data, wv, (size_t)W->numel, 0);
  } else {
    for (int64_t i = 0; i < W->numel; i++)
      wv[i] = (float)(nbl_rt_get_i64(W, i) - f->dq_zero) * f->dq_scale;
  }
  const nbl_rt_tensor *ins[3] = {&xh, &wh, c->n_in > 2 ? c->in[2] : NULL};
  nbl_kctx c2 = *c;
  nbl_node on = *f->orig; /* its attributes; the fused node's outputs (for the arena) */
  on.outputs = f->node.outputs;
  on.n_outputs = f->node.n_outputs;
  c2.node = &on;
  c2.n_in = f->orig->n_inputs < 3 ? f->orig->n_inputs : 3;
  c2.in = ins;
  const nbl_op_def *def = nbl_op_lookup("", f->orig->op_type, c->opset);
  st = def ? def->ref(&c2)
           : nbl_kerr(c, NBL_ERR_UNSUPPORTED, "no kernel for %s at opset %d", f->orig->op_type,
                      c->opset);
  if (st == NBL_OK && f->res_add) {
    st = finish_residual(c, f);
  } else if (st == NBL_OK && f->act) {
    nbl_rt_tensor *y = nbl_kctx_out(c, 0);
    float *yv = y->data;
    for (int64_t i = 0; i < y->numel; i++) yv[i] = act_apply(f, yv[i]);
  }
  nbl_rt_tensor_free(&xh);
  nbl_rt_tensor_free(&wh);
  return st;
}

/* ------------------------------------------------------------------ activations */

typedef struct qjob {
  nbl_i4_quantizer q;
  const float *x;
  uint8_t *u;
  int off;
} qjob;

static void quant_chunk(void *arg, int64_t b, int64_t e) {
  qjob *j = arg;
  nbl_i4_quantize_u8(&j->q, j->x + b, j->u + b, (size_t)(e - b), (uint64_t)b, j->off);
}

static void quantize_x(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                       const float *x, uint8_t *u, int64_t n, int off) {
  qjob j = {.x = x, .u = u, .off = off};
  nbl_i4_quantizer_init(&j.q, cfg, p);
  nbl_parallel_for(c, n, 1 << 15, quant_chunk, &j);
}

/* The pixel bands of a rank-4 [N, C, H, W] tensor (NBL_BAND_MIN_PIXELS):
 * 0 when the tensor is not split that way. */
static int x_bands(const nbl_kctx *c, const nbl_rt_tensor *X) {
  return X->rank == 4 ? nbl_pixel_bands(c->threads, X->dims[2] * X->dims[3]) : 0;
}

typedef struct band_job {
  const float *x;
  int64_t planes, P;
  int bands;
  float lo[256], hi[256];
  int ok[256];
} band_job;

static void scan_bands(void *arg, int64_t b, int64_t e) {
  band_job *j = arg;
  for (int64_t t = b; t < e; t++) {
    int64_t p0, p1;
    nbl_band(j->P, t, j->bands, 1, &p0, &p1);
    float lo = INFINITY, hi = -INFINITY;
    int ok = 1;
    for (int64_t q = 0; ok && q < j->planes && p1 > p0; q++) {
      float l, h;
      ok = scan_x(j->x + q * j->P + p0, p1 - p0, &l, &h);
      if (l < lo) lo = l;
      if (h > hi) hi = h;
    }
    j->lo[t] = lo, j->hi[t] = hi, j->ok[t] = ok;
  }
}

/* scan_x, split by pixel bands for large rank-4 tensors. */
static int scan_x_par(nbl_kctx *c, const nbl_rt_tensor *X, float *lo, float *hi) {
  int bands = x_bands(c, X);
  if (!bands) return scan_x(X->data, X->numel, lo, hi);
  band_job *j = malloc(sizeof *j);
  if (!j) return scan_x(X->data, X->numel, lo, hi);
  j->x = X->data;
  j->P = X->dims[2] * X->dims[3];
  j->planes = X->dims[0] * X->dims[1];
  j->bands = bands;
  nbl_parallel_for(c, bands, 1, scan_bands, j);
  float l = INFINITY, h = -INFINITY;
  int ok = 1;
  for (int t = 0; t < bands; t++) {
    ok = ok && j->ok[t];
    if (j->lo[t] < l) l = j->lo[t];
    if (j->hi[t] > h) h = j->hi[t];
  }
  free(j);
  *lo = l;
  *hi = h;
  return ok;
}

/* Bytes of a rank-4 tensor [N, C, H, W] into planes of Hp x Wp, input
 * (ih, iw) at (ih + pt, iw + pl), the rest already the pad byte; by bands
 * of rows (every plane) for large planes, else by plane rows. */
typedef struct qpad_job {
  nbl_i4_quantizer q;
  const float *x;
  uint8_t *u;
  int64_t planes, H, W, Hp, Wp, pt, pl;
  int bands, off;
} qpad_job;

static void qpad_row(const qpad_job *j, int64_t q, int64_t ih) {
  int64_t i0 = (q * j->H + ih) * j->W;
  nbl_i4_quantize_u8(&j->q, j->x + i0, j->u + (q * j->Hp + ih + j->pt) * j->Wp + j->pl,
                     (size_t)j->W, (uint64_t)i0, j->off);
}

static void qpad_tasks(void *arg, int64_t b, int64_t e) {
  const qpad_job *j = arg;
  if (j->bands) {
    for (int64_t t = b; t < e; t++) {
      int64_t h0, h1;
      nbl_band(j->H, t, j->bands, 1, &h0, &h1);
      for (int64_t q = 0; q < j->planes; q++)
        for (int64_t ih = h0; ih < h1; ih++) qpad_row(j, q, ih);
    }
  } else {
    for (int64_t r = b; r < e; r++) qpad_row(j, r / j->H, r % j->H);
  }
}

static void quantize_padded(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_q4_params *p,
                            const nbl_rt_tensor *X, uint8_t *u, int64_t Hp, int64_t Wp,
                            int64_t pt, int64_t pl, int off) {
  qpad_job j = {.x = X->data, .u = u, .planes = X->dims[0] * X->dims[1], .H = X->dims[2],
                .W = X->dims[3], .Hp = Hp, .Wp = Wp, .pt = pt, .pl = pl, .bands = x_bands(c, X),
                .off = off};
  nbl_i4_quantizer_init(&j.q, cfg, p);
  if (j.bands)
    nbl_parallel_for(c, j.bands, 1, qpad_tasks, &j);
  else
    nbl_parallel_for(c, j.planes * j.H, 16, qpad_tasks, &j);
}

/* ------------------------------------------------------------------ output ranges */

/* A range merged from several threads; published on the output tensor when
 * it is finite, for the next fused node's quantizer. */
typedef struct shared_range {
  _Atomic float lo, hi;
  _Atomic int nan;
} shared_range;

static void range_init(shared_range *r) {
  atomic_init(&r->lo, INFINITY);
  atomic_init(&r->hi, -INFINITY);
  atomic_init(&r->nan, 0);
}

static void range_merge(shared_range *r, const nbl_i4_range *v) {
  float cur = atomic_load(&r->lo);
  while (v->lo < cur && !atomic_compare_exchange_weak(&r->lo, &cur, v->lo)) {
  }
  cur = atomic_load(&r->hi);
  while (v->hi > cur && !atomic_compare_exchange_weak(&r->hi, &cur, v->hi)) {
  }
  if (v->nan) atomic_store(&r->nan, 1);
}

static void range_publish(nbl_rt_tensor *y, shared_range *r) {
  float lo = atomic_load(&r->lo), hi = atomic_load(&r->hi);
  if (!atomic_load(&r->nan) && isfinite(lo) && isfinite(hi) && lo <= hi) {
    y->range_known = 1;
    y->range_lo = lo;
    y->range_hi = hi;
  }
}

static _Atomic long g_range_reuses; /* quantizer scans skipped thanks to a published range */
static _Atomic int g_range_off;      /* tests: always scan */
long nbl_i4_range_reuses(void) { return atomic_load(&g_range_reuses); }
void nbl_i4_set_range_reuse(int on) { atomic_store(&g_range_off, !on); }

/* ------------------------------------------------------------------ Conv */

/* Dense and grouped Conv, per image and group, block by block of output
 * pixels: the block's activation bytes are laid out in panels of 32 pixels
 * x all k (k over (c, kh, kw): im2col, 4 k per pixel interleaved, the
 * operand of vpdpbusd with pixels along the vector) in a buffer of the
 * thread's that stays in L2, then nbl_i4_conv_gemm writes output-channel x
 * pixel tiles through the epilogue straight into the NCHW output. */
typedef struct x4_job {
  const nbl_conv_geom *g;
  const uint8_t *x; /* the image's group channels, padded NCHW bytes (Hp, Wp) */
  /* or, for 1x1 stride-1 unpadded products, the floats, quantized here */
  const float *xf;
  int64_t xf_index0; /* linear index of xf[0] in X (stochastic rounding position) */
  nbl_i4_quantizer q;
  int off;
  int64_t Kg, Kp, P;
  int64_t Hp, Wp; /* x: planes of Hp x Wp bytes, the input padded with the pad byte */
  int pointwise;  /* 1x1, stride 1, no padding: k is the input channel */
  int gather2;    /* im2col rows of column stride 2 by AVX-512 BW */
  uint8_t pad; /* the byte of a zero activation */
  /* the product */
  const fused *f;
  const nbl_i4_rows *W;
  int32_t a_zero;
  float *y;
  nbl_i4_epi e;
  /* the split: bands (one per thread), or blocks of pb pixels x nmc chunks
   * of mc output channels */
  int bands;
  int64_t pb, nmc, mc;
  int64_t nkc; /* phase 1: each block's k quads filled in nkc chunks */
  shared_range range; /* of everything written */
  /* output channels split across threads: the panels of every block are
   * filled once (phase 1) into X4all, then shared by the products (phase 2) */
  uint8_t *X4all;
  int phase;
  uint8_t *u; /* codes mode: the output bytes at the position of y */
  /* range-only pass: stop once the shared range spans the fused activation's
   * bounds (nothing can widen it then) */
  int stop_at_bounds;
  _Atomic int oom;
} x4_job;

/* dst[4i + j] = r_j[i] for i < n */
static void interleave4(const uint8_t *r0, const uint8_t *r1, const uint8_t *r2, const uint8_t *r3,
                        uint8_t *dst, int64_t n) {
  int64_t i = 0;
#if defined(__x86_64__)
  for (; i + 16 <= n; i += 16) {
    __m128i a = _mm_loadu_si128((const __m128i *)(const void *)(r0 + i));
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(r1 + i));
    __m128i c = _mm_loadu_si128((const __m128i *)(const void *)(r2 + i));
    __m128i d = _mm_loadu_si128((const __m128i *)(const void *)(r3 + i));
    __m128i ab0 = _mm_unpacklo_epi8(a, b), ab1 = _mm_unpackhi_epi8(a, b);
    __m128i cd0 = _mm_unpacklo_epi8(c, d), cd1 = _mm_unpackhi_epi8(c, d);
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i), _mm_unpacklo_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 16), _mm_unpackhi_epi16(ab0, cd0));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 32), _mm_unpacklo_epi16(ab1, cd1));
    _mm_storeu_si128((__m128i *)(void *)(dst + 4 * i + 48), _mm_unpackhi_epi16(ab1, cd1));
  }
#endif
  for (; i < n; i++) {
    dst[4 * i] = r0[i];
    dst[4 * i + 1] = r1[i];
    dst[4 * i + 2] = r2[i];
    dst[4 * i + 3] = r3[i];
  }
}

/* Pixels [p0, p1) of im2col row k (c, kh, kw) into row. */
#if defined(__x86_64__)
/* dst[q] = src[2q] for q < n: the low bytes of 16-bit lanes (vpmovwb), 32 at
 * a time; the loads are masked to the bytes read. */
__attribute__((target("avx512f,avx512bw,avx512vl"))) static void gather2_avx512(const uint8_t *src,
                                                                      int64_t n, uint8_t *dst) {
  int64_t q = 0;
  for (; q + 32 <= n; q += 32)
    _mm256_storeu_si256((__m256i *)(void *)(dst + q),
                        _mm512_cvtepi16_epi8(_mm512_maskz_loadu_epi8(~0ull >> 1, src + 2 * q)));
  if (q < n) {
    int64_t r = n - q; /* 1..31 */
    __m512i v = _mm512_maskz_loadu_epi8((1ull << (2 * r - 1)) - 1, src + 2 * q);
    _mm256_mask_storeu_epi8(dst + q, (__mmask32)((1u << r) - 1), _mm512_cvtepi16_epi8(v));
  }
}
#endif

static void im2col_row(const x4_job *j, int64_t k, int64_t p0, int64_t p1, uint8_t *row) {
  const nbl_conv_geom *g = j->g;
  int64_t OW = g->out[1], s0 = g->s[0], s1 = g->s[1];
  int64_t c = k / g->k_sz, t = k % g->k_sz, kh = t / g->k[1], kw = t % g->k[1];
  /* the padded image: output (oh, ow) of tap (kh, kw) reads (oh*s0 + kh*d0, ow*s1 + kw*d1) */
  const uint8_t *xc = j->x + c * j->Hp * j->Wp + kh * g->d[0] * j->Wp + kw * g->d[1];
  for (int64_t pix = p0; pix < p1;) {
    int64_t oh = pix / OW, ow = pix % OW, n = OW - ow < p1 - pix ? OW - ow : p1 - pix;
    const uint8_t *src = xc + oh * s0 * j->Wp + ow * s1;
    uint8_t *dst = row + (pix - p0);
    if (s1 == 1) {
      memcpy(dst, src, (size_t)n);
    } else {
#if defined(__x86_64__)
      if (s1 == 2 && j->gather2) {
        gather2_avx512(src, n, dst);
        pix += n;
        continue;
      }
#endif
      for (int64_t q = 0; q < n; q++) dst[q] = src[q * s1];
    }
    pix += n;
  }
}

/* Group k4 of pixels [p0, p1) (p1 - p0 a multiple of 32, at most j->pb)
 * into the panels at X4 (pixel p0 first); tmp holds 4 * j->pb bytes. */
static void x4_fill(const x4_job *j, int64_t k4, int64_t p0, int64_t p1, uint8_t *X4,
                    uint8_t *tmp) {
  const nbl_conv_geom *g = j->g;
  int64_t n = p1 - p0, nv = j->P - p0 < n ? j->P - p0 : n; /* real pixels */
  if (nv < 0) nv = 0;
  const uint8_t *r[4];
  for (int q = 0; q < 4; q++) {
    int64_t k = 4 * k4 + q;
    uint8_t *row = tmp + q * j->pb;
    r[q] = row;
    if (k >= j->Kg) {
      memset(row, j->pad, (size_t)n);
      continue;
    }
    if (j->xf) /* direct: k is the channel */
      nbl_i4_quantize_u8(&j->q, j->xf + k * g->in_sz + p0, row, (size_t)nv,
                         (uint64_t)(j->xf_index0 + k * g->in_sz + p0), j->off);
    else if (j->pointwise && nv == n)
      r[q] = j->x + k * g->in_sz + p0;
    else if (j->pointwise)
      memcpy(row, j->x + k * g->in_sz + p0, (size_t)nv);
    else
      im2col_row(j, k, p0, p0 + nv, row);
    if (n > nv) memset(row + nv, j->pad, (size_t)(n - nv));
  }
  for (int64_t q = 0; q < n; q += 32)
    interleave4(r[0] + q, r[1] + q, r[2] + q, r[3] + q, X4 + (q / 32 * (j->Kp / 4) + k4) * 128,
                32);
}

/* The panels of output pixels [p0, p1) (p0 a multiple of 32) into X4. */
static void fill_block(const x4_job *j, int64_t p0, int64_t p1, uint8_t *X4, uint8_t *tmp) {
  int64_t n32 = (p1 - p0 + 31) / 32 * 32;
  for (int64_t k4 = 0; k4 < j->Kp / 4; k4++) x4_fill(j, k4, p0, p0 + n32, X4, tmp);
}

/* Output pixels [p0, p1), channels [m0, m1), from the panels at X4. */
static void product_block(const x4_job *j, int64_t p0, int64_t p1, int64_t m0, int64_t m1,
                          const uint8_t *X4, const nbl_i4_epi *e) {
  nbl_i4_epi ec;
  if (e->codes || e->res) { /* the codes and the residual are indexed like y */
    ec = *e;
    if (e->codes) ec.codes = j->u + p0;
    if (e->res) ec.res = e->res + p0;
    e = &ec;
  }
  nbl_i4_conv_gemm(j->f->isa, j->W, X4, j->a_zero, m0, m1, 0, p1 - p0, NULL, j->y + p0, j->P, e);
}

static void conv_block(const x4_job *j, int64_t p0, int64_t p1, int64_t m0, int64_t m1,
                       uint8_t *X4, uint8_t *tmp, const nbl_i4_epi *e) {
  fill_block(j, p0, p1, X4, tmp);
  product_block(j, p0, p1, m0, m1, X4, e);
}

static _Atomic long g_range_stops; /* range-only passes that stopped early */
long nbl_i4_range_stops(void) { return atomic_load(&g_range_stops); }

/* Merges the task's range so far into the shared one; 1 when that spans the
 * activation bounds [lo, hi] (the pass can stop: every output lies there). */
static int bounds_reached(x4_job *j, const nbl_i4_range *rg) {
  range_merge(&j->range, rg);
  if (atomic_load(&j->range.lo) > j->e.lo || atomic_load(&j->range.hi) < j->e.hi) return 0;
  atomic_fetch_add(&g_range_stops, 1);
  return 1;
}

static void conv_tasks(void *arg, int64_t b, int64_t e) {
  x4_job *j = arg;
  /* shared panels (two phases): only the fill buffer; else a block's panels too */
  uint8_t *X4 = j->X4all ? NULL : malloc((size_t)(j->Kp * j->pb)), *tmp = malloc((size_t)(4 * j->pb));
  if ((!j->X4all && !X4) || !tmp) {
    free(X4);
    free(tmp);
    j->oom = 1;
    return;
  }
  nbl_i4_range rg = {INFINITY, -INFINITY, 0};
  nbl_i4_epi ep = j->e;
  ep.range = j->e.codes ? NULL : &rg; /* the bytes pass: the range pass found it */
  for (int64_t t = b; t < e; t++) {
    if (j->stop_at_bounds && bounds_reached(j, &rg)) break;
    if (j->bands) { /* thread t's band of pixels (32-aligned), all channels */
      int64_t q0, q1;
      nbl_band(j->P, t, j->bands, 32, &q0, &q1);
      for (int64_t p0 = q0; p0 < q1; p0 += j->pb) {
        if (j->stop_at_bounds && p0 > q0 && bounds_reached(j, &rg)) break;
        int64_t p1 = p0 + j->pb < q1 ? p0 + j->pb : q1;
        uint8_t *X4b = j->X4all ? j->X4all + p0 / 32 * j->Kp * 32 : NULL;
        if (!X4b)
          conv_block(j, p0, p1, 0, j->W->M, X4, tmp, &ep);
        else if (j->phase == 1) /* shared panels, by band: fill */
          fill_block(j, p0, p1, X4b, tmp);
        else /* products from them */
          product_block(j, p0, p1, 0, j->W->M, X4b, &ep);
      }
    } else if (j->phase == 1) { /* fill a chunk of k quads of a block of the shared panels */
      int64_t p0 = t / j->nkc * j->pb, p1 = p0 + j->pb < j->P ? p0 + j->pb : j->P, k0, k1;
      nbl_band(j->Kp / 4, t % j->nkc, j->nkc, 1, &k0, &k1);
      for (int64_t k4 = k0; k4 < k1; k4++)
        x4_fill(j, k4, p0, p0 + (p1 - p0 + 31) / 32 * 32, j->X4all + p0 / 32 * j->Kp * 32, tmp);
    } else {
      int64_t pi = t / j->nmc, mi = t % j->nmc;
      int64_t p0 = pi * j->pb, p1 = p0 + j->pb < j->P ? p0 + j->pb : j->P;
      int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->W->M ? m0 + j->mc : j->W->M;
      if (j->X4all) /* phase 2: products from the shared panels */
        product_block(j, p0, p1, m0, m1, j->X4all + p0 / 32 * j->Kp * 32, &ep);
      else
        conv_block(j, p0, p1, m0, m1, X4, tmp, &ep);
    }
  }
  if (j->phase != 1) range_merge(&j->range, &rg);
  free(X4);
  free(tmp);
}

/* Depthwise: the FP32 depthwise kernel (gemm.c) run on the codes. Its input
 * rows are the activation codes minus the zero point as floats, quantized
 * row by row as the kernel asks for them; its weights are the weight codes
 * as floats. Every product and partial sum is an integer below 2^24 in
 * magnitude (|u - a_zero| <= 255, |w| <= 128, at most 64 taps), so the
 * float sums are exactly the integer accumulators, in any order; the
 * epilogue then applies the same sc * acc + bias and activation as the GEMM
 * path. */
typedef struct dw_job {
  const fused *f;
  const nbl_conv_geom *g;
  nbl_i4_quantizer q;
  const uint8_t *u; /* non-NULL: the input as activation bytes u, centered as u - ubias */
  int ubias;
  const float *x;
  const float *bias;
  int64_t C, H, W;
  float sc;
  shared_range range;
} dw_job;

static void dw_load_row(void *arg, int64_t n, int64_t c, int64_t ih, float *row) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih) * j->W;
  if (j->u)
    nbl_i4_codes_centered_rows(j->u + i0, (size_t)j->W, 1, row, (size_t)j->W, j->ubias);
  else
    nbl_i4_quantize_centered(&j->q, j->x + i0, row, (size_t)j->W, (uint64_t)i0);
}

static void dw_load_rows(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t ih1, float *dst,
                         int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  if (j->u) {
    nbl_i4_codes_centered_rows(j->u + i0, (size_t)j->W, (size_t)(ih1 - ih0), dst, (size_t)ld,
                               j->ubias);
    return;
  }
  nbl_i4_quantize_centered_rows(&j->q, j->x + i0, (size_t)j->W, (size_t)(ih1 - ih0), dst,
                                (size_t)ld, (uint64_t)i0);
}

static void dw_load_rows2(void *arg, int64_t n, int64_t c, int64_t ih0, int64_t count,
                          int64_t step, float *ev, float *od, int64_t ld) {
  const dw_job *j = arg;
  int64_t i0 = ((n * j->C + c) * j->H + ih0) * j->W;
  if (j->u) {
    nbl_i4_codes_centered_deint2(j->u + i0, (size_t)j->W, (size_t)count, (size_t)(step * j->W), ev,
                                 od, (size_t)ld, j->ubias);
    return;
  }
  nbl_i4_quantize_centered_deint2(&j->q, j->x + i0, (size_t)j->W, (size_t)count,
                                  (size_t)(step * j->W), ev, od, (size_t)ld, (uint64_t)i0);
}

static void dw_finish(void *arg, int64_t n, int64_t m, float *y, int64_t count) {
  (void)n;
  dw_job *j = arg;
  nbl_i4_range rg = {INFINITY, -INFINITY, 0};
  epilogue_f(j->f, y, count, j->sc, j->bias ? j->bias[m] : 0.0f, &rg);
  range_merge(&j->range, &rg);
}

/* 3x3 depthwise layers (dilation 1, strides 1 or 2 both ways) on larger
 * planes: output rows straight from the loaded phase planes, a block of 4
 * rows x 32 columns in registers. Each input vector is loaded once for all
 * the block's rows that read it (a stride-1 row serves up to three), where
 * the plane kernel loads it once per tap and output row; the epilogue of
 * epi_f_avx512 then runs on the sums in registers and the block is stored
 * once, with no pass over the plane to copy it out and another to finish
 * it. The sums are exact integers (codes times weight codes), so the order
 * and the fused multiply-adds change nothing: bit-identical to the plane
 * kernel and finish. */
static _Atomic int g_dw_rows_off; /* tests: the plane kernel and finish instead */
static _Atomic long g_dw_rows_runs;
void nbl_i4_set_dw_rows(int on) { atomic_store(&g_dw_rows_off, !on); }
long nbl_i4_dw_rows_runs(void) { return atomic_load(&g_dw_rows_runs); }

#if defined(__x86_64__)
typedef struct dw3_epi {
  __m512 w[9];
  i4_epi ep;
} dw3_epi;

/* Output rows oh..oh+RB-1 (of the phase planes p), columns ow..ow+31 (the
 * lanes of m0, m1), to y (row oh, column 0) with OW columns a row. */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_block(const nbl_dw_phases *p, const int R, const int S, const int RB, int64_t oh, int64_t ow,
          __mmask16 m0, __mmask16 m1, dw3_epi *e, float *y, int64_t OW) {
  __m512 a0[4], a1[4];
#pragma GCC unroll 4
  for (int o = 0; o < RB; o++) a0[o] = a1[o] = _mm512_setzero_ps();
#pragma GCC unroll 16
  for (int pr = 0; pr < (RB - 1) * R + 3; pr++) { /* padded row oh * R + pr */
    const float *row = p->ph + (pr % R) * S * p->plane + (oh + pr / R) * p->Wp + ow;
#pragma GCC unroll 3
    for (int kw = 0; kw < 3; kw++) {
      const float *src = row + (kw % S) * p->plane + kw / S;
      __m512 x0 = _mm512_maskz_loadu_ps(m0, src), x1 = _mm512_maskz_loadu_ps(m1, src + 16);
#pragma GCC unroll 4
      for (int o = 0; o < RB; o++) {
        int kh = pr - o * R;
        if (kh >= 0 && kh < 3) {
          a0[o] = _mm512_fmadd_ps(x0, e->w[kh * 3 + kw], a0[o]);
          a1[o] = _mm512_fmadd_ps(x1, e->w[kh * 3 + kw], a1[o]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int o = 0; o < RB; o++) {
    float *yr = y + o * OW + ow;
    _mm512_mask_storeu_ps(yr, m0, i4_epi_apply(&e->ep, a0[o], m0));
    _mm512_mask_storeu_ps(yr + 16, m1, i4_epi_apply(&e->ep, a1[o], m1));
  }
}

/* Rows oh0..oh1-1 in blocks of 4 (the last block moved back to end at oh1,
 * recomputing rows of the block before: the same values again), fewer
 * than 4 rows one at a time. */
__attribute__((target("avx512f"), always_inline)) static inline void
dw3_rows(const nbl_dw_phases *p, const int R, int64_t oh0, int64_t oh1, dw3_epi *e, float *y,
         int64_t OW) {
  int64_t nr = oh1 - oh0;
  for (int64_t o = 0; o < nr; o += 4) {
    int64_t ob = nr < 4 ? o : o + 4 <= nr ? o : nr - 4;
    for (int64_t ow = 0; ow < OW; ow += 32) {
      __mmask16 m0 = nbl_tail_mask(OW - ow), m1 = nbl_tail_mask(OW - ow > 16 ? OW - ow - 16 : 0);
      if (nr < 4)
        for (int64_t i = o; i < nr; i++) dw3_block(p, R, R, 1, oh0 + i, ow, m0, m1, e, y + i * OW, OW);
      else
        dw3_block(p, R, R, 4, oh0 + ob, ow, m0, m1, e, y + ob * OW, OW);
    }
  }
}

__attribute__((target("avx512f"))) static void dw3_rows_s1(const nbl_dw_phases *p, int64_t oh0,
                                                          int64_t oh1, dw3_epi *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 1, oh0, oh1, e, y, OW);
}

__attribute__((target("avx512f"))) static void dw3_rows_s2(const nbl_dw_phases *p, int64_t oh0,
                                                          int64_t oh1, dw3_epi *e, float *y,
                                                          int64_t OW) {
  dw3_rows(p, 2, oh0, oh1, e, y, OW);
}
#endif

/* nbl_dw_hooks.rows for the geometries above (set only where AVX-512 runs) */
#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int dw_rows(void *arg, const nbl_dw_phases *p,
                                                      int64_t n, int64_t m, int64_t oh0,
                                                      int64_t oh1, float *y) {
  (void)n;
  dw_job *j = arg;
  const nbl_conv_geom *g = j->g;
  const fused *f = j->f;
  float bias = j->bias ? j->bias[m] : 0.0f;
  dw3_epi e;
  for (int k = 0; k < 9; k++) e.w[k] = _mm512_set1_ps(f->dw_w[m * 9 + k]);
  i4_epi_init(&e.ep, f, j->sc, bias);
  if (p->R == 1) dw3_rows_s1(p, oh0, oh1, &e, y, g->out[1]);
  else dw3_rows_s2(p, oh0, oh1, &e, y, g->out[1]);
  nbl_i4_range rg = i4_epi_range(&e.ep);
  range_merge(&j->range, &rg);
  return 1;
}
#else
static int dw_rows(void *arg, const nbl_dw_phases *p, int64_t n, int64_t m, int64_t oh0,
                   int64_t oh1, float *y) {
  (void)arg, (void)p, (void)n, (void)m, (void)oh0, (void)oh1, (void)y;
  return 0;
}
#endif

/* 1 when dw_rows takes the layer of geometry g */
static int dw_rows_wanted(const nbl_conv_geom *g) {
  return have_vnni() && !atomic_load(&g_dw_rows_off) && g->k[0] == 3 && g->k[1] == 3 &&
         g->d[0] == 1 && g->d[1] == 1 && g->s[0] == g->s[1] && (g->s[0] == 1 || g->s[0] == 2);
}

/* Depthwise on small planes, 16 channels at a time. The plane kernel above
 * pays per plane (row loads, tap set-up, copy-out) what a 7x7 or 14x14
 * plane barely amortizes, and MobileNetV2's late layers have hundreds of
 * them. Here one task takes a block of 16 channels: their input codes go
 * (same loaders, same values) into a padded tile laid out [row][col][16],
 * every output pixel is then one vector of 16 channels summed over the taps
 * with per-channel weight vectors, and the epilogue (sc * acc + bias,
 * activation, range) runs on those vectors before they are written back
 * plane by plane. The sums are the same exact integers as in the plane
 * kernel, so the outputs are bit-identical. */
static _Atomic int g_dwb_mode = -1; /* -1 by plane size, 0 never, 1 always (tests) */
static _Atomic long g_dwb_runs;
void nbl_i4_set_dw_blocked(int mode) { atomic_store(&g_dwb_mode, mode < 0 ? -1 : mode != 0); }
long nbl_i4_dw_blocked_runs(void) { return atomic_load(&g_dwb_runs); }

typedef struct dwb_job {
  dw_job *dj;
  const nbl_conv_geom *g;
  float *y;
  int64_t Hp, Wp, blocks; /* padded tile rows and columns; channel blocks per image */
  _Atomic int oom;
} dwb_job;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void dwb_tasks(void *arg, int64_t b, int64_t e) {
  dwb_job *J = arg;
  dw_job *dj = J->dj;
  const nbl_conv_geom *g = J->g;
  const fused *f = dj->f;
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1], C = g->C;
  int64_t KH = g->k[0], KW = g->k[1], HW = H * W, P = OH * OW, Wp = J->Wp;
  int64_t sh = g->s[0] * Wp, sw = g->s[1];
  int nt = (int)(KH * KW);
  float *in = malloc(sizeof(float) * (size_t)(16 * HW));
  float *T = calloc((size_t)(J->Hp * Wp * 16), sizeof(float)); /* the padding stays 0 */
  float *O = malloc(sizeof(float) * (size_t)(16 * P));
  if (!in || !T || !O) {
    atomic_store(&J->oom, 1);
    free(in), free(T), free(O);
    return;
  }
  int64_t off[NBL_DW_MAX_TAPS]; /* tap (kh, kw) of output (0, 0), in tile pixels */
  for (int64_t kh = 0; kh < KH; kh++)
    for (int64_t kw = 0; kw < KW; kw++) off[kh * KW + kw] = kh * g->d[0] * Wp + kw * g->d[1];
  const __m512 zero = _mm512_setzero_ps();
  i4_epi ep; /* the bias and NaN flag set per block of channels */
  i4_epi_init(&ep, f, dj->sc, 0.0f);
  __m512 wv[NBL_DW_MAX_TAPS];
  for (int64_t u = b; u < e; u++) {
    int64_t n = u / J->blocks, c0 = u % J->blocks * 16, nc = C - c0 < 16 ? C - c0 : 16;
    __mmask16 cm = nbl_tail_mask(nc);
    dw_load_rows(dj, n, c0, 0, nc * H, in, W); /* the nc planes follow each other */
    nbl_planes_to_tile(in, nc, H, W, T, Wp, g->pb[0], g->pb[1]);
    for (int k = 0; k < nt; k++) wv[k] = _mm512_loadu_ps(f->dw_wt + (c0 * nt + k * 16));
    ep.vb = dj->bias ? _mm512_maskz_loadu_ps(cm, dj->bias + c0) : zero;
    /* a NaN needs a non-finite scale or bias (b - b is NaN for +-inf, NaN) */
    ep.maybe_nan = !isfinite(dj->sc) ||
                   _mm512_mask_cmp_ps_mask(cm, _mm512_sub_ps(ep.vb, ep.vb), zero, _CMP_NEQ_UQ);
    for (int64_t oh = 0; oh < OH; oh++) {
      const float *trow = T + oh * sh * 16;
      float *orow = O + oh * OW * 16;
      int64_t ow = 0;
      for (; ow < OW; ow += 4) {
        /* a last block of fewer than 4 pixels moves back to end at OW
         * (pixels of the block before computed again: the same values) */
        if (ow + 4 > OW && OW >= 4) ow = OW - 4;
        int64_t cnt = OW - ow < 4 ? OW - ow : 4;
        __m512 a[4] = {zero, zero, zero, zero};
        const float *t0 = trow + ow * sw * 16;
#define DWB_TAPS4(NT)                                                          \
  for (int k = 0; k < (NT); k++) {                                             \
    const float *t = t0 + off[k] * 16;                                         \
    a[0] = _mm512_fmadd_ps(_mm512_loadu_ps(t), wv[k], a[0]);                   \
    a[1] = _mm512_fmadd_ps(_mm512_loadu_ps(t + sw * 16), wv[k], a[1]);         \
    a[2] = _mm512_fmadd_ps(_mm512_loadu_ps(t + 2 * sw * 16), wv[k], a[2]);     \
    a[3] = _mm512_fmadd_ps(_mm512_loadu_ps(t + 3 * sw * 16), wv[k], a[3]);     \
  }
        if (cnt == 4 && nt == 9) { /* 3x3: the taps unrolled, weights in registers */
#pragma GCC unroll 9
          DWB_TAPS4(9)
        } else if (cnt == 4) {
          DWB_TAPS4(nt)
        } else {
          for (int64_t i = 0; i < cnt; i++)
            for (int k = 0; k < nt; k++)
              a[i] = _mm512_fmadd_ps(_mm512_loadu_ps(t0 + (off[k] + i * sw) * 16), wv[k], a[i]);
        }
#undef DWB_TAPS4
        for (int64_t i = 0; i < cnt; i++)
          _mm512_storeu_ps(orow + (ow + i) * 16, i4_epi_apply(&ep, a[i], cm));
      }
    }
    nbl_tile_to_planes(O, P, nc, J->y + (n * C + c0) * P);
  }
  nbl_i4_range rg = i4_epi_range(&ep);
  range_merge(&dj->range, &rg);
  free(in), free(T), free(O);
}
#endif

/* 1 when the depthwise layer of geometry g runs 16 channels at a time. */
static int dw_blocked(const nbl_conv_geom *g) {
#if defined(__x86_64__)
  return have_vnni() && nbl_dw_blocked_wanted(g, atomic_load(&g_dwb_mode));
#else
  (void)g;
  return 0;
#endif
}

static nbl_status run_dw_blocked(nbl_kctx *c, const nbl_conv_geom *g, dw_job *dj, float *y) {
#if defined(__x86_64__)
  dwb_job J = {.dj = dj, .g = g, .y = y, .blocks = (g->C + 15) / 16};
  nbl_dw_tile_dims(g, &J.Hp, &J.Wp);
  atomic_init(&J.oom, 0);
  nbl_parallel_for(c, g->N * J.blocks, 1, dwb_tasks, &J);
  if (atomic_load(&J.oom)) return NBL_ERR_OUT_OF_MEMORY;
  atomic_fetch_add(&g_dwb_runs, 1);
  return NBL_OK;
#else
  (void)c, (void)g, (void)dj, (void)y;
  return NBL_ERR_UNSUPPORTED;
#endif
}

/* A node fed activation bytes (X->codes_for == f) has no floats to fall back
 * on: the producer only sends them when this node takes the depthwise path. */
static nbl_status literal_or_fail(nbl_kctx *c, fused *f, const nbl_q4_params *p) {
  if (c->in[0]->codes_for == f)
    return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes received where floats are needed");
  return run_literal(c, f, p);
}

static _Atomic long g_code_links; /* runs that passed activation bytes to their consumer */
long nbl_i4_code_links(void) { return atomic_load(&g_code_links); }
/* Outputs of at least this many elements go as bytes. The second product
 * pass costs about what the consumer saves on tensors that stay in cache;
 * measured on MobileNetV2 it pays only where the floats would go out to
 * memory (its 96 x 112 x 112 expansion: 1.2M elements, 4.8 MB). */
static _Atomic long long g_link_min = 1 << 20;
void nbl_i4_set_code_link_min(long long n) { atomic_store(&g_link_min, n); }

/* The products of xj for the linked consumer G: a pass for the range of the
 * output, then one writing G's activation bytes in place of the floats (y's
 * buffer), the output tensor marked for G. 0 (nothing written) when the
 * range is not finite: the caller then writes floats. */
static int emit_codes(nbl_kctx *c, x4_job *xj, fused *G, int64_t ny, int64_t tasks) {
  /* with a clamp to finite bounds and no way to a NaN (finite scale and
   * biases), the range is final once it spans the bounds */
  const nbl_i4_epi *e = &xj->e;
  int stop = e->act && !e->res && isfinite(e->lo) && isfinite(e->hi) && isfinite(e->sc);
  for (int64_t m = 0; stop && e->bias && m < xj->W->M; m++) stop = isfinite(e->bias[m]);
  xj->stop_at_bounds = stop;
  xj->e.no_store = 1;
  nbl_parallel_for(c, tasks, 1, conv_tasks, xj);
  xj->e.no_store = 0;
  xj->stop_at_bounds = 0;
  float lo = atomic_load(&xj->range.lo), hi = atomic_load(&xj->range.hi);
  if (atomic_load(&xj->range.nan) || !isfinite(lo) || !isfinite(hi) || lo > hi) return 0;
  nbl_q4_params pg;
  params_from_range(&G->xcfg, ny, lo, hi, &pg); /* as G would from the range */
  nbl_i4_quantizer qg;
  nbl_i4_quantizer_init(&qg, &G->xcfg, &pg);
  xj->u = (uint8_t *)(void *)xj->y;
  xj->e.codes = xj->u;
  xj->e.q = &qg;
  xj->e.off = nbl_i4_act_offset(&pg);
  nbl_parallel_for(c, tasks, 1, conv_tasks, xj);
  xj->e.codes = NULL;
  xj->e.q = NULL;
  nbl_rt_tensor *yt = nbl_kctx_out(c, 0);
  yt->codes_for = G;
  yt->code_scale = pg.scale;
  yt->code_zero = pg.zero;
  yt->code_qmin = pg.qmin;
  yt->code_qmax = pg.qmax;
  yt->code_off = xj->e.off;
  atomic_fetch_add(&g_code_links, 1);
  return 1;
}

static _Atomic long g_res_runs; /* runs that added a fused residual in the epilogue */
long nbl_i4_residual_runs(void) { return atomic_load(&g_res_runs); }

static nbl_status run_conv(nbl_kctx *c, fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *B = c->n_in > 2 ? c->in[2] : NULL;
  nbl_conv_geom g;
  if (X->rank != 4) return literal_or_fail(c, f, p);
  nbl_status st = nbl_conv_geom_init(c, &g, X, f->wdims + 2, 0);
  if (st != NBL_OK) return st;
  g.group = f->groups;
  g.M = f->wdims[0];
  if (g.C != f->wdims[1] * g.group || (B && (B->dtype != NBL_DT_FLOAT || B->numel != g.M)))
    return literal_or_fail(c, f, p);
  int64_t od[4] = {g.N, g.M, g.out[0], g.out[1]};
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, 4, od))) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  int64_t ny = g.N * g.M * g.out_sz;
  if (ny == 0) return NBL_OK;
  /* a fused Add: in the epilogue when the residual has the output's shape,
   * else conv + bias here and the Add (broadcasting) and activation after */
  const float *res = NULL;
  int post = 0;
  if (f->res_add) {
    const nbl_rt_tensor *R = c->n_in > 4 ? c->in[4] : NULL;
    int same = R && R->dtype == NBL_DT_FLOAT && R->rank == 4 && R->data != y;
    for (int d = 0; same && d < 4; d++) same = R->dims[d] == od[d];
    if (same) res = R->data;
    else post = 1;
  }
  int off = nbl_i4_act_offset(p);
  struct {
    const float *bias;
    float sc;
    int32_t a_zero;
    uint8_t pad;
    int64_t Cg, Mg, Kg, P;
  } j = {B ? B->data : NULL, p->scale * f->w_scale, p->zero + off, (uint8_t)(p->zero + off),
         g.C / g.group, g.M / g.group, 0, g.out_sz};
  j.Kg = j.Cg * g.k_sz;
  if (j.Cg == 1 && j.Mg == 1 && f->dw_w && !f->res_add) {
    dw_job dj = {.f = f, .g = &g, .x = X->data, .bias = j.bias, .C = g.C, .H = g.in[0], .W = g.in[1],
                 .sc = j.sc};
    if (X->codes_for == f) {
      dj.u = X->data;
      dj.ubias = X->code_off + X->code_zero;
    }
    nbl_i4_quantizer_init(&dj.q, &f->xcfg, p);
    range_init(&dj.range);
    nbl_dw_hooks h = {dw_load_row, dw_load_rows, dw_load_rows2, dw_finish, NULL, &dj,
                      !have_vnni()};
    int rows = dw_rows_wanted(&g);
    if (rows) h.rows = dw_rows;
    st = dw_blocked(&g) ? run_dw_blocked(c, &g, &dj, y)
                        : nbl_conv_dw_hooked(c, &g, f->dw_w, y, &h);
    if (st == NBL_OK && rows && !dw_blocked(&g)) atomic_fetch_add(&g_dw_rows_runs, 1);
    if (st == NBL_OK) {
      range_publish(nbl_kctx_out(c, 0), &dj.range);
      return NBL_OK;
    }
    if (st == NBL_ERR_OUT_OF_MEMORY) return nbl_kerr(c, st, "out of memory");
  }
  if (X->codes_for == f)
    return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes received where floats are needed");
  /* the output goes to the linked depthwise consumer as activation bytes:
   * one product pass for the range (the consumer's scale), one writing the
   * bytes; the panels are filled once */
  fused *G = f->link;
  int emit = G && !post && G->dw_w && g.N == 1 && g.group == 1 && f->isa == NBL_I4_VNNI &&
             !atomic_load(&g_range_off) && ny >= atomic_load(&g_link_min);
  int threads = c->threads > 0 ? c->threads : 1;
  int bands = nbl_pixel_bands(threads, j.P);
  int direct = nbl_conv_pointwise(&g);
  /* 1x1 inputs are quantized while laid out; others go to padded bytes first */
  int64_t Hp = g.in[0] + g.pb[0], Wp = g.in[1] + g.pb[1];
  int64_t need_h = (g.out[0] - 1) * g.s[0] + (g.k[0] - 1) * g.d[0] + 1;
  int64_t need_w = (g.out[1] - 1) * g.s[1] + (g.k[1] - 1) * g.d[1] + 1;
  if (Hp < need_h) Hp = need_h;
  if (Wp < need_w) Wp = need_w;
  size_t xbytes = (size_t)(g.N * g.C * Hp * Wp);
  uint8_t *xu = direct ? NULL : malloc(xbytes ? xbytes : 1);
  if (!direct && !xu) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (!direct) {
    memset(xu, j.pad, xbytes);
    quantize_padded(c, &f->xcfg, p, X, xu, Hp, Wp, g.pb[0], g.pb[1], off);
  }
  const nbl_i4_rows *W0 = &f->rows[0];
  x4_job xj = {.g = &g, .off = off, .Kg = j.Kg, .Kp = W0->Kp,
               .P = j.P, .Hp = Hp, .Wp = Wp, .pointwise = direct, .pad = j.pad, .f = f, .a_zero = j.a_zero,
               .e = {j.sc, NULL, f->act && !post, f->act_lo, f->act_hi, NULL}, .bands = bands};
  nbl_i4_quantizer_init(&xj.q, &f->xcfg, p);
  range_init(&xj.range);
  xj.gather2 = have_vnni();
  /* blocks of pixels whose bytes (Kp x pb) stay in L2 across all output
   * channels; without bands, output channels split too when the blocks
   * alone would leave a thread idle */
  int64_t pb = (int64_t)(192 * 1024) / W0->Kp / 32 * 32;
  xj.pb = pb < 32 ? 32 : pb > 1024 ? 1024 : pb;
  int64_t npb = (j.P + xj.pb - 1) / xj.pb;
  nbl_split_rows(j.Mg, NBL_I4_CR,
                 npb >= 2 * threads || threads == 1 ? 1 : (2 * threads + npb - 1) / npb, &xj.nmc,
                 &xj.mc);
  if ((!bands && xj.nmc > 1) || emit) {
    /* the panels of few blocks are filled by k chunks too, all threads busy */
    int64_t want = (4 * threads + npb - 1) / npb;
    xj.nkc = want < W0->Kp / 4 ? want : W0->Kp / 4;
    xj.X4all = malloc((size_t)(W0->Kp * ((j.P + 31) / 32 * 32)));
    if (!xj.X4all) {
      free(xu);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  }
  for (int64_t n = 0; n < g.N && !xj.oom; n++)
    for (int64_t gi = 0; gi < g.group && !xj.oom; gi++) {
      int64_t first = (n * g.C + gi * j.Cg) * g.in_sz; /* the group's first input element */
      xj.x = xu ? xu + (n * g.C + gi * j.Cg) * Hp * Wp : NULL;
      xj.xf = xu ? NULL : (const float *)X->data + first;
      xj.xf_index0 = first;
      xj.W = &f->rows[gi];
      xj.y = y + (n * g.M + gi * j.Mg) * j.P;
      xj.e.bias = j.bias ? j.bias + gi * j.Mg : NULL;
      xj.e.res = res ? res + (n * g.M + gi * j.Mg) * j.P : NULL;
      if (xj.X4all) {
        xj.phase = 1;
        nbl_parallel_for(c, bands ? bands : npb * xj.nkc, 1, conv_tasks, &xj);
        xj.phase = 2;
      }
      int64_t tasks = bands ? bands : npb * xj.nmc;
      if (emit && !xj.oom && emit_codes(c, &xj, G, ny, tasks)) continue;
      nbl_parallel_for(c, tasks, 1, conv_tasks, &xj);
    }
  free(xu);
  free(xj.X4all);
  if (xj.oom) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (post) return finish_residual(c, f);
  if (res) atomic_fetch_add(&g_res_runs, 1);
  range_publish(nbl_kctx_out(c, 0), &xj.range);
  return NBL_OK;
}

/* ------------------------------------------------------------------ Gemm / MatMul */

typedef struct mm_job {
  fused *f;
  const uint8_t *A;
  int64_t lda, N;
  int32_t a_zero;
  int32_t *C;
} mm_job;

static void mm_rows(void *arg, int64_t b, int64_t e) {
  mm_job *j = arg;
  nbl_i4_gemm(j->f->isa, &j->f->packed[0], j->A, j->lda, b, e, j->a_zero, j->C, j->N);
}

static nbl_status run_mm(nbl_kctx *c, fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *Cb = f->kind == FK_GEMM && c->n_in > 2 ? c->in[2] : NULL;
  const nbl_i4_weights *W = &f->packed[0];
  int64_t K = W->K, N = W->N, M;
  int64_t od[NBL_MAX_RANK];
  int orank;
  if (f->kind == FK_GEMM) {
    if (X->rank != 2 || X->dims[1] != K) return run_literal(c, f, p);
    M = X->dims[0];
    od[0] = M;
    od[1] = N;
    orank = 2;
  } else {
    if (X->rank < 1 || X->dims[X->rank - 1] != K) return run_literal(c, f, p);
    M = K ? X->numel / K : 0;
    if (!K) {
      M = 1;
      for (int i = 0; i < X->rank - 1; i++) M *= X->dims[i];
    }
    orank = X->rank;
    for (int i = 0; i < X->rank - 1; i++) od[i] = X->dims[i];
    od[orank - 1] = N;
  }
  /* Gemm C: scalar, [N], [1,N] or [M,N]; anything else takes the literal path */
  int cmode = 0; /* 0 none, 1 scalar, 2 row, 3 full */
  if (Cb && f->beta != 0.0f) {
    if (Cb->dtype != NBL_DT_FLOAT) return run_literal(c, f, p);
    if (Cb->numel == 1) cmode = 1;
    else if (Cb->rank >= 1 && Cb->dims[Cb->rank - 1] == N && Cb->numel == N) cmode = 2;
    else if (Cb->rank == 2 && Cb->dims[0] == M && Cb->dims[1] == N) cmode = 3;
    else return run_literal(c, f, p);
  }
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, orank, od);
  if (st) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  if (M * N == 0) return NBL_OK;
  int64_t lda = W->Kp;
  uint8_t *A = malloc((size_t)(M * lda) + 1);
  int32_t *C = malloc(sizeof(int32_t) * (size_t)(M * N));
  if (!A || !C) {
    free(A);
    free(C);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int off = nbl_i4_act_offset(p);
  if (lda == K) {
    quantize_x(c, &f->xcfg, p, X->data, A, M * K, off);
  } else {
    const float *x = X->data;
    nbl_i4_quantizer q;
    nbl_i4_quantizer_init(&q, &f->xcfg, p);
    for (int64_t m = 0; m < M; m++) {
      nbl_i4_quantize_u8(&q, x + m * K, A + m * lda, (size_t)K, (uint64_t)(m * K), off);
      memset(A + m * lda + K, 0, (size_t)(lda - K));
    }
  }
  mm_job j = {f, A, lda, N, p->zero + off, C};
  nbl_parallel_for(c, M, NBL_I4_MR * 2, mm_rows, &j);
  float sc = p->scale * f->w_scale;
  if (f->kind == FK_GEMM) sc *= f->alpha;
  const float *cv = Cb ? Cb->data : NULL;
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      float v = sc * (float)C[m * N + n];
      if (cmode == 1) v += f->beta * cv[0];
      else if (cmode == 2) v += f->beta * cv[n];
      else if (cmode == 3) v += f->beta * cv[m * N + n];
      y[m * N + n] = act_apply(f, v);
    }
  free(A);
  free(C);
  return NBL_OK;
}

/* ------------------------------------------------------------------ the kernel */

static nbl_status k_fused_int4(nbl_kctx *c) {
  fused *f = (fused *)(void *)c->node;
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  if (!X || !W) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X or W is missing");
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s", nbl_dtype_name(X->dtype));
  float alpha = 0.0f;
  if (f->xcfg.scale_source == NBL_Q4_SCALE_PACT) {
    const nbl_rt_tensor *a = c->n_in > 3 ? c->in[3] : NULL;
    if (!a || a->dtype != NBL_DT_FLOAT || a->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "alpha must be a float32 scalar");
    alpha = ((const float *)a->data)[0];
  }
  nbl_q4_params p;
  if (X->codes_for == f) { /* activation bytes from the producer (link_codes) */
    p = (nbl_q4_params){.scale = X->code_scale, .zero = X->code_zero, .qmin = X->code_qmin,
                        .qmax = X->code_qmax};
    if (W->data != f->wdata || !f->dw_w || nbl_i4_act_offset(&p) != X->code_off)
      return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes for an unprepared consumer");
    atomic_fetch_add(&g_int_runs, 1);
    return run_conv(c, f, &p);
  }
  const char *why = "";
  float lo, hi;
  int finite;
  if (X->range_known && !atomic_load(&g_range_off)) { /* recorded by the fused node that wrote X */
    finite = 1;
    lo = X->range_lo;
    hi = X->range_hi;
    atomic_fetch_add(&g_range_reuses, 1);
  } else {
    finite = scan_x_par(c, X, &lo, &hi);
  }
  if (finite && f->xcfg.scale_source == NBL_Q4_SCALE_MAX && f->xcfg.bits >= 2 && f->xcfg.bits <= 8)
    params_from_range(&f->xcfg, X->numel, lo, hi, &p);
  else if (nbl_q4_choose(&f->xcfg, X->data, (size_t)X->numel, alpha, &p, &why) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "activation quantizer: %s", why);
  if (W->data != f->wdata || (!f->packed && !f->rows)) {
    if (pack(f, W) != 0) return run_literal(c, f, &p);
  }
  if (!finite) return run_literal(c, f, &p);
  atomic_fetch_add(&g_int_runs, 1);
  return f->kind == FK_CONV ? run_conv(c, f, &p) : run_mm(c, f, &p);
}

long nbl_i4_integer_runs(void) { return atomic_load(&g_int_runs); }

static const nbl_op_def fused_def = {"ai.nibble", "FusedInt4", 1, 1, k_fused_int4, k_fused_int4};

/* ------------------------------------------------------------------ planning */

static void fused_free(fused *f) {
  if (!f) return;
  free_packed(f);
  free(f);
}

void nbl_i4_fusion_free(nbl_i4_fusion *fu) {
  if (!fu) return;
  for (int i = 0; i < fu->n_nodes; i++) fused_free(fu->by_node[i]);
  free(fu->by_node);
  free(fu);
}



/* If the op's only output feeds exactly one Relu or constant-bound Clip and
 * nothing else, the fused node produces that node's output directly. */
static void fuse_activation(const nbl_model *m, const nbl_graph *g, fused *f, const nbl_node *n) {
  nbl_id an;
  float lo, hi;
  if (!nbl_fuse_find_activation(m, g, n, &an, &lo, &hi)) return;
  const nbl_node *a = &g->nodes[an];
  f->act = 1;
  f->act_lo = lo;
  f->act_hi = hi;
  f->act_node = an;
  f->node.n_outputs = a->n_outputs;
  f->node.outputs = a->outputs;
}

/* Try to build the fused state for consumer node id; NULL if the pattern does not apply. */
static fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id) {
  const nbl_node *n = &g->nodes[id];
  int kind;
  if (nbl_fuse_is_op(n, "", "Conv")) kind = FK_CONV;
  else if (nbl_fuse_is_op(n, "", "Gemm")) kind = FK_GEMM;
  else if (nbl_fuse_is_op(n, "", "MatMul")) kind = FK_MATMUL;
  else return NULL;
  if (n->n_inputs < 2 || n->n_outputs < 1) return NULL;
  const nbl_node *qx = producer(g, n->inputs[0]);
  const nbl_node *wn = producer(g, n->inputs[1]);
  if (!nbl_fuse_is_op(qx, "ai.nibble", "QuantizeInt4") || !wn || qx->n_inputs < 1 ||
      qx->inputs[0] == NBL_NONE || qx->outputs[0] != n->inputs[0])
    return NULL;
  if (nbl_model_opset(m, "ai.nibble") != 1) return NULL;
  fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->kind = kind;
  f->orig = n;
  f->qx = (nbl_id)(qx - g->nodes);
  f->wnode = (nbl_id)(wn - g->nodes);
  if (parse_q4(qx, &f->xcfg) != 0) goto no;
  f->ins[0] = qx->inputs[0];
  f->ins[2] = kind != FK_MATMUL && n->n_inputs > 2 ? n->inputs[2] : NBL_NONE;
  f->ins[3] = NBL_NONE;
  f->ins[4] = NBL_NONE;
  f->res_node = NBL_NONE;
  if (f->xcfg.scale_source == NBL_Q4_SCALE_PACT) {
    if (qx->n_inputs < 2 || qx->inputs[1] == NBL_NONE) goto no;
    f->ins[3] = qx->inputs[1];
  }
  /* weight source */
  const nbl_value *wv;
  if (nbl_fuse_is_op(wn, "ai.nibble", "QuantizeInt4")) {
    if (wn->outputs[0] != n->inputs[1] || wn->n_inputs < 1 || wn->inputs[0] == NBL_NONE ||
        (wn->n_inputs > 1 && wn->inputs[1] != NBL_NONE) || parse_q4(wn, &f->wcfg) != 0 ||
        f->wcfg.scale_source == NBL_Q4_SCALE_PACT)
      goto no;
    f->wsrc = WS_QUANT;
    wv = &g->values[wn->inputs[0]];
  } else if (nbl_fuse_is_op(wn, "", "DequantizeLinear")) {
    if (wn->outputs[0] != n->inputs[1] || wn->n_inputs < 2 || wn->inputs[0] == NBL_NONE ||
        wn->inputs[1] == NBL_NONE)
      goto no;
    const nbl_tensor *st = g->values[wn->inputs[1]].init;
    if (!st || st->dtype != NBL_DT_FLOAT || nbl_shape_numel(st->rank, st->dims) != 1) goto no;
    nbl_rt_tensor t;
    if (nbl_rt_from_ir(st, &t) != NBL_OK || !t.data) goto no;
    f->dq_scale = ((const float *)t.data)[0];
    if (wn->n_inputs > 2 && wn->inputs[2] != NBL_NONE) {
      const nbl_tensor *zt = g->values[wn->inputs[2]].init;
      if (!zt || nbl_shape_numel(zt->rank, zt->dims) != 1) goto no;
      if (nbl_rt_from_ir(zt, &t) != NBL_OK || !t.data) goto no;
      f->dq_zero = (int)nbl_rt_get_i64(&t, 0);
    }
    f->wsrc = WS_DEQUANT;
    wv = &g->values[wn->inputs[0]];
  } else {
    goto no;
  }
  if (!wv->init) goto no;
  f->ins[1] = (nbl_id)(wv - g->values);
  const nbl_tensor *wt = wv->init;
  f->wrank = wt->rank;
  for (int i = 0; i < wt->rank && i < NBL_MAX_RANK; i++) f->wdims[i] = wt->dims[i];
  f->groups = 1;
  if (kind == FK_CONV) {
    if (wt->rank != 4) goto no;
    int64_t grp = nbl_attr_int(n, "group", 1);
    if (grp <= 0 || grp > (1 << 20) || f->wdims[0] % grp) goto no;
    f->groups = (int)grp;
  } else if (kind == FK_GEMM) {
    if (wt->rank != 2 || nbl_attr_int(n, "transA", 0) != 0) goto no;
    f->trans_b = nbl_attr_int(n, "transB", 0) != 0;
    f->alpha = nbl_attr_float(n, "alpha", 1.0f);
    f->beta = nbl_attr_float(n, "beta", 1.0f);
  } else {
    if (wt->rank != 2) goto no;
  }
  nbl_rt_tensor w;
  if (nbl_rt_from_ir(wt, &w) != NBL_OK) goto no;
  if (pack(f, &w) != 0) goto no;
  f->isa = nbl_i4_best_isa();
  /* the synthetic node */
  f->node = *n;
  f->node.n_inputs = 4;
  f->node.inputs = f->ins;
  f->act_node = NBL_NONE;
  fuse_activation(m, g, f, n);
  snprintf(f->op, sizeof f->op, "Int4%s%s%s", n->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
  f->node.op_type = f->op;
  return f;
no:
  fused_free(f);
  return NULL;
}

/* A dense fused Conv (no activation of its own) whose output's only use is
 * an Add with another value r takes that Add into its epilogue, r as a fifth
 * input, and with it a Relu/Clip that alone consumes the Add's output. r
 * must be ready where the Conv runs: a graph input or initializer, or made
 * by a node before the Conv in the order (pos: node -> position; a node
 * fused away runs with its producer, earlier still). */
static void fuse_residual(const nbl_model *m, const nbl_graph *g, fused *f, const int *pos) {
  if (f->kind != FK_CONV || f->groups != 1 || f->act || f->node.n_outputs != 1) return;
  nbl_id v = f->node.outputs[0];
  if (v == NBL_NONE) return;
  const nbl_value *val = &g->values[v];
  if ((val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->n_consumers != 1 ||
      nbl_fuse_used_in_subgraphs(g, val->name))
    return;
  nbl_id an = val->consumers[0];
  const nbl_node *a = &g->nodes[an];
  if (!nbl_fuse_is_op(a, "", "Add") || a->n_inputs != 2 || a->n_outputs != 1 ||
      a->outputs[0] == NBL_NONE || a->inputs[0] == a->inputs[1])
    return;
  nbl_id r = a->inputs[0] == v ? a->inputs[1] : a->inputs[0];
  if (r == NBL_NONE) return;
  nbl_id rp = g->values[r].producer;
  nbl_id conv = (nbl_id)(f->orig - g->nodes);
  if (rp != NBL_NONE && (pos[rp] < 0 || pos[rp] >= pos[conv])) return;
  f->res_add = a;
  f->res_node = an;
  f->conv_out = v;
  f->ins[4] = r;
  f->node.n_inputs = 5;
  f->node.outputs = a->outputs;
  f->node.n_outputs = a->n_outputs;
  fuse_activation(m, g, f, a);
  snprintf(f->op, sizeof f->op, "Int4%s+Add%s%s", f->orig->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
}

/* 1 if every use of node q's outputs is by a fused node that absorbs it. */
static int absorbed(const nbl_graph *g, nbl_id q, fused *const *by_node) {
  const nbl_node *n = &g->nodes[q];
  for (int k = 0; k < n->n_outputs; k++) {
    nbl_id v = n->outputs[k];
    if (v == NBL_NONE) continue;
    const nbl_value *val = &g->values[v];
    if (val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) return 0;
    for (int i = 0; i < val->n_consumers; i++) {
      const fused *f = by_node[val->consumers[i]];
      if (!f || k != 0 || (f->qx != q && f->wnode != q)) return 0;
      for (int a = 0; a < f->orig->n_inputs; a++) /* only as the fused X or W operand */
        if (f->orig->inputs[a] == v && !(a == 0 && f->qx == q) && !(a == 1 && f->wnode == q))
          return 0;
    }
  }
  return 1;
}

/* Pairs whose tensor between them can travel as activation bytes: F (a
 * fused Conv) whose output's only use is the QuantizeInt4 of a fused G (a
 * Conv with constant weights, quantizing with the per-tensor max and
 * half-even rounding), the tensor not a graph output nor seen by a
 * subgraph. At run time F sends bytes only when G takes the depthwise path
 * (G packed its weights as such) and the products run on AVX-512 VNNI. */
static void link_codes(const nbl_graph *g, nbl_i4_fusion *fu) {
  for (int id = 0; id < fu->n_nodes; id++) {
    fused *F = fu->by_node[id];
    if (!F || F->kind != FK_CONV || F->node.n_outputs < 1 || F->node.outputs[0] == NBL_NONE)
      continue;
    nbl_id v = F->node.outputs[0];
    const nbl_value *val = &g->values[v];
    if ((val->flags & NBL_VAL_OUTPUT) || val->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, val->name))
      continue;
    nbl_id q = val->consumers[0];
    const nbl_node *qn = &g->nodes[q];
    if (!nbl_fuse_is_op(qn, "ai.nibble", "QuantizeInt4") || qn->n_outputs < 1 ||
        qn->outputs[0] == NBL_NONE)
      continue;
    const nbl_value *qv = &g->values[qn->outputs[0]];
    if ((qv->flags & NBL_VAL_OUTPUT) || qv->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, qv->name))
      continue;
    fused *G = fu->by_node[qv->consumers[0]];
    if (!G || G == F || G->kind != FK_CONV || G->qx != q || G->ins[0] != v) continue;
    if (G->xcfg.scale_source != NBL_Q4_SCALE_MAX || G->xcfg.rounding != NBL_Q4_ROUND_HALF_EVEN ||
        G->xcfg.bits < 2 || G->xcfg.bits > 8)
      continue;
    if (G->ins[1] == NBL_NONE || !g->values[G->ins[1]].init) continue;
    F->link = G;
  }
}

nbl_status nbl_i4_fuse(const nbl_model *m, const nbl_graph *g, nbl_id *order, int *n,
                       int links, nbl_i4_fusion **out) {
  *out = NULL;
  if (!m || !g || g->n_nodes == 0) return NBL_OK;
  nbl_i4_fusion *fu = calloc(1, sizeof *fu);
  if (!fu) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  fu->n_nodes = g->n_nodes;
  fu->by_node = calloc((size_t)g->n_nodes, sizeof(fused *));
  if (!fu->by_node) {
    free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int any = 0;
  unsigned char *act = calloc((size_t)g->n_nodes, 1);
  if (!act) {
    nbl_i4_fusion_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int *pos = malloc(sizeof(int) * (size_t)g->n_nodes);
  if (!pos) {
    free(act);
    nbl_i4_fusion_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int i = 0; i < g->n_nodes; i++) pos[i] = -1;
  for (int s = 0; s < *n; s++) pos[order[s]] = s;
  for (int s = 0; s < *n; s++) {
    fused *f = try_fuse(m, g, order[s]);
    if (f) {
      fu->by_node[order[s]] = f;
      any = 1;
    }
  }
  for (int s = 0; s < *n; s++) { /* residual Adds, once every fused node is known */
    fused *f = fu->by_node[order[s]];
    if (!f) continue;
    fuse_residual(m, g, f, pos);
    if (f->res_add) act[f->res_node] = 1;
    if (f->act) act[f->act_node] = 1;
  }
  free(pos);
  if (!any) {
    free(act);
    nbl_i4_fusion_free(fu);
    return NBL_OK;
  }
  /* drop quantizer nodes nothing else needs */
  int w = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s];
    const nbl_node *nd = &g->nodes[id];
    int quantizer = nbl_fuse_is_op(nd, "ai.nibble", "QuantizeInt4") || nbl_fuse_is_op(nd, "", "DequantizeLinear");
    int drop = quantizer && !fu->by_node[id] && absorbed(g, id, fu->by_node);
    for (int k = 0; drop && k < nd->n_outputs; k++)
      if (nd->outputs[k] != NBL_NONE && nbl_fuse_used_in_subgraphs(g, g->values[nd->outputs[k]].name))
        drop = 0;
    if (act[id]) drop = 1; /* a Relu/Clip or an Add computed by its fused producer */
    if (!drop) order[w++] = id;
  }
  free(act);
  *n = w;
  if (links) link_codes(g, fu);
  *out = fu;
  return NBL_OK;
}

const nbl_node *nbl_i4_fused_node(const nbl_i4_fusion *fu, nbl_id node, const nbl_op_def **def) {
  if (!fu || node < 0 || node >= fu->n_nodes || !fu->by_node[node]) return NULL;
  *def = &fused_def;
  return &fu->by_node[node]->node;
}

