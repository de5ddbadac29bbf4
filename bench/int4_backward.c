/* int4_backward.c - the integer backward products of 4-bit training against
 * the float32 ones, at the layer sizes of LeNet-5 and ResNet-8 (the shipped
 * models, batch 64): for each Conv its ConvGrad (dX when the layer's input
 * is not the data, dW, dB), for each Gemm its two products dX = dY * W and
 * dW = dY^T * X.
 *
 *   ninja -C BUILD bench/bench_int4_backward && BUILD/bench/bench_int4_backward [threads] [runs] [layer]
 * (layer: only the layer of that number, 1-based in the order below, for profiling)
 *
 * Columns, milliseconds (the best of `runs` after a warm-up; the machine is
 * shared, the minimum is the least disturbed; with one thread, CPU time of
 * the thread):
 *   f32      com.microsoft ConvGrad's fast float32 kernel / Gemm's (nbl_sgemm)
 *   int op   ai.nibble Int4LogConvGrad / Int4LogGemm on the same quantized
 *            float operands: codes recovered from the floats, integer
 *            products, one rescale per output (what a training step runs)
 *   int core the integer products alone on ready codes (nbl_i4b_conv_grad /
 *            nbl_i4b_matmul), for the cost of the code recovery
 * and the ratios f32 / int. Operands: X and W INT4 (QuantizeInt4 math,
 * runtime/formats/int4.h), dY radix-4 log codes with 3 exponent bits
 * (runtime/formats/log.h). The variant is the CPU's best unless NBL_ISA caps it. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "grad_check.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/ops/grad_int4.h"

static int g_threads = 1, g_runs = 5, g_only = 0, g_layer = 0; /* g_only > 0: only that layer (1-based) */

/* Single-threaded runs are timed in the thread's CPU time (the machine is
 * shared: time spent descheduled is left out); others in wall time. */
