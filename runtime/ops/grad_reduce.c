/* runtime/ops/grad_reduce.c - op family 'grad_reduce': backward ops of the
 * softmax family and the softmax cross-entropy loss (forward ops in the
 * 'reduce' family, runtime/ops/reduce.c); kernel contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. T is float32
 * or float64 (float16/bfloat16 through the double reference path). Reference
 * kernels compute in double.
 *
 * SoftmaxGrad_13 (com.microsoft 1)  -- for Softmax opset >= 13
 *   inputs:  dY (T), Y (T, the Softmax OUTPUT)
 *   outputs: dX (T, Y's shape) = Y * (dY - sum_axis(dY * Y))
 *   attributes: axis (int, default -1): the one softmax axis
 * LogSoftmaxGrad_13 (com.microsoft 1)  -- for LogSoftmax opset >= 13
 *   inputs:  dY (T), X (T, the LogSoftmax OUTPUT, named X as in ORT)
 *   outputs: dX (T) = dY - exp(X) * sum_axis(dY)
 *   attributes: axis (int, default -1)
 * SoftmaxGrad (com.microsoft 1)  -- for Softmax opset < 13
 *   as SoftmaxGrad_13, but axis (default 1) coerces the input to 2-D
 *   [prod(dims[:axis]), prod(dims[axis:])] and the sum runs over the whole
 *   second dimension
 * LogSoftmaxGrad (com.microsoft 1)  -- for LogSoftmax opset < 13
 *   as LogSoftmaxGrad_13 with the opset < 13 coercion (axis default 1)
 * SoftmaxCrossEntropyLossGrad (com.microsoft 1)
 *   inputs:  dY (T: scalar for reduction mean/sum, label's shape for none),
 *            log_prob (T, [N, C] or [N, C, d1, ..., dk]: the loss's log_prob output),
 *            label (int32/int64, [N] or [N, d1, ..., dk]),
 *            weight (optional T, [C])
 *   outputs: d_logits (T, log_prob's shape) =
 *            g[n, d] * (exp(log_prob[n, c, d]) - (c == label[n, d])), where
 *            g = dY (none) or dY (sum) or dY / W (mean), times weight[label]
 *            (1 without weight), and 0 where label == ignore_index;
 *            W = sum over non-ignored positions of weight[label] (their count without weight)
 *   attributes: reduction (string none|sum|mean, default mean),
 *               ignore_index (int, optional)
 * SoftmaxCrossEntropyLossInternalGrad (com.microsoft 1)
 *   inputs:  dY, log_prob, label, weight (optional) as above,
 *            ignore_index (optional int64 scalar INPUT instead of the attribute),
 *            bias (optional, log_prob's shape: added to d_logits)
 *   outputs: d_logits (log_prob's shape; type output_type when given, else log_prob's)
 *   attributes: reduction (default mean), output_type (int, optional: FLOAT or DOUBLE)
 */

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ softmax */

/* Backward of Softmax (log = 0) or LogSoftmax (log = 1): inputs dY and the
 * forward output V of equal type and shape. v13: one axis (default -1);
 * otherwise the opset < 13 coercion to 2-D at `axis` (default 1). The data
 * is viewed as [outer, n, inner] with the sum over n. */
static nbl_status softmax_grad(nbl_kctx *c, int log, int v13) {
  nbl_status st = NBL_OK;
  const char *vn = log ? "X" : "Y";
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *V = dY ? grad_need(c, 1, vn, &st) : NULL;
  if (!V) return st;
  if ((st = grad_check_float(c, dY, "dY")) || (st = grad_check_type(c, V, dY->dtype, vn, "dY")) ||
      (st = grad_check_same_shape(c, dY, V, "dY", vn)))
    return st;
  int r = dY->rank;
  int64_t a = nbl_attr_int(c->node, "axis", v13 ? -1 : 1);
  int ax = r == 0 ? 0 : nbl_norm_axis(a, r);
  if (ax < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)a, r);
  int64_t outer = 1, n = 1, inner = 1;
  for (int d = 0; d < r; d++) {
    if (d < ax) outer *= dY->dims[d];
    else if (d == ax || !v13) n *= dY->dims[d];
    else inner *= dY->dims[d];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, dY->rank, dY->dims))) return st;
  double *g = nbl_to_f64(dY), *v = nbl_to_f64(V);
  if (!g || !v) {
    free(g);
    free(v);
    return grad_oom(c);
  }
  for (int64_t o = 0; o < outer; o++)
    for (int64_t in = 0; in < inner; in++) {
      double *gp = g + o * n * inner + in;
      const double *vp = v + o * n * inner + in;
      double s = 0;
      for (int64_t k = 0; k < n; k++) s += log ? gp[k * inner] : gp[k * inner] * vp[k * inner];
      for (int64_t k = 0; k < n; k++) {
        double gk = gp[k * inner], vk = vp[k * inner];
        gp[k * inner] = log ? gk - exp(vk) * s : vk * (gk - s);
      }
    }
  nbl_from_f64(nbl_kctx_out(c, 0), g);
  free(g);
  free(v);
  return NBL_OK;
}

