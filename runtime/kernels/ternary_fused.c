/* ternary_fused.c - the kernel of the fused ternary nodes (see
 * ternary_fused.h): activation codes, im2col panels, the integer products
 * of ternary_gemm.h and the epilogue. */
#include "runtime/kernels/ternary_fused.h"
#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/code_direct.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/gemm.h"
#include "runtime/kernels/kdebug.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static _Atomic long g_int_runs, g_amax_reuses, g_isa_runs[3];
long nbl_t_integer_runs(void) { return atomic_load(&g_int_runs); }
long nbl_t_isa_runs(nbl_t_isa isa) {
  return isa >= NBL_T_SCALAR && isa <= NBL_T_AVX512 ? atomic_load(&g_isa_runs[isa]) : 0;
}

/* One more run of f on the integer path. */
static void count_run(const nbl_t_fused *f) {
  atomic_fetch_add(&g_int_runs, 1);
  atomic_fetch_add(&g_isa_runs[f->isa], 1);
}
long nbl_t_amax_reuses(void) { return atomic_load(&g_amax_reuses); }

/* *m = max(*m, v) for the bits of the written |y| (several threads). */
static void amax_merge(_Atomic uint32_t *m, uint32_t v) {
  uint32_t cur = atomic_load(m);
  while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
  }
}

/* The fused activation (nbl_code_act). */
static inline float act_apply(const nbl_t_fused *f, float v) { return nbl_code_act(&f->cons, v); }

/* The per-tensor activation scale of max|x| = mx, as nbl_absmax8_scale. */
static inline float act_scale(float mx) { return mx > 0.0f ? mx / 127.0f : 1.0f; }

/* ------------------------------------------------------------------ weights */

static int64_t wnumel(const nbl_t_fused *f) {
  int64_t n = 1;
  for (int i = 0; i < f->cons.wrank; i++) n *= f->cons.wdims[i];
  return n;
}

void nbl_t_fused_release(nbl_t_fused *f) {
  int n = f->cons.kind == NBL_CODE_CONV ? f->cons.groups : 1;
  if (f->tw)
    for (int i = 0; i < n; i++) nbl_t_weights_free(&f->tw[i]);
  free(f->tw);
  if (f->tdirect) nbl_t_weights_free(f->tdirect);
  free(f->tdirect);
  free(f->dw_w);
  f->tw = NULL;
  f->tdirect = NULL;
  f->dw_w = NULL;
  f->wdata = NULL;
}

/* The weight codes (malloc'd) and scale from the W source w (and the packed
 * scale tensor); 0, or -1 when the integer path cannot take them. */
static int weight_codes(const nbl_t_fused *f, const nbl_rt_tensor *w, const nbl_rt_tensor *scale,
                        int8_t **codes, float *s) {
  int64_t n = wnumel(f);
  int8_t *q = malloc((size_t)(n ? n : 1));
  if (!q) return -1;
  if (f->wsrc == NBL_TF_WQUANT) {
    if (w->dtype != NBL_DT_FLOAT || w->numel != n) goto fail;
    const float *x = w->data;
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(x[i])) goto fail;
    *s = nbl_tern_scale(x, (size_t)n);
    nbl_tern_codes(x, q, (size_t)n, *s);
  } else {
    if (!scale || scale->dtype != NBL_DT_FLOAT || scale->numel != 1 || w->dtype != NBL_DT_UINT8 ||
        (size_t)w->numel != nbl_tern_packed_bytes(f->packing, (size_t)n))
      goto fail;
    *s = ((const float *)scale->data)[0];
    if (!isfinite(*s) || nbl_tern_unpack(f->packing, w->data, (size_t)n, q) != 0) goto fail;
  }
  *codes = q;
  return 0;
fail:
  free(q);
  return -1;
}

/* The weights of a Conv of one group for the direct kernel (code_direct.h):
 * row m as k = t * 4 * C4 + c, channels past C zero. */
static int pack_direct(nbl_t_fused *f, const int8_t *q) {
  int64_t K;
  int8_t *r = nbl_cd_order_weights(q, f->cons.wdims[0], f->cons.wdims[1],
                                   f->cons.wdims[2] * f->cons.wdims[3], &K);
  f->tdirect = calloc(1, sizeof(nbl_t_weights));
  int rc = r && f->tdirect ? nbl_t_pack(r, f->cons.wdims[0], K, K, 1, 0, f->tdirect) : -1;
  if (rc != 0) {
    free(f->tdirect);
    f->tdirect = NULL;
  }
  free(r);
  return rc;
}

