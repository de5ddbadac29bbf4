/* lower.c - lower-to-onnx: rewrite nibble's own ops (domain ai.nibble) into
 * standard ONNX so other runtimes can run the model. No ai.nibble op has a
 * lowering yet (they arrive with the INT4 work): a model that uses one is a
 * clear error rather than a file other runtimes cannot read. */
#include <string.h>

#include "pass.h"

static nbl_status lower_graph(const nbl_model *m, const nbl_graph *g) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    if (strcmp(n->domain, "ai.nibble") == 0)
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: node '%s' (%s, domain ai.nibble): no lowering to standard ONNX",
                        nbl_model_label(m), n->name, n->op_type);
    for (int a = 0; a < n->n_attrs; a++) {
      const nbl_attr *at = &n->attrs[a];
      nbl_status st = NBL_OK;
      if (at->type == NBL_ATTR_GRAPH && at->g) st = lower_graph(m, at->g);
      for (int j = 0; at->type == NBL_ATTR_GRAPHS && j < at->n && !st; j++)
        st = lower_graph(m, at->graphs[j]);
      if (st) return st;
    }
  }
  return NBL_OK;
}

static nbl_status lower_run(nbl_pass_ctx *ctx) { return lower_graph(ctx->model, ctx->model->graph); }

const nbl_pass_def nbl_pass_lower_to_onnx = {
    .name = "lower-to-onnx",
    .description = "rewrite nibble's own ops (ai.nibble) into standard ONNX for other runtimes",
    .run = lower_run,
};

/* A test-only pass that deliberately breaks the IR (a node reads a value that
 * nothing defines), so tests can check that --verify-each catches it. */
static nbl_status break_run(nbl_pass_ctx *ctx) {
  nbl_graph *g = ctx->model->graph;
  if (g->n_nodes == 0) return NBL_OK;
  nbl_id v = nbl_graph_add_value(g, nbl_graph_unique_name(g, "undefined_by_test_pass"));
  if (v == NBL_NONE) return NBL_ERR_OUT_OF_MEMORY;
  nbl_node_set_input(g, 0, 0, v);
  ctx->changed = 1;
  return NBL_OK;
}

const nbl_pass_def nbl_pass_test_break_ir = {
    .name = "test-break-ir",
    .description = "(test only) make the first node read an undefined value",
    .run = break_run,
    .hidden = 1,
};
