/*
 * runtime/ops/train.c - op family 'train': the optimizers of the ai.onnx.preview.training
 * domain (version 1): Momentum (standard and Nesterov), Adam and Adagrad, each
 * over any number of tensors. See kernel.h for the kernel contract.
 *
 * Input layout (ONNX): R (scalar learning rate, float or double), T (scalar
 * int64 update count), then the tensor groups: X_1..X_n, G_1..G_n and the
 * state tensors (V_1..V_n and/or H_1..H_n). Outputs are the new X_1..X_n
 * followed by the new state tensors in the same order as the inputs.
 *
 * Every tensor of one group (X_i, G_i, V_i, H_i) must have the same element
 * type (float or double) and shape; the update is one pass over the elements
 * reading each input and writing each output once. Scalar coefficients
 * (bias-corrected or decayed learning rates) are computed in double and then
 * rounded to the tensor type, as the ONNX reference (NumPy) does; the element
 * arithmetic runs in the tensor type. Float32 runs 8 elements at a time with
 * AVX2 when the CPU has it (not in reference mode), with the same operations
 * in the same order, so both paths give bit-identical results.
 *
 * The losses NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss are
 * registered in the 'reduce' family (runtime/ops/reduce.c).
 */
#include <math.h>
#include <string.h>

#include "runtime/core/shape.h"

#define TRAIN_DOMAIN "ai.onnx.preview.training"
#define GRAIN 16384 /* elements per parallel chunk */

static const char *in_name(const nbl_kctx *c, int i) {
  if (i >= c->node->n_inputs || c->node->inputs[i] == NBL_NONE) return "?";
  return c->graph->values[c->node->inputs[i]].name;
}

/* ------------------------------------------------------------------ common checks */

typedef enum { OPT_MOMENTUM, OPT_ADAM, OPT_ADAGRAD } opt_kind;

/* Per-op coefficients, already combined as far as they are scalars. */
typedef struct opt_coef {
  opt_kind kind;
  int nesterov;
  double lr;    /* effective learning rate (R, R_adjusted or r) */
  double nc;    /* norm_coefficient */
  double alpha; /* Momentum: decay of V; Adam: decay of V */
  double beta;  /* Momentum: beta_adjusted; Adam: decay of H */
  double eps;
  double post; /* Adam: 1 - norm_coefficient_post */
} opt_coef;

/* One tensor group's element pointers (NULL when the op has no such state). */
typedef struct opt_job {
  const opt_coef *k;
  nbl_dtype dt;
  int simd; /* 1: float32 AVX2 path allowed (not reference mode, CPU has AVX2) */
  const void *x, *g, *v, *h;
  void *xo, *vo, *ho;
} opt_job;

/* Read a required float attribute; INVALID_MODEL when absent. */
static nbl_status req_float(nbl_kctx *c, const char *name, double *out) {
  if (!nbl_node_attr(c->node, name))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required attribute '%s' is missing", name);
  *out = nbl_attr_float(c->node, name, 0.0f);
  return NBL_OK;
}

/* Check the inputs/outputs counts for `per` tensors per group (X, G, states)
 * and `outs` outputs per group; read R and T. Sets *n to the group count. */
static nbl_status check_common(nbl_kctx *c, int per, int outs, int *n, double *R, int64_t *T) {
  if (c->n_in < 2 + per || (c->n_in - 2) % per != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                    "expects R, T and a multiple of %d tensors (X..., G..., state...), got %d inputs", per,
                    c->n_in);
  *n = (c->n_in - 2) / per;
  if (c->n_out != outs * *n)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "expects %d outputs for %d optimized tensors, got %d",
                    outs * *n, *n, c->n_out);
  for (int i = 0; i < c->n_in; i++)
    if (!c->in[i]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
  const nbl_rt_tensor *r = c->in[0], *t = c->in[1];
  if (r->dtype != NBL_DT_FLOAT && r->dtype != NBL_DT_DOUBLE)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "learning rate '%s' has element type %s (float or double expected)",
                    in_name(c, 0), nbl_dtype_name(r->dtype));
  if (r->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "learning rate '%s' must be a scalar, has %lld elements",
                    in_name(c, 0), (long long)r->numel);
  if (t->dtype != NBL_DT_INT64)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "update count '%s' has element type %s (int64 expected)",
                    in_name(c, 1), nbl_dtype_name(t->dtype));
  if (t->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "update count '%s' must be a scalar, has %lld elements",
                    in_name(c, 1), (long long)t->numel);
  *R = nbl_rt_get_f64(r, 0);
  *T = ((const int64_t *)t->data)[0];
  /* every group: X float/double, the others the same type and shape */
  for (int i = 0; i < *n; i++) {
    const nbl_rt_tensor *x = c->in[2 + i];
    if (x->dtype != NBL_DT_FLOAT && x->dtype != NBL_DT_DOUBLE)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "tensor '%s' has element type %s (float or double expected)",
                      in_name(c, 2 + i), nbl_dtype_name(x->dtype));
    for (int k = 1; k < per; k++) {
      int j = 2 + k * *n + i;
      const nbl_rt_tensor *o = c->in[j];
      int same = o->dtype == x->dtype && o->rank == x->rank;
      for (int d = 0; same && d < x->rank; d++) same = o->dims[d] == x->dims[d];
      if (!same)
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL,
                        "tensor '%s' must have the element type and shape of '%s' (%s, rank %d)",
                        in_name(c, j), in_name(c, 2 + i), nbl_dtype_name(x->dtype), x->rank);
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ element loops */

