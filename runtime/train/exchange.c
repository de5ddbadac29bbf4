/*
 * exchange.c - data-parallel training: the nbl_train_dist_* API of nibble.h.
 * Every rank runs the same session on its shard of each global batch; this
 * file makes their gradients one, over the collectives of dist.h (MPI or one
 * process), without knowing anything of MPI itself.
 *
 * Buckets. At init the gradients are put in the order the backward pass
 * finishes them (the position of each `<param>_grad` producer in the
 * gradient graph's topological order, which is the engine's schedule) and
 * cut greedily into buckets of about bucket_bytes. During a train step the
 * gradient engine calls nbl_ddp_on_value after every node; when a gradient
 * appears it is summed into its accumulator at once, and when a bucket's
 * last gradient is in, the bucket is packed and its collective started -
 * while the rest of the backward pass still runs. Buckets start in index
 * order on every rank (a bucket complete early waits for the ones before
 * it), so all ranks issue the same collectives in the same order. Each call
 * of the hook also tests the requests in flight, which is what makes MPI
 * progress them during the backward pass. The optimizer step starts
 * whatever is left, waits for everything with a deadline, and unpacks.
 *
 * FP32: bucket = w * gradient (w = this rank's share of the global batch),
 * one in-place all-reduce (sum) per bucket.
 * LOG4: x = w * gradient + residual; per group (a gradient tensor, or the
 * whole bucket) top = max|x|, codes by the radix-4 log quantizer of
 * runtime/formats/log.h with stochastic rounding (its counter-based draws
 * keyed by seed, rank, step and bucket, indexed by the element's position in
 * the bucket); residual = x - decode(code) (error feedback; without it the
 * residual stays 0). The message is the group scales (float) followed by the
 * codes, two per byte (low nibble first; a nibble is sign << 3 | |code|,
 * |code| in 0..7). One all-gather per bucket; every rank decodes the ranks'
 * messages through a 16-entry table per group and sums them in rank order
 * 0..N-1 starting from +0, so the result is the same bits on every rank.
 * A group with a non-finite element sends scale NaN, and decodes to NaN.
 *
 * Running statistics (slots the train step updates without a gradient,
 * float32) are averaged with the same weights by one FP32 all-reduce in the
 * optimizer step.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "runtime/formats/log.h"
#include "runtime/kernels/log_quant.h"
#include "runtime/train/dist.h"
#include "runtime/train/train.h"

#define DEFAULT_BUCKET_BYTES 262144
#define DEFAULT_TIMEOUT_S 120.0

typedef struct bucket {
  int first, count;   /* the gradients order[first .. first + count) */
  int64_t n;          /* elements */
  int n_groups;       /* LOG4 scales */
  int pending;        /* gradients of this bucket not yet final in this step */
  int req, launched, done;
  float *buf;         /* n: FP32 the weighted sum in flight; LOG4 the value quantized */
  float *err;         /* LOG4 with error feedback: the residual carried to the next step */
  int8_t *codes;      /* LOG4: n codes */
  unsigned char *msg; /* LOG4: this rank's message, msg_bytes */
  unsigned char *all; /* LOG4: every rank's message, size * msg_bytes */
  size_t msg_bytes;
} bucket;

typedef struct nbl_ddp nbl_ddp;

struct nbl_ddp {
  nbl_dist *d;
  nbl_train_dist_options o;
  int n_grads;
  int *order;      /* gradient indices in bucket order */
  int *bucket_of;  /* per gradient */
  int64_t *offset; /* per gradient: its first element in the bucket */
  int64_t *numel;  /* per gradient: elements */
  int n_buckets;
  bucket *b;
  int next;        /* the next bucket to start */
  int stepping;    /* inside a train step's run: the hook is armed */
  double weight;
  int weight_set;
  int n_stat;      /* running statistics: slot indices, one FP32 buffer */
  int *stat_slot;
  float *stat_buf;
  int64_t stat_n;
  int stat_req, stat_launched, stat_done;
  nbl_status err;  /* an error of the hook, raised after the run */
  char err_msg[1024];
  nbl_train_dist_stats st;
};

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* CPU time of this thread: what the codec costs on an idle core */
static double cpu_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static nbl_log_config log4_config(uint64_t seed) {
  nbl_log_config c;
  nbl_log_config_default(&c); /* radix 4, 3 exponent bits */
  c.rounding = NBL_LOG_STOCHASTIC;
  c.seed = (int64_t)seed;
  return c;
}

