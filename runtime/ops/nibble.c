/* runtime/ops/nibble.c - op family 'nibble': nibble's own ops in domain ai.nibble.
 *
 * QuantizeInt4 (version 1): per-tensor fake quantization, float in, float out.
 *   inputs:  X (float32), alpha (optional float32 scalar, the PACT clip)
 *   outputs: Y = s*(q - z) (same shape), scale (optional float32 scalar),
 *            zero_point (optional int8 scalar), codes (optional int8, X's
 *            shape: each element's code q with the zero point, and codes of
 *            their own for NaN, +Inf, -Inf: nbl_q4_codes8 in
 *            runtime/formats/int4.h; bits <= 6 only; int4-backward hands
 *            them to Int4CodedConv and Int4LogConvGrad). Y may be omitted
 *            ("") when codes is requested: codes, scale and zero_point
 *            then carry it (Y = scale * (codes - zero_point), the marks
 *            NaN, +Inf, -Inf)
 *   attributes: bits (2..8, default 4), mode (symmetric|affine),
 *            scale_source (max|sawb|fixed|pact|mse), scale (float, fixed),
 *            narrow (0/1), rounding (half_even|stochastic), seed (int)
 * The reference kernel computes the formulas of runtime/formats/int4.h literally.
 *
 * QuantizeLog (version 1): per-tensor logarithmic fake quantization (the
 * gradients' radix-4 "FP4 [1,3,0]" format), float in, float out.
 *   inputs:  X (float32), step (optional int64 scalar: the training step,
 *            mixed into the stochastic key so every step draws new numbers)
 *   outputs: Y = 0 or +-top*radix^-k (same shape), top (optional float32
 *            scalar, the largest level), codes (optional int8, X's shape:
 *            each element's code, 0 or +-(k+1), and codes of their own for NaN,
 *            +Inf, -Inf: runtime/formats/log.h; int4-backward hands it to
 *            the integer backward products). Y may be omitted ("") when
 *            codes is requested: codes and top then carry it
 *   attributes: radix (2|4|10, default 4), exp_bits (1..4, default 3),
 *            rounding (nearest|stochastic|tpr|luq), phase (0|1, tpr's grid),
 *            seed (int)
 * The math, the attribute decoder and the rounding rules are
 * runtime/formats/log.h. The reference kernel calls it element by element;
 * the fast kernel scans and rounds nearest/tpr with the vector kernels of
 * runtime/kernels/log_quant.h (bit-identical), the stochastic modes in
 * threaded chunks of the reference code (counter-based draws: identical).
 * Gradient: straight-through, dX = dY (the op sits on gradients in training
 * graphs; the rule exists so that a graph holding it stays differentiable).
 *
 * The ternary family (BitNet b1.58; formulas and attributes in
 * runtime/formats/ternary.h, decoded by nbl_tern_attrs_decode):
 * QuantizeTernary (version 1): ternary weights, fake quantization.
 *   inputs:  X (float32)
 *   outputs: Y = s * clamp(rint(X / s), -1, 1) (X's shape), scale (optional
 *            float32 scalar s = mean|X| over the finite elements, 1 when 0)
 *   gradient: QuantizeTernaryGrad (straight through where the clamp does not act)
 * QuantizeTernaryGrad (version 1): the gradient of QuantizeTernary.
 *   inputs:  dY (float32), X (float32, the forward input, dY's shape)
 *   outputs: dX = dY where |rint(X / s)| <= 1 (s from X as the forward), else 0
 * QuantizeAbsmax8 (version 1): INT8 absmax activations, fake quantization.
 *   inputs:  X (float32)
 *   outputs: Y = s * clamp(rint(X / s), -128, 127), s = max|X| / 127 (1 when 0),
 *            scale (optional float32: a scalar, or with per_row=1 X's shape
 *            with the last dim 1)
 *   attributes: per_row (0|1, default 0): one scale per row of the last axis
 *            (BitNet's per-token scale); a rank-0 X has one row
 *   gradient: dY itself (the clamp never acts on a finite value)
 * DequantizeTernary (version 1): packed ternary codes to floats, the stored
 *   form of pack-ternary.
 *   inputs:  codes (uint8, 1-D, the packed bytes), scale (float32 scalar)
 *   outputs: Y (float32, `shape`) = scale * code
 *   attributes: shape (ints, required), packing (base3|2bit, default base3):
 *            base3 five codes a byte, 2bit four (runtime/formats/ternary.h)
 *   no gradient (its input is integer codes) */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/log_quant.h"