/* The update of one element, written once for float and double. T is the
 * element type; all coefficients are rounded to T first (NumPy semantics).
 * Each element's inputs are read before its outputs are written, so an
 * output may share storage with an input (in-place update). */
#define OPT_LOOP(T, SQRT)                                                                     \
  static void opt_loop_##T(const opt_job *j, int64_t b, int64_t e) {                          \
    const opt_coef *k = j->k;                                                                 \
    const T *x = j->x, *g = j->g, *v = j->v, *h = j->h;                                       \
    T *xo = j->xo, *vo = j->vo, *ho = j->ho;                                                  \
    const T lr = (T)k->lr, nc = (T)k->nc, alpha = (T)k->alpha, beta = (T)k->beta;             \
    const T eps = (T)k->eps, post = (T)k->post;                                               \
    const T one_m_alpha = (T)(1.0 - k->alpha), one_m_beta = (T)(1.0 - k->beta);               \
    switch (k->kind) {                                                                        \
    case OPT_MOMENTUM:                                                                        \
      if (k->nesterov) {                                                                      \
        for (int64_t i = b; i < e; i++) {                                                     \
          T xi = x[i], gr = nc * xi + g[i];                                                   \
          T vn = alpha * v[i] + beta * gr;                                                    \
          vo[i] = vn;                                                                         \
          xo[i] = xi - lr * (gr + alpha * vn);                                                \
        }                                                                                     \
      } else {                                                                                \
        for (int64_t i = b; i < e; i++) {                                                     \
          T xi = x[i], gr = nc * xi + g[i];                                                   \
          T vn = alpha * v[i] + beta * gr;                                                    \
          vo[i] = vn;                                                                         \
          xo[i] = xi - lr * vn;                                                               \
        }                                                                                     \
      }                                                                                       \
      break;                                                                                  \
    case OPT_ADAM:                                                                            \
      for (int64_t i = b; i < e; i++) {                                                       \
        T xi = x[i], gr = nc * xi + g[i];                                                     \
        T vn = alpha * v[i] + one_m_alpha * gr;                                               \
        T hn = beta * h[i] + one_m_beta * (gr * gr);                                          \
        vo[i] = vn;                                                                           \
        ho[i] = hn;                                                                           \
        xo[i] = post * (xi - lr * (vn / (SQRT(hn) + eps)));                                   \
      }                                                                                       \
      break;                                                                                  \
    case OPT_ADAGRAD:                                                                         \
      for (int64_t i = b; i < e; i++) {                                                       \
        T xi = x[i], gr = nc * xi + g[i];                                                     \
        T hn = h[i] + gr * gr;                                                                \
        ho[i] = hn;                                                                           \
        xo[i] = xi - lr * gr / (SQRT(hn) + eps);                                              \
      }                                                                                       \
      break;                                                                                  \
    }                                                                                         \
  }

OPT_LOOP(float, sqrtf)
OPT_LOOP(double, sqrt)

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define HAVE_AVX2_PATH 1

/* Float32 update of [b, b + 8k) with AVX2, 8 elements at a time; returns the
 * first index not done. The same operations in the same order as opt_loop_float
 * (no FMA contraction), so results are bit-identical to the scalar loop. */
