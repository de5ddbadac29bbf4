/* int4_conv.c - fused INT4 dense and grouped convolutions: activation
 * bytes laid out in panels (im2col) block by block, the integer tiles of
 * int4_gemm.c with the float epilogue into the NCHW output, one-group layers
 * on AVX-512 VNNI by the direct kernel shared with the ternary path
 * (code_direct.h, no im2col), and the hand-over of activation bytes to a
 * linked depthwise consumer; see int4_fused.h. */
#include "runtime/kernels/code_conv.h"
#include "runtime/kernels/code_direct.h"
#include "runtime/kernels/int4_fused.h"
#include "runtime/kernels/kdebug.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* ------------------------------------------------------------------ Conv */

/* Dense and grouped Conv, per image and group, block by block of output
 * pixels: the block's activation bytes are laid out in panels of 32 pixels
 * x all k (k over (c, kh, kw): im2col, 4 k per pixel interleaved, the
 * operand of vpdpbusd with pixels along the vector) in a buffer of the
 * thread's that stays in L2, then nbl_i4_conv_gemm writes output-channel x
 * pixel tiles through the epilogue straight into the NCHW output. */
typedef struct x4_job {
  const nbl_conv_geom *g;
  const uint8_t *x; /* the image's group channels, padded NCHW bytes (Hp, Wp) */
  /* or, for 1x1 stride-1 unpadded products, the floats, quantized here */
  const float *xf;
  int64_t xf_index0; /* linear index of xf[0] in X (stochastic rounding position) */
  nbl_i4_quantizer q;
  int off;
  int64_t Kg, Kp, P;
  int64_t Hp, Wp; /* x: planes of Hp x Wp bytes, the input padded with the pad byte */
  int pointwise;  /* 1x1, stride 1, no padding: k is the input channel */
  int gather2;    /* im2col rows of column stride 2 by AVX-512 BW */
  uint8_t pad; /* the byte of a zero activation */
  /* the product */
  const nbl_i4_fused *f;
  const nbl_i4_rows *W;
  int32_t a_zero;
  float *y;
  nbl_i4_epi e;
  /* the split: bands (one per thread), or blocks of pb pixels x nmc chunks
   * of mc output channels */
  int bands;
  int64_t pb, nmc, mc;
  int64_t nkc; /* phase 1: each block's k quads filled in nkc chunks */
  nbl_i4_shared_range range; /* of everything written */
  /* output channels split across threads: the panels of every block are
   * filled once (phase 1) into X4all, then shared by the products (phase 2) */
  uint8_t *X4all;
  int phase;
  uint8_t *u; /* codes mode: the output bytes at the position of y */
  /* range-only pass: stop once the shared range spans the fused activation's
   * bounds (nothing can widen it then) */
  int stop_at_bounds;
  _Atomic int oom;
} x4_job;


/* Group k4 of pixels [p0, p1) (p1 - p0 a multiple of 32, at most j->pb)
 * into the panels at X4 (pixel p0 first); tmp holds 4 * j->pb bytes. */
static void x4_fill(const x4_job *j, int64_t k4, int64_t p0, int64_t p1, uint8_t *X4,
                    uint8_t *tmp) {
  const nbl_conv_geom *g = j->g;
  int64_t n = p1 - p0, nv = j->P - p0 < n ? j->P - p0 : n; /* real pixels */
  if (nv < 0) nv = 0;
  const uint8_t *r[4];
  for (int q = 0; q < 4; q++) {
    int64_t k = 4 * k4 + q;
    uint8_t *row = tmp + q * j->pb;
    r[q] = row;
    if (k >= j->Kg) {
      memset(row, j->pad, (size_t)n);
      continue;
    }
    if (j->xf) /* direct: k is the channel */
      nbl_i4_quantize_u8(&j->q, j->xf + k * g->in_sz + p0, row, (size_t)nv,
                         (uint64_t)(j->xf_index0 + k * g->in_sz + p0), j->off);
    else if (j->pointwise && nv == n)
      r[q] = j->x + k * g->in_sz + p0;
    else if (j->pointwise)
      memcpy(row, j->x + k * g->in_sz + p0, (size_t)nv);
    else
      nbl_code_im2col_row(g, j->x, j->Hp, j->Wp, j->gather2, k, p0, p0 + nv, row);
    if (n > nv) memset(row + nv, j->pad, (size_t)(n - nv));
  }
  for (int64_t q = 0; q < n; q += 32)
    nbl_code_interleave4(r[0] + q, r[1] + q, r[2] + q, r[3] + q, X4 + (q / 32 * (j->Kp / 4) + k4) * 128,
                32);
}

