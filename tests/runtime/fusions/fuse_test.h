/* fuse_test.h - what the fusion tests share: the text of a session's
 * profile, where each step that ran shows under its op (fused or not).
 * Header-only (static inline; Check's assertions on failure). */
#ifndef NBL_FUSE_TEST_H
#define NBL_FUSE_TEST_H

#include <check.h>
#include <stdio.h>

#include "nibble.h"

/* nbl_session_print_profile(s, ..., 0) as a string (malloc'ed). */
static inline char *ft_profile(const nbl_session *s) {
  char *text = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&text, &len);
  ck_assert_ptr_nonnull(f);
  ck_assert(nbl_session_print_profile(s, f, 0) == NBL_OK);
  fclose(f);
  return text;
}

#endif
