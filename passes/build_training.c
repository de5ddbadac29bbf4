/* build_training.c - build-training: from an inference model, the training
 * model of TRAINING_CONTRACT.md (issue 15).
 *
 * The main graph stays the inference graph. training_info[0] gets:
 * - algorithm: a copy of the inference nodes (BatchNormalization becomes
 *   com.microsoft BatchNormInternal, Dropout gets training_mode=true and a
 *   seed), the loss, the backward nodes (runtime/core/grad.h: each op's rule
 *   from the op table) and the optimizer nodes. Inputs: the data inputs, the
 *   label, `lr` (float scalar) and `step` (int64 scalar, 1-based). Outputs:
 *   the loss first, then every value update_binding names. Parameters and
 *   optimizer state are read from the main graph (outer values). Gradients
 *   are the values `<param>_grad`, read only by the optimizer nodes.
 * - initialization: zeros for every optimizer state initializer
 *   (`<param>.momentum`, `.adam_m`, `.adam_v`, `.adagrad_h`, added to the main
 *   graph, unused by it).
 * - update_binding: `<param>` -> `<param>.new`, state -> `<state>.new`, BN
 *   running statistics -> `<stat>.new` (the forward copy's new statistics).
 *
 * Aliases (untie=1, the default): first, an Identity node reading a float
 * initializer of the main graph (not a graph input) whose output a node
 * reads is replaced by an initializer of its own, a copy of the value named
 * as the Identity's output (see untie_aliases); so each alias is a separate
 * parameter or running statistic, as the separate tensors PyTorch exported.
 * One initializer read by several nodes directly is a shared weight and stays
 * one parameter.
 *
 * Optimizers: sgd (X - lr (G + wd X)), momentum / nesterov
 * (ai.onnx.preview.training Momentum, alpha = momentum, beta = 1: PyTorch's
 * SGD with dampening 0), adam (Adam, weight decay as L2 via norm_coefficient),
 * adamw (Adam after the decoupled decay X (1 - lr wd), which PyTorch's AdamW
 * applies first), adagrad (Adagrad, decay_factor 0). */
#include <fnmatch.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "pass.h"
#include "select.h"

#define TRAIN_DOMAIN "ai.onnx.preview.training"
#define LIST_SEPS ";| "

typedef struct param {
  nbl_id v;     /* main-graph initializer */
  nbl_id a;     /* its outer value in the algorithm graph */
  nbl_id grad;  /* <param>_grad */
  int n_state;
  nbl_id state[2]; /* main-graph state initializers */
} param;

typedef struct bt {
  nbl_pass_ctx *ctx;
  nbl_model *m;
  nbl_graph *g, *alg, *ini;
  nbl_id *map; /* main value id -> algorithm value id */
  unsigned char *is_stat; /* main value id: a BatchNorm running statistic */
  param *p;
  int n_p;
  nbl_kv *upd;
  int n_upd, cap_upd;
  nbl_kv *ib;
  int n_ib, cap_ib;
  nbl_id *outs; /* algorithm outputs after the loss */
  int n_outs, cap_outs;
  int n_bn, n_dropout, n_frozen, n_unreached;
  int n_untied, n_tied; /* Identity aliases of initializers: untied, left tied */
  int n_input_alias;    /* ... left because their initializer is a graph input */
  int n_stat_copies;    /* BatchNorm running statistics given their own initializer */
} bt;

/* ------------------------------------------------------------------ small helpers */

static int kv_add(nbl_arena *a, nbl_kv **arr, int *n, int *cap, const char *k, const char *v) {
  if (*n == *cap) {
    int c = *cap ? 2 * *cap : 16;
    nbl_kv *p = realloc(*arr, sizeof(nbl_kv) * (size_t)c);
    if (!p) return -1;
    *arr = p;
    *cap = c;
  }
  (*arr)[*n].key = nbl_arena_strdup(a, k);
  (*arr)[*n].value = nbl_arena_strdup(a, v);
  (*n)++;
  return 0;
}

static int out_add(bt *b, nbl_id v) {
  if (b->n_outs == b->cap_outs) {
    int c = b->cap_outs ? 2 * b->cap_outs : 16;
    nbl_id *p = realloc(b->outs, sizeof(nbl_id) * (size_t)c);
    if (!p) return -1;
    b->outs = p;
    b->cap_outs = c;
  }
  b->outs[b->n_outs++] = v;
  return 0;
}

static nbl_status oom(void) { return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory"); }

static int is_float(nbl_dtype dt) {
  return dt == NBL_DT_FLOAT || dt == NBL_DT_DOUBLE || dt == NBL_DT_FLOAT16 || dt == NBL_DT_BFLOAT16;
}

/* "float[N,10]" for messages. */
static void type_str(const nbl_type *t, char *buf, size_t cap) {
  if (t->kind != NBL_TYPE_TENSOR) {
    snprintf(buf, cap, "(no tensor type)");
    return;
  }
  size_t n = (size_t)snprintf(buf, cap, "%s", t->elem ? nbl_dtype_name(t->elem) : "?");
  if (t->rank < 0) {
    if (n < cap) snprintf(buf + n, cap - n, "[?]");
    return;
  }
  for (int k = 0; k < t->rank && n + 24 < cap; k++) {
    if (t->dims[k].param)
      n += (size_t)snprintf(buf + n, cap - n, "%s%s", k ? "," : "[", t->dims[k].param);
    else if (t->dims[k].value >= 0)
      n += (size_t)snprintf(buf + n, cap - n, "%s%lld", k ? "," : "[", (long long)t->dims[k].value);
    else
      n += (size_t)snprintf(buf + n, cap - n, "%s?", k ? "," : "[");
  }
  if (n + 2 < cap) snprintf(buf + n, cap - n, t->rank ? "]" : "[]");
}

/* 1 when `name` matches one of the globs of `list`; counts matches per glob
 * into hits[] (NULL: not counted). */
static int glob_match(const char *list, const char *name, int *hits) {
  int k = 0, any = 0;
  const char *p = list;
  while (p && *p) {
    size_t n = strcspn(p, LIST_SEPS);
    if (n > 0) {
      char item[512];
      size_t c = n < sizeof item - 1 ? n : sizeof item - 1;
      memcpy(item, p, c);
      item[c] = 0;
      if (fnmatch(item, name, 0) == 0) {
        any = 1;
        if (hits) hits[k]++;
      }
      k++;
    }
    p += n;
    while (*p && strchr(LIST_SEPS, *p)) p++;
  }
  return any;
}

/* The first glob of `list` no initializer matched (NULL: all matched). */
static const char *unmatched_glob(const nbl_graph *g, const char *list, char *buf, size_t cap) {
  int hits[256] = {0};
  for (int i = 0; i < g->n_initializers; i++) glob_match(list, g->values[g->initializers[i]].name, hits);
  int k = 0;
  const char *p = list;
  while (p && *p) {
    size_t n = strcspn(p, LIST_SEPS);
    if (n > 0) {
      if (k < 256 && hits[k] == 0) {
        size_t c = n < cap - 1 ? n : cap - 1;
        memcpy(buf, p, c);
        buf[c] = 0;
        return buf;
      }
      k++;
    }
    p += n;
    while (*p && strchr(LIST_SEPS, *p)) p++;
  }
  return NULL;
}

/* A fresh value of the algorithm graph named exactly `name` (error if taken
 * there or in the main graph, unless allow_main). */
static nbl_id new_named(bt *b, nbl_graph *g, const char *name, int allow_main) {
  if (nbl_graph_find(g, name) != NBL_NONE || (!allow_main && nbl_graph_find(b->g, name) != NBL_NONE)) {
    nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: the name '%s' is already used in the model",
               name);
    return NBL_NONE;
  }
  return nbl_graph_add_value(g, name);
}

