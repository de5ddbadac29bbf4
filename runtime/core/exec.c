/* exec.c - planner, executor, thread pool, the kernel context functions of
 * kernel.h and the public session API of nibble.h. See exec.h. */
#include "nibble.h" /* implements the session API */
#include "runtime/core/exec.h"
#include "runtime/fusions/fuse.h"
#include "runtime/kernels/ternary_fused.h" /* TERNARY HOOK */
#include "runtime/kernels/int4_gemm.h"

#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define ARENA_ALIGN 64

/* ------------------------------------------------------------------ thread pool */

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

typedef struct pool {
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
  int64_t n, chunk;
  int n_chunks, ways; /* chunks, and threads sharing them */
  _Atomic int done_chunks;
  _Atomic unsigned char *claimed; /* [max_chunks]: chunk i taken */
  int max_chunks;
  struct pool_worker *workers;
} pool;

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
    if (atomic_load(&p->gen) == g) pool_do_chunks(p, w->idx);
    atomic_fetch_sub(&p->active, 1);
    seen = g;
  }
  return NULL;
}

static pool *pool_new(int threads) {
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

static void pool_free(pool *p) {
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

/* Returns 0 if the pool was busy or unusable (caller runs inline). */
static int pool_run(pool *p, int64_t n, int64_t grain, int ways,
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

/* ------------------------------------------------------------------ plans */

typedef struct step {
  nbl_id node;
  const nbl_op_def *def;
  int opset;
  int out_base; /* index of output 0 in the arena slot table */
  const nbl_node *fnode; /* INT4 fusion: synthetic node run instead of g->nodes[node] */
} step;

typedef struct gplan {
  const nbl_graph *g;
  int n_steps;
  step *steps;
  int *last_use;  /* per value: step after which it can be freed; INT_MAX: keep */
  int n_slots;    /* sum of node outputs (arena slot table size) */
  int *free_start; /* per step s: free_list[free_start[s] .. free_start[s+1]) dies after s */
  nbl_id *free_list;
  nbl_kcache *caches; /* per step: kernel cache (nbl_kctx_cache) */
} gplan;

struct nbl_engine {
  const nbl_model *m;
  const nbl_graph *g;
  int threads, reference, no_arena;
  int profile, prof_runs;
  int64_t *prof_ns;           /* per step of plans[0] */
  const nbl_node **prof_node; /* per step of plans[0] */
  nbl_value_cb on_value;
  void *user;
  gplan **plans; /* plans[0]: g; then every subgraph */
  int n_plans;
  pool *pool;
  nbl_i4_fusion *fusion; /* INT4 fast path of the main graph (fuse_int4.c), NULL if none */
  nbl_f32_fusion *f32fusion; /* Conv + activation (fuse_f32.c), NULL if none */
  void *tern_fusion;         /* TERNARY HOOK: ternary fast path (fuse_ternary.c), NULL if none */
  /* top frame state */
  nbl_rt_tensor *vals;
  unsigned char *set;
  unsigned char *bound;   /* value bound by the caller (view) */
  nbl_rt_tensor *binds;   /* caller views */
  nbl_rt_tensor *state;   /* initializer views / writable copies (per value) */
  nbl_id *feeds;
  int n_feeds;
  int ran;
  /* arena plan */
  int mode;            /* 0 record, 1 planned */
  int64_t *sig;        /* input shape signature of the plan */
  int sig_len;
  size_t *slot_size;   /* recorded sizes per slot (0: none) */
  int *slot_start, *slot_end;
  size_t *slot_off;
  unsigned char *arena;
  size_t arena_bytes;
  nbl_engine_stats stats;
};

typedef struct frame {
  nbl_engine *e;
  const gplan *p;
  const nbl_graph *g;
  nbl_rt_tensor *vals;
  unsigned char *set;
  struct frame *parent;
  int top;
} frame;

/* The per-node call state behind nbl_kctx.exec. */
struct nbl_exec {
  frame *f;
  int step;
  const step *st;
  nbl_rt_tensor *scratch; /* lazily allocated, one per node output */
  int n_scratch;
};

static const char *dom_name(const char *d) { return d && *d ? d : ""; }

static int node_opset(const nbl_model *m, const nbl_node *n) {
  int64_t v = nbl_model_opset(m, n->domain);
  if (v == 0 && strcmp(dom_name(n->domain), "") == 0) v = nbl_model_opset(m, "ai.onnx");
  return (int)v;
}

static void gplan_free(gplan *p) {
  if (!p) return;
  for (int s = 0; p->caches && s < p->n_steps; s++)
    if (p->caches[s].free_fn) p->caches[s].free_fn(p->caches[s].data);
  free(p->caches);
  free(p->steps);
  free(p->last_use);
  free(p->free_start);
  free(p->free_list);
  free(p);
}

/* Collect names of outer-scope values used anywhere inside sub (recursively). */
static void collect_outer(const nbl_graph *sub, const nbl_graph *g, int s, int *last_use) {
  for (int v = 0; v < sub->n_values; v++) {
    const nbl_value *val = &sub->values[v];
    if (val->dead || !(val->flags & NBL_VAL_OUTER)) continue;
    nbl_id pv = nbl_graph_find(g, val->name);
    if (pv != NBL_NONE && last_use[pv] != INT_MAX && last_use[pv] < s) last_use[pv] = s;
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    if (n->dead) continue;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g)
        collect_outer(n->attrs[a].g, g, s, last_use);
      else if (n->attrs[a].type == NBL_ATTR_GRAPHS)
        for (int k = 0; k < n->attrs[a].n; k++) collect_outer(n->attrs[a].graphs[k], g, s, last_use);
    }
  }
}

static nbl_status plan_graph(nbl_engine *e, const nbl_graph *g);

static int i4_taken(const void *user, nbl_id node) {
  const nbl_op_def *d;
  return nbl_i4_fused_node(user, node, &d) != NULL;
}

/* TERNARY HOOK: what the INT4 or the ternary fusion took (for the FP32 one) */
static int fused_taken(const void *user, nbl_id node) {
  const nbl_engine *e = user;
  return i4_taken(e->fusion, node) || nbl_fuse_ternary_node(e->tern_fusion, node) != NULL;
}

static nbl_status plan_graph(nbl_engine *e, const nbl_graph *g) {
  gplan *p = calloc(1, sizeof *p);
  if (!p) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  gplan **np = realloc(e->plans, sizeof(gplan *) * (size_t)(e->n_plans + 1));
  if (!np) {
    free(p);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  e->plans = np;
  e->plans[e->n_plans++] = p;
  p->g = g;
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return NBL_ERR_INVALID_MODEL;
  /* INT4 fast path (runtime/fusions/fuse_int4.c): QuantizeInt4 -> Conv/Gemm/MatMul
   * become one synthetic node each (steps below take it from fnode), and the
   * quantizers only they used leave the order. Main graph, non-reference. */
  if (g == e->g && !e->reference) {
    /* intermediates stay floats when a callback sees every value */
    nbl_status fst = nbl_i4_fuse(e->m, g, order, &n, e->on_value == NULL, &e->fusion);
    /* TERNARY HOOK (runtime/fusions/fuse_ternary.c): after INT4, before the FP32 Conv+act */
    if (fst == NBL_OK)
      fst = nbl_fuse_ternary_plan(e->m, g, order, &n, i4_taken, e->fusion, &e->tern_fusion);
    if (fst == NBL_OK) fst = nbl_f32_fuse(e->m, g, order, &n, fused_taken, e, &e->f32fusion);
    if (fst != NBL_OK) {
      free(order);
      return fst;
    }
  }
  p->n_steps = n;
  p->steps = calloc((size_t)(n ? n : 1), sizeof(step));
  p->caches = calloc((size_t)(n ? n : 1), sizeof(nbl_kcache));
  if (!p->caches) {
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  p->last_use = malloc(sizeof(int) * (size_t)(g->n_values ? g->n_values : 1));
  if (!p->steps || !p->last_use) {
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory planning graph '%s'", g->name);
  }
  for (int v = 0; v < g->n_values; v++) {
    const nbl_value *val = &g->values[v];
    p->last_use[v] = (val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_OUTER)) || val->init
                         ? INT_MAX
                         : -1;
  }
  for (int i = 0; i < g->n_outputs; i++) p->last_use[g->outputs[i]] = INT_MAX;
  nbl_status st = NBL_OK;
  int slots = 0;
  for (int s = 0; s < n; s++) {
    const nbl_node *nd = &g->nodes[order[s]];
    step *sp = &p->steps[s];
    sp->node = order[s];
    sp->opset = node_opset(e->m, nd);
    sp->out_base = slots;
    slots += nd->n_outputs;
    const nbl_op_def *fdef = NULL;
    sp->fnode = g == e->g ? nbl_i4_fused_node(e->fusion, order[s], &fdef) : NULL;
    if (!sp->fnode && g == e->g && (sp->fnode = nbl_fuse_ternary_node(e->tern_fusion, order[s])))
      fdef = &nbl_t_fused_def; /* TERNARY HOOK */
    if (!sp->fnode && g == e->g) sp->fnode = nbl_f32_fused_node(e->f32fusion, order[s], &fdef);
    if (sp->fnode) nd = sp->fnode;
    sp->def = sp->fnode ? fdef : nbl_op_lookup(nd->domain, nd->op_type, sp->opset);
    if (!sp->def && st == NBL_OK) {
      if (sp->opset == 0)
        st = nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "node '%s' (%s, domain '%s'): the model imports no opset for this domain",
                        nd->name ? nd->name : "", nd->op_type, dom_name(nd->domain));
      else
        st = nbl_errorf(NBL_ERR_UNSUPPORTED, "node '%s' (%s, domain '%s', opset %d): no kernel",
                        nd->name ? nd->name : "", nd->op_type, dom_name(nd->domain), sp->opset);
    }
    for (int k = 0; k < nd->n_inputs; k++) {
      nbl_id v = nd->inputs[k];
      if (v != NBL_NONE && p->last_use[v] != INT_MAX && p->last_use[v] < s) p->last_use[v] = s;
    }
    for (int k = 0; k < nd->n_outputs; k++) {
      nbl_id v = nd->outputs[k];
      if (v != NBL_NONE && p->last_use[v] != INT_MAX && p->last_use[v] < s) p->last_use[v] = s;
    }
    for (int a = 0; a < nd->n_attrs; a++) {
      const nbl_attr *at = &nd->attrs[a];
      int ng = at->type == NBL_ATTR_GRAPH ? (at->g ? 1 : 0) : at->type == NBL_ATTR_GRAPHS ? at->n : 0;
      for (int k = 0; k < ng; k++) {
        const nbl_graph *sub = at->type == NBL_ATTR_GRAPH ? at->g : at->graphs[k];
        collect_outer(sub, g, s, p->last_use);
        if (st == NBL_OK) {
          st = plan_graph(e, sub);
          if (st != NBL_OK)
            nbl_error_prefix("node '%s' (%s): attribute '%s'", nd->name ? nd->name : "",
                             nd->op_type, at->name);
        }
      }
    }
  }
  p->n_slots = slots;
  free(order);
  /* free lists: values whose last use is step s */
  p->free_start = calloc((size_t)n + 2, sizeof(int));
  p->free_list = malloc(sizeof(nbl_id) * (size_t)(g->n_values ? g->n_values : 1));
  if (!p->free_start || !p->free_list)
    return st != NBL_OK ? st : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int v = 0; v < g->n_values; v++)
    if (p->last_use[v] >= 0 && p->last_use[v] < n) p->free_start[p->last_use[v] + 1]++;
  for (int s = 0; s < n; s++) p->free_start[s + 1] += p->free_start[s];
  int *fill = calloc((size_t)n + 1, sizeof(int));
  if (!fill) return st != NBL_OK ? st : nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int v = 0; v < g->n_values; v++)
    if (p->last_use[v] >= 0 && p->last_use[v] < n)
      p->free_list[p->free_start[p->last_use[v]] + fill[p->last_use[v]]++] = v;
  free(fill);
  return st;
}

