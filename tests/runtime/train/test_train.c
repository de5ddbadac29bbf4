/* test_train.c - the training runtime (runtime/train/) on the hand-built MLP
 * training model of tests/train/mlp_train.h: gradients against central finite
 * differences in float64, optimizer steps against the ONNX formulas computed
 * here in double, gradient accumulation, clipping, BatchNormalization running
 * statistics, memory reuse across forward and backward, schedules,
 * checkpoints (round trip, resume, truncated and foreign files), export, the
 * cut's contract checks, the data order and the dataset checks. */
#include <check.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/train/train.h"
#include "train/mlp_train.h"

static char tmpdir[256];

static const char *tpath(const char *name) {
  static char buf[4][512];
  static int k;
  k = (k + 1) & 3;
  snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
  return buf[k];
}

static mlp_cfg cfg_default(void) {
  return (mlp_cfg){.dt = NBL_DT_FLOAT, .c = 1, .h = 6, .w = 5, .hidden = 7, .classes = 4,
                   .opt = "momentum", .momentum = 0.9f, .wd = 0.0f, .bn = 0, .seed = 7};
}

/* A batch: inputs uniform in [-1, 1) (float or double), labels in [0, K). */
typedef struct batch {
  nbl_host_tensor t[2];
  void *x;
  int64_t *y;
} batch;

static batch make_batch(const mlp_cfg *c, int n, unsigned long long seed) {
  batch b;
  memset(&b, 0, sizeof b);
  int64_t D = (int64_t)c->c * c->h * c->w;
  size_t es = c->dt == NBL_DT_DOUBLE ? 8 : 4;
  b.x = malloc(es * (size_t)(n * D));
  b.y = malloc(sizeof(int64_t) * (size_t)n);
  for (int64_t i = 0; i < n * D; i++) {
    double v = mlp_uniform(&seed, 1.0);
    if (es == 8) ((double *)b.x)[i] = v;
    else ((float *)b.x)[i] = (float)v;
  }
  for (int i = 0; i < n; i++) b.y[i] = (int64_t)(mlp_rng(&seed) % (unsigned long long)c->classes);
  b.t[0] = (nbl_host_tensor){.name = "input", .dtype = c->dt, .rank = 4, .dims = {n, c->c, c->h, c->w},
                             .data = b.x, .nbytes = es * (size_t)(n * D)};
  b.t[1] = (nbl_host_tensor){.name = "label", .dtype = NBL_DT_INT64, .rank = 1, .dims = {n},
                             .data = b.y, .nbytes = sizeof(int64_t) * (size_t)n};
  return b;
}

static void free_batch(batch *b) {
  free(b->x);
  free(b->y);
}

static nbl_train_session *session(const mlp_cfg *c, const nbl_train_options *o) {
  nbl_model *m = mlp_train_model(c);
  ck_assert_msg(nbl_model_verify(m) == NBL_OK, "%s", nbl_last_error());
  nbl_train_session *s = NULL;
  nbl_status st = nbl_train_session_create(m, o, &s);
  ck_assert_msg(st == NBL_OK, "%s", nbl_last_error());
  nbl_model_free(m);
  return s;
}

static int slot_of(nbl_train_session *s, const char *name) {
  for (int i = 0; i < s->n_slots; i++)
    if (!strcmp(s->slots[i].name, name)) return i;
  ck_abort_msg("no slot %s", name);
  return -1;
}

static double *copy_f64(const nbl_rt_tensor *t) {
  double *d = malloc(sizeof(double) * (size_t)(t->numel + 1));
  for (int64_t i = 0; i < t->numel; i++) d[i] = nbl_rt_get_f64(t, i);
  return d;
}

/* ------------------------------------------------------------------ gradients */

/* The loss of the gradient part as a double (the API's is a float). */
static double loss64(nbl_train_session *s, const batch *b) {
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  ck_assert_msg(nbl_train_step(s, 2, b->t, NULL) == NBL_OK, "%s", nbl_last_error());
  return nbl_rt_get_f64(nbl_engine_output(nbl_train_engine(s, 0), 0), 0);
}

START_TEST(test_gradients_finite_differences) {
  /* float64 model with BatchNormalization in training mode in front: every
   * element of every parameter's gradient against central differences */
  mlp_cfg c = cfg_default();
  c.dt = NBL_DT_DOUBLE;
  c.bn = 1;
  c.c = 2;
  c.h = 3;
  c.w = 2;
  for (int ref = 0; ref < 2; ref++) {
    nbl_train_options o = {.threads = 2, .reference = ref};
    nbl_train_session *s = session(&c, &o);
    batch b = make_batch(&c, 5, 11);
    double l0 = loss64(s, &b);
    ck_assert(isfinite(l0) && l0 > 0);
    ck_assert_int_eq(s->cut->n_grads, 4);
    int checked = 0;
    for (int gi = 0; gi < s->cut->n_grads; gi++) {
      loss64(s, &b); /* the gradients at the unperturbed point */
      double *an = copy_f64(&s->acc[gi]);
      nbl_train_slot *sl = &s->slots[slot_of(s, s->cut->grad_param[gi])];
      double *p = sl->t.data;
      for (int64_t k = 0; k < sl->t.numel; k++) {
        const double eps = 1e-5;
        double keep = p[k];
        p[k] = keep + eps;
        double lp = loss64(s, &b);
        p[k] = keep - eps;
        double lm = loss64(s, &b);
        p[k] = keep;
        double fd = (lp - lm) / (2 * eps);
        double tol = 1e-6 * fmax(fabs(an[k]), fabs(fd)) + 1e-10;
        ck_assert_msg(fabs(fd - an[k]) <= tol, "%s_grad[%lld]: analytic %.12g, finite differences %.12g",
                      s->cut->grad_param[gi], (long long)k, an[k], fd);
        checked++;
      }
      free(an);
    }
    ck_assert_int_eq(checked, 7 * 12 + 7 + 4 * 7 + 4);
    free_batch(&b);
    nbl_train_session_free(s);
  }
}
END_TEST