__attribute__((target("avx2"))) static int64_t opt_avx2(const opt_job *j, int64_t b, int64_t e) {
  const opt_coef *k = j->k;
  const float *x = j->x, *g = j->g, *v = j->v, *h = j->h;
  float *xo = j->xo, *vo = j->vo, *ho = j->ho;
  const __m256 lr = _mm256_set1_ps((float)k->lr), nc = _mm256_set1_ps((float)k->nc);
  const __m256 alpha = _mm256_set1_ps((float)k->alpha), beta = _mm256_set1_ps((float)k->beta);
  const __m256 eps = _mm256_set1_ps((float)k->eps), post = _mm256_set1_ps((float)k->post);
  const __m256 oma = _mm256_set1_ps((float)(1.0 - k->alpha)), omb = _mm256_set1_ps((float)(1.0 - k->beta));
  int64_t i = b;
  for (; i + 8 <= e; i += 8) {
    __m256 xv = _mm256_loadu_ps(x + i);
    __m256 gr = _mm256_add_ps(_mm256_mul_ps(nc, xv), _mm256_loadu_ps(g + i));
    switch (k->kind) {
    case OPT_MOMENTUM: {
      __m256 vn = _mm256_add_ps(_mm256_mul_ps(alpha, _mm256_loadu_ps(v + i)), _mm256_mul_ps(beta, gr));
      _mm256_storeu_ps(vo + i, vn);
      __m256 d = k->nesterov ? _mm256_add_ps(gr, _mm256_mul_ps(alpha, vn)) : vn;
      _mm256_storeu_ps(xo + i, _mm256_sub_ps(xv, _mm256_mul_ps(lr, d)));
      break;
    }
    case OPT_ADAM: {
      __m256 vn = _mm256_add_ps(_mm256_mul_ps(alpha, _mm256_loadu_ps(v + i)), _mm256_mul_ps(oma, gr));
      __m256 hn = _mm256_add_ps(_mm256_mul_ps(beta, _mm256_loadu_ps(h + i)),
                                _mm256_mul_ps(omb, _mm256_mul_ps(gr, gr)));
      _mm256_storeu_ps(vo + i, vn);
      _mm256_storeu_ps(ho + i, hn);
      __m256 q = _mm256_div_ps(vn, _mm256_add_ps(_mm256_sqrt_ps(hn), eps));
      _mm256_storeu_ps(xo + i, _mm256_mul_ps(post, _mm256_sub_ps(xv, _mm256_mul_ps(lr, q))));
      break;
    }
    case OPT_ADAGRAD: {
      __m256 hn = _mm256_add_ps(_mm256_loadu_ps(h + i), _mm256_mul_ps(gr, gr));
      _mm256_storeu_ps(ho + i, hn);
      __m256 q = _mm256_div_ps(_mm256_mul_ps(lr, gr), _mm256_add_ps(_mm256_sqrt_ps(hn), eps));
      _mm256_storeu_ps(xo + i, _mm256_sub_ps(xv, q));
      break;
    }
    }
  }
  return i;
}
#endif

/* 1 when the CPU can run opt_avx2. */
static int have_avx2(void) {
#ifdef HAVE_AVX2_PATH
  return __builtin_cpu_supports("avx2");
#else
  return 0;
#endif
}

static void opt_chunk(void *arg, int64_t b, int64_t e) {
  const opt_job *j = arg;
  if (j->dt == NBL_DT_DOUBLE) {
    opt_loop_double(j, b, e);
    return;
  }
#ifdef HAVE_AVX2_PATH
  if (j->simd) b = opt_avx2(j, b, e);
#endif
  opt_loop_float(j, b, e);
}

/* Run the update for all n groups: inputs X at 2+i, G at 2+n+i, then the
 * states; outputs X_new at i, then the new states. `has_v`/`has_h` say which
 * states the op carries (V before H in both lists). */