int nbl_t_fused_pack(nbl_t_fused *f, const nbl_rt_tensor *w, const nbl_rt_tensor *scale) {
  nbl_t_fused_release(f);
  int8_t *q = NULL;
  float s = 0.0f;
  if (weight_codes(f, w, scale, &q, &s) != 0) return -1;
  int ok = 1;
  if (f->cons.kind == NBL_CODE_CONV) {
    int64_t Mg = f->cons.wdims[0] / f->cons.groups;
    int64_t Kg = f->cons.wdims[1] * f->cons.wdims[2] * f->cons.wdims[3];
    if (Mg == 1 && f->cons.wdims[1] == 1) { /* depthwise: the FP32 kernel on codes */
      f->dw_w = malloc(sizeof(float) * (size_t)(f->cons.groups * Kg + 1));
      ok = f->dw_w != NULL;
      for (int64_t i = 0; ok && i < f->cons.groups * Kg; i++) f->dw_w[i] = q[i];
    } else {
      f->tw = calloc((size_t)f->cons.groups, sizeof(nbl_t_weights));
      ok = f->tw != NULL;
      for (int gi = 0; ok && gi < f->cons.groups; gi++)
        ok = nbl_t_pack(q + gi * Mg * Kg, Mg, Kg, Kg, 1, 0, &f->tw[gi]) == 0;
      /* without it (out of memory) the convolution takes the im2col tiles */
      if (ok && f->cons.groups == 1 && f->cons.wrank == 4 && f->isa == NBL_T_AVX512) (void)pack_direct(f, q);
    }
  } else {
    /* rows of the packed form are the output columns n */
    int64_t K = f->cons.trans_b ? f->cons.wdims[1] : f->cons.wdims[0];
    int64_t N = f->cons.trans_b ? f->cons.wdims[0] : f->cons.wdims[1];
    f->tw = calloc(1, sizeof(nbl_t_weights));
    ok = f->tw != NULL;
    if (ok) ok = nbl_t_pack(q, N, K, f->cons.trans_b ? K : 1, f->cons.trans_b ? 1 : N, 1, &f->tw[0]) == 0;
  }
  free(q);
  if (!ok) {
    nbl_t_fused_release(f);
    return -1;
  }
  f->w_scale = s;
  f->wdata = w->data;
  return 0;
}

/* ------------------------------------------------------------------ the literal composition */


static nbl_status run_literal(nbl_kctx *c, nbl_t_fused *f) {
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  nbl_rt_tensor xh = {0}, wh = {0};
  nbl_status st = nbl_rt_tensor_alloc(&xh, NBL_DT_FLOAT, X->rank, X->dims);
  if (st == NBL_OK) st = nbl_rt_tensor_alloc(&wh, NBL_DT_FLOAT, f->cons.wrank, f->cons.wdims);
  if (st != NBL_OK) {
    nbl_rt_tensor_free(&xh);
    return nbl_kerr(c, st, "out of memory");
  }
  int per_row = f->per_row && X->rank > 0;
  int64_t row = per_row ? X->dims[X->rank - 1] : X->numel;
  if (X->numel) nbl_absmax8_fake_quant(X->data, xh.data, (size_t)X->numel, (size_t)row, per_row);
  int64_t n = wnumel(f);
  float *wv = wh.data;
  if (f->wsrc == NBL_TF_WQUANT) {
    if (W->dtype != NBL_DT_FLOAT || W->numel != n) {
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "W must be float32 of the planned shape");
      goto done;
    }
    nbl_tern_fake_quant(W->data, wv, (size_t)n, nbl_tern_scale(W->data, (size_t)n));
  } else {
    const nbl_rt_tensor *S = c->n_in > 3 ? c->in[3] : NULL;
    int8_t *q = malloc((size_t)(n ? n : 1));
    if (!q) {
      st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
      goto done;
    }
    if (!S || S->dtype != NBL_DT_FLOAT || S->numel != 1 || W->dtype != NBL_DT_UINT8 ||
        (size_t)W->numel != nbl_tern_packed_bytes(f->packing, (size_t)n) ||
        nbl_tern_unpack(f->packing, W->data, (size_t)n, q) != 0) {
      free(q);
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "the packed ternary weight or its scale is invalid");
      goto done;
    }
    float s = ((const float *)S->data)[0];
    for (int64_t i = 0; i < n; i++) wv[i] = s * (float)q[i];
    free(q);
  }
  st = nbl_code_run_consumer(c, &f->cons, &xh, &wh);
