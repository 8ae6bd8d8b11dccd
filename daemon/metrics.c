/*
 * The /metrics body in the Prometheus text format, version 0.0.4: for each
 * family a # HELP and a # TYPE line, then its samples. Counters end in
 * _total. Every family is written even before its module exists, with
 * zero values, so the set of names does not depend on timing. Only the
 * per-shard gauge needs the reader's shard list.
 *
 * The values come from a snapshot (metrics_snapshot_take), which the EMF
 * lines of daemon/emf.c read too.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define METRICS_PREFIX "podium_"

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
                           const struct metrics_snapshot *snap)
{
    counter(out, "records_read_total",
            "Kinesis records that the pipeline processed, duplicates "
            "included.",
            snap->records_read);
    counter(out, "records_applied_total",
            "Records applied to the leaderboards, late amendments and "
            "replaced samples included.",
            snap->records_applied);
    counter(out, "duplicates_total",
            "Records dropped because their idempotency key was seen before.",
            snap->duplicates);
    counter(out, "validation_conflicts_total",
            "Records whose idempotency key was seen before with a different "
            "validation key.",
            snap->validation_conflicts);

    family(out, "records_rejected_total", "counter",
           "Records stored as dead letters, by reason.");
    for (int r = AGG_REJECT_NONE + 1; r < AGG_REJECT_COUNT; r++)
        labelled(out, "records_rejected_total", "reason",
                 agg_reject_name((enum agg_reject)r), snap->rejected[r]);
    labelled(out, "records_rejected_total", "reason", "missing_key",
             snap->missing_key_rejected);

    family(out, "record_outcomes_total", "counter",
           "Valid records by what the aggregator did with them.");
    for (int o = 0; o < AGG_OUTCOME_COUNT; o++)
        labelled(out, "record_outcomes_total", "outcome",
                 agg_outcome_name((enum agg_outcome)o), snap->outcomes[o]);

    family(out, "records_late_total", "counter",
           "Records that arrived after their second closed, by result.");
    labelled(out, "records_late_total", "result", "amended",
             snap->outcomes[AGG_LATE_AMENDED]);
    labelled(out, "records_late_total", "result", "dropped",
             snap->outcomes[AGG_LATE_DROPPED]);
    labelled(out, "records_late_total", "result", "too_late",
             snap->outcomes[AGG_TOO_LATE]);

    family(out, "records_quarantined_total", "counter",
           "Records set aside for an implausible time, by reason.");
    labelled(out, "records_quarantined_total", "reason", "skew",
             snap->outcomes[AGG_QUARANTINED_SKEW]);
    labelled(out, "records_quarantined_total", "reason", "jump",
             snap->outcomes[AGG_QUARANTINED_JUMP]);

    family(out, "sample_conflicts_total", "counter",
           "Records with other values than the stored sample of the same "
           "rider and second, by which one was kept.");
    labelled(out, "sample_conflicts_total", "kept", "stored",
             snap->outcomes[AGG_CONFLICT_KEPT]);
    labelled(out, "sample_conflicts_total", "kept", "new",
             snap->outcomes[AGG_CONFLICT_REPLACED]);
}

static void render_commits(struct strbuf *out,
                           const struct metrics_snapshot *snap)
{
    counter(out, "batches_committed_total",
            "Pipeline jobs committed to the store.", snap->batches_committed);
    counter(out, "messages_built_total", "Messages written to the outbox.",
            snap->messages_built);
    gauge(out, "outbox_depth", "Undelivered messages in the outbox.",
          snap->outbox_depth);
    counter(out, "outbox_pauses_total",
            "Times a full outbox (outbox.max) paused reading.",
            snap->outbox_pauses);

    family(out, "batch_commit_duration_seconds", "histogram",
           "Time from BEGIN to COMMIT of each committed pipeline job.");
    for (size_t i = 0; i < PIPELINE_COMMIT_BUCKETS; i++) {
        uint64_t bound = pipeline_commit_bounds_us[i];
        sb_printf(out,
                  METRICS_PREFIX "batch_commit_duration_seconds_bucket"
                                 "{le=\"%" PRIu64 ".%06" PRIu64 "\"} %" PRIu64
                                 "\n",
                  bound / 1000000, bound % 1000000, snap->commit_buckets[i]);
    }
    sb_printf(out,
              METRICS_PREFIX "batch_commit_duration_seconds_bucket"
                             "{le=\"+Inf\"} %" PRIu64 "\n",
              snap->commit_count);
    sb_printf(out,
              METRICS_PREFIX "batch_commit_duration_seconds_sum %" PRIu64
                             ".%06" PRIu64 "\n",
              snap->commit_us_sum / 1000000, snap->commit_us_sum % 1000000);
    sb_printf(
        out, METRICS_PREFIX "batch_commit_duration_seconds_count %" PRIu64 "\n",
        snap->commit_count);
}

static void render_reader(struct strbuf *out,
                          const struct metrics_snapshot *snap)
{
    const struct reader_counters *rc = &snap->reader;

    counter(out, "kinesis_get_records_calls_total", "GetRecords calls started.",
            rc->get_records_calls);
    counter(out, "kinesis_list_shards_calls_total", "ListShards calls started.",
            rc->list_shards_calls);
    family(out, "kinesis_errors_total", "counter",
           "Failed Kinesis calls, by cause. Each one is retried.");
    labelled(out, "kinesis_errors_total", "cause", "throttled", rc->throttled);
    labelled(out, "kinesis_errors_total", "cause", "server_errors",
             rc->server_errors);
    labelled(out, "kinesis_errors_total", "cause", "timeouts", rc->timeouts);
    labelled(out, "kinesis_errors_total", "cause", "connection_errors",
             rc->connection_errors);
    labelled(out, "kinesis_errors_total", "cause", "expired_iterators",
             rc->expired_iterators);
    labelled(out, "kinesis_errors_total", "cause", "other", rc->other_errors);

    family(out, "shard_millis_behind_latest", "gauge",
           "MillisBehindLatest of the last GetRecords reply, per shard that "
           "has had one.");
    for (size_t i = 0; i < snap->shard_count; i++)
        labelled(out, "shard_millis_behind_latest", "shard_id",
                 snap->shards[i].shard_id,
                 (uint64_t)snap->shards[i].millis_behind);
}

static void render_publisher(struct strbuf *out,
                             const struct metrics_snapshot *snap)
{
    const struct pub_stats *ps = &snap->publisher;

    counter(out, "publish_sent_total",
            "Messages sent to the broker or endpoint, resends included.",
            ps->sent);
    counter(out, "publish_resent_total",
            "Sends of a message that was sent before.", ps->resent);
    counter(out, "publish_acked_total",
            "Messages the broker or endpoint acknowledged.", ps->acked);
    family(out, "publish_failures_total", "counter",
           "Failed publish requests of the iot transport, by cause. Each "
           "one is retried.");
    labelled(out, "publish_failures_total", "cause", "throttled",
             ps->failed_throttled);
    labelled(out, "publish_failures_total", "cause", "server",
             ps->failed_server);
    labelled(out, "publish_failures_total", "cause", "auth", ps->failed_auth);
    labelled(out, "publish_failures_total", "cause", "status",
             ps->failed_status);
    labelled(out, "publish_failures_total", "cause", "timeout",
             ps->failed_timeout);
    labelled(out, "publish_failures_total", "cause", "network",
             ps->failed_network);
    labelled(out, "publish_failures_total", "cause", "local", ps->failed_local);
    counter(out, "publish_connections_total",
            "MQTT connections accepted by the broker.", ps->connections);
    gauge(out, "publish_pending",
          "Messages handed to the publisher and not yet acknowledged.",
          snap->publish_pending);
}

void metrics_render_snapshot(const struct metrics_snapshot *snap,
                             struct strbuf *out)
{
    gauge(out, "ready", "1 when /readyz returns 200, else 0.", snap->ready);
    render_records(out, snap);
    render_commits(out, snap);
    render_reader(out, snap);
    render_publisher(out, snap);
}

void metrics_render(const struct http_status *st, struct strbuf *out)
{
    struct metrics_snapshot snap;
    if (metrics_snapshot_take(st, &snap) != 0 && out->error == 0)
        out->error = -ENOMEM; /* a body without the shards would mislead */
    metrics_render_snapshot(&snap, out);
    metrics_snapshot_free(&snap);
}