static nbl_id add_node(nbl_graph *g, const char *op, const char *dom, const char *name, int n_in,
                       const nbl_id *in, nbl_id out) {
  return nbl_graph_add_node(g, op, dom, name, n_in, in, 1, &out);
}

/* A Constant node in g with tensor t; returns its output. */
static nbl_id add_const(nbl_graph *g, const char *hint, nbl_tensor *t) {
  if (!t) return NBL_NONE;
  char *nm = nbl_graph_unique_name(g, hint);
  nbl_id v = nbl_graph_add_value(g, nm);
  if (v == NBL_NONE) return NBL_NONE;
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, t->dtype, t->rank, t->dims);
  nbl_id n = add_node(g, "Constant", "", nm, 0, NULL, v);
  if (n == NBL_NONE) return NBL_NONE;
  nbl_node_set_attr_tensor(g, n, "value", t);
  return v;
}

static nbl_tensor *scalar_of(nbl_arena *a, nbl_dtype dt, double v) {
  if (dt == NBL_DT_DOUBLE) return nbl_tensor_new(a, "", dt, 0, NULL, &v);
  float f = (float)v;
  return nbl_tensor_new(a, "", NBL_DT_FLOAT, 0, NULL, &f);
}

/* ------------------------------------------------------------------ aliases */

/* The initializer an Identity node reads, through a chain of Identity nodes
 * (NBL_NONE when n is not such an Identity or the chain ends elsewhere). */
static nbl_id alias_root(const nbl_graph *g, nbl_id nid) {
  for (int hops = 0; hops <= g->n_nodes; hops++) {
    const nbl_node *n = &g->nodes[nid];
    if (n->dead || strcmp(n->op_type, "Identity") || (n->domain[0] && strcmp(n->domain, "ai.onnx")) ||
        n->n_inputs != 1 || n->n_outputs != 1 || n->inputs[0] == NBL_NONE || n->outputs[0] == NBL_NONE)
      return NBL_NONE;
    nbl_id v = n->inputs[0];
    if (g->values[v].init) return v;
    if (g->values[v].producer == NBL_NONE) return NBL_NONE;
    nid = g->values[v].producer;
  }
  return NBL_NONE;
}

/* Value dst (of the main graph) becomes an initializer holding a copy of t,
 * typed by it (the untied aliases and running statistics). -1 out of memory. */
static int init_copy(bt *b, nbl_id dst, const nbl_tensor *t) {
  nbl_graph *g = b->g;
  nbl_tensor *c = nbl_tensor_new(b->m->arena, g->values[dst].name, t->dtype, t->rank, t->dims, t->data);
  if (!c) return -1;
  nbl_type_set_tensor(b->m->arena, &g->values[dst].type, t->dtype, t->rank, t->dims);
  nbl_graph_set_initializer(g, dst, c);
  return 0;
}

/* PyTorch's eval-mode export (torch 1.13, TrainingMode.EVAL or PRESERVE)
 * writes parameters and buffers holding equal values once, and each other one
 * as an Identity reading the survivor: `layer4.1.bn2.running_mean =
 * Identity(layer4.0.bn1.bias)`, both zeros. Trained as they are, such
 * tensors would move together (and a running statistic would be asked for a
 * gradient); in PyTorch they are separate. With untie=1 each such Identity
 * whose output a node reads (one other than an Identity) becomes an
 * initializer of its own: a copy of the value, under the Identity's output
 * name, so the inference graph computes the same. For a chain of Identity
 * nodes each read link gets a copy of the chain's initializer and the links
 * nothing reads any more are dropped. An alias that is also a graph output
 * becomes an initializer listed as an output; one that only is a graph output
 * (no node reads it) stays an Identity, as an Identity of a parameter that
 * the loss reads directly does. Only float initializers (what parameters and
 * running statistics are) that are not graph inputs are untied: one listed as
 * a graph input (of an IR >= 4 model) is an overridable default, left alone and counted
 * (constant-initializers makes it a constant first). With untie=0 the
 * aliases are only counted. Ids of g change (compacted) when something was
 * untied. */
static nbl_status untie_aliases(bt *b, int untie) {
  nbl_graph *g = b->g;
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return NBL_ERR_INVALID_MODEL;
  for (int k = 0; k < n; k++) {
    nbl_id root = alias_root(g, order[k]);
    if (root == NBL_NONE || !is_float(g->values[root].init->dtype)) continue;
    nbl_id out = g->nodes[order[k]].outputs[0];
    int read = 0;
    for (int c = 0; c < g->values[out].n_consumers && !read; c++)
      read = alias_root(g, g->values[out].consumers[c]) == NBL_NONE;
    if (!read) continue; /* a link of a chain: dropped below once nothing reads it; or only a graph output */
    if (g->values[root].flags & NBL_VAL_INPUT) {
      b->n_input_alias++;
      continue;
    }
    if (!untie) {
      b->n_tied++;
      continue;
    }
    nbl_node_kill(g, order[k]);
    if (init_copy(b, out, g->values[root].init)) {
      free(order);
      return oom();
    }
    b->n_untied++;
  }
  for (int k = n - 1; k >= 0 && b->n_untied; k--) { /* the links left unread, last first */
    nbl_id root = alias_root(g, order[k]);
    if (root == NBL_NONE || (g->values[root].flags & NBL_VAL_INPUT) || !is_float(g->values[root].init->dtype))
      continue;
    nbl_id out = g->nodes[order[k]].outputs[0];
    if (g->values[out].n_consumers || (g->values[out].flags & NBL_VAL_OUTPUT)) continue;
    nbl_node_kill(g, order[k]);
    g->values[out].dead = true;
  }
  free(order);
  if (b->n_untied) nbl_graph_compact(g);
  return NBL_OK;
}

