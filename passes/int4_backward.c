/* int4_backward.c - int4-backward: run the backward products of 4-bit
 * layers in integers. In the main graph and every training algorithm graph:
 *   - a com.microsoft ConvGrad whose dY is the output of an ai.nibble
 *     QuantizeLog with radix 2 or 4 (levels within 2^14 of each other) and
 *     whose X (when dW is computed) and W (when dX is computed) are outputs
 *     of ai.nibble QuantizeInt4 becomes ai.nibble Int4LogConvGrad
 *     (runtime/ops/grad_int4.c), with the quantizers' scale outputs (named
 *     "<Y>_scale" when the node had none) as its X_scale and W_scale inputs,
 *     and (codes=1, the default) the QuantizeLog's codes and top outputs
 *     (outputs 2 and 1, added as "<Y>_codes", "<Y>_top" when absent) as its
 *     dY_codes and dY_top inputs, with the radix and exponent bits as the
 *     attributes log_radix and log_exp_bits, and its dY input omitted: the
 *     kernel reads dY's codes instead of recovering them from floats, and
 *     the QuantizeLog drops Y (output 0) when nothing else reads it;
 *   - a Gemm without C (or with beta = 0: C dropped), or a MatMul of two
 *     2-D operands, multiplying a QuantizeLog output by a QuantizeInt4
 *     output becomes ai.nibble Int4LogGemm (A_scale or B_scale on the
 *     INT4 side).
 * and in every training algorithm graph (forward=1, the default) the forward
 *   - Conv of two QuantizeInt4 outputs (X and W, 2 spatial dims) becomes
 *     ai.nibble Int4CodedConv with the two scales as inputs 3 and 4: exact
 *     integer sums of the codes on the VNNI tiles, weights packed every step
 *     (the main graph, which inference runs, keeps its Conv for the fused
 *     INT4 path of constant weights).
 * With codes=1, X's QuantizeInt4 (bits <= 6) also hands its int8 codes and
 * zero point (outputs 3 and 2, added as "<Y>_codes", "<Y>_zero_point" when
 * absent) to Int4CodedConv (inputs 5, 6) and Int4LogConvGrad (inputs 8, 9;
 * for dW, or X's shape alone), in place of X: the AMX tiles read the codes
 * instead of recovering them from X's floats, the other paths their values;
 * the QuantizeInt4 drops Y (output 0) when nothing else reads it, writing
 * one byte per element instead of a float.
 * With linear=1, gradients quantized by QuantizeInt4 (linear INT4 codes,
 * quantize-grad-log4{format=int4}) count too: ConvGrad gets dY_scale, and a
 * product of two QuantizeInt4 outputs is taken (a bias-less forward Gemm of
 * two quantized operands as well: the same product).
 * The results are those of the float ops to float rounding (the integer
 * sums are exact and each output is rounded once; an operand off its grid
 * at run time falls back to the float kernel), so the pass does not change
 * numerics beyond reassociation. Run it after quantize-grad-log4:
 *   nibble train --int4 --log4-grad --passes int4-backward MODEL ... */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"

enum { K_NONE = 0, K_LOG = 1, K_INT = 2 };

typedef struct ib_state {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  int linear, forward, codes;
  int n_conv, n_gemm, n_fwd, n_kept;
  char kept[512];
} ib_state;

static int op_is(const nbl_node *n, const char *dom, const char *op) {
  return !n->dead && !strcmp(n->domain, dom) && !strcmp(n->op_type, op);
}

static nbl_node *producer(nbl_graph *g, nbl_id v) {
  if (v == NBL_NONE || g->values[v].producer == NBL_NONE) return NULL;
  return &g->nodes[g->values[v].producer];
}

/* How value v is coded: the output 0 of a QuantizeLog with power-of-two
 * levels (radix 2 or 4, the span radix^(L-1) at most 2^14), or of a
 * QuantizeInt4 (any bits: its codes are at most 8-bit). */
