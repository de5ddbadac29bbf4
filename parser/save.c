/*
 * save.c - IR -> ONNX protobuf.
 *
 * The ModelProto is built with pointers into the IR (tensor payloads are not
 * copied) and packed straight into the output file through a ProtobufCBuffer.
 * Files are written to a temporary name and renamed into place, so saving
 * over a model whose external data is still mapped is safe.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "nibble.h" /* implements nbl_model_save(_buffer) of the public API */
#include "onnx.pb-c.h"
#include "name_set.h"
#include "parser.h"

nbl_status nbl_pb_tensor_from_ir(const nbl_tensor *t, nbl_arena *a, Onnx__TensorProto *tp) {
  onnx__tensor_proto__init(tp);
  tp->n_dims = (size_t)(t->rank > 0 ? t->rank : 0);
  tp->dims = (int64_t *)t->dims;
  tp->has_data_type = 1;
  tp->data_type = (int32_t)t->dtype;
  tp->name = (t->name && *t->name) ? t->name : NULL;
  tp->doc_string = t->doc_string;
  if (t->dtype == NBL_DT_STRING) {
    if (t->n_strings > 0) {
      tp->string_data = nbl_arena_alloc(a, sizeof(ProtobufCBinaryData) * (size_t)t->n_strings);
      if (!tp->string_data) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
      for (int64_t i = 0; i < t->n_strings; i++) {
        tp->string_data[i].data = (uint8_t *)t->strings[i];
        tp->string_data[i].len = t->string_lens ? t->string_lens[i] : strlen(t->strings[i]);
      }
      tp->n_string_data = (size_t)t->n_strings;
    }
    return NBL_OK;
  }
  int64_t n = nbl_tensor_numel(t);
  if (n < 0)
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': shape overflows", t->name ? t->name : "");
  size_t need = nbl_dtype_nbytes(t->dtype, n);
  if (need != t->nbytes || (need && !t->data))
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "tensor '%s': holds %zu bytes, shape of %s needs %zu",
                      t->name ? t->name : "", t->nbytes, nbl_dtype_name(t->dtype), need);
  tp->has_raw_data = 1;
  tp->raw_data.data = (uint8_t *)t->data;
  tp->raw_data.len = t->nbytes;
  return NBL_OK;
}

/* ------------------------------------------------------------------ context */

typedef struct ext_out {
  struct ext_out *next;
  char *location;
  char *tmp, *final;
  FILE *f;
  uint64_t offset;
} ext_out;

typedef struct save_ctx {
  const nbl_model *m;
  nbl_arena *a;
  const char *label;
  nbl_external_mode mode;
  const char *location;
  size_t threshold;
  const char *out_dir; /* NULL: everything inline */
  ext_out *files;
  ProtobufCMessage **msgs; /* unpacked blobs to free */
  int n_msgs, cap_msgs;
} save_ctx;

static nbl_status oom(save_ctx *c) {
  return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "%s: out of memory", c->label);
}

static void *alloc_arr(save_ctx *c, size_t n, size_t sz) {
  return nbl_arena_alloc(c->a, (n ? n : 1) * sz);
}

static bool keep_msg(save_ctx *c, ProtobufCMessage *msg) {
  if (c->n_msgs == c->cap_msgs) {
    int cap = c->cap_msgs ? 2 * c->cap_msgs : 16;
    ProtobufCMessage **p = realloc(c->msgs, sizeof(*p) * (size_t)cap);
    if (!p) return false;
    c->msgs = p;
    c->cap_msgs = cap;
  }
  c->msgs[c->n_msgs++] = msg;
  return true;
}

static nbl_status unpack_blob(save_ctx *c, const ProtobufCMessageDescriptor *d, const nbl_blob *b,
                              const char *what, void **out) {
  ProtobufCMessage *msg = protobuf_c_message_unpack(d, NULL, b->len, b->data);
  if (!msg)
    return nbl_errorf(NBL_ERR_INTERNAL, "%s: kept %s does not unpack", c->label, what);
  if (!keep_msg(c, msg)) {
    protobuf_c_message_free_unpacked(msg, NULL);
    return oom(c);
  }
  *out = msg;
  return NBL_OK;
}

static nbl_status ext_file(save_ctx *c, const char *loc, ext_out **out) {
  for (ext_out *e = c->files; e; e = e->next)
    if (strcmp(e->location, loc) == 0) {
      *out = e;
      return NBL_OK;
    }
  if (!loc || !*loc || nbl_ext_location_escapes(loc))
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT,
                      "%s: external data location '%s' escapes the model folder", c->label, loc);
  ext_out *e = calloc(1, sizeof *e);
  if (!e) return oom(c);
  e->next = c->files;
  c->files = e;
  size_t dl = strlen(c->out_dir), ll = strlen(loc);
  e->location = strdup(loc);
  e->final = malloc(dl + ll + 2);
  e->tmp = malloc(dl + ll + 40);
  if (!e->location || !e->final || !e->tmp) return oom(c);
  snprintf(e->final, dl + ll + 2, "%s/%s", c->out_dir, loc);
  snprintf(e->tmp, dl + ll + 40, "%s.nbl-tmp-%ld", e->final, (long)getpid());
  e->f = fopen(e->tmp, "wb");
  if (!e->f)
    return nbl_errorf(NBL_ERR_IO, "%s: cannot create external data file '%s': %s", c->label,
                      e->final, strerror(errno));
  *out = e;
  return NBL_OK;
}

