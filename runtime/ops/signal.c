/* runtime/ops/signal.c - op family 'signal': signal processing (HannWindow,
 * HammingWindow, BlackmanWindow, DFT, STFT, MelWeightMatrix).
 *
 * These kernels are reference kernels: inputs are converted to double, the
 * computation runs in double and the result is converted back to the output's
 * element type (float, double or float16). */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "runtime/core/adapt.h"
#include "runtime/core/shape.h"
#include "runtime/kernels/gemm.h"
#include "runtime/ops/ref_common.h"

/* ------------------------------------------------------------------ windows */

static nbl_status window_common(nbl_kctx *c, double a0, double a1, double a2) {
  nbl_status st;
  int64_t size;
  nbl_dtype dt;
  if ((st = need_input(c, 0, "size")) || (st = scalar_i64(c, c->in[0], "size", &size)) ||
      (st = out_dtype_attr(c, &dt)))
    return st;
  if (size < 0 || size > ((int64_t)1 << 32))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "size %lld is negative or too large", (long long)size);
  int periodic = nbl_attr_int(c->node, "periodic", 1) != 0;
  int64_t dims[1] = {size};
  if ((st = nbl_kctx_alloc_out(c, 0, dt, 1, dims))) return st;
  double *v = malloc(sizeof(double) * (size_t)(size ? size : 1));
  if (!v) return oom(c);
  double N = periodic ? (double)size : (double)(size - 1);
  for (int64_t n = 0; n < size; n++) {
    double t = N > 0 ? 2.0 * M_PI * (double)n / N : 0.0;
    v[n] = a0 - a1 * cos(t) + a2 * cos(2.0 * t);
  }
  nbl_from_f64(nbl_kctx_out(c, 0), v);
  free(v);
  return NBL_OK;
}

static nbl_status k_hann(nbl_kctx *c) { return window_common(c, 0.5, 0.5, 0.0); }
static nbl_status k_hamming(nbl_kctx *c) { return window_common(c, 25.0 / 46.0, 21.0 / 46.0, 0.0); }
static nbl_status k_blackman(nbl_kctx *c) { return window_common(c, 0.42, 0.5, 0.08); }

/* ------------------------------------------------------------------ DFT, STFT */

/* Twiddle table: tw[2e], tw[2e+1] = cos, sin of 2*pi*e/n, e < n (malloc'd). */
static double *dft_twiddles(int64_t n) {
  double *tw = malloc(sizeof(double) * (size_t)(2 * n));
  if (tw)
    for (int64_t e = 0; e < n; e++) {
      tw[2 * e] = cos(2.0 * M_PI * (double)e / (double)n);
      tw[2 * e + 1] = sin(2.0 * M_PI * (double)e / (double)n);
    }
  return tw;
}

/* out[k] = sum_j in[j] * exp(sign * 2*pi*i*j*k/n) for k < n_out; in has n_in
 * complex values (zero beyond), stride 1 (interleaved re, im); tw from dft_twiddles(n). */
static void dft_1d(const double *in, int64_t n_in, int64_t n, int64_t n_out, int inverse, const double *tw,
                   double *out) {
  double sign = inverse ? 1.0 : -1.0;
  int64_t m = n_in < n ? n_in : n;
  for (int64_t k = 0; k < n_out; k++) {
    double re = 0, im = 0;
    int64_t e = 0, step = k % n;
    for (int64_t j = 0; j < m; j++, e = (e + step) % n) {
      double cr = tw[2 * e], ci = sign * tw[2 * e + 1];
      re += in[2 * j] * cr - in[2 * j + 1] * ci;
      im += in[2 * j] * ci + in[2 * j + 1] * cr;
    }
    if (inverse) re /= (double)n, im /= (double)n;
    out[2 * k] = re;
    out[2 * k + 1] = im;
  }
}

