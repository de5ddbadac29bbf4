/* test_int4_coded_conv.c - the forward Conv of 4-bit training on its codes
 * (runtime/kernels/int4_coded_conv.c, nbl_i4b_conv_forward; the op
 * ai.nibble Int4CodedConv in runtime/ops/grad_int4.c):
 *   - the exact int32 sums equal a plain-C integer reference (direct loops
 *     over the codes, zero padding) and the float outputs equal
 *     fl(sx * sw) * acc + bias to float rounding, on unit and other strides,
 *     pads (asymmetric too), dilations, groups, depthwise, 1x1, channel and
 *     pixel counts off the tiles (M not a multiple of 8, K not of 4, output
 *     rows not of 32, pixel blocks split), and 4-bit signed, unsigned and
 *     8-bit affine / unsigned activation codes with 8-bit weights down to
 *     -128;
 *   - with the direct float path of few-tap layers turned off, the same
 *     floats and sums bit for bit; so with the direct kernel of one-group
 *     layers (code_direct.h) on and off, which runs where expected;
 *   - operands off the grid (a value between levels, a NaN, a weight code
 *     128, activation codes spanning more than 256 values) are refused
 *     (the caller's float fallback), nothing else.
 * The suite runs it again capped to AVX2 and scalar (NBL_ISA). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/formats/int4.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/int4_gemm.h"
#include "runtime/kernels/kdebug.h"
#include "test_data.h"
#include "ck_elem.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint32_t rnd(void) { return (uint32_t)(td_xs64(&rng) >> 11); }
static int32_t rnd_in(int32_t lo, int32_t hi) { return lo + (int32_t)(rnd() % (uint32_t)(hi - lo + 1)); }

typedef struct fcase {
  int64_t N, C, M, group, H, W, kh, kw, sh, sw, dh, dw, pt, pl, pbot, pr;
  int32_t xlo, xhi, wlo, whi; /* code ranges */
  int bias;
} fcase;

static nbl_conv_geom geom_of(const fcase *c) {
  const int64_t in[2] = {c->H, c->W}, k[2] = {c->kh, c->kw}, s[2] = {c->sh, c->sw}, d[2] = {c->dh, c->dw},
                pb[2] = {c->pt, c->pl}, pe[2] = {c->pbot, c->pr};
  return td_conv_geom(2, c->N, c->C, c->M, c->group, in, k, s, d, pb, pe);
}

/* acc[n][m][oh][ow] = sum over the group's channels and taps of cx * cw */
static void ref_int(const nbl_conv_geom *g, const int32_t *cx, const int32_t *cw, int64_t *acc) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t m = 0; m < g->M; m++)
      for (int64_t oh = 0; oh < g->out[0]; oh++)
        for (int64_t ow = 0; ow < g->out[1]; ow++) {
          int64_t s = 0;
          for (int64_t c = 0; c < Cg; c++)
            for (int64_t i = 0; i < g->k[0]; i++)
              for (int64_t j = 0; j < g->k[1]; j++) {
                const int64_t h = oh * g->s[0] - g->pb[0] + i * g->d[0], w = ow * g->s[1] - g->pb[1] + j * g->d[1];
                if (h < 0 || h >= g->in[0] || w < 0 || w >= g->in[1]) continue;
                const int64_t ci = m / Mg * Cg + c;
                s += (int64_t)cx[((n * g->C + ci) * g->in[0] + h) * g->in[1] + w] *
                     cw[((m * Cg + c) * g->k[0] + i) * g->k[1] + j];
              }
          acc[((n * g->M + m) * g->out[0] + oh) * g->out[1] + ow] = s;
        }
}

