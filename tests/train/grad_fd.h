/* grad_fd.h - test helper for the gradient rules (tests/runtime/core/test_grad.c): a
 * one-node model whose float inputs are float64 initializers (the
 * parameters), turned into a training model by the build-training pass and
 * run end to end: the algorithm graph on the engine, main-graph initializers
 * bound as its outer values (nbl_engine_bind), the `<param>_grad` values
 * caught as they are computed. Each gradient is compared with central finite
 * differences of the same graph's loss output:
 *   fd_j = (L(p + h e_j) - L(p - h e_j)) / 2h,
 *   err = max_j |fd_j - g_j| / max(max_j |g_j|, max_j |fd_j|)
 * (the infinity-norm relative error of the whole gradient).
 * The loss is mse against a fixed random label (a generic smooth function of
 * the node's first output) unless the case says the output is the loss.
 * Header-only, static functions. */
#ifndef NBL_TEST_GRAD_FD_H
#define NBL_TEST_GRAD_FD_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "passes/pass.h"
#include "runtime/core/exec.h"

#define FD_MAX_IN 8

static uint64_t fd_seed = 0x243F6A8885A308D3ull;
static double fd_rand(void) { /* uniform [0, 1) */
  fd_seed ^= fd_seed << 13;
  fd_seed ^= fd_seed >> 7;
  fd_seed ^= fd_seed << 17;
  return (double)(fd_seed >> 11) / 9007199254740992.0;
}

typedef struct fd_case {
  nbl_model *m;
  nbl_graph *g;
  int n_in;
  nbl_id in[FD_MAX_IN];
  int is_param[FD_MAX_IN];
  nbl_id node;
  int loss_output; /* 1: the node's output 0 is the loss */
  char trainable[512];
  const char *extra; /* extra build-training options ("k=v,...") */
} fd_case;

static void fd_begin(fd_case *c, int opset) {
  memset(c, 0, sizeof *c);
  c->m = nbl_model_new();
  nbl_model_set_opset(c->m, "", opset);
  c->g = c->m->graph;
  c->node = NBL_NONE;
}

/* An initializer input of type dt with the given data (copied). */
static nbl_id fd_const(fd_case *c, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  char nm[16];
  snprintf(nm, sizeof nm, "x%d", c->n_in);
  nbl_id v = nbl_graph_add_value(c->g, nm);
  nbl_type_set_tensor(c->m->arena, &c->g->values[v].type, dt, rank, dims);
  nbl_graph_set_initializer(c->g, v, nbl_tensor_new(c->m->arena, nm, dt, rank, dims, data));
  c->in[c->n_in++] = v;
  return v;
}

/* A float64 parameter with uniform values in [lo, hi). */
static nbl_id fd_param_range(fd_case *c, int rank, const int64_t *dims, double lo, double hi) {
  int64_t n = nbl_shape_numel(rank, dims);
  double *d = malloc(sizeof(double) * (size_t)(n ? n : 1));
  for (int64_t i = 0; i < n; i++) d[i] = lo + (hi - lo) * fd_rand();
  nbl_id v = fd_const(c, NBL_DT_DOUBLE, rank, dims, d);
  free(d);
  c->is_param[c->n_in - 1] = 1;
  size_t l = strlen(c->trainable);
  snprintf(c->trainable + l, sizeof c->trainable - l, "%s%s", l ? ";" : "", c->g->values[v].name);
  return v;
}
static nbl_id fd_param(fd_case *c, int rank, const int64_t *dims) {
  return fd_param_range(c, rank, dims, -1.0, 1.0);
}
static nbl_id fd_i64(fd_case *c, int rank, const int64_t *dims, const int64_t *data) {
  return fd_const(c, NBL_DT_INT64, rank, dims, data);
}
static nbl_id fd_f64(fd_case *c, int rank, const int64_t *dims, const double *data) {
  return fd_const(c, NBL_DT_DOUBLE, rank, dims, data);
}
static inline void fd_none(fd_case *c) { c->in[c->n_in++] = NBL_NONE; }