/* ---- snapshot -------------------------------------------------------- */

static uint64_t load(const atomic_uint_fast64_t *counter)
{
    return atomic_load_explicit(counter, memory_order_relaxed);
}

static void take_pipeline(const struct pipeline_counters *c,
                          struct metrics_snapshot *snap)
{
    snap->records_read = load(&c->records_read);
    snap->records_applied = load(&c->records_applied);
    snap->duplicates = load(&c->duplicates);
    snap->validation_conflicts = load(&c->validation_conflicts);
    for (int r = 0; r < AGG_REJECT_COUNT; r++)
        snap->rejected[r] = load(&c->rejected[r]);
    snap->missing_key_rejected = load(&c->missing_key_rejected);
    for (int o = 0; o < AGG_OUTCOME_COUNT; o++)
        snap->outcomes[o] = load(&c->outcomes[o]);
    snap->batches_committed = load(&c->batches_committed);
    snap->messages_built = load(&c->messages_built);
    snap->outbox_depth = load(&c->outbox_depth);
    snap->outbox_pauses = load(&c->outbox_pauses);

    /* The worker adds to the bucket, then the sum, then the count. Reading
     * the count first and capping the buckets at it keeps the histogram
     * consistent while a job commits: buckets never pass +Inf, and the sum
     * contains the time of every counted job. */
    snap->commit_count = load(&c->commit_count);
    snap->commit_us_sum = load(&c->commit_us_sum);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < PIPELINE_COMMIT_BUCKETS; i++) {
        cumulative += load(&c->commit_buckets[i]);
        if (cumulative > snap->commit_count)
            cumulative = snap->commit_count;
        snap->commit_buckets[i] = cumulative;
    }
}

