/* cleanup.c - dead code elimination and Identity elimination. */
#include <stdlib.h>
#include <string.h>

#include "pass.h"

/* Names a graph's subgraphs (recursively) capture from outside themselves. */
static void collect_captures(const nbl_graph *g, char ***names, int *n, int *cap) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *node = &g->nodes[i];
    if (node->dead) continue;
    for (int a = 0; a < node->n_attrs; a++) {
      const nbl_attr *at = &node->attrs[a];
      int ng = at->type == NBL_ATTR_GRAPH ? 1 : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
      for (int j = 0; j < ng; j++) {
        const nbl_graph *sub = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[j];
        if (!sub) continue;
        for (int v = 0; v < sub->n_values; v++)
          if ((sub->values[v].flags & NBL_VAL_OUTER) && !sub->values[v].dead) {
            if (*n == *cap) {
              int c = *cap ? 2 * *cap : 16;
              char **p = realloc(*names, sizeof(char *) * (size_t)c);
              if (!p) return;
              *names = p;
              *cap = c;
            }
            (*names)[(*n)++] = sub->values[v].name;
          }
        collect_captures(sub, names, n, cap);
      }
    }
  }
}

static void add_name(char ***names, int *n, int *cap, char *name) {
  if (*n == *cap) {
    int c = *cap ? 2 * *cap : 16;
    char **p = realloc(*names, sizeof(char *) * (size_t)c);
    if (!p) return;
    *names = p;
    *cap = c;
  }
  (*names)[(*n)++] = name;
}

/* Names of the main graph a training model's algorithm and initialization
 * graphs read (their outer values) or write back (binding keys): parameters,
 * optimizer state and BatchNorm statistics stay even when the inference graph
 * does not use them. */
static void collect_training_captures(const nbl_graph *g, char ***names, int *n, int *cap) {
  const nbl_model *m = g->model;
  if (!m || g != m->graph) return;
  for (int i = 0; i < m->n_training; i++) {
    const nbl_training_info *ti = &m->training[i];
    const nbl_graph *tg[2] = {ti->algorithm, ti->initialization};
    for (int k = 0; k < 2; k++) {
      if (!tg[k]) continue;
      for (int v = 0; v < tg[k]->n_values; v++)
        if ((tg[k]->values[v].flags & NBL_VAL_OUTER) && !tg[k]->values[v].dead)
          add_name(names, n, cap, tg[k]->values[v].name);
      collect_captures(tg[k], names, n, cap);
    }
    for (int k = 0; k < ti->n_update_binding; k++) add_name(names, n, cap, ti->update_binding[k].key);
    for (int k = 0; k < ti->n_init_binding; k++) add_name(names, n, cap, ti->init_binding[k].key);
  }
}

static int captured(char **names, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0) return 1;
  return 0;
}

static int value_needed(const nbl_graph *g, nbl_id v, char **caps, int ncaps) {
  const nbl_value *val = &g->values[v];
  return val->n_consumers > 0 || (val->flags & NBL_VAL_OUTPUT) ||
         captured(caps, ncaps, val->name);
}

int nbl_graph_dce(nbl_graph *g) {
  char **caps = NULL;
  int ncaps = 0, capc = 0, removed = 0;
  collect_captures(g, &caps, &ncaps, &capc);
  collect_training_captures(g, &caps, &ncaps, &capc);
  /* Walk nodes in reverse topological order so chains die in one sweep. */
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) {
    free(caps);
    return 0; /* a cyclic graph is the verifier's to report */
  }
  for (int k = n - 1; k >= 0; k--) {
    nbl_id id = order[k];
    nbl_node *node = &g->nodes[id];
    int used = 0;
    for (int o = 0; o < node->n_outputs && !used; o++)
      if (node->outputs[o] != NBL_NONE && value_needed(g, node->outputs[o], caps, ncaps)) used = 1;
    if (used) continue;
    for (int o = 0; o < node->n_outputs; o++)
      if (node->outputs[o] != NBL_NONE) g->values[node->outputs[o]].dead = true;
    nbl_node_kill(g, id);
    removed++;
  }
  free(order);
  /* Values nothing produces, uses or lists: unused initializers and orphans. */
  for (nbl_id v = 0; v < g->n_values; v++) {
    nbl_value *val = &g->values[v];
    if (val->dead || (val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT))) continue;
    if (val->producer != NBL_NONE || value_needed(g, v, caps, ncaps)) continue;
    val->dead = true;
  }
  free(caps);
  /* Recurse into the surviving subgraphs. */
  for (int i = 0; i < g->n_nodes; i++) {
    nbl_node *node = &g->nodes[i];
    if (node->dead) continue;
    for (int a = 0; a < node->n_attrs; a++) {
      nbl_attr *at = &node->attrs[a];
      if (at->type == NBL_ATTR_GRAPH && at->g) removed += nbl_graph_dce(at->g);
      if (at->type == NBL_ATTR_GRAPHS)
        for (int j = 0; j < at->n; j++) removed += nbl_graph_dce(at->graphs[j]);
    }
  }
  nbl_graph_compact(g);
  return removed;
}

