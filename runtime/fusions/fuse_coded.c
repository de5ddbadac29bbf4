/* fuse_coded.c - the consumer of the fused integer paths (INT4, ternary),
 * found and parsed once for both (fuse_coded.h). */
#include <stdio.h>

#include "runtime/fusions/fuse_coded.h"

int nbl_fuse_coded_match(const nbl_model *m, const nbl_graph *g, nbl_id id, const char *xq_op,
                         nbl_code_consumer *o) {
  const nbl_node *n = &g->nodes[id];
  if (nbl_fuse_is_op(n, "", "Conv")) o->kind = NBL_CODE_CONV;
  else if (nbl_fuse_is_op(n, "", "Gemm")) o->kind = NBL_CODE_GEMM;
  else if (nbl_fuse_is_op(n, "", "MatMul")) o->kind = NBL_CODE_MATMUL;
  else return -1;
  if (n->n_inputs < 2 || n->n_outputs < 1 || nbl_model_opset(m, "ai.nibble") != 1) return -1;
  const nbl_node *qx = nbl_fuse_producer(g, n->inputs[0]), *wn = nbl_fuse_producer(g, n->inputs[1]);
  if (!nbl_fuse_is_op(qx, "ai.nibble", xq_op) || qx->n_inputs < 1 || qx->inputs[0] == NBL_NONE ||
      qx->outputs[0] != n->inputs[0] || !wn || wn->outputs[0] != n->inputs[1] || wn->n_inputs < 1)
    return -1;
  o->orig = n;
  o->qx = (nbl_id)(qx - g->nodes);
  o->wnode = (nbl_id)(wn - g->nodes);
  o->ins[0] = qx->inputs[0];
  o->ins[1] = NBL_NONE;
  o->ins[2] = o->kind != NBL_CODE_MATMUL && n->n_inputs > 2 ? n->inputs[2] : NBL_NONE;
  o->ins[3] = NBL_NONE;
  o->ins[4] = NBL_NONE;
  o->res_node = NBL_NONE;
  o->act_node = NBL_NONE;
  o->groups = 1;
  return 0;
}

int nbl_fuse_coded_attrs(nbl_code_consumer *o) {
  const nbl_node *n = o->orig;
  o->groups = 1;
  if (o->kind == NBL_CODE_CONV) {
    if (o->wrank != 4) return -1;
    int64_t grp = nbl_attr_int(n, "group", 1);
    if (grp <= 0 || grp > (1 << 20) || o->wdims[0] % grp) return -1;
    o->groups = (int)grp;
  } else if (o->kind == NBL_CODE_GEMM) {
    if (o->wrank != 2 || nbl_attr_int(n, "transA", 0) != 0) return -1;
    o->trans_b = nbl_attr_int(n, "transB", 0) != 0;
    o->alpha = nbl_attr_float(n, "alpha", 1.0f);
    o->beta = nbl_attr_float(n, "beta", 1.0f);
  } else if (o->wrank != 2) {
    return -1;
  }
  return 0;
}

/* A Relu or constant-bound Clip that alone consumes node n's output: the
 * fused node writes its output instead, applying it in the epilogue. */
static void fuse_activation(const nbl_model *m, const nbl_graph *g, nbl_code_consumer *o,
                            const nbl_node *n) {
  nbl_id an;
  float lo, hi;
  if (!nbl_fuse_find_activation(m, g, n, &an, &lo, &hi)) return;
  o->act = 1;
  o->act_lo = lo;
  o->act_hi = hi;
  o->act_node = an;
  o->node.n_outputs = g->nodes[an].n_outputs;
  o->node.outputs = g->nodes[an].outputs;
}

void nbl_fuse_coded_node(const nbl_model *m, const nbl_graph *g, nbl_code_consumer *o,
                         const char *prefix) {
  const nbl_node *n = o->orig;
  o->node = *n;
  o->node.n_inputs = 4;
  o->node.inputs = o->ins;
  o->act_node = NBL_NONE;
  fuse_activation(m, g, o, n);
  snprintf(o->op, sizeof o->op, "%s%s%s%s", prefix, n->op_type, o->act ? "+" : "",
           o->act ? g->nodes[o->act_node].op_type : "");
  o->node.op_type = o->op;
}

void nbl_fuse_coded_residual(const nbl_model *m, const nbl_graph *g, nbl_code_consumer *o,
                             const int *pos, const char *prefix) {
  if (o->kind != NBL_CODE_CONV || o->act || o->node.n_outputs != 1) return;
  nbl_id v = o->node.outputs[0], r = NBL_NONE;
  nbl_id an = nbl_fuse_find_residual(g, (nbl_id)(o->orig - g->nodes), v, pos, &r);
  if (an == NBL_NONE) return;
  const nbl_node *a = &g->nodes[an];
  o->res_add = a;
  o->res_node = an;
  o->conv_out = v;
  o->ins[4] = r;
  o->node.n_inputs = 5;
  o->node.outputs = a->outputs;
  o->node.n_outputs = a->n_outputs;
  fuse_activation(m, g, o, a);
  snprintf(o->op, sizeof o->op, "%s%s+Add%s%s", prefix, o->orig->op_type, o->act ? "+" : "",
           o->act ? g->nodes[o->act_node].op_type : "");
}

nbl_id nbl_fuse_coded_next(const nbl_graph *g, const nbl_code_consumer *F, const char *q_op,
                           unsigned excluded_flags, nbl_id *q) {
  if (F->kind != NBL_CODE_CONV || F->node.n_outputs < 1 || F->node.outputs[0] == NBL_NONE)
    return NBL_NONE;
  const nbl_value *val = &g->values[F->node.outputs[0]];
  if ((val->flags & excluded_flags) || val->n_consumers != 1 ||
      nbl_fuse_used_in_subgraphs(g, val->name))
    return NBL_NONE;
  const nbl_node *qn = &g->nodes[val->consumers[0]];
  if (!nbl_fuse_is_op(qn, "ai.nibble", q_op) || qn->n_outputs < 1 || qn->outputs[0] == NBL_NONE)
    return NBL_NONE;
  const nbl_value *qv = &g->values[qn->outputs[0]];
  if ((qv->flags & excluded_flags) || qv->n_consumers != 1 ||
      nbl_fuse_used_in_subgraphs(g, qv->name))
    return NBL_NONE;
  *q = val->consumers[0];
  return qv->consumers[0];
}

int nbl_fuse_coded_pair(const nbl_code_consumer *F, const nbl_code_consumer *G, nbl_id q) {
  return G && G != F && G->kind == NBL_CODE_CONV && G->qx == q && G->ins[0] == F->node.outputs[0];
}
