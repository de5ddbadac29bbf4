/*
 * train.h - internals of the training runtime (runtime/train/), shared by its
 * files; the public face is the nbl_train_* API of nibble.h.
 *
 *   split.c       cut the algorithm graph into the gradient and optimizer parts
 *   session.c     the session: parameters, engines, train/optimizer/eval steps
 *   schedule.c    learning-rate schedules
 *   checkpoint.c  checkpoints (atomic writes, metadata) and export
 *   profile.c     per-node times of the two parts (nbl_train_print_profile)
 *   exchange.c    data-parallel training: buckets, FP32 / 4-bit gradient
 *                 exchange, the nbl_train_dist_* API, over the transport of
 *                 dist.h (dist_mpi.c with MPI, dist_none.c for one process)
 *
 * The session keeps a private copy of the training model (`work`): its main
 * graph initializers that are update_binding keys hold the live parameters
 * and state (malloc'd buffers the session writes in place), so a checkpoint
 * is `work` saved with the progress as metadata, and the eval engine runs
 * `work`'s main graph directly.
 */
#ifndef NBL_TRAIN_H
#define NBL_TRAIN_H

#include "include/nibble.h"
#include "runtime/core/exec.h"

/* ------------------------------------------------------------------ split.c */

/* The algorithm graph cut in two, plus the initialization graph, each as a
 * top-level graph of a private model (`m`, the training model's opsets) whose
 * nodes are copies of the source nodes. Values the part reads but does not
 * compute - data inputs, the label, lr, step, parameters and state (outer
 * values of the algorithm graph), gradients (optimizer part) - are graph
 * inputs of the part, so the session binds them to its own memory. */
typedef struct nbl_train_cut {
  nbl_model *m;
  nbl_graph *grad; /* outputs: loss, the gradients, then the update values without a gradient */
  nbl_graph *opt;  /* outputs: the update values that depend on a gradient (NULL if none) */
  nbl_graph *init; /* outputs: the initialization graph's (NULL if the model has none) */
  int n_grads;     /* gradients: grad->outputs[1 .. n_grads] */
  char **grad_param; /* per gradient: the parameter name (`<param>_grad` minus the suffix) */
} nbl_train_cut;

/* Cut work->training[0]. Errors (NBL_ERR_INVALID_MODEL) name the value or node
 * that breaks the contract (TRAINING_CONTRACT / README "Training"). */
nbl_status nbl_train_cut_build(const nbl_model *work, nbl_train_cut **out);
void nbl_train_cut_free(nbl_train_cut *c);

/* ------------------------------------------------------------------ schedule.c */

typedef enum { NBL_SCHED_CONSTANT, NBL_SCHED_STEP, NBL_SCHED_COSINE } nbl_sched_kind;

typedef struct nbl_schedule {
  char spec[128];   /* the text it was parsed from ("constant" for a fixed rate) */
  double base;      /* base learning rate */
  int64_t total;    /* updates the schedule spans (cosine), including the warm-up */
  int64_t warmup;   /* linear warm-up updates (0: none) */
  nbl_sched_kind kind;
  int64_t step_n;   /* step: every step_n updates ... */
  double gamma;     /* ... multiply by gamma */
  double min_lr;    /* cosine: final rate */
} nbl_schedule;

/* Parse `spec` (grammar in nibble.h, nbl_train_set_schedule). */
nbl_status nbl_schedule_parse(const char *spec, double base, int64_t total, nbl_schedule *out);
/* The rate of update number t (0-based). */
double nbl_schedule_lr(const nbl_schedule *s, int64_t t);

/* ------------------------------------------------------------------ session.c */

/* A tensor the session trains or updates: an update_binding key. */
typedef struct nbl_train_slot {
  const char *name;  /* main-graph initializer (work arena) */
  const char *src;   /* update_binding value: the algorithm output written back */
  nbl_id value;      /* in work->graph */
  nbl_rt_tensor t;   /* view of the live data (the work initializer's buffer) */
  int grad;          /* index of its gradient in the cut (-1: none) */
  int part, out;     /* where the new value comes from: 0 gradient part, 1 optimizer part; output index */
} nbl_train_slot;

