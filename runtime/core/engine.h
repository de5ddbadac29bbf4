/*
 * engine.h - the executor's internal state, shared by the core files that
 * implement the engine of exec.h:
 *   plan.c   schedule, liveness and subgraph plans (fusions from the registry)
 *   arena.c  the planned arena for intermediates
 *   exec.c   engine lifetime, binding, running frames
 *   kctx.c   the kernel services of kernel.h
 * Nothing outside runtime/core/ includes it: kernels see kernel.h only, and
 * tools, tests and session.c the engine API of exec.h.
 */
#ifndef NBL_ENGINE_H
#define NBL_ENGINE_H

#include <stdatomic.h>

#include "runtime/core/cpu.h"
#include "runtime/core/exec.h"
#include "runtime/core/threadpool.h"
#include "runtime/fusions/fuse.h"

/* One step of a plan: a node of the graph, or the synthetic node a fusion
 * runs in its place. */
typedef struct nbl_step {
  nbl_id node;
  const nbl_op_def *def;
  int opset;
  int out_base;          /* index of output 0 in the arena slot table */
  const nbl_node *fnode; /* a fusion's synthetic node run instead of g->nodes[node] */
} nbl_step;

/* The plan of one graph (the main graph or a subgraph). */
typedef struct nbl_gplan {
  const nbl_graph *g;
  int n_steps;
  nbl_step *steps;
  int *last_use;   /* per value: step after which it can be freed; INT_MAX: keep */
  int n_slots;     /* sum of node outputs (arena slot table size) */
  int *free_start; /* per step s: free_list[free_start[s] .. free_start[s+1]) dies after s */
  nbl_id *free_list;
  nbl_kcache *caches; /* per step: kernel cache (nbl_kctx_cache) */
} nbl_gplan;

/* The arena of the main graph's intermediates (arena.c): recorded on a run
 * with new input shapes, laid out after it, served on the following runs. */
typedef struct nbl_out_arena {
  int mode;          /* 0 record, 1 planned */
  int64_t *sig;      /* input shape signature of the plan */
  int sig_len;
  size_t *slot_size; /* recorded sizes per slot (0: none) */
  int *slot_start, *slot_end;
  size_t *slot_off;
  unsigned char *arena;
  size_t arena_bytes;
} nbl_out_arena;

struct nbl_engine {
  const nbl_model *m;
  const nbl_graph *g;
  int threads, reference, no_arena;
  nbl_isa isa; /* the engine's ISA cap, in force while it plans and runs (cpu.h) */
  int profile, prof_runs;
  int64_t *prof_ns;           /* per step of plans[0] */
  const nbl_node **prof_node; /* per step of plans[0] */
  nbl_value_cb on_value;
  void *user;
  nbl_gplan **plans; /* plans[0]: g; then every subgraph */
  int n_plans;
  nbl_pool *pool;
  /* per entry of the fusion table (runtime/fusions/registry.c): its state
   * for the main graph, NULL when it fused nothing (the array is NULL for
   * reference engines) */
  void **fusion_state;
  /* top frame state */
  nbl_rt_tensor *vals;
  unsigned char *set;
  unsigned char *bound; /* value bound by the caller (view) */
  nbl_rt_tensor *binds; /* caller views */
  nbl_rt_tensor *state; /* initializer views / writable copies (per value) */
  nbl_id *feeds;
  int n_feeds;
  int ran;
  nbl_out_arena ar;
  nbl_engine_stats stats;
  atomic_int terminate; /* set from any thread: runs stop between nodes (nbl_engine_terminate) */
  /* the random stream of unseeded random ops (nbl_kctx_random_seed): its key
   * and the number of seeds handed out */
  uint64_t rng_key;
  atomic_uint_fast64_t rng_pos;
};

/* The values of one graph while it runs: the main graph (top), or a
 * subgraph run by a node of its parent frame. */
typedef struct nbl_frame {
  nbl_engine *e;
  const nbl_gplan *p;
  const nbl_graph *g;
  nbl_rt_tensor *vals;
  unsigned char *set;
  struct nbl_frame *parent;
  int top;
} nbl_frame;

/* The per-node call state behind nbl_kctx.exec. */
struct nbl_exec {
  nbl_frame *f;
  int step;
  const nbl_step *st;
  nbl_rt_tensor *scratch; /* lazily allocated, one per node output */
  int n_scratch;
};

/* ------------------------------------------------------------------ plan.c */

/* Plan graph g (and, recursively, its subgraphs) into e->plans; fusions run
 * on the main graph of a non-reference engine. */
nbl_status nbl_plan_graph(nbl_engine *e, const nbl_graph *g);
/* The plan of graph g (NULL if it was not planned). */
const nbl_gplan *nbl_plan_find(const nbl_engine *e, const nbl_graph *g);
void nbl_plan_free(nbl_gplan *p);

/* ------------------------------------------------------------------ arena.c */

/* Slot tables for n_slots outputs; NBL_ERR_OUT_OF_MEMORY (no message). */
nbl_status nbl_out_arena_init(nbl_out_arena *a, int n_slots);
void nbl_out_arena_free(nbl_out_arena *a);
/* Before a run (inputs bound): keep the plan when the input shapes are
 * those it was made for, else start recording. */
nbl_status nbl_out_arena_begin_run(nbl_engine *e);
/* After a successful run: lay out what was recorded (nothing when planned). */
void nbl_out_arena_end_run(nbl_engine *e);
/* After a failed run: the next run records again. */
void nbl_out_arena_forget(nbl_engine *e);
/* Output storage for arena slot `slot` written at step `step` and last read
 * at step `last_use`: when planned and large enough, t becomes a view of
 * the arena (returns 1); when recording, the size and lifetime are noted
 * (returns 0, the caller allocates). */
int nbl_out_arena_take(nbl_engine *e, int slot, int step, int last_use, nbl_rt_tensor *t,
                   nbl_dtype dt, int rank, const int64_t *dims, size_t nbytes);

/* ------------------------------------------------------------------ exec.c */

/* A fresh 64-bit key for a random stream: the real-time clock in nanoseconds,
 * a process-wide count of keys made and the address of `salt`, mixed; never 0. */
uint64_t nbl_fresh_random_key(const void *salt);

/* A frame for plan p below parent (NULL: none), initializers bound. */
nbl_status nbl_frame_init(nbl_frame *f, nbl_engine *e, const nbl_gplan *p, nbl_frame *parent);
void nbl_frame_free(nbl_frame *f);
/* Run every step of the frame's plan. */
nbl_status nbl_frame_run(nbl_frame *f);
/* The value v of the frame, or of an enclosing frame for captured values;
 * NULL when it has none. */
nbl_rt_tensor *nbl_frame_lookup(nbl_frame *f, nbl_id v);
/* Prefix the message with the node unless it names one already; returns st. */
nbl_status nbl_node_error_context(const nbl_node *nd, nbl_status st);
/* Free t's data and zero it. */
void nbl_slot_clear(nbl_rt_tensor *t);

#endif /* NBL_ENGINE_H */
