/*
 * split.c - cut a training model's algorithm graph into the gradient part and
 * the optimizer part, without knowing op names (train.h).
 *
 * The contract (README "Training"): gradients are the values named
 * `<param>_grad` for a main-graph initializer `<param>`. The gradient part is
 * every node needed for the loss (output 0), for every gradient and for the
 * update_binding values that do not depend on a gradient; the optimizer part
 * is every node needed for the update values that do, stopping at the
 * gradients. Nodes needed by both (a shared constant) are copied into both.
 * Between the two the session accumulates and clips the gradients. The checks
 * keep the cut honest: no gradient may feed the gradient part, and the
 * optimizer part may read only lr, step, parameters, state and gradients.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/train/train.h"

#define GRAD_SUFFIX "_grad"

typedef struct part_src {
  const nbl_model *work;
  const nbl_graph *mg;  /* main graph (parameters and state) */
  const nbl_graph *src; /* the graph being cut */
} part_src;

/* Value ids of src that node n reads: its inputs and the names its subgraphs
 * capture that resolve in src. Calls fn(u, v) for each; returns how many
 * captured names did not resolve in src (they come from the main graph). */
typedef void (*val_fn)(void *u, nbl_id v);

static void captures(const nbl_graph *sub, const nbl_graph *src, val_fn fn, void *u) {
  for (int v = 0; v < sub->n_values; v++) {
    const nbl_value *val = &sub->values[v];
    if (val->dead || !(val->flags & NBL_VAL_OUTER)) continue;
    nbl_id sv = nbl_graph_find(src, val->name);
    if (sv != NBL_NONE) fn(u, sv);
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    for (int a = 0; !n->dead && a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g) captures(n->attrs[a].g, src, fn, u);
      if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < n->attrs[a].n; k++) captures(n->attrs[a].graphs[k], src, fn, u);
    }
  }
}

static void node_reads(const nbl_graph *src, const nbl_node *n, val_fn fn, void *u) {
  for (int k = 0; k < n->n_inputs; k++)
    if (n->inputs[k] != NBL_NONE) fn(u, n->inputs[k]);
  for (int a = 0; a < n->n_attrs; a++) {
    if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g) captures(n->attrs[a].g, src, fn, u);
    if (n->attrs[a].type == NBL_ATTR_GRAPHS)
      for (int k = 0; k < n->attrs[a].n; k++) captures(n->attrs[a].graphs[k], src, fn, u);
  }
}

/* ------------------------------------------------------------------ closure */

typedef struct walk {
  const nbl_graph *src;
  unsigned char *need;       /* per node */
  const unsigned char *stop; /* per value: do not look past it (may be NULL) */
  nbl_id *stack;
  int sp;
} walk;

static void walk_push(void *u, nbl_id v) {
  walk *w = u;
  if (w->stop && w->stop[v]) return;
  nbl_id p = w->src->values[v].producer;
  if (p == NBL_NONE || w->need[p]) return;
  w->need[p] = 1;
  w->stack[w->sp++] = p; /* each node pushed once: the stack holds at most n_nodes */
}

/* Mark in need[] every node needed to compute the values `vals`. */
static nbl_status closure(const nbl_graph *src, const nbl_id *vals, int n, const unsigned char *stop,
                          unsigned char *need) {
  walk w = {src, need, stop, malloc(sizeof(nbl_id) * (size_t)(src->n_nodes + 1)), 0};
  if (!w.stack) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int i = 0; i < n; i++) walk_push(&w, vals[i]);
  while (w.sp) node_reads(src, &src->nodes[w.stack[--w.sp]], walk_push, &w);
  free(w.stack);
  return NBL_OK;
}

/* ------------------------------------------------------------------ dependence on gradients */

typedef struct dep_ctx {
  const unsigned char *dep;
  int any;
  nbl_id first;
} dep_ctx;

static void dep_any(void *u, nbl_id v) {
  dep_ctx *d = u;
  if (d->dep[v] && !d->any) {
    d->any = 1;
    d->first = v;
  }
}

