/* bench_grad.c - time the backward kernels of training, float32 fast path vs
 * the float64 reference, at the sizes training meets: LeNet's two convolutions
 * (batch 64) and a ResNet-18 basic-block convolution (64 -> 64, 3x3, 56x56,
 * batch 8), plus MaxPoolGrad, AveragePoolGrad and BatchNormalizationGrad.
 *
 *   ninja -C BUILD bench/bench_grad && BUILD/bench/bench_grad [threads] [runs] [resnet8 [NAME]]
 *
 * With "resnet8": ResNet-8's convolutions at batch 64 (Fashion-MNIST 28x28)
 * one by one instead: forward Conv, ConvGrad's dW alone and dX alone, fast
 * kernels only (NAME: the layers whose name contains it), with their rate in GFLOPS (2 M C k out multiply-adds each).
 *
 * With "lenet": the float and bookkeeping ops of LeNet-5's 4-bit training step
 * (batch 64) one by one, fast kernels only: MaxPool with Indices,
 * MaxPoolGrad, ConvGrad of the first layer (dW and dB), QuantizeInt4 and
 * QuantizeInt4Grad, Relu and ReluGrad.
 *
 * Each line: op, case, milliseconds per run (the best of `runs` after a
 * warm-up: the machine is shared, the minimum is the least disturbed) of the
 * fast kernel and of the reference kernel, and the ratio. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "grad_check.h"

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double time_node_want(const char *domain, const char *op, int opset, const attr *a, int n_in, tens *in,
                             int n_out, const int *want, int reference, int threads, int runs) {
  runner *r = runner_new(domain, op, opset, a, n_in, in, n_out, want, reference);
  nbl_session_free(r->s); /* recreate with the requested thread count */
  nbl_session_options opt = {.threads = threads, .reference = reference};
  if (nbl_session_create(r->m, &opt, &r->s) || runner_run(r, in)) {
    fprintf(stderr, "%s: %s\n", op, nbl_last_error());
    exit(1);
  }
  double t[64];
  for (int i = 0; i < runs; i++) {
    double t0 = now_ms();
    runner_run(r, in);
    t[i] = now_ms() - t0;
  }
  qsort(t, (size_t)runs, sizeof t[0], cmp);
  runner_free(r);
  return t[0];
}

static double time_node(const char *op, const attr *a, int n_in, tens *in, int n_out, int reference, int threads,
                        int runs) {
  return time_node_want("com.microsoft", op, 1, a, n_in, in, n_out, NULL, reference, threads, runs);
}

/* One ResNet-8 layer at batch 64: X [64, C, H, H], W [M, C, K, K], stride s, pad p. */
static const char *r8_only; /* the layers whose name contains it (NULL: all) */

static void r8_layer(const char *what, int64_t C, int64_t H, int64_t M, int64_t K, int64_t s, int64_t p, int threads,
                     int runs) {
  if (r8_only && !strstr(what, r8_only)) return;
  int64_t N = 64, O = (H + 2 * p - K) / s + 1;
  double gf = 2.0 * N * M * C * K * K * O * O / 1e9;
  tens in[3] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(N, M, O, O)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(N, C, H, H)),
                t_rand(NBL_DT_FLOAT, -1, 1, DIMS(M, C, K, K))};
  attr a[] = {AV("pads", p, p, p, p), AV("strides", s, s), AV("kernel_shape", K, K), AEND};
  int only_dw[3] = {0, 1, 0}, only_dx[3] = {1, 0, 0};
  double f = time_node_want("", "Conv", 11, a, 2, in + 1, 1, NULL, 0, threads, runs);
  double w = time_node_want("com.microsoft", "ConvGrad", 1, a, 3, in, 3, only_dw, 0, threads, runs);
  double x = time_node_want("com.microsoft", "ConvGrad", 1, a, 3, in, 3, only_dx, 0, threads, runs);
  printf("| %-34s | %6.3f | %5.0f | %6.3f | %5.0f | %6.3f | %5.0f |\n", what, f, gf / f * 1e3, w, gf / w * 1e3, x,
         gf / x * 1e3);
  fflush(stdout);
  for (int i = 0; i < 3; i++) t_free(&in[i]);
}

static void row(const char *op, const char *what, const attr *a, int n_in, tens *in, int n_out, int threads, int runs) {
  double f = time_node(op, a, n_in, in, n_out, 0, threads, runs);
  double r = time_node(op, a, n_in, in, n_out, 1, threads, runs > 3 ? 3 : runs);
  printf("| %-22s | %-36s | %9.2f | %10.2f | %6.1fx |\n", op, what, f, r, r / f);
  fflush(stdout);
}

