/* runtime/ops/random.c - op family 'random': the ONNX ops whose outputs are
 * random numbers (see kernel.h for the kernel contract):
 *   RandomNormal, RandomUniform          shape from the `shape` attribute
 *   RandomNormalLike, RandomUniformLike  the input's shape; its type unless
 *                                        `dtype` says otherwise
 *   Bernoulli (15)                       0/1 with probability p per element
 *   Multinomial (7)                      sample_size class indices per row
 * Every entry carries NBL_OPF_RANDOM (fold-constants never runs them ahead
 * of time).
 *
 * Where the randomness comes from. Every draw is nibble's one counter-based
 * generator, nbl_q4_uniform(seed, index) of runtime/formats/int4.h: a number
 * in [0, 1) with 53 random bits that depends on (seed, index) alone. The seed
 * of one call of a node:
 *   - its `seed` attribute when it has one (a float in ONNX: a whole number s
 *     with |s| < 2^62 is the seed s; any other value its 32-bit pattern with
 *     the top bit of the 64 set): the same values on every run, in this
 *     session and in any other;
 *   - else nbl_kctx_random_seed(): the engine's random stream, which advances
 *     with every call, so every run (and every Loop iteration) draws fresh
 *     values; a session's stream has a fresh key unless
 *     nbl_session_options.seed fixes it. (ONNX Runtime keeps one generator
 *     per node, seeded by the attribute or the clock and advancing with every
 *     run: its seeded nodes change from run to run, nibble's do not.)
 * Output element i (row-major) uses index i, so the values do not depend on
 * the thread count. Values are computed in double and rounded once to the
 * output type (nbl_rt_set_f64).
 *
 * The distributions:
 *   uniform      low + (high - low) * u. A value that rounds out of
 *                [low, high) (up to high; below low when low is not
 *                representable) is drawn again from the seed
 *                seed XOR attempt * 0xD1B54A32D192ED03, up to 64 attempts, so
 *                every value lies in [low, high); low == high gives low.
 *   normal       Box-Muller on the pair (u1, u2) of indices 2k and 2k+1:
 *                r = sqrt(-2 ln(1 - u1)), t = 2 pi u2; elements 2k and 2k+1
 *                are mean + scale * r cos t and mean + scale * r sin t.
 *   Bernoulli    1 when u < p, else 0: p = 0 always gives 0, p = 1 always 1;
 *                p outside [0, 1] (or NaN) is an error naming the element.
 *   Multinomial  row b of the input holds unnormalized log-probabilities;
 *                as ONNX Runtime (after TensorFlow): weights exp(x_j - max)
 *                over the finite x_j (a non-finite one weighs 0), cumulative
 *                sums c_j, and sample s of row b is the first class j with
 *                c_j > u * c_last, u the draw of index b * sample_size + s.
 *                A row without a finite value is an error.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/formats/int4.h" /* nbl_q4_uniform: the one counter-based generator */
#include "runtime/ops/ref_common.h"

#define RETRY_STEP 0xD1B54A32D192ED03ull /* seeds of the uniform's redraws */
#define MAX_ATTEMPTS 64

/* ------------------------------------------------------------------ helpers */

static const char *in_name(nbl_kctx *c, int i) {
  nbl_id v = i < c->node->n_inputs ? c->node->inputs[i] : NBL_NONE;
  return v == NBL_NONE ? "" : c->graph->values[v].name;
}

/* The seed of this call: the `seed` attribute (same values every run), else
 * the engine's random stream (fresh values every call). */
static int64_t call_seed(nbl_kctx *c) {
  const nbl_attr *a = nbl_node_attr(c->node, "seed");
  if (!a || (a->type != NBL_ATTR_FLOAT && a->type != NBL_ATTR_INT)) return nbl_kctx_random_seed(c);
  if (a->type == NBL_ATTR_INT) return a->i;
  float s = a->f;
  if (s == floorf(s) && fabsf(s) < 0x1p62f) return (int64_t)s; /* -0 is 0 */
  uint32_t bits;
  memcpy(&bits, &s, sizeof bits);
  return (int64_t)(0x8000000000000000ull | bits);
}

static int random_out_type(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16;
}

/* The output type of RandomNormal/RandomUniform (`dtype`, default float) or
 * of the *Like forms (`dtype`, default the input's type): float16, float or
 * double. */
