/* dist_check - data-parallel training through the C API, for the 'mpi' test
 * suite (tests/train/check_mpi.py) and the 4-bit exchange experiments.
 *
 *   [mpirun -np N] dist_check MODEL --data SPEC [--steps S] [--batch B] [--lr LR]
 *       [--optimizer O] [--exchange fp32|log4] [--no-ef] [--scale-per-bucket]
 *       [--no-overlap] [--bucket-kb K] [--seed S] [--threads T] [--out FILE]
 *       [--accuracy] [--micro K] [--trace FILE]
 *
 * MODEL is an inference model (build-training{optimizer=O} makes the training
 * model) or a training model. Every step takes the next global batch of B
 * samples in the order of nbl_data_order(seed, epoch), trains this rank's
 * shard (nbl_train_dist_shard) and runs the optimizer step; then every rank
 * hashes all of its trained tensors (FNV-1a over the bytes) and the hashes
 * are compared across ranks (exchanged as 16-bit pieces through
 * nbl_train_dist_sum, which is exact for them). Rank 0 prints one line:
 *   dist_check: ranks N steps S identical_steps K loss L [accuracy A] sent_bytes X payload_bytes Y
 * --micro K trains each shard as K accumulated micro-batches and scales the
 * summed gradients by 1/K through the writable gradient views (K = 2 and
 * even shards: the same mean gradient, summed in another order - the
 * rounding-only reference for the equivalence figure).
 * Rank 0 also writes every trained tensor's float32 values, concatenated in
 * nbl_train_param order, to FILE (raw). --trace FILE: rank 0 writes the same
 * values before the first step and after every step to FILE, preceded by the tensor count (int32) and
 * each float tensor's element count (int64), so that a run can be compared
 * with another step by step and tensor by tensor. Exit 0 when the parameters were
 * bit-identical on all ranks after every step, 1 otherwise or on a failure,
 * 2 on bad usage.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"

static int fail(nbl_train_session *s, const char *what) {
  fprintf(stderr, "dist_check: rank %d: %s: %s\n", nbl_train_dist_rank(s), what, nbl_last_error());
  if (nbl_train_dist_size(s) > 1) nbl_train_dist_abort(s, 1);
  return 1;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}

static size_t esize(nbl_dtype dt) {
  return dt == NBL_DT_DOUBLE || dt == NBL_DT_INT64 ? 8 : dt == NBL_DT_FLOAT || dt == NBL_DT_INT32 ? 4 : 1;
}

int main(int argc, char **argv) {
  const char *model = NULL, *data = NULL, *out = NULL, *trace_path = NULL, *optimizer = "sgd";
  long steps = 50, batch = 64, threads = 1, micro = 1;
  double lr = 0.05;
  int accuracy = 0;
  nbl_train_dist_options d = {0};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--no-ef")) d.no_error_feedback = 1;
    else if (!strcmp(a, "--no-overlap")) d.no_overlap = 1;
    else if (!strcmp(a, "--scale-per-bucket")) d.scale_per_bucket = 1;
    else if (!strcmp(a, "--accuracy")) accuracy = 1;
    else if (a[0] != '-') model = a;
    else if (!v) {
      fprintf(stderr, "dist_check: %s needs a value\n", a);
      return 2;
    } else {
      i++;
      if (!strcmp(a, "--data")) data = v;
      else if (!strcmp(a, "--steps")) steps = atol(v);
      else if (!strcmp(a, "--batch")) batch = atol(v);
      else if (!strcmp(a, "--lr")) lr = atof(v);
      else if (!strcmp(a, "--optimizer")) optimizer = v;
      else if (!strcmp(a, "--exchange")) d.exchange = !strcmp(v, "log4") ? NBL_GRAD_EXCHANGE_LOG4 : NBL_GRAD_EXCHANGE_FP32;
      else if (!strcmp(a, "--bucket-kb")) d.bucket_bytes = 1024 * atol(v);
      else if (!strcmp(a, "--seed")) d.seed = strtoull(v, NULL, 10);
      else if (!strcmp(a, "--threads")) threads = atol(v);
      else if (!strcmp(a, "--micro")) micro = atol(v);
      else if (!strcmp(a, "--out")) out = v;
      else if (!strcmp(a, "--trace")) trace_path = v;
      else {
        fprintf(stderr, "dist_check: unknown option %s\n", a);
        return 2;
      }
    }
  }
  if (!model || !data || steps < 1 || batch < 1) {
    fprintf(stderr, "usage: dist_check MODEL --data SPEC [options] (see the source)\n");
    return 2;
  }
  nbl_model *m = NULL;
  if (nbl_model_load(model, &m)) {
    fprintf(stderr, "dist_check: %s\n", nbl_last_error());
    return 1;
  }
  if (nbl_model_training_count(m) == 0) {
    char spec[128];
    snprintf(spec, sizeof spec, "build-training{optimizer=%s}", optimizer);
    nbl_pipeline *p = NULL;
    FILE *null = fopen("/dev/null", "w");
    nbl_pipeline_options po = {.log = null};
    nbl_status st = nbl_pipeline_parse(spec, &p);
    if (!st) st = nbl_pipeline_run(p, m, &po);
    nbl_pipeline_free(p);
    if (null) fclose(null);
    if (st) {
      fprintf(stderr, "dist_check: %s\n", nbl_last_error());
      return 1;
    }
  }
  nbl_train_session *s = NULL;
  nbl_train_options to = {.threads = (int)threads};
  nbl_status st = nbl_train_session_create(m, &to, &s);
  nbl_model_free(m);
  if (st) {
    fprintf(stderr, "dist_check: %s\n", nbl_last_error());
    return 1;
  }
  if (nbl_train_dist_init(s, &d)) return fail(s, "init");
  nbl_train_set_lr(s, lr);
  int rank = nbl_train_dist_rank(s), N = nbl_train_dist_size(s);
  nbl_dataset *ds = NULL, *test = NULL;
  if (nbl_dataset_open(data, 0, &ds) || (accuracy && nbl_dataset_open(data, 1, &test))) return fail(s, "dataset");
  nbl_host_tensor xi, yi;
  const char *xname = NULL, *yname = NULL;
  for (int i = 0; i < nbl_train_input_count(s); i++) {
    const char *nm = nbl_train_input_name(s, i);
    if (!strcmp(nm, "label")) nbl_train_input_info(s, i, &yi), yname = nm;
    else nbl_train_input_info(s, i, &xi), xname = nm;
  }
  if (!xname || !yname || nbl_dataset_check(ds, &xi, &yi, 0) || (test && nbl_dataset_check(test, &xi, &yi, 0)))
    return fail(s, "dataset check");
  int64_t n = nbl_dataset_size(ds), spe = n / batch;
  if (spe < 1) return fail(s, "the dataset is smaller than one batch");
  nbl_host_tensor dx, dy;
  nbl_dataset_info(ds, &dx, &dy);
  size_t sample = 4;
  for (int k = 1; k < dx.rank; k++) sample *= (size_t)dx.dims[k];
  float *xb = malloc(sample * (size_t)batch);
  int64_t *yb = malloc(8 * (size_t)batch), *perm = malloc(8 * (size_t)n);
  double *hv = calloc((size_t)N * 4, sizeof(double));
  if (!xb || !yb || !perm || !hv) return fail(s, "out of memory");
  FILE *trace = NULL;
  if (trace_path && rank == 0) {
    if (!(trace = fopen(trace_path, "wb"))) return fail(s, "cannot write the trace file");
    int32_t nt = 0;
    for (int i = 0; i < nbl_train_param_count(s); i++) {
      nbl_host_tensor t;
      nbl_train_param(s, i, &t);
      nt += t.dtype == NBL_DT_FLOAT;
    }
    fwrite(&nt, 4, 1, trace);
    for (int i = 0; i < nbl_train_param_count(s); i++) {
      nbl_host_tensor t;
      nbl_train_param(s, i, &t);
      int64_t ne = (int64_t)(t.nbytes / 4);
      if (t.dtype == NBL_DT_FLOAT) fwrite(&ne, 8, 1, trace);
    }
  }
  for (int i = 0; trace && i < nbl_train_param_count(s); i++) {
    nbl_host_tensor t;
    nbl_train_param(s, i, &t);
    if (t.dtype == NBL_DT_FLOAT) fwrite(t.data, 4, t.nbytes / 4, trace);
  }
  long identical = 0;
  double loss_sum = 0;
  int64_t loss_n = 0;
  for (long step = 0; step < steps; step++) {
    int64_t epoch = step / spe, b = (step % spe) * batch;
    if (step % spe == 0) nbl_data_order(d.seed, epoch, n, perm);
    int64_t lb, lc;
    nbl_train_dist_shard(s, batch, &lb, &lc);
    nbl_host_tensor in[2] = {{.name = xname, .data = xb, .nbytes = sample * (size_t)batch},
                             {.name = yname, .data = yb, .nbytes = 8 * (size_t)batch}};
    float loss = 0;
    if (lc > 0 && nbl_dataset_batch(ds, perm + b + lb, lc, &in[0], &in[1])) return fail(s, "batch");
    in[0].nbytes = sample * (size_t)lc;
    in[1].nbytes = 8 * (size_t)lc;
    if (nbl_train_reset_grad(s)) return fail(s, "reset");
    if (micro > 1 && lc >= micro) { /* the shard as `micro` accumulated micro-batches, mean taken by hand */
      size_t xs = in[0].nbytes / (size_t)lc;
      for (long k = 0; k < micro; k++) {
        int64_t mb = lc * k / micro, me = lc * (k + 1) / micro;
        nbl_host_tensor mi[2] = {in[0], in[1]};
        mi[0].data = (char *)xb + xs * (size_t)mb;
        mi[0].nbytes = xs * (size_t)(me - mb);
        mi[0].dims[0] = me - mb;
        mi[1].data = yb + mb;
        mi[1].nbytes = 8 * (size_t)(me - mb);
        mi[1].dims[0] = me - mb;
        float l = 0;
        if (nbl_train_step(s, 2, mi, &l)) return fail(s, "micro step");
        loss += l * (float)(me - mb) / (float)lc;
      }
      for (int i = 0; i < nbl_train_grad_count(s); i++) {
        nbl_host_tensor g;
        if (nbl_train_grad(s, i, &g)) return fail(s, "gradient view");
        for (size_t e = 0; e < g.nbytes / 4; e++) ((float *)g.data)[e] *= 1.0f / (float)micro;
      }
    } else if (lc > 0 && nbl_train_step(s, 2, in, &loss)) {
      return fail(s, "step");
    }
    if (nbl_optimizer_step(s)) return fail(s, "step");
    double lv = lc > 0 ? (double)loss * (double)lc / (double)batch : 0;
    if (nbl_train_dist_sum(s, &lv, 1)) return fail(s, "loss sum");
    if (step >= steps - 10) loss_sum += lv, loss_n++;
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < nbl_train_param_count(s); i++) {
      nbl_host_tensor t;
      nbl_train_param(s, i, &t);
      h = fnv(h, t.data, t.nbytes);
    }
    memset(hv, 0, sizeof(double) * (size_t)N * 4);
    for (int k = 0; k < 4; k++) hv[4 * rank + k] = (double)((h >> (16 * k)) & 0xffff);
    if (nbl_train_dist_sum(s, hv, 4 * N)) return fail(s, "hash exchange");
    int same = 1;
    for (int r = 1; r < N; r++)
      for (int k = 0; k < 4; k++) same &= hv[4 * r + k] == hv[k];
    identical += same;
    for (int i = 0; trace && i < nbl_train_param_count(s); i++) {
      nbl_host_tensor t;
      nbl_train_param(s, i, &t);
      if (t.dtype == NBL_DT_FLOAT) fwrite(t.data, 4, t.nbytes / 4, trace);
    }
  }
  if (trace && fclose(trace)) return fail(s, "cannot write the trace file");
  double acc = -1;
  if (test) { /* each rank classifies a share of the test split */
    int64_t tn = nbl_dataset_size(test), right = 0, first, cnt;
    first = rank * (tn / N) + (rank < tn % N ? rank : tn % N);
    cnt = tn / N + (rank < tn % N);
    int64_t *idx = malloc(8 * (size_t)batch);
    if (!idx) return fail(s, "out of memory");
    for (int64_t b = first; b < first + cnt; b += batch) {
      int64_t c = first + cnt - b < batch ? first + cnt - b : batch;
      for (int64_t i = 0; i < c; i++) idx[i] = b + i;
      nbl_host_tensor in[2] = {{.name = xname, .data = xb, .nbytes = sample * (size_t)batch},
                               {.name = yname, .data = yb, .nbytes = 8 * (size_t)batch}};
      const nbl_host_tensor *o;
      if (nbl_dataset_batch(test, idx, c, &in[0], &in[1])) return fail(s, "test batch");
      in[0].nbytes = sample * (size_t)c;
      if (nbl_eval_step(s, 1, in, &o)) return fail(s, "eval");
      const float *lg = o[0].data;
      int64_t K = o[0].dims[1];
      for (int64_t i = 0; i < c; i++) {
        int64_t best = 0;
        for (int64_t k = 1; k < K; k++)
          if (lg[i * K + k] > lg[i * K + best]) best = k;
        right += best == yb[i];
      }
    }
    free(idx);
    double rs = (double)right;
    if (nbl_train_dist_sum(s, &rs, 1)) return fail(s, "accuracy sum");
    acc = rs / (double)tn;
  }
  nbl_train_dist_stats ds_st;
  nbl_train_dist_get_stats(s, &ds_st);
  if (rank == 0) {
    printf("dist_check: ranks %d steps %ld identical_steps %ld loss %.6f", N, steps, identical,
           loss_sum / (double)loss_n);
    if (acc >= 0) printf(" accuracy %.4f", acc);
    printf(" sent_bytes %.0f payload_bytes %lld buckets %d early %lld\n", ds_st.sent_bytes,
           (long long)ds_st.payload_bytes, ds_st.n_buckets, (long long)ds_st.launched_early);
    if (out) {
      FILE *f = fopen(out, "wb");
      for (int i = 0; f && i < nbl_train_param_count(s); i++) {
        nbl_host_tensor t;
        nbl_train_param(s, i, &t);
        if (t.dtype == NBL_DT_FLOAT) fwrite(t.data, esize(t.dtype), t.nbytes / esize(t.dtype), f);
      }
      if (!f || fclose(f)) {
        fprintf(stderr, "dist_check: cannot write %s\n", out);
        return 1;
      }
    }
  }
  free(xb);
  free(yb);
  free(perm);
  free(hv);
  nbl_dataset_free(ds);
  nbl_dataset_free(test);
  nbl_train_session_free(s);
  return identical == steps ? 0 : 1;
}
