/* bench_ternary_ops.c - throughput of one Gemm or Conv in FP32, in INT4 and
 * with ternary weights, each as nibble runs it: a one-node FP32 model, then
 * the same after `quantize-int4{skip-first-last=0},pack-int4` and after
 * `quantize-ternary{skip-first-last=0},pack-ternary` (the fused integer
 * kernels: INT4 x INT4, and INT8 x ternary).
 *
 *   BUILD/bench/bench_ternary_ops [threads] [runs]
 *
 * Each line: the case, milliseconds per run (the best of `runs` after a
 * warm-up: the machine is shared, the minimum is the least disturbed) and
 * GOP/s (2 * multiply-accumulates) of FP32, INT4 and ternary, and the ratios
 * ternary / INT4 and ternary / FP32 of the times (below 1: ternary faster).
 * The kernel variant is the CPU's best unless NBL_ISA caps it. Markdown. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ir/ir.h"
#include "nibble.h"

static uint32_t rng = 17;
static float frand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 17;
  rng ^= rng << 5;
  return (float)(rng >> 8) / 8388608.0f - 1.0f;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

typedef struct bcase {
  const char *what;
  int conv;
  int64_t xd[4]; /* Gemm: [M, K]; Conv: [N, C, H, W] */
  int64_t wd[4]; /* Gemm: [N, K] (transB); Conv: [M, C, k, k] */
  int64_t pad;
} bcase;

/* The FP32 one-node model of case c. */
static nbl_model *model_of(const bcase *c) {
  nbl_model *m = nbl_model_new();
  nbl_model_set_opset(m, "", 13);
  nbl_graph *g = m->graph;
  nbl_id x = nbl_graph_add_value(g, "x");
  nbl_type_set_tensor(m->arena, &g->values[x].type, NBL_DT_FLOAT, c->conv ? 4 : 2, c->xd);
  nbl_graph_add_input(g, x);
  int64_t wn = nbl_shape_numel(c->conv ? 4 : 2, c->wd);
  float *w = malloc(sizeof(float) * (size_t)wn), *b = malloc(sizeof(float) * (size_t)c->wd[0]);
  for (int64_t i = 0; i < wn; i++) w[i] = 0.1f * frand();
  for (int64_t i = 0; i < c->wd[0]; i++) b[i] = 0.1f * frand();
  nbl_id wv = nbl_graph_add_value(g, "w"), bv = nbl_graph_add_value(g, "b");
  nbl_graph_set_initializer(g, wv, nbl_tensor_new(m->arena, "w", NBL_DT_FLOAT, c->conv ? 4 : 2, c->wd, w));
  nbl_graph_set_initializer(g, bv, nbl_tensor_new(m->arena, "b", NBL_DT_FLOAT, 1, c->wd, b));
  free(w);
  free(b);
  nbl_id y = nbl_graph_add_value(g, "y"), in[3] = {x, wv, bv};
  nbl_id n = nbl_graph_add_node(g, c->conv ? "Conv" : "Gemm", "", "op", 3, in, 1, &y);
  if (c->conv) {
    int64_t pads[4] = {c->pad, c->pad, c->pad, c->pad};
    nbl_node_set_attr_ints(g, n, "pads", 4, pads);
  } else {
    nbl_node_set_attr_int(g, n, "transB", 1);
  }
  nbl_graph_add_output(g, y);
  return m;
}

/* Best milliseconds of `runs` runs of m on x (after one warm-up run). */
static double time_model(nbl_model *m, const bcase *c, const float *x, int threads, int runs) {
  nbl_session_options opt = {.threads = threads};
  nbl_session *s = NULL;
  nbl_host_tensor in;
  memset(&in, 0, sizeof in);
  in.name = "x";
  in.dtype = NBL_DT_FLOAT;
  in.rank = c->conv ? 4 : 2;
  for (int i = 0; i < in.rank; i++) in.dims[i] = c->xd[i];
  in.data = (void *)x;
  in.nbytes = sizeof(float) * (size_t)nbl_shape_numel(in.rank, c->xd);
  const nbl_host_tensor *out;
  if (nbl_session_create(m, &opt, &s) || nbl_session_run(s, 1, &in, &out)) {
    fprintf(stderr, "bench_ternary_ops: %s: %s\n", c->what, nbl_last_error());
    exit(1);
  }
  double best = 1e30;
  for (int r = 0; r < runs; r++) {
    double t0 = now_ms();
    nbl_session_run(s, 1, &in, &out);
    double t = now_ms() - t0;
    best = t < best ? t : best;
  }
  nbl_session_free(s);
  return best;
}

