/*
 * mlp_train.h - test fixture: a training model of a 2-layer MLP built by hand
 * with the IR API, following the training-model contract (README "Training")
 * exactly, until the build-training pass writes such models.
 *
 * Inference graph (main graph, opset 14):
 *   input [N,C,H,W] -> [BatchNormalization] -> Flatten -> Gemm(W1, b1) -> Relu
 *   -> Gemm(W2, b2) -> logits [N,K]
 * Algorithm graph: the forward copy (BatchNormalization in training mode,
 * its scale and bias frozen), SoftmaxCrossEntropyLoss (mean), the backward in
 * standard ops (softmax minus one-hot over N; Gemm with transA for the weight
 * gradients, ReduceSum for the biases, Greater/Where for the Relu), and the
 * optimizer: ai.onnx.preview.training Momentum or Adam over all four
 * parameters, or plain SGD as Mul/Sub. The initialization graph gives zeros
 * for the optimizer state. Gradients are named W1_grad, b1_grad, ...
 */
#ifndef NBL_TEST_MLP_TRAIN_H
#define NBL_TEST_MLP_TRAIN_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "tests/test_data.h"

typedef struct mlp_cfg {
  nbl_dtype dt;        /* NBL_DT_FLOAT or NBL_DT_DOUBLE */
  int c, h, w;         /* input [N,c,h,w] */
  int hidden, classes;
  const char *opt;     /* "sgd", "momentum", "nesterov", "adam" */
  float momentum;      /* Momentum alpha (beta = 1: PyTorch's SGD momentum) */
  float wd;            /* weight decay: the optimizer's norm_coefficient (sgd: Mul/Add) */
  int bn;              /* BatchNormalization on the input (training mode in the algorithm) */
  int noise;           /* the algorithm adds RandomNormalLike(x, scale 0.1) to x before Flatten */
  unsigned long long seed;
} mlp_cfg;

static unsigned long long mlp_rng(unsigned long long *s) { /* splitmix64 */
  uint64_t v = *s, z = td_splitmix64(&v);
  *s = v;
  return z;
}

