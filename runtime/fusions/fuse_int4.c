/* fuse_int4.c - the INT4 fast path's pattern matching: QuantizeInt4(x) ->
 * Conv/Gemm/MatMul with a constant quantized weight, run as one fused node
 * whose kernel is runtime/kernels/int4_fused.c (int4_fused.h).
 *
 * Pattern (found at plan time, sessions without `reference`):
 *   X --QuantizeInt4--> Xq --\
 *                              Conv | Gemm | MatMul  --> Y
 *   W --QuantizeInt4--> Wq --/     (input 0 = Xq, input 1 = Wq)
 * where W is an initializer (float32), or instead of the weight quantizer a
 * DequantizeLinear(Wq int4/int8 initializer, scalar scale [, scalar zero
 * point]) as written by pack-int4. The consumer then runs a synthetic node
 * with inputs [X, W, bias, alpha]: X is quantized on the fly (per-tensor
 * scale recomputed every run with the runtime/formats/int4.h math, codes bit-identical),
 * W was quantized and packed once here, products accumulate exactly in
 * int32, and each output is rescaled once: y = s_x*s_w*acc + bias (the
 * affine zero point of X is subtracted as z*sum(q_w) per output channel).
 * The quantizer nodes are dropped from the schedule when nothing else uses
 * their outputs. A Relu or constant-bound Clip that alone consumes Y is
 * applied in the epilogue; so is, for a dense Conv, an Add of Y and a value
 * ready before the Conv runs (a residual), and a Relu/Clip after that Add
 * (fuse_residual). The nodes absorbed leave the schedule too, so an on_value
 * callback does not see the values between them.
 *
 * Anything the integer path cannot express exactly at run time (non-finite
 * X, a Gemm bias shape other than scalar/[N]/[M,N], ...) runs the literal
 * composition instead: fake-quantize X and W, then the float op's reference
 * kernel, so results never depend on the path.
 *
 * Supported: Conv 2-D (strides, pads, auto_pad, dilations, groups,
 * depthwise), Gemm with transA = 0, MatMul with a rank-2 weight. Skipped
 * (left unfused): other ranks, weights that are not constants, weight codes
 * minus zero point outside int8.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/core/kernel.h"
#include "runtime/fusions/fuse_coded.h"
#include "runtime/kernels/int4_fused.h"

typedef struct i4_fusion {
  int n_nodes;
  nbl_i4_fused **by_node; /* per node of the graph: the fused node it became, or NULL */
} i4_fusion;

/* Decode QuantizeInt4 attributes; -1 when the fused path should not take it
 * (the reference kernel then reports the bad attribute). */
static int parse_q4(const nbl_node *n, nbl_q4_config *cfg) {
  return nbl_q4_config_decode(n, cfg, NULL, 0) == NBL_OK ? 0 : -1;
}

/* ------------------------------------------------------------------ planning */

static void fused_free(nbl_i4_fused *f) {
  if (!f) return;
  nbl_i4_fused_unpack(f);
  free(f);
}

void nbl_fuse_int4_free(void *state) {
  i4_fusion *fu = state;
  if (!fu) return;
  for (int i = 0; i < fu->n_nodes; i++) fused_free(fu->by_node[i]);
  free(fu->by_node);
  free(fu);
}