static void run_case(const fcase *c, int ci) {
  const nbl_conv_geom g = geom_of(c);
  const int64_t nx = g.N * g.C * g.in_sz, nw = g.M * (g.C / g.group) * g.k_sz, ny = g.N * g.M * g.out_sz;
  int32_t *cx = malloc(sizeof(int32_t) * (size_t)nx), *cw = malloc(sizeof(int32_t) * (size_t)nw);
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *b = malloc(sizeof(float) * (size_t)g.M), *y = malloc(sizeof(float) * (size_t)ny);
  int32_t *acc = malloc(sizeof(int32_t) * (size_t)ny);
  int64_t *ref = malloc(sizeof(int64_t) * (size_t)ny);
  ck_assert(cx && cw && x && w && b && y && acc && ref);
  const float sx = 0.0371f * (float)(ci + 1), sw = 0.0113f / (float)(ci + 1);
  for (int64_t i = 0; i < nx; i++) x[i] = sx * (float)(cx[i] = rnd_in(c->xlo, c->xhi));
  for (int64_t i = 0; i < nw; i++) w[i] = sw * (float)(cw[i] = rnd_in(c->wlo, c->whi));
  cx[nx / 2] = c->xlo, cx[nx - 1] = c->xhi, x[nx / 2] = sx * (float)c->xlo, x[nx - 1] = sx * (float)c->xhi;
  cw[0] = c->wlo, cw[nw - 1] = c->whi, w[0] = sw * (float)c->wlo, w[nw - 1] = sw * (float)c->whi;
  for (int64_t m = 0; m < g.M; m++) b[m] = c->bias ? (float)rnd_in(-100, 100) * 0.01f : 0.0f;
  ref_int(&g, cx, cw, ref);
  /* the AMX tiles (where the CPU has them) take one-group undilated layers of
   * 4 channels or more, column stride <= 2, activation codes in -128..127;
   * their floats are the VNNI path's bit for bit */
  const int amx_ok = nbl_i4b_amx_supported() && nbl_i4b_best_isa() == NBL_I4B_AVX512;
  const int amx_takes = c->group == 1 && c->dh == 1 && c->dw == 1 && c->C >= 4 && c->sw <= 2 && c->xlo >= -128 &&
                        c->xhi <= 127;
  float *y_vnni = malloc(sizeof(float) * (size_t)ny);
  ck_assert_ptr_nonnull(y_vnni);
  for (int amx = 0; amx <= amx_ok; amx++) {
  nbl_i4b_set_amx(amx);
  const long runs = nbl_i4b_amx_runs();
  nbl_kctx kc = {.threads = 2};
  int off = -1;
  for (int64_t i = 0; i < ny; i++) acc[i] = -7, y[i] = NAN;
  ck_assert_int_eq(nbl_i4b_conv_forward(&kc, &g, x, sx, w, sw, c->bias ? b : NULL, y, acc, &off), NBL_OK);
  ck_assert_msg(off == 0, "case %d: refused", ci);
  ck_assert_int_eq(nbl_i4b_amx_runs() - runs, amx && amx_takes);
  if (amx) ck_assert(memcmp(y, y_vnni, sizeof(float) * (size_t)ny) == 0);
  else memcpy(y_vnni, y, sizeof(float) * (size_t)ny);
  const float sc = sx * sw;
  for (int64_t i = 0; i < ny; i++) {
    ck_elem_msg(acc[i] == ref[i], "case %d [%lld]: acc %d, reference %lld", ci, (long long)i, acc[i],
                (long long)ref[i]);
    const int64_t m = i / g.out_sz % g.M;
    const double want = (double)sc * (double)ref[i] + (double)b[m];
    const double tol = 4.0 * (double)FLT_EPSILON * (fabs((double)sc * (double)ref[i]) + fabs((double)b[m])) + 1e-30;
    ck_elem_msg(fabs((double)y[i] - want) <= tol, "case %d [%lld]: y %.9g, want %.9g", ci, (long long)i, y[i],
                want);
  }
  /* X's QuantizeInt4 codes handed over (nbl_i4b_conv_forward_codes: q =
   * c + z, the zero point z): the same floats; the tiles read them (a
   * planted wrong code changes y: the AMX tiles pack them, the VNNI and AVX2
   * tiles pad their bytes from them; the direct float path of few taps
   * reads X's floats), a NaN's mark sends them back to the floats */
  const int small = nbl_i4_avx512() && c->group == 1 && c->sh == 1 && c->sw == 1 && c->dh == 1 && c->dw == 1 &&
                    c->C * c->kh * c->kw <= 18;
  const int reads_codes = (amx && amx_takes) || !small;
  const int z = c->xlo >= -120 && c->xhi <= 120 ? 3 : 0;
  if (c->xlo + z >= -126 && c->xhi + z <= 126) {
    int8_t *xk = malloc((size_t)nx);
    float *yk = malloc(sizeof(float) * (size_t)ny);
    ck_assert(xk && yk);
    for (int64_t i = 0; i < nx; i++) xk[i] = (int8_t)(cx[i] + z);
    const int64_t at = nx / 2; /* xlo: + 1 stays a code */
    for (int plant = 0; plant < 3; plant++) { /* 0: as made, 1: one code + 1, 2: NaN's mark */
      if (plant == 1) xk[at] = (int8_t)(cx[at] + z + 1);
      if (plant == 2) xk[at] = NBL_Q4_CODE8_NAN;
      int offk = -1;
      ck_assert_int_eq(nbl_i4b_conv_forward_codes(&kc, &g, x, sx, xk, z, w, sw, c->bias ? b : NULL, yk, NULL, &offk),
                       NBL_OK);
      ck_assert_int_eq(offk, 0);
      const int same = memcmp(y, yk, sizeof(float) * (size_t)ny) == 0;
      ck_assert_msg(same == !(plant == 1 && reads_codes), "case %d (amx %d): codes handed over, plant %d: %s", ci,
                    amx, plant, same ? "the planted error went unseen" : "y differs");
      /* x omitted (the QuantizeInt4's Y dropped): the same floats from the
       * codes alone; a NaN's mark makes the paths refuse it (off the grid) */
      ck_assert_int_eq(nbl_i4b_conv_forward_codes(&kc, &g, NULL, sx, xk, z, w, sw, c->bias ? b : NULL, yk, NULL, &offk),
                       NBL_OK);
      ck_assert_int_eq(offk, plant == 2);
      if (plant == 0) ck_assert(memcmp(y, yk, sizeof(float) * (size_t)ny) == 0);
      if (plant == 1) ck_assert(memcmp(y, yk, sizeof(float) * (size_t)ny) != 0);
      xk[at] = (int8_t)(cx[at] + z);
    }
    free(xk), free(yk);
  }
  /* without acc, and single-threaded: the same floats */
  float *y1 = malloc(sizeof(float) * (size_t)ny);
  ck_assert_ptr_nonnull(y1);
  ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g, x, sx, w, sw, c->bias ? b : NULL, y1, NULL, &off), NBL_OK);
  ck_assert_int_eq(off, 0);
  ck_assert(memcmp(y, y1, sizeof(float) * (size_t)ny) == 0);
  free(y1);
  }
  nbl_i4b_set_amx(-1);
  /* the direct path of layers with few taps (C * KH * KW <= 18, unit
   * strides) off: the VNNI tiles give the same floats and sums */
  float *y2 = malloc(sizeof(float) * (size_t)ny);
  int32_t *acc2 = malloc(sizeof(int32_t) * (size_t)ny);
  ck_assert(y2 && acc2);
  nbl_i4b_set_small_k(0);
  int off2 = -1;
  ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g, x, sx, w, sw, c->bias ? b : NULL, y2, acc2, &off2), NBL_OK);
  nbl_i4b_set_small_k(-1);
  ck_assert_int_eq(off2, 0);
  ck_assert(memcmp(y, y2, sizeof(float) * (size_t)ny) == 0);
  ck_assert(memcmp(acc, acc2, sizeof(int32_t) * (size_t)ny) == 0);
  /* the direct kernel (code_direct.h) on and off, the AMX tiles off: the
   * same floats and sums; it runs where it applies (one group, strides 1,
   * or 2 with more than one tap, not pointwise, activation codes in
   * -128..127, more than 18 taps per output, AVX-512 VNNI) */
  free(y2), free(acc2);
  nbl_i4b_set_amx(0);
  const int direct = nbl_i4_best_isa() == NBL_I4_VNNI && c->group == 1 && c->sh == c->sw &&
                     (c->sh == 1 || (c->sh == 2 && c->kh * c->kw > 1)) &&
                     !(c->kh == 1 && c->kw == 1 && c->sh == 1 && !c->pt && !c->pl && !c->pbot && !c->pr) &&
                     c->xlo >= -128 && c->xhi <= 127 &&
                     !(nbl_i4_avx512() && c->sh == 1 && c->dh == 1 && c->dw == 1 && c->C * c->kh * c->kw <= 18);
  for (int on = 1; on >= 0; on--) {
    nbl_kdebug_set(NBL_KS_I4B_DIRECT, on);
    nbl_kernel_stats ks0, ks1;
    nbl_kernel_stats_get(&ks0);
    nbl_kctx kc2 = {.threads = 2};
    int offd = -1;
    y2 = malloc(sizeof(float) * (size_t)ny);
    acc2 = malloc(sizeof(int32_t) * (size_t)ny);
    ck_assert(y2 && acc2);
    ck_assert_int_eq(nbl_i4b_conv_forward(on ? &kc2 : NULL, &g, x, sx, w, sw, c->bias ? b : NULL, y2, acc2, &offd),
                     NBL_OK);
    nbl_kernel_stats_get(&ks1);
    ck_assert_int_eq(offd, 0);
    ck_assert_msg(ks1.n[NBL_KC_I4B_DIRECT_RUNS] - ks0.n[NBL_KC_I4B_DIRECT_RUNS] == (on && direct),
                  "case %d: direct kernel runs %ld, expected %d", ci,
                  ks1.n[NBL_KC_I4B_DIRECT_RUNS] - ks0.n[NBL_KC_I4B_DIRECT_RUNS], on && direct);
    ck_assert_msg(memcmp(y, y2, sizeof(float) * (size_t)ny) == 0, "case %d: direct %d, floats differ", ci, on);
    ck_assert_msg(memcmp(acc, acc2, sizeof(int32_t) * (size_t)ny) == 0, "case %d: direct %d, sums differ", ci, on);
    free(y2), free(acc2);
  }
  nbl_kdebug_reset();
  nbl_i4b_set_amx(-1);
  free(y_vnni);
  free(cx), free(cw), free(x), free(w), free(b), free(y), free(acc), free(ref);
}

