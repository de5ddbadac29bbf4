/* lower_ternary.c - the ternary ops (runtime/formats/ternary.h) for
 * pack-ternary and lower-to-onnx; declared in lower.h.
 *
 * Constant weights: QuantizeTernary of a finite float32 initializer is
 * computed once. pack-ternary stores the codes packed (base 3, five a byte,
 * or 2 bits, four a byte) in a uint8 initializer feeding an ai.nibble
 * DequantizeTernary(codes, scale) with the weight's shape; lower-to-onnx
 * writes them as an INT4 initializer (ONNX Runtime's smallest type through
 * DequantizeLinear at opset 21; its INT2 needs opset 25, see the README)
 * feeding DequantizeLinear(q, scale), and rewrites a DequantizeTernary the
 * same way. Outputs are unchanged: s * q in float32 either way.
 *
 * Non-constant tensors (lower-to-onnx):
 *   QuantizeTernary:  s = Where(m > 0, m, 1), m = ReduceMean(Abs(x)) over all
 *                     elements; Clip(QuantizeLinear(x, s, int8 0), -1, 1) then
 *                     DequantizeLinear. (nibble sums in double over the finite
 *                     elements; ONNX Runtime in float: s may differ in the
 *                     last bit, and a value exactly on a rounding boundary
 *                     then gets the other code.)
 *   QuantizeAbsmax8:  s = Where(m > 0, m, 1), m = ReduceMax(Abs(x)) / 127;
 *                     per tensor QuantizeLinear / DequantizeLinear (int8);
 *                     per row (ReduceMax over the last axis, keepdims)
 *                     Mul(Clip(Round(Div(x, s)), -128, 127), s), the same
 *                     float32 operations as nibble's quantizer.
 * QuantizeTernaryGrad (a training graph's op) has no lowering. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "lower.h"
#include "runtime/formats/ternary.h"

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

/* Decode node n's attributes; an error names the model, node and attribute. */
static nbl_status node_attrs(const nbl_model *m, const nbl_node *n, nbl_tern_attrs *a) {
  char err[256];
  nbl_status st = nbl_tern_attrs_decode(n, a, err, sizeof err);
  if (st != NBL_OK)
    return nbl_errorf(st, "%s: node '%s' (%s): %s", nbl_model_label(m), n->name, n->op_type, err);
  return NBL_OK;
}

/* 1 if output i of n exists and is used. */
static int out_used(const nbl_graph *g, const nbl_node *n, int i) {
  if (i >= n->n_outputs || n->outputs[i] == NBL_NONE) return 0;
  const nbl_value *v = &g->values[n->outputs[i]];
  return v->n_consumers > 0 || (v->flags & NBL_VAL_OUTPUT);
}

/* A constant (initializer, not a graph input) tensor at input i of n, or NULL. */
static const nbl_tensor *const_in(const nbl_graph *g, const nbl_node *n, int i) {
  if (i >= n->n_inputs || n->inputs[i] == NBL_NONE) return NULL;
  const nbl_value *v = &g->values[n->inputs[i]];
  return v->init && !(v->flags & NBL_VAL_INPUT) ? v->init : NULL;
}

/* Replace node nid by op(ins) writing its output 0 (same name). */
static nbl_status replace_node(nbl_graph *g, nbl_id nid, const char *op, const char *domain,
                               int n_in, const nbl_id *ins, nbl_id *out_node) {
  nbl_id y = g->nodes[nid].outputs[0];
  char *name = nbl_arena_strdup(g->model->arena, g->nodes[nid].name);
  nbl_node_kill(g, nid);
  nbl_id k = nbl_graph_add_node(g, op, domain, name, n_in, ins, 1, &y);
  if (k == NBL_NONE) return NBL_ERR_INTERNAL;
  if (out_node) *out_node = k;
  return NBL_OK;
}