/* ------------------------------------------------------------------ building a part */

static nbl_status copy_attrs(nbl_graph *g, nbl_id nid, const nbl_node *sn) {
  for (int a = 0; a < sn->n_attrs; a++) {
    const nbl_attr *s = &sn->attrs[a];
    nbl_attr *d = nbl_node_add_attr(g, nid, s->name, s->type);
    if (!d) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    *d = *s; /* strings, arrays and subgraphs stay in the source model, which outlives the copy */
    if (d->type == NBL_ATTR_TENSOR && d->t) nbl_buffer_ref(d->t->buf);
    if (d->type == NBL_ATTR_TENSORS)
      for (int k = 0; k < d->n; k++)
        if (d->tensors[k]) nbl_buffer_ref(d->tensors[k]->buf);
  }
  return NBL_OK;
}

/* The type a leaf takes in the part: its own, else the main-graph value's or
 * initializer's (parameters and state), else that of `alt` (a gradient takes
 * its parameter's). */
static void leaf_type(const part_src *ps, nbl_graph *g, nbl_id nv, const nbl_value *sv,
                      const char *alt) {
  nbl_arena *a = g->model->arena;
  if (sv && sv->type.kind == NBL_TYPE_TENSOR) {
    nbl_type_copy(a, &g->values[nv].type, &sv->type);
    return;
  }
  const char *names[2] = {sv ? sv->name : g->values[nv].name, alt};
  for (int i = 0; i < 2; i++) {
    if (!names[i]) continue;
    nbl_id mv = nbl_graph_find(ps->mg, names[i]);
    if (mv == NBL_NONE) continue;
    const nbl_value *m = &ps->mg->values[mv];
    if (m->init) {
      nbl_type_set_tensor(a, &g->values[nv].type, m->init->dtype, m->init->rank, m->init->dims);
      return;
    }
    if (m->type.kind == NBL_TYPE_TENSOR) {
      nbl_type_copy(a, &g->values[nv].type, &m->type);
      return;
    }
  }
}

typedef struct build {
  const part_src *ps;
  nbl_graph *g;
  nbl_id *map; /* src value -> part value */
  nbl_status st;
} build;

static nbl_id map_val(build *b, nbl_id v) {
  if (b->map[v] != NBL_NONE || b->st) return b->map[v];
  nbl_id nv = nbl_graph_add_value(b->g, b->ps->src->values[v].name);
  if (nv == NBL_NONE) {
    b->st = NBL_ERR_INVALID_MODEL;
    return NBL_NONE;
  }
  b->map[v] = nv;
  return nv;
}

static void map_read(void *u, nbl_id v) { map_val(u, v); }

/* Names captured by subgraphs that do not resolve in src (main-graph values):
 * they become inputs of the part. */
static nbl_status capture_main(build *b, const nbl_graph *sub) {
  for (int v = 0; v < sub->n_values; v++) {
    const nbl_value *val = &sub->values[v];
    if (val->dead || !(val->flags & NBL_VAL_OUTER)) continue;
    if (nbl_graph_find(b->ps->src, val->name) != NBL_NONE) continue;
    if (nbl_graph_find(b->g, val->name) != NBL_NONE) continue;
    if (nbl_graph_find(b->ps->mg, val->name) == NBL_NONE) continue; /* an inner scope's own */
    nbl_id nv = nbl_graph_add_value(b->g, val->name);
    if (nv == NBL_NONE) return NBL_ERR_INVALID_MODEL;
    leaf_type(b->ps, b->g, nv, NULL, NULL);
    nbl_graph_add_input(b->g, nv);
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    for (int a = 0; !n->dead && a < n->n_attrs; a++) {
      nbl_status st = NBL_OK;
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g) st = capture_main(b, n->attrs[a].g);
      for (int k = 0; !st && n->attrs[a].type == NBL_ATTR_GRAPHS && k < n->attrs[a].n; k++)
        st = capture_main(b, n->attrs[a].graphs[k]);
      if (st) return st;
    }
  }
  return NBL_OK;
}

