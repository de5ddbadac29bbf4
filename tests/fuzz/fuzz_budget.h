/*
 * fuzz_budget.h - the run budget of the targets that run graphs (fuzz_run,
 * fuzz_checkpoint): included by exactly one file of each such target, linked
 * with -Wl,--wrap=nbl_rt_tensor_alloc -Wl,--wrap=nbl_kctx_run_subgraph.
 *
 * Between budget_start() and budget.active = 0, every tensor the runtime
 * allocates goes through nbl_rt_tensor_alloc and every If/Loop/Scan body run
 * through nbl_kctx_run_subgraph; the wrappers make them fail with a clear
 * "fuzz budget" error once one tensor exceeds FUZZ_MAX_TENSOR_ELEMS elements,
 * the tensors of a run together exceed FUZZ_MAX_RUN_ELEMS, the body runs
 * exceed FUZZ_MAX_SUBGRAPH_RUNS (this is what bounds Loop trip counts,
 * including endless ones) or the run has taken FUZZ_MAX_RUN_MS. Kernels see
 * an ordinary allocation failure, so the error paths after a failed
 * allocation are fuzzed too.
 */
#ifndef NBL_FUZZ_BUDGET_H
#define NBL_FUZZ_BUDGET_H

#include <time.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "runtime/core/kernel.h"

#define FUZZ_MAX_TENSOR_ELEMS 65536
#define FUZZ_MAX_RUN_ELEMS (1 << 22)
#define FUZZ_MAX_SUBGRAPH_RUNS 256
#define FUZZ_MAX_RUN_MS 1000

/* ---- the run budget, enforced by the wrapped allocation and subgraph calls */

static struct {
  int active;
  int64_t elems;
  int subgraph_runs;
  struct timespec start;
} budget;

static void budget_start(void) {
  budget.active = 1;
  budget.elems = 0;
  budget.subgraph_runs = 0;
  clock_gettime(CLOCK_MONOTONIC, &budget.start);
}

static int64_t budget_ms(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (int64_t)(now.tv_sec - budget.start.tv_sec) * 1000 +
         (now.tv_nsec - budget.start.tv_nsec) / 1000000;
}

nbl_status __real_nbl_rt_tensor_alloc(nbl_rt_tensor *t, nbl_dtype dt, int rank,
                                      const int64_t *dims);
nbl_status __wrap_nbl_rt_tensor_alloc(nbl_rt_tensor *t, nbl_dtype dt, int rank,
                                      const int64_t *dims);
nbl_status __real_nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                        const nbl_rt_tensor *const *in, int n_out,
                                        nbl_rt_tensor **out);
nbl_status __wrap_nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                        const nbl_rt_tensor *const *in, int n_out,
                                        nbl_rt_tensor **out);

nbl_status __wrap_nbl_rt_tensor_alloc(nbl_rt_tensor *t, nbl_dtype dt, int rank,
                                      const int64_t *dims) {
  if (budget.active && rank >= 0 && rank <= NBL_MAX_RANK) {
    int64_t n = nbl_shape_numel(rank, dims);
    if (n > FUZZ_MAX_TENSOR_ELEMS)
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "fuzz budget: a tensor of %lld elements",
                        (long long)n);
    if (n > 0) budget.elems += n;
    if (budget.elems > FUZZ_MAX_RUN_ELEMS)
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "fuzz budget: %lld elements allocated in one run",
                        (long long)budget.elems);
    if (budget_ms() > FUZZ_MAX_RUN_MS)
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "fuzz budget: the run took over %d ms",
                        FUZZ_MAX_RUN_MS);
  }
  return __real_nbl_rt_tensor_alloc(t, dt, rank, dims);
}

nbl_status __wrap_nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                        const nbl_rt_tensor *const *in, int n_out,
                                        nbl_rt_tensor **out) {
  if (budget.active) {
    if (++budget.subgraph_runs > FUZZ_MAX_SUBGRAPH_RUNS)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "fuzz budget: over %d subgraph runs",
                      FUZZ_MAX_SUBGRAPH_RUNS);
    if (budget_ms() > FUZZ_MAX_RUN_MS)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "fuzz budget: the run took over %d ms",
                      FUZZ_MAX_RUN_MS);
  }
  return __real_nbl_kctx_run_subgraph(ctx, sub, n_in, in, n_out, out);
}

#endif