/* Decode table of one group: nibble -> value (sign << 3 | magnitude). */
static void decode_table(float top, float lut[16]) {
  nbl_log_config c = log4_config(0);
  nbl_log_params p = {.top = top, .levels = 7};
  lut[0] = lut[8] = 0.0f;
  for (int m = 1; m < 8; m++) {
    float v = isfinite(top) ? nbl_log_level(&c, &p, m - 1) : NAN;
    lut[m] = v;
    lut[8 + m] = -v;
  }
}

static unsigned nibble_of(int code) { return code < 0 ? 8u | (unsigned)-code : (unsigned)code; }

/* ------------------------------------------------------------------ waiting */

/* Test every request in flight; *all = 1 when none is left. */
static nbl_status progress(nbl_ddp *p, int *all) {
  *all = 1;
  for (int k = 0; k < p->n_buckets; k++) {
    bucket *b = &p->b[k];
    if (!b->launched || b->done) continue;
    nbl_status st = p->d->ops->test(p->d, b->req, &b->done);
    if (st) return st;
    *all &= b->done;
  }
  if (p->stat_launched && !p->stat_done) {
    nbl_status st = p->d->ops->test(p->d, p->stat_req, &p->stat_done);
    if (st) return st;
    *all &= p->stat_done;
  }
  return NBL_OK;
}

static void backoff(int *spins) {
  if (++*spins < 200) return;
  long ns = *spins < 2000 ? 20000 : 500000; /* 20 us, then 0.5 ms: leave the cores to others */
  struct timespec t = {0, ns};
  nanosleep(&t, NULL);
}

static nbl_status timed_out(nbl_ddp *p, const char *what) {
  return nbl_errorf(NBL_ERR_RUNTIME,
                    "rank %d of %d: %s did not complete in %g s: another rank died, was stopped or "
                    "is stuck (the deadline is the timeout option, --dist-timeout)",
                    p->d->rank, p->d->size, what, p->o.timeout_s);
}

/* Wait for one request with the deadline. */
static nbl_status wait_one(nbl_ddp *p, int req, const char *what) {
  double t0 = now_s();
  int spins = 0, done = 0;
  for (;;) {
    nbl_status st = p->d->ops->test(p->d, req, &done);
    if (st || done) return st;
    if (now_s() - t0 > p->o.timeout_s) return timed_out(p, what);
    backoff(&spins);
  }
}

/* ------------------------------------------------------------------ planning */

typedef struct order_key {
  int pos, grad;
} order_key;

static int cmp_key(const void *a, const void *b) {
  const order_key *x = a, *y = b;
  if (x->pos != y->pos) return x->pos < y->pos ? -1 : 1;
  return x->grad - y->grad;
}

static int slot_of(const nbl_train_session *s, const char *name) {
  for (int k = 0; k < s->n_slots; k++)
    if (!strcmp(s->slots[k].name, name)) return k;
  return -1;
}

