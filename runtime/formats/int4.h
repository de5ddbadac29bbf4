/*
 * runtime/formats/int4.h - the per-tensor INT4 (2..8 bit) quantizer math behind the
 * ai.nibble QuantizeInt4 op: scale selection (max, SAWB, fixed, PACT),
 * symmetric / affine grids, half-to-even and stochastic rounding, and
 * INT4 nibble packing, and the one decoder of the op's attributes. Plain C
 * over the IR (no kernel-context dependency), so the reference kernel, the
 * packing/lowering passes and the fused integer kernels all share one
 * definition of the numbers and of what a valid QuantizeInt4 node is.
 *
 * Formulas (b bits, qmin = -2^(b-1), qmax = 2^(b-1)-1):
 *   symmetric:  q = clamp(round(x/s), qmin, qmax), y = s*q
 *   affine:     q = clamp(round(x/s) + z, qmin, qmax), y = s*(q-z)
 *   max:   symmetric s = max|x| / qmax; affine s = (max-min)/(qmax-qmin),
 *          z = round(qmin - min/s) (min, max taken over finite x and 0 included
 *          only if present in the data; see nbl_q4_params)
 *   sawb:  c = c1*sqrt(E[x^2]) + c2*E|x| (coefficients per b), c < E|x| (the
 *          fit degenerating to 0 on flat tensors) or c <= 0 -> max|x|,
 *          s = c / qmax (symmetric only)
 *   pact:  x is first clamped to [0, alpha], then s = alpha/(qmax-qmin), z = qmin
 *   fixed: s given (z = 0 symmetric; affine with fixed scale uses z = 0 too)
 *   mse:   the grid of max with its upper end pulled in to the clip that
 *          minimizes an estimate of the mean squared quantization error
 *          (nbl_q4_mse_clip): affine [min, min + c], symmetric s = c / qmax
 * Statistics skip NaN/Inf; s = 0 (all-zero tensor) becomes s = 1. NaN inputs
 * give NaN, +-Inf give +-Inf. Narrow range applies to symmetric grids only.
 * The affine zero point is clamped to the int8 range [-128, 127] (it is
 * reported as an int8 tensor); inside that range it is the literal formula.
 * All arithmetic is float32 (x/s, rint, s*(q-z)), like ONNX QuantizeLinear /
 * DequantizeLinear, so a lowered model reproduces the codes exactly.
 */
#ifndef NBL_QUANT4_H
#define NBL_QUANT4_H

#include <stddef.h>
#include <stdint.h>

#include "ir/ir.h"

typedef enum { NBL_Q4_SYMMETRIC = 0, NBL_Q4_AFFINE = 1 } nbl_q4_mode;
typedef enum {
  NBL_Q4_SCALE_MAX = 0,
  NBL_Q4_SCALE_SAWB = 1,
  NBL_Q4_SCALE_FIXED = 2,
  NBL_Q4_SCALE_PACT = 3,
  NBL_Q4_SCALE_MSE = 4
} nbl_q4_scale_source;
typedef enum { NBL_Q4_ROUND_HALF_EVEN = 0, NBL_Q4_ROUND_STOCHASTIC = 1 } nbl_q4_rounding;

/* The op's attributes, decoded. */
typedef struct nbl_q4_config {
  int bits;                         /* 2..8 */
  nbl_q4_mode mode;
  nbl_q4_scale_source scale_source;
  float fixed_scale;                /* scale_source == FIXED */
  int narrow;                       /* symmetric: qmin = -qmax */
  nbl_q4_rounding rounding;
  int64_t seed;                     /* stochastic rounding key */
} nbl_q4_config;

/* The quantization parameters chosen for one tensor. */
typedef struct nbl_q4_params {
  float scale;   /* s > 0 */
  int zero;      /* z (0 for symmetric) */
  int qmin, qmax;
  float clip_lo; /* PACT only: x is clamped to [clip_lo, clip_hi] before quantizing */
  float clip_hi;
  int clip;      /* 1: apply the PACT clamp */
} nbl_q4_params;

/* Fill cfg with the defaults: 4 bits, symmetric, max, half-even, seed 0. */
void nbl_q4_config_default(nbl_q4_config *cfg);

/* Decode the attributes of an ai.nibble QuantizeInt4 node n into cfg (the
 * only decoder: the reference kernel, the fused INT4 path, pack-int4 and
 * lower-to-onnx all call it). Every attribute is checked, present or not:
 *   bits          int, 2..8 (default 4)                   else NBL_ERR_UNSUPPORTED
 *   mode          string symmetric|affine                 else NBL_ERR_UNSUPPORTED
 *   scale_source  string max|sawb|fixed|pact|mse          else NBL_ERR_UNSUPPORTED
 *   rounding      string half_even|stochastic             else NBL_ERR_UNSUPPORTED
 *   narrow        int, 0 or 1                             else NBL_ERR_INVALID_MODEL
 *   seed          int                                     else NBL_ERR_INVALID_MODEL
 *   scale         float; with scale_source=fixed required, finite and > 0
 *                                                         else NBL_ERR_INVALID_MODEL
 *   sawb with mode=affine (SAWB is symmetric only)        NBL_ERR_INVALID_MODEL
 * An attribute of the wrong type (an int where a string belongs, ...) is
 * NBL_ERR_INVALID_MODEL. Returns NBL_OK, or the status with a message in
 * err[0..errlen) (may be NULL) that names the attribute, e.g.
 * "bits=9 is not supported (2..8)"; callers prefix the node. Sets no
 * thread error. cfg is fully written only on NBL_OK. */
