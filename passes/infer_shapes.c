/* infer_shapes.c - the infer-shapes pass: element types and shapes for every
 * value a node produces.
 *
 * A driver over the op table: nodes are visited in topological order, each
 * node's table entry is looked up (the nearest entry when the model imports
 * an opset outside the table's range) and its shape rule, which lives with
 * the op in its family file, reads the inputs' types and sets the outputs'
 * (runtime/core/shape.h says what a rule sees). Symbolic dims ("N") pass
 * through unchanged; a dim computed from a symbolic one becomes unknown.
 * Small integer tensors whose elements are known (initializers, Constant
 * nodes, and what Shape/Gather/Slice/Concat/... compute from them) are kept in
 * a per-value side table, so the usual exported Shape -> Gather -> Concat ->
 * Reshape chains resolve. Declared types are kept when more specific; a
 * contradiction between a declared and an inferred type is an error.
 * Subgraphs (If branches, Loop and Scan bodies) are inferred when their op's
 * rule asks (nbl_shp_subgraphs), otherwise after the node. Ops without a table
 * entry leave their outputs unknown; the log names them. */
#include <stdlib.h>
#include <string.h>

#include "pass.h"
#include "runtime/core/shape.h"

#define MAX_UNK_OPS 24

typedef struct pctx {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  int typed, unknown, changed;
  int n_ops;
  const char *ops[MAX_UNK_OPS];
  int more_ops;
} pctx;

static nbl_status infer_graph(pctx *p, nbl_graph *g);

static void note_unknown_op(pctx *p, const char *op) {
  for (int i = 0; i < p->n_ops; i++)
    if (strcmp(p->ops[i], op) == 0) return;
  if (p->n_ops < MAX_UNK_OPS)
    p->ops[p->n_ops++] = op;
  else
    p->more_ops = 1;
}

static nbl_status infer_graph_cb(void *driver, nbl_graph *g) { return infer_graph(driver, g); }

static nbl_status infer_graph(pctx *p, nbl_graph *g) {
  nbl_shape_ctx c = {.model = p->m, .graph = g, .changed = &p->changed,
                     .infer_graph = infer_graph_cb, .driver = p};
  c.kd = calloc((size_t)(g->n_values ? g->n_values : 1), sizeof(nbl_kdata *));
  if (!c.kd) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_id *order = NULL;
  int cnt = nbl_graph_topo_order(g, &order);
  nbl_status st = NBL_OK;
  if (cnt < 0) st = NBL_ERR_INVALID_MODEL;
  for (int i = 0; i < cnt && !st; i++) {
    const nbl_node *n = &g->nodes[order[i]];
    c.node = n;
    c.subgraphs_done = false;
    c.opset = (int)nbl_model_opset(p->m, n->domain);
    const nbl_op_def *def = nbl_op_lookup_nearest(n->domain, n->op_type, c.opset);
    if (def && def->shape) st = def->shape(&c);
    if (!st && !c.subgraphs_done) st = nbl_shp_subgraphs(&c);
    if (st) {
      if (!strstr(nbl_last_error(), "node '"))
        nbl_error_prefix("node '%s' (%s)", n->name ? n->name : "", n->op_type);
      break;
    }
    bool unk = false;
    for (int k = 0; k < n->n_outputs; k++) {
      if (n->outputs[k] == NBL_NONE) continue;
      const nbl_type *t = &g->values[n->outputs[k]].type;
      if (t->kind == NBL_TYPE_NONE || (t->kind == NBL_TYPE_TENSOR && !t->elem)) {
        p->unknown++;
        unk = true;
      } else
        p->typed++;
    }
    if (unk) note_unknown_op(p, n->op_type);
  }
  free(order);
  for (int v = 0; v < g->n_values; v++) free(c.kd[v]);
  free(c.kd);
  return st;
}

static nbl_status infer_shapes_run(nbl_pass_ctx *ctx) {
  pctx p = {.ctx = ctx, .m = ctx->model};
  nbl_status st = infer_graph(&p, ctx->model->graph);
  for (int t = 0; !st && t < ctx->model->n_training; t++) {
    nbl_training_info *ti = &ctx->model->training[t];
    if (ti->initialization) st = infer_graph(&p, ti->initialization);
    if (!st && ti->algorithm) st = infer_graph(&p, ti->algorithm);
  }
  if (st) return st;
  ctx->changed = p.changed;
  char ops[512];
  size_t k = 0;
  ops[0] = 0;
  for (int i = 0; i < p.n_ops && k < sizeof ops; i++)
    k += (size_t)snprintf(ops + k, sizeof ops - k, "%s%s", i ? ", " : "", p.ops[i]);
  if (p.more_ops && k < sizeof ops) snprintf(ops + k, sizeof ops - k, ", ...");
  if (p.unknown)
    nbl_pass_logf(ctx, "%d values typed, %d left unknown (ops: %s)", p.typed, p.unknown, ops);
  else
    nbl_pass_logf(ctx, "%d values typed, 0 left unknown", p.typed);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_infer_shapes = {
    .name = "infer-shapes",
    .description = "infer element types and shapes of every value (symbolic dims kept); "
                   "adds them to value_info",
    .run = infer_shapes_run,
};
