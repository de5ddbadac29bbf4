/* lower.c - lower-to-onnx: rewrite nibble's own ops (domain ai.nibble) into
 * standard ONNX (default domain, opset 21) so other runtimes can run the model.
 *
 * QuantizeInt4 with a constant weight X becomes DequantizeLinear of a constant
 * code initializer (packed INT4 for 4-bit symmetric, INT8 otherwise). A
 * dynamic QuantizeInt4 becomes a scale computation followed by
 * QuantizeLinear -> DequantizeLinear:
 *   symmetric max: s = ReduceMax(Abs(x)) / qmax (s <= 0 or NaN -> 1)
 *   affine max:    s = (ReduceMax(x) - ReduceMin(x)) / (qmax - qmin),
 *                  z = Cast<int8>(Clip(Round(qmin - ReduceMin(x) / s), -128, 127))
 *   pact:          x' = Clip(x, 0, alpha), s = alpha / (qmax - qmin), z = qmin
 *   fixed:         s constant
 * 4-bit symmetric full-range codes use INT4 QuantizeLinear / DequantizeLinear,
 * 8-bit symmetric full-range INT8; any other code range quantizes to INT8 and
 * clips the codes to [qmin, qmax] (Clip on int8) before dequantizing.
 * QuantizeLinear divides in float and rounds half to even like nibble's
 * quantizer. Not lowered (clear error): stochastic rounding and SAWB on a
 * non-constant tensor, uses of the scale / zero_point outputs of a dynamic
 * quantizer. Statistics differ from nibble's only for tensors holding
 * NaN/Inf (nibble skips them). QuantizeLog is lowered by passes/lower_log.c
 * (nearest and tpr; the stochastic modes are an error). Other ai.nibble ops
 * are an error.
 *
 * Note for ONNX Runtime users: when a scale is constant (PACT with an
 * initializer alpha, fixed scales), ORT's QDQ optimizer fuses
 * DequantizeLinear -> Conv/Gemm into integer kernels that quantize the float
 * bias to int32, which moves some outputs by up to half a code step; with its
 * graph optimizations disabled ORT reproduces nibble to float rounding.
 * Dynamic (max) scales are not fused.
 *
 * The ternary ops (QuantizeTernary, QuantizeAbsmax8, DequantizeTernary) are
 * lowered by lower_ternary.c: constant ternary weights to INT4 codes feeding
 * DequantizeLinear, dynamic ones to standard ops; QuantizeLog by lower_log.c.
 *
 * The default-domain opset is converted to 21 first (nbl_convert_opset, the
 * convert-opset pass). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lower.h"
#include "runtime/core/kernel.h"

/* ------------------------------------------------------------------ building helpers */

/* A new initializer value named after hint holding data (copied). */
static nbl_id add_const(nbl_graph *g, const char *hint, nbl_dtype dt, int rank,
                        const int64_t *dims, const void *data) {
  char *name = nbl_graph_unique_name(g, hint);
  nbl_tensor *t = nbl_tensor_new(g->model->arena, name, dt, rank, dims, data);
  if (!t) return NBL_NONE;
  nbl_id v = nbl_graph_add_value(g, name);
  if (v == NBL_NONE) {
    nbl_buffer_unref(t->buf);
    return NBL_NONE;
  }
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  nbl_graph_set_initializer(g, v, t);
  return v;
}

static nbl_id const_f32(nbl_graph *g, const char *hint, float f) {
  return add_const(g, hint, NBL_DT_FLOAT, 0, NULL, &f);
}

static nbl_id const_i8(nbl_graph *g, const char *hint, nbl_dtype dt, int v) {
  uint8_t b = dt == NBL_DT_INT4 ? (uint8_t)(v & 0x0F) : (uint8_t)(int8_t)v;
  return add_const(g, hint, dt, 0, NULL, &b);
}

/* Add node op(ins) writing a fresh value (or `out` when != NBL_NONE). Returns
 * the output value, NBL_NONE on failure. */
