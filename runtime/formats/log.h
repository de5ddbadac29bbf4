/*
 * runtime/formats/log.h - the per-tensor logarithmic quantizer behind the
 * ai.nibble QuantizeLog op (gradients in 4 bits: "FP4 [1,3,0]", a sign and an
 * exponent, no mantissa). Plain C over the IR (no kernel-context dependency;
 * the IR only for the one attribute decoder): the reference kernel, the
 * vectorized kernel, the quantize-grad-log4 pass, the lowering and the
 * integer backward kernels share this one definition of the numbers.
 *
 * Levels. With radix r (2, 4 or 10) and e exponent bits there are
 * L = 2^e - 1 non-zero magnitudes (one exponent code is zero):
 *     level_k = top * r^(-k),  k = 0 .. L-1        (e = 3: k = 0..6)
 * and a value is 0 or +-level_k. The top level is chosen per tensor, every
 * time the quantizer runs (GradScale: the largest |x| lands on the top level):
 *     phase 0 (and every mode but tpr phase 1): top = max|x|
 *     tpr phase 1 ("odd powers"):                top = max|x| * sqrt(r)
 * so for radix 4 the two TPR grids are max*4^-k and max*2*4^-k, interleaved
 * in the log domain. Statistics skip NaN/Inf; an all-zero tensor (or one
 * with no finite element) gets top = 1. NaN stays NaN, +-Inf stays +-Inf.
 *
 * Rounding of a finite x (m = level_{L-1}, the smallest level):
 *   nearest:    between two levels lo < |x| < hi, the nearest in the log
 *               domain: hi when |x| >= sqrt(lo*hi) (ties to the larger
 *               magnitude); |x| above the top level clamps to it. Below the
 *               smallest level, the nearer of 0 and m: m when |x| >= m/2.
 *   stochastic: unbiased between the two neighbouring levels lo < |x| < hi:
 *               hi with probability (|x| - lo) / (hi - lo); between 0 and m:
 *               m with probability |x| / m (E[q(x)] = x inside the grid).
 *   tpr:        nearest rounding on the grid of the node's phase (0 or 1).
 *   luq:        LUQ (ICLR 2023): radix 2 (the radix attribute must be 2),
 *               stochastic underflow below m (m with probability |x|/m, else
 *               0) and log-domain stochastic rounding above it. For radix 2,
 *               "round 2^(n-1)*a up to 2^n*a with probability
 *               (|x| - 2^(n-1)*a) / (2^(n-1)*a)" is exactly the unbiased rule
 *               of `stochastic`, so luq = stochastic on the radix-2 grid; it is
 *               a mode of its own so that graphs say what they mean.
 * Random draws are counter-based: uniform(seed, index) for element `index`
 * (nbl_q4_uniform), so chunked, threaded and vectorized runs give the same
 * numbers and a run is reproducible from its seed. The op's optional `step`
 * input (the training step) changes the key every step:
 *     key = seed                                   without step
 *     key = seed XOR (step * 0x9E3779B97F4A7C15)   with step (nbl_log_step_seed)
 * so each step draws new numbers and a rerun draws the same ones.
 *
 * Nearest rounding as a table (what the vectorized kernel and the lowering
 * compute, equal to nbl_log_code for every finite x): with the levels
 * lev[j] = level_j (non-increasing floats) and the thresholds (in double)
 *     T[j] = sqrt(lev[j] * lev[j+1])  (j = 0..L-2),   T[L-1] = lev[L-1] / 2,
 * the magnitude of x is lev[j] for the smallest j with |x| >= T[j], and 0
 * when there is none or x = 0 (|x| above the top level takes j = 0).
 * nbl_log_table gives lev[] and thr[j] = the smallest float >= T[j], so the
 * comparisons can run in float: (double)a >= T  <=>  a >= thr for a float a.
 *
 * Integer form. A code is 0 or sign*(k+1) (|code| in 1..L). For radix 2^j the
 * level is top * 2^(-j*k): relative to the smallest level it is the integer
 * 2^(j*(L-1-k)), which nbl_log_code_int gives, so a product with integer
 * weights is a shift (radix 4, e = 3: 4^6 = 4096 fits int16).
 */
#ifndef NBL_FORMAT_LOG_H
#define NBL_FORMAT_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "ir/ir.h"

typedef enum {
  NBL_LOG_NEAREST = 0,
  NBL_LOG_STOCHASTIC = 1,
  NBL_LOG_TPR = 2,
  NBL_LOG_LUQ = 3
} nbl_log_rounding;

/* The most levels a grid has (exp_bits <= 4: 2^4 - 1). */
#define NBL_LOG_MAX_LEVELS 15

/* The op's attributes, decoded. */
typedef struct nbl_log_config {
  int radix;                 /* 2, 4 or 10 */
  int exp_bits;              /* 1..4: L = 2^exp_bits - 1 levels */
  nbl_log_rounding rounding;
  int phase;                 /* tpr: 0 (top = max) or 1 (top = max*sqrt(radix)) */
  int64_t seed;              /* stochastic/luq key */
} nbl_log_config;

/* The grid chosen for one tensor. */
typedef struct nbl_log_params {
  float top;  /* the largest level (> 0) */
  int levels; /* L */
} nbl_log_params;

/* Defaults: radix 4, 3 exponent bits, nearest, phase 0, seed 0. */
void nbl_log_config_default(nbl_log_config *cfg);