done:
  nbl_rt_tensor_free(&xh);
  nbl_rt_tensor_free(&wh);
  return st;
}

/* ------------------------------------------------------------------ activation statistics */

#define SCAN_CHUNKS 64

typedef struct scan_job {
  nbl_t_isa isa;
  const float *x;
  int64_t n;
  float mx[SCAN_CHUNKS];
  int ok[SCAN_CHUNKS];
} scan_job;

static void scan_chunks(void *arg, int64_t b, int64_t e) {
  scan_job *j = arg;
  for (int64_t t = b; t < e; t++) {
    int64_t lo = j->n * t / SCAN_CHUNKS, hi = j->n * (t + 1) / SCAN_CHUNKS;
    j->ok[t] = nbl_t_absmax(j->isa, j->x + lo, hi - lo, &j->mx[t]);
  }
}

/* max|x| over x[0..n) with the executor's threads; 0 when some x is not finite. */
static int scan_x(nbl_kctx *c, nbl_t_isa isa, const float *x, int64_t n, float *mx) {
  if (n < (1 << 16) || c->threads <= 1) return nbl_t_absmax(isa, x, n, mx);
  scan_job j = {.isa = isa, .x = x, .n = n};
  nbl_parallel_for(c, SCAN_CHUNKS, 1, scan_chunks, &j);
  float m = 0.0f;
  int ok = 1;
  for (int t = 0; t < SCAN_CHUNKS; t++) {
    ok &= j.ok[t];
    if (j.mx[t] > m) m = j.mx[t];
  }
  *mx = m;
  return ok;
}

/* ------------------------------------------------------------------ Conv */

typedef struct qpad_job {
  nbl_t_isa isa;
  const float *x;
  uint8_t *u;
  int64_t H, W, Hp, Wp, pt, pl;
  float s;
} qpad_job;

/* Rows [b, e) of every plane (row r: plane r / H, row r % H) into the padded bytes. */
static void qpad_rows(void *arg, int64_t b, int64_t e) {
  const qpad_job *j = arg;
  if (j->Hp == j->H && j->Wp == j->W) { /* no padding: the rows follow each other */
    nbl_t_quant(j->isa, j->x + b * j->W, j->u + b * j->W, (e - b) * j->W, j->s, 128);
    return;
  }
  for (int64_t r = b; r < e; r++) {
    int64_t q = r / j->H, ih = r % j->H;
    nbl_t_quant(j->isa, j->x + r * j->W, j->u + (q * j->Hp + ih + j->pt) * j->Wp + j->pl, j->W,
                j->s, 128);
  }
}

typedef struct conv_job {
  const nbl_t_fused *f;
  const nbl_conv_geom *g;
  const uint8_t *x; /* the image group's channels: padded bytes [Cg][Hp][Wp] (pointwise: [Cg][P]) */
  int64_t Hp, Wp, Kg, P;
  int pointwise;
  const nbl_t_weights *W;
  float *y; /* [Mg][P] */
  nbl_t_epi e;
  int64_t pb, nmc, mc;
  const nbl_cd_plan *d; /* the direct kernel's plan (NULL: im2col panels) */
  const uint8_t *dx;     /* its input: the image's bytes in the plan's layout */
  int64_t PP;            /* its padded pixels */
  _Atomic int oom;
  _Atomic uint32_t amax; /* the largest |y| written, as bits */
} conv_job;


