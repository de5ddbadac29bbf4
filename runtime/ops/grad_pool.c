/* runtime/ops/grad_pool.c - op family 'grad_pool': backward ops of pooling
 * (forward ops in runtime/ops/nn_pool.c); kernel contract in
 * runtime/core/kernel.h. The normalization backward ops are the family
 * 'grad_norm' (runtime/ops/grad_norm.c).
 *
 * ONNX Runtime's training op names and signatures, domain com.microsoft,
 * version 1 (ORT registers MaxPoolGrad/AveragePoolGrad in the default domain
 * at version 9; nibble keeps every backward op in com.microsoft). T is
 * float32 or float64 (float16/bfloat16 through the double reference path).
 * Reference kernels compute in double. Fast float32 paths: MaxPoolGrad and
 * AveragePoolGrad (2-D) add in float (within 1e-6 of the reference,
 * relative to the largest element); tests/runtime/ops/test_ops_grad.c
 * checks them.
 *
 * MaxPoolGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, C, out...]), Indices (int64, dY's shape: MaxPool's
 *            second output, flat indices into X), X_shape (int64 1-D: the
 *            shape of MaxPool's input; a nibble addition, ORT takes it from
 *            static shape inference -- emit it with Shape(X))
 *   outputs: dX (T, X_shape): zeros, then dY[i] added at Indices[i]
 *   attributes: storage_order (int, default 0: as MaxPool, how Indices
 *            encode a 2-D position); MaxPool's other attributes are accepted
 *            and not needed
 * AveragePoolGrad (com.microsoft 1)
 *   inputs:  dY (T, [N, C, out...]), X_shape (int64 1-D: the shape of
 *            AveragePool's input; nibble addition as above)
 *   outputs: dX (T, X_shape): each dY element spread evenly over its window's
 *            input elements (divisor as the forward: window elements inside
 *            the input, or inside input + pads with count_include_pad=1)
 *   attributes: those of AveragePool: auto_pad, ceil_mode, count_include_pad,
 *            dilations, kernel_shape, pads, strides
 * LpPoolGrad (ai.nibble 1)
 *   inputs:  Y_grad (T, LpPool's output shape), X (T, [N, C, ...]), Y (T:
 *            LpPool's output)
 *   outputs: X_grad (T, X's shape)
 *   attributes: those of LpPool: auto_pad, ceil_mode, dilations,
 *            kernel_shape, p (default 2), pads, strides
 *   semantics: y = (sum over the window's taps inside X of |x|^p)^(1/p), so
 *            each tap x of each window gets Y_grad * |x|^(p-1) sign(x) /
 *            y^(p-1), summed over the windows that hold it; nothing from a
 *            window with y = 0 (the forward's kink; reference kernel in double)
 */

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "runtime/core/cpu.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/kernels/simd16.h"
#include "runtime/core/grad.h"
#include "runtime/ops/grad_pool.h"
#include "runtime/ops/grad_util.h"

/* ------------------------------------------------------------------ MaxPoolGrad */

/* The fast MaxPoolGrad over planes [begin, end): each zeroed, then dY's
 * elements of the plane added at their indices in order (one plane: the
 * whole tensor when some index leaves its plane); with v (the fused
 * MaxPoolGrad -> ReluGrad), then each element kept where v > 0, else 0. */
typedef struct mpg_task {
  const float *g;
  const int64_t *idx;
  const float *v;
  float *o;
  int64_t plane_in, plane_out;
  int so;
  int64_t H, W;
} mpg_task;

