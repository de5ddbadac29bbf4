/* runtime/ops/grad_int4.c - op family 'grad_int4': the backward products of
 * 4-bit training run in integers (issue 16), nibble's own ops in domain
 * ai.nibble, version 1. Kernels: runtime/kernels/int4_backward.h; the pass
 * that emits them: passes/int4_backward.c.
 *
 * Each operand is a float32 tensor of coded values, and the op computes
 * exactly what its float counterpart computes on those values (to float
 * rounding: the integer sums are exact, each output is rounded once):
 *   - an operand with its scale input given holds linear codes,
 *     v = scale * c (QuantizeInt4's output Y with its `scale` output:
 *     c = q - zero_point, INT4 or INT8);
 *   - an operand without a scale holds power-of-two codes, v = 0 or
 *     +-unit * 2^e, 0 <= e <= 14 (QuantizeLog with radix 2 or 4:
 *     runtime/formats/log.h; the grid is read off the values).
 * The fast kernel turns the operands into int16 codes, multiplies them in
 * int32 (int64 across long sums) and rescales once per output; when an
 * operand is not on its grid (a NaN, a value off the scale, a radix-10
 * gradient, a scale input missing for a product that needs it) it runs the
 * float kernel of the counterpart instead, so results never depend on the
 * path beyond float rounding. The reference kernel is the counterpart's
 * reference kernel.
 *
 * Int4LogConvGrad (ai.nibble 1) -- com.microsoft ConvGrad on coded operands
 *   inputs:  dY (float32, [N, M, out...]; optional with dY_codes: then
 *            the codes and top carry it), X (float32, [N, C, in...]),
 *            W (float32, [M, C/group, k...]), X_scale, W_scale, dY_scale
 *            (optional float32 scalars: the scales of linear codes; dY_scale
 *            omitted for a log-quantized gradient)
 *            dY_codes (optional int8, dY's shape), dY_top (optional float32
 *            scalar): for a log-quantized dY, the QuantizeLog's codes and
 *            top outputs (runtime/formats/log.h), which the fast kernel
 *            reads instead of recovering dY's codes from its floats (the
 *            operand is the same: where the codes cannot give dY's grid,
 *            or mark a NaN or Inf, the float path runs on dY, or without
 *            dY on the values of the codes, nbl_log_value8)
 *            X_codes (optional int8, X's shape), X_zero_point (optional
 *            int8 scalar): X's QuantizeInt4 codes and zero point
 *            (runtime/formats/int4.h, nbl_q4_codes8), which the AMX dW
 *            product reads instead of recovering X's codes from its floats;
 *            X may then be omitted: where it is read (a non-finite mark,
 *            the other paths) it is made from the codes, nbl_q4_value8
 *   outputs: dX (X's shape, optional: needs W's codes), dW (W's shape,
 *            optional: needs X's codes), dB ([M], optional)
 *   attributes: Conv's (auto_pad, dilations, group, kernel_shape, pads,
 *            strides); with dY_codes, log_radix and log_exp_bits (the
 *            QuantizeLog's radix and exp_bits, defaults 4 and 3)
 * Int4LogGemm (ai.nibble 1) -- Gemm without C on coded operands (a backward
 *   product dY * W^T or X^T * dY as build-training writes them)
 *   inputs:  A (float32 2-D), B (float32 2-D), A_scale, B_scale (optional
 *            float32 scalars, as above)
 *   outputs: Y = alpha * op(A) * op(B)
 *   attributes: transA, transB (int, default 0), alpha (float, default 1)
 * Int4CodedConv (ai.nibble 1) -- the forward Conv of two QuantizeInt4
 *   outputs (weights that change every step): exact int32 sums of the
 *   8-bit codes on the VNNI tiles (runtime/kernels/int4_coded_conv.c), each
 *   output fl(X_scale * W_scale) * acc + B[m]
 *   inputs:  X (float32, [N, C, H, W]), W (float32, [M, C/group, kh, kw]),
 *            B (optional float32 [M]), X_scale, W_scale (float32 scalars),
 *            X_codes, X_zero_point (optional, as Int4LogConvGrad's: the AMX
 *            tiles read X's codes from them; X may then be omitted)
 *   outputs: Y (Conv's)
 *   attributes: Conv's
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/grad.h"
#include "runtime/core/shape.h"
#include "runtime/formats/int4.h"
#include "runtime/formats/log.h"
#include "runtime/kernels/int4_backward.h"
#include "runtime/ops/grad_int4.h"
#include "runtime/ops/grad_util.h"
#include "runtime/ops/nn.h"

static _Atomic long g_int_runs, g_float_runs;

long nbl_i4b_integer_runs(void) { return atomic_load(&g_int_runs); }
long nbl_i4b_float_runs(void) { return atomic_load(&g_float_runs); }

/* The float counterpart's table entry. */
static const nbl_op_def *conv_grad_def(void) { return nbl_op_lookup(NBL_MS_DOMAIN, "ConvGrad", 1); }
static const nbl_op_def *gemm_def(void) { return nbl_op_lookup("", "Gemm", NBL_OPSET_MAX); }

