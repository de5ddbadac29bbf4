/* cmd_train.c - `nibble train`: train a model on a dataset with the training
 * runtime of the C API (nbl_train_*), through the public API only.
 *
 * MODEL is a training model (training_info, see the README "Training"), or an
 * inference model that the pass pipeline `build-training{...}` (with --passes
 * appended) turns into one; the pipeline prints and dumps as `convert` does.
 * --int4 puts quantize-int4 before build-training (the quantizers are then in
 * the forward copy and the backward goes through their straight-through
 * rule), --log4-grad[=MODE] puts quantize-grad-log4{rounding=MODE} after it,
 * and then int4-backward (the backward products of INT4 x log operands in
 * integers; same results to float rounding) unless --no-int4-backward or
 * --passes names int4-backward itself:
 *   [quantize-int4,]build-training{...}[,quantize-grad-log4{rounding=MODE}[,int4-backward]][,--passes]
 * (a training MODEL: quantize-grad-log4{rounding=MODE}[,int4-backward][,--passes];
 * --int4 needs the inference model).
 * Every input is checked before the first step (model, dataset against the
 * model's input and classes, checkpoint to resume), so bad input exits with
 * 2 before anything is written. A checkpoint holds the progress (epoch, step
 * in the epoch, global step, data seed) and the settings that decide the
 * data order and the rates (batch, last-batch policy, lr, schedule), so
 * --resume continues the interrupted run exactly.
 *
 * Metrics CSV columns (one row per --log-every steps and one per epoch):
 *   kind           "step" or "epoch"
 *   epoch          1-based epoch
 *   step           batches done in that epoch
 *   global_step    optimizer updates done
 *   lr             the rate of the last update
 *   loss           mean training loss over the steps since the last step row (step),
 *                  over the whole epoch (epoch)
 *   samples_per_s  training throughput over the same steps (this process's)
 *   test_accuracy  fraction of the test split classified right (epoch rows; empty
 *                  without a test split)
 *   seconds        wall time since this process started training
 *
 * Data-parallel (`mpirun -np N nibble train ...`, a build with MPI): every
 * rank loads the same model and joins the job (nbl_train_dist_init: rank 0's
 * weights are broadcast); each global batch of --batch samples, in the order
 * one process would use, is split into N contiguous shards; the gradients are
 * exchanged in the optimizer step; the loss and the test accuracy are summed
 * over the ranks; rank 0 alone prints, writes metrics, checkpoints and the
 * export. A checkpoint holds no rank count, so it resumes on any number of
 * ranks. Once training runs, a rank that fails stops the whole job
 * (MPI_Abort) so that no rank waits forever.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "commands.h"
#include "nibble.h"

#define CSV_HEADER "kind,epoch,step,global_step,lr,loss,samples_per_s,test_accuracy,seconds\n"

typedef struct opts {
  const char *model, *data, *optimizer, *schedule, *passes, *dump_dir, *label;
  const char *checkpoint, *resume, *metrics, *export_path, *last_batch;
  const char *log4; /* --log4-grad[=MODE]: the rounding mode, NULL when not given */
  int int4;         /* --int4 */
  int no_i4b;       /* --no-int4-backward */
  int ternary;      /* --ternary */
  const char *grad_exchange, *grad_scale;
  int no_overlap, no_error_feedback, dist_flags;
  long long bucket_kb;
  double dist_timeout;
  int print_after_all, verify_each, reference, threads, profile, profile_top;
  long long epochs, batch, ckpt_every, log_every;
  double lr, max_grad_norm, weight_decay;
  unsigned long long seed;
  int lr_given, schedule_given, batch_given, seed_given, last_given;
} opts;

static void train_usage(FILE *f) {
  fputs("usage: nibble train MODEL --data SPEC [options]\n\n"
        "Train MODEL (a training model, or an inference model made into one by the\n"
        "build-training pass) and report the test accuracy after every epoch.\n"
        "  --data SPEC             fashion-mnist (Debian package dataset-fashion-mnist),\n"
        "                          fashion-mnist:DIR, or npy:DIR (x.npy float32 [N,...], y.npy int64 [N],\n"
        "                          optional x_test.npy / y_test.npy for the test accuracy)\n"
        "  --epochs E              epochs to train in total (default 1)\n"
        "  --batch B               mini-batch size (default 64)\n"
        "  --last-batch keep|drop  the last partial batch of an epoch (default keep)\n"
        "  --lr LR                 learning rate (default 0.01)\n"
        "  --schedule S            constant | step:N:G | cosine[:MIN] | warmup:N[,REST] (default constant)\n"
        "  --optimizer O           sgd|momentum|nesterov|adam|adamw|adagrad, for build-training\n"
        "  --weight-decay X        weight decay, for build-training (adamw: decoupled)\n"
        "  --label NAME            the label input (default label)\n"
        "  --max-grad-norm X       clip the gradients to global L2 norm X\n"
        "  --seed S                seed of the data order (default 0)\n"
        "  --int4                  INT4 weights and activations: quantize-int4{activations=mse}\n"
        "                          (SAWB weights, affine activations clipped where the squared\n"
        "                          error is least, first and last layers in 8 bits) before\n"
        "                          build-training, so the forward copy quantizes every step\n"
        "  --log4-grad[=MODE]      log radix-4 gradients: quantize-grad-log4{rounding=MODE} after\n"
        "                          build-training; MODE nearest (default), tpr, stochastic or luq\n"
        "                          (first/last layers and 1x1 convolutions keep float gradients);\n"
        "                          then int4-backward: the backward products of INT4 x log codes\n"
        "                          run as integer kernels (same results to float rounding)\n"
        "  --no-int4-backward      with --log4-grad: keep those products in float\n"
        "  --passes LIST           passes after build-training (a LIST naming build-training\n"
        "                          is the whole pipeline)\n"
        "  --ternary               ternary weights, INT8 activations (BitNet b1.58): the pass\n"
        "                          quantize-ternary before build-training (training from scratch)\n"
        "  --dump-dir DIR          write NN-<pass>.onnxtxt/.dot/.onnx after every pass\n"
        "  --print-after-all       print the IR after every pass\n"
        "  --verify-each           run the verifier after every pass\n"
        "  --checkpoint FILE       save a checkpoint after every epoch (atomically)\n"
        "  --checkpoint-every N    ... and every N steps\n"
        "  --resume FILE           continue the run saved in FILE exactly\n"
        "  --metrics FILE.csv      write metrics (columns: kind,epoch,step,global_step,lr,loss,\n"
        "                          samples_per_s,test_accuracy,seconds)\n"
        "  --log-every N           steps between metrics rows (default 100)\n"
        "  --export OUT.onnx       write the trained inference model\n"
        "  --threads N             kernel threads (default: one per core; under mpirun the cores\n"
        "                          shared among the ranks of this machine)\n"
        "data-parallel training (mpirun -np N nibble train ...; --batch is the global batch):\n"
        "  --grad-exchange fp32|log4  gradient exchange: FP32 all-reduce (default), or 4-bit\n"
        "                          radix-4 log codes with error feedback, all-gathered\n"
        "  --bucket-kb N           gradient bucket size in KiB of FP32 (default 256)\n"
        "  --no-overlap            exchange after the backward pass, not during it\n"
        "  --no-error-feedback     log4: drop the rounding error instead of carrying it\n"
        "  --grad-scale tensor|bucket  log4: one scale per gradient tensor (default) or per bucket\n"
        "  --dist-timeout S        a collective that takes longer fails the job (default 120)\n"
        "  --reference             plain C reference kernels only\n"
        "  --profile[=N]           time every node of the train and optimizer steps; print the\n"
        "                          time per op type and the N slowest nodes (default 15) at the end\n"
        "exit status: 0 trained, 1 training failed, 2 bad usage or bad input\n",
        f);
}

