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
 * "FP32 products: OpenBLAS 0.3.21 (Haswell kernels); FP32 convolutions:
 * avx512; INT4: avx512vnni", with "; ISA cap: avx2 (NBL_ISA)" appended when
 * a cap (nbl_isa) keeps the fast paths below what the CPU has. OpenBLAS picks
 * its kernels at load time from the CPU, or from the OPENBLAS_CORETYPE
 * environment variable when that is set. The string is valid until the next
 * call on the same thread. */
const char *nbl_kernel_info(void);

/* The OPENBLAS_CORETYPE this CPU wants when OpenBLAS did not recognize it:
 * an OpenBLAS older than the CPU (Debian 12's 0.3.21 on Intel family 6 model
 * 207, for one) falls back to its Prescott kernels, SSE3 without FMA, which
 * run nibble's FP32 products slower (2.5x on LeNet-5's) and round every product
 * apart from its sum (training then drifts from an FMA implementation such
 * as PyTorch's by more than their rounding). Returns "SkylakeX" on a CPU
 * with AVX-512 (F, BW, DQ, VL), "Haswell" with AVX2 and FMA, when OpenBLAS
 * runs that fallback and OPENBLAS_CORETYPE is unset; NULL otherwise (and
 * without OpenBLAS). OpenBLAS reads the variable only when it loads: a
 * program applies the hint by setting it and executing itself again, as the
 * nibble command does before anything else. */
const char *nbl_blas_coretype_hint(void);

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

/* Number of training_info entries: 0 for an inference model, 1 for a
 * training model (nbl_train_session_create). */
int nbl_model_training_count(const nbl_model *m);

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

/* Create the folder `path` and any missing parent (as `mkdir -p`); an
 * existing folder is fine. The dump options (dump_dir above, `nibble run
 * --dump-tensors`) go through it. The message names the path that could
 * not be made. */
nbl_status nbl_make_dirs(const char *path);

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

/* What a value exchanged with the runtime holds: a tensor, or (ONNX's
 * sequence and optional types) a list of values. */
typedef enum nbl_value_kind {
  NBL_VALUE_TENSOR = 0,   /* a tensor (the default of a zeroed struct) */
  NBL_VALUE_SEQUENCE = 1, /* a sequence: n_items values, each a tensor of dtype */
  NBL_VALUE_OPTIONAL = 2  /* an optional: n_items 0 (empty) or 1 (items[0], a tensor or a sequence) */
} nbl_value_kind;

/* A tensor exchanged with the runtime: dense, row-major, native-endian
 * element data (INT4/UINT4 packed two per byte, low nibble first; BOOL one
 * byte each; STRING: data is a char *[numel] of NUL-terminated strings).
 * A sequence or an optional (kind != NBL_VALUE_TENSOR) has no data of its
 * own (rank 0, data NULL, nbytes 0): its elements are items[0..n_items),
 * dtype the element type of its tensors (NBL_DT_UNDEFINED when unknown). */
typedef struct nbl_host_tensor {
  const char *name; /* graph input/output name */
  nbl_dtype dtype;
  int rank;
  int64_t dims[NBL_MAX_DIMS];
  void *data;
  size_t nbytes; /* bytes at data */
  nbl_value_kind kind;
  int n_items;
  struct nbl_host_tensor *items; /* their names are NULL */
} nbl_host_tensor;

typedef struct nbl_session nbl_session;

/* Called after every node for each output it produced (for dumping
 * intermediates). The tensor is only valid during the call. */
typedef void (*nbl_session_value_fn)(void *user, const nbl_host_tensor *t);

