/* grad_case.h - what the gradient-rule tests (test_grad.c, test_grad_rules.c)
 * share on top of tests/train/grad_fd.h: shape literals, attribute setters
 * of the node under test, parameters with given values, and the assertions
 * against central finite differences. Header-only, static functions. */
#ifndef NBL_TEST_GRAD_CASE_H
#define NBL_TEST_GRAD_CASE_H

#include <check.h>
#include <stdio.h>
#include <string.h>

#include "train/grad_fd.h"

#define D(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), ((const int64_t[]){__VA_ARGS__})
#define TOL 1e-6

static inline void expect_fd(fd_case *c, const char *what) {
  double e = fd_run(c, what);
  fd_end(c);
  ck_assert_msg(e >= 0, "%s: the training graph failed: %s", what, nbl_last_error());
  ck_assert_msg(e <= TOL, "%s: relative error %.3e > %.0e", what, e, TOL);
}

/* At a kink (a tie of the extremes) the central difference keeps its
 * second-order term, about h L'' / 4: a looser bound there. */
static inline void expect_fd_kink(fd_case *c, const char *what) {
  double e = fd_run(c, what);
  fd_end(c);
  ck_assert_msg(e >= 0, "%s: the training graph failed", what);
  ck_assert_msg(e <= 1e-4, "%s: relative error %.3e > 1e-4", what, e);
}

/* A float64 parameter with the given values (ties for the extremes). */
static inline nbl_id fd_param_data(fd_case *c, int rank, const int64_t *dims, const double *data) {
  nbl_id v = fd_f64(c, rank, dims, data);
  c->is_param[c->n_in - 1] = 1;
  size_t l = strlen(c->trainable);
  snprintf(c->trainable + l, sizeof c->trainable - l, "%s%s", l ? ";" : "", c->g->values[v].name);
  return v;
}

static inline void ints(fd_case *c, const char *name, int n, const int64_t *v) {
  nbl_node_set_attr_ints(c->g, c->node, name, n, v);
}
static inline void attr_i(fd_case *c, const char *name, int64_t v) { nbl_node_set_attr_int(c->g, c->node, name, v); }
static inline void attr_f(fd_case *c, const char *name, float v) { nbl_node_set_attr_float(c->g, c->node, name, v); }
static inline void attr_s(fd_case *c, const char *name, const char *v) {
  nbl_node_set_attr_string(c->g, c->node, name, v);
}

/* A one-input op on a 2x3x4 parameter drawn from [lo, hi), with one float
 * and one string attribute when named. */
static inline void unary(const char *op, int opset, double lo, double hi, const char *attr, double av,
                  const char *sattr, const char *sv) {
  fd_case c;
  fd_begin(&c, opset);
  fd_param_range(&c, D(2, 3, 4), lo, hi);
  fd_node(&c, op, 1);
  if (attr) attr_f(&c, attr, (float)av);
  if (sattr) attr_s(&c, sattr, sv);
  char what[64];
  snprintf(what, sizeof what, "%s%s%s", op, sv ? " " : "", sv ? sv : "");
  expect_fd(&c, what);
}

#endif
