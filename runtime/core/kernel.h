/*
 * kernel.h - the contract between the executor and operator kernels.
 *
 * An op family registers an array of nbl_op_def (see the end of this file);
 * runtime/core/optable.c concatenates the family arrays into the one op table.
 * Adding an op = its kernel, its shape rule and one table line in its family
 * file (README "Where an op lives").
 *
 * Kernels run on nbl_rt_tensor: dense, row-major, native-endian element data.
 * A kernel reads ctx->in[i] (NULL for an omitted optional input), computes the
 * output shape from the actual inputs, asks the executor for output storage
 * with nbl_kctx_alloc_out, and fills it. Returning non-OK must set a message via
 * nbl_kerr, which names the node.
 */
#ifndef NBL_KERNEL_H
#define NBL_KERNEL_H

#include "ir/ir.h"

#define NBL_MAX_RANK 8

/* What a runtime value holds (nbl_rt_tensor.kind). A sequence or an
 * optional (ONNX's sequence(tensor) and optional(...) types) keeps its
 * elements in an nbl_rt_seq at `data`: dtype is its tensors' element type
 * (NBL_DT_UNDEFINED when unknown), rank, numel and nbytes are 0, and `owns`
 * says whether freeing the value frees the list and, recursively, the
 * elements. An optional has 0 (empty) or 1 element, a tensor or a sequence.
 * Only ops whose table line sets NBL_OPF_VALUES receive such values; the
 * executor refuses them as inputs of every other op (nbl_frame_run). */
enum { NBL_RT_TENSOR = 0, NBL_RT_SEQUENCE = 1, NBL_RT_OPTIONAL = 2 };

typedef struct nbl_rt_tensor {
  nbl_dtype dtype;
  int rank;
  int64_t dims[NBL_MAX_RANK];
  int64_t numel;
  void *data;    /* element data; STRING tensors: char*[numel], each NUL-terminated, owned;
                    a sequence or optional: its nbl_rt_seq */
  size_t nbytes; /* bytes of data (numel * element size; INT4/UINT4 packed) */
  int owns;      /* internal: who frees data (executor bookkeeping) */
  int kind;      /* NBL_RT_TENSOR (0), NBL_RT_SEQUENCE or NBL_RT_OPTIONAL */
} nbl_rt_tensor;

/* The elements of a sequence or optional value. */
typedef struct nbl_rt_seq {
  int64_t n;
  nbl_rt_tensor *items; /* n values, each owning its data */
} nbl_rt_seq;

typedef struct nbl_exec nbl_exec; /* executor state, opaque to kernels */

#define NBL_KCTX_MIN_IN 16

typedef struct nbl_kctx {
  const nbl_graph *graph;
  const nbl_node *node;
  int opset; /* version of the node's domain imported by the model */
  int n_in;
  /* in[i] NULL when input i is omitted; the array has at least
   * NBL_KCTX_MIN_IN entries, NULL from n_in on, so that a kernel reading an
   * input a malformed node lacks sees it omitted, never past the array */
  const nbl_rt_tensor *const *in;
  int n_out;
  nbl_rt_tensor **out; /* out[i] NULL when output i is not requested ("" name) */
  int reference;       /* 1: only reference code paths */
  int threads;         /* thread count available to the kernel */
  nbl_exec *exec;
} nbl_kctx;

typedef nbl_status (*nbl_kernel_fn)(nbl_kctx *ctx);

/* Allocate output i with the given type and shape (zero-filled unless the
 * executor has planned memory for it; do not rely on zeroing). If out[i] is
 * NULL (output not requested) a scratch tensor is provided anyway so kernels
 * can always write. Returns NBL_OK or an error with message set. */
nbl_status nbl_kctx_alloc_out(nbl_kctx *ctx, int i, nbl_dtype dt, int rank, const int64_t *dims);
/* Output i as a tensor pointer (valid after alloc_out; may be a scratch one). */
nbl_rt_tensor *nbl_kctx_out(nbl_kctx *ctx, int i);
/* Make output i an exact copy of `src` (type, shape and data; a sequence
 * or optional with copies of its elements). */
