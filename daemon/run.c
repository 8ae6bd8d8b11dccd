/*
 * `podium run`: wire the modules together on one libuv loop.
 *
 * Start-up: configuration, the store, the aggregator rebuilt from the store,
 * the publisher with the outbox rows left from the last run, then the shard
 * reader from the stored checkpoints. Batches flow reader -> pipeline
 * (worker thread, one transaction each) -> publisher, and the reader
 * continues a shard only after its batch committed.
 *
 * Stopping on SIGINT or SIGTERM: stop reading, let the queued batches commit,
 * give the publisher a bounded time to deliver, delete what it delivered,
 * close every handle and exit 0. A GetRecords reply still in flight is
 * abandoned and read again next time. A fatal error takes the same path and
 * exits 1.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/aws.h"
#include "common/log.h"
#include "publisher/publisher.h"
#include "store/idempotency.h"

extern char **environ;

/* Time the publisher gets to deliver the outbox when stopping. */
#define RUN_FLUSH_TIMEOUT_MS 5000
/* How often the loop checks the merge, idleness, acks and stopping. */
#define RUN_TICK_MS 100
/* Stream-time advance while caught up, at most this often. */
#define RUN_STREAM_TICK_MS 1000
/* Outbox rows loaded per query at start-up. */
#define RUN_OUTBOX_PAGE 1000
/* How often a STATUS= line goes to systemd. */
#define RUN_STATUS_INTERVAL_MS 5000

enum run_phase {
    PHASE_RUNNING,
    PHASE_STOP_READING,
    PHASE_DRAINING,
    PHASE_FLUSHING,
    PHASE_FINAL_ACKS,
    PHASE_CLOSING
};

struct daemon {
    uv_loop_t loop;
    struct podium_config cfg;
    struct store *store;
    struct pipeline *pipeline;
    struct merge *merge;
    struct httpc *http;
    struct reader *reader;
    struct publisher *publisher;
    struct http_server *http_server; /* health and metrics */
    struct emf_writer *emf;          /* NULL unless metrics.emf is on */
    struct http_status http_status;
    struct aws_endpoint endpoint;
    struct aws_credentials creds;

    const struct common_opts *opts; /* what the configuration came from */
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_signal_t sighup;
    uv_timer_t tick;
    uv_timer_t watchdog;       /* sends WATCHDOG=1 under WATCHDOG_USEC */
    struct notifier *notifier; /* NULL without NOTIFY_SOCKET */
    bool watchdog_withheld;    /* a stuck job stopped the pings */
    int64_t last_status_ms;

    enum run_phase phase;
    int exit_code;
    int64_t flush_deadline_ms;
    int64_t last_stream_tick_ms;
    int open_handles; /* closes still to complete */
};

static void begin_stop(struct daemon *d, int exit_code);

/* ---- hooks --------------------------------------------------------- */

static void on_batch(void *arg, struct shard_batch *batch)
{
    struct daemon *d = arg;
    int64_t now = log_now_ms();
    merge_add(d->merge, batch, now);
    merge_release(d->merge, d->reader, now);
}

static void on_ready(void *arg, size_t open_shards)
{
    struct daemon *d = arg;
    struct log_ids ids = {.stream = d->cfg.stream_name};
    char status[300];
    d->http_status.reader_ready = true;
    if (open_shards == 0) {
        log_info("main", &ids, "ready: the stream has no open shards");
        snprintf(status, sizeof status,
                 "ready: stream \"%s\" has no open shards; listing them "
                 "again every %d s",
                 d->cfg.stream_name, (int)d->cfg.shard_sync_interval_s);
    } else {
        log_info("main", &ids, "ready: reading %zu open shards", open_shards);
        snprintf(status, sizeof status,
                 "ready: reading %zu open shards of stream \"%s\"", open_shards,
                 d->cfg.stream_name);
    }
    notifier_ready(d->notifier, status);
    d->last_status_ms = log_now_ms();
}

static void on_reader_fatal(void *arg, const char *message)
{
    struct daemon *d = arg;
    struct log_ids ids = {.stream = d->cfg.stream_name};
    char status[400];
    log_error("main", &ids, "stopping: %s", message);
    begin_stop(d, 1);
    snprintf(status, sizeof status, "stopping after an error: %s", message);
    notifier_status(d->notifier, status);
}