/* ------------------------------------------------------------------ optimizer */

START_TEST(test_momentum_and_adam_updates) {
  /* the optimizer part applied to the accumulated gradients, written back in
   * place, against the ONNX formulas in double (alpha 0.9, beta 1 = PyTorch's
   * SGD momentum; Adam with its bias correction at step 1, 2, 3) */
  const char *opts[3] = {"momentum", "nesterov", "adam"};
  for (int oi = 0; oi < 3; oi++) {
    mlp_cfg c = cfg_default();
    c.opt = opts[oi];
    c.wd = 0.01f;
    nbl_train_session *s = session(&c, NULL);
    ck_assert_int_eq(nbl_train_set_lr(s, 0.05), NBL_OK);
    int np = 4;
    double *v[4] = {0}, *h[4] = {0};
    for (int step = 1; step <= 3; step++) {
      batch b = make_batch(&c, 6, 100 + (unsigned long long)step);
      ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
      ck_assert_msg(nbl_train_step(s, 2, b.t, NULL) == NBL_OK, "%s", nbl_last_error());
      double *x0[4], *g[4];
      for (int p = 0; p < np; p++) {
        nbl_train_slot *sl = &s->slots[slot_of(s, mlp_params[p])];
        x0[p] = copy_f64(&sl->t);
        g[p] = NULL;
        for (int gi = 0; gi < s->cut->n_grads; gi++)
          if (!strcmp(s->cut->grad_param[gi], mlp_params[p])) g[p] = copy_f64(&s->acc[gi]);
        ck_assert_ptr_nonnull(g[p]);
        if (!v[p]) {
          v[p] = calloc((size_t)sl->t.numel, sizeof(double));
          h[p] = calloc((size_t)sl->t.numel, sizeof(double));
        }
      }
      ck_assert_double_eq_tol(nbl_train_lr(s), 0.05, 1e-15);
      ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
      nbl_train_progress pg;
      nbl_train_get_progress(s, &pg);
      ck_assert_int_eq(pg.global_step, step);
      for (int p = 0; p < np; p++) {
        nbl_train_slot *sl = &s->slots[slot_of(s, mlp_params[p])];
        const float *got = sl->t.data;
        for (int64_t k = 0; k < sl->t.numel; k++) {
          double x = x0[p][k], gr = 0.01 * x + g[p][k], want;
          if (oi < 2) {
            v[p][k] = 0.9 * v[p][k] + gr;
            want = oi == 0 ? x - 0.05 * v[p][k] : x - 0.05 * (gr + 0.9 * v[p][k]);
          } else {
            v[p][k] = 0.9 * v[p][k] + 0.1 * gr;
            h[p][k] = 0.999 * h[p][k] + 0.001 * gr * gr;
            double lr = 0.05 * sqrt(1 - pow(0.999, step)) / (1 - pow(0.9, step));
            want = x - lr * v[p][k] / (sqrt(h[p][k]) + 1e-8);
          }
          ck_assert_msg(fabs(got[k] - want) <= 2e-6 * fmax(1, fabs(want)),
                        "%s step %d %s[%lld]: %.9g, expected %.9g", opts[oi], step, mlp_params[p],
                        (long long)k, got[k], want);
        }
        free(x0[p]);
        free(g[p]);
      }
      free_batch(&b);
    }
    for (int p = 0; p < np; p++) {
      free(v[p]);
      free(h[p]);
    }
    nbl_train_session_free(s);
  }
}
END_TEST