#include "runtime/kernels/q4_train.h"
#include "runtime/formats/ternary.h"
#include "runtime/ops/nibble.h"

/* The node's attributes through the one decoder (runtime/formats/int4.h);
 * exported for QuantizeInt4Grad (runtime/ops/nibble.h). */
nbl_status nbl_q4_attrs(nbl_kctx *c, nbl_q4_config *cfg) {
  char err[256];
  nbl_status st = nbl_q4_config_decode(c->node, cfg, err, sizeof err);
  return st == NBL_OK ? NBL_OK : nbl_kerr(c, st, "%s", err);
}

/* The outputs scale and zero_point, when asked for. */
static nbl_status q4_side_outputs(nbl_kctx *c, const nbl_q4_params *p) {
  nbl_status st;
  if (c->n_out > 1 && c->out[1]) {
    if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL))) return st;
    ((float *)nbl_kctx_out(c, 1)->data)[0] = p->scale;
  }
  if (c->n_out > 2 && c->out[2]) {
    if ((st = nbl_kctx_alloc_out(c, 2, NBL_DT_INT8, 0, NULL))) return st;
    ((int8_t *)nbl_kctx_out(c, 2)->data)[0] = (int8_t)p->zero;
  }
  return NBL_OK;
}

/* Output k, QuantizeInt4's codes (int8 of x's shape), or NULL when not
 * asked for; an error for a format it does not cover. */
static nbl_status q4_codes_out(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *x, int k,
                               int8_t **codes) {
  *codes = NULL;
  if (k < 0 || c->n_out <= k || !c->out[k]) return NBL_OK;
  if (!nbl_q4_codes8_ok(cfg))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "the codes output needs bits <= 6 (got bits=%d)", cfg->bits);
  nbl_status st = nbl_kctx_alloc_out(c, k, NBL_DT_INT8, x->rank, x->dims);
  if (!st) *codes = nbl_kctx_out(c, k)->data;
  return st;
}

/* Y (output 0) allocated into *y, or *y NULL when Y is omitted with the
 * codes requested (codes not NULL: they carry Y; not written). */
static nbl_status q4_y_out(nbl_kctx *c, const nbl_rt_tensor *x, const int8_t *codes, float **y) {
  *y = NULL;
  if (codes && (c->n_out < 1 || !c->out[0])) return NBL_OK;
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims);
  if (!st) *y = nbl_kctx_out(c, 0)->data;
  return st;
}