static const fcase cases[] = {
    /* N  C   M  grp H   W  kh kw sh sw dh dw pt pl pb pr  xlo  xhi  wlo  whi bias */
    {2, 16, 16, 1, 9, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 15, -8, 7, 0},        /* ResNet block, 4-bit */
    {2, 1, 6, 1, 28, 28, 5, 5, 1, 1, 1, 1, 2, 2, 2, 2, -73, 182, -128, 127, 1}, /* LeNet's first layer: affine 8-bit */
    {3, 16, 32, 1, 15, 15, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, -8, 7, -8, 7, 1},      /* stride 2, signed codes */
    {2, 5, 9, 1, 14, 14, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 0, 255, -127, 127, 1},   /* 1x1 stride 2, unsigned 8-bit */
    {2, 6, 10, 2, 11, 13, 3, 3, 1, 1, 2, 2, 2, 1, 3, 2, 0, 15, -7, 7, 1},       /* groups, dilation, odd pads */
    {1, 4, 4, 4, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, -3, 12, -8, 7, 0},       /* depthwise, affine 4-bit */
    {1, 200, 17, 1, 10, 10, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 15, -8, 7, 1},     /* K = 1800: pixel blocks split */
    {2, 3, 8, 1, 6, 6, 2, 2, 1, 1, 1, 1, 0, 1, 1, 0, 0, 15, -8, 7, 0},          /* even kernel, asymmetric pads */
    {1, 7, 33, 1, 33, 31, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1, 0, 15, -8, 7, 1},       /* mixed strides, 33 channels */
    {2, 8, 8, 1, 4, 4, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, -8, 7, 1},           /* all-zero activations */
    {1, 16, 16, 1, 8, 8, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 15, -8, 7, 0},        /* pointwise */
    {3, 32, 64, 1, 14, 14, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 0, 15, -8, 7, 1},      /* ResNet downsample 32 -> 64 */
    {2, 16, 32, 1, 28, 28, 1, 1, 2, 2, 1, 1, 0, 0, 0, 0, 0, 15, -8, 7, 0},      /* ResNet shortcut 1x1 s2 */
    {2, 64, 64, 1, 7, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, -8, 7, -8, 7, 1},        /* 64 channels: one full chunk */
    {2, 70, 40, 1, 9, 10, 3, 2, 1, 2, 1, 1, 2, 1, 0, 0, -128, 127, -128, 127, 1}, /* 18 quads, odd pad, 3 m blocks */
    /* few taps (C * KH * KW <= 18, unit strides): the direct float path */
    {3, 1, 16, 1, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, -128, 127, -128, 127, 1}, /* ResNet stem, 8-bit */
    {2, 2, 7, 1, 17, 33, 3, 3, 1, 1, 1, 1, 1, 0, 2, 1, 0, 255, -128, 127, 1},    /* K = 18, 3 column blocks */
    {1, 1, 5, 1, 9, 16, 4, 4, 1, 1, 1, 1, 2, 1, 1, 2, -9, 246, -8, 7, 0},        /* 16 columns, odd rows */
    {2, 1, 6, 1, 12, 11, 4, 5, 1, 1, 1, 1, 0, 2, 0, 2, 0, 15, -8, 7, 1},         /* K = 20: not taken */
    {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, -8, 7, -8, 7, 1},           /* one pixel, one tap */
};

