/* convert_opset.c - convert-opset{target=N}: nibble's version converter for
 * the default (ai.onnx) domain, a thin driver over the op table.
 *
 * How to read the table. What the converter knows of an op is on the op's
 * newest table line in its family file (runtime/ops/<family>.c):
 *   .stable_since = S   from opset S to NBL_OPSET_MAX the op's signature and
 *                       meaning did not change (later versions only added
 *                       element types, or attributes and optional inputs whose
 *                       defaults keep the old meaning): a node of opset >= S is
 *                       kept as it is, only the model's import moves;
 *   .adapters = {...}   the op's history before S, oldest first: a step
 *                       {from, to, up, down} says the op has one form on the
 *                       opsets [from, to) and another from `to` on; up rewrites
 *                       a node from the old form to the new one, down back
 *                       (only where that is exact). The steps join up: each
 *                       `to` is the next `from`, the last `to` is S, or 0 on
 *                       an op that ends there (Upsample becomes Resize,
 *                       Scatter ScatterElements: the last up renames it and the
 *                       node continues with the new op's history).
 * So `.stable_since = 13, .adapters = squeeze_steps` with the one step
 * {1, 13, axes attribute <-> input} reads: Squeeze of opsets 1..12 takes its
 * axes as an attribute, from 13 on as input 1; nothing changed after 13.
 * For each version bump of an op between opsets 7 and 21 the table says one
 * of: (a) types only, or a new attribute / optional input with a neutral
 * default: inside a form's range (no step); (b) a step with an adapter;
 * (c) not convertible: a step without up, or no step (the node is refused).
 * The shared adapters (an attribute becomes an input, legacy attributes
 * dropped, the pre-opset-7 broadcast) are in runtime/core/adapt.c; op-specific
 * ones are next to the op's table line.
 *
 * The driver, for every node of the default domain in every graph (If/Loop/
 * Scan bodies at any depth, training graphs): going up, applies the up
 * function of each step between the model's opset and the target in order;
 * going down, the down functions of the steps crossed, newest first. Nodes an
 * adapter inserts are converted from the opset they were made for. Anything
 * the table does not cover is an error naming the node and op ("node 'x' (Foo,
 * opset 9): no adapter to opset 21"); every node is checked before the first
 * one is changed, and an adapter checks its own preconditions (constant
 * inputs, known types) before it rewrites. When some node is rewritten, the
 * shape rules run first (as infer-shapes) so adapters see element types and
 * ranks; the value_info entries this adds are dropped again. At the end the
 * model imports the target opset and at least the IR version that opset
 * needs. Downgrades check the forms the steps describe; element types or
 * attribute values added inside one form's range (bfloat16 in opset 13, say)
 * are not checked. Other domains (ai.onnx.ml, ai.nibble, ...) are untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pass.h"
#include "runtime/core/adapt.h"

#define MAX_OPS_LOGGED 16

typedef struct conv {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  int from, target;
  int dry;       /* 1: only check that every node can be converted */
  int rewrites;  /* steps applied (dry: steps that would be) */
  int n_ops;
  const char *ops[MAX_OPS_LOGGED];
} conv;

/* Per-graph list of node opsets, growing as adapters add nodes. */
typedef struct vers {
  int *v;
  int n, cap;
} vers;

static int is_default(const char *domain) { return !domain[0] || !strcmp(domain, "ai.onnx"); }

/* The table entry holding the op's history: the one reaching NBL_OPSET_MAX,
 * else the newest. NULL for an op the table does not know. */
static const nbl_op_def *history(const char *op) {
  const nbl_op_def *best = nbl_op_lookup("", op, NBL_OPSET_MAX);
  if (best) return best;
  for (size_t i = 0; i < nbl_op_count(); i++) {
    const nbl_op_def *d = nbl_op_at(i);
    if (!strcmp(d->name, op) && is_default(d->domain) &&
        (!best || d->since_version > best->since_version))
      best = d;
  }
  return best;
}

/* The step whose old form covers opset v, or NULL. */
static const nbl_op_adapter *step_at(const nbl_op_def *d, int v) {
  for (const nbl_op_adapter *a = d->adapters; a && a->to; a++)
    if (a->from <= v && v < a->to) return a;
  return NULL;
}

