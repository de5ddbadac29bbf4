/*
 * runtime/formats/ternary.h - the ternary weight quantizer (BitNet b1.58) and
 * the INT8 absmax activation quantizer that goes with it, plus the two storage
 * forms of ternary codes. Plain C, no IR or kernel-context dependency: the
 * QuantizeTernary kernel, the quantize-ternary pass, the packing/lowering and
 * the add-only kernels share this one definition of the numbers.
 *
 * Weights, per tensor, recomputed every run:
 *     s = mean|w|  (over the finite elements; 1 when that mean is 0)
 *     q = clamp(round_half_even(w / s), -1, 1),   w~ = s * q
 * so |w| = s/2 exactly rounds to 0 (half to even), as torch.round does in
 * BitNet's reference code. NaN stays NaN, +-Inf stays +-Inf (and is left out
 * of the mean). All arithmetic is float32 (w / s, then s * q), like ONNX
 * QuantizeLinear / DequantizeLinear, so a lowered model has the same codes.
 *
 * Activations, INT8 absmax, per tensor or per row (the last axis: BitNet's
 * per-token scale):  s = max|x| / 127 (1 when max|x| is 0),
 *     q = clamp(round_half_even(x / s), -128, 127),   x~ = s * q
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

#endif /* NBL_FORMAT_TERNARY_H */
