/* grad_check.h - test helper for the backward-op kernels (tests/runtime/ops/test_ops_grad.c):
 * owned tensors, attribute lists, a one-node runner (one_node.h) that keeps its
 * session so a node can be rerun on changed input data, and the central finite-difference
 * check of a backward kernel against the forward kernel. Header-only, static
 * functions.
 *
 * The check: L(inputs) = sum_i dY_i * Y_i for a fixed random dY, where Y is
 * one output of the forward node run in float64 by the reference kernels.
 * For every element j of a forward input, (L(x + h e_j) - L(x - h e_j)) / 2h
 * must equal element j of the backward kernel's gradient output. The error
 * reported is max_j |fd_j - g_j| / max(max_j |g_j|, max_j |fd_j|): the
 * infinity-norm relative error of the whole gradient. */
#ifndef NBL_TEST_GRAD_CHECK_H
#define NBL_TEST_GRAD_CHECK_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "nibble.h"
#include "one_node.h"
#include "test_data.h"

/* ------------------------------------------------------------------ random numbers */

static uint64_t gc_seed = 0x9E3779B97F4A7C15ull;
static inline double gc_rand(void) { return td_xs64_unit(&gc_seed); } /* uniform [0, 1) */
static inline double gc_uni(double lo, double hi) { return lo + (hi - lo) * gc_rand(); }

/* ------------------------------------------------------------------ tensors */

typedef struct tens {
  nbl_dtype dt; /* NBL_DT_UNDEFINED: an omitted input */
  int rank;
  int64_t dims[8];
  int64_t n;
  void *data;
} tens;

static inline tens t_new(nbl_dtype dt, int rank, const int64_t *dims) {
  tens t;
  memset(&t, 0, sizeof t);
  t.dt = dt;
  t.rank = rank;
  t.n = 1;
  for (int i = 0; i < rank; i++) t.n *= (t.dims[i] = dims[i]);
  size_t es = nbl_dtype_nbytes(dt, 1);
  t.data = calloc((size_t)(t.n ? t.n : 1), es ? es : 1);
  return t;
}
#define DIMS(...) (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})
#define T_D(...) t_rand(NBL_DT_DOUBLE, -1, 1, DIMS(__VA_ARGS__))
#define NONE ((tens){.dt = NBL_DT_UNDEFINED})

/* Uniform random values in [lo, hi) (float or double). */
static inline tens t_rand(nbl_dtype dt, double lo, double hi, int rank, const int64_t *dims) {
  tens t = t_new(dt, rank, dims);
  for (int64_t i = 0; i < t.n; i++) {
    double v = gc_uni(lo, hi);
    if (dt == NBL_DT_DOUBLE) ((double *)t.data)[i] = v;
    else ((float *)t.data)[i] = (float)v;
  }
  return t;
}
/* int64 tensor from values. */
static inline tens t_i64(int rank, const int64_t *dims, const int64_t *v) {
  tens t = t_new(NBL_DT_INT64, rank, dims);
  if (t.n) memcpy(t.data, v, sizeof(int64_t) * (size_t)t.n);
  return t;
}
/* 1-D int64 tensor of the given values. */
#define T_I64(...) t_i64(1, (const int64_t[]){sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)}, \
                         (const int64_t[]){__VA_ARGS__})
/* The shape of t as a 1-D int64 tensor (what Shape(X) gives). */
static inline tens t_shape(const tens *t) {
  int64_t d = t->rank;
  return t_i64(1, &d, t->dims);
}
/* Scalar double. */
static inline tens t_scalar(nbl_dtype dt, double v) {
  tens t = t_new(dt, 0, NULL);
  if (dt == NBL_DT_DOUBLE) ((double *)t.data)[0] = v;
  else if (dt == NBL_DT_FLOAT) ((float *)t.data)[0] = (float)v;
  else if (dt == NBL_DT_INT64) ((int64_t *)t.data)[0] = (int64_t)v;
  return t;
}
static inline tens t_copy_host(const nbl_host_tensor *h) {
  tens t = t_new(h->dtype, h->rank, h->dims);
  if (h->nbytes) memcpy(t.data, h->data, h->nbytes);
  return t;
}
static inline tens t_clone(const tens *s) {
  tens t = t_new(s->dt, s->rank, s->dims);
  if (s->n) memcpy(t.data, s->data, nbl_dtype_nbytes(s->dt, s->n));
  return t;
}
/* A float32 copy of a double tensor (or the other way). */
static inline tens t_convert(const tens *s, nbl_dtype dt) {
  tens t = t_new(dt, s->rank, s->dims);
  for (int64_t i = 0; i < s->n; i++) {
    double v = s->dt == NBL_DT_DOUBLE ? ((double *)s->data)[i] : ((float *)s->data)[i];
    if (dt == NBL_DT_DOUBLE) ((double *)t.data)[i] = v;
    else ((float *)t.data)[i] = (float)v;
  }
  return t;
}
static inline void t_free(tens *t) {
  free(t->data);
  t->data = NULL;
}
static inline double t_get(const tens *t, int64_t i) {
  switch (t->dt) {
  case NBL_DT_DOUBLE: return ((const double *)t->data)[i];
  case NBL_DT_FLOAT: return ((const float *)t->data)[i];
  case NBL_DT_INT64: return (double)((const int64_t *)t->data)[i];
  case NBL_DT_INT32: return ((const int32_t *)t->data)[i];
  case NBL_DT_BOOL: return ((const uint8_t *)t->data)[i];
  default: return NAN;
  }
}
static inline double h_get(const nbl_host_tensor *t, int64_t i) {
  tens v = {.dt = t->dtype, .data = t->data};
  return t_get(&v, i);
}

