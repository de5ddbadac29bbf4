/* quantize_grad_log4.c - quantize-grad-log4: in a training model, put an
 * ai.nibble QuantizeLog (runtime/formats/log.h) on the gradient arriving at
 * each selected Conv / ConvTranspose / Gemm / MatMul output (dY) before that
 * layer's backward products. Changes numerics.
 *
 * Where: the algorithm graph of training_info[0]. Its forward part is every
 * node the loss (output 0) depends on; the layers are the forward nodes of
 * the selected op types, in topological order. A layer's dY is the value
 * "<Y>_grad" (Y its output), which build-training makes a value of its own
 * read only by the layer's backward nodes, named "<layer>_grad/dX", "/dW",
 * "/dXdW" (one ConvGrad computing both) and "/dB" or "/ReduceSum..." (the
 * bias reduction; runtime/core/grad.h, nbl_grad_dy_own). In a training model
 * made otherwise (any model in the standard form of TRAINING_CONTRACT.md), dY
 * is found from the products themselves: the other operand of the backward
 * ConvGrad (which reads the layer's X and W) or Gemm/MatMul (which reads its
 * X or W). The readers of dY that are this layer's backward are rewired:
 *   the input-gradient product: a /dX node, a Gemm/MatMul reading W, a
 *     ConvGrad's output 0;
 *   the weight-gradient side: a /dW or /dB node, a Gemm/MatMul reading X, a
 *     ReduceSum (bias), a ConvGrad's outputs 1 and 2;
 * any other reader keeps the float dY (reported).
 *
 * Rounding nearest, stochastic or luq: one QuantizeLog feeds every product.
 * Rounding tpr (two-phase rounding): the phase-0 copy (grid top*r^-k) feeds
 * the input-gradient product and the phase-1 copy (top*sqrt(r)*r^-k) the
 * weight-gradient side; a ConvGrad computing both is split into two ConvGrad
 * nodes, ".../dX" keeping output 0 and ".../dW" outputs 1 and 2. A layer
 * whose dY also feeds a backward node of unknown role is skipped under tpr.
 *
 * format=int4 puts a QuantizeInt4 (4-bit symmetric, per-tensor max scale,
 * half-even) there instead: linear INT4 gradients, the comparison that shows
 * why the log format exists.
 *
 * The stochastic modes read the algorithm graph's int64 input `step`, so
 * each training step draws new numbers (the node's seed is the pass's seed
 * plus the layer's position). With skip-first-last (the default, as the
 * paper) the first and last selected layers keep float gradients; with
 * skip-1x1 (the default) so do the convolutions whose kernel is 1 x 1 (the
 * paper ran them in FP8 on its ResNets: a 1 x 1 layer has no neighbouring
 * taps to average its gradient's rounding over, and in a ResNet it is the
 * projection shortcut that carries the gradient past a block). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"
#include "select.h"
#include "runtime/formats/log.h"


enum { ROLE_NONE = 0, ROLE_X = 1, ROLE_W = 2, ROLE_BOTH = 3, ROLE_UNKNOWN = 4 };

typedef struct lq {
  nbl_pass_ctx *ctx;
  nbl_graph *g; /* the algorithm graph */
  nbl_log_config cfg;
  nbl_id step;  /* the algorithm's int64 input `step`, or NBL_NONE */
  int linear;   /* format=int4: QuantizeInt4 (linear INT4, the comparison) instead */
  int n_nodes, n_split, n_layers;
  nbl_textlist done, kept, kept1, skipped, float_readers;
} lq;

static int is_product(const nbl_node *c) {
  return !c->domain[0] && (!strcmp(c->op_type, "Gemm") || !strcmp(c->op_type, "MatMul"));
}
static int is_convgrad(const nbl_node *c) {
  return !strcmp(c->domain, "com.microsoft") &&
         (!strcmp(c->op_type, "ConvGrad") || !strcmp(c->op_type, "ConvTransposeGrad"));
}
static int reads(const nbl_node *c, nbl_id v) {
  for (int i = 0; i < c->n_inputs; i++)
    if (v != NBL_NONE && c->inputs[i] == v) return 1;
  return 0;
}
static int has_out(const nbl_node *c, int i) { return i < c->n_outputs && c->outputs[i] != NBL_NONE; }