/* The step whose new form starts at opset v, or NULL. */
static const nbl_op_adapter *step_to(const nbl_op_def *d, int v) {
  for (const nbl_op_adapter *a = d->adapters; a && a->to; a++)
    if (a->to == v) return a;
  return NULL;
}

static nbl_status node_error(conv *cv, const nbl_node *n, int ver, const char *fmt, int arg) {
  char what[256];
  snprintf(what, sizeof what, fmt, arg);
  return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: node '%s' (%s, opset %d): %s",
                    nbl_model_label(cv->m), n->name, n->op_type, ver, what);
}

static void note_op(conv *cv, const char *op) {
  for (int i = 0; i < cv->n_ops; i++)
    if (!strcmp(cv->ops[i], op)) return;
  if (cv->n_ops < MAX_OPS_LOGGED) cv->ops[cv->n_ops++] = op;
}

static nbl_status grow(vers *vs, int n, int ver) {
  if (n > vs->cap) {
    int cap = n + 16;
    int *p = realloc(vs->v, sizeof(int) * (size_t)cap);
    if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    vs->v = p;
    vs->cap = cap;
  }
  while (vs->n < n) vs->v[vs->n++] = ver;
  return NBL_OK;
}

/* Apply one step's function to node id (dry: only count it). */
static nbl_status apply(conv *cv, nbl_graph *g, nbl_id id, vers *vs, const nbl_op_adapter *a,
                        nbl_adapt_fn fn, int ver, int to) {
  cv->rewrites++;
  if (cv->dry) return NBL_OK;
  nbl_adapt_ctx c = {.model = cv->m, .graph = g, .node = id, .step = a, .from = ver, .to = to,
                     .target = cv->target};
  note_op(cv, nbl_arena_strdup(cv->m->arena, g->nodes[id].op_type));
  char name[256], op[128];
  snprintf(name, sizeof name, "%s", g->nodes[id].name);
  snprintf(op, sizeof op, "%s", g->nodes[id].op_type);
  nbl_status st = fn(&c);
  if (st) {
    nbl_error_prefix("%s: node '%s' (%s, opset %d -> %d)", nbl_model_label(cv->m), name, op, ver,
                     to);
    return st;
  }
  return grow(vs, g->n_nodes, to);
}

/* Convert node id of g from opset ver to the target. */
static nbl_status convert_node(conv *cv, nbl_graph *g, nbl_id id, vers *vs, int ver) {
  for (;;) {
    const nbl_node *n = &g->nodes[id];
    if (ver == cv->target) return NBL_OK;
    const nbl_op_def *d = history(n->op_type);
    if (!d) return node_error(cv, n, ver, "not in nibble's op table: no adapter to opset %d",
                              cv->target);
    int S = d->stable_since;
    if (ver < cv->target) { /* up */
      if (S && ver >= S) return NBL_OK;
      const nbl_op_adapter *a = step_at(d, ver);
      if (!a || !a->up) return node_error(cv, n, ver, "no adapter to opset %d", cv->target);
      if (a->to > cv->target) return NBL_OK; /* the node's form lasts until a->to - 1 */
      nbl_status st = apply(cv, g, id, vs, a, a->up, ver, a->to);
      if (st) return st;
      ver = a->to;
      if (!S && !step_at(d, ver)) {
        /* the op ends here: up renamed the node (Upsample -> Resize), which
         * goes on with its new op's history; the dry run cannot follow */
        if (cv->dry) return NBL_OK;
        if (!strcmp(g->nodes[id].op_type, d->name))
          return node_error(cv, &g->nodes[id], ver, "no adapter to opset %d", cv->target);
      }
    } else { /* down */
      int start;
      const nbl_op_adapter *a = NULL;
      if (S && ver >= S) start = S;
      else if ((a = step_at(d, ver))) start = a->from;
      else return node_error(cv, n, ver, "no exact downgrade to opset %d", cv->target);
      if (cv->target >= start) return NBL_OK;
      const nbl_op_adapter *b = step_to(d, start);
      if (!b || !b->down)
        return node_error(cv, n, ver, "no exact downgrade to opset %d", cv->target);
      nbl_status st = apply(cv, g, id, vs, b, b->down, ver, start - 1);
      if (st) return st;
      ver = start - 1;
    }
  }
}

