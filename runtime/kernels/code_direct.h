/*
 * code_direct.h - direct (im2col-free) convolutions on activation bytes,
 * the one kernel of the two fused integer paths (INT4: int4_conv.c over
 * int4_gemm.c; ternary: ternary_fused.c over ternary_gemm.c) and of the
 * 4-bit training forward (int4_coded_conv.c, INT4's epilogue). All multiply
 * unsigned activation bytes u (u = code + offset, a_zero the byte of a zero
 * activation) by signed weight codes with vpdpbusd, so the products are the
 * format's own only in the bytes and in the epilogue:
 *
 *   acc[m][p] = sum_(t, c) (x(p, t, c) - a_zero) * W[m][t][c]   exact, int32
 *
 * The input is quantized once into quads of channels per padded pixel,
 * x[((c / 4) * plane + r) * 4 + c % 4] (stride 2: in four phase planes,
 * padded pixel (r, q) in phase (r % 2, q % 2) at (r / 2) * Wq + q / 2), so
 * that output (oh, ow), at padded pixel oh * Wq + ow, reads tap t at a
 * constant offset off[t]. The outputs are computed at every padded column
 * (8 channels x 32 padded pixels in 16 AVX-512 registers); the valid lanes
 * (ow < OW) go to the format's epilogue hook, packed in output order. The
 * weights are the format's [M/8][Kp/4][8][4] blocks of codes packed from
 * W[m][t * 4 * C4 + c] (nbl_cd_order_weights; channels past C zero), with
 * their row sums for the zero-point correction. AVX-512 VNNI only: the
 * callers take their im2col tiles elsewhere. Internal to runtime/kernels/.
 */
#ifndef NBL_CODE_DIRECT_H
#define NBL_CODE_DIRECT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/kernel.h"
#include "runtime/kernels/gemm.h"

/* The layout of a convolution's input for the direct kernel. */
typedef struct nbl_cd_plan {
  int64_t S;          /* stride (1 or 2): S x S phase planes */
  int64_t C, C4, H, W; /* input channels (C4 quads), rows, columns */
  int64_t pt, pl;     /* top and left pads */
  int64_t Wq;         /* row of a phase plane (the padded row at stride 1) */
  int64_t plane;      /* positions a phase plane; a quad holds S * S planes */
  int64_t PP, OW;     /* padded output pixels (OH * Wq), output row */
  int64_t taps;
  int64_t *off;       /* [taps]: tap t's offset in positions */
} nbl_cd_plan;

/* 1 when the convolution g has the shape the direct kernel takes: one
 * group, 2-D, strides 1, or 2 both ways with more than one tap; not a
 * pointwise layer without pads (whose panels need no im2col: there the
 * direct kernel measured 5-10% slower, its epilogue packing the lanes), nor
 * a 1x1 stride-2 layer (which reads a quarter of the input that the phases
 * split whole). The CPU and the callers' switches are theirs to check. */
int nbl_cd_eligible(const nbl_conv_geom *g);

/* The plan of g (eligible); 0, or -1 when out of memory. */
int nbl_cd_plan_init(nbl_cd_plan *d, const nbl_conv_geom *g);
void nbl_cd_plan_free(nbl_cd_plan *d);
/* Bytes of one image's input in the plan's layout. */
size_t nbl_cd_image_bytes(const nbl_cd_plan *d);

/* Writes the activation bytes of channel c of image n (H x W, row-major) to
 * dst: the format's quantizer. */
typedef void (*nbl_cd_quant_fn)(const void *ctx, int64_t n, int64_t c, uint8_t *dst);
/* The N images' input in the plan's layout into u (N * nbl_cd_image_bytes):
 * every byte no input pixel lands on (pads, channels past C) is pad; the
 * executor's threads split the (image, quad) pairs. 0, or -1 when out of
 * memory. */
int nbl_cd_pack_input(nbl_kctx *c, const nbl_cd_plan *d, int64_t N, uint8_t pad,
                      nbl_cd_quant_fn quant, const void *ctx, uint8_t *u);

/* The weight codes q[(m * C + c) * T + t] (M x C x T taps) reordered to
 * r[m * K + t * 4 * C4 + c], K = T * 4 * C4 (channels past C zero): the
 * rows the format packs for the direct kernel. malloc'd, NULL when out of
 * memory. */
int8_t *nbl_cd_order_weights(const int8_t *q, int64_t M, int64_t C, int64_t T, int64_t *K);

/* The format's epilogue of a tile: output channels m.. m + nm - 1, the
 * corrected sums acc[r * 32 + i] (r < nm) of 32 padded pixels in two
 * vectors of 16; lanes k[h] of vector h (k[h] may be 0) are valid and go,
 * packed in lane order, to the consecutive outputs at[h], at[h] + 1, ... of
 * each channel's plane (the caller's row (m + r) * ld added by the hook). */
typedef void (*nbl_cd_store_fn)(const void *ctx, int64_t m, int nm, const int32_t *acc,
                                const uint16_t k[2], const int64_t at[2]);

/* Output channels [m0, m1) (m0 a multiple of 8) x padded pixels [p0, p1)
 * (p0 a multiple of 32) from x (one image in the plan's layout) and the
 * weight blocks w ([M/8][Kp/4][8][4], Kp = taps * 4 * C4) with rowsum, each
 * tile's corrected sums handed to store. Returns 1, or 0 when the CPU has no
 * AVX-512 VNNI or Kp does not match the plan (nothing done). */
int nbl_cd_tile(const nbl_cd_plan *d, const uint8_t *x, const int8_t *w, const int32_t *rowsum,
                int64_t Kp, int32_t a_zero, int64_t m0, int64_t m1, int64_t p0, int64_t p1,
                nbl_cd_store_fn store, const void *ctx);

#endif /* NBL_CODE_DIRECT_H */