/*
 * Pause the reader while the pipeline keeps jobs waiting for a full outbox
 * (the pipeline logs the change), and resume it after. Checked after each
 * committed batch and on every tick.
 */
static void sync_reader_pause(struct daemon *d)
{
    if (d->reader == NULL || d->phase != PHASE_RUNNING)
        return;
    bool paused = pipeline_outbox_full(d->pipeline);
    reader_set_paused(d->reader, paused);
    merge_set_paused(d->merge, paused, log_now_ms());
}

static void on_committed(void *arg, const char *shard_id)
{
    struct daemon *d = arg;
    sync_reader_pause(d);
    if (d->reader != NULL && d->phase == PHASE_RUNNING)
        reader_batch_committed(d->reader, shard_id);
}

static void on_message(void *arg, int64_t id, const char *topic,
                       const char *payload, size_t len)
{
    struct daemon *d = arg;
    if (publisher_submit(d->publisher, id, topic, payload, len) != 0) {
        struct log_ids ids = {.topic = topic};
        log_error("main", &ids,
                  "failed to queue outbox message %" PRId64
                  " for publishing; it stays in the outbox",
                  id);
    }
}

static void on_pipeline_fatal(void *arg, const char *message)
{
    struct daemon *d = arg;
    char status[400];
    log_error("main", NULL, "stopping: %s", message);
    begin_stop(d, 1);
    snprintf(status, sizeof status, "stopping after an error: %s", message);
    notifier_status(d->notifier, status);
}

static void on_ack(void *arg, int64_t id)
{
    struct daemon *d = arg;
    pipeline_ack(d->pipeline, id);
}

/* ---- stopping ------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *handle)
{
    struct daemon *d = handle->data;
    d->open_handles--;
}

static void on_module_closed(void *arg)
{
    struct daemon *d = arg;
    d->open_handles--;
}

static void close_all(struct daemon *d)
{
    enum run_phase was = d->phase;

    d->phase = PHASE_CLOSING;
    d->open_handles = 5;
    /* Start-up failed after the reader started: stop it before freeing. */
    if (was == PHASE_RUNNING && d->reader != NULL) {
        d->open_handles++;
        reader_stop(d->reader, on_module_closed, d);
    }
    uv_close((uv_handle_t *)&d->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&d->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&d->sighup, on_handle_closed);
    uv_close((uv_handle_t *)&d->tick, on_handle_closed);
    uv_close((uv_handle_t *)&d->watchdog, on_handle_closed);
    /* Before the publisher, so that no request reads a closed one. */
    if (d->http_server != NULL) {
        d->open_handles++;
        http_server_close(d->http_server, on_module_closed, d);
        d->http_server = NULL;
    }
    if (d->publisher != NULL) {
        d->open_handles++;
        publisher_close(d->publisher, on_module_closed, d);
        d->publisher = NULL;
    }
    if (d->http != NULL) {
        d->open_handles++;
        httpc_close(d->http, on_module_closed, d);
        d->http = NULL;
    }
    if (d->emf != NULL) {
        d->open_handles++;
        emf_writer_close(d->emf, on_module_closed, d);
        d->emf = NULL;
    }
    /* After the publisher and the reader's client: no call is in flight. */
    if (d->creds.provider != NULL) {
        d->open_handles++;
        daemon_credentials_close(&d->creds, on_module_closed, d);
    }
}

static void on_reader_stopped(void *arg)
{
    struct daemon *d = arg;
    d->phase = PHASE_DRAINING;
}

static void begin_stop(struct daemon *d, int exit_code)
{
    if (exit_code > d->exit_code)
        d->exit_code = exit_code;
    if (d->phase != PHASE_RUNNING)
        return;
    d->phase = PHASE_STOP_READING;
    d->http_status.stopping = true;
    uv_timer_stop(&d->watchdog);
    notifier_stopping(d->notifier, "stopping: no new reads, committing "
                                   "batches in flight");
    log_info("main", NULL,
             "stopping: no new reads, committing batches in "
             "flight");
    if (d->reader != NULL)
        reader_stop(d->reader, on_reader_stopped, d);
    else
        d->phase = PHASE_DRAINING;
}