static nbl_status plan(nbl_train_session *s, nbl_ddp *p) {
  const nbl_graph *g = s->cut->grad;
  int n = p->n_grads = s->cut->n_grads;
  p->order = calloc((size_t)n + 1, sizeof(int));
  p->bucket_of = calloc((size_t)n + 1, sizeof(int));
  p->offset = calloc((size_t)n + 1, sizeof(int64_t));
  p->numel = calloc((size_t)n + 1, sizeof(int64_t));
  p->b = calloc((size_t)n + 1, sizeof(bucket));
  order_key *key = calloc((size_t)n + 1, sizeof *key);
  int *pos = calloc((size_t)g->n_nodes + 1, sizeof(int));
  nbl_id *topo = NULL;
  int nt = nbl_graph_topo_order(g, &topo);
  if (!p->order || !p->bucket_of || !p->offset || !p->numel || !p->b || !key || !pos || nt < 0) {
    free(key);
    free(pos);
    free(topo);
    return nt < 0 ? NBL_ERR_INVALID_MODEL : oom();
  }
  for (int i = 0; i < nt; i++) pos[topo[i]] = i;
  free(topo);
  nbl_status st = NBL_OK;
  for (int i = 0; i < n && !st; i++) {
    nbl_id v = g->outputs[1 + i];
    key[i] = (order_key){.pos = 1 << 30, .grad = i}; /* not computed by a node: last */
    for (int nd = 0; nd < g->n_nodes; nd++)
      for (int k = 0; k < g->nodes[nd].n_outputs; k++)
        if (g->nodes[nd].outputs[k] == v) key[i].pos = pos[nd];
    int sl = slot_of(s, s->cut->grad_param[i]);
    if (sl < 0 || s->slots[sl].t.dtype != NBL_DT_FLOAT)
      st = nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "%s: gradient '%s_grad': data-parallel training exchanges float32 gradients of "
                      "trained parameters only", nbl_model_label(s->work), s->cut->grad_param[i]);
    else
      p->numel[i] = s->slots[sl].t.numel;
  }
  free(pos);
  if (st) {
    free(key);
    return st;
  }
  qsort(key, (size_t)n, sizeof *key, cmp_key);
  int64_t cap = p->o.bucket_bytes / 4;
  for (int i = 0; i < n; i++) {
    int gi = key[i].grad;
    int64_t numel = p->numel[gi];
    bucket *b = p->n_buckets ? &p->b[p->n_buckets - 1] : NULL;
    if (!b || (b->n > 0 && b->n + numel > cap)) {
      b = &p->b[p->n_buckets++];
      b->first = i;
    }
    p->order[i] = gi;
    p->bucket_of[gi] = (int)(b - p->b);
    p->offset[gi] = b->n;
    b->n += numel;
    b->count++;
  }
  free(key);
  int log4 = p->o.exchange == NBL_GRAD_EXCHANGE_LOG4;
  for (int k = 0; k < p->n_buckets; k++) {
    bucket *b = &p->b[k];
    b->n_groups = log4 ? (p->o.scale_per_bucket ? 1 : b->count) : 0;
    b->buf = malloc(sizeof(float) * (size_t)(b->n ? b->n : 1));
    if (!b->buf) return oom();
    p->st.grad_elements += b->n;
    if (!log4) {
      p->st.payload_bytes += 4 * b->n;
      continue;
    }
    b->msg_bytes = 4 * (size_t)b->n_groups + (size_t)(b->n + 1) / 2;
    b->codes = malloc((size_t)b->n + 1);
    b->msg = calloc(b->msg_bytes, 1);
    b->all = malloc(b->msg_bytes * (size_t)p->d->size);
    b->err = p->o.no_error_feedback ? NULL : calloc((size_t)b->n + 1, sizeof(float));
    if (!b->codes || !b->msg || !b->all || (!p->o.no_error_feedback && !b->err)) return oom();
    p->st.payload_bytes += (int64_t)b->msg_bytes;
  }
  /* running statistics */
  p->stat_slot = calloc((size_t)s->n_slots + 1, sizeof(int));
  if (!p->stat_slot) return oom();
  for (int k = 0; k < s->n_slots; k++) {
    if (s->slots[k].part != 0) continue;
    if (s->slots[k].t.dtype != NBL_DT_FLOAT)
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "%s: '%s' is updated by the train step and has element type %s: data-parallel "
                        "training averages float32 ones only", nbl_model_label(s->work), s->slots[k].name,
                        nbl_dtype_name(s->slots[k].t.dtype));
    p->stat_slot[p->n_stat++] = k;
    p->stat_n += s->slots[k].t.numel;
  }
  if (p->stat_n && !(p->stat_buf = malloc(sizeof(float) * (size_t)p->stat_n))) return oom();
  int64_t fp32 = 4 * p->stat_n, N = p->d->size;
  p->st.payload_bytes += fp32;
  double ring = N > 1 ? 2.0 * (double)(N - 1) / (double)N : 0;
  p->st.sent_bytes = log4 ? (double)(N - 1) * (double)(p->st.payload_bytes - fp32) + ring * (double)fp32
                          : ring * (double)p->st.payload_bytes;
  p->st.n_buckets = p->n_buckets;
  return NBL_OK;
}