static void ext_files_close(save_ctx *c, bool commit, nbl_status *st) {
  ext_out *e = c->files;
  while (e) {
    ext_out *n = e->next;
    if (e->f) {
      if (fclose(e->f) != 0 && commit && !*st)
        *st = nbl_errorf(NBL_ERR_IO, "%s: write failed", e->final);
    }
    if (e->tmp) {
      if (commit && !*st && e->f) {
        if (rename(e->tmp, e->final) != 0)
          *st = nbl_errorf(NBL_ERR_IO, "%s: cannot rename into place: %s", e->final, strerror(errno));
      }
      if (!commit || *st) unlink(e->tmp);
    }
    free(e->location);
    free(e->tmp);
    free(e->final);
    free(e);
    e = n;
  }
  c->files = NULL;
}

static nbl_status tensor_to_pb(save_ctx *c, const nbl_tensor *t, const char *name,
                               Onnx__TensorProto **out) {
  Onnx__TensorProto *tp = nbl_arena_alloc(c->a, sizeof *tp);
  if (!tp) return oom(c);
  nbl_status st = nbl_pb_tensor_from_ir(t, c->a, tp);
  if (st) {
    nbl_error_prefix("%s", c->label);
    return st;
  }
  if (name) tp->name = (char *)name;
  *out = tp;
  if (!c->out_dir || t->dtype == NBL_DT_STRING || c->mode == NBL_EXTERNAL_NONE) return NBL_OK;
  const char *loc = NULL;
  if (c->mode == NBL_EXTERNAL_KEEP && t->ext_location)
    loc = t->ext_location;
  else if (c->mode == NBL_EXTERNAL_ALL && t->nbytes >= c->threshold)
    loc = c->location;
  if (!loc) return NBL_OK;
  ext_out *e = NULL;
  st = ext_file(c, loc, &e);
  if (st) return st;
  /* align every tensor to 64 bytes */
  static const unsigned char zeros[64];
  size_t pad = (size_t)((64 - e->offset % 64) % 64);
  if (pad && fwrite(zeros, 1, pad, e->f) != pad)
    return nbl_errorf(NBL_ERR_IO, "%s: write failed: %s", e->final, strerror(errno));
  e->offset += pad;
  if (t->nbytes && fwrite(t->data, 1, t->nbytes, e->f) != t->nbytes)
    return nbl_errorf(NBL_ERR_IO, "%s: write failed: %s", e->final, strerror(errno));
  char num[2][32];
  snprintf(num[0], sizeof num[0], "%llu", (unsigned long long)e->offset);
  snprintf(num[1], sizeof num[1], "%zu", t->nbytes);
  e->offset += t->nbytes;
  Onnx__StringStringEntryProto *kv = alloc_arr(c, 3, sizeof *kv);
  Onnx__StringStringEntryProto **kvp = alloc_arr(c, 3, sizeof *kvp);
  if (!kv || !kvp) return oom(c);
  const char *keys[3] = {"location", "offset", "length"};
  const char *vals[3] = {loc, num[0], num[1]};
  for (int i = 0; i < 3; i++) {
    onnx__string_string_entry_proto__init(&kv[i]);
    kv[i].key = (char *)keys[i];
    kv[i].value = nbl_arena_strdup(c->a, vals[i]);
    kvp[i] = &kv[i];
  }
  tp->n_external_data = 3;
  tp->external_data = kvp;
  tp->has_data_location = 1;
  tp->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
  tp->has_raw_data = 0;
  tp->raw_data.data = NULL;
  tp->raw_data.len = 0;
  return NBL_OK;
}

static nbl_status type_to_pb(save_ctx *c, const nbl_type *t, Onnx__TypeProto **out, int depth);