/* Run the counterpart's kernel (fast or ref) on the first n operands. */
static nbl_status counterpart(nbl_kctx *c, const nbl_op_def *d, int n, int fast) {
  if (!d) return nbl_kerr(c, NBL_ERR_INTERNAL, "the float counterpart of this op is not in the op table");
  nbl_kctx c2 = *c;
  if (c2.n_in > n) c2.n_in = n;
  return fast && d->fast ? d->fast(&c2) : d->ref(&c2);
}

/* Optional scale input i: *have = 0 when omitted; a float32 scalar else. */
static nbl_status scale_in(nbl_kctx *c, int i, const char *what, float *s, int *have) {
  const nbl_rt_tensor *t = grad_in(c, i);
  *have = 0;
  if (!t) return NBL_OK;
  if (t->dtype != NBL_DT_FLOAT || t->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d (%s) must be a float32 scalar, got %s with %lld elements", i,
                    what, nbl_dtype_name(t->dtype), (long long)t->numel);
  *s = ((const float *)t->data)[0];
  *have = 1;
  return NBL_OK;
}

/* Code recovery split across the kernel's threads: chunk k of the operand
 * gets its own grid (a power-of-two chunk finds its own smallest level);
 * the grids are then merged into the one grid of the whole operand and the
 * chunks whose unit was coarser have their codes shifted, which gives the
 * codes and grid of one call over the whole operand (or its -1). */
#define CODES_CHUNKS 16
#define CODES_GRAIN (1 << 15)

typedef struct codes_job {
  const float *x;
  int16_t *q;
  int64_t n, per;
  float scale;
  int linear;
  nbl_i4b_isa isa;
  nbl_i4b_grid g[CODES_CHUNKS];
  int st[CODES_CHUNKS], shift[CODES_CHUNKS];
} codes_job;

static void codes_chunks(void *arg, int64_t b, int64_t e) {
  codes_job *j = arg;
  for (int64_t k = b; k < e; k++) {
    int64_t i0 = k * j->per, n = j->n - i0 < j->per ? j->n - i0 : j->per;
    j->st[k] = j->linear ? nbl_i4b_codes_linear(j->isa, j->x + i0, n, j->scale, j->q + i0, &j->g[k])
                         : nbl_i4b_codes_pow2(j->isa, j->x + i0, n, j->q + i0, &j->g[k]);
  }
}

static void codes_shift(void *arg, int64_t b, int64_t e) {
  codes_job *j = arg;
  for (int64_t k = b; k < e; k++) {
    if (!j->shift[k]) continue;
    int64_t i0 = k * j->per, n = j->n - i0 < j->per ? j->n - i0 : j->per;
    int16_t *q = j->q + i0;
    for (int64_t i = 0; i < n; i++) q[i] = (int16_t)(q[i] * (1 << j->shift[k]));
  }
}

/* The codes of operand t (linear with a scale, powers of two without); 0 or -1. */
static int codes_of(nbl_kctx *c, const nbl_rt_tensor *t, int have, float scale, int16_t **q, nbl_i4b_grid *g) {
  *q = malloc(sizeof(int16_t) * (size_t)(t->numel ? t->numel : 1));
  if (!*q) return -1;
  const float *x = t->data;
  nbl_i4b_isa isa = nbl_i4b_best_isa();
  int64_t chunks = c->threads > 1 ? t->numel / CODES_GRAIN : 1;
  if (chunks > CODES_CHUNKS) chunks = CODES_CHUNKS;
  if (chunks < 2)
    return have ? nbl_i4b_codes_linear(isa, x, t->numel, scale, *q, g) : nbl_i4b_codes_pow2(isa, x, t->numel, *q, g);
  codes_job *j = malloc(sizeof *j);
  if (!j) return -1;
  j->x = x, j->q = *q, j->n = t->numel, j->scale = scale, j->linear = have, j->isa = isa;
  j->per = (t->numel + chunks - 1) / chunks;
  chunks = (t->numel + j->per - 1) / j->per;
  nbl_parallel_for(c, chunks, 1, codes_chunks, j);
  int ok = 1, any_shift = 0;
  float unit = INFINITY;
  int32_t maxabs = 0;
  for (int64_t k = 0; k < chunks; k++) {
    ok = ok && j->st[k] == 0;
    if (j->g[k].maxabs > 0 && j->g[k].unit < unit) unit = j->g[k].unit;
  }
  if (have) unit = scale;
  for (int64_t k = 0; ok && k < chunks; k++) { /* every chunk's unit: unit * 2^shift, the same mantissa */
    j->shift[k] = 0;
    if (j->g[k].maxabs == 0) continue;
    int e;
    float m = frexpf(j->g[k].unit / unit, &e);
    if (m != 0.5f || e < 1 || j->g[k].unit != ldexpf(unit, e - 1)) ok = 0;
    else if ((int64_t)j->g[k].maxabs << (e - 1) > NBL_I4B_MAX_CODE) ok = 0;
    else {
      j->shift[k] = e - 1;
      any_shift |= e > 1;
      if ((j->g[k].maxabs << (e - 1)) > maxabs) maxabs = j->g[k].maxabs << (e - 1);
    }
  }
  if (ok && any_shift) nbl_parallel_for(c, chunks, 1, codes_shift, j);
  if (ok) g->unit = maxabs ? unit : have ? scale : 1.0f, g->maxabs = maxabs;
  free(j);
  return ok ? 0 : -1;
}

