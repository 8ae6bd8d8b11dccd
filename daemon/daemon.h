/*
 * Internal interfaces of the daemon module: the subcommands and the batch
 * pipeline that turns Kinesis batches into committed state and outbox
 * messages.
 */
#ifndef PODIUM_DAEMON_DAEMON_H
#define PODIUM_DAEMON_DAEMON_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "aggregator/aggregator.h"
#include "common/strbuf.h"
#include "config/config.h"
#include "publisher/publisher.h"
#include "shardreader/shardreader.h"
#include "store/store.h"

/* Subcommands; each returns the process exit status. */
int cmd_run(int argc, char **argv);
int cmd_simulate(int argc, char **argv);
int cmd_query(int argc, char **argv);
int cmd_replay(int argc, char **argv);
int cmd_record(int argc, char **argv);
int cmd_healthcheck(int argc, char **argv);
int cmd_check_config(int argc, char **argv);

/*
 * AWS credentials (daemon/credentials.c): find the source of the chain in
 * common/awscreds.h, with cfg's aws.imds, get the first credentials and
 * set creds->provider, which refreshes them on loop (NULL: never). Prints
 * the error after "WHO: " and returns 2 (no usable source) or 1 (a fetch
 * failed), else 0.
 */
int daemon_credentials_open(uv_loop_t *loop, const struct podium_config *cfg,
                            const char *who, struct aws_credentials *creds);
/* Check that a credential source exists, without fetching. Returns 0, or
 * 2 after printing the error after "WHO: ". */
int daemon_credentials_check(const struct podium_config *cfg, const char *who);
/* Close the provider of creds; closed_cb runs from the loop once its
 * handles are closed (at once without a loop). */
void daemon_credentials_close(struct aws_credentials *creds,
                              void (*closed_cb)(void *arg), void *arg);
/* True when name is the PODIUM_* variable of a setting. */
bool daemon_is_known_env(const char *name);
/*
 * Warn about each PODIUM_* variable of env that names no setting: to out,
 * or as a log line when out is NULL. Returns how many there were.
 */
size_t daemon_warn_unknown_env(char *const *env, FILE *out);

/* Start-up steps shared by run and replay (daemon/setup.c). */
struct pub_config;
/* Fill out with the publisher settings of cfg; creds is borrowed. */
void daemon_pub_config(const struct podium_config *cfg,
                       const struct aws_credentials *creds,
                       struct pub_config *out);
/* Open the idempotency table of st with a new owner token and log the
 * claims of earlier processes that it released. Returns 0 or -1 (logged). */
int daemon_open_idempotency(struct store *st, const struct podium_config *cfg);

/* Options every subcommand shares: --config FILE and --set KEY=VALUE. */
struct common_opts {
    const char *config_file;
    const char **sets; /* owned array of borrowed argv strings */
    size_t set_count;
};

/* Append one --set value (borrowed) to opts. Returns 0, or -1 when out of
 * memory. */
int common_opts_add_set(struct common_opts *opts, const char *value);

/*
 * Load the configuration: the --config file (or the default file when it
 * exists), then the environment, then the --set flags. Returns 0, or 2
 * after printing the error.
 */
int load_config(const struct common_opts *opts, struct podium_config *cfg);
/* Load the configuration like load_config. Returns 0, or -1 with the
 * reason in err and nothing printed. */
int load_config_error(const struct common_opts *opts, struct podium_config *cfg,
                      char *err, size_t err_len);

/* Upper bounds of the commit time histogram buckets, in microseconds. */
#define PIPELINE_COMMIT_BUCKETS 11
extern const uint64_t pipeline_commit_bounds_us[PIPELINE_COMMIT_BUCKETS];

/* Counters of the pipeline, written by the worker, read anywhere. */
struct pipeline_counters {
    atomic_uint_fast64_t records_read;
    atomic_uint_fast64_t records_applied;
    atomic_uint_fast64_t duplicates;
    atomic_uint_fast64_t validation_conflicts;
    atomic_uint_fast64_t missing_key_processed;
    atomic_uint_fast64_t missing_key_rejected;
    atomic_uint_fast64_t rejected[AGG_REJECT_COUNT];
    atomic_uint_fast64_t outcomes[AGG_OUTCOME_COUNT];
    atomic_uint_fast64_t messages_built;
    atomic_uint_fast64_t messages_invalid;
    atomic_uint_fast64_t batches_committed;
    atomic_uint_fast64_t outbox_depth;  /* undelivered messages stored */
    atomic_uint_fast64_t outbox_pauses; /* times outbox.max paused reading */
    /* Time from BEGIN to COMMIT of each committed job. commit_buckets[i]
     * counts the jobs that took more than bound i-1 and at most bound i of
     * pipeline_commit_bounds_us (not cumulative). Jobs over the last bound
     * count only in commit_count. */
    atomic_uint_fast64_t commit_buckets[PIPELINE_COMMIT_BUCKETS];
    atomic_uint_fast64_t commit_us_sum;
    atomic_uint_fast64_t commit_count;
};

