/*
 * exec.h - internal API of the runtime core: the executor ("engine"), tensor
 * conversions and tensor files. The public face is the session API of
 * nibble.h; tools, tests and the training loop may use this header directly.
 *
 * An engine runs one graph of a model (the main graph, or a training
 * algorithm graph). It is planned once at creation (kernels resolved per node
 * from the op table, topological schedule, liveness of every value, subgraph
 * plans) and can be run many times. Initializers are bound zero-copy as
 * persistent state: nbl_engine_state() gives a writable tensor that keeps its
 * contents across runs (it is copied out of the model on first write access).
 * Intermediates are freed after their last consumer; the second run with the
 * same input shapes uses one arena laid out from the first run's sizes and
 * lifetimes (re-planned whenever the input shapes change).
 */
#ifndef NBL_EXEC_H
#define NBL_EXEC_H

#include "nibble.h"
#include "runtime/core/kernel.h"

typedef struct nbl_engine nbl_engine;

/* Called after every node for each of its outputs (dump of intermediates). */
typedef void (*nbl_value_cb)(void *user, const char *name, const nbl_rt_tensor *t);

typedef struct nbl_engine_options {
  int threads;   /* <= 0: one per online core */
  int reference; /* 1: kernels take their reference paths only */
  int no_arena;  /* 1: never use the planned arena (malloc per tensor) */
  int profile;   /* 1: time every step of the main graph (nbl_engine_profile) */
  nbl_isa isa;   /* cap on the fast paths' instruction set (runtime/core/cpu.h) */
  uint64_t seed; /* key of the random stream of unseeded random ops (nbl_kctx_random_seed); 0: fresh */
  nbl_value_cb on_value;
  void *user;
} nbl_engine_options;

/* Per-step wall time of the main graph, summed over runs since creation or
 * the last reset: *n steps, node (the node run, possibly a fused one) and
 * nanoseconds for each; *runs counted runs. Returns 0 if profiling is off. */
int nbl_engine_profile(const nbl_engine *e, int *n, const nbl_node *const **nodes,
                       const int64_t **ns, int *runs);
void nbl_engine_reset_profile(nbl_engine *e);

/* Restart the random stream of unseeded random ops (nbl_kctx_random_seed)
 * at key `key` (0 is taken as 1), position 0: the draws of the following
 * runs are then a function of the key (the training session keys each step
 * from its checkpointed rng_seed and rng_counter). */
void nbl_engine_set_random_key(nbl_engine *e, uint64_t key);

/* Plan graph g of model m (g NULL: the main graph). `opt` may be NULL.
 * Fails with NBL_ERR_UNSUPPORTED naming the first node without a kernel:
 * "node 'x' (Foo, domain '', opset 13): no kernel". The model must outlive the
 * engine and must not be modified while it exists. */
nbl_status nbl_engine_create(const nbl_model *m, const nbl_graph *g,
                             const nbl_engine_options *opt, nbl_engine **out);
void nbl_engine_free(nbl_engine *e);

/* Graph inputs that are not initializers ("feeds"), in graph order. */
int nbl_engine_n_feeds(const nbl_engine *e);
nbl_id nbl_engine_feed_value(const nbl_engine *e, int i);
/* The graph the engine runs. */
const nbl_graph *nbl_engine_graph(const nbl_engine *e);
/* Threads the engine's kernels may use. */
int nbl_engine_threads(const nbl_engine *e);

/* Bind graph input `name` to a view of caller memory (not copied, must stay
 * valid through the next nbl_engine_run). Initializer-backed inputs may be
 * bound too (overrides the default for the following runs until unbound by
 * binding NULL). An outer value (NBL_VAL_OUTER) of the engine's graph, e.g. a
 * main-graph parameter a training algorithm graph reads, is bound the same
 * way. Checks dtype and rank/dims against the declared type. */
nbl_status nbl_engine_bind(nbl_engine *e, const char *name, const nbl_rt_tensor *view);

/* Run the graph once. Every feed must be bound. Outputs stay valid until the
 * next run or nbl_engine_free. */
nbl_status nbl_engine_run(nbl_engine *e);

/* Ask runs of e to stop (on != 0) or allow them again (on == 0); safe to call
 * from any thread while a run is under way. While set, a run stops before its
 * next node, Loop or Scan iteration or subgraph (at any depth) and fails with
 * NBL_ERR_TERMINATED ("run terminated"); the flag stays set until cleared. */
void nbl_engine_terminate(nbl_engine *e, int on);

/* NBL_ERR_TERMINATED with the message "run terminated" if e was asked to
 * stop, else NBL_OK. */
nbl_status nbl_engine_check_terminate(nbl_engine *e);

/* The value of graph output i after a run (NULL before). */
const nbl_rt_tensor *nbl_engine_output(const nbl_engine *e, int i);

/* Persistent state tensor (initializer) `name`, made writable: the first call
 * copies the data out of the model; writes persist across runs. Every call
 * drops the kernels' caches derived from weights (nbl_kctx_cache), so call it
 * again after each change. The INT4 fusion's packed weights are NOT yet
 * refreshed on in-place writes (only when the data pointer changes). NULL if
 * no such initializer (message set). */
nbl_rt_tensor *nbl_engine_state(nbl_engine *e, const char *name);

/* Statistics for tests and the CLI. */
typedef struct nbl_engine_stats {
  int runs;            /* nbl_engine_run calls that succeeded */
  int plans;           /* arena layouts computed (1 + re-plans on shape changes) */
  size_t arena_bytes;  /* size of the current arena (0 if none) */
  int64_t arena_hits;  /* outputs served from the arena (total) */
  int64_t mallocs;     /* outputs allocated with malloc (total) */
  int64_t frees_early; /* intermediates freed before the end of a run (total) */
  int64_t parallel_regions; /* nbl_parallel_for calls split across the pool (total) */
} nbl_engine_stats;
void nbl_engine_get_stats(const nbl_engine *e, nbl_engine_stats *st);

/* ------------------------------------------------------------------ tensors */

/* nbl_rt_from_ir and nbl_rt_copy: kernel.h; tensor files: the parser (nibble.h). */

#endif /* NBL_EXEC_H */