nbl_status nbl_q4_kernel_params(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *x,
                                const nbl_rt_tensor *alpha, nbl_q4_params *p) {
  float a = 0.0f;
  if (cfg->scale_source == NBL_Q4_SCALE_PACT) {
    if (!alpha) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale_source=pact needs input alpha");
    if (alpha->dtype != NBL_DT_FLOAT || alpha->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "alpha must be a float32 scalar");
    a = ((const float *)alpha->data)[0];
  }
  const char *why = NULL;
  if (nbl_q4_choose(cfg, (const float *)x->data, (size_t)x->numel, a, p, &why) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s", why);
  return NBL_OK;
}

static nbl_status k_quantize_int4(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X is missing");
  if (x->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s",
                    nbl_dtype_name(x->dtype));
  nbl_q4_config cfg;
  nbl_status st = nbl_q4_attrs(c, &cfg);
  if (st != NBL_OK) return st;
  nbl_q4_params p;
  st = nbl_q4_kernel_params(c, &cfg, x, c->n_in > 1 ? c->in[1] : NULL, &p);
  if (st != NBL_OK) return st;
  int8_t *codes;
  float *y;
  if ((st = q4_codes_out(c, &cfg, x, 3, &codes)) || (st = q4_y_out(c, x, codes, &y))) return st;
  if (codes) nbl_q4_codes8(&cfg, &p, x->data, codes, (size_t)x->numel, 0); /* before Y: y may share x's memory */
  if (y) nbl_q4_fake_quant(&cfg, &p, (const float *)x->data, y, (size_t)x->numel, 0);
  return q4_side_outputs(c, &p);
}

/* The fast kernel (as training graphs run it, on tensors that change every
 * step): a parallel vector range scan and the vector quantizer, the same
 * values as the reference (runtime/kernels/q4_train.h); other cases (pact,
 * stochastic rounding, non-finite elements) take the reference. */
static nbl_status k_quantize_int4_fast(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  nbl_q4_config cfg;
  nbl_q4_params p;
  if (c->reference || !x || x->dtype != NBL_DT_FLOAT || nbl_q4_attrs(c, &cfg) || nbl_q4t_params(c, &cfg, x, &p))
    return k_quantize_int4(c);
  int8_t *codes;
  float *y;
  nbl_status st = q4_codes_out(c, &cfg, x, 3, &codes);
  if (!st) st = q4_y_out(c, x, codes, &y);
  if (st != NBL_OK) return st;
  nbl_q4t_fake_quant(c, &cfg, &p, x->data, y, codes, x->numel);
  return q4_side_outputs(c, &p);
}

nbl_status nbl_q4_forward(nbl_kctx *c, const nbl_q4_config *cfg, const nbl_rt_tensor *x, const float *range,
                          int codes_out) {
  if (cfg->scale_source == NBL_Q4_SCALE_PACT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "scale_source=pact needs input alpha");
  nbl_q4_params p;
  int fast = !c->reference && cfg->rounding == NBL_Q4_ROUND_HALF_EVEN;
  if (fast && range && cfg->scale_source == NBL_Q4_SCALE_MAX)
    nbl_i4_params_from_range(cfg, x->numel, range[0], range[1], &p); /* as nbl_q4t_params after its scan */
  else if (fast && range && cfg->scale_source == NBL_Q4_SCALE_MSE)
    nbl_q4_params_from_mse(cfg, x->data, (size_t)x->numel, range[0], range[1], &p);
  else if (fast)
    fast = nbl_q4t_params(c, cfg, x, &p) == 0;
  nbl_status st;
  if (!fast && (st = nbl_q4_kernel_params(c, cfg, x, NULL, &p))) return st;
  int8_t *codes;
  float *y;
  if ((st = q4_codes_out(c, cfg, x, codes_out, &codes)) || (st = q4_y_out(c, x, codes, &y))) return st;
  if (fast) {
    nbl_q4t_fake_quant(c, cfg, &p, x->data, y, codes, x->numel);
  } else {
    if (codes) nbl_q4_codes8(cfg, &p, x->data, codes, (size_t)x->numel, 0);
    if (y) nbl_q4_fake_quant(cfg, &p, (const float *)x->data, y, (size_t)x->numel, 0);
  }
  return q4_side_outputs(c, &p);
}

/* ------------------------------------------------------------------ QuantizeLog */

/* Inputs, attributes and the grid of a QuantizeLog node; allocates Y (*y
 * NULL when Y is omitted and codes requested). */
static nbl_status qlog_setup(nbl_kctx *c, nbl_log_config *cfg, const float **x, float **y,
                             int64_t *n) {
  const nbl_rt_tensor *X = c->n_in > 0 ? c->in[0] : NULL;
  if (!X) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X is missing");
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s", nbl_dtype_name(X->dtype));
  char err[256];
  nbl_status st = nbl_log_config_decode(c->node, cfg, err, sizeof err);
  if (st != NBL_OK) return nbl_kerr(c, st, "%s", err);
  const nbl_rt_tensor *S = c->n_in > 1 ? c->in[1] : NULL;
  if (S) {
    if (S->dtype != NBL_DT_INT64 || S->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "step must be an int64 scalar, got %s with %lld elements",
                      nbl_dtype_name(S->dtype), (long long)S->numel);
    cfg->seed = nbl_log_step_seed(cfg->seed, ((const int64_t *)S->data)[0]);
  }
  *y = NULL; /* Y omitted with the codes requested: not written */
  if (!(c->n_out > 0 && !c->out[0] && c->n_out > 2 && c->out[2])) {
    if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) return st;
    *y = nbl_kctx_out(c, 0)->data;
  }
  *x = X->data;
  *n = X->numel;
  return NBL_OK;
}