/* ------------------------------------------------------------------ one bucket */

/* The accumulated gradient j (zeros when this rank trained nothing since the reset). */
static const float *grad_data(nbl_train_session *s, int j) { return s->acc[j].data; }

static double rank_weight(const nbl_ddp *p) { return p->weight_set ? p->weight : 1.0 / p->d->size; }

static nbl_status launch_fp32(nbl_train_session *s, nbl_ddp *p, bucket *b) {
  float w = (float)rank_weight(p);
  for (int i = b->first; i < b->first + b->count; i++) {
    int j = p->order[i];
    const float *g = grad_data(s, j);
    float *dst = b->buf + p->offset[j];
    int64_t n = p->numel[j];
    for (int64_t e = 0; e < n; e++) dst[e] = w * g[e];
  }
  return p->d->ops->iallreduce_f32(p->d, b->buf, (size_t)b->n, &b->req);
}

static nbl_status launch_log4(nbl_train_session *s, nbl_ddp *p, bucket *b, int k) {
  float w = (float)rank_weight(p);
  for (int i = b->first; i < b->first + b->count; i++) {
    int j = p->order[i];
    const float *g = grad_data(s, j);
    float *x = b->buf + p->offset[j];
    const float *r = b->err ? b->err + p->offset[j] : NULL;
    int64_t n = p->numel[j];
    for (int64_t e = 0; e < n; e++) x[e] = w * g[e] + (r ? r[e] : 0.0f);
  }
  uint64_t seed = nbl_splitmix64(nbl_splitmix64(nbl_splitmix64(p->o.seed) ^ (uint64_t)p->d->rank) ^ (uint64_t)s->prog.global_step) ^
                  (uint64_t)k;
  nbl_log_config cfg = log4_config(nbl_splitmix64(seed));
  float *scales = (float *)(void *)b->msg; /* msg is malloc'd: aligned for floats */
  for (int gi = 0; gi < b->n_groups; gi++) {
    int64_t lo = 0, hi = b->n;
    if (b->n_groups > 1) {
      int j = p->order[b->first + gi];
      lo = p->offset[j];
      hi = lo + p->numel[j];
    }
    int finite = 1;
    for (int64_t e = lo; e < hi && finite; e++) finite = isfinite(b->buf[e]);
    nbl_log_params lp;
    nbl_log_choose(&cfg, b->buf + lo, (size_t)(hi - lo), &lp);
    if (finite) /* the vectorized rounding (the same codes; it marks non-finite values, which the format codes 0) */
      nbl_logq_stochastic(nbl_logq_best_isa(), &cfg, &lp, b->buf + lo, NULL, (signed char *)b->codes + lo,
                          (size_t)(hi - lo), (uint64_t)lo);
    else
      nbl_log_codes(&cfg, &lp, b->buf + lo, b->codes + lo, (size_t)(hi - lo), (uint64_t)lo);
    scales[gi] = finite ? lp.top : NAN;
    if (!b->err) continue;
    float lut[16];
    decode_table(lp.top, lut);
    for (int64_t e = lo; e < hi; e++)
      b->err[e] = finite ? b->buf[e] - lut[nibble_of(b->codes[e])] : 0.0f;
  }
  unsigned char *c = b->msg + 4 * (size_t)b->n_groups;
  for (int64_t e = 0; e < b->n; e += 2) {
    unsigned lo4 = nibble_of(b->codes[e]), hi4 = e + 1 < b->n ? nibble_of(b->codes[e + 1]) : 0;
    c[e / 2] = (unsigned char)(lo4 | hi4 << 4);
  }
  return p->d->ops->iallgather(p->d, b->msg, b->msg_bytes, b->all, &b->req);
}

static nbl_status launch(nbl_train_session *s, nbl_ddp *p, int k) {
  bucket *b = &p->b[k];
  double t0 = now_s(), c0 = cpu_s();
  nbl_status st = p->o.exchange == NBL_GRAD_EXCHANGE_LOG4 ? launch_log4(s, p, b, k) : launch_fp32(s, p, b);
  p->st.codec_s += now_s() - t0;
  p->st.codec_cpu_s += cpu_s() - c0;
  if (st) return st;
  b->launched = 1;
  b->done = 0;
  return NBL_OK;
}

