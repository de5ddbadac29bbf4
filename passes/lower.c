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
 * NaN/Inf (nibble skips them). Other ai.nibble ops are an error.
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
 * DequantizeLinear, dynamic ones to standard ops.
 *
 * The default-domain opset is upgraded to 21 first (nbl_upgrade_opset). */
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

nbl_status nbl_q4_fold_constant(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int only_int4,
                                int *folded, size_t *q_bytes, size_t *f32_bytes) {
  *folded = 0;
  const nbl_node *n = &g->nodes[nid];
  nbl_q4_config cfg;
  nbl_status st = q4_node_config(ctx->model, n, &cfg);
  if (st) return st;
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE) return NBL_OK;
  if (n->n_inputs > 1 && n->inputs[1] != NBL_NONE) return NBL_OK; /* PACT input */
  if (output_used(g, n, 1) || output_used(g, n, 2)) return NBL_OK;
  const nbl_value *xv = &g->values[n->inputs[0]];
  const nbl_tensor *xt = xv->init;
  if (!xt || (xv->flags & NBL_VAL_INPUT) || xt->dtype != NBL_DT_FLOAT) return NBL_OK;
  if (cfg.scale_source == NBL_Q4_SCALE_PACT) return NBL_OK;
  int int4 = cfg.bits == 4 && cfg.mode == NBL_Q4_SYMMETRIC;
  if (only_int4 && !int4) return NBL_OK;
  int64_t numel = nbl_tensor_numel(xt);
  if (numel < 0) return NBL_OK;
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
  int finite = 1;
  for (int64_t i = 0; i < numel; i++) finite &= isfinite(x[i]) != 0;
  nbl_q4_params p;
  const char *why = NULL;
  if (!finite) goto done; /* NaN/Inf must propagate: keep the dynamic form */
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

/* ------------------------------------------------------------------ opset upgrade */

/* The opset from which op's meaning equals its meaning at NBL_OPSET_MAX (its
 * table entry's stable_since: later versions only added types or attributes
 * whose defaults keep the old behaviour); -1 when not established. */
static int stable_since(const char *op) {
  const nbl_op_def *d = nbl_op_lookup("", op, NBL_OPSET_MAX);
  return d && d->stable_since > 0 ? d->stable_since : -1;
}

/* Drop attribute `name` from node n (no-op if absent). */
static void drop_attr(nbl_node *n, const char *name) {
  for (int i = 0; i < n->n_attrs; i++)
    if (!strcmp(n->attrs[i].name, name)) {
      memmove(&n->attrs[i], &n->attrs[i + 1], sizeof(nbl_attr) * (size_t)(n->n_attrs - i - 1));
      n->n_attrs--;
      return;
    }
}

/* Append input v to node nid at position idx (padding omitted inputs). */
static nbl_status set_input_at(nbl_graph *g, nbl_id nid, int idx, nbl_id v) {
  nbl_node *n = &g->nodes[nid];
  if (idx >= n->n_inputs) {
    nbl_id *in = nbl_arena_alloc(g->model->arena, sizeof(nbl_id) * (size_t)(idx + 1));
    if (!in) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int i = 0; i <= idx; i++) in[i] = i < n->n_inputs ? n->inputs[i] : NBL_NONE;
    n->inputs = in;
    n->n_inputs = idx + 1;
  }
  nbl_node_set_input(g, nid, idx, v);
  return NBL_OK;
}

