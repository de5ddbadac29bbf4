/*
 * kdebug.h - the fast paths' switches and counters, for tests and benchmarks
 * only (internal: not part of nibble.h).
 *
 * A switch selects between equivalent code paths of a kernel (the outputs
 * are the same either way) so that a test can run both and compare them, or
 * tunes a threshold. The library itself never sets one: the defaults are the
 * production behaviour, and the kernels read them through nbl_kdebug_get.
 * A counter is a process-wide total of kernel runs that took a path, so that
 * a test can check which path ran (compare the values before and after).
 * Both are atomic: they may be read and set from any thread, but a switch
 * should change only while no session runs.
 */
#ifndef NBL_KDEBUG_H
#define NBL_KDEBUG_H

typedef enum nbl_kswitch {
  /* FP32 depthwise layers 16 channels at a time: -1 where it measured faster
   * (small planes, the default), 0 never, 1 whenever AVX-512 runs */
  NBL_KS_F32_DW_BLOCKED,
  /* the same for the fused INT4 depthwise layers */
  NBL_KS_I4_DW_BLOCKED,
  /* fused INT4 3x3 depthwise layers of strides 1 or 2 from their input rows
   * in blocks of output rows: 1 (default), 0 through the plane kernel */
  NBL_KS_I4_DW_ROWS,
  /* a fused INT4 node takes its activations' range from the fused node that
   * wrote them: 1 (default), 0 always scans the activations */
  NBL_KS_I4_RANGE_REUSE,
  /* the least output size (elements) that a fused INT4 convolution hands to
   * its fused depthwise consumer as activation bytes (default 2^20) */
  NBL_KS_I4_CODE_LINK_MIN,
  /* the 4-bit training backward products of 2-D convolutions off the AMX
   * tiles read planes in place (int4_backward_conv.c: dX of any strides by
   * phases over channel-pair planes, dW of unit strides over X's padded
   * planes): 1 (default), 0 through im2col and col2im */
  NBL_KS_I4B_WIDE,
  /* the 4-bit training forward Conv (int4_coded_conv.c) of one group by the
   * direct kernel (code_direct.h, AVX-512 VNNI) where nbl_cd_eligible: 1
   * (default), 0 through im2col panels */
  NBL_KS_I4B_DIRECT,
  /* fused ternary depthwise layers 16 channels at a time: -1 where it
   * measured faster (the FP32 rule), 0 never, 1 whenever AVX-512 runs */
  NBL_KS_T_DW_BLOCKED,
  /* fused ternary 3x3 depthwise layers of strides 1 or 2 in blocks of 4
   * output rows: 1 (default), 0 through nbl_t_dw_rows (a vector a tap) */
  NBL_KS_T_DW_ROWS3,
  /* the least output size (elements) that a fused ternary convolution hands
   * to its fused depthwise consumer as INT8 codes */
  NBL_KS_T_CODE_LINK_MIN,
  /* fused ternary convolutions of one group and strides 1 by the direct
   * kernel (code_direct.h, AVX-512 VNNI): 1 (default), 0 through im2col */
  NBL_KS_T_DIRECT,
  /* fused INT4 convolutions of one group by the direct kernel
   * (code_direct.h, AVX-512 VNNI): 1 (default), 0 through im2col */
  NBL_KS_I4_DIRECT,
  /* the least K (rows of the product: input channels x kernel taps) at
   * which the AVX-512 FP32 convolution product packs each tile's rows into a
   * panel and blocks K (nbl_c11_blocked, c11_tile.h); default
   * NBL_C11_KC + 1 (shorter K fits the L1 cache without it) */
  NBL_KS_F32_KBLOCK_MIN,
  NBL_KS_COUNT_
} nbl_kswitch;

/* The switch's value (its default unless a test set it). */
long long nbl_kdebug_get(nbl_kswitch s);
/* Set a switch; nbl_kdebug_reset() puts every switch back to its default. */
void nbl_kdebug_set(nbl_kswitch s, long long v);
void nbl_kdebug_reset(void);

typedef enum nbl_kcounter {
  NBL_KC_F32_DW_BLOCKED_RUNS, /* FP32 depthwise layers run 16 channels at a time */
  NBL_KC_I4_INTEGER_RUNS,     /* fused INT4 runs that took the integer path (the rest ran
                               * the literal fake-quantize + float composition) */
  NBL_KC_I4_RANGE_REUSES,     /* fused INT4 runs whose activation range came from the node
                               * that wrote the activations (no scan) */
  NBL_KC_I4_RANGE_STOPS,      /* range-only passes (before sending bytes) that stopped early,
                               * the range already spanning the clamp bounds */
  NBL_KC_I4_CODE_LINKS,       /* fused INT4 runs that handed activation bytes to their consumer */
  NBL_KC_I4_DW_BLOCKED_RUNS,  /* fused INT4 depthwise layers run 16 channels at a time */
  NBL_KC_I4_DW_ROWS_RUNS,     /* fused INT4 3x3 depthwise layers run from input rows */
  NBL_KC_I4_RESIDUAL_RUNS,    /* fused INT4 convolutions that added their fused residual in
                               * the epilogue (the others ran the Add kernel after) */
  NBL_KC_T_DW_BLOCKED_RUNS,   /* fused ternary depthwise layers run 16 channels at a time */
  NBL_KC_T_CODE_LINKS,        /* fused ternary runs that handed INT8 codes to their consumer */
  NBL_KC_T_DIRECT_RUNS,       /* fused ternary convolutions run by the direct kernel */
  NBL_KC_I4_DIRECT_RUNS,      /* fused INT4 convolutions run by the direct kernel */
  NBL_KC_I4B_DIRECT_RUNS,     /* 4-bit training forward convolutions run by the direct kernel */
  NBL_KC_F32_KBLOCK_RUNS,     /* AVX-512 FP32 convolution products (calls of a thread) that
                               * blocked K through panels */
  NBL_KC_COUNT_
} nbl_kcounter;

/* A snapshot of every counter: n[c] for counter c. */
typedef struct nbl_kernel_stats {
  long n[NBL_KC_COUNT_];
} nbl_kernel_stats;
void nbl_kernel_stats_get(nbl_kernel_stats *out);

/* Count one run of counter c (kernels). */
void nbl_kcount(nbl_kcounter c);

#endif /* NBL_KDEBUG_H */
