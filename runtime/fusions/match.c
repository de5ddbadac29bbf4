/* match.c - matching helpers shared by the plan-time fusions; see fuse.h. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"

static const char *dom(const char *d) { return d && strcmp(d, "ai.onnx") ? d : ""; }

int nbl_fuse_is_op(const nbl_node *n, const char *domain, const char *op) {
  return n && !n->dead && !strcmp(dom(n->domain), domain) && !strcmp(n->op_type, op);
}

nbl_fuse_state *nbl_fuse_state_new(int n_nodes, int owns_attrs) {
  nbl_fuse_state *s = calloc(1, sizeof *s);
  if (!s) return NULL;
  s->by_node = calloc((size_t)(n_nodes > 0 ? n_nodes : 1), sizeof(void *));
  if (!s->by_node) {
    free(s);
    return NULL;
  }
  s->n_nodes = n_nodes;
  s->owns_attrs = owns_attrs;
  return s;
}

void nbl_fuse_state_free(void *state) {
  nbl_fuse_state *s = state;
  if (!s) return;
  for (int i = 0; i < s->n_nodes; i++)
    if (s->by_node[i]) {
      if (s->owns_attrs) free(((nbl_node *)s->by_node[i])->attrs);
      free(s->by_node[i]);
    }
  free(s->by_node);
  free(s);
}

const nbl_node *nbl_fuse_state_node(const void *state, nbl_id node) {
  const nbl_fuse_state *s = state;
  if (!s || node < 0 || node >= s->n_nodes || !s->by_node[node]) return NULL;
  return (const nbl_node *)s->by_node[node];
}

int nbl_fuse_plan_skip(const nbl_fusion_env *env, void **state) {
  *state = NULL;
  return !env->m || !env->g || env->g->n_nodes == 0 || env->values_watched;
}

nbl_status nbl_fuse_plan_begin(const nbl_graph *g, const nbl_id *order, int n, int owns_attrs,
                               nbl_fuse_state **fu, unsigned char **drop, int **pos) {
  *fu = nbl_fuse_state_new(g->n_nodes, owns_attrs);
  *drop = calloc((size_t)g->n_nodes, 1);
  if (pos) *pos = malloc(sizeof(int) * (size_t)g->n_nodes);
  if (!*fu || !*drop || (pos && !*pos)) {
    free(*drop);
    if (pos) free(*pos);
    nbl_fuse_state_free(*fu);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  if (pos) {
    for (int i = 0; i < g->n_nodes; i++) (*pos)[i] = -1;
    for (int s = 0; s < n; s++) (*pos)[order[s]] = s;
  }
  return NBL_OK;
}

void nbl_fuse_plan_finish(nbl_id *order, int *n, unsigned char *drop, int any, void *fu,
                          void (*free_state)(void *), void **state) {
  if (any) {
    int w = 0;
    for (int s = 0; s < *n; s++)
      if (!drop[order[s]]) order[w++] = order[s];
    *n = w;
    *state = fu;
  } else {
    free_state(fu);
    *state = NULL;
  }
  free(drop);
}

static int graph_uses(const nbl_graph *sub, const char *name) {
  for (int v = 0; v < sub->n_values; v++)
    if (!sub->values[v].dead && (sub->values[v].flags & NBL_VAL_OUTER) &&
        !strcmp(sub->values[v].name, name))
      return 1;
  return nbl_fuse_used_in_subgraphs(sub, name);
}

int nbl_fuse_used_in_subgraphs(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *nd = &g->nodes[i];
    if (nd->dead) continue;
    for (int a = 0; a < nd->n_attrs; a++) {
      if (nd->attrs[a].type == NBL_ATTR_GRAPH && nd->attrs[a].g && graph_uses(nd->attrs[a].g, name))
        return 1;
      if (nd->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < nd->attrs[a].n; k++)
          if (graph_uses(nd->attrs[a].graphs[k], name)) return 1;
    }
  }
  return 0;
}

/* The tensor of value v when it is a constant: an initializer (not
 * overridable by a graph input) or the `value` of a Constant node; NULL
 * otherwise. With value_float, *f is set and NULL returned. */
