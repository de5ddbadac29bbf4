/*
 * order.c - the order of the samples in an epoch (nbl_data_order of nibble.h).
 *
 * A Fisher-Yates shuffle whose random numbers come from a counter-based
 * generator: draw i of epoch e is a hash (three splitmix64 finalizer rounds)
 * of (seed, e, i), so the permutation depends on nothing but (seed, epoch, n)
 * and a resumed run recomputes the order of its epoch exactly, without any
 * generator state to save.
 */
#include "nibble.h"
#include "runtime/core/kernel.h"

void nbl_data_order(uint64_t seed, int64_t epoch, int64_t n, int64_t *perm) {
  if (!perm || n <= 0) return;
  for (int64_t i = 0; i < n; i++) perm[i] = i;
  uint64_t key = nbl_splitmix64(nbl_splitmix64(seed) ^ (uint64_t)epoch);
  for (int64_t i = n - 1; i > 0; i--) {
    uint64_t r = nbl_splitmix64(key ^ nbl_splitmix64((uint64_t)i));
    /* j uniform in [0, i]: the high half of r * (i + 1) (bias below 2^-40 for any n < 2^24) */
    int64_t j = (int64_t)(((unsigned __int128)r * (uint64_t)(i + 1)) >> 64);
    int64_t t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
}