/* The highest instruction set the fast paths may use. NBL_ISA_SCALAR: the
 * x86-64 baseline only (as on a CPU without AVX); NBL_ISA_AVX2: AVX, AVX2 and
 * FMA, no AVX-512; NBL_ISA_AVX512: all the CPU has but the AMX tiles;
 * NBL_ISA_AMX: all the CPU has. A level the CPU lacks is never used. The
 * environment variable NBL_ISA=scalar|avx2|avx512|amx caps every
 * session of the process (NBL_INT4_ISA=scalar|avx2|vnni, its older name, when
 * NBL_ISA is not set); a session's own cap can only lower it. OpenBLAS is not
 * capped (OPENBLAS_CORETYPE does that). Outputs do not depend on the cap for
 * INT4 layers; FP32 ones may differ in rounding (summation order). */
typedef enum nbl_isa {
  NBL_ISA_DEFAULT = 0, /* no cap of the session's own */
  NBL_ISA_SCALAR = 1,
  NBL_ISA_AVX2 = 2,
  NBL_ISA_AVX512 = 3,
  NBL_ISA_AMX = 4
} nbl_isa;

typedef struct nbl_session_options {
  int threads;   /* worker threads for kernels; <= 0: one per online core */
  int reference; /* 1: plain C reference kernels only (no fast paths) */
  nbl_session_value_fn on_value; /* may be NULL */
  void *user;
  int profile;   /* 1: time every node of the main graph (nbl_session_print_profile) */
  nbl_isa isa;   /* cap on the instruction set of the fast paths (NBL_ISA_DEFAULT: none) */
  /* random ops without a seed attribute (RandomNormal, RandomUniform, their
   * *Like forms, Bernoulli, Multinomial) draw from the session's random
   * stream, which advances with every node run: fresh values on every run.
   * 0: the stream's key is fresh from the clock (every session differs);
   * else the key, so a new session with the same seed repeats the draws run
   * for run. A node with a seed attribute draws the same values every run. */
  uint64_t seed;
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
 * whose data is NULL; for a sequence or optional input, info->kind says so
 * and dtype is its tensors' element type when declared. Return NULL / fail for an out-of-range index. */
int nbl_session_input_count(const nbl_session *s);
const char *nbl_session_input_name(const nbl_session *s, int i);
nbl_status nbl_session_input_info(const nbl_session *s, int i, nbl_host_tensor *info);
int nbl_session_output_count(const nbl_session *s);
const char *nbl_session_output_name(const nbl_session *s, int i);
/* The declared type of output i, written to *info as nbl_session_input_info
 * writes an input's (kind, element type, rank -1 when unknown or not a tensor,
 * dims -1 when unknown). */
nbl_status nbl_session_output_info(const nbl_session *s, int i, nbl_host_tensor *info);

/* Run once. `inputs` are matched by name (every feed must be given; an input
 * with an initializer may be overridden); their data is read, not kept, and
 * must stay valid during the call. On success *outputs (may be NULL) points
 * to n_outputs views in graph order, owned by the session and valid until the
 * next run or nbl_session_free. On failure the message names the node. */
nbl_status nbl_session_run(nbl_session *s, int n_inputs, const nbl_host_tensor *inputs,
                           const nbl_host_tensor **outputs);

/* Stop runs of s from another thread (as ONNX Runtime's RunOptions.terminate):
 * with terminate != 0, a run under way stops before its next node or its next
 * Loop/Scan iteration (at any depth of subgraphs) and nbl_session_run fails
 * with NBL_ERR_TERMINATED, message "run terminated" naming where it stopped;
 * later runs fail the same way until nbl_session_terminate(s, 0). Safe to
 * call from any thread while s runs; NULL is allowed. A single kernel is not
 * interrupted. */
void nbl_session_terminate(nbl_session *s, int terminate);

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
/* Read a value file of the given kind: NBL_VALUE_TENSOR as nbl_tensor_read;
 * NBL_VALUE_SEQUENCE a serialized ONNX SequenceProto, NBL_VALUE_OPTIONAL an
 * OptionalProto (as the ONNX test data stores such inputs and outputs). The
 * protobuf encoding does not say which message a file holds, so the caller
 * names it (nbl_session_input_info tells a model input's kind). */
nbl_status nbl_value_read(const char *path, nbl_value_kind kind, nbl_host_tensor *out);
/* Write a tensor: .npy when path ends in ".npy", otherwise a TensorProto
 * named t->name. A sequence or optional is written as a SequenceProto /
 * OptionalProto (never .npy). */
nbl_status nbl_tensor_write(const char *path, const nbl_host_tensor *t);
/* Release data, name and items of a value filled by nbl_tensor_read or
 * nbl_value_read. */
void nbl_host_tensor_free(nbl_host_tensor *t);


/* ------------------------------------------------------------------------ */
/* Training (shaped like ONNX Runtime's on-device training API)              */
/* ------------------------------------------------------------------------ */

/* A training session runs a training model: an ONNX model whose
 * training_info[0] holds the algorithm graph (forward, loss, backward,
 * optimizer), the initialization graph of the optimizer state and the
 * update_binding that writes new parameters and state back (see the README,
 * "Training"). The session cuts the algorithm graph in two without knowing
 * op names: the gradient part (everything the loss, the `<param>_grad`
 * values and the update values that do not depend on a gradient need) and
 * the optimizer part (the rest). It owns the parameters and the optimizer
 * state: copies of the model's initializers, updated in place. */
typedef struct nbl_train_session nbl_train_session;

typedef struct nbl_train_options {
  int threads;          /* worker threads for kernels; <= 0: one per online core */
  int reference;        /* 1: plain C reference kernels only */
  double max_grad_norm; /* > 0: before each optimizer step, scale the accumulated gradients
                           by max_grad_norm / (norm + 1e-6) when their global L2 norm exceeds
                           it (as torch.nn.utils.clip_grad_norm_); 0: no clipping */
  int profile;          /* 1: time every node of the gradient and optimizer parts
                           (nbl_train_print_profile) */
} nbl_train_options;

/* Create a session from a training model. `opt` may be NULL (defaults). The
 * model is copied: it may be freed or changed afterwards. Optimizer state
 * that is absent (no elements) or all zeros is set from the initialization
 * graph; other state and the parameters start from the model's initializers.
 * A checkpoint (nbl_train_save_checkpoint) is a training model too: created
 * from one, the session also restores its progress and learning-rate
 * schedule. Fails with NBL_ERR_INVALID_MODEL naming the value at fault when
 * the model breaks the training-model contract, NBL_ERR_UNSUPPORTED naming
 * the node when a node has no kernel. On success *out belongs to the caller
 * (nbl_train_session_free). */
nbl_status nbl_train_session_create(const nbl_model *m, const nbl_train_options *opt,
                                    nbl_train_session **out);

/* Release the session, its parameters and every view it handed out. NULL is allowed. */
void nbl_train_session_free(nbl_train_session *s);

/* The tensors nbl_train_step takes: the algorithm graph's data inputs and the
 * label, in graph order (not `lr` nor `step`, which the session feeds). The
 * type is written as by nbl_session_input_info (dims -1 when unknown). */
int nbl_train_input_count(const nbl_train_session *s);
const char *nbl_train_input_name(const nbl_train_session *s, int i);
nbl_status nbl_train_input_info(const nbl_train_session *s, int i, nbl_host_tensor *info);

/* The inference graph's outputs (what nbl_eval_step returns), with their
 * declared types (dims -1 when unknown). */
int nbl_eval_output_count(const nbl_train_session *s);
nbl_status nbl_eval_output_info(const nbl_train_session *s, int i, nbl_host_tensor *info);

/* Forward, loss and backward on one batch (the gradient part). Gradients are
 * summed into the session's accumulators across calls until
 * nbl_train_reset_grad; update values that do not depend on a gradient (the
 * running statistics of BatchNormalization) are written back at once.
 * `inputs` are matched by name and only read during the call. *loss (may be
 * NULL) gets this batch's loss. */
nbl_status nbl_train_step(nbl_train_session *s, int n_inputs, const nbl_host_tensor *inputs,
                          float *loss);

/* Apply the optimizer part once to the accumulated gradients (clipped first
 * when max_grad_norm > 0), with `lr` from the schedule and `step` = number of
 * updates so far + 1, and write every update_binding value back in place.
 * The gradients stay accumulated (call nbl_train_reset_grad). Fails with
 * NBL_ERR_INVALID_ARGUMENT if no nbl_train_step ran since the last reset. */
nbl_status nbl_optimizer_step(nbl_train_session *s);

/* Forget the accumulated gradients: the next nbl_train_step starts a new sum. */
nbl_status nbl_train_reset_grad(nbl_train_session *s);

/* Run the inference graph (BatchNormalization and Dropout in inference mode)
 * with the current parameters. Like nbl_session_run: *outputs (may be NULL)
 * points to views owned by the session, valid until the next eval step, a
 * parameter change or nbl_train_session_free. */
nbl_status nbl_eval_step(nbl_train_session *s, int n_inputs, const nbl_host_tensor *inputs,
                         const nbl_host_tensor **outputs);

/* Learning rate. nbl_train_set_lr sets a constant rate. nbl_train_set_schedule
 * sets a schedule from its text form:
 *   constant | step:N:G (times G every N updates) | cosine[:MIN] (from base_lr
 *   to MIN, default 0, over total_steps) | warmup:N,REST (linear from base_lr/N
 *   to base_lr over the first N updates, then REST over total_steps - N)
 * The schedule is evaluated at the number of updates done so far, so it
 * resumes with the session's progress. Bad text: NBL_ERR_INVALID_ARGUMENT. */
nbl_status nbl_train_set_lr(nbl_train_session *s, double lr);
nbl_status nbl_train_set_schedule(nbl_train_session *s, const char *spec, double base_lr,
                                  int64_t total_steps);
/* The rate the next optimizer step uses. */
double nbl_train_lr(const nbl_train_session *s);
/* The global L2 norm of the gradients at the last optimizer step (before
 * clipping); 0 before the first. */
double nbl_train_last_grad_norm(const nbl_train_session *s);

/* Where training stands; saved in checkpoints and restored by loading one.
 * The session advances global_step (one per optimizer step) and rng_counter
 * (one per train step); the caller keeps epoch, step_in_epoch and data_seed. */
typedef struct nbl_train_progress {
  int64_t epoch;         /* 0-based epoch the next batch belongs to */
  int64_t step_in_epoch; /* batches of that epoch already trained */
  int64_t global_step;   /* optimizer updates done */
  uint64_t data_seed;    /* seed of the data order (nbl_data_order) */
  uint64_t rng_seed;     /* the session's random stream for stochastic ops: its key ... */
  uint64_t rng_counter;  /* ... and position */
} nbl_train_progress;
void nbl_train_get_progress(const nbl_train_session *s, nbl_train_progress *p);
void nbl_train_set_progress(nbl_train_session *s, const nbl_train_progress *p);

/* Extra key/value pairs saved with checkpoints (as metadata_props
 * "nibble.train.user.<key>") and restored by loading one. Keys are letters,
 * digits, '_' and '-'. The string nbl_train_get_meta returns is owned by the
 * session, valid until the key is set again; NULL when absent. */
nbl_status nbl_train_set_meta(nbl_train_session *s, const char *key, const char *value);
const char *nbl_train_get_meta(const nbl_train_session *s, const char *key);

/* The tensors the session trains and updates (every update_binding key:
 * parameters, optimizer state, running statistics), in binding order. The
 * view's data points at the session's live copy (read it, do not write it),
 * valid until nbl_train_session_free. */
int nbl_train_param_count(const nbl_train_session *s);
nbl_status nbl_train_param(const nbl_train_session *s, int i, nbl_host_tensor *view);

/* The accumulated gradients (one per `<param>_grad` of the model), summed
 * since the last nbl_train_reset_grad. The view's data is the session's
 * accumulator: the caller may change it in place between nbl_train_step and
 * nbl_optimizer_step (e.g. to all-reduce it across processes); valid until
 * the next train step or nbl_train_session_free. view->name is the parameter's
 * name. Fails with NBL_ERR_INVALID_ARGUMENT before the first train step. */
int nbl_train_grad_count(const nbl_train_session *s);
nbl_status nbl_train_grad(nbl_train_session *s, int i, nbl_host_tensor *view);

/* With nbl_train_options.profile: print where the train and optimizer steps
 * spent their time since creation or the last reset - per op type (backward
 * ops by their own names, e.g. ConvGrad) for the gradient part and the
 * optimizer part, then the `top` slowest nodes (top <= 0: none) - to `out`.
 * NBL_ERR_INVALID_ARGUMENT when the session was created without profiling. */
nbl_status nbl_train_print_profile(const nbl_train_session *s, FILE *out, int top);
void nbl_train_reset_profile(nbl_train_session *s);

/* Save a checkpoint: the training model with the current parameters and
 * state as initializers and the progress, schedule and user keys as
 * metadata_props "nibble.train.*" (a valid ONNX model: `nibble info` reads
 * it, nbl_train_session_create resumes from it). Written atomically: a
 * temporary file in the same folder, fsync, rename over `path`, fsync of the
 * folder; on any failure `path` keeps its old contents. */
nbl_status nbl_train_save_checkpoint(nbl_train_session *s, const char *path);

/* Load a checkpoint written by nbl_train_save_checkpoint for the same model:
 * every trained tensor must be there with the same type and shape. Nothing in
 * the session changes unless the whole file is good: a missing, truncated or
 * foreign file (not a nibble checkpoint, or one of another model) fails with
 * a message naming the file and what is wrong (NBL_ERR_IO, NBL_ERR_PARSE,
 * NBL_ERR_INVALID_MODEL). */
nbl_status nbl_train_load_checkpoint(nbl_train_session *s, const char *path);

/* Write the trained inference model: the main graph with the current
 * parameters and running statistics, without training_info, optimizer state
 * and nibble.train metadata. Written atomically like a checkpoint. */
nbl_status nbl_train_export(nbl_train_session *s, const char *path);

/* ------------------------------------------------------------------------ */
/* Data-parallel training (MPI)                                              */
/* ------------------------------------------------------------------------ */

/* A session can be one rank of a data-parallel job started by `mpirun -np N`
 * (Open MPI): every rank creates a session from the same model and calls
 * nbl_train_dist_init, which broadcasts rank 0's parameters and state; each
 * rank trains on its shard of every global batch (nbl_train_dist_shard);
 * nbl_optimizer_step then exchanges the gradients and weights them so that
 * every rank updates with the gradient of the whole global batch, and every
 * rank holds bit-identical parameters after every step.
 *
 * Exchange. The gradients go in buckets of about bucket_bytes (FP32 bytes),
 * filled in the order the backward pass finishes them; by default a bucket
 * is sent the moment its last gradient is final, while the backward pass is
 * still running (as PyTorch's DistributedDataParallel), and the optimizer
 * step waits for what is still in flight.
 *   NBL_GRAD_EXCHANGE_FP32: one in-place all-reduce (sum) per bucket of the
 *     weighted gradients.
 *   NBL_GRAD_EXCHANGE_LOG4: each rank quantizes its weighted gradient (plus
 *     its error-feedback residual) with the radix-4 log quantizer (4 bits: a
 *     sign and a 3-bit exponent, levels top * 4^-k, k = 0..6, top = max|x|
 *     of the tensor or the bucket, stochastic rounding), keeps the rounding
 *     error for the next step (error feedback), packs two codes per byte and
 *     all-gathers codes and scales; every rank then decodes every rank's
 *     codes and sums them in rank order, so all ranks get the same bits.
 * The weights: rank r's gradient counts count_r / n of the global batch
 * (from nbl_train_dist_shard; 1 / size when it was not called), which gives
 * the global batch's gradient exactly when the loss is a mean over the batch
 * (the losses build-training makes are). Values the train step updates
 * without a gradient (BatchNormalization's running statistics) are averaged
 * with the same weights (FP32) at every optimizer step.
 *
 * A rank whose shard of a batch is empty skips nbl_train_step and still
 * calls nbl_optimizer_step (it contributes zeros). With the overlap on, a
 * second nbl_train_step before the optimizer step is an error (the first
 * one's gradients are already on the wire): accumulate with no_overlap.
 * Every collective polls with a deadline: a rank that stops answering makes
 * the others fail after timeout_s with a message naming the operation, never
 * hang (a rank that dies is also noticed by mpirun, which stops the job). A
 * rank that fails should call nbl_train_dist_abort so that the others stop.
 *
 * Without MPI (a build with -Dmpi=disabled, or a process not started by a
 * launcher) the session is a job of one rank: the calls work and exchange
 * nothing (the LOG4 exchange still quantizes the gradients, with error
 * feedback, which simulates its effect on training). */
typedef enum nbl_grad_exchange {
  NBL_GRAD_EXCHANGE_FP32 = 0,
  NBL_GRAD_EXCHANGE_LOG4 = 1
} nbl_grad_exchange;

typedef struct nbl_train_dist_options {
  nbl_grad_exchange exchange;
  int64_t bucket_bytes;  /* FP32 gradient bytes per bucket; <= 0: 262144 */
  int no_overlap;        /* 1: send the buckets in nbl_optimizer_step, after the backward pass */
  int no_error_feedback; /* LOG4: 1 drops the rounding error instead of carrying it over */
  int scale_per_bucket;  /* LOG4: 1 one scale per bucket; 0 one per gradient tensor */
  uint64_t seed;         /* LOG4: key of the stochastic rounding (mixed with rank, step, bucket) */
  double timeout_s;      /* <= 0: 120. A collective that does not complete in this time fails */
} nbl_train_dist_options;

/* Join the job: the MPI world when the process was started by a launcher
 * (mpirun) or MPI is already initialized (MPI is initialized if needed and
 * finalized at exit), else a job of one. Then rank 0's parameters and
 * optimizer state (every nbl_train_param) are broadcast to every rank and
 * the buckets are planned. Call once, after creating (or loading into) the
 * session and before the first train step; every rank must call it. Fails
 * with NBL_ERR_UNSUPPORTED when the process was started by a launcher of N >
 * 1 processes and this build has no MPI, or when a gradient is not float32;
 * NBL_ERR_RUNTIME when a collective fails or times out. */
nbl_status nbl_train_dist_init(nbl_train_session *s, const nbl_train_dist_options *opt);

/* This process's rank and the number of ranks (0 and 1 before init). */
int nbl_train_dist_rank(const nbl_train_session *s);
int nbl_train_dist_size(const nbl_train_session *s);

/* This rank's shard of a global batch of n samples: *begin and *count
 * (ranks in order, sizes n / size rounded so that they differ by at most
 * one; count may be 0 when n < size). Also sets this rank's weight for the
 * next exchange to count / n. */
void nbl_train_dist_shard(nbl_train_session *s, int64_t n, int64_t *begin, int64_t *count);

/* Sum v[0..n) across ranks in place (blocking, with the deadline): for
 * metrics such as the global loss or the right answers of an evaluation. */
nbl_status nbl_train_dist_sum(nbl_train_session *s, double *v, int n);

/* What the exchange did so far. "Sent" bytes are those a rank puts on the
 * wire per step with bandwidth-optimal ring algorithms: FP32 all-reduce
 * 2 (N-1)/N * payload, all-gather (N-1) * payload (payload: this rank's
 * bytes per step); 0 on one rank. */
typedef struct nbl_train_dist_stats {
  int rank, size;
  const char *transport;  /* "mpi" or "none" */
  int n_buckets;
  int64_t grad_elements;  /* gradient elements exchanged per step */
  int64_t payload_bytes;  /* this rank's bytes per step: 4 per element (FP32); scales + half a
                             byte per element (LOG4); plus the FP32 running statistics */
  double sent_bytes;      /* per step, the ring-algorithm model above */
  int64_t steps;          /* exchanges done */
  int64_t launched_early; /* buckets sent during a backward pass */
  double wait_s;          /* seconds the optimizer steps waited for the exchange */
  double codec_s;         /* seconds spent packing, quantizing, decoding ... */
  double codec_cpu_s;     /* ... and the CPU time of it (the same on an idle core) */
} nbl_train_dist_stats;
void nbl_train_dist_get_stats(const nbl_train_session *s, nbl_train_dist_stats *st);

/* Stop every rank of the job with exit status `code` (MPI_Abort); exit(code)
 * on one rank. Does not return. */
void nbl_train_dist_abort(nbl_train_session *s, int code);

/* 1 when this build has MPI. */
int nbl_train_dist_mpi_built(void);

/* The number of processes a launcher announced in the environment
 * (OMPI_COMM_WORLD_SIZE, PMI_SIZE), 0 when the process was not started by
 * one; *local (may be NULL) gets those on this machine (0 unknown), *rank
 * (may be NULL) this process's rank (0 when unset). Readable before MPI is
 * initialized, and in a build without MPI. */
int nbl_train_dist_launcher_size(int *local, int *rank);

/* ------------------------------------------------------------------------ */
/* Datasets for training                                                     */
/* ------------------------------------------------------------------------ */

typedef struct nbl_dataset nbl_dataset;

/* Open a dataset. `spec`:
 *   "fashion-mnist"      the IDX files of the Debian package dataset-fashion-mnist
 *                        (/usr/share/datasets/fashion-mnist)
 *   "fashion-mnist:DIR"  the same files (.gz or not) in DIR
 *   "npy:DIR"            DIR/x.npy (float32 [N, ...]) and DIR/y.npy (int64 [N]); the
 *                        test split is DIR/x_test.npy and DIR/y_test.npy
 * `test` = 1 opens the test split. Fashion-MNIST images become float32
 * [N,1,28,28] normalized as (x / 255 - 0.2860) / 0.3530, labels int64.
 * Missing or malformed files fail with NBL_ERR_IO / NBL_ERR_INVALID_ARGUMENT
 * naming the file (and the Debian package when the default folder is absent).
 * On success *out belongs to the caller (nbl_dataset_free). */
nbl_status nbl_dataset_open(const char *spec, int test, nbl_dataset **out);
void nbl_dataset_free(nbl_dataset *d);
/* Number of samples. */
int64_t nbl_dataset_size(const nbl_dataset *d);
/* The whole set's types: x [N, ...] and y [N] (data NULL). */
void nbl_dataset_info(const nbl_dataset *d, nbl_host_tensor *x, nbl_host_tensor *y);

/* Check the dataset against a model's input `x` and label `y` (types as
 * nbl_train_input_info writes them, dims[0] the batch) and its class count
 * (<= 0: unknown): element types, the size of one sample (a sample whose
 * values fit the input's other dims is reshaped to them, e.g. [784] ->
 * [1,28,28]) and every label in [0, classes). Fails with
 * NBL_ERR_INVALID_ARGUMENT naming the file, the sample or label at fault. */
nbl_status nbl_dataset_check(nbl_dataset *d, const nbl_host_tensor *x, const nbl_host_tensor *y,
                             int64_t classes);

/* Gather the samples idx[0..n) into x and y: caller memory (x->data with
 * x->nbytes bytes, y->data with y->nbytes); dtype, rank and dims are set
 * (the sample shape of nbl_dataset_check, or the file's). */
nbl_status nbl_dataset_batch(const nbl_dataset *d, const int64_t *idx, int64_t n,
                             nbl_host_tensor *x, nbl_host_tensor *y);

/* The order of the samples in epoch `epoch`: a permutation of 0..n-1 that
 * depends only on (seed, epoch, n) (a counter-based generator), so a resumed
 * run sees the same order. */
void nbl_data_order(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm);

#ifdef __cplusplus
}
#endif
#endif /* NIBBLE_H */