/* A BatchNormalization's running statistic (input 3 or 4) whose initializer
 * a node also reads in another role (a parameter: a bias, a scale) would
 * be both: build-training would leave it untrained and write the running
 * statistic over it. No PyTorch model is so; it comes from merging equal
 * tensors (eliminate-identity or fold passes after an eval-mode export, or
 * an exporter that deduplicates without Identity). With untie=1 the
 * statistic gets its own initializer, a copy named "<BatchNorm
 * node>.running_mean" / ".running_var" (made unique); with untie=0 it is an
 * error naming both readers. A statistic shared only by running-statistic
 * inputs (one BatchNorm module applied twice) stays shared. */
static nbl_status untie_stats(bt *b, int untie) {
  nbl_graph *g = b->g;
  const nbl_id nn = g->n_nodes;
  for (nbl_id i = 0; i < nn; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || n->domain[0] || strcmp(n->op_type, "BatchNormalization") || n->n_inputs < 5) continue;
    for (int k = 3; k <= 4; k++) {
      const nbl_id v = g->nodes[i].inputs[k];
      if (v == NBL_NONE || !g->values[v].init || (g->values[v].flags & NBL_VAL_INPUT) ||
          !is_float(g->values[v].init->dtype))
        continue;
      const nbl_node *other = NULL;
      for (int c = 0; c < g->values[v].n_consumers && !other; c++) {
        const nbl_node *u = &g->nodes[g->values[v].consumers[c]];
        for (int j = 0; j < u->n_inputs && !other; j++) {
          if (u->inputs[j] != v) continue;
          const int stat = !u->domain[0] && !strcmp(u->op_type, "BatchNormalization") && (j == 3 || j == 4);
          if (!stat) other = u;
        }
      }
      if (!other) continue;
      const char *what = k == 3 ? "running_mean" : "running_var";
      if (!untie) {
        char l1[300], l2[300];
        return nbl_errorf(NBL_ERR_INVALID_MODEL,
                          "build-training: node '%s' (BatchNormalization): its %s '%s' is also read by node "
                          "'%s' (%s) as a parameter, so it would be both (equal tensors merged); untie=1 gives "
                          "the statistic its own copy",
                          nbl_node_label(g, &g->nodes[i], l1, sizeof l1), what, g->values[v].name,
                          nbl_node_label(g, other, l2, sizeof l2), other->op_type);
      }
      char hint[600];
      snprintf(hint, sizeof hint, "%s.%s", g->nodes[i].name[0] ? g->nodes[i].name : g->values[v].name, what);
      char *nm = nbl_graph_unique_name(g, hint);
      nbl_id nv = nm ? nbl_graph_add_value(g, nm) : NBL_NONE;
      if (nv == NBL_NONE || init_copy(b, nv, g->values[v].init)) return oom();
      nbl_node_set_input(g, i, k, nv);
      b->n_stat_copies++;
    }
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ the forward copy */

/* The algorithm-graph value standing for main value v. */
static nbl_id mapped(bt *b, nbl_id v) {
  if (v == NBL_NONE) return NBL_NONE;
  if (b->map[v] != NBL_NONE) return b->map[v];
  const nbl_value *src = &b->g->values[v];
  nbl_id a = nbl_graph_add_value(b->alg, src->name);
  if (a == NBL_NONE) return NBL_NONE;
  if (b->g->values[v].init) /* typed by the main graph's tensor */
    b->alg->values[a].flags |= NBL_VAL_OUTER;
  else
    nbl_type_copy(b->m->arena, &b->alg->values[a].type, &b->g->values[v].type);
  b->map[v] = a;
  return a;
}

static nbl_status copy_node(bt *b, nbl_id nid, int dropout_seed) {
  nbl_graph *g = b->g, *alg = b->alg;
  const nbl_node *n = &g->nodes[nid];
  for (int k = 0; k < n->n_attrs; k++)
    if (n->attrs[k].type == NBL_ATTR_GRAPH || n->attrs[k].type == NBL_ATTR_GRAPHS)
      return nbl_errorf(NBL_ERR_UNSUPPORTED,
                        "build-training: node '%s' (%s) has a subgraph: control flow is not "
                        "supported in training graphs",
                        n->name, n->op_type);
  int is_bn = !strcmp(n->op_type, "BatchNormalization") && !n->domain[0];
  int is_do = !strcmp(n->op_type, "Dropout") && !n->domain[0];
  int opset = (int)nbl_model_opset(b->m, "");
  if (is_do && opset < 12)
    return nbl_errorf(NBL_ERR_UNSUPPORTED,
                      "build-training: node '%s' (Dropout): training mode needs opset >= 12 "
                      "(the model imports %d)",
                      n->name, opset);
  int n_in = n->n_inputs, n_out = n->n_outputs;
  nbl_id in[64], out[64];
  if (n_in > 62 || n_out > 62)
    return nbl_errorf(NBL_ERR_UNSUPPORTED, "build-training: node '%s' has too many inputs/outputs", n->name);
  for (int i = 0; i < n_in; i++) {
    in[i] = mapped(b, g->nodes[nid].inputs[i]);
    if (g->nodes[nid].inputs[i] != NBL_NONE && in[i] == NBL_NONE) return NBL_ERR_INVALID_MODEL;
  }
  n = &g->nodes[nid];
  if (is_bn) {
    if (n_in != 5) return nbl_errorf(NBL_ERR_INVALID_MODEL, "node '%s' (BatchNormalization): needs 5 inputs", n->name);
    /* Y, new running mean, new running var, saved mean, saved inv_std */
    out[0] = mapped(b, n->outputs[0]);
    for (int k = 1; k < 5; k++) {
      out[k] = NBL_NONE;
      nbl_id st = k <= 2 ? n->inputs[2 + k] : NBL_NONE;
      /* a BatchNormalization already in training mode may name its new statistics */
      nbl_id own = k <= 2 && k < n->n_outputs ? n->outputs[k] : NBL_NONE;
      if (own != NBL_NONE) {
        out[k] = mapped(b, own);
        if (out[k] == NBL_NONE) return NBL_ERR_INVALID_MODEL;
        n = &g->nodes[nid];
      }
      if (k <= 2 && st != NBL_NONE && g->values[st].init) { /* bound back by update_binding */
        char nm[600];
        snprintf(nm, sizeof nm, "%s.new", g->values[st].name);
        if (out[k] != NBL_NONE)
          snprintf(nm, sizeof nm, "%s", alg->values[out[k]].name);
        else
          out[k] = new_named(b, alg, nm, 0);
        if (out[k] == NBL_NONE) return NBL_ERR_INVALID_ARGUMENT;
        if (kv_add(b->m->arena, &b->upd, &b->n_upd, &b->cap_upd, g->values[st].name, nm) ||
            out_add(b, out[k]))
          return oom();
      }
    }
    n_out = 5;
  } else {
    for (int o = 0; o < n_out; o++) {
      out[o] = mapped(b, g->nodes[nid].outputs[o]);
      if (g->nodes[nid].outputs[o] != NBL_NONE && out[o] == NBL_NONE) return NBL_ERR_INVALID_MODEL;
    }
  }
  n = &g->nodes[nid];
  if (is_do) { /* training_mode = true */
    uint8_t one = 1;
    char hint[600];
    snprintf(hint, sizeof hint, "%s_training_mode", n->name[0] ? n->name : "dropout");
    nbl_id tm = add_const(alg, hint, nbl_tensor_new(b->m->arena, "", NBL_DT_BOOL, 0, NULL, &one));
    if (tm == NBL_NONE) return oom();
    if (n_in < 2) in[1] = NBL_NONE;
    in[2] = tm;
    n_in = 3;
  }
  n = &g->nodes[nid];
  nbl_id c = nbl_graph_add_node(alg, is_bn ? "BatchNormInternal" : n->op_type,
                                is_bn ? "com.microsoft" : n->domain, n->name, n_in, in, n_out, out);
  if (c == NBL_NONE) return NBL_ERR_INVALID_MODEL;
  n = &g->nodes[nid];
  nbl_node *cn = &alg->nodes[c];
  if (n->n_attrs) {
    cn->attrs = nbl_arena_memdup(b->m->arena, n->attrs, sizeof(nbl_attr) * (size_t)n->n_attrs);
    if (!cn->attrs) return oom();
    cn->n_attrs = n->n_attrs;
    for (int k = 0; k < cn->n_attrs; k++) { /* each node holds its own references */
      nbl_attr *at = &cn->attrs[k];
      if (at->type == NBL_ATTR_TENSOR && at->t && at->t->buf) nbl_buffer_ref(at->t->buf);
      for (int j = 0; at->type == NBL_ATTR_TENSORS && j < at->n; j++)
        if (at->tensors[j] && at->tensors[j]->buf) nbl_buffer_ref(at->tensors[j]->buf);
    }
  }
  cn->doc_string = n->doc_string;
  if (is_bn) {
    float eps = nbl_attr_float(n, "epsilon", 1e-5f), mom = nbl_attr_float(n, "momentum", 0.9f);
    cn->n_attrs = 0;
    if (nbl_model_opset(b->m, "com.microsoft") == 0) nbl_model_set_opset(b->m, "com.microsoft", 1);
    nbl_node_set_attr_float(alg, c, "epsilon", eps);
    nbl_node_set_attr_float(alg, c, "momentum", mom);
    b->n_bn++;
  }
  if (is_do) {
    nbl_node_set_attr_int(alg, c, "seed", dropout_seed);
    b->n_dropout++;
  }
  return NBL_OK;
}

/* ------------------------------------------------------------------ loss */

/* Check that the model output fits the loss; builds the loss node(s) and the
 * label input. Returns the loss value. */
static nbl_id build_loss(bt *b, nbl_id out_main, const char *loss, const char *label) {
  nbl_graph *alg = b->alg;
  const nbl_value *ov = &b->g->values[out_main];
  char ts[256];
  type_str(&ov->type, ts, sizeof ts);
  nbl_dtype dt = ov->type.kind == NBL_TYPE_TENSOR ? ov->type.elem : NBL_DT_UNDEFINED;
  int r = ov->type.kind == NBL_TYPE_TENSOR ? ov->type.rank : -1;
  if (!is_float(dt)) {
    nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
               "build-training: model output '%s' (%s) does not fit loss=%s: it must be a float tensor",
               ov->name, ts, loss);
    return NBL_NONE;
  }
  nbl_id y = b->map[out_main];
  nbl_id lv = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, "loss"));
  if (lv == NBL_NONE) return NBL_NONE;
  nbl_type_set_tensor(b->m->arena, &alg->values[lv].type, dt, 0, NULL);
  if (!strcmp(loss, "output")) {
    int one = r >= 0;
    for (int k = 0; k < r && one; k++) one = ov->type.dims[k].value == 1 && !ov->type.dims[k].param;
    if (!one) {
      nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                 "build-training: model output '%s' (%s) does not fit loss=output: it must be a "
                 "float scalar (one element)",
                 ov->name, ts);
      return NBL_NONE;
    }
    nbl_id nid = add_node(alg, "ReduceSum", "", "loss", 1, &y, lv);
    if (nid != NBL_NONE) nbl_node_set_attr_int(alg, nid, "keepdims", 0);
    return nid == NBL_NONE ? NBL_NONE : lv;
  }
  nbl_id lab = new_named(b, alg, label, 0);
  if (lab == NBL_NONE) return NBL_NONE;
  nbl_type *lt = &alg->values[lab].type;
  if (!strcmp(loss, "cross-entropy")) {
    if (r < 2) {
      nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                 "build-training: model output '%s' (%s) does not fit loss=cross-entropy: it must "
                 "be scores of rank >= 2 ([N, C] or [N, C, d1, ...])",
                 ov->name, ts);
      return NBL_NONE;
    }
    if (nbl_model_opset(b->m, "") < 12) {
      nbl_errorf(NBL_ERR_UNSUPPORTED,
                 "build-training: loss=cross-entropy needs opset >= 12 (SoftmaxCrossEntropyLoss); "
                 "the model imports %lld",
                 (long long)nbl_model_opset(b->m, ""));
      return NBL_NONE;
    }
    /* label: int64, the output's shape without axis 1 */
    lt->kind = NBL_TYPE_TENSOR;
    lt->elem = NBL_DT_INT64;
    lt->rank = r - 1;
    lt->dims = nbl_arena_alloc(b->m->arena, sizeof(nbl_dim) * (size_t)r);
    if (!lt->dims) return NBL_NONE;
    for (int k = 0, j = 0; k < r; k++)
      if (k != 1) lt->dims[j++] = ov->type.dims[k];
    nbl_graph_add_input(alg, lab);
    nbl_id in[2] = {y, lab};
    nbl_id nid = add_node(alg, "SoftmaxCrossEntropyLoss", "", "loss", 2, in, lv);
    if (nid != NBL_NONE) nbl_node_set_attr_string(alg, nid, "reduction", "mean");
    return nid == NBL_NONE ? NBL_NONE : lv;
  }
  /* mse: mean((y - label)^2) over every element */
  nbl_type_copy(b->m->arena, lt, &ov->type);
  nbl_graph_add_input(alg, lab);
  nbl_id d = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, "loss_diff"));
  nbl_id sq = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, "loss_sq"));
  if (d == NBL_NONE || sq == NBL_NONE) return NBL_NONE;
  nbl_type_copy(b->m->arena, &alg->values[d].type, &ov->type);
  nbl_type_copy(b->m->arena, &alg->values[sq].type, &ov->type);
  nbl_id in[2] = {y, lab};
  if (add_node(alg, "Sub", "", "loss_diff", 2, in, d) == NBL_NONE) return NBL_NONE;
  in[0] = in[1] = d;
  if (add_node(alg, "Mul", "", "loss_sq", 2, in, sq) == NBL_NONE) return NBL_NONE;
  nbl_id nid = add_node(alg, "ReduceMean", "", "loss", 1, &sq, lv);
  if (nid == NBL_NONE) return NBL_NONE;
  nbl_node_set_attr_int(alg, nid, "keepdims", 0);
  return lv;
}