/* The panels of output pixels [p0, p1) (p0 a multiple of 32) into X4. */
static void fill_block(const x4_job *j, int64_t p0, int64_t p1, uint8_t *X4, uint8_t *tmp) {
  int64_t n32 = (p1 - p0 + 31) / 32 * 32;
  for (int64_t k4 = 0; k4 < j->Kp / 4; k4++) x4_fill(j, k4, p0, p0 + n32, X4, tmp);
}

/* Output pixels [p0, p1), channels [m0, m1), from the panels at X4. */
static void product_block(const x4_job *j, int64_t p0, int64_t p1, int64_t m0, int64_t m1,
                          const uint8_t *X4, const nbl_i4_epi *e) {
  nbl_i4_epi ec;
  if (e->codes || e->res) { /* the codes and the residual are indexed like y */
    ec = *e;
    if (e->codes) ec.codes = j->u + p0;
    if (e->res) ec.res = e->res + p0;
    e = &ec;
  }
  nbl_i4_conv_gemm(j->f->isa, j->W, X4, j->a_zero, m0, m1, 0, p1 - p0, NULL, j->y + p0, j->P, e);
}

static void conv_block(const x4_job *j, int64_t p0, int64_t p1, int64_t m0, int64_t m1,
                       uint8_t *X4, uint8_t *tmp, const nbl_i4_epi *e) {
  fill_block(j, p0, p1, X4, tmp);
  product_block(j, p0, p1, m0, m1, X4, e);
}


/* Merges the task's range so far into the shared one; 1 when that spans the
 * activation bounds [lo, hi] (the pass can stop: every output lies there). */
static int bounds_reached(x4_job *j, const nbl_i4_range *rg) {
  nbl_i4_range_merge(&j->range, rg);
  if (atomic_load(&j->range.lo) > j->e.lo || atomic_load(&j->range.hi) < j->e.hi) return 0;
  nbl_kcount(NBL_KC_I4_RANGE_STOPS);
  return 1;
}

static void conv_tasks(void *arg, int64_t b, int64_t e) {
  x4_job *j = arg;
  /* shared panels (two phases): only the fill buffer; else a block's panels too */
  uint8_t *X4 = j->X4all ? NULL : malloc((size_t)(j->Kp * j->pb)), *tmp = malloc((size_t)(4 * j->pb));
  if ((!j->X4all && !X4) || !tmp) {
    free(X4);
    free(tmp);
    j->oom = 1;
    return;
  }
  nbl_i4_range rg = {INFINITY, -INFINITY, 0};
  nbl_i4_epi ep = j->e;
  ep.range = j->e.codes ? NULL : &rg; /* the bytes pass: the range pass found it */
  for (int64_t t = b; t < e; t++) {
    if (j->stop_at_bounds && bounds_reached(j, &rg)) break;
    if (j->bands) { /* thread t's band of pixels (32-aligned), all channels */
      int64_t q0, q1;
      nbl_band(j->P, t, j->bands, 32, &q0, &q1);
      for (int64_t p0 = q0; p0 < q1; p0 += j->pb) {
        if (j->stop_at_bounds && p0 > q0 && bounds_reached(j, &rg)) break;
        int64_t p1 = p0 + j->pb < q1 ? p0 + j->pb : q1;
        uint8_t *X4b = j->X4all ? j->X4all + p0 / 32 * j->Kp * 32 : NULL;
        if (!X4b)
          conv_block(j, p0, p1, 0, j->W->M, X4, tmp, &ep);
        else if (j->phase == 1) /* shared panels, by band: fill */
          fill_block(j, p0, p1, X4b, tmp);
        else /* products from them */
          product_block(j, p0, p1, 0, j->W->M, X4b, &ep);
      }
    } else if (j->phase == 1) { /* fill a chunk of k quads of a block of the shared panels */
      int64_t p0 = t / j->nkc * j->pb, p1 = p0 + j->pb < j->P ? p0 + j->pb : j->P, k0, k1;
      nbl_band(j->Kp / 4, t % j->nkc, j->nkc, 1, &k0, &k1);
      for (int64_t k4 = k0; k4 < k1; k4++)
        x4_fill(j, k4, p0, p0 + (p1 - p0 + 31) / 32 * 32, j->X4all + p0 / 32 * j->Kp * 32, tmp);
    } else {
      int64_t pi = t / j->nmc, mi = t % j->nmc;
      int64_t p0 = pi * j->pb, p1 = p0 + j->pb < j->P ? p0 + j->pb : j->P;
      int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->W->M ? m0 + j->mc : j->W->M;
      if (j->X4all) /* phase 2: products from the shared panels */
        product_block(j, p0, p1, m0, m1, j->X4all + p0 / 32 * j->Kp * 32, &ep);
      else
        conv_block(j, p0, p1, m0, m1, X4, tmp, &ep);
    }
  }
  if (j->phase != 1) nbl_i4_range_merge(&j->range, &rg);
  free(X4);
  free(tmp);
}