static nbl_status random_dtype(nbl_kctx *c, const nbl_rt_tensor *like, nbl_dtype *dt) {
  const nbl_attr *a = nbl_node_attr(c->node, "dtype");
  if (a) {
    int64_t v = a->type == NBL_ATTR_INT ? a->i : -1;
    if (v < 0 || !nbl_dtype_valid((int)v) || !random_out_type((nbl_dtype)v))
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                      "attribute dtype=%lld (%s) is not supported: the output is float16 (10), "
                      "float (1) or double (11)",
                      (long long)v, v >= 0 && nbl_dtype_valid((int)v) ? nbl_dtype_name((nbl_dtype)v) : "not a type");
    *dt = (nbl_dtype)v;
    return NBL_OK;
  }
  if (!like) {
    *dt = NBL_DT_FLOAT;
    return NBL_OK;
  }
  if (!random_out_type(like->dtype))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "input '%s' has type %s and there is no dtype attribute: the output would "
                    "take that type, but it must be float16, float or double",
                    in_name(c, 0), nbl_dtype_name(like->dtype));
  *dt = like->dtype;
  return NBL_OK;
}

/* The output shape of RandomNormal/RandomUniform: the `shape` attribute. */
static nbl_status shape_attr(nbl_kctx *c, int *rank, int64_t *dims) {
  const nbl_attr *a = nbl_node_attr(c->node, "shape");
  if (!a || a->type != NBL_ATTR_INTS)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the attribute 'shape' (ints) is required");
  if (a->n > NBL_MAX_RANK)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "attribute shape has rank %d, above the supported %d",
                    a->n, NBL_MAX_RANK);
  for (int d = 0; d < a->n; d++) {
    if (a->ints[d] < 0)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute shape: dimension %d is %lld", d,
                      (long long)a->ints[d]);
    dims[d] = a->ints[d];
  }
  *rank = a->n;
  return NBL_OK;
}

/* Store v, rounded to y's type (float16, float or double; nbl_rt_set_f64
 * rounds once), at element i; returns the value stored. */
static double put(nbl_rt_tensor *y, int64_t i, double v) {
  nbl_rt_set_f64(y, i, v);
  return nbl_rt_get_f64(y, i);
}

#define GRAIN 4096 /* elements per chunk of the parallel fills */

/* ------------------------------------------------------------------ uniform */

typedef struct uniform_job {
  nbl_rt_tensor *y;
  double lo, hi;
  int64_t seed;
  atomic_llong bad; /* first element no attempt put in [lo, hi), -1: none */
} uniform_job;

static void uniform_range(void *arg, int64_t begin, int64_t end) {
  uniform_job *j = arg;
  double lo = j->lo, w = j->hi - j->lo;
  for (int64_t i = begin; i < end; i++) {
    if (w == 0) {
      put(j->y, i, lo);
      continue;
    }
    int a = 0;
    for (; a < MAX_ATTEMPTS; a++) {
      int64_t s = (int64_t)((uint64_t)j->seed ^ (uint64_t)a * RETRY_STEP);
      double r = put(j->y, i, lo + w * nbl_q4_uniform(s, (uint64_t)i));
      if (r >= lo && r < j->hi) break;
    }
    if (a == MAX_ATTEMPTS) {
      long long none = -1;
      atomic_compare_exchange_strong(&j->bad, &none, (long long)i);
    }
  }
}

/* Output 0 of type dt and shape (rank, dims) uniform in [low, high). */
static nbl_status uniform(nbl_kctx *c, nbl_dtype dt, int rank, const int64_t *dims) {
  double lo = nbl_attr_float(c->node, "low", 0.0f), hi = nbl_attr_float(c->node, "high", 1.0f);
  if (!isfinite(lo) || !isfinite(hi) || hi < lo)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "attributes low=%g, high=%g: need finite bounds with low <= high", lo, hi);
  nbl_status st = nbl_kctx_alloc_out(c, 0, dt, rank, dims);
  if (st != NBL_OK) return st;
  uniform_job j = {.y = nbl_kctx_out(c, 0), .lo = lo, .hi = hi, .seed = call_seed(c)};
  atomic_init(&j.bad, -1);
  nbl_parallel_for(c, j.y->numel, GRAIN, uniform_range, &j);
  long long bad = atomic_load(&j.bad);
  if (bad >= 0)
    return nbl_kerr(c, NBL_ERR_RUNTIME,
                    "attributes low=%g, high=%g: element %lld: %d draws all rounded out of "
                    "[low, high) in %s (the interval holds next to no %s values)",
                    lo, hi, bad, MAX_ATTEMPTS, nbl_dtype_name(dt), nbl_dtype_name(dt));
  return NBL_OK;
}

