/* constant_initializers.c - constant-initializers: initializers that the
 * graph also lists as inputs become constants (dropped from graph.input).
 *
 * ONNX IR versions before 4 required every initializer to be listed as a
 * graph input, and exporters keep doing it on request (PyTorch does for
 * opsets below 9). From IR 4 on, such an initializer is only a default that
 * a caller may override, so nibble, like ONNX Runtime's optimizer, does not
 * take it as a constant: quantize-int4 quantizes it as an activation,
 * quantize-ternary and fold-batchnorm skip it. This pass states that the
 * weights are constant (what ONNX Runtime's remove_initializer_from_input
 * tool does): every main-graph initializer leaves graph.input, and the IR
 * version becomes at least 4 so the saved model stays valid. Subgraphs are
 * left alone (their initializers are never inputs of the graph). */
#include "pass.h"

static nbl_status constant_initializers_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  int kept = 0, dropped = 0;
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_value *v = &g->values[g->inputs[i]];
    if (v->init) {
      v->flags &= ~(unsigned)NBL_VAL_INPUT;
      dropped++;
    } else {
      g->inputs[kept++] = g->inputs[i];
    }
  }
  g->n_inputs = kept;
  if (dropped && m->ir_version < 4) m->ir_version = 4;
  ctx->changed += dropped;
  if (dropped) nbl_pass_logf(ctx, "%d initializer(s) listed as graph inputs are now constants", dropped);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_constant_initializers = {
    .name = "constant-initializers",
    .description = "make initializers that are also listed as graph inputs constants (drop them from the "
                   "inputs; IR < 4 models and PyTorch's opset < 9 exports list them), so that the quantizers "
                   "and folds take them as weights",
    .run = constant_initializers_run,
};
