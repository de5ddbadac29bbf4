/*
 * parser.h - internal API of the ONNX <-> IR parser beyond nibble.h.
 * (nbl_model_load / nbl_model_save live in nibble.h.)
 */
#ifndef NBL_PARSER_H
#define NBL_PARSER_H

#include "../ir/ir.h"

/* Read a file holding one serialized TensorProto (the ONNX test-data .pb
 * format). The tensor header is allocated in arena `a`; its payload is a new
 * buffer (converted to raw little-endian layout whatever field held it).
 * Errors name the file. */
nbl_status nbl_tensor_load_pb(const char *path, nbl_arena *a, nbl_tensor **out);

/* Same from memory; `what` names the source in messages. */
nbl_status nbl_tensor_parse_pb(const void *data, size_t len, const char *what, nbl_arena *a,
                               nbl_tensor **out);

/* Write t as one serialized TensorProto (raw_data form). */
nbl_status nbl_tensor_save_pb(const nbl_tensor *t, const char *path);

#endif
