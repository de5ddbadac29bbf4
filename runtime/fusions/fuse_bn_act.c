/* fuse_bn_act.c - the bn-act fusion of training graphs: the forward chain
 * around every convolution with BatchNorm of a training graph,
 *
 *   BatchNormInternal -> [Add (a residual) ->] Relu [-> QuantizeInt4]
 *
 * runs as one node. Per block of channels (nbl_bn_block; in parallel): the
 * batch statistics (the op's own pass: sixteen double lanes), then, while
 * the block is in cache,
 * Y = x * fa + fb, the residual added, Relu, written once as the Relu output
 * (which the backward reads) with its minimum and maximum; then, in 4-bit
 * graphs, the quantizer with the range known (no scan) writes the quantized
 * output. The unfused chain writes Y and the Add's sum to memory and reads
 * them back, and the quantizer scans the Relu output once more for its
 * range.
 *
 * Same numbers as the unfused nodes bit for bit: the statistics and Y come
 * from BatchNormInternal's kernel pieces (runtime/ops/grad_norm.h),
 * the sum is the same float addition, Relu the same selection (v < 0 ? 0 : v),
 * the quantizer's parameters come from the same range (its minimum and
 * maximum; the sign of a zero bound does not change them) and its values
 * from the op's own path (nbl_q4_forward: the fast one, or the reference for
 * NaN, Inf or stochastic rounding). See fuse.h; NBL_NO_FUSION=bn-act turns
 * it off.
 *
 * The fused node runs at the QuantizeInt4's place in the schedule (without
 * one, at the Relu's):
 *   inputs:  X, scale, B, input_mean, input_var (BatchNormInternal's), R
 *            (the Add's other operand; omitted without an Add)
 *   outputs: QuantizeInt4's first three (omitted without one; its Y omitted
 *            when int4-backward dropped it for the codes), Relu's
 *            output, BatchNormInternal's outputs 1-4 (running mean and
 *            variance, saved mean and inverse standard deviation), then
 *            QuantizeInt4's codes (output 3, int4-backward's hand-off to the
 *            integer products; omitted when not wired); BatchNormInternal's
 *            Y and the Add's sum are not written
 *   attributes: QuantizeInt4's, nibble.bn_epsilon, nibble.bn_momentum and
 *            nibble.q4 (1 with a QuantizeInt4)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"
#include "runtime/ops/grad_norm.h"
#include "runtime/ops/nibble.h"

/* ------------------------------------------------------------------ plan */

typedef struct ba_fused {
  nbl_node node;
  nbl_id in[6], out[9];
  nbl_attr *attrs;
  char op[40];
} ba_fused;

static int is_float(const nbl_graph *g, nbl_id v) {
  const nbl_type *t = &g->values[v].type;
  return v != NBL_NONE && t->kind == NBL_TYPE_TENSOR && t->elem == NBL_DT_FLOAT;
}

/* 1 if values a and b are declared with the same fully known shape (each dim
 * the same number or the same symbol): the Add does not broadcast. */
static int same_static_shape(const nbl_graph *g, nbl_id a, nbl_id b) {
  const nbl_type *x = &g->values[a].type, *y = &g->values[b].type;
  if (!is_float(g, a) || !is_float(g, b) || x->rank < 2 || x->rank != y->rank) return 0;
  for (int i = 0; i < x->rank; i++) {
    const nbl_dim *p = &x->dims[i], *q = &y->dims[i];
    if (p->value >= 0 ? p->value != q->value : (!p->param || !q->param || strcmp(p->param, q->param)))
      return 0;
  }
  return 1;
}

/* The BatchNormInternal node (training mode, float32, all inputs) whose only
 * use of output 0 is input `slot` of node `by`, or NBL_NONE. */
static nbl_id bn_feeding(const nbl_fusion_env *env, nbl_id v, nbl_id by, int slot) {
  const nbl_graph *g = env->g;
  const nbl_node *B = nbl_fuse_producer(g, v);
  if (!nbl_fuse_is_op(B, "com.microsoft", "BatchNormInternal") || B->n_inputs != 5 || B->n_outputs < 1 ||
      B->n_outputs > 5 || B->outputs[0] != v || nbl_attr_int(B, "training_mode", 1) == 0 ||
      !nbl_fuse_only_feeds(g, v, by, slot) || env->taken(env, g->values[v].producer))
    return NBL_NONE;
  for (int k = 0; k < 5; k++)
    if (!is_float(g, B->inputs[k])) return NBL_NONE;
  return g->values[v].producer;
}

/* 1 if node q is a QuantizeInt4 of value v alone (scale_source max or mse) that
 * the fused node can run. */