static nbl_status qlog_top(nbl_kctx *c, const nbl_log_params *p) {
  if (c->n_out < 2 || !c->out[1]) return NBL_OK;
  nbl_status st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL);
  if (!st) ((float *)nbl_kctx_out(c, 1)->data)[0] = p->top;
  return st;
}

/* The optional codes output (output 2): int8 of X's shape, or NULL. */
static nbl_status qlog_codes_out(nbl_kctx *c, int8_t **codes) {
  *codes = NULL;
  if (c->n_out < 3 || !c->out[2]) return NBL_OK;
  const nbl_rt_tensor *X = c->in[0];
  nbl_status st = nbl_kctx_alloc_out(c, 2, NBL_DT_INT8, X->rank, X->dims);
  if (!st) *codes = nbl_kctx_out(c, 2)->data;
  return st;
}

/* codes[i] of x[i], i < n (index0: x[0]'s index): the format's code, or
 * nbl_log_code8_nonfinite's */
static void qlog_codes(const nbl_log_config *cfg, const nbl_log_params *p, const float *x, int8_t *codes, int64_t n,
                       uint64_t index0) {
  nbl_log_codes(cfg, p, x, codes, (size_t)n, index0);
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(x[i])) codes[i] = (int8_t)nbl_log_code8_nonfinite(x[i]);
}

static nbl_status k_quantize_log_ref(nbl_kctx *c) {
  nbl_log_config cfg;
  const float *x;
  float *y;
  int8_t *codes;
  int64_t n;
  nbl_status st = qlog_setup(c, &cfg, &x, &y, &n);
  if (!st) st = qlog_codes_out(c, &codes);
  if (st) return st;
  nbl_log_params p;
  nbl_log_choose(&cfg, x, (size_t)n, &p);
  if (codes) qlog_codes(&cfg, &p, x, codes, n, 0); /* before Y: y may share x's memory */
  if (y) nbl_log_fake_quant(&cfg, &p, x, y, (size_t)n, 0);
  return qlog_top(c, &p);
}

typedef struct qlog_job {
  const nbl_log_config *cfg;
  const nbl_log_params *p;
  const float *x, *lev, *thr;
  float *y;
  int8_t *codes;
  nbl_logq_isa isa;
} qlog_job;

static void qlog_range(void *arg, int64_t b, int64_t e) {
  const qlog_job *j = arg;
  if (j->lev && j->codes)
    nbl_logq_nearest_codes(j->isa, j->lev, j->thr, j->p->levels, j->x + b, j->y ? j->y + b : NULL,
                           (signed char *)j->codes + b, (size_t)(e - b));
  else if (j->lev)
    nbl_logq_nearest(j->isa, j->lev, j->thr, j->p->levels, j->x + b, j->y + b, (size_t)(e - b));
  else /* stochastic, luq */
    nbl_logq_stochastic(j->isa, j->cfg, j->p, j->x + b, j->y ? j->y + b : NULL,
                        j->codes ? (signed char *)j->codes + b : NULL, (size_t)(e - b), (uint64_t)b);
}

static nbl_status k_quantize_log_fast(nbl_kctx *c) {
  nbl_log_config cfg;
  const float *x;
  float *y;
  int64_t n;
  nbl_status st = qlog_setup(c, &cfg, &x, &y, &n);
  if (st) return st;
  nbl_logq_isa isa = nbl_logq_best_isa();
  nbl_log_params p;
  nbl_log_choose_max(&cfg, nbl_logq_absmax(isa, x, (size_t)n), &p);
  float lev[NBL_LOG_MAX_LEVELS], thr[NBL_LOG_MAX_LEVELS];
  int nearest = cfg.rounding == NBL_LOG_NEAREST || cfg.rounding == NBL_LOG_TPR;
  if (nearest) nbl_log_table(&cfg, &p, lev, thr);
  qlog_job j = {.cfg = &cfg, .p = &p, .x = x, .y = y, .isa = isa, .lev = nearest ? lev : NULL,
                .thr = thr};
  if ((st = qlog_codes_out(c, &j.codes))) return st;
  nbl_parallel_for(c, n, nearest ? 32768 : 4096, qlog_range, &j);
  return qlog_top(c, &p);
}