static const gplan *find_plan(const nbl_engine *e, const nbl_graph *g) {
  for (int i = 0; i < e->n_plans; i++)
    if (e->plans[i]->g == g) return e->plans[i];
  return NULL;
}

/* ------------------------------------------------------------------ tensors */

nbl_status nbl_rt_copy(nbl_rt_tensor *dst, const nbl_rt_tensor *src) {
  nbl_rt_tensor t = {0};
  nbl_status st = nbl_rt_tensor_alloc(&t, src->dtype, src->rank, src->dims);
  if (st != NBL_OK) return st;
  if (src->dtype == NBL_DT_STRING) {
    char **d = t.data, *const *s = src->data;
    for (int64_t i = 0; i < t.numel; i++) {
      d[i] = strdup(s[i] ? s[i] : "");
      if (!d[i]) {
        nbl_rt_tensor_free(&t);
        return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory copying strings");
      }
    }
  } else if (t.nbytes && src->data) {
    memcpy(t.data, src->data, t.nbytes < src->nbytes ? t.nbytes : src->nbytes);
  }
  *dst = t;
  return NBL_OK;
}

static void slot_clear(nbl_rt_tensor *t) {
  nbl_rt_tensor_free(t);
  memset(t, 0, sizeof *t);
}

/* ------------------------------------------------------------------ engine */