static nbl_status k_random_uniform(nbl_kctx *c) {
  int rank = 0;
  int64_t dims[NBL_MAX_RANK];
  nbl_dtype dt;
  nbl_status st;
  if ((st = random_dtype(c, NULL, &dt)) || (st = shape_attr(c, &rank, dims))) return st;
  return uniform(c, dt, rank, dims);
}

static nbl_status k_random_uniform_like(nbl_kctx *c) {
  nbl_status st;
  nbl_dtype dt;
  if ((st = need_input(c, 0, "input")) || (st = random_dtype(c, c->in[0], &dt))) return st;
  return uniform(c, dt, c->in[0]->rank, c->in[0]->dims);
}

/* ------------------------------------------------------------------ normal */

typedef struct normal_job {
  nbl_rt_tensor *y;
  double mean, scale;
  int64_t seed;
} normal_job;

/* pairs [begin, end): elements 2k and 2k+1 */
static void normal_range(void *arg, int64_t begin, int64_t end) {
  normal_job *j = arg;
  const double two_pi = 6.283185307179586476925286766559;
  int64_t n = j->y->numel;
  for (int64_t k = begin; k < end; k++) {
    double u1 = nbl_q4_uniform(j->seed, 2 * (uint64_t)k);
    double u2 = nbl_q4_uniform(j->seed, 2 * (uint64_t)k + 1);
    double r = sqrt(-2.0 * log(1.0 - u1)), t = two_pi * u2;
    put(j->y, 2 * k, j->mean + j->scale * (r * cos(t)));
    if (2 * k + 1 < n) put(j->y, 2 * k + 1, j->mean + j->scale * (r * sin(t)));
  }
}

/* Output 0 of type dt and shape (rank, dims) normal with mean and scale. */
static nbl_status normal(nbl_kctx *c, nbl_dtype dt, int rank, const int64_t *dims) {
  double mean = nbl_attr_float(c->node, "mean", 0.0f), scale = nbl_attr_float(c->node, "scale", 1.0f);
  if (!isfinite(mean) || !isfinite(scale) || scale < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "attributes mean=%g, scale=%g: need finite values and scale >= 0 (the "
                    "standard deviation)", mean, scale);
  nbl_status st = nbl_kctx_alloc_out(c, 0, dt, rank, dims);
  if (st != NBL_OK) return st;
  normal_job j = {.y = nbl_kctx_out(c, 0), .mean = mean, .scale = scale, .seed = call_seed(c)};
  nbl_parallel_for(c, (j.y->numel + 1) / 2, GRAIN / 2, normal_range, &j);
  return NBL_OK;
}

static nbl_status k_random_normal(nbl_kctx *c) {
  int rank = 0;
  int64_t dims[NBL_MAX_RANK];
  nbl_dtype dt;
  nbl_status st;
  if ((st = random_dtype(c, NULL, &dt)) || (st = shape_attr(c, &rank, dims))) return st;
  return normal(c, dt, rank, dims);
}

static nbl_status k_random_normal_like(nbl_kctx *c) {
  nbl_status st;
  nbl_dtype dt;
  if ((st = need_input(c, 0, "input")) || (st = random_dtype(c, c->in[0], &dt))) return st;
  return normal(c, dt, c->in[0]->rank, c->in[0]->dims);
}

/* ------------------------------------------------------------------ Bernoulli */

/* Bernoulli's output types (T2): every numeric type and bool. */
static int bernoulli_out_type(nbl_dtype dt) {
  return is_float(dt) || is_int(dt) || dt == NBL_DT_BOOL;
}

typedef struct bernoulli_job {
  const nbl_rt_tensor *p;
  nbl_rt_tensor *y;
  int64_t seed;
} bernoulli_job;

static void bernoulli_range(void *arg, int64_t begin, int64_t end) {
  bernoulli_job *j = arg;
  for (int64_t i = begin; i < end; i++)
    nbl_rt_set_f64(j->y, i, nbl_q4_uniform(j->seed, (uint64_t)i) < nbl_rt_get_f64(j->p, i) ? 1.0 : 0.0);
}

