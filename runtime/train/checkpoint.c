/*
 * checkpoint.c - checkpoints and export of a training session (train.h).
 *
 * A checkpoint is the session's training model (its `work` copy, whose
 * initializers are the live parameters and state) saved with metadata_props:
 *
 *   nibble.train.format         "1"
 *   nibble.train.epoch          0-based epoch the next batch belongs to
 *   nibble.train.step_in_epoch  batches of that epoch already trained
 *   nibble.train.global_step    optimizer updates done (the schedule's position)
 *   nibble.train.data_seed      seed of the data order
 *   nibble.train.rng_seed       the session's random stream: key ...
 *   nibble.train.rng_counter    ... and position
 *   nibble.train.lr_schedule    schedule text (nbl_train_set_schedule)
 *   nibble.train.lr_base        its base rate (%.17g, exact)
 *   nibble.train.lr_total       its total updates
 *   nibble.train.user.KEY       the caller's keys (nbl_train_set_meta)
 *
 * so it is a valid ONNX model that `nibble info` and `nibble dump` show and
 * that nbl_train_session_create resumes from. Files are written atomically:
 * a temporary file `.NAME.nbl-tmp` in the same folder, fsync, rename over
 * NAME, fsync of the folder.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/train/train.h"

#define PREFIX "nibble.train."
#define USER PREFIX "user."
#define FORMAT "1"

/* ------------------------------------------------------------------ atomic writes */

nbl_status nbl_write_atomic(const char *path, const void *data, size_t len) {
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  if (!*base) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: not a file name", path);
  size_t dl = slash ? (size_t)(slash - path) : 0;
  char *dir = slash ? (dl ? strndup(path, dl) : strdup("/")) : strdup(".");
  char *tmp = malloc(strlen(path) + 16);
  if (!dir || !tmp) {
    free(dir);
    free(tmp);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  sprintf(tmp, "%.*s.%s.nbl-tmp", (int)(slash ? slash - path + 1 : 0), path, base);
  nbl_status st = NBL_OK;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    st = nbl_errorf(NBL_ERR_IO, "%s: cannot create the temporary file '%s': %s", path, tmp,
                    strerror(errno));
    goto out;
  }
  const char *p = data;
  size_t left = len;
  while (left && st == NBL_OK) {
    ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) st = nbl_errorf(NBL_ERR_IO, "%s: write failed: %s", path, n < 0 ? strerror(errno) : "no progress");
    else p += n, left -= (size_t)n;
  }
  if (st == NBL_OK && fsync(fd) != 0) st = nbl_errorf(NBL_ERR_IO, "%s: fsync failed: %s", path, strerror(errno));
  if (close(fd) != 0 && st == NBL_OK) st = nbl_errorf(NBL_ERR_IO, "%s: close failed: %s", path, strerror(errno));
  if (st == NBL_OK && rename(tmp, path) != 0)
    st = nbl_errorf(NBL_ERR_IO, "%s: cannot rename '%s' into place: %s", path, tmp, strerror(errno));
  if (st != NBL_OK) {
    unlink(tmp);
    goto out;
  }
  int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || fsync(dfd) != 0)
    st = nbl_errorf(NBL_ERR_IO, "%s: fsync of the folder '%s' failed: %s", path, dir, strerror(errno));
  if (dfd >= 0) close(dfd);
out:
  free(dir);
  free(tmp);
  return st;
}

/* Serialize m and write it atomically. */
static nbl_status save_model(const nbl_model *m, const char *path) {
  void *buf = NULL;
  size_t len = 0;
  nbl_status st = nbl_model_save_buffer(m, &buf, &len);
  if (st == NBL_OK) st = nbl_write_atomic(path, buf, len);
  free(buf);
  return st;
}

/* ------------------------------------------------------------------ metadata */

typedef struct parsed {
  nbl_train_progress prog;
  nbl_schedule sched;
  int n_user;
  const char *ukey[NBL_TRAIN_MAX_META], *uval[NBL_TRAIN_MAX_META];
} parsed;

static int u64_field(const char *v, uint64_t *out) {
  if (!v || !*v || *v == '-') return -1;
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end) return -1;
  *out = x;
  return 0;
}

