/*
 * ir.h - nibble's intermediate representation of an ONNX model.
 *
 * The IR knows nothing of protobuf or kernels (libc only). A graph holds two
 * arrays, values and nodes, linked by integer ids (nbl_id). Each value knows
 * its producer and its consumers; each node lists its input and output value
 * ids. Deleting is "mark dead, then one sweep" (nbl_graph_compact).
 *
 * Memory: all strings, attributes, dims and tensors headers come from the
 * model's arena and live until nbl_model_free. The growable arrays (values,
 * nodes, consumer lists) are realloc'd: a pointer to a value or node is valid
 * only until the next nbl_graph_add_value / nbl_graph_add_node on that graph,
 * so hold ids, not pointers, across insertions. Tensor payloads are held by
 * refcounted nbl_buffer objects (malloc'd memory, a taken-over protobuf
 * buffer, or a memory-mapped file) so loading never copies them twice.
 *
 * Subgraphs (If/Loop/Scan bodies) are graphs whose `parent` is the enclosing
 * graph. A name a subgraph uses but does not define is a value with the flag
 * NBL_VAL_OUTER: it must resolve, by name, in an enclosing graph.
 */
#ifndef NBL_IR_H
#define NBL_IR_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nibble_types.h"

typedef struct nbl_model nbl_model; /* opaque in nibble.h; defined below */
typedef int32_t nbl_id;
#define NBL_NONE ((nbl_id)-1)

typedef struct nbl_graph nbl_graph;
typedef struct nbl_arena nbl_arena;

/* ------------------------------------------------------------------ errors */

