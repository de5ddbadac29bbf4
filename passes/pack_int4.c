/* pack-int4.c - pack-int4: store constant quantized weights as integer
 * initializers. Each ai.nibble QuantizeInt4 whose X is a constant float32
 * initializer (no PACT input) is computed once: the codes q become an
 * initializer -- packed INT4 (element type 22, two per byte, low nibble first)
 * for 4-bit symmetric weights, INT8 (with an INT8 zero point if affine) for
 * the layers kept in 8 bits -- the scale s a float scalar initializer, and the
 * node a standard DequantizeLinear(q, s[, z]), which needs default-domain
 * opset 21 (the model is converted first, see nbl_convert_opset). Outputs are
 * unchanged: DequantizeLinear computes s*(q-z) exactly as the fake quantizer did. */
#include <string.h>

#include "lower.h"

static nbl_status pack_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  int candidates = 0;
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (!n->dead && !strcmp(n->domain, "ai.nibble") && !strcmp(n->op_type, "QuantizeInt4"))
      candidates++;
  }
  if (!candidates) return NBL_OK;
  /* the DequantizeLinear nodes need opset 21: the model goes there first
   * (convert-opset), when something will be packed */
  int foldable = 0;
  nbl_status st = NBL_OK;
  for (int i = 0; i < g->n_nodes && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (!n->dead && !strcmp(n->domain, "ai.nibble") && !strcmp(n->op_type, "QuantizeInt4"))
      foldable += nbl_q4_foldable(ctx, g, i, 0, &st);
  }
  if (!st && foldable) st = nbl_convert_opset(ctx, 21);
  if (st) return st;
  int packed = 0, n4 = 0;
  size_t qb = 0, fb = 0, qb4 = 0, fb4 = 0; /* all packed weights; the 4-bit ones */
  int nn = g->n_nodes;
  for (nbl_id i = 0; i < nn && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->domain, "ai.nibble") || strcmp(n->op_type, "QuantizeInt4")) continue;
    int f = 0;
    size_t a = 0, b = 0;
    int bits = (int)nbl_attr_int(n, "bits", 4); /* read before folding replaces the node */
    st = nbl_q4_fold_constant(ctx, g, i, 0, &f, &a, &b);
    if (f) {
      packed++;
      qb += a;
      fb += b;
      if (bits <= 4) {
        n4++;
        qb4 += a;
        fb4 += b;
      }
    }
  }
  if (st) return st;
  if (packed) {
    nbl_graph_dce(g);
    nbl_graph_compact(g);
  }
  ctx->changed += packed;
  nbl_pass_logf(ctx,
                "packed %d weight(s) into INT4/INT8: %zu bytes (FP32 %zu bytes, %.3fx); of "
                "them %d into INT4: %zu bytes (FP32 %zu bytes, %.3fx); %d QuantizeInt4 left",
                packed, qb, fb, fb ? (double)qb / (double)fb : 0.0, n4, qb4, fb4,
                fb4 ? (double)qb4 / (double)fb4 : 0.0, candidates - packed);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_pack_int4 = {
    .name = "pack-int4",
    .description = "store constant QuantizeInt4 weights as packed INT4 (8-bit layers: INT8) "
                   "initializers feeding DequantizeLinear (opset 21)",
    .run = pack_run,
};
