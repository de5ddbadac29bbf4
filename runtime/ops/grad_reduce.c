/* runtime/ops/grad_reduce.c - op family 'grad_reduce': backward ops of the
 * softmax family and the softmax cross-entropy loss (forward ops in the
 * 'reduce' family, runtime/ops/reduce.c); kernel contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training ops, domain com.microsoft, version 1. T is float32
 * or float64 (float16/bfloat16 through the double reference path). Reference
 * kernels compute in double.
 *
 * SoftmaxGrad_13 (com.microsoft 1)  -- for Softmax opset >= 13
 *   inputs:  dY (T), Y (T, the Softmax OUTPUT)
 *   outputs: dX (T, Y's shape) = Y * (dY - sum_axis(dY * Y))
 *   attributes: axis (int, default -1): the one softmax axis
 * LogSoftmaxGrad_13 (com.microsoft 1)  -- for LogSoftmax opset >= 13
 *   inputs:  dY (T), X (T, the LogSoftmax OUTPUT, named X as in ORT)
 *   outputs: dX (T) = dY - exp(X) * sum_axis(dY)
 *   attributes: axis (int, default -1)
 * SoftmaxGrad (com.microsoft 1)  -- for Softmax opset < 13
 *   as SoftmaxGrad_13, but axis (default 1) coerces the input to 2-D
 *   [prod(dims[:axis]), prod(dims[axis:])] and the sum runs over the whole
 *   second dimension
 * LogSoftmaxGrad (com.microsoft 1)  -- for LogSoftmax opset < 13
 *   as LogSoftmaxGrad_13 with the opset < 13 coercion (axis default 1)
 * SoftmaxCrossEntropyLossGrad (com.microsoft 1)
 *   inputs:  dY (T: scalar for reduction mean/sum, label's shape for none),
 *            log_prob (T, [N, C] or [N, C, d1, ..., dk]: the loss's log_prob output),
 *            label (int32/int64, [N] or [N, d1, ..., dk]),
 *            weight (optional T, [C])
 *   outputs: d_logits (T, log_prob's shape) =
 *            g[n, d] * (exp(log_prob[n, c, d]) - (c == label[n, d])), where
 *            g = dY (none) or dY (sum) or dY / W (mean), times weight[label]
 *            (1 without weight), and 0 where label == ignore_index;
 *            W = sum over non-ignored positions of weight[label] (their count without weight)
 *   attributes: reduction (string none|sum|mean, default mean),
 *               ignore_index (int, optional)
 * SoftmaxCrossEntropyLossInternalGrad (com.microsoft 1)
 *   inputs:  dY, log_prob, label, weight (optional) as above,
 *            ignore_index (optional int64 scalar INPUT instead of the attribute),
 *            bias (optional, log_prob's shape: added to d_logits)
 *   outputs: d_logits (log_prob's shape; type output_type when given, else log_prob's)
 *   attributes: reduction (default mean), output_type (int, optional: FLOAT or DOUBLE)
 */

#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_reduce[] = {
    {"com.microsoft", "SoftmaxGrad_13", 1, 1, grad_pending, NULL},
    {"com.microsoft", "LogSoftmaxGrad_13", 1, 1, grad_pending, NULL},
    {"com.microsoft", "SoftmaxGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "LogSoftmaxGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "SoftmaxCrossEntropyLossGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "SoftmaxCrossEntropyLossInternalGrad", 1, 1, grad_pending, NULL},
};
const size_t nbl_ops_grad_reduce_count = sizeof nbl_ops_grad_reduce / sizeof nbl_ops_grad_reduce[0];
