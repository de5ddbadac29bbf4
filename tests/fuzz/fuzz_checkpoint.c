/*
 * fuzz_checkpoint.c - fuzz target: training checkpoints, read the two ways a
 * user hands one to nibble (nibble train --resume, or the checkpoint as the
 * training model).
 *
 * Once per process a small training model is made with the public API (an
 * inference model input [N,4] -> BatchNormalization -> Gemm -> Relu -> Gemm
 * -> logits [N,3], through the build-training pass with Adam), a session is
 * created from it, given progress, a learning-rate schedule and user keys,
 * and saved as the reference checkpoint. Per input:
 *  1. the bytes, written to a file in a private temporary folder, go to
 *     nbl_train_load_checkpoint on that session. A failure must say why and
 *     leave the session as it was (parameters, state, progress, schedule,
 *     user keys). A success must save again, and that file must load back and
 *     save to the very same bytes. The session is then reset to the reference.
 *  2. if the bytes load as a model (nbl_model_load_buffer) with training_info
 *     and at most FUZZ_MAX_INIT_ELEMS initializer elements,
 *     nbl_train_session_create on it, under the run budget of fuzz_budget.h
 *     (creation runs the initialization graph); a failure must say why.
 * With NBL_FUZZ_WRITE_SEEDS=DIR in the environment, the first call writes the
 * seed checkpoints (the reference and variants: other optimizers, no user
 * keys, the cosine schedule) to DIR (make_corpus.sh uses it).
 */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fuzz_budget.h"
#include "fuzz_common.h"

#define FUZZ_MAX_INIT_ELEMS 4096

static char dir[64], in_path[96], out_path[96], out2_path[96];
static nbl_train_session *ref;
static void *ref_bytes; /* the reference checkpoint, to reset the session */
static size_t ref_len;

static void cleanup(void) {
  unlink(in_path);
  unlink(out_path);
  unlink(out2_path);
  if (dir[0]) rmdir(dir);
}

static nbl_id val(nbl_graph *g, const char *name) {
  nbl_id v = nbl_graph_find(g, name);
  return v != NBL_NONE ? v : nbl_graph_add_value(g, name);
}

static void init(nbl_graph *g, const char *name, int rank, const int64_t *dims, float base) {
  float buf[64];
  int64_t n = nbl_shape_numel(rank, dims);
  for (int64_t i = 0; i < n; i++) buf[i] = base + 0.125f * (float)((i * 5) % 7) - 0.375f;
  nbl_id v = val(g, name);
  nbl_graph_set_initializer(g, v, nbl_tensor_new(g->model->arena, name, NBL_DT_FLOAT, rank, dims, buf));
  nbl_type_set_tensor(g->model->arena, &g->values[v].type, NBL_DT_FLOAT, rank, dims);
}

static nbl_id node(nbl_graph *g, const char *op, int n_in, const char *const *in, const char *out) {
  nbl_id iv[5], ov = val(g, out);
  for (int i = 0; i < n_in; i++) iv[i] = val(g, in[i]);
  return nbl_graph_add_node(g, op, "", out, n_in, iv, 1, &ov);
}

/* The inference model: input [N,4] -> BN -> Gemm(3x4) -> Relu -> Gemm(3x3). */
static nbl_model *inference_model(void) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 17);
  nbl_graph *g = m->graph;
  nbl_id x = val(g, "input");
  int64_t xd[2] = {-1, 4};
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, 2, xd);
  nbl_graph_add_input(g, x);
  int64_t d4[1] = {4}, d3[1] = {3}, w1[2] = {3, 4}, w2[2] = {3, 3};
  init(g, "bn_scale", 1, d4, 1.0f);
  init(g, "bn_bias", 1, d4, 0.0f);
  init(g, "bn_mean", 1, d4, 0.0f);
  init(g, "bn_var", 1, d4, 1.0f);
  init(g, "W1", 2, w1, 0.0f);
  init(g, "b1", 1, d3, 0.0f);
  init(g, "W2", 2, w2, 0.0f);
  init(g, "b2", 1, d3, 0.0f);
  node(g, "BatchNormalization", 5, (const char *[]){"input", "bn_scale", "bn_bias", "bn_mean", "bn_var"}, "xb");
  nbl_node_set_attr_int(g, node(g, "Gemm", 3, (const char *[]){"xb", "W1", "b1"}, "h"), "transB", 1);
  node(g, "Relu", 1, (const char *[]){"h"}, "a");
  nbl_node_set_attr_int(g, node(g, "Gemm", 3, (const char *[]){"a", "W2", "b2"}, "logits"), "transB", 1);
  nbl_graph_add_output(g, val(g, "logits"));
  return m;
}