static nbl_status bind_initializers(const nbl_graph *g, nbl_rt_tensor *vals, unsigned char *set) {
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    const nbl_value *val = &g->values[v];
    if (!val->init) continue;
    nbl_status st = nbl_rt_from_ir(val->init, &vals[v]);
    if (st != NBL_OK) {
      nbl_error_prefix("graph '%s': initializer '%s'", g->name, val->name);
      return st;
    }
    set[v] = 1;
  }
  return NBL_OK;
}

nbl_status nbl_engine_create(const nbl_model *m, const nbl_graph *g,
                             const nbl_engine_options *opt, nbl_engine **out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_engine_create: NULL argument");
  *out = NULL;
  if (!g) g = m->graph;
  if (!g) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: model has no graph", nbl_model_label(m));
  nbl_engine *e = calloc(1, sizeof *e);
  if (!e) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  e->m = m;
  e->g = g;
  e->threads = opt && opt->threads > 0 ? opt->threads : nbl_default_threads();
  e->reference = opt ? opt->reference : 0;
  e->no_arena = opt ? opt->no_arena : 0;
  e->profile = opt ? opt->profile : 0;
  e->on_value = opt ? opt->on_value : NULL;
  e->user = opt ? opt->user : NULL;
  nbl_status st = plan_graph(e, g);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(m));
    nbl_engine_free(e);
    return st;
  }
  size_t nv = (size_t)(g->n_values ? g->n_values : 1);
  e->vals = calloc(nv, sizeof(nbl_rt_tensor));
  e->set = calloc(nv, 1);
  e->bound = calloc(nv, 1);
  e->binds = calloc(nv, sizeof(nbl_rt_tensor));
  e->state = calloc(nv, sizeof(nbl_rt_tensor));
  e->feeds = calloc((size_t)(g->n_inputs + 1), sizeof(nbl_id));
  int ns = e->plans[0]->n_slots + 1;
  e->slot_size = calloc((size_t)ns, sizeof(size_t));
  e->slot_start = calloc((size_t)ns, sizeof(int));
  e->slot_end = calloc((size_t)ns, sizeof(int));
  e->slot_off = calloc((size_t)ns, sizeof(size_t));
  if (!e->vals || !e->set || !e->bound || !e->binds || !e->state || !e->feeds || !e->slot_size ||
      !e->slot_start || !e->slot_end || !e->slot_off) {
    nbl_engine_free(e);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  unsigned char *dummy = calloc(nv, 1);
  if (!dummy) {
    nbl_engine_free(e);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  st = bind_initializers(g, e->state, dummy);
  free(dummy);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(m));
    nbl_engine_free(e);
    return st;
  }
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    if (!g->values[v].init) e->feeds[e->n_feeds++] = v;
  }
  if (e->profile) {
    const gplan *p0 = e->plans[0];
    e->prof_ns = calloc((size_t)p0->n_steps + 1, sizeof(int64_t));
    e->prof_node = calloc((size_t)p0->n_steps + 1, sizeof(*e->prof_node));
    if (!e->prof_ns || !e->prof_node) {
      nbl_engine_free(e);
      return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  }
  if (e->threads > 1) e->pool = pool_new(e->threads);
  *out = e;
  return NBL_OK;
}

static void free_top_values(nbl_engine *e) {
  if (!e->vals) return;
  for (int v = 0; v < e->g->n_values; v++) {
    slot_clear(&e->vals[v]);
    e->set[v] = 0;
  }
}

void nbl_engine_free(nbl_engine *e) {
  if (!e) return;
  free_top_values(e);
  if (e->state)
    for (int v = 0; v < e->g->n_values; v++) nbl_rt_tensor_free(&e->state[v]);
  for (int i = 0; i < e->n_plans; i++) gplan_free(e->plans[i]);
  free(e->plans);
  pool_free(e->pool);
  nbl_i4_fusion_free(e->fusion);
  nbl_f32_fusion_free(e->f32fusion);
  nbl_fuse_ternary_free(e->tern_fusion); /* TERNARY HOOK */
  free(e->vals);
  free(e->set);
  free(e->bound);
  free(e->binds);
  free(e->state);
  free(e->feeds);
  free(e->sig);
  free(e->slot_size);
  free(e->slot_start);
  free(e->slot_end);
  free(e->slot_off);
  free(e->arena);
  free(e->prof_ns);
  free(e->prof_node);
  free(e);
}

int nbl_engine_profile(const nbl_engine *e, int *n, const nbl_node *const **nodes,
                       const int64_t **ns, int *runs) {
  if (!e || !e->prof_ns) return 0;
  const gplan *p0 = e->plans[0];
  for (int s = 0; s < p0->n_steps; s++) /* steps may be fused after planning */
    e->prof_node[s] = p0->steps[s].fnode ? p0->steps[s].fnode : &e->g->nodes[p0->steps[s].node];
  *n = p0->n_steps;
  *nodes = e->prof_node;
  *ns = e->prof_ns;
  *runs = e->prof_runs;
  return 1;
}

void nbl_engine_reset_profile(nbl_engine *e) {
  if (!e || !e->prof_ns) return;
  memset(e->prof_ns, 0, sizeof(int64_t) * (size_t)e->plans[0]->n_steps);
  e->prof_runs = 0;
}

int nbl_engine_n_feeds(const nbl_engine *e) { return e->n_feeds; }
nbl_id nbl_engine_feed_value(const nbl_engine *e, int i) { return e->feeds[i]; }
const nbl_graph *nbl_engine_graph(const nbl_engine *e) { return e->g; }

void nbl_engine_get_stats(const nbl_engine *e, nbl_engine_stats *st) {
  *st = e->stats;
  st->arena_bytes = e->arena_bytes;
}

