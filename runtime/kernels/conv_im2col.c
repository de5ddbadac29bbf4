/* conv_im2col.c - FP32 convolution: the geometry of a window (shared with
 * pooling and the INT4 path), the double reference, im2col, and
 * nbl_conv_f32_act, which picks the path for a layer: depthwise
 * (depthwise_f32.c), Winograd (winograd.c), the AVX-512 shifted-rows kernel
 * without im2col (conv_shift.c; 2-D, one group), the AVX-512 product kernel
 * (conv_avx512.c: 1x1 layers and the im2col of the others), or im2col +
 * GEMM here. */
#include "runtime/kernels/gemm.h"
#include "runtime/core/cpu.h"
#include "runtime/kernels/conv_paths.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ convolution geometry */

nbl_status nbl_conv_geom_init(nbl_kctx *ctx, nbl_conv_geom *g, const nbl_rt_tensor *x,
                              const int64_t *kdims, int ceil_mode) {
  memset(g, 0, sizeof *g);
  const nbl_node *n = ctx->node;
  if (x->rank < 3)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "input has rank %d, expected at least 3 (N, C, ...)",
                    x->rank);
  int ns = x->rank - 2;
  g->ns = ns;
  g->N = x->dims[0];
  g->C = x->dims[1];
  int cnt;
  const int64_t *ks = nbl_attr_ints(n, "kernel_shape", &cnt);
  if (ks && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "kernel_shape has %d values, expected %d", cnt, ns);
  if (!ks && !kdims)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "attribute 'kernel_shape' is required");
  for (int i = 0; i < ns; i++) {
    g->k[i] = ks ? ks[i] : kdims[i];
    if (ks && kdims && ks[i] != kdims[i])
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                      "kernel_shape[%d] = %lld does not match the weight's dim %lld", i,
                      (long long)ks[i], (long long)kdims[i]);
    if (g->k[i] <= 0)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "kernel dim %d is %lld", i, (long long)g->k[i]);
    g->in[i] = x->dims[2 + i];
  }
  const int64_t *st = nbl_attr_ints(n, "strides", &cnt);
  if (st && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "strides has %d values, expected %d", cnt, ns);
  const int64_t *dl = nbl_attr_ints(n, "dilations", &cnt);
  if (dl && cnt != ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "dilations has %d values, expected %d", cnt, ns);
  const int64_t *pd = nbl_attr_ints(n, "pads", &cnt);
  if (pd && cnt != 2 * ns)
    return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "pads has %d values, expected %d", cnt, 2 * ns);
  const char *ap = nbl_attr_string(n, "auto_pad", "NOTSET");
  int mode;
  if (!strcmp(ap, "NOTSET") || !strcmp(ap, "")) mode = 0;
  else if (!strcmp(ap, "SAME_UPPER")) mode = 1;
  else if (!strcmp(ap, "SAME_LOWER")) mode = 2;
  else if (!strcmp(ap, "VALID")) mode = 3;
  else return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "unknown auto_pad '%s'", ap);
  g->in_sz = g->k_sz = g->out_sz = 1;
  for (int i = 0; i < ns; i++) {
    g->s[i] = st ? st[i] : 1;
    g->d[i] = dl ? dl[i] : 1;
    if (g->s[i] <= 0 || g->d[i] <= 0)
      return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL, "strides and dilations must be positive");
    int64_t dk = (g->k[i] - 1) * g->d[i] + 1;
    if (mode == 1 || mode == 2) {
      g->out[i] = nbl_window_out_same(g->in[i], g->s[i]);
      int64_t total = (g->out[i] - 1) * g->s[i] + dk - g->in[i];
      if (total < 0) total = 0;
      g->pb[i] = mode == 1 ? total / 2 : total - total / 2;
      g->pe[i] = total - g->pb[i];
    } else {
      g->pb[i] = mode == 0 && pd ? pd[i] : 0;
      g->pe[i] = mode == 0 && pd ? pd[ns + i] : 0;
      if (g->pb[i] < 0 || g->pe[i] < 0)
        return nbl_kerr(ctx, NBL_ERR_UNSUPPORTED, "negative pads are not supported");
      g->out[i] =
          nbl_window_out(g->in[i], g->k[i], g->s[i], g->d[i], g->pb[i], g->pe[i], ceil_mode);
      if (g->out[i] < 0)
        return nbl_kerr(ctx, NBL_ERR_INVALID_MODEL,
                        "kernel extent %lld exceeds the padded input size %lld in spatial dim %d",
                        (long long)dk, (long long)(g->in[i] + g->pb[i] + g->pe[i]), i);
    }
    g->in_sz *= g->in[i];
    g->k_sz *= g->k[i];
    g->out_sz *= g->out[i];
  }
  g->group = 1;
  return NBL_OK;
}

