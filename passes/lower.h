/*
 * lower.h - helpers shared by pack-int4 and lower-to-onnx (passes/lower.c,
 * passes/lower_log.c).
 */
#ifndef NBL_PASSES_LOWER_H
#define NBL_PASSES_LOWER_H

#include "runtime/formats/int4.h"
#include "pass.h"

/* If QuantizeInt4 node `nid` has a constant float32 initializer X (all
 * finite), no PACT input, and neither its scale nor zero_point output is
 * used, replace it by DequantizeLinear(q, s[, z]) with q a constant code
 * initializer: packed INT4 for 4-bit symmetric codes, INT8 otherwise (with an
 * INT8 zero point when z != 0). *folded is 1 when it did, 0 when the node does
 * not qualify (then nothing changed). only_int4: fold only 4-bit symmetric.
 * On success *q_bytes / *f32_bytes (may be NULL) get the code bytes and the
 * FP32 bytes of X. The old initializer is left for DCE. */
nbl_status nbl_q4_fold_constant(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int only_int4,
                                int *folded, size_t *q_bytes, size_t *f32_bytes);

/* Whether nbl_q4_fold_constant would fold node `nid` (nothing changes); 0
 * with *st set when its attributes are bad. */
int nbl_q4_foldable(nbl_pass_ctx *ctx, const nbl_graph *g, nbl_id nid, int only_int4,
                    nbl_status *st);

/* Replace QuantizeLog node `nid` of g by standard ops (opset 21) computing
 * the same values (passes/lower_log.c). Stochastic rounding is a clear
 * NBL_ERR_UNSUPPORTED naming the node; a bad attribute names it too. */
nbl_status nbl_lower_quantize_log(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid);

#endif /* NBL_PASSES_LOWER_H */