/* The panels of pixels [p0, p1) (p0 a multiple of 32) into X4; tmp holds 4 * pb bytes. */
static void fill_block(const conv_job *j, int64_t p0, int64_t p1, uint8_t *X4, uint8_t *tmp) {
  int64_t n = (p1 - p0 + 31) / 32 * 32, nv = p1 - p0, Kp = j->W->Kp;
  for (int64_t k4 = 0; k4 < Kp / 4; k4++) {
    const uint8_t *r[4];
    for (int q = 0; q < 4; q++) {
      int64_t k = 4 * k4 + q;
      uint8_t *row = tmp + q * j->pb;
      r[q] = row;
      if (k >= j->Kg) {
        memset(row, 128, (size_t)n);
        continue;
      }
      if (j->pointwise && nv == n) {
        r[q] = j->x + k * j->P + p0;
        continue;
      }
      if (j->pointwise) memcpy(row, j->x + k * j->P + p0, (size_t)nv);
      else nbl_code_im2col_row(j->g, j->x, j->Hp, j->Wp, j->f->isa == NBL_T_AVX512, k, p0, p1, row);
      if (n > nv) memset(row + nv, 128, (size_t)(n - nv));
    }
    for (int64_t q = 0; q < n; q += 32)
      nbl_code_interleave4(r[0] + q, r[1] + q, r[2] + q, r[3] + q, X4 + (q / 32 * (Kp / 4) + k4) * 128, 32);
  }
}

static void conv_tasks(void *arg, int64_t b, int64_t e) {
  conv_job *j = arg;
  int64_t Kp = j->W->Kp;
  uint8_t *X4 = malloc((size_t)(Kp * j->pb)), *tmp = malloc((size_t)(4 * j->pb));
  if (!X4 || !tmp) {
    free(X4);
    free(tmp);
    j->oom = 1;
    return;
  }
  uint32_t amax = 0;
  for (int64_t t = b; t < e; t++) {
    int64_t pi = t / j->nmc, mi = t % j->nmc;
    int64_t p0 = pi * j->pb, p1 = p0 + j->pb < j->P ? p0 + j->pb : j->P;
    int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->W->M ? m0 + j->mc : j->W->M;
    fill_block(j, p0, p1, X4, tmp);
    nbl_t_epi ep = j->e; /* the residual is indexed like y */
    if (ep.res) ep.res += p0;
    if (ep.codes) ep.codes += p0;
    ep.amax = &amax;
    nbl_t_tile(j->f->isa, j->W, X4, m0, m1, 0, p1 - p0, NULL, j->y + p0, j->P, &ep);
  }
  amax_merge(&j->amax, amax);
  free(X4);
  free(tmp);
}

/* Blocks of padded pixels x chunks of channels by the direct kernel (the
 * epilogue's residual and codes indexed like y, from the image's start). */
static void direct_tasks(void *arg, int64_t b, int64_t e) {
  conv_job *j = arg;
  uint32_t amax = 0;
  for (int64_t t = b; t < e; t++) {
    int64_t pi = t / j->nmc, mi = t % j->nmc;
    int64_t p0 = pi * j->pb, p1 = p0 + j->pb < j->PP ? p0 + j->pb : j->PP;
    int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->W->M ? m0 + j->mc : j->W->M;
    nbl_t_epi ep = j->e;
    ep.amax = &amax;
    nbl_t_direct_out o = {&ep, j->y, j->P};
    nbl_cd_tile(j->d, j->dx, j->W->w, j->W->rowsum, j->W->Kp, 128, m0, m1, p0, p1,
                nbl_t_direct_store, &o);
  }
  amax_merge(&j->amax, amax);
}

typedef struct dquant_ctx {
  nbl_t_isa isa;
  const float *x;
  int64_t C, HW;
  float s;
} dquant_ctx;

/* The direct kernel's quantizer: channel c of image n as bytes u = q + 128. */
static void dquant_plane(const void *ctx, int64_t n, int64_t c, uint8_t *dst) {
  const dquant_ctx *q = ctx;
  nbl_t_quant(q->isa, q->x + (n * q->C + c) * q->HW, dst, q->HW, q->s, 128);
}

/* 1 when the convolution g of f runs the direct kernel (code_direct.h:
 * nbl_cd_eligible, on AVX-512 VNNI, unless switched off). */
static int direct_wanted(const nbl_t_fused *f, const nbl_conv_geom *g) {
  return f->tdirect && nbl_cd_eligible(g) && nbl_kdebug_get(NBL_KS_T_DIRECT) != 0;
}

/* Record the largest |y| written (bits) for the fused node reading y. */
static void hand_over(nbl_t_fused *f, const float *y, uint32_t amax) {
  f->amax_bits = amax;
  f->amax_data = y;
  f->amax_ok = 1;
}

/* A node fed INT8 codes (codes_in: its producer wrote them in place of the
 * floats, see run_conv) has no floats to fall back on: the producer sends
 * them only to a depthwise layer, which takes them. */
