/*
 * print_json.c - the model as JSON, field for field.
 *
 * Layout (keys always present unless noted):
 *   { "ir_version", "producer_name", "producer_version", "domain", "model_version",
 *     "doc_string", "opset_import": [{"domain", "version"}],
 *     "metadata_props": [{"key", "value"}], "graph": GRAPH,
 *     "training_info": [{"initialization": GRAPH|null, "algorithm": GRAPH|null,
 *                        "initialization_binding": [{"key","value"}], "update_binding": [...]}],
 *     "functions": N (model-local FunctionProtos, kept verbatim, not decoded) }
 *   GRAPH = { "name", "doc_string", "inputs": [VALUE], "outputs": [VALUE],
 *             "value_info": [VALUE], "initializers": [TENSOR], "nodes": [NODE],
 *             "sparse_initializers": N, "quantization_annotations": N }
 *   VALUE = { "name", "type": TYPE }
 *   TYPE  = null (not given) | {"tensor"|"sparse_tensor": {"elem_type", "shape": [DIM]|null}}
 *         | {"sequence"|"optional": TYPE} | {"map": {"key_type", "value_type": TYPE}}
 *   DIM   = integer | "param" | null (unknown)
 *   TENSOR = { "name", "elem_type", "dims", "numel", "nbytes", ["external": {"location",
 *              "offset", "length"}], "summary": {"min","max","mean","nan"} (numeric, numel>0),
 *              "data": [values] (all values; only when full or numel <= NBL_PRINT_SUMMARY_MAX) }
 *   NODE  = { "name", "op_type", "domain", "inputs": [name|""], "outputs": [name|""],
 *             "attributes": [{"name", "type", "value"}] }
 * Non-finite floats are the strings "NaN", "Infinity", "-Infinity" (JSON has no
 * literal for them). float16/bfloat16 data are given as float values. Bytes
 * that are not valid UTF-8 are written as \u00XX (their Latin-1 reading).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ir.h"
#include "print_internal.h"

typedef struct jp {
  FILE *f;
  int full;
} jp;

/* Length of the valid UTF-8 sequence at s (max n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *s, size_t n) {
  unsigned c = s[0];
  size_t need;
  unsigned min;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) {
    need = 2;
    min = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    need = 3;
    min = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    need = 4;
    min = 0x10000;
  } else {
    return 0;
  }
  if (need > n) return 0;
  unsigned cp = c & (0x7f >> need);
  for (size_t i = 1; i < need; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return need;
}

static void jstr_n(FILE *f, const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)(str ? str : "");
  if (!str) n = 0;
  fputc('"', f);
  for (size_t i = 0; i < n;) {
    unsigned char c = s[i];
    if (c == '"' || c == '\\') {
      fprintf(f, "\\%c", c);
      i++;
    } else if (c == '\n') {
      fputs("\\n", f);
      i++;
    } else if (c == '\t') {
      fputs("\\t", f);
      i++;
    } else if (c == '\r') {
      fputs("\\r", f);
      i++;
    } else if (c < 0x20) {
      fprintf(f, "\\u%04x", c);
      i++;
    } else if (c < 0x80) {
      fputc(c, f);
      i++;
    } else {
      size_t k = utf8_len(s + i, n - i);
      if (k) {
        fwrite(s + i, 1, k, f);
        i += k;
      } else {
        fprintf(f, "\\u%04x", c);
        i++;
      }
    }
  }
  fputc('"', f);
}

static void jstr(FILE *f, const char *s) { jstr_n(f, s, s ? strlen(s) : 0); }

static void jnum(FILE *f, double v, int is_double) {
  char b[40];
  if (isnan(v))
    fputs("\"NaN\"", f);
  else if (isinf(v))
    fputs(v < 0 ? "\"-Infinity\"" : "\"Infinity\"", f);
  else
    fputs(nbl_fmt_float(b, v, is_double, 0), f);
}

static void jtype(FILE *f, const nbl_type *t) {
  if (!t || t->kind == NBL_TYPE_NONE) {
    fputs("null", f);
    return;
  }
  switch (t->kind) {
  case NBL_TYPE_TENSOR:
  case NBL_TYPE_SPARSE_TENSOR:
    fprintf(f, "{\"%s\": {\"elem_type\": ", t->kind == NBL_TYPE_TENSOR ? "tensor" : "sparse_tensor");
    jstr(f, nbl_dtype_name(t->elem));
    fputs(", \"shape\": ", f);
    if (t->rank < 0) {
      fputs("null", f);
    } else {
      fputc('[', f);
      for (int i = 0; i < t->rank; i++) {
        if (i) fputs(", ", f);
        if (t->dims && t->dims[i].param && *t->dims[i].param)
          jstr(f, t->dims[i].param);
        else if (t->dims && t->dims[i].value >= 0)
          fprintf(f, "%lld", (long long)t->dims[i].value);
        else
          fputs("null", f);
      }
      fputc(']', f);
    }
    fputs("}}", f);
    break;
  case NBL_TYPE_SEQUENCE:
  case NBL_TYPE_OPTIONAL:
    fprintf(f, "{\"%s\": ", t->kind == NBL_TYPE_SEQUENCE ? "sequence" : "optional");
    jtype(f, t->inner);
    fputc('}', f);
    break;
  case NBL_TYPE_MAP:
    fputs("{\"map\": {\"key_type\": ", f);
    jstr(f, nbl_dtype_name(t->elem));
    fputs(", \"value_type\": ", f);
    jtype(f, t->inner);
    fputs("}}", f);
    break;
  default: fputs("null", f); break;
  }
}

static void jtensor(jp *p, const nbl_tensor *t) {
  FILE *f = p->f;
  fputs("{\"name\": ", f);
  jstr(f, t->name);
  fputs(", \"elem_type\": ", f);
  jstr(f, nbl_dtype_name(t->dtype));
  fputs(", \"dims\": [", f);
  for (int i = 0; i < t->rank; i++) fprintf(f, i ? ", %lld" : "%lld", (long long)t->dims[i]);
  int64_t n = nbl_tensor_numel(t);
  fprintf(f, "], \"numel\": %lld, \"nbytes\": %zu", (long long)n, t->nbytes);
  if (t->ext_location) {
    fputs(", \"external\": {\"location\": ", f);
    jstr(f, t->ext_location);
    fprintf(f, ", \"offset\": %lld, \"length\": %lld}", (long long)t->ext_offset,
            (long long)t->ext_length);
  }
  if (nbl_tensor_check_payload(t) != NBL_OK) {
    fputs(", \"error\": ", f);
    jstr(f, nbl_last_error());
    fputc('}', f);
    return;
  }
  if (t->dtype != NBL_DT_STRING && n > 0) {
    nbl_tensor_stats st;
    nbl_tensor_stats_compute(t, &st);
    fputs(", \"summary\": {\"min\": ", f);
    jnum(f, st.min, 1);
    fputs(", \"max\": ", f);
    jnum(f, st.max, 1);
    fputs(", \"mean\": ", f);
    jnum(f, st.mean, 1);
    fprintf(f, ", \"nan\": %lld}", (long long)st.n_nan);
  }
  if (p->full || n <= NBL_PRINT_SUMMARY_MAX) {
    fputs(", \"data\": [", f);
    bool cplx = t->dtype == NBL_DT_COMPLEX64 || t->dtype == NBL_DT_COMPLEX128;
    for (int64_t i = 0; i < n; i++) {
      if (i) fputs(", ", f);
      switch (t->dtype) {
      case NBL_DT_STRING: jstr_n(f, t->strings[i], t->string_lens[i]); break;
      case NBL_DT_FLOAT:
      case NBL_DT_FLOAT16:
      case NBL_DT_BFLOAT16: jnum(f, nbl_tensor_get_f64(t, i), 0); break;
      case NBL_DT_DOUBLE: jnum(f, nbl_tensor_get_f64(t, i), 1); break;
      case NBL_DT_UINT64: {
        uint64_t v;
        memcpy(&v, (const unsigned char *)t->data + 8 * i, 8);
        fprintf(f, "%llu", (unsigned long long)v);
        break;
      }
      case NBL_DT_FLOAT8E4M3FN:
      case NBL_DT_FLOAT8E4M3FNUZ:
      case NBL_DT_FLOAT8E5M2:
      case NBL_DT_FLOAT8E5M2FNUZ:
        fprintf(f, "%u", (unsigned)((const unsigned char *)t->data)[i]);
        break;
      default:
        if (cplx) {
          const unsigned char *d = t->data;
          double re, im;
          if (t->dtype == NBL_DT_COMPLEX64) {
            float a, b;
            memcpy(&a, d + 8 * i, 4);
            memcpy(&b, d + 8 * i + 4, 4);
            re = a;
            im = b;
          } else {
            memcpy(&re, d + 16 * i, 8);
            memcpy(&im, d + 16 * i + 8, 8);
          }
          fputc('[', f);
          jnum(f, re, t->dtype == NBL_DT_COMPLEX128);
          fputs(", ", f);
          jnum(f, im, t->dtype == NBL_DT_COMPLEX128);
          fputc(']', f);
        } else {
          fprintf(f, "%lld", (long long)nbl_tensor_get_i64(t, i));
        }
        break;
      }
    }
    fputc(']', f);
  }
  fputc('}', f);
}

static void jgraph(jp *p, const nbl_graph *g);

static void jattr(jp *p, const nbl_attr *a) {
  FILE *f = p->f;
  fputs("{\"name\": ", f);
  jstr(f, a->name);
  fputs(", \"type\": ", f);
  jstr(f, nbl_attr_type_name(a->type));
  if (a->ref_attr_name) {
    fputs(", \"ref_attr_name\": ", f);
    jstr(f, a->ref_attr_name);
  }
  fputs(", \"value\": ", f);
  switch (a->type) {
  case NBL_ATTR_FLOAT: jnum(f, a->f, 0); break;
  case NBL_ATTR_INT: fprintf(f, "%lld", (long long)a->i); break;
  case NBL_ATTR_STRING: jstr_n(f, a->s, a->s ? a->s_len : 0); break;
  case NBL_ATTR_TENSOR:
    if (a->t)
      jtensor(p, a->t);
    else
      fputs("null", f);
    break;
  case NBL_ATTR_GRAPH:
    if (a->g)
      jgraph(p, a->g);
    else
      fputs("null", f);
    break;
  case NBL_ATTR_TYPE_PROTO: jtype(f, a->types); break;
  case NBL_ATTR_SPARSE_TENSOR:
    fprintf(f, "{\"sparse_tensor_bytes\": %zu}", a->sparse ? a->sparse[0].len : (size_t)0);
    break;
  case NBL_ATTR_FLOATS:
  case NBL_ATTR_INTS:
  case NBL_ATTR_STRINGS:
  case NBL_ATTR_TENSORS:
  case NBL_ATTR_GRAPHS:
  case NBL_ATTR_TYPE_PROTOS:
  case NBL_ATTR_SPARSE_TENSORS:
    fputc('[', f);
    for (int i = 0; i < a->n; i++) {
      if (i) fputs(", ", f);
      switch (a->type) {
      case NBL_ATTR_FLOATS: jnum(f, a->floats[i], 0); break;
      case NBL_ATTR_INTS: fprintf(f, "%lld", (long long)a->ints[i]); break;
      case NBL_ATTR_STRINGS:
        jstr_n(f, a->strings[i], a->string_lens ? a->string_lens[i] : strlen(a->strings[i]));
        break;
      case NBL_ATTR_TENSORS: jtensor(p, a->tensors[i]); break;
      case NBL_ATTR_GRAPHS: jgraph(p, a->graphs[i]); break;
      case NBL_ATTR_TYPE_PROTOS: jtype(f, &a->types[i]); break;
      default: fprintf(f, "{\"sparse_tensor_bytes\": %zu}", a->sparse ? a->sparse[i].len : (size_t)0); break;
      }
    }
    fputc(']', f);
    break;
  default: fputs("null", f); break;
  }
  fputc('}', f);
}

static void jvalues(jp *p, const nbl_graph *g, const nbl_id *ids, int n) {
  FILE *f = p->f;
  fputc('[', f);
  for (int i = 0; i < n; i++) {
    const nbl_value *v = &g->values[ids[i]];
    fputs(i ? ", {\"name\": " : "{\"name\": ", f);
    jstr(f, v->name);
    fputs(", \"type\": ", f);
    jtype(f, &v->type);
    fputc('}', f);
  }
  fputc(']', f);
}

static void jnames(jp *p, const nbl_graph *g, const nbl_id *ids, int n) {
  fputc('[', p->f);
  for (int i = 0; i < n; i++) {
    if (i) fputs(", ", p->f);
    jstr(p->f, ids[i] == NBL_NONE ? "" : g->values[ids[i]].name);
  }
  fputc(']', p->f);
}

static void jgraph(jp *p, const nbl_graph *g) {
  FILE *f = p->f;
  fputs("{\"name\": ", f);
  jstr(f, g->name);
  fputs(", \"doc_string\": ", f);
  jstr(f, g->doc_string);
  fputs(",\n\"inputs\": ", f);
  nbl_id *ins = NULL;
  const int n_ins = nbl_graph_file_inputs(g, &ins); /* IR < 4: the initializers too */
  jvalues(p, g, ins ? ins : g->inputs, ins ? n_ins : g->n_inputs);
  free(ins);
  fputs(",\n\"outputs\": ", f);
  jvalues(p, g, g->outputs, g->n_outputs);
  fputs(",\n\"value_info\": ", f);
  jvalues(p, g, g->value_infos, g->n_value_infos);
  fputs(",\n\"initializers\": [", f);
  for (int i = 0; i < g->n_initializers; i++) {
    const nbl_value *v = &g->values[g->initializers[i]];
    if (i) fputs(",\n", f);
    if (v->init) {
      /* the value's name is authoritative (a pass may have renamed it) */
      nbl_tensor t = *v->init;
      t.name = v->name;
      jtensor(p, &t);
    } else {
      fputs("null", f);
    }
  }
  fputs("],\n\"nodes\": [", f);
  int k = 0;
  for (nbl_id n = 0; n < g->n_nodes; n++) {
    const nbl_node *nd = &g->nodes[n];
    if (nd->dead) continue;
    fputs(k++ ? ",\n{\"name\": " : "\n{\"name\": ", f);
    jstr(f, nd->name);
    fputs(", \"op_type\": ", f);
    jstr(f, nd->op_type);
    fputs(", \"domain\": ", f);
    jstr(f, nd->domain);
    fputs(", \"inputs\": ", f);
    jnames(p, g, nd->inputs, nd->n_inputs);
    fputs(", \"outputs\": ", f);
    jnames(p, g, nd->outputs, nd->n_outputs);
    fputs(", \"attributes\": [", f);
    for (int i = 0; i < nd->n_attrs; i++) {
      if (i) fputs(", ", f);
      jattr(p, &nd->attrs[i]);
    }
    fputs("]}", f);
  }
  fprintf(f, "],\n\"sparse_initializers\": %d, \"quantization_annotations\": %d}",
          g->n_sparse_initializers, g->n_quantization_annotation);
}