static nbl_status k_dft(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "input"))) return st;
  const nbl_rt_tensor *X = c->in[0], *L = in_at(c, 1);
  if ((st = need_float(c, X, "input"))) return st;
  int r = X->rank;
  if (r < 2 || (X->dims[r - 1] != 1 && X->dims[r - 1] != 2))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input must have rank >= 2 and a last dimension of 1 or 2");
  int64_t axis = nbl_attr_int(c->node, "axis", 1); /* opset 20: input 2, default -2 */
  const nbl_rt_tensor *A = c->opset >= 20 ? in_at(c, 2) : NULL;
  if (c->opset >= 20 && !A) axis = -2;
  if (A && (st = scalar_i64(c, A, "axis", &axis))) return st;
  if (axis < 0) axis += r;
  if (axis < 0 || axis >= r - 1)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)axis, r);
  int inverse = nbl_attr_int(c->node, "inverse", 0) != 0, onesided = nbl_attr_int(c->node, "onesided", 0) != 0;
  int64_t n_sig = X->dims[axis], n = n_sig;
  if (L && (st = scalar_i64(c, L, "dft_length", &n))) return st;
  if (n < 1 || n > ((int64_t)1 << 32))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "dft_length %lld must be in [1, 2^32]", (long long)n);
  int cplx = X->dims[r - 1] == 2;
  if (onesided && cplx)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "onesided=1 requires a real input (last dimension 1)");
  int64_t n_out = onesided ? n / 2 + 1 : n;
  int64_t dims[NBL_MAX_RANK];
  memcpy(dims, X->dims, sizeof(int64_t) * (size_t)r);
  dims[axis] = n_out;
  dims[r - 1] = 2;
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, r, dims))) return st;
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < axis; i++) outer *= X->dims[i];
  for (int i = axis + 1; i < r - 1; i++) inner *= X->dims[i];
  double *x = nbl_to_f64(X), *y = malloc(sizeof(double) * (size_t)(outer * n_out * inner * 2 + 1)),
         *bi = malloc(sizeof(double) * (size_t)(2 * n_sig + 2)), *bo = malloc(sizeof(double) * (size_t)(2 * n_out + 2)),
         *tw = dft_twiddles(n);
  if (!x || !y || !bi || !bo || !tw) {
    free(x), free(y), free(bi), free(bo), free(tw);
    return oom(c);
  }
  int ch = cplx ? 2 : 1;
  for (int64_t o = 0; o < outer; o++)
    for (int64_t q = 0; q < inner; q++) {
      for (int64_t j = 0; j < n_sig; j++) {
        const double *s = x + ((o * n_sig + j) * inner + q) * ch;
        bi[2 * j] = s[0];
        bi[2 * j + 1] = cplx ? s[1] : 0.0;
      }
      dft_1d(bi, n_sig, n, n_out, inverse, tw, bo);
      for (int64_t k = 0; k < n_out; k++) {
        double *d = y + ((o * n_out + k) * inner + q) * 2;
        d[0] = bo[2 * k];
        d[1] = bo[2 * k + 1];
      }
    }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(y), free(bi), free(bo), free(tw);
  return NBL_OK;
}

