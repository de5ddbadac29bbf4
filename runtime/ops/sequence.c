/* runtime/ops/sequence.c - op family 'sequence': ONNX's sequence and
 * optional values (kernel.h: nbl_rt_tensor.kind, nbl_rt_seq).
 *
 *   SequenceEmpty, SequenceConstruct, SequenceInsert, SequenceAt,
 *   SequenceErase, SequenceLength (opset 11), SplitToSequence and
 *   ConcatFromSequence (11), SequenceMap (17, a body run per element),
 *   Optional, OptionalHasElement, OptionalGetElement (15; from opset 18 the
 *   last two also take a tensor or a sequence, or no input).
 *
 * Every op here takes values of any kind (NBL_OPF_VALUES) and checks each
 * input's kind itself. Values are immutable: an op that "changes" a
 * sequence makes a new one with copies of the elements (an element is
 * never shared between two values, so freeing one never frees another's).
 * Positions follow ONNX: negative ones count from the end; SequenceInsert
 * accepts [-n, n], SequenceAt and SequenceErase [-n, n-1]; anything else is
 * a runtime error naming the node. SplitToSequence and ConcatFromSequence
 * share Split's and Concat's kernels (runtime/ops/shape.h). */
#include <stdlib.h>
#include <string.h>

#include "runtime/core/shape.h"
#include "runtime/ops/shape.h"

/* ------------------------------------------------------------------ helpers */

/* Input i as a sequence (*q its elements); `what` names it. */
static nbl_status in_seq(nbl_kctx *c, int i, const char *what, const nbl_rt_tensor **t, const nbl_rt_seq **q) {
  const nbl_rt_tensor *x = i < c->n_in ? c->in[i] : NULL;
  if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' is missing", what);
  if (x->kind != NBL_RT_SEQUENCE)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' is a %s, the op takes a sequence", what,
                    nbl_rt_kind_name(x->kind));
  *t = x;
  *q = nbl_rt_seq_of(x);
  return NBL_OK;
}

/* Input i as a tensor; NULL with *st OK when omitted (optional inputs). */
static const nbl_rt_tensor *in_tensor(nbl_kctx *c, int i, const char *what, nbl_status *st) {
  const nbl_rt_tensor *x = i < c->n_in ? c->in[i] : NULL;
  *st = NBL_OK;
  if (x && x->kind != NBL_RT_TENSOR) {
    *st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input '%s' is a %s, the op takes a tensor", what,
                   nbl_rt_kind_name(x->kind));
    return NULL;
  }
  return x;
}

/* The position held by input i (a scalar or one-element int32/int64
 * tensor; absent: dflt) normalized into [0, hi] against length n, where
 * hi is n (insert) or n - 1 (at, erase). */
static nbl_status position(nbl_kctx *c, int i, int64_t n, int64_t hi, int64_t dflt, int64_t *pos) {
  nbl_status st;
  const nbl_rt_tensor *p = in_tensor(c, i, "position", &st);
  if (st) return st;
  int64_t v = dflt;
  if (p) {
    if ((p->dtype != NBL_DT_INT32 && p->dtype != NBL_DT_INT64) || p->numel != 1)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "position must be one int32 or int64 value, got %lld of %s",
                      (long long)p->numel, nbl_dtype_name(p->dtype));
    v = nbl_rt_get_i64(p, 0);
  }
  int64_t r = v < 0 ? v + n : v;
  if (r < 0 || r > hi)
    return nbl_kerr(c, NBL_ERR_RUNTIME, "position %lld is out of range for a sequence of %lld elements", (long long)v,
                    (long long)n);
  *pos = r;
  return NBL_OK;
}

/* The element type a tensor must have to join sequence s (UNDEFINED: any). */
static nbl_status same_elem(nbl_kctx *c, nbl_dtype seq, const nbl_rt_tensor *t, const char *what) {
  if (seq != NBL_DT_UNDEFINED && t->dtype != seq)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "%s has element type %s, the sequence holds %s", what,
                    nbl_dtype_name(t->dtype), nbl_dtype_name(seq));
  return NBL_OK;
}

