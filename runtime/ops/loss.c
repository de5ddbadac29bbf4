/*
 * runtime/ops/loss.c - op family 'loss': NegativeLogLikelihoodLoss and
 * SoftmaxCrossEntropyLoss (kernels in double, shape and gradient rules; the
 * backward op SoftmaxCrossEntropyLossGrad is in runtime/ops/grad_reduce.c).
 * See kernel.h for the kernel contract.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/ops/reduce_util.h"

/* ------------------------------------------------------------------ NLL / softmax cross-entropy */

/* loss[n,d] = -w[t] * lp[n, t, d] with t = target[n,d] (0 where t == ignore_index);
 * reduction none / sum / mean (sum divided by the sum of the weights used).
 * lp: log-probabilities [N, C, D] as doubles. Writes output 0. */
static nbl_status nll_core(nbl_kctx *c, const double *lp, const nbl_rt_tensor *x,
                           const nbl_rt_tensor *tg, const nbl_rt_tensor *w) {
  nbl_status st;
  if (x->rank < 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must have rank >= 2 ([N, C, ...])", in_name(c, 0));
  if (!tg || (tg->dtype != NBL_DT_INT32 && tg->dtype != NBL_DT_INT64))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "target '%s' must be an int32 or int64 tensor", in_name(c, 1));
  int64_t N = x->dims[0], C = x->dims[1], D = 1;
  int shape_ok = tg->rank == x->rank - 1 && tg->dims[0] == N;
  for (int d = 2; d < x->rank; d++) {
    D *= x->dims[d];
    if (shape_ok && tg->dims[d - 1] != x->dims[d]) shape_ok = 0;
  }
  if (!shape_ok)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "target '%s' must have the shape of '%s' without axis 1",
                    in_name(c, 1), in_name(c, 0));
  if (w && (w->rank != 1 || w->dims[0] != C || w->dtype != x->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "weight '%s' must be a 1-D tensor of %lld %s values",
                    in_name(c, 2), (long long)C, nbl_dtype_name(x->dtype));
  const char *red = nbl_attr_string(c->node, "reduction", "mean");
  int mode = !strcmp(red, "none") ? 0 : !strcmp(red, "sum") ? 1 : !strcmp(red, "mean") ? 2 : -1;
  if (mode < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'reduction' must be none, sum or mean, not '%s'", red);
  int has_ign = nbl_node_attr(c->node, "ignore_index") != NULL;
  int64_t ign = nbl_attr_int(c->node, "ignore_index", 0);
  if (mode == 0) st = nbl_kctx_alloc_out(c, 0, x->dtype, tg->rank, tg->dims);
  else st = nbl_kctx_alloc_out(c, 0, x->dtype, 0, NULL);
  if (st) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  double sum = 0, wsum = 0;
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) {
      int64_t i = n * D + d, t = nbl_rt_get_i64(tg, i);
      double l = 0, wt = 0;
      if (!(has_ign && t == ign)) {
        if (t < 0 || t >= C)
          return nbl_kerr(c, NBL_ERR_RUNTIME, "target %lld at element %lld is outside [0, %lld)",
                          (long long)t, (long long)i, (long long)C);
        wt = w ? nbl_rt_get_f64(w, t) : 1.0;
        l = -wt * lp[(n * C + t) * D + d];
      }
      if (mode == 0) nbl_rt_set_f64(y, i, l);
      sum += l;
      wsum += wt;
    }
  if (mode == 1) nbl_rt_set_f64(y, 0, sum);
  else if (mode == 2) nbl_rt_set_f64(y, 0, sum / wsum);
  return NBL_OK;
}

static nbl_status k_nllloss(nbl_kctx *c) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  double *lp = malloc(sizeof(double) * (size_t)(x->numel ? x->numel : 1));
  if (!lp) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t i = 0; i < x->numel; i++) lp[i] = nbl_rt_get_f64(x, i);
  st = nll_core(c, lp, x, c->n_in > 1 ? c->in[1] : NULL, c->n_in > 2 ? c->in[2] : NULL);
  free(lp);
  return st;
}

