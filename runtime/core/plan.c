/* plan.c - planning an engine's graphs: the topological schedule, kernels
 * resolved from the op table, plan-time fusions, liveness of every value
 * (when it can be freed) and the plans of subgraphs. See engine.h. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/engine.h"

static const char *dom_name(const char *d) { return d && *d ? d : ""; }

static int node_opset(const nbl_model *m, const nbl_node *n) {
  int64_t v = nbl_model_opset(m, n->domain);
  if (v == 0 && strcmp(dom_name(n->domain), "") == 0) v = nbl_model_opset(m, "ai.onnx");
  return (int)v;
}

void nbl_plan_free(nbl_gplan *p) {
  if (!p) return;
  for (int s = 0; p->caches && s < p->n_steps; s++)
    if (p->caches[s].free_fn) p->caches[s].free_fn(p->caches[s].data);
  free(p->caches);
  free(p->steps);
  free(p->last_use);
  free(p->free_start);
  free(p->free_list);
  free(p);
}

/* Collect names of outer-scope values used anywhere inside sub (recursively). */
static void collect_outer(const nbl_graph *sub, const nbl_graph *g, int s, int *last_use) {
  for (int v = 0; v < sub->n_values; v++) {
    const nbl_value *val = &sub->values[v];
    if (val->dead || !(val->flags & NBL_VAL_OUTER)) continue;
    nbl_id pv = nbl_graph_find(g, val->name);
    if (pv != NBL_NONE && last_use[pv] != INT_MAX && last_use[pv] < s) last_use[pv] = s;
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    if (n->dead) continue;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g)
        collect_outer(n->attrs[a].g, g, s, last_use);
      else if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < n->attrs[a].n; k++) collect_outer(n->attrs[a].graphs[k], g, s, last_use);
    }
  }
}

/* The fusion table walked on the main graph: fusion k plans with `taken`
 * telling it the nodes fusions 0..k-1 replaced. */
typedef struct fusion_walk {
  nbl_fusion_env env;
  const nbl_engine *e;
  size_t k;
} fusion_walk;

static int taken_before(const nbl_fusion_env *env, nbl_id node) {
  const fusion_walk *w = env->planner;
  for (size_t i = 0; i < w->k; i++)
    if (w->e->fusion_state[i] && nbl_fusions[i].node(w->e->fusion_state[i], node)) return 1;
  return 0;
}

/* 1 if the environment variable NBL_NO_FUSION lists fusion `name` (names
 * separated by commas) or says "all". */
static int fusion_disabled(const char *name) {
  const char *v = getenv("NBL_NO_FUSION");
  if (!v) return 0;
  size_t len = strlen(name);
  for (const char *p = v; *p;) {
    size_t k = strcspn(p, ",");
    if ((k == 3 && !strncmp(p, "all", 3)) || (k == len && !strncmp(p, name, len))) return 1;
    p += k;
    if (*p == ',') p++;
  }
  return 0;
}

static const nbl_node *fused_before(const nbl_fusion_env *env, nbl_id node) {
  const fusion_walk *w = env->planner;
  for (size_t i = 0; i < w->k; i++) {
    const nbl_node *f = w->e->fusion_state[i] ? nbl_fusions[i].node(w->e->fusion_state[i], node) : NULL;
    if (f) return f;
  }
  return NULL;
}

static nbl_status run_fusions(nbl_engine *e, nbl_id *order, int *n) {
  e->fusion_state = calloc(nbl_fusions_count + 1, sizeof(void *));
  if (!e->fusion_state) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  fusion_walk w = {.env = {.m = e->m, .g = e->g, .values_watched = e->on_value != NULL,
                           .taken = taken_before, .fused = fused_before},
                   .e = e};
  w.env.planner = &w;
  for (w.k = 0; w.k < nbl_fusions_count; w.k++) {
    if (fusion_disabled(nbl_fusions[w.k].name)) continue;
    nbl_status st = nbl_fusions[w.k].plan(&w.env, order, n, &e->fusion_state[w.k]);
    if (st != NBL_OK) return st;
  }
  return NBL_OK;
}

/* The synthetic node a fusion runs in place of node `node` of the main
 * graph and its kernel in *def; NULL when no fusion took the node. */
static const nbl_node *fused_node(const nbl_engine *e, nbl_id node, const nbl_op_def **def) {
  for (size_t k = 0; e->fusion_state && k < nbl_fusions_count; k++) {
    const nbl_node *fn = e->fusion_state[k] ? nbl_fusions[k].node(e->fusion_state[k], node) : NULL;
    if (fn) {
      *def = nbl_fusions[k].kernel;
      return fn;
    }
  }
  return NULL;
}