nbl_status nbl_q4_config_decode(const nbl_node *n, nbl_q4_config *cfg, char *err, size_t errlen);

/* 1 when cfg's parameters are computed from the data (scale_source max, sawb
 * or mse), so a gradient can take the forward's instead of recomputing them. */
int nbl_q4_scale_from_data(const nbl_q4_config *cfg);

/* Code range of the configuration: qmin/qmax per the header formulas. */
void nbl_q4_range(const nbl_q4_config *cfg, int *qmin, int *qmax);

/* SAWB coefficients for `bits`; returns 0 and sets c1, c2, or -1 when there
 * are none for that bit width (the caller then falls back to max). */
int nbl_q4_sawb_coeffs(int bits, double *c1, double *c2);

/* The SAWB clip c for x[0..n) (finite elements only); falls back to max|x|
 * when c <= 0, c < E|x| (outside the fit's domain) or bits has no
 * coefficients. */
double nbl_q4_sawb_clip(const float *x, size_t n, int bits);

/* The SAWB clip (as nbl_q4_sawb_clip) from the statistics of the cnt finite
 * elements: mx = max|x|, s1 = sum |x|, s2 = sum x^2 (in double; a vector
 * kernel may add them in its own order). */
double nbl_q4_sawb_clip_from(double mx, double s1, double s2, size_t cnt, int bits);

/* The parameters of scale_source=sawb for clip c: scale c / qmax (a scale
 * that is not finite and > 0 becomes 1), zero point 0; nbl_q4_choose and
 * the training kernels (runtime/kernels/q4_train.c) both use it. */
void nbl_q4_params_from_sawb(const nbl_q4_config *cfg, double clip, nbl_q4_params *p);

/* The scale/zero point of scale_source=max for data whose finite elements
 * span [lo, hi] (lo > hi: there are none): symmetric max(|lo|, |hi|) / qmax,
 * affine (hi - lo) / (qmax - qmin) with its zero point; a scale that is not
 * finite and > 0 becomes 1. nbl_q4_choose and the fused INT4 path (which
 * knows the range from its own scan) both use it. */
void nbl_q4_params_from_range(const nbl_q4_config *cfg, float lo, float hi, nbl_q4_params *p);

/* scale_source=mse. The clip is found from a histogram of the distance d of
 * each element from the bottom of the grid (affine: d = x - min, symmetric:
 * d = |x|; R = the largest d) over a fixed sample: every finite element when
 * n <= NBL_Q4_MSE_SAMPLE, else blocks of 64 consecutive elements, every k-th
 * block with k = ceil(ceil(n / 64) / (NBL_Q4_MSE_SAMPLE / 64)). Elements with
 * d = 0 (on the grid's end) count as exact; the others fall in
 * NBL_Q4_MSE_BINS equal bins over (0, R] (bin j = (int)(d * (BINS / R)) in
 * float, the last bin taking d = R). For each candidate clip c_k = R * k /
 * BINS, k = BINS, BINS - NBL_Q4_MSE_STEP, ..., NBL_Q4_MSE_STEP, the estimate
 * is: every element above the clip at its bin centre m_j costs (m_j - c_k)^2,
 * every one below costs the uniform rounding noise s^2 / 12 with s = c_k / L
 * (L = qmax - qmin affine, qmax symmetric). The smallest estimate wins; ties
 * keep the larger clip, so data without outliers keeps c = R (max). The
 * estimate is a function of integer bin counts (computed exactly), so every
 * path that calls this gets the same clip from the same data and range.
 * [lo, hi] is the finite range of x (lo > hi: none); returns the clip c (the
 * distance from the bottom of the grid), R when the range is empty or 0. */
#define NBL_Q4_MSE_BINS 1024
#define NBL_Q4_MSE_STEP 16
#define NBL_Q4_MSE_SAMPLE 16384
float nbl_q4_mse_clip(const nbl_q4_config *cfg, const float *x, size_t n, float lo, float hi);

/* The parameters of scale_source=mse for x[0..n) with finite range [lo, hi]:
 * affine nbl_q4_params_from_range(lo, lo + c), symmetric s = c / qmax (as
 * the range [0, c]); c = R gives exactly the parameters of max. Shared by
 * nbl_q4_choose and the fast paths that know the range from their own scan. */