/* A session of the training model built with `optimizer`, with progress, a
 * schedule and (keys) user keys set, and one train step done (so that the
 * parameters and state are not those of the model). */
static nbl_train_session *make_session(const char *optimizer, int keys, const char *sched) {
  nbl_model *m = inference_model();
  char spec[96];
  snprintf(spec, sizeof spec, "build-training{optimizer=%s}", optimizer);
  nbl_pipeline *p = NULL;
  nbl_train_session *s = NULL;
  nbl_train_options o = {.threads = 1};
  if (nbl_pipeline_parse(spec, &p) != NBL_OK || nbl_pipeline_run(p, m, NULL) != NBL_OK ||
      nbl_train_session_create(m, &o, &s) != NBL_OK)
    fuzz_fail("the reference training model: %s", nbl_last_error());
  nbl_pipeline_free(p);
  nbl_model_free(m);
  float x[8] = {0.5f, -1, 2, 0.25f, 1, 1.5f, -0.5f, 0}, loss;
  int64_t y[2] = {2, 0};
  nbl_host_tensor in[2] = {
      {.name = "input", .dtype = NBL_DT_FLOAT, .rank = 2, .dims = {2, 4}, .data = x, .nbytes = sizeof x},
      {.name = "label", .dtype = NBL_DT_INT64, .rank = 1, .dims = {2}, .data = y, .nbytes = sizeof y}};
  if (nbl_train_set_schedule(s, sched, 0.01, 100) != NBL_OK || nbl_train_step(s, 2, in, &loss) != NBL_OK ||
      nbl_optimizer_step(s) != NBL_OK)
    fuzz_fail("the reference training step: %s", nbl_last_error());
  nbl_train_progress pg;
  nbl_train_get_progress(s, &pg);
  pg.epoch = 3;
  pg.step_in_epoch = 7;
  pg.data_seed = 42;
  nbl_train_set_progress(s, &pg);
  if (keys && (nbl_train_set_meta(s, "batch", "2") != NBL_OK || nbl_train_set_meta(s, "note", "") != NBL_OK))
    fuzz_fail("user keys: %s", nbl_last_error());
  return s;
}

static void *read_all(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) fuzz_fail("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  void *b = malloc(n > 0 ? (size_t)n : 1);
  if (!b || (n > 0 && fread(b, 1, (size_t)n, f) != (size_t)n)) fuzz_fail("cannot read %s", path);
  fclose(f);
  *len = (size_t)n;
  return b;
}

static void put_file(const char *path, const void *d, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(d, 1, n, f) != n) || fclose(f) != 0) fuzz_fail("cannot write %s", path);
}

static void write_seeds(const char *seed_dir) {
  static const struct { const char *opt, *sched; int keys; } v[] = {
      {"adam", "warmup:5,cosine:0.001", 1}, {"sgd", "constant", 0},
      {"momentum", "step:10:0.5", 1},       {"adagrad", "cosine", 0},
  };
  char p[256];
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
    nbl_train_session *s = make_session(v[i].opt, v[i].keys, v[i].sched);
    snprintf(p, sizeof p, "%s/%s.ckpt", seed_dir, v[i].opt);
    if (nbl_train_save_checkpoint(s, p) != NBL_OK) fuzz_fail("seed %s: %s", p, nbl_last_error());
    nbl_train_session_free(s);
  }
}

/* Everything a failed load must leave alone. */
typedef struct snapshot {
  nbl_train_progress pg;
  double lr;
  char *batch, *note; /* copies: the session's strings change with a load */
  size_t n;
  unsigned char *bytes;
} snapshot;

static void take(nbl_train_session *s, snapshot *sn) {
  memset(sn, 0, sizeof *sn);
  nbl_train_get_progress(s, &sn->pg);
  sn->lr = nbl_train_lr(s);
  const char *b = nbl_train_get_meta(s, "batch"), *n = nbl_train_get_meta(s, "note");
  sn->batch = b ? strdup(b) : NULL;
  sn->note = n ? strdup(n) : NULL;
  for (int i = 0; i < nbl_train_param_count(s); i++) {
    nbl_host_tensor t;
    if (nbl_train_param(s, i, &t) != NBL_OK) fuzz_fail("param %d: %s", i, nbl_last_error());
    sn->bytes = realloc(sn->bytes, sn->n + t.nbytes);
    if (!sn->bytes) fuzz_fail("out of memory");
    memcpy(sn->bytes + sn->n, t.data, t.nbytes);
    sn->n += t.nbytes;
  }
}

