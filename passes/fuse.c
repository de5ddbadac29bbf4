/* fuse.c - fold-batchnorm (BatchNormalization into a preceding Conv/Gemm) and
 * fuse-bias (MatMul + Add -> Gemm). Both are guard-then-act rewrites on
 * initializer-fed float32 layers of inference graphs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"

/* The float32 initializer feeding node input idx, or NULL. */
static const nbl_tensor *init_input(const nbl_graph *g, const nbl_node *n, int idx) {
  if (idx >= n->n_inputs || n->inputs[idx] == NBL_NONE) return NULL;
  const nbl_value *v = &g->values[n->inputs[idx]];
  if (!v->init || v->init->dtype != NBL_DT_FLOAT || (v->flags & NBL_VAL_INPUT)) return NULL;
  return v->init;
}

static float fget(const nbl_tensor *t, int64_t i) {
  float f;
  memcpy(&f, (const char *)t->data + 4 * i, 4);
  return f;
}

/* A new float32 initializer value in g named after hint, holding data. */
static nbl_id add_init(nbl_graph *g, const char *hint, int rank, const int64_t *dims,
                       const float *data) {
  char *name = nbl_graph_unique_name(g, hint);
  nbl_tensor *t = nbl_tensor_new(g->model->arena, name, NBL_DT_FLOAT, rank, dims, data);
  if (!t) return NBL_NONE;
  nbl_id v = nbl_graph_add_value(g, name);
  if (v == NBL_NONE) {
    nbl_buffer_unref(t->buf);
    return NBL_NONE;
  }
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, NBL_DT_FLOAT, rank, dims);
  nbl_graph_set_initializer(g, v, t);
  return v;
}

/* The only consumer of v when v has exactly one use and is not a graph output. */
static nbl_id sole_consumer(const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (val->n_consumers != 1 || (val->flags & NBL_VAL_OUTPUT)) return NBL_NONE;
  return val->consumers[0];
}

/* Make node `keep` produce the value `dst` (the output of node `gone`, which dies). */
static void take_over_output(nbl_graph *g, nbl_id keep, nbl_id gone, nbl_id dst) {
  nbl_id old = g->nodes[keep].outputs[0];
  nbl_node_kill(g, gone);
  g->nodes[keep].outputs[0] = dst;
  g->values[dst].producer = keep;
  g->values[old].dead = true;
  g->values[old].producer = NBL_NONE;
}