nbl_status nbl_kctx_copy_out(nbl_kctx *ctx, int i, const nbl_rt_tensor *src);
/* Make output i the value *v (a sequence or optional made with
 * nbl_rt_seq_make, or an owned tensor), taking ownership of it in every
 * case (*v is zeroed). */
nbl_status nbl_kctx_move_out(nbl_kctx *ctx, int i, nbl_rt_tensor *v);

/* Set the error message, prefixed with "node 'NAME' (OpType): ", and return st. */
nbl_status nbl_kerr(nbl_kctx *ctx, nbl_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Run fn(arg, begin, end) over [0, n) split across the executor's threads.
 * Chunks are at least `grain` items. Runs inline when threads <= 1. */
void nbl_parallel_for(nbl_kctx *ctx, int64_t n, int64_t grain,
                      void (*fn)(void *arg, int64_t begin, int64_t end), void *arg);

/* The seed of one call of a kernel that draws random numbers and has no seed
 * attribute (RandomNormal, Bernoulli, ...; runtime/ops/random.c), for the
 * one counter-based generator nbl_q4_uniform(seed, index) of
 * runtime/formats/int4.h. Each engine has a random stream: a 64-bit key fixed
 * when it is created (nbl_engine_options.seed, or fresh from the clock when
 * that is 0) and a position that every call advances, so every call, every
 * run and every Loop/Scan iteration gets a new seed: key XOR position *
 * 0x9E3779B97F4A7C15. Two engines made with the same non-zero seed give the
 * same seeds call for call (the engine runs its steps in one fixed order).
 * Outside an executor (ctx->exec NULL) the stream is a process-wide one with
 * a fresh key. */
int64_t nbl_kctx_random_seed(nbl_kctx *ctx);

/* splitmix64 (its increment and finalizer): the runtime's one mixer of
 * seeds, counters and keys (Dropout's mask, the data order, the training
 * session's and the exchange's random keys, QuantizeInt4's stochastic
 * rounding). */
static inline uint64_t nbl_splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* Run a subgraph (If/Loop/Scan body) with the given inputs bound to the
 * subgraph's inputs in order; values captured from outer scopes are taken
 * from the enclosing executor frame. Outputs are new tensors the caller owns
 * (free with nbl_rt_tensor_free). */
nbl_status nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                 const nbl_rt_tensor *const *in, int n_out, nbl_rt_tensor **out);

/* ------------------------------------------------------------------ tensor helpers */

size_t nbl_rt_elem_size(nbl_dtype dt); /* bytes per element; 0 for 4-bit types */
/* View an IR tensor as a runtime tensor. Numeric types point at the IR data
 * (owns = 0); STRING tensors get a new char*[] array of copies (owns = 1). */
nbl_status nbl_rt_from_ir(const nbl_tensor *t, nbl_rt_tensor *out);
/* Deep copy src into dst (dst's old data is not freed); a sequence or
 * optional with copies of its elements. */
nbl_status nbl_rt_copy(nbl_rt_tensor *dst, const nbl_rt_tensor *src);
/* t = a new owned sequence or optional (kind NBL_RT_SEQUENCE or
 * NBL_RT_OPTIONAL) of element type elem with n zeroed elements to fill
 * (each then owns what is put in it). */