/* ------------------------------------------------------------------ Int4LogConvGrad */

/* The optional dY_codes and dY_top inputs (6, 7): *codes NULL when absent;
 * an error when one is given without the other, with the wrong type, or
 * not of dY's shape. */
static nbl_status codes_in(nbl_kctx *c, const int8_t **codes, float *top) {
  const nbl_rt_tensor *dY = grad_in(c, 0), *k = grad_in(c, 6);
  nbl_status st;
  int have;
  *codes = NULL;
  if ((st = scale_in(c, 7, "dY_top", top, &have))) return st;
  if (!k && !have) return NBL_OK;
  if (!k || !have) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY_codes (input 6) and dY_top (input 7) go together");
  int same = !dY || (dY->rank == k->rank && !memcmp(dY->dims, k->dims, sizeof(int64_t) * (size_t)k->rank));
  if (k->dtype != NBL_DT_INT8 || !same)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 6 (dY_codes) must be int8 of dY's shape, got %s with %lld elements",
                    nbl_dtype_name(k->dtype), (long long)k->numel);
  *codes = k->data;
  return NBL_OK;
}

/* X's QuantizeInt4 codes and zero point (inputs ic, ic + 1): *codes NULL
 * when absent; an error when one is given without the other, or with the
 * wrong type or shape. */
static nbl_status xcodes_in(nbl_kctx *c, int ic, const nbl_rt_tensor *X, const int8_t **codes, int *zero) {
  const nbl_rt_tensor *k = grad_in(c, ic), *z = grad_in(c, ic + 1);
  *codes = NULL, *zero = 0;
  if (!k && !z) return NBL_OK;
  if (!k || !z)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X_codes (input %d) and X_zero_point (input %d) go together", ic,
                    ic + 1);
  if (z->dtype != NBL_DT_INT8 || z->numel != 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d (X_zero_point) must be an int8 scalar, got %s with %lld elements",
                    ic + 1, nbl_dtype_name(z->dtype), (long long)z->numel);
  int same = !X || (X->rank == k->rank && !memcmp(X->dims, k->dims, sizeof(int64_t) * (size_t)k->rank));
  if (k->dtype != NBL_DT_INT8 || !same)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d (X_codes) must be int8 of X's shape, got %s with %lld elements",
                    ic, nbl_dtype_name(k->dtype), (long long)k->numel);
  *codes = k->data;
  *zero = ((const int8_t *)z->data)[0];
  return NBL_OK;
}

/* Without X (input xi) but with its QuantizeInt4 codes (inputs ic, ic + 1)
 * and X_scale (input 3): kernel fn run on X made from the codes (the
 * floats the QuantizeInt4's Y would hold, nbl_q4_value8). */
static nbl_status with_x_decoded(nbl_kctx *c, int xi, int ic, nbl_kernel_fn fn) {
  const nbl_rt_tensor *k = grad_in(c, ic);
  const int8_t *codes;
  int zero, have;
  float scale = 0.0f;
  nbl_status st;
  if ((st = xcodes_in(c, ic, NULL, &codes, &zero)) || (st = scale_in(c, 3, "X_scale", &scale, &have))) return st;
  if (!codes || !have)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X (input %d) is omitted: X_codes, X_zero_point and X_scale must be given",
                    xi);
  nbl_rt_tensor d;
  memset(&d, 0, sizeof d);
  if (nbl_rt_tensor_alloc(&d, NBL_DT_FLOAT, k->rank, k->dims)) return grad_oom(c);
  float *v = d.data;
  nbl_q4_values8(scale, zero, codes, v, (size_t)k->numel);
  const nbl_rt_tensor *ins[NBL_KCTX_MIN_IN] = {0};
  for (int i = 0; i < c->n_in && i < NBL_KCTX_MIN_IN; i++) ins[i] = c->in[i];
  ins[xi] = &d;
  nbl_kctx c2 = *c;
  c2.in = ins;
  st = fn(&c2);
  nbl_rt_tensor_free(&d);
  return st;
}

/* The grid attributes of the codes (log_radix, log_exp_bits). */
static nbl_status codes_cfg(nbl_kctx *c, nbl_log_config *cfg) {
  nbl_log_config_default(cfg);
  cfg->radix = (int)nbl_attr_int(c->node, "log_radix", 4);
  cfg->exp_bits = (int)nbl_attr_int(c->node, "log_exp_bits", 3);
  const char *why;
  if (nbl_log_validate(cfg, &why)) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "log_radix, log_exp_bits: %s", why);
  return NBL_OK;
}