static int parse_ll(const char *opt, const char *v, long long min, long long *out) {
  char *end;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno || *end || end == v || x < min) {
    fprintf(stderr, "nibble train: %s must be an integer >= %lld, not '%s'\n", opt, min, v);
    return 2;
  }
  *out = x;
  return 0;
}

static int parse_pos_double(const char *opt, const char *v, double *out) {
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || *end || end == v || !isfinite(x) || x <= 0) {
    fprintf(stderr, "nibble train: %s must be a number > 0, not '%s'\n", opt, v);
    return 2;
  }
  *out = x;
  return 0;
}

/* 0 ok, 2 bad usage, -1 help printed. */
static int parse_args(int argc, char **argv, opts *o) {
  *o = (opts){.epochs = 1, .batch = 64, .lr = 0.01, .log_every = 100, .schedule = "constant",
              .label = "label", .last_batch = "keep"};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      train_usage(stdout);
      return -1;
    }
    if (!strcmp(a, "--print-after-all")) { o->print_after_all = 1; continue; }
    if (!strcmp(a, "--verify-each")) { o->verify_each = 1; continue; }
    if (!strcmp(a, "--reference")) { o->reference = 1; continue; }
    if (!strcmp(a, "--profile")) { o->profile = 1, o->profile_top = 15; continue; }
    if (!strncmp(a, "--profile=", 10)) {
      long long top;
      if (parse_ll("--profile", a + 10, 0, &top)) return 2;
      o->profile = 1, o->profile_top = (int)(top > 1000 ? 1000 : top);
      continue;
    }
    if (!strcmp(a, "--int4")) { o->int4 = 1; continue; }
    if (!strcmp(a, "--log4-grad") || !strncmp(a, "--log4-grad=", 12)) {
      o->log4 = a[11] == '=' ? a + 12 : "nearest";
      if (strcmp(o->log4, "nearest") && strcmp(o->log4, "tpr") && strcmp(o->log4, "stochastic") &&
          strcmp(o->log4, "luq")) {
        fprintf(stderr, "nibble train: --log4-grad=MODE: MODE must be nearest, tpr, stochastic or luq, not '%s'\n",
                o->log4);
        return 2;
      }
      continue;
    }
    if (!strcmp(a, "--ternary")) { o->ternary = 1; continue; }
    if (!strcmp(a, "--no-int4-backward")) { o->no_i4b = 1; continue; }
    if (!strcmp(a, "--no-overlap")) { o->no_overlap = o->dist_flags = 1; continue; }
    if (!strcmp(a, "--no-error-feedback")) { o->no_error_feedback = o->dist_flags = 1; continue; }
    if (a[0] == '-' && a[1]) {
      static const char *with_value[] = {"--data", "--epochs", "--batch", "--lr", "--optimizer", "--schedule",
                                         "--seed", "--passes", "--dump-dir", "--checkpoint",
                                         "--checkpoint-every", "--resume", "--metrics", "--export",
                                         "--threads", "--label", "--max-grad-norm", "--log-every", "--weight-decay",
                                         "--last-batch", "--grad-exchange", "--bucket-kb", "--grad-scale",
                                         "--dist-timeout"};
      int known = 0;
      for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) known |= !strcmp(a, with_value[k]);
      if (!known) {
        fprintf(stderr, "nibble train: unknown option '%s'\n", a);
        train_usage(stderr);
        return 2;
      }
      if (i + 1 >= argc) {
        fprintf(stderr, "nibble train: %s needs a value\n", a);
        return 2;
      }
      const char *v = argv[++i];
      long long t;
      int rc = 0;
      if (!strcmp(a, "--data")) o->data = v;
      else if (!strcmp(a, "--epochs")) rc = parse_ll(a, v, 1, &o->epochs);
      else if (!strcmp(a, "--batch")) rc = parse_ll(a, v, 1, &o->batch), o->batch_given = 1;
      else if (!strcmp(a, "--lr")) rc = parse_pos_double(a, v, &o->lr), o->lr_given = 1;
      else if (!strcmp(a, "--max-grad-norm")) rc = parse_pos_double(a, v, &o->max_grad_norm);
      else if (!strcmp(a, "--weight-decay")) rc = parse_pos_double(a, v, &o->weight_decay);
      else if (!strcmp(a, "--schedule")) o->schedule = v, o->schedule_given = 1;
      else if (!strcmp(a, "--passes")) o->passes = v;
      else if (!strcmp(a, "--dump-dir")) o->dump_dir = v;
      else if (!strcmp(a, "--checkpoint")) o->checkpoint = v;
      else if (!strcmp(a, "--checkpoint-every")) rc = parse_ll(a, v, 1, &o->ckpt_every);
      else if (!strcmp(a, "--resume")) o->resume = v;
      else if (!strcmp(a, "--metrics")) o->metrics = v;
      else if (!strcmp(a, "--export")) o->export_path = v;
      else if (!strcmp(a, "--label")) o->label = v;
      else if (!strcmp(a, "--log-every")) rc = parse_ll(a, v, 1, &o->log_every);
      else if (!strcmp(a, "--threads")) rc = parse_ll(a, v, 1, &t), o->threads = (int)t;
      else if (!strcmp(a, "--seed")) rc = parse_ll(a, v, 0, &t), o->seed = (unsigned long long)t, o->seed_given = 1;
      else if (!strcmp(a, "--bucket-kb")) rc = parse_ll(a, v, 1, &o->bucket_kb), o->dist_flags = 1;
      else if (!strcmp(a, "--dist-timeout")) rc = parse_pos_double(a, v, &o->dist_timeout), o->dist_flags = 1;
      else if (!strcmp(a, "--grad-exchange")) {
        o->grad_exchange = v;
        o->dist_flags = 1;
        if (strcmp(v, "fp32") && strcmp(v, "log4")) {
          fprintf(stderr, "nibble train: --grad-exchange must be fp32 or log4, not '%s'\n", v);
          rc = 2;
        }
      } else if (!strcmp(a, "--grad-scale")) {
        o->grad_scale = v;
        o->dist_flags = 1;
        if (strcmp(v, "tensor") && strcmp(v, "bucket")) {
          fprintf(stderr, "nibble train: --grad-scale must be tensor or bucket, not '%s'\n", v);
          rc = 2;
        }
      } else if (!strcmp(a, "--last-batch")) {
        o->last_batch = v;
        o->last_given = 1;
        if (strcmp(v, "keep") && strcmp(v, "drop")) {
          fprintf(stderr, "nibble train: --last-batch must be keep or drop, not '%s'\n", v);
          rc = 2;
        }
      } else if (!strcmp(a, "--optimizer")) {
        static const char *names[] = {"sgd", "momentum", "nesterov", "adam", "adamw", "adagrad"};
        int ok = 0;
        for (size_t k = 0; k < 6; k++) ok |= !strcmp(v, names[k]);
        if (!ok) {
          fprintf(stderr, "nibble train: --optimizer must be sgd, momentum, nesterov, adam, adamw or adagrad, not '%s'\n", v);
          rc = 2;
        }
        o->optimizer = v;
      }
      if (rc) return rc;
      continue;
    }
    if (o->model) {
      fprintf(stderr, "nibble train: more than one MODEL given ('%s')\n", a);
      return 2;
    }
    o->model = a;
  }
  if (!o->model || !o->data) {
    fprintf(stderr, "nibble train: missing %s\n", o->model ? "--data SPEC" : "MODEL");
    train_usage(stderr);
    return 2;
  }
  int log4 = o->grad_exchange && !strcmp(o->grad_exchange, "log4");
  if ((o->no_error_feedback || o->grad_scale) && !log4) {
    fprintf(stderr, "nibble train: %s applies to --grad-exchange log4 only\n",
            o->no_error_feedback ? "--no-error-feedback" : "--grad-scale");
    return 2;
  }
  if (o->ckpt_every && !o->checkpoint) {
    fputs("nibble train: --checkpoint-every needs --checkpoint FILE\n", stderr);
    return 2;
  }
  return 0;
}

