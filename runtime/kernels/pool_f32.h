/*
 * pool_f32.h - the FP32 2-D average pooling kernel, AveragePool's fast
 * path (the op's table line is in runtime/ops/nn_pool.c).
 *
 * Per (n, c) plane and output row: the sum of the window's input rows
 * (vector adds over whole rows into a zero-padded row), then the sum of
 * that row's window columns at each output column (at column stride 1, one
 * vector of outputs at a time over the window's shifted copies of the row),
 * over the count of the window's positions (inside the plane, or inside the
 * padded plane with count_include_pad). Each output is the float sum of the
 * window in the order (column sums in kh order, then those in kw order),
 * whichever ISA runs (the AVX and the scalar loops add in the same order),
 * divided by the count: within float rounding of the reference kernel's
 * double sums, and equal to them where the float sums are exact.
 */
#ifndef NBL_KERNELS_POOL_F32_H
#define NBL_KERNELS_POOL_F32_H

#include "runtime/kernels/gemm.h"

typedef struct nbl_avgpool_task {
  const nbl_conv_geom *g; /* 2-D window geometry (ns == 2) */
  const float *x;         /* [planes][in[0]][in[1]] */
  float *y;               /* [planes][out[0]][out[1]] */
  int include_pad;        /* count_include_pad */
} nbl_avgpool_task;

/* Planes [begin, end) of task arg (an nbl_avgpool_task), for
 * nbl_parallel_for. Never fails: without memory for its row buffers it
 * takes a direct loop (the same sums). */
void nbl_avgpool2d_f32(void *arg, int64_t begin, int64_t end);

#endif /* NBL_KERNELS_POOL_F32_H */