static nbl_status k_softmax_grad13(nbl_kctx *c) { return softmax_grad(c, 0, 1); }
static nbl_status k_logsoftmax_grad13(nbl_kctx *c) { return softmax_grad(c, 1, 1); }
static nbl_status k_softmax_grad(nbl_kctx *c) { return softmax_grad(c, 0, 0); }
static nbl_status k_logsoftmax_grad(nbl_kctx *c) { return softmax_grad(c, 1, 0); }

/* ------------------------------------------------------------------ softmax cross-entropy */

/* SoftmaxCrossEntropyLossGrad (internal = 0: ignore_index attribute) and
 * SoftmaxCrossEntropyLossInternalGrad (internal = 1: ignore_index input 4,
 * bias input 5, output_type attribute). */
static nbl_status sce_grad(nbl_kctx *c, int internal) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st);
  const nbl_rt_tensor *LP = dY ? grad_need(c, 1, "log_prob", &st) : NULL;
  const nbl_rt_tensor *L = LP ? grad_need(c, 2, "label", &st) : NULL;
  if (!L) return st;
  const nbl_rt_tensor *W = grad_in(c, 3), *IG = internal ? grad_in(c, 4) : NULL,
                      *BI = internal ? grad_in(c, 5) : NULL;
  if ((st = grad_check_float(c, LP, "log_prob")) || (st = grad_check_float(c, dY, "dY"))) return st;
  if (LP->rank < 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "log_prob must have rank >= 2 ([N, C, ...])");
  if (!grad_is_int(L->dtype)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "label must be int32 or int64");
  int64_t N = LP->dims[0], C = LP->dims[1], D = 1;
  int ok = L->rank == LP->rank - 1 && L->dims[0] == N;
  for (int d = 2; d < LP->rank; d++) {
    D *= LP->dims[d];
    if (ok && L->dims[d - 1] != LP->dims[d]) ok = 0;
  }
  if (!ok) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "label must have log_prob's shape without axis 1");
  if (W && (W->rank != 1 || W->dims[0] != C || !grad_is_float(W->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "weight must be a 1-D float tensor of %lld values", (long long)C);
  const char *red = nbl_attr_string(c->node, "reduction", "mean");
  int mode = !strcmp(red, "none") ? 0 : !strcmp(red, "sum") ? 1 : !strcmp(red, "mean") ? 2 : -1;
  if (mode < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'reduction' must be none, sum or mean, not '%s'", red);
  if (mode == 0 ? !grad_same_dims(dY, L) : dY->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, mode == 0 ? "dY must have label's shape (reduction none)"
                                                        : "dY must be a scalar (reduction sum/mean)");
  int has_ign;
  int64_t ign = 0;
  if (internal) {
    has_ign = IG != NULL;
    if (IG) {
      if (IG->dtype != NBL_DT_INT64 || IG->numel != 1)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ignore_index must be an int64 scalar");
      ign = ((const int64_t *)IG->data)[0];
    }
  } else {
    has_ign = nbl_node_attr(c->node, "ignore_index") != NULL;
    ign = nbl_attr_int(c->node, "ignore_index", 0);
  }
  nbl_dtype odt = LP->dtype;
  if (internal && nbl_node_attr(c->node, "output_type")) {
    odt = (nbl_dtype)nbl_attr_int(c->node, "output_type", 0);
    if (odt != NBL_DT_FLOAT && odt != NBL_DT_DOUBLE)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "output_type %d is not supported (float or double)", (int)odt);
  }
  if (BI && (!grad_same_dims(BI, LP) || !grad_is_float(BI->dtype)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "bias must be a float tensor of log_prob's shape");
  /* per-position weight (0 where ignored) and the mean's divisor */
  int64_t ND = N * D;
  double *wt = malloc(sizeof(double) * (size_t)(ND ? ND : 1));
  if (!wt) return grad_oom(c);
  double wsum = 0;
  for (int64_t i = 0; i < ND; i++) {
    int64_t t = nbl_rt_get_i64(L, i);
    if (has_ign && t == ign) {
      wt[i] = 0;
      continue;
    }
    if (t < 0 || t >= C) {
      free(wt);
      return nbl_kerr(c, NBL_ERR_RUNTIME, "label %lld at element %lld is outside [0, %lld)", (long long)t,
                      (long long)i, (long long)C);
    }
    wt[i] = W ? nbl_rt_get_f64(W, t) : 1.0;
    wsum += wt[i];
  }
  if ((st = nbl_kctx_alloc_out(c, 0, odt, LP->rank, LP->dims))) {
    free(wt);
    return st;
  }
  nbl_rt_tensor *O = nbl_kctx_out(c, 0);
  double *lp = nbl_to_f64(LP);
  if (!lp) {
    free(wt);
    return grad_oom(c);
  }
  double g0 = mode ? nbl_rt_get_f64(dY, 0) : 0.0;
  if (mode == 2) g0 = wsum != 0 ? g0 / wsum : 0.0; /* all ignored: no gradient */
  for (int64_t nn = 0; nn < N; nn++)
    for (int64_t d = 0; d < D; d++) {
      int64_t i = nn * D + d, t = nbl_rt_get_i64(L, i);
      double g = (mode ? g0 : nbl_rt_get_f64(dY, i)) * wt[i];
      for (int64_t k = 0; k < C; k++) {
        int64_t j = (nn * C + k) * D + d;
        lp[j] = g * (exp(lp[j]) - (wt[i] != 0 && k == t ? 1.0 : 0.0));
        if (wt[i] == 0) lp[j] = 0.0;
        if (BI) lp[j] += nbl_rt_get_f64(BI, j);
      }
    }
  nbl_from_f64(O, lp);
  free(lp);
  free(wt);
  return NBL_OK;
}

static nbl_status k_sce_grad(nbl_kctx *c) { return sce_grad(c, 0); }
static nbl_status k_sce_internal_grad(nbl_kctx *c) { return sce_grad(c, 1); }

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ shape rules */

/* dX: the shape and type of dY (input 0). */
static nbl_status shape_dy(nbl_shape_ctx *c) { return nbl_shp_copy_in(c, 0, 0); }

/* d_logits: the shape of log_prob (input 1); its type, or output_type when given. */
static nbl_status shape_logprob(nbl_shape_ctx *c) {
  nbl_shp s;
  if (!nbl_shp_in(c, 1, &s)) return NBL_OK;
  int64_t ot = nbl_attr_int(c->node, "output_type", 0);
  if (ot > 0 && ot <= NBL_DT_BFLOAT16) s.dt = (nbl_dtype)ot;
  return nbl_shp_set(c, 0, &s);
}

const nbl_op_def nbl_ops_grad_reduce[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "SoftmaxGrad_13", 1, 1, .ref = k_softmax_grad13, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "LogSoftmaxGrad_13", 1, 1, .ref = k_logsoftmax_grad13, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "SoftmaxGrad", 1, 1, .ref = k_softmax_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "LogSoftmaxGrad", 1, 1, .ref = k_logsoftmax_grad, .shape = shape_dy, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "SoftmaxCrossEntropyLossGrad", 1, 1, .ref = k_sce_grad, .shape = shape_logprob, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "SoftmaxCrossEntropyLossInternalGrad", 1, 1, .ref = k_sce_internal_grad, .shape = shape_logprob, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_reduce_count = sizeof nbl_ops_grad_reduce / sizeof nbl_ops_grad_reduce[0];
