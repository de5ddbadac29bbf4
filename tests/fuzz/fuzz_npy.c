/*
 * fuzz_npy.c - fuzz target: the NumPy .npy reader.
 *
 * bytes -> nbl_tensor_parse_npy (the reader behind nbl_tensor_read for .npy
 * files). An array that parses must write back (nbl_tensor_write, to a
 * temporary .npy file) and read back through nbl_tensor_read with the same
 * type, shape and bytes.
 */
#include <string.h>
#include <unistd.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "parser/parser.h"

static const char *tmp_path(void) {
  static char path[64];
  if (!path[0]) {
    snprintf(path, sizeof path, "%s/nbl-fuzz-npy-%ld.npy", fuzz_tmp_dir(), (long)getpid());
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
  nbl_arena *a = nbl_arena_new();
  if (!a) fuzz_fail("out of memory");
  nbl_tensor *t = NULL;
  if (nbl_tensor_parse_npy(data, size, "fuzz.npy", a, &t) != NBL_OK) {
    if (t) fuzz_fail("a failed parse returned a tensor");
    if (!nbl_last_error()[0]) fuzz_fail("a failed parse left no message");
    nbl_arena_free(a);
    return 0;
  }
  int64_t numel = nbl_shape_numel(t->rank, t->dims);
  if (t->nbytes != nbl_dtype_nbytes(t->dtype, numel))
    fuzz_fail("array of %lld elements has %zu bytes", (long long)numel, t->nbytes);
  nbl_host_tensor h = {.dtype = t->dtype, .rank = t->rank, .data = (void *)t->data,
                       .nbytes = t->nbytes};
  for (int i = 0; i < t->rank; i++) h.dims[i] = t->dims[i];
  if (nbl_tensor_write(tmp_path(), &h) != NBL_OK)
    fuzz_fail("a parsed array does not write: %s", nbl_last_error());
  nbl_host_tensor back;
  if (nbl_tensor_read(tmp_path(), &back) != NBL_OK)
    fuzz_fail("a written array does not read back: %s", nbl_last_error());
  if (back.dtype != h.dtype || back.rank != h.rank || back.nbytes != h.nbytes ||
      memcmp(back.dims, h.dims, sizeof h.dims[0] * (size_t)h.rank) != 0 ||
      (h.nbytes && memcmp(back.data, h.data, h.nbytes) != 0))
    fuzz_fail("the array changed through write and read");
  nbl_host_tensor_free(&back);
  nbl_buffer_unref(t->buf); /* the arena holds the header, the buffer is refcounted */
  nbl_arena_free(a);
  return 0;
}