/* out = a new sequence of copies of n tensors xs[] (element type elem). */
static nbl_status seq_of_copies(nbl_kctx *c, nbl_dtype elem, int64_t n, const nbl_rt_tensor *const *xs,
                                nbl_rt_tensor *out) {
  nbl_status st = nbl_rt_seq_make(out, NBL_RT_SEQUENCE, elem, n);
  if (st) return nbl_kerr(c, st, "%s", nbl_last_error());
  nbl_rt_seq *q = out->data;
  for (int64_t i = 0; i < n; i++)
    if ((st = nbl_rt_copy(&q->items[i], xs[i]))) {
      nbl_rt_tensor_free(out);
      return nbl_kerr(c, st, "%s", nbl_last_error());
    }
  return NBL_OK;
}

/* The element pointers of sequence q with `skip` left out (-1: none) and
 * `add` inserted at `at` (NULL: nothing), into a new array (*n entries). */
static const nbl_rt_tensor **edited(const nbl_rt_seq *q, int64_t skip, const nbl_rt_tensor *add, int64_t at,
                                    int64_t *n) {
  const nbl_rt_tensor **v = malloc(sizeof *v * (size_t)(q->n + 2));
  if (!v) return NULL;
  int64_t k = 0;
  for (int64_t i = 0; i <= q->n; i++) {
    if (add && i == at) v[k++] = add;
    if (i < q->n && i != skip) v[k++] = &q->items[i];
  }
  *n = k;
  return v;
}

/* Output 0 = a new sequence of element type elem: copies of q's elements
 * with `skip` left out and `add` inserted at `at` (edited's arguments). */
static nbl_status out_edited(nbl_kctx *c, const nbl_rt_seq *q, int64_t skip, const nbl_rt_tensor *add, int64_t at,
                             nbl_dtype elem) {
  int64_t n;
  const nbl_rt_tensor **v = edited(q, skip, add, at, &n);
  if (!v) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  nbl_rt_tensor out;
  nbl_status st = seq_of_copies(c, elem, n, v, &out);
  free(v);
  return st ? st : nbl_kctx_move_out(c, 0, &out);
}

/* ------------------------------------------------------------------ kernels */
static nbl_status k_seq_empty(nbl_kctx *c) {
  int64_t dt = nbl_attr_int(c->node, "dtype", NBL_DT_FLOAT);
  if (dt != NBL_DT_STRING && nbl_dtype_bits((nbl_dtype)dt) == 0)
    return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "dtype %lld is not a tensor element type nibble holds", (long long)dt);
  nbl_rt_tensor v;
  nbl_status st = nbl_rt_seq_make(&v, NBL_RT_SEQUENCE, (nbl_dtype)dt, 0);
  if (st) return nbl_kerr(c, st, "%s", nbl_last_error());
  return nbl_kctx_move_out(c, 0, &v);
}

static nbl_status k_seq_construct(nbl_kctx *c) {
  if (c->n_in < 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "needs at least one input");
  nbl_status st;
  for (int i = 0; i < c->n_in; i++) {
    const nbl_rt_tensor *x = in_tensor(c, i, "inputs", &st);
    if (st) return st;
    if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", i);
    if ((st = same_elem(c, c->in[0]->dtype, x, "an input"))) return st;
  }
  nbl_rt_tensor v;
  if ((st = seq_of_copies(c, c->in[0]->dtype, c->n_in, c->in, &v))) return st;
  return nbl_kctx_move_out(c, 0, &v);
}

static nbl_status k_seq_insert(nbl_kctx *c) {
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st) return st;
  const nbl_rt_tensor *t = in_tensor(c, 1, "tensor", &st);
  if (st) return st;
  if (!t) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 'tensor' is missing");
  if ((st = same_elem(c, s->dtype, t, "the tensor"))) return st;
  int64_t at;
  if ((st = position(c, 2, q->n, q->n, q->n, &at))) return st;
  return out_edited(c, q, -1, t, at, t->dtype);
}

static nbl_status k_seq_at(nbl_kctx *c) {
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st) return st;
  if (c->n_in < 2 || !c->in[1]) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 'position' is missing");
  int64_t at;
  if ((st = position(c, 1, q->n, q->n - 1, 0, &at))) return st;
  return nbl_kctx_copy_out(c, 0, &q->items[at]);
}

