/*
 * The metrics of `podium run` as CloudWatch embedded metric format (EMF)
 * lines, for a log agent that forwards standard output to CloudWatch Logs.
 *
 * Each line is one JSON object whose "_aws" member contains the Timestamp (ms
 * since the epoch) and one metric directive: the namespace, the dimension
 * set and each metric's name and unit. The values are members of the same
 * object. A counter of /metrics becomes the increase since the previous
 * line, so that the Sum statistic of a period is the count in that period.
 * A gauge is its value at the snapshot. A labelled counter becomes one
 * metric per label value, named FAMILY.VALUE (RecordsRejected.not_json).
 *
 * The stream's metrics go in one line with the dimension Stream. A
 * dimension has one value per line, so MillisBehindLatest follows in one
 * line per shard with the dimensions Stream and ShardId.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"

/* A directive may list at most 100 metrics. */
#define EMF_MAX_METRICS 100

/* One metric of a line: its name, unit and value as JSON text. */
struct emf_metric {
    char name[64];
    const char *unit;
    char value[32];
};

struct emf_line {
    struct emf_metric metrics[EMF_MAX_METRICS];
    size_t count;
};

static uint64_t increase(uint64_t now, uint64_t before)
{
    /* Counters only grow. A smaller value would mean another process, so
     * the whole value is new. */
    return now >= before ? now - before : now;
}

static void add_value(struct emf_line *line, const char *name,
                      const char *suffix, const char *unit, const char *value)
{
    if (line->count == EMF_MAX_METRICS)
        return; /* test_metrics checks that every metric fits */
    struct emf_metric *m = &line->metrics[line->count++];
    snprintf(m->name, sizeof m->name, "%s%s%s", name, suffix ? "." : "",
             suffix ? suffix : "");
    m->unit = unit;
    snprintf(m->value, sizeof m->value, "%s", value);
}

static void add_u64(struct emf_line *line, const char *name, const char *suffix,
                    const char *unit, uint64_t value)
{
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, value);
    add_value(line, name, suffix, unit, text);
}

/* A counter's increase since prev, with the unit Count. */
#define COUNT(line, name, suffix, field)                                       \
    add_u64((line), (name), (suffix), "Count",                                 \
            increase(now->field, prev->field))

static void add_records(struct emf_line *line,
                        const struct metrics_snapshot *now,
                        const struct metrics_snapshot *prev)
{
    COUNT(line, "RecordsRead", NULL, records_read);
    COUNT(line, "RecordsApplied", NULL, records_applied);
    COUNT(line, "Duplicates", NULL, duplicates);
    COUNT(line, "ValidationConflicts", NULL, validation_conflicts);
    for (int r = AGG_REJECT_NONE + 1; r < AGG_REJECT_COUNT; r++)
        COUNT(line, "RecordsRejected", agg_reject_name((enum agg_reject)r),
              rejected[r]);
    COUNT(line, "RecordsRejected", "missing_key", missing_key_rejected);
    COUNT(line, "RecordsLate", "amended", outcomes[AGG_LATE_AMENDED]);
    COUNT(line, "RecordsLate", "dropped", outcomes[AGG_LATE_DROPPED]);
    COUNT(line, "RecordsLate", "too_late", outcomes[AGG_TOO_LATE]);
    COUNT(line, "RecordsQuarantined", "skew", outcomes[AGG_QUARANTINED_SKEW]);
    COUNT(line, "RecordsQuarantined", "jump", outcomes[AGG_QUARANTINED_JUMP]);
    COUNT(line, "SampleConflicts", "stored", outcomes[AGG_CONFLICT_KEPT]);
    COUNT(line, "SampleConflicts", "new", outcomes[AGG_CONFLICT_REPLACED]);
}

static void add_commits(struct emf_line *line,
                        const struct metrics_snapshot *now,
                        const struct metrics_snapshot *prev)
{
    COUNT(line, "BatchesCommitted", NULL, batches_committed);
    COUNT(line, "MessagesBuilt", NULL, messages_built);
    add_u64(line, "OutboxDepth", NULL, "Count", now->outbox_depth);
    COUNT(line, "OutboxPauses", NULL, outbox_pauses);

    /* The mean time from BEGIN to COMMIT of the jobs committed since the
     * last line, in ms with microsecond digits. Without a commit there is
     * no time to report, and the metric is left out of the line, as the
     * specification allows. */
    uint64_t jobs = increase(now->commit_count, prev->commit_count);
    uint64_t total_us = increase(now->commit_us_sum, prev->commit_us_sum);
    if (jobs > 0) {
        uint64_t mean_us = (total_us + jobs / 2) / jobs;
        char text[32];
        snprintf(text, sizeof text, "%" PRIu64 ".%03" PRIu64, mean_us / 1000,
                 mean_us % 1000);
        add_value(line, "CommitLatency", NULL, "Milliseconds", text);
    }
}

