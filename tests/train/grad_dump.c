/* grad_dump.c - helper the gradient comparison scripts drive
 * (tests/train/check_torch_grads.py):
 *   grad_dump TRAINING_MODEL OUTDIR [--lr LR] [--steps K] NAME=FILE.npy...
 * runs training_info[0].algorithm of a training model (lr = LR, default 0;
 * step = 1, 2, ... K, default K = 1) with the main graph's initializers bound
 * as its outer values and the given tensors as its inputs. After every run the
 * update_binding values are written back into the initializers (a minimal
 * training loop on the same batch). Writes the loss of the first run
 * (OUTDIR/loss.npy), every value named `<initializer>_grad` of the first run
 * (OUTDIR/<initializer>_grad.npy) and, after the last run, every updated
 * initializer (OUTDIR/<initializer>.npy). Reference kernels when NBL_REFERENCE=1.
 * Exit status: 0 ok, 1 failure (message on stderr), 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "include/nibble.h"
#include "ir/ir.h"
#include "runtime/core/exec.h"

typedef struct dump {
  const nbl_model *m;
  const char *dir;
  int written, failed, off;
} dump;

/* Runtime tensor <-> the public tensor-file API (numeric types). */
static nbl_status write_rt(const char *path, const nbl_rt_tensor *t) {
  nbl_host_tensor h = {.dtype = t->dtype, .rank = t->rank, .data = t->data, .nbytes = t->nbytes};
  for (int i = 0; i < t->rank; i++) h.dims[i] = t->dims[i];
  return nbl_tensor_write(path, &h);
}

static nbl_status read_rt(const char *path, nbl_rt_tensor *out) {
  nbl_host_tensor h;
  nbl_status st = nbl_tensor_read(path, &h);
  if (st) return st;
  st = nbl_rt_tensor_alloc(out, h.dtype, h.rank, h.dims);
  if (!st && out->nbytes == h.nbytes) memcpy(out->data, h.data, h.nbytes);
  else if (!st) st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: unexpected size", path);
  nbl_host_tensor_free(&h);
  return st;
}