static nbl_status k_seq_erase(nbl_kctx *c) {
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st) return st;
  int64_t at;
  if ((st = position(c, 1, q->n, q->n - 1, -1, &at))) return st;
  return out_edited(c, q, at, NULL, 0, s->dtype);
}

static nbl_status k_seq_length(nbl_kctx *c) {
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st || (st = nbl_kctx_alloc_out(c, 0, NBL_DT_INT64, 0, NULL))) return st;
  *(int64_t *)nbl_kctx_out(c, 0)->data = q->n;
  return NBL_OK;
}

/* SplitToSequence: split given (a scalar: parts of that many rows, the last
 * one shorter; a 1-D tensor: the parts' lengths), or not (parts of one
 * row, without the axis unless keepdims). */
static nbl_status k_split_to_seq(nbl_kctx *c) {
  nbl_status st;
  const nbl_rt_tensor *x = in_tensor(c, 0, "input", &st), *sp = st ? NULL : in_tensor(c, 1, "split", &st);
  if (st) return st;
  if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input 'input' is missing");
  int64_t axis_raw = nbl_attr_int(c->node, "axis", 0);
  int axis = nbl_norm_axis(axis_raw, x->rank);
  if (axis < 0)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for rank %d", (long long)axis_raw, x->rank);
  const int64_t dim = x->dims[axis];
  int keep = 1;
  int64_t n;
  int64_t *len = NULL;
  if (sp && (sp->dtype != NBL_DT_INT32 && sp->dtype != NBL_DT_INT64))
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split must be int32 or int64, got %s", nbl_dtype_name(sp->dtype));
  if (sp && sp->rank > 1) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split must be a scalar or 1-D, has rank %d", sp->rank);
  if (sp && sp->rank == 0) {
    const int64_t part = nbl_rt_get_i64(sp, 0);
    if (part <= 0) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split %lld must be positive", (long long)part);
    n = (dim + part - 1) / part;
    if (!(len = malloc(sizeof *len * (size_t)(n + 1)))) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t i = 0; i < n; i++) len[i] = dim - i * part < part ? dim - i * part : part;
  } else if (sp) {
    n = sp->numel;
    if (!(len = malloc(sizeof *len * (size_t)(n + 1)))) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    int64_t sum = 0;
    for (int64_t i = 0; i < n; i++) {
      len[i] = nbl_rt_get_i64(sp, i);
      if (len[i] < 0) {
        free(len);
        return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split[%lld] is negative", (long long)i);
      }
      sum += len[i];
    }
    if (sum != dim) {
      free(len);
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "split sizes sum to %lld, axis %d has %lld", (long long)sum, axis,
                      (long long)dim);
    }
  } else {
    n = dim;
    keep = nbl_attr_int(c->node, "keepdims", 1) != 0;
    if (!(len = malloc(sizeof *len * (size_t)(n + 1)))) return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
    for (int64_t i = 0; i < n; i++) len[i] = 1;
  }
  nbl_rt_tensor out;
  if (n > INT32_MAX || (st = nbl_rt_seq_make(&out, NBL_RT_SEQUENCE, x->dtype, n))) {
    free(len);
    return n > INT32_MAX ? nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%lld parts", (long long)n)
                         : nbl_kerr(c, st, "%s", nbl_last_error());
  }
  st = nbl_split_parts(c, x, axis, (int)n, len, keep, ((nbl_rt_seq *)out.data)->items);
  free(len);
  if (st) {
    nbl_rt_tensor_free(&out);
    return st;
  }
  return nbl_kctx_move_out(c, 0, &out);
}

/* ConcatFromSequence: the elements joined along axis, or (new_axis 1)
 * stacked along a new axis at that place (axis in [-r-1, r]). */