static double now_ms(void) {
  struct timespec ts;
  clock_gettime(g_threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static double best_of(double *t, int n) {
  double b = t[0];
  for (int i = 1; i < n; i++) b = t[i] < b ? t[i] : b;
  return b;
}

/* One node (domain, op) on ins, outputs want; the best time of g_runs. */
static double time_node(const char *dom, const char *op, int opset, const attr *a, int n_in, tens *in, int n_out,
                        const int *want) {
  runner *r = runner_new(dom, op, opset, a, n_in, in, n_out, want, 0);
  nbl_session_free(r->s);
  nbl_session_options opt = {.threads = g_threads};
  if (nbl_session_create(r->m, &opt, &r->s) || runner_run(r, in)) {
    fprintf(stderr, "%s: %s\n", op, nbl_last_error());
    exit(1);
  }
  double t[64];
  for (int i = 0; i < g_runs; i++) {
    double t0 = now_ms();
    runner_run(r, in);
    t[i] = now_ms() - t0;
  }
  runner_free(r);
  return best_of(t, g_runs);
}

/* Quantize in place; the codes (q - z or the log integer form) and their max. */
static float q4(tens *x, int16_t *codes, int32_t *mx) {
  nbl_q4_config cfg;
  nbl_q4_config_default(&cfg);
  nbl_q4_params p;
  const char *why;
  float *v = x->data;
  nbl_q4_choose(&cfg, v, (size_t)x->n, 0, &p, &why);
  int8_t *q = malloc((size_t)x->n);
  nbl_q4_quantize_codes(&cfg, &p, v, q, (size_t)x->n, 0);
  nbl_q4_fake_quant(&cfg, &p, v, v, (size_t)x->n, 0);
  *mx = 0;
  for (int64_t i = 0; i < x->n; i++) {
    codes[i] = (int16_t)(q[i] - p.zero);
    *mx = abs(codes[i]) > *mx ? abs(codes[i]) : *mx;
  }
  free(q);
  return p.scale;
}

static void logq(tens *x, int16_t *codes, int32_t *mx) {
  nbl_log_config cfg;
  nbl_log_config_default(&cfg);
  nbl_log_params p;
  float *v = x->data;
  for (int64_t i = 0; i < x->n; i++) v[i] = (float)(pow(10.0, -3.0 * gc_rand()) * (gc_rand() < 0.5 ? -1 : 1));
  nbl_log_choose(&cfg, v, (size_t)x->n, &p);
  *mx = 0;
  for (int64_t i = 0; i < x->n; i++) {
    int c = nbl_log_code(&cfg, &p, v[i], (uint64_t)i);
    v[i] = nbl_log_value(&cfg, &p, c);
    codes[i] = (int16_t)nbl_log_code_int(&cfg, c);
    *mx = abs(codes[i]) > *mx ? abs(codes[i]) : *mx;
  }
}

static double tot_f, tot_i, tot_c;

static void row(const char *model, const char *what, double f, double i, double c) {
  printf("| %-7s | %-40s | %8.3f | %8.3f | %8.3f | %5.2fx | %5.2fx |\n", model, what, f, i, c, f / i, f / c);
  fflush(stdout);
  tot_f += f;
  tot_i += i;
  tot_c += c;
}

/* ConvGrad of Conv X [64, C, H, H] * W [M, C, K, K], stride s, pad p. */
static void conv(const char *model, int64_t C, int64_t H, int64_t M, int64_t K, int64_t s, int64_t p, int want_dx) {
  if (g_only && ++g_layer != g_only) return;
  const int64_t N = 64, O = (H + 2 * p - K) / s + 1;
  tens x = t_rand(NBL_DT_FLOAT, -1, 2, DIMS(N, C, H, H)), w = t_rand(NBL_DT_FLOAT, -0.5, 0.5, DIMS(M, C, K, K));
  tens dy = t_new(NBL_DT_FLOAT, DIMS(N, M, O, O));
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)x.n), *wq = malloc(sizeof(int16_t) * (size_t)w.n),
          *dq = malloc(sizeof(int16_t) * (size_t)dy.n);
  int32_t xm, wm, dm;
  float sx = q4(&x, xq, &xm), sw = q4(&w, wq, &wm);
  logq(&dy, dq, &dm);
  attr a[5] = {AV("kernel_shape", K, K), AV("strides", s, s), AV("pads", p, p, p, p), AEND};
  tens in[5] = {dy, x, w, t_scalar(NBL_DT_FLOAT, sx), t_scalar(NBL_DT_FLOAT, sw)};
  int want[3] = {want_dx, 1, 1};
  double f = time_node("com.microsoft", "ConvGrad", 1, a, 3, in, 3, want);
  long runs = nbl_i4b_integer_runs();
  double i = time_node("ai.nibble", "Int4LogConvGrad", 1, a, 5, in, 3, want);
  if (nbl_i4b_integer_runs() == runs) fprintf(stderr, "warning: the integer path was not taken\n");
  /* the integer kernel alone, same threads (a one-node session to lend its pool) */
  nbl_conv_geom g = {.ns = 2, .N = N, .C = C, .M = M, .group = 1, .in = {H, H}, .k = {K, K}, .s = {s, s},
                     .d = {1, 1}, .pb = {p, p}, .pe = {p, p}, .out = {O, O}, .in_sz = H * H, .k_sz = K * K,
                     .out_sz = O * O};
  float *dx = malloc(sizeof(float) * (size_t)x.n), *dw = malloc(sizeof(float) * (size_t)w.n),
        *db = malloc(sizeof(float) * (size_t)M);
  nbl_i4b_conv_out o = {.dx = want_dx ? dx : NULL, .dw = dw, .db = db, .dx_scale = 1, .dw_scale = 1, .db_scale = 1};
  double t[64] = {0};
  nbl_i4b_isa isa = nbl_i4b_best_isa();
  for (int r = -1; r < g_runs; r++) {
    double t0 = now_ms();
    nbl_i4b_conv_grad(NULL, isa, &g, dq, dm, xq, xm, wq, wm, &o);
    if (r >= 0) t[r] = now_ms() - t0;
  }
  double c = best_of(t, g_runs);
  char what[96];
  snprintf(what, sizeof what, "Conv %lldx%lldx%lld -> %lld, k%lld s%lld%s", (long long)C, (long long)H, (long long)H,
           (long long)M, (long long)K, (long long)s, want_dx ? "" : " (no dX)");
  row(model, what, f, i, g_threads == 1 ? c : NAN);
  free(dx);
  free(dw);
  free(db);
  free(xq);
  free(wq);
  free(dq);
  t_free(&x);
  t_free(&w);
  t_free(&dy);
  t_free(&in[3]);
  t_free(&in[4]);
}