/* The node (domain "" unless given) with n_out outputs y0..; output 0 is the model output. */
static nbl_id fd_node_dom(fd_case *c, const char *op, const char *domain, int n_out) {
  nbl_id out[8];
  for (int i = 0; i < n_out; i++) {
    char nm[8];
    snprintf(nm, sizeof nm, "y%d", i);
    out[i] = nbl_graph_add_value(c->g, nm);
  }
  nbl_graph_add_output(c->g, out[0]);
  c->node = nbl_graph_add_node(c->g, op, domain, "n", c->n_in, c->in, n_out, out);
  return c->node;
}
static nbl_id fd_node(fd_case *c, const char *op, int n_out) { return fd_node_dom(c, op, "", n_out); }

typedef struct fd_grab {
  int n;
  const char *names[FD_MAX_IN];
  double *got[FD_MAX_IN];
  int64_t len[FD_MAX_IN];
} fd_grab;

static void fd_on_value(void *user, const char *name, const nbl_rt_tensor *t) {
  fd_grab *gb = user;
  for (int i = 0; i < gb->n; i++) {
    if (strcmp(name, gb->names[i]) != 0) continue;
    free(gb->got[i]);
    gb->got[i] = malloc(sizeof(double) * (size_t)(t->numel ? t->numel : 1));
    for (int64_t k = 0; k < t->numel; k++) gb->got[i][k] = nbl_rt_get_f64(t, k);
    gb->len[i] = t->numel;
  }
}

static double fd_loss(nbl_engine *e, nbl_status *st) {
  *st = nbl_engine_run(e);
  if (*st) return NAN;
  return nbl_rt_get_f64(nbl_engine_output(e, 0), 0);
}

/* Build the training model, run it and compare every parameter's gradient
 * with finite differences. Returns the largest relative error (negative when
 * something failed; the message is printed). */