static nbl_status check_against_type(const nbl_value *val, const nbl_rt_tensor *t) {
  const nbl_type *ty = &val->type;
  if (ty->kind != NBL_TYPE_TENSOR) return NBL_OK;
  if (ty->elem != NBL_DT_UNDEFINED && ty->elem != t->dtype)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': got element type %s, the model expects %s",
                      val->name, nbl_dtype_name(t->dtype), nbl_dtype_name(ty->elem));
  if (ty->rank >= 0) {
    if (ty->rank != t->rank)
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': got rank %d, the model expects %d",
                        val->name, t->rank, ty->rank);
    for (int d = 0; d < t->rank; d++)
      if (ty->dims[d].value >= 0 && ty->dims[d].param == NULL && ty->dims[d].value != t->dims[d])
        return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                          "input '%s': dimension %d is %lld, the model expects %lld", val->name, d,
                          (long long)t->dims[d], (long long)ty->dims[d].value);
  }
  return NBL_OK;
}

nbl_status nbl_engine_bind(nbl_engine *e, const char *name, const nbl_rt_tensor *view) {
  nbl_id v = nbl_graph_find(e->g, name);
  if (v == NBL_NONE || !(e->g->values[v].flags & (NBL_VAL_INPUT | NBL_VAL_OUTER)))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: graph '%s' has no input named '%s'",
                      nbl_model_label(e->m), e->g->name, name);
  if (!view) {
    e->bound[v] = 0;
    return NBL_OK;
  }
  if (view->rank < 0 || view->rank > NBL_MAX_RANK)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "input '%s': rank %d exceeds the supported maximum %d",
                      name, view->rank, NBL_MAX_RANK);
  nbl_status st = check_against_type(&e->g->values[v], view);
  if (st != NBL_OK) return st;
  nbl_rt_tensor t = *view;
  t.range_known = 0; /* the caller's data: nothing recorded about it */
  t.codes_for = NULL;
  t.numel = nbl_shape_numel(t.rank, t.dims);
  if (t.numel < 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': negative or overflowing shape", name);
  size_t need = t.dtype == NBL_DT_STRING ? (size_t)t.numel * sizeof(char *)
                                         : nbl_dtype_nbytes(t.dtype, t.numel);
  if (t.dtype != NBL_DT_STRING && nbl_dtype_bits(t.dtype) == 0)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "input '%s': element type %s is not supported", name,
                      nbl_dtype_name(t.dtype));
  if (t.nbytes < need || (need && !t.data))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input '%s': %zu bytes given, the shape needs %zu",
                      name, t.nbytes, need);
  t.nbytes = need;
  t.owns = 0;
  e->binds[v] = t;
  e->bound[v] = 1;
  return NBL_OK;
}

nbl_rt_tensor *nbl_engine_state(nbl_engine *e, const char *name) {
  nbl_id v = nbl_graph_find(e->g, name);
  if (v == NBL_NONE || !e->g->values[v].init) {
    nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: no initializer named '%s'", nbl_model_label(e->m),
               name ? name : "");
    return NULL;
  }
  nbl_rt_tensor *t = &e->state[v];
  if (!t->owns) {
    nbl_rt_tensor c;
    if (nbl_rt_copy(&c, t) != NBL_OK) return NULL;
    *t = c;
  }
  /* The caller may now change the state in place: kernel caches derived from
   * constant weights (transformed Winograd weights, ...) are dropped and
   * rebuilt on the next run. */
  for (int i = 0; i < e->n_plans; i++) {
    gplan *p = e->plans[i];
    for (int k = 0; p && p->caches && k < p->n_steps; k++) {
      if (p->caches[k].free_fn) p->caches[k].free_fn(p->caches[k].data);
      p->caches[k].data = NULL;
      p->caches[k].free_fn = NULL;
    }
  }
  return t;
}

const nbl_rt_tensor *nbl_engine_output(const nbl_engine *e, int i) {
  if (!e->ran || i < 0 || i >= e->g->n_outputs) return NULL;
  nbl_id v = e->g->outputs[i];
  return e->set[v] ? &e->vals[v] : NULL;
}

/* ------------------------------------------------------------------ running */

static nbl_rt_tensor *frame_lookup(frame *f, nbl_id v) {
  if (f->set[v]) return &f->vals[v];
  const nbl_value *val = &f->g->values[v];
  if (!(val->flags & NBL_VAL_OUTER) && f->g->values[v].producer != NBL_NONE) return NULL;
  for (frame *p = f->parent; p; p = p->parent) {
    nbl_id pv = nbl_graph_find(p->g, val->name);
    if (pv != NBL_NONE && p->set[pv]) return &p->vals[pv];
  }
  return NULL;
}

static nbl_status run_frame(frame *f);