static nbl_model *quantized(const bcase *c, const char *passes) {
  nbl_model *m = model_of(c);
  nbl_pipeline *p = NULL;
  if (nbl_pipeline_parse(passes, &p) || nbl_pipeline_run(p, m, &(nbl_pipeline_options){0})) {
    fprintf(stderr, "bench_ternary_ops: %s: %s\n", passes, nbl_last_error());
    exit(1);
  }
  nbl_pipeline_free(p);
  return m;
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1, runs = argc > 2 ? atoi(argv[2]) : 20;
  if (threads < 1 || runs < 1 || runs > 100000) {
    fprintf(stderr, "usage: bench_ternary_ops [threads] [runs]\n");
    return 2;
  }
  static const bcase cases[] = {
      {"Gemm 1 x 4096 -> 4096 (a vector)", 0, {1, 4096}, {4096, 4096}, 0},
      {"Gemm 64 x 2048 -> 2048", 0, {64, 2048}, {2048, 2048}, 0},
      {"Conv 3x3 64 -> 64, 56x56", 1, {1, 64, 56, 56}, {64, 64, 3, 3}, 1},
      {"Conv 3x3 256 -> 256, 14x14", 1, {1, 256, 14, 14}, {256, 256, 3, 3}, 1},
      {"Conv 3x3 512 -> 512, 7x7", 1, {1, 512, 7, 7}, {512, 512, 3, 3}, 1},
      {"Conv 1x1 96 -> 576, 14x14", 1, {1, 96, 14, 14}, {576, 96, 1, 1}, 0},
  };
  printf("threads %d, best of %d runs%s%s\n\n", threads, runs, getenv("NBL_ISA") ? ", NBL_ISA=" : "",
         getenv("NBL_ISA") ? getenv("NBL_ISA") : "");
  printf("| case | FP32 ms | INT4 ms | ternary ms | FP32 GOP/s | INT4 GOP/s | ternary GOP/s | "
         "ternary / INT4 | ternary / FP32 |\n|---|---|---|---|---|---|---|---|---|\n");
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const bcase *c = &cases[i];
    int64_t xn = nbl_shape_numel(c->conv ? 4 : 2, c->xd);
    float *x = malloc(sizeof(float) * (size_t)xn);
    for (int64_t k = 0; k < xn; k++) x[k] = frand();
    double macs;
    if (c->conv) {
      int64_t oh = c->xd[2] + 2 * c->pad - c->wd[2] + 1, ow = c->xd[3] + 2 * c->pad - c->wd[3] + 1;
      macs = (double)c->xd[0] * (double)(c->wd[0] * c->wd[1] * c->wd[2] * c->wd[3]) * (double)(oh * ow);
    } else {
      macs = (double)c->xd[0] * (double)c->xd[1] * (double)c->wd[0];
    }
    nbl_model *m32 = model_of(c);
    nbl_model *m4 = quantized(c, "quantize-int4{skip-first-last=0},pack-int4");
    nbl_model *mt = quantized(c, "quantize-ternary{skip-first-last=0},pack-ternary");
    double t32 = time_model(m32, c, x, threads, runs), t4 = time_model(m4, c, x, threads, runs),
           tt = time_model(mt, c, x, threads, runs);
    printf("| %s | %.3f | %.3f | %.3f | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n", c->what, t32, t4,
           tt, 2e-6 * macs / t32, 2e-6 * macs / t4, 2e-6 * macs / tt, tt / t4, tt / t32);
    fflush(stdout);
    nbl_model_free(m32);
    nbl_model_free(m4);
    nbl_model_free(mt);
    free(x);
  }
  return 0;
}