static void drop(snapshot *sn) {
  free(sn->bytes);
  free(sn->batch);
  free(sn->note);
}

static int same_str(const char *a, const char *b) { return (!a && !b) || (a && b && !strcmp(a, b)); }

static int same(const snapshot *a, const snapshot *b) {
  return !memcmp(&a->pg, &b->pg, sizeof a->pg) && a->lr == b->lr && same_str(a->batch, b->batch) &&
         same_str(a->note, b->note) && a->n == b->n && !memcmp(a->bytes, b->bytes, a->n);
}

static void setup(void) {
  snprintf(dir, sizeof dir, "%s/nbl-fuzz-ckpt-%ld", fuzz_tmp_dir(), (long)getpid());
  if (mkdir(dir, 0700) != 0 && access(dir, W_OK) != 0) fuzz_fail("cannot create %s", dir);
  snprintf(in_path, sizeof in_path, "%s/in.ckpt", dir);
  snprintf(out_path, sizeof out_path, "%s/out.ckpt", dir);
  snprintf(out2_path, sizeof out2_path, "%s/out2.ckpt", dir);
  atexit(cleanup);
  const char *seeds = getenv("NBL_FUZZ_WRITE_SEEDS");
  if (seeds) write_seeds(seeds);
  ref = make_session("adam", 1, "warmup:5,cosine:0.001");
  if (nbl_train_save_checkpoint(ref, out_path) != NBL_OK) fuzz_fail("reference: %s", nbl_last_error());
  ref_bytes = read_all(out_path, &ref_len);
}

static int64_t init_elems(const nbl_graph *g) {
  int64_t n = 0;
  for (int i = 0; i < g->n_initializers; i++) {
    const nbl_tensor *t = g->values[g->initializers[i]].init;
    int64_t k = t ? nbl_tensor_numel(t) : 0;
    if (k < 0 || k > INT64_MAX - n) return INT64_MAX;
    n += k;
  }
  return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (!ref) setup();
  snapshot before, after;
  take(ref, &before);
  put_file(in_path, data, size);
  if (nbl_train_load_checkpoint(ref, in_path) != NBL_OK) {
    if (!nbl_last_error()[0]) fuzz_fail("a failed load left no message");
    take(ref, &after);
    if (!same(&before, &after)) fuzz_fail("a failed load changed the session");
    drop(&after);
  } else {
    /* saved again, loaded back, saved to the same bytes */
    if (nbl_train_save_checkpoint(ref, out_path) != NBL_OK)
      fuzz_fail("a loaded checkpoint does not save: %s", nbl_last_error());
    take(ref, &after);
    if (nbl_train_load_checkpoint(ref, out_path) != NBL_OK)
      fuzz_fail("a saved checkpoint does not load: %s", nbl_last_error());
    snapshot again;
    take(ref, &again);
    if (!same(&after, &again)) fuzz_fail("the session changed through save and load");
    if (nbl_train_save_checkpoint(ref, out2_path) != NBL_OK)
      fuzz_fail("a reloaded checkpoint does not save: %s", nbl_last_error());
    size_t l1, l2;
    void *b1 = read_all(out_path, &l1), *b2 = read_all(out2_path, &l2);
    if (l1 != l2 || memcmp(b1, b2, l1) != 0)
      fuzz_fail("saving the reloaded checkpoint gives other bytes (%zu vs %zu)", l1, l2);
    free(b1);
    free(b2);
    drop(&after);
    drop(&again);
    /* back to the reference for the next input */
    put_file(in_path, ref_bytes, ref_len);
    if (nbl_train_load_checkpoint(ref, in_path) != NBL_OK) fuzz_fail("reset: %s", nbl_last_error());
  }
  drop(&before);

  /* the checkpoint as a training model */
  nbl_model *m = NULL;
  if (nbl_model_load_buffer(data, size, "fuzz.ckpt", NULL, &m) != NBL_OK) return 0;
  if (m->n_training > 0 && init_elems(m->graph) <= FUZZ_MAX_INIT_ELEMS) {
    nbl_train_session *s = NULL;
    nbl_train_options o = {.threads = 1, .reference = 1};
    budget_start();
    nbl_status st = nbl_train_session_create(m, &o, &s);
    budget.active = 0;
    if (st != NBL_OK) {
      if (s) fuzz_fail("a failed session_create returned a session");
      if (!nbl_last_error()[0]) fuzz_fail("session_create failed without a message");
    }
    nbl_train_session_free(s);
  }
  nbl_model_free(m);
  return 0;
}