static nbl_status convert_graph(conv *cv, nbl_graph *g) {
  vers vs = {0};
  nbl_status st = grow(&vs, g->n_nodes, cv->from);
  for (nbl_id i = 0; !st && i < g->n_nodes; i++) {
    if (g->nodes[i].dead || !is_default(g->nodes[i].domain)) continue;
    st = convert_node(cv, g, i, &vs, vs.v[i]);
  }
  free(vs.v);
  for (nbl_id i = 0; !st && i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    for (int a = 0; !st && a < n->n_attrs; a++) {
      const nbl_attr *at = &g->nodes[i].attrs[a];
      if (at->type == NBL_ATTR_GRAPH && at->g) st = convert_graph(cv, at->g);
      for (int j = 0; !st && at->type == NBL_ATTR_GRAPHS && j < at->n; j++)
        st = convert_graph(cv, at->graphs[j]);
    }
  }
  return st;
}

static nbl_status convert_model(conv *cv) {
  nbl_status st = convert_graph(cv, cv->m->graph);
  for (int t = 0; !st && t < cv->m->n_training; t++) {
    nbl_training_info *ti = &cv->m->training[t];
    if (ti->initialization) st = convert_graph(cv, ti->initialization);
    if (!st && ti->algorithm) st = convert_graph(cv, ti->algorithm);
  }
  return st;
}

/* The lowest IR version a model importing default-domain opset `op` needs. */
static int64_t ir_for_opset(int op) {
  static const int ir[] = {3, 3, 3, 3, 3, 3, 3, 3, 3, 4, 5, 6, 7, 7, 7, 8, 8, 8, 8, 9, 9, 10};
  return op < (int)(sizeof ir / sizeof ir[0]) ? ir[op] : 10;
}

/* What the driver notes of each graph before rewriting: its value_info count
 * (the shape rules' additions are dropped again) and its unused
 * initializers (those stay; initializers the conversion left unused go). */
typedef struct gmark {
  nbl_graph *g;
  int n_value_infos, n_values;
  unsigned char *unused;
} gmark;

typedef struct marks {
  gmark *g;
  int n;
  char **outer; /* names captured by some subgraph, sorted */
  int n_outer;
} marks;

static int cmp_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void collect_outer(nbl_model *m, marks *mk) {
  int cap = 0;
  mk->n_outer = 0;
  free(mk->outer);
  mk->outer = NULL;
  for (nbl_graph *g = m->owned_graphs; g; g = g->next_owned)
    for (int v = 0; v < g->n_values; v++)
      if ((g->values[v].flags & NBL_VAL_OUTER) && !g->values[v].dead) {
        if (mk->n_outer == cap) {
          cap = cap ? 2 * cap : 64;
          char **p = realloc(mk->outer, sizeof(char *) * (size_t)cap);
          if (!p) return;
          mk->outer = p;
        }
        mk->outer[mk->n_outer++] = g->values[v].name;
      }
  if (mk->n_outer) qsort(mk->outer, (size_t)mk->n_outer, sizeof(char *), cmp_name);
}

static bool unused_init(const marks *mk, const nbl_graph *g, nbl_id v) {
  const nbl_value *val = &g->values[v];
  if (!val->init || val->dead || val->n_consumers || (val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT)))
    return false;
  return !mk->n_outer || !bsearch(&val->name, mk->outer, (size_t)mk->n_outer, sizeof(char *), cmp_name);
}

static void take_marks(nbl_model *m, marks *mk) {
  int cnt = 0;
  for (nbl_graph *g = m->owned_graphs; g; g = g->next_owned) cnt++;
  mk->g = calloc((size_t)(cnt ? cnt : 1), sizeof(gmark));
  mk->n = 0;
  collect_outer(m, mk);
  for (nbl_graph *g = m->owned_graphs; g && mk->g; g = g->next_owned) {
    gmark *k = &mk->g[mk->n++];
    *k = (gmark){g, g->n_value_infos, g->n_values, calloc((size_t)(g->n_values + 1), 1)};
    for (nbl_id v = 0; k->unused && v < g->n_values; v++) k->unused[v] = unused_init(mk, g, v);
  }
}