/* ------------------------------------------------------------------ the model */

/* Load MODEL and run the pipeline: build-training{...} when it is an
 * inference model, then --passes. */
static int prepare_model(const opts *o, int rank, nbl_model **out) {
  nbl_model *m = NULL;
  if (nbl_model_load(o->model, &m) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  int training = nbl_model_training_count(m) > 0;
  char *spec = NULL;
  const char *passes = o->passes ? o->passes : "";
  if (o->int4 && o->ternary) {
    fprintf(stderr, "nibble train: --int4 and --ternary both quantize the weights; give one\n");
    nbl_model_free(m);
    return 2;
  }
  if (training && o->int4) {
    fprintf(stderr, "nibble train: %s is already a training model; --int4 needs the inference model "
                    "(quantize-int4 must run before build-training, so the backward goes through the "
                    "quantizers)\n", o->model);
    nbl_model_free(m);
    return 2;
  }
  if ((o->int4 || o->log4) && strstr(passes, "build-training")) {
    fprintf(stderr, "nibble train: a --passes list naming build-training is the whole pipeline: write "
                    "quantize-int4 (before build-training) and quantize-grad-log4 (after it) into it "
                    "instead of %s\n", o->int4 ? "--int4" : "--log4-grad");
    nbl_model_free(m);
    return 2;
  }
  if (training && (o->optimizer || o->weight_decay > 0)) {
    fprintf(stderr, "nibble train: %s is already a training model (its optimizer is part of its "
                    "algorithm graph); %s applies only when build-training makes one\n", o->model,
            o->optimizer ? "--optimizer" : "--weight-decay");
    nbl_model_free(m);
    return 2;
  }
  if (training && o->ternary) {
    fprintf(stderr, "nibble train: %s is already a training model; --ternary applies only when "
                    "build-training makes one (quantize-ternary runs before it)\n", o->model);
    nbl_model_free(m);
    return 2;
  }
  if (o->no_i4b && !o->log4) {
    fprintf(stderr, "nibble train: --no-int4-backward applies with --log4-grad only\n");
    nbl_model_free(m);
    return 2;
  }
  /* int4-backward after quantize-grad-log4, unless turned off or in --passes */
  const char *i4b = o->log4 && !o->no_i4b && !strstr(passes, "int4-backward") ? ",int4-backward" : "";
  if (training && o->log4) { /* a training model: quantize its gradients, then --passes */
    size_t n = strlen(passes) + 80;
    spec = malloc(n);
    if (!spec) {
      nbl_model_free(m);
      return 1;
    }
    snprintf(spec, n, "quantize-grad-log4{rounding=%s}%s%s%s", o->log4, i4b, *passes ? "," : "", passes);
    passes = spec;
  }
  if (!training && !strstr(passes, "build-training")) {
    nbl_pipeline *probe = NULL;
    if (nbl_pipeline_parse("build-training", &probe) != NBL_OK) {
      fprintf(stderr, "nibble train: %s has no training_info (it is an inference model), and this "
                      "nibble has no build-training pass to make its training graph; give a training "
                      "model\n", o->model);
      nbl_model_free(m);
      return 2;
    }
    nbl_pipeline_free(probe);
    size_t n = strlen(passes) + strlen(o->label) + 320;
    spec = malloc(n);
    if (!spec) {
      nbl_model_free(m);
      return 1;
    }
    int k = snprintf(spec, n, "%sbuild-training",
                     o->int4 ? "quantize-int4{activations=mse}," : o->ternary ? "quantize-ternary," : "");
    const char *sep = "{";
    if (o->optimizer) k += snprintf(spec + k, n - (size_t)k, "%soptimizer=%s", sep, o->optimizer), sep = ",";
    if (o->weight_decay > 0)
      k += snprintf(spec + k, n - (size_t)k, "%sweight-decay=%.9g", sep, o->weight_decay), sep = ",";
    if (strcmp(o->label, "label")) k += snprintf(spec + k, n - (size_t)k, "%slabel=%s", sep, o->label), sep = ",";
    if (*sep == ',') k += snprintf(spec + k, n - (size_t)k, "}");
    if (o->log4) k += snprintf(spec + k, n - (size_t)k, ",quantize-grad-log4{rounding=%s}%s", o->log4, i4b);
    if (*passes) snprintf(spec + k, n - (size_t)k, ",%s", passes);
    passes = spec;
  } else if (o->ternary) { /* a whole pipeline of the caller's: quantize-ternary first */
    size_t n = strlen(passes) + 32;
    spec = malloc(n);
    if (!spec) {
      nbl_model_free(m);
      return 1;
    }
    snprintf(spec, n, "quantize-ternary,%s", passes);
    passes = spec;
  }
  if (*passes || o->dump_dir || o->print_after_all) {
    nbl_pipeline *pipe = NULL;
    if (nbl_pipeline_parse(passes, &pipe) != NBL_OK) {
      fprintf(stderr, "nibble train: %s\n", nbl_last_error());
      free(spec);
      nbl_model_free(m);
      return 2;
    }
    nbl_pipeline_options po = {.verify_each = o->verify_each, .print_after_all = o->print_after_all,
                               .dump_dir = o->dump_dir};
    FILE *null = NULL;
    if (rank > 0) { /* one rank prints and dumps */
      po.print_after_all = 0;
      po.dump_dir = NULL;
      po.log = null = fopen("/dev/null", "w");
    }
    nbl_status st = nbl_pipeline_run(pipe, m, &po);
    if (null) fclose(null);
    nbl_pipeline_free(pipe);
    if (st != NBL_OK) {
      fprintf(stderr, "nibble: %s: %s\n", o->model, nbl_last_error());
      free(spec);
      nbl_model_free(m);
      return st == NBL_ERR_INVALID_ARGUMENT || st == NBL_ERR_INVALID_MODEL || st == NBL_ERR_UNSUPPORTED ? 2 : 1;
    }
  }
  free(spec);
  if (nbl_model_training_count(m) == 0) {
    fprintf(stderr, "nibble train: %s: the pipeline did not make a training model (no training_info)\n",
            o->model);
    nbl_model_free(m);
    return 2;
  }
  *out = m;
  return 0;
}

/* ------------------------------------------------------------------ the run */

typedef struct run {
  const opts *o;
  nbl_train_session *s;
  nbl_dataset *train, *test;
  const char *xname, *yname; /* the model's data input and label */
  int64_t n, spe;            /* training samples, steps per epoch */
  int64_t batch;             /* the run's batch size and ... */
  int drop;                  /* ... last-batch policy (the checkpoint's when resuming) */
  int64_t classes;
  void *xbuf, *ybuf;
  size_t xcap, ycap;
  int64_t *perm, *tidx;
  FILE *csv;
  int tty;
  int rank, size; /* data-parallel: this process's rank, the job's ranks (0 and 1 alone) */
  double step_s;  /* seconds in train + optimizer steps (with the exchange), ... */
  double step_cpu_s; /* ... the process's CPU time in them, over ... */
  int64_t steps;  /* ... this many steps */
  double t0;
  char lrtext[64];
} run;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static double cpu_now(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static size_t dtype_size(nbl_dtype dt) {
  switch (dt) {
  case NBL_DT_DOUBLE: case NBL_DT_INT64: case NBL_DT_UINT64: return 8;
  case NBL_DT_FLOAT: case NBL_DT_INT32: case NBL_DT_UINT32: return 4;
  case NBL_DT_FLOAT16: case NBL_DT_BFLOAT16: case NBL_DT_INT16: case NBL_DT_UINT16: return 2;
  default: return 1;
  }
}

static int64_t label_at(const nbl_host_tensor *y, int64_t i) {
  switch (y->dtype) {
  case NBL_DT_INT64: return ((const int64_t *)y->data)[i];
  case NBL_DT_INT32: return ((const int32_t *)y->data)[i];
  case NBL_DT_INT16: return ((const int16_t *)y->data)[i];
  case NBL_DT_INT8: return ((const int8_t *)y->data)[i];
  case NBL_DT_UINT8: return ((const uint8_t *)y->data)[i];
  default: return -1;
  }
}

/* Gather samples idx[0..cnt) of d into the run's buffers. */
static nbl_status gather(run *r, nbl_dataset *d, const int64_t *idx, int64_t cnt, nbl_host_tensor in[2]) {
  in[0] = (nbl_host_tensor){.name = r->xname, .data = r->xbuf, .nbytes = r->xcap};
  in[1] = (nbl_host_tensor){.name = r->yname, .data = r->ybuf, .nbytes = r->ycap};
  nbl_status st = nbl_dataset_batch(d, idx, cnt, &in[0], &in[1]);
  if (st == NBL_OK) {
    int64_t n = 1;
    for (int k = 0; k < in[0].rank; k++) n *= in[0].dims[k];
    in[0].nbytes = (size_t)n * dtype_size(in[0].dtype);
    in[1].nbytes = (size_t)cnt * dtype_size(in[1].dtype);
  }
  return st;
}

/* Test accuracy in [0, 1]; -1 without a test split. Returns an exit status.
 * Data-parallel: each rank classifies a contiguous share of the test split
 * and the right answers are summed. */
/* This rank's contiguous share [*first, *end) of the test split. */
static void test_share(const run *r, int64_t *first, int64_t *end) {
  int64_t n = nbl_dataset_size(r->test), q = n / r->size, rem = n % r->size;
  *first = r->rank * q + (r->rank < rem ? r->rank : rem);
  *end = *first + q + (r->rank < rem);
}

static int evaluate(run *r, double *acc) {
  *acc = -1;
  if (!r->test) return 0;
  int64_t right = 0, B = r->batch, first, end;
  test_share(r, &first, &end);
  for (int64_t b = first; b < end; b += B) {
    int64_t cnt = end - b < B ? end - b : B;
    for (int64_t i = 0; i < cnt; i++) r->tidx[i] = b + i;
    nbl_host_tensor in[2];
    const nbl_host_tensor *out;
    if (gather(r, r->test, r->tidx, cnt, in) != NBL_OK || nbl_eval_step(r->s, 1, in, &out) != NBL_OK) {
      fprintf(stderr, "nibble: evaluation: %s\n", nbl_last_error());
      return 1;
    }
    if (out[0].dtype != NBL_DT_FLOAT || out[0].rank != 2 || out[0].dims[0] != cnt) {
      fprintf(stderr, "nibble train: output '%s' is not float [N, classes]; no accuracy\n", out[0].name);
      r->test = NULL;
      return 0;
    }
    const float *p = out[0].data;
    int64_t K = out[0].dims[1];
    for (int64_t i = 0; i < cnt; i++) {
      int64_t best = 0;
      for (int64_t k = 1; k < K; k++)
        if (p[i * K + k] > p[i * K + best]) best = k;
      right += best == label_at(&in[1], i);
    }
  }
  double sum = (double)right;
  if (r->size > 1 && nbl_train_dist_sum(r->s, &sum, 1) != NBL_OK) {
    fprintf(stderr, "nibble: evaluation: %s\n", nbl_last_error());
    return 1;
  }
  const int64_t n = nbl_dataset_size(r->test);
  *acc = n ? sum / (double)n : 0;
  return 0;
}

static nbl_status set_meta_num(nbl_train_session *s, const char *key, double v) {
  char buf[64];
  snprintf(buf, sizeof buf, "%.17g", v);
  return nbl_train_set_meta(s, key, buf);
}

static void csv_row(run *r, const char *kind, int64_t epoch, int64_t step, int64_t gstep, double lr,
                    double loss, double sps, double acc) {
  if (!r->csv) return;
  fprintf(r->csv, "%s,%lld,%lld,%lld,%.9g,%.9g,%.1f,", kind, (long long)epoch, (long long)step,
          (long long)gstep, lr, loss, sps);
  if (acc >= 0) fprintf(r->csv, "%.6f", acc);
  fprintf(r->csv, ",%.3f\n", now() - r->t0);
  fflush(r->csv);
}

static void bar(run *r, int64_t epoch, int64_t step, double loss, double sps, double eta) {
  char b[21];
  int fill = r->spe ? (int)(20 * step / r->spe) : 20;
  for (int i = 0; i < 20; i++) b[i] = i < fill ? '#' : '.';
  b[20] = 0;
  long e = (long)(eta + 0.5);
  printf("\repoch %lld/%lld [%s] %lld/%lld loss %.4f %.0f samples/s ETA %ld:%02ld:%02ld\033[K",
         (long long)epoch + 1, r->o->epochs, b, (long long)step, (long long)r->spe, loss, sps, e / 3600,
         (e / 60) % 60, e % 60);
  fflush(stdout);
}

/* The settings that decide the data order and the rates: from the checkpoint
 * when resuming (flags given must agree with it), else from the flags. */
static int settings(run *r) {
  const opts *o = r->o;
  char bt[32];
  snprintf(bt, sizeof bt, "%lld", o->batch);
  snprintf(r->lrtext, sizeof r->lrtext, "%.17g", o->lr);
  r->batch = o->batch;
  r->drop = !strcmp(o->last_batch, "drop");
  if (!o->resume) return 0;
  if (nbl_train_load_checkpoint(r->s, o->resume) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  nbl_train_progress p;
  nbl_train_get_progress(r->s, &p);
  const char *keys[4] = {"batch", "last_batch", "lr", "schedule"};
  const char *mine[4] = {bt, o->last_batch, r->lrtext, o->schedule};
  const char *flag[4] = {"--batch", "--last-batch", "--lr", "--schedule"};
  int given[4] = {o->batch_given, o->last_given, o->lr_given, o->schedule_given};
  for (int k = 0; k < 4; k++) {
    const char *v = nbl_train_get_meta(r->s, keys[k]);
    if (!v) {
      fprintf(stderr, "nibble train: %s: no '%s' setting (not written by nibble train)\n", o->resume, keys[k]);
      return 2;
    }
    if (given[k] && strcmp(v, mine[k])) {
      fprintf(stderr, "nibble train: %s was trained with %s %s; resume with the same (or leave it out)\n",
              o->resume, flag[k], v);
      return 2;
    }
  }
  if (o->seed_given && p.data_seed != o->seed) {
    fprintf(stderr, "nibble train: %s was trained with --seed %llu; resume with the same (or leave it out)\n",
            o->resume, (unsigned long long)p.data_seed);
    return 2;
  }
  const char *mg = nbl_train_get_meta(r->s, "max_grad_norm");
  if (mg && strtod(mg, NULL) != o->max_grad_norm) {
    fprintf(stderr, "nibble train: %s was trained with --max-grad-norm %s; resume with the same\n",
            o->resume, mg);
    return 2;
  }
  r->batch = atoll(nbl_train_get_meta(r->s, "batch"));
  r->drop = !strcmp(nbl_train_get_meta(r->s, "last_batch"), "drop");
  snprintf(r->lrtext, sizeof r->lrtext, "%s", nbl_train_get_meta(r->s, "lr"));
  if (r->batch < 1) {
    fprintf(stderr, "nibble train: %s: bad batch setting\n", o->resume);
    return 2;
  }
  return 0;
}

/* Check the model and the datasets, resolve the settings. Exit status. */
/* The batches a model with a fixed batch dimension (its data input's or
 * label's dimension 0 a number, not a symbol) cannot take, found before the
 * first step: each training step's share on this rank (the last, partial
 * batch too unless --last-batch drop) and each evaluation batch. 0, or 2
 * with the message. */
static int fixed_batch_check(run *r, const nbl_host_tensor *xi, const nbl_host_tensor *yi) {
  const nbl_host_tensor *t = xi->rank >= 1 && xi->dims[0] >= 0 ? xi : yi->rank >= 1 && yi->dims[0] >= 0 ? yi : NULL;
  if (!t) return 0;
  const int64_t fixed = t->dims[0], B = r->batch;
  int64_t sizes[4] = {B, r->drop ? 0 : r->n % B, 0, 0};
  const char *what[4] = {"a training batch", "the last training batch (--last-batch drop leaves it out)",
                         "an evaluation batch", "the last evaluation batch"};
  if (r->test) { /* evaluate(): this rank's share of the test split in batches of B */
    int64_t first, end;
    test_share(r, &first, &end);
    const int64_t share = end - first;
    sizes[2] = share >= B ? B : 0;
    sizes[3] = share % B;
  }
  for (int k = 0; k < 4; k++) {
    int64_t lb = 0, lc = sizes[k];
    if (k < 2 && lc > 0 && r->size > 1) nbl_train_dist_shard(r->s, sizes[k], &lb, &lc);
    if (lc > 0 && lc != fixed) {
      char fix[64];
      if (k == 0) snprintf(fix, sizeof fix, "give --batch %lld, or ", (long long)(fixed * r->size));
      else if (k == 1) snprintf(fix, sizeof fix, "give --last-batch drop, or ");
      else snprintf(fix, sizeof fix, "give a test split of a multiple of %lld samples, or ", (long long)fixed);
      fprintf(stderr,
              "nibble train: %s: input '%s' has a fixed batch dimension of %lld, but %s has %lld sample(s) "
              "here; %sexport the model with a dynamic batch axis\n",
              r->o->model, t->name ? t->name : "?", (long long)fixed, what[k], (long long)lc, fix);
      return 2;
    }
  }
  return 0;
}

static int setup(run *r) {
  const opts *o = r->o;
  int nin = nbl_train_input_count(r->s);
  nbl_host_tensor xi = {0}, yi = {0};
  for (int i = 0; i < nin; i++) {
    const char *nm = nbl_train_input_name(r->s, i);
    if (!strcmp(nm, o->label)) nbl_train_input_info(r->s, i, &yi);
    else if (!r->xname) nbl_train_input_info(r->s, i, &xi), r->xname = nm;
    else r->xname = "";
  }
  if (!yi.name || !r->xname || !*r->xname) {
    fprintf(stderr, "nibble train: %s: the training model must take one data input and the label "
                    "'%s'; its inputs are:", o->model, o->label);
    for (int i = 0; i < nin; i++) fprintf(stderr, " %s", nbl_train_input_name(r->s, i));
    fputs(yi.name ? "\n" : " (give --label NAME)\n", stderr);
    return 2;
  }
  r->yname = yi.name;
  nbl_host_tensor oi;
  r->classes = 0;
  if (nbl_eval_output_count(r->s) > 0 && nbl_eval_output_info(r->s, 0, &oi) == NBL_OK && oi.rank == 2 &&
      oi.dims[1] > 0)
    r->classes = oi.dims[1];
  int rc = settings(r);
  if (rc) return rc;
  if (nbl_dataset_open(o->data, 0, &r->train) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  int want_test = 1;
  if (!strncmp(o->data, "npy:", 4)) {
    char p[4096];
    snprintf(p, sizeof p, "%s/x_test.npy", o->data + 4);
    want_test = access(p, F_OK) == 0;
  }
  if (want_test && nbl_dataset_open(o->data, 1, &r->test) != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  if (nbl_dataset_check(r->train, &xi, &yi, r->classes) != NBL_OK ||
      (r->test && nbl_dataset_check(r->test, &xi, &yi, r->classes) != NBL_OK)) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  r->n = nbl_dataset_size(r->train);
  r->spe = r->drop ? r->n / r->batch : (r->n + r->batch - 1) / r->batch;
  if (r->spe == 0) {
    fprintf(stderr, "nibble train: %s: %lld samples make no batch of %lld with --last-batch drop\n",
            o->data, (long long)r->n, (long long)r->batch);
    return 2;
  }
  if ((rc = fixed_batch_check(r, &xi, &yi))) return rc;
  nbl_host_tensor dx, dy;
  nbl_dataset_info(r->train, &dx, &dy);
  size_t sample = dtype_size(dx.dtype);
  for (int k = 1; k < dx.rank; k++) sample *= (size_t)dx.dims[k];
  r->xcap = sample * (size_t)r->batch;
  r->ycap = dtype_size(dy.dtype) * (size_t)r->batch;
  r->xbuf = malloc(r->xcap);
  r->ybuf = malloc(r->ycap);
  r->perm = malloc(sizeof(int64_t) * (size_t)r->n);
  r->tidx = malloc(sizeof(int64_t) * (size_t)r->batch);
  if (!r->xbuf || !r->ybuf || !r->perm || !r->tidx) {
    fputs("nibble: out of memory\n", stderr);
    return 1;
  }
  if (o->resume) return 0;
  if (nbl_train_set_schedule(r->s, o->schedule, o->lr, o->epochs * r->spe) != NBL_OK) {
    fprintf(stderr, "nibble train: --schedule: %s\n", nbl_last_error());
    return 2;
  }
  nbl_train_progress p;
  nbl_train_get_progress(r->s, &p);
  p.epoch = p.step_in_epoch = p.global_step = 0;
  p.data_seed = p.rng_seed = o->seed;
  p.rng_counter = 0;
  nbl_train_set_progress(r->s, &p);
  char bt[32];
  snprintf(bt, sizeof bt, "%lld", (long long)r->batch);
  if (nbl_train_set_meta(r->s, "batch", bt) || nbl_train_set_meta(r->s, "last_batch", o->last_batch) ||
      nbl_train_set_meta(r->s, "lr", r->lrtext) || nbl_train_set_meta(r->s, "schedule", o->schedule) ||
      set_meta_num(r->s, "max_grad_norm", o->max_grad_norm) || set_meta_num(r->s, "epoch_loss_sum", 0) ||
      set_meta_num(r->s, "epoch_loss_steps", 0)) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    return 2;
  }
  return 0;
}

static int save_checkpoint(run *r, double loss_sum, int64_t loss_steps) {
  if (!r->o->checkpoint || r->rank != 0) return 0;
  if (set_meta_num(r->s, "epoch_loss_sum", loss_sum) || set_meta_num(r->s, "epoch_loss_steps", (double)loss_steps) ||
      nbl_train_save_checkpoint(r->s, r->o->checkpoint) != NBL_OK) {
    fprintf(stderr, "\nnibble: %s\n", nbl_last_error());
    return 1;
  }
  return 0;
}

/* The training loop. Exit status. */
static int train(run *r) {
  const opts *o = r->o;
  nbl_train_progress p;
  nbl_train_get_progress(r->s, &p);
  const char *ls = nbl_train_get_meta(r->s, "epoch_loss_sum"), *ln = nbl_train_get_meta(r->s, "epoch_loss_steps");
  double ep_loss = ls ? strtod(ls, NULL) : 0;
  int64_t ep_steps = ln ? atoll(ln) : 0;
  int64_t total_left = (o->epochs - p.epoch) * r->spe - p.step_in_epoch;
  double win_loss = 0, win_t = now(), ep_t = 0, done_t = 0, last_bar = 0, lr = 0, last_loss = 0;
  int64_t win_steps = 0, win_samples = 0, ep_samples = 0, done = 0;
  for (; p.epoch < o->epochs; p.epoch++, p.step_in_epoch = 0) {
    nbl_data_order(p.data_seed, p.epoch, r->n, r->perm);
    double t_ep0 = now();
    ep_t = 0;
    ep_samples = 0;
    for (; p.step_in_epoch < r->spe; p.step_in_epoch++) {
      double t1 = now(), c1 = cpu_now();
      int64_t b = p.step_in_epoch * r->batch, cnt = r->n - b < r->batch ? r->n - b : r->batch;
      int64_t lb = 0, lc = cnt; /* this rank's shard of the global batch */
      if (r->size > 1) nbl_train_dist_shard(r->s, cnt, &lb, &lc);
      nbl_host_tensor in[2];
      float loss = 0;
      if (lc > 0 && gather(r, r->train, r->perm + b + lb, lc, in) != NBL_OK) {
        fprintf(stderr, "\nnibble: %s\n", nbl_last_error());
        return 1;
      }
      lr = nbl_train_lr(r->s);
      if (nbl_train_reset_grad(r->s) || (lc > 0 && nbl_train_step(r->s, 2, in, &loss)) ||
          nbl_optimizer_step(r->s)) {
        fprintf(stderr, "\nnibble: epoch %lld step %lld: %s\n", (long long)p.epoch + 1,
                (long long)p.step_in_epoch + 1, nbl_last_error());
        return 1;
      }
      if (r->size > 1) { /* the global batch's loss: the shards' losses weighted by their sizes */
        double v = lc > 0 ? (double)loss * (double)lc / (double)cnt : 0;
        if (nbl_train_dist_sum(r->s, &v, 1) != NBL_OK) {
          fprintf(stderr, "\nnibble: epoch %lld step %lld: %s\n", (long long)p.epoch + 1,
                  (long long)p.step_in_epoch + 1, nbl_last_error());
          return 1;
        }
        loss = (float)v;
      }
      if (!isfinite(loss)) {
        fprintf(stderr, "\nnibble train: epoch %lld step %lld: the loss is %g; stopping (the last "
                        "checkpoint is kept)\n", (long long)p.epoch + 1, (long long)p.step_in_epoch + 1, loss);
        return 1;
      }
      double dt = now() - t1;
      ep_t += dt;
      done_t += dt;
      r->step_s += dt;
      r->step_cpu_s += cpu_now() - c1;
      r->steps++;
      done++;
      ep_samples += cnt;
      win_samples += cnt;
      win_loss += loss;
      ep_loss += loss;
      win_steps++;
      ep_steps++;
      last_loss = loss;
      /* the session counts global_step and rng_counter; the epoch fields are ours */
      nbl_train_progress q;
      nbl_train_get_progress(r->s, &q);
      q.epoch = p.epoch;
      q.step_in_epoch = p.step_in_epoch + 1;
      nbl_train_set_progress(r->s, &q);
      if (q.global_step % o->log_every == 0) {
        double wt = now() - win_t;
        csv_row(r, "step", p.epoch + 1, q.step_in_epoch, q.global_step, lr, win_loss / (double)win_steps,
                wt > 0 ? (double)win_samples / wt : 0, -1);
        win_loss = 0;
        win_steps = win_samples = 0;
        win_t = now();
      }
      if (o->ckpt_every && q.global_step % o->ckpt_every == 0 && save_checkpoint(r, ep_loss, ep_steps)) return 1;
      if (r->tty && (now() - last_bar > 0.1 || q.step_in_epoch == r->spe)) {
        double rate = done_t > 0 ? (double)done / done_t : 0;
        bar(r, p.epoch, q.step_in_epoch, last_loss, ep_t > 0 ? (double)ep_samples / ep_t : 0,
            rate > 0 ? (double)(total_left - done) / rate : 0);
        last_bar = now();
      }
    }
    double acc;
    if (evaluate(r, &acc)) return 1;
    double mean = ep_steps ? ep_loss / (double)ep_steps : 0, sps = ep_t > 0 ? (double)ep_samples / ep_t : 0;
    nbl_train_get_progress(r->s, &p);
    if (r->rank == 0) {
      if (r->tty) printf("\r\033[K");
      printf("epoch %lld/%lld: loss %.4f", (long long)p.epoch + 1, o->epochs, mean);
      if (acc >= 0) printf(", test accuracy %.2f%%", 100 * acc);
      printf(", %.0f samples/s, %.1f s\n", sps, now() - t_ep0);
      fflush(stdout);
    }
    csv_row(r, "epoch", p.epoch + 1, p.step_in_epoch, p.global_step, lr, mean, sps, acc);
    ep_loss = 0;
    ep_steps = 0;
    nbl_train_progress q = p;
    q.epoch = p.epoch + 1;
    q.step_in_epoch = 0;
    nbl_train_set_progress(r->s, &q);
    if (save_checkpoint(r, 0, 0)) return 1;
  }
  return 0;
}

/* One line about the data-parallel run (rank 0). */
static void dist_summary(run *r) {
  nbl_train_dist_stats st;
  nbl_train_dist_get_stats(r->s, &st);
  const char *x = r->o->grad_exchange ? r->o->grad_exchange : "fp32";
  printf("data-parallel: %d rank%s (%s), %s exchange", st.size, st.size == 1 ? "" : "s", st.transport, x);
  if (!strcmp(x, "log4"))
    printf(" (%s scales, %s error feedback)", r->o->grad_scale ? r->o->grad_scale : "tensor",
           r->o->no_error_feedback ? "without" : "with");
  printf(", %d bucket%s, %lld gradient values; per rank and step: %lld bytes payload, %.0f bytes "
         "sent (ring model)", st.n_buckets, st.n_buckets == 1 ? "" : "s", (long long)st.grad_elements,
         (long long)st.payload_bytes, st.sent_bytes);
  if (st.steps && r->steps)
    printf(", step %.2f ms (CPU %.2f ms), exchange wait %.2f ms, codec %.2f ms (CPU %.2f ms), %.1f of %d "
           "buckets sent during the backward pass", 1e3 * r->step_s / (double)r->steps,
           1e3 * r->step_cpu_s / (double)r->steps, 1e3 * st.wait_s / (double)st.steps,
           1e3 * st.codec_s / (double)st.steps, 1e3 * st.codec_cpu_s / (double)st.steps,
           (double)st.launched_early / (double)st.steps, st.n_buckets);
  printf("\n");
  fflush(stdout);
}

int nbl_cmd_train(int argc, char **argv) {
  opts o;
  int rc = parse_args(argc, argv, &o);
  if (rc) return rc < 0 ? 0 : rc;
  int local = 0, lrank = 0, launched = nbl_train_dist_launcher_size(&local, &lrank);
  if (launched > 1 && !nbl_train_dist_mpi_built()) {
    fprintf(stderr, "nibble train: started by mpirun (or another MPI launcher) as one of %d processes, "
                    "but this nibble was built without MPI, so every process would train alone; "
                    "rebuild with meson -Dmpi=enabled (Open MPI: apt-get install libopenmpi-dev)\n", launched);
    return 2;
  }
  if (launched > 1 && o.threads == 0) { /* share this machine's cores among its ranks */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    int here = local > 0 ? local : launched;
    o.threads = cores > here ? (int)(cores / here) : 1;
  }
  nbl_model *m = NULL;
  if ((rc = prepare_model(&o, lrank, &m))) return rc;
  run r = {.o = &o, .size = 1};
  nbl_train_options to = {.threads = o.threads, .reference = o.reference, .max_grad_norm = o.max_grad_norm,
                          .profile = o.profile};
  nbl_status st = nbl_train_session_create(m, &to, &r.s);
  nbl_model_free(m);
  if (st != NBL_OK) {
    fprintf(stderr, "nibble: %s\n", nbl_last_error());
    rc = st == NBL_ERR_OUT_OF_MEMORY || st == NBL_ERR_INTERNAL ? 1 : 2;
    goto out;
  }
  if (launched > 0 || o.dist_flags) {
    nbl_train_dist_options d = {
        .exchange = o.grad_exchange && !strcmp(o.grad_exchange, "log4") ? NBL_GRAD_EXCHANGE_LOG4
                                                                          : NBL_GRAD_EXCHANGE_FP32,
        .bucket_bytes = o.bucket_kb * 1024, .no_overlap = o.no_overlap,
        .no_error_feedback = o.no_error_feedback,
        .scale_per_bucket = o.grad_scale && !strcmp(o.grad_scale, "bucket"), .seed = o.seed,
        .timeout_s = o.dist_timeout};
    if (nbl_train_dist_init(r.s, &d) != NBL_OK) {
      fprintf(stderr, "nibble: %s\n", nbl_last_error());
      rc = 2;
      goto out;
    }
    r.rank = nbl_train_dist_rank(r.s);
    r.size = nbl_train_dist_size(r.s);
  }
  r.tty = r.rank == 0 && isatty(STDOUT_FILENO);
  if ((rc = setup(&r))) goto out;
  if (o.metrics && r.rank == 0) {
    r.csv = fopen(o.metrics, o.resume ? "a" : "w");
    if (!r.csv) {
      fprintf(stderr, "nibble train: %s: %s\n", o.metrics, strerror(errno));
      rc = 2;
      goto out;
    }
    if (ftell(r.csv) == 0) fputs(CSV_HEADER, r.csv);
  }
  nbl_train_progress p;
  nbl_train_get_progress(r.s, &p);
  if (r.rank == 0) {
    printf("nibble train: %s: %lld training samples, %lld test, batch %lld (%lld steps per epoch), "
           "epochs %lld, lr %g, schedule %s",
           o.model, (long long)r.n, (long long)(r.test ? nbl_dataset_size(r.test) : 0), (long long)r.batch,
           (long long)r.spe, o.epochs, strtod(r.lrtext, NULL), o.resume ? nbl_train_get_meta(r.s, "schedule") : o.schedule);
    if (r.size > 1) printf(", %d ranks (%lld samples each per batch)", r.size, (long long)(r.batch / r.size));
    if (o.resume)
      printf("; resuming at epoch %lld step %lld", (long long)p.epoch + 1, (long long)p.step_in_epoch);
    printf("\n");
    fflush(stdout);
  }
  r.t0 = now();
  if ((rc = train(&r))) {
    if (r.size > 1) { /* the other ranks would wait for this one forever */
      fprintf(stderr, "nibble train: rank %d of %d failed; stopping the job\n", r.rank, r.size);
      fflush(stderr);
      nbl_train_dist_abort(r.s, rc);
    }
    goto out;
  }
  if (o.profile && r.rank == 0) nbl_train_print_profile(r.s, stdout, o.profile_top);
  if (r.rank == 0 && (launched > 0 || o.dist_flags)) dist_summary(&r);
  if (o.export_path && r.rank == 0) {
    if (nbl_train_export(r.s, o.export_path) != NBL_OK) {
      fprintf(stderr, "nibble: %s\n", nbl_last_error());
      rc = 1;
      goto out;
    }
    printf("wrote %s\n", o.export_path);
  }
out:
  if (r.csv) fclose(r.csv);
  free(r.xbuf);
  free(r.ybuf);
  free(r.perm);
  free(r.tidx);
  nbl_dataset_free(r.train);
  nbl_dataset_free(r.test);
  nbl_train_session_free(r.s);
  return rc;
}