/* The role of backward node c of layer f (reading dY). */
static int role_of(const nbl_graph *g, const nbl_node *f, const nbl_node *c) {
  (void)g;
  nbl_id X = f->inputs[0], W = f->n_inputs > 1 ? f->inputs[1] : NBL_NONE;
  if (is_convgrad(c)) {
    if (c->n_inputs < 3 || c->inputs[1] != X || c->inputs[2] != W) return ROLE_NONE;
    int x = has_out(c, 0), w = has_out(c, 1) || has_out(c, 2);
    return x && w ? ROLE_BOTH : x ? ROLE_X : w ? ROLE_W : ROLE_NONE;
  }
  size_t pl = strlen(f->name);
  if (pl && !strncmp(c->name, f->name, pl) && !strncmp(c->name + pl, "_grad/", 6)) {
    const char *tag = c->name + pl + 6;
    if (!strncmp(tag, "dXdW", 4)) return ROLE_BOTH;
    if (!strncmp(tag, "dX", 2)) return ROLE_X;
    if (!strncmp(tag, "dW", 2) || !strncmp(tag, "dB", 2) || !strncmp(tag, "ReduceSum", 9)) return ROLE_W;
    return ROLE_UNKNOWN;
  }
  if (is_product(c)) {
    if (reads(c, W)) return ROLE_X;
    if (reads(c, X)) return ROLE_W;
    return ROLE_NONE;
  }
  if (!c->domain[0] && !strcmp(c->op_type, "ReduceSum")) return ROLE_W; /* the bias */
  return ROLE_NONE;
}

/* dY of layer f: "<Y>_grad", else the operand of its backward products. */
static nbl_id find_dy(const nbl_graph *g, const nbl_node *f, const unsigned char *fwd, const char **why) {
  char nm[600];
  snprintf(nm, sizeof nm, "%s_grad", g->values[f->outputs[0]].name);
  nbl_id v = nbl_graph_find(g, nm);
  if (v != NBL_NONE) return v;
  nbl_id X = f->inputs[0], W = f->n_inputs > 1 ? f->inputs[1] : NBL_NONE, found = NBL_NONE;
  nbl_id keys[2] = {X, W};
  for (int k = 0; k < 2; k++) {
    if (keys[k] == NBL_NONE) continue;
    const nbl_value *kv = &g->values[keys[k]];
    for (int j = 0; j < kv->n_consumers; j++) {
      nbl_id ci = kv->consumers[j];
      const nbl_node *c = &g->nodes[ci];
      if (c->dead || fwd[ci] || !(is_product(c) || is_convgrad(c)) || c->n_inputs < 2) continue;
      nbl_id other = is_convgrad(c) ? c->inputs[0] : c->inputs[0] == keys[k] ? c->inputs[1] : c->inputs[0];
      if (other == X || other == W || other == NBL_NONE) continue;
      if (found != NBL_NONE && found != other) {
        *why = "its backward products read different output gradients";
        return NBL_NONE;
      }
      found = other;
    }
  }
  if (found == NBL_NONE) *why = "no output gradient (no backward product reads its X or W)";
  return found;
}