static void mpg_run(void *arg, int64_t begin, int64_t end) {
  const mpg_task *t = arg;
  int64_t pin = t->plane_in, H = t->H, W = t->W, pl = t->so ? H * W : 1;
  for (int64_t p = begin; p < end; p++) {
    float *o = t->o + p * pin;
    memset(o, 0, sizeof(float) * (size_t)pin);
    for (int64_t i = p * t->plane_out; i < (p + 1) * t->plane_out; i++) {
      int64_t v = t->idx[i] - p * pin;
      if (t->so) v = v / pl * pl + v % pl % H * W + v % pl / H; /* column-major within a plane */
      o[v] += t->g[i];
    }
    if (t->v) {
      const float *v = t->v + p * pin;
      for (int64_t i = 0; i < pin; i++) o[i] = v[i] > 0 ? o[i] : 0.0f;
    }
  }
}

/* The dense MaxPoolGrad of 2 x 2 windows of stride 2 (no padding or
 * dilation, row-major indices, OH = H / 2, OW = W / 2), when every index
 * lies in its own window: each window's element at its index gets
 * 0 + dY (the sparse kernel's sum, -0 becoming +0), its other three and a
 * last odd row or column 0, one row of dX at a time, every element written
 * once (no zeroing pass, no scatter); with v, kept where v > 0. ok is
 * cleared (and the output left unfinished) when an index is elsewhere. */
typedef struct mpg2_task {
  const float *g, *v;
  const int64_t *idx;
  float *o;
  int64_t H, W, OH, OW;
  _Atomic int ok;
} mpg2_task;

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static int mpg2_plane_avx512(const mpg2_task *t, int64_t p) {
  const int64_t H = t->H, W = t->W, OH = t->OH, OW = t->OW, base = p * H * W;
  const float *g = t->g + p * OH * OW, *vp = t->v ? t->v + base : NULL;
  const int64_t *ip = t->idx + p * OH * OW;
  float *o = t->o + base;
  const __m512i dup = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
  const __m512i par = _mm512_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1);
  const __m512i parW = _mm512_add_epi32(par, _mm512_set1_epi32((int)W));
  const __m512i two = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
  const __m512i vW = _mm512_set1_epi64(W), vW1 = _mm512_set1_epi64(W + 1), one = _mm512_set1_epi64(1);
  const __m512 zero = _mm512_setzero_ps();
  for (int64_t oh = 0; oh < OH; oh++) { /* input rows 2 oh and 2 oh + 1 */
    float *orow = o + 2 * oh * W;
    for (int64_t c0 = 0; c0 < W; c0 += 16) {
      const int64_t ow0 = c0 / 2, nw = OW - ow0 < 8 ? (OW - ow0 > 0 ? OW - ow0 : 0) : 8;
      const __mmask8 wm = (__mmask8)((1u << nw) - 1);
      /* each window's index relative to its first element: 0, 1, W or W + 1 */
      const __m512i off = _mm512_sub_epi64(_mm512_maskz_loadu_epi64(wm, ip + oh * OW + ow0),
                                           _mm512_add_epi64(_mm512_set1_epi64(base + 2 * oh * W + 2 * ow0), two));
      const __mmask8 in = _mm512_cmpeq_epi64_mask(off, _mm512_setzero_si512()) | _mm512_cmpeq_epi64_mask(off, one) |
                          _mm512_cmpeq_epi64_mask(off, vW) | _mm512_cmpeq_epi64_mask(off, vW1);
      if ((in & wm) != wm) return 0;
      const __m512i o16 = _mm512_permutexvar_epi32(dup, _mm512_castsi256_si512(_mm512_cvtepi64_epi32(off)));
      const __m512 g16 = _mm512_add_ps(_mm512_permutexvar_ps(dup, _mm512_maskz_loadu_ps((__mmask16)wm, g + oh * OW + ow0)), zero);
      const __mmask16 cols = nbl_tail_mask(W - c0), inw = nbl_tail_mask(2 * nw);
      __mmask16 s0 = _mm512_cmpeq_epi32_mask(o16, par) & inw, s1 = _mm512_cmpeq_epi32_mask(o16, parW) & inw;
      if (vp) {
        const float *v0 = vp + 2 * oh * W + c0;
        s0 &= _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(cols, v0), zero, _CMP_GT_OQ);
        s1 &= _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(cols, v0 + W), zero, _CMP_GT_OQ);
      }
      _mm512_mask_storeu_ps(orow + c0, cols, _mm512_maskz_mov_ps(s0, g16));
      _mm512_mask_storeu_ps(orow + W + c0, cols, _mm512_maskz_mov_ps(s1, g16));
    }
  }
  if (H > 2 * OH) memset(o + 2 * OH * W, 0, sizeof(float) * (size_t)((H - 2 * OH) * W)); /* a last odd row */
  return 1;
}