nbl_status nbl_rt_seq_make(nbl_rt_tensor *t, int kind, nbl_dtype elem, int64_t n);
/* The elements of a sequence or optional value, NULL for a tensor. */
static inline nbl_rt_seq *nbl_rt_seq_of(const nbl_rt_tensor *t) {
  return t && t->kind != NBL_RT_TENSOR ? (nbl_rt_seq *)t->data : NULL;
}
/* "tensor", "sequence" or "optional". */
const char *nbl_rt_kind_name(int kind);
/* Allocate data for t with the given type/shape (malloc, zeroed). */
nbl_status nbl_rt_tensor_alloc(nbl_rt_tensor *t, nbl_dtype dt, int rank, const int64_t *dims);
void nbl_rt_tensor_free(nbl_rt_tensor *t); /* frees data (strings, elements) it owns; t itself not freed */
/* Element i converted to double / int64 (any numeric dtype, bool). */
double nbl_rt_get_f64(const nbl_rt_tensor *t, int64_t i);
int64_t nbl_rt_get_i64(const nbl_rt_tensor *t, int64_t i);
/* Store v (converted, saturating-free C cast semantics for ints; float16
 * rounded once from double) at element i. */
void nbl_rt_set_f64(nbl_rt_tensor *t, int64_t i, double v);
void nbl_rt_set_i64(nbl_rt_tensor *t, int64_t i, int64_t v);

/* Numpy-style broadcast of shapes a and b into out (rank = max). Returns 0 on
 * success, -1 if incompatible. */
int nbl_broadcast_shape(int ra, const int64_t *a, int rb, const int64_t *b, int *rout,
                        int64_t *out);
/* For output linear index i of shape (rank,dims), the linear index into a
 * broadcast operand of shape (ra, a) (ra <= rank, right-aligned). */
int64_t nbl_broadcast_index(int rank, const int64_t *dims, int64_t i, int ra, const int64_t *a);
/* How input B (1) of a binary op broadcasts onto input A (0) when the op had
 * the legacy form before opset 7 (Add, Sub, Mul, Div, Pow, And, Or, Xor, Equal,
 * Greater, Less). The kernels, the shape rules and the opset-7 adapter all
 * read the node through this one function:
 *   NBL_BCAST_NUMPY  opset >= 7, or before with broadcast=1 and no axis (B's
 *                    dims match A's last ones): numpy broadcasting;
 *   NBL_BCAST_EQUAL  before 7 with broadcast=0 (the default): equal shapes;
 *   NBL_BCAST_AXIS   before 7 with broadcast=1 and an axis: B's dims line up
 *                    with A's from *axis on, i.e. B followed by
 *                    nbl_bcast_axis_units() unit dims, numpy-broadcast with A.
 * *axis is set for NBL_BCAST_AXIS only (may be negative). */
typedef enum { NBL_BCAST_NUMPY, NBL_BCAST_EQUAL, NBL_BCAST_AXIS } nbl_bcast_kind;
nbl_bcast_kind nbl_bcast_legacy(const nbl_node *n, int opset, int64_t *axis);
/* The unit dims B (rank rb) gets at its end to line up with A (rank ra) from
 * `axis` on (negative: counted from A's end): ra - axis - rb, or -1 when the
 * axis does not fit (axis outside A, or B running past A's end). */
int nbl_bcast_axis_units(int ra, int rb, int64_t axis);
/* Strides of a row-major shape. */
void nbl_strides(int rank, const int64_t *dims, int64_t *strides);

/* Normalize axis in [-rank, rank) to [0, rank); -1 if out of range. */
int nbl_norm_axis(int64_t axis, int rank);

/* Window geometry of convolution and pooling, one spatial dim: input length
 * in, kernel k, stride s, dilation d, pads pb (begin) and pe (end); the one
 * formula that the kernels and the shape rules use. Output length with
 * explicit pads (and auto_pad VALID: pads 0); ceil_mode rounds up but never
 * starts a window in the end padding. -1 when the dilated kernel exceeds the
 * padded input. */
