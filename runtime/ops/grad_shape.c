/* runtime/ops/grad_shape.c - op family 'grad_shape': backward ops of Gather and
 * Slice (forward ops in runtime/ops/shape.c); kernel contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. T: any numeric
 * type (float32/float64 are what training uses; the kernels move and add
 * elements of dY's type, adding in double for float types).
 *
 * GatherGrad (com.microsoft 1)
 *   inputs:  shape (int64 1-D: the shape of Gather's data input),
 *            indices (int32/int64, any rank q: Gather's indices; negative
 *            values count from the end; out of range is an error),
 *            dY (T, shape[:axis] + indices.shape + shape[axis+1:])
 *   outputs: dX (T, `shape`): zeros, then every dY slice added at its index
 *            (repeated indices accumulate)
 *   attributes: axis (int, default 0; negative counts from the back)
 * SliceGrad (com.microsoft 1)
 *   inputs:  dY (T, the Slice output's shape), shape (int64 1-D: the shape of
 *            Slice's data input), starts, ends (int32/int64 1-D), axes
 *            (optional int32/int64 1-D), steps (optional int32/int64 1-D):
 *            Slice's own inputs (opset >= 10 form)
 *   outputs: dX (T, `shape`): zeros, with dY written at the positions the
 *            slice read (starts/ends clamped exactly as Slice does)
 */

#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_shape[] = {
    {"com.microsoft", "GatherGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "SliceGrad", 1, 1, grad_pending, NULL},
};
const size_t nbl_ops_grad_shape_count = sizeof nbl_ops_grad_shape / sizeof nbl_ops_grad_shape[0];
