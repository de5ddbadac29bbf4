/*
 * fuzz_npy.c - fuzz target: the NumPy .npy reader.
 *
 * bytes -> nbl_npy_parse (the reader behind nbl_tensor_read for .npy files).
 * An array that parses must write back (nbl_npy_write, to a temporary file)
 * and read back through nbl_rt_read_file with the same type, shape and bytes.
 */
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "runtime/core/exec.h"

static const char *tmp_path(void) {
  static char path[64];
  if (!path[0]) {
    snprintf(path, sizeof path, "/tmp/nbl-fuzz-npy-%ld.npy", (long)getpid());
  }
  return path;
}

static void cleanup(void) { unlink(tmp_path()); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int registered;
  if (!registered) {
    registered = 1;
    atexit(cleanup);
  }
  nbl_rt_tensor t, back;
  if (nbl_npy_parse(data, size, "fuzz.npy", &t) != NBL_OK) {
    if (t.data) fuzz_fail("a failed parse returned data");
    if (!nbl_last_error()[0]) fuzz_fail("a failed parse left no message");
    return 0;
  }
  if (t.nbytes != nbl_dtype_nbytes(t.dtype, t.numel))
    fuzz_fail("array of %lld elements has %zu bytes", (long long)t.numel, t.nbytes);
  if (nbl_npy_write(tmp_path(), &t) != NBL_OK)
    fuzz_fail("a parsed array does not write: %s", nbl_last_error());
  if (nbl_rt_read_file(tmp_path(), &back, NULL) != NBL_OK)
    fuzz_fail("a written array does not read back: %s", nbl_last_error());
  if (back.dtype != t.dtype || back.rank != t.rank || back.nbytes != t.nbytes ||
      memcmp(back.dims, t.dims, sizeof t.dims[0] * (size_t)t.rank) != 0 ||
      (t.nbytes && memcmp(back.data, t.data, t.nbytes) != 0))
    fuzz_fail("the array changed through write and read");
  nbl_rt_tensor_free(&back);
  nbl_rt_tensor_free(&t);
  return 0;
}