/* The two products of Gemm Y [64, out] = X [64, in] * W^T (W [out, in]). */
static void fc(const char *model, int64_t in_f, int64_t out_f) {
  if (g_only && ++g_layer != g_only) return;
  const int64_t N = 64;
  tens x = t_rand(NBL_DT_FLOAT, -1, 2, DIMS(N, in_f)), w = t_rand(NBL_DT_FLOAT, -0.5, 0.5, DIMS(out_f, in_f));
  tens dy = t_new(NBL_DT_FLOAT, DIMS(N, out_f));
  int16_t *xq = malloc(sizeof(int16_t) * (size_t)x.n), *wq = malloc(sizeof(int16_t) * (size_t)w.n),
          *dq = malloc(sizeof(int16_t) * (size_t)dy.n);
  int32_t xm, wm, dm;
  float sx = q4(&x, xq, &xm), sw = q4(&w, wq, &wm);
  logq(&dy, dq, &dm);
  for (int which = 0; which < 2; which++) {
    /* dX = dY [N, out] * W [out, in];  dW = dY^T [out, N] * X [N, in] */
    tens in[4] = {dy, which ? x : w, NONE, t_scalar(NBL_DT_FLOAT, which ? sx : sw)};
    attr a[2] = {AI("transA", which), AEND};
    double f = time_node("", "Gemm", 13, a, 2, in, 1, NULL);
    double i = time_node("ai.nibble", "Int4LogGemm", 1, a, 4, in, 1, NULL);
    int64_t M = which ? out_f : N, K = which ? N : out_f;
    float *y = malloc(sizeof(float) * (size_t)(M * in_f));
    double t[64] = {0};
    for (int r = -1; r < g_runs; r++) {
      double t0 = now_ms();
      nbl_i4b_matmul(NULL, nbl_i4b_best_isa(), M, in_f, K, dq, which, dm, which ? xq : wq, 0, which ? xm : wm, 1.0, y,
                     NULL);
      if (r >= 0) t[r] = now_ms() - t0;
    }
    char what[96];
    snprintf(what, sizeof what, "Gemm %lld -> %lld: %s", (long long)in_f, (long long)out_f,
             which ? "dW = dY^T X" : "dX = dY W");
    row(model, what, f, i, g_threads == 1 ? best_of(t, g_runs) : NAN);
    free(y);
    t_free(&in[3]);
  }
  free(xq);
  free(wq);
  free(dq);
  t_free(&x);
  t_free(&w);
  t_free(&dy);
}

static void total(const char *model) {
  printf("| %-7s | %-40s | %8.3f | %8.3f | %8.3f | %5.2fx | %5.2fx |\n", model, "all layers", tot_f, tot_i, tot_c,
         tot_f / tot_i, tot_f / tot_c);
  tot_f = tot_i = tot_c = 0;
}

int main(int argc, char **argv) {
  if (argc > 1) g_threads = atoi(argv[1]);
  if (argc > 2) g_runs = atoi(argv[2]);
  if (argc > 3) g_only = atoi(argv[3]);
  if (g_threads < 1) g_threads = 1;
  if (g_runs < 1 || g_runs > 64) g_runs = 5;
  printf("integer backward products vs float32, batch 64, %d thread(s) (%s), best of %d, variant %s\n\n", g_threads,
         g_threads == 1 ? "thread CPU time" : "wall time", g_runs,
         nbl_i4b_isa_name(nbl_i4b_best_isa()));
  printf("| model   | layer                                    |   f32 ms | int op ms | int core | f32/op | f32/core |\n");
  printf("|---------|------------------------------------------|---------:|---------:|---------:|------:|------:|\n");
  conv("LeNet", 1, 28, 6, 5, 1, 0, 0);
  conv("LeNet", 6, 12, 16, 5, 1, 0, 1);
  fc("LeNet", 256, 120);
  fc("LeNet", 120, 84);
  fc("LeNet", 84, 10);
  total("LeNet");
  conv("ResNet8", 1, 28, 16, 3, 1, 1, 0);
  conv("ResNet8", 16, 28, 16, 3, 1, 1, 1);
  conv("ResNet8", 16, 28, 16, 3, 1, 1, 1);
  conv("ResNet8", 16, 28, 32, 3, 2, 1, 1);
  conv("ResNet8", 32, 14, 32, 3, 1, 1, 1);
  conv("ResNet8", 16, 28, 32, 1, 2, 0, 1);
  conv("ResNet8", 32, 14, 64, 3, 2, 1, 1);
  conv("ResNet8", 64, 7, 64, 3, 1, 1, 1);
  conv("ResNet8", 32, 14, 64, 1, 2, 0, 1);
  fc("ResNet8", 64, 10);
  total("ResNet8");
  return 0;
}