static nbl_status k_concat_from_seq(nbl_kctx *c) {
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st) return st;
  const nbl_attr *aa = nbl_node_attr(c->node, "axis");
  if (!aa) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'axis' is missing");
  if (q->n < 1) return nbl_kerr(c, NBL_ERR_RUNTIME, "the sequence is empty");
  if (q->n > INT32_MAX) return nbl_kerr(c, NBL_ERR_UNSUPPORTED, "%lld elements", (long long)q->n);
  const int stack = nbl_attr_int(c->node, "new_axis", 0) != 0;
  nbl_rt_tensor *views = calloc((size_t)q->n, sizeof *views);
  const nbl_rt_tensor **in = calloc((size_t)q->n, sizeof *in);
  if (!views || !in) {
    free(views);
    free(in);
    return nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  }
  for (int64_t i = 0; i < q->n && !st; i++) {
    views[i] = q->items[i];
    views[i].owns = 0;
    in[i] = &views[i];
    if (!stack) continue;
    const int r = views[i].rank, a = nbl_norm_axis(aa->i, r + 1);
    if (a < 0)
      st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "axis %lld is out of range for stacking rank %d", (long long)aa->i, r);
    else if (r + 1 > NBL_MAX_RANK)
      st = nbl_kerr(c, NBL_ERR_UNSUPPORTED, "stacking rank %d exceeds %d", r + 1, NBL_MAX_RANK);
    else { /* the element seen with a dim of 1 at the new axis */
      memmove(views[i].dims + a + 1, views[i].dims + a, sizeof(int64_t) * (size_t)(r - a));
      views[i].dims[a] = 1;
      views[i].rank = r + 1;
    }
  }
  if (!st) st = nbl_concat_out(c, (int)q->n, in, aa->i);
  free(views);
  free(in);
  return st;
}

/* SequenceMap: the body once per element of input 0; inputs that are
 * sequences give their element i (the same length as input 0), tensors
 * themselves; each body output is gathered into a sequence. */
static nbl_status k_seq_map(nbl_kctx *c) {
  const nbl_attr *ba = nbl_node_attr(c->node, "body");
  const nbl_graph *body = ba && ba->type == NBL_ATTR_GRAPH ? ba->g : NULL;
  if (!body) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "attribute 'body' is missing");
  const nbl_rt_tensor *s = NULL;
  const nbl_rt_seq *q = NULL;
  nbl_status st = in_seq(c, 0, "input_sequence", &s, &q);
  if (st) return st;
  const int nin = c->n_in, nout = c->n_out;
  if (body->n_inputs != nin || body->n_outputs != nout)
    return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "body has %d inputs and %d outputs, the node %d and %d", body->n_inputs,
                    body->n_outputs, nin, nout);
  for (int j = 1; j < nin; j++) {
    const nbl_rt_tensor *x = c->in[j];
    if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is missing", j);
    if (x->kind == NBL_RT_OPTIONAL) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d is an optional", j);
    if (x->kind == NBL_RT_SEQUENCE && nbl_rt_seq_of(x)->n != q->n)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input %d has %lld elements, input 0 has %lld", j,
                      (long long)nbl_rt_seq_of(x)->n, (long long)q->n);
  }
  nbl_rt_tensor *outs = calloc((size_t)nout + 1, sizeof *outs), *res = calloc((size_t)nout + 1, sizeof *res);
  nbl_rt_tensor **resp = calloc((size_t)nout + 1, sizeof *resp);
  const nbl_rt_tensor **ins = calloc((size_t)nin + 1, sizeof *ins);
  if (!outs || !res || !resp || !ins) st = nbl_kerr(c, NBL_ERR_OUT_OF_MEMORY, "out of memory");
  for (int k = 0; k < nout && !st; k++) {
    const nbl_type *dt = &body->values[body->outputs[k]].type;
    nbl_dtype el = dt->kind == NBL_TYPE_TENSOR ? dt->elem : NBL_DT_UNDEFINED;
    if ((st = nbl_rt_seq_make(&outs[k], NBL_RT_SEQUENCE, el, q->n))) st = nbl_kerr(c, st, "%s", nbl_last_error());
    resp[k] = &res[k];
  }
  for (int64_t i = 0; i < q->n && !st; i++) {
    for (int j = 0; j < nin; j++) ins[j] = c->in[j]->kind == NBL_RT_SEQUENCE ? &nbl_rt_seq_of(c->in[j])->items[i] : c->in[j];
    if ((st = nbl_kctx_run_subgraph(c, body, nin, ins, nout, resp))) break;
    for (int k = 0; k < nout; k++) {
      nbl_rt_seq *d = outs[k].data;
      if (!st && res[k].kind != NBL_RT_TENSOR)
        st = nbl_kerr(c, NBL_ERR_INVALID_MODEL, "body output %d is a %s, not a tensor", k, nbl_rt_kind_name(res[k].kind));
      else if (!st && outs[k].dtype != NBL_DT_UNDEFINED && res[k].dtype != outs[k].dtype)
        st = nbl_kerr(c, NBL_ERR_RUNTIME, "body output %d has element type %s, earlier ones %s", k,
                      nbl_dtype_name(res[k].dtype), nbl_dtype_name(outs[k].dtype));
      if (st) {
        nbl_rt_tensor_free(&res[k]);
        continue;
      }
      outs[k].dtype = res[k].dtype;
      if (!res[k].owns && (st = nbl_rt_copy(&d->items[i], &res[k]))) st = nbl_kerr(c, st, "%s", nbl_last_error());
      else if (res[k].owns) d->items[i] = res[k];
      memset(&res[k], 0, sizeof res[k]);
    }
  }
  for (int k = 0; k < nout && !st; k++) {
    if (outs[k].dtype == NBL_DT_UNDEFINED) outs[k].dtype = NBL_DT_FLOAT; /* no element, no declared type */
    st = nbl_kctx_move_out(c, k, &outs[k]);
  }
  if (outs)
    for (int k = 0; k < nout; k++) nbl_rt_tensor_free(&outs[k]);
  free(outs);
  free(res);
  free(resp);
  free(ins);
  return st;
}