static inline int64_t nbl_window_out(int64_t in, int64_t k, int64_t s, int64_t d, int64_t pb,
                                     int64_t pe, int ceil_mode) {
  int64_t span = in + pb + pe - ((k - 1) * d + 1);
  if (span < 0) return -1;
  if (!ceil_mode) return span / s + 1;
  int64_t o = (span + s - 1) / s + 1;
  return (o - 1) * s >= in + pb ? o - 1 : o;
}
/* Output length with auto_pad SAME_UPPER / SAME_LOWER: ceil(in / s). */
static inline int64_t nbl_window_out_same(int64_t in, int64_t s) { return (in + s - 1) / s; }
/* ConvTranspose output length with explicit pads and output_padding op. */
static inline int64_t nbl_window_out_t(int64_t in, int64_t k, int64_t s, int64_t d, int64_t op,
                                       int64_t pb, int64_t pe) {
  return s * (in - 1) + op + (k - 1) * d + 1 - pb - pe;
}

/* ------------------------------------------------------------------ op table */

/* The highest default-domain opset nibble implements: every table line that is
 * correct up to the newest opset says NBL_OPSET_MAX, never a number. */
#define NBL_OPSET_MAX 21

/* Shape rule: from the node's input types (and constant input data where the
 * output shape depends on it) set its output types. The context and the
 * helpers a rule calls are in runtime/core/shape.h. */
typedef struct nbl_shape_ctx nbl_shape_ctx;
typedef nbl_status (*nbl_shape_fn)(nbl_shape_ctx *ctx);

/* Gradient rule: emit the backward nodes of one forward node into the IR.
 * The context is defined by the autodiff pass (training); NULL for now. */
typedef struct nbl_grad_ctx nbl_grad_ctx;
typedef nbl_status (*nbl_grad_fn)(nbl_grad_ctx *ctx);

/* Opset adapter: rewrite one node in the IR from the form its op has before
 * an opset to the form it has from that opset on (or back). The context and
 * the services an adapter calls are in runtime/core/adapt.h; the pass
 * convert-opset (passes/convert_opset.c) is the driver. */
typedef struct nbl_adapt_ctx nbl_adapt_ctx;
typedef nbl_status (*nbl_adapt_fn)(nbl_adapt_ctx *ctx);

/* One step of an op's history: the op's form is the same for every opset in
 * [from, to) and changes at opset `to`. up rewrites a node of the old form
 * into the new one; down rewrites the new form back where that is exact
 * (NULL: no downgrade). attr, input, attr_type and dtype parameterize the
 * shared adapters of adapt.h (which attribute moves to which input). An op's steps
 * are listed oldest first and join up: each step's `to` is the next one's
 * `from`, and the last `to` is the entry's stable_since (or 0: the op ends
 * there, renamed or removed by the last step's up). The array ends with {0}. */
typedef struct nbl_op_adapter {
  int from, to;
  nbl_adapt_fn up, down;
  const char *attr;         /* parameters of the shared adapters */
  int input;
  nbl_attr_type attr_type;
  nbl_dtype dtype;
} nbl_op_adapter;

/* Flags of a table entry (nbl_op_def.flags). */
enum {
  /* outputs depend on a random source: never evaluated ahead of time
   * (fold-constants skips the node) */
  NBL_OPF_RANDOM = 1u << 0,
  /* takes sequence and optional values as inputs (the kernel checks each
   * input's kind); the executor gives every other op tensors only */
  NBL_OPF_VALUES = 1u << 1,
};

typedef struct nbl_op_def {
  const char *domain;   /* "" for ai.onnx */
  const char *name;     /* op_type */
  int since_version;    /* lowest opset version this entry implements */
  int max_version;      /* highest opset version it is correct for (inclusive) */
  nbl_kernel_fn ref;    /* plain C reference kernel (required) */
  nbl_kernel_fn fast;   /* optional fast kernel; must agree with ref */
  nbl_shape_fn shape;   /* shape rule (required; tests/runtime/core/test_optable.c checks) */
  nbl_grad_fn grad;     /* gradient rule, or NULL */
  const char *no_grad;  /* when grad is NULL on purpose: why the op has no gradient */
  unsigned flags;       /* NBL_OPF_* */
  /* ai.onnx ops: the opset from which the op's signature and semantics are
   * unchanged up to NBL_OPSET_MAX (later versions only added types, or
   * attributes whose defaults keep the old meaning), so the opset upgrade
   * keeps such a node as it is; 0 when not established */
  int stable_since;
  /* ai.onnx ops: the op's history before stable_since, as adapters (see
   * nbl_op_adapter); NULL when the op has not changed since its first
   * version nibble converts. Only the entry reaching NBL_OPSET_MAX, or the
   * newest entry of the op, is read. */
  const nbl_op_adapter *adapters;
} nbl_op_def;