/* Without dY (input 0) but with its codes: kernel fn run on dY made from
 * the codes and top (the floats the QuantizeLog's Y would hold). */
static nbl_status with_dy_decoded(nbl_kctx *c, const int8_t *codes, float top, nbl_kernel_fn fn) {
  const nbl_rt_tensor *k = grad_in(c, 6);
  nbl_log_config cfg;
  nbl_status st = codes_cfg(c, &cfg);
  if (st) return st;
  const nbl_log_params p = {.top = top, .levels = (1 << cfg.exp_bits) - 1};
  nbl_rt_tensor d;
  memset(&d, 0, sizeof d);
  if (nbl_rt_tensor_alloc(&d, NBL_DT_FLOAT, k->rank, k->dims)) return grad_oom(c);
  float *v = d.data;
  for (int64_t i = 0; i < k->numel; i++) v[i] = nbl_log_value8(&cfg, &p, codes[i]);
  const nbl_rt_tensor *ins[NBL_KCTX_MIN_IN] = {0};
  for (int i = 0; i < c->n_in && i < NBL_KCTX_MIN_IN; i++) ins[i] = c->in[i];
  ins[0] = &d;
  nbl_kctx c2 = *c;
  c2.in = ins;
  st = fn(&c2);
  nbl_rt_tensor_free(&d);
  return st;
}

static nbl_status k_conv_ref(nbl_kctx *c) {
  float s;
  int have;
  nbl_status st;
  const int8_t *codes;
  static const char *const names[3] = {"X_scale", "W_scale", "dY_scale"};
  for (int i = 0; i < 3; i++)
    if ((st = scale_in(c, 3 + i, names[i], &s, &have))) return st;
  if ((st = codes_in(c, &codes, &s))) return st;
  const int8_t *xk;
  if ((st = xcodes_in(c, 8, grad_in(c, 1), &xk, &have))) return st;
  if (!grad_in(c, 0) && codes) return with_dy_decoded(c, codes, s, k_conv_ref);
  if (!grad_in(c, 1) && xk) return with_x_decoded(c, 1, 8, k_conv_ref);
  return counterpart(c, conv_grad_def(), 3, 0);
}

/* dY's codes handed over: the QuantizeLog's int8 codes and their integers */
typedef struct handed {
  const int8_t *k8;
  int L;
  int32_t lut[32]; /* the integer of code k at lut[k + 16] (nbl_log_code_int) */
  int16_t t16[32]; /* the same as int16 (the AMX packing's table) */
  int16_t *q;      /* the int16 codes when made with the check (no AMX tiles), or NULL */
} handed;

/* The grid of dY's codes handed over (see the top) into *h and *g: 0, or
 * -1 when they do not give dY's grid (the caller then reads the floats).
 * Each value of dY is then exactly its code's integer times g->unit, the
 * grid's smallest level: the same products as the codes the floats give
 * (those count from the smallest level present; the sums differ by a power
 * of two that the rescale takes back exactly). The codes are checked here
 * (one sweep over the bytes, no copy); int16 codes only where a path needs
 * them (handed_q). */
static int codes_handed(nbl_kctx *c, const nbl_rt_tensor *dY, const int8_t *codes, float top, handed *h,
                        nbl_i4b_grid *g) {
  nbl_log_config cfg;
  float unit;
  if (codes_cfg(c, &cfg) || !nbl_log_int_grid(&cfg, top, &unit)) return -1;
  h->k8 = codes;
  h->L = (1 << cfg.exp_bits) - 1;
  memset(h->lut, 0, sizeof h->lut);
  memset(h->t16, 0, sizeof h->t16);
  for (int k = -h->L; k <= h->L; k++) {
    h->lut[k + 16] = nbl_log_code_int(&cfg, k);
    h->t16[k + 16] = (int16_t)(abs(h->lut[k + 16]) <= NBL_I4B_MAX_CODE ? h->lut[k + 16] : 0);
  }
  int32_t mx = 0;
  /* off the AMX tiles every path takes int16 codes: made in the checking
   * sweep (else a sweep that only checks, and the tiles read the bytes) */
  const nbl_i4b_isa isa = nbl_i4b_best_isa();
  h->q = nbl_i4b_amx_on(isa) ? NULL : malloc(sizeof(int16_t) * (size_t)(dY->numel ? dY->numel : 1));
  if (nbl_i4b_codes_log(isa, codes, dY->numel, h->L, h->lut, h->q, &mx)) {
    free(h->q);
    h->q = NULL;
    return -1;
  }
  g->unit = unit, g->maxabs = mx;
  return 0;
}

/* The int16 codes of h (n elements; checked by codes_handed), the caller's
 * to free: made there, or here; NULL when out of memory. */
static int16_t *handed_q(handed *h, int64_t n) {
  int16_t *q = h->q;
  h->q = NULL;
  if (q) return q;
  q = malloc(sizeof(int16_t) * (size_t)(n ? n : 1));
  int32_t mx;
  if (q && nbl_i4b_codes_log(nbl_i4b_best_isa(), h->k8, n, h->L, h->lut, q, &mx)) {
    free(q);
    q = NULL;
  }
  return q;
}