static nbl_status shape_to_pb(save_ctx *c, const nbl_type *t, Onnx__TensorShapeProto **out) {
  *out = NULL;
  if (t->rank < 0) return NBL_OK;
  Onnx__TensorShapeProto *sp = nbl_arena_alloc(c->a, sizeof *sp);
  if (!sp) return oom(c);
  onnx__tensor_shape_proto__init(sp);
  sp->n_dim = (size_t)t->rank;
  sp->dim = alloc_arr(c, sp->n_dim, sizeof(*sp->dim));
  Onnx__TensorShapeProto__Dimension *d = alloc_arr(c, sp->n_dim, sizeof *d);
  if (!sp->dim || !d) return oom(c);
  for (int i = 0; i < t->rank; i++) {
    onnx__tensor_shape_proto__dimension__init(&d[i]);
    d[i].denotation = t->dims[i].denotation;
    if (t->dims[i].param) {
      d[i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
      d[i].dim_param = t->dims[i].param;
    } else if (t->dims[i].value >= 0) {
      d[i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
      d[i].dim_value = t->dims[i].value;
    }
    sp->dim[i] = &d[i];
  }
  *out = sp;
  return NBL_OK;
}

static nbl_status type_to_pb(save_ctx *c, const nbl_type *t, Onnx__TypeProto **out, int depth) {
  *out = NULL;
  if (!t || (t->kind == NBL_TYPE_NONE && !t->denotation)) return NBL_OK;
  if (depth > 64) return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: type nested too deeply", c->label);
  Onnx__TypeProto *tp = nbl_arena_alloc(c->a, sizeof *tp);
  if (!tp) return oom(c);
  onnx__type_proto__init(tp);
  tp->denotation = t->denotation;
  nbl_status st = NBL_OK;
  switch (t->kind) {
  case NBL_TYPE_TENSOR: {
    Onnx__TypeProto__Tensor *tt = nbl_arena_alloc(c->a, sizeof *tt);
    if (!tt) return oom(c);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = t->elem != 0;
    tt->elem_type = (int32_t)t->elem;
    st = shape_to_pb(c, t, &tt->shape);
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    break;
  }
  case NBL_TYPE_SPARSE_TENSOR: {
    Onnx__TypeProto__SparseTensor *tt = nbl_arena_alloc(c->a, sizeof *tt);
    if (!tt) return oom(c);
    onnx__type_proto__sparse_tensor__init(tt);
    tt->has_elem_type = t->elem != 0;
    tt->elem_type = (int32_t)t->elem;
    st = shape_to_pb(c, t, &tt->shape);
    tp->value_case = ONNX__TYPE_PROTO__VALUE_SPARSE_TENSOR_TYPE;
    tp->sparse_tensor_type = tt;
    break;
  }
  case NBL_TYPE_SEQUENCE: {
    Onnx__TypeProto__Sequence *s = nbl_arena_alloc(c->a, sizeof *s);
    if (!s) return oom(c);
    onnx__type_proto__sequence__init(s);
    st = type_to_pb(c, t->inner, &s->elem_type, depth + 1);
    tp->value_case = ONNX__TYPE_PROTO__VALUE_SEQUENCE_TYPE;
    tp->sequence_type = s;
    break;
  }
  case NBL_TYPE_OPTIONAL: {
    Onnx__TypeProto__Optional *s = nbl_arena_alloc(c->a, sizeof *s);
    if (!s) return oom(c);
    onnx__type_proto__optional__init(s);
    st = type_to_pb(c, t->inner, &s->elem_type, depth + 1);
    tp->value_case = ONNX__TYPE_PROTO__VALUE_OPTIONAL_TYPE;
    tp->optional_type = s;
    break;
  }
  case NBL_TYPE_MAP: {
    Onnx__TypeProto__Map *s = nbl_arena_alloc(c->a, sizeof *s);
    if (!s) return oom(c);
    onnx__type_proto__map__init(s);
    s->has_key_type = t->elem != 0;
    s->key_type = (int32_t)t->elem;
    st = type_to_pb(c, t->inner, &s->value_type, depth + 1);
    tp->value_case = ONNX__TYPE_PROTO__VALUE_MAP_TYPE;
    tp->map_type = s;
    break;
  }
  default:
    break;
  }
  *out = tp;
  return st;
}

static nbl_status vi_to_pb(save_ctx *c, const nbl_value *v, Onnx__ValueInfoProto **out) {
  Onnx__ValueInfoProto *vi = nbl_arena_alloc(c->a, sizeof *vi);
  if (!vi) return oom(c);
  onnx__value_info_proto__init(vi);
  vi->name = v->name;
  vi->doc_string = v->doc_string;
  *out = vi;
  return type_to_pb(c, &v->type, &vi->type, 0);
}

static nbl_status graph_to_pb(save_ctx *c, const nbl_graph *g, Onnx__GraphProto **out, int depth);

/* A graph.input entry: the value info, or for an initializer without one
 * its tensor's element type and dims. */
static nbl_status input_vi_to_pb(save_ctx *c, const nbl_value *v, Onnx__ValueInfoProto **out) {
  if (v->type.kind != NBL_TYPE_NONE || !v->init) return vi_to_pb(c, v, out);
  nbl_value t = *v;
  nbl_type_set_tensor(c->a, &t.type, v->init->dtype, v->init->rank, v->init->dims);
  if (t.type.rank > 0 && !t.type.dims) return oom(c);
  return vi_to_pb(c, &t, out);
}

/* A type held by an attribute: written even when empty (type_to_pb leaves
 * an empty type out, but an attribute's type list may not hold a gap). */
static nbl_status attr_type_to_pb(save_ctx *c, const nbl_type *t, Onnx__TypeProto **out) {
  nbl_status st = type_to_pb(c, t, out, 0);
  if (st == NBL_OK && !*out) {
    *out = nbl_arena_alloc(c->a, sizeof **out);
    if (!*out) return oom(c);
    onnx__type_proto__init(*out);
  }
  return st;
}

static nbl_status attr_to_pb(save_ctx *c, const nbl_attr *at, Onnx__AttributeProto **out,
                             int depth) {
  Onnx__AttributeProto *ap = nbl_arena_alloc(c->a, sizeof *ap);
  if (!ap) return oom(c);
  onnx__attribute_proto__init(ap);
  *out = ap;
  ap->name = at->name;
  ap->doc_string = at->doc_string;
  ap->ref_attr_name = at->ref_attr_name;
  ap->has_type = 1;
  ap->type = (Onnx__AttributeProto__AttributeType)at->type;
  nbl_status st = NBL_OK;
  switch (at->type) {
  case NBL_ATTR_FLOAT: ap->has_f = 1; ap->f = at->f; break;
  case NBL_ATTR_INT: ap->has_i = 1; ap->i = at->i; break;
  case NBL_ATTR_STRING:
    ap->has_s = 1;
    ap->s.data = (uint8_t *)at->s;
    ap->s.len = at->s ? at->s_len : 0;
    break;
  case NBL_ATTR_TENSOR:
    if (!at->t) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: attribute '%s' has no tensor", c->label, at->name);
    return tensor_to_pb(c, at->t, NULL, &ap->t);
  case NBL_ATTR_GRAPH:
    if (!at->g) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: attribute '%s' has no graph", c->label, at->name);
    return graph_to_pb(c, at->g, &ap->g, depth + 1);
  case NBL_ATTR_SPARSE_TENSOR:
    if (at->n < 1 || !at->sparse) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: attribute '%s' has no sparse tensor", c->label, at->name);
    return unpack_blob(c, &onnx__sparse_tensor_proto__descriptor, &at->sparse[0], "sparse tensor",
                       (void **)&ap->sparse_tensor);
  case NBL_ATTR_TYPE_PROTO:
    if (at->n < 1 || !at->types) return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: attribute '%s' has no type", c->label, at->name);
    return attr_type_to_pb(c, &at->types[0], &ap->tp);
  case NBL_ATTR_FLOATS:
    ap->n_floats = (size_t)at->n;
    ap->floats = at->floats;
    break;
  case NBL_ATTR_INTS:
    ap->n_ints = (size_t)at->n;
    ap->ints = at->ints;
    break;
  case NBL_ATTR_STRINGS:
    ap->n_strings = (size_t)at->n;
    ap->strings = alloc_arr(c, (size_t)at->n, sizeof(ProtobufCBinaryData));
    if (!ap->strings) return oom(c);
    for (int i = 0; i < at->n; i++) {
      ap->strings[i].data = (uint8_t *)at->strings[i];
      ap->strings[i].len = at->string_lens ? at->string_lens[i] : strlen(at->strings[i]);
    }
    break;
  case NBL_ATTR_TENSORS:
    ap->n_tensors = (size_t)at->n;
    ap->tensors = alloc_arr(c, (size_t)at->n, sizeof(*ap->tensors));
    if (!ap->tensors) return oom(c);
    for (int i = 0; i < at->n && !st; i++) st = tensor_to_pb(c, at->tensors[i], NULL, &ap->tensors[i]);
    break;
  case NBL_ATTR_GRAPHS:
    ap->n_graphs = (size_t)at->n;
    ap->graphs = alloc_arr(c, (size_t)at->n, sizeof(*ap->graphs));
    if (!ap->graphs) return oom(c);
    for (int i = 0; i < at->n && !st; i++) st = graph_to_pb(c, at->graphs[i], &ap->graphs[i], depth + 1);
    break;
  case NBL_ATTR_SPARSE_TENSORS:
    ap->n_sparse_tensors = (size_t)at->n;
    ap->sparse_tensors = alloc_arr(c, (size_t)at->n, sizeof(*ap->sparse_tensors));
    if (!ap->sparse_tensors) return oom(c);
    for (int i = 0; i < at->n && !st; i++)
      st = unpack_blob(c, &onnx__sparse_tensor_proto__descriptor, &at->sparse[i], "sparse tensor",
                       (void **)&ap->sparse_tensors[i]);
    break;
  case NBL_ATTR_TYPE_PROTOS:
    ap->n_type_protos = (size_t)at->n;
    ap->type_protos = alloc_arr(c, (size_t)at->n, sizeof(*ap->type_protos));
    if (!ap->type_protos) return oom(c);
    for (int i = 0; i < at->n && !st; i++) st = attr_type_to_pb(c, &at->types[i], &ap->type_protos[i]);
    break;
  default:
    return nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: attribute '%s' has unknown type %d", c->label,
                      at->name, (int)at->type);
  }
  return st;
}

/* ------------------------------------------------------------------ node order */

typedef struct id_list {
  nbl_id *v;
  int n, cap;
} id_list;

static bool id_push(id_list *l, nbl_id x) {
  if (l->n == l->cap) {
    int cap = l->cap ? 2 * l->cap : 8;
    nbl_id *p = realloc(l->v, sizeof(nbl_id) * (size_t)cap);
    if (!p) return false;
    l->v = p;
    l->cap = cap;
  }
  l->v[l->n++] = x;
  return true;
}

/* Values of `g` that subgraph `sub` (at any depth) captures by name. */
static void collect_captures(const nbl_graph *g, const nbl_graph *sub, id_list *out, int depth) {
  if (depth > 64) return;
  for (int i = 0; i < sub->n_values; i++) {
    const nbl_value *v = &sub->values[i];
    if (v->dead || !(v->flags & NBL_VAL_OUTER)) continue;
    /* resolve upwards until g: through graphs that capture the name too or
     * do not mention it, stopping at the first one that defines it */
    const nbl_graph *p = sub->parent;
    while (p && p != g) {
      nbl_id pv = nbl_graph_find(p, v->name);
      if (pv != NBL_NONE && !(p->values[pv].flags & NBL_VAL_OUTER)) break;
      p = p->parent;
    }
    if (p == g) {
      nbl_id id = nbl_graph_find(g, v->name);
      if (id != NBL_NONE) id_push(out, id);
    }
  }
  for (int i = 0; i < sub->n_nodes; i++) {
    const nbl_node *n = &sub->nodes[i];
    if (n->dead) continue;
    for (int k = 0; k < n->n_attrs; k++) {
      if (n->attrs[k].type == NBL_ATTR_GRAPH && n->attrs[k].g)
        collect_captures(g, n->attrs[k].g, out, depth + 1);
      if (n->attrs[k].type == NBL_ATTR_GRAPHS)
        for (int j = 0; j < n->attrs[k].n; j++) collect_captures(g, n->attrs[k].graphs[j], out, depth + 1);
    }
  }
}

/* Producers node `ni` depends on (explicit inputs and subgraph captures). */
static void node_deps(const nbl_graph *g, nbl_id ni, id_list *deps) {
  const nbl_node *n = &g->nodes[ni];
  deps->n = 0;
  id_list vals = {0};
  for (int k = 0; k < n->n_inputs; k++)
    if (n->inputs[k] != NBL_NONE) id_push(&vals, n->inputs[k]);
  for (int k = 0; k < n->n_attrs; k++) {
    if (n->attrs[k].type == NBL_ATTR_GRAPH && n->attrs[k].g) collect_captures(g, n->attrs[k].g, &vals, 0);
    if (n->attrs[k].type == NBL_ATTR_GRAPHS)
      for (int j = 0; j < n->attrs[k].n; j++) collect_captures(g, n->attrs[k].graphs[j], &vals, 0);
  }
  for (int i = 0; i < vals.n; i++) {
    nbl_id p = g->values[vals.v[i]].producer;
    if (p != NBL_NONE && !g->nodes[p].dead && p != ni) id_push(deps, p);
  }
  free(vals.v);
}

/* Live nodes in an order where every producer comes first: the stored order
 * if it already is one, else a depth-first order that stays close to it. */
static nbl_status node_order(save_ctx *c, const nbl_graph *g, nbl_id **order, int *count) {
  int nn = g->n_nodes;
  nbl_id *out = malloc(sizeof(nbl_id) * (size_t)(nn ? nn : 1));
  unsigned char *state = calloc((size_t)(nn ? nn : 1), 1); /* 0 new, 1 open, 2 done */
  nbl_id *stack = malloc(sizeof(nbl_id) * (size_t)(nn ? nn : 1));
  id_list deps = {0};
  nbl_status st = NBL_OK;
  int cnt = 0;
  if (!out || !state || !stack) {
    st = oom(c);
    goto done;
  }
  bool sorted = true;
  for (int i = 0; i < nn && sorted; i++) {
    if (g->nodes[i].dead) continue;
    node_deps(g, i, &deps);
    for (int k = 0; k < deps.n; k++)
      if (state[deps.v[k]] != 2) sorted = false;
    state[i] = 2;
    out[cnt++] = i;
  }
  if (!sorted) {
    memset(state, 0, (size_t)(nn ? nn : 1));
    cnt = 0;
    for (int r = 0; r < nn && !st; r++) {
      if (g->nodes[r].dead || state[r]) continue;
      int sp = 0;
      stack[sp++] = r;
      state[r] = 1;
      while (sp > 0 && !st) {
        nbl_id top = stack[sp - 1];
        node_deps(g, top, &deps);
        nbl_id next = NBL_NONE;
        for (int k = 0; k < deps.n; k++) {
          if (state[deps.v[k]] == 0) {
            next = deps.v[k];
            break;
          }
          if (state[deps.v[k]] == 1) {
            st = nbl_errorf(NBL_ERR_INVALID_MODEL, "%s: graph '%s': node '%s' (%s) is on a cycle",
                            c->label, g->name, g->nodes[top].name, g->nodes[top].op_type);
            break;
          }
        }
        if (st) break;
        if (next == NBL_NONE) {
          state[top] = 2;
          out[cnt++] = top;
          sp--;
        } else {
          state[next] = 1;
          stack[sp++] = next;
        }
      }
    }
  }
done:
  free(state);
  free(stack);
  free(deps.v);
  if (st) {
    free(out);
    return st;
  }
  *order = out;
  *count = cnt;
  return NBL_OK;
}

static nbl_status graph_to_pb(save_ctx *c, const nbl_graph *g, Onnx__GraphProto **out, int depth) {
  if (depth > 64) return nbl_errorf(NBL_ERR_UNSUPPORTED, "%s: subgraphs nested too deeply", c->label);
  Onnx__GraphProto *gp = nbl_arena_alloc(c->a, sizeof *gp);
  if (!gp) return oom(c);
  onnx__graph_proto__init(gp);
  *out = gp;
  gp->name = g->name;
  gp->doc_string = g->doc_string;
  nbl_status st = NBL_OK;
  nbl_id *ins = NULL;
  const int n_ins = nbl_graph_file_inputs(g, &ins); /* IR < 4: the initializers too */
  if (n_ins < 0) return oom(c);
  gp->input = alloc_arr(c, (size_t)n_ins, sizeof(*gp->input));
  gp->output = alloc_arr(c, (size_t)g->n_outputs, sizeof(*gp->output));
  gp->value_info = alloc_arr(c, (size_t)g->n_value_infos, sizeof(*gp->value_info));
  gp->initializer = alloc_arr(c, (size_t)g->n_initializers, sizeof(*gp->initializer));
  for (int i = 0; i < n_ins && !st && gp->input; i++) st = input_vi_to_pb(c, &g->values[ins[i]], &gp->input[i]);
  free(ins);
  if (!gp->input || !gp->output || !gp->value_info || !gp->initializer) return oom(c);
  if (st) return st;
  gp->n_input = (size_t)n_ins;
  for (int i = 0; i < g->n_outputs && !st; i++) st = vi_to_pb(c, &g->values[g->outputs[i]], &gp->output[i]);
  gp->n_output = (size_t)g->n_outputs;
  for (int i = 0; i < g->n_value_infos && !st; i++)
    st = vi_to_pb(c, &g->values[g->value_infos[i]], &gp->value_info[i]);
  gp->n_value_info = (size_t)g->n_value_infos;
  if (st) return st;
  int ni = 0;
  for (int i = 0; i < g->n_initializers && !st; i++) {
    const nbl_value *v = &g->values[g->initializers[i]];
    if (v->dead || !v->init) continue;
    st = tensor_to_pb(c, v->init, v->name, &gp->initializer[ni++]);
  }
  gp->n_initializer = (size_t)ni;
  if (st) return st;
  if (g->n_sparse_initializers) {
    gp->sparse_initializer = alloc_arr(c, (size_t)g->n_sparse_initializers, sizeof(*gp->sparse_initializer));
    if (!gp->sparse_initializer) return oom(c);
    for (int i = 0; i < g->n_sparse_initializers && !st; i++)
      st = unpack_blob(c, &onnx__sparse_tensor_proto__descriptor, &g->sparse_initializers[i],
                       "sparse initializer", (void **)&gp->sparse_initializer[i]);
    gp->n_sparse_initializer = (size_t)g->n_sparse_initializers;
  }
  if (g->n_quantization_annotation) {
    gp->quantization_annotation = alloc_arr(c, (size_t)g->n_quantization_annotation,
                                            sizeof(*gp->quantization_annotation));
    if (!gp->quantization_annotation) return oom(c);
    for (int i = 0; i < g->n_quantization_annotation && !st; i++)
      st = unpack_blob(c, &onnx__tensor_annotation__descriptor, &g->quantization_annotation[i],
                       "quantization annotation", (void **)&gp->quantization_annotation[i]);
    gp->n_quantization_annotation = (size_t)g->n_quantization_annotation;
  }
  if (st) return st;
  nbl_id *order = NULL;
  int cnt = 0;
  st = node_order(c, g, &order, &cnt);
  if (st) return st;
  gp->node = alloc_arr(c, (size_t)cnt, sizeof(*gp->node));
  Onnx__NodeProto *nps = alloc_arr(c, (size_t)cnt, sizeof *nps);
  if (!gp->node || !nps) {
    free(order);
    return oom(c);
  }
  /* ONNX Runtime refuses a graph with two nodes of one name, which passes
   * can make (two quantizers of one tensor, one per consumer's bit width)
   * and models can bring: a repeated name is written with the first free
   * suffix _1, _2, ... (free among all the graph's node names). */
  name_set all = {0}, seen = {0};
  if (!name_set_init(&all, 2 * (size_t)cnt) || !name_set_init(&seen, 2 * (size_t)cnt)) {
    name_set_free(&all);
    free(order);
    return oom(c);
  }
  for (int oi = 0; oi < cnt; oi++) name_set_add(&all, g->nodes[order[oi]].name);
  for (int oi = 0; oi < cnt && !st; oi++) {
    const nbl_node *n = &g->nodes[order[oi]];
    Onnx__NodeProto *np = &nps[oi];
    onnx__node_proto__init(np);
    gp->node[oi] = np;
    np->name = (n->name && *n->name) ? n->name : NULL;
    if (name_set_repeated(&seen, np->name)) {
      size_t len = strlen(np->name) + 24;
      char *nm = nbl_arena_alloc(c->a, len);
      if (!nm) {
        st = oom(c);
        break;
      }
      name_set_suffix(&all, &seen, n->name, nm, len);
      np->name = nm;
    }
    name_set_add(&seen, np->name);
    np->op_type = n->op_type;
    np->domain = (n->domain && *n->domain) ? n->domain : NULL;
    np->doc_string = n->doc_string;
    np->input = alloc_arr(c, (size_t)n->n_inputs, sizeof(char *));
    np->output = alloc_arr(c, (size_t)n->n_outputs, sizeof(char *));
    np->attribute = alloc_arr(c, (size_t)n->n_attrs, sizeof(*np->attribute));
    if (!np->input || !np->output || !np->attribute) {
      st = oom(c);
      break;
    }
    np->n_input = (size_t)n->n_inputs;
    for (int k = 0; k < n->n_inputs; k++)
      np->input[k] = n->inputs[k] == NBL_NONE ? (char *)"" : g->values[n->inputs[k]].name;
    np->n_output = (size_t)n->n_outputs;
    for (int k = 0; k < n->n_outputs; k++)
      np->output[k] = n->outputs[k] == NBL_NONE ? (char *)"" : g->values[n->outputs[k]].name;
    np->n_attribute = (size_t)n->n_attrs;
    for (int k = 0; k < n->n_attrs && !st; k++) st = attr_to_pb(c, &n->attrs[k], &np->attribute[k], depth);
  }
  gp->n_node = (size_t)cnt;
  name_set_free(&all);
  name_set_free(&seen);
  free(order);
  return st;
}

static nbl_status kv_to_pb(save_ctx *c, const nbl_kv *kv, int n, Onnx__StringStringEntryProto ***out,
                           size_t *count) {
  *count = 0;
  if (n <= 0) return NBL_OK;
  Onnx__StringStringEntryProto **p = alloc_arr(c, (size_t)n, sizeof *p);
  Onnx__StringStringEntryProto *e = alloc_arr(c, (size_t)n, sizeof *e);
  if (!p || !e) return oom(c);
  for (int i = 0; i < n; i++) {
    onnx__string_string_entry_proto__init(&e[i]);
    e[i].key = kv[i].key;
    e[i].value = kv[i].value;
    p[i] = &e[i];
  }
  *out = p;
  *count = (size_t)n;
  return NBL_OK;
}

static nbl_status model_to_pb(save_ctx *c, Onnx__ModelProto *mp) {
  const nbl_model *m = c->m;
  nbl_status st;
  onnx__model_proto__init(mp);
  mp->has_ir_version = 1;
  mp->ir_version = m->ir_version;
  mp->producer_name = m->producer_name;
  mp->producer_version = m->producer_version;
  mp->domain = m->domain;
  mp->doc_string = m->doc_string;
  mp->has_model_version = m->model_version != 0;
  mp->model_version = m->model_version;
  mp->opset_import = alloc_arr(c, (size_t)m->n_opsets, sizeof(*mp->opset_import));
  Onnx__OperatorSetIdProto *ops = alloc_arr(c, (size_t)m->n_opsets, sizeof *ops);
  if (!mp->opset_import || !ops) return oom(c);
  for (int i = 0; i < m->n_opsets; i++) {
    onnx__operator_set_id_proto__init(&ops[i]);
    ops[i].domain = m->opsets[i].domain;
    ops[i].has_version = 1;
    ops[i].version = m->opsets[i].version;
    mp->opset_import[i] = &ops[i];
  }
  mp->n_opset_import = (size_t)m->n_opsets;
  st = kv_to_pb(c, m->metadata, m->n_metadata, &mp->metadata_props, &mp->n_metadata_props);
  if (st) return st;
  st = graph_to_pb(c, m->graph, &mp->graph, 0);
  if (st) return st;
  if (m->n_training) {
    mp->training_info = alloc_arr(c, (size_t)m->n_training, sizeof(*mp->training_info));
    Onnx__TrainingInfoProto *ti = alloc_arr(c, (size_t)m->n_training, sizeof *ti);
    if (!mp->training_info || !ti) return oom(c);
    for (int i = 0; i < m->n_training; i++) {
      const nbl_training_info *t = &m->training[i];
      onnx__training_info_proto__init(&ti[i]);
      if (t->initialization) {
        st = graph_to_pb(c, t->initialization, &ti[i].initialization, 1);
        if (st) return st;
      }
      if (t->algorithm) {
        st = graph_to_pb(c, t->algorithm, &ti[i].algorithm, 1);
        if (st) return st;
      }
      st = kv_to_pb(c, t->init_binding, t->n_init_binding, &ti[i].initialization_binding,
                    &ti[i].n_initialization_binding);
      if (st) return st;
      st = kv_to_pb(c, t->update_binding, t->n_update_binding, &ti[i].update_binding,
                    &ti[i].n_update_binding);
      if (st) return st;
      mp->training_info[i] = &ti[i];
    }
    mp->n_training_info = (size_t)m->n_training;
  }
  if (m->n_functions) {
    mp->functions = alloc_arr(c, (size_t)m->n_functions, sizeof(*mp->functions));
    if (!mp->functions) return oom(c);
    for (int i = 0; i < m->n_functions; i++) {
      st = unpack_blob(c, &onnx__function_proto__descriptor, &m->functions[i], "function",
                       (void **)&mp->functions[i]);
      if (st) return st;
    }
    mp->n_functions = (size_t)m->n_functions;
  }
  return NBL_OK;
}

static void ctx_free(save_ctx *c) {
  for (int i = 0; i < c->n_msgs; i++) protobuf_c_message_free_unpacked(c->msgs[i], NULL);
  free(c->msgs);
  nbl_arena_free(c->a);
}

typedef struct file_buf {
  ProtobufCBuffer base;
  FILE *f;
  int err;
} file_buf;

static void file_append(ProtobufCBuffer *b, size_t len, const uint8_t *data) {
  file_buf *fb = (file_buf *)b;
  if (!fb->err && len && fwrite(data, 1, len, fb->f) != len) fb->err = errno ? errno : EIO;
}

nbl_status nbl_model_save(const nbl_model *m, const char *path, const nbl_save_options *opt) {
  if (!m || !path) return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_save: NULL argument");
  nbl_status st = nbl_model_verify(m);
  if (st) return st;
  save_ctx c = {.m = m, .label = path};
  c.a = nbl_arena_new();
  if (!c.a) return oom(&c);
  c.mode = opt ? opt->external : NBL_EXTERNAL_KEEP;
  c.threshold = (opt && opt->threshold) ? opt->threshold : 1024;
  const char *slash = strrchr(path, '/');
  char *dir = !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
  char *tmp = malloc(strlen(path) + 32);
  char *defloc = NULL;
  if (!dir || !tmp) {
    st = oom(&c);
    goto out;
  }
  c.out_dir = dir;
  if (c.mode == NBL_EXTERNAL_ALL) {
    if (opt && opt->location && *opt->location) {
      c.location = opt->location;
    } else {
      const char *base = slash ? slash + 1 : path;
      defloc = malloc(strlen(base) + 6);
      if (!defloc) {
        st = oom(&c);
        goto out;
      }
      sprintf(defloc, "%s.data", base);
      c.location = defloc;
    }
  } else if (c.mode != NBL_EXTERNAL_KEEP && c.mode != NBL_EXTERNAL_NONE) {
    st = nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "%s: unknown external data mode %d", path, (int)c.mode);
    goto out;
  }
  Onnx__ModelProto mp;
  st = model_to_pb(&c, &mp);
  if (st) goto out;
  sprintf(tmp, "%s.nbl-tmp-%ld", path, (long)getpid());
  FILE *f = fopen(tmp, "wb");
  if (!f) {
    st = nbl_errorf(NBL_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    goto out;
  }
  file_buf fb = {.base = {.append = file_append}, .f = f};
  onnx__model_proto__pack_to_buffer(&mp, &fb.base);
  int cerr = fclose(f);
  if (fb.err || cerr) {
    st = nbl_errorf(NBL_ERR_IO, "%s: write failed: %s", path, strerror(fb.err ? fb.err : errno));
    unlink(tmp);
    goto out;
  }
  ext_files_close(&c, true, &st);
  if (!st && rename(tmp, path) != 0)
    st = nbl_errorf(NBL_ERR_IO, "%s: cannot rename into place: %s", path, strerror(errno));
  if (st) unlink(tmp);
out:
  ext_files_close(&c, false, &st);
  ctx_free(&c);
  free(dir);
  free(tmp);
  free(defloc);
  return st;
}

nbl_status nbl_model_save_buffer(const nbl_model *m, void **data, size_t *len) {
  if (!m || !data || !len)
    return nbl_errorf(NBL_ERR_INVALID_ARGUMENT, "nbl_model_save_buffer: NULL argument");
  *data = NULL;
  *len = 0;
  nbl_status st = nbl_model_verify(m);
  if (st) return st;
  save_ctx c = {.m = m, .label = nbl_model_label(m), .mode = NBL_EXTERNAL_NONE};
  c.a = nbl_arena_new();
  if (!c.a) return oom(&c);
  Onnx__ModelProto mp;
  st = model_to_pb(&c, &mp);
  if (!st) {
    size_t n = onnx__model_proto__get_packed_size(&mp);
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf) {
      st = oom(&c);
    } else {
      onnx__model_proto__pack(&mp, buf);
      *data = buf;
      *len = n;
    }
  }
  ctx_free(&c);
  return st;
}