/*
 * The outbox bound (daemon/outbox_gate.c): whether the outbox is full, so
 * that jobs which may add messages wait. Loop thread only.
 */
struct outbox_gate {
    uint64_t depth;     /* rows in the outbox table after the last commit */
    uint64_t max;       /* outbox.max: full from this depth on */
    uint64_t low_water; /* 90% of max: not full below it again */
    bool full;
};

void outbox_gate_init(struct outbox_gate *g, uint64_t max, uint64_t depth);
/* Recheck full after depth changed. Returns true, after logging the
 * change, when full changed. */
bool outbox_gate_update(struct outbox_gate *g);
/* Apply the rows a committed job added and deleted, then update. */
bool outbox_gate_commit(struct outbox_gate *g, uint64_t added,
                        uint64_t deleted);

struct pipeline;

/* Callbacks from the pipeline to its owner, on the loop thread. */
struct pipeline_hooks {
    void *arg;
    /* A batch of shard_id is durable (checkpoint included). */
    void (*batch_committed)(void *arg, const char *shard_id);
    /* A committed outbox message to publish; pointers borrowed. */
    void (*message)(void *arg, int64_t id, const char *topic,
                    const char *payload, size_t len);
    /* A commit failed; the in-memory state can no longer be trusted. */
    void (*fatal)(void *arg, const char *message);
    /* The queue ran empty (for shutdown). */
    void (*idle)(void *arg);
};

struct idem_keyexpr;
int pipeline_compile_keys(const struct podium_config *cfg,
                          struct idem_keyexpr **key,
                          struct idem_keyexpr **validation, char *err,
                          size_t err_len);

/*
 * Create a pipeline over an open store whose idempotency table is open.
 * Returns NULL (logged) on failure.
 */
struct pipeline *pipeline_new(uv_loop_t *loop, struct store *st,
                              const struct podium_config *cfg,
                              const struct pipeline_hooks *hooks);
void pipeline_free(struct pipeline *pl);

/*
 * Rebuild the aggregator from the store. Loop thread, before any job.
 * Returns 0 or -1 (logged).
 */
int pipeline_restore(struct pipeline *pl);

/*
 * Records for one job: segments in processing order, each a run of records
 * of one shard with that shard's checkpoint after it, and the shards whose
 * delivered batch ends inside this job, to be notified once it commits.
 */
struct pipeline_work {
    struct shard_batch **segments; /* owned */
    size_t segment_count;
    char **completed_shards; /* owned */
    size_t completed_count;
};

void pipeline_work_free(struct pipeline_work *work);

/* Queue work (takes ownership). */
void pipeline_submit_work(struct pipeline *pl, struct pipeline_work *work);
/* Queue one whole batch as its own job (takes ownership). */
void pipeline_submit_batch(struct pipeline *pl, struct shard_batch *batch);
/* Queue a stream-time advance to now_ms (all shards caught up). */
void pipeline_submit_tick(struct pipeline *pl, int64_t now_ms);
/* Queue closing every open second (end of a replay). */
void pipeline_submit_close_all(struct pipeline *pl);
/* Remember that outbox message id was delivered; deleted by a later job. */
void pipeline_ack(struct pipeline *pl, int64_t id);
/* Queue a job that only deletes delivered outbox rows, if there are any. */
void pipeline_flush_acks(struct pipeline *pl);
/* True when no job runs or waits. */
bool pipeline_idle(const struct pipeline *pl);
/* True while the outbox contains outbox.max messages or more and has not
 * gone below 90% of it since. Jobs other than deletions then wait. */
bool pipeline_outbox_full(const struct pipeline *pl);
/*
 * Free the jobs that wait for a full outbox, when stopping. Their records
 * were not committed and are read again at the next start. Returns how
 * many were freed.
 */