/* A QuantizeLog of dy for layer f with the given phase; its output value. */
static nbl_id add_qlog(lq *s, const nbl_node *f, nbl_id dy, int phase, int seed_off, const char *tag) {
  nbl_graph *g = s->g;
  char hint[700];
  snprintf(hint, sizeof hint, "%s_%s", g->values[dy].name, tag);
  nbl_id out = nbl_graph_add_value(g, nbl_graph_unique_name(g, hint));
  if (out == NBL_NONE) return NBL_NONE;
  nbl_type_copy(g->model->arena, &g->values[out].type, &g->values[dy].type);
  snprintf(hint, sizeof hint, "%s_grad/%s", f->name, tag);
  nbl_id in[2] = {dy, s->step};
  if (s->linear) { /* 4-bit symmetric codes, max scale, half-even: the attribute defaults */
    snprintf(hint, sizeof hint, "%s_grad/int4", f->name);
    nbl_id nid = nbl_graph_add_node(g, "QuantizeInt4", "ai.nibble", nbl_graph_unique_name(g, hint), 1, in, 1, &out);
    if (nid == NBL_NONE) return NBL_NONE;
    nbl_node_set_attr_int(g, nid, "bits", 4);
    if (g->values[out].type.kind == NBL_TYPE_TENSOR) nbl_graph_add_value_info(g, out);
    s->n_nodes++;
    return out;
  }
  int stoch = s->cfg.rounding == NBL_LOG_STOCHASTIC || s->cfg.rounding == NBL_LOG_LUQ;
  nbl_id nid = nbl_graph_add_node(g, "QuantizeLog", "ai.nibble", nbl_graph_unique_name(g, hint),
                                  stoch && s->step != NBL_NONE ? 2 : 1, in, 1, &out);
  if (nid == NBL_NONE) return NBL_NONE;
  nbl_node_set_attr_int(g, nid, "radix", s->cfg.radix);
  nbl_node_set_attr_int(g, nid, "exp_bits", s->cfg.exp_bits);
  nbl_node_set_attr_string(g, nid, "rounding", nbl_log_rounding_name(s->cfg.rounding));
  if (s->cfg.rounding == NBL_LOG_TPR) nbl_node_set_attr_int(g, nid, "phase", phase);
  if (stoch) nbl_node_set_attr_int(g, nid, "seed", s->cfg.seed + seed_off);
  if (g->values[out].type.kind == NBL_TYPE_TENSOR) nbl_graph_add_value_info(g, out);
  s->n_nodes++;
  return out;
}

/* 1 if layer f is a Conv / ConvTranspose whose kernel is 1 x 1 (every
 * spatial dim 1), from its kernel_shape or else its weight's shape; 0 when
 * neither says. */
static int is_1x1(const nbl_graph *g, const nbl_node *f) {
  if (strcmp(f->op_type, "Conv") && strcmp(f->op_type, "ConvTranspose")) return 0;
  int nk = 0;
  const int64_t *ks = nbl_attr_ints(f, "kernel_shape", &nk);
  if (ks && nk > 0) {
    for (int i = 0; i < nk; i++)
      if (ks[i] != 1) return 0;
    return 1;
  }
  if (f->n_inputs < 2 || f->inputs[1] == NBL_NONE) return 0;
  /* the weight's shape: its initializer, or its type, here or (a training
   * graph's parameter) in the inference graph */
  const nbl_value *w = &g->values[f->inputs[1]];
  for (int hop = 0; hop < 4 && !w->init && w->type.rank < 0 && w->producer != NBL_NONE; hop++) {
    const nbl_node *q = &g->nodes[w->producer]; /* a weight quantizer keeps the shape */
    if (strcmp(q->domain, "ai.nibble") || (strcmp(q->op_type, "QuantizeInt4") && strcmp(q->op_type, "QuantizeTernary")) ||
        q->n_inputs < 1 || q->inputs[0] == NBL_NONE)
      break;
    w = &g->values[q->inputs[0]];
  }
  if (!w->init && w->type.rank < 0 && g->model && g->model->graph != g) {
    nbl_id o = nbl_graph_find(g->model->graph, w->name);
    if (o != NBL_NONE) w = &g->model->graph->values[o];
  }
  int rank = w->init ? w->init->rank : w->type.kind == NBL_TYPE_TENSOR ? w->type.rank : -1;
  if (rank < 3) return 0;
  for (int i = 2; i < rank; i++)
    if ((w->init ? w->init->dims[i] : w->type.dims[i].value) != 1) return 0;
  return 1;
}

