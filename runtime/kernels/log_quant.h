/*
 * log_quant.h - vectorized pieces of the logarithmic quantizer (ai.nibble
 * QuantizeLog's fast kernel): the max-|x| scan, nearest rounding through
 * the threshold table of runtime/formats/log.h (nbl_log_table) and
 * stochastic rounding. Each has an AVX-512, an AVX2 and a scalar variant
 * (stochastic rounding's scalar one: the format's own functions); all give
 * bit-identical results, equal to nbl_log_fake_quant's (tests/runtime/formats/test_format_log.c).
 *
 * The variant is chosen at run time by nbl_logq_best_isa(), through the
 * runtime's one CPU dispatch (runtime/core/cpu.h: the CPU and the cap in
 * force, NBL_ISA or the session's). Tests call each variant explicitly; a
 * variant the CPU lacks is lowered to the best it has. The AVX-512 and AVX2 rounding look the magnitude up by the
 * binade of |x| (one threshold per binade at most, for every radix >= 2)
 * instead of comparing |x| with every threshold; grids the lookup cannot
 * hold (subnormal levels, more than 30 binades) take the comparisons.
 */
#ifndef NBL_KERNELS_LOG_QUANT_H
#define NBL_KERNELS_LOG_QUANT_H

#include <stddef.h>
#include <stdint.h>

typedef enum { NBL_LOGQ_SCALAR = 0, NBL_LOGQ_AVX2 = 1, NBL_LOGQ_AVX512 = 2 } nbl_logq_isa;

/* The variant to use on the calling thread: AVX-512F, else AVX2, else
 * scalar, as the CPU and the cap in force allow. */
nbl_logq_isa nbl_logq_best_isa(void);
/* 1 when the CPU can run variant isa (no cap). */
int nbl_logq_isa_ok(nbl_logq_isa isa);

/* max |x[i]| over the finite elements of x[0..n) (0 when there is none). */
float nbl_logq_absmax(nbl_logq_isa isa, const float *x, size_t n);

/* y[i] = nearest rounding of x[i] on the table lev[0..L), thr[0..L)
 * (nbl_log_table; 1 <= L <= 15): sign(x) * lev[j] for the smallest j with
 * |x| >= thr[j], +0 when none or x = 0, x itself when x is NaN or +-Inf.
 * The sign is x's when some threshold was passed (as nbl_log_value's code),
 * so -0 and negatives rounding to zero give +0. y may equal x. */
void nbl_logq_nearest(nbl_logq_isa isa, const float *lev, const float *thr, int L, const float *x,
                      float *y, size_t n);

/* nbl_logq_nearest that also writes codes[i] (int8): the code of y[i], j + 1
 * for y[i] = +lev[j] and -(j + 1) for -lev[j] (the j the rounding chose),
 * 0 for y[i] = +0, and where x[i] is NaN, +Inf or -Inf the codes -128,
 * 127, -127 (runtime/formats/log.h: QuantizeLog's codes output). y may
 * equal x, or be NULL (the codes only). */
void nbl_logq_nearest_codes(nbl_logq_isa isa, const float *lev, const float *thr, int L, const float *x,
                            float *y, signed char *codes, size_t n);

/* The codes only (nbl_logq_nearest_codes with y NULL) of x on two tables at
 * once, codes[g] on table g (lev[g], thr[g], L[g]): the pair of two-phase
 * rounding. The same codes; on AVX-512 one sweep over x. */
void nbl_logq_nearest_codes2(nbl_logq_isa isa, const float *const lev[2], const float *const thr[2], const int L[2],
                             const float *x, signed char *const codes[2], size_t n);

/* Stochastic rounding (QuantizeLog's rounding stochastic and luq) of
 * x[0..n) on the levels of cfg and p, element i drawing
 * nbl_q4_uniform(cfg->seed, index0 + i): y[i] as nbl_log_fake_quant gives
 * it and codes[i] as nbl_log_codes, with NaN, +Inf and -Inf marked -128,
 * 127, -127 (either may be NULL). The AVX-512 variant (with AVX512DQ: the
 * draws' 64-bit products) runs eight elements at a time in double, the
 * format's operations in its order, the AVX2 one four at a time (the 64-bit
 * products from 32-bit ones), its tail and the scalar variant the format's
 * functions. Every variant gives the same bits. */
typedef struct nbl_log_config nbl_log_config;
typedef struct nbl_log_params nbl_log_params;
void nbl_logq_stochastic(nbl_logq_isa isa, const nbl_log_config *cfg, const nbl_log_params *p, const float *x,
                         float *y, signed char *codes, size_t n, uint64_t index0);

#endif /* NBL_KERNELS_LOG_QUANT_H */