static void on_signal(uv_signal_t *handle, int signum)
{
    struct daemon *d = handle->data;
    if (d->phase != PHASE_RUNNING) {
        log_warn("main", NULL, "second signal %d: exiting now", signum);
        exit(d->exit_code);
    }
    log_info("main", NULL, "received signal %d", signum);
    begin_stop(d, 0);
}

/* ---- reloading on SIGHUP ----------------------------------------- */

/* The "key = value  # source" lines of every setting of cfg (owned), or
 * NULL when out of memory. */
static char *settings_text(const struct podium_config *cfg)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (f == NULL)
        return NULL;
    cfg_print(cfg, f);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* Length of line up to its "  # source" comment. */
static size_t setting_length(const char *line, size_t len)
{
    for (size_t i = len; i >= 4; i--) {
        if (memcmp(line + i - 4, "  # ", 4) == 0)
            return i - 4;
    }
    return len;
}

/*
 * Log a warning for every setting other than log.* whose value differs
 * between the running and the loaded configuration: they take effect only
 * at the next start. Both lists have the same settings in the same order.
 */
static void warn_restart_settings(const struct podium_config *running,
                                  const struct podium_config *loaded)
{
    char *old_text = settings_text(running);
    char *new_text = settings_text(loaded);
    const char *a = old_text, *b = new_text;

    while (a != NULL && b != NULL && *a != '\0' && *b != '\0') {
        size_t a_len = strcspn(a, "\n"), b_len = strcspn(b, "\n");
        size_t a_setting = setting_length(a, a_len);
        size_t b_setting = setting_length(b, b_len);
        bool changed = a_setting != b_setting || memcmp(a, b, a_setting) != 0;
        if (changed && strncmp(b, "log.", 4) != 0)
            log_warn("main", NULL,
                     "%.*s changed in the configuration (running: %.*s); it "
                     "takes effect at the next restart",
                     (int)b_setting, b, (int)a_setting, a);
        a += a_len + (a[a_len] == '\n');
        b += b_len + (b[b_len] == '\n');
    }
    free(old_text);
    free(new_text);
}

/*
 * Read the configuration again from the same file, environment and --set
 * flags, then reopen log.file (for log rotation) and apply log.level. An
 * invalid configuration or a log file that cannot be opened changes
 * nothing.
 */
static void on_sighup(uv_signal_t *handle, int signum)
{
    struct daemon *d = handle->data;
    struct podium_config loaded;
    char err[1024];
    enum log_level level;

    (void)signum;
    if (load_config_error(d->opts, &loaded, err, sizeof err) != 0) {
        log_error("main", NULL,
                  "failed to reload the configuration on SIGHUP: %s; the "
                  "running configuration stays in effect",
                  err);
        return;
    }
    if (loaded.log_file != NULL &&
        log_open_file(loaded.log_file, err, sizeof err) != 0) {
        log_error("main", NULL,
                  "failed to reload the configuration on SIGHUP: %s; the "
                  "running configuration stays in effect",
                  err);
        cfg_free(&loaded);
        return;
    }
    if (loaded.log_file == NULL)
        log_use_stderr();
    level = (enum log_level)loaded.log_level;
    log_set_level(level);
    warn_restart_settings(&d->cfg, &loaded);

    /* Nothing borrows the log settings, so they can be swapped. */
    char *file = d->cfg.log_file;
    d->cfg.log_file = loaded.log_file;
    loaded.log_file = file;
    d->cfg.log_level = loaded.log_level;
    cfg_free(&loaded);
    log_info("main", NULL,
             "reloaded the configuration on SIGHUP: log.level %s, log.file %s",
             level == LOG_ERROR  ? "error"
             : level == LOG_WARN ? "warn"
             : level == LOG_INFO ? "info"
                                 : "debug",
             d->cfg.log_file != NULL ? d->cfg.log_file : "(standard error)");
}