START_TEST(test_accumulation_and_clipping) {
  mlp_cfg c = cfg_default();
  c.opt = "sgd";
  batch a = make_batch(&c, 4, 1), b = make_batch(&c, 3, 2);
  /* the gradients of a and of b alone */
  nbl_train_session *s = session(&c, NULL);
  ck_assert_int_eq(nbl_train_step(s, 2, a.t, NULL), NBL_OK);
  double *ga[4], *gb[4];
  for (int i = 0; i < 4; i++) ga[i] = copy_f64(&s->acc[i]);
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  for (int i = 0; i < 4; i++) gb[i] = copy_f64(&s->acc[i]);
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  /* a then b without a reset: the sum (in float, as the session adds) */
  ck_assert_int_eq(nbl_train_step(s, 2, a.t, NULL), NBL_OK);
  ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  double sq = 0;
  for (int i = 0; i < 4; i++) {
    const float *acc = s->acc[i].data;
    for (int64_t k = 0; k < s->acc[i].numel; k++) {
      ck_assert_float_eq(acc[k], (float)ga[i][k] + (float)gb[i][k]);
      sq += (double)acc[k] * acc[k];
    }
  }
  /* the gradients through the API, changed in place before the optimizer step
   * (as an all-reduce would): a zeroed b2 gradient leaves b2 as it was (SGD, no decay) */
  ck_assert_int_eq(nbl_train_grad_count(s), 4);
  double *b2_before = copy_f64(&s->slots[slot_of(s, "b2")].t);
  for (int i = 0; i < 4; i++) {
    nbl_host_tensor v;
    ck_assert_int_eq(nbl_train_grad(s, i, &v), NBL_OK);
    ck_assert_ptr_eq(v.data, s->acc[i].data);
    ck_assert_uint_eq(v.nbytes, s->acc[i].nbytes);
    if (!strcmp(v.name, "b2")) memset(v.data, 0, v.nbytes);
  }
  ck_assert_int_eq(nbl_optimizer_step(s), NBL_OK);
  const nbl_rt_tensor *b2 = &s->slots[slot_of(s, "b2")].t;
  for (int64_t k = 0; k < b2->numel; k++) ck_assert_float_eq(((float *)b2->data)[k], (float)b2_before[k]);
  free(b2_before);
  ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  nbl_host_tensor none;
  ck_assert_int_eq(nbl_train_grad(s, 0, &none), NBL_ERR_INVALID_ARGUMENT);
  nbl_train_session_free(s);
  /* clipping: with lr 1 and no decay the step is the clipped gradient, whose
   * norm is max_grad_norm (PyTorch's coefficient max / (norm + 1e-6)) */
  nbl_train_options o = {.max_grad_norm = 0.01};
  s = session(&c, &o);
  ck_assert_int_eq(nbl_train_set_lr(s, 1.0), NBL_OK);
  double *x0[4];
  for (int i = 0; i < 4; i++) x0[i] = copy_f64(&s->slots[slot_of(s, mlp_params[i])].t);
  ck_assert_int_eq(nbl_optimizer_step(s), NBL_ERR_INVALID_ARGUMENT); /* no gradients yet */
  ck_assert_int_eq(nbl_train_step(s, 2, a.t, NULL), NBL_OK);
  ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
  ck_assert_double_eq_tol(nbl_train_last_grad_norm(s), sqrt(sq), 1e-9 * sqrt(sq));
  ck_assert(sqrt(sq) > 0.01);
  double dsq = 0;
  for (int i = 0; i < 4; i++) {
    const nbl_rt_tensor *t = &s->slots[slot_of(s, mlp_params[i])].t;
    for (int64_t k = 0; k < t->numel; k++) {
      double d = x0[i][k] - nbl_rt_get_f64(t, k);
      dsq += d * d;
    }
    free(x0[i]);
    free(ga[i]);
    free(gb[i]);
  }
  ck_assert_double_eq_tol(sqrt(dsq), 0.01, 1e-6);
  nbl_train_session_free(s);
  free_batch(&a);
  free_batch(&b);
}
END_TEST

/* ------------------------------------------------------------------ BatchNorm, eval, export */

