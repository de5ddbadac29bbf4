/* runtime/tensor_io.c - being written; see the header for the contract. */
typedef int nbl_placeholder_tensor_io;