/* ------------------------------------------------------------------ optimizer */

typedef struct optcfg {
  const char *name;
  double momentum, beta1, beta2, eps, wd;
} optcfg;

/* A zero-filled state initializer `<param><suffix>` in the main graph, its
 * outer value in the algorithm graph and its zeros in the initialization graph. */
static nbl_id add_state(bt *b, param *p, const char *suffix, nbl_id *alg_v) {
  nbl_graph *g = b->g;
  const nbl_value *pv = &g->values[p->v];
  const nbl_tensor *pt = pv->init;
  char nm[600];
  snprintf(nm, sizeof nm, "%s%s", pv->name, suffix);
  if (nbl_graph_find(g, nm) != NBL_NONE) {
    nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: the name '%s' is already used in the model", nm);
    return NBL_NONE;
  }
  nbl_tensor *t = nbl_tensor_new(b->m->arena, nm, pt->dtype, pt->rank, pt->dims, NULL);
  nbl_id v = t ? nbl_graph_add_value(g, nm) : NBL_NONE;
  if (v == NBL_NONE) return NBL_NONE;
  nbl_graph_set_initializer(g, v, t); /* typed by its tensor, as loaded initializers are */
  /* algorithm: outer value */
  *alg_v = nbl_graph_add_value(b->alg, nm);
  if (*alg_v == NBL_NONE) return NBL_NONE;
  b->alg->values[*alg_v].flags |= NBL_VAL_OUTER;
  /* initialization: ConstantOfShape(shape) = 0 */
  char hint[620];
  snprintf(hint, sizeof hint, "%s_shape", nm);
  int64_t rk = pt->rank;
  nbl_id shp = add_const(b->ini, hint, nbl_tensor_new(b->m->arena, "", NBL_DT_INT64, 1, &rk, pt->dims));
  snprintf(hint, sizeof hint, "%s.zero", nm);
  nbl_id z = shp == NBL_NONE ? NBL_NONE : nbl_graph_add_value(b->ini, nbl_graph_unique_name(b->ini, hint));
  if (z == NBL_NONE) return NBL_NONE;
  nbl_type_set_tensor(b->m->arena, &b->ini->values[z].type, pt->dtype, pt->rank, pt->dims);
  nbl_id n = add_node(b->ini, "ConstantOfShape", "", b->ini->values[z].name, 1, &shp, z);
  if (n == NBL_NONE) return NBL_NONE;
  int64_t one = 1;
  nbl_node_set_attr_tensor(b->ini, n, "value", nbl_tensor_new(b->m->arena, "", pt->dtype, 1, &one, NULL));
  nbl_graph_add_output(b->ini, z);
  if (kv_add(b->m->arena, &b->ib, &b->n_ib, &b->cap_ib, nm, b->ini->values[z].name)) return NBL_NONE;
  p->state[p->n_state++] = v;
  return v;
}