static nbl_id emit(nbl_graph *g, const char *op, const char *base, int n_in, const nbl_id *ins,
                   nbl_id out) {
  char hint[700];
  snprintf(hint, sizeof hint, "%s_%s", base, op);
  if (out == NBL_NONE) {
    out = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
    if (out == NBL_NONE) return NBL_NONE;
  }
  char *nname = nbl_graph_unique_name(g, hint);
  if (nbl_graph_add_node(g, op, "", nname, n_in, ins, 1, &out) == NBL_NONE) return NBL_NONE;
  return out;
}

nbl_id nbl_lower_const(nbl_graph *g, const char *hint, nbl_dtype dt, int rank, const int64_t *dims,
                       const void *data) {
  return add_const(g, hint, dt, rank, dims, data);
}

nbl_id nbl_lower_emit(nbl_graph *g, const char *op, const char *base, int n_in, const nbl_id *ins,
                      nbl_id out) {
  return emit(g, op, base, n_in, ins, out);
}

/* ------------------------------------------------------------------ QuantizeInt4 attributes */

/* Decode the attributes of QuantizeInt4 node n (runtime/formats/int4.h, the
 * one decoder) into cfg; an error names the model, node and attribute. */
static nbl_status q4_node_config(const nbl_model *m, const nbl_node *n, nbl_q4_config *cfg) {
  char err[256];
  nbl_status st = nbl_q4_config_decode(n, cfg, err, sizeof err);
  if (st != NBL_OK)
    return nbl_errorf(st, "%s: node '%s' (QuantizeInt4): %s", nbl_model_label(m), n->name, err);
  return NBL_OK;
}

/* 1 if output i of node n exists and is used (consumed or a graph output). */
static int output_used(const nbl_graph *g, const nbl_node *n, int i) {
  if (i >= n->n_outputs || n->outputs[i] == NBL_NONE) return 0;
  const nbl_value *v = &g->values[n->outputs[i]];
  return v->n_consumers > 0 || (v->flags & NBL_VAL_OUTPUT);
}

/* Whether QuantizeInt4 node nid qualifies for folding (nbl_q4_fold_constant),
 * its config decoded into *cfg; *st set on a bad config. */
static int q4_foldable(nbl_pass_ctx *ctx, const nbl_graph *g, nbl_id nid, int only_int4,
                       nbl_q4_config *cfg, nbl_status *st) {
  const nbl_node *n = &g->nodes[nid];
  *st = q4_node_config(ctx->model, n, cfg);
  if (*st) return 0;
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE) return 0;
  if (n->n_inputs > 1 && n->inputs[1] != NBL_NONE) return 0; /* PACT input */
  if (output_used(g, n, 1) || output_used(g, n, 2) || output_used(g, n, 3)) return 0;
  const nbl_value *xv = &g->values[n->inputs[0]];
  const nbl_tensor *xt = xv->init;
  if (!xt || (xv->flags & NBL_VAL_INPUT) || xt->dtype != NBL_DT_FLOAT) return 0;
  if (cfg->scale_source == NBL_Q4_SCALE_PACT) return 0;
  if (only_int4 && !(cfg->bits == 4 && cfg->mode == NBL_Q4_SYMMETRIC)) return 0;
  int64_t numel = nbl_tensor_numel(xt);
  if (numel < 0) return 0;
  const float *x = xt->data;
  for (int64_t i = 0; i < numel; i++)
    if (!isfinite(x[i])) return 0; /* NaN/Inf must propagate: keep the dynamic form */
  return 1;
}

int nbl_q4_foldable(nbl_pass_ctx *ctx, const nbl_graph *g, nbl_id nid, int only_int4,
                    nbl_status *st) {
  nbl_q4_config cfg;
  return q4_foldable(ctx, g, nid, only_int4, &cfg, st);
}