static nbl_status opt_run(nbl_kctx *c, const opt_coef *k, int n, int has_v, int has_h) {
  int simd = !c->reference && have_avx2();
  for (int i = 0; i < n; i++) {
    const nbl_rt_tensor *x = c->in[2 + i];
    opt_job j = {.k = k, .dt = x->dtype, .simd = simd, .x = x->data, .g = c->in[2 + n + i]->data};
    int si = 2 + 2 * n + i, so = n + i; /* next state input / output */
    nbl_status st = nbl_kctx_alloc_out(c, i, x->dtype, x->rank, x->dims);
    if (st) return st;
    j.xo = nbl_kctx_out(c, i)->data;
    if (has_v) {
      if ((st = nbl_kctx_alloc_out(c, so, x->dtype, x->rank, x->dims))) return st;
      j.v = c->in[si]->data;
      j.vo = nbl_kctx_out(c, so)->data;
      si += n;
      so += n;
    }
    if (has_h) {
      if ((st = nbl_kctx_alloc_out(c, so, x->dtype, x->rank, x->dims))) return st;
      j.h = c->in[si]->data;
      j.ho = nbl_kctx_out(c, so)->data;
    }
    if (x->numel == 0) continue;
    if (c->reference || x->numel <= GRAIN) opt_chunk(&j, 0, x->numel);
    else nbl_parallel_for(c, x->numel, GRAIN, opt_chunk, &j);
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ kernels */

/* Momentum: V_new = alpha*V + beta'*(nc*X + G), beta' = T > 0 ? beta : 1;
 * standard X_new = X - R*V_new; nesterov X_new = X - R*(G_reg + alpha*V_new). */
static nbl_status k_momentum(nbl_kctx *c) {
  int n;
  double R;
  int64_t T;
  nbl_status st = check_common(c, 3, 2, &n, &R, &T);
  if (st) return st;
  opt_coef k = {.kind = OPT_MOMENTUM, .lr = R};
  double beta = 0;
  if ((st = req_float(c, "alpha", &k.alpha)) || (st = req_float(c, "beta", &beta)) ||
      (st = req_float(c, "norm_coefficient", &k.nc)))
    return st;
  k.beta = T > 0 ? beta : 1.0;
  if (!nbl_node_attr(c->node, "mode"))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "required attribute 'mode' is missing");
  const char *mode = nbl_attr_string(c->node, "mode", "");
  if (!strcmp(mode, "nesterov")) k.nesterov = 1;
  else if (strcmp(mode, "standard") != 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'mode' must be 'standard' or 'nesterov', not '%s'",
                    mode);
  return opt_run(c, &k, n, 1, 0);
}

/* Adam: V_new = alpha*V + (1-alpha)*G_reg, H_new = beta*H + (1-beta)*G_reg^2,
 * X_new = (1 - norm_coefficient_post) * (X - R'*V_new/(sqrt(H_new) + eps)),
 * R' = T > 0 ? R*sqrt(1 - beta^T)/(1 - alpha^T) : R. */
static nbl_status k_adam(nbl_kctx *c) {
  int n;
  double R;
  int64_t T;
  nbl_status st = check_common(c, 4, 3, &n, &R, &T);
  if (st) return st;
  opt_coef k = {.kind = OPT_ADAM};
  k.alpha = nbl_attr_float(c->node, "alpha", 0.9f);
  k.beta = nbl_attr_float(c->node, "beta", 0.999f);
  k.eps = nbl_attr_float(c->node, "epsilon", 1e-6f);
  k.nc = nbl_attr_float(c->node, "norm_coefficient", 0.0f);
  k.post = 1.0 - (double)nbl_attr_float(c->node, "norm_coefficient_post", 0.0f);
  k.lr = T > 0 ? R * sqrt(1.0 - pow(k.beta, (double)T)) / (1.0 - pow(k.alpha, (double)T)) : R;
  return opt_run(c, &k, n, 1, 1);
}

/* Adagrad: r = R/(1 + T*decay_factor), H_new = H + G_reg^2,
 * X_new = X - r*G_reg/(sqrt(H_new) + eps). */
static nbl_status k_adagrad(nbl_kctx *c) {
  int n;
  double R;
  int64_t T;
  nbl_status st = check_common(c, 3, 2, &n, &R, &T);
  if (st) return st;
  opt_coef k = {.kind = OPT_ADAGRAD};
  double decay = nbl_attr_float(c->node, "decay_factor", 0.0f);
  k.eps = nbl_attr_float(c->node, "epsilon", 1e-6f);
  k.nc = nbl_attr_float(c->node, "norm_coefficient", 0.0f);
  k.lr = R / (1.0 + (double)T * decay);
  return opt_run(c, &k, n, 0, 1);
}

/* ------------------------------------------------------------------ shape rules */

/* The optimizers take R, T, then `groups` lists of n tensors (X..., G...,
 * state...) and return the new X... followed by the new state lists, each of
 * the type of the input it replaces. */
static nbl_status shape_optimizer(nbl_shape_ctx *c, int groups) {
  int n = (c->node->n_inputs - 2) / groups;
  if (n <= 0) return NBL_OK;
  for (int k = 0; k < c->node->n_outputs; k++) {
    int g = k / n, in = 2 + (g == 0 ? 0 : g + 1) * n + k % n;
    nbl_shp s;
    nbl_shp_in(c, in, &s);
    nbl_status st = nbl_shp_set(c, k, &s);
    if (st) return st;
  }
  return NBL_OK;
}

static nbl_status shape_momentum(nbl_shape_ctx *c) { return shape_optimizer(c, 3); }
static nbl_status shape_adam(nbl_shape_ctx *c) { return shape_optimizer(c, 4); }
static nbl_status shape_adagrad(nbl_shape_ctx *c) { return shape_optimizer(c, 3); }

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_train[] = {
    NBL_OP_DEF(TRAIN_DOMAIN, "Momentum", 1, 1, .ref = k_momentum, .shape = shape_momentum,
        .no_grad = "optimizer update, applied to gradients"),
    NBL_OP_DEF(TRAIN_DOMAIN, "Adam", 1, 1, .ref = k_adam, .shape = shape_adam,
        .no_grad = "optimizer update, applied to gradients"),
    NBL_OP_DEF(TRAIN_DOMAIN, "Adagrad", 1, 1, .ref = k_adagrad, .shape = shape_adagrad,
        .no_grad = "optimizer update, applied to gradients"),
};
const size_t nbl_ops_train_count = sizeof nbl_ops_train / sizeof nbl_ops_train[0];
