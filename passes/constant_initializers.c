/* constant_initializers.c - constant-initializers: initializers that the
 * graph also lists as inputs become constants (dropped from graph.input).
 *
 * From IR 4 on, an initializer that the graph also lists as an input is
 * only a default that a caller may override, so nibble, like ONNX Runtime,
 * does not take it as a constant: quantize-int4 quantizes it as an
 * activation, quantize-ternary and fold-batchnorm skip it. This pass states
 * that the weights are constant (what ONNX Runtime's
 * remove_initializer_from_input tool does): every main-graph initializer
 * leaves graph.input. (Before IR 4 every initializer had to be listed and is
 * a constant: the loader already takes those out, parser/load.c; on a model
 * built in memory at IR < 4 this pass raises the IR version to 4 so the
 * saved model does not list them again.) Subgraphs are left alone (their
 * initializers are never inputs of the graph). */
#include "pass.h"

static nbl_status constant_initializers_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  const int dropped = nbl_graph_drop_init_inputs(m->graph);
  if (dropped && m->ir_version < 4) m->ir_version = 4;
  ctx->changed += dropped;
  if (dropped) nbl_pass_logf(ctx, "%d initializer(s) listed as graph inputs are now constants", dropped);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_constant_initializers = {
    .name = "constant-initializers",
    .description = "make initializers that are also listed as graph inputs constants (drop them from the "
                   "inputs; an IR >= 4 model's such initializers are overridable defaults; below IR 4 the "
                   "loader already does it), so that the quantizers and folds take them as weights",
    .run = constant_initializers_run,
};