static nbl_status k_stft(nbl_kctx *c) {
  nbl_status st;
  if ((st = need_input(c, 0, "signal")) || (st = need_input(c, 1, "frame_step"))) return st;
  const nbl_rt_tensor *X = c->in[0], *Win = in_at(c, 2), *FL = in_at(c, 3);
  if ((st = need_float(c, X, "signal"))) return st;
  if (X->rank != 3 || (X->dims[2] != 1 && X->dims[2] != 2))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "signal must have shape [batch, length, 1 or 2]");
  int64_t step, flen = -1;
  if ((st = scalar_i64(c, c->in[1], "frame_step", &step))) return st;
  if (FL && (st = scalar_i64(c, FL, "frame_length", &flen))) return st;
  if (Win) {
    if (Win->rank != 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "window must be 1-D");
    if (flen >= 0 && flen != Win->dims[0])
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "window length %lld differs from frame_length %lld",
                      (long long)Win->dims[0], (long long)flen);
    flen = Win->dims[0];
  }
  if (flen < 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "neither window nor frame_length is given");
  int64_t len = X->dims[1], nb = X->dims[0];
  if (step < 1 || flen < 1 || flen > len)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "frame_step %lld / frame_length %lld invalid for signal length %lld",
                    (long long)step, (long long)flen, (long long)len);
  int cplx = X->dims[2] == 2, onesided = nbl_attr_int(c->node, "onesided", 1) != 0;
  if (onesided && cplx)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "onesided=1 requires a real signal (last dimension 1)");
  int64_t frames = (len - flen) / step + 1, bins = onesided ? flen / 2 + 1 : flen;
  int64_t dims[4] = {nb, frames, bins, 2};
  if ((st = nbl_kctx_alloc_out(c, 0, X->dtype, 4, dims))) return st;
  double *x = nbl_to_f64(X), *wv = Win ? nbl_to_f64(Win) : NULL,
         *y = malloc(sizeof(double) * (size_t)(nb * frames * bins * 2 + 1)),
         *bi = malloc(sizeof(double) * (size_t)(2 * flen)), *bo = malloc(sizeof(double) * (size_t)(2 * bins)),
         *tw = dft_twiddles(flen);
  if (!x || (Win && !wv) || !y || !bi || !bo || !tw) {
    free(x), free(wv), free(y), free(bi), free(bo), free(tw);
    return oom(c);
  }
  int ch = cplx ? 2 : 1;
  for (int64_t b = 0; b < nb; b++)
    for (int64_t f = 0; f < frames; f++) {
      for (int64_t j = 0; j < flen; j++) {
        const double *s = x + (b * len + f * step + j) * ch;
        double wj = wv ? wv[j] : 1.0;
        bi[2 * j] = s[0] * wj;
        bi[2 * j + 1] = cplx ? s[1] * wj : 0.0;
      }
      dft_1d(bi, flen, flen, bins, 0, tw, bo);
      memcpy(y + (b * frames + f) * bins * 2, bo, sizeof(double) * (size_t)(2 * bins));
    }
  nbl_from_f64(nbl_kctx_out(c, 0), y);
  free(x), free(wv), free(y), free(bi), free(bo), free(tw);
  return NBL_OK;
}

/* ------------------------------------------------------------------ MelWeightMatrix */

static nbl_status k_melweight(nbl_kctx *c) {
  nbl_status st;
  int64_t nmel, dftlen, rate;
  double lo, hi;
  nbl_dtype dt;
  for (int i = 0; i < 5; i++)
    if ((st = need_input(c, i, "MelWeightMatrix input"))) return st;
  if ((st = scalar_i64(c, c->in[0], "num_mel_bins", &nmel)) ||
      (st = scalar_i64(c, c->in[1], "dft_length", &dftlen)) ||
      (st = scalar_i64(c, c->in[2], "sample_rate", &rate)) ||
      (st = scalar_f64(c, c->in[3], "lower_edge_hertz", &lo)) ||
      (st = scalar_f64(c, c->in[4], "upper_edge_hertz", &hi)) || (st = out_dtype_attr(c, &dt)))
    return st;
  if (nmel < 1 || dftlen < 1 || nmel > ((int64_t)1 << 20) || dftlen > ((int64_t)1 << 30) || rate < 1 || lo < 0 || hi < lo || hi > rate / 2.0 + 1e-9)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "invalid arguments: num_mel_bins %lld, dft_length %lld, "
                    "sample_rate %lld, edges [%g, %g]", (long long)nmel, (long long)dftlen, (long long)rate, lo, hi);
  int64_t nspec = dftlen / 2 + 1;
  int64_t dims[2] = {nspec, nmel};
  if ((st = nbl_kctx_alloc_out(c, 0, dt, 2, dims))) return st;
  double *out = calloc((size_t)(nspec * nmel), sizeof(double));
  int64_t *fb = malloc(sizeof(int64_t) * (size_t)(nmel + 2));
  if (!out || !fb) {
    free(out), free(fb);
    return oom(c);
  }
  double lmel = 2595.0 * log10(1.0 + lo / 700.0), hmel = 2595.0 * log10(1.0 + hi / 700.0);
  double step = (hmel - lmel) / (double)(nmel + 2);
  for (int64_t i = 0; i < nmel + 2; i++) {
    double f = 700.0 * (pow(10.0, ((double)i * step + lmel) / 2595.0) - 1.0);
    fb[i] = (int64_t)floor((double)(dftlen + 1) * f / (double)rate);
    if (fb[i] < 0) fb[i] = 0;
    if (fb[i] > nspec - 1) fb[i] = nspec - 1;
  }
  for (int64_t i = 0; i < nmel; i++) {
    int64_t l = fb[i], ce = fb[i + 1], h = fb[i + 2];
    if (ce - l == 0) out[ce * nmel + i] = 1.0;
    else
      for (int64_t j = l; j <= ce; j++) out[j * nmel + i] = (double)(j - l) / (double)(ce - l);
    if (h - ce > 0)
      for (int64_t j = ce; j < h; j++) out[j * nmel + i] = (double)(h - j) / (double)(h - ce);
  }
  nbl_from_f64(nbl_kctx_out(c, 0), out);
  free(out), free(fb);
  return NBL_OK;
}