void nbl_conv_ref_f64(const nbl_conv_geom *g, const double *x, const double *w, const double *bias,
                      double *y) {
  int ns = g->ns;
  int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  int64_t o[NBL_CONV_MAX_SP], kk[NBL_CONV_MAX_SP];
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t m = 0; m < g->M; m++) {
      int64_t grp = m / Mg;
      double *yp = y + (n * g->M + m) * g->out_sz;
      for (int64_t oi = 0; oi < g->out_sz; oi++) {
        int64_t r = oi;
        for (int i = ns - 1; i >= 0; i--) {
          o[i] = r % g->out[i];
          r /= g->out[i];
        }
        double s = bias ? bias[m] : 0.0;
        for (int64_t c = 0; c < Cg; c++) {
          const double *xp = x + (n * g->C + grp * Cg + c) * g->in_sz;
          const double *wp = w + (m * Cg + c) * g->k_sz;
          for (int64_t ki = 0; ki < g->k_sz; ki++) {
            int64_t rk = ki;
            for (int i = ns - 1; i >= 0; i--) {
              kk[i] = rk % g->k[i];
              rk /= g->k[i];
            }
            int64_t xi = 0;
            int inside = 1;
            for (int i = 0; i < ns; i++) {
              int64_t p = o[i] * g->s[i] - g->pb[i] + kk[i] * g->d[i];
              if (p < 0 || p >= g->in[i]) {
                inside = 0;
                break;
              }
              xi = xi * g->in[i] + p;
            }
            if (inside) s += xp[xi] * wp[ki];
          }
        }
        yp[oi] = s;
      }
    }
}

/* 2-D im2col rows for items [i0, i1), item = c * KH + kh: per (c, kh, kw) row, the output
 * columns whose input column is inside [0, W) form one range [lo, hi); the
 * rest are zero, and stride 1 copies the range in one go. */
static void im2col2d_rows(const nbl_conv_geom *g, const float *x, float *col, int64_t i0,
                          int64_t i1) {
  int64_t H = g->in[0], W = g->in[1], OH = g->out[0], OW = g->out[1];
  int64_t sh = g->s[0], sw = g->s[1];
  for (int64_t i = i0; i < i1; i++) { /* item i = (channel c, kernel row kh) */
    int64_t c = i / g->k[0], kh = i % g->k[0];
    for (int64_t kw = 0; kw < g->k[1]; kw++) {
      float *dst = col + ((c * g->k[0] + kh) * g->k[1] + kw) * OH * OW;
      const float *src = x + c * H * W;
      int64_t off = kw * g->d[1] - g->pb[1];
      /* iw = ow*sw + off in [0, W)  <=>  ow in [lo, hi) */
      int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
      int64_t hi = W - off <= 0 ? 0 : (W - off + sw - 1) / sw;
      if (hi > OW) hi = OW;
      if (lo > hi) lo = hi;
      for (int64_t oh = 0; oh < OH; oh++) {
        int64_t ih = oh * sh - g->pb[0] + kh * g->d[0];
        float *d = dst + oh * OW;
        if (ih < 0 || ih >= H) {
          memset(d, 0, (size_t)OW * sizeof(float));
          continue;
        }
        const float *srow = src + ih * W;
        for (int64_t ow = 0; ow < lo; ow++) d[ow] = 0.0f;
        if (sw == 1) {
          if (hi > lo) nbl_copy_row(d + lo, srow + lo + off, hi - lo);
        } else {
          for (int64_t ow = lo; ow < hi; ow++) d[ow] = srow[ow * sw + off];
        }
        for (int64_t ow = hi; ow < OW; ow++) d[ow] = 0.0f;
      }
    }
  }
}

/* im2col rows [i0, i1) of any spatial rank (row = c * k_sz + kernel tap),
 * for the output lines [l0, l1) only (a line: the last spatial dim, OW
 * columns; row i of col holds (l1 - l0) * OW columns): each line's source
 * found once from the outer output indices (a line whose outer input index
 * falls in the padding is zero) and copied as the 2-D rows are (the valid
 * columns one range [lo, hi), unit strides in one copy). */
