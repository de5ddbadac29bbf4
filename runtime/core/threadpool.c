/* threadpool.c - the executor's thread pool; see threadpool.h. */
#include "runtime/core/threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "runtime/core/cpu.h"


/* Workers spin on the job counter for a short while before sleeping on the
 * condition variable: a network runs hundreds of parallel regions of tens of
 * microseconds each, and waking a sleeping thread costs about as much.
 *
 * Job publication is a sequence lock on `gen`: the caller makes it odd
 * (updating), waits until no worker is inside a job (`active`), writes the
 * job, then makes it even again. A worker that saw even generation g joins
 * by incrementing `active` and re-reading `gen`; if it changed, it backs off,
 * so job fields never change under a worker that uses them. */
#define POOL_SPIN_NS 200000 /* spin this long (0.2 ms) before sleeping */

struct nbl_pool {
  pthread_t *th;
  int n_th; /* worker threads (the calling thread works too) */
  pthread_mutex_t mu;
  pthread_cond_t cv_work;
  _Atomic unsigned gen;
  _Atomic int active;   /* workers inside a job */
  _Atomic int sleepers; /* workers blocked or about to block on cv_work */
  _Atomic int stop, busy;
  /* the job, stable while gen is even and a worker is active */
  void (*fn)(void *, int64_t, int64_t);
  void *arg;
  nbl_isa cap; /* the caller's ISA cap (cpu.h), the workers' during the job */
  int64_t n, chunk;
  int n_chunks, ways; /* chunks, and threads sharing them */
  _Atomic int done_chunks;
  _Atomic unsigned char *claimed; /* [max_chunks]: chunk i taken */
  int max_chunks;
  struct pool_worker *workers;
};
typedef struct nbl_pool pool;

/* A worker's view: its pool and its index (the calling thread is 0). */
typedef struct pool_worker {
  pool *p;
  int idx;
} pool_worker;

static _Thread_local int tl_in_worker;

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

static int64_t mono_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* A job is cut into up to POOL_SPLIT chunks per thread. Thread idx owns a
 * contiguous run of chunks (its home: with as many chunks as threads, chunk
 * idx) and runs it in order; then it takes what nobody has taken from the
 * other threads' homes, from their far end backwards. Kernels that split
 * every layer the same way (pixel bands) thus keep each band's data in one
 * core's cache (reading data another core just wrote costs several times a
 * local read), while a late, slow or descheduled thread's remaining chunks
 * move to a thread that is done. */
#define POOL_SPLIT 4

static void pool_run_chunk(pool *p, int c) {
  unsigned char expect = 0;
  if (!atomic_compare_exchange_strong(&p->claimed[c], &expect, 1)) return;
  int64_t b = (int64_t)c * p->chunk, e = b + p->chunk;
  if (e > p->n) e = p->n;
  p->fn(p->arg, b, e);
  atomic_fetch_add_explicit(&p->done_chunks, 1, memory_order_release);
}

static void pool_home(const pool *p, int idx, int *b, int *e) {
  int t = p->ways;
  *b = (int)((int64_t)p->n_chunks * idx / t);
  *e = (int)((int64_t)p->n_chunks * (idx + 1) / t);
}

static void pool_do_chunks(pool *p, int idx) {
  int b, e, first = 0;
  if (idx < p->ways) {
    pool_home(p, idx, &b, &e);
    for (int c = b; c < e; c++) pool_run_chunk(p, c);
    first = 1;
  }
  for (int o = first; o < p->ways; o++) {
    pool_home(p, (idx + o) % p->ways, &b, &e);
    for (int c = e - 1; c >= b; c--)
      if (!atomic_load_explicit(&p->claimed[c], memory_order_relaxed)) pool_run_chunk(p, c);
  }
}