/* Advance the stopping state machine; called from the tick timer. */
static void step_stop(struct daemon *d, int64_t now)
{
    switch (d->phase) {
    case PHASE_DRAINING:
        if (pipeline_outbox_full(d->pipeline)) {
            size_t held = pipeline_discard_held(d->pipeline);
            if (held > 0)
                log_info("main", NULL,
                         "dropped %zu jobs held back by the full outbox; "
                         "their records are read again at the next start",
                         held);
        }
        if (!pipeline_idle(d->pipeline))
            return;
        d->phase = PHASE_FLUSHING;
        d->flush_deadline_ms = now + RUN_FLUSH_TIMEOUT_MS;
        return;
    case PHASE_FLUSHING:
        if (d->publisher != NULL && publisher_pending(d->publisher) > 0 &&
            now < d->flush_deadline_ms)
            return;
        if (d->publisher != NULL && publisher_pending(d->publisher) > 0)
            log_warn("main", NULL,
                     "%zu messages not delivered before the "
                     "deadline; they stay in the outbox for the next start",
                     publisher_pending(d->publisher));
        d->phase = PHASE_FINAL_ACKS;
        pipeline_flush_acks(d->pipeline);
        return;
    case PHASE_FINAL_ACKS:
        if (!pipeline_idle(d->pipeline))
            return;
        /* The last EMF lines count what happened since the previous ones,
         * so that the lines of a run add up to its totals. */
        if (d->emf != NULL)
            emf_writer_flush(d->emf);
        close_all(d);
        return;
    default:
        return;
    }
}

/* ---- periodic work ------------------------------------------------- */

/* Describe the state for `systemctl status`. */
static void send_status(struct daemon *d)
{
    char status[400];

    if (!d->http_status.reader_ready) {
        struct reader_counters rc;
        reader_get_counters(d->reader, &rc);
        uint64_t failed = rc.connection_errors + rc.timeouts +
                          rc.server_errors + rc.throttled + rc.other_errors;
        snprintf(status, sizeof status,
                 "starting: waiting for ListShards of stream \"%s\" at %s; "
                 "%" PRIu64 " calls failed so far (%" PRIu64
                 " connection errors, %" PRIu64 " timeouts, %" PRIu64
                 " server errors, %" PRIu64 " throttled), retrying",
                 d->cfg.stream_name, d->cfg.kinesis_endpoint, failed,
                 rc.connection_errors, rc.timeouts, rc.server_errors,
                 rc.throttled);
        notifier_status(d->notifier, status);
        return;
    }

    const struct pipeline_counters *pc = pipeline_counters(d->pipeline);
    size_t reading = 0;
    struct reader_shard_info info;
    for (size_t i = 0; reader_shard_info(d->reader, i, &info) == 0; i++)
        reading += info.reading;
    snprintf(status, sizeof status,
             "reading %zu shards, %" PRIu64 " records applied, outbox %" PRIu64
             "%s",
             reading, (uint64_t)atomic_load(&pc->records_applied),
             (uint64_t)atomic_load(&pc->outbox_depth),
             pipeline_outbox_full(d->pipeline)
                 ? ", reading paused: the outbox is full"
                 : "");
    notifier_status(d->notifier, status);
}

/*
 * Send WATCHDOG=1 while podium makes progress. Progress means: the loop
 * runs this timer, and the pipeline's running job, if any, started at most
 * one watchdog interval ago. An idle pipeline counts as progress, so a
 * stream with nothing to read stays healthy, and so does a full outbox,
 * since a restart would not empty it. A job stuck on the store (a lock
 * held by another process, a hung disk) stops the pings, and systemd then
 * stops and restarts podium.
 */
static void on_watchdog(uv_timer_t *timer)
{
    struct daemon *d = timer->data;
    uint64_t limit_ms = notifier_watchdog_usec(d->notifier) / 1000;
    uint64_t busy_ms = d->pipeline != NULL
                           ? pipeline_running_ms(d->pipeline, uv_now(&d->loop))
                           : 0;

    if (busy_ms > limit_ms) {
        if (!d->watchdog_withheld)
            log_warn("main", NULL,
                     "withholding the systemd watchdog ping: a pipeline job "
                     "has run for %" PRIu64 " ms, longer than the watchdog "
                     "interval of %" PRIu64 " ms",
                     busy_ms, limit_ms);
        d->watchdog_withheld = true;
        return;
    }
    if (d->watchdog_withheld)
        log_info("main", NULL,
                 "the pipeline job finished: systemd watchdog pings resume");
    d->watchdog_withheld = false;
    notifier_watchdog(d->notifier);
}

