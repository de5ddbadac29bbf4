/* runtime/ops/grad_pool_norm.c - op family 'grad_pool_norm': backward ops of
 * pooling and normalization, and the training-mode BatchNorm forward that
 * saves the batch statistics (forward ops in runtime/ops/nn.c); kernel
 * contract in runtime/core/kernel.h.
 *
 * ONNX Runtime's training op names and signatures, domain com.microsoft,
 * version 1 (ORT registers MaxPoolGrad/AveragePoolGrad in the default domain
 * at version 9; nibble keeps every backward op in com.microsoft). T is
 * float32 or float64 (float16/bfloat16 through the double reference path).
 * Reference kernels compute in double. Fast float32 paths: MaxPoolGrad and
 * AveragePoolGrad (2-D) add in float (within 1e-6 of the reference,
 * relative to the largest element), BatchNormInternal and
 * BatchNormalizationGrad take per-channel sums in sixteen double lanes
 * (nbl_bn_acc: the same bits on every CPU and thread count; the statistics
 * in one pass about the channel's first element) and write in float
 * (within 1e-5); tests/runtime/ops/test_ops_grad.c checks both,
 * tests/runtime/ops/test_bn_sums.c the sums.
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
 * BatchNormInternal (com.microsoft 1)  -- BatchNormalization in training mode
 *   inputs:  X (T, [N, C, ...]), scale (T, [C]), B (T, [C]),
 *            input_mean (T, [C]), input_var (T, [C]) (the running statistics)
 *   outputs: Y (T, X's shape), running_mean (optional, [C]), running_var
 *            (optional, [C]), saved_mean (optional, [C]: the batch mean),
 *            saved_inv_std (optional, [C]: 1 / sqrt(batch_var + epsilon))
 *   attributes: epsilon (float, default 1e-5), momentum (float, default 0.9),
 *            training_mode (int, default 1; 0 = inference with the running
 *            statistics, then only Y may be requested)
 *   semantics: ONNX BatchNormalization-15 with training_mode=1: batch_var is
 *            the biased variance over N and the spatial dims; running_x =
 *            input_x * momentum + batch_x * (1 - momentum)
 * BatchNormalizationGrad (com.microsoft 1)
 *   inputs:  dY (T, X's shape), X (T, [N, C, ...]), scale (T, [C]),
 *            saved_mean (T, [C]), saved_inv_std (T, [C]) (BatchNormInternal outputs 3, 4)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, [C], optional),
 *            bias_grad (T, [C], optional)
 *   attributes: epsilon (float; accepted, unused: saved_inv_std carries it)
 *   semantics: the gradient through the batch statistics (training mode):
 *            xhat = (x - mean) * inv_std, m = N * spatial,
 *            bias_grad = sum dY, scale_grad = sum dY * xhat,
 *            X_grad = scale * inv_std * (dY - bias_grad / m - xhat * scale_grad / m)
 * LayerNormalizationGrad (com.microsoft 1)
 *   inputs:  Y_grad (T, X's shape), X (T), scale (T, broadcastable to
 *            X.shape[axis:]), mean (float/double, X.shape[:axis] + [1]*(rank-axis):
 *            LayerNormalization's output 1), inv_std_dev (same: output 2)
 *   outputs: X_grad (T, X's shape, optional), scale_grad (T, scale's shape,
 *            optional), bias_grad (T, scale's shape, optional)
 *   attributes: axis (int, default -1)
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
#include "runtime/ops/grad_norm.h"
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
  /* per output column: how many window columns are inside the input, and inside input + pads */
  int64_t *cin = malloc(sizeof(int64_t) * (size_t)(2 * (OW > 0 ? OW : 1)));
  if (!cin) return grad_oom(c);
  int64_t *cpad = cin + OW;
  for (int64_t ow = 0; ow < OW; ow++) {
    cin[ow] = cpad[ow] = 0;
    for (int64_t kw = 0; kw < KW; kw++) {
      int64_t p = ow * g.s[1] - g.pb[1] + kw * g.d[1];
      cin[ow] += p >= 0 && p < W;
      cpad[ow] += p >= -g.pb[1] && p < W + g.pe[1];
    }
  }
  /* per output row: the same counts over the window rows */
  int64_t *rin = malloc(sizeof(int64_t) * (size_t)(2 * (OH > 0 ? OH : 1)));
  if (!rin) {
    free(cin);
    return grad_oom(c);
  }
  int64_t *rpad = rin + OH;
  for (int64_t oh = 0; oh < OH; oh++) {
    rin[oh] = rpad[oh] = 0;
    for (int64_t kh = 0; kh < KH; kh++) {
      int64_t p = oh * g.s[0] - g.pb[0] + kh * g.d[0];
      rin[oh] += p >= 0 && p < H;
      rpad[oh] += p >= -g.pb[0] && p < H + g.pe[0];
    }
  }
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
  free(rin);
  free(cin);
  return NBL_OK;
}

/* ------------------------------------------------------------------ BatchNormInternal */

/* Inputs of BatchNormInternal / BatchNormalizationGrad: X [N, C, ...] and
 * `nper` per-channel inputs starting at input `first`, each [C] and float. */