#define NBL_TRAIN_MAX_META 32

struct nbl_train_session {
  nbl_model *work;
  nbl_train_cut *cut;
  nbl_engine_options eopt;
  nbl_engine *eg, *eo, *ee; /* gradient part, optimizer part, inference graph (lazy) */
  int n_slots;
  nbl_train_slot *slots;
  nbl_rt_tensor *acc; /* per gradient: the accumulated sum */
  int n_accum;        /* train steps summed into acc since the last reset */
  int n_feeds;        /* data inputs and label of the gradient part */
  nbl_id *feeds;      /* ids in cut->grad */
  int64_t version, eval_version; /* bumped on every parameter change */
  double max_grad_norm, last_norm;
  nbl_schedule sched;
  nbl_train_progress prog;
  int n_meta;
  char *meta_key[NBL_TRAIN_MAX_META], *meta_val[NBL_TRAIN_MAX_META];
  nbl_host_tensor *eval_outs;
  struct nbl_ddp *ddp;       /* data-parallel state (exchange.c); NULL when not joined */
  unsigned char *grad_done;  /* per gradient: summed during this train step's run (by the hook) */
};

/* 1 when k is a valid nbl_train_set_meta key (1-64 of [A-Za-z0-9_-]). */
int nbl_train_meta_key_ok(const char *k);
/* Engines for tests: 0 gradient part, 1 optimizer part, 2 inference (NULL until used). */
nbl_engine *nbl_train_engine(nbl_train_session *s, int which);
/* Copy every trained tensor of checkpoint model `ck` into the session, or
 * nothing when one is missing or differs in type or shape (message names it). */
nbl_status nbl_train_adopt(nbl_train_session *s, const nbl_model *ck, const char *label);

/* Sum gradient output g of this train step into accumulator i (a copy on the
 * first step since the reset). */
nbl_status nbl_train_accumulate(nbl_train_session *s, int i, const nbl_rt_tensor *g);
/* Re-create the gradient engine with `cb` as its per-value callback (user =
 * the session), so the exchange sees each gradient the moment it is final. */
nbl_status nbl_train_hook_grad_engine(nbl_train_session *s, nbl_value_cb cb);

/* ------------------------------------------------------------------ exchange.c */

/* Called by session.c when s->ddp is set: before the gradient engine runs
 * (errors if the previous step's exchange is still open); after it ran
 * (`run` its status: surfaces an error of the hook); at the end of a train
 * step (launches what the hook did not); at the start of the optimizer step
 * (completes the exchange: s->acc then holds the global batch's gradient,
 * the running statistics the ranks' weighted mean). nbl_ddp_free releases
 * s->ddp (NULL allowed). */
nbl_status nbl_ddp_before_step(nbl_train_session *s);
nbl_status nbl_ddp_after_run(nbl_train_session *s, nbl_status run);
nbl_status nbl_ddp_after_step(nbl_train_session *s);
nbl_status nbl_ddp_finish(nbl_train_session *s);
void nbl_ddp_free(nbl_train_session *s);
/* This process's rank (0 when s->ddp is NULL). */
int nbl_ddp_rank(const nbl_train_session *s);

/* ------------------------------------------------------------------ checkpoint.c */

/* Read the nibble.train.* metadata of m into s (progress, schedule, user
 * keys). *is_ckpt = 1 when m carries them. A malformed entry fails naming it. */
nbl_status nbl_train_read_meta(nbl_train_session *s, const nbl_model *m, const char *label,
                               int *is_ckpt);
/* Write `len` bytes to `path` atomically (temporary file in the same folder,
 * fsync, rename, fsync of the folder). */
nbl_status nbl_write_atomic(const char *path, const void *data, size_t len);

#endif /* NBL_TRAIN_H */