/* ------------------------------------------------------------------ the ternary family */

/* The node's ternary attributes through the one decoder (runtime/formats/ternary.h). */
static nbl_status tern_attrs(nbl_kctx *c, nbl_tern_attrs *a) {
  char err[256];
  nbl_status st = nbl_tern_attrs_decode(c->node, a, err, sizeof err);
  return st == NBL_OK ? NBL_OK : nbl_kerr(c, st, "%s", err);
}

/* Input i as a float32 tensor (NULL with the error in *st). */
static const nbl_rt_tensor *in_f32(nbl_kctx *c, int i, const char *name, nbl_status *st) {
  const nbl_rt_tensor *t = c->n_in > i ? c->in[i] : NULL;
  if (!t) {
    *st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s is missing", name);
    return NULL;
  }
  if (t->dtype != NBL_DT_FLOAT) {
    *st = nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%s must be float32, got %s", name,
                   nbl_dtype_name(t->dtype));
    return NULL;
  }
  return t;
}

/* Output i (when requested) as a float32 tensor of rank/dims holding v[0..n). */
static nbl_status out_floats(nbl_kctx *c, int i, int rank, const int64_t *dims, const float *v,
                             int64_t n) {
  if (c->n_out <= i || !c->out[i]) return NBL_OK;
  nbl_status st = nbl_kctx_alloc_out(c, i, NBL_DT_FLOAT, rank, dims);
  if (st != NBL_OK) return st;
  if (n) memcpy(nbl_kctx_out(c, i)->data, v, sizeof(float) * (size_t)n);
  return NBL_OK;
}

static nbl_status k_quantize_ternary(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  nbl_tern_attrs a;
  const nbl_rt_tensor *x = in_f32(c, 0, "X", &st);
  if (!x) return st;
  if ((st = tern_attrs(c, &a))) return st;
  float s = nbl_tern_scale((const float *)x->data, (size_t)x->numel);
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims))) return st;
  nbl_tern_fake_quant((const float *)x->data, (float *)nbl_kctx_out(c, 0)->data, (size_t)x->numel, s);
  return out_floats(c, 1, 0, NULL, &s, 1);
}

static nbl_status k_quantize_ternary_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  nbl_tern_attrs a;
  const nbl_rt_tensor *dy = in_f32(c, 0, "dY", &st), *x = dy ? in_f32(c, 1, "X", &st) : NULL;
  if (!x) return st;
  if ((st = tern_attrs(c, &a))) return st;
  if (dy->rank != x->rank || memcmp(dy->dims, x->dims, sizeof(int64_t) * (size_t)x->rank))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY and X must have the same shape");
  const float *xv = x->data, *g = dy->data;
  float s = nbl_tern_scale(xv, (size_t)x->numel);
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims))) return st;
  float *o = nbl_kctx_out(c, 0)->data;
  for (int64_t i = 0; i < x->numel; i++) o[i] = nbl_tern_grad_pass(xv[i], s) ? g[i] : 0.0f;
  return NBL_OK;
}

static nbl_status k_quantize_absmax8(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  nbl_tern_attrs a;
  const nbl_rt_tensor *x = in_f32(c, 0, "X", &st);
  if (!x) return st;
  if ((st = tern_attrs(c, &a))) return st;
  int per_row = a.per_row && x->rank > 0;
  int64_t row = per_row ? x->dims[x->rank - 1] : x->numel;
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims))) return st;
  const float *xv = x->data;
  if (x->numel)
    nbl_absmax8_fake_quant(xv, (float *)nbl_kctx_out(c, 0)->data, (size_t)x->numel, (size_t)row,
                           per_row);
  if (c->n_out <= 1 || !c->out[1]) return NBL_OK;
  if (!per_row) {
    float s = nbl_absmax8_scale(xv, (size_t)x->numel);
    return out_floats(c, 1, 0, NULL, &s, 1);
  }
  int64_t dims[NBL_MAX_RANK];
  memcpy(dims, x->dims, sizeof(int64_t) * (size_t)x->rank);
  dims[x->rank - 1] = 1;
  if ((st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, x->rank, dims))) return st;
  float *sv = nbl_kctx_out(c, 1)->data;
  for (int64_t r = 0; row && r < x->numel / row; r++)
    sv[r] = nbl_absmax8_scale(xv + r * row, (size_t)row);
  return NBL_OK;
}