static nbl_status bn_inputs(nbl_kctx *c, const nbl_rt_tensor *X, int first, int nper, const char *const *names) {
  nbl_status st = NBL_OK;
  if ((st = grad_check_float(c, X, "X"))) return st;
  if (X->rank < 2) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "X has rank %d, expected >= 2", X->rank);
  for (int i = first; i < first + nper; i++) {
    const nbl_rt_tensor *t = grad_need(c, i, names[i], &st);
    if (!t) return st;
    if ((st = grad_check_float(c, t, names[i]))) return st;
    if (t->rank != 1 || t->dims[0] != X->dims[1])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %s must have shape [%lld]", names[i], (long long)X->dims[1]);
  }
  return NBL_OK;
}

/* The per-channel sums of the fast (float32) BatchNorm kernels: sixteen
 * double lanes per sum (nbl_bn_acc), element i of every plane added to lane
 * i % 16, the lanes combined by nbl_bn_acc_total in a fixed tree. Each lane
 * sees the same double operations in the same order on every path (AVX-512:
 * two registers of eight lanes per sum, a plane's last partial block
 * masked; AVX2: four registers of four, the partial block blended; scalar:
 * the lanes one by one), so the sums are the same bits on every CPU and
 * thread count, and the add chains are sixteen independent ones (the loop
 * runs at the loads' pace, not one dependent add per element). */
#if defined(__x86_64__)
/* one block of 16 (the lanes of mask m) into the accumulators */
#define ACC512_BLOCK(m, xv, gv)                                                                                 \
  do {                                                                                                          \
    __m512d x0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(xv)), vk);                                \
    __m512d x1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(xv), 1))), \
                               vk);                                                                             \
    __m512d t0 = x0, t1 = x1;                                                                                   \
    if (gp) {                                                                                                   \
      t0 = _mm512_cvtps_pd(_mm512_castps512_ps256(gv));                                                         \
      t1 = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(gv), 1)));                  \
    }                                                                                                           \
    a0 = _mm512_mask_add_pd(a0, (__mmask8)(m), a0, t0);                                                         \
    a1 = _mm512_mask_add_pd(a1, (__mmask8)((m) >> 8), a1, t1);                                                  \
    b0 = _mm512_mask_add_pd(b0, (__mmask8)(m), b0, _mm512_mul_pd(t0, x0));                                      \
    b1 = _mm512_mask_add_pd(b1, (__mmask8)((m) >> 8), b1, _mm512_mul_pd(t1, x1));                               \
  } while (0)

/* a[l] += x - k, b[l] += (x - k)^2 (stats, g NULL) or a[l] += g, b[l] +=
 * g (x - k) (grad) over the planes of channel ch, h->before run on each
 * plane first */
__attribute__((target("avx512f"))) static void acc_avx512(nbl_bn_acc *s, const float *g, const float *x,
                                                         int64_t N, int64_t C, int64_t sp, int64_t ch, double k,
                                                         const nbl_bn_grad_hooks *h) {
  __m512d a0 = _mm512_loadu_pd(s->a), a1 = _mm512_loadu_pd(s->a + 8);
  __m512d b0 = _mm512_loadu_pd(s->b), b1 = _mm512_loadu_pd(s->b + 8), vk = _mm512_set1_pd(k);
  int pre_g = g && !(h && h->before); /* g of the planes ahead is there already: fetch it too */
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp, next = nbl_bn_ahead(n, N, C, sp); /* fetched while this one is summed */
    if (h && h->before) h->before(h->arg, o, sp);
    const float *xp = x + o, *gp = g ? g + o : NULL;
    int64_t i = 0;
    for (; i + 16 <= sp; i += 16) {
      _mm_prefetch((const char *)(xp + next + i), _MM_HINT_T0);
      if (pre_g) _mm_prefetch((const char *)(gp + next + i), _MM_HINT_T0);
      __m512 xv = _mm512_loadu_ps(xp + i), gv = gp ? _mm512_loadu_ps(gp + i) : xv;
      ACC512_BLOCK(0xFFFF, xv, gv);
    }
    if (i < sp) {
      __mmask16 m = (__mmask16)((1u << (sp - i)) - 1);
      __m512 xv = _mm512_maskz_loadu_ps(m, xp + i), gv = gp ? _mm512_maskz_loadu_ps(m, gp + i) : xv;
      ACC512_BLOCK(m, xv, gv);
    }
  }
  _mm512_storeu_pd(s->a, a0);
  _mm512_storeu_pd(s->a + 8, a1);
  _mm512_storeu_pd(s->b, b0);
  _mm512_storeu_pd(s->b + 8, b1);
}
#undef ACC512_BLOCK

