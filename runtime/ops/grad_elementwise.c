/* runtime/ops/grad_elementwise.c - op family 'grad_elementwise': backward ops of
 * the element-wise activations, Dropout, broadcasting and QuantizeInt4 (the
 * kernel contract is in runtime/core/kernel.h).
 *
 * Names and signatures are ONNX Runtime's training ops (domain com.microsoft,
 * version 1) except QuantizeInt4Grad, which is nibble's own (ai.nibble, 1).
 * T is float32 or float64 (float16/bfloat16 go through the double reference
 * path); every input marked T has the element type of dY; dX has dY's shape
 * and type. Each op has one reference kernel (double arithmetic).
 *
 * ReluGrad (com.microsoft 1)
 *   inputs:  dY (T), X (T, the Relu input; Relu's output Y works too)
 *   outputs: dX (T) = dY * (X > 0)
 * SigmoidGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the Sigmoid OUTPUT)
 *   outputs: dX (T) = dY * Y * (1 - Y)
 * TanhGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the Tanh OUTPUT)
 *   outputs: dX (T) = dY * (1 - Y^2)
 * GeluGrad (com.microsoft 1)  -- for Gelu(approximate="none")
 *   inputs:  dY (T), X (T, the Gelu input)
 *   outputs: dX (T) = dY * (Phi(x) + x * phi(x)), Phi/phi the normal cdf/pdf
 * FastGeluGrad (com.microsoft 1)  -- for Gelu(approximate="tanh")
 *   inputs:  dY (T), X (T)
 *   outputs: dX (T) = dY * (0.5 (1 + t) + 0.5 x (1 - t^2) a (1 + 3 g x^2)),
 *            t = tanh(a (x + g x^3)), a = sqrt(2/pi), g = 0.044715
 * LeakyReluGrad (com.microsoft 1)
 *   inputs:  dY (T), Y (T, the LeakyRelu OUTPUT; X works too when alpha > 0)
 *   outputs: dX (T) = Y > 0 ? dY : alpha * dY
 *   attributes: alpha (float, default 0.01)
 * DropoutGrad (com.microsoft 1)
 *   inputs:  dy (T), mask (bool, dy's shape: the Dropout mask output),
 *            ratio (optional float/double scalar, default 0.5),
 *            training_mode (optional bool scalar; accepted and ignored, as ORT's CPU kernel)
 *   outputs: dx (T) = ratio == 0 ? dy : mask * dy / (1 - ratio); ratio in [0, 1)
 * BitmaskDropoutGrad (com.microsoft 1)
 *   inputs:  dy (T), mask (uint32, ceil(numel/32) words: element i kept when
 *            bit i % 32 of word i / 32 is set), ratio (optional, as above),
 *            training_mode (optional bool, ignored)
 *   outputs: dx (T), as DropoutGrad with the bit for mask
 * BroadcastGradientArgs (com.microsoft 1)
 *   inputs:  a_shape (int64 1-D), b_shape (int64 1-D): the shapes of the two
 *            operands of a broadcasting binary op (Add/Sub/Mul/Div/Pow, MatMul batch dims)
 *   outputs: a_axes (int64 1-D, optional), b_axes (int64 1-D, optional): the
 *            axes of the broadcast result (rank max(ra, rb)) to sum dY over to
 *            get dA / dB (then Reshape to a_shape / b_shape), listed from the
 *            last axis to the first; empty when no reduction is needed.
 *            Incompatible shapes are an error.
 * QuantizeInt4Grad (ai.nibble 1)  -- the straight-through gradient of QuantizeInt4
 *   inputs:  dY (float32), X (float32, the QuantizeInt4 input),
 *            alpha (optional float32 scalar; required for scale_source=pact)
 *   outputs: dX (float32, X's shape), dAlpha (optional float32 scalar)
 *   attributes: those of QuantizeInt4 (bits, mode, scale_source, scale, narrow,
 *            rounding, seed), read the same way so the clip range is the forward's
 *   semantics: the quantization parameters are chosen from X exactly as the
 *            forward does (runtime/formats/int4.h); dX = dY inside the
 *            representable range [s (qmin - z), s (qmax - z)] (PACT: [0, alpha])
 *            and 0 outside; PACT: dAlpha = sum(dY * (X > alpha)), other modes: 0.
 */

#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_elementwise[] = {
    {"com.microsoft", "ReluGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "SigmoidGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "TanhGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "GeluGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "FastGeluGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "LeakyReluGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "DropoutGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "BitmaskDropoutGrad", 1, 1, grad_pending, NULL},
    {"com.microsoft", "BroadcastGradientArgs", 1, 1, grad_pending, NULL},
    {"ai.nibble", "QuantizeInt4Grad", 1, 1, grad_pending, NULL},
};
const size_t nbl_ops_grad_elementwise_count = sizeof nbl_ops_grad_elementwise / sizeof nbl_ops_grad_elementwise[0];