static nbl_status literal_or_fail(nbl_kctx *c, nbl_t_fused *f, int codes_in) {
  if (codes_in)
    return nbl_kerr(c, NBL_ERR_INTERNAL, "activation codes received where floats are needed");
  return run_literal(c, f);
}

/* Outputs of at least NBL_KS_T_CODE_LINK_MIN elements go to a linked
 * depthwise consumer as its INT8 codes: a first pass of the products finds
 * the output's max|y| (the consumer's scale), a second writes the codes
 * clamp(rint(y / s), -128, 127) where the floats would go. The second pass
 * costs about what the consumer saves (the quantization of the floats, and
 * 4 bytes an element written and read again, 1 instead) only where the
 * floats would go out to memory. */
static nbl_status run_conv(nbl_kctx *c, nbl_t_fused *f, float s, int codes_in) {
  const nbl_rt_tensor *X = c->in[0], *B = c->n_in > 2 ? c->in[2] : NULL;
  nbl_conv_geom g;
  int take;
  nbl_status st = nbl_code_conv_geom(c, &f->cons, X, B, &g, &take);
  if (st != NBL_OK) return st;
  if (!take) return literal_or_fail(c, f, codes_in);
  int64_t od[4] = {g.N, g.M, g.out[0], g.out[1]};
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, 4, od))) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  if (g.N * g.M * g.out_sz == 0) return NBL_OK;
  const float *bias = B ? B->data : NULL;
  float sc = s * f->w_scale;
  int64_t Cg = g.C / g.group, Mg = g.M / g.group, P = g.out_sz;
  /* a fused Add: in the epilogue when the residual has the output's shape,
   * else conv + bias here and the Add (broadcasting) and activation after */
  const float *res = NULL;
  int post = 0;
  if (f->cons.res_add) {
    const nbl_rt_tensor *R = c->n_in > 4 ? c->in[4] : NULL;
    int same = R && R->dtype == NBL_DT_FLOAT && R->rank == 4 && R->data != y;
    for (int d = 0; same && d < 4; d++) same = R->dims[d] == od[d];
    if (same) res = R->data;
    else post = 1;
  }
  int act = f->cons.act && !post;
  if (f->dw_w) {
    uint32_t amax = 0;
    st = nbl_t_run_depthwise(c, f, &g, codes_in ? NULL : X->data,
                             codes_in ? (const int8_t *)X->data : NULL, s, sc, bias, res, act, y,
                             &amax);
    if (st == NBL_ERR_OUT_OF_MEMORY) return nbl_kerr(c, st, "out of memory");
    if (st != NBL_OK) return literal_or_fail(c, f, codes_in);
    count_run(f);
    if (post)
      return nbl_code_finish_residual(c, &f->cons);
    hand_over(f, y, amax);
    return NBL_OK;
  }
  if (!f->tw || codes_in) return literal_or_fail(c, f, codes_in);
  int direct = direct_wanted(f, &g);
  int pointwise = !direct && nbl_conv_pointwise(&g);
  int64_t Hp = g.in[0] + g.pb[0], Wp = g.in[1] + g.pb[1];
  int64_t need_h = (g.out[0] - 1) * g.s[0] + (g.k[0] - 1) * g.d[0] + 1;
  int64_t need_w = (g.out[1] - 1) * g.s[1] + (g.k[1] - 1) * g.d[1] + 1;
  if (Hp < need_h) Hp = need_h;
  if (Wp < need_w) Wp = need_w;
  if (pointwise) Hp = g.in[0], Wp = g.in[1];
  /* the direct kernel's input: quads of channels, every padded pixel's 4
   * bytes together, in phase planes (code_direct.h) */
  nbl_cd_plan dd = {0};
  if (direct && nbl_cd_plan_init(&dd, &g) != 0) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  size_t xbytes = direct ? (size_t)g.N * nbl_cd_image_bytes(&dd) : (size_t)(g.N * g.C * Hp * Wp);
  uint8_t *xu = malloc(xbytes ? xbytes : 1);
  if (!xu) {
    nbl_cd_plan_free(&dd);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  if (direct) {
    dquant_ctx dq = {f->isa, X->data, g.C, g.in_sz, s};
    if (nbl_cd_pack_input(c, &dd, g.N, 128, dquant_plane, &dq, xu) != 0) {
      free(xu);
      nbl_cd_plan_free(&dd);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  } else {
    if (!pointwise) memset(xu, 128, xbytes);
    qpad_job qj = {f->isa, X->data, xu, g.in[0], g.in[1], Hp, Wp, pointwise ? 0 : g.pb[0],
                   pointwise ? 0 : g.pb[1], s};
    nbl_parallel_for(c, g.N * g.C * g.in[0], 16, qpad_rows, &qj);
  }
  int threads = c->threads > 0 ? c->threads : 1;
  conv_job j = {.f = f, .g = &g, .Hp = Hp, .Wp = Wp, .Kg = Cg * g.k_sz, .P = P,
                .pointwise = pointwise, .d = direct ? &dd : NULL, .PP = dd.PP};
  j.e = (nbl_t_epi){sc, NULL, act, f->cons.act_lo, f->cons.act_hi, NULL};
  /* blocks of pixels whose panels (Kp x pb bytes) stay in L2 across the
   * channels; the channels split too when the blocks alone leave a thread idle */
  int64_t pb = (int64_t)(192 * 1024) / (direct ? f->tdirect : &f->tw[0])->Kp / 32 * 32;
  j.pb = pb < 32 ? 32 : pb > 1024 ? 1024 : pb;
  int64_t npb = ((direct ? dd.PP : P) + j.pb - 1) / j.pb;
  nbl_split_rows(Mg, NBL_T_CR, npb >= 2 * threads || threads == 1 ? 1 : (2 * threads + npb - 1) / npb,
                 &j.nmc, &j.mc);
  /* the output as codes for the linked depthwise consumer G: a pass for
   * max|y| (G's scale), then one writing G's codes */
  nbl_t_fused *G = f->link;
  int64_t ny = g.N * g.M * P;
  int emit = G && !post && g.group == 1 && f->isa == NBL_T_AVX512 &&
             ny >= nbl_kdebug_get(NBL_KS_T_CODE_LINK_MIN);
  float cs = 0.0f;
  for (int pass = emit ? 0 : 1; pass < 2; pass++) {
    j.e.no_store = pass == 0;
    for (int64_t n = 0; n < g.N && !j.oom; n++)
      for (int64_t gi = 0; gi < g.group && !j.oom; gi++) {
        j.x = xu + (n * g.C + gi * Cg) * Hp * Wp;
        j.W = &f->tw[gi];
        if (direct) {
          j.dx = xu + n * nbl_cd_image_bytes(&dd);
          j.W = f->tdirect;
        }
        j.y = y + (n * g.M + gi * Mg) * P;
        j.e.codes = cs > 0.0f ? (int8_t *)(void *)y + (n * g.M + gi * Mg) * P : NULL;
        j.e.cs = cs;
        j.e.bias = bias ? bias + gi * Mg : NULL;
        j.e.res = res ? res + (n * g.M + gi * Mg) * P : NULL;
        nbl_parallel_for(c, npb * j.nmc, 1, direct ? direct_tasks : conv_tasks, &j);
      }
    if (pass == 0) { /* G's scale, as G would find it in the floats */
      uint32_t b = atomic_load(&j.amax);
      float mx;
      memcpy(&mx, &b, 4);
      if (b < 0x7f800000u && isfinite(1.0f / act_scale(mx))) cs = act_scale(mx);
      else j.e.no_store = 0; /* not finite: the floats after all */
    }
  }
  free(xu);
  nbl_cd_plan_free(&dd);
  if (j.oom) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  count_run(f);
  if (direct) nbl_kcount(NBL_KC_T_DIRECT_RUNS);
  if (post)
    return nbl_code_finish_residual(c, &f->cons);
  if (cs > 0.0f) {
    f->codes_for = G;
    f->code_scale = cs;
    f->code_data = y;
    nbl_kcount(NBL_KC_T_CODE_LINKS);
    return NBL_OK;
  }
  hand_over(f, y, atomic_load(&j.amax));
  return NBL_OK;
}

/* ------------------------------------------------------------------ Gemm / MatMul */

#define GEMV_ROWS 8 /* fewer rows of A than this: the vector kernel, a row at a time */

typedef struct mm_job {
  const nbl_t_fused *f;
  const nbl_t_weights *W;
  const uint8_t *X4;  /* tiles: the panels of A */
  int32_t *Ci;        /* tiles: [N][Mp] */
  int64_t Mp, npn;    /* rows of A rounded up to 32; panels */
  const int8_t *a;    /* vectors: the prepared row */
  int32_t qsum, *acc; /* vectors: [N] */
} mm_job;

static void mm_tiles(void *arg, int64_t b, int64_t e) {
  const mm_job *j = arg;
  int64_t nblk = (j->W->M + NBL_T_CR - 1) / NBL_T_CR;
  for (int64_t t = b; t < e; t++) {
    int64_t mb = t % nblk, pp = t / nblk; /* channel block, panel of 32 rows */
    int64_t m0 = mb * NBL_T_CR, m1 = m0 + NBL_T_CR < j->W->M ? m0 + NBL_T_CR : j->W->M;
    nbl_t_tile(j->f->isa, j->W, j->X4, m0, m1, pp * 32, pp * 32 + 32, j->Ci, NULL, j->Mp, NULL);
  }
}

static void mm_vec(void *arg, int64_t b, int64_t e) {
  const mm_job *j = arg;
  nbl_t_gemv(j->f->isa, j->W, j->a, j->qsum, b, e, j->acc + b);
}

static nbl_status run_mm(nbl_kctx *c, nbl_t_fused *f, float s_tensor) {
  const nbl_rt_tensor *X = c->in[0], *Cb = f->cons.kind == NBL_CODE_GEMM && c->n_in > 2 ? c->in[2] : NULL;
  const nbl_t_weights *W = &f->tw[0];
  int64_t K = W->K, N = W->M, M;
  int64_t od[NBL_MAX_RANK];
  int orank;
  if (f->cons.kind == NBL_CODE_GEMM) {
    if (X->rank != 2 || X->dims[1] != K) return run_literal(c, f);
    M = X->dims[0];
    od[0] = M;
    od[1] = N;
    orank = 2;
  } else {
    if (X->rank < 1 || X->dims[X->rank - 1] != K) return run_literal(c, f);
    M = 1;
    for (int i = 0; i < X->rank - 1; i++) M *= X->dims[i];
    orank = X->rank;
    for (int i = 0; i < X->rank - 1; i++) od[i] = X->dims[i];
    od[orank - 1] = N;
  }
  int cmode = 0; /* Gemm C: 0 none, 1 scalar, 2 a row [N], 3 full [M, N] */
  if (Cb && f->cons.beta != 0.0f) {
    if (Cb->dtype != NBL_DT_FLOAT) return run_literal(c, f);
    if (Cb->numel == 1) cmode = 1;
    else if (Cb->rank >= 1 && Cb->dims[Cb->rank - 1] == N && Cb->numel == N) cmode = 2;
    else if (Cb->rank == 2 && Cb->dims[0] == M && Cb->dims[1] == N) cmode = 3;
    else return run_literal(c, f);
  }
  const float *x = X->data, *cv = Cb ? Cb->data : NULL;
  /* the activation scales: one, or one per row */
  float *sx = malloc(sizeof(float) * (size_t)(M ? M : 1));
  if (!sx) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int64_t m = 0; m < M; m++) {
    float mx;
    if (!f->per_row) {
      sx[m] = s_tensor;
      continue;
    }
    if (!nbl_t_absmax(f->isa, x + m * K, K, &mx)) {
      free(sx);
      return run_literal(c, f);
    }
    sx[m] = act_scale(mx);
  }
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, orank, od);
  if (st) {
    free(sx);
    return st;
  }
  float *y = nbl_kctx_out(c, 0)->data;
  float wsc = f->w_scale * (f->cons.kind == NBL_CODE_GEMM ? f->cons.alpha : 1.0f);
  mm_job j = {.f = f, .W = W};
  if (M * N == 0) goto out;
  if (M < GEMV_ROWS) {
    int8_t *q = malloc((size_t)K + 1), *a = malloc((size_t)W->Kv + 1);
    j.acc = malloc(sizeof(int32_t) * (size_t)N);
    if (!q || !a || !j.acc) {
      free(q);
      free(a);
      free(j.acc);
      free(sx);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    j.a = a;
    for (int64_t m = 0; m < M; m++) {
      nbl_t_quant(f->isa, x + m * K, (uint8_t *)q, K, sx[m], 0);
      j.qsum = nbl_t_gemv_prep(q, K, W->Kv, a);
      nbl_parallel_for(c, N, 64, mm_vec, &j);
      float sc = sx[m] * wsc;
      for (int64_t n = 0; n < N; n++) {
        float v = sc * (float)j.acc[n];
        if (cmode == 1) v += f->cons.beta * cv[0];
        else if (cmode == 2) v += f->cons.beta * cv[n];
        else if (cmode == 3) v += f->cons.beta * cv[m * N + n];
        y[m * N + n] = act_apply(f, v);
      }
    }
    free(q);
    free(a);
    free(j.acc);
    goto out;
  }
  /* tiles: the rows of A are the pixels */
  j.Mp = (M + 31) / 32 * 32;
  j.npn = j.Mp / 32;
  int64_t Kp = W->Kp;
  uint8_t *rowb = malloc((size_t)Kp + 1), *X4 = malloc((size_t)(Kp * j.Mp));
  j.Ci = malloc(sizeof(int32_t) * (size_t)(N * j.Mp));
  if (!rowb || !X4 || !j.Ci) {
    free(rowb);
    free(X4);
    free(j.Ci);
    free(sx);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t m = 0; m < j.Mp; m++) { /* row m's codes to its lane of its panel */
    if (m < M) {
      nbl_t_quant(f->isa, x + m * K, rowb, K, sx[m], 128);
      memset(rowb + K, 128, (size_t)(Kp - K));
    } else {
      memset(rowb, 128, (size_t)Kp);
    }
    uint8_t *pan = X4 + (m / 32) * Kp * 32 + (m % 32) * 4;
    for (int64_t k4 = 0; k4 < Kp / 4; k4++) memcpy(pan + k4 * 128, rowb + 4 * k4, 4);
  }
  j.X4 = X4;
  int64_t nblk = (N + NBL_T_CR - 1) / NBL_T_CR;
  nbl_parallel_for(c, nblk * j.npn, 1, mm_tiles, &j);
  for (int64_t m = 0; m < M; m++) {
    float sc = sx[m] * wsc;
    for (int64_t n = 0; n < N; n++) {
      float v = sc * (float)j.Ci[n * j.Mp + m];
      if (cmode == 1) v += f->cons.beta * cv[0];
      else if (cmode == 2) v += f->cons.beta * cv[n];
      else if (cmode == 3) v += f->cons.beta * cv[m * N + n];
      y[m * N + n] = act_apply(f, v);
    }
  }
  free(rowb);
  free(X4);
  free(j.Ci);
out:
  free(sx);
  count_run(f);
  return NBL_OK;
}

