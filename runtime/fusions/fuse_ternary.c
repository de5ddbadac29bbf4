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

#include "runtime/fusions/fuse_coded.h"
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

/* The fused state for consumer node id; NULL when the pattern does not apply. */
static nbl_t_fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id) {
  nbl_code_consumer o = {0};
  if (nbl_fuse_coded_match(m, g, id, "QuantizeAbsmax8", &o) != 0) return NULL;
  const nbl_node *qx = &g->nodes[o.qx], *wn = &g->nodes[o.wnode];
  nbl_tern_attrs xa, wa;
  if (nbl_tern_attrs_decode(qx, &xa, NULL, 0) != NBL_OK) return NULL;
  if (xa.per_row && o.kind == NBL_CODE_CONV) return NULL;
  nbl_t_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->cons = o;
  f->per_row = xa.per_row;
  const nbl_tensor *wt = const_init(g, wn->inputs[0]), *scale = NULL;
  if (!wt || nbl_tern_attrs_decode(wn, &wa, NULL, 0) != NBL_OK) goto no;
  if (nbl_fuse_is_op(wn, "ai.nibble", "QuantizeTernary")) {
    if (wt->dtype != NBL_DT_FLOAT || wt->rank > NBL_TERN_MAX_RANK) goto no;
    f->wsrc = NBL_TF_WQUANT;
    f->cons.wrank = wt->rank;
    for (int i = 0; i < wt->rank; i++) f->cons.wdims[i] = wt->dims[i];
  } else if (nbl_fuse_is_op(wn, "ai.nibble", "DequantizeTernary")) {
    if (wn->n_inputs < 2 || !(scale = const_init(g, wn->inputs[1]))) goto no;
    f->wsrc = NBL_TF_WPACKED;
    f->packing = wa.packing;
    f->cons.wrank = wa.rank;
    for (int i = 0; i < wa.rank; i++) f->cons.wdims[i] = wa.dims[i];
    f->cons.ins[3] = wn->inputs[1];
  } else {
    goto no;
  }
  f->cons.ins[1] = wn->inputs[0];
  if (nbl_fuse_coded_attrs(&f->cons) != 0) goto no;
  nbl_rt_tensor w, s;
  if (nbl_rt_from_ir(wt, &w) != NBL_OK) goto no;
  if (scale && nbl_rt_from_ir(scale, &s) != NBL_OK) goto no;
  f->isa = nbl_t_best_isa(); /* before packing: the direct convolutions' weights need it */
  if (nbl_t_fused_pack(f, &w, scale ? &s : NULL) != 0) goto no;
  nbl_fuse_coded_node(m, g, &f->cons, "Ternary");
  return f;
no:
  fused_free(f);
  return NULL;
}

/* nbl_fuse_absorbed's view of the fused nodes (state: by_node). */
static int t_operands(const void *state, nbl_id node, nbl_fuse_operands *o) {
  const nbl_t_fused *f = ((nbl_t_fused *const *)state)[node];
  if (!f) return 0;
  *o = (nbl_fuse_operands){.orig = f->cons.orig, .qx = f->cons.qx, .wnode = f->cons.wnode};
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
    nbl_id q = NBL_NONE;
    nbl_id gid = F && F->tw ? nbl_fuse_coded_next(g, &F->cons, "QuantizeAbsmax8",
                                                  NBL_VAL_OUTPUT | NBL_VAL_OUTER, &q)
                            : NBL_NONE;
    if (gid == NBL_NONE) continue;
    nbl_t_fused *G = fu->by_node[gid];
    if (!G || !nbl_fuse_coded_pair(&F->cons, &G->cons, q) || !G->dw_w || G->per_row ||
        G->xsrc != F)
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
    nbl_fuse_coded_residual(m, g, &f->cons, pos, "Ternary");
    if (f->cons.res_add) drop[f->cons.res_node] = 1;
    if (f->cons.act) drop[f->cons.act_node] = 1;
  }
  free(pos);
  /* hand-over links: X of a fused node written by a fused Conv (whose
   * synthetic node writes the output of its last absorbed node) */
  for (int s = 0; any && s < *n; s++) {
    nbl_t_fused *f = fu->by_node[order[s]];
    if (!f || f->cons.ins[0] == NBL_NONE) continue;
    for (int t = 0; t < *n; t++) {
      nbl_t_fused *src = fu->by_node[order[t]];
      if (src && src != f && src->cons.kind == NBL_CODE_CONV && src->cons.node.n_outputs >= 1 &&
          src->cons.node.outputs[0] == f->cons.ins[0])
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
  return &fu->by_node[node]->cons.node;
}
