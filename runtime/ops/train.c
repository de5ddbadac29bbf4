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
 * Gradient (the abstract op of the same domain) is expanded with the op
 * table's gradient rules (runtime/core/grad.h) into a private model the
 * kernel keeps; see k_gradient.
 *
 * The losses NegativeLogLikelihoodLoss and SoftmaxCrossEntropyLoss are
 * registered in the 'reduce' family (runtime/ops/reduce.c).
 */
#include <math.h>
#include <string.h>

#include "runtime/core/cpu.h"
#include "runtime/core/exec.h"
#include "runtime/core/grad.h"
#include "runtime/core/kernel.h"
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
  return nbl_cpu_has(NBL_CPU_AVX2);
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

/* ------------------------------------------------------------------ Gradient */

/* Gradient (version 1): outputs d y / d x for every name in the attribute xs,
 * y the tensor named by attribute y of the enclosing graph; the node's inputs
 * are the values of xs then zs (attribute zs: the other inputs y depends on).
 * On the first run, and again whenever the input shapes change, the kernel
 * builds a private model: inputs xs and zs, the enclosing graph's nodes that
 * compute y from them (initializers copied by reference), typed by one forward
 * run; then the backward nodes of the op table's rules (nbl_grad_build, seed
 * ones: the gradient of sum(y); zeros when y does not depend on x). The model
 * and its engine stay in the node's cache. */

typedef struct gradop {
  nbl_model *m;
  nbl_engine *e;
  int n_in;
  int64_t *sig;
  int sig_len;
  char **names; /* input names (xs then zs), the model's arena */
} gradop;

static void gradop_free(void *p) {
  gradop *g = p;
  if (!g) return;
  nbl_engine_free(g->e);
  nbl_model_free(g->m);
  free(g->sig);
  free(g->names);
  free(g);
}

/* The inputs' types and shapes as one signature. */
static int64_t *gradop_sig(nbl_kctx *c, int *len) {
  int64_t *s = malloc(sizeof(int64_t) * (size_t)(c->n_in * (NBL_MAX_RANK + 2) + 1));
  if (!s) return NULL;
  int k = 0;
  for (int i = 0; i < c->n_in; i++) {
    const nbl_rt_tensor *t = c->in[i];
    s[k++] = t ? (int64_t)t->dtype : -1;
    s[k++] = t ? t->rank : -1;
    for (int d = 0; t && d < t->rank; d++) s[k++] = t->dims[d];
  }
  *len = k;
  return s;
}