/* `<name>.new` in the algorithm graph, bound back to `name`. */
static nbl_id new_of(bt *b, const char *name) {
  char nm[600];
  snprintf(nm, sizeof nm, "%s.new", name);
  nbl_id v = new_named(b, b->alg, nm, 0);
  if (v == NBL_NONE) return NBL_NONE;
  if (kv_add(b->m->arena, &b->upd, &b->n_upd, &b->cap_upd, name, nm) || out_add(b, v)) return NBL_NONE;
  return v;
}

static nbl_status build_optimizer(bt *b, const optcfg *o, nbl_id lr, nbl_id step) {
  nbl_graph *alg = b->alg;
  nbl_arena *a = b->m->arena;
  nbl_id lr_d = NBL_NONE; /* lr cast to double, for sgd on double parameters */
  for (int i = 0; i < b->n_p; i++) {
    param *p = &b->p[i];
    const char *pn = b->g->values[p->v].name;
    nbl_dtype dt = b->g->values[p->v].init->dtype;
    char nm[600];
    nbl_id x = p->a, gr = p->grad;
    if (!strcmp(o->name, "sgd")) {
      nbl_id r = lr;
      if (dt != NBL_DT_FLOAT) {
        if (lr_d == NBL_NONE) {
          lr_d = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, "lr_cast"));
          nbl_id n = lr_d == NBL_NONE ? NBL_NONE : add_node(alg, "Cast", "", "lr_cast", 1, &lr, lr_d);
          if (n == NBL_NONE) return NBL_ERR_INVALID_MODEL;
          nbl_node_set_attr_int(alg, n, "to", dt);
        }
        r = lr_d;
      }
      if (o->wd != 0) { /* G + wd X */
        snprintf(nm, sizeof nm, "%s_decay", pn);
        nbl_id c = add_const(alg, nm, scalar_of(a, dt, o->wd));
        nbl_id t1 = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
        nbl_id t2 = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
        nbl_id in[2] = {x, c};
        if (c == NBL_NONE || t1 == NBL_NONE || t2 == NBL_NONE ||
            add_node(alg, "Mul", "", nm, 2, in, t1) == NBL_NONE)
          return NBL_ERR_INVALID_MODEL;
        in[0] = gr;
        in[1] = t1;
        if (add_node(alg, "Add", "", nm, 2, in, t2) == NBL_NONE) return NBL_ERR_INVALID_MODEL;
        gr = t2;
      }
      snprintf(nm, sizeof nm, "%s_step", pn);
      nbl_id d = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
      nbl_id in[2] = {r, gr};
      if (d == NBL_NONE || add_node(alg, "Mul", "", nm, 2, in, d) == NBL_NONE) return NBL_ERR_INVALID_MODEL;
      nbl_id xn = new_of(b, pn);
      in[0] = x;
      in[1] = d;
      snprintf(nm, sizeof nm, "%s_update", pn);
      if (xn == NBL_NONE || add_node(alg, "Sub", "", nm, 2, in, xn) == NBL_NONE) return NBL_ERR_INVALID_MODEL;
      continue;
    }
    int is_mom = !strcmp(o->name, "momentum") || !strcmp(o->name, "nesterov");
    int is_adam = !strcmp(o->name, "adam") || !strcmp(o->name, "adamw");
    nbl_id s0 = NBL_NONE, s1 = NBL_NONE;
    if (is_mom) {
      if (add_state(b, p, ".momentum", &s0) == NBL_NONE) return NBL_ERR_INVALID_ARGUMENT;
    } else if (is_adam) {
      if (add_state(b, p, ".adam_m", &s0) == NBL_NONE || add_state(b, p, ".adam_v", &s1) == NBL_NONE)
        return NBL_ERR_INVALID_ARGUMENT;
    } else if (add_state(b, p, ".adagrad_h", &s0) == NBL_NONE) {
      return NBL_ERR_INVALID_ARGUMENT;
    }
    if (!strcmp(o->name, "adamw") && o->wd != 0) { /* X (1 - lr wd), before the Adam step */
      snprintf(nm, sizeof nm, "%s_decoupled_decay", pn);
      nbl_id r = lr;
      if (dt != NBL_DT_FLOAT) {
        r = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
        nbl_id n = r == NBL_NONE ? NBL_NONE : add_node(alg, "Cast", "", nm, 1, &lr, r);
        if (n == NBL_NONE) return NBL_ERR_INVALID_MODEL;
        nbl_node_set_attr_int(alg, n, "to", dt);
      }
      nbl_id c = add_const(alg, nm, scalar_of(a, dt, o->wd));
      nbl_id t1 = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
      nbl_id t2 = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
      nbl_id t3 = nbl_graph_add_value(alg, nbl_graph_unique_name(alg, nm));
      nbl_id in[2] = {r, c};
      if (c == NBL_NONE || t1 == NBL_NONE || t2 == NBL_NONE || t3 == NBL_NONE ||
          add_node(alg, "Mul", "", nm, 2, in, t1) == NBL_NONE)
        return NBL_ERR_INVALID_MODEL;
      in[0] = x;
      in[1] = t1;
      if (add_node(alg, "Mul", "", nm, 2, in, t2) == NBL_NONE) return NBL_ERR_INVALID_MODEL;
      in[1] = t2;
      if (add_node(alg, "Sub", "", nm, 2, in, t3) == NBL_NONE) return NBL_ERR_INVALID_MODEL;
      x = t3;
    }
    nbl_id in[6] = {lr, step, x, gr, s0, s1};
    nbl_id outs[3] = {new_of(b, pn), NBL_NONE, NBL_NONE};
    outs[1] = new_of(b, b->g->values[p->state[0]].name);
    if (is_adam) outs[2] = new_of(b, b->g->values[p->state[1]].name);
    if (outs[0] == NBL_NONE || outs[1] == NBL_NONE || (is_adam && outs[2] == NBL_NONE))
      return NBL_ERR_INVALID_ARGUMENT;
    snprintf(nm, sizeof nm, "%s_%s", pn, o->name);
    const char *op = is_mom ? "Momentum" : is_adam ? "Adam" : "Adagrad";
    nbl_id n = nbl_graph_add_node(alg, op, TRAIN_DOMAIN, nm, is_adam ? 6 : 5, in, is_adam ? 3 : 2, outs);
    if (n == NBL_NONE) return NBL_ERR_INVALID_MODEL;
    float wd = is_adam && !strcmp(o->name, "adamw") ? 0.0f : (float)o->wd;
    if (is_mom) {
      nbl_node_set_attr_float(alg, n, "alpha", (float)o->momentum);
      nbl_node_set_attr_float(alg, n, "beta", 1.0f);
      nbl_node_set_attr_string(alg, n, "mode", !strcmp(o->name, "nesterov") ? "nesterov" : "standard");
      nbl_node_set_attr_float(alg, n, "norm_coefficient", wd);
    } else if (is_adam) {
      nbl_node_set_attr_float(alg, n, "alpha", (float)o->beta1);
      nbl_node_set_attr_float(alg, n, "beta", (float)o->beta2);
      nbl_node_set_attr_float(alg, n, "epsilon", (float)o->eps);
      nbl_node_set_attr_float(alg, n, "norm_coefficient", wd);
      nbl_node_set_attr_float(alg, n, "norm_coefficient_post", 0.0f);
    } else {
      nbl_node_set_attr_float(alg, n, "decay_factor", 0.0f);
      nbl_node_set_attr_float(alg, n, "epsilon", (float)o->eps);
      nbl_node_set_attr_float(alg, n, "norm_coefficient", wd);
    }
  }
  if (strcmp(o->name, "sgd") != 0 && nbl_model_opset(b->m, TRAIN_DOMAIN) == 0)
    nbl_model_set_opset(b->m, TRAIN_DOMAIN, 1);
  return NBL_OK;
}