/* ------------------------------------------------------------------ shape rules */

/* The 'output_datatype' attribute (default float). */
static nbl_dtype out_dtype(nbl_shape_ctx *c) {
  int64_t v = nbl_attr_int(c->node, "output_datatype", NBL_DT_FLOAT);
  return nbl_dtype_valid((int)v) ? (nbl_dtype)v : NBL_DT_UNDEFINED;
}

/* A known integer scalar at input i as a dim. */
static nbl_dim in_dim(nbl_shape_ctx *c, int i) {
  int64_t v;
  return nbl_shp_in_scalar_i64(c, i, &v) && v >= 0 ? nbl_dim_val(v) : nbl_dim_unk();
}

/* HannWindow, HammingWindow, BlackmanWindow: [size] of output_datatype. */
static nbl_status shape_window(nbl_shape_ctx *c) {
  nbl_shp o;
  o.dt = out_dtype(c);
  o.rank = 1;
  o.d[0] = in_dim(c, 0);
  return nbl_shp_set(c, 0, &o);
}

/* DFT: the input's shape with the axis dim the DFT length (dft_length or the
 * signal's length; onesided: length / 2 + 1) and the last dim 2 (complex). */
static nbl_status shape_dft(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank < 2) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  int64_t axis = nbl_attr_int(c->node, "axis", 1), av[1];
  int na = 0;
  if (c->opset >= 20 && !nbl_shp_has_in(c, 2)) axis = -2;
  else if (c->opset >= 20 && !(nbl_shp_in_ints(c, 2, av, &na) && na == 1))
    return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  else if (c->opset >= 20) axis = av[0];
  if (axis < 0) axis += x.rank;
  nbl_shp o = x;
  o.d[x.rank - 1] = nbl_dim_val(2);
  if (axis < 0 || axis >= x.rank - 1) return nbl_shp_set_dt(c, 0, x.dt, x.rank);
  nbl_dim n = nbl_shp_has_in(c, 1) ? in_dim(c, 1) : x.d[axis];
  if (nbl_attr_int(c->node, "onesided", 0))
    n = nbl_dim_known(n) ? nbl_dim_val(n.value / 2 + 1) : nbl_dim_unk();
  o.d[axis] = n;
  return nbl_shp_set(c, 0, &o);
}

/* STFT: [batch, frames, bins, 2]: frames = (length - frame_length) / frame_step
 * + 1, bins = frame_length (onesided, the default: frame_length / 2 + 1);
 * frame_length from input 3 or the window's length. */