static nbl_status fold_bn_run(nbl_pass_ctx *ctx) {
  nbl_graph *g = ctx->model->graph;
  int skipped = 0;
  for (nbl_id bn = 0; bn < g->n_nodes; bn++) {
    nbl_node *b = &g->nodes[bn];
    if (b->dead || strcmp(b->op_type, "BatchNormalization") || b->domain[0]) continue;
    if (nbl_attr_int(b, "training_mode", 0) != 0) continue;
    int extra_outputs = 0;
    for (int o = 1; o < b->n_outputs; o++) extra_outputs |= b->outputs[o] != NBL_NONE;
    if (extra_outputs || b->n_inputs != 5 || b->inputs[0] == NBL_NONE) continue;
    nbl_id x = b->inputs[0];
    nbl_id pid = g->values[x].producer;
    if (pid == NBL_NONE || sole_consumer(g, x) != bn) continue;
    nbl_node *p = &g->nodes[pid];
    int is_conv = !strcmp(p->op_type, "Conv") && !p->domain[0];
    int is_gemm = !strcmp(p->op_type, "Gemm") && !p->domain[0];
    if (!is_conv && !is_gemm) continue;
    const nbl_tensor *sc = init_input(g, b, 1), *bb = init_input(g, b, 2),
                     *mean = init_input(g, b, 3), *var = init_input(g, b, 4);
    const nbl_tensor *w = init_input(g, p, 1);
    const nbl_tensor *pb = p->n_inputs > 2 && p->inputs[2] != NBL_NONE ? init_input(g, p, 2) : NULL;
    int has_bias = p->n_inputs > 2 && p->inputs[2] != NBL_NONE;
    if (!sc || !bb || !mean || !var || !w || (has_bias && !pb)) {
      skipped++;
      nbl_pass_logf(ctx, "skipped '%s': parameters are not float32 initializers", b->name);
      continue;
    }
    int64_t C = nbl_tensor_numel(sc);
    if (nbl_tensor_numel(bb) != C || nbl_tensor_numel(mean) != C || nbl_tensor_numel(var) != C)
      continue;
    int transB = is_gemm ? (int)nbl_attr_int(p, "transB", 0) : 0;
    if (is_gemm && (w->rank != 2 || nbl_attr_float(p, "alpha", 1.0f) != 1.0f ||
                    nbl_attr_float(p, "beta", 1.0f) != 1.0f))
      continue;
    int64_t wC = is_conv ? (w->rank > 0 ? w->dims[0] : -1) : (transB ? w->dims[0] : w->dims[1]);
    if (wC != C || (pb && nbl_tensor_numel(pb) != C)) continue;
    float eps = nbl_attr_float(b, "epsilon", 1e-5f);
    int64_t nw = nbl_tensor_numel(w), per = nw / C;
    float *nwd = malloc(sizeof(float) * (size_t)(nw ? nw : 1));
    float *nbd = malloc(sizeof(float) * (size_t)C);
    if (!nwd || !nbd) {
      free(nwd);
      free(nbd);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (int64_t c = 0; c < C; c++) {
      double f = fget(sc, c) / sqrt((double)fget(var, c) + eps);
      double bias0 = pb ? fget(pb, c) : 0.0;
      nbd[c] = (float)((bias0 - fget(mean, c)) * f + fget(bb, c));
      if (is_conv || transB) {
        for (int64_t k = 0; k < per; k++) nwd[c * per + k] = (float)(fget(w, c * per + k) * f);
      } else { /* Gemm W[K,C]: column c */
        for (int64_t k = 0; k < per; k++) nwd[k * C + c] = (float)(fget(w, k * C + c) * f);
      }
    }
    char hint[512];
    snprintf(hint, sizeof hint, "%s_bnfolded", g->values[p->inputs[1]].name);
    nbl_id wv = add_init(g, hint, w->rank, w->dims, nwd);
    snprintf(hint, sizeof hint, "%s_bias_bnfolded", p->name[0] ? p->name : "conv");
    int64_t cdim[1] = {C};
    nbl_id bv = add_init(g, hint, 1, cdim, nbd);
    free(nwd);
    free(nbd);
    if (wv == NBL_NONE || bv == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    nbl_node_set_input(g, pid, 1, wv);
    nbl_node_set_input(g, pid, 2, bv);
    take_over_output(g, pid, bn, g->nodes[bn].outputs[0]);
    ctx->changed++;
  }
  if (ctx->changed || skipped) {
    nbl_graph_dce(g); /* drop the old weights and BN parameters */
    nbl_pass_logf(ctx, "folded %d BatchNormalization node(s), skipped %d", ctx->changed, skipped);
  }
  return NBL_OK;
}

static nbl_status fuse_bias_run(nbl_pass_ctx *ctx) {
  nbl_graph *g = ctx->model->graph;
  for (nbl_id mm = 0; mm < g->n_nodes; mm++) {
    nbl_node *m = &g->nodes[mm];
    if (m->dead || strcmp(m->op_type, "MatMul") || m->domain[0] || m->n_inputs != 2) continue;
    nbl_id a = m->inputs[0], y = m->outputs[0];
    const nbl_tensor *w = init_input(g, m, 1);
    if (!w || w->rank != 2) continue;
    /* Gemm needs a rank-2 A: known only from the value's type. */
    const nbl_type *at = &g->values[a].type;
    if (at->kind != NBL_TYPE_TENSOR || at->rank != 2 || at->elem != NBL_DT_FLOAT) {
      nbl_pass_logf(ctx, "skipped '%s': input '%s' is not known to be a rank-2 float tensor",
                    m->name, g->values[a].name);
      continue;
    }
    nbl_id add = sole_consumer(g, y);
    if (add == NBL_NONE) continue;
    nbl_node *ad = &g->nodes[add];
    if (strcmp(ad->op_type, "Add") || ad->domain[0] || ad->n_inputs != 2) continue;
    int bi = ad->inputs[0] == y ? 1 : 0;
    if (ad->inputs[1 - bi] != y) continue;
    const nbl_tensor *bias = init_input(g, ad, bi);
    int64_t N = w->dims[1];
    if (!bias || nbl_tensor_numel(bias) != N || bias->rank > 2 ||
        (bias->rank == 2 && bias->dims[0] != 1))
      continue;
    if (nbl_model_opset(ctx->model, "") < 7) continue; /* unidirectional C broadcast */
    nbl_id ins[3] = {a, m->inputs[1], ad->inputs[bi]};
    nbl_id out = ad->outputs[0];
    const char *name = m->name;
    nbl_node_kill(g, add);
    nbl_node_kill(g, mm);
    g->values[y].dead = true;
    nbl_id gid = nbl_graph_add_node(g, "Gemm", "", name, 3, ins, 1, &out);
    if (gid == NBL_NONE) return NBL_ERR_INTERNAL;
    ctx->changed++;
  }
  if (ctx->changed) {
    nbl_graph_compact(g);
    nbl_pass_logf(ctx, "fused %d MatMul+Add pair(s) into Gemm", ctx->changed);
  }
  return NBL_OK;
}

const nbl_pass_def nbl_pass_fold_batchnorm = {
    .name = "fold-batchnorm",
    .description = "fold inference BatchNormalization into the preceding Conv or Gemm weights",
    .run = fold_bn_run,
};

const nbl_pass_def nbl_pass_fuse_bias = {
    .name = "fuse-bias",
    .description = "rewrite MatMul (rank-2, constant weight) + Add (constant bias) into Gemm",
    .run = fuse_bias_run,
};