static nbl_status parse_meta(const nbl_model *m, const char *label, parsed *p, int *is_ckpt) {
  memset(p, 0, sizeof *p);
  *is_ckpt = 0;
  const char *sched = NULL, *base = NULL, *total = NULL;
  struct { const char *key; uint64_t *u; int64_t *i; } num[] = {
      {PREFIX "epoch", NULL, &p->prog.epoch},
      {PREFIX "step_in_epoch", NULL, &p->prog.step_in_epoch},
      {PREFIX "global_step", NULL, &p->prog.global_step},
      {PREFIX "data_seed", &p->prog.data_seed, NULL},
      {PREFIX "rng_seed", &p->prog.rng_seed, NULL},
      {PREFIX "rng_counter", &p->prog.rng_counter, NULL},
  };
  int nn = (int)(sizeof num / sizeof num[0]), seen[8] = {0};
  for (int i = 0; i < m->n_metadata; i++) {
    const char *k = m->metadata[i].key ? m->metadata[i].key : "";
    const char *v = m->metadata[i].value ? m->metadata[i].value : "";
    if (strncmp(k, PREFIX, strlen(PREFIX))) continue;
    if (!strcmp(k, PREFIX "format")) {
      if (strcmp(v, FORMAT))
        return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: checkpoint format '%s' (this nibble reads %s)",
                          label, v, FORMAT);
      *is_ckpt = 1;
      continue;
    }
    if (!strcmp(k, PREFIX "lr_schedule")) { sched = v; continue; }
    if (!strcmp(k, PREFIX "lr_base")) { base = v; continue; }
    if (!strcmp(k, PREFIX "lr_total")) { total = v; continue; }
    if (!strncmp(k, USER, strlen(USER))) {
      if (!nbl_train_meta_key_ok(k + strlen(USER)) || p->n_user == NBL_TRAIN_MAX_META)
        return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: metadata '%s': %s", label, k,
                          p->n_user == NBL_TRAIN_MAX_META ? "too many user keys" : "not a valid key");
      p->ukey[p->n_user] = k + strlen(USER);
      p->uval[p->n_user++] = v;
      continue;
    }
    int j = 0;
    while (j < nn && strcmp(k, num[j].key)) j++;
    if (j == nn) continue; /* a key of a later format: ignored */
    uint64_t x;
    if (u64_field(v, &x) || (num[j].i && x > INT64_MAX))
      return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: metadata '%s' = '%s' is not a count", label, k, v);
    if (num[j].u) *num[j].u = x;
    else *num[j].i = (int64_t)x;
    seen[j] = 1;
  }
  if (!*is_ckpt) return NBL_OK;
  for (int j = 0; j < nn; j++)
    if (!seen[j]) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: checkpoint metadata '%s' is missing", label, num[j].key);
  if (!sched || !base || !total)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: checkpoint metadata '" PREFIX "lr_*' is missing", label);
  char *end;
  double b = strtod(base, &end);
  if (*end || end == base) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: metadata lr_base '%s'", label, base);
  uint64_t t;
  if (u64_field(total, &t)) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: metadata lr_total '%s'", label, total);
  nbl_status st = nbl_schedule_parse(sched, b, (int64_t)t, &p->sched);
  if (st) nbl_error_prefix("%s: metadata lr_schedule", label);
  return st;
}

static nbl_status commit_meta(nbl_train_session *s, const parsed *p) {
  s->prog = p->prog;
  s->sched = p->sched;
  for (int i = 0; i < s->n_meta; i++) {
    free(s->meta_key[i]);
    free(s->meta_val[i]);
    s->meta_key[i] = s->meta_val[i] = NULL;
  }
  s->n_meta = 0;
  for (int i = 0; i < p->n_user; i++) {
    nbl_status st = nbl_train_set_meta(s, p->ukey[i], p->uval[i]);
    if (st) return st;
  }
  return NBL_OK;
}

