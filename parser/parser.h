/*
 * parser.h - internal API of the ONNX <-> IR parser beyond nibble.h.
 * (nbl_model_load / nbl_model_save live in nibble.h.)
 */
#ifndef NBL_PARSER_H
#define NBL_PARSER_H

#include "ir/ir.h"
#include "nibble.h"

/* One serialized TensorProto (the ONNX test-data .pb format) from memory.
 * The tensor header is allocated in arena `a`; its payload is a new buffer
 * (converted to raw little-endian layout whatever field held it), which the
 * caller releases with nbl_buffer_unref(t->buf). `what` names the source in
 * messages. Files: nbl_tensor_load_file. */
nbl_status nbl_tensor_parse_pb(const void *data, size_t len, const char *what, nbl_arena *a,
                               nbl_tensor **out);

/* Write t as one serialized TensorProto (raw_data form). */
nbl_status nbl_tensor_save_pb(const nbl_tensor *t, const char *path);

/* t as one serialized TensorProto (raw_data form) in a malloc'd buffer
 * *data of *len bytes (the caller frees it). `what` starts messages. */
nbl_status nbl_tensor_pack_pb(const nbl_tensor *t, const char *what, uint8_t **data,
                              size_t *len);

/* Write n bytes to a new file `path` (replacing it); errors name the path. */
nbl_status nbl_bytes_save(const void *data, size_t n, const char *path);

/* A NumPy .npy file (v1-v3, little-endian, C order, numbers and bool) from
 * memory: the header in arena `a`, the data copied into a new buffer, name
 * "". `what` names the source in messages (parser/tensor_file.c). */
nbl_status nbl_tensor_parse_npy(const void *data, size_t len, const char *what, nbl_arena *a,
                                nbl_tensor **out);

/* Write t as a .npy file (version 1, header padded to 64 bytes as NumPy
 * does); STRING, INT4 and other types NumPy lacks are NBL_ERR_UNSUPPORTED. */
nbl_status nbl_tensor_save_npy(const nbl_tensor *t, const char *path);

/* A serialized SequenceProto (kind NBL_VALUE_SEQUENCE) or OptionalProto
 * (NBL_VALUE_OPTIONAL) from memory into *out, as nbl_value_read reads a
 * file (malloc'd items, nbl_host_tensor_free). `what` starts messages. */
nbl_status nbl_value_parse(const void *data, size_t len, nbl_value_kind kind, const char *what,
                           nbl_host_tensor *out);

/* Sequence or optional h serialized as nbl_tensor_write writes it, into a
 * malloc'd buffer *data of *len bytes (the caller frees it). */
nbl_status nbl_value_pack(const nbl_host_tensor *h, const char *what, uint8_t **data, size_t *len);

/* Read a tensor file (a regular file or a pipe): .npy when it starts with
 * the NumPy magic, otherwise a serialized TensorProto. Same ownership as
 * nbl_tensor_parse_pb; errors name the file. */
nbl_status nbl_tensor_load_file(const char *path, nbl_arena *a, nbl_tensor **out);

/* ---- shared between load.c, save.c and tensor_pb.c (protobuf types) ---- */

struct Onnx__TensorProto;
/* Where external data is looked up while loading; NULL when none is allowed. */
typedef struct nbl_ext_ctx nbl_ext_ctx;

/* True if the external-data location `loc` is absolute or has a ".." path
 * component: it would name a file outside the model's folder (load.c
 * refuses to read it, save.c to write it). */
bool nbl_ext_location_escapes(const char *loc);

/* Convert an unpacked TensorProto into an IR tensor in arena `a`. Payloads
 * held in raw_data or a typed field of the right layout are taken over (the
 * field is cleared, so free_unpacked does not free it); others are converted
 * into a new buffer. External data is mapped through `ext` (NULL: an error).
 * `label` (the file) starts every message. */
nbl_status nbl_pb_tensor_to_ir(struct Onnx__TensorProto *tp, nbl_ext_ctx *ext, nbl_arena *a,
                               const char *label, nbl_tensor **out);

/* Fill a TensorProto (initialized by the caller) from t: dims, type, name,
 * doc string and either raw_data pointing at t->data (not copied) or
 * string_data pointing at t->strings. Arrays come from arena `a`. */
nbl_status nbl_pb_tensor_from_ir(const nbl_tensor *t, nbl_arena *a, struct Onnx__TensorProto *tp);

#endif
