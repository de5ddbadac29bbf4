/* commands.h - one function per `nibble` subcommand; each returns the exit
 * status of DESIGN.md: 0 success, 1 a run failed or outputs mismatched,
 * 2 bad usage or bad input. argv[0] is the subcommand name. */
#ifndef NBL_COMMANDS_H
#define NBL_COMMANDS_H

int nbl_cmd_info(int argc, char **argv);    /* cmd_model.c */
int nbl_cmd_dump(int argc, char **argv);    /* cmd_model.c */
int nbl_cmd_convert(int argc, char **argv); /* cmd_convert.c */
int nbl_cmd_passes(int argc, char **argv);  /* cmd_convert.c */
int nbl_cmd_run(int argc, char **argv);     /* cmd_run.c */
int nbl_cmd_test(int argc, char **argv);    /* cmd_run.c */
int nbl_cmd_diff(int argc, char **argv);    /* cmd_diff.c */
int nbl_cmd_compare(int argc, char **argv); /* cmd_compare.c */
int nbl_cmd_ops(int argc, char **argv);     /* cmd_ops.c */

#endif