/* The element type of a declared type (an optional's, a sequence's, a tensor's). */
static nbl_dtype type_elem(const nbl_type *t) {
  while (t && t->kind != NBL_TYPE_TENSOR) t = t->kind == NBL_TYPE_SEQUENCE || t->kind == NBL_TYPE_OPTIONAL ? t->inner : NULL;
  return t ? t->elem : NBL_DT_UNDEFINED;
}

/* Optional: the input wrapped (copied), or with none, an empty optional of
 * the attribute 'type'. */
static nbl_status k_optional(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  nbl_rt_tensor v;
  nbl_status st;
  if (x && x->kind == NBL_RT_OPTIONAL) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input is an optional already");
  if (!x) {
    const nbl_attr *ta = nbl_node_attr(c->node, "type");
    if (!ta || ta->type != NBL_ATTR_TYPE_PROTO || !ta->types)
      return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "no input and no attribute 'type'");
    if ((st = nbl_rt_seq_make(&v, NBL_RT_OPTIONAL, type_elem(ta->types), 0))) return nbl_kerr(c, st, "%s", nbl_last_error());
    return nbl_kctx_move_out(c, 0, &v);
  }
  if ((st = nbl_rt_seq_make(&v, NBL_RT_OPTIONAL, x->dtype, 1))) return nbl_kerr(c, st, "%s", nbl_last_error());
  if ((st = nbl_rt_copy(&((nbl_rt_seq *)v.data)->items[0], x))) {
    nbl_rt_tensor_free(&v);
    return nbl_kerr(c, st, "%s", nbl_last_error());
  }
  return nbl_kctx_move_out(c, 0, &v);
}

/* OptionalHasElement: whether the optional holds a value; a tensor or
 * sequence input holds one, an omitted input none. Opset 18 says so; before
 * it, ONNX Runtime already takes a value where an optional is declared as
 * the optional holding it (a Loop whose carried optional(sequence) comes
 * back from the body as a sequence, ONNX's test_loop16_seq_none), and so
 * does nibble, at every opset. */
static nbl_status k_opt_has(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  nbl_status st = nbl_kctx_alloc_out(c, 0, NBL_DT_BOOL, 0, NULL);
  if (st) return st;
  *(uint8_t *)nbl_kctx_out(c, 0)->data = x && (x->kind != NBL_RT_OPTIONAL || nbl_rt_seq_of(x)->n > 0);
  return NBL_OK;
}

/* OptionalGetElement: the optional's value (an error when empty); a tensor
 * or sequence input passes through (see k_opt_has). */
static nbl_status k_opt_get(nbl_kctx *c) {
  const nbl_rt_tensor *x = c->n_in > 0 ? c->in[0] : NULL;
  if (!x) return nbl_kerr(c, NBL_ERR_INVALID_MODEL, "input is missing");
  if (x->kind != NBL_RT_OPTIONAL) return nbl_kctx_copy_out(c, 0, x);
  const nbl_rt_seq *q = nbl_rt_seq_of(x);
  if (q->n < 1) return nbl_kerr(c, NBL_ERR_RUNTIME, "the optional is empty");
  return nbl_kctx_copy_out(c, 0, &q->items[0]);
}