nbl_status nbl_plan_graph(nbl_engine *e, const nbl_graph *g) {
  nbl_gplan *p = calloc(1, sizeof *p);
  if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  nbl_gplan **np = realloc(e->plans, sizeof(nbl_gplan *) * (size_t)(e->n_plans + 1));
  if (!np) {
    free(p);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  e->plans = np;
  e->plans[e->n_plans++] = p;
  p->g = g;
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return NBL_ERR_INVALID_MODEL;
  /* the plan-time fusions of runtime/fusions/ (registry.c), in table order:
   * nodes become synthetic ones (steps below take them from fnode), the
   * nodes they absorb leave the order. Main graph, non-reference. */
  if (g == e->g && !e->reference) {
    nbl_status fst = run_fusions(e, order, &n);
    if (fst != NBL_OK) {
      free(order);
      return fst;
    }
  }
  p->n_steps = n;
  p->steps = calloc((size_t)(n ? n : 1), sizeof(nbl_step));
  p->caches = calloc((size_t)(n ? n : 1), sizeof(nbl_kcache));
  if (!p->caches) {
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  p->last_use = malloc(sizeof(int) * (size_t)(g->n_values ? g->n_values : 1));
  if (!p->steps || !p->last_use) {
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  for (int v = 0; v < g->n_values; v++) {
    const nbl_value *val = &g->values[v];
    p->last_use[v] = (val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->init
                         ? INT_MAX
                         : -1;
  }
  for (int i = 0; i < g->n_outputs; i++) p->last_use[g->outputs[i]] = INT_MAX;
  nbl_status st = NBL_OK;
  int slots = 0;
  for (int s = 0; s < n; s++) {
    const nbl_node *nd = &g->nodes[order[s]];
    nbl_step *sp = &p->steps[s];
    sp->node = order[s];
    sp->opset = node_opset(e->m, nd);
    const nbl_op_def *fdef = NULL;
    sp->fnode = g == e->g ? fused_node(e, order[s], &fdef) : NULL;
    if (sp->fnode) nd = sp->fnode;
    /* the arena slots of the node run (a fused node may have more outputs
     * than the node it replaces) */
    sp->out_base = slots;
    slots += nd->n_outputs;
    sp->def = sp->fnode && fdef ? fdef : nbl_op_lookup(nd->domain, nd->op_type, sp->opset);
    if (!sp->def && st == NBL_OK) {
      if (sp->opset == 0)
        st = nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "node '%s' (%s, domain '%s'): the model imports no opset for this domain",
                        nd->name ? nd->name : "", nd->op_type, dom_name(nd->domain));
      else
        st = nbl_errorf(NBL_ERR_UNSUPPORTED, "node '%s' (%s, domain '%s', opset %d): no kernel",
                        nd->name ? nd->name : "", nd->op_type, dom_name(nd->domain), sp->opset);
    }
    for (int k = 0; k < nd->n_inputs; k++) {
      nbl_id v = nd->inputs[k];
      if (v != NBL_NONE && p->last_use[v] != INT_MAX && p->last_use[v] < s) p->last_use[v] = s;
    }
    for (int k = 0; k < nd->n_outputs; k++) {
      nbl_id v = nd->outputs[k];
      if (v != NBL_NONE && p->last_use[v] != INT_MAX && p->last_use[v] < s) p->last_use[v] = s;
    }
    for (int a = 0; a < nd->n_attrs; a++) {
      const nbl_attr *at = &nd->attrs[a];
      int ng = at->type == NBL_ATTR_GRAPH ? (at->g ? 1 : 0) : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
      for (int k = 0; k < ng; k++) {
        const nbl_graph *sub = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[k];
        collect_outer(sub, g, s, p->last_use);
        if (st == NBL_OK) {
          st = nbl_plan_graph(e, sub);
          if (st != NBL_OK)
            nbl_error_prefix("node '%s' (%s): attribute '%s'", nd->name ? nd->name : "",
                             nd->op_type, at->name);
        }
      }
    }
  }
  p->n_slots = slots;
  free(order);
  /* free lists: values whose last use is step s */
  p->free_start = calloc((size_t)n + 2, sizeof(int));
  p->free_list = malloc(sizeof(nbl_id) * (size_t)(g->n_values ? g->n_values : 1));
  if (!p->free_start || !p->free_list)
    return st != NBL_OK ? st : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int v = 0; v < g->n_values; v++)
    if (p->last_use[v] >= 0 && p->last_use[v] < n) p->free_start[p->last_use[v] + 1]++;
  for (int s = 0; s < n; s++) p->free_start[s + 1] += p->free_start[s];
  int *fill = calloc((size_t)n + 1, sizeof(int));
  if (!fill) return st != NBL_OK ? st : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int v = 0; v < g->n_values; v++)
    if (p->last_use[v] >= 0 && p->last_use[v] < n)
      p->free_list[p->free_start[p->last_use[v]] + fill[p->last_use[v]]++] = v;
  free(fill);
  return st;
}

const nbl_gplan *nbl_plan_find(const nbl_engine *e, const nbl_graph *g) {
  for (int i = 0; i < e->n_plans; i++)
    if (e->plans[i]->g == g) return e->plans[i];
  return NULL;
}
