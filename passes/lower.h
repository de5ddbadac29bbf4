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

/* The upper end of QuantizeInt4's scale_source=mse grid in standard ops
 * (passes/lower_mse.c): for x with lo = ReduceMin(x), hi = ReduceMax(x)
 * (affine; the value replaces hi) or lo = NBL_NONE, hi = ReduceMax(Abs(x))
 * (symmetric; the value replaces max|x|), the same numbers as
 * nbl_q4_params_from_mse. *out gets the value. */
nbl_status nbl_lower_mse_top(nbl_graph *g, const char *base, const nbl_q4_config *cfg, nbl_id x, nbl_id lo,
                             nbl_id hi, nbl_id *out);

/* Building blocks of the lowerings (lower.c): a new initializer named after
 * hint holding a copy of data; node op(ins) of the default domain writing a
 * fresh value (or `out` when != NBL_NONE), named after base. NBL_NONE on
 * failure. */
nbl_id nbl_lower_const(nbl_graph *g, const char *hint, nbl_dtype dt, int rank, const int64_t *dims,
                       const void *data);
nbl_id nbl_lower_emit(nbl_graph *g, const char *op, const char *base, int n_in, const nbl_id *ins,
                      nbl_id out);

/* ------------------------------------------------------------------ ternary (lower_ternary.c) */

/* If node nid is a QuantizeTernary of a finite float32 initializer (scale
 * output unused), or with to_int4 a DequantizeTernary of constant codes and
 * scale: replace it by DequantizeLinear(INT4 codes, scale) (to_int4, for
 * lower-to-onnx) or by ai.nibble DequantizeTernary(codes packed as `packing`
 * (nbl_tern_packing), scale) (pack-ternary). *folded is 1 when it did (then
 * *q_bytes / *f32_bytes, may be NULL, get the code bytes and the FP32 bytes),
 * 0 when the node does not qualify (nothing changed). An invalid
 * DequantizeTernary is an error naming the node. */
nbl_status nbl_tern_fold_constant(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid, int to_int4,
                                  int packing, int *folded, size_t *q_bytes, size_t *f32_bytes);
/* Lower a non-constant QuantizeTernary or QuantizeAbsmax8 into standard ops
 * (opset 21; formulas in lower_ternary.c). Another op, or a used scale
 * output, is a clear NBL_ERR_UNSUPPORTED naming the node. */
nbl_status nbl_tern_lower_dynamic(nbl_pass_ctx *ctx, nbl_graph *g, nbl_id nid);

#endif /* NBL_PASSES_LOWER_H */
