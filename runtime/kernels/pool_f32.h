/*
 * pool_f32.h - the FP32 2-D pooling kernels: AveragePool's fast path and
 * MaxPool's AVX-512 plane kernel (the ops' table lines and MaxPool's other
 * paths are in runtime/ops/nn_pool.c).
 *
 * Per (n, c) plane and output row: the sum of the window's input rows
 * (vector adds over whole rows into a zero-padded row), then the sum of
 * that row's window columns at each output column (at column stride 1, one
 * vector of outputs at a time over the window's shifted copies of the row),
 * over the count of the window's positions (inside the plane, or inside the
 * padded plane with count_include_pad). Each output is the float sum of the
 * window in the order (column sums in kh order, then those in kw order),
 * whichever ISA runs (the AVX, AVX-512 and scalar loops add in the same order),
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

/* MaxPool's float 2-D plane x into y with AVX-512 (x86-64; column strides
 * 1 and 2, any dilation, pads, ceil mode, at most 64 window rows): per
 * output row, the max over the window's rows into a row buffer, 16 columns
 * a vector, then over the window's columns, 16 outputs a vector (stride 2:
 * the even columns picked by a permute); two row buffers in turn, so the
 * column pass never waits on the row pass's stores. vm holds
 * nbl_maxpool2d_vm_len(g) floats (both rows), all -inf (the caller fills it
 * once; the kernel writes only the input columns). The same values as the
 * reference (NaN in a window gives NaN; an empty window -inf). 0 when g is
 * not one it takes. */
int64_t nbl_maxpool2d_vm_len(const nbl_conv_geom *g);
int nbl_maxpool2d_plane_avx512(const nbl_conv_geom *g, const float *x, float *y, float *vm);

#endif /* NBL_KERNELS_POOL_F32_H */