/* Start the buckets that are complete, in index order. */
static nbl_status launch_ready(nbl_train_session *s, nbl_ddp *p, int early) {
  while (p->next < p->n_buckets && p->b[p->next].pending == 0) {
    nbl_status st = launch(s, p, p->next++);
    if (st) return st;
    if (early) p->st.launched_early++;
  }
  return NBL_OK;
}

/* Write the exchanged bucket into the accumulators. */
static void unpack(nbl_train_session *s, nbl_ddp *p, bucket *b) {
  int N = p->d->size;
  if (p->o.exchange == NBL_GRAD_EXCHANGE_FP32) {
    for (int i = b->first; i < b->first + b->count; i++) {
      int j = p->order[i];
      memcpy(s->acc[j].data, b->buf + p->offset[j], s->acc[j].nbytes);
    }
    return;
  }
  /* decode into b->buf: rank 0's values, then + rank 1's, ... */
  for (int r = 0; r < N; r++) {
    const unsigned char *m = b->all + (size_t)r * b->msg_bytes;
    const unsigned char *c = m + 4 * (size_t)b->n_groups;
    for (int gi = 0; gi < b->n_groups; gi++) {
      int64_t lo = 0, hi = b->n;
      if (b->n_groups > 1) {
        int j = p->order[b->first + gi];
        lo = p->offset[j];
        hi = lo + p->numel[j];
      }
      float top, lut[16];
      memcpy(&top, m + 4 * (size_t)gi, sizeof top);
      decode_table(top, lut);
      float *out = b->buf;
      for (int64_t e = lo; e < hi; e++) {
        float v = lut[(c[e / 2] >> (4 * (e & 1))) & 15];
        out[e] = r == 0 ? 0.0f + v : out[e] + v;
      }
    }
  }
  for (int i = b->first; i < b->first + b->count; i++) {
    int j = p->order[i];
    memcpy(s->acc[j].data, b->buf + p->offset[j], s->acc[j].nbytes);
  }
}

/* ------------------------------------------------------------------ the session's hooks */

/* The gradient engine's per-value callback (user = the session). */
static void on_value(void *user, const char *name, const nbl_rt_tensor *t) {
  nbl_train_session *s = user;
  nbl_ddp *p = s->ddp;
  if (!p || !p->stepping || p->err) return;
  int all;
  nbl_status st = progress(p, &all);
  const nbl_graph *g = s->cut->grad;
  int i = 0;
  while (!st && i < p->n_grads && g->values[g->outputs[1 + i]].name != name) i++;
  if (!st && i < p->n_grads && !s->grad_done[i]) {
    st = nbl_train_accumulate(s, i, t);
    if (!st) {
      s->grad_done[i] = 1;
      p->b[p->bucket_of[i]].pending--;
      st = launch_ready(s, p, 1);
    }
  }
  if (st) {
    p->err = st;
    snprintf(p->err_msg, sizeof p->err_msg, "%s", nbl_last_error());
  }
}

static void reset_step(nbl_train_session *s, nbl_ddp *p) {
  for (int k = 0; k < p->n_buckets; k++) {
    p->b[k].pending = p->b[k].count;
    p->b[k].launched = p->b[k].done = 0;
  }
  p->next = 0;
  p->stat_launched = p->stat_done = 0;
  if (s->grad_done) memset(s->grad_done, 0, (size_t)p->n_grads);
}

nbl_status nbl_ddp_before_step(nbl_train_session *s) {
  nbl_ddp *p = s->ddp;
  if (p->next > 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "nbl_train_step: the previous train step's gradients are already being exchanged "
                      "(call nbl_optimizer_step first, or join with no_overlap to accumulate several "
                      "train steps)");
  reset_step(s, p);
  p->stepping = s->grad_done != NULL;
  return NBL_OK;
}

nbl_status nbl_ddp_after_run(nbl_train_session *s, nbl_status run) {
  nbl_ddp *p = s->ddp;
  p->stepping = 0;
  if (!p->err) return NBL_OK;
  nbl_status st = p->err;
  p->err = NBL_OK;
  return nbl_errorf(st, "%s", p->err_msg);
}