static void on_tick(uv_timer_t *timer)
{
    struct daemon *d = timer->data;
    int64_t now = log_now_ms();

    if (d->phase != PHASE_RUNNING) {
        step_stop(d, now);
        return;
    }
    if (now - d->last_status_ms >= RUN_STATUS_INTERVAL_MS) {
        d->last_status_ms = now;
        send_status(d);
    }
    sync_reader_pause(d);
    merge_release(d->merge, d->reader, now);
    if (!pipeline_idle(d->pipeline))
        return;
    /* While every shard is caught up, stream time follows the clock so an
     * idle race still closes in a live run, but never past held records.
     * Delivered messages are deleted even while records are held: a full
     * outbox pauses the reader, and the held records may wait for the
     * batch that the pause holds back. */
    if (merge_pending(d->merge) == 0 && reader_caught_up(d->reader) &&
        now - d->last_stream_tick_ms >= RUN_STREAM_TICK_MS) {
        d->last_stream_tick_ms = now;
        pipeline_submit_tick(d->pipeline, now);
        return;
    }
    pipeline_flush_acks(d->pipeline);
}

/* ---- start-up ------------------------------------------------------ */

struct checkpoint_list {
    struct reader_checkpoint *items;
    size_t count;
    size_t cap;
};

static int collect_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    struct checkpoint_list *list = arg;
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 16;
        struct reader_checkpoint *p = realloc(list->items, cap * sizeof *p);
        if (p == NULL)
            return -1;
        list->items = p;
        list->cap = cap;
    }
    struct reader_checkpoint *rc = &list->items[list->count];
    rc->shard_id = strdup(cp->shard_id);
    rc->seq = cp->seq ? strdup(cp->seq) : NULL;
    rc->subseq = cp->subseq;
    rc->finished = cp->finished;
    if (rc->shard_id == NULL || (cp->seq != NULL && rc->seq == NULL)) {
        free((char *)rc->shard_id);
        free((char *)rc->seq);
        return -1;
    }
    list->count++;
    return 0;
}

static void checkpoint_list_free(struct checkpoint_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        free((char *)list->items[i].shard_id);
        free((char *)list->items[i].seq);
    }
    free(list->items);
}

struct outbox_cursor {
    struct daemon *d;
    int64_t last_id;
    size_t rows;
};

static int submit_outbox_row(void *arg, int64_t id, const char *topic,
                             const void *payload, size_t len)
{
    struct outbox_cursor *cur = arg;
    cur->last_id = id;
    cur->rows++;
    if (publisher_submit(cur->d->publisher, id, topic, payload, len) != 0) {
        /* The row stays in the outbox; the next start tries it again. */
        struct log_ids ids = {.topic = topic};
        log_error("main", &ids,
                  "failed to queue outbox message %" PRId64
                  " for publishing: invalid topic or payload",
                  id);
    }
    return 0;
}

/* Hand the messages left in the outbox by the last run to the publisher. */
static int resend_outbox(struct daemon *d)
{
    struct outbox_cursor cur = {d, 0, 0};
    size_t total = 0;
    do {
        cur.rows = 0;
        if (store_outbox_load(d->store, cur.last_id, RUN_OUTBOX_PAGE,
                              submit_outbox_row, &cur) != 0) {
            log_error("main", NULL, "failed to read the outbox: %s",
                      store_errmsg(d->store));
            return -1;
        }
        total += cur.rows;
    } while (cur.rows == RUN_OUTBOX_PAGE);
    if (total > 0)
        log_info("main", NULL, "sending %zu messages left in the outbox",
                 total);
    return 0;
}

static enum reader_position reader_position_of(enum cfg_position pos)
{
    switch (pos) {
    case CFG_POSITION_LATEST:
        return READER_LATEST;
    case CFG_POSITION_AT_TIMESTAMP:
        return READER_AT_TIMESTAMP;
    default:
        return READER_TRIM_HORIZON;
    }
}