static int kind_of(nbl_graph *g, nbl_id v, nbl_id *qnode) {
  nbl_node *p = producer(g, v);
  *qnode = NBL_NONE;
  if (!p || p->n_outputs < 1 || p->outputs[0] != v) return K_NONE;
  *qnode = g->values[v].producer;
  if (op_is(p, "ai.nibble", "QuantizeInt4")) return K_INT;
  if (!op_is(p, "ai.nibble", "QuantizeLog")) return K_NONE;
  int64_t radix = nbl_attr_int(p, "radix", 4), eb = nbl_attr_int(p, "exp_bits", 3);
  int shift = radix == 4 ? 2 : radix == 2 ? 1 : 0;
  if (!shift || eb < 1 || eb > 4 || shift * (((int64_t)1 << eb) - 2) > 14) return K_NONE;
  return K_LOG;
}

/* Output k of node q, added when absent as a value named "<Y>_<suffix>" of
 * type float32 scalar (like 0: the element type dt and Y's shape). */
static nbl_id output_of(ib_state *s, nbl_graph *g, nbl_id q, int k, const char *suffix, int like0, nbl_dtype dt) {
  nbl_node *n = &g->nodes[q];
  if (n->n_outputs > k && n->outputs[k] != NBL_NONE) return n->outputs[k];
  char hint[300];
  snprintf(hint, sizeof hint, "%s_%s", g->values[n->outputs[0]].name, suffix);
  nbl_id v = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  if (v == NBL_NONE) return NBL_NONE;
  n = &g->nodes[q];
  if (like0) {
    nbl_type_copy(s->m->arena, &g->values[v].type, &g->values[n->outputs[0]].type);
    g->values[v].type.elem = dt;
  } else {
    nbl_type_set_tensor(s->m->arena, &g->values[v].type, dt, 0, NULL);
  }
  nbl_graph_add_value_info(g, v); /* its type survives a save (build-training's graphs keep theirs) */
  if (n->n_outputs <= k) {
    nbl_id *o = nbl_arena_alloc(s->m->arena, sizeof(nbl_id) * (size_t)(k + 1));
    if (!o) return NBL_NONE;
    for (int i = 0; i <= k; i++) o[i] = i < n->n_outputs ? n->outputs[i] : NBL_NONE;
    n->outputs = o;
    n->n_outputs = k + 1;
  }
  n->outputs[k] = v;
  g->values[v].producer = q;
  return v;
}

/* The scale output (output 1) of QuantizeInt4 node q, added when absent. */
static nbl_id scale_of(ib_state *s, nbl_graph *g, nbl_id q) { return output_of(s, g, q, 1, "scale", 0, NBL_DT_FLOAT); }

/* X's QuantizeInt4 codes for an integer product (node id): QuantizeInt4
 * q's outputs codes and zero_point (3 and 2, added when absent) as inputs
 * slot and slot + 1, where q's format has them (bits <= 6:
 * runtime/formats/int4.h, nbl_q4_codes8) and codes=1. X stays an input:
 * the other paths, and a non-finite mark, read its floats. */
static nbl_status wire_x_codes(ib_state *s, nbl_graph *g, nbl_id id, nbl_id q, int xi, int slot) {
  const int64_t bits = nbl_attr_int(&g->nodes[q], "bits", 4);
  if (!s->codes || bits < 2 || bits > 6) return NBL_OK;
  nbl_id zp = output_of(s, g, q, 2, "zero_point", 0, NBL_DT_INT8), codes = output_of(s, g, q, 3, "codes", 1, NBL_DT_INT8);
  if (zp == NBL_NONE || codes == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "int4-backward: out of memory");
  for (int i = g->nodes[id].n_inputs; i < slot; i++) nbl_node_set_input(g, id, i, NBL_NONE);
  nbl_node_set_input(g, id, slot, codes);
  nbl_node_set_input(g, id, slot + 1, zp);
  /* X itself no longer: the codes carry it; the QuantizeInt4 drops its Y
   * when nothing else reads it (not written, not read) */
  const nbl_id y = g->nodes[id].inputs[xi];
  nbl_node_set_input(g, id, xi, NBL_NONE);
  nbl_value *yv = &g->values[y];
  if (!yv->n_consumers && !(yv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) && g->nodes[q].outputs[0] == y) {
    g->nodes[q].outputs[0] = NBL_NONE;
    yv->dead = true;
    yv->producer = NBL_NONE;
  }
  return NBL_OK;
}