size_t pipeline_discard_held(struct pipeline *pl);
size_t pipeline_pending_acks(const struct pipeline *pl);
/* Milliseconds that the running job has been running at now_ms (a
 * uv_now(loop) value), or 0 when no job runs. */
uint64_t pipeline_running_ms(const struct pipeline *pl, uint64_t now_ms);

const struct pipeline_counters *pipeline_counters(const struct pipeline *pl);

/*
 * The merge of shards: batches of several shards become pipeline work in
 * the order of their records' ApproximateArrivalTimestamp, so that a shard
 * read far ahead of another does not make the other's records late. A
 * record is released once no shard that is still behind can deliver an
 * earlier one: its arrival time is at or below the watermark, the smallest
 * newest-arrival time among shards that are not caught up.
 */
struct merge;

/* hold_limit_ms bounds how long a record waits for a stalled shard. */
struct merge *merge_new(struct pipeline *pl, int64_t hold_limit_ms);
void merge_free(struct merge *m);
/* Take a batch from the reader (takes ownership). */
void merge_add(struct merge *m, struct shard_batch *batch, int64_t now_ms);
/* Release what the reader's shards allow; call after each change. */
void merge_release(struct merge *m, const struct reader *rd, int64_t now_ms);
/* Records held and not yet released. */
size_t merge_pending(const struct merge *m);
/* Tell the merge that the reader is paused or resumed, so that the time
 * it is paused does not count against hold_limit_ms. */
void merge_set_paused(struct merge *m, bool paused, int64_t now_ms);

/*
 * The HTTP server for health and metrics (daemon/http.c), on the loop
 * thread. It reads what it reports through a status that its owner keeps
 * up to date; the pointers may be NULL until the modules exist.
 */
struct publisher;

struct http_status {
    const struct pipeline *pipeline;
    const struct reader *reader;
    const struct publisher *publisher;
    bool reader_ready; /* the first ListShards succeeded */
    bool stopping;
};

struct http_server;

/*
 * Listen on listen ("HOST:PORT", "[IPV6]:PORT"; port 0 picks a free port)
 * and log the bound address. status is borrowed until http_server_close.
 * Returns the server, or NULL after logging why.
 */
struct http_server *http_server_start(uv_loop_t *loop, const char *listen,
                                      const struct http_status *status);
/*
 * Stop listening and drop open connections; closed_cb runs once every
 * handle is closed and srv is freed.
 */
void http_server_close(struct http_server *srv, void (*closed_cb)(void *arg),
                       void *arg);

/* MillisBehindLatest of one shard in a metrics snapshot. */
struct metrics_shard {
    char shard_id[129]; /* Kinesis shard ids have at most 128 characters */
    int64_t millis_behind;
};

/*
 * One reading of every value that /metrics and the EMF lines report
 * (daemon/metrics.c), so that both formats show the same numbers. Counters
 * are totals since the start. commit_buckets are cumulative and capped at
 * commit_count, as the histogram needs them.
 */
struct metrics_snapshot {
    bool ready;
    uint64_t records_read;
    uint64_t records_applied;
    uint64_t duplicates;
    uint64_t validation_conflicts;
    uint64_t rejected[AGG_REJECT_COUNT]; /* index AGG_REJECT_NONE unused */
    uint64_t missing_key_rejected;
    uint64_t outcomes[AGG_OUTCOME_COUNT];
    uint64_t batches_committed;
    uint64_t messages_built;
    uint64_t outbox_depth;
    uint64_t outbox_pauses;
    uint64_t commit_buckets[PIPELINE_COMMIT_BUCKETS];
    uint64_t commit_count;
    uint64_t commit_us_sum;
    struct reader_counters reader;
    struct pub_stats publisher;
    uint64_t publish_pending;
    struct metrics_shard *shards; /* owned; those with a MillisBehindLatest */
    size_t shard_count;
};

/*
 * Read every counter of status into snap, which metrics_snapshot_free
 * releases. Returns 0, or -1 when out of memory, in which case snap contains
 * the counters but no shard.
 */
int metrics_snapshot_take(const struct http_status *status,
                          struct metrics_snapshot *snap);
void metrics_snapshot_free(struct metrics_snapshot *snap);

/* Append the Prometheus text format (version 0.0.4) of status to out. */
void metrics_render(const struct http_status *status, struct strbuf *out);
/* Append the Prometheus text format of snap to out. */
void metrics_render_snapshot(const struct metrics_snapshot *snap,
                             struct strbuf *out);