/* Try to build the fused state for consumer node id; NULL if the pattern does not apply. */
static nbl_i4_fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id) {
  nbl_code_consumer o = {0};
  if (nbl_fuse_coded_match(m, g, id, "QuantizeInt4", &o) != 0) return NULL;
  const nbl_node *qx = &g->nodes[o.qx], *wn = &g->nodes[o.wnode];
  nbl_i4_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->cons = o;
  if (parse_q4(qx, &f->xcfg) != 0) goto no;
  if (f->xcfg.scale_source == NBL_Q4_SCALE_PACT) {
    if (qx->n_inputs < 2 || qx->inputs[1] == NBL_NONE) goto no;
    f->cons.ins[3] = qx->inputs[1];
  }
  /* weight source */
  const nbl_value *wv;
  if (nbl_fuse_is_op(wn, "ai.nibble", "QuantizeInt4")) {
    if (wn->inputs[0] == NBL_NONE || (wn->n_inputs > 1 && wn->inputs[1] != NBL_NONE) ||
        parse_q4(wn, &f->wcfg) != 0 || f->wcfg.scale_source == NBL_Q4_SCALE_PACT)
      goto no;
    f->wsrc = WS_QUANT;
    wv = &g->values[wn->inputs[0]];
  } else if (nbl_fuse_is_op(wn, "", "DequantizeLinear")) {
    if (wn->n_inputs < 2 || wn->inputs[0] == NBL_NONE || wn->inputs[1] == NBL_NONE) goto no;
    const nbl_tensor *st = g->values[wn->inputs[1]].init;
    if (!st || st->dtype != NBL_DT_FLOAT || nbl_shape_numel(st->rank, st->dims) != 1) goto no;
    nbl_rt_tensor t;
    if (nbl_rt_from_ir(st, &t) != NBL_OK || !t.data) goto no;
    f->dq_scale = ((const float *)t.data)[0];
    if (wn->n_inputs > 2 && wn->inputs[2] != NBL_NONE) {
      const nbl_tensor *zt = g->values[wn->inputs[2]].init;
      if (!zt || nbl_shape_numel(zt->rank, zt->dims) != 1) goto no;
      if (nbl_rt_from_ir(zt, &t) != NBL_OK || !t.data) goto no;
      f->dq_zero = (int)nbl_rt_get_i64(&t, 0);
    }
    f->wsrc = WS_DEQUANT;
    wv = &g->values[wn->inputs[0]];
  } else {
    goto no;
  }
  if (!wv->init) goto no;
  f->cons.ins[1] = (nbl_id)(wv - g->values);
  const nbl_tensor *wt = wv->init;
  f->cons.wrank = wt->rank;
  for (int i = 0; i < wt->rank && i < NBL_MAX_RANK; i++) f->cons.wdims[i] = wt->dims[i];
  if (nbl_fuse_coded_attrs(&f->cons) != 0) goto no;
  nbl_rt_tensor w;
  if (nbl_rt_from_ir(wt, &w) != NBL_OK) goto no;
  f->isa = nbl_i4_best_isa(); /* before packing: the direct kernel's weights need VNNI */
  if (nbl_i4_fused_pack(f, &w) != 0) goto no;
  nbl_fuse_coded_node(m, g, &f->cons, "Int4");
  return f;
no:
  fused_free(f);
  return NULL;
}

/* The residual Add of a dense fused Conv (nbl_fuse_coded_residual). */
static void fuse_residual(const nbl_model *m, const nbl_graph *g, nbl_i4_fused *f, const int *pos) {
  if (f->cons.groups == 1) nbl_fuse_coded_residual(m, g, &f->cons, pos, "Int4");
}

/* nbl_fuse_absorbed's view of the fused nodes (state: by_node). */
static int i4_operands(const void *state, nbl_id node, nbl_fuse_operands *o) {
  const nbl_i4_fused *f = ((nbl_i4_fused *const *)state)[node];
  if (!f) return 0;
  *o = (nbl_fuse_operands){.orig = f->cons.orig, .qx = f->cons.qx, .wnode = f->cons.wnode};
  return 1;
}

/* Pairs whose tensor between them can travel as activation bytes: F (a
 * fused Conv) whose output's only use is the QuantizeInt4 of a fused G (a
 * Conv with constant weights, quantizing with the per-tensor max and
 * half-even rounding), the tensor not a graph output nor seen by a
 * subgraph. At run time F sends bytes only when G takes the depthwise path
 * (G packed its weights as such) and the products run on AVX-512 VNNI. */
static void link_codes(const nbl_graph *g, i4_fusion *fu) {
  for (int id = 0; id < fu->n_nodes; id++) {
    nbl_i4_fused *F = fu->by_node[id];
    nbl_id q = NBL_NONE, gid = F ? nbl_fuse_coded_next(g, &F->cons, "QuantizeInt4", NBL_VAL_OUTPUT, &q)
                                 : NBL_NONE;
    if (gid == NBL_NONE) continue;
    nbl_i4_fused *G = fu->by_node[gid];
    if (!G || !nbl_fuse_coded_pair(&F->cons, &G->cons, q)) continue;
    if (G->xcfg.scale_source != NBL_Q4_SCALE_MAX || G->xcfg.rounding != NBL_Q4_ROUND_HALF_EVEN ||
        G->xcfg.bits < 2 || G->xcfg.bits > 8)
      continue;
    if (G->cons.ins[1] == NBL_NONE || !g->values[G->cons.ins[1]].init) continue;
    F->link = G;
  }
}

/* Each fused node's xsrc: the fused node whose output 0 is its X and that
 * hands over what it found out about it (its range, and with link_codes
 * the activation bytes). -1 when out of memory. */