/* ------------------------------------------------------------------ shape rules */

/* The tensor type of the elements of input i (a sequence), unknown if not known. */
static void elem_shp(nbl_shape_ctx *c, int i, nbl_shp *s) {
  const nbl_type *t = nbl_shp_in_type(c, i);
  nbl_shp_from_type(t && t->kind == NBL_TYPE_SEQUENCE ? t->inner : NULL, s);
}

/* s with what it and o disagree on made unknown (dtype kept when one is unknown). */
static void widen(nbl_shp *s, const nbl_shp *o) {
  if (!s->dt) s->dt = o->dt;
  if (s->rank != o->rank) {
    s->rank = -1;
    return;
  }
  for (int d = 0; d < s->rank; d++)
    if (!nbl_dim_same(s->d[d], o->d[d])) s->d[d] = nbl_dim_unk();
}

static nbl_status shape_seq_empty(nbl_shape_ctx *c) {
  nbl_shp e;
  nbl_shp_unknown(&e, (nbl_dtype)nbl_attr_int(c->node, "dtype", NBL_DT_FLOAT));
  return nbl_shp_set_seq(c, 0, NBL_TYPE_SEQUENCE, 0, &e);
}

static nbl_status shape_seq_construct(nbl_shape_ctx *c) {
  nbl_shp e, o;
  nbl_shp_in(c, 0, &e);
  for (int i = 1; i < c->node->n_inputs; i++) {
    nbl_shp_in(c, i, &o);
    widen(&e, &o);
  }
  return nbl_shp_set_seq(c, 0, NBL_TYPE_SEQUENCE, 0, &e);
}

static nbl_status shape_seq_insert(nbl_shape_ctx *c) {
  nbl_shp e, o;
  elem_shp(c, 0, &e);
  nbl_shp_in(c, 1, &o);
  if (e.dt || e.rank >= 0) widen(&e, &o);
  else e = o;
  return nbl_shp_set_seq(c, 0, NBL_TYPE_SEQUENCE, 0, &e);
}

static nbl_status shape_seq_same(nbl_shape_ctx *c) { return nbl_shp_set_type(c, 0, nbl_shp_in_type(c, 0)); }

static nbl_status shape_seq_at(nbl_shape_ctx *c) {
  nbl_shp e;
  elem_shp(c, 0, &e);
  return nbl_shp_set(c, 0, &e);
}

static nbl_status shape_seq_length(nbl_shape_ctx *c) { return nbl_shp_set_dt(c, 0, NBL_DT_INT64, 0); }

static nbl_status shape_split_to_seq(nbl_shape_ctx *c) {
  nbl_shp x;
  nbl_shp_in(c, 0, &x);
  if (x.rank >= 0) {
    int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", 0), x.rank);
    if (a < 0) return nbl_shp_err(c, "axis out of range for rank %d", x.rank);
    if (!nbl_shp_has_in(c, 1) && !nbl_attr_int(c->node, "keepdims", 1)) {
      for (int d = a; d + 1 < x.rank; d++) x.d[d] = x.d[d + 1];
      x.rank--;
    } else {
      x.d[a] = nbl_shp_has_in(c, 1) ? nbl_dim_unk() : nbl_dim_val(1);
    }
  }
  return nbl_shp_set_seq(c, 0, NBL_TYPE_SEQUENCE, 0, &x);
}

static nbl_status shape_concat_from_seq(nbl_shape_ctx *c) {
  nbl_shp e;
  elem_shp(c, 0, &e);
  if (e.rank >= 0) {
    const int stack = nbl_attr_int(c->node, "new_axis", 0) != 0, r = e.rank + stack;
    int a = nbl_norm_axis(nbl_attr_int(c->node, "axis", 0), r);
    if (a < 0 || r > NBL_SHP_MAXR) {
      e.rank = -1;
    } else {
      if (stack) memmove(e.d + a + 1, e.d + a, sizeof(nbl_dim) * (size_t)(e.rank - a));
      e.rank = r;
      e.d[a] = nbl_dim_unk();
    }
  }
  return nbl_shp_set(c, 0, &e);
}