static void jkvs(FILE *f, const nbl_kv *kv, int n) {
  fputc('[', f);
  for (int i = 0; i < n; i++) {
    fputs(i ? ", {\"key\": " : "{\"key\": ", f);
    jstr(f, kv[i].key);
    fputs(", \"value\": ", f);
    jstr(f, kv[i].value);
    fputc('}', f);
  }
  fputc(']', f);
}

nbl_status nbl_print_json(const nbl_model *m, int full, FILE *out) {
  jp p = {.f = out, .full = full};
  fprintf(out, "{\"ir_version\": %lld,\n\"producer_name\": ", (long long)m->ir_version);
  jstr(out, m->producer_name);
  fputs(", \"producer_version\": ", out);
  jstr(out, m->producer_version);
  fputs(", \"domain\": ", out);
  jstr(out, m->domain);
  fprintf(out, ", \"model_version\": %lld, \"doc_string\": ", (long long)m->model_version);
  jstr(out, m->doc_string);
  fputs(",\n\"opset_import\": [", out);
  for (int i = 0; i < m->n_opsets; i++) {
    fputs(i ? ", {\"domain\": " : "{\"domain\": ", out);
    jstr(out, m->opsets[i].domain);
    fprintf(out, ", \"version\": %lld}", (long long)m->opsets[i].version);
  }
  fputs("],\n\"metadata_props\": ", out);
  jkvs(out, m->metadata, m->n_metadata);
  fputs(",\n\"graph\": ", out);
  jgraph(&p, m->graph);
  fputs(",\n\"training_info\": [", out);
  for (int i = 0; i < m->n_training; i++) {
    const nbl_training_info *ti = &m->training[i];
    fputs(i ? ",\n{\"initialization\": " : "{\"initialization\": ", out);
    if (ti->initialization)
      jgraph(&p, ti->initialization);
    else
      fputs("null", out);
    fputs(",\n\"algorithm\": ", out);
    if (ti->algorithm)
      jgraph(&p, ti->algorithm);
    else
      fputs("null", out);
    fputs(",\n\"initialization_binding\": ", out);
    jkvs(out, ti->init_binding, ti->n_init_binding);
    fputs(", \"update_binding\": ", out);
    jkvs(out, ti->update_binding, ti->n_update_binding);
    fputc('}', out);
  }
  fprintf(out, "],\n\"functions\": %d}\n", m->n_functions);
  if (ferror(out))
    return nbl_errorf(NBL_ERR_IO, "%s: write error while printing", nbl_model_label(m));
  return NBL_OK;
}