/* ------------------------------------------------------------------ the kernel */

static nbl_status k_fused_ternary(nbl_kctx *c) {
  nbl_t_fused *f = (nbl_t_fused *)(void *)c->node;
  const nbl_rt_tensor *X = c->in[0], *W = c->in[1];
  const nbl_rt_tensor *S = f->wsrc == NBL_TF_WPACKED && c->n_in > 3 ? c->in[3] : NULL;
  if (!X || !W) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input X or W is missing");
  if (X->dtype != NBL_DT_FLOAT)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "X must be float32, got %s", nbl_dtype_name(X->dtype));
  const nbl_t_fused *src = f->xsrc;
  int codes_in = src && src->codes_for == f && src->code_data == X->data;
  if (W->data != f->wdata || (!f->tw && !f->dw_w))
    if (nbl_t_fused_pack(f, W, S) != 0) return literal_or_fail(c, f, codes_in);
  f->amax_ok = 0; /* until this run's output is written by the integer path */
  f->codes_for = NULL;
  float mx = 0.0f;
  if (codes_in) {
    float s = src->code_scale; /* X holds this node's codes (run_conv) */
    atomic_fetch_add(&g_amax_reuses, 1);
    return run_conv(c, f, s, 1);
  }
  if (src && src->amax_ok && src->amax_data == X->data && src->amax_bits < 0x7f800000u &&
      (!f->per_row || f->cons.kind == NBL_CODE_CONV)) {
    memcpy(&mx, &src->amax_bits, 4); /* written by the producer: no scan */
    atomic_fetch_add(&g_amax_reuses, 1);
  } else if (!f->per_row || f->cons.kind == NBL_CODE_CONV) {
    if (!scan_x(c, f->isa, X->data, X->numel, &mx)) return run_literal(c, f);
  }
  float s = act_scale(mx);
  return f->cons.kind == NBL_CODE_CONV ? run_conv(c, f, s, 0) : run_mm(c, f, s);
}

const nbl_op_def nbl_t_fused_def = {"ai.nibble", "FusedTernary", 1, 1, k_fused_ternary,
                                    k_fused_ternary};
