/* ops_misc.c - op family 'misc' (see kernel.h for the kernel contract). */
#include "kernel.h"

const nbl_op_def nbl_ops_misc[] = {
    {"", "__none__", 0, 0, 0, 0}, /* placeholder until the first op lands */
};
const size_t nbl_ops_misc_count = 0;