static const nbl_tensor *const_tensor(const nbl_graph *g, nbl_id v, float *f, int *is_float) {
  *is_float = 0;
  if (v == NBL_NONE || (g->values[v].flags & NBL_VAL_INPUT)) return NULL;
  const nbl_tensor *t = g->values[v].init;
  if (!t && g->values[v].producer != NBL_NONE) {
    const nbl_node *c = &g->nodes[g->values[v].producer];
    if (!nbl_fuse_is_op(c, "", "Constant") || c->n_attrs != 1) return NULL;
    if (c->attrs[0].type == NBL_ATTR_FLOAT && !strcmp(c->attrs[0].name, "value_float")) {
      *f = c->attrs[0].f;
      *is_float = 1;
      return NULL;
    }
    if (c->attrs[0].type != NBL_ATTR_TENSOR || strcmp(c->attrs[0].name, "value")) return NULL;
    t = c->attrs[0].t;
  }
  return t;
}

/* The value of a float32 scalar that is an initializer (not overridable by a
 * graph input) or the output of a Constant node; 0 if v is neither. */
static int const_scalar(const nbl_graph *g, nbl_id v, float *out) {
  int is_float;
  const nbl_tensor *t = const_tensor(g, v, out, &is_float);
  if (is_float) return 1;
  if (!t) return 0;
  nbl_rt_tensor r;
  if (t->dtype != NBL_DT_FLOAT || nbl_shape_numel(t->rank, t->dims) != 1 ||
      nbl_rt_from_ir(t, &r) != NBL_OK || !r.data)
    return 0;
  *out = ((const float *)r.data)[0];
  return 1;
}

int nbl_fuse_const_f32(const nbl_graph *g, nbl_id v, float *out, int *rank) {
  int is_float;
  const nbl_tensor *t = const_tensor(g, v, out, &is_float);
  if (is_float) {
    *rank = 0;
    return 1;
  }
  if (!t || !const_scalar(g, v, out)) return 0;
  *rank = t->rank;
  return 1;
}

/* The values of a constant int64 vector of at most max elements (as
 * const_scalar finds constants) into out; their count, or -1. */
static int const_ints(const nbl_graph *g, nbl_id v, int64_t *out, int max) {
  float f;
  int is_float;
  const nbl_tensor *t = const_tensor(g, v, &f, &is_float);
  nbl_rt_tensor r;
  if (!t || t->dtype != NBL_DT_INT64 || t->rank != 1 || t->dims[0] > max ||
      nbl_rt_from_ir(t, &r) != NBL_OK || (t->dims[0] && !r.data))
    return -1;
  if (t->dims[0]) memcpy(out, r.data, sizeof(int64_t) * (size_t)t->dims[0]);
  return (int)t->dims[0];
}

int nbl_fuse_find_pad(const nbl_model *m, const nbl_graph *g, nbl_id x, nbl_id by, nbl_id *pad,
                      int *ns, int64_t *pads) {
  const nbl_node *P = nbl_fuse_producer(g, x);
  if (!P || !nbl_fuse_is_op(P, "", "Pad") || P->n_outputs != 1 || P->outputs[0] != x ||
      P->n_inputs < 1 || P->inputs[0] == NBL_NONE || !nbl_fuse_only_feeds(g, x, by, 0))
    return 0;
  const char *mode = nbl_attr_string(P, "mode", "constant");
  if (strcmp(mode, "constant")) return 0;
  int64_t opset = nbl_model_opset(m, "");
  if (opset == 0) opset = nbl_model_opset(m, "ai.onnx");
  int64_t all[2 * NBL_MAX_RANK];
  int cnt;
  if (opset < 11) {
    const int64_t *a = nbl_attr_ints(P, opset < 2 ? "paddings" : "pads", &cnt);
    if (!a || cnt > 2 * NBL_MAX_RANK || P->n_inputs != 1 || nbl_attr_float(P, "value", 0.0f) != 0.0f)
      return 0;
    memcpy(all, a, sizeof(int64_t) * (size_t)cnt);
  } else {
    /* pads a constant; constant_value absent or a constant 0; no axes */
    if (P->n_inputs < 2 || P->n_inputs > 3) return 0;
    cnt = const_ints(g, P->inputs[1], all, 2 * NBL_MAX_RANK);
    float v = 0.0f;
    if (cnt < 0 || (P->n_inputs > 2 && P->inputs[2] != NBL_NONE && !const_scalar(g, P->inputs[2], &v)) ||
        v != 0.0f)
      return 0;
  }
  int rank = cnt / 2;
  if (cnt % 2 || rank < 3 || all[0] || all[1] || all[rank] || all[rank + 1]) return 0;
  for (int i = 0; i < rank - 2; i++) {
    pads[i] = all[2 + i];
    pads[rank - 2 + i] = all[rank + 2 + i];
    if (pads[i] < 0 || pads[rank - 2 + i] < 0) return 0;
  }
  *pad = g->values[x].producer;
  *ns = rank - 2;
  return 1;
}