/*
 * Append the CloudWatch EMF lines (daemon/emf.c) of the interval from prev
 * to now, prev NULL for the first one: one line of the stream's metrics
 * and one of MillisBehindLatest per shard of now, each ending in '\n'.
 */
void emf_render(const struct metrics_snapshot *now,
                const struct metrics_snapshot *prev, const char *namespace,
                const char *stream, int64_t timestamp_ms, struct strbuf *out);
/* Number of metrics in the stream's line when a commit happened, for the
 * limit of 100 per directive. */
size_t emf_stream_metric_count(void);

/*
 * The EMF lines of `podium run`: every metrics.emf_interval_s, the metrics
 * of status since the last line go to fd in metrics.emf_namespace. status
 * is borrowed until emf_writer_close. Returns NULL when out of memory.
 */
struct emf_writer;
struct emf_writer *emf_writer_start(uv_loop_t *loop,
                                    const struct podium_config *cfg,
                                    const struct http_status *status, int fd);
/* Write the lines of the time since the last one now. */
void emf_writer_flush(struct emf_writer *w);
/* Stop and free w without writing; closed_cb runs once w is freed. The
 * owner flushes first when the lines must add up to the totals. */
void emf_writer_close(struct emf_writer *w, void (*closed_cb)(void *arg),
                      void *arg);
/* Append a label value with backslash, double quote and line feed escaped
 * as the text format requires. */
void metrics_append_label_value(struct strbuf *out, const char *value);

/*
 * Messages to the service manager (daemon/notify.c): the sd_notify(3)
 * protocol over the datagram socket named by $NOTIFY_SOCKET. Loop thread
 * only. Every function accepts NULL, the notifier of a process that systemd
 * did not start, and then does nothing.
 */
struct notifier;

/* Read $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID. Returns NULL when
 * NOTIFY_SOCKET is unset, or after a warning when it cannot be used. */
struct notifier *notifier_open(void);
void notifier_close(struct notifier *n);
/* The watchdog interval that systemd expects pings within, in
 * microseconds, or 0 when the watchdog is off for this process. */
uint64_t notifier_watchdog_usec(const struct notifier *n);
/* Send READY=1 with a STATUS= line. */
void notifier_ready(struct notifier *n, const char *status);
/* Send a STATUS= line for `systemctl status`. */
void notifier_status(struct notifier *n, const char *status);
/* Send WATCHDOG=1, unless the watchdog is off or STOPPING=1 was sent. */
void notifier_watchdog(struct notifier *n);
/* Send STOPPING=1 with a STATUS= line, once. No WATCHDOG=1 follows. */
void notifier_stopping(struct notifier *n, const char *status);

/*
 * The recording format (daemon/recording.c): JSON lines, one Kinesis record
 * a line, with the field names and types of the Kinesis API.
 */
struct recording_line {
    const char *shard_id;
    const char *seq;    /* decimal sequence number */
    int64_t subseq;     /* user record of a KPL aggregate, or -1 for none */
    int64_t arrival_ms; /* ApproximateArrivalTimestamp, 0 or more */
    const char *partition_key;
    size_t partition_key_len;
    const uint8_t *data;
    size_t len;
};

/* Append line as one recording line, newline included. Returns 0, or -1
 * when out of memory or when sb has failed. */
int recording_append_line(struct strbuf *sb, const struct recording_line *line);

/*
 * Read an ApproximateArrivalTimestamp as the AWS CLI prints it: len bytes
 * of ISO 8601 text with a UTC offset (2026-12-04T10:15:30.123000+00:00), or
 * of a JSON number of seconds since the epoch (1796379330.123). Digits below
 * the millisecond must be zero. Returns 0 with *ms, or -1 with the reason
 * in err, worded to follow the value ("... is not ...").
 */
int recording_parse_iso8601(const char *text, size_t len, int64_t *ms,
                            char *err, size_t err_len);
int recording_parse_epoch(const char *text, size_t len, int64_t *ms, char *err,
                          size_t err_len);

/* Options of `podium record --import` (daemon/record_import.c). */
struct import_options {
    const char *shard_id;
    const char *out; /* "-" is standard output */
    bool skip_bad_records;
    char **files;
    size_t file_count;
};

/* Convert aws kinesis get-records output to a recording. Returns the exit
 * status. */
int record_import(const struct import_options *opts);

#endif