static void apply_marks(nbl_model *m, marks *mk) {
  collect_outer(m, mk);
  for (int i = 0; i < mk->n; i++) {
    gmark *k = &mk->g[i];
    nbl_graph *g = k->g;
    for (int j = k->n_value_infos; j < g->n_value_infos; j++)
      g->values[g->value_infos[j]].flags &= ~(unsigned)NBL_VAL_VALUE_INFO;
    if (g->n_value_infos > k->n_value_infos) g->n_value_infos = k->n_value_infos;
    for (nbl_id v = 0; k->unused && v < g->n_values; v++)
      if ((v >= k->n_values || !k->unused[v]) && unused_init(mk, g, v)) g->values[v].dead = true;
    nbl_graph_compact(g);
  }
}

static void free_marks(marks *mk) {
  for (int i = 0; i < mk->n; i++) free(mk->g[i].unused);
  free(mk->g);
  free(mk->outer);
}

/* Element types and ranks for the adapters: the shape rules (infer-shapes)
 * over the whole model. A model the rules reject is converted with the types
 * it declares. */
static void infer_types(nbl_pass_ctx *ctx) {
  const nbl_pass_def *inf = nbl_pass_find("infer-shapes");
  if (!inf) return;
  nbl_pass_ctx sub = {.model = ctx->model, .pass = inf};
  for (int i = 0; i < NBL_PASS_MAX_OPTIONS && inf->options[i].name; i++)
    sub.values[i] = inf->options[i].dflt;
  inf->run(&sub);
}

nbl_status nbl_convert_opset(nbl_pass_ctx *ctx, int target) {
  nbl_model *m = ctx->model;
  if (target < 1 || target > NBL_OPSET_MAX)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "convert-opset: target %d is outside the opsets nibble knows (1..%d)", target,
                      NBL_OPSET_MAX);
  int from = (int)nbl_model_opset(m, "");
  if (from > NBL_OPSET_MAX)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: default-domain opset %d is newer than nibble's op table (%d); cannot "
                      "convert to opset %d", nbl_model_label(m), from, NBL_OPSET_MAX, target);
  conv cv = {.ctx = ctx, .m = m, .from = from ? from : target, .target = target, .dry = 1};
  nbl_status st = convert_model(&cv); /* every node first, before anything changes */
  if (st) return st;
  int planned = cv.rewrites;
  if (planned) {
    marks mk = {0};
    take_marks(m, &mk);
    infer_types(ctx);
    nbl_errorf(NBL_OK, "%s", ""); /* a model the shape rules reject still converts */
    cv.dry = 0;
    cv.rewrites = 0;
    st = convert_model(&cv);
    if (!st) apply_marks(m, &mk);
    free_marks(&mk);
    if (st) return st;
  }
  if (m->ir_version < ir_for_opset(target)) m->ir_version = ir_for_opset(target);
  for (int i = 0; i < m->n_opsets; i++)
    if (!strcmp(m->opsets[i].domain, "ai.onnx")) m->opsets[i].version = target;
  st = nbl_model_set_opset(m, "", target);
  if (st) return st;
  ctx->changed += cv.rewrites + (from != target);
  char ops[400];
  size_t k = 0;
  ops[0] = 0;
  for (int i = 0; i < cv.n_ops && k < sizeof ops; i++)
    k += (size_t)snprintf(ops + k, sizeof ops - k, "%s%s", i ? ", " : "", cv.ops[i]);
  if (from != target)
    nbl_pass_logf(ctx, "default-domain opset %d -> %d: %d adapter step(s)%s%s%s", from, target,
                  cv.rewrites, cv.rewrites ? " (" : "", ops, cv.rewrites ? ")" : "");
  return NBL_OK;
}

static nbl_status convert_run(nbl_pass_ctx *ctx) {
  return nbl_convert_opset(ctx, (int)nbl_pass_opt_int(ctx, "target"));
}

#define STR_(x) #x
#define STR(x) STR_(x)

const nbl_pass_def nbl_pass_convert_opset = {
    .name = "convert-opset",
    .description = "convert the default-domain (ai.onnx) opset to `target`: each op's adapters "
                   "from the op table (attributes to inputs, Upsample to Resize, ...); refuses "
                   "what no adapter covers",
    .run = convert_run,
    .options = {{"target", NBL_OPT_INT, STR(NBL_OPSET_MAX), "opset to convert to"}},
};
