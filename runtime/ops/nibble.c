/* runtime/ops/nibble.c - op family 'nibble': nibble's own ops in domain ai.nibble.
 *
 * QuantizeInt4 (version 1): per-tensor fake quantization, float in, float out.
 *   inputs:  X (float32), alpha (optional float32 scalar, the PACT clip)
 *   outputs: Y = s*(q - z) (same shape), scale (optional float32 scalar),
 *            zero_point (optional int8 scalar)
 *   attributes: bits (2..8, default 4), mode (symmetric|affine),
 *            scale_source (max|sawb|fixed|pact), scale (float, fixed),
 *            narrow (0/1), rounding (half_even|stochastic), seed (int)
 * The reference kernel computes the formulas of runtime/formats/int4.h literally.
 *
 * QuantizeLog (version 1): per-tensor logarithmic fake quantization (the
 * gradients' radix-4 "FP4 [1,3,0]" format), float in, float out.
 *   inputs:  X (float32), step (optional int64 scalar: the training step,
 *            mixed into the stochastic key so every step draws new numbers)
 *   outputs: Y = 0 or +-top*radix^-k (same shape), top (optional float32
 *            scalar, the largest level)
 *   attributes: radix (2|4|10, default 4), exp_bits (1..4, default 3),
 *            rounding (nearest|stochastic|tpr|luq), phase (0|1, tpr's grid),
 *            seed (int)
 * The math, the attribute decoder and the rounding rules are
 * runtime/formats/log.h. The reference kernel calls it element by element;
 * the fast kernel scans and rounds nearest/tpr with the vector kernels of
 * runtime/kernels/log_quant.h (bit-identical), the stochastic modes in
 * threaded chunks of the reference code (counter-based draws: identical).
 * Gradient: straight-through, dX = dY (the op sits on gradients in training
 * graphs; the rule exists so that a graph holding it stays differentiable). */
#include <math.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/log_quant.h"
#include "runtime/ops/nibble.h"

/* The node's attributes through the one decoder (runtime/formats/int4.h);
 * exported for QuantizeInt4Grad (runtime/ops/nibble.h). */
nbl_status nbl_q4_attrs(nbl_kctx *c, nbl_q4_config *cfg) {
  char err[256];
  nbl_status st = nbl_q4_config_decode(c->node, cfg, err, sizeof err);
  return st == NBL_OK ? NBL_OK : nbl_kerr(c, st, "%s", err);
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
  float alpha = 0.0f;
  if (cfg.scale_source == NBL_Q4_SCALE_PACT) {
    const nbl_rt_tensor *a = c->n_in > 1 ? c->in[1] : NULL;
    if (!a) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale_source=pact needs input alpha");
    if (a->dtype != NBL_DT_FLOAT || a->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "alpha must be a float32 scalar");
    alpha = ((const float *)a->data)[0];
  }
  nbl_q4_params p;
  const char *why = NULL;
  if (nbl_q4_choose(&cfg, (const float *)x->data, (size_t)x->numel, alpha, &p, &why) != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s", why);
  st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, x->rank, x->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  nbl_q4_fake_quant(&cfg, &p, (const float *)x->data, (float *)y->data, (size_t)x->numel, 0);
  if (c->n_out > 1 && c->out[1]) {
    st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL);
    if (st != NBL_OK) return st;
    ((float *)nbl_kctx_out(c, 1)->data)[0] = p.scale;
  }
  if (c->n_out > 2 && c->out[2]) {
    st = nbl_kctx_alloc_out(c, 2, NBL_DT_INT8, 0, NULL);
    if (st != NBL_OK) return st;
    ((int8_t *)nbl_kctx_out(c, 2)->data)[0] = (int8_t)p.zero;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ QuantizeLog */

/* Inputs, attributes and the grid of a QuantizeLog node; allocates Y and the
 * optional top output. */
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
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) return st;
  *x = X->data;
  *y = nbl_kctx_out(c, 0)->data;
  *n = X->numel;
  return NBL_OK;
}

