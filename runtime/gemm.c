/* gemm.c - being written. */
#include "gemm.h"