/* uniform in [-a, a) */
static double mlp_uniform(unsigned long long *s, double a) {
  return ((double)(mlp_rng(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0) * a;
}

static nbl_id mlp_val(nbl_graph *g, const char *name) {
  nbl_id v = nbl_graph_find(g, name);
  if (v == NBL_NONE) v = nbl_graph_add_value(g, name);
  return v;
}

/* A value of the algorithm graph read from the main graph (an outer value). */
static nbl_id mlp_outer(nbl_graph *g, const char *name) {
  nbl_id v = nbl_graph_find(g, name);
  if (v != NBL_NONE) return v;
  v = nbl_graph_add_value(g, name);
  g->values[v].flags |= NBL_VAL_OUTER;
  return v;
}

static nbl_id mlp_init(nbl_graph *g, const char *name, nbl_dtype dt, int rank, const int64_t *dims,
                       const double *vals) {
  int64_t n = 1;
  for (int i = 0; i < rank; i++) n *= dims[i];
  size_t es = dt == NBL_DT_DOUBLE || dt == NBL_DT_INT64 ? 8 : 4;
  unsigned char *buf = calloc((size_t)(n ? n : 1), es);
  for (int64_t i = 0; vals && i < n; i++) {
    if (dt == NBL_DT_DOUBLE) ((double *)buf)[i] = vals[i];
    else if (dt == NBL_DT_INT64) ((int64_t *)buf)[i] = (int64_t)vals[i];
    else ((float *)buf)[i] = (float)vals[i];
  }
  nbl_id v = mlp_val(g, name);
  nbl_tensor *t = nbl_tensor_new(g->model->arena, name, dt, rank, dims, buf);
  free(buf);
  nbl_graph_set_initializer(g, v, t);
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, dt, rank, dims);
  return v;
}

static nbl_id mlp_node(nbl_graph *g, const char *op, const char *dom, const char *name, int n_in,
                       const char *const *in, int n_out, const char *const *out) {
  nbl_id iv[32], ov[32];
  for (int i = 0; i < n_in; i++) iv[i] = in[i] && *in[i] ? mlp_val(g, in[i]) : NBL_NONE;
  for (int i = 0; i < n_out; i++) ov[i] = out[i] && *out[i] ? mlp_val(g, out[i]) : NBL_NONE;
  return nbl_graph_add_node(g, op, dom, name, n_in, iv, n_out, ov);
}

/* NULL-terminated name lists: MLP_N(g, "Add", "add", L("a", "b"), L("y")) */
#define L(...) ((const char *[]){__VA_ARGS__, NULL})

static int mlp_count(const char *const *l) {
  int n = 0;
  while (l[n]) n++;
  return n;
}

#define MLP_N(g, op, name, ins, outs) mlp_node(g, op, "", name, mlp_count(ins), ins, mlp_count(outs), outs)

static const char *const mlp_params[4] = {"W1", "b1", "W2", "b2"};

static nbl_model *mlp_train_model(const mlp_cfg *c) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 14);
  nbl_model_set_opset(m, "ai.onnx.preview.training", 1);
  nbl_graph *g = m->graph;
  nbl_arena *a = m->arena;
  unsigned long long seed = c->seed;
  int64_t D = (int64_t)c->c * c->h * c->w, H = c->hidden, K = c->classes;
  nbl_dtype dt = c->dt;
  /* ---- inference graph */
  nbl_id x = mlp_val(g, "input");
  int64_t xd[4] = {-1, c->c, c->h, c->w};
  nbl_type_set_tensor(a, &g->values[x].type, dt, 4, xd);
  g->values[x].type.dims[0].param = nbl_arena_strdup(a, "N");
  nbl_graph_add_input(g, x);
  double *buf = malloc(sizeof(double) * (size_t)(H * D + K * H + 64));
  int64_t dW1[2] = {H, D}, db1[1] = {H}, dW2[2] = {K, H}, db2[1] = {K}, dC[1] = {c->c};
  for (int64_t i = 0; i < H * D; i++) buf[i] = mlp_uniform(&seed, 1.0 / sqrt((double)D));
  mlp_init(g, "W1", dt, 2, dW1, buf);
  for (int64_t i = 0; i < H; i++) buf[i] = mlp_uniform(&seed, 1.0 / sqrt((double)D));
  mlp_init(g, "b1", dt, 1, db1, buf);
  for (int64_t i = 0; i < K * H; i++) buf[i] = mlp_uniform(&seed, 1.0 / sqrt((double)H));
  mlp_init(g, "W2", dt, 2, dW2, buf);
  for (int64_t i = 0; i < K; i++) buf[i] = mlp_uniform(&seed, 1.0 / sqrt((double)H));
  mlp_init(g, "b2", dt, 1, db2, buf);
  const char *xin = "input";
  if (c->bn) {
    for (int i = 0; i < c->c; i++) buf[i] = 1.0 + 0.5 * i;
    mlp_init(g, "bn_scale", dt, 1, dC, buf);
    for (int i = 0; i < c->c; i++) buf[i] = 0.1 * i;
    mlp_init(g, "bn_bias", dt, 1, dC, buf);
    mlp_init(g, "bn_mean", dt, 1, dC, NULL);
    for (int i = 0; i < c->c; i++) buf[i] = 1.0;
    mlp_init(g, "bn_var", dt, 1, dC, buf);
    MLP_N(g, "BatchNormalization", "bn", L("input", "bn_scale", "bn_bias", "bn_mean", "bn_var"), L("xb"));
    xin = "xb";
  }
  nbl_id n = MLP_N(g, "Flatten", "flatten", L(xin), L("flat"));
  nbl_node_set_attr_int(g, n, "axis", 1);
  n = MLP_N(g, "Gemm", "fc1", L("flat", "W1", "b1"), L("h1"));
  nbl_node_set_attr_int(g, n, "transB", 1);
  MLP_N(g, "Relu", "relu", L("h1"), L("a1"));
  n = MLP_N(g, "Gemm", "fc2", L("a1", "W2", "b2"), L("logits"));
  nbl_node_set_attr_int(g, n, "transB", 1);
  nbl_graph_add_output(g, mlp_val(g, "logits"));
  /* optimizer state (main-graph initializers, zeros) */
  const char *opt = c->opt;
  int mom = !strcmp(opt, "momentum") || !strcmp(opt, "nesterov"), adam = !strcmp(opt, "adam");
  const char *suffix[2] = {mom ? ".momentum" : ".adam_m", ".adam_v"};
  int n_state = mom ? 1 : adam ? 2 : 0;
  char name[64];
  for (int s = 0; s < n_state; s++)
    for (int p = 0; p < 4; p++) {
      const nbl_value *pv = &g->values[nbl_graph_find(g, mlp_params[p])];
      snprintf(name, sizeof name, "%s%s", mlp_params[p], suffix[s]);
      mlp_init(g, name, dt, pv->init->rank, pv->init->dims, NULL);
    }
  /* ---- training info */
  m->training = nbl_arena_alloc(a, sizeof(nbl_training_info));
  m->n_training = 1;
  nbl_training_info *ti = m->training;
  nbl_graph *al = nbl_graph_new(m, g, "training_algorithm");
  ti->algorithm = al;
  nbl_id v = mlp_val(al, "input");
  nbl_type_set_tensor(a, &al->values[v].type, dt, 4, xd);
  al->values[v].type.dims[0].param = nbl_arena_strdup(a, "N");
  nbl_graph_add_input(al, v);
  v = mlp_val(al, "label");
  int64_t ld[1] = {-1};
  nbl_type_set_tensor(a, &al->values[v].type, NBL_DT_INT64, 1, ld);
  al->values[v].type.dims[0].param = nbl_arena_strdup(a, "N");
  nbl_graph_add_input(al, v);
  v = mlp_val(al, "lr");
  nbl_type_set_tensor(a, &al->values[v].type, NBL_DT_FLOAT, 0, NULL);
  nbl_graph_add_input(al, v);
  v = mlp_val(al, "step");
  nbl_type_set_tensor(a, &al->values[v].type, NBL_DT_INT64, 0, NULL);
  nbl_graph_add_input(al, v);
  for (int p = 0; p < 4; p++) mlp_outer(al, mlp_params[p]);
  /* local constants */
  double zero = 0, one_hot[2] = {0, 1}, depth = (double)K, axes0 = 0;
  mlp_init(al, "t/zero", dt, 0, NULL, &zero);
  mlp_init(al, "t/onehot_values", dt, 1, (int64_t[]){2}, one_hot);
  mlp_init(al, "t/depth", NBL_DT_INT64, 0, NULL, &depth);
  mlp_init(al, "t/idx0", NBL_DT_INT64, 0, NULL, &axes0);
  mlp_init(al, "t/axes0", NBL_DT_INT64, 1, (int64_t[]){1}, &axes0);
  xin = "input";
  if (c->bn) {
    const char *bnp[4] = {"bn_scale", "bn_bias", "bn_mean", "bn_var"};
    for (int i = 0; i < 4; i++) mlp_outer(al, bnp[i]);
    n = MLP_N(al, "BatchNormalization", "t/bn", L("input", "bn_scale", "bn_bias", "bn_mean", "bn_var"),
              L("t/xb", "t/bn_mean_new", "t/bn_var_new"));
    nbl_node_set_attr_int(al, n, "training_mode", 1);
    xin = "t/xb";
  }
  if (c->noise) { /* input noise, a random op of a training graph */
    n = MLP_N(al, "RandomNormalLike", "t/noise", L(xin), L("t/noise"));
    nbl_node_set_attr_float(al, n, "scale", 0.1f);
    MLP_N(al, "Add", "t/noisy", L(xin, "t/noise"), L("t/xn"));
    xin = "t/xn";
  }
  n = MLP_N(al, "Flatten", "t/flatten", L(xin), L("t/flat"));
  nbl_node_set_attr_int(al, n, "axis", 1);
  n = MLP_N(al, "Gemm", "t/fc1", L("t/flat", "W1", "b1"), L("t/h1"));
  nbl_node_set_attr_int(al, n, "transB", 1);
  MLP_N(al, "Relu", "t/relu", L("t/h1"), L("t/a1"));
  n = MLP_N(al, "Gemm", "t/fc2", L("t/a1", "W2", "b2"), L("t/logits"));
  nbl_node_set_attr_int(al, n, "transB", 1);
  n = MLP_N(al, "SoftmaxCrossEntropyLoss", "t/loss", L("t/logits", "label"), L("loss", "t/log_prob"));
  nbl_node_set_attr_string(al, n, "reduction", "mean");
  /* backward */
  MLP_N(al, "Exp", "g/prob", L("t/log_prob"), L("g/prob"));
  n = MLP_N(al, "OneHot", "g/onehot", L("label", "t/depth", "t/onehot_values"), L("g/onehot"));
  nbl_node_set_attr_int(al, n, "axis", -1);
  MLP_N(al, "Sub", "g/d0", L("g/prob", "g/onehot"), L("g/d0"));
  MLP_N(al, "Shape", "g/shape", L("t/logits"), L("g/shape"));
  MLP_N(al, "Gather", "g/n_i", L("g/shape", "t/idx0"), L("g/n_i"));
  n = MLP_N(al, "Cast", "g/n", L("g/n_i"), L("g/n"));
  nbl_node_set_attr_int(al, n, "to", dt);
  MLP_N(al, "Div", "g/dlogits", L("g/d0", "g/n"), L("g/dlogits"));
  n = MLP_N(al, "Gemm", "g/W2", L("g/dlogits", "t/a1"), L("W2_grad"));
  nbl_node_set_attr_int(al, n, "transA", 1);
  n = MLP_N(al, "ReduceSum", "g/b2", L("g/dlogits", "t/axes0"), L("b2_grad"));
  nbl_node_set_attr_int(al, n, "keepdims", 0);
  MLP_N(al, "Gemm", "g/da1", L("g/dlogits", "W2"), L("g/da1"));
  MLP_N(al, "Greater", "g/pos", L("t/h1", "t/zero"), L("g/pos"));
  MLP_N(al, "Where", "g/dh1", L("g/pos", "g/da1", "t/zero"), L("g/dh1"));
  n = MLP_N(al, "Gemm", "g/W1", L("g/dh1", "t/flat"), L("W1_grad"));
  nbl_node_set_attr_int(al, n, "transA", 1);
  n = MLP_N(al, "ReduceSum", "g/b1", L("g/dh1", "t/axes0"), L("b1_grad"));
  nbl_node_set_attr_int(al, n, "keepdims", 0);
  /* optimizer */
  ti->n_update_binding = 4 * (1 + n_state) + (c->bn ? 2 : 0);
  ti->update_binding = nbl_arena_alloc(a, sizeof(nbl_kv) * (size_t)ti->n_update_binding);
  int ub = 0;
  const char *in[2 + 16], *out[16];
  char *names = nbl_arena_alloc(a, 64 * 64);
  int ni = 0;