static nbl_status k_dequantize_ternary(nbl_kctx *c) {
  nbl_tern_attrs a;
  nbl_status st = tern_attrs(c, &a);
  if (st) return st;
  const nbl_rt_tensor *q = c->n_in > 0 ? c->in[0] : NULL, *s = c->n_in > 1 ? c->in[1] : NULL;
  if (!q || !s) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s is missing", q ? "scale" : "codes");
  if (q->dtype != NBL_DT_UINT8 || q->rank != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "codes must be a 1-D uint8 tensor, got %s of rank %d",
                    nbl_dtype_name(q->dtype), q->rank);
  if (s->dtype != NBL_DT_FLOAT || s->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale must be a float32 scalar");
  size_t want = nbl_tern_packed_bytes(a.packing, (size_t)a.numel);
  if ((size_t)q->numel != want)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "codes has %lld bytes, shape of %lld %s codes needs %zu", (long long)q->numel,
                    (long long)a.numel, a.packing == NBL_TERN_PACK_2BIT ? "2-bit" : "base-3", want);
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, a.rank, a.dims))) return st;
  float *y = nbl_kctx_out(c, 0)->data, sc = ((const float *)s->data)[0];
  int8_t *codes = malloc((size_t)(a.numel ? a.numel : 1));
  if (!codes) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (nbl_tern_unpack(a.packing, q->data, (size_t)a.numel, codes) != 0) {
    free(codes);
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "codes holds a byte that is not a %s group",
                    a.packing == NBL_TERN_PACK_2BIT ? "2-bit" : "base-3");
  }
  for (int64_t i = 0; i < a.numel; i++) y[i] = sc * (float)codes[i];
  free(codes);
  return NBL_OK;
}

/* ------------------------------------------------------------------ gradient rule
 * (runtime/core/grad.h): ai.nibble QuantizeInt4Grad (runtime/ops/grad_elementwise.c),
 * straight-through inside the clip range; PACT's alpha gets sum(dY * (X > alpha)).
 * With scale_source max, sawb or mse (parameters that depend on X) the forward's
 * scale and zero_point outputs are wired too (added to the forward node when
 * the model omitted them), so that the gradient does not scan X again. */
static nbl_status g_quantize_int4(nbl_grad_ctx *gc) {
  int want[2] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1)};
  if (!want[0] && !want[1]) return NBL_OK;
  nbl_id in[5] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1), NBL_NONE, NBL_NONE}, out[2];
  int n_in = in[2] == NBL_NONE ? 2 : 3;
  nbl_q4_config cfg;
  if (nbl_q4_config_decode(nbl_grad_node(gc), &cfg, NULL, 0) == NBL_OK &&
      nbl_q4_scale_from_data(&cfg)) {
    in[3] = nbl_grad_y_need(gc, 1);
    in[4] = nbl_grad_y_need(gc, 2);
    n_in = 5;
  }
  nbl_grad_opn(gc, "QuantizeInt4Grad", "ai.nibble", NULL, n_in, in, 2, want, out);
  nbl_grad_attr_copy(gc, NULL);
  for (int i = 0; i < 2; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}

/* QuantizeLog: straight-through, dX = dY (step is an integer: no gradient). */
static nbl_status g_quantize_log(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) nbl_grad_set_dx(gc, 0, nbl_grad_dy(gc, 0));
  return nbl_grad_status(gc);
}