/* A node fed activation bytes (nbl_i4_x_is_codes) has no floats to fall
 * back on: the producer only sends them when this node takes the depthwise
 * path. */
static nbl_status literal_or_fail(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p) {
  if (nbl_i4_x_is_codes(f))
    return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes received where floats are needed");
  return nbl_i4_run_literal(c, f, p);
}

/* Outputs of at least NBL_KS_I4_CODE_LINK_MIN elements go as bytes. The
 * second product pass costs about what the consumer saves on tensors that
 * stay in cache; measured on MobileNetV2 it pays only where the floats
 * would go out to memory (its 96 x 112 x 112 expansion: 1.2M elements,
 * 4.8 MB). */

/* The products of xj for the linked consumer G: a pass for the range of the
 * output, then one writing G's activation bytes in place of the floats (y's
 * buffer), the output tensor marked for G. 0 (nothing written) when the
 * range is not finite: the caller then writes floats. */
static int emit_codes(nbl_kctx *c, x4_job *xj, nbl_i4_fused *G, int64_t ny, int64_t tasks,
                      nbl_i4_handover *h) {
  /* with a clamp to finite bounds and no way to a NaN (finite scale and
   * biases), the range is final once it spans the bounds */
  const nbl_i4_epi *e = &xj->e;
  int stop = e->act && !e->res && isfinite(e->lo) && isfinite(e->hi) && isfinite(e->sc);
  for (int64_t m = 0; stop && e->bias && m < xj->W->M; m++) stop = isfinite(e->bias[m]);
  xj->stop_at_bounds = stop;
  xj->e.no_store = 1;
  nbl_parallel_for(c, tasks, 1, conv_tasks, xj);
  xj->e.no_store = 0;
  xj->stop_at_bounds = 0;
  float lo = atomic_load(&xj->range.lo), hi = atomic_load(&xj->range.hi);
  if (atomic_load(&xj->range.nan) || !isfinite(lo) || !isfinite(hi) || lo > hi) return 0;
  nbl_q4_params pg;
  nbl_i4_params_from_range(&G->xcfg, ny, lo, hi, &pg); /* as G would from the range */
  nbl_i4_quantizer qg;
  nbl_i4_quantizer_init(&qg, &G->xcfg, &pg);
  xj->u = (uint8_t *)(void *)xj->y;
  xj->e.codes = xj->u;
  xj->e.q = &qg;
  xj->e.off = nbl_i4_act_offset(&pg);
  nbl_parallel_for(c, tasks, 1, conv_tasks, xj);
  xj->e.codes = NULL;
  xj->e.q = NULL;
  h->codes_for = G;
  h->code_scale = pg.scale;
  h->code_zero = pg.zero;
  h->code_qmin = pg.qmin;
  h->code_qmax = pg.qmax;
  h->code_off = xj->e.off;
  nbl_kcount(NBL_KC_I4_CODE_LINKS);
  return 1;
}


/* ------------------------------------------------------------------ direct convolutions */

/* One group on AVX-512 VNNI without im2col: the kernel shared with the
 * ternary path (code_direct.h), the input's bytes laid out once in quads
 * of channels per padded pixel, nbl_i4_direct_store as the epilogue. */