__attribute__((target("avx2"))) static void acc_avx2(nbl_bn_acc *s, const float *g, const float *x, int64_t N,
                                                    int64_t C, int64_t sp, int64_t ch, double k,
                                                    const nbl_bn_grad_hooks *h) {
  __m256d a[4], b[4], vk = _mm256_set1_pd(k);
  for (int q = 0; q < 4; q++) a[q] = _mm256_loadu_pd(s->a + 4 * q), b[q] = _mm256_loadu_pd(s->b + 4 * q);
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp;
    if (h && h->before) h->before(h->arg, o, sp);
    const float *xp = x + o, *gp = g ? g + o : NULL;
    for (int64_t i = 0; i < sp; i += 16)
      for (int q = 0; q < 4; q++) {
        int64_t r = sp - i - 4 * q; /* elements left from this quarter on */
        if (r <= 0) break;
        __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32(r > 4 ? 4 : (int)r), _mm_setr_epi32(0, 1, 2, 3));
        __m256d xv = _mm256_sub_pd(_mm256_cvtps_pd(_mm_maskload_ps(xp + i + 4 * q, m)), vk);
        __m256d t = gp ? _mm256_cvtps_pd(_mm_maskload_ps(gp + i + 4 * q, m)) : xv;
        __m256d md = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(m));
        a[q] = _mm256_blendv_pd(a[q], _mm256_add_pd(a[q], t), md);
        b[q] = _mm256_blendv_pd(b[q], _mm256_add_pd(b[q], _mm256_mul_pd(t, xv)), md);
      }
  }
  for (int q = 0; q < 4; q++) _mm256_storeu_pd(s->a + 4 * q, a[q]), _mm256_storeu_pd(s->b + 4 * q, b[q]);
}
#endif

static void bn_acc(nbl_bn_acc *s, const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch,
                   double k, const nbl_bn_grad_hooks *h) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) {
    acc_avx512(s, g, x, N, C, sp, ch, k, h);
    return;
  }
  if (nbl_cpu_has(NBL_CPU_AVX2)) {
    acc_avx2(s, g, x, N, C, sp, ch, k, h);
    return;
  }
#endif
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp;
    if (h && h->before) h->before(h->arg, o, sp);
    for (int64_t i = 0; i < sp; i++) { /* lane i % 16, the same operations */
      double d = (double)x[o + i] - k, t = g ? (double)g[o + i] : d;
      s->a[i & 15] += t;
      s->b[i & 15] += t * d;
    }
  }
}

void nbl_bn_acc_stats(nbl_bn_acc *s, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double k) {
  bn_acc(s, NULL, x, N, C, sp, ch, k, NULL);
}

void nbl_bn_acc_grad(nbl_bn_acc *s, const float *g, const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch,
                     double mean, const nbl_bn_grad_hooks *h) {
  bn_acc(s, g, x, N, C, sp, ch, mean, h);
}

double nbl_bn_acc_total(const double lanes[16]) {
  double t[16];
  memcpy(t, lanes, sizeof t);
  for (int h = 8; h >= 1; h /= 2)
    for (int l = 0; l < h; l++) t[l] += t[l + h];
  return t[0];
}

/* d[i] = a g[i] - b x[i] + off for i in [i, n) (the scalar path and the
 * vector tails); with m, *m = max(*m, |d[i]|) over the finite ones */
static void bn_dx_tail(float *d, const float *g, const float *x, float a, float b, float off, int64_t i, int64_t n,
                       float *m) {
  for (; i < n; i++) {
    d[i] = a * g[i] - b * x[i] + off;
    float u = fabsf(d[i]);
    if (m && u < INFINITY && u > *m) *m = u; /* NaN compares false */
  }
}

#if defined(__x86_64__)
/* d = a g - b x + off (BatchNormalizationGrad's X_grad), over n floats: 8
 * lanes with AVX, the same operations in the same order as the scalar
 * tails; with m, *m = max(*m, |d|) over the finite d written (the
 * QuantizeLog pair's scale, as nbl_logq_absmax takes it). */
__attribute__((target("avx"))) static void bn_dx_avx(float *d, const float *g, const float *x, float a, float b,
                                                     float off, int64_t n, float *m) {
  __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), vo = _mm256_set1_ps(off);
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), inf = _mm256_set1_ps(INFINITY);
  __m256 mx = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_sub_ps(_mm256_mul_ps(va, _mm256_loadu_ps(g + i)), _mm256_mul_ps(vb, _mm256_loadu_ps(x + i)));
    t = _mm256_add_ps(t, vo);
    _mm256_storeu_ps(d + i, t);
    if (m) {
      __m256 u = _mm256_and_ps(t, absm);
      mx = _mm256_max_ps(mx, _mm256_and_ps(u, _mm256_cmp_ps(u, inf, _CMP_LT_OQ)));
    }
  }
  if (m) {
    float l[8];
    _mm256_storeu_ps(l, mx);
    for (int k = 0; k < 8; k++) *m = l[k] > *m ? l[k] : *m;
  }
  bn_dx_tail(d, g, x, a, b, off, i, n, m);
}

/* The same with 16 lanes (AVX-512F), the same operations per element, over
 * the whole channel (its N planes, plane n at (n C + ch) sp) at once: the
 * planes' last partial blocks masked, the max kept in a register. */
__attribute__((target("avx512f"))) static void bn_dx_avx512(float *d, const float *g, const float *x, float a, float b,
                                                            float off, int64_t N, int64_t C, int64_t sp, int64_t ch,
                                                            float *m) {
  __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), vo = _mm512_set1_ps(off);
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512 mx = _mm512_setzero_ps();
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp;
    for (int64_t i = o; i < o + sp; i += 16) {
      __mmask16 k = o + sp - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (o + sp - i)) - 1);
      __m512 t = _mm512_sub_ps(_mm512_mul_ps(va, _mm512_maskz_loadu_ps(k, g + i)),
                               _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(k, x + i)));
      t = _mm512_add_ps(t, vo);
      _mm512_mask_storeu_ps(d + i, k, t);
      if (m) {
        __m512 u = _mm512_abs_ps(t);
        mx = _mm512_mask_max_ps(mx, k & _mm512_cmp_ps_mask(u, inf, _CMP_LT_OQ), mx, u);
      }
    }
  }
  if (m) {
    float t = _mm512_reduce_max_ps(mx);
    *m = t > *m ? t : *m;
  }
}
#endif