/* The usual reasons for .no_grad (an op that is not differentiable). */
#define NBL_NO_GRAD_BOOL "boolean output"
#define NBL_NO_GRAD_INT "integer output (indices, shapes, counts or codes)"
#define NBL_NO_GRAD_CONST "output independent of input values"
/* an old form ONNX removed (Affine, ImageScaler, Crop, ..., MeanVarianceNormalization-1):
 * only in models below opset 10, which build-training converts to opset 13 first */
#define NBL_NO_GRAD_REMOVED "removed from ONNX: build-training converts it into standard ops first"

/* A table line of an ai.onnx op valid from opset `since` to NBL_OPSET_MAX;
 * the other fields follow as designated initializers:
 *   NBL_OP("Relu", 1, .ref = k_relu, .shape = nbl_shape_same, .stable_since = 6), */
#define NBL_OP(op, since, ...) NBL_OP_DEF("", op, since, NBL_OPSET_MAX, __VA_ARGS__)
/* The general form: any domain and opset range. */
#define NBL_OP_DEF(dom, op, since, max, ...) \
  {.domain = (dom), .name = (op), .since_version = (since), .max_version = (max), __VA_ARGS__}

/* Each family file defines its array and count; optable.c lists the families. */
#define NBL_OP_FAMILY(fam)                   \
  extern const nbl_op_def nbl_ops_##fam[];   \
  extern const size_t nbl_ops_##fam##_count;