START_TEST(test_running_stats_eval_and_export) {
  mlp_cfg c = cfg_default();
  c.bn = 1;
  c.c = 2;
  nbl_train_session *s = session(&c, NULL);
  batch b = make_batch(&c, 8, 5);
  ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  /* running = 0.9 * running + 0.1 * batch statistic (mean; unbiased variance as ONNX's reference) */
  const float *x = b.x, *rm = s->slots[slot_of(s, "bn_mean")].t.data, *rv = s->slots[slot_of(s, "bn_var")].t.data;
  int hw = c.h * c.w;
  for (int ch = 0; ch < 2; ch++) {
    double sum = 0, sq = 0;
    for (int n = 0; n < 8; n++)
      for (int k = 0; k < hw; k++) sum += x[(n * 2 + ch) * hw + k];
    double mean = sum / (8 * hw);
    for (int n = 0; n < 8; n++)
      for (int k = 0; k < hw; k++) sq += pow(x[(n * 2 + ch) * hw + k] - mean, 2);
    ck_assert_double_eq_tol(rm[ch], 0.1 * mean, 1e-6);
    double var_b = sq / (8 * hw); /* ONNX BatchNormalization: the biased batch variance */
    ck_assert_msg(fabs(rv[ch] - (0.9 + 0.1 * var_b)) < 1e-5, "running var %g vs %g", rv[ch],
                  0.9 + 0.1 * var_b);
  }
  ck_assert_int_eq(nbl_optimizer_step(s), NBL_OK);
  /* eval = the inference graph with the current parameters and running
   * statistics: the exported model run by an inference session agrees exactly */
  const nbl_host_tensor *out;
  ck_assert_msg(nbl_eval_step(s, 1, b.t, &out) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(out[0].dims[0], 8);
  ck_assert_int_eq(out[0].dims[1], c.classes);
  float *e1 = malloc(out[0].nbytes);
  memcpy(e1, out[0].data, out[0].nbytes);
  ck_assert_msg(nbl_train_export(s, tpath("export.onnx")) == NBL_OK, "%s", nbl_last_error());
  nbl_model *m;
  ck_assert_int_eq(nbl_model_load(tpath("export.onnx"), &m), NBL_OK);
  ck_assert_int_eq(m->n_training, 0);
  ck_assert_int_eq(nbl_graph_find(m->graph, "W1.momentum"), NBL_NONE);
  ck_assert_int_ne(nbl_graph_find(m->graph, "bn_mean"), NBL_NONE);
  ck_assert_int_eq(nbl_model_opset(m, "ai.onnx.preview.training"), 0);
  nbl_session *is;
  ck_assert_int_eq(nbl_session_create(m, NULL, &is), NBL_OK);
  const nbl_host_tensor *o2;
  ck_assert_int_eq(nbl_session_run(is, 1, b.t, &o2), NBL_OK);
  ck_assert_int_eq(memcmp(o2[0].data, e1, out[0].nbytes), 0);
  /* the eval engine follows parameter changes */
  ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  ck_assert_int_eq(nbl_optimizer_step(s), NBL_OK);
  ck_assert_int_eq(nbl_eval_step(s, 1, b.t, &out), NBL_OK);
  ck_assert_int_ne(memcmp(out[0].data, e1, out[0].nbytes), 0);
  /* wrong inputs are clear errors */
  ck_assert_int_eq(nbl_eval_step(s, 0, NULL, &out), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'input' was not given"));
  ck_assert_int_eq(nbl_train_step(s, 1, b.t, NULL), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'label' was not given"));
  nbl_host_tensor bad[2] = {b.t[0], b.t[1]};
  bad[1].name = "labels";
  ck_assert_int_eq(nbl_train_step(s, 2, bad, NULL), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'labels' is not an input"));
  nbl_session_free(is);
  nbl_model_free(m);
  free(e1);
  free_batch(&b);
  nbl_train_session_free(s);
}
END_TEST

/* ------------------------------------------------------------------ memory */

typedef struct sizes {
  size_t total;
} sizes;

static void add_size(void *u, const char *name, const nbl_rt_tensor *t) {
  ((sizes *)u)->total += t->nbytes;
}

START_TEST(test_memory_reuse_forward_backward) {
  mlp_cfg c = cfg_default();
  c.h = c.w = 16;
  c.hidden = 64;
  c.classes = 10;
  nbl_train_options o = {.threads = 1};
  nbl_train_session *s = session(&c, &o);
  batch b = make_batch(&c, 64, 9);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
    ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
  }
  nbl_engine_stats st;
  nbl_engine_get_stats(nbl_train_engine(s, 0), &st);
  /* every value the gradient part computes, kept */
  const nbl_graph *g = nbl_engine_graph(nbl_train_engine(s, 0));
  sizes sz = {0};
  nbl_engine_options eo = {.threads = 1, .on_value = add_size, .user = &sz};
  nbl_engine *all;
  ck_assert_int_eq(nbl_engine_create(g->model, g, &eo, &all), NBL_OK);
  for (int i = 0; i < g->n_inputs; i++) {
    const char *n = g->values[g->inputs[i]].name;
    int k = -1;
    for (int j = 0; j < s->n_slots; j++)
      if (!strcmp(s->slots[j].name, n)) k = j;
    if (k >= 0) {
      ck_assert_int_eq(nbl_engine_bind(all, n, &s->slots[k].t), NBL_OK);
    } else {
      const nbl_host_tensor *h = !strcmp(n, "input") ? &b.t[0] : &b.t[1];
      nbl_rt_tensor t = {.dtype = h->dtype, .rank = h->rank, .data = h->data, .nbytes = h->nbytes};
      memcpy(t.dims, h->dims, sizeof h->dims);
      ck_assert_int_eq(nbl_engine_bind(all, n, &t), NBL_OK);
    }
  }
  ck_assert_int_eq(nbl_engine_run(all), NBL_OK);
  size_t outs = 0;
  for (int i = 0; i < g->n_outputs; i++) outs += nbl_engine_output(all, i)->nbytes;
  size_t inter = sz.total - outs;
  fprintf(stderr, "gradient part: %zu bytes of intermediates, arena %zu bytes, %lld freed early per run\n",
          inter, st.arena_bytes, (long long)(st.frees_early / st.runs));
  ck_assert_int_eq(st.plans, 1);
  ck_assert_int_ge(st.arena_hits, 2 * 10);
  ck_assert_int_ge(st.frees_early / st.runs, 10);
  ck_assert_uint_gt(st.arena_bytes, 0);
  ck_assert_uint_lt(st.arena_bytes, inter * 3 / 4);
  nbl_engine_free(all);
  free_batch(&b);
  nbl_train_session_free(s);
}
END_TEST

/* The training profile: refused without profiling; with it, both parts'
 * step counts and op types (Gemm in the gradient part, Momentum in the
 * optimizer part) and the slowest nodes; a reset forgets the runs. */
START_TEST(test_profile) {
  mlp_cfg c = cfg_default();
  nbl_train_session *s = session(&c, NULL);
  FILE *f = tmpfile();
  ck_assert_int_eq(nbl_train_print_profile(s, f, 5), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "without profiling"));
  nbl_train_session_free(s);
  nbl_train_options o = {.threads = 2, .profile = 1};
  s = session(&c, &o);
  batch b = make_batch(&c, 8, 3);
  for (int i = 0; i < 3; i++) {
    ck_assert_int_eq(nbl_train_step(s, 2, b.t, NULL), NBL_OK);
    ck_assert_int_eq(nbl_optimizer_step(s), NBL_OK);
    ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
  }
  rewind(f);
  ck_assert_int_eq(nbl_train_print_profile(s, f, 3), NBL_OK);
  long n = ftell(f);
  char *text = calloc(1, (size_t)n + 1);
  rewind(f);
  ck_assert_uint_eq(fread(text, 1, (size_t)n, f), (size_t)n);
  ck_assert_msg(strstr(text, "3 train step(s)") && strstr(text, "3 optimizer step(s)"), "%s", text);
  ck_assert_msg(strstr(text, "Gemm ") && strstr(text, "gradient"), "%s", text);
  ck_assert_msg(strstr(text, "Momentum ") && strstr(text, "optimizer"), "%s", text);
  ck_assert_msg(strstr(text, "slowest nodes:"), "%s", text);
  free(text);
  nbl_train_reset_profile(s);
  rewind(f);
  ck_assert_int_eq(nbl_train_print_profile(s, f, 0), NBL_OK);
  n = ftell(f);
  text = calloc(1, (size_t)n + 1);
  rewind(f);
  ck_assert_uint_eq(fread(text, 1, (size_t)n, f), (size_t)n);
  ck_assert_msg(strstr(text, "0 train step(s)") && !strstr(text, "slowest"), "%s", text);
  free(text);
  fclose(f);
  free_batch(&b);
  nbl_train_session_free(s);
}
END_TEST

/* ------------------------------------------------------------------ schedules */

START_TEST(test_schedules) {
  nbl_schedule s;
  ck_assert_int_eq(nbl_schedule_parse("constant", 0.1, 0, &s), NBL_OK);
  ck_assert_double_eq(nbl_schedule_lr(&s, 0), 0.1);
  ck_assert_double_eq(nbl_schedule_lr(&s, 1000), 0.1);
  ck_assert_int_eq(nbl_schedule_parse("step:3:0.5", 0.1, 0, &s), NBL_OK);
  ck_assert_double_eq(nbl_schedule_lr(&s, 2), 0.1);
  ck_assert_double_eq(nbl_schedule_lr(&s, 3), 0.05);
  ck_assert_double_eq(nbl_schedule_lr(&s, 7), 0.025);
  ck_assert_int_eq(nbl_schedule_parse("cosine", 0.2, 100, &s), NBL_OK);
  ck_assert_double_eq(nbl_schedule_lr(&s, 0), 0.2);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 50), 0.1, 1e-15);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 25), 0.1 * (1 + cos(M_PI / 4)), 1e-15);
  ck_assert_double_eq(nbl_schedule_lr(&s, 100), 0);
  ck_assert_int_eq(nbl_schedule_parse("warmup:4,cosine:0.01", 0.2, 104, &s), NBL_OK);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 0), 0.05, 1e-15);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 3), 0.2, 1e-15);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 4), 0.2, 1e-15);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 54), 0.105, 1e-15);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 500), 0.01, 1e-15);
  ck_assert_int_eq(nbl_schedule_parse("warmup:10", 1.0, 0, &s), NBL_OK);
  ck_assert_double_eq_tol(nbl_schedule_lr(&s, 4), 0.5, 1e-15);
  ck_assert_double_eq(nbl_schedule_lr(&s, 20), 1.0);
  const char *bad[] = {"cosin", "step:0:0.5", "step:3", "step:3:x", "warmup:", "warmup:0,cosine",
                       "warmup:3,step:2", "cosine:-1", "linear"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    ck_assert_msg(nbl_schedule_parse(bad[i], 0.1, 100, &s) == NBL_ERR_INVALID_ARGUMENT, "%s", bad[i]);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), bad[i]));
  }
  ck_assert_int_eq(nbl_schedule_parse("cosine", 0.1, 0, &s), NBL_ERR_INVALID_ARGUMENT);
  /* the session feeds the scheduled rate to the optimizer: SGD's step is lr * g */
  mlp_cfg c = cfg_default();
  c.opt = "sgd";
  nbl_train_session *ts = session(&c, NULL);
  ck_assert_int_eq(nbl_train_set_schedule(ts, "step:1:0.5", 0.4, 0), NBL_OK);
  batch b = make_batch(&c, 4, 3);
  for (int step = 0; step < 3; step++) {
    ck_assert_double_eq(nbl_train_lr(ts), 0.4 * pow(0.5, step));
    ck_assert_int_eq(nbl_train_reset_grad(ts), NBL_OK);
    ck_assert_int_eq(nbl_train_step(ts, 2, b.t, NULL), NBL_OK);
    const nbl_rt_tensor *w = &ts->slots[slot_of(ts, "b2")].t;
    int gi = 0;
    while (strcmp(ts->cut->grad_param[gi], "b2")) gi++;
    double *x0 = copy_f64(w), *g = copy_f64(&ts->acc[gi]);
    ck_assert_int_eq(nbl_optimizer_step(ts), NBL_OK);
    for (int64_t k = 0; k < w->numel; k++)
      ck_assert_float_eq(((float *)w->data)[k], (float)x0[k] - (float)(0.4 * pow(0.5, step)) * (float)g[k]);
    free(x0);
    free(g);
  }
  free_batch(&b);
  nbl_train_session_free(ts);
}
END_TEST