static nbl_status k_bernoulli(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "input"))) return st;
  const nbl_rt_tensor *p = c->in[0];
  if (!is_float(p->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "input '%s' has type %s; expected probabilities of type float16, float or double",
                    in_name(c, 0), nbl_dtype_name(p->dtype));
  nbl_dtype dt = p->dtype;
  const nbl_attr *a = nbl_node_attr(c->node, "dtype");
  if (a) {
    int64_t v = a->type == NBL_ATTR_INT ? a->i : -1;
    if (v < 0 || !nbl_dtype_valid((int)v) || !bernoulli_out_type((nbl_dtype)v))
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                      "attribute dtype=%lld (%s) is not supported: the output is a number type or bool",
                      (long long)v, v >= 0 && nbl_dtype_valid((int)v) ? nbl_dtype_name((nbl_dtype)v) : "not a type");
    dt = (nbl_dtype)v;
  }
  for (int64_t i = 0; i < p->numel; i++) {
    double pi = nbl_rt_get_f64(p, i);
    if (!(pi >= 0 && pi <= 1))
      return nbl_kerr(c, NBL_ERR_RUNTIME, "input '%s': element %lld is %g, not a probability in [0, 1]",
                      in_name(c, 0), (long long)i, pi);
  }
  if ((st = nbl_kctx_alloc_out(c, 0, dt, p->rank, p->dims))) return st;
  bernoulli_job j = {.p = p, .y = nbl_kctx_out(c, 0), .seed = call_seed(c)};
  nbl_parallel_for(c, p->numel, GRAIN, bernoulli_range, &j);
  return NBL_OK;
}

/* ------------------------------------------------------------------ Multinomial */

static nbl_status k_multinomial(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "input"))) return st;
  const nbl_rt_tensor *x = c->in[0];
  if (!is_float(x->dtype))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "input '%s' has type %s; expected log-probabilities of type float16, float or double",
                    in_name(c, 0), nbl_dtype_name(x->dtype));
  if (x->rank != 2)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "input '%s' has rank %d; expected rank 2, [batch_size, class_size]",
                    in_name(c, 0), x->rank);
  int64_t S = nbl_attr_int(c->node, "sample_size", 1);
  if (S < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute sample_size=%lld; must be at least 1", (long long)S);
  int64_t dtv = nbl_attr_int(c->node, "dtype", NBL_DT_INT32);
  if (dtv != NBL_DT_INT32 && dtv != NBL_DT_INT64)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED,
                    "attribute dtype=%lld (%s) is not supported: the output is int32 (6) or int64 (7)",
                    (long long)dtv, nbl_dtype_valid((int)dtv) ? nbl_dtype_name((nbl_dtype)dtv) : "not a type");
  int64_t B = x->dims[0], K = x->dims[1];
  if (K < 1 && B > 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' has no classes (shape [%lld, 0])", in_name(c, 0),
                    (long long)B);
  int64_t od[2] = {B, S};
  if ((st = nbl_kctx_alloc_out(c, 0, (nbl_dtype)dtv, 2, od))) return st;
  nbl_rt_tensor *y = nbl_kctx_out(c, 0);
  double *cdf = malloc(sizeof(double) * (size_t)(K > 0 ? K : 1));
  if (!cdf) return oom(c);
  int64_t seed = call_seed(c);
  for (int64_t b = 0; b < B; b++) {
    double mx = -INFINITY;
    for (int64_t k = 0; k < K; k++) {
      double v = nbl_rt_get_f64(x, b * K + k);
      if (isfinite(v) && v > mx) mx = v;
    }
    if (mx == -INFINITY) {
      free(cdf);
      return nbl_kerr(c, NBL_ERR_RUNTIME, "input '%s': row %lld has no finite log-probability",
                      in_name(c, 0), (long long)b);
    }
    double total = 0;
    for (int64_t k = 0; k < K; k++) {
      double v = nbl_rt_get_f64(x, b * K + k);
      if (isfinite(v)) total += exp(v - mx);
      cdf[k] = total;
    }
    for (int64_t s = 0; s < S; s++) {
      double t = nbl_q4_uniform(seed, (uint64_t)(b * S + s)) * total;
      /* first k with cdf[k] > t (upper bound); cdf is non-decreasing */
      int64_t lo = 0, hi = K;
      while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (cdf[mid] > t) hi = mid;
        else lo = mid + 1;
      }
      if (lo == K) /* t rounded up to total: the last class with weight */
        for (lo = K - 1; lo > 0 && cdf[lo - 1] == cdf[K - 1]; lo--) {}
      nbl_rt_set_i64(y, b * S + s, lo);
    }
  }
  free(cdf);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* The `dtype` attribute as a type; dflt when absent, UNDEFINED when not a type. */