/* BatchNormInternal's output y = x a + b (a product, then a sum, in float)
 * over n floats, and for the fused chains in the same sweep: + r (when r is
 * not NULL, a float sum), relu (t < 0 ? 0 : t, when relu) and, when rg is
 * not NULL, the minimum rg[0] and maximum rg[1] of the values written;
 * returns 1 when one of them is NaN or Inf (rg then undefined), else 0.
 * Every path gives the same floats. */
static int bn_apply_tail(float *y, const float *x, float a, float b, const float *r, int relu, float *rg, int64_t i,
                         int64_t n, int bad) {
  for (; i < n; i++) {
    float t = x[i] * a + b;
    if (r) t = t + r[i];
    if (relu) t = t < 0 ? 0.0f : t;
    y[i] = t;
    if (rg) {
      bad |= !isfinite(t);
      rg[0] = t < rg[0] ? t : rg[0];
      rg[1] = t > rg[1] ? t : rg[1];
    }
  }
  return bad;
}

/* rg = the range of w lanes' minima l and maxima h; 1 if a lane's check k
 * (a sum of t * 0) is not 0: an element was NaN or Inf */
static int lanes_range(const float *l, const float *h, const float *k, int w, float *rg) {
  int bad = 0;
  rg[0] = INFINITY, rg[1] = -INFINITY;
  for (int j = 0; j < w; j++) {
    bad |= k[j] != 0.0f;
    rg[0] = l[j] < rg[0] ? l[j] : rg[0];
    rg[1] = h[j] > rg[1] ? h[j] : rg[1];
  }
  return bad;
}

#if defined(__x86_64__)
/* The whole channel (its N planes, plane n at (n C + ch) sp) at once: the
 * planes' last partial blocks masked, the range kept in registers. */
__attribute__((target("avx512f"))) static int bn_apply_avx512(float *y, const float *x, float a, float b,
                                                             const float *r, int relu, float *rg, int64_t N,
                                                             int64_t C, int64_t sp, int64_t ch) {
  __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b), z = _mm512_setzero_ps();
  __m512 mn = _mm512_set1_ps(INFINITY), mx = _mm512_set1_ps(-INFINITY), chk = z;
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp, next = nbl_bn_ahead(n, N, C, sp);
    for (int64_t i = o; i < o + sp; i += 16) {
      __mmask16 k = o + sp - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (o + sp - i)) - 1);
      __m512 t = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(k, x + i), va), vb);
      if (r) {
        _mm_prefetch((const char *)(r + i + next), _MM_HINT_T0); /* the residual comes from further away */
        t = _mm512_add_ps(t, _mm512_maskz_loadu_ps(k, r + i));
      }
      if (relu) t = _mm512_mask_mov_ps(t, _mm512_cmp_ps_mask(t, z, _CMP_LT_OQ), z); /* t < 0 ? 0 : t */
      _mm512_mask_storeu_ps(y + i, k, t);
      if (rg) {
        chk = _mm512_mask_add_ps(chk, k, chk, _mm512_mul_ps(t, z)); /* NaN once an element is NaN or Inf */
        mn = _mm512_mask_min_ps(mn, k, mn, t);
        mx = _mm512_mask_max_ps(mx, k, mx, t);
      }
    }
  }
  if (!rg) return 0;
  float l[16], h[16], kk[16];
  _mm512_storeu_ps(l, mn);
  _mm512_storeu_ps(h, mx);
  _mm512_storeu_ps(kk, chk);
  return lanes_range(l, h, kk, 16, rg);
}

__attribute__((target("avx"))) static int bn_apply_avx(float *y, const float *x, float a, float b, const float *r,
                                                      int relu, float *rg, int64_t n) {
  __m256 va = _mm256_set1_ps(a), vb = _mm256_set1_ps(b), z = _mm256_setzero_ps();
  __m256 mn = _mm256_set1_ps(INFINITY), mx = _mm256_set1_ps(-INFINITY), chk = z;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 t = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), va), vb);
    if (r) t = _mm256_add_ps(t, _mm256_loadu_ps(r + i));
    if (relu) t = _mm256_blendv_ps(t, z, _mm256_cmp_ps(t, z, _CMP_LT_OQ));
    _mm256_storeu_ps(y + i, t);
    if (rg) {
      chk = _mm256_add_ps(chk, _mm256_mul_ps(t, z));
      mn = _mm256_min_ps(mn, t);
      mx = _mm256_max_ps(mx, t);
    }
  }
  if (!rg) return bn_apply_tail(y, x, a, b, r, relu, NULL, i, n, 0);
  float l[8], h[8], k[8];
  _mm256_storeu_ps(l, mn);
  _mm256_storeu_ps(h, mx);
  _mm256_storeu_ps(k, chk);
  return bn_apply_tail(y, x, a, b, r, relu, rg, i, n, lanes_range(l, h, k, 8, rg));
}
#endif

/* The apply sweep over channel ch's N planes (plane n at (n C + ch) sp;
 * r's and y's the same), rg the channel's range. */
