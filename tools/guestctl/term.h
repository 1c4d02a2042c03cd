/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The local terminal for interactive sessions (shell, exec --tty). term_raw() saves the
 * terminal's state once and puts it in raw mode; the saved state comes back on every way out:
 * term_restore() (also registered with atexit), and handlers for the signals that would
 * otherwise end guestctl without running atexit (they restore, then re-raise). Signals that the
 * session handles itself (INT, TERM, HUP, QUIT, WINCH, …) are blocked and taken by its signal
 * thread, which ends through exit() and so through atexit as well.
 */
#pragma once

#include <stdbool.h>

/* Puts `fd` (a terminal) into raw mode, saving its state first. Returns 0 or -errno. */
int term_raw(int fd);
/* Puts the terminal back into raw mode after term_restore() (after SIGCONT). */
int term_reraw(void);
/* Restores the saved state, if any. Async-signal-safe; idempotent. */
void term_restore(void);
/* True between term_raw() and term_restore(). */
bool term_is_raw(void);
/* The window size of `fd`; false when it is not a terminal. */
bool term_size(int fd, unsigned *ret_cols, unsigned *ret_rows);
