/* parser/load.c - being written; see the header for the contract. */
typedef int nbl_placeholder_load;
