/*
 * fuzz_tensor_pb.c - fuzz target: the TensorProto (.pb) reader.
 *
 * bytes -> nbl_tensor_parse_pb (the reader behind nbl_tensor_read for .pb
 * files and `nibble test` data sets) -> nbl_rt_from_ir and a copy, as
 * the engine does with an initializer. A tensor that parses must serialize again
 * (nbl_pb_tensor_from_ir, raw_data form) and parse back to the same name,
 * type, shape and bytes.
 */
#include <string.h>

#include "fuzz_common.h"
#include "include/nibble.h"
#include "ir/ir.h"
#include "onnx.pb-c.h"
#include "parser/parser.h"
#include "runtime/core/exec.h"

static int same_tensor(const nbl_tensor *a, const nbl_tensor *b) {
  if (a->dtype != b->dtype || a->rank != b->rank) return 0;
  if (strcmp(a->name ? a->name : "", b->name ? b->name : "") != 0) return 0;
  for (int d = 0; d < a->rank; d++)
    if (a->dims[d] != b->dims[d]) return 0;
  if (a->dtype == NBL_DT_STRING) {
    if (a->n_strings != b->n_strings) return 0;
    for (int64_t i = 0; i < a->n_strings; i++) {
      size_t la = a->string_lens ? a->string_lens[i] : strlen(a->strings[i]);
      size_t lb = b->string_lens ? b->string_lens[i] : strlen(b->strings[i]);
      if (la != lb || (la && memcmp(a->strings[i], b->strings[i], la) != 0)) return 0;
    }
    return 1;
  }
  return a->nbytes == b->nbytes && (!a->nbytes || memcmp(a->data, b->data, a->nbytes) == 0);
}

static void release(nbl_tensor *t) {
  if (t && t->buf) nbl_buffer_unref(t->buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  nbl_arena *a = nbl_arena_new();
  if (!a) return 0;
  nbl_tensor *t = NULL, *t2 = NULL;
  if (nbl_tensor_parse_pb(data, size, "fuzz.pb", a, &t) != NBL_OK) {
    if (t) fuzz_fail("a failed parse returned a tensor");
    if (!nbl_last_error()[0]) fuzz_fail("a failed parse left no message");
    nbl_arena_free(a);
    return 0;
  }
  /* to the runtime, as the engine binds an initializer */
  nbl_rt_tensor view, copy;
  memset(&copy, 0, sizeof copy);
  if (nbl_rt_from_ir(t, &view) == NBL_OK) {
    if (view.owns) {
      copy = view;
    } else if (nbl_rt_copy(&copy, &view) != NBL_OK) {
      memset(&copy, 0, sizeof copy);
    }
    if (copy.dtype != NBL_DT_STRING && copy.nbytes != nbl_dtype_nbytes(copy.dtype, copy.numel))
      fuzz_fail("runtime tensor of %lld elements has %zu bytes", (long long)copy.numel,
                copy.nbytes);
    nbl_rt_tensor_free(&copy);
  }
  /* serialize and parse back */
  Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
  if (nbl_pb_tensor_from_ir(t, a, &tp) != NBL_OK)
    fuzz_fail("a parsed tensor does not serialize: %s", nbl_last_error());
  size_t n = onnx__tensor_proto__get_packed_size(&tp);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) fuzz_fail("out of memory");
  onnx__tensor_proto__pack(&tp, buf);
  if (nbl_tensor_parse_pb(buf, n, "saved.pb", a, &t2) != NBL_OK)
    fuzz_fail("a saved tensor does not parse back: %s", nbl_last_error());
  if (!same_tensor(t, t2)) fuzz_fail("the tensor changed through save and parse");
  free(buf);
  release(t);
  release(t2);
  nbl_arena_free(a);
  return 0;
}