nbl_status nbl_train_read_meta(nbl_train_session *s, const nbl_model *m, const char *label,
                               int *is_ckpt) {
  parsed p;
  nbl_status st = parse_meta(m, label, &p, is_ckpt);
  if (st || !*is_ckpt) return st;
  return commit_meta(s, &p);
}

/* ------------------------------------------------------------------ save / load */

nbl_status nbl_train_save_checkpoint(nbl_train_session *s, const char *path) {
  if (!s || !path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_save_checkpoint: NULL argument");
  nbl_model *w = s->work;
  int keep = 0;
  for (int i = 0; i < w->n_metadata; i++)
    keep += !w->metadata[i].key || strncmp(w->metadata[i].key, PREFIX, strlen(PREFIX)) != 0;
  int cap = keep + 11 + s->n_meta;
  nbl_kv *kv = calloc((size_t)cap, sizeof *kv);
  char (*vals)[64] = calloc(16, sizeof *vals);
  char **ukeys = calloc((size_t)s->n_meta + 1, sizeof(char *));
  if (!kv || !vals || !ukeys) {
    free(kv);
    free(vals);
    free(ukeys);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  int n = 0;
  for (int i = 0; i < w->n_metadata; i++)
    if (!w->metadata[i].key || strncmp(w->metadata[i].key, PREFIX, strlen(PREFIX)) != 0) kv[n++] = w->metadata[i];
  const nbl_train_progress *pg = &s->prog;
  snprintf(vals[0], 64, "%" PRId64, pg->epoch);
  snprintf(vals[1], 64, "%" PRId64, pg->step_in_epoch);
  snprintf(vals[2], 64, "%" PRId64, pg->global_step);
  snprintf(vals[3], 64, "%" PRIu64, pg->data_seed);
  snprintf(vals[4], 64, "%" PRIu64, pg->rng_seed);
  snprintf(vals[5], 64, "%" PRIu64, pg->rng_counter);
  snprintf(vals[6], 64, "%.17g", s->sched.base);
  snprintf(vals[7], 64, "%" PRId64, s->sched.total);
  kv[n++] = (nbl_kv){PREFIX "format", FORMAT};
  kv[n++] = (nbl_kv){PREFIX "epoch", vals[0]};
  kv[n++] = (nbl_kv){PREFIX "step_in_epoch", vals[1]};
  kv[n++] = (nbl_kv){PREFIX "global_step", vals[2]};
  kv[n++] = (nbl_kv){PREFIX "data_seed", vals[3]};
  kv[n++] = (nbl_kv){PREFIX "rng_seed", vals[4]};
  kv[n++] = (nbl_kv){PREFIX "rng_counter", vals[5]};
  kv[n++] = (nbl_kv){PREFIX "lr_schedule", s->sched.spec};
  kv[n++] = (nbl_kv){PREFIX "lr_base", vals[6]};
  kv[n++] = (nbl_kv){PREFIX "lr_total", vals[7]};
  nbl_status st = NBL_OK;
  for (int i = 0; i < s->n_meta; i++) {
    ukeys[i] = malloc(strlen(USER) + strlen(s->meta_key[i]) + 1);
    if (!ukeys[i]) {
      st = nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      break;
    }
    sprintf(ukeys[i], "%s%s", USER, s->meta_key[i]);
    kv[n++] = (nbl_kv){ukeys[i], s->meta_val[i]};
  }
  if (st == NBL_OK) {
    /* the metadata array is swapped in for the save only: no arena growth per checkpoint */
    nbl_kv *old = w->metadata;
    int old_n = w->n_metadata;
    w->metadata = kv;
    w->n_metadata = n;
    st = save_model(w, path);
    w->metadata = old;
    w->n_metadata = old_n;
  }
  for (int i = 0; i < s->n_meta; i++) free(ukeys[i]);
  free(ukeys);
  free(vals);
  free(kv);
  if (st && !strstr(nbl_last_error(), path)) nbl_error_prefix("checkpoint %s", path);
  return st;
}

nbl_status nbl_train_load_checkpoint(nbl_train_session *s, const char *path) {
  if (!s || !path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_load_checkpoint: NULL argument");
  nbl_model *ck = NULL;
  nbl_status st = nbl_model_load(path, &ck);
  if (st) {
    nbl_error_prefix("checkpoint");
    return st;
  }
  parsed p;
  int is_ckpt = 0;
  st = parse_meta(ck, path, &p, &is_ckpt);
  if (!st && !is_ckpt)
    st = nbl_errorf(NBL_ERR_INVALID_MODEL,
                    "%s: not a nibble training checkpoint (no metadata '" PREFIX "format')", path);
  if (!st && (ck->n_training < 1 || !ck->training[0].algorithm))
    st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: checkpoint without training_info (truncated?)", path);
  if (!st) st = nbl_train_adopt(s, ck, path);
  if (!st) st = commit_meta(s, &p); /* strings of p live in ck until here */
  nbl_model_free(ck);
  return st;
}

/* ------------------------------------------------------------------ export */

static int name_used(const nbl_graph *g, const char *name) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    for (int k = 0; k < n->n_inputs; k++)
      if (n->inputs[k] != NBL_NONE && !strcmp(g->values[n->inputs[k]].name, name)) return 1;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g && name_used(n->attrs[a].g, name)) return 1;
      for (int k = 0; n->attrs[a].type == NBL_ATTR_GRAPHS && k < n->attrs[a].n; k++)
        if (name_used(n->attrs[a].graphs[k], name)) return 1;
    }
  }
  for (int i = 0; i < g->n_outputs; i++)
    if (!strcmp(g->values[g->outputs[i]].name, name)) return 1;
  return 0;
}