/* Decode the attributes of an ai.nibble QuantizeLog node n into cfg (the only
 * decoder: the kernels, quantize-grad-log4 and lower-to-onnx call it). Every
 * attribute is checked, present or not:
 *   radix     int 2, 4 or 10 (default 4)                   else NBL_ERR_UNSUPPORTED
 *   exp_bits  int 1..4 (default 3)                         else NBL_ERR_UNSUPPORTED
 *   rounding  string nearest|stochastic|tpr|luq            else NBL_ERR_UNSUPPORTED
 *   phase     int 0 or 1 (1 only with tpr; default 0)      else NBL_ERR_INVALID_MODEL
 *   seed      int (default 0)
 *   luq with a radix other than 2                          NBL_ERR_INVALID_MODEL
 * An attribute of the wrong type is NBL_ERR_INVALID_MODEL. Returns NBL_OK, or
 * the status with a message in err[0..errlen) (may be NULL) naming the
 * attribute, e.g. "radix=3 is not supported (2, 4 or 10)"; callers prefix the
 * node. Sets no thread error. cfg is fully written only on NBL_OK. */
nbl_status nbl_log_config_decode(const nbl_node *n, nbl_log_config *cfg, char *err, size_t errlen);

/* The key of the random draws at training step `step` (see the top). */
int64_t nbl_log_step_seed(int64_t seed, int64_t step);

/* Parse a rounding attribute (nearest|stochastic|tpr|luq); 0 or -1. */
int nbl_log_parse_rounding(const char *s, nbl_log_rounding *out);
const char *nbl_log_rounding_name(nbl_log_rounding r);

/* 0 if cfg is valid, else -1 with the reason in *why (static string):
 * radix not 2/4/10, exp_bits outside 1..4, phase not 0/1 or set without tpr,
 * luq with a radix other than 2. */
int nbl_log_validate(const nbl_log_config *cfg, const char **why);

/* The grid for x[0..n) under cfg (cfg valid). */
void nbl_log_choose(const nbl_log_config *cfg, const float *x, size_t n, nbl_log_params *p);
/* The same from max|x| over the finite elements (0 when there is none), for
 * callers that scanned the tensor themselves. */
void nbl_log_choose_max(const nbl_log_config *cfg, float max_abs, nbl_log_params *p);

/* level_k of p (k in 0..L-1), computed in double and rounded to float once. */
float nbl_log_level(const nbl_log_config *cfg, const nbl_log_params *p, int k);

/* The code of finite x at linear index `index`: 0 or sign*(k+1). */
int nbl_log_code(const nbl_log_config *cfg, const nbl_log_params *p, float x, uint64_t index);

/* The codes of x[0..n) into codes[0..n): element i gets
 * nbl_log_code(cfg, p, x[i], index0 + i) (the levels are computed once);
 * NaN and +-Inf get code 0. */
void nbl_log_codes(const nbl_log_config *cfg, const nbl_log_params *p, const float *x, int8_t *codes,
                   size_t n, uint64_t index0);

/* The value of a code: 0 or sign * level_{|code|-1}. */
float nbl_log_value(const nbl_log_config *cfg, const nbl_log_params *p, int code);

/* For radix 2 or 4: the code as an integer multiple of the smallest level,
 * sign * radix^(L-1-k) (0 for code 0). */
int32_t nbl_log_code_int(const nbl_log_config *cfg, int code);

/* The op's optional codes output (QuantizeLog output 2, int8, X's shape):
 * the code of the value written to Y, 0 or sign*(k+1) for Y = +-level_k
 * (nbl_log_code's for a finite x), and for an x (and so Y) that is not
 * finite NBL_LOG_CODE_NAN, NBL_LOG_CODE_POS_INF or NBL_LOG_CODE_NEG_INF
 * (nbl_log_code8): with the top, Y itself (nbl_log_value8). The
 * int4-backward pass hands codes and top to the integer backward products
 * in place of Y's floats. */
#define NBL_LOG_CODE_NAN (-128)
#define NBL_LOG_CODE_POS_INF 127
#define NBL_LOG_CODE_NEG_INF (-127)

/* The codes output's code of a non-finite x (NaN, +Inf, -Inf). */
int nbl_log_code8_nonfinite(float x);

/* The value of a codes-output code (Y's element): nbl_log_value, or NaN,
 * +Inf, -Inf for the three codes above. */
float nbl_log_value8(const nbl_log_config *cfg, const nbl_log_params *p, int code);

/* The integer grid of radix-2/4 codes on top (nbl_log_code_int): when every
 * level's float is exactly unit * |nbl_log_code_int(cfg, k + 1)|, with unit
 * = level_{L-1} a normal float (so a code's value is that integer times
 * unit, exactly), sets *unit and returns 1; else 0 (radix 10, top not
 * finite and > 0, levels that underflow or round): the caller then reads
 * the floats. */
int nbl_log_int_grid(const nbl_log_config *cfg, float top, float *unit);

/* Nearest rounding as a table (see the top): lev[0..L) and thr[0..L) for the
 * grid p (L = p->levels <= 15). */
void nbl_log_table(const nbl_log_config *cfg, const nbl_log_params *p, float *lev, float *thr);

/* Fake-quantize x[0..n) into y[0..n) (y may equal x); index0 is the linear
 * index of x[0] (for the stochastic draws). NaN and +-Inf pass through. */
void nbl_log_fake_quant(const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                        float *y, size_t n, uint64_t index0);

#endif /* NBL_FORMAT_LOG_H */
