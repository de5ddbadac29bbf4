/*
 * threadpool.h - the executor's worker threads (runtime/core/threadpool.c).
 *
 * Kernels never see the pool: they call nbl_parallel_for (kernel.h), which
 * the kernel services (kctx.c) route here. A pool has threads - 1 workers;
 * the calling thread works too.
 */
#ifndef NBL_THREADPOOL_H
#define NBL_THREADPOOL_H

#include <stdint.h>

typedef struct nbl_pool nbl_pool;

/* A pool for `threads` threads (threads - 1 workers); NULL when out of memory. */
nbl_pool *nbl_pool_new(int threads);
/* Stops and joins the workers. NULL is allowed. */
void nbl_pool_free(nbl_pool *p);

/* Run fn(arg, begin, end) over [0, n) in chunks of at least `grain` items
 * on up to `ways` threads (the caller's included) and wait for all of them.
 * Returns 0 without running anything when the pool is busy (another job, or
 * called from inside a job) or has no workers: the caller then runs fn
 * inline. The caller's ISA cap (runtime/core/cpu.h) holds in the workers for
 * the job. */
int nbl_pool_run(nbl_pool *p, int64_t n, int64_t grain, int ways,
                 void (*fn)(void *, int64_t, int64_t), void *arg);

/* Default thread count: online cores (at least 1, at most 256). */
int nbl_default_threads(void);

#endif /* NBL_THREADPOOL_H */