/* A log-quantized dY's codes for Int4LogConvGrad (node id): QuantizeLog q's
 * outputs codes and top (added when absent) as inputs 6 and 7, and its
 * radix and exponent bits as attributes log_radix, log_exp_bits. */
static nbl_status wire_codes(ib_state *s, nbl_graph *g, nbl_id id, nbl_id q) {
  const int64_t radix = nbl_attr_int(&g->nodes[q], "radix", 4), eb = nbl_attr_int(&g->nodes[q], "exp_bits", 3);
  nbl_id top = output_of(s, g, q, 1, "top", 0, NBL_DT_FLOAT), codes = output_of(s, g, q, 2, "codes", 1, NBL_DT_INT8);
  if (top == NBL_NONE || codes == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "int4-backward: out of memory");
  nbl_node_set_input(g, id, 6, codes); /* (inputs 3..5 absent: "") */
  nbl_node_set_input(g, id, 7, top);
  /* dY itself no longer: the codes and top carry it; the QuantizeLog
   * drops its Y when nothing else reads it (not written, not read) */
  const nbl_id y = g->nodes[id].inputs[0];
  nbl_node_set_input(g, id, 0, NBL_NONE);
  nbl_value *yv = &g->values[y];
  if (!yv->n_consumers && !(yv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) && g->nodes[q].outputs[0] == y) {
    g->nodes[q].outputs[0] = NBL_NONE;
    yv->dead = true;
    yv->producer = NBL_NONE;
  }
  nbl_node_set_attr_int(g, id, "log_radix", radix);
  nbl_node_set_attr_int(g, id, "log_exp_bits", eb);
  return NBL_OK;
}

static void keep(ib_state *s, const nbl_node *n, const char *why) {
  s->n_kept++;
  size_t k = strlen(s->kept);
  if (k < sizeof s->kept - 80)
    snprintf(s->kept + k, sizeof s->kept - k, "%s%s (%s)", k ? ", " : "", n->name[0] ? n->name : n->op_type, why);
}

static void retype(ib_state *s, nbl_node *n, const char *op) {
  n->op_type = nbl_arena_strdup(s->m->arena, op);
  n->domain = nbl_arena_strdup(s->m->arena, "ai.nibble");
}

/* Remove attribute `name` of node n, if present. */
static void drop_attr(nbl_node *n, const char *name) {
  for (int i = 0; i < n->n_attrs; i++)
    if (!strcmp(n->attrs[i].name, name)) {
      memmove(n->attrs + i, n->attrs + i + 1, sizeof(nbl_attr) * (size_t)(n->n_attrs - i - 1));
      n->n_attrs--;
      return;
    }
}