static int bn_apply(float *y, const float *x, float a, float b, const float *r, int relu, float *rg, int64_t N,
                    int64_t C, int64_t sp, int64_t ch) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) return bn_apply_avx512(y, x, a, b, r, relu, rg, N, C, sp, ch);
#endif
  int bad = 0;
  float p[2];
  if (rg) rg[0] = INFINITY, rg[1] = -INFINITY;
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp;
    const float *rp = r ? r + o : NULL;
    float *pp = rg ? p : NULL;
#if defined(__x86_64__)
    if (nbl_cpu_has(NBL_CPU_AVX)) bad |= bn_apply_avx(y + o, x + o, a, b, rp, relu, pp, sp);
    else
#endif
    {
      if (pp) p[0] = INFINITY, p[1] = -INFINITY;
      bad |= bn_apply_tail(y + o, x + o, a, b, rp, relu, pp, 0, sp, 0);
    }
    if (rg) {
      rg[0] = p[0] < rg[0] ? p[0] : rg[0];
      rg[1] = p[1] > rg[1] ? p[1] : rg[1];
    }
  }
  return bad;
}

/* X_grad of channel ch's N planes (plane n at (n C + ch) sp) */
static void bn_dx(float *d, const float *g, const float *x, float a, float b, float off, int64_t N, int64_t C,
                  int64_t sp, int64_t ch, float *m) {
#if defined(__x86_64__)
  if (nbl_cpu_has(NBL_CPU_AVX512F)) {
    bn_dx_avx512(d, g, x, a, b, off, N, C, sp, ch, m);
    return;
  }
#endif
  for (int64_t n = 0; n < N; n++) {
    int64_t o = (n * C + ch) * sp;
#if defined(__x86_64__)
    if (nbl_cpu_has(NBL_CPU_AVX)) {
      bn_dx_avx(d + o, g + o, x + o, a, b, off, sp, m);
      continue;
    }
#endif
    bn_dx_tail(d + o, g + o, x + o, a, b, off, 0, sp, m);
  }
}

/* The fast kernels' work, one channel per item (nbl_parallel_for). */
typedef struct bn_task {
  nbl_kctx *c;
  int64_t N, C, sp;
  int training;
  double eps, mom;
  const float *x, *g; /* X; dY (gradient) */
  float *y;           /* Y (forward) or X_grad (gradient, NULL when not wanted) */
} bn_task;

void nbl_bn_stats_f32_channel(const float *x, int64_t N, int64_t C, int64_t sp, int64_t ch, double *mean,
                              double *var) {
  int64_t m = N * sp;
  if (m <= 0) {
    *mean = *var = 0.0;
    return;
  }
  /* one pass: the sums of x - k and (x - k)^2 about k = the channel's first
   * element (0 if not finite), then mean = k + d and var = S2 / m - d^2 with
   * d = S1 / m. k is one of the elements, so (mean - k)^2 <= m var and the
   * subtraction loses at most log2(m) of double's 53 bits. */
  double k = x[ch * sp];
  if (!isfinite(k)) k = 0.0;
  nbl_bn_acc s;
  memset(&s, 0, sizeof s);
  nbl_bn_acc_stats(&s, x, N, C, sp, ch, k);
  double d = nbl_bn_acc_total(s.a) / (double)m, v = nbl_bn_acc_total(s.b) / (double)m - d * d;
  *mean = k + d;
  *var = v < 0 ? 0.0 : v; /* rounding; a NaN stays */
}

double nbl_bn_affine_f32(double mean, double var, double eps, double scale, double bias, float *fa, float *fb) {
  double inv = 1.0 / sqrt(var + eps), a = scale * inv;
  *fa = (float)a;
  *fb = (float)(bias - mean * a);
  return inv;
}

int nbl_bn_apply_relu_f32(float *v, const float *x, const float *r, int64_t N, int64_t C, int64_t sp, int64_t ch,
                          float fa, float fb, float range[2]) {
  return bn_apply(v, x, fa, fb, r, 1, range, N, C, sp, ch);
}

static void bn_internal_run(void *arg, int64_t begin, int64_t end) {
  const bn_task *t = arg;
  nbl_kctx *c = t->c;
  int64_t N = t->N, C = t->C, sp = t->sp;
  for (int64_t ch = begin; ch < end; ch++) {
    double mean = nbl_rt_get_f64(c->in[3], ch), var = nbl_rt_get_f64(c->in[4], ch);
    if (t->training) nbl_bn_stats_f32_channel(t->x, N, C, sp, ch, &mean, &var);
    float fa, fb;
    double inv = nbl_bn_affine_f32(mean, var, t->eps, nbl_rt_get_f64(c->in[1], ch), nbl_rt_get_f64(c->in[2], ch),
                                   &fa, &fb);
    bn_apply(t->y, t->x, fa, fb, NULL, 0, NULL, N, C, sp, ch);
    if (grad_want(c, 1))
      nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, nbl_rt_get_f64(c->in[3], ch) * t->mom + mean * (1 - t->mom));
    if (grad_want(c, 2))
      nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, nbl_rt_get_f64(c->in[4], ch) * t->mom + var * (1 - t->mom));
    if (grad_want(c, 3)) nbl_rt_set_f64(nbl_kctx_out(c, 3), ch, mean);
    if (grad_want(c, 4)) nbl_rt_set_f64(nbl_kctx_out(c, 4), ch, inv);
  }
}

