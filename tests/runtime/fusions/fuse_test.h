/* fuse_test.h - what the fusion tests share: the text of a session's
 * profile, where each step that ran shows under its op (fused or not);
 * float inputs mixed with every special value; Mul's float result and NaN
 * rule; a session's outputs over two runs (the second from the planned
 * arena, checked the same); the comparison of a pattern run fused and
 * unfused at every instruction-set cap and 1 and 2 threads; and the checks
 * of a fused node's elementwise kernel at every variant the CPU runs.
 * Header-only (static inline; Check's assertions on failure). */
#ifndef NBL_FUSE_TEST_H
#define NBL_FUSE_TEST_H

#include <check.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nibble.h"
#include "runtime/core/cpu.h"
#include "test_data.h"
#include "ck_elem.h"

/* nbl_session_print_profile(s, ..., 0) as a string (malloc'ed). */
static inline char *ft_profile(const nbl_session *s) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert(nbl_session_print_profile(s, f, 0) == NBL_OK);
  fclose(f);
  return text;
}

static inline float ft_bits(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

/* n floats from *rng: one in eight of the special bit patterns (+-0, +-Inf,
 * NaNs of both signs and other payloads, signalling NaNs, denormals,
 * FLT_MIN, FLT_MAX), one in eight of vals (the kernel's own thresholds), one
 * any bits, one of any magnitude, the rest uniform in [-span/2, span/2). */
static inline void ft_fill(uint32_t *rng, float *x, int64_t n, const float *vals, int nv, float span) {
  static const uint32_t special[] = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, /* +-0, +-Inf */
      0x7fc00000u, 0xffc00000u, 0x7fc12345u, 0xffd54321u, /* quiet NaNs, signs and payloads */
      0x7f800001u, 0xff800001u, 0x7fa00000u,              /* signalling NaNs */
      0x00000001u, 0x80000001u, 0x007fffffu, 0x807fffffu, /* denormals */
      0x00800000u, 0x80800000u, 0x7f7fffffu, 0xff7fffffu, /* FLT_MIN, FLT_MAX */
  };
  const int nb = (int)(sizeof special / sizeof *special);
  for (int64_t i = 0; i < n; i++) {
    uint32_t r = td_lcg(rng);
    switch (r % 8) {
    case 0: x[i] = ft_bits(special[(r >> 8) % (unsigned)nb]); break;
    case 1: x[i] = vals[(r >> 8) % (unsigned)nv]; break;
    case 2: x[i] = ft_bits(td_lcg(rng)); break;                                   /* any bits */
    case 3: x[i] = ldexpf(td_lcg_float(rng), (int)((r >> 8) % 250) - 150); break; /* tiny..huge */
    default: x[i] = (td_lcg_float(rng) - 0.5f) * span; break;
    }
  }
}

/* Mul(a, b) as its kernel computes it: the float product; a NaN first
 * operand gives that operand, quieted. */
static inline float ft_mul(float a, float b) {
  if (a != a) {
    uint32_t u;
    memcpy(&u, &a, sizeof u);
    return ft_bits(u | 0x400000u);
  }
  volatile float r = a * b;
  return r;
}

/* Runs s twice on the feeds: the outputs of the first run, one after the
 * other (malloc'ed, their size in *nbytes; the second run, from the planned
 * arena, must give the same bytes); *rank0 = output 0's rank. */
static inline unsigned char *ft_outputs(nbl_session *s, int nf, const nbl_host_tensor *feeds, const char *what,
                                        size_t *nbytes, int *rank0) {
  unsigned char *out = NULL;
  size_t total = 0;
  for (int r = 0; r < 2; r++) {
    const nbl_host_tensor *res = NULL;
    ck_assert_msg(nbl_session_run(s, nf, feeds, &res) == NBL_OK, "%s: %s", what, nbl_last_error());
    int no = nbl_session_output_count(s);
    size_t at = 0;
    for (int k = 0; k < no; k++) {
      if (r == 0) {
        if (k == 0) *rank0 = res[k].rank;
        out = realloc(out, total + res[k].nbytes);
        ck_assert_ptr_nonnull(out);
        memcpy(out + total, res[k].data, res[k].nbytes);
        total += res[k].nbytes;
      } else {
        ck_assert_msg(!memcmp(out + at, res[k].data, res[k].nbytes), "%s: second run differs", what);
        at += res[k].nbytes;
      }
    }
  }
  *nbytes = total;
  return out;
}

/* A test's pattern built and run (fused: the default fusions, else
 * NBL_NO_FUSION=all) on x (and y, a second input where the case has one):
 * its outputs as ft_outputs gives them, *fused_ran whether the fused step
 * ran. */