/* Set this thread's error message (printf-style) and return `st`. */
nbl_status nbl_errorf(nbl_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepend "prefix: " to the current message (used to add file/node context). */
void nbl_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Write the message (printf-style) into err[0..errlen) when err and errlen
 * are set, and return `st`: how decoders that report into a caller's buffer
 * (the number formats' attribute decoders) fail, leaving the thread's
 * message alone. */
nbl_status nbl_errbuf(char *err, size_t errlen, nbl_status st, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* ------------------------------------------------------------------ arena */

nbl_arena *nbl_arena_new(void);
void nbl_arena_free(nbl_arena *a);
/* Zeroed memory, 16-byte aligned; NULL only when out of memory. */
void *nbl_arena_alloc(nbl_arena *a, size_t n);
/* Copy of s (NULL stays NULL). */
char *nbl_arena_strdup(nbl_arena *a, const char *s);
char *nbl_arena_strndup(nbl_arena *a, const char *s, size_t n);
void *nbl_arena_memdup(nbl_arena *a, const void *p, size_t n);

/* ------------------------------------------------------------------ dtypes */

/* Bits per element (4 for INT4/UINT4, 0 for STRING/UNDEFINED). */
int nbl_dtype_bits(nbl_dtype dt);
/* Bytes needed for n elements (INT4: (n+1)/2). 0 for STRING. */
size_t nbl_dtype_nbytes(nbl_dtype dt, int64_t n);
bool nbl_dtype_valid(int v);
/* Parse an ONNX spelling ("float", "int64", "float16", "bfloat16", "int4"...). */
nbl_dtype nbl_dtype_from_name(const char *name);
float nbl_half_to_float(uint16_t h);
uint16_t nbl_float_to_half(float f);
float nbl_bf16_to_float(uint16_t h);
uint16_t nbl_float_to_bf16(float f); /* round to nearest even */

/* ------------------------------------------------------------------ buffers */

/* A refcounted byte buffer. `release(base, size, ctx)` runs when the count drops to 0. */
typedef struct nbl_buffer {
  int refcount;
  void *base;
  size_t size;
  void (*release)(void *base, size_t size, void *ctx);
  void *ctx;
} nbl_buffer;

/* Wrap malloc'd memory (released with free). Takes ownership even on failure. */
nbl_buffer *nbl_buffer_from_malloc(void *p, size_t size);
nbl_buffer *nbl_buffer_new(void *base, size_t size, void (*release)(void *, size_t, void *), void *ctx);
nbl_buffer *nbl_buffer_ref(nbl_buffer *b);
void nbl_buffer_unref(nbl_buffer *b);

/* ------------------------------------------------------------------ tensors */

typedef struct nbl_tensor {
  char *name;
  char *doc_string;
  nbl_dtype dtype;
  int rank;
  int64_t *dims;
  /* Payload in ONNX raw_data layout: little-endian, row-major, INT4/UINT4
   * packed two per byte low nibble first, BOOL one byte each. Not for STRING. */
  const void *data;
  size_t nbytes;
  nbl_buffer *buf; /* holds `data` alive; NULL when nbytes == 0 */
  /* STRING tensors only: n_strings byte strings (may hold NULs). */
  int64_t n_strings;
  char **strings;
  size_t *string_lens;
  /* Where the data came from, if it was external; kept so save can write it back. */
  char *ext_location;
  int64_t ext_offset, ext_length;
} nbl_tensor;

/* Product of dims, -1 on overflow or negative dim. */
int64_t nbl_shape_numel(int rank, const int64_t *dims);
int64_t nbl_tensor_numel(const nbl_tensor *t);
/* Checks that t can be handed out as a flat tensor of at most max_rank dims:
 * a valid shape, a supported element type, and data to match (its byte count,
 * or for STRING its string count). *numel gets the element count. Errors
 * name the tensor; the parser's tensor files and the runtime's initializers
 * both go through here. */
nbl_status nbl_tensor_check_data(const nbl_tensor *t, int max_rank, int64_t *numel);
/* STRING tensor t (checked by nbl_tensor_check_data, numel elements) as a
 * malloc'd array of malloc'd NUL-terminated copies of its strings, which the
 * caller frees. */
nbl_status nbl_tensor_dup_strings(const nbl_tensor *t, int64_t numel, char ***out);
/* A new tensor in the model's arena; data is copied into a new malloc'd buffer
 * (data may be NULL: zero-filled). */
nbl_tensor *nbl_tensor_new(nbl_arena *a, const char *name, nbl_dtype dt, int rank,
                           const int64_t *dims, const void *data);
/* Same but adopts an existing buffer reference (takes one ref). */
nbl_tensor *nbl_tensor_new_buf(nbl_arena *a, const char *name, nbl_dtype dt, int rank,
                               const int64_t *dims, nbl_buffer *buf, const void *data,
                               size_t nbytes);
/* Element i as double (ints, floats, halfs, bool, int4). 0 for STRING. */
double nbl_tensor_get_f64(const nbl_tensor *t, int64_t i);
int64_t nbl_tensor_get_i64(const nbl_tensor *t, int64_t i);

/* ------------------------------------------------------------------ types */

typedef enum nbl_type_kind {
  NBL_TYPE_NONE = 0, /* unknown / not given */
  NBL_TYPE_TENSOR,
  NBL_TYPE_SPARSE_TENSOR,
  NBL_TYPE_SEQUENCE,
  NBL_TYPE_MAP,
  NBL_TYPE_OPTIONAL
} nbl_type_kind;

typedef struct nbl_dim {
  int64_t value; /* >= 0 known; -1 unknown */
  char *param;   /* symbolic name, or NULL */
  char *denotation;
} nbl_dim;

typedef struct nbl_type {
  nbl_type_kind kind;
  nbl_dtype elem; /* tensor / sparse: element type; map: key type */
  int rank;       /* -1: shape not given */
  nbl_dim *dims;
  struct nbl_type *inner; /* sequence/optional element type; map value type */
  char *denotation;
} nbl_type;

/* Deep copy into arena. */
void nbl_type_copy(nbl_arena *a, nbl_type *dst, const nbl_type *src);
bool nbl_type_equal(const nbl_type *x, const nbl_type *y);
/* Set a tensor type with fully known dims. */
void nbl_type_set_tensor(nbl_arena *a, nbl_type *t, nbl_dtype dt, int rank, const int64_t *dims);

/* ------------------------------------------------------------------ attributes */

typedef enum nbl_attr_type {
  NBL_ATTR_UNDEFINED = 0,
  NBL_ATTR_FLOAT = 1,
  NBL_ATTR_INT = 2,
  NBL_ATTR_STRING = 3,
  NBL_ATTR_TENSOR = 4,
  NBL_ATTR_GRAPH = 5,
  NBL_ATTR_FLOATS = 6,
  NBL_ATTR_INTS = 7,
  NBL_ATTR_STRINGS = 8,
  NBL_ATTR_TENSORS = 9,
  NBL_ATTR_GRAPHS = 10,
  NBL_ATTR_SPARSE_TENSOR = 11,
  NBL_ATTR_SPARSE_TENSORS = 12,
  NBL_ATTR_TYPE_PROTO = 13,
  NBL_ATTR_TYPE_PROTOS = 14
} nbl_attr_type;

/* Bytes of a protobuf message the IR keeps verbatim (does not interpret). */
typedef struct nbl_blob {
  uint8_t *data;
  size_t len;
} nbl_blob;

typedef struct nbl_attr {
  char *name;
  nbl_attr_type type;
  char *doc_string;
  char *ref_attr_name; /* inside functions */
  float f;
  int64_t i;
  char *s; /* STRING: bytes, NUL-terminated for convenience; s_len is the length */
  size_t s_len;
  nbl_tensor *t;
  nbl_graph *g;
  int n; /* element count of the list forms */
  float *floats;
  int64_t *ints;
  char **strings;
  size_t *string_lens;
  nbl_tensor **tensors;
  nbl_graph **graphs;
  nbl_type *types;   /* TYPE_PROTO (n=1) / TYPE_PROTOS */
  nbl_blob *sparse;  /* SPARSE_TENSOR (n=1) / SPARSE_TENSORS: packed SparseTensorProto */
} nbl_attr;

/* ------------------------------------------------------------------ nodes and values */

typedef struct nbl_node {
  char *name;
  char *op_type;
  char *domain; /* "" for the default ai.onnx domain (never NULL) */
  char *doc_string;
  int n_inputs;
  nbl_id *inputs; /* NBL_NONE for an omitted optional input ("") */
  int n_outputs;
  nbl_id *outputs; /* NBL_NONE for an omitted optional output */
  int n_attrs;
  nbl_attr *attrs;
  bool dead;
} nbl_node;

enum {
  NBL_VAL_INPUT = 1u << 0,      /* listed in graph.input */
  NBL_VAL_OUTPUT = 1u << 1,     /* listed in graph.output */
  NBL_VAL_OUTER = 1u << 2,      /* defined in an enclosing graph (captured by name) */
  NBL_VAL_VALUE_INFO = 1u << 3  /* listed in graph.value_info */
};

typedef struct nbl_value {
  char *name;
  nbl_type type;
  char *doc_string;
  nbl_id producer; /* node id, NBL_NONE for inputs/initializers/outer */
  int n_consumers;
  int cap_consumers;
  nbl_id *consumers; /* node ids, one entry per use (a node using it twice appears twice) */
  nbl_tensor *init;  /* initializer payload, or NULL */
  unsigned flags;
  bool dead;
} nbl_value;

struct nbl_graph {
  struct nbl_model *model;
  struct nbl_graph *parent; /* enclosing graph for subgraphs, NULL at top level */
  char *name;
  char *doc_string;
  nbl_value *values;
  int n_values, cap_values;
  nbl_node *nodes;
  int n_nodes, cap_nodes;
  nbl_id *inputs; /* ordered graph.input */
  int n_inputs, cap_inputs;
  nbl_id *outputs; /* ordered graph.output */
  int n_outputs, cap_outputs;
  nbl_id *initializers; /* ordered graph.initializer */
  int n_initializers, cap_initializers;
  nbl_id *value_infos; /* ordered graph.value_info */
  int n_value_infos, cap_value_infos;
  nbl_blob *sparse_initializers; /* SparseTensorProto, verbatim */
  int n_sparse_initializers;
  nbl_blob *quantization_annotation; /* TensorAnnotation, verbatim */
  int n_quantization_annotation;
  /* name -> value id index (open addressing) */
  nbl_id *index;
  int index_cap;
  struct nbl_graph *next_owned; /* the model's list of every graph it owns */
};

typedef struct nbl_opset {
  char *domain; /* "" for ai.onnx */
  int64_t version;
} nbl_opset;

typedef struct nbl_kv {
  char *key;
  char *value;
} nbl_kv;

typedef struct nbl_training_info {
  nbl_graph *initialization; /* may be NULL */
  nbl_graph *algorithm;      /* may be NULL */
  int n_init_binding;
  nbl_kv *init_binding; /* key: initializer name, value: initialization output */
  int n_update_binding;
  nbl_kv *update_binding; /* key: initializer name, value: algorithm output */
} nbl_training_info;

struct nbl_model {
  nbl_arena *arena;
  int64_t ir_version;
  char *producer_name, *producer_version, *domain, *doc_string;
  int64_t model_version;
  int n_opsets;
  nbl_opset *opsets;
  int n_metadata;
  nbl_kv *metadata;
  nbl_graph *graph;
  int n_training;
  nbl_training_info *training;
  int n_functions;
  nbl_blob *functions; /* FunctionProto, verbatim */
  char *path; /* file it was loaded from, or NULL; used in messages */
  char *dir;  /* folder for external data, or NULL */
  nbl_graph *owned_graphs; /* every graph of this model, for freeing */
};

/* ------------------------------------------------------------------ building */

/* An empty model (ir_version 10, no opsets, an empty main graph named "main"). */
nbl_model *nbl_model_new(void);
/* Release a model and everything it owns (NULL allowed); also in nibble.h. */
void nbl_model_free(nbl_model *m);
/* Check the structural rules of ONNX (ir/verify.c); also in nibble.h. */
nbl_status nbl_model_verify(const nbl_model *m);
/* Version of `domain` ("" or "ai.onnx" for the default) imported by the model, or 0. */
int64_t nbl_model_opset(const nbl_model *m, const char *domain);
nbl_status nbl_model_set_opset(nbl_model *m, const char *domain, int64_t version);
/* A name used in messages: the file path, or "<model>". */
const char *nbl_model_label(const nbl_model *m);

/* A new empty graph owned by m; parent is the enclosing graph (NULL at top level). */
nbl_graph *nbl_graph_new(nbl_model *m, nbl_graph *parent, const char *name);

/* Add a value with a unique name (NULL or "" -> a fresh name "_v<N>").
 * Returns NBL_NONE if the name is already taken in this graph (message set). */
nbl_id nbl_graph_add_value(nbl_graph *g, const char *name);
/* A name not used in g (nor its enclosing graphs) starting with `hint`. */
char *nbl_graph_unique_name(nbl_graph *g, const char *hint);
/* Value id by name in this graph only, or NBL_NONE. Dead values are not found. */
nbl_id nbl_graph_find(const nbl_graph *g, const char *name);
/* Rename a value (fails if the new name is taken). */
nbl_status nbl_value_rename(nbl_graph *g, nbl_id v, const char *name);

/* Add a node; inputs/outputs are value ids (NBL_NONE for omitted optional ones).
 * Sets producers and consumers. Returns the node id, or NBL_NONE if an output
 * already has a producer (message set). */
nbl_id nbl_graph_add_node(nbl_graph *g, const char *op_type, const char *domain,
                          const char *name, int n_in, const nbl_id *in, int n_out,
                          const nbl_id *out);
/* Replace input `idx` of node n (keeps consumer lists right). */
void nbl_node_set_input(nbl_graph *g, nbl_id n, int idx, nbl_id v);
/* Make every use of `from` (node inputs and graph outputs) use `to` instead. */
void nbl_value_replace_uses(nbl_graph *g, nbl_id from, nbl_id to);
/* Mark a node dead and unlink it from its inputs' consumer lists and outputs' producer. */
void nbl_node_kill(nbl_graph *g, nbl_id n);
/* Drop dead nodes and dead values and renumber ids. Values that are unused,
 * unproduced and not graph inputs/outputs/initializers are NOT removed here. */
void nbl_graph_compact(nbl_graph *g);

void nbl_graph_add_input(nbl_graph *g, nbl_id v);
/* The graph's inputs as an ONNX file lists them: its inputs, then, in the
 * main graph of a model below IR 4 (which had to list every initializer as
 * an input; the loader takes them out, since they are constants there), its
 * live initializers. *ids is malloc'ed (free it); returns the count, or -1
 * when out of memory. */
int nbl_graph_file_inputs(const nbl_graph *g, nbl_id **ids);
/* Take the initializers out of g's inputs (they become constants; the other
 * inputs keep their order). Returns how many left. The loader does it for
 * IR < 4 models, the pass constant-initializers on request. */
int nbl_graph_drop_init_inputs(nbl_graph *g);
void nbl_graph_add_output(nbl_graph *g, nbl_id v);
/* Attach initializer data to a value (appended to the initializer list). */
void nbl_graph_set_initializer(nbl_graph *g, nbl_id v, nbl_tensor *t);
void nbl_graph_add_value_info(nbl_graph *g, nbl_id v);

static inline nbl_value *nbl_val(const nbl_graph *g, nbl_id v) { return &g->values[v]; }
static inline nbl_node *nbl_nod(const nbl_graph *g, nbl_id n) { return &g->nodes[n]; }

/* ------------------------------------------------------------------ attributes */

/* Lookup by name, NULL if absent. */
const nbl_attr *nbl_node_attr(const nbl_node *n, const char *name);
/* Attribute `name` of n into *out (NULL when absent); NBL_OK, or
 * NBL_ERR_INVALID_MODEL with "attribute 'NAME' must be TYPE, got TYPE"
 * written into err (nbl_errbuf) when it has another type than `want`. */
nbl_status nbl_node_attr_typed(const nbl_node *n, const char *name, nbl_attr_type want,
                               const nbl_attr **out, char *err, size_t errlen);
int64_t nbl_attr_int(const nbl_node *n, const char *name, int64_t dflt);
float nbl_attr_float(const nbl_node *n, const char *name, float dflt);
const char *nbl_attr_string(const nbl_node *n, const char *name, const char *dflt);
/* INTS as array; *count set (0 when absent, returns NULL). */
const int64_t *nbl_attr_ints(const nbl_node *n, const char *name, int *count);
const float *nbl_attr_floats(const nbl_node *n, const char *name, int *count);

/* Append a new, zeroed attribute of the given type to node n and return it
 * (replaces an existing one of the same name). Fill the fields yourself
 * (arrays from the model arena) or use the helpers below. */
nbl_attr *nbl_node_add_attr(nbl_graph *g, nbl_id n, const char *name, nbl_attr_type type);
void nbl_node_set_attr_int(nbl_graph *g, nbl_id n, const char *name, int64_t v);
void nbl_node_set_attr_float(nbl_graph *g, nbl_id n, const char *name, float v);
void nbl_node_set_attr_string(nbl_graph *g, nbl_id n, const char *name, const char *v);
void nbl_node_set_attr_ints(nbl_graph *g, nbl_id n, const char *name, int count, const int64_t *v);
void nbl_node_set_attr_floats(nbl_graph *g, nbl_id n, const char *name, int count, const float *v);
void nbl_node_set_attr_tensor(nbl_graph *g, nbl_id n, const char *name, nbl_tensor *t);
void nbl_node_set_attr_graph(nbl_graph *g, nbl_id n, const char *name, nbl_graph *sub);

const char *nbl_attr_type_name(nbl_attr_type t);

/* ------------------------------------------------------------------ analysis */

/* Node ids in a topological order (dead nodes skipped): a node follows the
 * producers of its inputs and of the values its subgraphs capture from g (at
 * any depth). Returns the count, or -1 if there is a cycle (message names a
 * node on it). *order is malloc'd. */
int nbl_graph_topo_order(const nbl_graph *g, nbl_id **order);

/* Verify a graph (and its subgraphs), see nbl_model_verify. `what` names it in messages. */
nbl_status nbl_graph_verify(const nbl_graph *g, const char *what);

/* Structural equality of two models (for round-trip tests): every field the IR
 * holds. On difference returns false and writes a description into why. */
bool nbl_model_equal(const nbl_model *a, const nbl_model *b, char *why, size_t why_len);

#endif /* NBL_IR_H */
