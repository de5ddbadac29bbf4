/* pack_ternary.c - pack-ternary: store the constant quantized weights of a
 * quantize-ternary model in their smallest form, in nibble's own format.
 * Each ai.nibble QuantizeTernary of a finite float32 initializer becomes an
 * ai.nibble DequantizeTernary(codes, scale) with the weight's shape: the
 * codes packed five a byte in base 3 (1.6 bits a weight; packing=2bit: four
 * a byte) in a uint8 initializer, the scale mean|W| a float32 scalar
 * initializer (runtime/formats/ternary.h; the fold is lower_ternary.c's).
 * The layers kept in 8 bits (QuantizeInt4 bits=8 of a constant) become INT8
 * initializers feeding DequantizeLinear as pack-int4 writes them, which needs
 * default-domain opset 21 (the model is upgraded first when there is one). Outputs
 * are unchanged: the dequantized weights are the fake-quantized ones, and the
 * fused ternary kernels read the packed codes directly. */
#include <string.h>

#include "lower.h"
#include "runtime/formats/ternary.h"

static nbl_status pack_run(nbl_pass_ctx *ctx) {
  nbl_model *m = ctx->model;
  nbl_graph *g = m->graph;
  const char *packing = nbl_pass_opt_string(ctx, "packing");
  int pk;
  if (!strcmp(packing, "base3")) pk = NBL_TERN_PACK_BASE3;
  else if (!strcmp(packing, "2bit")) pk = NBL_TERN_PACK_2BIT;
  else
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "pack-ternary: packing='%s' (want base3 or 2bit)",
                      packing);
  int nt = 0, n8 = 0, left = 0, nn = g->n_nodes;
  size_t tb = 0, tf = 0, eb = 0, ef = 0; /* ternary and 8-bit: code bytes, FP32 bytes */
  nbl_status st = NBL_OK;
  /* the 8-bit layers' DequantizeLinear nodes need opset 21: the model goes
   * there before they are written (a model at opset 9 has no
   * DequantizeLinear to convert from), when one will be */
  int foldable8 = 0;
  for (nbl_id i = 0; i < nn && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (!n->dead && !strcmp(n->domain, "ai.nibble") && !strcmp(n->op_type, "QuantizeInt4") &&
        nbl_attr_int(n, "bits", 4) == 8)
      foldable8 += nbl_q4_foldable(ctx, g, i, 0, &st);
  }
  if (!st && foldable8) st = nbl_convert_opset(ctx, 21);
  nn = g->n_nodes;
  for (nbl_id i = 0; i < nn && !st; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->domain, "ai.nibble")) continue;
    int f = 0;
    size_t a = 0, b = 0;
    if (!strcmp(n->op_type, "QuantizeTernary")) {
      st = nbl_tern_fold_constant(ctx, g, i, 0, pk, &f, &a, &b);
      if (f) nt++, tb += a, tf += b;
      else left++;
    } else if (!strcmp(n->op_type, "QuantizeInt4") && nbl_attr_int(n, "bits", 4) == 8) {
      st = nbl_q4_fold_constant(ctx, g, i, 0, &f, &a, &b);
      if (f) n8++, eb += a, ef += b;
    }
  }
  if (st) return st;
  if (nt + n8) {
    nbl_graph_dce(g);
    nbl_graph_compact(g);
  }
  ctx->changed += nt + n8;
  nbl_pass_logf(ctx,
                "packed %d ternary weight(s) (%s): %zu bytes (FP32 %zu bytes, %.4fx); %d 8-bit "
                "weight(s) into INT8: %zu bytes (FP32 %zu bytes); %d QuantizeTernary left",
                nt, pk == NBL_TERN_PACK_2BIT ? "2 bits a weight" : "base 3, 1.6 bits a weight", tb,
                tf, tf ? (double)tb / (double)tf : 0.0, n8, eb, ef, left);
  return NBL_OK;
}

const nbl_pass_def nbl_pass_pack_ternary = {
    .name = "pack-ternary",
    .description = "store constant QuantizeTernary weights packed (base 3, 1.6 bits a weight, or "
                   "2 bits) feeding ai.nibble DequantizeTernary; 8-bit layers as INT8 "
                   "DequantizeLinear (opset 21)",
    .run = pack_run,
    .options =
        {
            {"packing", NBL_OPT_STRING, "base3",
             "base3 (five codes a byte) or 2bit (four a byte)"},
        },
};