/* ------------------------------------------------------------------ checkpoints */

static void train_steps(nbl_train_session *s, const mlp_cfg *c, int from, int to) {
  for (int i = from; i < to; i++) {
    batch b = make_batch(c, 5, 1000 + (unsigned long long)i);
    ck_assert_int_eq(nbl_train_reset_grad(s), NBL_OK);
    ck_assert_msg(nbl_train_step(s, 2, b.t, NULL) == NBL_OK, "%s", nbl_last_error());
    ck_assert_msg(nbl_optimizer_step(s) == NBL_OK, "%s", nbl_last_error());
    free_batch(&b);
  }
}

static int same_params(nbl_train_session *a, nbl_train_session *b) {
  if (a->n_slots != b->n_slots) return 0;
  for (int i = 0; i < a->n_slots; i++)
    if (a->slots[i].t.nbytes != b->slots[i].t.nbytes ||
        memcmp(a->slots[i].t.data, b->slots[i].t.data, a->slots[i].t.nbytes))
      return 0;
  return 1;
}

static void write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  ck_assert_ptr_nonnull(f);
  ck_assert_uint_eq(fwrite(data, 1, n, f), n);
  fclose(f);
}

static void *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  ck_assert_ptr_nonnull(f);
  fseek(f, 0, SEEK_END);
  *n = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  void *p = malloc(*n + 1);
  ck_assert_uint_eq(fread(p, 1, *n, f), *n);
  fclose(f);
  return p;
}

