/*
 * grad.h - automatic differentiation over the IR: the gradient-rule API and
 * the driver (runtime/core/grad.c).
 *
 * The driver (nbl_grad_build) appends backward nodes to a graph that already
 * holds the forward nodes. It walks the nodes that lie on a path from a value
 * wanting a gradient (trainable parameters) to a value being differentiated
 * (the loss) in reverse topological order. For each, it looks the op up in the
 * op table (domain, op type, the model's opset) and calls the entry's `grad`
 * rule, which reads the forward node and the gradients of its outputs and
 * contributes gradients for its inputs. Several contributions to one value
 * are summed (one Sum node; Add for two). Nothing flows into integer or bool
 * tensors, nor into values no wanted value reaches (frozen parameters, the
 * label). A node on the path whose op has no rule is an error naming the node
 * (and the entry's `no_grad` reason when it has one).
 *
 * Writing a rule: a function `nbl_status rule(nbl_grad_ctx *gc)` in the op's
 * family file, referenced from its table line (`.grad = rule`). It reads the
 * forward node with nbl_grad_x / nbl_grad_y / nbl_grad_dy, emits nodes with
 * nbl_grad_op / nbl_grad_opn (+ attribute setters for the node just emitted)
 * and hands each input gradient to nbl_grad_set_dx. Emitting functions are
 * sticky on error: after a failure they do nothing and return NBL_NONE, the
 * first message is kept, and the driver reports it when the rule returns; so a
 * rule may chain calls and end with `return nbl_grad_status(gc);`. Rules
 * should skip the inputs for which nbl_grad_wants() is 0 (the driver ignores
 * gradients handed for them, and removes what only they used).
 *
 * Names: backward nodes are named "<forward node>_grad/<op>" (made unique),
 * the gradient of a trainable parameter P is the value "P_grad".
 *
 * Room for quantized gradients (issue 16). A product op (Conv, ConvTranspose,
 * Gemm, MatMul) reads its output gradient with nbl_grad_dy_own instead of
 * nbl_grad_dy: the driver then guarantees that value is named "<Y>_grad" (Y the
 * forward output), is a value of its own (an Identity is inserted when the
 * summed gradient is shared with another consumer, e.g. both operands of an
 * Add) and is consumed by nothing but the nodes that rule emits. A later pass
 * can therefore insert one quantizer on "<Y>_grad" and touch only that layer.
 * The rules emit the input-gradient product and the weight-gradient product as
 * nodes whose names end in "/dX" and "/dW" ("/dB" for a bias reduction), e.g.
 * "conv1_grad/dX"; where one backward node computes both (com.microsoft
 * ConvGrad: dY, X, W -> dX, dW, dB, every output optional) its name ends in
 * "/dXdW" and a two-phase-rounding pass splits it into two ConvGrad nodes, one
 * keeping output 0, the other outputs 1 and 2, each fed its own quantized copy
 * of "<Y>_grad".
 */
#ifndef NBL_GRAD_H
#define NBL_GRAD_H

#include "ir/ir.h"

/* A gradient rule (see the top of this file). Returns NBL_OK, or an error
 * (nbl_grad_fail) that names the node. (The same declarations are in
 * runtime/core/kernel.h, which holds the table slot.) */
typedef struct nbl_grad_ctx nbl_grad_ctx;
typedef nbl_status (*nbl_grad_fn)(nbl_grad_ctx *gc);

/* The no_grad reason of the backward ops' table lines (second-order gradients). */
#define NBL_NO_GRAD_BACKWARD "backward op: no rule yet for second-order gradients"

/* ------------------------------------------------------------------ the driver */

typedef struct nbl_grad_spec {
  nbl_graph *g; /* holds the forward nodes; backward nodes are appended to it */
  /* What is differentiated: values y[0..n_y) with seed gradients dy[k]
   * (NBL_NONE or dy == NULL: ones shaped like y[k], i.e. the gradient of sum(y)). */
  int n_y;
  const nbl_id *y;
  const nbl_id *dy;
  /* The values wanting a gradient, and the name each gradient value gets
   * (dx_names NULL or dx_names[i] NULL: "<name>_grad"). */
  int n_x;
  const nbl_id *x;
  const char *const *dx_names;
  /* Out (n_x entries): the gradient value of x[i], or NBL_NONE when no
   * differentiable path leads from x[i] to any y (its gradient is zero; see
   * zeros_for_unreached). */
  nbl_id *dx;
  /* 1: an unreached x gets a zero gradient value (ConstantOfShape) instead of NBL_NONE. */
  int zeros_for_unreached;
  /* 1: an x that is itself fed to an input a rule cannot differentiate
   * (nbl_grad_no_dx: Dropout's ratio, Clip's bounds, ...) is not an error:
   * the x gets no gradient at all (dx NBL_NONE) and blocked[i] = 1 (when
   * blocked is not NULL). 0: such an input is an error naming the node. */
  int lenient;
  unsigned char *blocked;
  /* Out, optional: number of backward nodes emitted. */
  int n_emitted;
} nbl_grad_spec;

