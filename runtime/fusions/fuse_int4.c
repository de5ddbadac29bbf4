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
#include "runtime/fusions/fuse.h"
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

/* If the op's only output feeds exactly one Relu or constant-bound Clip and
 * nothing else, the fused node produces that node's output directly. */
static void fuse_activation(const nbl_model *m, const nbl_graph *g, nbl_i4_fused *f, const nbl_node *n) {
  nbl_id an;
  float lo, hi;
  if (!nbl_fuse_find_activation(m, g, n, &an, &lo, &hi)) return;
  const nbl_node *a = &g->nodes[an];
  f->act = 1;
  f->act_lo = lo;
  f->act_hi = hi;
  f->act_node = an;
  f->node.n_outputs = a->n_outputs;
  f->node.outputs = a->outputs;
}

/* Try to build the fused state for consumer node id; NULL if the pattern does not apply. */
static nbl_i4_fused *try_fuse(const nbl_model *m, const nbl_graph *g, nbl_id id) {
  const nbl_node *n = &g->nodes[id];
  int kind;
  if (nbl_fuse_is_op(n, "", "Conv")) kind = FK_CONV;
  else if (nbl_fuse_is_op(n, "", "Gemm")) kind = FK_GEMM;
  else if (nbl_fuse_is_op(n, "", "MatMul")) kind = FK_MATMUL;
  else return NULL;
  if (n->n_inputs < 2 || n->n_outputs < 1) return NULL;
  const nbl_node *qx = nbl_fuse_producer(g, n->inputs[0]);
  const nbl_node *wn = nbl_fuse_producer(g, n->inputs[1]);
  if (!nbl_fuse_is_op(qx, "ai.nibble", "QuantizeInt4") || !wn || qx->n_inputs < 1 ||
      qx->inputs[0] == NBL_NONE || qx->outputs[0] != n->inputs[0])
    return NULL;
  if (nbl_model_opset(m, "ai.nibble") != 1) return NULL;
  nbl_i4_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->kind = kind;
  f->orig = n;
  f->qx = (nbl_id)(qx - g->nodes);
  f->wnode = (nbl_id)(wn - g->nodes);
  if (parse_q4(qx, &f->xcfg) != 0) goto no;
  f->ins[0] = qx->inputs[0];
  f->ins[2] = kind != FK_MATMUL && n->n_inputs > 2 ? n->inputs[2] : NBL_NONE;
  f->ins[3] = NBL_NONE;
  f->ins[4] = NBL_NONE;
  f->res_node = NBL_NONE;
  if (f->xcfg.scale_source == NBL_Q4_SCALE_PACT) {
    if (qx->n_inputs < 2 || qx->inputs[1] == NBL_NONE) goto no;
    f->ins[3] = qx->inputs[1];
  }
  /* weight source */
  const nbl_value *wv;
  if (nbl_fuse_is_op(wn, "ai.nibble", "QuantizeInt4")) {
    if (wn->outputs[0] != n->inputs[1] || wn->n_inputs < 1 || wn->inputs[0] == NBL_NONE ||
        (wn->n_inputs > 1 && wn->inputs[1] != NBL_NONE) || parse_q4(wn, &f->wcfg) != 0 ||
        f->wcfg.scale_source == NBL_Q4_SCALE_PACT)
      goto no;
    f->wsrc = WS_QUANT;
    wv = &g->values[wn->inputs[0]];
  } else if (nbl_fuse_is_op(wn, "", "DequantizeLinear")) {
    if (wn->outputs[0] != n->inputs[1] || wn->n_inputs < 2 || wn->inputs[0] == NBL_NONE ||
        wn->inputs[1] == NBL_NONE)
      goto no;
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
  f->ins[1] = (nbl_id)(wv - g->values);
  const nbl_tensor *wt = wv->init;
  f->wrank = wt->rank;
  for (int i = 0; i < wt->rank && i < NBL_MAX_RANK; i++) f->wdims[i] = wt->dims[i];
  f->groups = 1;
  if (kind == FK_CONV) {
    if (wt->rank != 4) goto no;
    int64_t grp = nbl_attr_int(n, "group", 1);
    if (grp <= 0 || grp > (1 << 20) || f->wdims[0] % grp) goto no;
    f->groups = (int)grp;
  } else if (kind == FK_GEMM) {
    if (wt->rank != 2 || nbl_attr_int(n, "transA", 0) != 0) goto no;
    f->trans_b = nbl_attr_int(n, "transB", 0) != 0;
    f->alpha = nbl_attr_float(n, "alpha", 1.0f);
    f->beta = nbl_attr_float(n, "beta", 1.0f);
  } else {
    if (wt->rank != 2) goto no;
  }
  nbl_rt_tensor w;
  if (nbl_rt_from_ir(wt, &w) != NBL_OK) goto no;
  f->isa = nbl_i4_best_isa(); /* before packing: the direct kernel's weights need VNNI */
  if (nbl_i4_fused_pack(f, &w) != 0) goto no;
  /* the synthetic node */
  f->node = *n;
  f->node.n_inputs = 4;
  f->node.inputs = f->ins;
  f->act_node = NBL_NONE;
  fuse_activation(m, g, f, n);
  snprintf(f->op, sizeof f->op, "Int4%s%s%s", n->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
  f->node.op_type = f->op;
  return f;
no:
  fused_free(f);
  return NULL;
}

/* A dense fused Conv (no activation of its own) whose output's only use is
 * an Add with another value r takes that Add into its epilogue, r as a fifth
 * input, and with it a Relu/Clip that alone consumes the Add's output. r
 * must be ready where the Conv runs: a graph input or initializer, or made
 * by a node before the Conv in the order (pos: node -> position; a node
 * fused away runs with its producer, earlier still). */
static void fuse_residual(const nbl_model *m, const nbl_graph *g, nbl_i4_fused *f, const int *pos) {
  if (f->kind != FK_CONV || f->groups != 1 || f->act || f->node.n_outputs != 1) return;
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
  snprintf(f->op, sizeof f->op, "Int4%s+Add%s%s", f->orig->op_type, f->act ? "+" : "",
           f->act ? g->nodes[f->act_node].op_type : "");
}

/* nbl_fuse_absorbed's view of the fused nodes (state: by_node). */
static int i4_operands(const void *state, nbl_id node, nbl_fuse_operands *o) {
  const nbl_i4_fused *f = ((nbl_i4_fused *const *)state)[node];
  if (!f) return 0;
  *o = (nbl_fuse_operands){.orig = f->orig, .qx = f->qx, .wnode = f->wnode};
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
    if (!F || F->kind != FK_CONV || F->node.n_outputs < 1 || F->node.outputs[0] == NBL_NONE)
      continue;
    nbl_id v = F->node.outputs[0];
    const nbl_value *val = &g->values[v];
    if ((val->flags & NBL_VAL_OUTPUT) || val->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, val->name))
      continue;
    nbl_id q = val->consumers[0];
    const nbl_node *qn = &g->nodes[q];
    if (!nbl_fuse_is_op(qn, "ai.nibble", "QuantizeInt4") || qn->n_outputs < 1 ||
        qn->outputs[0] == NBL_NONE)
      continue;
    const nbl_value *qv = &g->values[qn->outputs[0]];
    if ((qv->flags & NBL_VAL_OUTPUT) || qv->n_consumers != 1 ||
        nbl_fuse_used_in_subgraphs(g, qv->name))
      continue;
    nbl_i4_fused *G = fu->by_node[qv->consumers[0]];
    if (!G || G == F || G->kind != FK_CONV || G->qx != q || G->ins[0] != v) continue;
    if (G->xcfg.scale_source != NBL_Q4_SCALE_MAX || G->xcfg.rounding != NBL_Q4_ROUND_HALF_EVEN ||
        G->xcfg.bits < 2 || G->xcfg.bits > 8)
      continue;
    if (G->ins[1] == NBL_NONE || !g->values[G->ins[1]].init) continue;
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
    if (F && F->node.n_outputs >= 1 && F->node.outputs[0] != NBL_NONE)
      by_value[F->node.outputs[0]] = F;
  }
  for (int id = 0; id < fu->n_nodes; id++) {
    nbl_i4_fused *G = fu->by_node[id];
    if (G && G->ins[0] != NBL_NONE) G->xsrc = by_value[G->ins[0]];
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
    if (f->res_add) act[f->res_node] = 1;
    if (f->act) act[f->act_node] = 1;
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
  return &fu->by_node[node]->node;
}