/* ------------------------------------------------------------------ the pass */

static nbl_status bt_run(bt *b) {
  nbl_pass_ctx *ctx = b->ctx;
  nbl_model *m = b->m;
  nbl_graph *g = m->graph;
  const char *loss = nbl_pass_opt_string(ctx, "loss"), *label = nbl_pass_opt_string(ctx, "label");
  const char *trainable = nbl_pass_opt_string(ctx, "trainable"), *frozen = nbl_pass_opt_string(ctx, "frozen");
  const char *output = nbl_pass_opt_string(ctx, "output");
  optcfg o = {.name = nbl_pass_opt_string(ctx, "optimizer"),
              .momentum = nbl_pass_opt_float(ctx, "momentum"),
              .beta1 = nbl_pass_opt_float(ctx, "beta1"),
              .beta2 = nbl_pass_opt_float(ctx, "beta2"),
              .eps = nbl_pass_opt_float(ctx, "epsilon"),
              .wd = nbl_pass_opt_float(ctx, "weight-decay")};
  if (strcmp(loss, "cross-entropy") && strcmp(loss, "mse") && strcmp(loss, "output"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "build-training: loss '%s' is not one of cross-entropy, mse, output", loss);
  static const char *const opts[] = {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad"};
  int ok = 0;
  for (size_t i = 0; i < sizeof opts / sizeof opts[0]; i++) ok |= !strcmp(o.name, opts[i]);
  if (!ok)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "build-training: optimizer '%s' is not one of sgd, momentum, nesterov, adam, "
                      "adamw, adagrad",
                      o.name);
  if (o.wd < 0 || o.eps < 0 || o.momentum < 0 || o.beta1 < 0 || o.beta1 >= 1 || o.beta2 < 0 || o.beta2 >= 1)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "build-training: hyper-parameters out of range (momentum, epsilon and "
                      "weight-decay >= 0, beta1 and beta2 in [0, 1))");
  if (!*label && strcmp(loss, "output"))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: label= must name the label input");
  if (m->n_training)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: the model already has training_info");
  if (g->n_outputs == 0) return nbl_errorf(NBL_ERR_INVALID_MODEL, "build-training: the model has no output");
  /* types and shapes of every value */
  const nbl_pass_def *is = nbl_pass_find("infer-shapes");
  nbl_pass_ctx ic = {.model = m, .pass = is};
  nbl_status st = is ? is->run(&ic) : NBL_OK;
  if (st) return st;
  g = m->graph;
  /* Identity aliases of initializers: each its own initializer (untie=1) */
  st = untie_aliases(b, nbl_pass_opt_bool(ctx, "untie"));
  if (!st) st = untie_stats(b, nbl_pass_opt_bool(ctx, "untie"));
  if (st) return st;
  nbl_id out_main = g->outputs[0];
  if (*output) {
    out_main = nbl_graph_find(g, output);
    if (out_main == NBL_NONE || !(g->values[out_main].flags & NBL_VAL_OUTPUT))
      return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: output='%s' is not a model output", output);
  }
  /* parameters: float initializers that are not BatchNorm statistics */
  b->map = malloc(sizeof(nbl_id) * (size_t)(g->n_values + 1));
  b->is_stat = calloc((size_t)g->n_values + 1, 1);
  b->p = calloc((size_t)g->n_initializers + 1, sizeof(param));
  if (!b->map || !b->is_stat || !b->p) return oom();
  for (int v = 0; v < g->n_values; v++) b->map[v] = NBL_NONE;
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead || strcmp(n->op_type, "BatchNormalization") || n->domain[0]) continue;
    for (int k = 3; k < 5 && k < n->n_inputs; k++)
      if (n->inputs[k] != NBL_NONE) b->is_stat[n->inputs[k]] = 1;
  }
  char bad[512];
  if (*trainable && unmatched_glob(g, trainable, bad, sizeof bad))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: trainable glob '%s' matches no initializer", bad);
  if (*frozen && unmatched_glob(g, frozen, bad, sizeof bad))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: frozen glob '%s' matches no initializer", bad);
  for (int i = 0; i < g->n_initializers; i++) {
    nbl_id v = g->initializers[i];
    const nbl_value *val = &g->values[v];
    if (!val->init || !is_float(val->init->dtype) || b->is_stat[v]) continue;
    if ((*trainable && !glob_match(trainable, val->name, NULL)) || (*frozen && glob_match(frozen, val->name, NULL))) {
      b->n_frozen++;
      continue;
    }
    b->p[b->n_p++].v = v;
  }
  if (b->n_p == 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "build-training: no trainable parameter (float initializer) is left");
  /* algorithm graph: inputs, forward copy */
  b->alg = nbl_graph_new(m, g, "training_algorithm");
  b->ini = nbl_graph_new(m, g, "training_initialization");
  if (!b->alg || !b->ini) return oom();
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    if (g->values[v].init) continue;
    nbl_id a = mapped(b, v);
    if (a == NBL_NONE) return NBL_ERR_INVALID_MODEL;
    nbl_graph_add_input(b->alg, a);
  }
  nbl_id *order = NULL;
  int n = nbl_graph_topo_order(g, &order);
  if (n < 0) return NBL_ERR_INVALID_MODEL;
  int seed = (int)nbl_pass_opt_int(ctx, "seed");
  for (int k = 0; k < n && !st; k++) st = copy_node(b, order[k], seed + b->n_dropout);
  free(order);
  if (st) return st;
  /* loss, lr, step */
  nbl_id lossv = build_loss(b, out_main, loss, label);
  if (lossv == NBL_NONE) return NBL_ERR_INVALID_ARGUMENT;
  nbl_id lr = new_named(b, b->alg, "lr", 0), step = new_named(b, b->alg, "step", 0);
  if (lr == NBL_NONE || step == NBL_NONE) return NBL_ERR_INVALID_ARGUMENT;
  nbl_type_set_tensor(m->arena, &b->alg->values[lr].type, NBL_DT_FLOAT, 0, NULL);
  nbl_type_set_tensor(m->arena, &b->alg->values[step].type, NBL_DT_INT64, 0, NULL);
  nbl_graph_add_input(b->alg, lr);
  nbl_graph_add_input(b->alg, step);
  /* backward */
  nbl_id *xs = malloc(sizeof(nbl_id) * (size_t)b->n_p * 2);
  char **names = calloc((size_t)b->n_p, sizeof(char *));
  if (!xs || !names) {
    free(xs);
    free(names);
    return oom();
  }
  for (int i = 0; i < b->n_p; i++) {
    b->p[i].a = mapped(b, b->p[i].v);
    xs[i] = b->p[i].a;
    char nm[600];
    snprintf(nm, sizeof nm, "%s_grad", g->values[b->p[i].v].name);
    names[i] = nbl_arena_strdup(m->arena, nm);
  }
  unsigned char *blocked = calloc((size_t)b->n_p + 1, 1);
  if (!blocked) {
    free(xs);
    free(names);
    return oom();
  }
  /* without trainable=, a float initializer fed only to inputs that take no
   * gradient (Dropout's ratio, Clip's bounds, ...) is simply not trained */
  nbl_grad_spec gs = {.g = b->alg, .n_y = 1, .y = &lossv, .n_x = b->n_p, .x = xs,
                      .dx_names = (const char *const *)names, .dx = xs + b->n_p,
                      .lenient = !*trainable, .blocked = blocked};
  st = nbl_grad_build(&gs);
  if (st) {
    if ((b->n_tied || b->n_input_alias) && strstr(nbl_last_error(), ", an alias of '"))
      /* an input the rule refused is such an alias (grad.c names it): say why it is still one */
      nbl_error_prefix("build-training (%d Identity alias(es) of initializers left tied: %s)",
                       b->n_tied + b->n_input_alias,
                       b->n_tied ? "untie=0"
                                 : "their initializers are graph inputs; constant-initializers first unties them");
    else
      nbl_error_prefix("build-training");
    free(xs);
    free(names);
    free(blocked);
    return st;
  }
  int kept = 0;
  char unreached[400] = "";
  for (int i = 0; i < b->n_p; i++) {
    if (blocked[i]) { /* feeds an input without a gradient: a constant, not a parameter */
      b->n_frozen++;
      continue;
    }
    if (xs[b->n_p + i] == NBL_NONE) { /* no differentiable path to the loss */
      size_t l = strlen(unreached);
      if (l + 80 < sizeof unreached)
        snprintf(unreached + l, sizeof unreached - l, "%s'%s'", l ? ", " : "", g->values[b->p[i].v].name);
      b->n_unreached++;
      continue;
    }
    b->p[i].grad = xs[b->n_p + i];
    b->p[kept++] = b->p[i];
  }
  b->n_p = kept;
  free(xs);
  free(names);
  free(blocked);
  if (b->n_p == 0)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "build-training: no trainable parameter reaches the loss through "
                      "differentiable ops");
  /* optimizer, outputs, bindings */
  st = build_optimizer(b, &o, lr, step);
  if (st) return st;
  nbl_graph_add_output(b->alg, lossv);
  for (int i = 0; i < b->n_outs; i++) nbl_graph_add_output(b->alg, b->outs[i]);
  nbl_graph_dce(b->alg);
  /* the types known here are saved with the model (value_info) */
  nbl_graph *tg[2] = {b->alg, b->ini};
  for (int k = 0; k < 2; k++)
    for (nbl_id v = 0; v < tg[k]->n_values; v++) {
      const nbl_value *val = &tg[k]->values[v];
      if (!val->dead && val->type.kind == NBL_TYPE_TENSOR &&
          !(val->flags & (NBL_VAL_INPUT | NBL_VAL_OUTPUT | NBL_VAL_OUTER | NBL_VAL_VALUE_INFO)))
        nbl_graph_add_value_info(tg[k], v);
    }
  nbl_training_info *ti = nbl_arena_alloc(m->arena, sizeof *ti);
  if (!ti) return oom();
  ti->algorithm = b->alg;
  ti->initialization = b->n_ib ? b->ini : NULL;
  ti->n_init_binding = b->n_ib;
  ti->init_binding = b->n_ib ? nbl_arena_memdup(m->arena, b->ib, sizeof(nbl_kv) * (size_t)b->n_ib) : NULL;
  ti->n_update_binding = b->n_upd;
  ti->update_binding = nbl_arena_memdup(m->arena, b->upd, sizeof(nbl_kv) * (size_t)b->n_upd);
  if ((b->n_ib && !ti->init_binding) || !ti->update_binding) return oom();
  m->training = ti;
  m->n_training = 1;
  if (m->ir_version < 7) m->ir_version = 7;
  int fwd = 0, all = 0;
  for (int i = 0; i < b->alg->n_nodes; i++) all += !b->alg->nodes[i].dead;
  for (int i = 0; i < g->n_nodes; i++) fwd += !g->nodes[i].dead;
  ctx->changed = all;
  nbl_pass_logf(ctx, "%d parameters trainable (%d frozen, %d without a gradient path), loss=%s, optimizer=%s",
                b->n_p, b->n_frozen, b->n_unreached, loss, o.name);
  nbl_pass_logf(ctx, "algorithm graph: %d nodes (%d forward, %d backward), %d BatchNorm in training mode, "
                "%d Dropout in training mode; %d update bindings",
                all, fwd, gs.n_emitted, b->n_bn, b->n_dropout, b->n_upd);
  if (b->n_unreached) nbl_pass_logf(ctx, "no gradient reaches the loss from: %s", unreached);
  if (b->n_untied)
    nbl_pass_logf(ctx, "untied %d Identity alias(es) of initializers: each is now an initializer of its own "
                  "(as PyTorch's separate tensors); untie=0 keeps them tied", b->n_untied);
  if (b->n_tied) nbl_pass_logf(ctx, "%d Identity alias(es) of initializers left tied (untie=0)", b->n_tied);
  if (b->n_stat_copies)
    nbl_pass_logf(ctx, "gave %d BatchNorm running statistic(s) an initializer of their own: theirs was also read "
                  "as a parameter (equal tensors merged)", b->n_stat_copies);
  if (b->n_input_alias)
    nbl_pass_logf(ctx, "%d Identity alias(es) of initializers left tied: their initializers are graph inputs "
                  "(overridable); constant-initializers before build-training unties them", b->n_input_alias);
  return NBL_OK;
}