void nbl_q4_params_from_mse(const nbl_q4_config *cfg, const float *x, size_t n, float lo, float hi,
                            nbl_q4_params *p);

/* Choose the scale/zero point for x[0..n) under cfg. alpha is the PACT clip
 * (ignored unless scale_source == PACT). PACT is always affine on [0, alpha]
 * (the mode attribute is ignored for it). Returns 0, or -1 with the reason in
 * *why (static string): bits outside 2..8, sawb with affine mode, a fixed
 * scale <= 0 or not finite, alpha <= 0 or not finite. */
int nbl_q4_choose(const nbl_q4_config *cfg, const float *x, size_t n, float alpha,
                  nbl_q4_params *p, const char **why);

/* Counter-based uniform draw in [0, 1) keyed by (seed, index): the same
 * (seed, index) always gives the same number (splitmix64 of the pair). */
double nbl_q4_uniform(int64_t seed, uint64_t index);
/* The key of a seed: nbl_q4_uniform(seed, index) is (h >> 11) * 2^-53 with
 * h = splitmix64(nbl_q4_uniform_key(seed) ^ index) and the key itself
 * splitmix64(seed) (what vectorized callers compute lane by lane:
 * runtime/kernels/log_quant.c). */
uint64_t nbl_q4_uniform_key(int64_t seed);

/* Quantize element x (finite) at linear index `index` to its integer code
 * (including the zero point), under p and the rounding mode of cfg. */
int nbl_q4_code(const nbl_q4_config *cfg, const nbl_q4_params *p, float x, uint64_t index);

/* The straight-through mask of the quantizer at finite x (the derivative of
 * its clamp): 1 when the code of x before the clamp, round(x/s) + z with the
 * rounding (and the same draw) of nbl_q4_code, lies in [qmin, qmax], as
 * PyTorch's fake_quantize computes its mask; PACT: 1 when 0 <= x <= alpha.
 * The element that sets a max scale passes (round(max/s) = qmax even when
 * s*qmax rounds just below max). */
int nbl_q4_passes(const nbl_q4_config *cfg, const nbl_q4_params *p, float x, uint64_t index);

/* Fake-quantize x[0..n) into y[0..n) (y may equal x): y = s*(q - z); NaN
 * stays NaN, +-Inf stays +-Inf. index0 is the linear index of x[0] (for the
 * stochastic generator, so chunked/threaded calls match a single call). */
void nbl_q4_fake_quant(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                       float *y, size_t n, uint64_t index0);

/* Integer codes q (with zero point) of x[0..n) into q[0..n). Non-finite x
 * map to: NaN -> 0 code (z), +Inf -> qmax, -Inf -> qmin (codes cannot carry
 * NaN; callers that need NaN propagation use nbl_q4_fake_quant). */
void nbl_q4_quantize_codes(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x,
                           int8_t *q, size_t n, uint64_t index0);

/* QuantizeInt4's codes output (int8, X's shape): each element's code q
 * with the zero point (nbl_q4_code: Y = scale * (q - zero_point)), and codes
 * of their own past [qmin, qmax] for the non-finite elements, whose Y is X:
 * NaN NBL_Q4_CODE8_NAN, +Inf NBL_Q4_CODE8_PINF, -Inf NBL_Q4_CODE8_NINF.
 * Defined for bits <= 6 (nbl_q4_codes8_ok: every code within -32..31, clear
 * of the three). A consumer takes a code outside -126..126 as "not a code":
 * it reads the floats instead. */
#define NBL_Q4_CODE8_NAN (-128)
#define NBL_Q4_CODE8_PINF 127
#define NBL_Q4_CODE8_NINF (-127)
int nbl_q4_codes8_ok(const nbl_q4_config *cfg);
/* The codes output of x[0..n) (see above) into q; index0 as for
 * nbl_q4_fake_quant (the same draws). */
void nbl_q4_codes8(const nbl_q4_config *cfg, const nbl_q4_params *p, const float *x, int8_t *q, size_t n,
                   uint64_t index0);
/* The value of codes-output code q under scale s and zero point z: Y's
 * element, s * (q - z) (+0 for q == z), or the NaN / +-Inf of a mark. */
float nbl_q4_value8(float s, int z, int8_t q);
/* y[i] = nbl_q4_value8(s, z, q[i]) for i < n (vectorized; the same floats). */
void nbl_q4_values8(float s, int z, const int8_t *q, float *y, size_t n);

/* Pack n signed 4-bit codes (each in [-8, 7]) two per byte, low nibble first
 * (element 2i in bits 0..3 of byte i, element 2i+1 in bits 4..7); an odd
 * tail leaves the high nibble of the last byte 0. dst has (n+1)/2 bytes. */
void nbl_q4_pack(const int8_t *q, size_t n, uint8_t *dst);
/* Unpack n signed 4-bit codes from packed bytes (sign-extended). */
void nbl_q4_unpack(const uint8_t *src, size_t n, int8_t *q);

#endif /* NBL_QUANT4_H */