static nbl_status conv_grad(ib_state *s, nbl_graph *g, nbl_id id) {
  nbl_node *n = &g->nodes[id];
  if (n->n_inputs < 3) return NBL_OK;
  nbl_id qd, qx, qw;
  const int kd = kind_of(g, n->inputs[0], &qd), kx = kind_of(g, n->inputs[1], &qx),
            kw = kind_of(g, n->inputs[2], &qw);
  const int want_dx = n->n_outputs > 0 && n->outputs[0] != NBL_NONE,
            want_dw = n->n_outputs > 1 && n->outputs[1] != NBL_NONE;
  if (kd == K_NONE || (kd == K_INT && !s->linear)) {
    if (kx == K_INT || kw == K_INT) keep(s, n, kd == K_INT ? "linear dY; linear=1 takes it" : "dY not log-quantized");
    return NBL_OK;
  }
  if ((want_dw && kx != K_INT) || (want_dx && kw != K_INT)) {
    keep(s, n, want_dw && kx != K_INT ? "X not from QuantizeInt4" : "W not from QuantizeInt4");
    return NBL_OK;
  }
  nbl_id sc[3] = {kx == K_INT ? scale_of(s, g, qx) : NBL_NONE, kw == K_INT ? scale_of(s, g, qw) : NBL_NONE,
                  kd == K_INT ? scale_of(s, g, qd) : NBL_NONE};
  for (int i = 0; i < 3; i++)
    if ((i == 0 ? kx : i == 1 ? kw : kd) == K_INT && sc[i] == NBL_NONE)
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "int4-backward: out of memory");
  int last = sc[2] != NBL_NONE ? 2 : sc[1] != NBL_NONE ? 1 : 0;
  for (int i = 0; i <= last; i++) nbl_node_set_input(g, id, 3 + i, sc[i]);
  if (kd == K_LOG && s->codes) {
    nbl_status st = wire_codes(s, g, id, qd);
    if (st) return st;
  }
  if (kx == K_INT) { /* (without dW: X's shape only) */
    nbl_status st = wire_x_codes(s, g, id, qx, 1, 8);
    if (st) return st;
  }
  retype(s, &g->nodes[id], "Int4LogConvGrad");
  s->n_conv++;
  return NBL_OK;
}

static nbl_status product(ib_state *s, nbl_graph *g, nbl_id id, int matmul) {
  nbl_node *n = &g->nodes[id];
  if (n->n_inputs < 2) return NBL_OK;
  nbl_id qa, qb;
  const int ka = kind_of(g, n->inputs[0], &qa), kb = kind_of(g, n->inputs[1], &qb);
  const int ok = (ka == K_LOG && kb == K_INT) || (ka == K_INT && kb == K_LOG) ||
                 (s->linear && ka == K_INT && kb == K_INT);
  if (!ok) {
    if (ka == K_LOG || kb == K_LOG) keep(s, n, "the other operand not from QuantizeInt4");
    return NBL_OK;
  }
  if (matmul) {
    const nbl_type *ta = &g->values[n->inputs[0]].type, *tb = &g->values[n->inputs[1]].type;
    if (ta->rank != 2 || tb->rank != 2) {
      keep(s, n, "MatMul operands not known to be 2-D");
      return NBL_OK;
    }
  } else if (n->n_inputs > 2 && n->inputs[2] != NBL_NONE) {
    if (nbl_attr_float(n, "beta", 1.0f) != 0.0f) {
      if (ka == K_LOG || kb == K_LOG) keep(s, n, "Gemm with a C term");
      return NBL_OK;
    }
  }
  nbl_id sa = ka == K_INT ? scale_of(s, g, qa) : NBL_NONE, sb = kb == K_INT ? scale_of(s, g, qb) : NBL_NONE;
  if ((ka == K_INT && sa == NBL_NONE) || (kb == K_INT && sb == NBL_NONE))
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "int4-backward: out of memory");
  nbl_node_set_input(g, id, 2, sa); /* replaces C, if any */
  if (sb != NBL_NONE || g->nodes[id].n_inputs > 3) nbl_node_set_input(g, id, 3, sb);
  n = &g->nodes[id];
  while (n->n_inputs > 2 && n->inputs[n->n_inputs - 1] == NBL_NONE) n->n_inputs--; /* no trailing "" */
  drop_attr(n, "beta");
  retype(s, &g->nodes[id], "Int4LogGemm");
  s->n_gemm++;
  return NBL_OK;
}