/* dW on the AMX tiles (int4_amx.c) takes the floats of X, its codes made
 * and checked while its planes are packed: no int16 copy of X. Where the
 * tiles decline (the codes do not fit), X's codes are recovered here and the
 * other paths run (nbl_i4b_conv_grad). dY is taken as codes (int16, made in
 * one sweep, they stay in cache for the packing; or the QuantizeLog's int8
 * codes, through their table). */
static nbl_status conv_dw_floats(nbl_kctx *c, const nbl_conv_geom *g, const float *xf, float sx, const int8_t *xk,
                                 int xz, const nbl_i4b_src *sdy, nbl_i4b_grid gdy, float *dw, int *done) {
  const int64_t nw = g->M * (g->C / g->group) * g->k_sz;
  int64_t *dw64 = calloc((size_t)(nw ? nw : 1), sizeof(int64_t));
  if (!dw64) return NBL_ERR_OUT_OF_MEMORY;
  const int xfl = xf != NULL; /* (else only X's codes) */
  nbl_i4b_src sxf = {.f = xf, .c8 = xk, .zero = xz, .unit = sx};
  nbl_status st = nbl_i4b_amx_conv_dw(c, g, sdy, &sxf, dw64, done);
  if (!st && !*done && xk && xfl) { /* a code the tiles declined (a non-finite mark): the floats decide */
    sxf.c8 = NULL;
    st = nbl_i4b_amx_conv_dw(c, g, sdy, &sxf, dw64, done);
  }
  if (!st && *done) { /* X's grid: unit sx (nbl_i4b_codes_linear's) */
    const double s = (double)gdy.unit * (double)sx;
    for (int64_t i = 0; i < nw; i++) dw[i] = (float)((double)dw64[i] * s);
  }
  free(dw64);
  return st;
}

/* A 1x1 layer with strides > 1 and no pads (a ResNet shortcut) reads X
 * only at the strides: its dW is that of the stride-1 layer over X's codes
 * at those pixels, which the AMX tiles take (they decline a kernel smaller
 * than its stride). 1 when g is such a layer of 2-D, one group. */
static int pointwise_strided(const nbl_conv_geom *g) {
  int strided = 0;
  if (g->ns != 2 || g->group != 1) return 0;
  for (int i = 0; i < 2; i++) {
    if (g->k[i] != 1 || g->pb[i] || g->pe[i]) return 0;
    strided |= g->s[i] > 1;
  }
  return strided;
}

/* dW of such a layer on the tiles from X's codes taken at the strides
 * (*done 0: declined, nothing written). */
static nbl_status conv_dw_pointwise(nbl_kctx *c, const nbl_conv_geom *g, float sx, const int8_t *xk, int xz,
                                    const nbl_i4b_src *sdy, nbl_i4b_grid gdy, float *dw, int *done) {
  nbl_conv_geom g1 = *g;
  for (int i = 0; i < 2; i++) g1.s[i] = 1, g1.d[i] = 1, g1.in[i] = g->out[i];
  g1.in_sz = g->out_sz;
  *done = 0;
  if (!nbl_i4b_amx_dw_fits(&g1)) return NBL_OK;
  const int64_t OH = g->out[0], OW = g->out[1], H = g->in[0], W = g->in[1], planes = g->N * g->C;
  const int64_t nxs = planes * g1.in_sz;
  int8_t *xs = malloc((size_t)(nxs > 0 ? nxs : 1));
  if (!xs) return NBL_ERR_OUT_OF_MEMORY;
  for (int64_t p = 0; p < planes; p++)
    for (int64_t oh = 0; oh < OH; oh++) {
      const int8_t *src = xk + (p * H + oh * g->s[0]) * W;
      int8_t *d = xs + (p * OH + oh) * OW;
      for (int64_t ow = 0; ow < OW; ow++) d[ow] = src[ow * g->s[1]];
    }
  nbl_status st = conv_dw_floats(c, &g1, NULL, sx, xs, xz, sdy, gdy, dw, done);
  free(xs);
  return st;
}