int nbl_fuse_find_activation(const nbl_model *m, const nbl_graph *g, const nbl_node *n,
                             nbl_id *act, float *lo, float *hi) {
  if (n->n_outputs != 1 || n->outputs[0] == NBL_NONE) return 0;
  nbl_id y = n->outputs[0];
  const nbl_value *yv = &g->values[y];
  if ((yv->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || yv->n_consumers != 1) return 0;
  nbl_id an = yv->consumers[0];
  const nbl_node *a = &g->nodes[an];
  if (a->n_inputs < 1 || a->inputs[0] != y || a->n_outputs != 1 || a->outputs[0] == NBL_NONE)
    return 0;
  for (int k = 1; k < a->n_inputs; k++)
    if (a->inputs[k] == y) return 0;
  int64_t opset = nbl_model_opset(m, "");
  if (opset == 0) opset = nbl_model_opset(m, "ai.onnx");
  float l = -INFINITY, h = INFINITY;
  if (nbl_fuse_is_op(a, "", "Relu")) {
    if (a->n_inputs != 1) return 0;
    l = 0.0f;
  } else if (nbl_fuse_is_op(a, "", "Clip")) {
    if (opset < 11) {
      l = nbl_attr_float(a, "min", -INFINITY);
      h = nbl_attr_float(a, "max", INFINITY);
    } else {
      if (a->n_inputs > 1 && a->inputs[1] != NBL_NONE && !const_scalar(g, a->inputs[1], &l))
        return 0;
      if (a->n_inputs > 2 && a->inputs[2] != NBL_NONE && !const_scalar(g, a->inputs[2], &h))
        return 0;
      if (a->n_inputs > 3) return 0;
    }
  } else {
    return 0;
  }
  if (nbl_fuse_used_in_subgraphs(g, yv->name)) return 0;
  *act = an;
  *lo = l;
  *hi = h;
  return 1;
}

const nbl_node *nbl_fuse_producer(const nbl_graph *g, nbl_id v) {
  if (v == NBL_NONE || g->values[v].producer == NBL_NONE) return NULL;
  return &g->nodes[g->values[v].producer];
}

nbl_id nbl_fuse_find_residual(const nbl_graph *g, nbl_id conv, nbl_id v, const int *pos, nbl_id *r) {
  if (v == NBL_NONE) return NBL_NONE;
  const nbl_value *val = &g->values[v];
  if ((val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->n_consumers != 1 ||
      nbl_fuse_used_in_subgraphs(g, val->name))
    return NBL_NONE;
  nbl_id an = val->consumers[0];
  const nbl_node *a = &g->nodes[an];
  if (!nbl_fuse_is_op(a, "", "Add") || a->n_inputs != 2 || a->n_outputs != 1 ||
      a->outputs[0] == NBL_NONE || a->inputs[0] == a->inputs[1])
    return NBL_NONE;
  nbl_id other = a->inputs[0] == v ? a->inputs[1] : a->inputs[0];
  if (other == NBL_NONE) return NBL_NONE;
  nbl_id rp = g->values[other].producer;
  if (pos && rp != NBL_NONE && (pos[rp] < 0 || pos[rp] >= pos[conv])) return NBL_NONE;
  *r = other;
  return an;
}

int nbl_fuse_absorbed(const nbl_graph *g, nbl_id q,
                      int (*operands)(const void *state, nbl_id node, nbl_fuse_operands *o),
                      const void *state) {
  const nbl_node *n = &g->nodes[q];
  for (int k = 0; k < n->n_outputs; k++) {
    nbl_id v = n->outputs[k];
    if (v == NBL_NONE) continue;
    const nbl_value *val = &g->values[v];
    if (val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) return 0;
    for (int i = 0; i < val->n_consumers; i++) {
      nbl_fuse_operands f;
      if (!operands(state, val->consumers[i], &f) || k != 0 || (f.qx != q && f.wnode != q)) return 0;
      for (int a = 0; a < f.orig->n_inputs; a++) /* only as the fused X or W operand */
        if (f.orig->inputs[a] == v && !(a == 0 && f.qx == q) && !(a == 1 && f.wnode == q))
          return 0;
    }
  }
  return 1;
}

int nbl_fuse_maybe_f32(const nbl_graph *g, nbl_id v) {
  const nbl_type *t = &g->values[v].type;
  return t->kind == NBL_TYPE_NONE ||
         (t->kind == NBL_TYPE_TENSOR && (t->elem == NBL_DT_UNDEFINED || t->elem == NBL_DT_FLOAT));
}

int nbl_fuse_only_feeds(const nbl_graph *g, nbl_id v, nbl_id by, int slot) {
  if (v == NBL_NONE) return 0;
  const nbl_value *val = &g->values[v];
  if ((val->flags & (NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->n_consumers != 1 || val->consumers[0] != by)
    return 0;
  const nbl_node *n = &g->nodes[by];
  for (int k = 0; k < n->n_inputs; k++)
    if (n->inputs[k] == v && k != slot) return 0;
  return !nbl_fuse_used_in_subgraphs(g, val->name);
}

/* The node step `id` runs: an earlier fusion's, or the graph's. */
static const nbl_node *run_node(const nbl_fusion_env *env, nbl_id id) {
  const nbl_node *f = env->fused ? env->fused(env, id) : NULL;
  return f ? f : &env->g->nodes[id];
}

int nbl_fuse_written_at(const nbl_fusion_env *env, const nbl_id *order, int n, nbl_id v) {
  if (v == NBL_NONE || env->g->values[v].producer == NBL_NONE) return -1;
  for (int s = 0; s < n; s++) {
    const nbl_node *nd = run_node(env, order[s]);
    for (int k = 0; k < nd->n_outputs; k++)
      if (nd->outputs[k] == v) return s;
  }
  return INT_MAX;
}

int nbl_fuse_read_by(const nbl_fusion_env *env, const nbl_id *order, int n, nbl_id v, int at,
                     const nbl_id *skip, int ns) {
  for (int s = 0; s < n && s <= at; s++) {
    int skipped = 0;
    for (int k = 0; k < ns; k++) skipped |= skip[k] == order[s];
    if (skipped) continue;
    const nbl_node *nd = run_node(env, order[s]);
    for (int k = 0; k < nd->n_inputs; k++)
      if (nd->inputs[k] == v) return 1;
  }
  return 0;
}

nbl_kernel_fn nbl_fuse_op_kernel(const nbl_kctx *c, const char *op) {
  const nbl_op_def *d = nbl_op_lookup("", op, c->opset);
  if (!d) return NULL;
  return !c->reference && d->fast ? d->fast : d->ref;
}

nbl_status nbl_fuse_run_private(const nbl_kctx *c, nbl_kernel_fn kf, const nbl_node *node,
                                const nbl_rt_tensor *const *in, int n_in, nbl_rt_tensor *out) {
  nbl_rt_tensor *so[1] = {out};
  nbl_kctx ck = *c; /* no executor: out is no output slot of this step */
  ck.node = node;
  ck.n_in = n_in;
  ck.in = in;
  ck.n_out = 1;
  ck.out = so;
  ck.exec = NULL;
  ck.threads = 1;
  return kf(&ck);
}

typedef struct map_job {
  nbl_fuse_map_fn fn;
  const void *arg;
  const float *x;
  float *y;
} map_job;

static void map_chunk(void *arg, int64_t b, int64_t e) {
  const map_job *j = arg;
  j->fn(j->arg, j->x + b, j->y + b, e - b);
}

nbl_status nbl_fuse_map_f32(nbl_kctx *c, const nbl_rt_tensor *X, nbl_fuse_map_fn fn, const void *arg) {
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims);
  if (st != NBL_OK || X->numel == 0) return st;
  map_job j = {.fn = fn, .arg = arg, .x = X->data, .y = nbl_kctx_out(c, 0)->data};
  nbl_parallel_for(c, X->numel, 4096, map_chunk, &j);
  return NBL_OK;
}
