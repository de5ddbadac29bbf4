/*
 * shape.h - what an op's shape rule (nbl_op_def.shape) works with.
 *
 * The infer-shapes pass (passes/infer_shapes.c) walks a graph in topological
 * order and calls each node's shape rule with an nbl_shape_ctx. A rule reads
 * its inputs' types (nbl_shp_in), and where an output shape depends on input
 * data, the data when it is known (nbl_shp_in_ints, nbl_shp_in_kd), then sets
 * its outputs' types (nbl_shp_set). Unknown stays unknown: a dim that cannot
 * be computed is nbl_dim_unk(), a rank that cannot is -1, a type that cannot
 * is NBL_DT_UNDEFINED; a rule never guesses.
 *
 * Symbolic dims ("N") pass through unchanged; a dim computed from a symbolic
 * one becomes unknown. Small integer tensors whose elements are known
 * (initializers, Constant nodes, and what Shape/Gather/Slice/Concat/... compute
 * from them) are kept by the driver in a side table: a rule that computes such
 * data from known data records it with nbl_shp_set_kd, so the usual exported
 * Shape -> Gather -> Concat -> Reshape chains resolve.
 *
 * A rule returns NBL_OK, or an error (nbl_errorf) when the node contradicts
 * itself (shapes that cannot broadcast, a bad axis); the driver names the node
 * when the message does not.
 */
#ifndef NBL_SHAPE_H
#define NBL_SHAPE_H

#include <stdbool.h>

#include "runtime/core/kernel.h"

#define NBL_SHP_MAXR 32 /* highest rank handled; higher ranks stay unknown */
#define NBL_SHP_MAXK 64 /* longest integer tensor kept in the side table */

/* One inferred tensor type: dt UNDEFINED and rank -1 when unknown. */
typedef struct nbl_shp {
  nbl_dtype dt;
  int rank;
  nbl_dim d[NBL_SHP_MAXR];
} nbl_shp;

/* One element of a known small integer tensor: a number, a symbol or unknown. */
enum { NBL_KD_UNK = 0, NBL_KD_VAL = 1, NBL_KD_SYM = 2 };
typedef struct nbl_kel {
  int kind;
  int64_t v;
  char *p; /* NBL_KD_SYM: the symbol (an arena string of the model) */
} nbl_kel;

/* Known data of a small integer tensor of rank 0 or 1. */
typedef struct nbl_kdata {
  int rank;
  int n;
  nbl_kel e[NBL_SHP_MAXK];
} nbl_kdata;

/* What a shape rule sees; filled by the driver. */
struct nbl_shape_ctx {
  nbl_model *model;
  nbl_graph *graph;
  const nbl_node *node; /* the node being inferred */
  int opset;            /* the opset of the node's domain the model imports */
  /* driver state */
  nbl_kdata **kd;       /* known data per value id of graph, NULL when none */
  int *changed;         /* counts the values whose type a rule changed */
  nbl_status (*infer_graph)(void *driver, nbl_graph *g); /* infer a subgraph */
  void *driver;
  bool subgraphs_done;  /* the node's subgraphs were inferred (nbl_shp_subgraphs) */
};

/* ------------------------------------------------------------------ dims */

static inline nbl_dim nbl_dim_val(int64_t v) {
  nbl_dim d = {.value = v};
  return d;
}
static inline nbl_dim nbl_dim_unk(void) {
  nbl_dim d = {.value = -1};
  return d;
}
static inline bool nbl_dim_known(nbl_dim d) { return d.value >= 0; }
/* The same dim: equal numbers, or the same symbol. */
bool nbl_dim_same(nbl_dim a, nbl_dim b);
/* Two dims that must be equal: the more specific one. */
nbl_dim nbl_dim_merge(nbl_dim a, nbl_dim b);
/* Product of n dims: known, the one non-1 dim when the rest are 1, else unknown. */
nbl_dim nbl_dim_prod(const nbl_dim *d, int n);

/* s = unknown shape of type dt / rank `rank` with every dim unknown. */
void nbl_shp_unknown(nbl_shp *s, nbl_dtype dt);
void nbl_shp_rank(nbl_shp *s, nbl_dtype dt, int rank);
/* The nbl_shp of an IR type (unknown when t is NULL or not a tensor). */
void nbl_shp_from_type(const nbl_type *t, nbl_shp *s);

/* An integer element type (8 to 64 bits, signed or not). */
bool nbl_shp_is_int(nbl_dtype dt);
/* t holds the bytes of its first n elements. */
bool nbl_shp_payload_ok(const nbl_tensor *t, int64_t n);

/* ------------------------------------------------------------------ inputs */

/* The type of input i; false (and s unknown) when the input is omitted. */
bool nbl_shp_in(const nbl_shape_ctx *c, int i, nbl_shp *s);
bool nbl_shp_has_in(const nbl_shape_ctx *c, int i);
/* Element type of input i (UNDEFINED when unknown or omitted). */
nbl_dtype nbl_shp_in_dtype(const nbl_shape_ctx *c, int i);
/* The constant tensor behind input i (an initializer or a Constant node's
 * value), or NULL. */