static nbl_dtype attr_dtype(const nbl_node *n, nbl_dtype dflt) {
  const nbl_attr *a = nbl_node_attr(n, "dtype");
  if (!a) return dflt;
  return a->type == NBL_ATTR_INT && a->i >= 0 && nbl_dtype_valid((int)a->i) ? (nbl_dtype)a->i
                                                                              : NBL_DT_UNDEFINED;
}

/* RandomNormal, RandomUniform: `dtype` (default float), shape from `shape`. */
static nbl_status shape_random(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_shp_unknown(&o, attr_dtype(c->node, NBL_DT_FLOAT));
  const nbl_attr *a = nbl_node_attr(c->node, "shape");
  if (a && a->type == NBL_ATTR_INTS && a->n <= NBL_SHP_MAXR) {
    o.rank = a->n;
    for (int d = 0; d < a->n; d++) {
      if (a->ints[d] < 0)
        return nbl_shp_err(c, "attribute shape: dimension %d is %lld", d, (long long)a->ints[d]);
      o.d[d] = nbl_dim_val(a->ints[d]);
    }
  }
  return nbl_shp_set(c, 0, &o);
}

/* RandomNormalLike, RandomUniformLike, Bernoulli: the input's shape; `dtype`,
 * else the input's type. */
static nbl_status shape_like(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  x.dt = attr_dtype(c->node, x.dt);
  return nbl_shp_set(c, 0, &x);
}

/* Multinomial: [batch_size, sample_size] of `dtype` (default int32). */
static nbl_status shape_multinomial(nbl_shape_ctx *c) {
  nbl_shp x, o;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 0 && x.rank != 2) return nbl_shp_err(c, "input has rank %d; expected 2 ([batch_size, class_size])", x.rank);
  int64_t S = nbl_attr_int(c->node, "sample_size", 1);
  if (S < 1) return nbl_shp_err(c, "attribute sample_size=%lld; must be at least 1", (long long)S);
  nbl_shp_rank(&o, attr_dtype(c->node, NBL_DT_INT32), 2);
  if (x.rank == 2) o.d[0] = x.d[0];
  o.d[1] = nbl_dim_val(S);
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ table */

#define NO_INPUTS "no inputs (values from attributes and the random source)"

const nbl_op_def nbl_ops_random[] = {
    NBL_OP("RandomNormal", 1, .ref = k_random_normal, .shape = shape_random, .stable_since = 1,
        .flags = NBL_OPF_RANDOM, .no_grad = NO_INPUTS),
    NBL_OP("RandomUniform", 1, .ref = k_random_uniform, .shape = shape_random, .stable_since = 1,
        .flags = NBL_OPF_RANDOM, .no_grad = NO_INPUTS),
    /* the input gives only the shape (and type): no gradient flows to it */
    NBL_OP("RandomNormalLike", 1, .ref = k_random_normal_like, .shape = shape_like, .stable_since = 1,
        .flags = NBL_OPF_RANDOM, .grad = nbl_grad_zero),
    NBL_OP("RandomUniformLike", 1, .ref = k_random_uniform_like, .shape = shape_like, .stable_since = 1,
        .flags = NBL_OPF_RANDOM, .grad = nbl_grad_zero),
    /* a step function of p almost everywhere: zero gradient, as PyTorch's bernoulli */
    NBL_OP("Bernoulli", 15, .ref = k_bernoulli, .shape = shape_like, .stable_since = 15,
        .flags = NBL_OPF_RANDOM, .grad = nbl_grad_zero),
    NBL_OP("Multinomial", 7, .ref = k_multinomial, .shape = shape_multinomial, .stable_since = 7,
        .flags = NBL_OPF_RANDOM, .no_grad = NBL_NO_GRAD_INT),
};
const size_t nbl_ops_random_count = sizeof nbl_ops_random / sizeof nbl_ops_random[0];
