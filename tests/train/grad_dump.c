/* grad_dump.c - helper the gradient comparison scripts drive
 * (tests/train/check_torch_grads.py):
 *   grad_dump TRAINING_MODEL OUTDIR NAME=FILE.npy...
 * runs training_info[0].algorithm of a training model once (lr = 0, step = 1)
 * with the main graph's initializers bound as its outer values and the given
 * tensors as its inputs, and writes the loss (OUTDIR/loss.npy) and every value
 * named `<initializer>_grad` (OUTDIR/<initializer>_grad.npy). Reference
 * kernels when NBL_REFERENCE=1.
 * Exit status: 0 ok, 1 failure (message on stderr), 2 bad usage. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ir/ir.h"
#include "runtime/core/exec.h"

typedef struct dump {
  const nbl_model *m;
  const char *dir;
  int written, failed;
} dump;

static void on_value(void *user, const char *name, const nbl_rt_tensor *t) {
  dump *d = user;
  size_t l = strlen(name);
  if (l < 6 || strcmp(name + l - 5, "_grad") != 0) return;
  char param[1024];
  snprintf(param, sizeof param, "%.*s", (int)(l - 5), name);
  nbl_id v = nbl_graph_find(d->m->graph, param);
  if (v == NBL_NONE || !d->m->graph->values[v].init) return;
  char path[2048];
  snprintf(path, sizeof path, "%s/%s.npy", d->dir, name);
  if (nbl_rt_write_file(path, t, NULL) != NBL_OK) {
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
  int n_in = argc - 3;
  nbl_rt_tensor *ins = calloc((size_t)n_in + 1, sizeof *ins), *views = calloc((size_t)m->graph->n_initializers + 1, sizeof *views);
  for (int i = 0; !st && i < m->graph->n_initializers; i++) {
    const nbl_value *val = &m->graph->values[m->graph->initializers[i]];
    if (nbl_graph_find(alg, val->name) == NBL_NONE) continue;
    st = nbl_rt_from_ir(val->init, &views[i]);
    if (!st) st = nbl_engine_bind(e, val->name, &views[i]);
  }
  for (int i = 0; !st && i < n_in; i++) {
    char *eq = strchr(argv[3 + i], '=');
    if (!eq) {
      fprintf(stderr, "grad_dump: '%s' is not NAME=FILE\n", argv[3 + i]);
      st = NBL_ERR_INVALID_ARGUMENT;
      break;
    }
    *eq = 0;
    st = nbl_rt_read_file(eq + 1, &ins[i], NULL);
    if (!st) st = nbl_engine_bind(e, argv[3 + i], &ins[i]);
  }
  float lr = 0.0f;
  int64_t step = 1;
  nbl_rt_tensor tl = {.dtype = NBL_DT_FLOAT, .numel = 1, .data = &lr, .nbytes = 4};
  nbl_rt_tensor ts = {.dtype = NBL_DT_INT64, .numel = 1, .data = &step, .nbytes = 8};
  if (!st) st = nbl_engine_bind(e, "lr", &tl);
  if (!st) st = nbl_engine_bind(e, "step", &ts);
  if (!st) st = nbl_engine_run(e);
  if (!st) {
    char path[2048];
    snprintf(path, sizeof path, "%s/loss.npy", argv[2]);
    st = nbl_rt_write_file(path, nbl_engine_output(e, 0), NULL);
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
  free(ins);
  free(views);
  nbl_model_free(m);
  return rc;
}
