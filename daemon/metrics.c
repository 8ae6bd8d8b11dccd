/*
 * The /metrics body in the Prometheus text format, version 0.0.4: for each
 * family a # HELP and a # TYPE line, then its samples. Counters end in
 * _total. Every family is written even before its module exists, with
 * zero values, so the set of names does not depend on timing. Only the
 * per-shard gauge needs the reader's shard list.
 */
#include "daemon/daemon.h"

#include <inttypes.h>
#include <stdio.h>

#include "publisher/publisher.h"

#define METRICS_PREFIX "podium_"

static uint64_t load(const atomic_uint_fast64_t *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

static void family(struct strbuf *out, const char *name, const char *type,
                   const char *help)
{
    sb_printf(out, "# HELP " METRICS_PREFIX "%s %s\n", name, help);
    sb_printf(out, "# TYPE " METRICS_PREFIX "%s %s\n", name, type);
}

void metrics_append_label_value(struct strbuf *out, const char *value)
{
    for (const char *p = value; *p != '\0'; p++) {
        if (*p == '\\')
            sb_puts(out, "\\\\");
        else if (*p == '"')
            sb_puts(out, "\\\"");
        else if (*p == '\n')
            sb_puts(out, "\\n");
        else
            sb_putc(out, *p);
    }
}

static void sample(struct strbuf *out, const char *name, uint64_t value)
{
    sb_printf(out, METRICS_PREFIX "%s %" PRIu64 "\n", name, value);
}

static void labelled(struct strbuf *out, const char *name, const char *label,
                     const char *value, uint64_t v)
{
    sb_printf(out, METRICS_PREFIX "%s{%s=\"", name, label);
    metrics_append_label_value(out, value);
    sb_printf(out, "\"} %" PRIu64 "\n", v);
}

static void counter(struct strbuf *out, const char *name, const char *help,
                    uint64_t value)
{
    family(out, name, "counter", help);
    sample(out, name, value);
}

static void gauge(struct strbuf *out, const char *name, const char *help,
                  uint64_t value)
{
    family(out, name, "gauge", help);
    sample(out, name, value);
}

static void render_records(struct strbuf *out,
                           const struct pipeline_counters *c)
{
    counter(out, "records_read_total",
            "Kinesis records that the pipeline processed, duplicates "
            "included.",
            c ? load(&c->records_read) : 0);
    counter(out, "records_applied_total",
            "Records applied to the leaderboards, late amendments and "
            "replaced samples included.",
            c ? load(&c->records_applied) : 0);
    counter(out, "duplicates_total",
            "Records dropped because their idempotency key was seen before.",
            c ? load(&c->duplicates) : 0);
    counter(out, "validation_conflicts_total",
            "Records whose idempotency key was seen before with a different "
            "validation key.",
            c ? load(&c->validation_conflicts) : 0);

    family(out, "records_rejected_total", "counter",
           "Records stored as dead letters, by reason.");
    for (int r = AGG_REJECT_NONE + 1; r < AGG_REJECT_COUNT; r++)
        labelled(out, "records_rejected_total", "reason",
                 agg_reject_name((enum agg_reject)r),
                 c ? load(&c->rejected[r]) : 0);
    labelled(out, "records_rejected_total", "reason", "missing_key",
             c ? load(&c->missing_key_rejected) : 0);

    family(out, "record_outcomes_total", "counter",
           "Valid records by what the aggregator did with them.");
    for (int o = 0; o < AGG_OUTCOME_COUNT; o++)
        labelled(out, "record_outcomes_total", "outcome",
                 agg_outcome_name((enum agg_outcome)o),
                 c ? load(&c->outcomes[o]) : 0);

    family(out, "records_late_total", "counter",
           "Records that arrived after their second closed, by result.");
    labelled(out, "records_late_total", "result", "amended",
             c ? load(&c->outcomes[AGG_LATE_AMENDED]) : 0);
    labelled(out, "records_late_total", "result", "dropped",
             c ? load(&c->outcomes[AGG_LATE_DROPPED]) : 0);
    labelled(out, "records_late_total", "result", "too_late",
             c ? load(&c->outcomes[AGG_TOO_LATE]) : 0);

    family(out, "records_quarantined_total", "counter",
           "Records set aside for an implausible time, by reason.");
    labelled(out, "records_quarantined_total", "reason", "skew",
             c ? load(&c->outcomes[AGG_QUARANTINED_SKEW]) : 0);
    labelled(out, "records_quarantined_total", "reason", "jump",
             c ? load(&c->outcomes[AGG_QUARANTINED_JUMP]) : 0);

    family(out, "sample_conflicts_total", "counter",
           "Records with other values than the stored sample of the same "
           "rider and second, by which one was kept.");
    labelled(out, "sample_conflicts_total", "kept", "stored",
             c ? load(&c->outcomes[AGG_CONFLICT_KEPT]) : 0);
    labelled(out, "sample_conflicts_total", "kept", "new",
             c ? load(&c->outcomes[AGG_CONFLICT_REPLACED]) : 0);
}

static void render_commits(struct strbuf *out,
                           const struct pipeline_counters *c)
{
    counter(out, "batches_committed_total",
            "Pipeline jobs committed to the store.",
            c ? load(&c->batches_committed) : 0);
    counter(out, "messages_built_total", "Messages written to the outbox.",
            c ? load(&c->messages_built) : 0);
    gauge(out, "outbox_depth", "Undelivered messages in the outbox.",
          c ? load(&c->outbox_depth) : 0);
    counter(out, "outbox_pauses_total",
            "Times a full outbox (outbox.max) paused reading.",
            c ? load(&c->outbox_pauses) : 0);

    family(out, "batch_commit_duration_seconds", "histogram",
           "Time from BEGIN to COMMIT of each committed pipeline job.");
    /* The worker adds to the bucket, then the sum, then the count. Reading
     * the count first and capping the buckets at it keeps the histogram
     * consistent while a job commits: buckets never pass +Inf, and the sum
     * contains the time of every counted job. */
    uint64_t count = c ? load(&c->commit_count) : 0;
    uint64_t sum_us = c ? load(&c->commit_us_sum) : 0;
    uint64_t cumulative = 0;
    for (size_t i = 0; i < PIPELINE_COMMIT_BUCKETS; i++) {
        cumulative += c ? load(&c->commit_buckets[i]) : 0;
        if (cumulative > count)
            cumulative = count;
        uint64_t bound = pipeline_commit_bounds_us[i];
        sb_printf(out,
                  METRICS_PREFIX "batch_commit_duration_seconds_bucket"
                                 "{le=\"%" PRIu64 ".%06" PRIu64 "\"} %" PRIu64
                                 "\n",
                  bound / 1000000, bound % 1000000, cumulative);
    }
    sb_printf(out,
              METRICS_PREFIX "batch_commit_duration_seconds_bucket"
                             "{le=\"+Inf\"} %" PRIu64 "\n",
              count);
    sb_printf(out,
              METRICS_PREFIX "batch_commit_duration_seconds_sum %" PRIu64
                             ".%06" PRIu64 "\n",
              sum_us / 1000000, sum_us % 1000000);
    sb_printf(
        out, METRICS_PREFIX "batch_commit_duration_seconds_count %" PRIu64 "\n",
        count);
}

static void render_reader(struct strbuf *out, const struct http_status *st)
{
    struct reader_counters rc = {0};
    if (st->reader != NULL)
        reader_get_counters(st->reader, &rc);

    counter(out, "kinesis_get_records_calls_total", "GetRecords calls started.",
            rc.get_records_calls);
    counter(out, "kinesis_list_shards_calls_total", "ListShards calls started.",
            rc.list_shards_calls);
    family(out, "kinesis_errors_total", "counter",
           "Failed Kinesis calls, by cause. Each one is retried.");
    labelled(out, "kinesis_errors_total", "cause", "throttled", rc.throttled);
    labelled(out, "kinesis_errors_total", "cause", "server_errors",
             rc.server_errors);
    labelled(out, "kinesis_errors_total", "cause", "timeouts", rc.timeouts);
    labelled(out, "kinesis_errors_total", "cause", "connection_errors",
             rc.connection_errors);
    labelled(out, "kinesis_errors_total", "cause", "expired_iterators",
             rc.expired_iterators);
    labelled(out, "kinesis_errors_total", "cause", "other", rc.other_errors);

    family(out, "shard_millis_behind_latest", "gauge",
           "MillisBehindLatest of the last GetRecords reply, per shard that "
           "has had one.");
    /* The reader's shard ids are valid only until reader_stop. */
    size_t shards = st->reader != NULL && !st->stopping
                        ? reader_shard_count(st->reader)
                        : 0;
    for (size_t i = 0; i < shards; i++) {
        struct reader_shard_info info;
        if (reader_shard_info(st->reader, i, &info) != 0 ||
            info.millis_behind < 0)
            continue;
        labelled(out, "shard_millis_behind_latest", "shard_id", info.shard_id,
                 (uint64_t)info.millis_behind);
    }
}

static void render_publisher(struct strbuf *out, const struct http_status *st)
{
    struct pub_stats ps = {0};
    if (st->publisher != NULL)
        publisher_stats(st->publisher, &ps);

    counter(out, "publish_sent_total",
            "Messages sent to the broker or endpoint, resends included.",
            ps.sent);
    counter(out, "publish_resent_total",
            "Sends of a message that was sent before.", ps.resent);
    counter(out, "publish_acked_total",
            "Messages the broker or endpoint acknowledged.", ps.acked);
    family(out, "publish_failures_total", "counter",
           "Failed publish requests of the iot transport, by cause. Each "
           "one is retried.");
    labelled(out, "publish_failures_total", "cause", "throttled",
             ps.failed_throttled);
    labelled(out, "publish_failures_total", "cause", "server",
             ps.failed_server);
    labelled(out, "publish_failures_total", "cause", "auth", ps.failed_auth);
    labelled(out, "publish_failures_total", "cause", "status",
             ps.failed_status);
    labelled(out, "publish_failures_total", "cause", "timeout",
             ps.failed_timeout);
    labelled(out, "publish_failures_total", "cause", "network",
             ps.failed_network);
    labelled(out, "publish_failures_total", "cause", "local", ps.failed_local);
    counter(out, "publish_connections_total",
            "MQTT connections accepted by the broker.", ps.connections);
    gauge(out, "publish_pending",
          "Messages handed to the publisher and not yet acknowledged.",
          st->publisher != NULL ? publisher_pending(st->publisher) : 0);
}

void metrics_render(const struct http_status *st, struct strbuf *out)
{
    const struct pipeline_counters *c =
        st->pipeline != NULL ? pipeline_counters(st->pipeline) : NULL;

    gauge(out, "ready", "1 when /readyz returns 200, else 0.",
          !st->stopping && st->pipeline != NULL && st->reader_ready);
    render_records(out, c);
    render_commits(out, c);
    render_reader(out, st);
    render_publisher(out, st);
}