typedef struct direct_job {
  const nbl_cd_plan *d;
  const uint8_t *x; /* the image's bytes in the plan's layout */
  const nbl_i4_rows *W;
  int32_t a_zero;
  float *y;
  int64_t P, pb, nmc, mc;
  nbl_i4_epi e;
  nbl_i4_shared_range range; /* of everything written */
} direct_job;

typedef struct dquant_ctx {
  nbl_i4_quantizer q;
  const float *x;
  int64_t C, HW;
  int off;
} dquant_ctx;

/* The direct kernel's quantizer: channel c of image n as activation bytes
 * (index0 its first element's, for stochastic rounding). */
static void dquant_plane(const void *ctx, int64_t n, int64_t c, uint8_t *dst) {
  const dquant_ctx *q = ctx;
  int64_t i0 = (n * q->C + c) * q->HW;
  nbl_i4_quantize_u8(&q->q, q->x + i0, dst, (size_t)q->HW, (uint64_t)i0, q->off);
}

/* Blocks of padded pixels x chunks of output channels. */
static void direct_tasks(void *arg, int64_t b, int64_t e) {
  direct_job *j = arg;
  nbl_i4_range rg = {INFINITY, -INFINITY, 0};
  nbl_i4_epi ep = j->e;
  ep.range = &rg;
  nbl_i4_direct_out o = {&ep, j->y, j->P};
  for (int64_t t = b; t < e; t++) {
    int64_t pi = t / j->nmc, mi = t % j->nmc;
    int64_t p0 = pi * j->pb, p1 = p0 + j->pb < j->d->PP ? p0 + j->pb : j->d->PP;
    int64_t m0 = mi * j->mc, m1 = m0 + j->mc < j->W->M ? m0 + j->mc : j->W->M;
    nbl_cd_tile(j->d, j->x, j->W->w, j->W->rowsum, j->W->Kp, j->a_zero, m0, m1, p0, p1,
                nbl_i4_direct_store, &o);
  }
  nbl_i4_range_merge(&j->range, &rg);
}

/* The convolution g of f (one group, nbl_cd_eligible) by the direct kernel:
 * y = act(sc * acc + bias + res) with the range of what it wrote in *range.
 * NBL_OK, or NBL_ERR_OUT_OF_MEMORY (no message set). */
static nbl_status run_direct(nbl_kctx *c, const nbl_i4_fused *f, const nbl_conv_geom *g,
                             const nbl_q4_params *p, const nbl_i4_epi *e, int32_t a_zero, int off,
                             float *y, nbl_i4_shared_range *range) {
  nbl_cd_plan d;
  if (nbl_cd_plan_init(&d, g) != 0) return NBL_ERR_OUT_OF_MEMORY;
  size_t xbytes = (size_t)g->N * nbl_cd_image_bytes(&d);
  uint8_t *xu = malloc(xbytes ? xbytes : 1);
  dquant_ctx dq = {.x = c->in[0]->data, .C = g->C, .HW = g->in_sz, .off = off};
  nbl_i4_quantizer_init(&dq.q, &f->xcfg, p);
  if (!xu || nbl_cd_pack_input(c, &d, g->N, (uint8_t)a_zero, dquant_plane, &dq, xu) != 0) {
    free(xu);
    nbl_cd_plan_free(&d);
    return NBL_ERR_OUT_OF_MEMORY;
  }
  const nbl_i4_rows *W = f->direct;
  direct_job j = {.d = &d, .W = W, .a_zero = a_zero, .P = g->out_sz, .e = *e};
  nbl_i4_range_init(&j.range);
  /* blocks of padded pixels whose reads stay in L2 across the channels; the
   * channels split too when the blocks alone leave a thread idle */
  int threads = c->threads > 0 ? c->threads : 1;
  int64_t pb = (int64_t)(192 * 1024) / W->Kp / 32 * 32;
  j.pb = pb < 32 ? 32 : pb > 1024 ? 1024 : pb;
  int64_t npb = (d.PP + j.pb - 1) / j.pb;
  nbl_split_rows(g->M, NBL_I4_CR,
                 npb >= 2 * threads || threads == 1 ? 1 : (2 * threads + npb - 1) / npb, &j.nmc,
                 &j.mc);
  for (int64_t n = 0; n < g->N; n++) {
    j.x = xu + n * nbl_cd_image_bytes(&d);
    j.y = y + n * g->M * g->out_sz;
    j.e.res = e->res ? e->res + n * g->M * g->out_sz : NULL;
    nbl_parallel_for(c, npb * j.nmc, 1, direct_tasks, &j);
  }
  free(xu);
  nbl_cd_plan_free(&d);
  nbl_i4_range rg = {atomic_load(&j.range.lo), atomic_load(&j.range.hi),
                          atomic_load(&j.range.nan)};
  nbl_i4_range_merge(range, &rg);
  return NBL_OK;
}

