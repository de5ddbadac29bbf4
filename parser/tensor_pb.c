/*
 * tensor_pb.c - single TensorProto files (.pb, the ONNX test-data format)
 * <-> nbl_tensor.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "onnx.pb-c.h"
#include "parser.h"

nbl_status nbl_tensor_parse_pb(const void *data, size_t len, const char *what, nbl_arena *a,
                               nbl_tensor **out) {
  if (!a || !out || (!data && len))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_parse_pb: NULL argument");
  if (!what) what = "<tensor>";
  *out = NULL;
  /* an empty message is a valid TensorProto (a scalar of undefined type): rejected below */
  Onnx__TensorProto *tp = onnx__tensor_proto__unpack(NULL, len, data);
  if (!tp)
    return nbl_errorf(NBL_ERR_PARSE, "%s: not a valid TensorProto (protobuf parse failed)", what);
  nbl_status st = nbl_pb_tensor_to_ir(tp, NULL, a, what, out);
  onnx__tensor_proto__free_unpacked(tp, NULL);
  return st;
}

nbl_status nbl_tensor_pack_pb(const nbl_tensor *t, const char *what, uint8_t **data,
                              size_t *len) {
  if (!t || !data || !len)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_pack_pb: NULL argument");
  if (!what) what = "<tensor>";
  *data = NULL;
  *len = 0;
  nbl_arena *a = nbl_arena_new();
  if (!a) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  Onnx__TensorProto tp = ONNX__TENSOR_PROTO__INIT;
  nbl_status st = nbl_pb_tensor_from_ir(t, a, &tp);
  if (st) {
    nbl_arena_free(a);
    nbl_error_prefix("%s", what);
    return st;
  }
  size_t n = onnx__tensor_proto__get_packed_size(&tp);
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    nbl_arena_free(a);
    return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", what);
  }
  onnx__tensor_proto__pack(&tp, buf);
  nbl_arena_free(a);
  *data = buf;
  *len = n;
  return NBL_OK;
}

nbl_status nbl_bytes_save(const void *data, size_t n, const char *path) {
  FILE *f = fopen(path, "wb");
  if (!f) return nbl_errorf(NBL_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
  size_t w = n ? fwrite(data, 1, n, f) : 0;
  int cerr = fclose(f);
  if (w != n || cerr != 0) return nbl_errorf(NBL_ERR_IO, "%s: write failed", path);
  return NBL_OK;
}

nbl_status nbl_tensor_save_pb(const nbl_tensor *t, const char *path) {
  if (!t || !path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_tensor_save_pb: NULL argument");
  uint8_t *buf = NULL;
  size_t n = 0;
  nbl_status st = nbl_tensor_pack_pb(t, path, &buf, &n);
  if (st != NBL_OK) return st;
  st = nbl_bytes_save(buf, n, path);
  free(buf);
  return st;
}
