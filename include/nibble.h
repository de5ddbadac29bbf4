/*
 * nibble.h - the public C API of nibble.
 *
 * nibble loads ONNX models into its own IR, rewrites them with passes (4-bit
 * quantization among them), saves them back as ONNX, and runs them on the CPU.
 *
 * Conventions (every function below follows them):
 *  - Every fallible function returns an nbl_status. NBL_OK is 0. On failure a
 *    human-readable message naming the file, node or tensor at fault is kept
 *    per thread and returned by nbl_last_error() until the next failing call.
 *  - Handles are opaque. An object returned through an `out` pointer belongs to
 *    the caller, who releases it with the matching *_free function. Strings and
 *    arrays returned by accessors are owned by the handle and live as long as it.
 *  - Nothing in the library exits or aborts on bad input.
 */
#ifndef NIBBLE_H
#define NIBBLE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "nibble_types.h" /* nbl_status, nbl_dtype, nbl_last_error, nbl_status_name, nbl_dtype_name */

#ifdef __cplusplus
extern "C" {
#endif

#define NBL_VERSION_STRING "0.1.0"

/* Library version, e.g. "0.1.0". */
const char *nbl_version(void);

/* The kernels the fast path uses on this machine, one line, for example
 * "FP32 products: OpenBLAS 0.3.21 (Haswell kernels); INT4: avx512-vnni".
 * OpenBLAS picks its kernels at load time from the CPU, or from the
 * OPENBLAS_CORETYPE environment variable when that is set. */
const char *nbl_kernel_info(void);

/* ------------------------------------------------------------------------ */
/* Models                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct nbl_model nbl_model;

/* Load an ONNX model file. External data files are resolved relative to the
 * model's folder, memory-mapped, and must not escape that folder. The model
 * is verified (see nbl_model_verify) before it is returned.
 * On success *out is a new model owned by the caller (nbl_model_free). */
nbl_status nbl_model_load(const char *path, nbl_model **out);

/* Load from a buffer holding a serialized ModelProto. `name` is used in
 * messages; `base_dir` (may be NULL: no external data allowed) is where
 * external data files are looked up. The buffer is not retained. */
nbl_status nbl_model_load_buffer(const void *data, size_t len, const char *name,
                                 const char *base_dir, nbl_model **out);

/* Where tensor data goes when a model is saved. */
typedef enum nbl_external_mode {
  NBL_EXTERNAL_KEEP = 0,   /* tensors loaded from external data stay external (same
                              location names, rewritten beside the new file); the rest inline */
  NBL_EXTERNAL_NONE = 1,   /* every tensor inline */
  NBL_EXTERNAL_ALL = 2     /* every tensor of at least `threshold` bytes goes to `location` */
} nbl_external_mode;

typedef struct nbl_save_options {
  nbl_external_mode external;
  const char *location; /* file name (relative to the saved model's folder) for NBL_EXTERNAL_ALL */
  size_t threshold;     /* bytes; 0 means 1024 */
} nbl_save_options;

/* Save a model as an ONNX file. `opt` may be NULL (NBL_EXTERNAL_KEEP).
 * Nothing is written if the model does not verify. */
nbl_status nbl_model_save(const nbl_model *m, const char *path, const nbl_save_options *opt);

/* Serialize to a malloc'd buffer (all tensors inline); caller frees *data. */
nbl_status nbl_model_save_buffer(const nbl_model *m, void **data, size_t *len);

/* Check the structural rules of ONNX: inputs defined before use, no cycles,
 * unique names, consistent types, subgraph scoping, training bindings. */
nbl_status nbl_model_verify(const nbl_model *m);

/* Release a model and everything it owns. NULL is allowed. */
void nbl_model_free(nbl_model *m);

/* ------------------------------------------------------------------------ */
/* Printing                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum nbl_format {
  NBL_FORMAT_TEXT = 0, /* ONNX textual syntax, as read by onnx.parser */
  NBL_FORMAT_DOT = 1,  /* Graphviz */
  NBL_FORMAT_JSON = 2
} nbl_format;

typedef struct nbl_print_options {
  int full; /* 1: print every value of every initializer; 0: summarize large ones */
} nbl_print_options;

/* Print the model in the given format. `opt` may be NULL. */
nbl_status nbl_model_print(const nbl_model *m, nbl_format fmt, const nbl_print_options *opt,
                           FILE *out);

