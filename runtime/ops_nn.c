/* ops_nn.c - op family 'nn' (see kernel.h for the kernel contract). */
#include "kernel.h"

const nbl_op_def nbl_ops_nn[] = {
    {"", "__none__", 0, 0, 0, 0}, /* placeholder until the first op lands */
};
const size_t nbl_ops_nn_count = 0;