/* Build the backward graph described by s (see the top of this file). The
 * forward values should carry element types (and shapes where known): run
 * infer-shapes first. On error the graph may hold a partial backward graph;
 * the message names the node at fault. */
nbl_status nbl_grad_build(nbl_grad_spec *s);

/* ------------------------------------------------------------------ what a rule reads */

nbl_graph *nbl_grad_graph(nbl_grad_ctx *gc);
/* The forward node (the pointer is valid until the next node is emitted). */
const nbl_node *nbl_grad_node(nbl_grad_ctx *gc);
/* Version of `domain` ("" = ai.onnx) the model imports (0: none). */
int nbl_grad_opset(nbl_grad_ctx *gc, const char *domain);
int nbl_grad_n_in(nbl_grad_ctx *gc);
int nbl_grad_n_out(nbl_grad_ctx *gc);
/* Forward input / output i (NBL_NONE when omitted or out of range). */
nbl_id nbl_grad_x(nbl_grad_ctx *gc, int i);
nbl_id nbl_grad_y(nbl_grad_ctx *gc, int i);
/* Forward output i, added to the forward node (as a fresh value) when the
 * model omitted it: MaxPool's Indices, Dropout's mask, a loss's log_prob. */
nbl_id nbl_grad_y_need(nbl_grad_ctx *gc, int i);
/* The gradient of output i (summed), NBL_NONE when none flows (zero). */
nbl_id nbl_grad_dy(nbl_grad_ctx *gc, int i);
/* The same as a value of this rule's own, named "<Y>_grad" (product ops; see above). */
nbl_id nbl_grad_dy_own(nbl_grad_ctx *gc, int i);
/* 1 if input i wants a gradient (lies on a path from a trainable value). */
int nbl_grad_wants(nbl_grad_ctx *gc, int i);
/* Element type (UNDEFINED when unknown), rank (-1 unknown) and dim (-1
 * unknown or symbolic) of any value of the graph. */
nbl_dtype nbl_grad_dtype(nbl_grad_ctx *gc, nbl_id v);
int nbl_grad_rank(nbl_grad_ctx *gc, nbl_id v);
int64_t nbl_grad_dim(nbl_grad_ctx *gc, nbl_id v, int axis);
/* 1 when dim a of value v and dim b of value w are equal: both known and
 * equal, or the same symbol. */
int nbl_grad_dim_same(nbl_grad_ctx *gc, nbl_id v, int a, nbl_id w, int b);
/* The int64 elements of v when v is a small constant (initializer or Constant
 * node) of rank <= 1: writes up to max of them to out, returns the count, -1
 * when v is not constant. */
int nbl_grad_const_ints(nbl_grad_ctx *gc, nbl_id v, int64_t *out, int max);

/* ------------------------------------------------------------------ what a rule writes */

/* Emit one node op(domain)(in[0..n_in)) with one fresh output; returns the
 * output value (NBL_NONE on error). in[k] may be NBL_NONE (omitted input). */
nbl_id nbl_grad_op(nbl_grad_ctx *gc, const char *op, const char *domain, int n_in,
                   const nbl_id *in);
/* The same with n_out outputs: out[k] receives a fresh value, or NBL_NONE when
 * want != NULL and want[k] == 0 (omitted output). `tag` ends the node's name
 * ("<fwd>_grad/<tag>"; NULL: the op type). Returns the node id or NBL_NONE. */
nbl_id nbl_grad_opn(nbl_grad_ctx *gc, const char *op, const char *domain, const char *tag,
                    int n_in, const nbl_id *in, int n_out, const int *want, nbl_id *out);
/* Rename the node emitted last: "<fwd>_grad/<tag>" (the /dX, /dW convention). */
void nbl_grad_tag(nbl_grad_ctx *gc, const char *tag);
/* Attributes of the node emitted last. */
void nbl_grad_attr_int(nbl_grad_ctx *gc, const char *name, int64_t v);
void nbl_grad_attr_float(nbl_grad_ctx *gc, const char *name, float v);
void nbl_grad_attr_ints(nbl_grad_ctx *gc, const char *name, int n, const int64_t *v);
void nbl_grad_attr_string(nbl_grad_ctx *gc, const char *name, const char *v);
/* Copy every attribute of the forward node to the node emitted last (except
 * those named in `except`, a NULL-terminated list, may be NULL). */
void nbl_grad_attr_copy(nbl_grad_ctx *gc, const char *const *except);