static nbl_status k_conv_fast(nbl_kctx *c) {
  const nbl_rt_tensor *X = grad_in(c, 1) ? grad_in(c, 1) : grad_in(c, 8), *W = grad_in(c, 2); /* without X: its codes' shape */
  const nbl_rt_tensor *dY = grad_in(c, 0) ? grad_in(c, 0) : grad_in(c, 6); /* without dY: its codes' shape */
  const int xfl = grad_in(c, 1) != NULL; /* else X's values are its codes' */
  if (c->reference || !dY || !X || !W || (dY->dtype != NBL_DT_FLOAT && grad_in(c, 0)) ||
      (X->dtype != NBL_DT_FLOAT && xfl) || W->dtype != NBL_DT_FLOAT)
    return k_conv_ref(c);
  float sc[3] = {0};
  int have[3];
  nbl_status st;
  static const char *const names[3] = {"X_scale", "W_scale", "dY_scale"};
  for (int i = 0; i < 3; i++)
    if ((st = scale_in(c, 3 + i, names[i], &sc[i], &have[i]))) return st;
  const int8_t *dyc, *xk;
  float dytop;
  int xz;
  if ((st = codes_in(c, &dyc, &dytop)) || (st = xcodes_in(c, 8, xfl ? X : NULL, &xk, &xz))) return st;
  const int floats = grad_in(c, 0) != NULL; /* else dY's values are the codes' */
  if (!floats && !dyc) return k_conv_ref(c);
  nbl_conv_geom g;
  nbl_rt_tensor xs = *X; /* (without X: its codes' shape, read as X's) */
  xs.dtype = NBL_DT_FLOAT;
  if ((st = nbl_conv_node_geom(c, &xs, W, NULL, &g))) return st;
  int shape_ok = dY->rank == X->rank && dY->dims[0] == g.N && dY->dims[1] == g.M;
  for (int i = 0; shape_ok && i < g.ns; i++) shape_ok = dY->dims[2 + i] == g.out[i];
  const int wdx = grad_want(c, 0), wdw = grad_want(c, 1), wdb = grad_want(c, 2);
  const nbl_i4b_isa isa = nbl_i4b_best_isa();
  int16_t *dyq = NULL, *xq = NULL, *wq = NULL;
  nbl_i4b_grid gdy = {1.0f, 0}, gx = {1.0f, 0}, gw = {1.0f, 0};
  handed h = {0};
  int hand = 0; /* dY's codes handed over: int16 codes only where a path needs them */
  int ok = shape_ok && (!wdx || have[1]) && (!wdw || have[0]) &&
           ((dyc && !have[2] && (hand = codes_handed(c, dY, dyc, dytop, &h, &gdy) == 0)) ||
            (floats && codes_of(c, dY, have[2], sc[2], &dyq, &gdy) == 0)) &&
           (!wdx || codes_of(c, W, 1, sc[1], &wq, &gw) == 0);
  const nbl_i4b_src sdy = hand ? (nbl_i4b_src){.k8 = h.k8, .t16 = h.t16, .maxabs = gdy.maxabs}
                               : (nbl_i4b_src){.q = dyq, .maxabs = gdy.maxabs};
  const int empty = g.N == 0 || g.out_sz == 0 || g.C == 0 || g.M == 0 || g.k_sz == 0;
  /* dW on the tiles: from X's floats or codes, or for a strided 1x1 layer
   * from its codes at the strides */
  const int pws = ok && wdw && !empty && nbl_i4b_amx_on(isa) && xk && have[0] && pointwise_strided(&g);
  const int fdw = pws || (ok && wdw && !empty && nbl_i4b_amx_on(isa) && nbl_i4b_amx_dw_fits(&g));
  /* dW off the tiles with X's codes handed over: int16 codes straight from
   * them (the codes the floats give, nbl_i4b_codes_int8), no floats made */
  int xhand = 0;
  if (ok && wdw && !fdw && !empty && xk && have[0] && sc[0] > 0.0f && isfinite(sc[0])) {
    int32_t mx;
    if (!(xq = malloc(sizeof(int16_t) * (size_t)X->numel))) {
      free(dyq), free(h.q);
      free(wq);
      return grad_oom(c);
    }
    if (nbl_i4b_codes_int8(isa, xk, X->numel, xz, xq, &mx) == 0) gx.unit = sc[0], gx.maxabs = mx, xhand = 1;
    else free(xq), xq = NULL; /* a non-finite mark: the floats decide */
  }
  if (!xfl && ((ok && wdw && !fdw && !xhand) || !ok)) { /* X's floats needed: made from its codes */
    free(dyq), free(h.q);
    free(xq);
    free(wq);
    return with_x_decoded(c, 1, 8, k_conv_fast);
  }
  ok = ok && (!wdw || fdw || xhand || codes_of(c, X, 1, sc[0], &xq, &gx) == 0);
  nbl_i4b_conv_out out = {0};
  if (ok) {
    if (wdx && !(st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, X->rank, X->dims))) out.dx = nbl_kctx_out(c, 0)->data;
    if (!st && wdw && !(st = nbl_kctx_alloc_out(c, 1, NBL_DT_FLOAT, W->rank, W->dims)))
      out.dw = nbl_kctx_out(c, 1)->data;
    if (!st && wdb && !(st = nbl_kctx_alloc_out(c, 2, NBL_DT_FLOAT, 1, &g.M))) out.db = nbl_kctx_out(c, 2)->data;
    if (!st && fdw) {
      int done = 0;
      st = pws ? conv_dw_pointwise(c, &g, sc[0], xk, xz, &sdy, gdy, out.dw, &done)
               : conv_dw_floats(c, &g, xfl ? X->data : NULL, sc[0], xk, xz, &sdy, gdy, out.dw, &done);
      if (!st && done) {
        out.dw = NULL; /* dW done */
      } else if (!st && !xfl) { /* the tiles declined X's codes: its floats, made from them */
        free(dyq), free(h.q);
        free(wq);
        return with_x_decoded(c, 1, 8, k_conv_fast);
      } else if (!st) {
        ok = codes_of(c, X, 1, sc[0], &xq, &gx) == 0;
      }
    }
    if (!st && ok && hand && out.dx && !empty && nbl_i4b_amx_on(isa)) { /* dX on the tiles from the int8 codes */
      int done = 0;
      const nbl_i4b_conv_out o = {.dx = out.dx, .dx_scale = (double)gdy.unit * (double)gw.unit};
      st = nbl_i4b_amx_conv_dx(c, &g, &sdy, wq, gw.maxabs, &o, &done);
      if (!st && done) out.dx = NULL;
    }
    if (!st && ok && hand && (out.dx || out.dw || out.db) && !(dyq = handed_q(&h, dY->numel)))
      st = NBL_ERR_OUT_OF_MEMORY; /* the other paths: int16 codes */
  }
  if (!st && !ok) { /* not on the grids (or a shape error the counterpart reports) */
    free(dyq), free(h.q);
    free(xq);
    free(wq);
    if (!floats) return with_dy_decoded(c, dyc, dytop, k_conv_fast); /* the codes' values, then as with dY */
    atomic_fetch_add(&g_float_runs, 1);
    return counterpart(c, conv_grad_def(), 3, 1);
  }
  if (!st && (out.dx || out.dw || out.db)) {
    out.dx_scale = (double)gdy.unit * (double)gw.unit;
    out.dw_scale = (double)gdy.unit * (double)gx.unit;
    out.db_scale = (double)gdy.unit;
    st = nbl_i4b_conv_grad(c, isa, &g, dyq, gdy.maxabs, xq, gx.maxabs, wq, gw.maxabs, &out);
  }
  if (st) st = st == NBL_ERR_OUT_OF_MEMORY ? grad_oom(c) : st;
  else atomic_fetch_add(&g_int_runs, 1);
  free(dyq), free(h.q);
  free(xq);
  free(wq);
  return st;
}

