/*
 * adapt.h - what an op's opset adapter (nbl_op_def.adapters) works with.
 *
 * The convert-opset pass (passes/convert_opset.c) walks every node of the
 * default domain and, for each step of the op's history it crosses, calls
 * the step's up (or down) function with an nbl_adapt_ctx. An adapter rewrites
 * its node in place in the IR: attributes become constant inputs, inputs
 * become attributes, the op is renamed, nodes are inserted before or after it.
 * Nodes it inserts are in their form at ctx->to (the driver converts them on
 * to the target like any other node).
 *
 * Guard-then-act: an adapter checks everything it needs (constant inputs,
 * known types, supported attribute values) before it changes the graph, and
 * refuses with nbl_adapt_refuse, a one-line reason; the driver prefixes the
 * model, node, op and opsets.
 *
 * The shared adapters at the end cover the common steps (an attribute
 * becomes an input and back, a legacy attribute is dropped, the pre-opset-7
 * broadcast); a table line names one with its parameters, e.g.
 *   {.from = 1, .to = 13, .up = nbl_adapt_attrs_to_inputs,
 *    .down = nbl_adapt_inputs_to_attrs, .attr = "axes", .input = 1,
 *    .attr_type = NBL_ATTR_INTS}
 */
#ifndef NBL_ADAPT_H
#define NBL_ADAPT_H

#include <stdbool.h>

#include "runtime/core/kernel.h"

/* What an adapter sees; filled by the driver. */
struct nbl_adapt_ctx {
  nbl_model *model;
  nbl_graph *graph;           /* the graph holding the node (a subgraph too) */
  nbl_id node;                /* the node being rewritten */
  const nbl_op_adapter *step; /* the table's step: its parameters */
  int from;                   /* the node's opset before this step */
  int to;                     /* its opset after it (the step's `to` going up, `to - 1` down) */
  int target;                 /* the opset the conversion goes to */
};

/* The node (valid until the next node is added: hold ids, not pointers). */
static inline nbl_node *nbl_adapt_node(const nbl_adapt_ctx *c) { return &c->graph->nodes[c->node]; }

