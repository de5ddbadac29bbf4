/*
 * replay_main.c - the regression mode of a fuzz target: a main() that feeds
 * LLVMFuzzerTestOneInput every regular file named on the command line or
 * found (recursively, in name order) in a folder named there. Built with the
 * normal compiler (gcc), run as a meson test, and under ASan/UBSan in the
 * sanitizer build, so the inputs that once crashed a target keep being run.
 * Exits 0 when every input was handled (a finding aborts the process), 2 on a
 * usage or I/O error.
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_common.h"

/* Under UBSan a report stops the replay (as a finding stops libFuzzer);
 * under ASan an allocation over 2 GB is a finding (as libFuzzer's
 * -malloc_limit_mb, which follows -rss_limit_mb=2048). UBSAN_OPTIONS and
 * ASAN_OPTIONS in the environment still win. */
const char *__ubsan_default_options(void);
const char *__ubsan_default_options(void) { return "halt_on_error=1:print_stacktrace=1"; }
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "max_allocation_size_mb=2048"; }

static int n_inputs;

static int replay_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "%s: cannot open\n", path);
    return -1;
  }
  size_t cap = 4096, n = 0;
  uint8_t *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    uint8_t *nb = realloc(buf, cap * 2);
    if (!nb) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = nb;
    cap *= 2;
  }
  int err = ferror(f);
  fclose(f);
  if (!buf || err) {
    free(buf);
    fprintf(stderr, "%s: cannot read\n", path);
    return -1;
  }
  /* an exact-size copy so that ASan sees reads past the input's end */
  uint8_t *exact = malloc(n ? n : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, n);
  free(buf);
  if (getenv("NBL_FUZZ_VERBOSE")) fprintf(stderr, "replay %s (%zu bytes)\n", path, n);
  LLVMFuzzerTestOneInput(exact, n);
  free(exact);
  n_inputs++;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static int replay_path(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) {
    fprintf(stderr, "%s: no such file or folder\n", path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) return S_ISREG(st.st_mode) ? replay_file(path) : 0;
  DIR *d = opendir(path);
  if (!d) {
    fprintf(stderr, "%s: cannot open folder\n", path);
    return -1;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue; /* ".", "..", hidden files (.gitkeep) */
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      char **nn = realloc(names, cap * sizeof *names);
      if (!nn) {
        rc = -1;
        break;
      }
      names = nn;
    }
    size_t len = strlen(path) + strlen(e->d_name) + 2;
    names[n] = malloc(len);
    if (!names[n]) {
      rc = -1;
      break;
    }
    snprintf(names[n], len, "%s/%s", path, e->d_name);
    n++;
  }
  closedir(d);
  if (n) qsort(names, n, sizeof *names, cmp_names);
  for (size_t i = 0; i < n; i++) {
    if (rc == 0 && replay_path(names[i]) != 0) rc = -1;
    free(names[i]);
  }
  free(names);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE-OR-FOLDER...\n  feeds every file to the fuzz target once\n",
            argv[0]);
    return 2;
  }
  int rc = 0;
  for (int i = 1; i < argc; i++)
    if (replay_path(argv[i]) != 0) rc = 2;
  printf("%s: %d inputs replayed\n", argv[0], n_inputs);
  return rc;
}
