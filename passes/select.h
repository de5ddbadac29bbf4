/*
 * select.h - which layers a quantization pass works on (passes/select.c),
 * shared by quantize-int4 and quantize-ternary so both read the options
 * ops / include / exclude the same way.
 */
#ifndef NBL_PASSES_SELECT_H
#define NBL_PASSES_SELECT_H

#include "pass.h"

/* A growable ", "-separated text list (for the passes' summary lines). */
typedef struct nbl_textlist {
  char *s;
  size_t n, cap;
} nbl_textlist;
/* Append one item formatted printf-style (at most 699 bytes); on OOM the
 * item is dropped (the list is only a log). */
void nbl_textlist_add(nbl_textlist *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 if `word` is one of the items of `list` (items separated by ',', ';',
 * ':', '|' or ' '); glob: items are fnmatch patterns. */
int nbl_list_has(const char *list, const char *word, int glob);

/* A node's name for the summary lines: its name, or for an unnamed node its
 * op and first output ("Conv -> 'c'"). Returns buf (len >= 32). */
const char *nbl_node_label(const nbl_graph *g, const nbl_node *n, char *buf, size_t len);

/* The layers: live default-domain nodes of the main graph whose op type is in
 * `ops`, whose name matches a glob of `include` (when not empty) and none of
 * `exclude`, and for which skip(g, node) gives no reason (NULL), in
 * topological order. *layers (malloc'd, the caller frees) gets their ids;
 * the others go to `skipped` as "label (reason)". A weight (input 1) that
 * nodes compute from constants only (a Constant node, a Transpose of an
 * initializer: exporters that do not fold write weights so) is folded into
 * an initializer first, as fold-constants folds it, so that it counts as
 * the constant it is. Returns the count, or -1 with the error set (a cycle,
 * out of memory). */
int nbl_select_layers(nbl_graph *g, const char *ops, const char *include, const char *exclude,
                      const char *(*skip)(const nbl_graph *g, const nbl_node *n), nbl_id **layers,
                      nbl_textlist *skipped);

#endif /* NBL_PASSES_SELECT_H */