static void add_reader(struct emf_line *line,
                       const struct metrics_snapshot *now,
                       const struct metrics_snapshot *prev)
{
    COUNT(line, "KinesisErrors", "throttled", reader.throttled);
    COUNT(line, "KinesisErrors", "server_errors", reader.server_errors);
    COUNT(line, "KinesisErrors", "timeouts", reader.timeouts);
    COUNT(line, "KinesisErrors", "connection_errors", reader.connection_errors);
    COUNT(line, "KinesisErrors", "expired_iterators", reader.expired_iterators);
    COUNT(line, "KinesisErrors", "other", reader.other_errors);
}

static void add_publisher(struct emf_line *line,
                          const struct metrics_snapshot *now,
                          const struct metrics_snapshot *prev)
{
    COUNT(line, "PublishSent", NULL, publisher.sent);
    COUNT(line, "PublishResent", NULL, publisher.resent);
    COUNT(line, "PublishAcked", NULL, publisher.acked);
    COUNT(line, "PublishFailures", "throttled", publisher.failed_throttled);
    COUNT(line, "PublishFailures", "server", publisher.failed_server);
    COUNT(line, "PublishFailures", "auth", publisher.failed_auth);
    COUNT(line, "PublishFailures", "status", publisher.failed_status);
    COUNT(line, "PublishFailures", "timeout", publisher.failed_timeout);
    COUNT(line, "PublishFailures", "network", publisher.failed_network);
    COUNT(line, "PublishFailures", "local", publisher.failed_local);
    COUNT(line, "PublishConnections", NULL, publisher.connections);
    add_u64(line, "PublishPending", NULL, "Count", now->publish_pending);
}

/* Append the _aws member, the dimension values and the metric values as
 * one JSON line. */
static void write_line(struct strbuf *out, const struct emf_line *line,
                       const char *namespace, int64_t timestamp_ms,
                       const char *const *dimensions,
                       const char *const *dimension_values,
                       size_t dimension_count)
{
    sb_printf(out,
              "{\"_aws\":{\"Timestamp\":%" PRId64
              ",\"CloudWatchMetrics\":[{\"Namespace\":",
              timestamp_ms);
    sb_json_string(out, namespace, strlen(namespace));
    sb_puts(out, ",\"Dimensions\":[[");
    for (size_t i = 0; i < dimension_count; i++) {
        if (i > 0)
            sb_putc(out, ',');
        sb_json_string(out, dimensions[i], strlen(dimensions[i]));
    }
    sb_puts(out, "]],\"Metrics\":[");
    for (size_t i = 0; i < line->count; i++) {
        sb_printf(out, "%s{\"Name\":\"%s\",\"Unit\":\"%s\"}", i > 0 ? "," : "",
                  line->metrics[i].name, line->metrics[i].unit);
    }
    sb_puts(out, "]}]}");
    for (size_t i = 0; i < dimension_count; i++) {
        sb_putc(out, ',');
        sb_json_string(out, dimensions[i], strlen(dimensions[i]));
        sb_putc(out, ':');
        sb_json_string(out, dimension_values[i], strlen(dimension_values[i]));
    }
    for (size_t i = 0; i < line->count; i++)
        sb_printf(out, ",\"%s\":%s", line->metrics[i].name,
                  line->metrics[i].value);
    sb_puts(out, "}\n");
}

static void add_stream_metrics(struct emf_line *line,
                               const struct metrics_snapshot *now,
                               const struct metrics_snapshot *prev)
{
    add_u64(line, "Ready", NULL, "None", now->ready);
    add_records(line, now, prev);
    add_commits(line, now, prev);
    add_reader(line, now, prev);
    add_publisher(line, now, prev);
}

size_t emf_stream_metric_count(void)
{
    static const struct metrics_snapshot before;
    struct metrics_snapshot after = {.commit_count = 1};
    struct emf_line line = {.count = 0};
    add_stream_metrics(&line, &after, &before);
    return line.count;
}

void emf_render(const struct metrics_snapshot *now,
                const struct metrics_snapshot *prev, const char *namespace,
                const char *stream, int64_t timestamp_ms, struct strbuf *out)
{
    static const struct metrics_snapshot zero;
    if (prev == NULL)
        prev = &zero;

    struct emf_line line = {.count = 0};
    add_stream_metrics(&line, now, prev);
    const char *stream_dimension[] = {"Stream"};
    write_line(out, &line, namespace, timestamp_ms, stream_dimension, &stream,
               1);

    const char *shard_dimensions[] = {"Stream", "ShardId"};
    for (size_t i = 0; i < now->shard_count; i++) {
        struct emf_line shard_line = {.count = 0};
        add_u64(&shard_line, "MillisBehindLatest", NULL, "Milliseconds",
                (uint64_t)now->shards[i].millis_behind);
        const char *values[] = {stream, now->shards[i].shard_id};
        write_line(out, &shard_line, namespace, timestamp_ms, shard_dimensions,
                   values, 2);
    }
}