nbl_status nbl_tern_fold_constant(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int to_int4,
                                  int packing, int *folded, size_t *q_bytes, size_t *f32_bytes) {
  *folded = 0;
  const nbl_node *n = &g->nodes[nid];
  nbl_tern_attrs a;
  nbl_status st = node_attrs(ctx->model, n, &a);
  if (st) return st;
  int deq = !strcmp(n->op_type, "DequantizeTernary");
  if (!deq && strcmp(n->op_type, "QuantizeTernary")) return NBL_OK;
  if (deq && !to_int4) return NBL_OK; /* already packed */
  if (!deq && out_used(g, n, 1)) return NBL_OK;
  const nbl_tensor *xt = const_in(g, n, 0);
  if (!xt) return NBL_OK;
  int rank;
  const int64_t *dims;
  int64_t numel;
  float scale;
  int8_t *q;
  if (deq) {
    const nbl_tensor *st_ = const_in(g, n, 1);
    if (!st_ || st_->dtype != NBL_DT_FLOAT || nbl_tensor_numel(st_) != 1) return NBL_OK;
    if (xt->dtype != NBL_DT_UINT8 || xt->rank != 1 ||
        (size_t)nbl_tensor_numel(xt) != nbl_tern_packed_bytes(a.packing, (size_t)a.numel))
      return nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: node '%s' (DequantizeTernary): codes '%s' do not hold %lld packed codes",
                        nbl_model_label(ctx->model), n->name, xt->name, (long long)a.numel);
    memcpy(&scale, st_->data, sizeof scale);
    rank = a.rank;
    dims = a.dims;
    numel = a.numel;
    q = malloc((size_t)(numel ? numel : 1));
    if (!q) return oom();
    if (nbl_tern_unpack(a.packing, xt->data, (size_t)numel, q) != 0) {
      free(q);
      return nbl_errorf(NBL_ERR_INVALID_MODEL,
                        "%s: node '%s' (DequantizeTernary): codes '%s' hold a byte that is not a "
                        "packed group", nbl_model_label(ctx->model), n->name, xt->name);
    }
  } else {
    if (xt->dtype != NBL_DT_FLOAT) return NBL_OK;
    numel = nbl_tensor_numel(xt);
    if (numel < 0) return NBL_OK;
    const float *x = xt->data;
    for (int64_t i = 0; i < numel; i++)
      if (!isfinite(x[i])) return NBL_OK; /* NaN/Inf must propagate: keep the dynamic form */
    rank = xt->rank;
    dims = xt->dims;
    scale = nbl_tern_scale(x, (size_t)numel);
    q = malloc((size_t)(numel ? numel : 1));
    if (!q) return oom();
    nbl_tern_codes(x, q, (size_t)numel, scale);
  }
  char base[512], hint[600];
  snprintf(base, sizeof base, "%s", g->values[n->inputs[0]].name);
  size_t qb;
  nbl_id qv, sv;
  if (to_int4) {
    qb = (size_t)(numel + 1) / 2;
    uint8_t *p = malloc(qb ? qb : 1);
    if (!p) {
      free(q);
      return oom();
    }
    nbl_q4_pack(q, (size_t)numel, p);
    snprintf(hint, sizeof hint, "%s_int4", base);
    qv = nbl_lower_const(g, hint, NBL_DT_INT4, rank, dims, p);
    free(p);
  } else {
    qb = nbl_tern_packed_bytes((nbl_tern_packing)packing, (size_t)numel);
    uint8_t *p = malloc(qb ? qb : 1);
    if (!p) {
      free(q);
      return oom();
    }
    nbl_tern_pack((nbl_tern_packing)packing, q, (size_t)numel, p);
    int64_t len = (int64_t)qb;
    snprintf(hint, sizeof hint, "%s_tern", base);
    qv = nbl_lower_const(g, hint, NBL_DT_UINT8, 1, &len, p);
    free(p);
  }
  free(q);
  snprintf(hint, sizeof hint, "%s_scale", base);
  sv = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &scale);
  if (qv == NBL_NONE || sv == NBL_NONE) return oom();
  nbl_id ins[2] = {qv, sv}, k;
  if (to_int4) {
    st = replace_node(g, nid, "DequantizeLinear", "", 2, ins, &k);
  } else {
    int64_t shape[NBL_TERN_MAX_RANK];
    for (int i = 0; i < rank; i++) shape[i] = dims[i];
    st = replace_node(g, nid, "DequantizeTernary", "ai.nibble", 2, ins, &k);
    if (!st) {
      nbl_node_set_attr_ints(g, k, "shape", rank, shape);
      if (packing == NBL_TERN_PACK_2BIT) nbl_node_set_attr_string(g, k, "packing", "2bit");
    }
  }
  if (st) return st;
  *folded = 1;
  if (q_bytes) *q_bytes = qb;
  if (f32_bytes) *f32_bytes = sizeof(float) * (size_t)numel;
  return NBL_OK;
}

