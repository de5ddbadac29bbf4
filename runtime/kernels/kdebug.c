/* kdebug.c - the fast paths' switches and counters; see kdebug.h. */
#include "runtime/kernels/kdebug.h"

#include <stdatomic.h>

static const long long k_defaults[NBL_KS_COUNT_] = {
    [NBL_KS_F32_DW_BLOCKED] = -1,
    [NBL_KS_I4_DW_BLOCKED] = -1,
    [NBL_KS_I4_DW_ROWS] = 1,
    [NBL_KS_T_DW_BLOCKED] = -1,
    [NBL_KS_T_DW_ROWS3] = 1,
    [NBL_KS_T_CODE_LINK_MIN] = 1 << 20,
    [NBL_KS_T_DIRECT] = 1,
    [NBL_KS_I4_DIRECT] = 1,
    [NBL_KS_F32_KBLOCK_MIN] = 129, /* NBL_C11_KC + 1 */
    [NBL_KS_I4_RANGE_REUSE] = 1,
    /* measured on MobileNetV2: handing bytes pays only where the floats
     * would go out to memory (its 96 x 112 x 112 expansion, 4.8 MB) */
    [NBL_KS_I4_CODE_LINK_MIN] = 1 << 20,
    [NBL_KS_I4B_WIDE] = 1,
    [NBL_KS_I4B_DIRECT] = 1,
};

/* value - default, so that the zero-initialized state is the default */
static _Atomic long long g_delta[NBL_KS_COUNT_];
static _Atomic long g_count[NBL_KC_COUNT_];

long long nbl_kdebug_get(nbl_kswitch s) {
  if ((unsigned)s >= NBL_KS_COUNT_) return 0;
  return k_defaults[s] + atomic_load_explicit(&g_delta[s], memory_order_relaxed);
}

void nbl_kdebug_set(nbl_kswitch s, long long v) {
  if ((unsigned)s < NBL_KS_COUNT_) atomic_store(&g_delta[s], v - k_defaults[s]);
}

void nbl_kdebug_reset(void) {
  for (int s = 0; s < NBL_KS_COUNT_; s++) atomic_store(&g_delta[s], 0);
}

void nbl_kcount(nbl_kcounter c) {
  if ((unsigned)c < NBL_KC_COUNT_) atomic_fetch_add_explicit(&g_count[c], 1, memory_order_relaxed);
}

void nbl_kernel_stats_get(nbl_kernel_stats *out) {
  for (int c = 0; c < NBL_KC_COUNT_; c++) out->n[c] = atomic_load(&g_count[c]);
}