const nbl_tensor *nbl_shp_in_const(const nbl_shape_ctx *c, int i);
/* Known integer data of input i (symbols allowed). */
bool nbl_shp_in_kd(const nbl_shape_ctx *c, int i, nbl_kdata *k);
/* Known integer data of input i when every element is a number: v[0..*n). */
bool nbl_shp_in_ints(const nbl_shape_ctx *c, int i, int64_t *v, int *n);
/* A known integer scalar (or one-element tensor) at input i. */
bool nbl_shp_in_scalar_i64(const nbl_shape_ctx *c, int i, int64_t *v);
/* Float data of a constant input of at most max elements (e.g. Resize scales). */
bool nbl_shp_in_floats(const nbl_shape_ctx *c, int i, double *v, int *n, int max);

/* Infer the node's subgraphs (If branches, Loop/Scan bodies) now, so the rule
 * can read their output types. Values a body reads from the enclosing graph
 * are seen through their names; a rule seeds the body's own inputs first when
 * it knows them. The driver infers subgraphs a rule did not ask for after the
 * rule. */
nbl_status nbl_shp_subgraphs(nbl_shape_ctx *c);
/* Give value v of subgraph g the type s unless it has a type already (a rule
 * seeding a body's inputs before nbl_shp_subgraphs). */
nbl_status nbl_shp_seed(nbl_shape_ctx *c, nbl_graph *g, nbl_id v, const nbl_shp *s);

/* ------------------------------------------------------------------ outputs */

/* Merge the inferred type s into output k (no-op when the output is omitted
 * or s says nothing). Declared types are kept when more specific; a
 * contradiction is an error naming the node and the value. */
nbl_status nbl_shp_set(nbl_shape_ctx *c, int k, const nbl_shp *s);
/* Output k has type dt and rank `rank` (-1: unknown), dims unknown. */
nbl_status nbl_shp_set_dt(nbl_shape_ctx *c, int k, nbl_dtype dt, int rank);
/* Record known integer data for output k. */
nbl_status nbl_shp_set_kd(nbl_shape_ctx *c, int k, const nbl_kdata *d);
/* Sequences and optionals (their rules only; nbl_shp is a tensor type):
 * the declared or inferred IR type of input i (NULL when omitted or none);
 * output k's type set to a copy of t (a tensor type goes through
 * nbl_shp_set; a type of another kind than the output's declared one is
 * an error naming the node); output k = a sequence or optional (kind) of
 * tensors of type elem (elem NULL or unknown: element type unknown, the
 * optional's element a sequence when inner_seq). */
const nbl_type *nbl_shp_in_type(const nbl_shape_ctx *c, int i);
nbl_status nbl_shp_set_type(nbl_shape_ctx *c, int k, const nbl_type *t);
nbl_status nbl_shp_set_seq(nbl_shape_ctx *c, int k, nbl_type_kind kind, int inner_seq, const nbl_shp *elem);

/* ------------------------------------------------------------------ rule building blocks */

/* numpy broadcast of a and b into o (dims only); false when they cannot broadcast. */
bool nbl_shp_bcast(nbl_shp *o, const nbl_shp *a, const nbl_shp *b);
/* The "shapes A and B do not broadcast" error for the current node. */
nbl_status nbl_shp_bcast_err(nbl_shape_ctx *c, const nbl_shp *a, const nbl_shp *b);
/* Broadcast every present input in [from, to) into *o (type of the first). */
nbl_status nbl_shp_bcast_inputs(nbl_shape_ctx *c, int from, int to, nbl_shp *o);
/* s as text ("float[N,3]", "?[?]" when unknown) into buf; returns buf. */
const char *nbl_shp_str(char *buf, size_t n, const nbl_shp *s);
/* "node 'NAME' (Op): " prefixed error. */
nbl_status nbl_shp_err(nbl_shape_ctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Spatial output dims out[0..nsp) of a convolution or pooling window over x
 * ([N, C, spatial...]) from the node's pads, strides, dilations, auto_pad (and
 * for ConvTranspose output_padding / output_shape); kernel NULL when unknown. */
void nbl_shp_window(nbl_shape_ctx *c, const nbl_shp *x, int nsp, const int64_t *kernel,
                    bool transpose, bool ceil_mode, nbl_dim *out);
/* Conv-like rule: X at input ix, W at input iw; output type dt (UNDEFINED: X's). */
nbl_status nbl_shape_conv(nbl_shape_ctx *c, int ix, int iw, nbl_dtype dt, bool transpose);
/* numpy matmul rule on inputs ia, ib; output type dt (UNDEFINED: A's). */
nbl_status nbl_shape_matmul(nbl_shape_ctx *c, int ia, int ib, nbl_dtype dt);

/* Rules shared by many ops. */
nbl_status nbl_shape_same(nbl_shape_ctx *c);  /* output 0 = input 0 */
/* Output k takes the type and shape of input i (nothing when input i is omitted). */
nbl_status nbl_shp_copy_in(nbl_shape_ctx *c, int k, int i);
/* Output k: element type dt (UNDEFINED: input dt_from's type), shape read from
 * the values of the 1-D integer input i when they are known, else its length
 * as the rank when that is known. */
nbl_status nbl_shp_from_data(nbl_shape_ctx *c, int k, int i, int dt_from);
nbl_status nbl_shape_bcast(nbl_shape_ctx *c); /* output 0 = broadcast of all inputs */
nbl_status nbl_shape_bcast_bool(nbl_shape_ctx *c); /* the same, type bool */

#endif /* NBL_SHAPE_H */