nbl_status nbl_ddp_after_step(nbl_train_session *s) {
  nbl_ddp *p = s->ddp;
  if (!s->grad_done) return NBL_OK; /* no overlap: everything starts in the optimizer step */
  for (int k = 0; k < p->n_buckets; k++) p->b[k].pending = 0;
  return launch_ready(s, p, 0);
}

nbl_status nbl_ddp_finish(nbl_train_session *s) {
  nbl_ddp *p = s->ddp;
  double t0 = now_s(), codec0 = p->st.codec_s;
  /* a rank that trained nothing since the reset contributes zeros */
  for (int j = 0; s->n_accum == 0 && j < p->n_grads; j++) {
    if (!s->acc[j].data) {
      const nbl_rt_tensor *pt = &s->slots[slot_of(s, s->cut->grad_param[j])].t;
      nbl_status st = nbl_rt_tensor_alloc(&s->acc[j], NBL_DT_FLOAT, pt->rank, pt->dims);
      if (st) return st;
    }
    memset(s->acc[j].data, 0, s->acc[j].nbytes);
  }
  for (int k = 0; k < p->n_buckets; k++) p->b[k].pending = 0;
  nbl_status st = launch_ready(s, p, 0);
  if (!st && p->stat_n) {
    float w = (float)rank_weight(p);
    int64_t o = 0;
    for (int i = 0; i < p->n_stat; i++) {
      const nbl_rt_tensor *t = &s->slots[p->stat_slot[i]].t;
      const float *v = t->data;
      for (int64_t e = 0; e < t->numel; e++) p->stat_buf[o + e] = w * v[e];
      o += t->numel;
    }
    st = p->d->ops->iallreduce_f32(p->d, p->stat_buf, (size_t)p->stat_n, &p->stat_req);
    if (!st) p->stat_launched = 1;
  }
  int spins = 0, all = 0;
  while (!st) {
    st = progress(p, &all);
    if (st || all) break;
    if (now_s() - t0 > p->o.timeout_s) st = timed_out(p, "the gradient exchange");
    else backoff(&spins);
  }
  if (st) return st;
  double t1 = now_s(), c1 = cpu_s();
  for (int k = 0; k < p->n_buckets; k++) unpack(s, p, &p->b[k]);
  if (p->stat_n) {
    int64_t o = 0;
    for (int i = 0; i < p->n_stat; i++) {
      nbl_rt_tensor *t = &s->slots[p->stat_slot[i]].t;
      memcpy(t->data, p->stat_buf + o, t->nbytes);
      o += t->numel;
    }
  }
  double t2 = now_s();
  p->st.wait_s += (t1 - t0) - (p->st.codec_s - codec0); /* minus the packing of buckets started here */
  p->st.codec_s += t2 - t1;
  p->st.codec_cpu_s += cpu_s() - c1;
  p->st.steps++;
  /* the optimizer reads the accumulators: for it, this rank trained on its share */
  if (s->n_accum == 0) s->n_accum = 1;
  reset_step(s, p);
  p->weight_set = 0;
  return NBL_OK;
}

int nbl_ddp_rank(const nbl_train_session *s) { return s && s->ddp ? s->ddp->d->rank : 0; }

void nbl_ddp_free(nbl_train_session *s) {
  nbl_ddp *p = s->ddp;
  if (!p) return;
  for (int k = 0; p->b && k < p->n_buckets; k++) {
    free(p->b[k].buf);
    free(p->b[k].err);
    free(p->b[k].codes);
    free(p->b[k].msg);
    free(p->b[k].all);
  }
  free(p->b);
  free(p->order);
  free(p->bucket_of);
  free(p->offset);
  free(p->numel);
  free(p->stat_slot);
  free(p->stat_buf);
  if (p->d) p->d->ops->close(p->d);
  free(p);
  s->ddp = NULL;
}

/* ------------------------------------------------------------------ the public API */

int nbl_train_dist_mpi_built(void) { return nbl_dist_mpi_built(); }

int nbl_train_dist_launcher_size(int *local, int *rank) { return nbl_dist_launcher_size(local, rank); }