/* ------------------------------------------------------------------ Int4LogGemm */

static nbl_status k_gemm_ref(nbl_kctx *c) {
  float s;
  int have;
  nbl_status st;
  if ((st = scale_in(c, 2, "A_scale", &s, &have)) || (st = scale_in(c, 3, "B_scale", &s, &have))) return st;
  return counterpart(c, gemm_def(), 2, 0);
}

static nbl_status k_gemm_fast(nbl_kctx *c) {
  const nbl_rt_tensor *A = grad_in(c, 0), *B = grad_in(c, 1);
  if (c->reference || !A || !B || A->dtype != NBL_DT_FLOAT || B->dtype != NBL_DT_FLOAT || A->rank != 2 ||
      B->rank != 2)
    return k_gemm_ref(c);
  float sa = 0, sb = 0;
  int ha, hb;
  nbl_status st;
  if ((st = scale_in(c, 2, "A_scale", &sa, &ha)) || (st = scale_in(c, 3, "B_scale", &sb, &hb))) return st;
  const int ta = nbl_attr_int(c->node, "transA", 0) != 0, tb = nbl_attr_int(c->node, "transB", 0) != 0;
  const float alpha = nbl_attr_float(c->node, "alpha", 1.0f);
  const int64_t M = ta ? A->dims[1] : A->dims[0], K = ta ? A->dims[0] : A->dims[1];
  const int64_t N = tb ? B->dims[0] : B->dims[1], kb = tb ? B->dims[1] : B->dims[0];
  int16_t *aq = NULL, *bq = NULL;
  nbl_i4b_grid ga, gb;
  int ok = kb == K && isfinite(alpha) && codes_of(c, A, ha, sa, &aq, &ga) == 0 && codes_of(c, B, hb, sb, &bq, &gb) == 0;
  if (!ok) {
    free(aq);
    free(bq);
    atomic_fetch_add(&g_float_runs, 1);
    return counterpart(c, gemm_def(), 2, 1);
  }
  int64_t od[2] = {M, N};
  if (!(st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, 2, od))) {
    double scale = (double)alpha * ((double)ga.unit * (double)gb.unit);
    st = nbl_i4b_matmul(c, nbl_i4b_best_isa(), M, N, K, aq, ta, ga.maxabs, bq, tb, gb.maxabs, scale,
                        nbl_kctx_out(c, 0)->data, NULL);
    if (st) st = grad_oom(c);
    else atomic_fetch_add(&g_int_runs, 1);
  }
  free(aq);
  free(bq);
  return st;
}

/* ------------------------------------------------------------------ Int4CodedConv */

static const nbl_op_def *conv_def(void) { return nbl_op_lookup("", "Conv", NBL_OPSET_MAX); }

