/* gemm.h - FP32 matrix products: OpenBLAS when built with it, own kernels otherwise. */
#ifndef NBL_GEMM_H
#define NBL_GEMM_H
#include <stdint.h>
#endif
