/* amx_peak.c - multiply-add peak of one core: AMX-INT8 TDPBSSD (16 x 64 by 64 x 16
 * bytes into 16 x 16 int32, four independent accumulator tiles, with and without
 * tile loads from L1 each step) against AVX-512 VNNI vpdpbusd (64 byte products
 * per instruction) and vpdpwssd (32 int16 products), twelve independent
 * accumulators each. What decided that the 4-bit training products are worth
 * AMX tiles (runtime/kernels/int4_amx.c) on this machine.
 *
 *   ninja -C BUILD bench/bench_amx_peak && BUILD/bench/bench_amx_peak [seconds per row]
 *
 * Prints GMAC/s (wall time; the machine is shared: run it when quiet, or read
 * the best of several runs). Exits 77 without AMX (CPUID, or Linux refusing
 * the tile state: ARCH_REQ_XCOMP_PERM). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <cpuid.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

typedef struct tilecfg {
  uint8_t palette, start, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
} tilecfg;
static const tilecfg k_cfg __attribute__((aligned(64))) = {
    .palette = 1, .colsb = {64, 64, 64, 64, 64, 64, 64, 64}, .rows = {16, 16, 16, 16, 16, 16, 16, 16}};
static int8_t g_buf[16 * 4096] __attribute__((aligned(64)));
static int32_t g_c[256] __attribute__((aligned(64)));

/* n steps of four TDPBSSD; loads: each step reloads the two A and two B tiles */
__attribute__((target("amx-tile,amx-int8"))) static double amx(long n, int loads) {
  _tile_loadconfig(&k_cfg);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, g_buf, 64);
  _tile_loadd(5, g_buf + 1024, 64);
  _tile_loadd(6, g_buf + 2048, 64);
  _tile_loadd(7, g_buf + 3072, 64);
  const double t = now();
  for (long i = 0; i < n; i++) {
    if (loads) {
      const int8_t *p = g_buf + (i & 7) * 4096;
      _tile_loadd(4, p, 64);
      _tile_loadd(5, p + 1024, 64);
      _tile_loadd(6, p + 2048, 64);
      _tile_loadd(7, p + 3072, 64);
    }
    _tile_dpbssd(0, 4, 6);
    _tile_dpbssd(1, 4, 7);
    _tile_dpbssd(2, 5, 6);
    _tile_dpbssd(3, 5, 7);
  }
  _tile_stored(0, g_c, 64);
  const double dt = now() - t;
  _tile_release();
  return (double)n * 4 * 16 * 16 * 64 / dt * 1e-9;
}

#define VNNI_LOOP(OP)                                                                              \
  __m512i a0 = _mm512_set1_epi32(1), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0, \
          a8 = a0, a9 = a0, a10 = a0, a11 = a0;                                                    \
  const __m512i x = _mm512_set1_epi32(0x01020304), y = _mm512_set1_epi32(0x05060708);            \
  const double t = now();                                                                          \
  for (long i = 0; i < n; i++) {                                                                   \
    a0 = OP(a0, x, y), a1 = OP(a1, x, y), a2 = OP(a2, x, y), a3 = OP(a3, x, y);                    \
    a4 = OP(a4, x, y), a5 = OP(a5, x, y), a6 = OP(a6, x, y), a7 = OP(a7, x, y);                    \
    a8 = OP(a8, x, y), a9 = OP(a9, x, y), a10 = OP(a10, x, y), a11 = OP(a11, x, y);                \
  }                                                                                                \
  const double dt = now() - t;                                                                     \
  __m512i s = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3)), \
                               _mm512_add_epi32(_mm512_add_epi32(a4, a5), _mm512_add_epi32(a6, a7))); \
  s = _mm512_add_epi32(s, _mm512_add_epi32(_mm512_add_epi32(a8, a9), _mm512_add_epi32(a10, a11)));  \
  g_c[0] = _mm512_reduce_add_epi32(s);

__attribute__((target("avx512f,avx512vnni"))) static double vnni_b(long n) {
  VNNI_LOOP(_mm512_dpbusd_epi32)
  return (double)n * 12 * 64 / dt * 1e-9;
}
__attribute__((target("avx512f,avx512vnni"))) static double vnni_w(long n) {
  VNNI_LOOP(_mm512_dpwssd_epi32)
  return (double)n * 12 * 32 / dt * 1e-9;
}

int main(int argc, char **argv) {
  const double secs = argc > 1 ? atof(argv[1]) : 0.5;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || (d & (3u << 24)) != (3u << 24) || !(c & (1u << 11)) ||
      syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
    printf("no AMX-INT8 (or no tile state granted, or no AVX-512 VNNI): nothing to measure\n");
    return 77;
  }
  memset(g_buf, 3, sizeof g_buf);
  /* calibrate each row to about secs seconds */
  struct {
    const char *name;
    double (*fn)(long);
  } rows[] = {{"vpdpbusd (AVX-512 VNNI, u8 x s8)", vnni_b}, {"vpdpwssd (AVX-512 VNNI, s16 x s16)", vnni_w}};
  printf("| instruction | GMAC/s, best of 3 |\n|---|---:|\n");
  for (int r = 0; r < 2; r++) {
    long n = 1 << 16;
    double best = 0, t0 = now();
    rows[r].fn(n);
    n = (long)((double)n * secs / (now() - t0 + 1e-9));
    for (int k = 0; k < 3; k++) {
      double v = rows[r].fn(n);
      best = v > best ? v : best;
    }
    printf("| %s | %.1f |\n", rows[r].name, best);
  }
  for (int loads = 0; loads < 2; loads++) {
    long n = 1 << 12;
    double best = 0, t0 = now();
    amx(n, loads);
    n = (long)((double)n * secs / (now() - t0 + 1e-9));
    for (int k = 0; k < 3; k++) {
      double v = amx(n, loads);
      best = v > best ? v : best;
    }
    printf("| TDPBSSD (AMX-INT8, s8 x s8)%s | %.1f |\n", loads ? ", 4 tile loads per 4 products" : "", best);
  }
  return 0;
}