/* ConvGrad inputs for X [N, C, H, W], W [M, C, K, K], stride 1, pad p: dY, X, W (float32) */
static void conv(const char *what, int64_t N, int64_t C, int64_t H, int64_t M, int64_t K, int64_t p, int threads,
                 int runs) {
  int64_t O = H + 2 * p - K + 1;
  tens in[3] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(N, M, O, O)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(N, C, H, H)),
                t_rand(NBL_DT_FLOAT, -1, 1, DIMS(M, C, K, K))};
  attr a[] = {AV("pads", p, p, p, p), AEND};
  row("ConvGrad", what, a, 3, in, 3, threads, runs);
  for (int i = 0; i < 3; i++) t_free(&in[i]);
}

/* One op of the LeNet-5 step, fast kernel only: best of runs, ms. */
static void lenet_row(const char *domain, const char *op, int opset, const char *what, const attr *a, int n_in,
                      tens *in, int n_out, const int *want, int threads, int runs) {
  double f = time_node_want(domain, op, opset, a, n_in, in, n_out, want, 0, threads, runs);
  printf("| %-18s | %-40s | %8.4f |\n", op, what, f);
  fflush(stdout);
}

static void lenet_step_ops(int threads, int runs) {
  printf("threads %d, best of %d runs, ms per run, batch 64\n\n", threads, runs);
  printf("| op                 | case                                     |       ms |\n|---|---|---:|\n");
  attr pa[] = {AV("kernel_shape", 2, 2), AV("strides", 2, 2), AEND};
  const int64_t pc[2][2] = {{6, 24}, {16, 8}};
  for (int l = 0; l < 2; l++) {
    int64_t C = pc[l][0], H = pc[l][1];
    tens x = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64, C, H, H));
    char what[64];
    snprintf(what, sizeof what, "2x2 s2 64x%lldx%lldx%lld", (long long)C, (long long)H, (long long)H);
    lenet_row("", "MaxPool", 12, what, pa, 1, &x, 2, NULL, threads, runs);
    tens d64 = t_rand(NBL_DT_DOUBLE, -1, 1, DIMS(64, C, H, H));
    runner *f = runner_new("", "MaxPool", 12, pa, 1, &d64, 2, NULL, 1);
    runner_run(f, &d64);
    tens g[3] = {t_rand(NBL_DT_FLOAT, -1, 1, f->out[0].rank, f->out[0].dims), t_copy_host(&f->out[1]), t_shape(&x)};
    runner_free(f);
    lenet_row("com.microsoft", "MaxPoolGrad", 1, what, pa, 3, g, 1, NULL, threads, runs);
    tens rg[2] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64, C, H, H)), x};
    snprintf(what, sizeof what, "64x%lldx%lldx%lld", (long long)C, (long long)H, (long long)H);
    lenet_row("", "Relu", 14, what, NULL, 1, &x, 1, NULL, threads, runs);
    lenet_row("com.microsoft", "ReluGrad", 1, what, NULL, 2, rg, 1, NULL, threads, runs);
    for (int i = 0; i < 3; i++) t_free(&g[i]);
    t_free(&rg[0]);
    t_free(&d64);
    t_free(&x);
  }
  {
    tens in[3] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64, 6, 24, 24)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64, 1, 28, 28)),
                  t_rand(NBL_DT_FLOAT, -1, 1, DIMS(6, 1, 5, 5))};
    attr ca[] = {AV("kernel_shape", 5, 5), AEND};
    int want[3] = {0, 1, 1}, only_db[3] = {0, 0, 1};
    lenet_row("com.microsoft", "ConvGrad", 1, "dW, dB 1->6 5x5 28x28", ca, 3, in, 3, want, threads, runs);
    lenet_row("com.microsoft", "ConvGrad", 1, "dB alone 1->6 5x5 28x28", ca, 3, in, 3, only_db, threads, runs);
    for (int i = 0; i < 3; i++) t_free(&in[i]);
  }
  {
    tens w = t_rand(NBL_DT_FLOAT, -0.06, 0.06, DIMS(120, 256)), g = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(120, 256));
    tens a = t_rand(NBL_DT_FLOAT, 0, 2, DIMS(64, 6, 12, 12)), ga = t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64, 6, 12, 12));
    attr sa[] = {AI("bits", 4), AS("mode", "symmetric"), AS("scale_source", "sawb"), AEND};
    attr aa[] = {AI("bits", 4), AS("mode", "affine"), AS("scale_source", "max"), AEND};
    int w1[2] = {1, 0};
    lenet_row("ai.nibble", "QuantizeInt4", 1, "sawb 4-bit 120x256", sa, 1, &w, 2, w1, threads, runs);
    lenet_row("ai.nibble", "QuantizeInt4", 1, "affine max 64x6x12x12", aa, 1, &a, 2, w1, threads, runs);
    tens gw[2] = {g, w}, gaa[2] = {ga, a};
    lenet_row("ai.nibble", "QuantizeInt4Grad", 1, "sawb 4-bit 120x256", sa, 2, gw, 1, NULL, threads, runs);
    lenet_row("ai.nibble", "QuantizeInt4Grad", 1, "affine max 64x6x12x12", aa, 2, gaa, 1, NULL, threads, runs);
    t_free(&w);
    t_free(&g);
    t_free(&a);
    t_free(&ga);
  }
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 1, runs = argc > 2 ? atoi(argv[2]) : 10;
  if (runs < 1 || runs > 64) runs = 10;
  if (argc > 3 && !strcmp(argv[3], "lenet")) {
    lenet_step_ops(threads, runs);
    return 0;
  }
  if (argc > 3 && !strcmp(argv[3], "resnet8")) {
    r8_only = argc > 4 ? argv[4] : NULL;
    printf("threads %d, best of %d runs, ms per run and GFLOPS, batch 64\n\n", threads, runs);
    printf("| layer                              | fwd ms | GF/s  | dW ms  | GF/s  | dX ms  | GF/s  |\n");
    printf("|---|---:|---:|---:|---:|---:|---:|\n");
    r8_layer("stem 1->16 3x3 p1 28x28", 1, 28, 16, 3, 1, 1, threads, runs);
    r8_layer("block0 16->16 3x3 p1 28x28", 16, 28, 16, 3, 1, 1, threads, runs);
    r8_layer("block1 16->32 3x3 s2 p1 28->14", 16, 28, 32, 3, 2, 1, threads, runs);
    r8_layer("block1 32->32 3x3 p1 14x14", 32, 14, 32, 3, 1, 1, threads, runs);
    r8_layer("block1 short 16->32 1x1 s2", 16, 28, 32, 1, 2, 0, threads, runs);
    r8_layer("block2 32->64 3x3 s2 p1 14->7", 32, 14, 64, 3, 2, 1, threads, runs);
    r8_layer("block2 64->64 3x3 p1 7x7", 64, 7, 64, 3, 1, 1, threads, runs);
    r8_layer("block2 short 32->64 1x1 s2", 32, 14, 64, 1, 2, 0, threads, runs);
    return 0;
  }
  printf("threads %d, best of %d runs (reference: of up to 3), ms per run\n\n", threads, runs);
  printf("| op                     | case                                 |   fast ms |     ref ms |  ratio |\n");
  printf("|---|---|---:|---:|---:|\n");
  conv("LeNet conv1 1->6 5x5 p2 28x28, N=64", 64, 1, 28, 6, 5, 2, threads, runs);
  conv("LeNet conv2 6->16 5x5 14x14, N=64", 64, 6, 14, 16, 5, 0, threads, runs);
  conv("ResNet block 64->64 3x3 p1 56x56, N=8", 8, 64, 56, 64, 3, 1, threads, runs);
  tens mp[3];
  {
    tens x = t_rand(NBL_DT_DOUBLE, -1, 1, DIMS(8, 64, 112, 112));
    attr pa[] = {AV("kernel_shape", 3, 3), AV("strides", 2, 2), AV("pads", 1, 1, 1, 1), AEND};
    runner *f = runner_new("", "MaxPool", 12, pa, 1, &x, 2, NULL, 1);
    runner_run(f, &x);
    mp[0] = t_rand(NBL_DT_FLOAT, -1, 1, f->out[0].rank, f->out[0].dims);
    mp[1] = t_copy_host(&f->out[1]);
    mp[2] = t_shape(&x);
    runner_free(f);
    row("MaxPoolGrad", "ResNet stem 3x3 s2 p1 112x112, N=8", pa, 3, mp, 1, threads, runs);
    tens ap[2] = {mp[0], mp[2]};
    row("AveragePoolGrad", "3x3 s2 p1 112x112 64 ch, N=8", pa, 2, ap, 1, threads, runs);
    for (int i = 0; i < 3; i++) t_free(&mp[i]);
    t_free(&x);
  }
  tens bn[5] = {t_rand(NBL_DT_FLOAT, -1, 1, DIMS(8, 64, 56, 56)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(8, 64, 56, 56)),
                t_rand(NBL_DT_FLOAT, 0.5, 1.5, DIMS(64)), t_rand(NBL_DT_FLOAT, -1, 1, DIMS(64)),
                t_rand(NBL_DT_FLOAT, 0.5, 1.5, DIMS(64))};
  row("BatchNormalizationGrad", "64 ch 56x56, N=8", NULL, 5, bn, 3, threads, runs);
  tens bi[5] = {bn[1], bn[2], bn[3], bn[3], bn[4]};
  row("BatchNormInternal", "64 ch 56x56, N=8", NULL, 5, bi, 5, threads, runs);
  for (int i = 0; i < 5; i++) t_free(&bn[i]);
  return 0;
}