/* Copy the MillisBehindLatest of each shard that has one. */
static int take_shards(const struct http_status *st,
                       struct metrics_snapshot *snap)
{
    /* The reader's shard ids are valid only until reader_stop. */
    size_t count = st->reader != NULL && !st->stopping
                       ? reader_shard_count(st->reader)
                       : 0;
    if (count == 0)
        return 0;
    snap->shards = calloc(count, sizeof *snap->shards);
    if (snap->shards == NULL)
        return -1;
    for (size_t i = 0; i < count; i++) {
        struct reader_shard_info info;
        if (reader_shard_info(st->reader, i, &info) != 0 ||
            info.millis_behind < 0)
            continue;
        struct metrics_shard *shard = &snap->shards[snap->shard_count++];
        snprintf(shard->shard_id, sizeof shard->shard_id, "%s", info.shard_id);
        shard->millis_behind = info.millis_behind;
    }
    return 0;
}

int metrics_snapshot_take(const struct http_status *st,
                          struct metrics_snapshot *snap)
{
    memset(snap, 0, sizeof *snap);
    snap->ready = !st->stopping && st->pipeline != NULL && st->reader_ready;
    if (st->pipeline != NULL)
        take_pipeline(pipeline_counters(st->pipeline), snap);
    if (st->reader != NULL)
        reader_get_counters(st->reader, &snap->reader);
    if (st->publisher != NULL) {
        publisher_stats(st->publisher, &snap->publisher);
        snap->publish_pending = publisher_pending(st->publisher);
    }
    return take_shards(st, snap);
}

void metrics_snapshot_free(struct metrics_snapshot *snap)
{
    free(snap->shards);
    snap->shards = NULL;
    snap->shard_count = 0;
}