static nbl_status frame_init(frame *f, nbl_engine *e, const gplan *p, frame *parent) {
  memset(f, 0, sizeof *f);
  f->e = e;
  f->p = p;
  f->g = p->g;
  f->parent = parent;
  size_t nv = (size_t)(p->g->n_values ? p->g->n_values : 1);
  f->vals = calloc(nv, sizeof(nbl_rt_tensor));
  f->set = calloc(nv, 1);
  if (!f->vals || !f->set) {
    free(f->vals);
    free(f->set);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  return bind_initializers(p->g, f->vals, f->set);
}

static void frame_free(frame *f) {
  for (int v = 0; v < f->g->n_values; v++) nbl_rt_tensor_free(&f->vals[v]);
  free(f->vals);
  free(f->set);
}

static nbl_status node_error_context(const nbl_node *nd, nbl_status st) {
  const char *msg = nbl_last_error();
  if (strncmp(msg, "node '", 6) != 0)
    nbl_error_prefix("node '%s' (%s)", nd->name ? nd->name : "", nd->op_type);
  return st;
}

static nbl_status run_frame(frame *f) {
  nbl_engine *e = f->e;
  const gplan *p = f->p;
  const nbl_graph *g = f->g;
  nbl_status st = NBL_OK;
  const nbl_rt_tensor **ins = NULL;
  nbl_rt_tensor **outs = NULL;
  int cap_in = 0, cap_out = 0;
  for (int s = 0; s < p->n_steps && st == NBL_OK; s++) {
    const step *sp = &p->steps[s];
    const nbl_node *nd = sp->fnode ? sp->fnode : &g->nodes[sp->node];
    if (nd->n_inputs > cap_in) {
      cap_in = nd->n_inputs;
      free(ins);
      ins = malloc(sizeof(*ins) * (size_t)cap_in);
    }
    if (nd->n_outputs > cap_out) {
      cap_out = nd->n_outputs;
      free(outs);
      outs = malloc(sizeof(*outs) * (size_t)cap_out);
    }
    if ((nd->n_inputs && !ins) || (nd->n_outputs && !outs)) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      break;
    }
    for (int k = 0; k < nd->n_inputs; k++) {
      nbl_id v = nd->inputs[k];
      ins[k] = NULL;
      if (v == NBL_NONE) continue;
      ins[k] = frame_lookup(f, v);
      if (!ins[k]) {
        st = nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (%s): input '%s' has no value",
                        nd->name ? nd->name : "", nd->op_type, g->values[v].name);
        break;
      }
    }
    if (st != NBL_OK) break;
    for (int k = 0; k < nd->n_outputs; k++) {
      nbl_id v = nd->outputs[k];
      outs[k] = NULL;
      if (v == NBL_NONE) continue;
      slot_clear(&f->vals[v]);
      f->set[v] = 0;
      outs[k] = &f->vals[v];
    }
    struct nbl_exec call = {.f = f, .step = s, .st = sp};
    nbl_kctx ctx = {.graph = g,
                    .node = nd,
                    .opset = sp->opset,
                    .n_in = nd->n_inputs,
                    .in = ins,
                    .n_out = nd->n_outputs,
                    .out = outs,
                    .reference = e->reference,
                    .threads = e->threads,
                    .exec = &call};
    nbl_kernel_fn fn = (!e->reference && sp->def->fast) ? sp->def->fast : sp->def->ref;
    struct timespec t0, t1;
    int timed = f->top && e->prof_ns;
    if (timed) clock_gettime(CLOCK_MONOTONIC, &t0);
    st = fn(&ctx);
    if (timed) {
      clock_gettime(CLOCK_MONOTONIC, &t1);
      e->prof_ns[s] += (int64_t)(t1.tv_sec - t0.tv_sec) * 1000000000 + (t1.tv_nsec - t0.tv_nsec);
    }
    if (st == NBL_OK) {
      for (int k = 0; k < nd->n_outputs; k++) {
        nbl_id v = nd->outputs[k];
        if (v == NBL_NONE) continue;
        const nbl_rt_tensor *t = &f->vals[v];
        if (t->data == NULL && !(t->numel == 0 && t->dtype != NBL_DT_UNDEFINED)) {
          st = nbl_errorf(NBL_ERR_INTERNAL, "node '%s' (%s): kernel produced no output %d ('%s')",
                          nd->name ? nd->name : "", nd->op_type, k, g->values[v].name);
          break;
        }
        f->set[v] = 1;
        if (e->on_value) e->on_value(e->user, g->values[v].name, t);
      }
    } else {
      node_error_context(nd, st);
    }
    for (int k = 0; k < call.n_scratch; k++) nbl_rt_tensor_free(&call.scratch[k]);
    free(call.scratch);
    /* values captured by this node's subgraphs (and any other use ending here) */
    for (int k = p->free_start[s]; k < p->free_start[s + 1]; k++) {
      nbl_id v = p->free_list[k];
      if (f->set[v]) {
        slot_clear(&f->vals[v]);
        f->set[v] = 0;
        e->stats.frees_early++;
      }
    }
  }
  free(ins);
  free(outs);
  return st;
}

static int64_t *input_signature(nbl_engine *e, int *len) {
  const nbl_graph *g = e->g;
  int n = 0;
  for (int i = 0; i < g->n_inputs; i++) n += 2 + NBL_MAX_RANK;
  int64_t *sig = calloc((size_t)(n ? n : 1), sizeof(int64_t));
  if (!sig) return NULL;
  int k = 0;
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    const nbl_rt_tensor *t = e->set[v] ? &e->vals[v] : NULL;
    sig[k++] = t ? (int64_t)t->dtype : -1;
    sig[k++] = t ? t->rank : -1;
    for (int d = 0; d < NBL_MAX_RANK; d++) sig[k++] = t && d < t->rank ? t->dims[d] : -1;
  }
  *len = n;
  return sig;
}

typedef struct slot_item {
  int slot;
  size_t size;
} slot_item;

static int cmp_item(const void *a, const void *b) {
  const slot_item *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  return x->slot - y->slot;
}

/* Lay out the recorded slots in one arena: biggest first, lowest offset that
 * does not overlap any placed slot alive at the same time. */