__attribute__((target("avx2"))) static int mpg2_plane_avx2(const mpg2_task *t, int64_t p) {
  const int64_t H = t->H, W = t->W, OH = t->OH, OW = t->OW, base = p * H * W;
  const float *g = t->g + p * OH * OW, *vp = t->v ? t->v + base : NULL;
  const int64_t *ip = t->idx + p * OH * OW;
  float *o = t->o + base;
  const __m256i dup = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), lo32 = _mm256_setr_epi32(0, 0, 2, 2, 4, 4, 6, 6);
  const __m256i lo32s = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
  const __m256i par = _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1), two = _mm256_setr_epi64x(0, 2, 4, 6);
  const __m256i parW = _mm256_add_epi32(par, _mm256_set1_epi32((int)W));
  const __m256i vW = _mm256_set1_epi64x(W), vW1 = _mm256_set1_epi64x(W + 1), one = _mm256_set1_epi64x(1);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t oh = 0; oh < OH; oh++) {
    float *orow = o + 2 * oh * W;
    for (int64_t c0 = 0; c0 < W; c0 += 8) {
      const int64_t ow0 = c0 / 2, nw = OW - ow0 < 4 ? (OW - ow0 > 0 ? OW - ow0 : 0) : 4;
      const __m256i wm = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nw), _mm256_setr_epi64x(0, 1, 2, 3));
      const __m256i off = _mm256_sub_epi64(_mm256_maskload_epi64((const long long *)(ip + oh * OW + ow0), wm),
                                           _mm256_add_epi64(_mm256_set1_epi64x(base + 2 * oh * W + 2 * ow0), two));
      const __m256i in = _mm256_or_si256(
          _mm256_or_si256(_mm256_cmpeq_epi64(off, _mm256_setzero_si256()), _mm256_cmpeq_epi64(off, one)),
          _mm256_or_si256(_mm256_cmpeq_epi64(off, vW), _mm256_cmpeq_epi64(off, vW1)));
      if (!_mm256_testc_si256(in, wm)) return 0; /* a window of wm not in `in` */
      const __m256i o8 = _mm256_permutevar8x32_epi32(off, lo32); /* low halves, each twice */
      const __m256i gi = _mm256_castsi128_si256(_mm_castps_si128(
          _mm_maskload_ps(g + oh * OW + ow0, _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(wm, lo32s)))));
      const __m256 g8 = _mm256_add_ps(_mm256_castsi256_ps(_mm256_permutevar8x32_epi32(gi, dup)), zero);
      const __m256i inw = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(2 * nw)), lane);
      __m256 s0 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpeq_epi32(o8, par), inw));
      __m256 s1 = _mm256_castsi256_ps(_mm256_and_si256(_mm256_cmpeq_epi32(o8, parW), inw));
      const int64_t nc = W - c0;
      if (vp) {
        const float *v0 = vp + 2 * oh * W + c0;
        s0 = _mm256_and_ps(s0, _mm256_cmp_ps(nbl_load8(v0, nc), zero, _CMP_GT_OQ));
        s1 = _mm256_and_ps(s1, _mm256_cmp_ps(nbl_load8(v0 + W, nc), zero, _CMP_GT_OQ));
      }
      nbl_store8(orow + c0, nc, _mm256_and_ps(s0, g8));
      nbl_store8(orow + W + c0, nc, _mm256_and_ps(s1, g8));
    }
  }
  if (H > 2 * OH) memset(o + 2 * OH * W, 0, sizeof(float) * (size_t)((H - 2 * OH) * W));
  return 1;
}
#endif

