/* runtime/ops/grad_int4.h - what the 'grad_int4' family (runtime/ops/grad_int4.c:
 * ai.nibble Int4LogConvGrad, Int4LogGemm) tells tests and benchmarks. */
#ifndef NBL_OPS_GRAD_INT4_H
#define NBL_OPS_GRAD_INT4_H

/* Process-wide counts of fast-kernel runs of the family's ops that took the
 * integer path, and of those that ran the float counterpart instead (an
 * operand off its grid). */
long nbl_i4b_integer_runs(void);
long nbl_i4b_float_runs(void);

#endif