/* Constants (Constant nodes): a scalar of element type dt (float types and
 * int64), a 1-D int64 vector. */
nbl_id nbl_grad_const(nbl_grad_ctx *gc, nbl_dtype dt, double v);
nbl_id nbl_grad_const_i64(nbl_grad_ctx *gc, int n, const int64_t *v);

/* Hand the gradient of input i to the driver (summed with other contributions
 * to the same value). v NBL_NONE: nothing. Ignored when input i wants none. */
void nbl_grad_set_dx(nbl_grad_ctx *gc, int i, nbl_id v);

/* A rule that cannot give input i a gradient: an error naming the input when
 * input i wants one (nothing otherwise). `why` completes "no gradient for input". */
void nbl_grad_no_dx(nbl_grad_ctx *gc, int i, const char *why);

/* Set the sticky error (message prefixed with "node 'NAME' (Op): ") and return st. */
nbl_status nbl_grad_fail(nbl_grad_ctx *gc, nbl_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* NBL_OK, or the first error of this rule. */
nbl_status nbl_grad_status(nbl_grad_ctx *gc);

/* ------------------------------------------------------------------ helpers for rules */

/* Shape(v). */
nbl_id nbl_grad_shape(nbl_grad_ctx *gc, nbl_id v);
/* g reshaped to the shape of `like` (a constant shape when it is static). */
nbl_id nbl_grad_reshape_like(nbl_grad_ctx *gc, nbl_id g, nbl_id like);
/* g (shaped like the broadcast result `y`) summed down to the shape of x: the
 * gradient of a broadcast operand. Static axes when the shapes tell, else
 * Shape + com.microsoft BroadcastGradientArgs + ReduceSum + Reshape. */
nbl_id nbl_grad_unbroadcast(nbl_grad_ctx *gc, nbl_id g, nbl_id x, nbl_id y);
/* The run-time half of that: g summed (ReduceSum, keepdims, opset >= 13)
 * over the axes com.microsoft BroadcastGradientArgs finds between the shapes
 * of a (the operand) and b (the broadcast result); *a_shape gets Shape(a). */
nbl_id nbl_grad_sum_broadcast_axes(nbl_grad_ctx *gc, nbl_id g, nbl_id a, nbl_id b, nbl_id *a_shape);
/* ReduceSum / Unsqueeze / Transpose with constant axes, in the form of the
 * model's opset (axes as attribute before 13, as input from 13). */
nbl_id nbl_grad_reduce_sum(nbl_grad_ctx *gc, nbl_id v, int n_axes, const int64_t *axes,
                           int keepdims);
nbl_id nbl_grad_unsqueeze(nbl_grad_ctx *gc, nbl_id v, int n_axes, const int64_t *axes);
nbl_id nbl_grad_transpose(nbl_grad_ctx *gc, nbl_id v, int n, const int64_t *perm);
/* Zeros / the value `fill` shaped like v (ConstantOfShape(Shape(v)) of v's
 * element type). */
nbl_id nbl_grad_zeros_like(nbl_grad_ctx *gc, nbl_id v);
nbl_id nbl_grad_fill_like(nbl_grad_ctx *gc, nbl_id v, double fill);
/* Elementwise binary op shortcut: op(a, b). */
nbl_id nbl_grad_bin(nbl_grad_ctx *gc, const char *op, nbl_id a, nbl_id b);
/* Elementwise unary op shortcut: op(a). */
nbl_id nbl_grad_un(nbl_grad_ctx *gc, const char *op, nbl_id a);

/* 1 where X equals Y (broadcast; Y an extreme of X), else 0, in X's element
 * type: which elements an extreme (Max, Min, ReduceMax, GlobalMaxPool, ...)
 * took. */
nbl_id nbl_grad_tie_mask(nbl_grad_ctx *gc, nbl_id X, nbl_id Y);
/* The share of an extreme's gradient each element of X gets: the tie mask
 * divided by its count over the reduced axes (kept as 1s), so that ties
 * split the gradient evenly (as PyTorch's amax). */
nbl_id nbl_grad_tie_share(nbl_grad_ctx *gc, nbl_id X, nbl_id Y, int n_axes, const int64_t *axes);

/* Number of elements of X per element of Y (a reduction of X to Y), as a
 * scalar of X's element type: a constant when the shapes tell, else
 * Cast(Size(X) / Size(Y)). */
nbl_id nbl_grad_count_ratio(nbl_grad_ctx *gc, nbl_id X, nbl_id Y);

/* The rule of step functions (Floor, Ceil, Round, Sign, Hardmax): the
 * gradient is zero almost everywhere, so nothing flows back (as PyTorch). */
nbl_status nbl_grad_zero(nbl_grad_ctx *gc);

#endif /* NBL_GRAD_H */
