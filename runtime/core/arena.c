/* arena.c - one arena for the main graph's intermediates. The first run
 * with given input shapes records each output slot's size and lifetime
 * (the step that writes it, the step after which it is dead); the slots are
 * then laid out in one block, biggest first, at the lowest offset that does
 * not overlap a slot alive at the same time, and the following runs with
 * the same shapes take their outputs from it. See engine.h. */
#include <stdlib.h>
#include <string.h>

#include "runtime/core/engine.h"

#define ARENA_ALIGN 64

nbl_status nbl_out_arena_init(nbl_out_arena *a, int n_slots) {
  size_t ns = (size_t)n_slots + 1;
  a->slot_size = calloc(ns, sizeof(size_t));
  a->slot_start = calloc(ns, sizeof(int));
  a->slot_end = calloc(ns, sizeof(int));
  a->slot_off = calloc(ns, sizeof(size_t));
  return a->slot_size && a->slot_start && a->slot_end && a->slot_off ? NBL_OK
                                                                     : NBL_ERR_OUT_OF_MEMORY;
}

void nbl_out_arena_free(nbl_out_arena *a) {
  free(a->sig);
  free(a->slot_size);
  free(a->slot_start);
  free(a->slot_end);
  free(a->slot_off);
  free(a->arena);
  memset(a, 0, sizeof *a);
}

static int64_t *input_signature(nbl_engine *e, int *len) {
  const nbl_graph *g = e->g;
  int n = 0;
  for (int i = 0; i < g->n_inputs; i++) n += 2 + NBL_MAX_RANK;
  int64_t *sig = calloc((size_t)(n ? n : 1), sizeof(int64_t));
  if (!sig) return NULL;
  int k = 0;
  for (int i = 0; i < g->n_inputs; i++) {
    nbl_id v = g->inputs[i];
    const nbl_rt_tensor *t = e->set[v] ? &e->vals[v] : NULL;
    sig[k++] = t ? (int64_t)t->dtype : -1;
    sig[k++] = t ? t->rank : -1;
    for (int d = 0; d < NBL_MAX_RANK; d++) sig[k++] = t && d < t->rank ? t->dims[d] : -1;
  }
  *len = n;
  return sig;
}

typedef struct slot_item {
  int slot;
  size_t size;
} slot_item;

static int cmp_item(const void *a, const void *b) {
  const slot_item *x = a, *y = b;
  if (x->size != y->size) return x->size < y->size ? 1 : -1;
  return x->slot - y->slot;
}

/* Lay out the recorded slots in one arena: biggest first, lowest offset that
 * does not overlap any placed slot alive at the same time. */
static void build_arena(nbl_engine *e) {
  nbl_out_arena *a = &e->ar;
  int ns = e->plans[0]->n_slots;
  slot_item *items = malloc(sizeof(slot_item) * (size_t)(ns ? ns : 1));
  int *placed = malloc(sizeof(int) * (size_t)(ns ? ns : 1));
  free(a->arena);
  a->arena = NULL;
  a->arena_bytes = 0;
  if (!items || !placed) {
    free(items);
    free(placed);
    return;
  }
  int n = 0;
  for (int i = 0; i < ns; i++)
    if (a->slot_size[i])
      items[n++] = (slot_item){i, (a->slot_size[i] + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1)};
  qsort(items, (size_t)n, sizeof *items, cmp_item);
  size_t total = 0;
  int np = 0;
  for (int i = 0; i < n; i++) {
    int s = items[i].slot;
    size_t off = 0;
    for (;;) {
      int moved = 0;
      for (int j = 0; j < np; j++) {
        int o = placed[j];
        if (a->slot_start[o] > a->slot_end[s] || a->slot_start[s] > a->slot_end[o]) continue;
        size_t osz = (a->slot_size[o] + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
        if (off < a->slot_off[o] + osz && a->slot_off[o] < off + items[i].size) {
          off = a->slot_off[o] + osz;
          moved = 1;
        }
      }
      if (!moved) break;
    }
    a->slot_off[s] = off;
    placed[np++] = s;
    if (off + items[i].size > total) total = off + items[i].size;
  }
  free(items);
  free(placed);
  if (total) {
    a->arena = aligned_alloc(ARENA_ALIGN, total);
    if (a->arena) {
      a->arena_bytes = total;
      memset(a->arena, 0xa5, total); /* not zero: kernels must not rely on zeroed outputs */
    }
  }
  e->stats.plans++;
}

nbl_status nbl_out_arena_begin_run(nbl_engine *e) {
  nbl_out_arena *a = &e->ar;
  int len = 0;
  int64_t *sig = input_signature(e, &len);
  if (!sig) return nbl_errorf(NBL_ERR_OUT_OF_MEMORY, "out of memory");
  if (!e->no_arena && a->sig && len == a->sig_len &&
      memcmp(sig, a->sig, sizeof(int64_t) * (size_t)len) == 0 && a->arena) {
    a->mode = 1;
    free(sig);
  } else {
    free(a->sig);
    a->sig = sig;
    a->sig_len = len;
    a->mode = 0;
    free(a->arena);
    a->arena = NULL;
    a->arena_bytes = 0;
    int ns = e->plans[0]->n_slots;
    memset(a->slot_size, 0, sizeof(size_t) * (size_t)(ns + 1));
  }
  return NBL_OK;
}

void nbl_out_arena_end_run(nbl_engine *e) {
  if (e->ar.mode == 0 && !e->no_arena) build_arena(e);
}

void nbl_out_arena_forget(nbl_engine *e) {
  free(e->ar.sig);
  e->ar.sig = NULL;
}

int nbl_out_arena_take(nbl_engine *e, int slot, int step, int last_use, nbl_rt_tensor *t,
                   nbl_dtype dt, int rank, const int64_t *dims, size_t nb) {
  nbl_out_arena *a = &e->ar;
  if (a->mode == 1 && a->arena && nb <= a->slot_size[slot] && nb > 0) {
    t->dtype = dt;
    t->rank = rank;
    for (int d = 0; d < rank; d++) t->dims[d] = dims[d];
    t->numel = nbl_shape_numel(rank, dims);
    t->kind = NBL_RT_TENSOR;
    t->data = a->arena + a->slot_off[slot];
    t->nbytes = nb;
    t->owns = 0;
    e->stats.arena_hits++;
    return 1;
  }
  if (a->mode == 0 && nb > 0) {
    if (nb > a->slot_size[slot]) a->slot_size[slot] = nb;
    a->slot_start[slot] = step;
    a->slot_end[slot] = last_use < step ? step : last_use;
  }
  return 0;
}