static void build_arena(nbl_engine *e) {
  int ns = e->plans[0]->n_slots;
  slot_item *items = malloc(sizeof(slot_item) * (size_t)(ns ? ns : 1));
  int *placed = malloc(sizeof(int) * (size_t)(ns ? ns : 1));
  free(e->arena);
  e->arena = NULL;
  e->arena_bytes = 0;
  if (!items || !placed) {
    free(items);
    free(placed);
    return;
  }
  int n = 0;
  for (int i = 0; i < ns; i++)
    if (e->slot_size[i]) items[n++] = (slot_item){i, (e->slot_size[i] + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1)};
  qsort(items, (size_t)n, sizeof *items, cmp_item);
  size_t total = 0;
  int np = 0;
  for (int i = 0; i < n; i++) {
    int s = items[i].slot;
    size_t off = 0;
    for (;;) {
      int moved = 0;
      for (int j = 0; j < np; j++) {
        int o = placed[j];
        if (e->slot_start[o] > e->slot_end[s] || e->slot_start[s] > e->slot_end[o]) continue;
        size_t osz = (e->slot_size[o] + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        if (off < e->slot_off[o] + osz && e->slot_off[o] < off + items[i].size) {
          off = e->slot_off[o] + osz;
          moved = 1;
        }
      }
      if (!moved) break;
    }
    e->slot_off[s] = off;
    placed[np++] = s;
    if (off + items[i].size > total) total = off + items[i].size;
  }
  free(items);
  free(placed);
  if (total) {
    e->arena = aligned_alloc(ARENA_ALIGN, total);
    if (e->arena) {
      e->arena_bytes = total;
      memset(e->arena, 0xa5, total); /* not zero: kernels must not rely on zeroed outputs */
    }
  }
  e->stats.plans++;
}

nbl_status nbl_engine_run(nbl_engine *e) {
  const nbl_graph *g = e->g;
  free_top_values(e);
  e->ran = 0;
  /* bind state, then caller inputs */
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    if (!g->values[v].init) continue;
    e->vals[v] = e->state[v];
    e->vals[v].owns = 0;
    e->set[v] = 1;
  }
  for (nbl_id v = 0; v < g->n_values; v++) /* outer values of a training graph, bound by the caller */
    if ((g->values[v].flags & NBL_VAL_OUTER) && e->bound[v]) {
      e->vals[v] = e->binds[v];
      e->set[v] = 1;
    }
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    if (e->bound[v]) {
      e->vals[v] = e->binds[v];
      e->set[v] = 1;
    } else if (!e->set[v]) {
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: input '%s' was not given",
                        nbl_model_label(e->m), g->values[v].name);
    }
  }
  /* arena mode */
  int len = 0;
  int64_t *sig = input_signature(e, &len);
  if (!sig) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (!e->no_arena && e->sig && len == e->sig_len && memcmp(sig, e->sig, sizeof(int64_t) * (size_t)len) == 0 &&
      e->arena) {
    e->mode = 1;
    free(sig);
  } else {
    free(e->sig);
    e->sig = sig;
    e->sig_len = len;
    e->mode = 0;
    free(e->arena);
    e->arena = NULL;
    e->arena_bytes = 0;
    int ns = e->plans[0]->n_slots;
    memset(e->slot_size, 0, sizeof(size_t) * (size_t)(ns + 1));
  }
  frame f = {.e = e, .p = e->plans[0], .g = g, .vals = e->vals, .set = e->set, .top = 1};
  nbl_status st = run_frame(&f);
  if (st != NBL_OK) {
    nbl_error_prefix("%s", nbl_model_label(e->m));
    free(e->sig);
    e->sig = NULL;
    free_top_values(e);
    return st;
  }
  for (int i = 0; i < g->n_outputs; i++) {
    nbl_id v = g->outputs[i];
    if (!e->set[v]) {
      free_top_values(e);
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph output '%s' was not computed",
                        nbl_model_label(e->m), g->values[v].name);
    }
  }
  if (e->mode == 0 && !e->no_arena) build_arena(e);
  e->ran = 1;
  e->stats.runs++;
  if (e->prof_ns) e->prof_runs++;
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernel context */

nbl_status nbl_kerr(nbl_kctx *ctx, nbl_status st, const char *fmt, ...) {
  char buf[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  const nbl_node *n = ctx ? ctx->node : NULL;
  return nbl_errorf(st, "node '%s' (%s): %s", n && n->name ? n->name : "", n ? n->op_type : "?",
                    buf);
}

static nbl_rt_tensor *out_slot(nbl_kctx *ctx, int i) {
  if (ctx->out && ctx->out[i]) return ctx->out[i];
  struct nbl_exec *x = ctx->exec;
  if (!x) return NULL;
  if (!x->scratch) {
    x->scratch = calloc((size_t)(ctx->n_out ? ctx->n_out : 1), sizeof(nbl_rt_tensor));
    if (!x->scratch) return NULL;
    x->n_scratch = ctx->n_out;
  }
  return i < x->n_scratch ? &x->scratch[i] : NULL;
}

nbl_rt_tensor *nbl_kctx_out(nbl_kctx *ctx, int i) {
  if (!ctx || i < 0 || i >= ctx->n_out) return NULL;
  return out_slot(ctx, i);
}

nbl_status nbl_kctx_alloc_out(nbl_kctx *ctx, int i, nbl_dtype dt, int rank, const int64_t *dims) {
  if (!ctx || i < 0 || i >= ctx->n_out)
    return nbl_kerr(ctx, NBL_ERR_INTERNAL, "output index %d out of range", i);
  nbl_rt_tensor *t = out_slot(ctx, i);
  if (!t) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  slot_clear(t);
  if (rank < 0 || rank > NBL_MAX_RANK)
    return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "output %d: rank %d exceeds the supported maximum %d",
                    i, rank, NBL_MAX_RANK);
  for (int d = 0; d < rank; d++)
    if (dims[d] < 0)
      return nbl_kerr(ctx, NBL_ERR_RUNTIME, "output %d: negative dimension %lld", i,
                      (long long)dims[d]);
  struct nbl_exec *x = ctx->exec;
  nbl_engine *e = x ? x->f->e : NULL;
  int slot = -1;
  const nbl_node *nd = ctx->node;
  int is_graph_out = 0;
  if (x && x->f->top && nd && i < nd->n_outputs) {
    slot = x->st->out_base + i;
    nbl_id v = nd->outputs[i];
    if (v != NBL_NONE && x->f->p->last_use[v] == INT_MAX) is_graph_out = 1;
  }
  if (slot >= 0 && !is_graph_out && dt != NBL_DT_STRING && nbl_dtype_bits(dt) > 0 && !e->no_arena) {
    int64_t n = nbl_shape_numel(rank, dims);
    if (n < 0) return nbl_kerr(ctx, NBL_ERR_RUNTIME, "output %d: shape too large", i);
    size_t nb = nbl_dtype_nbytes(dt, n);
    if (e->mode == 1 && e->arena && nb <= e->slot_size[slot] && nb > 0) {
      t->dtype = dt;
      t->rank = rank;
      for (int d = 0; d < rank; d++) t->dims[d] = dims[d];
      t->numel = n;
      t->data = e->arena + e->slot_off[slot];
      t->nbytes = nb;
      t->owns = 0;
      e->stats.arena_hits++;
      return NBL_OK;
    }
    if (e->mode == 0 && nb > 0) {
      if (nb > e->slot_size[slot]) e->slot_size[slot] = nb;
      e->slot_start[slot] = x->step;
      nbl_id v = nd->outputs[i];
      int lu = v == NBL_NONE ? x->step : x->f->p->last_use[v];
      e->slot_end[slot] = lu < x->step ? x->step : lu;
    }
  }
  nbl_status st = nbl_rt_tensor_alloc(t, dt, rank, dims);
  if (st != NBL_OK) return node_error_context(nd, st);
  if (e) e->stats.mallocs++;
  return NBL_OK;
}

