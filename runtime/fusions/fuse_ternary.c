/* fuse_ternary.c - the ternary fast path, found at plan time (engines
 * without `reference`):
 *
 *   X --QuantizeAbsmax8--> Xq --\
 *                                Conv | Gemm | MatMul --> Y [--> Relu | Clip]
 *   W --QuantizeTernary--> Wq --/     (input 0 = Xq, input 1 = Wq)
 *
 * W a float32 initializer, or instead of its quantizer a DequantizeTernary
 * of constant packed codes and scale (pack-ternary's form). The consumer
 * then runs a synthetic node (runtime/kernels/ternary_fused.h, the state
 * and its kernel) with inputs [X, W source, bias, packed scale, residual];
 * the weights are packed here once; a Relu or constant-bound Clip that alone
 * consumes Y is applied in its epilogue, and so is, for a Conv, an Add of Y
 * and a value ready before the Conv runs (a residual), with a Relu/Clip
 * after that Add. The quantizer, activation and Add nodes only the fused
 * nodes used leave the schedule. Unless the values are watched, a fused
 * Conv may hand its output to a fused depthwise consumer as that
 * consumer's INT8 codes instead of floats (link_codes).
 *
 * Taken: 2-D Conv (per-tensor activations; strides, pads, dilations,
 * groups, depthwise), Gemm with transA = 0, MatMul with a rank-2 weight
 * (per-tensor or per-row activations). Left to the reference kernels:
 * per-row activations into a Conv, other ranks, weights that are not
 * constants.
 *
 * One line of the fusion table (registry.c), after INT4 and before the FP32
 * Conv + activation. */
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"
#include "runtime/kernels/ternary_fused.h"

typedef struct tern_fusion {
  int n_nodes;
  nbl_t_fused **by_node;
} tern_fusion;

/* The constant initializer behind v (not a graph input), or NULL. */
static const nbl_tensor *const_init(const nbl_graph *g, nbl_id v) {
  if (v == NBL_NONE || (g->values[v].flags & NBL_VAL_INPUT)) return NULL;
  return g->values[v].init;
}

static void fused_free(nbl_t_fused *f) {
  if (!f) return;
  nbl_t_fused_release(f);
  free(f);
}

/* A Relu or constant-bound Clip that alone consumes node n's output: the
 * fused node writes its output instead, applying it in the epilogue. */
static void fuse_activation(const nbl_model *m, const nbl_graph *g, nbl_t_fused *f,
                            const nbl_node *n) {
  nbl_id an;
  float lo, hi;
  if (!nbl_fuse_find_activation(m, g, n, &an, &lo, &hi)) return;
  f->act = 1;
  f->act_lo = lo;
  f->act_hi = hi;
  f->act_node = an;
  f->node.n_outputs = g->nodes[an].n_outputs;
  f->node.outputs = g->nodes[an].outputs;
}

/* A fused Conv without an activation of its own whose output's only use is
 * an Add with another value r takes that Add into its epilogue (r its fifth
 * input), and with it a Relu/Clip that alone consumes the Add's output. r
 * must be ready where the Conv runs: a graph input or initializer, or made
 * by a node before the Conv in the schedule (pos: node -> position). */
