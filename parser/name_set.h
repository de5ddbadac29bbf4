/*
 * name_set.h - a string set (open addressing, FNV-1a) for the names a graph
 * defines: the loader's set of a graph proto's value names (load.c) and the
 * saver's set of node names (save.c, which keeps them unique). Internal to
 * parser/. The set does not own its keys.
 */
#ifndef NBL_PARSER_NAME_SET_H
#define NBL_PARSER_NAME_SET_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct name_set {
  const char **keys;
  size_t cap; /* a power of two, at least twice the keys ever added */
} name_set;

/* Room for n keys; false when out of memory. */
static inline bool name_set_init(name_set *s, size_t n) {
  s->cap = 16;
  while (s->cap < 2 * n) s->cap *= 2;
  s->keys = calloc(s->cap, sizeof(char *));
  return s->keys != NULL;
}

static inline void name_set_free(name_set *s) {
  free(s->keys);
  s->keys = NULL;
  s->cap = 0;
}

static inline uint64_t name_set_hash(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

static inline bool name_set_has(const name_set *s, const char *k) {
  if (!s->cap) return false;
  size_t i = (size_t)name_set_hash(k) & (s->cap - 1);
  while (s->keys[i]) {
    if (strcmp(s->keys[i], k) == 0) return true;
    i = (i + 1) & (s->cap - 1);
  }
  return false;
}

/* Adds k (NULL and "" are not names); the caller sized the set for it. */
static inline void name_set_add(name_set *s, const char *k) {
  if (!k || !*k || name_set_has(s, k)) return;
  size_t i = (size_t)name_set_hash(k) & (s->cap - 1);
  while (s->keys[i]) i = (i + 1) & (s->cap - 1);
  s->keys[i] = k;
}

/* A graph's node names (ONNX Runtime refuses a graph with two nodes of one
 * name, which models can bring and passes can make): a name already in
 * `seen` is repeated, and becomes the first free name_k (k = 1, 2, ...)
 * among `all` (every node name of the graph) and `seen`, written to buf
 * (len >= strlen(name) + 24). The one rule of the loader, which gives the
 * IR unique names, and the writer, which keeps a pass's repeats out of the
 * file. */
static inline bool name_set_repeated(const name_set *seen, const char *name) {
  return name && *name && name_set_has(seen, name);
}
static inline void name_set_suffix(const name_set *all, const name_set *seen, const char *name, char *buf,
                                   size_t len) {
  for (unsigned k = 1;; k++) {
    snprintf(buf, len, "%s_%u", name, k);
    if (!name_set_has(all, buf) && !name_set_has(seen, buf)) return;
  }
}

#endif