nbl_status nbl_q4_fold_constant(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int only_int4,
                                int *folded, size_t *q_bytes, size_t *f32_bytes) {
  *folded = 0;
  nbl_q4_config cfg;
  nbl_status st;
  if (!q4_foldable(ctx, g, nid, only_int4, &cfg, &st)) return st;
  const nbl_node *n = &g->nodes[nid];
  const nbl_value *xv = &g->values[n->inputs[0]];
  const nbl_tensor *xt = xv->init;
  int int4 = cfg.bits == 4 && cfg.mode == NBL_Q4_SYMMETRIC;
  int64_t numel = nbl_tensor_numel(xt);
  float *x = malloc(sizeof(float) * (size_t)(numel ? numel : 1));
  int8_t *q = malloc((size_t)(numel ? numel : 1));
  uint8_t *packed = malloc((size_t)(numel / 2 + 1));
  if (!x || !q || !packed) {
    free(x);
    free(q);
    free(packed);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  if (numel) memcpy(x, xt->data, sizeof(float) * (size_t)numel);
  nbl_q4_params p;
  const char *why = NULL;
  if (nbl_q4_choose(&cfg, x, (size_t)numel, 0.0f, &p, &why) != 0) {
    st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (QuantizeInt4): %s",
                    nbl_model_label(ctx->model), n->name, why);
    goto done;
  }
  nbl_q4_quantize_codes(&cfg, &p, x, q, (size_t)numel, 0);
  char base[512];
  snprintf(base, sizeof base, "%s", xv->name);
  char hint[600];
  nbl_id qv, sv, zv = NBL_NONE;
  size_t qb;
  if (int4) {
    nbl_q4_pack(q, (size_t)numel, packed);
    snprintf(hint, sizeof hint, "%s_int4", base);
    qv = add_const(g, hint, NBL_DT_INT4, xt->rank, xt->dims, packed);
    qb = (size_t)(numel + 1) / 2;
  } else {
    snprintf(hint, sizeof hint, "%s_int%d", base, cfg.bits);
    qv = add_const(g, hint, NBL_DT_INT8, xt->rank, xt->dims, q);
    qb = (size_t)numel;
  }
  snprintf(hint, sizeof hint, "%s_scale", base);
  sv = const_f32(g, hint, p.scale);
  if (p.zero != 0) {
    snprintf(hint, sizeof hint, "%s_zero_point", base);
    zv = const_i8(g, hint, NBL_DT_INT8, p.zero);
  }
  if (qv == NBL_NONE || sv == NBL_NONE || (p.zero != 0 && zv == NBL_NONE)) {
    st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  n = &g->nodes[nid];
  nbl_id y = n->outputs[0];
  char *name = nbl_arena_strdup(g->model->arena, n->name);
  nbl_node_kill(g, nid);
  nbl_id ins[3] = {qv, sv, zv};
  if (nbl_graph_add_node(g, "DequantizeLinear", "", name, zv == NBL_NONE ? 2 : 3, ins, 1, &y) ==
      NBL_NONE) {
    st = NBL_ERR_INTERNAL;
    goto done;
  }
  *folded = 1;
  if (q_bytes) *q_bytes = qb;
  if (f32_bytes) *f32_bytes = sizeof(float) * (size_t)numel;
done:
  free(x);
  free(q);
  free(packed);
  return st;
}

/* ------------------------------------------------------------------ dynamic quantizers */

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

/* Lower QuantizeInt4 node nid (not foldable) into standard ops. */
static nbl_status lower_dynamic(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid) {
  const nbl_node *n = &g->nodes[nid];
  const char *lbl = nbl_model_label(ctx->model);
  nbl_q4_config cfg;
  nbl_status st = q4_node_config(ctx->model, n, &cfg);
  if (st) return st;
  if (cfg.rounding == NBL_Q4_ROUND_STOCHASTIC)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeInt4): stochastic rounding of a non-constant tensor "
                      "has no standard ONNX lowering", lbl, n->name);
  if (cfg.scale_source == NBL_Q4_SCALE_SAWB)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeInt4): SAWB on a non-constant tensor has no "
                      "lowering (only constant weights are folded)", lbl, n->name);
  if (output_used(g, n, 3))
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeInt4): its codes output (for ai.nibble Int4CodedConv and "
                      "Int4LogConvGrad) has no standard ONNX lowering",
                      lbl, n->name);
  if (output_used(g, n, 1) || output_used(g, n, 2))
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (QuantizeInt4): its scale/zero_point outputs are used; "
                      "not lowered", lbl, n->name);
  nbl_id x = n->inputs[0], y = n->outputs[0];
  nbl_id alpha = n->n_inputs > 1 ? n->inputs[1] : NBL_NONE;
  if (cfg.scale_source == NBL_Q4_SCALE_PACT && alpha == NBL_NONE)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (QuantizeInt4): pact needs alpha", lbl,
                      n->name);
  char base[512];
  snprintf(base, sizeof base, "%s", n->name[0] ? n->name : g->values[x].name);
  int qmin, qmax;
  nbl_q4_range(&cfg, &qmin, &qmax);
  int pact = cfg.scale_source == NBL_Q4_SCALE_PACT;
  int affine = pact || cfg.mode == NBL_Q4_AFFINE;
  nbl_node_kill(g, nid);

  nbl_id s = NBL_NONE, z = NBL_NONE, xin = x;
  char hint[600];
  nbl_id one = NBL_NONE, zero = NBL_NONE;
  if (cfg.scale_source == NBL_Q4_SCALE_FIXED) {
    snprintf(hint, sizeof hint, "%s_scale", base);
    s = const_f32(g, hint, cfg.fixed_scale);
    if (s == NBL_NONE) return oom();
  } else if (pact) {
    snprintf(hint, sizeof hint, "%s_zero", base);
    zero = const_f32(g, hint, 0.0f);
    if (zero == NBL_NONE) return oom();
    nbl_id cin[3] = {x, zero, alpha};
    xin = emit(g, "Clip", base, 3, cin, NBL_NONE);
    snprintf(hint, sizeof hint, "%s_levels", base);
    nbl_id lv = const_f32(g, hint, (float)(qmax - qmin));
    if (xin == NBL_NONE || lv == NBL_NONE) return oom();
    nbl_id din[2] = {alpha, lv};
    s = emit(g, "Div", base, 2, din, NBL_NONE);
    if (s == NBL_NONE) return oom();
  } else {
    /* max statistics; s0 > 0 ? s0 : 1 */
    nbl_id s0;
    snprintf(hint, sizeof hint, "%s_one", base);
    one = const_f32(g, hint, 1.0f);
    snprintf(hint, sizeof hint, "%s_zero", base);
    zero = const_f32(g, hint, 0.0f);
    if (one == NBL_NONE || zero == NBL_NONE) return oom();
    nbl_id mn = NBL_NONE;
    if (!affine) {
      nbl_id ab = emit(g, "Abs", base, 1, &x, NBL_NONE);
      if (ab == NBL_NONE) return oom();
      nbl_id mx = emit(g, "ReduceMax", base, 1, &ab, NBL_NONE);
      if (mx == NBL_NONE) return oom();
      nbl_node_set_attr_int(g, g->values[mx].producer, "keepdims", 0);
      if (cfg.scale_source == NBL_Q4_SCALE_MSE && (st = nbl_lower_mse_top(g, base, &cfg, x, NBL_NONE, mx, &mx)))
        return st;
      snprintf(hint, sizeof hint, "%s_qmax", base);
      nbl_id qm = const_f32(g, hint, (float)qmax);
      if (qm == NBL_NONE) return oom();
      nbl_id din[2] = {mx, qm};
      s0 = emit(g, "Div", base, 2, din, NBL_NONE);
    } else {
      nbl_id mx = emit(g, "ReduceMax", base, 1, &x, NBL_NONE);
      mn = emit(g, "ReduceMin", base, 1, &x, NBL_NONE);
      if (mx == NBL_NONE || mn == NBL_NONE) return oom();
      nbl_node_set_attr_int(g, g->values[mx].producer, "keepdims", 0);
      nbl_node_set_attr_int(g, g->values[mn].producer, "keepdims", 0);
      if (cfg.scale_source == NBL_Q4_SCALE_MSE && (st = nbl_lower_mse_top(g, base, &cfg, x, mn, mx, &mx)))
        return st;
      nbl_id sin[2] = {mx, mn};
      nbl_id rg = emit(g, "Sub", base, 2, sin, NBL_NONE);
      snprintf(hint, sizeof hint, "%s_levels", base);
      nbl_id lv = const_f32(g, hint, (float)(qmax - qmin));
      if (rg == NBL_NONE || lv == NBL_NONE) return oom();
      nbl_id din[2] = {rg, lv};
      s0 = emit(g, "Div", base, 2, din, NBL_NONE);
    }
    if (s0 == NBL_NONE) return oom();
    nbl_id gin[2] = {s0, zero};
    nbl_id pos = emit(g, "Greater", base, 2, gin, NBL_NONE);
    if (pos == NBL_NONE) return oom();
    nbl_id win[3] = {pos, s0, one};
    s = emit(g, "Where", base, 3, win, NBL_NONE);
    if (s == NBL_NONE) return oom();
    if (affine) {
      /* z = Cast<int8>(Clip(Round(qmin - min / s), -128, 127)) */
      nbl_id din[2] = {mn, s};
      nbl_id r = emit(g, "Div", base, 2, din, NBL_NONE);
      snprintf(hint, sizeof hint, "%s_qmin", base);
      nbl_id qm = const_f32(g, hint, (float)qmin);
      if (r == NBL_NONE || qm == NBL_NONE) return oom();
      nbl_id sin[2] = {qm, r};
      nbl_id d = emit(g, "Sub", base, 2, sin, NBL_NONE);
      if (d == NBL_NONE) return oom();
      nbl_id rd = emit(g, "Round", base, 1, &d, NBL_NONE);
      snprintf(hint, sizeof hint, "%s_zlo", base);
      nbl_id lo = const_f32(g, hint, -128.0f);
      snprintf(hint, sizeof hint, "%s_zhi", base);
      nbl_id hi = const_f32(g, hint, 127.0f);
      if (rd == NBL_NONE || lo == NBL_NONE || hi == NBL_NONE) return oom();
      nbl_id cin[3] = {rd, lo, hi};
      nbl_id cl = emit(g, "Clip", base, 3, cin, NBL_NONE);
      if (cl == NBL_NONE) return oom();
      z = emit(g, "Cast", base, 1, &cl, NBL_NONE);
      if (z == NBL_NONE) return oom();
      nbl_node_set_attr_int(g, g->values[z].producer, "to", NBL_DT_INT8);
    }
  }
  /* code type and zero point */
  int use_int4 = !affine && cfg.bits == 4 && qmin == -8;
  int use_int8_plain = !affine && cfg.bits == 8 && qmin == -128;
  if (z == NBL_NONE) {
    snprintf(hint, sizeof hint, "%s_zero_point", base);
    z = const_i8(g, hint, use_int4 ? NBL_DT_INT4 : NBL_DT_INT8, pact ? qmin : 0);
    if (z == NBL_NONE) return oom();
  }
  nbl_id qin[3] = {xin, s, z};
  nbl_id q = emit(g, "QuantizeLinear", base, 3, qin, NBL_NONE);
  if (q == NBL_NONE) return oom();
  if (!use_int4 && !use_int8_plain) {
    snprintf(hint, sizeof hint, "%s_qmin", base);
    nbl_id lo = const_i8(g, hint, NBL_DT_INT8, qmin);
    snprintf(hint, sizeof hint, "%s_qmax", base);
    nbl_id hi = const_i8(g, hint, NBL_DT_INT8, qmax);
    if (lo == NBL_NONE || hi == NBL_NONE) return oom();
    nbl_id cin[3] = {q, lo, hi};
    q = emit(g, "Clip", base, 3, cin, NBL_NONE);
    if (q == NBL_NONE) return oom();
  }
  nbl_id din[3] = {q, s, z};
  if (emit(g, "DequantizeLinear", base, 3, din, y) == NBL_NONE) return oom();
  return NBL_OK;
}