START_TEST(test_exact) { run_case(&cases[_i], _i); }
END_TEST

/* Off the grid: refused (off_grid 1), whatever else. */
START_TEST(test_refused) {
  /* 4 channels (the tiles), 1 (the direct path of few taps) */
  const fcase c = {2, _i ? 1 : 4, 8, 1, 6, 6, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 15, -8, 7, 0};
  const nbl_conv_geom g = geom_of(&c);
  const int64_t nx = g.N * g.C * g.in_sz, nw = g.M * g.C * g.k_sz, ny = g.N * g.M * g.out_sz;
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *y = malloc(sizeof(float) * (size_t)ny);
  ck_assert(x && w && y);
  const float sx = 0.25f, sw = 0.1f;
  for (int kind = 0; kind < 7; kind++) {
    for (int64_t i = 0; i < nx; i++) x[i] = sx * (float)rnd_in(0, 15);
    for (int64_t i = 0; i < nw; i++) w[i] = sw * (float)rnd_in(-8, 7);
    switch (kind) {
    case 0: x[nx - 3] = 0.3f * sx; break;        /* between levels */
    case 1: x[5] = NAN; break;                   /* NaN */
    case 2: w[nw - 1] = sw * 0.5f; break;        /* weight between levels */
    case 3: w[3] = sw * 128.0f; break;           /* weight code 128 */
    case 4: x[0] = -sx * 100, x[1] = sx * 200; break; /* 301 activation codes */
    case 5: x[7] = sx * 256.0f; break;           /* a code past 255 */
    case 6: x[2] = -sx, x[3] = sx * 255.0f; break; /* 257 codes: -1..255 */
    }
    int off = 0;
    ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g, x, sx, w, sw, NULL, y, NULL, &off), NBL_OK);
    ck_assert_msg(off == 1, "kind %d accepted", kind);
  }
  /* the edges that are on the grid: weight -128, activation codes -128..127 and 0..255 */
  for (int kind = 0; kind < 3; kind++) {
    for (int64_t i = 0; i < nx; i++) x[i] = sx * (float)(kind == 1 ? rnd_in(-128, 127) : rnd_in(0, 255));
    for (int64_t i = 0; i < nw; i++) w[i] = sw * (float)rnd_in(-8, 7);
    if (kind == 0) w[2] = -128.0f * sw;
    if (kind == 2) x[4] = -sx * 0, x[9] = sx * 255.0f;
    int off = 1;
    ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g, x, sx, w, sw, NULL, y, NULL, &off), NBL_OK);
    ck_assert_msg(off == 0, "edge %d refused", kind);
  }
  /* rank other than 2: refused */
  nbl_conv_geom g1 = g;
  g1.ns = 1;
  int off = 0;
  ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g1, x, sx, w, sw, NULL, y, NULL, &off), NBL_OK);
  ck_assert_int_eq(off, 1);
  free(x), free(w), free(y);
}
END_TEST