nbl_status nbl_kctx_copy_out(nbl_kctx *ctx, int i, const nbl_rt_tensor *src) {
  nbl_status st = nbl_kctx_alloc_out(ctx, i, src->dtype, src->rank, src->dims);
  if (st != NBL_OK) return st;
  nbl_rt_tensor *t = out_slot(ctx, i);
  if (src->dtype == NBL_DT_STRING) {
    char **d = t->data, *const *s = src->data;
    for (int64_t k = 0; k < t->numel; k++) {
      d[k] = strdup(s[k] ? s[k] : "");
      if (!d[k]) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  } else if (t->nbytes) {
    memmove(t->data, src->data, t->nbytes);
  }
  return NBL_OK;
}

nbl_kcache *nbl_kctx_cache(nbl_kctx *ctx) {
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  if (!x || !x->f || !x->f->p || !x->f->p->caches || x->step < 0 || x->step >= x->f->p->n_steps)
    return NULL;
  return &x->f->p->caches[x->step];
}

void nbl_parallel_for(nbl_kctx *ctx, int64_t n, int64_t grain,
                      void (*fn)(void *arg, int64_t begin, int64_t end), void *arg) {
  if (n <= 0) return;
  if (grain < 1) grain = 1;
  int threads = ctx ? ctx->threads : 1;
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  pool *p = x ? x->f->e->pool : NULL;
  if (threads <= 1 || n <= grain || !p || !pool_run(p, n, grain, threads, fn, arg)) {
    fn(arg, 0, n);
    return;
  }
  x->f->e->stats.parallel_regions++;
}

nbl_status nbl_kctx_run_subgraph(nbl_kctx *ctx, const nbl_graph *sub, int n_in,
                                 const nbl_rt_tensor *const *in, int n_out, nbl_rt_tensor **out) {
  struct nbl_exec *x = ctx ? ctx->exec : NULL;
  if (!x || !sub) return nbl_kerr(ctx, NBL_ERR_INTERNAL, "subgraph run outside an executor");
  nbl_engine *e = x->f->e;
  const gplan *p = find_plan(e, sub);
  if (!p) return nbl_kerr(ctx, NBL_ERR_INTERNAL, "subgraph '%s' was not planned", sub->name);
  if (n_in != sub->n_inputs)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s' takes %d inputs, %d given", sub->name,
                    sub->n_inputs, n_in);
  if (n_out != sub->n_outputs)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s' has %d outputs, %d expected",
                    sub->name, sub->n_outputs, n_out);
  frame f;
  nbl_status st = frame_init(&f, e, p, x->f);
  if (st != NBL_OK) return node_error_context(ctx->node, st);
  for (int i = 0; i < n_in; i++) {
    nbl_id v = sub->inputs[i];
    nbl_rt_tensor_free(&f.vals[v]);
    if (!in[i]) {
      memset(&f.vals[v], 0, sizeof f.vals[v]);
      f.set[v] = 0;
      continue;
    }
    f.vals[v] = *in[i];
    f.vals[v].owns = 0;
    f.set[v] = 1;
  }
  st = run_frame(&f);
  if (st != NBL_OK) {
    nbl_error_prefix("node '%s' (%s): subgraph '%s'", ctx->node->name ? ctx->node->name : "",
                     ctx->node->op_type, sub->name);
    frame_free(&f);
    return st;
  }
  int i;
  for (i = 0; i < n_out; i++) {
    nbl_id v = sub->outputs[i];
    nbl_rt_tensor *t = frame_lookup(&f, v);
    memset(out[i], 0, sizeof *out[i]);
    if (!t) {
      st = nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "subgraph '%s': output '%s' was not computed",
                    sub->name, sub->values[v].name);
      break;
    }
    int later = 0;
    for (int j = i + 1; j < n_out; j++)
      if (sub->outputs[j] == v) later = 1;
    if (t->owns && !later && t == &f.vals[v]) {
      *out[i] = *t;
      memset(t, 0, sizeof *t);
      f.set[v] = 0;
    } else {
      st = nbl_rt_copy(out[i], t);
      if (st != NBL_OK) {
        node_error_context(ctx->node, st);
        break;
      }
    }
  }
  if (st != NBL_OK)
    for (int j = 0; j < i; j++) nbl_rt_tensor_free(out[j]);
  frame_free(&f);
  return st;
}

/* ------------------------------------------------------------------ sessions */

struct nbl_session {
  nbl_engine *e;
  nbl_host_tensor *outs;
  nbl_session_value_fn on_value;
  void *user;
};

static void session_value_cb(void *user, const char *name, const nbl_rt_tensor *t) {
  nbl_session *s = user;
  nbl_host_tensor h = {.name = name, .dtype = t->dtype, .rank = t->rank, .data = t->data,
                       .nbytes = t->nbytes};
  for (int d = 0; d < t->rank && d < NBL_MAX_DIMS; d++) h.dims[d] = t->dims[d];
  s->on_value(s->user, &h);
}

nbl_status nbl_session_create(const nbl_model *m, const nbl_session_options *opt,
                              nbl_session **out) {
  if (!m || !out) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_session_create: NULL argument");
  *out = NULL;
  nbl_session *s = calloc(1, sizeof *s);
  if (!s) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_engine_options eo = {0};
  if (opt) {
    eo.threads = opt->threads;
    eo.reference = opt->reference;
    eo.profile = opt->profile;
    if (opt->on_value) {
      s->on_value = opt->on_value;
      s->user = opt->user;
      eo.on_value = session_value_cb;
      eo.user = s;
    }
  }
  nbl_status st = nbl_engine_create(m, NULL, &eo, &s->e);
  if (st != NBL_OK) {
    free(s);
    return st;
  }
  s->outs = calloc((size_t)(m->graph->n_outputs + 1), sizeof(nbl_host_tensor));
  if (!s->outs) {
    nbl_session_free(s);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  *out = s;
  return NBL_OK;
}

int nbl_session_input_count(const nbl_session *s) { return s ? s->e->n_feeds : 0; }

const char *nbl_session_input_name(const nbl_session *s, int i) {
  if (!s || i < 0 || i >= s->e->n_feeds) return NULL;
  return s->e->g->values[s->e->feeds[i]].name;
}

nbl_status nbl_session_input_info(const nbl_session *s, int i, nbl_host_tensor *info) {
  if (!s || !info || i < 0 || i >= s->e->n_feeds)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "session input index %d out of range", i);
  const nbl_value *v = &s->e->g->values[s->e->feeds[i]];
  memset(info, 0, sizeof *info);
  info->name = v->name;
  info->dtype = v->type.kind == NBL_TYPE_TENSOR ? v->type.elem : NBL_DT_UNDEFINED;
  info->rank = v->type.kind == NBL_TYPE_TENSOR ? v->type.rank : -1;
  for (int d = 0; d < info->rank && d < NBL_MAX_DIMS; d++)
    info->dims[d] = v->type.dims[d].param ? -1 : v->type.dims[d].value;
  return NBL_OK;
}