static nbl_status qlog_top(nbl_kctx *c, const nbl_log_params *p) {
  if (c->n_out < 2 || !c->out[1]) return NBL_OK;
  nbl_status st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, 0, NULL);
  if (!st) ((float *)nbl_kctx_out(c, 1)->data)[0] = p->top;
  return st;
}

static nbl_status k_quantize_log_ref(nbl_kctx *c) {
  nbl_log_config cfg;
  const float *x;
  float *y;
  int64_t n;
  nbl_status st = qlog_setup(c, &cfg, &x, &y, &n);
  if (st) return st;
  nbl_log_params p;
  nbl_log_choose(&cfg, x, (size_t)n, &p);
  nbl_log_fake_quant(&cfg, &p, x, y, (size_t)n, 0);
  return qlog_top(c, &p);
}

typedef struct qlog_job {
  const nbl_log_config *cfg;
  const nbl_log_params *p;
  const float *x, *lev, *thr;
  float *y;
  nbl_logq_isa isa;
} qlog_job;

static void qlog_range(void *arg, int64_t b, int64_t e) {
  const qlog_job *j = arg;
  if (j->lev)
    nbl_logq_nearest(j->isa, j->lev, j->thr, j->p->levels, j->x + b, j->y + b, (size_t)(e - b));
  else
    nbl_log_fake_quant(j->cfg, j->p, j->x + b, j->y + b, (size_t)(e - b), (uint64_t)b);
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
  nbl_parallel_for(c, n, nearest ? 32768 : 4096, qlog_range, &j);
  return qlog_top(c, &p);
}

/* ------------------------------------------------------------------ gradient rule
 * (runtime/core/grad.h): ai.nibble QuantizeInt4Grad (runtime/ops/grad_elementwise.c),
 * straight-through inside the clip range; PACT's alpha gets sum(dY * (X > alpha)). */
static nbl_status g_quantize_int4(nbl_grad_ctx *gc) {
  int want[2] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1)};
  if (!want[0] && !want[1]) return NBL_OK;
  nbl_id in[3] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1)}, out[2];
  nbl_grad_opn(gc, "QuantizeInt4Grad", "ai.nibble", NULL, in[2] == NBL_NONE ? 2 : 3, in, 2, want, out);
  nbl_grad_attr_copy(gc, NULL);
  for (int i = 0; i < 2; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}

/* QuantizeLog: straight-through, dX = dY (step is an integer: no gradient). */
static nbl_status g_quantize_log(nbl_grad_ctx *gc) {
  if (nbl_grad_wants(gc, 0)) nbl_grad_set_dx(gc, 0, nbl_grad_dy(gc, 0));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ shape rules */

/* QuantizeInt4: Y like X; scale float32 and zero_point int8 scalars. */
static nbl_status shape_quantize_int4(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  if (!st) st = nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
  if (!st) st = nbl_shp_set_dt(c, 2, NBL_DT_INT8, 0);
  return st;
}

/* QuantizeLog: Y like X; top a float32 scalar. */
static nbl_status shape_quantize_log(nbl_shape_ctx *c) {
  nbl_status st = nbl_shape_same(c);
  return st ? st : nbl_shp_set_dt(c, 1, NBL_DT_FLOAT, 0);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_nibble[] = {
    NBL_OP_DEF("ai.nibble", "QuantizeInt4", 1, 1, .ref = k_quantize_int4,
        .shape = shape_quantize_int4, .grad = g_quantize_int4),
    NBL_OP_DEF("ai.nibble", "QuantizeLog", 1, 1, .ref = k_quantize_log_ref,
        .fast = k_quantize_log_fast, .shape = shape_quantize_log, .grad = g_quantize_log),
};
const size_t nbl_ops_nibble_count = sizeof nbl_ops_nibble / sizeof nbl_ops_nibble[0];