/* A forward Conv of two QuantizeInt4 outputs (2 spatial dims). */
static nbl_status fwd_conv(ib_state *s, nbl_graph *g, nbl_id id) {
  nbl_node *n = &g->nodes[id];
  if (n->n_inputs < 2 || n->n_outputs < 1) return NBL_OK;
  nbl_id qx, qw;
  if (kind_of(g, n->inputs[0], &qx) != K_INT || kind_of(g, n->inputs[1], &qw) != K_INT) return NBL_OK;
  const nbl_type *tx = &g->values[n->inputs[0]].type;
  if (tx->rank != 4) {
    keep(s, n, "forward Conv input not known to be 4-D");
    return NBL_OK;
  }
  nbl_id sx = scale_of(s, g, qx), sw = scale_of(s, g, qw);
  if (sx == NBL_NONE || sw == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "int4-backward: out of memory");
  if (g->nodes[id].n_inputs < 3) nbl_node_set_input(g, id, 2, NBL_NONE);
  nbl_node_set_input(g, id, 3, sx);
  nbl_node_set_input(g, id, 4, sw);
  nbl_status st = wire_x_codes(s, g, id, qx, 0, 5);
  if (st) return st;
  retype(s, &g->nodes[id], "Int4CodedConv");
  s->n_fwd++;
  return NBL_OK;
}

static nbl_status run_graph(ib_state *s, nbl_graph *g, int training) {
  const int n0 = g->n_nodes; /* the nodes to look at (scale values add none) */
  for (nbl_id id = 0; id < n0; id++) {
    nbl_status st = NBL_OK;
    const nbl_node *n = &g->nodes[id];
    if (op_is(n, "com.microsoft", "ConvGrad")) st = conv_grad(s, g, id);
    else if (op_is(n, "", "Gemm")) st = product(s, g, id, 0);
    else if (op_is(n, "", "MatMul")) st = product(s, g, id, 1);
    else if (training && s->forward && op_is(n, "", "Conv")) st = fwd_conv(s, g, id);
    if (st) return st;
  }
  nbl_graph_compact(g); /* the dropped Y values */
  return NBL_OK;
}

static nbl_status ib_run(nbl_pass_ctx *ctx) {
  ib_state s = {.ctx = ctx, .m = ctx->model, .linear = nbl_pass_opt_bool(ctx, "linear"),
                .forward = nbl_pass_opt_bool(ctx, "forward"), .codes = nbl_pass_opt_bool(ctx, "codes")};
  nbl_status st = run_graph(&s, ctx->model->graph, 0);
  for (int t = 0; !st && t < ctx->model->n_training; t++)
    if (ctx->model->training[t].algorithm) st = run_graph(&s, ctx->model->training[t].algorithm, 1);
  if (st) return st;
  if ((s.n_conv || s.n_gemm || s.n_fwd) && nbl_model_opset(ctx->model, "ai.nibble") < 1)
    nbl_model_set_opset(ctx->model, "ai.nibble", 1);
  ctx->changed = s.n_conv + s.n_gemm + s.n_fwd;
  nbl_pass_logf(ctx, "%d ConvGrad and %d Gemm/MatMul backward products, %d forward Conv to integer kernels%s%s",
                s.n_conv, s.n_gemm, s.n_fwd, s.n_kept ? "; kept in float: " : "", s.kept);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_int4_backward = {
    .name = "int4-backward",
    .description = "run the backward products of QuantizeInt4 x QuantizeLog operands (ConvGrad, Gemm, 2-D "
                   "MatMul), and the forward Conv of QuantizeInt4 operands in training graphs, as ai.nibble "
                   "integer kernels",
    .run = ib_run,
    .changes_numerics = 0,
    .options =
        {
            {"linear", NBL_OPT_BOOL, "0",
             "also gradients quantized by QuantizeInt4 (linear INT4 codes, quantize-grad-log4{format=int4})"},
            {"forward", NBL_OPT_BOOL, "1",
             "also the forward Conv of two QuantizeInt4 outputs in training graphs (ai.nibble Int4CodedConv)"},
            {"codes", NBL_OPT_BOOL, "1",
             "hand a log-quantized dY's codes and top (QuantizeLog outputs 2 and 1) to Int4LogConvGrad, and "
             "X's QuantizeInt4 codes and zero point (outputs 3 and 2) to Int4CodedConv and Int4LogConvGrad's dW, "
             "which then need not recover them from the floats"},
        },
};
