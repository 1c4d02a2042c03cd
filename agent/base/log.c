/* SPDX-License-Identifier: Apache-2.0 */
#include "base/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* One log line is formatted into a stack buffer of this size; longer messages are truncated. */
#define LOG_LINE_MAX 2048

static enum log_level current_level = LOG_LVL_INFO;
static enum log_format current_format = LOG_FORMAT_TEXT;

static const char *const level_names[] = {
        [LOG_LVL_ERROR] = "error",
        [LOG_LVL_WARN] = "warn",
        [LOG_LVL_INFO] = "info",
        [LOG_LVL_DEBUG] = "debug",
};

void log_setup(enum log_level level, enum log_format format)
{
    current_level = level;
    current_format = format;
}

enum log_level log_get_level(void)
{
    return current_level;
}

int log_level_from_string(const char *s, enum log_level *ret_level)
{
    for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
        if (streq(s, level_names[i])) {
            *ret_level = (enum log_level) i;
            return 0;
        }
    if (streq(s, "warning")) {
        *ret_level = LOG_LVL_WARN;
        return 0;
    }
    return -EINVAL;
}

int log_format_from_string(const char *s, enum log_format *ret_format)
{
    if (streq(s, "text"))
        *ret_format = LOG_FORMAT_TEXT;
    else if (streq(s, "json"))
        *ret_format = LOG_FORMAT_JSON;
    else
        return -EINVAL;
    return 0;
}

/* Appends `s` JSON-escaped to out[*pos..cap). */
static void json_escape_into(char *out, size_t cap, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    for (; *s && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char) *s;
        if (c == '"' || c == '\\') {
            out[(*pos)++] = '\\';
            out[(*pos)++] = (char) c;
        } else if (c < 0x20) {
            out[(*pos)++] = '\\';
            out[(*pos)++] = 'u';
            out[(*pos)++] = '0';
            out[(*pos)++] = '0';
            out[(*pos)++] = hex[c >> 4];
            out[(*pos)++] = hex[c & 15];
        } else {
            out[(*pos)++] = (char) c;
        }
    }
}

void log_write(enum log_level level, const char *file, int line, const char *fmt, ...)
{
    int saved_errno = errno;
    char msg[LOG_LINE_MAX];
    char out[LOG_LINE_MAX * 2];
    struct timespec ts;
    struct tm tm;
    char when[40];
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    (void) vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);

    (void) clock_gettime(CLOCK_REALTIME, &ts);
    (void) gmtime_r(&ts.tv_sec, &tm);
    n = strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    (void) snprintf(when + n, sizeof(when) - n, ".%03ldZ", ts.tv_nsec / 1000000);

    const char *base = strrchr(file, '/');
    base = base ? base + 1 : file;

    if (current_format == LOG_FORMAT_JSON) {
        size_t pos = 0;
        pos += (size_t) snprintf(out, sizeof(out), "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":\"",
                                 when, level_names[level]);
        json_escape_into(out, sizeof(out), &pos, msg);
        pos += (size_t) snprintf(out + pos, sizeof(out) - pos, "\",\"src\":\"%s:%d\"}\n", base,
                                 line);
        n = MIN(pos, sizeof(out) - 1);
    } else {
        int w;
        if (level == LOG_LVL_DEBUG) /* Debug lines carry their source location. */
            w = snprintf(out, sizeof(out), "%s %-5s %s (%s:%d)\n", when, level_names[level], msg,
                         base, line);
        else
            w = snprintf(out, sizeof(out), "%s %-5s %s\n", when, level_names[level], msg);
        n = w < 0 ? 0 : MIN((size_t) w, sizeof(out) - 1);
    }
    /* One write per line so that concurrent writers (children share stderr) do not interleave. */
    (void) !write(STDERR_FILENO, out, n);
    errno = saved_errno;
}