START_TEST(test_checkpoint_resume_exact) {
  mlp_cfg c = cfg_default();
  c.opt = "adam";
  c.bn = 1;
  nbl_train_session *a = session(&c, NULL);
  ck_assert_int_eq(nbl_train_set_schedule(a, "warmup:2,cosine", 0.01, 6), NBL_OK);
  train_steps(a, &c, 0, 3);
  nbl_train_progress p = {.epoch = 1, .step_in_epoch = 7, .global_step = 3, .data_seed = 42,
                          .rng_seed = 5, .rng_counter = 3};
  nbl_train_set_progress(a, &p);
  ck_assert_int_eq(nbl_train_set_meta(a, "batch", "64"), NBL_OK);
  ck_assert_int_eq(nbl_train_set_meta(a, "bad key", "x"), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_msg(nbl_train_save_checkpoint(a, tpath("a.ckpt")) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_ne(access(tpath(".a.ckpt.nbl-tmp"), F_OK), 0); /* no temporary left */
  train_steps(a, &c, 3, 6);
  /* the checkpoint is a training model: a session made from it resumes (state
   * kept, progress and schedule restored) */
  nbl_model *ck;
  ck_assert_int_eq(nbl_model_load(tpath("a.ckpt"), &ck), NBL_OK);
  ck_assert_int_eq(ck->n_training, 1);
  nbl_train_session *b;
  ck_assert_msg(nbl_train_session_create(ck, NULL, &b) == NBL_OK, "%s", nbl_last_error());
  nbl_model_free(ck);
  nbl_train_progress q;
  nbl_train_get_progress(b, &q);
  ck_assert_int_eq(q.epoch, 1);
  ck_assert_int_eq(q.step_in_epoch, 7);
  ck_assert_int_eq(q.global_step, 3);
  ck_assert_uint_eq(q.data_seed, 42);
  ck_assert_uint_eq(q.rng_counter, 3);
  ck_assert_str_eq(nbl_train_get_meta(b, "batch"), "64");
  ck_assert_str_eq(b->sched.spec, "warmup:2,cosine");
  train_steps(b, &c, 3, 6);
  ck_assert(same_params(a, b));
  /* loading into a fresh session of the original model: the same */
  nbl_train_session *d = session(&c, NULL);
  train_steps(d, &c, 0, 1); /* whatever it held is replaced */
  ck_assert_msg(nbl_train_load_checkpoint(d, tpath("a.ckpt")) == NBL_OK, "%s", nbl_last_error());
  ck_assert_double_eq(nbl_train_lr(d), nbl_schedule_lr(&a->sched, 3));
  train_steps(d, &c, 3, 6);
  ck_assert(same_params(a, d));
  nbl_train_session_free(b);
  nbl_train_session_free(d);
  nbl_train_session_free(a);
}
END_TEST

/* Random ops of a training graph draw from the session's stream, keyed per
 * step from its rng_seed and rng_counter: two sessions with one seed train
 * the same parameters, another seed other ones, and a session resumed from a
 * checkpoint draws what the uninterrupted one drew. */
START_TEST(test_random_ops_follow_the_seed) {
  mlp_cfg c = cfg_default();
  c.noise = 1;
  nbl_train_session *s[4];
  for (int i = 0; i < 4; i++) {
    s[i] = session(&c, NULL);
    nbl_train_progress p = {.rng_seed = i == 2 ? 12 : 11};
    nbl_train_set_progress(s[i], &p);
  }
  train_steps(s[0], &c, 0, 4);
  train_steps(s[1], &c, 0, 4);
  train_steps(s[2], &c, 0, 4);
  ck_assert(same_params(s[0], s[1]));
  ck_assert(!same_params(s[0], s[2]));
  /* the noise is there: without it, other parameters */
  mlp_cfg q = c;
  q.noise = 0;
  nbl_train_session *plain = session(&q, NULL);
  train_steps(plain, &q, 0, 4);
  ck_assert(!same_params(s[0], plain));
  nbl_train_session_free(plain);
  /* resumed after 2 steps from a checkpoint: the same 4-step result */
  train_steps(s[3], &c, 0, 2);
  ck_assert_msg(nbl_train_save_checkpoint(s[3], tpath("noise.ckpt")) == NBL_OK, "%s", nbl_last_error());
  nbl_model *ck;
  ck_assert_int_eq(nbl_model_load(tpath("noise.ckpt"), &ck), NBL_OK);
  nbl_train_session *r;
  ck_assert_msg(nbl_train_session_create(ck, NULL, &r) == NBL_OK, "%s", nbl_last_error());
  nbl_model_free(ck);
  train_steps(r, &c, 2, 4);
  ck_assert(same_params(s[0], r));
  nbl_train_session_free(r);
  for (int i = 0; i < 4; i++) nbl_train_session_free(s[i]);
}
END_TEST

START_TEST(test_checkpoint_bad_files) {
  mlp_cfg c = cfg_default();
  nbl_train_session *s = session(&c, NULL);
  train_steps(s, &c, 0, 2);
  ck_assert_int_eq(nbl_train_save_checkpoint(s, tpath("good.ckpt")), NBL_OK);
  size_t n;
  unsigned char *good = read_file(tpath("good.ckpt"), &n);
  nbl_train_session *t = session(&c, NULL);
  unsigned char *before = malloc(t->slots[0].t.nbytes);
  memcpy(before, t->slots[0].t.data, t->slots[0].t.nbytes);
  /* truncated anywhere: an error, and the session keeps its parameters */
  for (size_t cut = 1; cut < n; cut += n / 37 + 1) {
    write_file(tpath("trunc.ckpt"), good, cut);
    nbl_status st = nbl_train_load_checkpoint(t, tpath("trunc.ckpt"));
    ck_assert_msg(st != NBL_OK, "truncated at %zu of %zu loaded", cut, n);
    ck_assert_ptr_nonnull(strstr(nbl_last_error(), "trunc.ckpt"));
    ck_assert_int_eq(memcmp(before, t->slots[0].t.data, t->slots[0].t.nbytes), 0);
  }
  /* foreign: random bytes, an inference model, a checkpoint of another model, missing */
  write_file(tpath("noise.ckpt"), "\x12\x34garbage\xff\xff\xff", 12);
  ck_assert_int_ne(nbl_train_load_checkpoint(t, tpath("noise.ckpt")), NBL_OK);
  ck_assert_int_eq(nbl_train_export(s, tpath("infer.onnx")), NBL_OK);
  ck_assert_int_eq(nbl_train_load_checkpoint(t, tpath("infer.onnx")), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "not a nibble training checkpoint"));
  mlp_cfg other = c;
  other.hidden = 9;
  nbl_train_session *o = session(&other, NULL);
  ck_assert_int_eq(nbl_train_save_checkpoint(o, tpath("other.ckpt")), NBL_OK);
  ck_assert_int_eq(nbl_train_load_checkpoint(t, tpath("other.ckpt")), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "'W1' differs"));
  ck_assert_int_eq(nbl_train_load_checkpoint(t, tpath("missing.ckpt")), NBL_ERR_IO);
  ck_assert_int_eq(memcmp(before, t->slots[0].t.data, t->slots[0].t.nbytes), 0);
  /* a failing save leaves the good file alone: a folder in the way of the temporary file */
  ck_assert_int_eq(mkdir(tpath(".good.ckpt.nbl-tmp"), 0755), 0);
  ck_assert_int_eq(nbl_train_save_checkpoint(t, tpath("good.ckpt")), NBL_ERR_IO);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "good.ckpt"));
  rmdir(tpath(".good.ckpt.nbl-tmp"));
  size_t n2;
  unsigned char *after = read_file(tpath("good.ckpt"), &n2);
  ck_assert_uint_eq(n, n2);
  ck_assert_int_eq(memcmp(good, after, n), 0);
  ck_assert_int_eq(nbl_train_save_checkpoint(t, "/nonexistent-dir/x.ckpt"), NBL_ERR_IO);
  free(after);
  free(good);
  free(before);
  nbl_train_session_free(o);
  nbl_train_session_free(t);
  nbl_train_session_free(s);
}
END_TEST