static int q4_fusable(const nbl_fusion_env *env, const int *pos, nbl_id q, nbl_id v) {
  const nbl_node *Q = &env->g->nodes[q];
  nbl_q4_config cfg;
  char err[160];
  return nbl_fuse_is_op(Q, "ai.nibble", "QuantizeInt4") && Q->n_inputs == 1 && Q->inputs[0] == v &&
         Q->n_outputs >= 1 && Q->n_outputs <= 4 &&
         (Q->outputs[0] != NBL_NONE || (Q->n_outputs > 3 && Q->outputs[3] != NBL_NONE)) && pos[q] >= 0 &&
         !env->taken(env, q) && nbl_q4_config_decode(Q, &cfg, err, sizeof err) == NBL_OK &&
         (cfg.scale_source == NBL_Q4_SCALE_MAX || cfg.scale_source == NBL_Q4_SCALE_MSE);
}

/* The chain through Relu node r, or NULL; the nodes it absorbs in nodes[]
 * (BatchNormInternal, Relu, the Add or NBL_NONE, the QuantizeInt4 or
 * NBL_NONE) and in *key the node whose place the fused node takes (the
 * QuantizeInt4, else the Relu). */
static ba_fused *try_fuse(const nbl_fusion_env *env, const nbl_id *order, int n_order, const int *pos, nbl_id r,
                          nbl_id nodes[4], nbl_id *key) {
  const nbl_graph *g = env->g;
  const nbl_node *R = &g->nodes[r];
  if (!nbl_fuse_is_op(R, "", "Relu") || R->n_inputs != 1 || R->n_outputs != 1 || R->inputs[0] == NBL_NONE ||
      R->outputs[0] == NBL_NONE || env->taken(env, r))
    return NULL;
  nbl_id v = R->outputs[0];
  if ((g->values[v].flags & NBL_VAL_OUTER) || nbl_fuse_used_in_subgraphs(g, g->values[v].name)) return NULL;
  nodes[3] = NBL_NONE;
  for (int i = 0; i < g->values[v].n_consumers && nodes[3] == NBL_NONE; i++)
    if (q4_fusable(env, pos, g->values[v].consumers[i], v)) nodes[3] = g->values[v].consumers[i];
  const nbl_node *Q = nodes[3] != NBL_NONE ? &g->nodes[nodes[3]] : NULL;
  *key = Q ? nodes[3] : r;
  int q = *key;
  nodes[1] = r;
  nbl_id u = R->inputs[0], res = NBL_NONE;
  nodes[2] = NBL_NONE;
  nodes[0] = bn_feeding(env, u, nodes[1], 0);
  if (nodes[0] == NBL_NONE) { /* BatchNormInternal -> Add(., residual) -> Relu */
    const nbl_node *A = nbl_fuse_producer(g, u);
    if (!nbl_fuse_is_op(A, "", "Add") || A->n_inputs != 2 || A->n_outputs != 1 || A->inputs[0] == A->inputs[1] ||
        !nbl_fuse_only_feeds(g, u, nodes[1], 0) || env->taken(env, g->values[u].producer) ||
        !same_static_shape(g, A->inputs[0], A->inputs[1]))
      return NULL;
    nodes[2] = g->values[u].producer;
    for (int k = 0; k < 2 && nodes[0] == NBL_NONE; k++) {
      nodes[0] = bn_feeding(env, A->inputs[k], nodes[2], k);
      res = A->inputs[1 - k];
    }
    if (nodes[0] == NBL_NONE) return NULL;
  }
  const nbl_node *B = &g->nodes[nodes[0]];
  if (!same_static_shape(g, B->inputs[0], v)) return NULL;
  /* the node runs where QuantizeInt4 did: what it writes is read later */
  nbl_id skip[4] = {nodes[3], nodes[0], nodes[1], nodes[2]};
  for (int k = 1; k < B->n_outputs; k++)
    if (B->outputs[k] != NBL_NONE && (nbl_fuse_read_by(env, order, n_order, B->outputs[k], pos[q], skip, 4) ||
                                      (g->values[B->outputs[k]].flags & NBL_VAL_OUTER) ||
                                      nbl_fuse_used_in_subgraphs(g, g->values[B->outputs[k]].name)))
      return NULL;
  if (nbl_fuse_read_by(env, order, n_order, v, pos[q], skip, 4) ||
      (res != NBL_NONE && nbl_fuse_written_at(env, order, n_order, res) >= pos[q]))
    return NULL;
  ba_fused *f = calloc(1, sizeof *f);
  int na = Q ? Q->n_attrs : 0;
  if (f) f->attrs = calloc((size_t)na + 3, sizeof(nbl_attr));
  if (!f || !f->attrs) {
    free(f);
    return NULL;
  }
  if (na) memcpy(f->attrs, Q->attrs, sizeof(nbl_attr) * (size_t)na);
  f->attrs[na] = (nbl_attr){.name = "nibble.bn_epsilon", .type = NBL_ATTR_FLOAT,
                            .f = nbl_attr_float(B, "epsilon", 1e-5f)};
  f->attrs[na + 1] = (nbl_attr){.name = "nibble.bn_momentum", .type = NBL_ATTR_FLOAT,
                                .f = nbl_attr_float(B, "momentum", 0.9f)};
  f->attrs[na + 2] = (nbl_attr){.name = "nibble.q4", .type = NBL_ATTR_INT, .i = Q != NULL};
  for (int k = 0; k < 5; k++) f->in[k] = B->inputs[k];
  f->in[5] = res;
  for (int k = 0; k < 3; k++) f->out[k] = Q && k < Q->n_outputs ? Q->outputs[k] : NBL_NONE;
  f->out[3] = v;
  for (int k = 1; k < 5; k++) f->out[3 + k] = k < B->n_outputs ? B->outputs[k] : NBL_NONE;
  f->out[8] = Q && Q->n_outputs > 3 ? Q->outputs[3] : NBL_NONE;
  f->node = g->nodes[*key];
  f->node.inputs = f->in;
  f->node.n_inputs = 6;
  f->node.outputs = f->out;
  f->node.n_outputs = 9;
  f->node.attrs = f->attrs;
  f->node.n_attrs = na + 3;
  snprintf(f->op, sizeof f->op, "BN+%sRelu%s", nodes[2] != NBL_NONE ? "Add+" : "", Q ? "+Q4" : "");
  f->node.op_type = f->op;
  return f;
}

