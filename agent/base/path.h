/* SPDX-License-Identifier: Apache-2.0 */
/* envd's path rules: relative paths and "~" resolve against the user's home; results are
 * cleaned lexically (Go's filepath.Clean). */
#pragma once

/* Longest path accepted from a client. */
#define PATH_MAX_BYTES 4096

/*
 * Expands `p` for a user whose home is `home`: "~" and "~/x" → home-based, absolute paths kept,
 * relative paths joined to home; then cleaned. "~other" → -EINVAL (envd: "cannot expand
 * user-specific home dir"). An empty path → -ENOENT (callers pick their default). Returns 0
 * with a malloc'd result, -ENAMETOOLONG past PATH_MAX_BYTES.
 */
int path_expand(const char *p, const char *home, char **ret);
/* Lexical clean: collapses "//", "." and ".." (never above "/"); "" → ".". Returns malloc'd. */
char *path_clean(const char *p);