nbl_status nbl_i4_run_conv(nbl_kctx *c, nbl_i4_fused *f, const nbl_q4_params *p) {
  const nbl_rt_tensor *X = c->in[0], *B = c->n_in > 2 ? c->in[2] : NULL;
  nbl_conv_geom g;
  int take;
  nbl_status st = nbl_code_conv_geom(c, &f->cons, X, B, &g, &take);
  if (st != NBL_OK) return st;
  if (!take) return literal_or_fail(c, f, p);
  int64_t od[4] = {g.N, g.M, g.out[0], g.out[1]};
  if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, 4, od))) return st;
  float *y = nbl_kctx_out(c, 0)->data;
  int64_t ny = g.N * g.M * g.out_sz;
  if (ny == 0) return NBL_OK;
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
  int off = nbl_i4_act_offset(p);
  struct {
    const float *bias;
    float sc;
    int32_t a_zero;
    uint8_t pad;
    int64_t Cg, Mg, Kg, P;
  } j = {B ? B->data : NULL, p->scale * f->w_scale, p->zero + off, (uint8_t)(p->zero + off),
         g.C / g.group, g.M / g.group, 0, g.out_sz};
  j.Kg = j.Cg * g.k_sz;
  if (j.Cg == 1 && j.Mg == 1 && f->dw_w && !f->cons.res_add) {
    st = nbl_i4_run_depthwise(c, f, &g, p, j.bias, j.sc, y);
    if (st != NBL_ERR_UNSUPPORTED) return st;
  }
  if (nbl_i4_x_is_codes(f))
    return nbl_kerr(c, NBL_ERR_INTERNAL, "activation bytes received where floats are needed");
  /* the output goes to the linked depthwise consumer as activation bytes:
   * one product pass for the range (the consumer's scale), one writing the
   * bytes; the panels are filled once */
  nbl_i4_fused *G = f->link;
  int emit = G && !post && G->dw_w && g.N == 1 && g.group == 1 && f->isa == NBL_I4_VNNI &&
             nbl_kdebug_get(NBL_KS_I4_RANGE_REUSE) && ny >= nbl_kdebug_get(NBL_KS_I4_CODE_LINK_MIN);
  /* one group on AVX-512 VNNI: the direct kernel (not for the bytes sent
   * to a linked consumer, whose two passes share the im2col panels) */
  if (f->direct && !emit && f->isa == NBL_I4_VNNI && nbl_cd_eligible(&g) &&
      nbl_kdebug_get(NBL_KS_I4_DIRECT) != 0) {
    nbl_i4_epi e = {j.sc, j.bias, f->cons.act && !post, f->cons.act_lo, f->cons.act_hi, NULL};
    e.res = res;
    nbl_i4_shared_range range;
    nbl_i4_range_init(&range);
    st = run_direct(c, f, &g, p, &e, j.a_zero, off, y, &range);
    if (st != NBL_OK) return nbl_kerr(c, st, "out of memory");
    nbl_kcount(NBL_KC_I4_DIRECT_RUNS);
    if (post)
      return nbl_code_finish_residual(c, &f->cons);
    if (res) nbl_kcount(NBL_KC_I4_RESIDUAL_RUNS);
    nbl_i4_range_publish(f, &range);
    return NBL_OK;
  }
  int threads = c->threads > 0 ? c->threads : 1;
  int bands = nbl_pixel_bands(threads, j.P);
  int direct = nbl_conv_pointwise(&g);
  /* 1x1 inputs are quantized while laid out; others go to padded bytes first */
  int64_t Hp = g.in[0] + g.pb[0], Wp = g.in[1] + g.pb[1];
  int64_t need_h = (g.out[0] - 1) * g.s[0] + (g.k[0] - 1) * g.d[0] + 1;
  int64_t need_w = (g.out[1] - 1) * g.s[1] + (g.k[1] - 1) * g.d[1] + 1;
  if (Hp < need_h) Hp = need_h;
  if (Wp < need_w) Wp = need_w;
  size_t xbytes = (size_t)(g.N * g.C * Hp * Wp);
  uint8_t *xu = direct ? NULL : malloc(xbytes ? xbytes : 1);
  if (!direct && !xu) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (!direct) {
    memset(xu, j.pad, xbytes);
    nbl_i4_quantize_padded(c, &f->xcfg, p, X, xu, Hp, Wp, g.pb[0], g.pb[1], off);
  }
  const nbl_i4_rows *W0 = &f->rows[0];
  x4_job xj = {.g = &g, .off = off, .Kg = j.Kg, .Kp = W0->Kp,
               .P = j.P, .Hp = Hp, .Wp = Wp, .pointwise = direct, .pad = j.pad, .f = f, .a_zero = j.a_zero,
               .e = {j.sc, NULL, f->cons.act && !post, f->cons.act_lo, f->cons.act_hi, NULL}, .bands = bands};
  nbl_i4_quantizer_init(&xj.q, &f->xcfg, p);
  nbl_i4_range_init(&xj.range);
  xj.gather2 = nbl_i4_avx512();
  /* blocks of pixels whose bytes (Kp x pb) stay in L2 across all output
   * channels; without bands, output channels split too when the blocks
   * alone would leave a thread idle */
  int64_t pb = (int64_t)(192 * 1024) / W0->Kp / 32 * 32;
  xj.pb = pb < 32 ? 32 : pb > 1024 ? 1024 : pb;
  int64_t npb = (j.P + xj.pb - 1) / xj.pb;
  nbl_split_rows(j.Mg, NBL_I4_CR,
                 npb >= 2 * threads || threads == 1 ? 1 : (2 * threads + npb - 1) / npb, &xj.nmc,
                 &xj.mc);
  if ((!bands && xj.nmc > 1) || emit) {
    /* the panels of few blocks are filled by k chunks too, all threads busy */
    int64_t want = (4 * threads + npb - 1) / npb;
    xj.nkc = want < W0->Kp / 4 ? want : W0->Kp / 4;
    xj.X4all = malloc((size_t)(W0->Kp * ((j.P + 31) / 32 * 32)));
    if (!xj.X4all) {
      free(xu);
      return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    }
  }
  for (int64_t n = 0; n < g.N && !xj.oom; n++)
    for (int64_t gi = 0; gi < g.group && !xj.oom; gi++) {
      int64_t first = (n * g.C + gi * j.Cg) * g.in_sz; /* the group's first input element */
      xj.x = xu ? xu + (n * g.C + gi * j.Cg) * Hp * Wp : NULL;
      xj.xf = xu ? NULL : (const float *)X->data + first;
      xj.xf_index0 = first;
      xj.W = &f->rows[gi];
      xj.y = y + (n * g.M + gi * j.Mg) * j.P;
      xj.e.bias = j.bias ? j.bias + gi * j.Mg : NULL;
      xj.e.res = res ? res + (n * g.M + gi * j.Mg) * j.P : NULL;
      if (xj.X4all) {
        xj.phase = 1;
        nbl_parallel_for(c, bands ? bands : npb * xj.nkc, 1, conv_tasks, &xj);
        xj.phase = 2;
      }
      int64_t tasks = bands ? bands : npb * xj.nmc;
      if (emit && !xj.oom && emit_codes(c, &xj, G, ny, tasks, &f->out)) continue;
      nbl_parallel_for(c, tasks, 1, conv_tasks, &xj);
    }
  free(xu);
  free(xj.X4all);
  if (xj.oom) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (post)
    return nbl_code_finish_residual(c, &f->cons);
  if (res) nbl_kcount(NBL_KC_I4_RESIDUAL_RUNS);
  nbl_i4_range_publish(f, &xj.range);
  return NBL_OK;
}