static nbl_status shape_stft(nbl_shape_ctx *c) {
  nbl_shp x, win, o;
  nbl_shp_in(c, 0, &x);
  nbl_dim step = in_dim(c, 1), flen = in_dim(c, 3);
  if (!nbl_dim_known(flen) && nbl_shp_in(c, 2, &win) && win.rank == 1) flen = win.d[0];
  nbl_shp_rank(&o, x.dt, 4);
  o.d[3] = nbl_dim_val(2);
  if (x.rank == 3) {
    o.d[0] = x.d[0];
    if (nbl_dim_known(x.d[1]) && nbl_dim_known(flen) && nbl_dim_known(step) && step.value > 0 &&
        x.d[1].value >= flen.value)
      o.d[1] = nbl_dim_val((x.d[1].value - flen.value) / step.value + 1);
  }
  if (nbl_dim_known(flen))
    o.d[2] = nbl_attr_int(c->node, "onesided", 1) ? nbl_dim_val(flen.value / 2 + 1) : flen;
  return nbl_shp_set(c, 0, &o);
}

/* MelWeightMatrix: [dft_length / 2 + 1, num_mel_bins] of output_datatype. */
static nbl_status shape_melweight(nbl_shape_ctx *c) {
  nbl_shp o;
  nbl_dim dl = in_dim(c, 1);
  o.dt = out_dtype(c);
  o.rank = 2;
  o.d[0] = nbl_dim_known(dl) ? nbl_dim_val(dl.value / 2 + 1) : nbl_dim_unk();
  o.d[1] = in_dim(c, 0);
  return nbl_shp_set(c, 0, &o);
}

/* ------------------------------------------------------------------ table */

/* DFT: axis is an attribute (default 1) before opset 20, scalar input 2
 * (default -2) from 20; the same axis of the input either way. */
static nbl_status dft_up(nbl_adapt_ctx *c) {
  int64_t axis = nbl_attr_int(nbl_adapt_node(c), "axis", 1);
  nbl_id a = nbl_adapt_const(c, "axis", NBL_DT_INT64, 0, NULL, &axis);
  if (a == NBL_NONE) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_adapt_drop_attr(c, "axis");
  return nbl_adapt_set_input(c, 2, a);
}

static nbl_status dft_down(nbl_adapt_ctx *c) {
  const nbl_node *n = nbl_adapt_node(c);
  int64_t axis = -2;
  if (n->n_inputs > 2 && n->inputs[2] != NBL_NONE) {
    const nbl_tensor *t = nbl_adapt_const_input(c, 2);
    if (!t || nbl_tensor_numel(t) != 1) return nbl_adapt_refuse(c, "axis is not a constant scalar");
    axis = nbl_tensor_get_i64(t, 0);
  }
  nbl_node_set_attr_int(c->graph, c->node, "axis", axis);
  return nbl_adapt_set_input(c, 2, NBL_NONE);
}

static const nbl_op_adapter dft_steps[] = {{.from = 17, .to = 20, .up = dft_up, .down = dft_down}, {0}};

const nbl_op_def nbl_ops_signal[] = {
    NBL_OP("HannWindow", 17, .ref = k_hann, .shape = shape_window, .stable_since = 17,
        .no_grad = NBL_NO_GRAD_CONST),
    NBL_OP("HammingWindow", 17, .ref = k_hamming, .shape = shape_window, .stable_since = 17,
        .no_grad = NBL_NO_GRAD_CONST),
    NBL_OP("BlackmanWindow", 17, .ref = k_blackman, .shape = shape_window, .stable_since = 17,
        .no_grad = NBL_NO_GRAD_CONST),
    NBL_OP("DFT", 17, .ref = k_dft, .shape = shape_dft, .stable_since = 20, .adapters = dft_steps, .no_grad = "no rule yet"),
    NBL_OP("STFT", 17, .ref = k_stft, .shape = shape_stft, .stable_since = 17, .no_grad = "no rule yet"),
    NBL_OP("MelWeightMatrix", 17, .ref = k_melweight, .shape = shape_melweight, .stable_since = 17,
        .no_grad = NBL_NO_GRAD_CONST),
};
const size_t nbl_ops_signal_count = sizeof nbl_ops_signal / sizeof nbl_ops_signal[0];