/* A new top-level graph `name` in cm with copies of the needed nodes of
 * ps->src (in src's topological order) and outputs `outs`. Every value the
 * nodes read that no copied node computes is an input (a src local
 * initializer stays an initializer). `grad_of` (may be NULL) gives, per src
 * value, the parameter a gradient leaf belongs to (for its type). */
static nbl_status build_part(const part_src *ps, nbl_model *cm, const char *name,
                             const unsigned char *need, const nbl_id *outs, int n_outs,
                             char *const *grad_of, nbl_graph **out) {
  const nbl_graph *src = ps->src;
  nbl_graph *g = nbl_graph_new(cm, NULL, name);
  nbl_id *order = NULL;
  build b = {ps, g, malloc(sizeof(nbl_id) * (size_t)(src->n_values + 1)), NBL_OK};
  if (!g || !b.map) {
    free(b.map);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int v = 0; v < src->n_values; v++) b.map[v] = NBL_NONE;
  int n = nbl_graph_topo_order(src, &order);
  if (n < 0) {
    free(b.map);
    return NBL_ERR_INVALID_MODEL;
  }
  unsigned char *made = calloc((size_t)src->n_values + 1, 1); /* computed by a copied node */
  nbl_status st = made ? NBL_OK : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  /* values first (leaves must be inputs in a stable order: src value order) */
  for (int i = 0; st == NBL_OK && i < n; i++) {
    const nbl_node *sn = &src->nodes[order[i]];
    if (!need[order[i]]) continue;
    node_reads(src, sn, map_read, &b);
    for (int k = 0; k < sn->n_outputs; k++)
      if (sn->outputs[k] != NBL_NONE) {
        map_val(&b, sn->outputs[k]);
        made[sn->outputs[k]] = 1;
      }
  }
  for (int i = 0; i < n_outs; i++) map_val(&b, outs[i]);
  if (st == NBL_OK && b.st) st = b.st;
  for (int v = 0; st == NBL_OK && v < src->n_values; v++) {
    nbl_id nv = b.map[v];
    const nbl_value *sv = &src->values[v];
    if (nv == NBL_NONE) continue;
    if (made[v]) {
      if (sv->type.kind != NBL_TYPE_NONE) nbl_type_copy(cm->arena, &g->values[nv].type, &sv->type);
      continue;
    }
    if (sv->init && !(sv->flags & NBL_VAL_INPUT)) { /* a local constant of src */
      const nbl_tensor *t = sv->init;
      nbl_tensor *c = nbl_arena_memdup(cm->arena, t, sizeof *t);
      if (!c) {
        st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
        break;
      }
      nbl_buffer_ref(c->buf);
      nbl_graph_set_initializer(g, nv, c);
      if (sv->type.kind != NBL_TYPE_NONE) nbl_type_copy(cm->arena, &g->values[nv].type, &sv->type);
      continue;
    }
    leaf_type(ps, g, nv, sv, grad_of ? grad_of[v] : NULL);
    nbl_graph_add_input(g, nv);
  }
  for (int i = 0; st == NBL_OK && i < n; i++) {
    const nbl_node *sn = &src->nodes[order[i]];
    if (!need[order[i]]) continue;
    nbl_id in[sn->n_inputs + 1], ou[sn->n_outputs + 1];
    for (int k = 0; k < sn->n_inputs; k++)
      in[k] = sn->inputs[k] == NBL_NONE ? NBL_NONE : b.map[sn->inputs[k]];
    for (int k = 0; k < sn->n_outputs; k++)
      ou[k] = sn->outputs[k] == NBL_NONE ? NBL_NONE : b.map[sn->outputs[k]];
    nbl_id nid = nbl_graph_add_node(g, sn->op_type, sn->domain, sn->name, sn->n_inputs, in,
                                    sn->n_outputs, ou);
    if (nid == NBL_NONE) {
      st = NBL_ERR_INVALID_MODEL;
      break;
    }
    st = copy_attrs(g, nid, sn);
    for (int a = 0; st == NBL_OK && a < sn->n_attrs; a++) {
      if (sn->attrs[a].type == NBL_ATTR_GRAPH && sn->attrs[a].g) st = capture_main(&b, sn->attrs[a].g);
      for (int k = 0; !st && sn->attrs[a].type == NBL_ATTR_GRAPHS && k < sn->attrs[a].n; k++)
        st = capture_main(&b, sn->attrs[a].graphs[k]);
    }
  }
  for (int i = 0; st == NBL_OK && i < n_outs; i++) {
    nbl_id nv = b.map[outs[i]];
    int dup = 0;
    for (int k = 0; k < g->n_outputs; k++) dup |= g->outputs[k] == nv;
    if (!dup) nbl_graph_add_output(g, nv);
  }
  free(made);
  free(order);
  free(b.map);
  if (st == NBL_OK) *out = g;
  return st;
}