/* ------------------------------------------------------------------ contract checks */

START_TEST(test_contract_errors) {
  mlp_cfg c = cfg_default();
  c.opt = "sgd";
  nbl_model *m = mlp_train_model(&c);
  nbl_train_session *s = NULL;
  /* an optimizer node that reads a data input */
  nbl_graph *al = m->training[0].algorithm;
  for (int i = 0; i < al->n_nodes; i++)
    if (!strcmp(al->nodes[i].name, "sgd/W1_mul_lr"))
      nbl_node_set_input(al, i, 0, nbl_graph_find(al, "input"));
  ck_assert_int_eq(nbl_train_session_create(m, NULL, &s), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "optimizer node 'sgd/W1_mul_lr' (Mul) reads the data input 'input'"));
  nbl_model_free(m);
  /* not a training model */
  m = mlp_train_model(&c);
  m->n_training = 0;
  ck_assert_int_eq(nbl_train_session_create(m, NULL, &s), NBL_ERR_INVALID_MODEL);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "not a training model"));
  nbl_model_free(m);
}
END_TEST

/* ------------------------------------------------------------------ data */

START_TEST(test_data_order) {
  enum { N = 1000 };
  int64_t *a = malloc(sizeof(int64_t) * N), *b = malloc(sizeof(int64_t) * N);
  unsigned char *seen = calloc(N, 1);
  nbl_data_order(3, 0, N, a);
  for (int i = 0; i < N; i++) {
    ck_assert(a[i] >= 0 && a[i] < N && !seen[a[i]]);
    seen[a[i]] = 1;
  }
  nbl_data_order(3, 0, N, b);
  ck_assert_int_eq(memcmp(a, b, sizeof(int64_t) * N), 0);
  int same = 0, fixed = 0;
  nbl_data_order(3, 1, N, b);
  for (int i = 0; i < N; i++) same += a[i] == b[i];
  ck_assert_int_lt(same, 10);
  nbl_data_order(4, 0, N, b);
  for (int i = 0; i < N; i++) same += a[i] == b[i], fixed += a[i] == i;
  ck_assert_int_lt(same, 20);
  ck_assert_int_lt(fixed, 10);
  free(a);
  free(b);
  free(seen);
}
END_TEST

static void write_npy(const char *name, nbl_dtype dt, int rank, const int64_t *dims, const void *data) {
  nbl_host_tensor t = {.dtype = dt, .rank = rank, .data = (void *)data};
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= (t.dims[i] = dims[i]);
  t.nbytes = nbl_dtype_nbytes(dt, n);
  ck_assert_int_eq(nbl_tensor_write(tpath(name), &t), NBL_OK);
}

