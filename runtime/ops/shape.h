/* runtime/ops/shape.h - what the 'shape_strided' and 'shape_index' families
 * (runtime/ops/shape_strided.c, shape_index.c) share with other families:
 * Slice's index arithmetic, used by SliceGrad (runtime/ops/grad_shape.c) so
 * that both clamp starts/ends the same way, and the gather ops' reading of
 * one index, used by GatherElementsGrad and GatherNDGrad. */
#ifndef NBL_OPS_SHAPE_H
#define NBL_OPS_SHAPE_H

#include "runtime/core/kernel.h"

/* For an input of rank r and dims, and Slice's ns starts/ends (axes and
 * steps may be NULL: 0..ns-1 and all 1): per dim of the input, the first
 * index read (start), the step and the output length (len); dims not sliced
 * get 0, 1, dims[d]. Negative starts/ends count from the end and are clamped
 * as ONNX Slice specifies. Errors (bad axis, an axis twice, step 0) name the node. */
nbl_status nbl_slice_geometry(nbl_kctx *c, int r, const int64_t *dims, int ns, const int64_t *starts,
                              const int64_t *ends, const int64_t *axes, const int64_t *steps,
                              int64_t *start, int64_t *step, int64_t *len);

/* Index value i of t (an integer tensor), negative ones counted from dim's
 * end: 0 and *out, or -1 with the message set (NBL_ERR_RUNTIME) when it is
 * outside [-dim, dim). */
int nbl_fetch_index(nbl_kctx *c, const nbl_rt_tensor *t, int64_t i, int64_t dim, int64_t *out);

/* Concat's kernel (runtime/ops/shape.c), shared with ConcatFromSequence
 * (runtime/ops/sequence.c): output 0 = the n_in tensors in[] joined along
 * axis_raw (negative counts from the end), checked alike. */
nbl_status nbl_concat_out(nbl_kctx *c, int n_in, const nbl_rt_tensor *const *in, int64_t axis_raw);
/* Concat's shape rule over the node's inputs from, from + step, ... (Concat:
 * 0, 1; com.microsoft QLinearConcat: the X of each triple, 2, 3) joined along
 * axis (negative counts from the end): output 0's type is the first known
 * one of theirs. Known data is left to the caller (Concat's rule). */
nbl_status nbl_shape_concat_inputs(nbl_shape_ctx *c, int from, int step, int64_t axis);
/* Split's copy, shared with SplitToSequence: x cut along `axis` (in range)
 * into n parts of sp[k] (summing to the axis) rows, each without that axis
 * when keep_axis is 0 (parts of one row); into outputs 0..n-1 of c when
 * parts is NULL, else into the new owned tensors parts[0..n). */
nbl_status nbl_split_parts(nbl_kctx *c, const nbl_rt_tensor *x, int axis, int n, const int64_t *sp, int keep_axis,
                           nbl_rt_tensor *parts);

#endif