int nbl_session_output_count(const nbl_session *s) { return s ? s->e->g->n_outputs : 0; }

const char *nbl_session_output_name(const nbl_session *s, int i) {
  if (!s || i < 0 || i >= s->e->g->n_outputs) return NULL;
  return s->e->g->values[s->e->g->outputs[i]].name;
}

nbl_status nbl_session_run(nbl_session *s, int n_inputs, const nbl_host_tensor *inputs,
                           const nbl_host_tensor **outputs) {
  if (!s || (n_inputs && !inputs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_session_run: NULL argument");
  nbl_engine *e = s->e;
  const nbl_graph *g = e->g;
  for (int i = 0; i < g->n_inputs; i++) e->bound[g->inputs[i]] = 0;
  for (int i = 0; i < n_inputs; i++) {
    const nbl_host_tensor *h = &inputs[i];
    if (!h->name) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "input %d has no name", i);
    if (h->rank < 0 || h->rank > NBL_MAX_DIMS)
      return nbl_errorf(NBL_ERR_UNSUPPORTED, "input '%s': rank %d exceeds the supported maximum %d",
                        h->name, h->rank, NBL_MAX_DIMS);
    nbl_rt_tensor t = {.dtype = h->dtype, .rank = h->rank, .data = h->data, .nbytes = h->nbytes};
    for (int d = 0; d < h->rank; d++) t.dims[d] = h->dims[d];
    nbl_status st = nbl_engine_bind(e, h->name, &t);
    if (st != NBL_OK) return st;
  }
  nbl_status st = nbl_engine_run(e);
  if (st != NBL_OK) return st;
  for (int i = 0; i < g->n_outputs; i++) {
    const nbl_rt_tensor *t = nbl_engine_output(e, i);
    nbl_host_tensor *h = &s->outs[i];
    memset(h, 0, sizeof *h);
    h->name = g->values[g->outputs[i]].name;
    h->dtype = t->dtype;
    h->rank = t->rank;
    for (int d = 0; d < t->rank; d++) h->dims[d] = t->dims[d];
    h->data = t->data;
    h->nbytes = t->nbytes;
  }
  if (outputs) *outputs = s->outs;
  return NBL_OK;
}

nbl_status nbl_session_copy_output(const nbl_session *s, int i, void *buf, size_t cap) {
  if (!s || i < 0 || i >= s->e->g->n_outputs)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "session output index %d out of range", i);
  const nbl_rt_tensor *t = nbl_engine_output(s->e, i);
  if (!t) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "no output: the session has not run");
  if (t->dtype == NBL_DT_STRING)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "output '%s' holds strings; read the view instead",
                      nbl_session_output_name(s, i));
  if (cap < t->nbytes)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "output '%s' needs %zu bytes, buffer has %zu",
                      nbl_session_output_name(s, i), t->nbytes, cap);
  if (t->nbytes) memcpy(buf, t->data, t->nbytes);
  return NBL_OK;
}

void nbl_session_free(nbl_session *s) {
  if (!s) return;
  nbl_engine_free(s->e);
  free(s->outs);
  free(s);
}

typedef struct prof_row {
  const char *op;
  int64_t ns;
  int count;
} prof_row;

static int cmp_row(const void *a, const void *b) {
  int64_t x = ((const prof_row *)a)->ns, y = ((const prof_row *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}


typedef struct { int s; int64_t ns; } step_ns;

static int cmp_step(const void *a, const void *b) {
  int64_t x = ((const step_ns *)a)->ns, y = ((const step_ns *)b)->ns;
  return x < y ? 1 : x > y ? -1 : 0;
}

nbl_status nbl_session_print_profile(const nbl_session *s, FILE *out, int top) {
  int n = 0, runs = 0;
  const nbl_node *const *nodes = NULL;
  const int64_t *ns = NULL;
  if (!s || !out || !nbl_engine_profile(s->e, &n, &nodes, &ns, &runs))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_session_print_profile: the session was created without profiling");
  prof_row *rows = calloc((size_t)n + 1, sizeof *rows);
  step_ns *order = calloc((size_t)n + 1, sizeof *order);
  if (!rows || !order) {
    free(rows);
    free(order);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int nr = 0;
  int64_t total = 0;
  for (int i = 0; i < n; i++) {
    const char *op = nodes[i]->op_type ? nodes[i]->op_type : "?";
    int r = 0;
    while (r < nr && strcmp(rows[r].op, op) != 0) r++;
    if (r == nr) rows[nr++].op = op;
    rows[r].ns += ns[i];
    rows[r].count++;
    total += ns[i];
    order[i].s = i;
    order[i].ns = ns[i];
  }
  qsort(rows, (size_t)nr, sizeof *rows, cmp_row);
  double div = runs > 0 ? 1e6 * runs : 1e6;
  fprintf(out, "profile: %d run(s), %d node(s), %.3f ms per run in nodes, %d thread(s)\n%s\n",
          runs, n, total / div, s->e->threads, nbl_kernel_info());
  fprintf(out, "%-24s %6s %12s %7s\n", "op", "nodes", "ms/run", "share");
  for (int r = 0; r < nr; r++)
    fprintf(out, "%-24s %6d %12.3f %6.1f%%\n", rows[r].op, rows[r].count, rows[r].ns / div,
            total ? 100.0 * (double)rows[r].ns / (double)total : 0.0);
  if (top > 0) {
    qsort(order, (size_t)n, sizeof *order, cmp_step);
    if (top > n) top = n;
    fprintf(out, "slowest nodes:\n%-40s %-20s %12s\n", "node", "op", "ms/run");
    for (int i = 0; i < top; i++) {
      const nbl_node *nd = nodes[order[i].s];
      fprintf(out, "%-40s %-20s %12.3f\n", nd->name && *nd->name ? nd->name : "(unnamed)",
              nd->op_type ? nd->op_type : "?", order[i].ns / div);
    }
  }
  free(rows);
  free(order);
  return NBL_OK;
}

void nbl_session_reset_profile(nbl_session *s) {
  if (s) nbl_engine_reset_profile(s->e);
}