static void fuse_residual(const nbl_model *m, const nbl_graph *g, nbl_t_fused *f, const int *pos) {
  if (f->kind != NBL_TF_CONV || f->act || f->node.n_outputs != 1) return;
  nbl_id v = f->node.outputs[0], r = NBL_NONE;
  nbl_id an = nbl_fuse_find_residual(g, (nbl_id)(f->orig - g->nodes), v, pos, &r);
  if (an == NBL_NONE) return;
  const nbl_node *a = &g->nodes[an];
  f->res_add = a;
  f->res_node = an;
  f->conv_out = v;
  f->ins[4] = r;
  f->node.n_inputs = 5;
  f->node.outputs = a->outputs;
  f->node.n_outputs = a->n_outputs;
  fuse_activation(m, g, f, a);
  snprintf(f->op, sizeof f->op, "Ternary%s+Add%s%s", f->orig->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
}

/* The fused state for consumer node id; NULL when the pattern does not apply. */
static nbl_t_fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id) {
  const nbl_node *n = &g->nodes[id];
  int kind;
  if (nbl_fuse_is_op(n, "", "Conv")) kind = NBL_TF_CONV;
  else if (nbl_fuse_is_op(n, "", "Gemm")) kind = NBL_TF_GEMM;
  else if (nbl_fuse_is_op(n, "", "MatMul")) kind = NBL_TF_MATMUL;
  else return NULL;
  if (n->n_inputs < 2 || n->n_outputs < 1 || nbl_model_opset(m, "ai.nibble") != 1) return NULL;
  const nbl_node *qx = nbl_fuse_producer(g, n->inputs[0]), *wn = nbl_fuse_producer(g, n->inputs[1]);
  if (!nbl_fuse_is_op(qx, "ai.nibble", "QuantizeAbsmax8") || qx->n_inputs < 1 ||
      qx->inputs[0] == NBL_NONE || qx->outputs[0] != n->inputs[0] || !wn ||
      wn->outputs[0] != n->inputs[1] || wn->n_inputs < 1)
    return NULL;
  nbl_tern_attrs xa, wa;
  if (nbl_tern_attrs_decode(qx, &xa, NULL, 0) != NBL_OK) return NULL;
  if (xa.per_row && kind == NBL_TF_CONV) return NULL;
  nbl_t_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->kind = kind;
  f->orig = n;
  f->per_row = xa.per_row;
  f->qx = (nbl_id)(qx - g->nodes);
  f->wnode = (nbl_id)(wn - g->nodes);
  f->ins[0] = qx->inputs[0];
  f->ins[2] = kind != NBL_TF_MATMUL && n->n_inputs > 2 ? n->inputs[2] : NBL_NONE;
  f->ins[3] = NBL_NONE;
  f->ins[4] = NBL_NONE;
  f->res_node = NBL_NONE;
  const nbl_tensor *wt = const_init(g, wn->inputs[0]), *scale = NULL;
  if (!wt || nbl_tern_attrs_decode(wn, &wa, NULL, 0) != NBL_OK) goto no;
  if (nbl_fuse_is_op(wn, "ai.nibble", "QuantizeTernary")) {
    if (wt->dtype != NBL_DT_FLOAT || wt->rank > NBL_TERN_MAX_RANK) goto no;
    f->wsrc = NBL_TF_WQUANT;
    f->wrank = wt->rank;
    for (int i = 0; i < wt->rank; i++) f->wdims[i] = wt->dims[i];
  } else if (nbl_fuse_is_op(wn, "ai.nibble", "DequantizeTernary")) {
    if (wn->n_inputs < 2 || !(scale = const_init(g, wn->inputs[1]))) goto no;
    f->wsrc = NBL_TF_WPACKED;
    f->packing = wa.packing;
    f->wrank = wa.rank;
    for (int i = 0; i < wa.rank; i++) f->wdims[i] = wa.dims[i];
    f->ins[3] = wn->inputs[1];
  } else {
    goto no;
  }
  f->ins[1] = wn->inputs[0];
  f->groups = 1;
  if (kind == NBL_TF_CONV) {
    if (f->wrank != 4) goto no;
    int64_t grp = nbl_attr_int(n, "group", 1);
    if (grp <= 0 || grp > (1 << 20) || f->wdims[0] % grp) goto no;
    f->groups = (int)grp;
  } else if (kind == NBL_TF_GEMM) {
    if (f->wrank != 2 || nbl_attr_int(n, "transA", 0) != 0) goto no;
    f->trans_b = nbl_attr_int(n, "transB", 0) != 0;
    f->alpha = nbl_attr_float(n, "alpha", 1.0f);
    f->beta = nbl_attr_float(n, "beta", 1.0f);
  } else if (f->wrank != 2) {
    goto no;
  }
  nbl_rt_tensor w, s;
  if (nbl_rt_from_ir(wt, &w) != NBL_OK) goto no;
  if (scale && nbl_rt_from_ir(scale, &s) != NBL_OK) goto no;
  f->isa = nbl_t_best_isa(); /* before packing: the direct convolutions' weights need it */
  if (nbl_t_fused_pack(f, &w, scale ? &s : NULL) != 0) goto no;
  f->node = *n;
  f->node.n_inputs = 4;
  f->node.inputs = f->ins;
  f->act_node = NBL_NONE;
  fuse_activation(m, g, f, n);
  snprintf(f->op, sizeof f->op, "Ternary%s%s%s", n->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
  f->node.op_type = f->op;
  return f;
no:
  fused_free(f);
  return NULL;
}

/* nbl_fuse_absorbed's view of the fused nodes (state: by_node). */
static int t_operands(const void *state, nbl_id node, nbl_fuse_operands *o) {
  const nbl_t_fused *f = ((nbl_t_fused *const *)state)[node];
  if (!f) return 0;
  *o = (nbl_fuse_operands){.orig = f->orig, .qx = f->qx, .wnode = f->wnode};
  return 1;
}

/* Pairs whose tensor between them can travel as INT8 codes: F, a fused
 * Conv on the tiles, whose output's only use is the QuantizeAbsmax8 of G, a
 * fused depthwise Conv with per-tensor activations, reading nothing else of
 * it; the tensor is not a graph output nor seen by a subgraph. At run time
 * F sends codes only above a size and on AVX-512 (run_conv in
 * ternary_fused.c). */
static void link_codes(const nbl_graph *g, tern_fusion *fu) {
  for (int id = 0; id < fu->n_nodes; id++) {
    nbl_t_fused *F = fu->by_node[id];
    if (!F || F->kind != NBL_TF_CONV || !F->tw || F->node.n_outputs < 1 ||
        F->node.outputs[0] == NBL_NONE)
      continue;
    nbl_id v = F->node.outputs[0];
    const nbl_value *val = &g->values[v];
    if ((val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, val->name))
      continue;
    nbl_id q = val->consumers[0];
    const nbl_node *qn = &g->nodes[q];
    if (!nbl_fuse_is_op(qn, "ai.nibble", "QuantizeAbsmax8") || qn->n_outputs < 1 ||
        qn->outputs[0] == NBL_NONE)
      continue;
    const nbl_value *qv = &g->values[qn->outputs[0]];
    if ((qv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || qv->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, qv->name))
      continue;
    nbl_t_fused *G = fu->by_node[qv->consumers[0]];
    if (!G || G == F || G->kind != NBL_TF_CONV || !G->dw_w || G->per_row || G->qx != q ||
        G->ins[0] != v || G->xsrc != F)
      continue;
    F->link = G;
  }
}

void nbl_fuse_ternary_free(void *state) {
  tern_fusion *fu = state;
  if (!fu) return;
  for (int i = 0; i < fu->n_nodes; i++) fused_free(fu->by_node[i]);
  free(fu->by_node);
  free(fu);
}

nbl_status nbl_fuse_ternary_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  const nbl_model *m = env->m;
  const nbl_graph *g = env->g;
  *state = NULL;
  if (!m || !g || g->n_nodes == 0) return NBL_OK;
  tern_fusion *fu = calloc(1, sizeof *fu);
  unsigned char *drop = calloc((size_t)g->n_nodes, 1);
  if (fu) fu->by_node = calloc((size_t)g->n_nodes, sizeof(nbl_t_fused *));
  if (!fu || !drop || !fu->by_node) {
    free(drop);
    nbl_fuse_ternary_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  fu->n_nodes = g->n_nodes;
  int *pos = malloc(sizeof(int) * (size_t)g->n_nodes);
  if (!pos) {
    free(drop);
    nbl_fuse_ternary_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int i = 0; i < g->n_nodes; i++) pos[i] = -1;
  for (int s = 0; s < *n; s++) pos[order[s]] = s;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    if (env->taken(env, order[s])) continue;
    nbl_t_fused *f = try_fuse(m, g, order[s]);
    if (!f) continue;
    fu->by_node[order[s]] = f;
    any = 1;
  }
  for (int s = 0; s < *n; s++) { /* residual Adds, once every fused node is known */
    nbl_t_fused *f = fu->by_node[order[s]];
    if (!f) continue;
    fuse_residual(m, g, f, pos);
    if (f->res_add) drop[f->res_node] = 1;
    if (f->act) drop[f->act_node] = 1;
  }
  free(pos);
  /* hand-over links: X of a fused node written by a fused Conv (whose
   * synthetic node writes the output of its last absorbed node) */
  for (int s = 0; any && s < *n; s++) {
    nbl_t_fused *f = fu->by_node[order[s]];
    if (!f || f->ins[0] == NBL_NONE) continue;
    for (int t = 0; t < *n; t++) {
      nbl_t_fused *src = fu->by_node[order[t]];
      if (src && src != f && src->kind == NBL_TF_CONV && src->node.n_outputs >= 1 &&
          src->node.outputs[0] == f->ins[0])
        f->xsrc = src;
    }
  }
  if (!any) {
    free(drop);
    nbl_fuse_ternary_free(fu);
    return NBL_OK;
  }
  if (!env->values_watched) link_codes(g, fu);
  int w = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s];
    const nbl_node *nd = &g->nodes[id];
    int quantizer = nbl_fuse_is_op(nd, "ai.nibble", "QuantizeAbsmax8") ||
                    nbl_fuse_is_op(nd, "ai.nibble", "QuantizeTernary") ||
                    nbl_fuse_is_op(nd, "ai.nibble", "DequantizeTernary");
    if (quantizer && !fu->by_node[id] && nbl_fuse_absorbed(g, id, t_operands, fu->by_node)) {
      int keep = 0; /* a subgraph may still read the quantizer's output */
      for (int k = 0; k < nd->n_outputs; k++)
        if (nd->outputs[k] != NBL_NONE && nbl_fuse_used_in_subgraphs(g, g->values[nd->outputs[k]].name))
          keep = 1;
      if (!keep) drop[id] = 1;
    }
    if (!drop[id]) order[w++] = id;
  }
  free(drop);
  *n = w;
  *state = fu;
  return NBL_OK;
}

const nbl_node *nbl_fuse_ternary_node(const void *state, nbl_id node) {
  const tern_fusion *fu = state;
  if (!fu || node < 0 || node >= fu->n_nodes || !fu->by_node[node]) return NULL;
  return &fu->by_node[node]->node;
}
