/* ck_elem.h - Check assertions for loops over elements.
 *
 * Every ck_assert* that passes records a checkpoint (Check's mark_point: a
 * message written to the runner, so that a crash can be placed after the
 * last check that passed). In a loop over the elements of a tensor that is a
 * write per element: 11 million of them in test_ops_transformer_fast, where
 * the messages, not the kernels, were most of the time, and more so under
 * the sanitizers, which intercept every write. These macros check the same
 * condition and, when it fails, fail through the Check macro itself (same
 * message, same expression text); when it holds they record nothing. Use
 * them for per-element checks; everything else keeps the plain macros.
 * The condition is evaluated again on failure: no side effects in it. */
#ifndef NBL_TEST_CK_ELEM_H
#define NBL_TEST_CK_ELEM_H

#include <check.h>
#include <stdint.h>

#define ck_elem(expr)                                                                             \
  do {                                                                                            \
    if (!(expr)) ck_assert(expr);                                                                 \
  } while (0)

#define ck_elem_msg(expr, ...)                                                                    \
  do {                                                                                            \
    if (!(expr)) ck_assert_msg(expr, __VA_ARGS__);                                                \
  } while (0)

#define ck_elem_int_eq(a, b)                                                                      \
  do {                                                                                            \
    if ((intmax_t)(a) != (intmax_t)(b)) ck_assert_int_eq(a, b);                                   \
  } while (0)

#endif