/* ------------------------------------------------------------------ attributes */

typedef struct attr {
  const char *name; /* NULL ends a list */
  char kind;        /* 'i', 'f', 's', 'v' (ints) */
  int64_t i;
  float f;
  const char *s;
  int n;
  int64_t v[12];
} attr;
#define AI(nm, x) ((attr){.name = (nm), .kind = 'i', .i = (x)})
#define AF(nm, x) ((attr){.name = (nm), .kind = 'f', .f = (x)})
#define AS(nm, x) ((attr){.name = (nm), .kind = 's', .s = (x)})
#define AV(nm, ...) \
  ((attr){.name = (nm), .kind = 'v', .n = sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t), .v = {__VA_ARGS__}})
#define AEND ((attr){0})

/* ------------------------------------------------------------------ a rerunnable node */

/* A runner is a one-node harness (one_node.h) kept with its session, so the
 * node can be rerun on changed input data. */
typedef one runner;

/* A model with one node op of `domain` (version `opset`), inputs typed as ins
 * (dt UNDEFINED: omitted), n_out outputs of which want[i] == 0 are not
 * requested (want NULL: all), its attributes from the list attrs; its session
 * (reference kernels when reference != 0) is made at the first runner_run. */
static inline runner *runner_new(const char *domain, const char *op, int opset, const attr *attrs, int n_in,
                                 const tens *ins, int n_out, const int *want, int reference) {
  one *o = one_new_domain(op, domain, opset, n_in, n_out);
  nbl_graph *g = G(o);
  for (const attr *a = attrs; a && a->name; a++) {
    if (a->kind == 'i') nbl_node_set_attr_int(g, o->node, a->name, a->i);
    else if (a->kind == 'f') nbl_node_set_attr_float(g, o->node, a->name, a->f);
    else if (a->kind == 's') nbl_node_set_attr_string(g, o->node, a->name, a->s);
    else nbl_node_set_attr_ints(g, o->node, a->name, a->n, a->v);
  }
  for (int i = 0; i < n_in; i++) one_in(o, i, ins[i].dt, ins[i].rank, ins[i].dims, ins[i].data);
  for (int i = 0; i < n_out; i++)
    if (want && !want[i]) one_skip_out(o, i);
  o->reference = reference;
  return o;
}

/* Run on the data of ins (same types and shapes as at creation): the
 * session of the first run is kept for the later ones. */
static inline nbl_status runner_run(runner *r, const tens *ins) {
  for (int i = 0; i < r->n_in; i++)
    if (ins[i].dt != NBL_DT_UNDEFINED) r->in[i].data = ins[i].data;
  return one_rerun(r);
}

static inline void runner_free(runner *r) { one_free(r); }

/* ------------------------------------------------------------------ the check */

/* Rel. error (see the file comment) of grad (a backward output, float or
 * double, the shape of fin[fi]) against central differences of
 * L = sum(dY * out[fout]) of the forward runner fwd (created on fin, all
 * outputs requested up to fout), h relative to max(1, |x_j|). */
static inline double fd_error(runner *fwd, tens *fin, int fi, int fout, const tens *dY,
                              const nbl_host_tensor *grad, double h) {
  tens *x = &fin[fi];
  double worst = 0, gm = 0, fm = 0;
  if (grad->dtype != NBL_DT_DOUBLE && grad->dtype != NBL_DT_FLOAT) return INFINITY;
  if ((int64_t)(grad->nbytes / nbl_dtype_nbytes(grad->dtype, 1)) != x->n) return INFINITY;
  for (int64_t j = 0; j < x->n; j++) {
    double *xp = (double *)x->data + j, x0 = *xp, hh = h * (fabs(x0) > 1 ? fabs(x0) : 1), l[2];
    for (int s = 0; s < 2; s++) {
      *xp = x0 + (s ? -hh : hh);
      if (runner_run(fwd, fin)) return INFINITY;
      const nbl_host_tensor *y = &fwd->out[fout];
      double acc = 0;
      for (int64_t i = 0; i < dY->n; i++) acc += t_get(dY, i) * h_get(y, i);
      l[s] = acc;
    }
    *xp = x0;
    double fd = (l[0] - l[1]) / (2 * hh), g = h_get(grad, j);
    worst = fmax(worst, fabs(fd - g));
    gm = fmax(gm, fabs(g));
    fm = fmax(fm, fabs(fd));
  }
  double den = fm > gm ? fm : gm;
  return den > 0 ? worst / den : worst;
}

#endif