nbl_status nbl_train_dist_init(nbl_train_session *s, const nbl_train_dist_options *opt) {
  if (!s) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_dist_init: NULL session");
  if (s->ddp) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_dist_init: the session already joined");
  nbl_ddp *p = calloc(1, sizeof *p);
  if (!p) return oom();
  if (opt) p->o = *opt;
  if ((unsigned)p->o.exchange > NBL_GRAD_EXCHANGE_LOG4) {
    int x = (int)p->o.exchange;
    free(p);
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_dist_init: unknown exchange %d", x);
  }
  if (p->o.bucket_bytes <= 0) p->o.bucket_bytes = DEFAULT_BUCKET_BYTES;
  if (!(p->o.timeout_s > 0)) p->o.timeout_s = DEFAULT_TIMEOUT_S;
  int launched = nbl_dist_launcher_size(NULL, NULL);
  nbl_status st;
  if (nbl_dist_mpi_initialized() || (launched > 0 && nbl_dist_mpi_built())) {
    st = nbl_dist_open_mpi(&p->d);
  } else if (launched > 1) {
    st = nbl_errorf(NBL_ERR_UNSUPPORTED,
                    "started by an MPI launcher as one of %d processes, but this nibble was built "
                    "without MPI: every process would train alone (rebuild with meson -Dmpi=enabled "
                    "and Open MPI's libopenmpi-dev installed)", launched);
  } else {
    st = nbl_dist_open_none(&p->d);
  }
  s->ddp = p;
  if (!st) st = plan(s, p);
  /* rank 0's parameters and state */
  for (int k = 0; !st && k < s->n_slots; k++) {
    if (!s->slots[k].t.nbytes) continue;
    int req;
    st = p->d->ops->ibcast(p->d, s->slots[k].t.data, s->slots[k].t.nbytes, &req);
    if (!st) st = wait_one(p, req, "the broadcast of rank 0's parameters");
  }
  if (!st && p->d->size > 1 && !p->o.no_overlap) st = nbl_train_hook_grad_engine(s, on_value);
  if (st) {
    nbl_ddp_free(s);
    return st;
  }
  reset_step(s, p);
  p->st.rank = p->d->rank;
  p->st.size = p->d->size;
  p->st.transport = p->d->name;
  s->version++; /* the parameters may have changed */
  return NBL_OK;
}

int nbl_train_dist_rank(const nbl_train_session *s) { return s && s->ddp ? s->ddp->d->rank : 0; }

int nbl_train_dist_size(const nbl_train_session *s) { return s && s->ddp ? s->ddp->d->size : 1; }

void nbl_train_dist_shard(nbl_train_session *s, int64_t n, int64_t *begin, int64_t *count) {
  int r = nbl_train_dist_rank(s), N = nbl_train_dist_size(s);
  if (n < 0) n = 0;
  int64_t q = n / N, rem = n % N;
  int64_t b = (int64_t)r * q + (r < rem ? r : rem), c = q + (r < rem ? 1 : 0);
  if (begin) *begin = b;
  if (count) *count = c;
  if (s && s->ddp) {
    s->ddp->weight = n > 0 ? (double)c / (double)n : 0.0;
    s->ddp->weight_set = 1;
  }
}

nbl_status nbl_train_dist_sum(nbl_train_session *s, double *v, int n) {
  if (!s || (n > 0 && !v)) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_dist_sum: NULL argument");
  if (!s->ddp || n <= 0) return NBL_OK;
  int req;
  nbl_status st = s->ddp->d->ops->iallreduce_f64(s->ddp->d, v, (size_t)n, &req);
  return st ? st : wait_one(s->ddp, req, "a sum across ranks");
}

void nbl_train_dist_get_stats(const nbl_train_session *s, nbl_train_dist_stats *st) {
  if (!st) return;
  memset(st, 0, sizeof *st);
  st->size = 1;
  st->transport = "none";
  if (s && s->ddp) *st = s->ddp->st;
}

void nbl_train_dist_abort(nbl_train_session *s, int code) {
  if (s && s->ddp) s->ddp->d->ops->abort(s->ddp->d, code);
  exit(code);
}
