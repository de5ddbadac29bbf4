/* ops_train.c - op family 'train' (see kernel.h for the kernel contract). */
#include "kernel.h"

const nbl_op_def nbl_ops_train[] = {
    {"", "__none__", 0, 0, 0, 0}, /* placeholder until the first op lands */
};
const size_t nbl_ops_train_count = 0;