#define NAME(...) (snprintf(names + 64 * ni, 64, __VA_ARGS__), names + 64 * ni++)
  if (mom || adam) {
    int k = 0, o = 0;
    in[k++] = "lr";
    in[k++] = "step";
    for (int p = 0; p < 4; p++) in[k++] = mlp_params[p];
    for (int p = 0; p < 4; p++) in[k++] = NAME("%s_grad", mlp_params[p]);
    for (int s = 0; s < n_state; s++)
      for (int p = 0; p < 4; p++) {
        in[k++] = NAME("%s%s", mlp_params[p], suffix[s]);
        mlp_outer(al, in[k - 1]);
      }
    for (int p = 0; p < 4; p++) out[o++] = NAME("%s.new", mlp_params[p]);
    for (int s = 0; s < n_state; s++)
      for (int p = 0; p < 4; p++) out[o++] = NAME("%s%s.new", mlp_params[p], suffix[s]);
    n = mlp_node(al, mom ? "Momentum" : "Adam", "ai.onnx.preview.training", "opt", k, in, o, out);
    if (mom) {
      nbl_node_set_attr_float(al, n, "alpha", c->momentum);
      nbl_node_set_attr_float(al, n, "beta", 1.0f);
      nbl_node_set_attr_float(al, n, "norm_coefficient", c->wd);
      nbl_node_set_attr_string(al, n, "mode", strcmp(opt, "nesterov") ? "standard" : "nesterov");
    } else {
      nbl_node_set_attr_float(al, n, "alpha", 0.9f);
      nbl_node_set_attr_float(al, n, "beta", 0.999f);
      nbl_node_set_attr_float(al, n, "epsilon", 1e-8f);
      nbl_node_set_attr_float(al, n, "norm_coefficient", c->wd);
    }
    for (int i = 0; i < o; i++) {
      nbl_graph_add_output(al, mlp_val(al, out[i]));
      ti->update_binding[ub++] = (nbl_kv){nbl_arena_strdup(a, in[2 + (i < 4 ? i : 4 + i)]), (char *)out[i]};
    }
  } else { /* sgd: X.new = X - lr * (G + wd * X) */
    double wd = c->wd;
    mlp_init(al, "t/wd", dt, 0, NULL, &wd);
    if (dt != NBL_DT_FLOAT) {
      n = MLP_N(al, "Cast", "sgd/lr", L("lr"), L("sgd/lr"));
      nbl_node_set_attr_int(al, n, "to", dt);
    } else {
      MLP_N(al, "Identity", "sgd/lr", L("lr"), L("sgd/lr"));
    }
    for (int p = 0; p < 4; p++) {
      const char *P = mlp_params[p];
      const char *gname = NAME("%s_grad", P), *wx = NAME("sgd/%s_wx", P), *gg = NAME("sgd/%s_g", P);
      const char *d = NAME("sgd/%s_d", P), *nw = NAME("%s.new", P);
      mlp_node(al, "Mul", "", NAME("sgd/%s_mul_wd", P), 2, (const char *[]){"t/wd", P}, 1, &wx);
      mlp_node(al, "Add", "", NAME("sgd/%s_add", P), 2, (const char *[]){gname, wx}, 1, &gg);
      mlp_node(al, "Mul", "", NAME("sgd/%s_mul_lr", P), 2, (const char *[]){"sgd/lr", gg}, 1, &d);
      mlp_node(al, "Sub", "", NAME("sgd/%s_sub", P), 2, (const char *[]){P, d}, 1, &nw);
      nbl_graph_add_output(al, mlp_val(al, nw));
      ti->update_binding[ub++] = (nbl_kv){(char *)P, (char *)nw};
    }
  }
  if (c->bn) {
    nbl_graph_add_output(al, mlp_val(al, "t/bn_mean_new"));
    nbl_graph_add_output(al, mlp_val(al, "t/bn_var_new"));
    ti->update_binding[ub++] = (nbl_kv){"bn_mean", "t/bn_mean_new"};
    ti->update_binding[ub++] = (nbl_kv){"bn_var", "t/bn_var_new"};
  }
  /* loss first among the outputs */
  nbl_id lv = mlp_val(al, "loss");
  nbl_graph_add_output(al, lv);
  for (int i = al->n_outputs - 1; i > 0; i--) al->outputs[i] = al->outputs[i - 1];
  al->outputs[0] = lv;
  /* initialization: zeros for the state */
  if (n_state) {
    nbl_graph *ig = nbl_graph_new(m, g, "training_initialization");
    ti->initialization = ig;
    ti->n_init_binding = 4 * n_state;
    ti->init_binding = nbl_arena_alloc(a, sizeof(nbl_kv) * (size_t)ti->n_init_binding);
    for (int s = 0; s < n_state; s++)
      for (int p = 0; p < 4; p++) {
        const nbl_value *pv = &g->values[nbl_graph_find(g, mlp_params[p])];
        const char *key = NAME("%s%s", mlp_params[p], suffix[s]);
        const char *o = NAME("init/%s%s", mlp_params[p], suffix[s]);
        nbl_id cn = mlp_node(ig, "Constant", "", o, 0, NULL, 1, &o);
        nbl_node_set_attr_tensor(ig, cn, "value",
                                 nbl_tensor_new(a, o, dt, pv->init->rank, pv->init->dims, NULL));
        nbl_graph_add_output(ig, mlp_val(ig, o));
        ti->init_binding[s * 4 + p] = (nbl_kv){(char *)key, (char *)o};
      }
  }
