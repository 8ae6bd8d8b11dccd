/*
 * File transport: one JSON line per message,
 *   {"topic":"<topic, JSON-escaped>","payload":<payload bytes as is>}
 * appended to a file, or written to standard output for the path "-". The
 * payload must be one JSON value without a newline (the aggregator writes
 * compact JSON); it is copied without a check.
 *
 * Writes run from a zero-delay timer, never inside publisher_submit, so
 * ack_cb does not run before publisher_submit returns. The write(2) calls
 * block the loop thread: lines are small, and a write to a regular file or
 * a terminal returns quickly. A message is acknowledged once its whole line
 * was handed to the kernel. There is no fsync, so a machine crash can lose
 * the last lines.
 */
#include "publisher/internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FILE_RETRY_MIN_MS 500
/* Maximum line length: the topic with every byte escaped as \u00XX, the payload
 * and the JSON around them. */
#define FILE_LINE_MAX (PUB_MAX_PAYLOAD + 6 * PUB_MAX_TOPIC + 64)

static void file_on_timer(uv_timer_t *timer);

/*
 * Open the output and initialize the write timer. Returns -1 with a message
 * in err and nothing to close. Loop thread only.
 */
int file_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len)
{
    struct pub_file *f = &pub->file;

    if (cfg->file_path == NULL || cfg->file_path[0] == '\0') {
        snprintf(err, err_len,
                 "publish file path is missing; give a file "
                 "path, or \"-\" for standard output");
        return -1;
    }
    f->path = strdup(cfg->file_path);
    if (f->path == NULL) {
        snprintf(err, err_len, "out of memory opening the publish file");
        return -1;
    }
    if (strcmp(f->path, "-") == 0) {
        f->fd = STDOUT_FILENO;
        f->owns_fd = false;
    } else {
        f->fd = open(f->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (f->fd < 0) {
            snprintf(err, err_len,
                     "cannot open publish file %s (publish.file): %s", f->path,
                     strerror(errno));
            free(f->path);
            f->path = NULL;
            return -1;
        }
        f->owns_fd = true;
    }
    sb_init(&f->line, FILE_LINE_MAX);
    f->retry_ms = FILE_RETRY_MIN_MS;
    f->log_limit = (struct log_limit)LOG_LIMIT_INIT(60000, 10);
    uv_timer_init(pub->loop, &f->timer);
    pub_handle_opened(pub, (uv_handle_t *)&f->timer);
    return 0;
}

/* Format the line for msg into f->line. Returns 0 or a negative errno. */
static int file_format_line(struct pub_file *f, const struct pub_message *msg)
{
    sb_reset(&f->line);
    sb_puts(&f->line, "{\"topic\":");
    sb_json_string(&f->line, msg->topic, msg->topic_len);
    sb_puts(&f->line, ",\"payload\":");
    sb_append(&f->line, msg->payload, msg->payload_len);
    sb_append(&f->line, "}\n", 2);
    f->line_written = 0;
    f->line_ready = sb_error(&f->line) == 0;
    return sb_error(&f->line);
}

/*
 * Write the rest of the current line, through short writes and EINTR.
 * Returns 0, or the errno of the failed write; the bytes already written
 * stay counted, so a retry continues the same line.
 */
static int file_write_rest(struct pub_file *f)
{
    while (f->line_written < f->line.len) {
        ssize_t n = write(f->fd, f->line.data + f->line_written,
                          f->line.len - f->line_written);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return errno;
        }
        f->line_written += (size_t)n;
    }
    return 0;
}

/* Log a failed write and try again after a backoff. */
static void file_schedule_retry(struct publisher *pub, int error)
{
    struct pub_file *f = &pub->file;
    uint64_t rng = uv_hrtime() | 1;
    uint64_t delay_ms =
        pub_backoff_next(&f->retry_ms, PUB_BACKOFF_MAX_MS, &rng);
    uint32_t suppressed;

    if (log_limit_allow(&f->log_limit, uv_now(pub->loop), &suppressed)) {
        char note[64] = "";

        if (suppressed > 0)
            snprintf(note, sizeof note, " (%u similar lines suppressed)",
                     suppressed);
        log_error(PUB_LOG_MODULE, NULL,
                  "writing to publish file %s failed: %s; %zu messages "
                  "wait; retrying in %.1f s%s",
                  f->path, strerror(error), pub->queue.length,
                  (double)delay_ms / 1000.0, note);
    }
    f->retry_pending = true;
    uv_timer_start(&f->timer, file_on_timer, delay_ms, 0);
}

/*
 * Write and acknowledge the messages queued when the timer fired, oldest
 * first. Messages that ack_cb submits wait for the next timer run, so one
 * run is bounded.
 */
static void file_write_queued(struct publisher *pub)
{
    struct pub_file *f = &pub->file;
    size_t budget = pub->queue.length;
    struct pub_message *msg;

    while (!pub->closing && budget-- > 0 && (msg = pub->queue.head) != NULL) {
        int error = f->line_ready ? 0 : -file_format_line(f, msg);

        if (error == 0)
            error = file_write_rest(f);
        if (error != 0) {
            file_schedule_retry(pub, error);
            return;
        }
        f->line_ready = false;
        f->retry_ms = FILE_RETRY_MIN_MS;
        pub_queue_mark_sent(pub, msg);
        pub_message_acked(pub, msg);
        pub_report_acks(pub);
    }
    if (!pub->closing && pub->queue.head != NULL)
        uv_timer_start(&f->timer, file_on_timer, 0, 0);
}

static void file_on_timer(uv_timer_t *timer)
{
    struct publisher *pub = timer->data;

    pub->file.retry_pending = false;
    file_write_queued(pub);
}

/* Schedule a write run for new messages, unless a retry is waiting. */
void file_kick(struct publisher *pub)
{
    struct pub_file *f = &pub->file;

    if (!f->retry_pending && !uv_is_active((uv_handle_t *)&f->timer))
        uv_timer_start(&f->timer, file_on_timer, 0, 0);
}

/*
 * Close the timer and the file. A line cut short by a failed write gets one
 * more attempt, so that the file does not end in half a line. Its message
 * stays unacknowledged either way.
 */
void file_close(struct publisher *pub)
{
    struct pub_file *f = &pub->file;

    if (f->line_ready && f->line_written > 0 && file_write_rest(f) != 0)
        log_warn(PUB_LOG_MODULE, NULL, "publish file %s ends in a partial line",
                 f->path);
    pub_close_handle(pub, (uv_handle_t *)&f->timer);
    if (f->owns_fd && close(f->fd) != 0)
        log_warn(PUB_LOG_MODULE, NULL, "closing publish file %s failed: %s",
                 f->path, strerror(errno));
    f->fd = -1;
}

/* Free what file_open allocated; the timer is closed already. */
void file_free(struct publisher *pub)
{
    sb_free(&pub->file.line);
    free(pub->file.path);
    pub->file.path = NULL;
}