/* Each Relu of a BatchNormInternal (through a residual Add when there) with
 * the QuantizeInt4 (scale_source max or mse) of its output when there is one,
 * unless an earlier fusion took one of them; the fused node takes the
 * QuantizeInt4's place (else the Relu's), the other nodes leave the order. */
nbl_status nbl_fuse_bn_act_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK;
  const nbl_graph *g = env->g;
  nbl_fuse_state *fu;
  unsigned char *drop;
  int *pos;
  nbl_status st = nbl_fuse_plan_begin(g, order, *n, 1, &fu, &drop, &pos);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s], nodes[4], key;
    if (drop[id] || env->taken(env, id)) continue;
    ba_fused *f = try_fuse(env, order, *n, pos, id, nodes, &key);
    if (!f) continue;
    int clash = 0;
    for (int k = 0; k < 4; k++) clash |= nodes[k] != NBL_NONE && (drop[nodes[k]] || fu->by_node[nodes[k]]);
    if (clash) {
      free(f->attrs);
      free(f);
      continue;
    }
    fu->by_node[key] = f;
    for (int k = 0; k < 4; k++)
      if (nodes[k] != NBL_NONE && nodes[k] != key) drop[nodes[k]] = 1;
    any = 1;
  }
  free(pos);
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel */

typedef struct ba_job {
  nbl_kctx *c;
  int64_t N, C, sp, blk;
  double eps, mom;
  const float *x, *scale, *bias, *mean_in, *var_in, *res;
  float *v; /* the Relu output */
  float *run_mean, *run_var, *saved_mean, *saved_inv;
  float *lo, *hi; /* per block of channels (nbl_bn_block): the minimum and maximum of its Relu outputs */
  unsigned char *bad; /* per block: 1 when one is NaN or Inf */
} ba_job;

static void ba_run(void *arg, int64_t b, int64_t e) {
  const ba_job *j = arg;
  int64_t N = j->N, C = j->C, sp = j->sp;
  for (int64_t it = b; it < e; it++) {
    const int64_t c0 = it * j->blk, c1 = c0 + j->blk < C ? c0 + j->blk : C;
    double mean[NBL_BN_BLOCK_MAX], var[NBL_BN_BLOCK_MAX], inv[NBL_BN_BLOCK_MAX];
    float fa[NBL_BN_BLOCK_MAX], fb[NBL_BN_BLOCK_MAX];
    nbl_bn_stats_f32_block(j->x, N, C, sp, c0, c1, mean, var);
    for (int64_t ch = c0; ch < c1; ch++)
      inv[ch - c0] = nbl_bn_affine_f32(mean[ch - c0], var[ch - c0], j->eps, j->scale[ch], j->bias[ch], &fa[ch - c0],
                                       &fb[ch - c0]);
    float rg[2] = {INFINITY, -INFINITY};
    int bad = nbl_bn_apply_relu_f32_block(j->v, j->x, j->res, N, C, sp, c0, c1, fa, fb, rg);
    j->lo[it] = rg[0];
    j->hi[it] = rg[1];
    j->bad[it] = (unsigned char)bad;
    for (int64_t ch = c0; ch < c1; ch++) { /* BatchNormInternal's other outputs, as its kernel writes them (float) */
      const double mu = mean[ch - c0], va = var[ch - c0];
      if (j->run_mean) j->run_mean[ch] = (float)(j->mean_in[ch] * j->mom + mu * (1 - j->mom));
      if (j->run_var) j->run_var[ch] = (float)(j->var_in[ch] * j->mom + va * (1 - j->mom));
      if (j->saved_mean) j->saved_mean[ch] = (float)mu;
      if (j->saved_inv) j->saved_inv[ch] = (float)inv[ch - c0];
    }
  }
}