/* ------------------------------------------------------------------ the pass */

static nbl_status check_subgraphs(const nbl_model *m, const nbl_graph *g, int top) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    if (!top && strcmp(n->domain, "ai.nibble") == 0)
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: node '%s' (%s, domain ai.nibble) inside a subgraph: not lowered",
                        nbl_model_label(m), n->name, n->op_type);
    for (int a = 0; a < n->n_attrs; a++) {
      const nbl_attr *at = &n->attrs[a];
      nbl_status st = NBL_OK;
      if (at->type == NBL_ATTR_GRAPH && at->g) st = check_subgraphs(m, at->g, 0);
      for (int j = 0; at->type == NBL_ATTR_GRAPHS && j < at->n && !st; j++)
        st = check_subgraphs(m, at->graphs[j], 0);
      if (st) return st;
    }
  }
  return NBL_OK;
}

static nbl_status lower_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  nbl_status st = check_subgraphs(m, g, 1);
  if (st) return st;
  int any = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->domain, "ai.nibble")) continue;
    if (strcmp(n->op_type, "QuantizeInt4") && strcmp(n->op_type, "QuantizeLog") &&
        strcmp(n->op_type, "QuantizeTernary") && strcmp(n->op_type, "QuantizeAbsmax8") &&
        strcmp(n->op_type, "DequantizeTernary"))
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: node '%s' (%s, domain ai.nibble): no lowering to standard ONNX",
                        nbl_model_label(m), n->name, n->op_type);
    any = 1;
  }
  if (!any) return NBL_OK;
  st = nbl_convert_opset(ctx, 21);
  if (st) return st;
  int folded = 0, dynamic = 0, nlog = 0, nn = g->n_nodes;
  size_t qb = 0, fb = 0;
  for (nbl_id i = 0; i < nn && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->domain, "ai.nibble")) continue;
    if (!strcmp(n->op_type, "QuantizeLog")) { /* passes/lower_log.c */
      st = nbl_lower_quantize_log(ctx, g, i);
      nlog++;
      continue;
    }
    int f = 0, q4 = !strcmp(n->op_type, "QuantizeInt4");
    size_t a = 0, b = 0;
    /* the ternary ops: lower_ternary.c */
    st = q4 ? nbl_q4_fold_constant(ctx, g, i, 0, &f, &a, &b)
            : nbl_tern_fold_constant(ctx, g, i, 1, 0, &f, &a, &b);
    if (st) break;
    if (f) {
      folded++;
      qb += a;
      fb += b;
      continue;
    }
    st = q4 ? lower_dynamic(ctx, g, i) : nbl_tern_lower_dynamic(ctx, g, i);
    dynamic++;
  }
  if (st) return st;
  /* drop the ai.nibble import when nothing uses it any more (a training
   * graph may still hold ai.nibble ops: then it stays) */
  int used = 0;
  for (int t = 0; t < m->n_training; t++)
    for (const nbl_graph *tg = m->training[t].algorithm; tg && !used; tg = NULL)
      for (int i = 0; i < tg->n_nodes && !used; i++)
        used = !tg->nodes[i].dead && !strcmp(tg->nodes[i].domain, "ai.nibble");
  int k = 0;
  for (int i = 0; i < m->n_opsets; i++)
    if (used || strcmp(m->opsets[i].domain, "ai.nibble")) m->opsets[k++] = m->opsets[i];
  m->n_opsets = k;
  nbl_graph_dce(g);
  nbl_graph_compact(g);
  ctx->changed += folded + dynamic + nlog;
  if (folded + dynamic)
    nbl_pass_logf(ctx,
                  "lowered %d quantizers: %d constant (codes %zu bytes, FP32 %zu bytes), %d "
                  "dynamic (QuantizeLinear/DequantizeLinear)",
                  folded + dynamic, folded, qb, fb, dynamic);
  if (nlog)
    nbl_pass_logf(ctx, "lowered %d QuantizeLog (threshold table: Abs, ReduceMax, Cast, Sqrt, "
                       "GreaterOrEqual, ReduceSum, Gather, Where)", nlog);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_lower_to_onnx = {
    .name = "lower-to-onnx",
    .description = "rewrite nibble's own ops (ai.nibble QuantizeInt4, QuantizeTernary, "
                   "QuantizeAbsmax8, DequantizeTernary, QuantizeLog with nearest/tpr rounding) into "
                   "standard ONNX (opset 21: INT4 DequantizeLinear, QuantizeLinear; QuantizeLog as "
                   "a threshold table) for other runtimes",
    .run = lower_run,
};