static nbl_status shape_seq_map(nbl_shape_ctx *c) {
  const nbl_attr *ba = nbl_node_attr(c->node, "body");
  nbl_graph *body = ba && ba->type == NBL_ATTR_GRAPH ? ba->g : NULL;
  if (body)
    for (int j = 0; j < body->n_inputs && j < c->node->n_inputs; j++) {
      const nbl_type *t = nbl_shp_in_type(c, j);
      nbl_shp s;
      nbl_shp_from_type(t && t->kind == NBL_TYPE_SEQUENCE ? t->inner : t, &s);
      nbl_status st = nbl_shp_seed(c, body, body->inputs[j], &s);
      if (st) return st;
    }
  nbl_status st = nbl_shp_subgraphs(c);
  for (int k = 0; !st && body && k < c->node->n_outputs && k < body->n_outputs; k++) {
    nbl_shp s;
    nbl_shp_from_type(&body->values[body->outputs[k]].type, &s);
    st = nbl_shp_set_seq(c, k, NBL_TYPE_SEQUENCE, 0, &s);
  }
  return st;
}

static nbl_status shape_optional(nbl_shape_ctx *c) {
  const nbl_type *t = nbl_shp_in_type(c, 0);
  if (!nbl_shp_has_in(c, 0)) {
    const nbl_attr *ta = nbl_node_attr(c->node, "type");
    t = ta && ta->type == NBL_ATTR_TYPE_PROTO ? ta->types : NULL;
  }
  if (!t) return NBL_OK;
  nbl_type o;
  memset(&o, 0, sizeof o);
  o.kind = NBL_TYPE_OPTIONAL;
  o.rank = -1;
  o.inner = (nbl_type *)t;
  return nbl_shp_set_type(c, 0, &o);
}

static nbl_status shape_opt_has(nbl_shape_ctx *c) { return nbl_shp_set_dt(c, 0, NBL_DT_BOOL, 0); }

static nbl_status shape_opt_get(nbl_shape_ctx *c) {
  const nbl_type *t = nbl_shp_in_type(c, 0);
  return nbl_shp_set_type(c, 0, t && t->kind == NBL_TYPE_OPTIONAL ? t->inner : t);
}

/* ------------------------------------------------------------------ table */

#define NO_GRAD_SEQ "sequence and optional values have no gradient rules"

const nbl_op_def nbl_ops_sequence[] = {
    NBL_OP("SequenceEmpty", 11, .ref = k_seq_empty, .shape = shape_seq_empty, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceConstruct", 11, .ref = k_seq_construct, .shape = shape_seq_construct, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceInsert", 11, .ref = k_seq_insert, .shape = shape_seq_insert, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceAt", 11, .ref = k_seq_at, .shape = shape_seq_at, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceErase", 11, .ref = k_seq_erase, .shape = shape_seq_same, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceLength", 11, .ref = k_seq_length, .shape = shape_seq_length, .stable_since = 11,
        .no_grad = NBL_NO_GRAD_INT, .flags = NBL_OPF_VALUES),
    NBL_OP("SplitToSequence", 11, .ref = k_split_to_seq, .shape = shape_split_to_seq, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("ConcatFromSequence", 11, .ref = k_concat_from_seq, .shape = shape_concat_from_seq, .stable_since = 11,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("SequenceMap", 17, .ref = k_seq_map, .shape = shape_seq_map, .stable_since = 17,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("Optional", 15, .ref = k_optional, .shape = shape_optional, .stable_since = 15,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
    NBL_OP("OptionalHasElement", 15, .ref = k_opt_has, .shape = shape_opt_has, .stable_since = 15,
        .no_grad = NBL_NO_GRAD_BOOL, .flags = NBL_OPF_VALUES),
    NBL_OP("OptionalGetElement", 15, .ref = k_opt_get, .shape = shape_opt_get, .stable_since = 15,
        .no_grad = NO_GRAD_SEQ, .flags = NBL_OPF_VALUES),
};
const size_t nbl_ops_sequence_count = sizeof nbl_ops_sequence / sizeof nbl_ops_sequence[0];