#undef NAME
  /* types on every graph output (ONNX requires them) */
  int64_t lg[2] = {-1, K};
  nbl_id lo = nbl_graph_find(g, "logits");
  nbl_type_set_tensor(a, &g->values[lo].type, dt, 2, lg);
  g->values[lo].type.dims[0].param = nbl_arena_strdup(a, "N");
  for (int i = 0; i < al->n_outputs; i++) {
    nbl_value *ov = &al->values[al->outputs[i]];
    if (!strcmp(ov->name, "loss")) {
      nbl_type_set_tensor(a, &ov->type, dt, 0, NULL);
      continue;
    }
    for (int b2 = 0; b2 < ti->n_update_binding; b2++)
      if (!strcmp(ti->update_binding[b2].value, ov->name))
        nbl_type_copy(a, &ov->type, &g->values[nbl_graph_find(g, ti->update_binding[b2].key)].type);
  }
  for (int b2 = 0; b2 < ti->n_init_binding; b2++) {
    nbl_graph *ig = ti->initialization;
    nbl_type_copy(a, &ig->values[nbl_graph_find(ig, ti->init_binding[b2].value)].type,
                  &g->values[nbl_graph_find(g, ti->init_binding[b2].key)].type);
  }
  free(buf);
  return m;
}

#endif