START_TEST(test_datasets) {
  /* npy folder: x [6,1,2,3] float, y int64 */
  char dir[512];
  snprintf(dir, sizeof dir, "npy:%s", tmpdir);
  float x[36];
  for (int i = 0; i < 36; i++) x[i] = (float)i;
  int64_t y[6] = {0, 1, 2, 3, 0, 1};
  write_npy("x.npy", NBL_DT_FLOAT, 4, (int64_t[]){6, 1, 2, 3}, x);
  write_npy("y.npy", NBL_DT_INT64, 1, (int64_t[]){6}, y);
  nbl_dataset *d;
  ck_assert_msg(nbl_dataset_open(dir, 0, &d) == NBL_OK, "%s", nbl_last_error());
  ck_assert_int_eq(nbl_dataset_size(d), 6);
  nbl_host_tensor xi = {.name = "input", .dtype = NBL_DT_FLOAT, .rank = 2, .dims = {-1, 6}};
  nbl_host_tensor yi = {.name = "label", .dtype = NBL_DT_INT64, .rank = 1, .dims = {-1}};
  ck_assert_int_eq(nbl_dataset_check(d, &xi, &yi, 3), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "y.npy: label 3 of sample 3 is outside [0, 3)"));
  ck_assert_msg(nbl_dataset_check(d, &xi, &yi, 4) == NBL_OK, "%s", nbl_last_error());
  float xb[12];
  int64_t yb[2];
  nbl_host_tensor bx = {.data = xb, .nbytes = sizeof xb}, by = {.data = yb, .nbytes = sizeof yb};
  ck_assert_int_eq(nbl_dataset_batch(d, (int64_t[]){4, 1}, 2, &bx, &by), NBL_OK);
  ck_assert_int_eq(bx.rank, 2); /* reshaped to the model's [N, 6] */
  ck_assert_int_eq(bx.dims[1], 6);
  ck_assert_float_eq(xb[0], 24);
  ck_assert_float_eq(xb[6], 6);
  ck_assert_int_eq(yb[0], 0);
  ck_assert_int_eq(yb[1], 1);
  xi.dims[1] = 7; /* wrong image size */
  ck_assert_int_eq(nbl_dataset_check(d, &xi, &yi, 4), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "samples are 6 (6 values), the model's input 'input' takes Nx7"));
  nbl_dataset_free(d);
  /* labels of the wrong type */
  float yf[6] = {0};
  write_npy("y.npy", NBL_DT_FLOAT, 1, (int64_t[]){6}, yf);
  ck_assert_int_eq(nbl_dataset_open(dir, 0, &d), NBL_OK);
  xi.dims[1] = 6;
  ck_assert_int_eq(nbl_dataset_check(d, &xi, &yi, 4), NBL_ERR_INVALID_ARGUMENT);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "y.npy: labels are float, the model's label 'label' takes int64"));
  nbl_dataset_free(d);
  ck_assert_int_eq(nbl_dataset_open(dir, 1, &d), NBL_ERR_IO); /* no x_test.npy */
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "x_test.npy"));
  ck_assert_int_eq(nbl_dataset_open("fashion-mnist:/nonexistent", 0, &d), NBL_ERR_IO);
  ck_assert_ptr_nonnull(strstr(nbl_last_error(), "dataset-fashion-mnist"));
  ck_assert_int_eq(nbl_dataset_open("mnist", 0, &d), NBL_ERR_INVALID_ARGUMENT);
  /* the real one, when the Debian package is installed */
  if (access("/usr/share/datasets/fashion-mnist", F_OK) == 0) {
    ck_assert_msg(nbl_dataset_open("fashion-mnist", 1, &d) == NBL_OK, "%s", nbl_last_error());
    ck_assert_int_eq(nbl_dataset_size(d), 10000);
    nbl_host_tensor li = {.name = "input", .dtype = NBL_DT_FLOAT, .rank = 4, .dims = {-1, 1, 28, 28}};
    ck_assert_int_eq(nbl_dataset_check(d, &li, &yi, 10), NBL_OK);
    float *img = malloc(784 * 4);
    nbl_host_tensor ix = {.data = img, .nbytes = 784 * 4};
    ck_assert_int_eq(nbl_dataset_batch(d, (int64_t[]){0}, 1, &ix, &by), NBL_OK);
    ck_assert_int_eq(yb[0], 9); /* the first test image is an ankle boot */
    double sum = 0;
    for (int i = 0; i < 784; i++) sum += (img[i] * 0.3530 + 0.2860) * 255;
    ck_assert_double_eq_tol(sum, 33456, 0.05); /* its pixel sum (NumPy on the IDX file) */
    li.dims[2] = 32;
    ck_assert_int_eq(nbl_dataset_check(d, &li, &yi, 10), NBL_ERR_INVALID_ARGUMENT);
    free(img);
    nbl_dataset_free(d);
  }
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("train");
  TCase *tc = tcase_create("core");
  tcase_set_timeout(tc, 300);
  tcase_add_test(tc, test_gradients_finite_differences);
  tcase_add_test(tc, test_momentum_and_adam_updates);
  tcase_add_test(tc, test_accumulation_and_clipping);
  tcase_add_test(tc, test_running_stats_eval_and_export);
  tcase_add_test(tc, test_memory_reuse_forward_backward);
  tcase_add_test(tc, test_profile);
  tcase_add_test(tc, test_schedules);
  tcase_add_test(tc, test_checkpoint_resume_exact);
  tcase_add_test(tc, test_random_ops_follow_the_seed);
  tcase_add_test(tc, test_checkpoint_bad_files);
  tcase_add_test(tc, test_contract_errors);
  tcase_add_test(tc, test_data_order);
  tcase_add_test(tc, test_datasets);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/nbl_test_train_XXXXXX");
  if (!mkdtemp(tmpdir)) return 1;
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  char cmd[512];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) failed++;
  return failed ? 1 : 0;
}