static int link_sources(const nbl_graph *g, i4_fusion *fu) {
  nbl_i4_fused **by_value = calloc((size_t)g->n_values + 1, sizeof *by_value);
  if (!by_value) return -1;
  for (int id = 0; id < fu->n_nodes; id++) {
    nbl_i4_fused *F = fu->by_node[id];
    if (F && F->cons.node.n_outputs >= 1 && F->cons.node.outputs[0] != NBL_NONE)
      by_value[F->cons.node.outputs[0]] = F;
  }
  for (int id = 0; id < fu->n_nodes; id++) {
    nbl_i4_fused *G = fu->by_node[id];
    if (G && G->cons.ins[0] != NBL_NONE) G->xsrc = by_value[G->cons.ins[0]];
  }
  free(by_value);
  return 0;
}

/* QuantizeInt4 -> Conv/Gemm/MatMul patterns whose weight is a constant
 * (QuantizeInt4 of a float initializer, or DequantizeLinear of an INT4/INT8
 * initializer with a scalar scale): weights packed now; the quantizer nodes
 * whose outputs only the fused nodes use, and the activations and residual
 * Adds they absorb, leave the order. Unless env->values_watched, a fused
 * convolution may hand its output to a fused depthwise consumer as
 * activation bytes instead of floats (link_codes). */
nbl_status nbl_fuse_int4_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  const nbl_model *m = env->m;
  const nbl_graph *g = env->g;
  *state = NULL;
  if (!m || !g || g->n_nodes == 0) return NBL_OK;
  i4_fusion *fu = calloc(1, sizeof *fu);
  if (!fu) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  fu->n_nodes = g->n_nodes;
  fu->by_node = calloc((size_t)g->n_nodes, sizeof(nbl_i4_fused *));
  if (!fu->by_node) {
    free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int any = 0;
  unsigned char *act = calloc((size_t)g->n_nodes, 1);
  if (!act) {
    nbl_fuse_int4_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int *pos = malloc(sizeof(int) * (size_t)g->n_nodes);
  if (!pos) {
    free(act);
    nbl_fuse_int4_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int i = 0; i < g->n_nodes; i++) pos[i] = -1;
  for (int s = 0; s < *n; s++) pos[order[s]] = s;
  for (int s = 0; s < *n; s++) {
    nbl_i4_fused *f = env->taken(env, order[s]) ? NULL : try_fuse(m, g, order[s]);
    if (f) {
      fu->by_node[order[s]] = f;
      any = 1;
    }
  }
  for (int s = 0; s < *n; s++) { /* residual Adds, once every fused node is known */
    nbl_i4_fused *f = fu->by_node[order[s]];
    if (!f) continue;
    fuse_residual(m, g, f, pos);
    if (f->cons.res_add) act[f->cons.res_node] = 1;
    if (f->cons.act) act[f->cons.act_node] = 1;
  }
  free(pos);
  if (!any) {
    free(act);
    nbl_fuse_int4_free(fu);
    return NBL_OK;
  }
  /* drop quantizer nodes nothing else needs */
  int w = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s];
    const nbl_node *nd = &g->nodes[id];
    int quantizer = nbl_fuse_is_op(nd, "ai.nibble", "QuantizeInt4") ||
                    nbl_fuse_is_op(nd, "", "DequantizeLinear");
    int drop = quantizer && !fu->by_node[id] &&
               nbl_fuse_absorbed(g, id, i4_operands, fu->by_node);
    for (int k = 0; drop && k < nd->n_outputs; k++)
      if (nd->outputs[k] != NBL_NONE &&
          nbl_fuse_used_in_subgraphs(g, g->values[nd->outputs[k]].name))
        drop = 0;
    if (act[id]) drop = 1; /* a Relu/Clip or an Add computed by its fused producer */
    if (!drop) order[w++] = id;
  }
  free(act);
  *n = w;
  if (link_sources(g, fu) != 0) {
    nbl_fuse_int4_free(fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  if (!env->values_watched) link_codes(g, fu);
  *state = fu;
  return NBL_OK;
}

/* The synthetic node (inputs X, W source, bias, PACT alpha[, residual]; the
 * consumer's attributes, the last absorbed node's outputs). */
const nbl_node *nbl_fuse_int4_node(const void *state, nbl_id node) {
  const i4_fusion *fu = state;
  if (!fu || node < 0 || node >= fu->n_nodes || !fu->by_node[node]) return NULL;
  return &fu->by_node[node]->cons.node;
}