static void mpg2_run(void *arg, int64_t begin, int64_t end) {
  mpg2_task *t = arg;
  for (int64_t p = begin; p < end && atomic_load_explicit(&t->ok, memory_order_relaxed); p++) {
#if defined(__x86_64__)
    int done = nbl_cpu_has(NBL_CPU_AVX512F) ? mpg2_plane_avx512(t, p) : mpg2_plane_avx2(t, p);
    if (!done) atomic_store_explicit(&t->ok, 0, memory_order_relaxed);
#endif
  }
}

/* dX = zeros(X_shape), dX[Indices[i]] += dY[i]. Reference: sums in double;
 * fast (float32): sums in float, in the same order. With V (float32, X's
 * shape; the fused MaxPoolGrad -> ReluGrad, fast only), dX where V > 0,
 * else 0. */
static nbl_status maxpool_grad_any(nbl_kctx *c, int fast, const nbl_rt_tensor *V) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *I = dY ? grad_need(c, 1, "Indices", &st) : NULL;
  const nbl_rt_tensor *S = I ? grad_need(c, 2, "X_shape", &st) : NULL;
  if (!S) return st;
  int r;
  int64_t xd[NBL_MAX_RANK];
  if ((st = grad_shape_input(c, S, "X_shape", &r, xd)) || (st = grad_check_float(c, dY, "dY"))) return st;
  if (I->dtype != NBL_DT_INT64) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "Indices must be int64");
  if ((st = grad_check_same_shape(c, dY, I, "dY", "Indices"))) return st;
  if (r < 3 || r != dY->rank || xd[0] != dY->dims[0] || xd[1] != dY->dims[1])
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X_shape must be [N, C, ...] with dY's rank, N and C");
  int so = (int)nbl_attr_int(c->node, "storage_order", 0);
  if (so != 0 && (so != 1 || r != 4))
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "storage_order=%d (supported: 0, and 1 for 2-D pooling)", so);
  if (V) {
    if (!fast || dY->dtype != NBL_DT_FLOAT || V->dtype != NBL_DT_FLOAT)
      return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "the fused MaxPoolGrad -> ReluGrad runs on float32 only");
    int same = V->rank == r;
    for (int i = 0; same && i < r; i++) same = V->dims[i] == xd[i];
    if (!same) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ReluGrad's X must have MaxPool's input shape");
  }
  if ((st = nbl_kctx_alloc_out(c, 0, dY->dtype, r, xd))) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  int64_t n = dX->numel, plane = n ? n / (xd[0] * xd[1]) : 1;
  const int64_t *idx = I->data;
  int64_t planes = xd[0] * xd[1], oplane = planes ? I->numel / planes : 0;
#if defined(__x86_64__)
  /* 2 x 2 windows of stride 2: the dense kernel, which checks every index */
  int nk = 0, ns = 0, np = 0, nd = 0;
  const int64_t *ks = nbl_attr_ints(c->node, "kernel_shape", &nk), *ss = nbl_attr_ints(c->node, "strides", &ns);
  const int64_t *pads = nbl_attr_ints(c->node, "pads", &np), *dil = nbl_attr_ints(c->node, "dilations", &nd);
  const char *ap = nbl_attr_string(c->node, "auto_pad", "NOTSET");
  int plain = np == 0 || (np == 4 && !pads[0] && !pads[1] && !pads[2] && !pads[3]);
  plain = plain && (nd == 0 || (nd == 2 && dil[0] == 1 && dil[1] == 1));
  plain = plain && ap && (!strcmp(ap, "NOTSET") || !strcmp(ap, "VALID"));
  if (fast && plain && dY->dtype == NBL_DT_FLOAT && r == 4 && !so && nbl_cpu_has(NBL_CPU_AVX2) && n && ks &&
      nk == 2 && ks[0] == 2 && ks[1] == 2 && ss && ns == 2 && ss[0] == 2 && ss[1] == 2 &&
      dY->dims[2] == xd[2] / 2 && dY->dims[3] == xd[3] / 2 && dY->dims[3] > 0 && xd[2] * xd[3] < INT32_MAX) {
    {
      mpg2_task t = {dY->data, V ? V->data : NULL, idx, dX->data, xd[2], xd[3], dY->dims[2], dY->dims[3], 1};
      nbl_parallel_for(c, planes, 1, mpg2_run, &t);
      if (atomic_load(&t.ok)) return NBL_OK;
    }
  }