void nbl_bn_grad_f32_channel(const float *g, const float *x, float *dx, int64_t N, int64_t C, int64_t sp,
                             int64_t ch, double mean, double inv, double scale, double *sg_out,
                             double *sgx_out, const nbl_bn_grad_hooks *hooks) {
  int64_t m = N * sp;
  nbl_bn_acc s; /* sum dY, sum dY * (x - mean); times inv: sum dY * xhat */
  memset(&s, 0, sizeof s);
  nbl_bn_acc_grad(&s, g, x, N, C, sp, ch, mean, hooks);
  double sg = nbl_bn_acc_total(s.a), sgx = nbl_bn_acc_total(s.b) * inv;
  *sg_out = sg;
  *sgx_out = sgx;
  if (!dx) return;
  double k = scale * inv, mg = m ? sg / (double)m : 0, mgx = m ? sgx / (double)m : 0;
  /* dx = k (g - mg - (x - mean) inv mgx) = k g + (k inv mgx) (mean - x) - k mg */
  float a = (float)k, b = (float)(k * inv * mgx), off = (float)(k * inv * mgx * mean - k * mg);
  bn_dx(dx, g, x, a, b, off, N, C, sp, ch, hooks ? hooks->dx_absmax : NULL);
}

static void bn_grad_run(void *arg, int64_t begin, int64_t end) {
  const bn_task *t = arg;
  nbl_kctx *c = t->c;
  for (int64_t ch = begin; ch < end; ch++) {
    double sg, sgx;
    nbl_bn_grad_f32_channel(t->g, t->x, t->y, t->N, t->C, t->sp, ch, nbl_rt_get_f64(c->in[3], ch),
                            nbl_rt_get_f64(c->in[4], ch), nbl_rt_get_f64(c->in[2], ch), &sg, &sgx, NULL);
    if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, sgx);
    if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, sg);
  }
}

static nbl_status k_bn_internal(nbl_kctx *c) {
  static const char *const names[] = {"X", "scale", "B", "input_mean", "input_var"};
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *X = grad_need(c, 0, "X", &st);
  if (!X || (st = bn_inputs(c, X, 1, 4, names))) return st;
  int training = (int)nbl_attr_int(c->node, "training_mode", 1) != 0;
  if (!training && (grad_want(c, 1) || grad_want(c, 2) || grad_want(c, 3) || grad_want(c, 4)))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "with training_mode=0 only output Y may be requested");
  double eps = nbl_attr_float(c->node, "epsilon", 1e-5f), mom = nbl_attr_float(c->node, "momentum", 0.9f);
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0, m = N * sp;
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 4; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, c->in[o == 2 || o == 4 ? 4 : 3]->dtype, 1, &C)))
      return st;
  nbl_rt_tensor *Y = nbl_kctx_out(c, 0);
  if (!c->reference && X->dtype == NBL_DT_FLOAT) {
    bn_task t = {c, N, C, sp, training, eps, mom, X->data, NULL, Y->data};
    nbl_parallel_for(c, C, 1, bn_internal_run, &t);
    return NBL_OK;
  }
  double *x = nbl_to_f64(X);
  double *y = malloc(sizeof(double) * (size_t)(X->numel ? X->numel : 1));
  if (!x || !y) {
    free(x);
    free(y);
    return grad_oom(c);
  }
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = nbl_rt_get_f64(c->in[3], ch), var = nbl_rt_get_f64(c->in[4], ch);
    if (training) { /* two passes over the channel: mean, then the biased variance */
      double s = 0, s2 = 0;
      for (int64_t n = 0; n < N; n++) {
        int64_t base = (n * C + ch) * sp;
        for (int64_t i = 0; i < sp; i++) s += x[base + i];
      }
      mean = m ? s / (double)m : 0.0;
      for (int64_t n = 0; n < N; n++) {
        int64_t base = (n * C + ch) * sp;
        for (int64_t i = 0; i < sp; i++) {
          double d = x[base + i] - mean;
          s2 += d * d;
        }
      }
      var = m ? s2 / (double)m : 0.0;
    }
    double inv = 1.0 / sqrt(var + eps), a = nbl_rt_get_f64(c->in[1], ch) * inv, b = nbl_rt_get_f64(c->in[2], ch);
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) y[base + i] = (x[base + i] - mean) * a + b;
    }
    if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, nbl_rt_get_f64(c->in[3], ch) * mom + mean * (1 - mom));
    if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, nbl_rt_get_f64(c->in[4], ch) * mom + var * (1 - mom));
    if (grad_want(c, 3)) nbl_rt_set_f64(nbl_kctx_out(c, 3), ch, mean);
    if (grad_want(c, 4)) nbl_rt_set_f64(nbl_kctx_out(c, 4), ch, inv);
  }
  nbl_from_f64(Y, y);
  free(x);
  free(y);
  return NBL_OK;
}

/* ------------------------------------------------------------------ BatchNormalizationGrad */

