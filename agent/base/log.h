/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Levelled, structured logging to stderr (the console as PID 1), as text or JSON lines.
 * Secrets never reach a log call: callers pass routes without query strings and never pass
 * tokens, signatures or environment values.
 */
#pragma once

#include <stdbool.h>

#include "base/macro.h"

enum log_level {
    LOG_LVL_ERROR = 0,
    LOG_LVL_WARN,
    LOG_LVL_INFO,
    LOG_LVL_DEBUG,
};

enum log_format {
    LOG_FORMAT_TEXT = 0,
    LOG_FORMAT_JSON,
};

void log_setup(enum log_level level, enum log_format format);
enum log_level log_get_level(void);
/* Parses "error", "warn", "info", "debug". Returns -EINVAL for anything else. */
int log_level_from_string(const char *s, enum log_level *ret_level);
int log_format_from_string(const char *s, enum log_format *ret_format);

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
        _printf_(4, 5);

#define log_at(lvl, ...)                                       \
    do {                                                       \
        if ((lvl) <= log_get_level())                          \
            log_write((lvl), __FILE__, __LINE__, __VA_ARGS__); \
    } while (0)

#define log_error(...) log_at(LOG_LVL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_at(LOG_LVL_WARN, __VA_ARGS__)
#define log_info(...)  log_at(LOG_LVL_INFO, __VA_ARGS__)
#define log_debug(...) log_at(LOG_LVL_DEBUG, __VA_ARGS__)