static int domain_used(const nbl_graph *g, const char *dom) {
  for (int i = 0; i < g->n_nodes; i++) {
    const nbl_node *n = &g->nodes[i];
    if (n->dead) continue;
    if (!strcmp(n->domain ? n->domain : "", dom)) return 1;
    for (int a = 0; a < n->n_attrs; a++) {
      if (n->attrs[a].type == NBL_ATTR_GRAPH && n->attrs[a].g && domain_used(n->attrs[a].g, dom)) return 1;
      for (int k = 0; n->attrs[a].type == NBL_ATTR_GRAPHS && k < n->attrs[a].n; k++)
        if (domain_used(n->attrs[a].graphs[k], dom)) return 1;
    }
  }
  return 0;
}

nbl_status nbl_train_export(nbl_train_session *s, const char *path) {
  if (!s || !path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_train_export: NULL argument");
  void *buf = NULL;
  size_t len = 0;
  nbl_model *x = NULL;
  nbl_status st = nbl_model_save_buffer(s->work, &buf, &len);
  if (!st) st = nbl_model_load_buffer(buf, len, path, NULL, &x);
  free(buf);
  if (st) return st;
  nbl_graph *g = x->graph;
  /* optimizer state: binding keys the inference graph does not read */
  const nbl_training_info *ti = &s->work->training[0];
  for (int pass = 0; pass < 2; pass++) {
    int nb = pass ? ti->n_update_binding : ti->n_init_binding;
    const nbl_kv *kv = pass ? ti->update_binding : ti->init_binding;
    for (int b = 0; b < nb; b++) {
      nbl_id v = nbl_graph_find(g, kv[b].key);
      if (v == NBL_NONE || (g->values[v].flags & NBL_VAL_INPUT) || name_used(g, kv[b].key)) continue;
      g->values[v].dead = true;
    }
  }
  nbl_graph_compact(g);
  x->n_training = 0;
  x->training = NULL;
  int n = 0;
  for (int i = 0; i < x->n_metadata; i++)
    if (!x->metadata[i].key || strncmp(x->metadata[i].key, PREFIX, strlen(PREFIX)) != 0)
      x->metadata[n++] = x->metadata[i];
  x->n_metadata = n;
  n = 0;
  for (int i = 0; i < x->n_opsets; i++) {
    const char *d = x->opsets[i].domain ? x->opsets[i].domain : "";
    if (!*d || !strcmp(d, "ai.onnx") || domain_used(g, d)) x->opsets[n++] = x->opsets[i];
  }
  x->n_opsets = n;
  st = save_model(x, path);
  nbl_model_free(x);
  return st;
}
