/* dup3 */
#define _GNU_SOURCE
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/strbuf.h"

int log_max_level = LOG_INFO;
static atomic_int log_fd = 2;
/* The descriptor of log_open_file, or -1. It stays open for the life of
 * the process, so that its number is never reused for another file while
 * a thread may still write to it. */
static int log_file_fd = -1;

/* The status line of log_status_show, "" when none. status_lock orders
 * it with the log lines that erase and redraw it. */
static pthread_mutex_t status_lock = PTHREAD_MUTEX_INITIALIZER;
static char status_text[512];
/* Erase the line the cursor is on: carriage return, erase to end of line. */
static const char erase_line[] = "\r\033[K";

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void log_set_level(enum log_level level)
{
    log_max_level = (int)level;
}

int log_parse_level(const char *name, enum log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(name, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return 0;
        }
    }
    return -1;
}

void log_set_fd(int fd)
{
    atomic_store(&log_fd, fd);
}

int log_open_file(const char *path, char *err, size_t err_len)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, err_len, "failed to open log file %s: %s", path,
                 strerror(errno));
        return -1;
    }
    if (log_file_fd < 0) {
        log_file_fd = fd;
    } else {
        /* dup3 replaces the file behind log_file_fd in one step. */
        int rc = dup3(fd, log_file_fd, O_CLOEXEC);
        int saved = errno;
        close(fd);
        if (rc < 0) {
            snprintf(err, err_len, "failed to reopen log file %s: dup3: %s",
                     path, strerror(saved));
            return -1;
        }
    }
    atomic_store(&log_fd, log_file_fd);
    return 0;
}

void log_use_stderr(void)
{
    atomic_store(&log_fd, 2);
}

int64_t log_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Write all of data to fd, retrying after EINTR; errors are ignored, as
 * there is nowhere left to report them. */
static void write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t rc = write(fd, data, len);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return;
        data += rc;
        len -= (size_t)rc;
    }
}

/* Append the status line, drawn over the current line of the terminal. */
static void append_status(struct strbuf *sb)
{
    sb_putc(sb, '\r');
    sb_puts(sb, status_text);
    sb_puts(sb, "\033[K");
}

static void put_field(struct strbuf *sb, const char *name, const char *value)
{
    if (value == NULL)
        return;
    sb_printf(sb, ",\"%s\":", name);
    sb_json_string(sb, value, strlen(value));
}

static void put_time(struct strbuf *sb)
{
    int64_t now = log_now_ms();
    time_t secs = (time_t)(now / 1000);
    struct tm tm;
    char text[32];

    gmtime_r(&secs, &tm);
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    sb_printf(sb, "\"time\":\"%s.%03dZ\"", text, (int)(now % 1000));
}

void log_write(enum log_level level, const char *module,
               const struct log_ids *ids, const char *fmt, ...)
{
    char message[2048];
    struct strbuf sb;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);

    sb_init(&sb, 8192);
    sb_printf(&sb, "{\"level\":\"%s\",", level_names[level]);
    put_time(&sb);
    put_field(&sb, "module", module);
    put_field(&sb, "message", message);
    if (ids != NULL) {
        put_field(&sb, "stream", ids->stream);
        put_field(&sb, "shard", ids->shard);
        put_field(&sb, "seq", ids->seq);
        put_field(&sb, "race", ids->race);
        put_field(&sb, "topic", ids->topic);
    }
    sb_append(&sb, "}\n", 2);

    /* One write per line keeps lines from different threads whole. The
     * status line, when shown on the same descriptor, is erased before
     * the line and drawn again after it in that write. */
    if (sb.data != NULL) {
        int fd = atomic_load(&log_fd);
        pthread_mutex_lock(&status_lock);
        if (status_text[0] != '\0' && fd == STDERR_FILENO) {
            struct strbuf framed;
            sb_init(&framed, sb.len + sizeof status_text + 16);
            sb_append(&framed, erase_line, sizeof erase_line - 1);
            sb_append(&framed, sb.data, sb.len);
            append_status(&framed);
            if (framed.data != NULL)
                write_all(fd, framed.data, framed.len);
            sb_free(&framed);
        } else {
            write_all(fd, sb.data, sb.len);
        }
        pthread_mutex_unlock(&status_lock);
    }
    sb_free(&sb);
}

void log_status_show(const char *text)
{
    pthread_mutex_lock(&status_lock);
    if (strcmp(text, status_text) != 0) {
        snprintf(status_text, sizeof status_text, "%s", text);
        struct strbuf sb;
        sb_init(&sb, sizeof status_text + 16);
        append_status(&sb);
        if (sb.data != NULL)
            write_all(STDERR_FILENO, sb.data, sb.len);
        sb_free(&sb);
    }
    pthread_mutex_unlock(&status_lock);
}

void log_status_end(bool keep)
{
    pthread_mutex_lock(&status_lock);
    if (status_text[0] != '\0') {
        if (keep)
            write_all(STDERR_FILENO, "\n", 1);
        else
            write_all(STDERR_FILENO, erase_line, sizeof erase_line - 1);
        status_text[0] = '\0';
    }
    pthread_mutex_unlock(&status_lock);
}

bool log_limit_allow(struct log_limit *limit, uint64_t now_ms,
                     uint32_t *suppressed)
{
    *suppressed = 0;
    if (now_ms - limit->window_start_ms >= limit->window_ms) {
        limit->window_start_ms = now_ms;
        limit->count = 0;
    }
    if (limit->count >= limit->max_per_window) {
        limit->suppressed++;
        return false;
    }
    limit->count++;
    *suppressed = limit->suppressed;
    limit->suppressed = 0;
    return true;
}