/* X's codes handed over with a zero point that takes c = q - z out of
 * -128..127 (8-bit codes 0..200, z = -100: q = c - 100 fits int8): the
 * codes' bytes path must refuse them and the floats decide (the same floats
 * as without the codes); without the floats, refused (off the grid). Every
 * image's plane width around the vector widths (7, 16, 33). */
START_TEST(test_codes_out_of_range) {
  const int64_t widths[] = {7, 16, 33};
  const fcase c = {2, 4, 8, 1, 9, widths[_i], 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 0, 200, -8, 7, 1};
  const nbl_conv_geom g = geom_of(&c);
  const int64_t nx = g.N * g.C * g.in_sz, nw = g.M * g.C * g.k_sz, ny = g.N * g.M * g.out_sz;
  float *x = malloc(sizeof(float) * (size_t)nx), *w = malloc(sizeof(float) * (size_t)nw);
  float *y = malloc(sizeof(float) * (size_t)ny), *yk = malloc(sizeof(float) * (size_t)ny);
  int8_t *xk = malloc((size_t)nx);
  ck_assert(x && w && y && yk && xk);
  const float sx = 0.05f, sw = 0.1f;
  const int z = -100;
  for (int64_t i = 0; i < nx; i++) {
    const int32_t q = rnd_in(0, 200);
    x[i] = sx * (float)q, xk[i] = (int8_t)(q + z);
  }
  for (int64_t i = 0; i < nw; i++) w[i] = sw * (float)rnd_in(-8, 7);
  int off = -1;
  ck_assert_int_eq(nbl_i4b_conv_forward(NULL, &g, x, sx, w, sw, NULL, y, NULL, &off), NBL_OK);
  ck_assert_int_eq(off, 0);
  nbl_kctx kc = {.threads = 2};
  ck_assert_int_eq(nbl_i4b_conv_forward_codes(&kc, &g, x, sx, xk, z, w, sw, NULL, yk, NULL, &off), NBL_OK);
  ck_assert_int_eq(off, 0);
  ck_assert_msg(memcmp(y, yk, sizeof(float) * (size_t)ny) == 0, "width %lld: codes past -128..127 read as bytes",
                (long long)widths[_i]);
  ck_assert_int_eq(nbl_i4b_conv_forward_codes(&kc, &g, NULL, sx, xk, z, w, sw, NULL, yk, NULL, &off), NBL_OK);
  ck_assert_int_eq(off, 1);
  free(x), free(w), free(y), free(yk), free(xk);
}
END_TEST

int main(void) {
  Suite *s = suite_create("int4_coded_conv");
  TCase *tc = tcase_create("forward");
  tcase_add_loop_test(tc, test_exact, 0, (int)(sizeof cases / sizeof cases[0]));
  tcase_add_loop_test(tc, test_refused, 0, 2);
  tcase_add_loop_test(tc, test_codes_out_of_range, 0, 3);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