static nbl_status k_bn_grad(nbl_kctx *c) {
  static const char *const names[] = {"dY", "X", "scale", "saved_mean", "saved_inv_std"};
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "dY", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  if (!X || (st = bn_inputs(c, X, 2, 3, names))) return st;
  if ((st = grad_check_type(c, dY, X->dtype, "dY", "X")) || (st = grad_check_same_shape(c, dY, X, "dY", "X")))
    return st;
  int64_t N = X->dims[0], C = X->dims[1], sp = N * C > 0 ? X->numel / (N * C) : 0, m = N * sp;
  if (grad_want(c, 0) && (st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 2; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, c->in[2]->dtype, 1, &C))) return st;
  nbl_rt_tensor *DX = grad_want(c, 0) ? nbl_kctx_out(c, 0) : NULL;
  if (!c->reference && X->dtype == NBL_DT_FLOAT) {
    bn_task t = {c, N, C, sp, 1, 0, 0, X->data, dY->data, DX ? DX->data : NULL};
    nbl_parallel_for(c, C, 1, bn_grad_run, &t);
    return NBL_OK;
  }
  double *x = nbl_to_f64(X), *g = nbl_to_f64(dY);
  if (!x || !g) {
    free(x);
    free(g);
    return grad_oom(c);
  }
  for (int64_t ch = 0; ch < C; ch++) {
    double mean = nbl_rt_get_f64(c->in[3], ch), inv = nbl_rt_get_f64(c->in[4], ch);
    double sg = 0, sgx = 0; /* sum dY, sum dY * xhat */
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) {
        sg += g[base + i];
        sgx += g[base + i] * (x[base + i] - mean) * inv;
      }
    }
    if (grad_want(c, 1)) nbl_rt_set_f64(nbl_kctx_out(c, 1), ch, sgx);
    if (grad_want(c, 2)) nbl_rt_set_f64(nbl_kctx_out(c, 2), ch, sg);
    if (!DX) continue;
    double k = nbl_rt_get_f64(c->in[2], ch) * inv, mg = m ? sg / (double)m : 0, mgx = m ? sgx / (double)m : 0;
    for (int64_t n = 0; n < N; n++) {
      int64_t base = (n * C + ch) * sp;
      for (int64_t i = 0; i < sp; i++) g[base + i] = k * (g[base + i] - mg - (x[base + i] - mean) * inv * mgx);
    }
  }
  if (DX) nbl_from_f64(DX, g);
  free(x);
  free(g);
  return NBL_OK;
}

/* ------------------------------------------------------------------ LayerNormalizationGrad */

static nbl_status k_layernorm_grad(nbl_kctx *c) {
  nbl_status st = NBL_OK;
  const nbl_rt_tensor *dY = grad_need(c, 0, "Y_grad", &st), *X = dY ? grad_need(c, 1, "X", &st) : NULL;
  const nbl_rt_tensor *S = X ? grad_need(c, 2, "scale", &st) : NULL, *MU = S ? grad_need(c, 3, "mean", &st) : NULL;
  const nbl_rt_tensor *IV = MU ? grad_need(c, 4, "inv_std_dev", &st) : NULL;
  if (!IV) return st;
  if ((st = grad_check_float(c, X, "X")) || (st = grad_check_float(c, dY, "Y_grad")) ||
      (st = grad_check_float(c, S, "scale")) || (st = grad_check_float(c, MU, "mean")) ||
      (st = grad_check_float(c, IV, "inv_std_dev")) || (st = grad_check_same_shape(c, X, dY, "X", "Y_grad")))
    return st;
  int axis = nbl_norm_axis(nbl_attr_int(c->node, "axis", -1), X->rank);
  if (axis < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis out of range for rank %d", X->rank);
  int nr = X->rank - axis;
  const int64_t *nd = X->dims + axis;
  int64_t outer = 1, inner = 1, tmp[NBL_MAX_RANK];
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis; i < X->rank; i++) inner *= X->dims[i];
  int rr;
  if (S->rank > nr || nbl_broadcast_shape(nr, nd, S->rank, S->dims, &rr, tmp) || rr != nr ||
      memcmp(tmp, nd, sizeof(int64_t) * (size_t)nr))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "scale does not broadcast to the normalized shape");
  if (MU->numel != outer || IV->numel != outer)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "mean and inv_std_dev must have %lld elements (X.shape[:axis])",
                    (long long)outer);
  if (grad_want(c, 0) && (st = nbl_kctx_alloc_out(c, 0, X->dtype, X->rank, X->dims))) return st;
  for (int o = 1; o <= 2; o++)
    if (grad_want(c, o) && (st = nbl_kctx_alloc_out(c, o, S->dtype, S->rank, S->dims))) return st;
  double *x = nbl_to_f64(X), *g = nbl_to_f64(dY), *sc = nbl_to_f64(S);
  double *ds = calloc((size_t)(S->numel ? S->numel : 1), sizeof(double));
  double *dbias = calloc((size_t)(S->numel ? S->numel : 1), sizeof(double));
  int64_t *si = malloc(sizeof(int64_t) * (size_t)(inner ? inner : 1));
  if (!x || !g || !sc || !ds || !dbias || !si) {
    st = grad_oom(c);
    goto done;
  }
  for (int64_t i = 0; i < inner; i++) si[i] = nbl_broadcast_index(nr, nd, i, S->rank, S->dims);
  for (int64_t o = 0; o < outer; o++) {
    double mu = nbl_rt_get_f64(MU, o), inv = nbl_rt_get_f64(IV, o), mgs = 0, mgsx = 0;
    double *xp = x + o * inner, *gp = g + o * inner;
    for (int64_t i = 0; i < inner; i++) {
      double xh = (xp[i] - mu) * inv, gs = gp[i] * sc[si[i]];
      ds[si[i]] += gp[i] * xh;
      dbias[si[i]] += gp[i];
      mgs += gs;
      mgsx += gs * xh;
    }
    mgs /= (double)inner;
    mgsx /= (double)inner;
    for (int64_t i = 0; i < inner; i++) /* g becomes dX */
      gp[i] = inv * (gp[i] * sc[si[i]] - mgs - (xp[i] - mu) * inv * mgsx);
  }
  if (grad_want(c, 0)) nbl_from_f64(nbl_kctx_out(c, 0), g);
  if (grad_want(c, 1)) nbl_from_f64(nbl_kctx_out(c, 1), ds);
  if (grad_want(c, 2)) nbl_from_f64(nbl_kctx_out(c, 2), dbias);
