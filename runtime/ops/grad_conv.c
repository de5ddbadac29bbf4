/* runtime/ops/grad_conv.c - op family 'grad_conv': backward ops of Conv and
 * ConvTranspose (forward ops in runtime/ops/nn.c); kernel contract in
 * runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. T is float32
 * or float64 (float16/bfloat16 through the double reference path). The
 * reference kernels compute in double; the fast kernels (float32) use
 * nbl_sgemm (BLAS or nibble's own) with im2col / col2im and agree with the
 * reference within the tolerance stated in tests/test_ops_grad.c.
 *
 * ConvGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, M, out...]), X (T, [N, C, in...]), W (T, [M, C/group, k...])
 *   outputs: dX (T, X's shape, optional), dW (T, W's shape, optional),
 *            dB (T, [M], optional: sum of dY over N and out...)
 *   attributes: those of Conv: auto_pad, dilations, group, kernel_shape, pads,
 *            strides (same defaults, decoded by the same code as Conv)
 *   Any number of spatial dims (1-D, 2-D, 3-D, ...); dY must have the shape
 *   Conv would give for X and W.
 * ConvTransposeGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, M, out...]: the ConvTranspose output's shape),
 *            X (T, [N, C, in...]), W (T, [C, M/group, k...])
 *   outputs: dX (T, X's shape, optional), dW (T, W's shape, optional),
 *            dB (T, [M], optional)
 *   attributes: those of ConvTranspose: auto_pad, dilations, group,
 *            kernel_shape, output_padding, output_shape, pads, strides
 */

#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_conv[] = {
    {"com.microsoft", "ConvGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "ConvTransposeGrad", 1, 1, grad_pending, NULL},
};
const size_t nbl_ops_grad_conv_count = sizeof nbl_ops_grad_conv / sizeof nbl_ops_grad_conv[0];