/* log_softmax over axis 1, then NLL; output 1 (optional) is the log-probabilities. */
static nbl_status k_sce(nbl_kctx *c) {
  nbl_status st = check_x(c, T_F);
  if (st) return st;
  const nbl_rt_tensor *x = c->in[0];
  if (x->rank < 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' must have rank >= 2 ([N, C, ...])", in_name(c, 0));
  int64_t N = x->dims[0], C = x->dims[1], D = x->numel / (N * C > 0 ? N * C : 1);
  double *lp = malloc(sizeof(double) * (size_t)(x->numel ? x->numel : 1));
  if (!lp) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t n = 0; n < N; n++)
    for (int64_t d = 0; d < D; d++) {
      double m = -INFINITY, s = 0;
      for (int64_t k = 0; k < C; k++) {
        double v = nbl_rt_get_f64(x, (n * C + k) * D + d);
        if (k == 0 || v > m) m = v;
      }
      for (int64_t k = 0; k < C; k++) s += exp(nbl_rt_get_f64(x, (n * C + k) * D + d) - m);
      double ls = log(s);
      for (int64_t k = 0; k < C; k++) {
        int64_t i = (n * C + k) * D + d;
        lp[i] = nbl_rt_get_f64(x, i) - m - ls;
      }
    }
  st = nll_core(c, lp, x, c->n_in > 1 ? c->in[1] : NULL, c->n_in > 2 ? c->in[2] : NULL);
  if (!st && c->n_out > 1 && c->out[1]) {
    if (!(st = nbl_kctx_alloc_out(c, 1, x->dtype, x->rank, x->dims))) {
      nbl_rt_tensor *o = nbl_kctx_out(c, 1);
      for (int64_t i = 0; i < x->numel; i++) nbl_rt_set_f64(o, i, lp[i]);
    }
  }
  free(lp);
  return st;
}

/* ------------------------------------------------------------------ shape rules */

/* NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss: reduction "none" gives
 * the target's shape, "mean" and "sum" a scalar, of the input's type;
 * SoftmaxCrossEntropyLoss's log_prob output has the scores' type. */
static nbl_status shape_loss(nbl_shape_ctx *c) {
  nbl_shp x, t;
  nbl_shp_in(c, 0, &x);
  nbl_shp_in(c, 1, &t);
  nbl_status st;
  if (!strcmp(nbl_attr_string(c->node, "reduction", "mean"), "none")) {
    t.dt = x.dt;
    st = nbl_shp_set(c, 0, &t);
  } else {
    st = nbl_shp_set_dt(c, 0, x.dt, 0);
  }
  return st || c->node->n_outputs < 2 ? st : nbl_shp_set(c, 1, &x);
}

/* ------------------------------------------------------------------ gradient rules
 * (runtime/core/grad.h) */

/* The loss gradient with com.microsoft SoftmaxCrossEntropyLossGrad on the
 * given log-probabilities (reduction, ignore_index copied). */
static nbl_id sce_grad(nbl_grad_ctx *gc, nbl_id lp) {
  nbl_id in[4] = {nbl_grad_dy(gc, 0), lp, nbl_grad_x(gc, 1), nbl_grad_x(gc, 2)};
  nbl_id dx = nbl_grad_op(gc, "SoftmaxCrossEntropyLossGrad", "com.microsoft",
                          in[3] == NBL_NONE ? 3 : 4, in);
  nbl_grad_attr_copy(gc, NULL);
  return dx;
}

/* SoftmaxCrossEntropyLoss: d scores = g (softmax - onehot(label)) from the
 * log_prob output (added to the forward node); a gradient reaching log_prob
 * itself goes back through LogSoftmax over axis 1. */
static nbl_status g_sce(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 2, "class weights get no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id lp = nbl_grad_y_need(gc, 1);
  if (nbl_grad_dy(gc, 0) != NBL_NONE) nbl_grad_set_dx(gc, 0, sce_grad(gc, lp));
  if (nbl_grad_dy(gc, 1) != NBL_NONE) {
    nbl_id in[2] = {nbl_grad_dy(gc, 1), lp};
    nbl_id d = nbl_grad_op(gc, nbl_grad_opset(gc, "") >= 13 ? "LogSoftmaxGrad_13" : "LogSoftmaxGrad",
                           "com.microsoft", 2, in);
    nbl_grad_attr_int(gc, "axis", 1);
    nbl_grad_set_dx(gc, 0, d);
  }
  return nbl_grad_status(gc);
}

/* NegativeLogLikelihoodLoss: d input = -g onehot(target) (weights, reduction
 * and ignore_index as the loss), which is SoftmaxCrossEntropyLossGrad with
 * log-probabilities of -inf (exp(-inf) = 0 exactly). */
static nbl_status g_nll(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 2, "class weights get no gradient");
  if (!nbl_grad_wants(gc, 0)) return nbl_grad_status(gc);
  nbl_id minf = nbl_grad_fill_like(gc, nbl_grad_x(gc, 0), -INFINITY);
  nbl_grad_set_dx(gc, 0, sce_grad(gc, minf));
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_loss[] = {
    NBL_OP("NegativeLogLikelihoodLoss", 12, .ref = k_nllloss, .shape = shape_loss,
        .stable_since = 12, .grad = g_nll),
    NBL_OP("SoftmaxCrossEntropyLoss", 12, .ref = k_sce, .shape = shape_loss, .stable_since = 12, .grad = g_sce),
};
const size_t nbl_ops_loss_count = sizeof nbl_ops_loss / sizeof nbl_ops_loss[0];