NBL_OP_FAMILY(elementwise)  /* runtime/ops/elementwise.c: arithmetic, compare, logic, Where, Max/Min/Sum/Mean */
NBL_OP_FAMILY(elementwise_unary) /* runtime/ops/elementwise_unary.c: math functions, activations, Clip */
NBL_OP_FAMILY(reduce)       /* runtime/ops/reduce.c: reductions, softmax, argmax, cumsum, topk */
NBL_OP_FAMILY(loss)         /* runtime/ops/loss.c: NegativeLogLikelihoodLoss, SoftmaxCrossEntropyLoss */
NBL_OP_FAMILY(nn)           /* runtime/ops/nn.c: conv, gemm, matmul, einsum */
NBL_OP_FAMILY(nn_pool)      /* runtime/ops/nn_pool.c: pooling */
NBL_OP_FAMILY(nn_norm)      /* runtime/ops/nn_norm.c: batch, instance, layer norms, LRN */
NBL_OP_FAMILY(quant)        /* runtime/ops/quant.c: quantize/dequantize, integer matmul/conv */
NBL_OP_FAMILY(quant_contrib) /* runtime/ops/quant_contrib.c: com.microsoft QLinearAdd, QLinearConcat, ... */
NBL_OP_FAMILY(shape)        /* runtime/ops/shape.c: reshape, flatten, squeeze, unsqueeze, concat, split */
NBL_OP_FAMILY(shape_strided) /* runtime/ops/shape_strided.c: transpose, slice, expand, tile, depth/space */
NBL_OP_FAMILY(shape_index)  /* runtime/ops/shape_index.c: gather, scatter, nonzero, onehot, ... */
NBL_OP_FAMILY(shape_resize) /* runtime/ops/shape_resize.c: pad, resize, upsample */
NBL_OP_FAMILY(control)      /* runtime/ops/control.c: Constant, Identity, Cast, Shape, Range, ... */
NBL_OP_FAMILY(control_flow) /* runtime/ops/control_flow.c: If, Loop, Scan */
NBL_OP_FAMILY(train)        /* runtime/ops/train.c: optimizers (ai.onnx.preview.training) */
NBL_OP_FAMILY(rnn)          /* runtime/ops/rnn.c: RNN, GRU, LSTM */
NBL_OP_FAMILY(signal)       /* runtime/ops/signal.c: windows, DFT, STFT, MelWeightMatrix */
NBL_OP_FAMILY(misc)         /* runtime/ops/misc.c: Det, detection, GridSample, TfIdfVectorizer */
NBL_OP_FAMILY(random)       /* runtime/ops/random.c: RandomNormal/Uniform(Like), Bernoulli, Multinomial */
NBL_OP_FAMILY(sequence)     /* runtime/ops/sequence.c: sequence and optional values (Sequence*, Optional*) */
NBL_OP_FAMILY(einsum)       /* runtime/ops/einsum.c: Einsum */
NBL_OP_FAMILY(nibble)       /* runtime/ops/nibble.c: ai.nibble ops (QuantizeInt4, QuantizeLog) */
NBL_OP_FAMILY(grad_elementwise) /* runtime/ops/grad_elementwise.c: activation, dropout, broadcast, QuantizeInt4 backward */
NBL_OP_FAMILY(grad_reduce)      /* runtime/ops/grad_reduce.c: softmax and cross-entropy backward */
NBL_OP_FAMILY(grad_shape)       /* runtime/ops/grad_shape.c: Gather, Slice backward */
NBL_OP_FAMILY(grad_conv)        /* runtime/ops/grad_conv.c: Conv, ConvTranspose backward */
NBL_OP_FAMILY(grad_pool)        /* runtime/ops/grad_pool.c: MaxPool, AveragePool backward */
NBL_OP_FAMILY(grad_norm)        /* runtime/ops/grad_norm.c: BatchNorm, LayerNorm backward */
NBL_OP_FAMILY(grad_int4)        /* runtime/ops/grad_int4.c: 4-bit training's backward products in integers */

/* Find the entry for (domain, op_type) valid at `opset`; NULL if none. */
const nbl_op_def *nbl_op_lookup(const char *domain, const char *op_type, int opset);
/* The same, but when no entry covers `opset`, the nearest one: the newest
 * entry older than opset, else the oldest; NULL only for an unknown op. For
 * analyses that tolerate a model importing an opset beyond the table's range
 * (infer-shapes), never for choosing a kernel. */
const nbl_op_def *nbl_op_lookup_nearest(const char *domain, const char *op_type, int opset);

/* Output 0 of c's node <- Add(output 0, R) by the Add op's own kernel at
 * c's opset (broadcasting as Add does; output 0 is reallocated to the
 * broadcast shape): for a fused node whose residual Add could not go into
 * its epilogue. The Add node `add` gives the operands' order (output 0 in
 * the slot of its input `first`) and its attributes; add NULL: output 0
 * first, no attributes. kernel_util.c. */
nbl_status nbl_kctx_add_to_out0(nbl_kctx *c, const nbl_node *add, int first, const nbl_rt_tensor *R);

/* The whole table in family order: entry i for i in [0, nbl_op_count()). */
size_t nbl_op_count(void);
const nbl_op_def *nbl_op_at(size_t i);

/* Per-node kernel cache owned by the executor (e.g. transformed constant
 * weights). A kernel may store malloc'd data with the function that frees it;
 * the engine calls free_fn(data) when it is freed. The same slot comes back
 * on every run of the same node of the same engine. */
typedef struct nbl_kcache {
  void *data;
  void (*free_fn)(void *data);
} nbl_kcache;

/* The calling node's cache slot; NULL outside an executor. */
nbl_kcache *nbl_kctx_cache(nbl_kctx *ctx);

#endif /* NBL_KERNEL_H */