static void *pool_main(void *arg) {
  pool_worker *w = arg;
  pool *p = w->p;
  tl_in_worker = 1;
  unsigned seen = atomic_load(&p->gen);
  for (;;) {
    unsigned g = atomic_load(&p->gen);
    if (atomic_load(&p->stop)) break;
    if (g == seen || (g & 1u)) {
      int64_t t0 = mono_ns();
      int spins = 0;
      for (;;) {
        g = atomic_load(&p->gen);
        if ((g != seen && !(g & 1u)) || atomic_load(&p->stop)) break;
        cpu_relax();
        if ((++spins & 255) == 0 && mono_ns() - t0 > POOL_SPIN_NS) {
          pthread_mutex_lock(&p->mu);
          atomic_fetch_add(&p->sleepers, 1);
          while (!atomic_load(&p->stop) && atomic_load(&p->gen) == seen)
            pthread_cond_wait(&p->cv_work, &p->mu);
          atomic_fetch_sub(&p->sleepers, 1);
          pthread_mutex_unlock(&p->mu);
          t0 = mono_ns();
        }
      }
      continue;
    }
    atomic_fetch_add(&p->active, 1);
    if (atomic_load(&p->gen) == g) {
      nbl_cpu_set_thread_cap(p->cap);
      pool_do_chunks(p, w->idx);
    }
    atomic_fetch_sub(&p->active, 1);
    seen = g;
  }
  return NULL;
}

nbl_pool *nbl_pool_new(int threads) {
  pool *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_work, NULL);
  p->th = calloc((size_t)threads, sizeof(pthread_t));
  p->workers = calloc((size_t)threads, sizeof(pool_worker));
  p->max_chunks = threads * POOL_SPLIT;
  p->claimed = calloc((size_t)p->max_chunks, sizeof(*p->claimed));
  if (!p->th || !p->workers || !p->claimed) {
    free(p->th);
    free(p->workers);
    free((void *)p->claimed);
    free(p);
    return NULL;
  }
  for (int i = 0; i < threads - 1; i++) {
    p->workers[i] = (pool_worker){p, i + 1};
    if (pthread_create(&p->th[i], NULL, pool_main, &p->workers[i]) != 0) break;
    p->n_th++;
  }
  return p;
}

void nbl_pool_free(nbl_pool *p) {
  if (!p) return;
  pthread_mutex_lock(&p->mu);
  atomic_store(&p->stop, 1);
  pthread_cond_broadcast(&p->cv_work);
  pthread_mutex_unlock(&p->mu);
  for (int i = 0; i < p->n_th; i++) pthread_join(p->th[i], NULL);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv_work);
  free(p->th);
  free(p->workers);
  free((void *)p->claimed);
  free(p);
}

int nbl_pool_run(nbl_pool *p, int64_t n, int64_t grain, int ways,
                 void (*fn)(void *, int64_t, int64_t), void *arg) {
  if (!p || p->n_th == 0 || tl_in_worker) return 0;
  int expect = 0;
  if (!atomic_compare_exchange_strong(&p->busy, &expect, 1)) return 0;
  if (ways > p->n_th + 1) ways = p->n_th + 1;
  int64_t chunks = (n + grain - 1) / grain;
  if (chunks > (int64_t)ways * POOL_SPLIT) chunks = (int64_t)ways * POOL_SPLIT;
  if (chunks < 1) chunks = 1;
  unsigned g = atomic_load(&p->gen);
  atomic_store(&p->gen, g + 1); /* odd: updating */
  while (atomic_load(&p->active) != 0) cpu_relax();
  p->fn = fn;
  p->arg = arg;
  p->cap = nbl_cpu_thread_cap();
  p->n = n;
  p->chunk = (n + chunks - 1) / chunks;
  p->n_chunks = (int)((n + p->chunk - 1) / p->chunk);
  p->ways = ways < p->n_chunks ? ways : p->n_chunks;
  atomic_store(&p->done_chunks, 0);
  for (int i = 0; i < p->n_chunks; i++) atomic_store(&p->claimed[i], 0);
  atomic_store(&p->gen, g + 2); /* even: ready */
  if (atomic_load(&p->sleepers) > 0) {
    pthread_mutex_lock(&p->mu);
    pthread_cond_broadcast(&p->cv_work);
    pthread_mutex_unlock(&p->mu);
  }
  tl_in_worker = 1; /* nested parallel_for from the caller's chunk runs inline */
  pool_do_chunks(p, 0);
  tl_in_worker = 0;
  while (atomic_load_explicit(&p->done_chunks, memory_order_acquire) < p->n_chunks) cpu_relax();
  atomic_store(&p->busy, 0);
  return 1;
}

int nbl_default_threads(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : (n > 256 ? 256 : (int)n);
}
