/*
 * runtime/formats/ternary.h - the ternary weight quantizer (BitNet b1.58) and
 * the INT8 absmax activation quantizer that goes with it, the two storage
 * forms of ternary codes, and the one decoder of the attributes of the
 * ai.nibble ops that use them (QuantizeTernary, QuantizeTernaryGrad,
 * QuantizeAbsmax8, DequantizeTernary). Plain C over the IR (no kernel-context
 * dependency): the op kernels, the quantize-ternary / pack-ternary /
 * lower-to-onnx passes and the add-only kernels share this one definition of
 * the numbers and of what a valid node is.
 *
 * Weights, per tensor, recomputed every run:
 *     s = mean|w|  (over the finite elements; 1 when that mean is 0)
 *     q = clamp(round_half_even(w / s), -1, 1),   w~ = s * q
 * so |w| = s/2 exactly rounds to 0 (half to even), as torch.round does in
 * BitNet's reference code. NaN stays NaN, +-Inf stays +-Inf (and is left out
 * of the mean). All arithmetic is float32 (w / s, then s * q), like ONNX
 * QuantizeLinear / DequantizeLinear, so a lowered model has the same codes.
 *
 * Gradient (straight-through inside the clip): dX = dY where the clamp does
 * not act, i.e. |rint(w / s)| <= 1 (|w| < 1.5 s, and |w| = 1.5 s only when
 * it rounds to 1), with s recomputed from w as the forward does; 0 elsewhere
 * and for NaN/Inf. The scale's own dependence on w is not differentiated
 * (as BitNet's straight-through estimator).
 *
 * Activations, INT8 absmax, per tensor or per row (the last axis: BitNet's
 * per-token scale):  s = max|x| / 127 (1 when max|x| is 0),
 *     q = clamp(round_half_even(x / s), -128, 127),   x~ = s * q
 * (|x| <= max|x| keeps every finite code in [-127, 127]). NaN/Inf pass
 * through. Gradient: straight through everywhere (the clamp never acts on a
 * finite value).
 *
 * Storage: codes -1, 0, 1 are stored as u = q + 1 in {0, 1, 2}:
 *   2 bits per code: four codes per byte, code 4i+j in bits 2j..2j+1 of byte i
 *                    (the form the kernels read; unused bits 0);
 *   base 3: five codes per byte, byte = sum u_j * 3^j (j = 0..4), 1.6 bits
 *           per code (the smallest file form; 243 of 256 byte values used).
 */
#ifndef NBL_FORMAT_TERNARY_H
#define NBL_FORMAT_TERNARY_H

#include <stddef.h>
#include <stdint.h>

#include "ir/ir.h"

/* The ternary scale s of w[0..n). */
float nbl_tern_scale(const float *w, size_t n);
/* The code of finite w under scale s: -1, 0 or 1. */
int nbl_tern_code(float w, float s);
/* w~ = s * code for finite elements; NaN/Inf pass through. y may equal w. */
void nbl_tern_fake_quant(const float *w, float *y, size_t n, float s);
/* Codes of w[0..n) (non-finite: NaN -> 0, +Inf -> 1, -Inf -> -1). */
void nbl_tern_codes(const float *w, int8_t *q, size_t n, float s);

/* INT8 absmax scale of x[0..n) (finite elements). */
float nbl_absmax8_scale(const float *x, size_t n);
/* x~ = s * clamp(round(x / s), -128, 127) for finite x; rows of `row` elements
 * each get their own scale when per_row is set (n a multiple of row). */
void nbl_absmax8_fake_quant(const float *x, float *y, size_t n, size_t row, int per_row);

/* 2-bit packing: (n + 3) / 4 bytes. */
size_t nbl_tern_pack2_bytes(size_t n);
void nbl_tern_pack2(const int8_t *q, size_t n, uint8_t *dst);
void nbl_tern_unpack2(const uint8_t *src, size_t n, int8_t *q);
/* Base-3 packing: (n + 4) / 5 bytes. Unpacking returns -1 if a byte is not a
 * valid base-3 group (>= 243), else 0. */
size_t nbl_tern_pack3_bytes(size_t n);
void nbl_tern_pack3(const int8_t *q, size_t n, uint8_t *dst);
int nbl_tern_unpack3(const uint8_t *src, size_t n, int8_t *q);

/* 1 when the straight-through gradient passes at w under scale s: w finite
 * and |rint(w / s)| <= 1 (see above). */
int nbl_tern_grad_pass(float w, float s);

/* ------------------------------------------------------------------ the ops' attributes */

typedef enum { NBL_TERN_PACK_BASE3 = 0, NBL_TERN_PACK_2BIT = 1 } nbl_tern_packing;

#define NBL_TERN_MAX_RANK 8

/* The attributes of one ai.nibble ternary-family node, decoded. */
typedef struct nbl_tern_attrs {
  int per_row;              /* QuantizeAbsmax8: one scale per row of the last axis */
  nbl_tern_packing packing; /* DequantizeTernary */
  int rank;                 /* DequantizeTernary: the weight's shape */
  int64_t dims[NBL_TERN_MAX_RANK];
  int64_t numel;
} nbl_tern_attrs;

/* Decode the attributes of node n, one of (domain ai.nibble):
 *   QuantizeTernary, QuantizeTernaryGrad   no attributes
 *   QuantizeAbsmax8   per_row  int 0|1 (default 0)           else NBL_ERR_INVALID_MODEL
 *   DequantizeTernary shape    ints, required, 0..8 dims each >= 0, product
 *                              below 2^48                     else NBL_ERR_INVALID_MODEL
 *                     packing  string base3|2bit (default base3)
 *                                                             else NBL_ERR_UNSUPPORTED
 * An attribute of the wrong type is NBL_ERR_INVALID_MODEL; another op type is
 * NBL_ERR_INTERNAL. Returns NBL_OK, or the status with a message in
 * err[0..errlen) (may be NULL) naming the attribute; callers prefix the node.
 * Sets no thread error. out is fully written only on NBL_OK. */
nbl_status nbl_tern_attrs_decode(const nbl_node *n, nbl_tern_attrs *out, char *err, size_t errlen);

/* Bytes of n codes in `packing`. */
size_t nbl_tern_packed_bytes(nbl_tern_packing packing, size_t n);
/* Codes of n packed values; -1 when a base-3 byte is invalid (>= 243) or a
 * 2-bit field holds 3 (not a code), else 0. */
int nbl_tern_unpack(nbl_tern_packing packing, const uint8_t *src, size_t n, int8_t *q);
/* Pack n codes (each -1, 0 or 1). */
void nbl_tern_pack(nbl_tern_packing packing, const int8_t *q, size_t n, uint8_t *dst);

#endif /* NBL_FORMAT_TERNARY_H */