/* Refuse the step: NBL_ERR_UNSUPPORTED with the reason (printf-style). */
nbl_status nbl_adapt_refuse(nbl_adapt_ctx *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ------------------------------------------------------------------ reading */

/* The data of value v when it is a constant: an initializer that is not a
 * graph input, or the output of a Constant node, in this graph or (for a
 * captured value) an enclosing one. NULL otherwise. */
const nbl_tensor *nbl_adapt_const_of(nbl_adapt_ctx *c, nbl_id v);
/* Input i of the node as a constant (NULL when omitted or not constant). */
const nbl_tensor *nbl_adapt_const_input(nbl_adapt_ctx *c, int i);
/* Element type and rank of value v when known (declared or inferred: the
 * driver runs the shape rules before converting); UNDEFINED / -1 otherwise. */
nbl_dtype nbl_adapt_elem(const nbl_adapt_ctx *c, nbl_id v);
int nbl_adapt_rank(const nbl_adapt_ctx *c, nbl_id v);
/* Dim `axis` (may be negative) of value v when known, else -1. */
int64_t nbl_adapt_dim(const nbl_adapt_ctx *c, nbl_id v, int64_t axis);
/* Whether output k of the node is used: consumed, a graph output, or
 * captured by name by a subgraph. */
bool nbl_adapt_output_used(const nbl_adapt_ctx *c, int k);

/* ------------------------------------------------------------------ rewriting */

/* A new initializer of the node's graph (data copied), named after the node
 * and hint, unique in the whole model. NBL_NONE when out of memory. */
nbl_id nbl_adapt_const(nbl_adapt_ctx *c, const char *hint, nbl_dtype dt, int rank,
                       const int64_t *dims, const void *data);
/* Set input i of the node to v (NBL_NONE: omitted), growing the input list;
 * trailing omitted inputs are dropped. An initializer no node uses any more
 * after the conversion is removed by the driver. */
nbl_status nbl_adapt_set_input(nbl_adapt_ctx *c, int i, nbl_id v);
/* Drop attribute `name` of the node (nothing when absent). */
void nbl_adapt_drop_attr(nbl_adapt_ctx *c, const char *name);
/* Rename the node's op (same domain). */
nbl_status nbl_adapt_rename(nbl_adapt_ctx *c, const char *op_type);
/* Drop output k of the node (must be unused): it becomes omitted. */
void nbl_adapt_drop_output(nbl_adapt_ctx *c, int k);
/* Add a node `op` of the default domain with inputs ins and one output:
 * `out` when it is not NBL_NONE (a value without producer), else a new value
 * named after the node and hint. Returns the output value, NBL_NONE when out
 * of memory. The new node's id is the value's producer. */
nbl_id nbl_adapt_add_node(nbl_adapt_ctx *c, const char *op, const char *hint, int n_in,
                          const nbl_id *ins, nbl_id out);
/* Give output k of the node a new value (named after hint) and return it;
 * the old value keeps its name, uses and graph-output place but has no
 * producer: the caller adds the node that computes it from the new value. */
nbl_id nbl_adapt_detach_output(nbl_adapt_ctx *c, int k, const char *hint);

/* The node becomes `op` (same domain) on the n_in inputs ins, without
 * attributes (the caller adds the new op's own): the last node of the chain of
 * standard ops an adapter puts in place of an op that ONNX removed (Affine ->
 * Mul, Add). Its outputs stay. */
nbl_status nbl_adapt_replace(nbl_adapt_ctx *c, const char *op, int n_in, const nbl_id *ins);
/* Element type of value v when it is known and a float type (float, double,
 * float16, bfloat16: the types nbl_adapt_const_floats makes), else UNDEFINED. */
nbl_dtype nbl_adapt_float_elem(const nbl_adapt_ctx *c, nbl_id v);
/* A new constant of float type dt (see nbl_adapt_float_elem) of shape
 * (rank, dims) holding v converted to dt; NBL_NONE when dt is not such a
 * type or out of memory. */
nbl_id nbl_adapt_const_floats(nbl_adapt_ctx *c, const char *hint, nbl_dtype dt, int rank,
                              const int64_t *dims, const float *v);

/* ------------------------------------------------------------------ shared adapters */

/* Attributes -> inputs. step->attr is a comma-separated list of attribute
 * names; attribute j becomes input step->input + j, a constant of the kind
 * step->attr_type says: INTS -> 1-D int64, INT -> 1-D int64 of one element,
 * FLOATS -> 1-D float, FLOAT -> scalar of the element type step->dtype
 * (0: the type of input 0, which must be known). An absent attribute leaves
 * its input omitted. The inputs must not be there yet. The legacy attribute
 * consumed_inputs (before opset 6, no meaning) is dropped too. */
nbl_status nbl_adapt_attrs_to_inputs(nbl_adapt_ctx *c);
/* The reverse: each of those inputs, when given, must be a constant and
 * becomes the attribute; the inputs are removed. */
nbl_status nbl_adapt_inputs_to_attrs(nbl_adapt_ctx *c);
/* Nothing to rewrite: the two forms agree on every node the step's target
 * form can hold (e.g. a removed attribute whose only value is the default). */
nbl_status nbl_adapt_keep(nbl_adapt_ctx *c);
/* Drop the attributes listed in step->attr (legacy attributes without
 * meaning, such as consumed_inputs). Down: nothing to do. */
nbl_status nbl_adapt_drop_attrs(nbl_adapt_ctx *c);
/* is_test (BatchNormalization, Dropout before opset 7; the default 0 means
 * training mode) must be 1 and goes, with consumed_inputs. Down: is_test=1. */
nbl_status nbl_adapt_is_test(nbl_adapt_ctx *c);
nbl_status nbl_adapt_is_test_down(nbl_adapt_ctx *c);
/* Output 1 (Dropout's mask) has input 0's element type in the old form and
 * is bool in the new one: when it is used, a Cast back to the old type keeps
 * its value (the element type must then be known). Down: a Cast to bool. */
nbl_status nbl_adapt_mask_bool(nbl_adapt_ctx *c);
nbl_status nbl_adapt_mask_bool_down(nbl_adapt_ctx *c);
/* Input i (B) is aligned with input 0 (A) from `axis` on, as in the legacy
 * broadcast: unsqueeze B at its end so that numpy broadcasting lines them up
 * the same way (ranks must be known). Used by the adapters below and PRelu. */
nbl_status nbl_adapt_align_input(nbl_adapt_ctx *c, int i, int64_t axis);
/* Legacy broadcast of the binary ops before opset 7 (broadcast=1 with an
 * optional axis: B's dims match A's from axis on; nbl_bcast_legacy) -> numpy
 * broadcasting: B is unsqueezed at its end when axis leaves trailing dims of
 * A (ranks must then be known: declared, or inferred by the shape rules the
 * driver runs first). Drops broadcast, axis and consumed_inputs. */
nbl_status nbl_adapt_legacy_broadcast(nbl_adapt_ctx *c);

/* ------------------------------------------------------------------ shared histories */

/* The history of the many ops whose only change before opset 6 was dropping
 * the legacy attribute consumed_inputs (stable_since 6). */
extern const nbl_op_adapter nbl_adapt_consumed_inputs6[];
/* The binary ops with the legacy broadcast before opset 7 (stable_since 7). */
extern const nbl_op_adapter nbl_adapt_broadcast7[];
/* Their table fields, for short table lines. */
#define NBL_SINCE6_CONSUMED .stable_since = 6, .adapters = nbl_adapt_consumed_inputs6
#define NBL_SINCE7_BROADCAST .stable_since = 7, .adapters = nbl_adapt_broadcast7

#endif /* NBL_ADAPT_H */
