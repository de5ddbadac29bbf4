/* test_data.h - the generators of the C tests' pseudo-random data, and the
 * convolution geometry the kernel tests build from their case tables.
 * Header-only, static inline functions.
 *
 * Each generator takes its state by pointer, so every test file keeps its
 * own seed (a static variable, or a local one to replay the same data) and
 * its own sequence:
 *   static uint32_t rng = 777;
 *   static float frand(void) { return td_lcg_float(&rng); }
 *
 *   td_lcg        LCG (Numerical Recipes' 1664525, 1013904223), 32-bit state
 *   td_xs32       xorshift32 (13, 17, 5)
 *   td_xs64       xorshift64 (13, 7, 17)
 *   td_splitmix64 splitmix64 (the state advances by the golden ratio)
 * and uniform numbers drawn from them (td_lcg_float, td_xs32_float,
 * td_xs32_range, td_xs64_unit, td_lcg_floats). */
#ifndef NBL_TEST_DATA_H
#define NBL_TEST_DATA_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/kernels/gemm.h"

/* The next state of the LCG (which is also the number it draws). */
static inline uint32_t td_lcg(uint32_t *s) {
  *s = *s * 1664525u + 1013904223u;
  return *s;
}

/* A float in [-1, 1) from the LCG: bits 8..23, in steps of 1/32768. */
static inline float td_lcg_float(uint32_t *s) {
  return (float)((td_lcg(s) >> 8) & 0xffff) / 32768.0f - 1.0f;
}

/* n floats td_lcg_float (malloc'd, at least one element). */
static inline float *td_lcg_floats(uint32_t *s, int64_t n) {
  float *v = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
  for (int64_t i = 0; i < n; i++) v[i] = td_lcg_float(s);
  return v;
}

/* The next state of xorshift32 (13, 17, 5); s must not be 0. */
static inline uint32_t td_xs32(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

/* A float in [-1, 1) from xorshift32: the top 24 bits, in steps of 2^-23. */
static inline float td_xs32_float(uint32_t *s) { return (float)(td_xs32(s) >> 8) / 8388608.0f - 1.0f; }

/* An integer in [lo, hi] from xorshift32. */
static inline int td_xs32_range(uint32_t *s, int lo, int hi) {
  return lo + (int)(td_xs32(s) % (uint32_t)(hi - lo + 1));
}

/* The next state of xorshift64 (13, 7, 17); s must not be 0. */
static inline uint64_t td_xs64(uint64_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 7;
  *s ^= *s << 17;
  return *s;
}

/* A double in [0, 1) from xorshift64: the top 53 bits. */
static inline double td_xs64_unit(uint64_t *s) { return (double)(td_xs64(s) >> 11) / 9007199254740992.0; }

/* The next number of splitmix64. */
static inline uint64_t td_splitmix64(uint64_t *s) {
  uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

/* The geometry of a convolution with ns spatial dims (<= NBL_CONV_MAX_SP):
 * N images of C channels, M output channels in `group` groups, input dims
 * in[], kernel k[], strides s[], dilations d[], pads pb[] (begin) and pe[]
 * (end); the output dims and the products computed as ONNX's Conv does
 * (floor division, no auto_pad). */
static inline nbl_conv_geom td_conv_geom(int ns, int64_t N, int64_t C, int64_t M, int64_t group,
                                         const int64_t *in, const int64_t *k, const int64_t *s,
                                         const int64_t *d, const int64_t *pb, const int64_t *pe) {
  nbl_conv_geom g;
  memset(&g, 0, sizeof g);
  g.ns = ns, g.N = N, g.C = C, g.M = M, g.group = group;
  g.in_sz = g.k_sz = g.out_sz = 1;
  for (int i = 0; i < ns; i++) {
    g.in[i] = in[i], g.k[i] = k[i], g.s[i] = s[i], g.d[i] = d[i], g.pb[i] = pb[i], g.pe[i] = pe[i];
    g.out[i] = (in[i] + pb[i] + pe[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1;
    g.in_sz *= in[i], g.k_sz *= k[i], g.out_sz *= g.out[i];
  }
  return g;
}

#endif /* NBL_TEST_DATA_H */
