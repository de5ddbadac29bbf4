/* nibble - the command-line tool (see README.md for the commands). */
#include <stdio.h>
#include <string.h>

#include "nibble.h"

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "--version") == 0) {
    printf("nibble %s\n", nbl_version());
    return 0;
  }
  fprintf(stderr, "usage: nibble --version\n");
  return 2;
}