done:
  free(x);
  free(g);
  free(sc);
  free(ds);
  free(dbias);
  free(si);
  return st;
}

/* ------------------------------------------------------------------ gradient rule */

/* BatchNormInternal (BatchNormalization in training mode): com.microsoft
 * BatchNormalizationGrad (dY, X, scale, saved mean, saved inv_std -> dX,
 * dscale, dB), the forward node made to produce its saved statistics. The
 * running statistics get no gradient. (runtime/core/grad.h) */
static nbl_status g_bn_internal(nbl_grad_ctx *gc) {
  nbl_grad_no_dx(gc, 3, "the running mean is a statistic, not a parameter");
  nbl_grad_no_dx(gc, 4, "the running variance is a statistic, not a parameter");
  int want[3] = {nbl_grad_wants(gc, 0), nbl_grad_wants(gc, 1), nbl_grad_wants(gc, 2)};
  if (!want[0] && !want[1] && !want[2]) return nbl_grad_status(gc);
  if (!nbl_attr_int(nbl_grad_node(gc), "training_mode", 1))
    return nbl_grad_fail(gc, NBL_ERR_UNSUPPORTED, "gradient with training_mode=0: no rule yet");
  nbl_id in[5] = {nbl_grad_dy(gc, 0), nbl_grad_x(gc, 0), nbl_grad_x(gc, 1), nbl_grad_y_need(gc, 3),
                  nbl_grad_y_need(gc, 4)};
  nbl_id out[3];
  nbl_grad_opn(gc, "BatchNormalizationGrad", "com.microsoft", NULL, 5, in, 3, want, out);
  nbl_grad_attr_float(gc, "epsilon", nbl_attr_float(nbl_grad_node(gc), "epsilon", 1e-5f));
  for (int i = 0; i < 3; i++) nbl_grad_set_dx(gc, i, out[i]);
  return nbl_grad_status(gc);
}

/* ------------------------------------------------------------------ table */

/* ------------------------------------------------------------------ shape rules */

/* dX: shape from the values of X_shape (input 2 / input 1), type of dY. */
static nbl_status shape_maxpool_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 2, 0); }
static nbl_status shape_avgpool_grad(nbl_shape_ctx *c) { return nbl_shp_from_data(c, 0, 1, 0); }

/* Y = shape(X); running mean/var and saved mean/inv_std: [C] (C = X[1]),
 * outputs 1 and 3 with input_mean's type, 2 and 4 with input_var's. */
static nbl_status shape_bn_internal(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 0);
  if (st) return st;
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  for (int k = 1; k <= 4 && !st; k++) {
    nbl_shp s;
    nbl_shp_rank(&s, nbl_shp_in_dtype(c, k % 2 ? 3 : 4), 1);
    if (x.rank >= 2) s.d[0] = x.d[1];
    st = nbl_shp_set(c, k, &s);
  }
  return st;
}

/* X_grad = shape(X) (input 1); scale_grad and bias_grad = shape(scale) (input 2). */
static nbl_status shape_norm_grad(nbl_shape_ctx *c) {
  nbl_status st = nbl_shp_copy_in(c, 0, 1);
  if (!st) st = nbl_shp_copy_in(c, 1, 2);
  return st ? st : nbl_shp_copy_in(c, 2, 2);
}

const nbl_op_def nbl_ops_grad_pool_norm[] = {
    NBL_OP_DEF(NBL_MS_DOMAIN, "MaxPoolGrad", 1, 1, .ref = k_maxpool_grad_ref, .fast = k_maxpool_grad_fast, .shape = shape_maxpool_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "AveragePoolGrad", 1, 1, .ref = k_avgpool_grad_ref, .fast = k_avgpool_grad_fast, .shape = shape_avgpool_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "BatchNormInternal", 1, 1, .ref = k_bn_internal, .fast = k_bn_internal, .shape = shape_bn_internal, .grad = g_bn_internal),
    NBL_OP_DEF(NBL_MS_DOMAIN, "BatchNormalizationGrad", 1, 1, .ref = k_bn_grad, .fast = k_bn_grad, .shape = shape_norm_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
    NBL_OP_DEF(NBL_MS_DOMAIN, "LayerNormalizationGrad", 1, 1, .ref = k_layernorm_grad, .shape = shape_norm_grad, .no_grad = NBL_NO_GRAD_BACKWARD),
};
const size_t nbl_ops_grad_pool_norm_count = sizeof nbl_ops_grad_pool_norm / sizeof nbl_ops_grad_pool_norm[0];