/* Write what differs between models a and b, one line per difference
 * ("+ node 'n' (Op)", "- initializer 'w'", "~ node 'c': attribute pads: [0, 0] -> [1, 1]",
 * "~ value renamed 'x' -> 'y'", "~ initializer 'w': 3 of 10 values differ, max |a-b| = 0.5").
 * Nodes are matched by name when every name is unique, else by op type and
 * first output. *n_differences (may be NULL) gets the line count. */
nbl_status nbl_model_diff(const nbl_model *a, const nbl_model *b, FILE *out, int *n_differences);

/* Print a summary for people: ir/opset versions, inputs and outputs with
 * types, op histogram, parameter count and bytes. */
nbl_status nbl_model_print_info(const nbl_model *m, FILE *out);


/* ------------------------------------------------------------------------ */
/* Passes                                                                    */
/* ------------------------------------------------------------------------ */

typedef struct nbl_pipeline nbl_pipeline;

/* The standard cleanup pipeline; the pass name "default" in a pipeline stands for it. */
#define NBL_DEFAULT_PIPELINE "infer-shapes,fold-constants,eliminate-identity,dce"

/* Parse a pipeline: comma-separated pass names, each optionally followed by
 * options in braces: "infer-shapes,dce,quantize-int4{weights=sawb,skip-first-last=1}".
 * Unknown passes or options are an error listing what exists. */
nbl_status nbl_pipeline_parse(const char *spec, nbl_pipeline **out);
void nbl_pipeline_free(nbl_pipeline *p);

typedef struct nbl_pipeline_options {
  int verify_each;       /* run the verifier after every pass; a failure names the pass */
  int print_before_all;  /* print the IR (text syntax) before every pass */
  int print_after_all;   /* ... after every pass */
  int print_changed;     /* ... after every pass that changed something */
  const char *print_before; /* comma-separated pass names, or NULL */
  const char *print_after;  /* comma-separated pass names, or NULL */
  const char *dump_dir;  /* write NN-<pass>.onnxtxt/.dot/.onnx after each pass (00-input first) */
  int pass_stats;        /* print a table: time, nodes/values added/removed, initializer bytes */
  FILE *out;             /* where printing goes (NULL: stdout) */
  FILE *log;             /* where pass summaries go (NULL: stderr) */
} nbl_pipeline_options;

/* Run the pipeline on m in place. `opt` may be NULL. On failure the model may
 * be partly rewritten; the message names the failing pass. */
nbl_status nbl_pipeline_run(const nbl_pipeline *p, nbl_model *m, const nbl_pipeline_options *opt);

/* List every pass with its description and options. */
void nbl_passes_print(FILE *out);

/* ------------------------------------------------------------------------ */
/* Op table                                                                  */
/* ------------------------------------------------------------------------ */

/* One entry of the op table: what nibble implements for one op over one range
 * of opset versions (`nibble ops`). Strings are static. */
typedef struct nbl_op_info {
  const char *domain;  /* "" for ai.onnx */
  const char *name;    /* op type */
  int since_version;   /* the opset range this entry implements, inclusive */
  int max_version;
  int shape_rule;      /* 1: infer-shapes has a rule for it */
  int grad_rule;       /* 1: it has a gradient rule */
  const char *no_grad; /* when it is not differentiable: why; else NULL */
  int fast_kernel;     /* 1: an optimized kernel beside the reference one */
  int stable_since;    /* ai.onnx: the opset from which its meaning is unchanged
                          up to the highest implemented one; 0 when not established */
  int convert_from;    /* ai.onnx: the oldest opset of the op that convert-opset converts
                          from (its adapters' history); 0 when none is known */
  int random;          /* 1: its outputs are random */
} nbl_op_info;

/* Number of entries in the op table. */
int nbl_op_table_size(void);

/* Entry i (0 <= i < nbl_op_table_size()) into *out; NBL_ERR_INVALID_ARGUMENT
 * when i is out of range or out is NULL. */
nbl_status nbl_op_table_entry(int i, nbl_op_info *out);

/* ------------------------------------------------------------------------ */
/* Runtime                                                                   */
/* ------------------------------------------------------------------------ */

#define NBL_MAX_DIMS 8