static int same_dims(const nbl_rt_tensor *a, const nbl_rt_tensor *b) {
  if (a->rank != b->rank) return 0;
  for (int i = 0; i < a->rank; i++)
    if (a->dims[i] != b->dims[i]) return 0;
  return 1;
}

static nbl_status k_bn_act_fused(nbl_kctx *c) {
  static const char *const names[] = {"X", "scale", "B", "input_mean", "input_var", "the residual"};
  for (int k = 0; k < 6; k++) {
    const nbl_rt_tensor *t = c->in[k];
    if (k == 5 && !t) continue;
    if (!t) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "missing input %s", names[k]);
    if (t->dtype != NBL_DT_FLOAT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "input %s must be float32 (got %s)", names[k],
                      nbl_dtype_name(t->dtype));
  }
  const nbl_rt_tensor *X = c->in[0];
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X must have rank >= 2");
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0;
  for (int k = 1; k < 5; k++)
    if (c->in[k]->rank != 1 || c->in[k]->dims[0] != C)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[k], (long long)C);
  if (c->in[5] && !same_dims(c->in[5], X))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the residual must have the shape of X");
  nbl_q4_config cfg;
  int q4 = nbl_attr_int(c->node, "nibble.q4", 1) != 0;
  nbl_status st = q4 ? nbl_q4_attrs(c, &cfg) : NBL_OK;
  if (st) return st;
  ba_job j = {.c = c, .N = N, .C = C, .sp = sp, .eps = nbl_attr_float(c->node, "nibble.bn_epsilon", 1e-5f),
              .mom = nbl_attr_float(c->node, "nibble.bn_momentum", 0.9f), .x = X->data,
              .scale = c->in[1]->data, .bias = c->in[2]->data, .mean_in = c->in[3]->data,
              .var_in = c->in[4]->data, .res = c->in[5] ? c->in[5]->data : NULL};
  if ((st = nbl_kctx_alloc_out(c, 3, NBL_DT_FLOAT, X->rank, X->dims))) return st;
  j.v = nbl_kctx_out(c, 3)->data;
  float **side[4] = {&j.run_mean, &j.run_var, &j.saved_mean, &j.saved_inv};
  for (int k = 0; k < 4; k++)
    if (c->out[4 + k]) {
      if ((st = nbl_kctx_alloc_out(c, 4 + k, NBL_DT_FLOAT, 1, &C))) return st;
      *side[k] = nbl_kctx_out(c, 4 + k)->data;
    }
  j.blk = nbl_bn_block(C, sp, c->threads);
  const int64_t nblk = C > 0 ? (C + j.blk - 1) / j.blk : 0;
  size_t nc = (size_t)(nblk > 0 ? nblk : 1);
  j.lo = malloc(sizeof(float) * nc);
  j.hi = malloc(sizeof(float) * nc);
  j.bad = malloc(nc);
  if (!j.lo || !j.hi || !j.bad) {
    free(j.lo);
    free(j.hi);
    free(j.bad);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  nbl_parallel_for(c, nblk, 1, ba_run, &j);
  float range[2] = {INFINITY, -INFINITY};
  int bad = 0;
  for (int64_t ch = 0; ch < nblk; ch++) {
    bad |= j.bad[ch];
    range[0] = j.lo[ch] < range[0] ? j.lo[ch] : range[0];
    range[1] = j.hi[ch] > range[1] ? j.hi[ch] : range[1];
  }
  free(j.lo);
  free(j.hi);
  free(j.bad);
  /* no element: nbl_i4_params_from_range takes n = 0 as the range [0, 0] */
  return q4 ? nbl_q4_forward(c, &cfg, nbl_kctx_out(c, 3), bad ? NULL : range, 8) : NBL_OK;
}

const nbl_op_def nbl_fused_bn_act_def = NBL_OP_DEF("ai.nibble", "BNActChain", 1, 1, .ref = k_bn_act_fused,
                                                   .fast = k_bn_act_fused);