static int start_reader(struct daemon *d)
{
    struct checkpoint_list list = {0};
    struct reader_config rc = {
        .stream_name = d->cfg.stream_name,
        .endpoint = &d->endpoint,
        .credentials = &d->creds,
        .initial_position = reader_position_of(d->cfg.initial_position),
        .initial_timestamp_ms = d->cfg.initial_timestamp_ms,
        .poll_interval_ms = d->cfg.poll_interval_ms,
        .request_timeout_ms = d->cfg.request_timeout_ms,
        .max_records = d->cfg.max_records,
        .shard_sync_interval_s = d->cfg.shard_sync_interval_s,
    };
    struct reader_callbacks cbs = {d, on_batch, on_ready, on_reader_fatal};
    int rc_start = -1;

    if (store_checkpoints_load(d->store, collect_checkpoint, &list) != 0) {
        log_error("main", NULL, "failed to read checkpoints: %s",
                  store_errmsg(d->store));
        goto out;
    }
    d->reader = reader_new(&d->loop, d->http, &rc, &cbs);
    if (d->reader == NULL) {
        log_error("main", NULL, "failed to create the shard reader");
        goto out;
    }
    /* The outbox may be full with messages of the last run. */
    reader_set_paused(d->reader, pipeline_outbox_full(d->pipeline));
    rc_start = reader_start(d->reader, list.items, list.count);
out:
    checkpoint_list_free(&list);
    return rc_start;
}

static int start_publisher(struct daemon *d)
{
    char err[512];
    struct pub_config pc;
    daemon_pub_config(&d->cfg, &d->creds, &pc);
    d->publisher = publisher_new(&d->loop, &pc, on_ack, d, err, sizeof err);
    if (d->publisher == NULL) {
        log_error("main", NULL, "failed to start the publisher: %s", err);
        return -1;
    }
    return resend_outbox(d);
}

/* Open the store and rebuild the aggregator; returns an exit status. */
static int open_state(struct daemon *d)
{
    char err[512];
    struct pipeline_hooks hooks = {d, on_committed, on_message,
                                   on_pipeline_fatal, NULL};

    if (store_open(d->cfg.store_path, &d->store, err, sizeof err) != 0) {
        log_error("main", NULL, "failed to open the store: %s", err);
        return 1;
    }
    if (daemon_open_idempotency(d->store, &d->cfg) != 0)
        return 1;
    d->pipeline = pipeline_new(&d->loop, d->store, &d->cfg, &hooks);
    if (d->pipeline == NULL || pipeline_restore(d->pipeline) != 0)
        return 1;
    /* A record waits for a lagging shard at most as long as one request
     * of that shard may take, then leaves and the lag becomes lateness. */
    d->merge = merge_new(d->pipeline, (int64_t)d->cfg.request_timeout_ms +
                                          d->cfg.poll_interval_ms);
    return d->merge != NULL ? 0 : 1;
}

/* Check the stream and resolve the endpoint; returns 0 or an exit status. */
static int prepare_aws(struct daemon *d)
{
    char err[512];
    if (d->cfg.stream_name == NULL) {
        fprintf(stderr, "podium: stream.name is not set; set it in the "
                        "configuration file, with PODIUM_STREAM_NAME or "
                        "with --set stream.name=NAME\n");
        return 2;
    }
    struct idem_keyexpr *key, *validation;
    if (pipeline_compile_keys(&d->cfg, &key, &validation, err, sizeof err)) {
        fprintf(stderr, "podium: %s\n", err);
        return 2;
    }
    idem_keyexpr_free(key);
    idem_keyexpr_free(validation);
    if (aws_endpoint_init(&d->endpoint, d->cfg.kinesis_endpoint, d->cfg.region,
                          "kinesis", err, sizeof err) != 0) {
        fprintf(stderr, "podium: invalid kinesis.endpoint: %s\n", err);
        return 2;
    }
    return 0;
}

static int init_loop(struct daemon *d)
{
    if (uv_loop_init(&d->loop) != 0)
        return -1;
    uv_signal_init(&d->loop, &d->sigint);
    uv_signal_init(&d->loop, &d->sigterm);
    uv_signal_init(&d->loop, &d->sighup);
    uv_timer_init(&d->loop, &d->tick);
    uv_timer_init(&d->loop, &d->watchdog);
    d->sigint.data = d->sigterm.data = d->sighup.data = d;
    d->tick.data = d->watchdog.data = d;
    uv_signal_start(&d->sigint, on_signal, SIGINT);
    uv_signal_start(&d->sigterm, on_signal, SIGTERM);
    uv_signal_start(&d->sighup, on_sighup, SIGHUP);
    uv_timer_start(&d->tick, on_tick, RUN_TICK_MS, RUN_TICK_MS);
    /* Pings at half the interval, as sd_watchdog_enabled(3) advises. */
    uint64_t ping_ms = notifier_watchdog_usec(d->notifier) / 2000;
    if (notifier_watchdog_usec(d->notifier) > 0)
        uv_timer_start(&d->watchdog, on_watchdog, 0, ping_ms > 0 ? ping_ms : 1);
    return httpc_new(&d->loop, &d->http);
}