static void gradop_types(void *user, const char *name, const nbl_rt_tensor *t) {
  nbl_graph *g = user;
  nbl_id v = nbl_graph_find(g, name);
  if (v != NBL_NONE) nbl_type_set_tensor(g->model->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
}

/* The value of the private graph g named like src value sv, created on first use. */
static nbl_id gradop_value(nbl_kctx *c, nbl_graph *g, const nbl_graph *src, nbl_id sv,
                           const unsigned char *need) {
  const nbl_value *val = &src->values[sv];
  nbl_id v = nbl_graph_find(g, val->name);
  if (v != NBL_NONE) return v;
  const nbl_value *def = val;
  for (const nbl_graph *p = src; (def->flags & NBL_VAL_OUTER) && p->parent;) { /* captured */
    p = p->parent;
    nbl_id pv = nbl_graph_find(p, val->name);
    if (pv == NBL_NONE) break;
    def = &p->values[pv];
  }
  if (def->init) {
    v = nbl_graph_add_value(g, val->name);
    nbl_tensor *t = v == NBL_NONE ? NULL
                                  : nbl_tensor_new_buf(g->model->arena, val->name, def->init->dtype,
                                                       def->init->rank, def->init->dims,
                                                       nbl_buffer_ref(def->init->buf), def->init->data,
                                                       def->init->nbytes);
    if (!t) return NBL_NONE;
    nbl_type_set_tensor(g->model->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
    nbl_graph_set_initializer(g, v, t);
    return v;
  }
  if (val->producer == NBL_NONE || !need[val->producer]) {
    nbl_kerr(c, NBL_ERR_INVALID_MODEL, "y depends on '%s', which is neither in xs nor in zs",
             val->name);
    return NBL_NONE;
  }
  return nbl_graph_add_value(g, val->name);
}

static nbl_status gradop_build(nbl_kctx *c, gradop *go) {
  const nbl_node *n = c->node;
  const nbl_graph *src = c->graph;
  int nx = 0, nz = 0;
  const nbl_attr *ax = nbl_node_attr(n, "xs"), *az = nbl_node_attr(n, "zs");
  const char *yname = nbl_attr_string(n, "y", NULL);
  if (!ax || ax->type != NBL_ATTR_STRINGS || !yname)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attributes xs (strings) and y (string) are required");
  nx = ax->n;
  nz = az && az->type == NBL_ATTR_STRINGS ? az->n : 0;
  if (c->n_in != nx + nz || c->n_out > nx)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%d inputs and %d outputs for %d xs and %d zs", c->n_in,
                    c->n_out, nx, nz);
  nbl_id ysrc = nbl_graph_find(src, yname);
  if (ysrc == NBL_NONE) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "y '%s' is not a value of the graph", yname);
  nbl_model *m = nbl_model_new();
  if (!m) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  go->m = m;
  for (int i = 0; i < src->model->n_opsets; i++)
    nbl_model_set_opset(m, src->model->opsets[i].domain, src->model->opsets[i].version);
  nbl_graph *g = m->graph;
  go->names = calloc((size_t)(nx + nz) + 1, sizeof(char *));
  if (!go->names) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_id *xv = malloc(sizeof(nbl_id) * (size_t)(2 * nx + 1));
  char **dxn = calloc((size_t)nx + 1, sizeof(char *));
  unsigned char *need = calloc((size_t)src->n_nodes + 1, 1);
  nbl_id *stack = malloc(sizeof(nbl_id) * (size_t)(src->n_values + 1)), *order = NULL;
  nbl_status st = NBL_OK;
  if (!xv || !dxn || !need || !stack) {
    st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    goto done;
  }
  for (int i = 0; i < nx + nz && !st; i++) {
    const char *nm = i < nx ? ax->strings[i] : az->strings[i - nx];
    const nbl_rt_tensor *t = c->in[i];
    nbl_id v = nbl_graph_add_value(g, nm);
    if (v == NBL_NONE || !t) {
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d ('%s') is missing or named twice", i, nm);
      break;
    }
    nbl_type_set_tensor(m->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
    nbl_graph_add_input(g, v);
    go->names[i] = g->values[v].name;
    if (i < nx) xv[i] = v;
  }
  /* the nodes computing y, back to the inputs */
  int sp = 0;
  if (!st && nbl_graph_find(g, yname) == NBL_NONE) stack[sp++] = ysrc;
  while (!st && sp > 0) {
    nbl_id v = stack[--sp];
    nbl_id p = src->values[v].producer;
    if (p == NBL_NONE || need[p]) continue;
    need[p] = 1;
    const nbl_node *pn = &src->nodes[p];
    for (int k = 0; k < pn->n_attrs; k++)
      if (pn->attrs[k].type == NBL_ATTR_GRAPH || pn->attrs[k].type == NBL_ATTR_GRAPHS)
        st = nbl_kerr(c, NBL_ERR_UNSUPPORTED, "y depends on node '%s' (%s), which has a subgraph",
                      pn->name, pn->op_type);
    for (int k = 0; k < pn->n_inputs; k++) {
      nbl_id u = pn->inputs[k];
      if (u != NBL_NONE && nbl_graph_find(g, src->values[u].name) == NBL_NONE && sp < src->n_values)
        stack[sp++] = u;
    }
  }
  int no = st ? 0 : nbl_graph_topo_order(src, &order);
  if (no < 0) st = NBL_ERR_INVALID_MODEL;
  for (int k = 0; k < no && !st; k++) {
    if (!need[order[k]]) continue;
    const nbl_node *sn = &src->nodes[order[k]];
    nbl_id in[64], out[64];
    if (sn->n_inputs > 64 || sn->n_outputs > 64) {
      st = nbl_kerr(c, NBL_ERR_UNSUPPORTED, "node '%s' has too many inputs or outputs", sn->name);
      break;
    }
    for (int i = 0; i < sn->n_inputs && !st; i++) {
      in[i] = sn->inputs[i] == NBL_NONE ? NBL_NONE : gradop_value(c, g, src, sn->inputs[i], need);
      if (sn->inputs[i] != NBL_NONE && in[i] == NBL_NONE) st = NBL_ERR_INVALID_MODEL;
    }
    for (int i = 0; i < sn->n_outputs && !st; i++) {
      out[i] = sn->outputs[i] == NBL_NONE ? NBL_NONE : gradop_value(c, g, src, sn->outputs[i], need);
      if (sn->outputs[i] != NBL_NONE && out[i] == NBL_NONE) st = NBL_ERR_INVALID_MODEL;
    }
    if (st) break;
    nbl_id nn = nbl_graph_add_node(g, sn->op_type, sn->domain, sn->name, sn->n_inputs, in, sn->n_outputs, out);
    if (nn == NBL_NONE) {
      st = NBL_ERR_INVALID_MODEL;
      break;
    }
    sn = &src->nodes[order[k]];
    for (int a = 0; a < sn->n_attrs; a++) {
      nbl_attr at = sn->attrs[a];
      nbl_attr *na = nbl_node_add_attr(g, nn, at.name, at.type);
      if (!na) {
        st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
        break;
      }
      *na = at;
      if (at.type == NBL_ATTR_TENSOR && at.t) nbl_buffer_ref(at.t->buf);
      for (int j = 0; at.type == NBL_ATTR_TENSORS && j < at.n; j++) nbl_buffer_ref(at.tensors[j]->buf);
    }
  }
  nbl_id y = st ? NBL_NONE : nbl_graph_find(g, yname);
  if (!st && y == NBL_NONE) st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "y '%s' is not computed from xs and zs", yname);
  if (st) goto done;
  nbl_graph_add_output(g, y);
  /* one forward run gives every value its type */
  nbl_engine_options eo = {.threads = 1, .reference = c->reference, .no_arena = 1,
                           .on_value = gradop_types, .user = g};
  nbl_engine *fe = NULL;
  st = nbl_engine_create(m, NULL, &eo, &fe);
  for (int i = 0; i < nx + nz && !st; i++) st = nbl_engine_bind(fe, go->names[i], c->in[i]);
  if (!st) st = nbl_engine_run(fe);
  if (!st) gradop_types(g, yname, nbl_engine_output(fe, 0));
  nbl_engine_free(fe);
  if (st) goto done;
  for (int i = 0; i < nx; i++) {
    char hint[512];
    snprintf(hint, sizeof hint, "%s_grad", ax->strings[i]);
    dxn[i] = nbl_graph_unique_name(g, hint);
  }
  nbl_grad_spec gs = {.g = g, .n_y = 1, .y = &y, .n_x = nx, .x = xv, .dx = xv + nx,
                      .dx_names = (const char *const *)dxn, .zeros_for_unreached = 1};
  st = nbl_grad_build(&gs);
  if (st) {
    nbl_error_prefix("node '%s' (Gradient)", n->name ? n->name : "");
    goto done;
  }
  for (int i = 0; i < nx; i++) nbl_graph_add_output(g, xv[nx + i]);
  nbl_engine_options eo2 = {.threads = 1, .reference = c->reference, .no_arena = 1};
  st = nbl_engine_create(m, NULL, &eo2, &go->e);
done:
  free(xv);
  free(dxn);
  free(need);
  free(stack);
  free(order);
  return st;
}

