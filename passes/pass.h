/*
 * pass.h - how a pass is written and registered.
 *
 * A pass is a named, standalone function over the IR with a one-line
 * description and typed options. It reports how much it changed
 * (ctx->changed) and may write a short summary to ctx->log. Passes are
 * listed once, in passes/registry.c; the manager (passes/manager.c) parses
 * pipelines, runs passes, verifies between them and writes the dumps.
 *
 * Guard-then-act: a rewrite checks every precondition before it mutates the
 * graph, and a pass that changes numerics says so (changes_numerics).
 */
#ifndef NBL_PASS_H
#define NBL_PASS_H

#include "ir/ir.h"

typedef enum nbl_opt_type { NBL_OPT_INT, NBL_OPT_FLOAT, NBL_OPT_BOOL, NBL_OPT_STRING } nbl_opt_type;

typedef struct nbl_pass_option {
  const char *name;
  nbl_opt_type type;
  const char *dflt; /* default, as text */
  const char *help;
} nbl_pass_option;

#define NBL_PASS_MAX_OPTIONS 16

typedef struct nbl_pass_def nbl_pass_def;

typedef struct nbl_pass_ctx {
  nbl_model *model;
  const nbl_pass_def *pass;
  const char *values[NBL_PASS_MAX_OPTIONS]; /* option values as text, in the def's order */
  int changed;                              /* set by the pass: number of rewrites made */
  FILE *log;                                /* summary lines of the pass (may be NULL) */
} nbl_pass_ctx;

typedef nbl_status (*nbl_pass_fn)(nbl_pass_ctx *ctx);

struct nbl_pass_def {
  const char *name;
  const char *description;
  nbl_pass_fn run;
  int changes_numerics; /* 1 if outputs may change beyond float reassociation */
  nbl_pass_option options[NBL_PASS_MAX_OPTIONS];
};

/* Option values, converted (the manager validated them against the type). */
int64_t nbl_pass_opt_int(const nbl_pass_ctx *ctx, const char *name);
double nbl_pass_opt_float(const nbl_pass_ctx *ctx, const char *name);
int nbl_pass_opt_bool(const nbl_pass_ctx *ctx, const char *name);
const char *nbl_pass_opt_string(const nbl_pass_ctx *ctx, const char *name);

/* Write one summary line for the pass (printf-style) to ctx->log, if any. */
void nbl_pass_logf(nbl_pass_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The registry: every pass, in the order `nibble passes` lists them (the
 * built-in ones of passes/registry.c, then those added with nbl_pass_register). */
const nbl_pass_def *nbl_pass_find(const char *name);
int nbl_pass_count(void);
const nbl_pass_def *nbl_pass_at(int i);

/* Add a pass after the built-in ones, so that pipelines can name it: for a
 * test's own pass (one that breaks the IR on purpose, say) or a program
 * that brings its passes. def must stay valid as long as any pipeline may
 * use it. Returns NBL_OK (also when this def is already registered), or
 * NBL_ERR_INVALID_ARGUMENT when def has no name or run function, another pass
 * has its name, or NBL_PASS_MAX_ADDED passes were added already. Not
 * thread-safe: register before parsing pipelines. */
#define NBL_PASS_MAX_ADDED 16
nbl_status nbl_pass_register(const nbl_pass_def *def);

/* Convert the model's default-domain (ai.onnx) opset to `target` with the op
 * table's adapters (passes/convert_opset.c, the pass convert-opset): a node
 * whose op changed between the two opsets is rewritten into its form at
 * target; one no adapter covers is an NBL_ERR_UNSUPPORTED naming the node,
 * op and opset, and then nothing was changed (an adapter's own refusal may
 * come after earlier nodes were rewritten: callers fail the pass). Raises
 * ir_version to what target needs. Writes a summary line to ctx->log. */
nbl_status nbl_convert_opset(nbl_pass_ctx *ctx, int target);

/* Fold node `id` of g (passes/fold_constants.c, the pass fold-constants):
 * when its op is deterministic, has no subgraph and every input is a
 * constant (an initializer that is not a graph input), run it with the
 * reference kernels and make its outputs initializers of the same values,
 * the node dead (NBL_FOLD_DONE); a result over max_bytes (< 0: no limit)
 * stays a node. The status is an error only for out of memory; a node the
 * runtime cannot evaluate is NBL_FOLD_FAILED with nbl_last_error() saying
 * why. */
typedef enum nbl_fold_result {
  NBL_FOLD_DONE,
  NBL_FOLD_NOT_CONSTANT, /* an input is not constant, a graph output, a random op, strings */
  NBL_FOLD_TOO_BIG,
  NBL_FOLD_FAILED,
} nbl_fold_result;
nbl_status nbl_fold_node(nbl_model *m, nbl_graph *g, nbl_id id, int64_t max_bytes, nbl_fold_result *res);

/* Remove nodes whose outputs are all unused (not consumed, not graph outputs),
 * then unused non-input values and initializers; recursive over the whole
 * graph. Returns the number of nodes removed. Shared by passes. */
int nbl_graph_dce(nbl_graph *g);

#endif /* NBL_PASS_H */
