/* cmd_model.c - being written. */
#include <stdio.h>
#include "commands.h"
int nbl_cmd_info(int argc, char **argv) { (void)argc; fprintf(stderr, "nibble %s: not available in this build yet\n", argv[0]); return 2; }
int nbl_cmd_dump(int argc, char **argv) { (void)argc; fprintf(stderr, "nibble %s: not available in this build yet\n", argv[0]); return 2; }