static void shutdown_daemon(struct daemon *d)
{
    if (d->phase != PHASE_CLOSING)
        close_all(d);
    uv_run(&d->loop, UV_RUN_DEFAULT);
    reader_free(d->reader);
    merge_free(d->merge);
    pipeline_free(d->pipeline);
    store_close(d->store);
    int rc = uv_loop_close(&d->loop);
    if (rc != 0) {
        log_warn("main", NULL, "handles still open at exit: %s",
                 uv_strerror(rc));
        uv_print_all_handles(&d->loop, stderr);
    }
    aws_endpoint_clear(&d->endpoint);
    aws_credentials_clear(&d->creds);
    notifier_close(d->notifier);
    d->notifier = NULL;
}

static int run_daemon(struct daemon *d)
{
    daemon_warn_unknown_env(environ, NULL);
    int rc = prepare_aws(d);
    if (rc != 0) {
        aws_endpoint_clear(&d->endpoint);
        aws_credentials_clear(&d->creds);
        return rc;
    }
    d->notifier = notifier_open();
    notifier_status(d->notifier, "starting: opening the store");
    if (init_loop(d) != 0) {
        log_error("main", NULL, "failed to set up the event loop");
        notifier_close(d->notifier);
        return 1;
    }
    /* Container and instance credentials are fetched before the loop runs;
     * the provider refreshes them on it. */
    rc = daemon_credentials_open(&d->loop, &d->cfg, "podium", &d->creds);
    if (rc == 0) {
        d->http_server =
            http_server_start(&d->loop, d->cfg.http_listen, &d->http_status);
        rc = d->http_server != NULL ? open_state(d) : 1;
    }
    if (rc == 0 && start_publisher(d) != 0)
        rc = 1;
    if (rc == 0 && start_reader(d) != 0)
        rc = 1;
    d->http_status.pipeline = d->pipeline;
    d->http_status.publisher = d->publisher;
    d->http_status.reader = d->reader;
    if (rc == 0 && d->cfg.metrics_emf) {
        d->emf =
            emf_writer_start(&d->loop, &d->cfg, &d->http_status, STDOUT_FILENO);
        if (d->emf == NULL) {
            log_error("main", NULL,
                      "failed to start the EMF metrics: out of memory");
            rc = 1;
        }
    }
    if (rc == 0) {
        struct log_ids ids = {.stream = d->cfg.stream_name};
        log_info("main", &ids, "podium %s started: store %s", PODIUM_VERSION,
                 d->cfg.store_path);
        send_status(d);
        d->last_status_ms = log_now_ms();
        uv_run(&d->loop, UV_RUN_DEFAULT);
        rc = d->exit_code;
    }
    shutdown_daemon(d);
    return rc;
}

int cmd_run_with(struct podium_config *cfg, const struct common_opts *opts);

/* Run the daemon with the configuration loaded from opts (takes cfg);
 * opts is borrowed for reloading on SIGHUP. */
int cmd_run_with(struct podium_config *cfg, const struct common_opts *opts)
{
    char err[512];
    /* A broker, a health check client or the reader of standard output
     * that goes away must give a write error to handle, not end the
     * daemon. */
    signal(SIGPIPE, SIG_IGN);
    if (cfg->log_file != NULL &&
        log_open_file(cfg->log_file, err, sizeof err) != 0) {
        fprintf(stderr, "podium: %s; check log.file\n", err);
        cfg_free(cfg);
        return 1;
    }
    struct daemon *d = calloc(1, sizeof *d);
    if (d == NULL) {
        cfg_free(cfg);
        return 1;
    }
    d->cfg = *cfg;
    d->opts = opts;
    log_set_level((enum log_level)d->cfg.log_level);
    int rc = run_daemon(d);
    cfg_free(&d->cfg);
    free(d);
    return rc;
}