/* A tensor exchanged with the runtime: dense, row-major, native-endian
 * element data (INT4/UINT4 packed two per byte, low nibble first; BOOL one
 * byte each; STRING: data is a char *[numel] of NUL-terminated strings). */
typedef struct nbl_host_tensor {
  const char *name; /* graph input/output name */
  nbl_dtype dtype;
  int rank;
  int64_t dims[NBL_MAX_DIMS];
  void *data;
  size_t nbytes; /* bytes at data */
} nbl_host_tensor;

typedef struct nbl_session nbl_session;

/* Called after every node for each output it produced (for dumping
 * intermediates). The tensor is only valid during the call. */
typedef void (*nbl_session_value_fn)(void *user, const nbl_host_tensor *t);

typedef struct nbl_session_options {
  int threads;   /* worker threads for kernels; <= 0: one per online core */
  int reference; /* 1: plain C reference kernels only (no fast paths) */
  nbl_session_value_fn on_value; /* may be NULL */
  void *user;
  int profile;   /* 1: time every node of the main graph (nbl_session_print_profile) */
} nbl_session_options;

/* Plan the model's main graph for execution: resolve a kernel for every node
 * (a node without one fails here with NBL_ERR_UNSUPPORTED naming the node, op,
 * domain and opset), order the nodes, plan memory. `opt` may be NULL
 * (defaults). The model is not copied: it must outlive the session and stay
 * unmodified. On success *out belongs to the caller (nbl_session_free). */
nbl_status nbl_session_create(const nbl_model *m, const nbl_session_options *opt,
                              nbl_session **out);

/* Inputs the caller must feed (graph inputs without an initializer) and all
 * graph outputs, in graph order. Names are owned by the model. The type of an
 * input (element type, rank, dims with -1 for unknown) is written to *info,
 * whose data is NULL. Return NULL / fail for an out-of-range index. */
int nbl_session_input_count(const nbl_session *s);
const char *nbl_session_input_name(const nbl_session *s, int i);
nbl_status nbl_session_input_info(const nbl_session *s, int i, nbl_host_tensor *info);
int nbl_session_output_count(const nbl_session *s);
const char *nbl_session_output_name(const nbl_session *s, int i);

/* Run once. `inputs` are matched by name (every feed must be given; an input
 * with an initializer may be overridden); their data is read, not kept, and
 * must stay valid during the call. On success *outputs (may be NULL) points
 * to n_outputs views in graph order, owned by the session and valid until the
 * next run or nbl_session_free. On failure the message names the node. */
nbl_status nbl_session_run(nbl_session *s, int n_inputs, const nbl_host_tensor *inputs,
                           const nbl_host_tensor **outputs);

/* Copy output i of the last run into caller memory of `cap` bytes (fails
 * with NBL_ERR_INVALID_ARGUMENT if too small). Not for STRING outputs. */
nbl_status nbl_session_copy_output(const nbl_session *s, int i, void *buf, size_t cap);

/* Release a session and every output view it holds. NULL is allowed. */
void nbl_session_free(nbl_session *s);

/* With nbl_session_options.profile set: print the wall time spent in each
 * node of the main graph over the runs since the session was created or the
 * profile was last reset, summed by op type (a fused INT4 step counts under
 * its fused op), then the `top` slowest nodes (top <= 0: none). Fails with
 * NBL_ERR_INVALID_ARGUMENT if the session was created without profiling. */
nbl_status nbl_session_print_profile(const nbl_session *s, FILE *out, int top);

/* Forget the times gathered so far (for example after warm-up runs). */
void nbl_session_reset_profile(nbl_session *s);

/* Read a tensor file: NumPy .npy (v1-v3, little-endian, C order) or a
 * serialized ONNX TensorProto (.pb, or any other name). On success *out holds
 * malloc'd data and name (NULL if none) released by nbl_host_tensor_free. */
nbl_status nbl_tensor_read(const char *path, nbl_host_tensor *out);
/* Write a tensor: .npy when path ends in ".npy", otherwise a TensorProto
 * named t->name. */
nbl_status nbl_tensor_write(const char *path, const nbl_host_tensor *t);
/* Release data and name of a tensor filled by nbl_tensor_read. */
void nbl_host_tensor_free(nbl_host_tensor *t);

#ifdef __cplusplus
}
#endif
#endif /* NIBBLE_H */