static void on_value(void *user, const char *name, const nbl_rt_tensor *t) {
  dump *d = user;
  if (d->off) return;
  size_t l = strlen(name);
  if (l < 6 || strcmp(name + l - 5, "_grad") != 0) return;
  char param[1024];
  snprintf(param, sizeof param, "%.*s", (int)(l - 5), name);
  nbl_id v = nbl_graph_find(d->m->graph, param);
  if (v == NBL_NONE || !d->m->graph->values[v].init) return;
  char path[2048];
  snprintf(path, sizeof path, "%s/%s.npy", d->dir, name);
  if (write_rt(path, t) != NBL_OK) {
    fprintf(stderr, "grad_dump: %s\n", nbl_last_error());
    d->failed = 1;
  }
  d->written++;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: grad_dump TRAINING_MODEL OUTDIR NAME=FILE.npy...\n");
    return 2;
  }
  nbl_model *m = NULL;
  if (nbl_model_load(argv[1], &m) != NBL_OK) {
    fprintf(stderr, "grad_dump: %s\n", nbl_last_error());
    return 1;
  }
  if (m->n_training < 1 || !m->training[0].algorithm) {
    fprintf(stderr, "grad_dump: %s has no training algorithm graph\n", argv[1]);
    nbl_model_free(m);
    return 1;
  }
  const nbl_graph *alg = m->training[0].algorithm;
  dump d = {.m = m, .dir = argv[2]};
  const char *ref = getenv("NBL_REFERENCE");
  nbl_engine_options eo = {.threads = 2, .reference = ref && !strcmp(ref, "1"), .on_value = on_value, .user = &d};
  nbl_engine *e = NULL;
  nbl_status st = nbl_engine_create(m, alg, &eo, &e);
  float lr = 0.0f;
  int steps = 1, a = 3;
  for (; a + 1 < argc && !strncmp(argv[a], "--", 2); a += 2) {
    if (!strcmp(argv[a], "--lr")) lr = strtof(argv[a + 1], NULL);
    else if (!strcmp(argv[a], "--steps")) steps = atoi(argv[a + 1]);
  }
  int n_in = argc - a, n_init = m->graph->n_initializers;
  nbl_rt_tensor *ins = calloc((size_t)n_in + 1, sizeof *ins), *views = calloc((size_t)n_init + 1, sizeof *views);
  for (int i = 0; !st && i < n_init; i++) { /* writable copies: the updates go back into them */
    const nbl_value *val = &m->graph->values[m->graph->initializers[i]];
    if (nbl_graph_find(alg, val->name) == NBL_NONE) continue;
    nbl_rt_tensor v;
    st = nbl_rt_from_ir(val->init, &v);
    if (!st) st = nbl_rt_copy(&views[i], &v);
    if (!st) st = nbl_engine_bind(e, val->name, &views[i]);
  }
  for (int i = 0; !st && i < n_in; i++) {
    char *eq = strchr(argv[a + i], '=');
    if (!eq) {
      fprintf(stderr, "grad_dump: '%s' is not NAME=FILE\n", argv[a + i]);
      st = NBL_ERR_INVALID_ARGUMENT;
      break;
    }
    *eq = 0;
    st = read_rt(eq + 1, &ins[i]);
    if (!st) st = nbl_engine_bind(e, argv[a + i], &ins[i]);
  }
  int64_t step = 1;
  nbl_rt_tensor tl = {.dtype = NBL_DT_FLOAT, .numel = 1, .data = &lr, .nbytes = 4};
  nbl_rt_tensor ts = {.dtype = NBL_DT_INT64, .numel = 1, .data = &step, .nbytes = 8};
  if (!st) st = nbl_engine_bind(e, "lr", &tl);
  if (!st) st = nbl_engine_bind(e, "step", &ts);
  const nbl_training_info *ti = &m->training[0];
  for (step = 1; step <= steps && !st; step++) {
    st = nbl_engine_run(e);
    if (!st && step == 1) {
      char path[2048];
      snprintf(path, sizeof path, "%s/loss.npy", argv[2]);
      st = write_rt(path, nbl_engine_output(e, 0));
      d.off = 1;
    }
    for (int k = 0; !st && k < ti->n_update_binding; k++) { /* write the updates back */
      nbl_id key = nbl_graph_find(m->graph, ti->update_binding[k].key);
      int out = -1;
      for (int o = 0; o < alg->n_outputs; o++)
        if (!strcmp(alg->values[alg->outputs[o]].name, ti->update_binding[k].value)) out = o;
      int slot = -1;
      for (int i = 0; i < n_init; i++)
        if (m->graph->initializers[i] == key) slot = i;
      const nbl_rt_tensor *nv = out >= 0 ? nbl_engine_output(e, out) : NULL;
      if (!nv || slot < 0 || nv->nbytes != views[slot].nbytes) {
        fprintf(stderr, "grad_dump: update_binding '%s' -> '%s' does not fit\n", ti->update_binding[k].key,
                ti->update_binding[k].value);
        st = NBL_ERR_INVALID_MODEL;
        break;
      }
      memcpy(views[slot].data, nv->data, nv->nbytes);
    }
  }
  for (int k = 0; !st && k < ti->n_update_binding; k++) {
    nbl_id key = nbl_graph_find(m->graph, ti->update_binding[k].key);
    for (int i = 0; i < n_init && !st; i++)
      if (m->graph->initializers[i] == key) {
        char path[2048];
        snprintf(path, sizeof path, "%s/%s.npy", argv[2], ti->update_binding[k].key);
        st = write_rt(path, &views[i]);
      }
  }
  int rc = 0;
  if (st || d.failed) {
    if (st) fprintf(stderr, "grad_dump: %s\n", nbl_last_error());
    rc = 1;
  } else {
    printf("grad_dump: loss and %d gradients written to %s\n", d.written, argv[2]);
  }
  nbl_engine_free(e);
  for (int i = 0; i < n_in; i++) nbl_rt_tensor_free(&ins[i]);
  for (int i = 0; i < n_init; i++) free(views[i].data);
  free(ins);
  free(views);
  nbl_model_free(m);
  return rc;
}
