/* fuse_pad_pool.c - the pad-pool fusion: an AveragePool (floor mode,
 * explicit pads, opset >= 7) that counts its padding or has none, whose input is
 * a zero Pad that only it reads (nbl_fuse_find_pad) runs as that
 * AveragePool with the Pad's pads added to its own, reading the Pad's
 * input: no padded copy of the tensor is made. PyTorch exports
 * avg_pool2d(padding=p) at opset >= 11 as Pad -> AveragePool (Inception,
 * for one). The windows sum the same elements (the zeros read either way)
 * and divide by the same kernel size. Not for MaxPool: a padded zero can
 * be a window's maximum where the pool's own padding never is. See fuse.h;
 * NBL_NO_FUSION=pad-pool turns it off.
 *
 * The fused node is the AveragePool (op type and kernel its own, from the
 * op table) with input 0 the Pad's input, the merged pads and
 * count_include_pad = 1.
 */
#include <stdlib.h>
#include <string.h>

#include "runtime/fusions/fuse.h"

typedef struct pp_fused {
  nbl_node node;
  nbl_attr *attrs; /* the pool's attributes, pads merged */
  nbl_id in[1];
  int64_t pads[2 * NBL_MAX_RANK];
} pp_fused;

static pp_fused *try_fuse(const nbl_fusion_env *env, nbl_id id, nbl_id *pad) {
  const nbl_graph *g = env->g;
  const nbl_node *A = &g->nodes[id];
  int64_t opset = nbl_model_opset(env->m, "");
  if (opset == 0) opset = nbl_model_opset(env->m, "ai.onnx");
  if (!nbl_fuse_is_op(A, "", "AveragePool") || A->n_inputs != 1 || A->inputs[0] == NBL_NONE ||
      opset < 7 || nbl_attr_int(A, "ceil_mode", 0) != 0)
    return NULL;
  const char *ap = nbl_attr_string(A, "auto_pad", "NOTSET");
  int64_t pads[2 * NBL_MAX_RANK];
  int ns, cnt;
  if ((strcmp(ap, "NOTSET") && *ap) || !nbl_fuse_find_pad(env->m, g, A->inputs[0], id, pad, &ns, pads))
    return NULL;
  const int64_t *own = nbl_attr_ints(A, "pads", &cnt);
  if (own && cnt != 2 * ns) return NULL;
  /* the pool counts its own padding, or has none (PyTorch's export: pads 0,
   * count_include_pad absent): every window then divides by the kernel size */
  int own_pad = 0;
  for (int i = 0; own && i < 2 * ns; i++) own_pad |= own[i] != 0;
  if (own_pad && nbl_attr_int(A, "count_include_pad", 0) != 1) return NULL;
  const int64_t *ks = nbl_attr_ints(A, "kernel_shape", &cnt);
  if (!ks || cnt != ns) return NULL;
  pp_fused *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->attrs = calloc((size_t)A->n_attrs + 2, sizeof(nbl_attr));
  if (!f->attrs) {
    free(f);
    return NULL;
  }
  for (int i = 0; i < 2 * ns; i++) f->pads[i] = pads[i] + (own ? own[i] : 0);
  int na = 0;
  for (int a = 0; a < A->n_attrs; a++) {
    if (!strcmp(A->attrs[a].name, "count_include_pad")) continue;
    f->attrs[na] = A->attrs[a];
    if (!strcmp(A->attrs[a].name, "pads")) f->attrs[na].ints = f->pads;
    na++;
  }
  if (!own) f->attrs[na++] = (nbl_attr){.name = "pads", .type = NBL_ATTR_INTS, .n = 2 * ns, .ints = f->pads};
  f->attrs[na++] = (nbl_attr){.name = "count_include_pad", .type = NBL_ATTR_INT, .i = 1};
  f->node = *A;
  f->node.attrs = f->attrs;
  f->node.n_attrs = na;
  f->in[0] = g->nodes[*pad].inputs[0];
  f->node.inputs = f->in;
  return f;
}

nbl_status nbl_fuse_pad_pool_plan(const nbl_fusion_env *env, nbl_id *order, int *n, void **state) {
  if (nbl_fuse_plan_skip(env, state)) return NBL_OK; /* a value callback sees the Pad's output */
  nbl_fuse_state *fu;
  unsigned char *drop;
  nbl_status st = nbl_fuse_plan_begin(env->g, order, *n, 1, &fu, &drop, NULL);
  if (st != NBL_OK) return st;
  int any = 0;
  for (int s = 0; s < *n; s++) {
    nbl_id id = order[s], pad;
    if (drop[id] || env->taken(env, id)) continue;
    pp_fused *f = try_fuse(env, id, &pad);
    if (!f) continue;
    if (env->taken(env, pad) || drop[pad]) {
      free(f->attrs);
      free(f);
      continue;
    }
    fu->by_node[id] = f;
    drop[pad] = 1;
    any = 1;
  }
  nbl_fuse_plan_finish(order, n, drop, any, fu, nbl_fuse_state_free, state);
  return NBL_OK;
}
