/*
 * runtime/formats/log.h - the per-tensor logarithmic quantizer behind the
 * ai.nibble QuantizeLog op (gradients in 4 bits: "FP4 [1,3,0]", a sign and an
 * exponent, no mantissa). Plain C, no IR or kernel-context dependency: the
 * reference kernel, the vectorized kernel, the lowering and the integer
 * backward kernels share this one definition of the numbers.
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
 * numbers and a run is reproducible from its seed.
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

typedef enum {
  NBL_LOG_NEAREST = 0,
  NBL_LOG_STOCHASTIC = 1,
  NBL_LOG_TPR = 2,
  NBL_LOG_LUQ = 3
} nbl_log_rounding;

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

/* Parse a rounding attribute (nearest|stochastic|tpr|luq); 0 or -1. */
int nbl_log_parse_rounding(const char *s, nbl_log_rounding *out);
const char *nbl_log_rounding_name(nbl_log_rounding r);

/* 0 if cfg is valid, else -1 with the reason in *why (static string):
 * radix not 2/4/10, exp_bits outside 1..4, phase not 0/1 or set without tpr,
 * luq with a radix other than 2. */
int nbl_log_validate(const nbl_log_config *cfg, const char **why);

/* The grid for x[0..n) under cfg (cfg valid). */
void nbl_log_choose(const nbl_log_config *cfg, const float *x, size_t n, nbl_log_params *p);

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

/* Fake-quantize x[0..n) into y[0..n) (y may equal x); index0 is the linear
 * index of x[0] (for the stochastic draws). NaN and +-Inf pass through. */
void nbl_log_fake_quant(const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                        float *y, size_t n, uint64_t index0);

#endif /* NBL_FORMAT_LOG_H */