/* ---- the writer of podium run ---------------------------------------- */

/* Largest output of one interval: a stream line and one line per shard. */
#define EMF_MAX_OUTPUT (4u * 1024 * 1024)

struct emf_writer {
    uv_timer_t timer;
    const struct http_status *status;
    char *namespace;
    char *stream;
    int fd;
    struct metrics_snapshot prev;
    bool has_prev;
    struct log_limit error_limit;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

/* Write all of data to fd. Returns 0 or a negative errno; -EPIPE when the
 * reader of standard output has gone, since podium run ignores SIGPIPE. */
static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static void log_write_error(struct emf_writer *w, const char *reason)
{
    uint32_t suppressed;
    if (!log_limit_allow(&w->error_limit, (uint64_t)log_now_ms(), &suppressed))
        return;
    log_error("emf", NULL,
              "failed to write the EMF metrics to standard output: %s; the "
              "next interval includes their counts (%" PRIu32
              " more such errors not logged)",
              reason, suppressed);
}

void emf_writer_flush(struct emf_writer *w)
{
    struct metrics_snapshot now;
    struct strbuf out;

    if (metrics_snapshot_take(w->status, &now) != 0) {
        log_write_error(w, "out of memory");
        metrics_snapshot_free(&now);
        return;
    }
    sb_init(&out, EMF_MAX_OUTPUT);
    emf_render(&now, w->has_prev ? &w->prev : NULL, w->namespace, w->stream,
               log_now_ms(), &out);
    int rc = sb_error(&out);
    /* Each line goes in one write, so that log lines that share the file
     * never land inside it. */
    size_t start = 0;
    while (rc == 0 && start < out.len) {
        const char *end = memchr(out.data + start, '\n', out.len - start);
        size_t len = (size_t)(end - (out.data + start)) + 1;
        rc = write_all(w->fd, out.data + start, len);
        start += len;
    }
    sb_free(&out);
    if (rc != 0) {
        /* The previous snapshot stays, so the next line counts this
         * interval too. */
        log_write_error(w, rc == -ENOMEM     ? "out of memory"
                           : rc == -EMSGSIZE ? "the lines are too long"
                                             : strerror(-rc));
        metrics_snapshot_free(&now);
        return;
    }
    metrics_snapshot_free(&w->prev);
    w->prev = now;
    w->has_prev = true;
}

static void on_emf_timer(uv_timer_t *timer)
{
    emf_writer_flush(timer->data);
}

struct emf_writer *emf_writer_start(uv_loop_t *loop,
                                    const struct podium_config *cfg,
                                    const struct http_status *status, int fd)
{
    struct emf_writer *w = calloc(1, sizeof *w);
    if (w == NULL)
        return NULL;
    w->status = status;
    w->fd = fd;
    w->namespace = strdup(cfg->metrics_emf_namespace);
    w->stream = strdup(cfg->stream_name != NULL ? cfg->stream_name : "");
    w->error_limit = (struct log_limit)LOG_LIMIT_INIT(60000, 1);
    if (w->namespace == NULL || w->stream == NULL) {
        free(w->namespace);
        free(w->stream);
        free(w);
        return NULL;
    }
    uint64_t interval_ms = (uint64_t)cfg->metrics_emf_interval_s * 1000;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    uv_timer_start(&w->timer, on_emf_timer, interval_ms, interval_ms);
    log_info("emf", NULL,
             "writing EMF metrics in namespace \"%s\" to standard output "
             "every %" PRId32 " s",
             w->namespace, cfg->metrics_emf_interval_s);
    return w;
}

static void on_emf_timer_closed(uv_handle_t *handle)
{
    struct emf_writer *w = handle->data;
    void (*cb)(void *) = w->closed_cb;
    void *arg = w->closed_arg;
    metrics_snapshot_free(&w->prev);
    free(w->namespace);
    free(w->stream);
    free(w);
    if (cb != NULL)
        cb(arg);
}

void emf_writer_close(struct emf_writer *w, void (*closed_cb)(void *arg),
                      void *arg)
{
    w->closed_cb = closed_cb;
    w->closed_arg = arg;
    uv_close((uv_handle_t *)&w->timer, on_emf_timer_closed);
}
