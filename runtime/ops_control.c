/* ops_control.c - op family 'control' (see kernel.h for the kernel contract). */
#include "kernel.h"

const nbl_op_def nbl_ops_control[] = {
    {"", "__none__", 0, 0, 0, 0}, /* placeholder until the first op lands */
};
const size_t nbl_ops_control_count = 0;