static nbl_status k_fconv_ref(nbl_kctx *c) {
  float s;
  int have;
  nbl_status st;
  const int8_t *xk;
  if ((st = scale_in(c, 3, "X_scale", &s, &have)) || (st = scale_in(c, 4, "W_scale", &s, &have)) ||
      (st = xcodes_in(c, 5, grad_in(c, 0), &xk, &have)))
    return st;
  if (!grad_in(c, 0) && xk) return with_x_decoded(c, 0, 5, k_fconv_ref);
  return counterpart(c, conv_def(), 3, 0);
}

static nbl_status k_fconv_fast(nbl_kctx *c) {
  const nbl_rt_tensor *X = grad_in(c, 0) ? grad_in(c, 0) : grad_in(c, 5), *W = grad_in(c, 1), *B = grad_in(c, 2);
  const int xfl = grad_in(c, 0) != NULL; /* else X's values are its codes' (X: the codes, for the shape) */
  if (c->reference || !X || !W || (X->dtype != NBL_DT_FLOAT && xfl) || W->dtype != NBL_DT_FLOAT || X->rank != 4)
    return k_fconv_ref(c);
  float sx = 0, sw = 0;
  int hx, hw;
  nbl_status st;
  const int8_t *xk;
  int xz;
  if ((st = scale_in(c, 3, "X_scale", &sx, &hx)) || (st = scale_in(c, 4, "W_scale", &sw, &hw)) ||
      (st = xcodes_in(c, 5, xfl ? X : NULL, &xk, &xz)))
    return st;
  if (!xfl && (!xk || !hx)) return k_fconv_ref(c); /* (reports what is missing) */
  nbl_conv_geom g;
  nbl_rt_tensor xs = *X; /* (without X: its codes' shape, read as X's) */
  xs.dtype = NBL_DT_FLOAT;
  if ((st = nbl_conv_node_geom(c, &xs, W, B, &g))) return st;
  int off_grid = !hx || !hw;
  if (!off_grid) {
    int64_t od[4] = {g.N, g.M, g.out[0], g.out[1]};
    if ((st = nbl_kctx_alloc_out(c, 0, NBL_DT_FLOAT, 4, od))) return st;
    st = nbl_i4b_conv_forward_codes(c, &g, xfl ? X->data : NULL, sx, xk, xz, W->data, sw, B ? B->data : NULL,
                                    nbl_kctx_out(c, 0)->data, NULL, &off_grid);
    if (st) return grad_oom(c);
  }
  if (off_grid && !xfl) return with_x_decoded(c, 0, 5, k_fconv_fast); /* (then the float Conv on them) */
  if (off_grid) {
    atomic_fetch_add(&g_float_runs, 1);
    return counterpart(c, conv_def(), 3, 1);
  }
  atomic_fetch_add(&g_int_runs, 1);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules: the counterparts' */

/* The counterpart's rule; with X (input xi) omitted, on its codes (input
 * ic: X's shape) seen as float32 in X's place. */
static nbl_status shape_x_or_codes(nbl_shape_ctx *c, const nbl_op_def *d, int xi, int ic) {
  if (!d) return NBL_ERR_INTERNAL;
  const nbl_node *n = c->node;
  if (nbl_shp_has_in(c, xi) || !nbl_shp_has_in(c, ic)) return d->shape(c);
  nbl_id ins[NBL_KCTX_MIN_IN];
  const int m = n->n_inputs < NBL_KCTX_MIN_IN ? n->n_inputs : NBL_KCTX_MIN_IN;
  for (int i = 0; i < m; i++) ins[i] = n->inputs[i];
  ins[xi] = n->inputs[ic];
  nbl_node n2 = *n;
  n2.inputs = ins;
  n2.n_inputs = m;
  nbl_shape_ctx c2 = *c;
  c2.node = &n2;
  nbl_type *t = &c->graph->values[n->inputs[ic]].type;
  const nbl_dtype keep = t->elem;
  if (keep == NBL_DT_INT8) t->elem = NBL_DT_FLOAT;
  nbl_status st = d->shape(&c2);
  t->elem = keep;
  return st;
}

static nbl_status shape_conv(nbl_shape_ctx *c) { return shape_x_or_codes(c, conv_grad_def(), 1, 8); }

static nbl_status shape_fconv(nbl_shape_ctx *c) { return shape_x_or_codes(c, conv_def(), 0, 5); }

static nbl_status shape_gemm(nbl_shape_ctx *c) {
  const nbl_op_def *d = gemm_def();
  return d ? d->shape(c) : NBL_ERR_INTERNAL;
}

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_int4[] = {
    NBL_OP_DEF("ai.nibble", "Int4LogConvGrad", 1, 1, .ref = k_conv_ref, .fast = k_conv_fast, .shape = shape_conv,
               .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "Int4CodedConv", 1, 1, .ref = k_fconv_ref, .fast = k_fconv_fast, .shape = shape_fconv,
               .no_grad = "made by int4-backward after build-training: no gradient rule"),
    NBL_OP_DEF("ai.nibble", "Int4LogGemm", 1, 1, .ref = k_gemm_ref, .fast = k_gemm_fast, .shape = shape_gemm,
               .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_int4_count = sizeof nbl_ops_grad_int4 / sizeof nbl_ops_grad_int4[0];