#endif
  int own = 1; /* every index in its own (n, c) plane, as MaxPool makes them */
  /* all indices valid before anything is written; plane by plane (no
   * division per element): index i of plane i / oplane stays in its own
   * plane when it lies in [lo, lo + plane) */
  for (int64_t i = 0, lo = 0; i < I->numel; lo += plane) {
    const int64_t e = oplane > 0 && I->numel - i > oplane ? i + oplane : I->numel;
    for (; i < e; i++) {
      if (idx[i] < 0 || idx[i] >= n)
        return nbl_kerr(c, NBL_ERR_RUNTIME, "index %lld at element %lld is outside [0, %lld)", (long long)idx[i],
                        (long long)i, (long long)n);
      own &= idx[i] >= lo && idx[i] - lo < plane;
    }
  }
#define TARGET(v) (so ? (v) / plane * plane + (v) % plane % xd[2] * xd[3] + (v) % plane / xd[2] : (v))
  if (fast && dY->dtype == NBL_DT_FLOAT) {
    mpg_task t = {dY->data, idx, V ? V->data : NULL, dX->data, plane, oplane, so, xd[2], r == 4 ? xd[3] : 1};
    if (own) {
      nbl_parallel_for(c, planes, 1, mpg_run, &t); /* planes apart: the same sums in the same order */
    } else {
      t.plane_in = n, t.plane_out = I->numel;
      mpg_run(&t, 0, 1);
    }
    return NBL_OK;
  }
  double *g = nbl_to_f64(dY), *o = calloc((size_t)(n ? n : 1), sizeof(double));
  if (!g || !o) {
    free(g);
    free(o);
    return grad_oom(c);
  }
  for (int64_t i = 0; i < I->numel; i++) o[TARGET(idx[i])] += g[i];
#undef TARGET
  nbl_from_f64(dX, o);
  free(g);
  free(o);
  return NBL_OK;
}

static nbl_status maxpool_grad(nbl_kctx *c, int fast) { return maxpool_grad_any(c, fast, NULL); }

nbl_status nbl_maxpool_relu_grad(nbl_kctx *c, const nbl_rt_tensor *V) {
  if (!V) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "ReluGrad's input X is missing");
  const nbl_rt_tensor *dY = grad_in(c, 0);
  if (!c->reference && dY && dY->dtype == NBL_DT_FLOAT && V->dtype == NBL_DT_FLOAT) return maxpool_grad_any(c, 1, V);
  /* another type: MaxPoolGrad's kernel, then ReluGrad's mask in place (its
   * kept elements as they are, the others a zero of any float type: all
   * bits 0) */
  nbl_status st = maxpool_grad_any(c, !c->reference, NULL);
  if (st) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  if ((st = grad_check_type(c, V, dX->dtype, "X", "dY")) || (st = grad_check_same_shape(c, dX, V, "dX", "X")))
    return st;
  double *v = nbl_to_f64(V);
  if (!v) return grad_oom(c);
  const size_t es = nbl_dtype_nbytes(dX->dtype, 1);
  for (int64_t i = 0; i < dX->numel; i++)
    if (!(v[i] > 0)) memset((char *)dX->data + (size_t)i * es, 0, es);
  free(v);
  return NBL_OK;
}