/* Split ConvGrad node ci (dX and dW/dB) into two nodes reading q0 and q1. */
static nbl_status split_convgrad(lq *s, nbl_id ci, nbl_id dy, nbl_id q0, nbl_id q1) {
  nbl_graph *g = s->g;
  nbl_node c = g->nodes[ci]; /* a copy: the array may move */
  nbl_arena *a = g->model->arena;
  char base[600];
  size_t nl = strlen(c.name);
  if (nl >= 4 && !strcmp(c.name + nl - 4, "dXdW")) snprintf(base, sizeof base, "%.*s", (int)(nl - 4), c.name);
  else snprintf(base, sizeof base, "%s_", c.name);
  nbl_id in[8], outs[3] = {NBL_NONE, NBL_NONE, NBL_NONE};
  int n_in = c.n_inputs < 8 ? c.n_inputs : 8;
  for (int i = 0; i < n_in; i++) in[i] = c.inputs[i];
  for (int i = 0; i < 3 && i < c.n_outputs; i++) outs[i] = c.outputs[i];
  nbl_attr *attrs = c.n_attrs ? nbl_arena_memdup(a, c.attrs, sizeof(nbl_attr) * (size_t)c.n_attrs) : NULL;
  nbl_attr *attrs2 = c.n_attrs ? nbl_arena_memdup(a, c.attrs, sizeof(nbl_attr) * (size_t)c.n_attrs) : NULL;
  char *op = nbl_arena_strdup(a, c.op_type), *dom = nbl_arena_strdup(a, c.domain);
  if ((c.n_attrs && (!attrs || !attrs2)) || !op || !dom)
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_node_kill(g, ci);
  char nm[700];
  for (int k = 0; k < 2; k++) { /* k = 0: dX from q0; k = 1: dW, dB from q1 */
    nbl_id kin[8];
    for (int i = 0; i < n_in; i++) kin[i] = in[i] == dy ? (k ? q1 : q0) : in[i];
    nbl_id kout[3] = {k ? NBL_NONE : outs[0], k ? outs[1] : NBL_NONE, k ? outs[2] : NBL_NONE};
    snprintf(nm, sizeof nm, "%s%s", base, k ? "dW" : "dX");
    nbl_id nid = nbl_graph_add_node(g, op, dom, nm, n_in, kin, k ? 3 : 1, kout);
    if (nid == NBL_NONE) return NBL_ERR_INTERNAL;
    g->nodes[nid].attrs = k ? attrs2 : attrs;
    g->nodes[nid].n_attrs = c.n_attrs;
  }
  s->n_split++;
  return NBL_OK;
}