static nbl_status build_training_run(nbl_pass_ctx *ctx) {
  bt b;
  memset(&b, 0, sizeof b);
  b.ctx = ctx;
  b.m = ctx->model;
  nbl_status st = NBL_OK;
  /* the training ops (SoftmaxCrossEntropyLoss, Dropout in training mode)
   * need opset 12: an older model goes to 13 first (convert-opset), as
   * pack-int4 takes a model to 21 */
  const int64_t opset = nbl_model_opset(b.m, "");
  if (opset > 0 && opset < 12 && b.m->n_training == 0) st = nbl_convert_opset(ctx, 13);
  b.g = ctx->model->graph; /* after the conversion, which may rebuild it */
  if (!st) st = bt_run(&b);
  free(b.map);
  free(b.is_stat);
  free(b.p);
  free(b.upd);
  free(b.ib);
  free(b.outs);
  return st;
}

const nbl_pass_def nbl_pass_build_training = {
    .name = "build-training",
    .description = "add the training graph (TrainingInfoProto): forward in training mode, loss, "
                   "backward (each op's gradient rule), optimizer; the inference graph stays",
    .run = build_training_run,
    .options =
        {
            {"loss", NBL_OPT_STRING, "cross-entropy",
             "cross-entropy (scores [N, C, ...] vs int64 labels), mse, or output (the model's "
             "scalar output is the loss)"},
            {"label", NBL_OPT_STRING, "label", "name of the label input"},
            {"output", NBL_OPT_STRING, "", "the model output the loss reads (default: the first)"},
            {"trainable", NBL_OPT_STRING, "", "globs of trainable initializers (';' '|' or ' ' "
                                              "between them; default: every float initializer)"},
            {"frozen", NBL_OPT_STRING, "", "globs of initializers kept frozen"},
            {"optimizer", NBL_OPT_STRING, "sgd", "sgd, momentum, nesterov, adam, adamw or adagrad"},
            {"momentum", NBL_OPT_FLOAT, "0.9", "momentum / nesterov: momentum"},
            {"beta1", NBL_OPT_FLOAT, "0.9", "adam / adamw: beta1"},
            {"beta2", NBL_OPT_FLOAT, "0.999", "adam / adamw: beta2"},
            {"epsilon", NBL_OPT_FLOAT, "1e-8", "adam / adamw / adagrad: epsilon"},
            {"weight-decay", NBL_OPT_FLOAT, "0", "L2 weight decay (adamw: decoupled)"},
            {"seed", NBL_OPT_INT, "0", "seed of the first Dropout (the next get seed+1, ...)"},
            {"untie", NBL_OPT_BOOL, "1",
             "give each Identity alias of a float initializer (PyTorch's eval-mode export of equal "
             "tensors) an initializer of its own, so it trains apart as in PyTorch; an initializer "
             "read directly by several nodes stays shared"},
        },
};