static nbl_status k_maxpool_grad_ref(nbl_kctx *c) { return maxpool_grad(c, 0); }
static nbl_status k_maxpool_grad_fast(nbl_kctx *c) { return maxpool_grad(c, !c->reference); }

/* ------------------------------------------------------------------ AveragePoolGrad */

/* Inputs dY and X_shape: AveragePool's geometry (decoded by the forward's
 * nbl_conv_geom_init from the same attributes) and the check of dY's shape. */
static nbl_status avgpool_setup(nbl_kctx *c, nbl_conv_geom *g, const nbl_rt_tensor **dY, int *incl) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *S;
  if (!(*dY = grad_need(c, 0, "dY", &st)) || !(S = grad_need(c, 1, "X_shape", &st))) return st;
  nbl_rt_tensor xs;
  memset(&xs, 0, sizeof xs);
  if ((st = grad_shape_input(c, S, "X_shape", &xs.rank, xs.dims)) || (st = grad_check_float(c, *dY, "dY")))
    return st;
  xs.dtype = (*dY)->dtype;
  xs.numel = nbl_shape_numel(xs.rank, xs.dims);
  if ((st = nbl_conv_geom_init(c, g, &xs, NULL, (int)nbl_attr_int(c->node, "ceil_mode", 0)))) return st;
  *incl = (int)nbl_attr_int(c->node, "count_include_pad", 0);
  int ok = (*dY)->rank == xs.rank && (*dY)->dims[0] == g->N && (*dY)->dims[1] == g->C;
  for (int i = 0; ok && i < g->ns; i++) ok = (*dY)->dims[2 + i] == g->out[i];
  if (!ok) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dY does not have the AveragePool output shape for X_shape");
  return nbl_kctx_alloc_out(c, 0, (*dY)->dtype, xs.rank, xs.dims);
}

/* Reference: for each output element, its window as the forward walks it
 * (divisor: taps inside the input, or inside input + pads with
 * count_include_pad), each inside tap getting dY / divisor; in double. */
static nbl_status k_avgpool_grad_ref(nbl_kctx *c) {
  nbl_conv_geom g;
  const nbl_rt_tensor *dY;
  int incl;
  nbl_status st = avgpool_setup(c, &g, &dY, &incl);
  if (st) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  double *gy = nbl_to_f64(dY), *gx = calloc((size_t)(dX->numel ? dX->numel : 1), sizeof(double));
  int64_t *taps = malloc(sizeof(int64_t) * (size_t)(g.k_sz ? g.k_sz : 1));
  if (!gy || !gx || !taps) {
    free(gy);
    free(gx);
    free(taps);
    return grad_oom(c);
  }
  int ns = g.ns;
  for (int64_t oi = 0; oi < g.out_sz; oi++) {
    int64_t o[NBL_CONV_MAX_SP], r = oi, nt = 0, cnt_pad = 0;
    for (int i = ns - 1; i >= 0; i--) {
      o[i] = r % g.out[i];
      r /= g.out[i];
    }
    for (int64_t ki = 0; ki < g.k_sz; ki++) {
      int64_t rk = ki, xi = 0, kk[NBL_CONV_MAX_SP];
      int inside = 1, in_pad = 1;
      for (int i = ns - 1; i >= 0; i--) {
        kk[i] = rk % g.k[i];
        rk /= g.k[i];
      }
      for (int i = 0; i < ns; i++) {
        int64_t p = o[i] * g.s[i] - g.pb[i] + kk[i] * g.d[i];
        if (p < 0 || p >= g.in[i]) inside = 0;
        if (p < -g.pb[i] || p >= g.in[i] + g.pe[i]) in_pad = 0;
        xi = xi * g.in[i] + p;
      }
      cnt_pad += in_pad;
      if (inside) taps[nt++] = xi;
    }
    int64_t div = incl ? cnt_pad : nt;
    if (!div) continue; /* the forward gives NaN there: nothing flows back */
    for (int64_t pl = 0; pl < g.N * g.C; pl++) {
      double v = gy[pl * g.out_sz + oi] / (double)div;
      for (int64_t t = 0; t < nt; t++) gx[pl * g.in_sz + taps[t]] += v;
    }
  }
  nbl_from_f64(dX, gx);
  free(gy);
  free(gx);
  free(taps);
  return NBL_OK;
}