/* QuantizeTernary: QuantizeTernaryGrad(dY, X), straight through inside the clip. */
static nbl_status g_quantize_ternary(nbl_grad_ctx *gc) {
  if (!nbl_grad_wants(gc, 0)) return NBL_OK;
  nbl_id in[2] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0)};
  if (in[0] == NBL_NONE) return NBL_OK;
  nbl_grad_set_dx(gc, 0, nbl_grad_op(gc, "QuantizeTernaryGrad", "ai.nibble", 2, in));
  return nbl_grad_status(gc);
}

/* QuantizeAbsmax8: the clamp never acts on a finite value, so dX = dY. */
static nbl_status g_quantize_absmax8(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) nbl_grad_set_dx(gc, 0, nbl_grad_dy(gc, 0));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ shape rules */

/* QuantizeInt4: Y like X; scale float32 and zero_point int8 scalars; codes
 * int8 of X's shape. */
static nbl_status shape_quantize_int4(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = nbl_shp_set_dt(c, 2, NBL_DT_INT8, 0);
  nbl_shp x;
  if (!st && nbl_shp_in(c, 0, &x)) {
    x.dt = NBL_DT_INT8;
    st = nbl_shp_set(c, 3, &x);
  }
  return st;
}

/* QuantizeLog: Y like X; top a float32 scalar; codes int8 of X's shape. */
static nbl_status shape_quantize_log(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  nbl_shp x;
  if (!st && nbl_shp_in(c, 0, &x)) {
    x.dt = NBL_DT_INT8;
    st = nbl_shp_set(c, 2, &x);
  }
  return st;
}

/* QuantizeTernary: Y like X, scale a float32 scalar. */
static nbl_status shape_quantize_ternary(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  return st ? st : nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
}

/* QuantizeAbsmax8: Y like X; scale a scalar, or (per_row) X's shape with the last dim 1. */
static nbl_status shape_quantize_absmax8(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (st) return st;
  nbl_tern_attrs a;
  char err[256];
  if ((st = nbl_tern_attrs_decode(c->node, &a, err, sizeof err))) return nbl_shp_err(c, "%s", err);
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (!a.per_row || x.rank == 0) return nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  x.dt = NBL_DT_FLOAT;
  if (x.rank > 0) x.d[x.rank - 1] = nbl_dim_val(1);
  return nbl_shp_set(c, 1, &x);
}

/* DequantizeTernary: float32 of the `shape` attribute. */
static nbl_status shape_dequantize_ternary(nbl_shape_ctx *c) {
  nbl_tern_attrs a;
  char err[256];
  if (nbl_tern_attrs_decode(c->node, &a, err, sizeof err)) return nbl_shp_err(c, "%s", err);
  nbl_shp y;
  nbl_shp_rank(&y, NBL_DT_FLOAT, a.rank);
  for (int i = 0; i < a.rank; i++) y.d[i] = nbl_dim_val(a.dims[i]);
  return nbl_shp_set(c, 0, &y);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_nibble[] = {
    NBL_OP_DEF("ai.nibble", "QuantizeInt4", 1, 1, .ref = k_quantize_int4, .fast = k_quantize_int4_fast,
        .shape = shape_quantize_int4, .grad = g_quantize_int4),
    NBL_OP_DEF("ai.nibble", "QuantizeLog", 1, 1, .ref = k_quantize_log_ref,
        .fast = k_quantize_log_fast, .shape = shape_quantize_log, .grad = g_quantize_log),
    NBL_OP_DEF("ai.nibble", "QuantizeTernary", 1, 1, .ref = k_quantize_ternary,
        .shape = shape_quantize_ternary, .grad = g_quantize_ternary),
    NBL_OP_DEF("ai.nibble", "QuantizeTernaryGrad", 1, 1, .ref = k_quantize_ternary_grad,
        .shape = nbl_shape_same, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "QuantizeAbsmax8", 1, 1, .ref = k_quantize_absmax8,
        .shape = shape_quantize_absmax8, .grad = g_quantize_absmax8),
    NBL_OP_DEF("ai.nibble", "DequantizeTernary", 1, 1, .ref = k_dequantize_ternary,
        .shape = shape_dequantize_ternary, .no_grad = "input is packed integer codes"),
};
const size_t nbl_ops_nibble_count = sizeof nbl_ops_nibble / sizeof nbl_ops_nibble[0];