static void im2col_nd_rows(const nbl_conv_geom *g, const float *x, float *col, int64_t i0, int64_t i1, int64_t l0,
                           int64_t l1) {
  const int ns = g->ns, L = ns - 1;
  const int64_t W = g->in[L], OW = g->out[L], sw = g->s[L];
  int64_t kk[NBL_CONV_MAX_SP], o[NBL_CONV_MAX_SP];
  for (int64_t i = i0; i < i1; i++) {
    const int64_t c = i / g->k_sz;
    int64_t rk = i % g->k_sz;
    for (int d = ns - 1; d >= 0; d--) {
      kk[d] = rk % g->k[d];
      rk /= g->k[d];
    }
    float *dst = col + (i - i0) * (l1 - l0) * OW;
    const float *src = x + c * g->in_sz;
    const int64_t off = kk[L] * g->d[L] - g->pb[L];
    int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw, hi = W - off <= 0 ? 0 : (W - off + sw - 1) / sw;
    if (hi > OW) hi = OW;
    if (lo > hi) lo = hi;
    for (int64_t d = L - 1, r = l0; d >= 0; d--) { /* the outer output indices of line l0 */
      o[d] = r % g->out[d];
      r /= g->out[d];
    }
    for (int64_t ln = l0; ln < l1; ln++) {
      float *dl = dst + (ln - l0) * OW;
      int64_t base = 0;
      int inside = 1;
      for (int d = 0; d < L; d++) {
        const int64_t p = o[d] * g->s[d] - g->pb[d] + kk[d] * g->d[d];
        if (p < 0 || p >= g->in[d]) inside = 0;
        base = base * g->in[d] + p;
      }
      if (!inside) {
        memset(dl, 0, (size_t)OW * sizeof(float));
      } else {
        const float *srow = src + base * W;
        for (int64_t ow = 0; ow < lo; ow++) dl[ow] = 0.0f;
        if (sw == 1) {
          if (hi > lo) nbl_copy_row(dl + lo, srow + lo + off, hi - lo);
        } else {
          for (int64_t ow = lo; ow < hi; ow++) dl[ow] = srow[ow * sw + off];
        }
        for (int64_t ow = hi; ow < OW; ow++) dl[ow] = 0.0f;
      }
      for (int d = L - 1; d >= 0; d--) { /* the next line */
        if (++o[d] < g->out[d]) break;
        o[d] = 0;
      }
    }
  }
}

typedef struct im2col_task {
  const nbl_conv_geom *g;
  const float *x;
  float *col;
  int64_t l0, l1; /* the output lines (N-D) */
} im2col_task;

static void im2col_run(void *arg, int64_t begin, int64_t end) {
  const im2col_task *t = arg;
  if (t->g->ns == 2) {
    im2col2d_rows(t->g, t->x, t->col, begin, end);
    return;
  }
  const int64_t w = (t->l1 - t->l0) * t->g->out[t->g->ns - 1];
  im2col_nd_rows(t->g, t->x, t->col + begin * w, begin, end, t->l0, t->l1);
}

void nbl_im2col_f32(const nbl_conv_geom *g, int64_t Cg, const float *x, float *col) {
  const int64_t OW = g->out[g->ns - 1];
  if (g->ns == 2) im2col2d_rows(g, x, col, 0, Cg * g->k[0]);
  else im2col_nd_rows(g, x, col, 0, Cg * g->k_sz, 0, OW ? g->out_sz / OW : 0);
}

/* The error of a failed im2col buffer allocation (naming the node when
 * there is a kernel context). */
static nbl_status col_oom(nbl_kctx *ctx) {
  if (ctx) return nbl_kerr(ctx, NBL_ERR_OUT_OF_MEMORY, "out of memory for the im2col buffer");
  return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory for the im2col buffer");
}

/* Layers other than 2-D (1-D, 3-D, ...) with one group or more: im2col
 * and a product per group and block of output lines, the block as many
 * lines as keep its im2col matrix near NBL_ND_COL_BYTES (at least one), so
 * that the matrix is written and read while in cache and its buffer is
 * small (a 3-D layer's whole matrix runs to hundreds of MB). */