/* ------------------------------------------------------------------ the cut */

void nbl_train_cut_free(nbl_train_cut *c) {
  if (!c) return;
  nbl_model_free(c->m);
  free(c->grad_param);
  free(c);
}

static int is_feed_name(const char *n) { return !strcmp(n, "lr") || !strcmp(n, "step"); }

nbl_status nbl_train_cut_build(const nbl_model *work, nbl_train_cut **out) {
  *out = NULL;
  const char *label = nbl_model_label(work);
  if (work->n_training < 1 || !work->training[0].algorithm)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: not a training model (no training_info with an algorithm graph)", label);
  const nbl_training_info *ti = &work->training[0];
  const nbl_graph *src = ti->algorithm, *mg = work->graph;
  if (src->n_outputs < 1)
    return nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: the algorithm graph has no outputs (the loss must be output 0)", label);
  part_src ps = {work, mg, src};
  size_t nv = (size_t)src->n_values + 1, nn = (size_t)src->n_nodes + 1;
  nbl_train_cut *c = calloc(1, sizeof *c);
  unsigned char *is_grad = calloc(nv, 1), *dep = calloc(nv, 1);
  unsigned char *need1 = calloc(nn, 1), *need2 = calloc(nn, 1);
  char **grad_of = calloc(nv, sizeof(char *));
  nbl_id *t1 = malloc(sizeof(nbl_id) * (nv + (size_t)ti->n_update_binding));
  nbl_id *t2 = malloc(sizeof(nbl_id) * (nv + (size_t)ti->n_update_binding));
  nbl_id *order = NULL;
  nbl_status st = NBL_OK;
  if (!c || !is_grad || !dep || !need1 || !need2 || !grad_of || !t1 || !t2) {
    st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  c->m = nbl_model_new();
  if (!c->m) {
    st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  c->m->path = nbl_arena_strdup(c->m->arena, work->path);
  for (int i = 0; i < work->n_opsets; i++)
    nbl_model_set_opset(c->m, work->opsets[i].domain, work->opsets[i].version);
  /* gradients: `<param>_grad` computed by a node, <param> a main-graph initializer */
  int n1 = 0, n2 = 0;
  nbl_id loss = src->outputs[0];
  t1[n1++] = loss;
  for (int v = 0; v < src->n_values; v++) {
    const nbl_value *val = &src->values[v];
    size_t len = strlen(val->name), sl = strlen(GRAD_SUFFIX);
    if (val->dead || val->producer == NBL_NONE || len <= sl ||
        strcmp(val->name + len - sl, GRAD_SUFFIX) != 0)
      continue;
    char *param = nbl_arena_strndup(c->m->arena, val->name, len - sl);
    nbl_id mv = param ? nbl_graph_find(mg, param) : NBL_NONE;
    if (mv == NBL_NONE || !mg->values[mv].init) continue;
    is_grad[v] = 1;
    grad_of[v] = param;
    t1[n1++] = v;
  }
  c->n_grads = n1 - 1;
  c->grad_param = calloc((size_t)c->n_grads + 1, sizeof(char *));
  if (!c->grad_param) {
    st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < c->n_grads; i++) c->grad_param[i] = grad_of[t1[1 + i]];
  /* which values depend on a gradient */
  int n = nbl_graph_topo_order(src, &order);
  if (n < 0) {
    st = NBL_ERR_INVALID_MODEL;
    goto done;
  }
  for (int v = 0; v < src->n_values; v++) dep[v] = is_grad[v];
  for (int i = 0; i < n; i++) {
    const nbl_node *nd = &src->nodes[order[i]];
    dep_ctx d = {dep, 0, NBL_NONE};
    node_reads(src, nd, dep_any, &d);
    for (int k = 0; d.any && k < nd->n_outputs; k++)
      if (nd->outputs[k] != NBL_NONE) dep[nd->outputs[k]] = 1;
  }
  if (dep[loss]) {
    st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: the loss '%s' depends on a gradient", label,
                    src->values[loss].name);
    goto done;
  }
  for (int k = 0; k < ti->n_update_binding; k++) {
    nbl_id v = nbl_graph_find(src, ti->update_binding[k].value ? ti->update_binding[k].value : "");
    if (v == NBL_NONE) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: update_binding value '%s' is not a value of the algorithm graph", label,
                      ti->update_binding[k].value ? ti->update_binding[k].value : "");
      goto done;
    }
    if (dep[v]) t2[n2++] = v;
    else t1[n1++] = v;
  }
  /* the gradient part: nothing in it may read a gradient */
  if ((st = closure(src, t1, n1, NULL, need1))) goto done;
  for (int i = 0; i < n; i++) {
    if (!need1[order[i]]) continue;
    const nbl_node *nd = &src->nodes[order[i]];
    dep_ctx d = {is_grad, 0, NBL_NONE};
    node_reads(src, nd, dep_any, &d);
    if (d.any) {
      st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: node '%s' (%s) reads the gradient '%s' but the loss, a gradient or a "
                      "running statistic needs it; only the optimizer part may read gradients",
                      label, nd->name ? nd->name : "", nd->op_type, src->values[d.first].name);
      goto done;
    }
  }
  /* the optimizer part: reads only lr, step, parameters, state and gradients */
  if ((st = closure(src, t2, n2, is_grad, need2))) goto done;
  for (int i = 0; i < n; i++) {
    if (!need2[order[i]]) continue;
    const nbl_node *nd = &src->nodes[order[i]];
    for (int k = 0; k < nd->n_inputs; k++) {
      nbl_id v = nd->inputs[k];
      if (v == NBL_NONE || !(src->values[v].flags & NBL_VAL_INPUT) || is_feed_name(src->values[v].name))
        continue;
      st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                      "%s: optimizer node '%s' (%s) reads the data input '%s'; the optimizer part "
                      "may read only lr, step, parameters, state and gradients",
                      label, nd->name ? nd->name : "", nd->op_type, src->values[v].name);
      goto done;
    }
  }
  if ((st = build_part(&ps, c->m, "gradient", need1, t1, n1, NULL, &c->grad))) goto done;
  if (n2 && (st = build_part(&ps, c->m, "optimizer", need2, t2, n2, grad_of, &c->opt))) goto done;
  if (ti->initialization) {
    part_src pi = {work, mg, ti->initialization};
    const nbl_graph *ig = ti->initialization;
    unsigned char *all = calloc((size_t)ig->n_nodes + 1, 1);
    if (!all) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      goto done;
    }
    st = closure(ig, ig->outputs, ig->n_outputs, NULL, all);
    if (!st) st = build_part(&pi, c->m, "initialization", all, ig->outputs, ig->n_outputs, NULL, &c->init);
    free(all);
    if (st) goto done;
  }
done:
  if (st && !strstr(nbl_last_error(), label)) nbl_error_prefix("%s", label);
  free(order);
  free(is_grad);
  free(dep);
  free(need1);
  free(need2);
  free(grad_of);
  free(t1);
  free(t2);
  if (st) nbl_train_cut_free(c);
  else *out = c;
  return st;
}