static nbl_status k_gradient(nbl_kctx *c) {
  nbl_kcache *kc = nbl_kctx_cache(c);
  gradop *go = kc ? kc->data : NULL;
  int len = 0;
  int64_t *sig = gradop_sig(c, &len);
  if (!sig) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (go && (go->sig_len != len || memcmp(go->sig, sig, sizeof(int64_t) * (size_t)len) != 0)) {
    gradop_free(go);
    go = NULL;
    if (kc) kc->data = NULL;
  }
  if (!go) {
    go = calloc(1, sizeof *go);
    if (!go) {
      free(sig);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    go->sig = sig;
    go->sig_len = len;
    go->n_in = c->n_in;
    nbl_status st = gradop_build(c, go);
    if (st) {
      gradop_free(go);
      return st;
    }
    if (kc) {
      kc->data = go;
      kc->free_fn = gradop_free;
    }
  } else {
    free(sig);
  }
  nbl_status st = NBL_OK;
  for (int i = 0; i < go->n_in && !st; i++) st = nbl_engine_bind(go->e, go->names[i], c->in[i]);
  if (!st) st = nbl_engine_run(go->e);
  for (int k = 0; k < c->n_out && !st; k++)
    if (c->out[k]) st = nbl_kctx_copy_out(c, k, nbl_engine_output(go->e, 1 + k));
  if (!kc) gradop_free(go);
  if (st && strncmp(nbl_last_error(), "node '", 6) != 0) nbl_error_prefix("node '%s' (Gradient)", c->node->name);
  return st;
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

/* Gradient: output k is shaped like input k (x_k). */
static nbl_status shape_gradient(nbl_shape_ctx *c) {
  nbl_status st = NBL_OK;
  for (int k = 0; k < c->node->n_outputs && !st; k++) {
    nbl_shp s;
    nbl_shp_in(c, k, &s);
    st = nbl_shp_set(c, k, &s);
  }
  return st;
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_train[] = {
    NBL_OP_DEF(TRAIN_DOMAIN, "Momentum", 1, 1, .ref = k_momentum, .shape = shape_momentum,
        .no_grad = "optimizer update, applied to gradients"),
    NBL_OP_DEF(TRAIN_DOMAIN, "Adam", 1, 1, .ref = k_adam, .shape = shape_adam,
        .no_grad = "optimizer update, applied to gradients"),
    NBL_OP_DEF(TRAIN_DOMAIN, "Gradient", 1, 1, .ref = k_gradient, .shape = shape_gradient,
        .no_grad = "not differentiated: it is itself a gradient"),
    NBL_OP_DEF(TRAIN_DOMAIN, "Adagrad", 1, 1, .ref = k_adagrad, .shape = shape_adagrad,
        .no_grad = "optimizer update, applied to gradients"),
};
const size_t nbl_ops_train_count = sizeof nbl_ops_train / sizeof nbl_ops_train[0];