static nbl_status dce_run(nbl_pass_ctx *ctx) {
  int before_init = ctx->model->graph->n_initializers;
  ctx->changed = nbl_graph_dce(ctx->model->graph);
  int dropped = before_init - ctx->model->graph->n_initializers;
  ctx->changed += dropped;
  if (ctx->changed)
    nbl_pass_logf(ctx, "removed %d node(s) and %d unused initializer(s)", ctx->changed - dropped,
                  dropped);
  return NBL_OK;
}

/* Identity x -> y: make every use of y use x. When y is a graph output, x
 * takes y's name instead (if x is an internal value of this graph). */
static int eliminate_identity_graph(nbl_pass_ctx *ctx, nbl_graph *g) {
  char **caps = NULL;
  int ncaps = 0, capc = 0, changed = 0;
  collect_captures(g, &caps, &ncaps, &capc);
  collect_training_captures(g, &caps, &ncaps, &capc);
  for (nbl_id id = 0; id < g->n_nodes; id++) {
    nbl_node *node = &g->nodes[id];
    if (node->dead || strcmp(node->op_type, "Identity") != 0 || node->domain[0]) continue;
    if (node->n_inputs != 1 || node->n_outputs != 1 || node->inputs[0] == NBL_NONE ||
        node->outputs[0] == NBL_NONE)
      continue;
    nbl_id x = node->inputs[0], y = node->outputs[0];
    if (captured(caps, ncaps, g->values[y].name)) {
      nbl_pass_logf(ctx, "kept '%s': its output '%s' is used by a subgraph", node->name,
                    g->values[y].name);
      continue;
    }
    if (g->values[y].flags & NBL_VAL_OUTPUT) {
      nbl_value *xv = &g->values[x];
      if (xv->producer == NBL_NONE || (xv->flags & (NBL_VAL_OUTPUT | NBL_VAL_INPUT)) ||
          xv->n_consumers != 1 || captured(caps, ncaps, xv->name) ||
          (xv->flags & NBL_VAL_OUTER)) {
        continue; /* the output name must survive and x cannot take it */
      }
      /* x takes y's place: the producer of x now writes y */
      nbl_id prod = xv->producer;
      nbl_node_kill(g, id);
      nbl_node *pn = &g->nodes[prod];
      for (int o = 0; o < pn->n_outputs; o++)
        if (pn->outputs[o] == x) pn->outputs[o] = y;
      g->values[y].producer = prod;
      if (!g->values[y].type.kind && g->values[x].type.kind)
        nbl_type_copy(g->model->arena, &g->values[y].type, &g->values[x].type);
      g->values[x].dead = true;
      g->values[x].producer = NBL_NONE;
      changed++;
      continue;
    }
    nbl_value_replace_uses(g, y, x);
    nbl_node_kill(g, id);
    g->values[y].dead = true;
    changed++;
  }
  free(caps);
  for (int i = 0; i < g->n_nodes; i++) {
    nbl_node *node = &g->nodes[i];
    if (node->dead) continue;
    for (int a = 0; a < node->n_attrs; a++) {
      nbl_attr *at = &node->attrs[a];
      if (at->type == NBL_ATTR_GRAPH && at->g) changed += eliminate_identity_graph(ctx, at->g);
      if (at->type == NBL_ATTR_GRAPHS)
        for (int j = 0; j < at->n; j++) changed += eliminate_identity_graph(ctx, at->graphs[j]);
    }
  }
  if (changed) nbl_graph_compact(g);
  return changed;
}

static nbl_status eliminate_identity_run(nbl_pass_ctx *ctx) {
  ctx->changed = eliminate_identity_graph(ctx, ctx->model->graph);
  if (ctx->changed) nbl_pass_logf(ctx, "removed %d Identity node(s)", ctx->changed);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_dce = {
    .name = "dce",
    .description = "remove nodes whose results are unused, and unused initializers",
    .run = dce_run,
};

const nbl_pass_def nbl_pass_eliminate_identity = {
    .name = "eliminate-identity",
    .description = "remove Identity nodes by forwarding their input to their users",
    .run = eliminate_identity_run,
};
