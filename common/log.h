/*
 * Structured logging: one JSON object per line on standard error (or a file),
 * with level, time, module, message and the ids involved. Safe to call from
 * any thread: each line is formatted into a private buffer and written with
 * a single write(2).
 */
#ifndef PODIUM_COMMON_LOG_H
#define PODIUM_COMMON_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Ids attached to a line; NULL members are left out of the output. */
struct log_ids {
    const char *stream;
    const char *shard;
    const char *seq;
    const char *race;
    const char *topic;
};

/* Lines above this level are skipped before their arguments are formatted. */
extern int log_max_level;

void log_set_level(enum log_level level);
/* Parse "error", "warn", "info" or "debug"; returns 0, or -1 when unknown. */
int log_parse_level(const char *name, enum log_level *out);
/* Send lines to fd (default 2). The caller keeps ownership of fd. */
void log_set_fd(int fd);
/*
 * Append lines to the file at path, created with mode 0600 when missing.
 * Called again, it reopens path on the same descriptor, so a line that
 * another thread writes meanwhile goes to the old or the new file whole.
 * Returns 0, or -1 with the reason in err, and lines then go where they
 * went before.
 */
int log_open_file(const char *path, char *err, size_t err_len);
/* Send lines to standard error again after log_open_file. */
void log_use_stderr(void);

/*
 * Show text (one line, no newline) as a status line at the end of standard
 * error, such as a progress bar. While it is shown, a log line written to
 * standard error first erases it and then draws it again below itself, so
 * the two never share a line. Returns at once when text equals the line
 * shown.
 */
void log_status_show(const char *text);
/* Stop showing the status line: keep it as a finished line (keep) or
 * erase it. */
void log_status_end(bool keep);

void log_write(enum log_level level, const char *module,
               const struct log_ids *ids, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define LOG_AT(level, module, ids, ...)                                        \
    do {                                                                       \
        if ((int)(level) <= log_max_level)                                     \
            log_write((level), (module), (ids), __VA_ARGS__);                  \
    } while (0)

#define log_error(module, ids, ...) LOG_AT(LOG_ERROR, module, ids, __VA_ARGS__)
#define log_warn(module, ids, ...)  LOG_AT(LOG_WARN, module, ids, __VA_ARGS__)
#define log_info(module, ids, ...)  LOG_AT(LOG_INFO, module, ids, __VA_ARGS__)
#define log_debug(module, ids, ...) LOG_AT(LOG_DEBUG, module, ids, __VA_ARGS__)

/*
 * Rate limiter for repeated messages: at most max_per_window lines per
 * window_ms. log_limit_allow() returns true when a line may be written; on
 * the first allowed line after a suppressed stretch, *suppressed receives the
 * number of lines that were dropped, so the caller can mention them.
 */
struct log_limit {
    uint64_t window_start_ms;
    uint32_t window_ms;
    uint32_t max_per_window;
    uint32_t count;
    uint32_t suppressed;
};

#define LOG_LIMIT_INIT(window_ms, max)                                         \
    {                                                                          \
        0, (window_ms), (max), 0, 0                                            \
    }

bool log_limit_allow(struct log_limit *limit, uint64_t now_ms,
                     uint32_t *suppressed);

/* Milliseconds since the epoch from CLOCK_REALTIME. */
int64_t log_now_ms(void);

#endif