/* For each output position o along spatial axis a of g: in[o] = how many
 * of the window's positions fall inside the input, pad[o] = inside the
 * input with its pads. */
static void window_counts(const nbl_conv_geom *g, int a, int64_t *in, int64_t *pad) {
  for (int64_t o = 0; o < g->out[a]; o++) {
    in[o] = pad[o] = 0;
    for (int64_t k = 0; k < g->k[a]; k++) {
      int64_t p = o * g->s[a] - g->pb[a] + k * g->d[a];
      in[o] += p >= 0 && p < g->in[a];
      pad[o] += p >= -g->pb[a] && p < g->in[a] + g->pe[a];
    }
  }
}

/* Fast float32 2-D: per output row and column, the window's input row and
 * column ranges and divisor computed once; other cases take the reference. */
static nbl_status k_avgpool_grad_fast(nbl_kctx *c) {
  const nbl_rt_tensor *d0 = grad_in(c, 0);
  if (c->reference || !d0 || d0->dtype != NBL_DT_FLOAT || d0->rank != 4) return k_avgpool_grad_ref(c);
  nbl_conv_geom g;
  const nbl_rt_tensor *dY;
  int incl;
  nbl_status st = avgpool_setup(c, &g, &dY, &incl);
  if (st) return st;
  nbl_rt_tensor *dX = nbl_kctx_out(c, 0);
  float *gx = dX->data;
  const float *gy = dY->data;
  if (dX->numel) memset(gx, 0, sizeof(float) * (size_t)dX->numel);
  int64_t H = g.in[0], W = g.in[1], OH = g.out[0], OW = g.out[1], KH = g.k[0], KW = g.k[1];
  /* per output column and row: how many window columns (rows) are inside
   * the input, and inside input + pads */
  int64_t *cin = malloc(sizeof(int64_t) * (size_t)(2 * (OW > 0 ? OW : 1) + 2 * (OH > 0 ? OH : 1)));
  if (!cin) return grad_oom(c);
  int64_t *cpad = cin + OW, *rin = cpad + OW, *rpad = rin + OH;
  window_counts(&g, 1, cin, cpad);
  window_counts(&g, 0, rin, rpad);
  for (int64_t pl = 0; pl < g.N * g.C; pl++) {
    float *xp = gx + pl * H * W;
    const float *yp = gy + pl * OH * OW;
    for (int64_t oh = 0; oh < OH; oh++)
      for (int64_t ow = 0; ow < OW; ow++) {
        int64_t div = incl ? rpad[oh] * cpad[ow] : rin[oh] * cin[ow];
        if (!div) continue;
        float v = yp[oh * OW + ow] / (float)div;
        for (int64_t kh = 0; kh < KH; kh++) {
          int64_t ih = oh * g.s[0] - g.pb[0] + kh * g.d[0];
          if (ih < 0 || ih >= H) continue;
          for (int64_t kw = 0; kw < KW; kw++) {
            int64_t iw = ow * g.s[1] - g.pb[1] + kw * g.d[1];
            if (iw >= 0 && iw < W) xp[ih * W + iw] += v;
          }
        }
      }
  }
  free(cin); /* (rin, cpad, rpad: the same block) */
  return NBL_OK;
}

/* ------------------------------------------------------------------ LpPoolGrad */