/* Move INTS attribute `attr` of node nid into input `idx` as an int64 initializer. */
static nbl_status attr_to_input(nbl_graph *g, nbl_id nid, const char *attr, int idx) {
  nbl_node *n = &g->nodes[nid];
  int cnt = 0;
  const int64_t *v = nbl_attr_ints(n, attr, &cnt);
  if (!nbl_node_attr(n, attr)) return NBL_OK;
  char hint[512];
  snprintf(hint, sizeof hint, "%s_%s", n->name[0] ? n->name : n->op_type, attr);
  int64_t d = cnt;
  nbl_id c = add_const(g, hint, NBL_DT_INT64, 1, &d, v);
  if (c == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  n = &g->nodes[nid];
  if (idx > n->n_inputs) return NBL_ERR_INTERNAL;
  drop_attr(n, attr);
  return set_input_at(g, nid, idx, c);
}

static nbl_status upgrade_node(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int from) {
  nbl_node *n = &g->nodes[nid];
  const char *op = n->op_type;
  int since = stable_since(op);
  if (since >= 0 && from >= since) return NBL_OK;
  const char *lbl = nbl_model_label(ctx->model);
  if (!strncmp(op, "Reduce", 6) && since >= 0 && from >= 1) {
    if (n->n_inputs > 1) return NBL_ERR_INTERNAL;
    return attr_to_input(g, nid, "axes", 1);
  }
  if ((!strcmp(op, "Squeeze") || !strcmp(op, "Unsqueeze")) && from >= 1)
    return attr_to_input(g, nid, "axes", 1);
  if (!strcmp(op, "Split") && from >= 2) {
    if (from < 13) {
      nbl_status st = attr_to_input(g, nid, "split", 1);
      if (st) return st;
      n = &g->nodes[nid];
    }
    if (n->n_inputs < 2 || n->inputs[1] == NBL_NONE)
      nbl_node_set_attr_int(g, nid, "num_outputs", n->n_outputs);
    return NBL_OK;
  }
  if (!strcmp(op, "Clip") && from >= 6) {
    float lo = nbl_attr_float(n, "min", -INFINITY), hi = nbl_attr_float(n, "max", INFINITY);
    char hint[512];
    snprintf(hint, sizeof hint, "%s_min", n->name[0] ? n->name : "clip");
    nbl_id a = const_f32(g, hint, lo);
    snprintf(hint, sizeof hint, "%s_max", g->nodes[nid].name[0] ? g->nodes[nid].name : "clip");
    nbl_id b = const_f32(g, hint, hi);
    if (a == NBL_NONE || b == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    drop_attr(&g->nodes[nid], "min");
    drop_attr(&g->nodes[nid], "max");
    nbl_status st = set_input_at(g, nid, 1, a);
    return st ? st : set_input_at(g, nid, 2, b);
  }
  if (!strcmp(op, "Dropout") && from >= 7) {
    /* inference: identity when the mask output is unused */
    if (output_used(g, n, 1))
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: node '%s' (Dropout, opset %d): mask output used; cannot upgrade to "
                        "opset 21", lbl, n->name, from);
    if (n->n_outputs > 1 && n->outputs[1] != NBL_NONE) {
      g->values[n->outputs[1]].producer = NBL_NONE;
      g->values[n->outputs[1]].dead = true;
    }
    n->n_outputs = 1;
    n->n_inputs = 1;
    n->op_type = nbl_arena_strdup(g->model->arena, "Identity");
    drop_attr(n, "ratio");
    drop_attr(n, "is_test");
    return NBL_OK;
  }
  if ((!strcmp(op, "Softmax") || !strcmp(op, "LogSoftmax")) && from >= 1) {
    /* before 13 the input is coerced to 2-D at axis: equal when axis is the last one */
    nbl_id x = n->inputs[0];
    const nbl_type *t = &g->values[x].type;
    int64_t axis = nbl_attr_int(n, "axis", 1);
    if (t->kind == NBL_TYPE_TENSOR && t->rank > 0) {
      if (axis < 0) axis += t->rank;
      if (axis == t->rank - 1) {
        nbl_node_set_attr_int(g, nid, "axis", -1);
        return NBL_OK;
      }
    }
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (%s, opset %d): axis is not known to be the last one; "
                      "cannot prove it equivalent at opset 21",
                      lbl, n->name, op, from);
  }
  return nbl_errorf(NBL_ERR_UNSUPPORTED,
                    "%s: node '%s' (%s, opset %d): cannot prove it equivalent at opset 21; "
                    "upgrade refused",
                    lbl, n->name, op, from);
}

nbl_status nbl_upgrade_opset(nbl_pass_ctx *ctx, int target) {
  nbl_model *m = ctx->model;
  int from = (int)nbl_model_opset(m, "");
  if (!from) from = (int)nbl_model_opset(m, "ai.onnx");
  if (m->ir_version < 10) m->ir_version = 10;
  if (from >= target) return NBL_OK;
  nbl_graph *g = m->graph;
  int nn = g->n_nodes;
  for (nbl_id i = 0; i < nn; i++) {
    if (g->nodes[i].dead || (g->nodes[i].domain[0] && strcmp(g->nodes[i].domain, "ai.onnx")))
      continue;
    nbl_status st = upgrade_node(ctx, g, i, from);
    if (st) return st;
  }
  nbl_pass_logf(ctx, "default-domain opset %d -> %d", from, target);
  for (int i = 0; i < m->n_opsets; i++)
    if (!strcmp(m->opsets[i].domain, "ai.onnx")) m->opsets[i].version = target;
  return nbl_model_set_opset(m, "", target);
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
    if (strcmp(n->op_type, "QuantizeInt4") && strcmp(n->op_type, "QuantizeTernary") &&
        strcmp(n->op_type, "QuantizeAbsmax8") && strcmp(n->op_type, "DequantizeTernary"))
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: node '%s' (%s, domain ai.nibble): no lowering to standard ONNX",
                        nbl_model_label(m), n->name, n->op_type);
    any = 1;
  }
  if (!any) return NBL_OK;
  st = nbl_upgrade_opset(ctx, 21);
  if (st) return st;
  int folded = 0, dynamic = 0, nn = g->n_nodes;
  size_t qb = 0, fb = 0;
  for (nbl_id i = 0; i < nn && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->domain, "ai.nibble")) continue;
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
  /* drop the ai.nibble import when nothing uses it any more */
  int k = 0;
  for (int i = 0; i < m->n_opsets; i++)
    if (strcmp(m->opsets[i].domain, "ai.nibble")) m->opsets[k++] = m->opsets[i];
  m->n_opsets = k;
  nbl_graph_dce(g);
  nbl_graph_compact(g);
  ctx->changed += folded + dynamic;
  nbl_pass_logf(ctx,
                "lowered %d quantizers: %d constant (codes %zu bytes, FP32 %zu bytes), %d "
                "dynamic (QuantizeLinear/DequantizeLinear)",
                folded + dynamic, folded, qb, fb, dynamic);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_lower_to_onnx = {
    .name = "lower-to-onnx",
    .description = "rewrite nibble's own ops (ai.nibble QuantizeInt4, QuantizeTernary, "
                   "QuantizeAbsmax8, DequantizeTernary) into standard ONNX (opset 21: INT4 "
                   "DequantizeLinear, QuantizeLinear) for other runtimes",
    .run = lower_run,
};