typedef unsigned char *(*ft_run_fn)(const void *c, const float *x, const float *y, int threads, nbl_isa isa,
                                    int fused, int *fused_ran, size_t *nbytes);

/* Case c run fused and unfused at every cap (scalar, AVX2, the CPU's) and
 * 1 and 2 threads: the fused step runs exactly when `fuse`, never unfused,
 * and every output byte is the unfused one (x's n floats named in the
 * message of the first element that differs). */
static inline void ft_fused_as_unfused(const void *c, const char *what, int fuse, ft_run_fn run, const float *x,
                                       const float *y, int64_t n) {
  static const nbl_isa caps[] = {NBL_ISA_SCALAR, NBL_ISA_AVX2, NBL_ISA_DEFAULT};
  for (size_t ci = 0; ci < sizeof caps / sizeof *caps; ci++)
    for (int threads = 1; threads <= 2; threads++) {
      int fu = -1, un = -1;
      size_t nbf = 0, nbu = 0;
      unsigned char *of = run(c, x, y, threads, caps[ci], 1, &fu, &nbf);
      unsigned char *ou = run(c, x, y, threads, caps[ci], 0, &un, &nbu);
      ck_assert_msg(fu == fuse, "%s: fused %d, expected %d", what, fu, fuse);
      ck_assert_int_eq(un, 0);
      ck_assert_uint_eq(nbf, nbu);
      if (memcmp(of, ou, nbf)) {
        size_t i = 0;
        while (i < nbf && of[i] == ou[i]) i++;
        size_t e = i / 4;
        float a, b;
        memcpy(&a, of + 4 * e, 4);
        memcpy(&b, ou + 4 * e, 4);
        ck_abort_msg("%s (cap %d, %d threads): element %zu (x = %a) differs from unfused: %a, want %a", what,
                     (int)caps[ci], threads, e, e < (size_t)n ? (double)x[e] : 0.0, (double)a, (double)b);
      }
      free(of);
      free(ou);
    }
}

/* The vector kernels' variants: cap k (< FT_CAPS) of scalar, AVX2 + FMA and
 * AVX-512 into *cap, 1 when this CPU runs it. */
#define FT_CAPS 3
static inline int ft_cap(int k, nbl_isa *cap) {
  static const struct {
    nbl_isa cap;
    unsigned need;
  } vs[FT_CAPS] = {{NBL_ISA_SCALAR, 0},
                   {NBL_ISA_AVX2, NBL_CPU_AVX2 | NBL_CPU_FMA},
                   {NBL_ISA_AVX512, NBL_CPU_AVX512F | NBL_CPU_AVX512DQ | NBL_CPU_AVX512VL | NBL_CPU_AVX512BW}};
  *cap = vs[k].cap;
  return (nbl_cpu_features() & vs[k].need) == vs[k].need;
}

/* An elementwise kernel under test, y[0..n) from x[0..n), and the float it
 * must give for element i of the test's input. */
typedef nbl_status (*ft_kernel_fn)(const void *ctx, const float *x, float *y, int64_t n);
typedef float (*ft_want_fn)(const void *ctx, int64_t i);

/* run on the n floats x against want, bit for bit: the whole array; every
 * length 0..19 from element 3 on (nothing written past the end: the 8
 * floats after it keep a guard pattern); and in place. y: n + 8 floats. */
static inline void ft_check_kernel(const char *what, const void *ctx, ft_kernel_fn run, ft_want_fn want,
                                   const float *x, float *y, int64_t n) {
  const uint32_t guard = 0x7fa5a5a5u;
  ck_assert_int_eq(run(ctx, x, y, n), NBL_OK);
  for (int64_t i = 0; i < n; i++) {
    float w = want(ctx, i);
    ck_elem_msg(!memcmp(&w, &y[i], 4), "%s: x = %a: %a, want %a", what, (double)x[i], (double)y[i], (double)w);
  }
  for (int len = 0; len <= 19; len++) { /* tails */
    for (int i = 0; i < len + 8; i++) memcpy(&y[i], &guard, 4);
    ck_assert_int_eq(run(ctx, x + 3, y, len), NBL_OK);
    for (int i = 0; i < len + 8; i++) {
      float w = i >= len ? ft_bits(guard) : want(ctx, 3 + i);
      ck_assert_msg(!memcmp(&w, &y[i], 4), "%s, len %d: element %d", what, len, i);
    }
  }
  memcpy(y, x, sizeof(float) * (size_t)n); /* in place */
  ck_assert_int_eq(run(ctx, y, y, n), NBL_OK);
  for (int64_t i = 0; i < n; i++) {
    float w = want(ctx, i);
    ck_elem_msg(!memcmp(&w, &y[i], 4), "%s, in place: x = %a", what, (double)x[i]);
  }
}

#endif