nbl_status nbl_tern_lower_dynamic(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid) {
  const nbl_node *n = &g->nodes[nid];
  const char *lbl = nbl_model_label(ctx->model);
  nbl_tern_attrs a;
  nbl_status st = node_attrs(ctx->model, n, &a);
  if (st) return st;
  int tern = !strcmp(n->op_type, "QuantizeTernary");
  if (!tern && strcmp(n->op_type, "QuantizeAbsmax8"))
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: node '%s' (%s, domain ai.nibble): no lowering to "
                      "standard ONNX", lbl, n->name, n->op_type);
  if (out_used(g, n, 1))
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: node '%s' (%s): its scale output is used; not lowered", lbl, n->name,
                      n->op_type);
  if (n->n_inputs < 1 || n->inputs[0] == NBL_NONE)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: node '%s' (%s): input X is missing", lbl,
                      n->name, n->op_type);
  nbl_id x = n->inputs[0], y = n->outputs[0];
  int per_row = !tern && a.per_row;
  char base[512], hint[600];
  snprintf(base, sizeof base, "%s", n->name[0] ? n->name : g->values[x].name);
  nbl_node_kill(g, nid);
  /* m: the statistic; s = Where(m > 0, m, 1) */
  nbl_id ab = nbl_lower_emit(g, "Abs", base, 1, &x, NBL_NONE);
  if (ab == NBL_NONE) return oom();
  nbl_id m;
  if (per_row) {
    int64_t last = -1;
    snprintf(hint, sizeof hint, "%s_axes", base);
    nbl_id ax = nbl_lower_const(g, hint, NBL_DT_INT64, 1, (int64_t[]){1}, &last);
    if (ax == NBL_NONE) return oom();
    nbl_id rin[2] = {ab, ax};
    m = nbl_lower_emit(g, "ReduceMax", base, 2, rin, NBL_NONE);
    if (m == NBL_NONE) return oom();
  } else {
    m = nbl_lower_emit(g, tern ? "ReduceMean" : "ReduceMax", base, 1, &ab, NBL_NONE);
    if (m == NBL_NONE) return oom();
    nbl_node_set_attr_int(g, g->values[m].producer, "keepdims", 0);
  }
  if (!tern) {
    snprintf(hint, sizeof hint, "%s_127", base);
    nbl_id c127 = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &(float){127.0f});
    if (c127 == NBL_NONE) return oom();
    nbl_id din[2] = {m, c127};
    m = nbl_lower_emit(g, "Div", base, 2, din, NBL_NONE);
    if (m == NBL_NONE) return oom();
  }
  snprintf(hint, sizeof hint, "%s_zero", base);
  nbl_id zero = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &(float){0.0f});
  snprintf(hint, sizeof hint, "%s_one", base);
  nbl_id one = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &(float){1.0f});
  if (zero == NBL_NONE || one == NBL_NONE) return oom();
  nbl_id gin[2] = {m, zero};
  nbl_id pos = nbl_lower_emit(g, "Greater", base, 2, gin, NBL_NONE);
  if (pos == NBL_NONE) return oom();
  nbl_id win[3] = {pos, m, one};
  nbl_id s = nbl_lower_emit(g, "Where", base, 3, win, NBL_NONE);
  if (s == NBL_NONE) return oom();
  if (per_row) {
    nbl_id din[2] = {x, s};
    nbl_id r = nbl_lower_emit(g, "Div", base, 2, din, NBL_NONE);
    if (r == NBL_NONE) return oom();
    r = nbl_lower_emit(g, "Round", base, 1, &r, NBL_NONE);
    snprintf(hint, sizeof hint, "%s_lo", base);
    nbl_id lo = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &(float){-128.0f});
    snprintf(hint, sizeof hint, "%s_hi", base);
    nbl_id hi = nbl_lower_const(g, hint, NBL_DT_FLOAT, 0, NULL, &(float){127.0f});
    if (r == NBL_NONE || lo == NBL_NONE || hi == NBL_NONE) return oom();
    nbl_id cin[3] = {r, lo, hi};
    r = nbl_lower_emit(g, "Clip", base, 3, cin, NBL_NONE);
    if (r == NBL_NONE) return oom();
    nbl_id min_[2] = {r, s};
    return nbl_lower_emit(g, "Mul", base, 2, min_, y) == NBL_NONE ? oom() : NBL_OK;
  }
  snprintf(hint, sizeof hint, "%s_zero_point", base);
  int8_t z0 = 0;
  nbl_id z = nbl_lower_const(g, hint, NBL_DT_INT8, 0, NULL, &z0);
  if (z == NBL_NONE) return oom();
  nbl_id qin[3] = {x, s, z};
  nbl_id q = nbl_lower_emit(g, "QuantizeLinear", base, 3, qin, NBL_NONE);
  if (q == NBL_NONE) return oom();
  if (tern) {
    int8_t lo8 = -1, hi8 = 1;
    snprintf(hint, sizeof hint, "%s_qmin", base);
    nbl_id lo = nbl_lower_const(g, hint, NBL_DT_INT8, 0, NULL, &lo8);
    snprintf(hint, sizeof hint, "%s_qmax", base);
    nbl_id hi = nbl_lower_const(g, hint, NBL_DT_INT8, 0, NULL, &hi8);
    if (lo == NBL_NONE || hi == NBL_NONE) return oom();
    nbl_id cin[3] = {q, lo, hi};
    q = nbl_lower_emit(g, "Clip", base, 3, cin, NBL_NONE);
    if (q == NBL_NONE) return oom();
  }
  nbl_id din[3] = {q, s, z};
  return nbl_lower_emit(g, "DequantizeLinear", base, 3, din, y) == NBL_NONE ? oom() : NBL_OK;
}
