/*
 * fuzz_common.h - shared by the fuzz targets (tests/fuzz/README.md).
 *
 * Each target defines LLVMFuzzerTestOneInput. Built with clang
 * -fsanitize=fuzzer it is a libFuzzer binary; built with replay_main.c it is a
 * plain program that feeds it every file of the folders it is given (the
 * regression replay run as a meson test in every build).
 *
 * A target must never abort on input the library rejects: only a crash, a
 * sanitizer report, a leak or a broken invariant checked here (fuzz_fail) is
 * a finding.
 */
#ifndef NBL_FUZZ_COMMON_H
#define NBL_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A broken invariant (not a rejected input): report and abort so that
 * libFuzzer records the input as a crash. */
#define fuzz_fail(...)                          \
  do {                                          \
    fprintf(stderr, "fuzz invariant: ");        \
    fprintf(stderr, __VA_ARGS__);               \
    fprintf(stderr, "\n");                      \
    abort();                                    \
  } while (0)

/* A FILE that discards what is written to it (printers write there), opened
 * once per process. */
static inline FILE *fuzz_null_file(void) {
  static FILE *f;
  if (!f) f = fopen("/dev/null", "w");
  if (!f) fuzz_fail("cannot open /dev/null");
  return f;
}

/* Where the targets that go through files put them: /dev/shm (tmpfs: the
 * fsync of atomic writes and ext4's flush on truncate cost nothing there),
 * else /tmp. */
static inline const char *fuzz_tmp_dir(void) {
  return access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
}

#endif