#define NBL_ND_COL_BYTES ((size_t)4 << 20)
static nbl_status conv_nd_blocks(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                                 const float *bias, float *y, const nbl_act *act) {
  const int64_t Cg = g->C / g->group, Mg = g->M / g->group, kdim = Cg * g->k_sz, OW = g->out[g->ns - 1];
  const int64_t lines = OW ? g->out_sz / OW : 0;
  int64_t bl = (int64_t)(NBL_ND_COL_BYTES / sizeof(float)) / (kdim * OW > 0 ? kdim * OW : 1);
  bl = bl < 1 ? 1 : bl > lines ? lines : bl;
  float *col = malloc((size_t)(kdim ? kdim : 1) * (size_t)(bl * OW > 0 ? bl * OW : 1) * sizeof(float));
  if (!col) {
    return col_oom(ctx);
  }
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t gr = 0; gr < g->group; gr++) {
      const float *xg = x + (n * g->C + gr * Cg) * g->in_sz;
      const float *wg = w + gr * Mg * kdim;
      float *yg = y + (n * g->M + gr * Mg) * g->out_sz;
      for (int64_t l0 = 0; l0 < lines; l0 += bl) {
        const int64_t l1 = l0 + bl < lines ? l0 + bl : lines, cols = (l1 - l0) * OW;
        im2col_task it = {g, xg, col, l0, l1};
        if (ctx) nbl_parallel_for(ctx, kdim, 1, im2col_run, &it);
        else im2col_run(&it, 0, kdim);
        nbl_sgemm_bias_act(ctx, 0, 0, Mg, cols, kdim, 1.0f, wg, kdim, col, cols, 0.0f, yg + l0 * OW, g->out_sz,
                           bias ? bias + gr * Mg : NULL, act);
      }
    }
  free(col);
  return NBL_OK;
}

/* 1 when the node's input 1 is a constant initializer (not overridable by a
 * graph input), so its transform can be kept across runs. */
int nbl_conv_weights_const(nbl_kctx *ctx) {
  const nbl_node *n = ctx->node;
  if (!ctx->graph || !n || n->n_inputs < 2 || n->inputs[1] == NBL_NONE) return 0;
  const nbl_value *v = &ctx->graph->values[n->inputs[1]];
  return v->init != NULL && !(v->flags & NBL_VAL_INPUT);
}

#if defined(__x86_64__)
/* Grouped layers (ResNeXt, RegNet, ShuffleNet: from 2 to a few dozen
 * channels a group), 2-D, AVX-512: each group a one-group layer of its own
 * through the shifted-rows kernel (conv_shift.c), the groups' weights
 * packed together once (nbl_c11_weights_groups), the (image, group) pairs
 * spread over the threads, each pair on one. An im2col and a BLAS product
 * of Mg rows per group ran RegNetX-400MF's grouped 3x3 layers at a third of
 * the one-group kernel's speed. 0 when it does not apply (a group's
 * weights past the L2 over few outputs, as nbl_conv_shift_f32 judges, a
 * geometry the shifted rows do not take, out of memory): nothing of y to
 * keep then, the caller's path writes all of it. */
typedef struct grp_task {
  nbl_kctx *ctx;
  const nbl_conv_geom *g, *gs; /* the layer, one group of one image */
  const float *x, *wp, *bias;
  float *y;
  const nbl_act *act;
  _Atomic int failed;
} grp_task;

static void grp_run(void *arg, int64_t begin, int64_t end) {
  grp_task *t = arg;
  const nbl_conv_geom *g = t->g;
  int64_t G = g->group, Cg = g->C / G, Mg = g->M / G, K = Cg * g->k_sz;
  nbl_kctx one = *t->ctx; /* each pair on the thread that takes it */
  one.threads = 1;
  for (int64_t u = begin; u < end && !atomic_load(&t->failed); u++) {
    int64_t n = u / G, gr = u % G;
    if (!nbl_conv_shift_f32_wp(&one, t->gs, t->x + (n * g->C + gr * Cg) * g->in_sz,
                               t->wp + gr * ((Mg + 7) / 8 * 8) * K, t->bias ? t->bias + gr * Mg : NULL,
                               t->y + (n * g->M + gr * Mg) * g->out_sz, t->act))
      atomic_store(&t->failed, 1);
  }
}

static int grouped_shift(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                         const float *bias, float *y, const nbl_act *act) {
  int64_t G = g->group, Cg = g->C / G, Mg = g->M / G;
  if (!ctx || g->ns != 2 || Cg < 2 || !nbl_cpu_has(NBL_CPU_AVX512F) ||
      (Mg * Cg * g->k_sz > 131072 && g->out_sz <= 256)) /* nbl_conv_shift_f32's rule */
    return 0;
  nbl_conv_geom gs = *g;
  gs.N = 1, gs.C = Cg, gs.M = Mg, gs.group = 1;
  void *scratch = NULL;
  const float *wp = nbl_c11_weights_groups(ctx, w, g->M, Cg * g->k_sz, G, &scratch);
  if (!wp) return 0;
  grp_task t = {ctx, g, &gs, x, wp, bias, y, act, 0};
  nbl_parallel_for(ctx, g->N * G, 1, grp_run, &t);
  free(scratch);
  return !atomic_load(&t.failed);
}
#endif