static nbl_status k_lppool_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "Y_grad", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  const nbl_rt_tensor *Y = X ? grad_need(c, 2, "Y", &st) : NULL;
  if (!Y) return st;
  if ((st = grad_check_float(c, X, "X")) || (st = grad_check_type(c, dY, X->dtype, "Y_grad", "X")) ||
      (st = grad_check_type(c, Y, X->dtype, "Y", "X")) || (st = grad_check_same_shape(c, dY, Y, "Y_grad", "Y")))
    return st;
  int64_t p = nbl_attr_int(c->node, "p", 2);
  if (p < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'p' must be >= 1, not %lld", (long long)p);
  nbl_conv_geom g;
  if ((st = nbl_conv_geom_init(c, &g, X, NULL, (int)nbl_attr_int(c->node, "ceil_mode", 0)))) return st;
  int ok = Y->rank == X->rank && Y->dims[0] == g.N && Y->dims[1] == g.C;
  for (int i = 0; ok && i < g.ns; i++) ok = Y->dims[2 + i] == g.out[i];
  if (!ok) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "Y does not have the LpPool output shape for X");
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  double *gy = nbl_to_f64(dY), *x = nbl_to_f64(X), *y = nbl_to_f64(Y);
  double *gx = calloc((size_t)(X->numel ? X->numel : 1), sizeof(double));
  if (!gy || !x || !y || !gx) {
    free(gy);
    free(x);
    free(y);
    free(gx);
    return grad_oom(c);
  }
  int ns = g.ns;
  for (int64_t pl = 0; pl < g.N * g.C; pl++)
    for (int64_t oi = 0; oi < g.out_sz; oi++) {
      double yv = y[pl * g.out_sz + oi];
      if (yv == 0) continue;
      double v = gy[pl * g.out_sz + oi] / pow(yv, (double)(p - 1));
      int64_t o[NBL_CONV_MAX_SP], r = oi;
      for (int i = ns - 1; i >= 0; i--) {
        o[i] = r % g.out[i];
        r /= g.out[i];
      }
      for (int64_t ki = 0; ki < g.k_sz; ki++) {
        int64_t rk = ki, xi = 0, kk[NBL_CONV_MAX_SP];
        int inside = 1;
        for (int i = ns - 1; i >= 0; i--) {
          kk[i] = rk % g.k[i];
          rk /= g.k[i];
        }
        for (int i = 0; i < ns; i++) {
          int64_t q = o[i] * g.s[i] - g.pb[i] + kk[i] * g.d[i];
          if (q < 0 || q >= g.in[i]) inside = 0;
          xi = xi * g.in[i] + q;
        }
        if (!inside) continue;
        double xv = x[pl * g.in_sz + xi];
        double f = p == 1 ? 1.0 : pow(fabs(xv), (double)(p - 1));
        gx[pl * g.in_sz + xi] += v * (xv > 0 ? f : xv < 0 ? -f : 0.0);
      }
    }
  nbl_from_f64(nbl_kctx_out(c, 0), gx);
  free(gy);
  free(x);
  free(y);
  free(gx);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* dX: shape from the values of X_shape (input 2 / input 1), type of dY. */
static nbl_status shape_maxpool_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 2, 0); }
static nbl_status shape_avgpool_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 1, 0); }
/* X_grad: the shape and type of X (input 1). */
static nbl_status shape_lppool_grad(nbl_shape_ctx *c) { return nbl_shp_copy_in(c, 0, 1); }

/* ------------------------------------------------------------------ table */

const nbl_op_def nbl_ops_grad_pool[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "MaxPoolGrad", 1, 1, .ref = k_maxpool_grad_ref, .fast = k_maxpool_grad_fast, .shape = shape_maxpool_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "AveragePoolGrad", 1, 1, .ref = k_avgpool_grad_ref, .fast = k_avgpool_grad_fast, .shape = shape_avgpool_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF("ai.nibble", "LpPoolGrad", 1, 1, .ref = k_lppool_grad, .shape = shape_lppool_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_pool_count = sizeof nbl_ops_grad_pool / sizeof nbl_ops_grad_pool[0];