static double fd_run(fd_case *c, const char *what) {
  double worst = -1;
  char spec[1200];
  snprintf(spec, sizeof spec, "build-training{loss=%s,trainable=%s,optimizer=sgd%s%s}",
           c->loss_output ? "output" : "mse", c->trainable, c->extra ? "," : "",
           c->extra ? c->extra : "");
  nbl_pipeline *p = NULL;
  FILE *devnull = fopen("/dev/null", "w");
  nbl_pipeline_options po = {.out = devnull, .log = devnull, .verify_each = 1};
  nbl_status st = nbl_pipeline_parse(spec, &p);
  if (!st) st = nbl_pipeline_run(p, c->m, &po);
  nbl_pipeline_free(p);
  fclose(devnull);
  if (st) {
    printf("FD %-40s build-training failed: %s\n", what, nbl_last_error());
    return -1;
  }
  nbl_graph *alg = c->m->training[0].algorithm;
  fd_grab gb = {0};
  char gnames[FD_MAX_IN][64];
  int which[FD_MAX_IN];
  for (int i = 0; i < c->n_in; i++)
    if (c->is_param[i]) {
      snprintf(gnames[gb.n], sizeof gnames[0], "%s_grad", c->g->values[c->in[i]].name);
      gb.names[gb.n] = gnames[gb.n];
      which[gb.n++] = i;
    }
  nbl_engine_options eo = {.threads = 1, .reference = 1, .no_arena = 1, .on_value = fd_on_value, .user = &gb};
  nbl_engine *e = NULL;
  st = nbl_engine_create(c->m, alg, &eo, &e);
  /* outer values: every main-graph initializer, parameters from buffers we perturb */
  nbl_rt_tensor views[64];
  double *pdata[FD_MAX_IN] = {0};
  int nv = 0;
  for (int i = 0; !st && i < c->g->n_initializers && nv < 64; i++) {
    nbl_id v = c->g->initializers[i];
    const nbl_value *val = &c->g->values[v];
    if (nbl_graph_find(alg, val->name) == NBL_NONE) continue;
    nbl_rt_tensor *t = &views[nv++];
    st = nbl_rt_from_ir(val->init, t);
    for (int k = 0; !st && k < c->n_in; k++)
      if (c->in[k] == v && c->is_param[k]) {
        pdata[k] = malloc(t->nbytes);
        memcpy(pdata[k], t->data, t->nbytes);
        t->data = pdata[k];
      }
    if (!st) st = nbl_engine_bind(e, val->name, t);
  }
  /* label, lr, step */
  double *label = NULL;
  float lr = 0.0f;
  int64_t step = 1;
  for (int i = 0; !st && i < alg->n_inputs; i++) {
    const nbl_value *val = &alg->values[alg->inputs[i]];
    nbl_rt_tensor t = {0};
    if (!strcmp(val->name, "lr")) {
      t.dtype = NBL_DT_FLOAT;
      t.data = &lr;
      t.nbytes = 4;
    } else if (!strcmp(val->name, "step")) {
      t.dtype = NBL_DT_INT64;
      t.data = &step;
      t.nbytes = 8;
    } else { /* the label: random, shaped like the output */
      t.dtype = val->type.elem;
      t.rank = val->type.rank;
      int64_t n = 1;
      for (int k = 0; k < t.rank; k++) n *= (t.dims[k] = val->type.dims[k].value);
      label = malloc(sizeof(double) * (size_t)(n ? n : 1));
      for (int64_t k = 0; k < n; k++) label[k] = 2 * fd_rand() - 1;
      t.data = label;
      t.nbytes = sizeof(double) * (size_t)n;
    }
    t.numel = nbl_shape_numel(t.rank, t.dims);
    st = nbl_engine_bind(e, val->name, &t);
  }
  if (!st) fd_loss(e, &st);
  for (int i = 0; !st && i < gb.n; i++)
    if (!gb.got[i]) {
      printf("FD %-40s no gradient computed for '%s'\n", what, gb.names[i]);
      st = NBL_ERR_RUNTIME;
    }
  if (st) {
    if (st != NBL_ERR_RUNTIME || !strstr(nbl_last_error(), "no gradient"))
      printf("FD %-40s run failed: %s\n", what, nbl_last_error());
  } else {
    int ng = gb.n;
    gb.n = 0; /* finite differences need the loss only */
    worst = 0;
    for (int i = 0; i < ng && worst >= 0; i++) {
      int k = which[i];
      const nbl_value *pv = &c->g->values[c->in[k]];
      int64_t n = nbl_tensor_numel(pv->init);
      int f32 = pv->init->dtype == NBL_DT_FLOAT;
      double *x = pdata[k], num = 0, den = 0;
      float *xf = (float *)pdata[k];
      if (n != gb.len[i]) {
        printf("FD %-40s gradient of '%s' has %lld elements, want %lld\n", what, pv->name,
               (long long)gb.len[i], (long long)n);
        worst = -1;
        break;
      }
      for (int64_t j = 0; j < n; j++) {
        /* float32 parameters: a power-of-two step, exact in float32 */
        double x0 = f32 ? xf[j] : x[j], h = f32 ? 0x1p-10 : 1e-5 * (fabs(x0) > 1 ? fabs(x0) : 1.0);
        if (f32) xf[j] = (float)(x0 + h); else x[j] = x0 + h;
        double lp = fd_loss(e, &st);
        if (f32) xf[j] = (float)(x0 - h); else x[j] = x0 - h;
        double lm = fd_loss(e, &st);
        if (f32) xf[j] = (float)x0; else x[j] = x0;
        if (st) {
          printf("FD %-40s run failed: %s\n", what, nbl_last_error());
          worst = -1;
          break;
        }
        double fd = (lp - lm) / (2 * h), g = gb.got[i][j];
        if (fabs(fd - g) > num) num = fabs(fd - g);
        if (fabs(g) > den) den = fabs(g);
        if (fabs(fd) > den) den = fabs(fd);
      }
      double err = den > 0 ? num / den : num;
      if (worst >= 0 && err > worst) worst = err;
    }
    if (worst >= 0) printf("FD %-40s max rel err %.2e over %d gradient(s)\n", what, worst, ng);
  }
  nbl_engine_free(e);
  for (int i = 0; i < FD_MAX_IN; i++) {
    free(pdata[i]);
    free(gb.got[i]);
  }
  (void)which;
  free(label);
  return worst;
}

static void fd_end(fd_case *c) { nbl_model_free(c->m); }

#endif /* NBL_TEST_GRAD_FD_H */
