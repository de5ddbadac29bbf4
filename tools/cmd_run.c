/* cmd_run.c - being written. */
#include <stdio.h>
#include "commands.h"
int nbl_cmd_run(int argc, char **argv) { (void)argc; fprintf(stderr, "nibble %s: not available in this build yet\n", argv[0]); return 2; }
int nbl_cmd_test(int argc, char **argv) { (void)argc; fprintf(stderr, "nibble %s: not available in this build yet\n", argv[0]); return 2; }
