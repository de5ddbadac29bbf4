/* runtime/ops/grad_pool_norm.c - op family 'grad_pool_norm': backward ops of
 * pooling and normalization, and the training-mode BatchNorm forward that
 * saves the batch statistics (forward ops in runtime/ops/nn.c); kernel
 * contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training op names and signatures, domain com.microsoft,
 * version 1 (ORT registers MaxPoolGrad/AveragePoolGrad in the default domain
 * at version 9; nibble keeps every backward op in com.microsoft). T is
 * float32 or float64 (float16/bfloat16 through the double reference path).
 *
 * MaxPoolGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, C, out...]), Indices (int64, dY's shape: MaxPool's
 *            second output, flat indices into X), X_shape (int64 1-D: the
 *            shape of MaxPool's input; a nibble addition, ORT takes it from
 *            static shape inference -- emit it with Shape(X))
 *   outputs: dX (T, X_shape): zeros, then dY[i] added at Indices[i]
 *   attributes: storage_order (int, default 0: as MaxPool, how Indices
 *            encode a 2-D position); MaxPool's other attributes are accepted
 *            and not needed
 * AveragePoolGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, C, out...]), X_shape (int64 1-D: the shape of
 *            AveragePool's input; nibble addition as above)
 *   outputs: dX (T, X_shape): each dY element spread evenly over its window's
 *            input elements (divisor as the forward: window elements inside
 *            the input, or inside input + pads with count_include_pad=1)
 *   attributes: those of AveragePool: auto_pad, ceil_mode, count_include_pad,
 *            dilations, kernel_shape, pads, strides
 * BatchNormInternal (com.microsoft 1)  -- BatchNormalization in training mode
 *   inputs:  X (T, [N, C, ...]), scale (T, [C]), B (T, [C]),
 *            input_mean (T, [C]), input_var (T, [C]) (the running statistics)
 *   outputs: Y (T, X's shape), running_mean (optional, [C]), running_var
 *            (optional, [C]), saved_mean (optional, [C]: the batch mean),
 *            saved_inv_std (optional, [C]: 1 / sqrt(batch_var + epsilon))
 *   attributes: epsilon (float, default 1e-5), momentum (float, default 0.9),
 *            training_mode (int, default 1; 0 = inference with the running
 *            statistics, then only Y may be requested)
 *   semantics: ONNX BatchNormalization-15 with training_mode=1: batch_var is
 *            the biased variance over N and the spatial dims; running_x =
 *            input_x * momentum + batch_x * (1 - momentum)
 * BatchNormalizationGrad (com.microsoft 1)
 *   inputs:  dY (T, X's shape), X (T, [N, C, ...]), scale (T, [C]),
 *            saved_mean (T, [C]), saved_inv_std (T, [C]) (BatchNormInternal outputs 3, 4)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, [C], optional),
 *            bias_grad (T, [C], optional)
 *   attributes: epsilon (float; accepted, unused: saved_inv_std carries it)
 *   semantics: the gradient through the batch statistics (training mode):
 *            xhat = (x - mean) * inv_std, m = N * spatial,
 *            bias_grad = sum dY, scale_grad = sum dY * xhat,
 *            X_grad = scale * inv_std * (dY - bias_grad / m - xhat * scale_grad / m)
 * LayerNormalizationGrad (com.microsoft 1)
 *   inputs:  Y_grad (T, X's shape), X (T), scale (T, broadcastable to
 *            X.shape[axis:]), mean (float/double, X.shape[:axis] + [1]*(rank-axis):
 *            LayerNormalization's output 1), inv_std_dev (same: output 2)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, scale's shape,
 *            optional), bias_grad (T, scale's shape, optional)
 *   attributes: axis (int, default -1)
 */

#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_pool_norm[] = {
    {"com.microsoft", "MaxPoolGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "AveragePoolGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "BatchNormInternal", 1, 1, grad_pending, NULL},
    {"com.microsoft", "BatchNormalizationGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "LayerNormalizationGrad", 1, 1, grad_pending, NULL},
};
const size_t nbl_ops_grad_pool_norm_count = sizeof nbl_ops_grad_pool_norm / sizeof nbl_ops_grad_pool_norm[0];