/* Quantize the output gradient of layer nid (the idx-th selected layer). */
static nbl_status do_layer(lq *s, nbl_id nid, int idx, const unsigned char *fwd) {
  nbl_graph *g = s->g;
  const nbl_node *f = &g->nodes[nid];
  const char *why = NULL;
  if (f->n_inputs < 2 || f->inputs[0] == NBL_NONE || f->inputs[1] == NBL_NONE) why = "missing input";
  char lb[300];
  nbl_node_label(g, f, lb, sizeof lb);
  nbl_id dy = why ? NBL_NONE : find_dy(g, f, fwd, &why);
  if (dy == NBL_NONE) {
    nbl_textlist_add(&s->skipped, "%s (%s)", lb, why);
    return NBL_OK;
  }
  const nbl_value *dv = &g->values[dy];
  nbl_dtype dt = dv->type.kind == NBL_TYPE_TENSOR ? dv->type.elem : NBL_DT_UNDEFINED;
  if (dt != NBL_DT_FLOAT && dt != NBL_DT_UNDEFINED) {
    nbl_textlist_add(&s->skipped, "%s (gradient '%s' is %s, not float32)", lb, dv->name, nbl_dtype_name(dt));
    return NBL_OK;
  }
  /* the readers of dY and their roles (a node reading it twice is listed once) */
  int nc = dv->n_consumers, n_role = 0, need[2] = {0, 0};
  nbl_id *cons = malloc(sizeof(nbl_id) * (size_t)(nc ? nc : 1));
  int *role = malloc(sizeof(int) * (size_t)(nc ? nc : 1));
  if (!cons || !role) {
    free(cons);
    free(role);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int n = 0;
  for (int k = 0; k < nc; k++) {
    nbl_id ci = dv->consumers[k];
    int dup = 0;
    for (int j = 0; j < n; j++) dup |= cons[j] == ci;
    if (dup) continue;
    const nbl_node *c = &g->nodes[ci];
    if ((!strcmp(c->op_type, "QuantizeLog") || !strcmp(c->op_type, "QuantizeInt4")) &&
        !strcmp(c->domain, "ai.nibble")) {
      why = "its output gradient is already log-quantized";
      break;
    }
    cons[n] = ci;
    role[n] = role_of(g, f, c);
    if (role[n] == ROLE_UNKNOWN && s->cfg.rounding == NBL_LOG_TPR) {
      nbl_textlist_add(&s->skipped, "%s (tpr: backward node '%s' of unknown role reads '%s')", lb, c->name, dv->name);
      why = "";
      break;
    }
    if (role[n] == ROLE_UNKNOWN) role[n] = ROLE_BOTH;
    if (role[n] == ROLE_NONE) {
      nbl_textlist_add(&s->float_readers, "'%s' (%s) keeps the float '%s'", c->name, c->op_type, dv->name);
    } else {
      n_role++;
      if (role[n] & ROLE_X) need[0] = 1;
      if (role[n] & ROLE_W) need[1] = 1;
    }
    n++;
  }
  if (!why && n_role == 0) why = "no backward product reads its output gradient";
  if (why) {
    if (*why) nbl_textlist_add(&s->skipped, "%s (%s)", lb, why);
    free(cons);
    free(role);
    return NBL_OK;
  }
  nbl_status st = NBL_OK;
  nbl_id q0 = NBL_NONE, q1 = NBL_NONE;
  char fname[600];
  snprintf(fname, sizeof fname, "%s", f->name);
  nbl_node fcopy = *f; /* for names: f moves when nodes are added */
  fcopy.name = fname;
  if (s->cfg.rounding == NBL_LOG_TPR) {
    if (need[0]) q0 = add_qlog(s, &fcopy, dy, 0, idx, "log4_dX");
    if (need[1]) q1 = add_qlog(s, &fcopy, dy, 1, idx, "log4_dW");
    if ((need[0] && q0 == NBL_NONE) || (need[1] && q1 == NBL_NONE)) st = NBL_ERR_INTERNAL;
  } else {
    q0 = q1 = add_qlog(s, &fcopy, dy, 0, idx, s->linear ? "int4" : "log4");
    if (q0 == NBL_NONE) st = NBL_ERR_INTERNAL;
  }
  for (int k = 0; k < n && !st; k++) {
    if (role[k] == ROLE_NONE) continue;
    nbl_id ci = cons[k];
    if (role[k] == ROLE_BOTH && q0 != q1 && is_convgrad(&g->nodes[ci])) {
      st = split_convgrad(s, ci, dy, q0, q1);
      continue;
    }
    nbl_id q = role[k] == ROLE_X ? q0 : q1;
    for (int i = 0; i < g->nodes[ci].n_inputs; i++)
      if (g->nodes[ci].inputs[i] == dy) nbl_node_set_input(g, ci, i, q);
  }
  free(cons);
  free(role);
  if (!st) {
    s->n_layers++;
    nbl_textlist_add(&s->done, "%s", lb);
  }
  return st;
}

static nbl_status qlog_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  if (m->n_training < 1 || !m->training[0].algorithm)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-grad-log4: %s has no training graph (training_info); run "
                      "build-training first",
                      nbl_model_label(m));
  lq s = {.ctx = ctx, .g = m->training[0].algorithm, .step = NBL_NONE};
  nbl_graph *g = s.g;
  nbl_log_config_default(&s.cfg);
  const char *rounding = nbl_pass_opt_string(ctx, "rounding");
  if (nbl_log_parse_rounding(rounding, &s.cfg.rounding) != 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-grad-log4: rounding='%s' (want nearest, stochastic, tpr or luq)", rounding);
  int64_t radix = nbl_pass_opt_int(ctx, "radix"), eb = nbl_pass_opt_int(ctx, "exp-bits");
  if (radix == 0) radix = s.cfg.rounding == NBL_LOG_LUQ ? 2 : 4;
  s.cfg.radix = (int)(radix == 2 || radix == 4 || radix == 10 ? radix : 0);
  s.cfg.exp_bits = (int)(eb >= 1 && eb <= 4 ? eb : 0);
  s.cfg.seed = nbl_pass_opt_int(ctx, "seed");
  const char *why = NULL;
  if (nbl_log_validate(&s.cfg, &why) != 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "quantize-grad-log4: radix=%lld exp-bits=%lld rounding=%s: %s",
                      (long long)radix, (long long)eb, rounding, why);
  const char *format = nbl_pass_opt_string(ctx, "format");
  if (strcmp(format, "log") && strcmp(format, "int4"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "quantize-grad-log4: format='%s' (want log or int4)", format);
  s.linear = !strcmp(format, "int4");
  if (s.linear && s.cfg.rounding != NBL_LOG_NEAREST)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "quantize-grad-log4: format=int4 rounds half to even; rounding=%s applies to "
                      "format=log only", rounding);
  const char *ops = nbl_pass_opt_string(ctx, "ops"), *layers = nbl_pass_opt_string(ctx, "layers");
  int first_last = nbl_pass_opt_bool(ctx, "skip-first-last"), skip_1x1 = nbl_pass_opt_bool(ctx, "skip-1x1");
  if (g->n_outputs < 1) return nbl_errorf(NBL_ERR_INVALID_MODEL, "quantize-grad-log4: the algorithm graph has no output");
  for (int i = 0; i < g->n_inputs; i++) {
    const nbl_value *v = &g->values[g->inputs[i]];
    if (!strcmp(v->name, "step") && v->type.kind == NBL_TYPE_TENSOR && v->type.elem == NBL_DT_INT64)
      s.step = g->inputs[i];
  }
  /* the forward part: what the loss depends on */
  unsigned char *fwd = calloc((size_t)g->n_nodes + 1, 1);
  nbl_id *stack = malloc(sizeof(nbl_id) * ((size_t)g->n_nodes + 1));
  nbl_id *order = NULL;
  int n = fwd && stack ? nbl_graph_topo_order(g, &order) : -1;
  if (n < 0) {
    free(fwd);
    free(stack);
    return fwd && stack ? NBL_ERR_INVALID_MODEL : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int sp = 0;
  nbl_id lp = g->values[g->outputs[0]].producer;
  if (lp != NBL_NONE) fwd[lp] = 1, stack[sp++] = lp;
  while (sp > 0) {
    const nbl_node *nd = &g->nodes[stack[--sp]];
    for (int i = 0; i < nd->n_inputs; i++) {
      nbl_id v = nd->inputs[i];
      nbl_id p = v == NBL_NONE ? NBL_NONE : g->values[v].producer;
      if (p != NBL_NONE && !fwd[p]) fwd[p] = 1, stack[sp++] = p;
    }
  }
  /* the selected layers, in topological order */
  int nl = 0;
  for (int i = 0; i < n; i++) {
    const nbl_node *nd = &g->nodes[order[i]];
    if (!fwd[order[i]] || nd->domain[0] || !nbl_list_has(ops, nd->op_type, 0)) continue;
    if (!nbl_list_has(layers, nd->name, 1)) {
      char lb[300];
      nbl_textlist_add(&s.skipped, "%s (not in layers)", nbl_node_label(g, nd, lb, sizeof lb));
      continue;
    }
    order[nl++] = order[i];
  }
  nbl_status st = NBL_OK;
  if (nl > 0 && nbl_model_opset(m, "ai.nibble") == 0) st = nbl_model_set_opset(m, "ai.nibble", 1);
  for (int i = 0; i < nl && !st; i++) {
    if (first_last && (i == 0 || i == nl - 1)) {
      char lb[300];
      nbl_textlist_add(&s.kept, "%s", nbl_node_label(g, &g->nodes[order[i]], lb, sizeof lb));
      continue;
    }
    if (skip_1x1 && is_1x1(g, &g->nodes[order[i]])) {
      char lb[300];
      nbl_textlist_add(&s.kept1, "%s", nbl_node_label(g, &g->nodes[order[i]], lb, sizeof lb));
      continue;
    }
    st = do_layer(&s, order[i], i, fwd);
  }
  free(order);
  free(fwd);
  free(stack);
  if (!st) {
    ctx->changed += s.n_nodes + s.n_split;
    char split[64] = "";
    if (s.n_split) snprintf(split, sizeof split, "; split %d ConvGrad into dX and dW nodes", s.n_split);
    if (s.linear) {
      nbl_pass_logf(ctx, "linear INT4 gradients (format=int4: QuantizeInt4, 4-bit symmetric, max scale, "
                         "half-even) at %d layers: %s", s.n_layers, s.done.s ? s.done.s : "none");
    } else {
      nbl_pass_logf(ctx,
                    "log-quantized the output gradients of %d layers with %d QuantizeLog (radix %d, %d "
                    "exponent bits, rounding %s%s): %s%s",
                    s.n_layers, s.n_nodes, s.cfg.radix, s.cfg.exp_bits, nbl_log_rounding_name(s.cfg.rounding),
                    s.cfg.rounding == NBL_LOG_TPR ? ": phase 0 to the input-gradient products, phase 1 to "
                                                    "the weight-gradient products"
                                                  : "",
                    s.done.s ? s.done.s : "none", split);
    }
    nbl_pass_logf(ctx, "kept in float (first/last): %s; (1x1): %s; skipped: %s", s.kept.s ? s.kept.s : "none",
                  s.kept1.s ? s.kept1.s : "none", s.skipped.s ? s.skipped.s : "none");
    if (s.float_readers.s) nbl_pass_logf(ctx, "not this layer's backward: %s", s.float_readers.s);
    if ((s.cfg.rounding == NBL_LOG_STOCHASTIC || s.cfg.rounding == NBL_LOG_LUQ) && s.step == NBL_NONE &&
        s.n_nodes)
      nbl_pass_logf(ctx, "the algorithm graph has no int64 input 'step': the stochastic draws repeat every step");
  }
  free(s.done.s);
  free(s.kept.s);
  free(s.kept1.s);
  free(s.skipped.s);
  free(s.float_readers.s);
  return st;
}

const nbl_pass_def nbl_pass_quantize_grad_log4 = {
    .name = "quantize-grad-log4",
    .description = "training models: put an ai.nibble QuantizeLog (log radix-4 gradients) on the "
                   "output gradient of every Conv/ConvTranspose/Gemm/MatMul before its backward "
                   "products; tpr: one copy per product (changes numerics)",
    .run = qlog_run,
    .changes_numerics = 1,
    .options =
        {
            {"layers", NBL_OPT_STRING, "*", "globs over the layers' node names"},
            {"ops", NBL_OPT_STRING, "Conv,ConvTranspose,Gemm,MatMul", "op types of the layers"},
            {"rounding", NBL_OPT_STRING, "nearest", "nearest, stochastic, tpr (two-phase) or luq"},
            {"radix", NBL_OPT_INT, "0", "2, 4 or 10 (0: 4, or 2 for luq)"},
            {"exp-bits", NBL_OPT_INT, "3", "exponent bits: 2^e - 1 levels (1..4)"},
            {"skip-first-last", NBL_OPT_BOOL, "1",
             "keep float gradients at the first and last selected layers (as the paper)"},
            {"skip-1x1", NBL_OPT_BOOL, "1",
             "keep float gradients at 1x1 convolutions (the paper ran them in FP8)"},
            {"seed", NBL_OPT_INT, "0", "seed of the stochastic modes (layer i gets seed + i)"},
            {"format", NBL_OPT_STRING, "log",
             "log (QuantizeLog), or int4: linear INT4 gradients (QuantizeInt4, max scale, "
             "half-even) for comparison"},
        },
};