nbl_status nbl_conv_f32(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                        const float *bias, float *y) {
  return nbl_conv_f32_act(ctx, g, x, w, bias, y, NULL);
}

nbl_status nbl_conv_f32_act(nbl_kctx *ctx, const nbl_conv_geom *g, const float *x, const float *w,
                            const float *bias, float *y, const nbl_act *act) {
  if (!nbl_act_on(act)) act = NULL;
  int64_t Cg = g->C / g->group, Mg = g->M / g->group;
  if (g->N == 0 || g->M == 0 || g->out_sz == 0) return NBL_OK;
  if (g->ns == 2 && Cg == 1 && g->group == g->C) return nbl_conv_dw_f32(ctx, g, x, w, bias, y, act);
  /* windows mostly in the padding (large dilations on small planes): one
   * product per tap over the outputs it reaches */
  if (nbl_conv_taps_f32(ctx, g, x, w, bias, y, act)) return NBL_OK;
#if defined(__x86_64__)
  /* 1x1 and im2col products with one group: the AVX-512 kernel below */
  int own = g->group == 1 && ctx && nbl_cpu_has(NBL_CPU_AVX512F);
  void *scratch = NULL; /* weights packed for this call when they are not constant */
#else
  int own = 0;
#endif
  /* Winograd, except on outputs of 64 pixels or fewer when the AVX-512
   * kernel runs: its 16 products then have too few columns to beat one
   * direct product (ResNet-18's 7x7 layers, measured) */
  if (ctx && nbl_wino_ok(g) && !(own && g->out_sz <= 64) && nbl_wino_conv(ctx, g, x, w, bias, y, act))
    return NBL_OK;
#if defined(__x86_64__)
  if (g->group > 1 && grouped_shift(ctx, g, x, w, bias, y, act)) return NBL_OK;
#endif
  int direct = nbl_conv_pointwise(g);
  if (!direct && g->ns != 2) return conv_nd_blocks(ctx, g, x, w, bias, y, act);
#if defined(__x86_64__)
  /* other 2-D layers: the shifted-rows kernel, no im2col */
  if (own && !direct && nbl_conv_shift_f32(ctx, g, x, w, bias, y, act)) return NBL_OK;
  if (direct && own) {
    for (int64_t n = 0; n < g->N; n++)
      if (!nbl_conv_gemm_avx512(ctx, g->M, g->C, g->out_sz, x + n * g->C * g->in_sz, w, bias,
                                y + n * g->M * g->out_sz, act, &scratch))
        own = 0;
    if (own) {
      free(scratch);
      return NBL_OK;
    }
  }
#endif
  int64_t kdim = Cg * g->k_sz;
  float *col = NULL;
  if (!direct) {
    col = malloc((size_t)(kdim ? kdim : 1) * (size_t)g->out_sz * sizeof(float));
    if (!col) {
      return col_oom(ctx);
    }
  }
  for (int64_t n = 0; n < g->N; n++)
    for (int64_t gr = 0; gr < g->group; gr++) {
      const float *xg = x + (n * g->C + gr * Cg) * g->in_sz;
      const float *wg = w + gr * Mg * kdim;
      float *yg = y + (n * g->M + gr * Mg) * g->out_sz;
      const float *b = xg;
      if (!direct) {
        if (g->ns == 2 && ctx) {
          im2col_task it = {g, xg, col, 0, 0};
          nbl_parallel_for(ctx, Cg * g->k[0], 1, im2col_run, &it);
        } else {
          nbl_im2col_f32(g, Cg, xg, col);
        }
        b = col;
      }
#if defined(__x86_64__)
      if (own && nbl_conv_gemm_avx512(ctx, Mg, kdim, g->out_sz, b, wg, bias, yg, act, &scratch))
        continue;
#endif
      /* the bias goes into C first and the product adds to it (beta 1): one
       * pass over the output instead of a zeroing pass and an add pass */
      nbl_sgemm_bias_act(ctx, 0, 0, Mg, g->out_sz, kdim, 1.0f, wg, kdim, b, g->out_sz, 0.0f, yg,
                         g->out_sz, bias ? bias + gr * Mg : NULL, act);
    }
  free(col);
#if defined(__x86_64__)
  free(scratch);
#endif
  return NBL_OK;
}
