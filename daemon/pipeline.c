/*
 * The batch pipeline: the one place where Kinesis records become durable
 * state.
 *
 * Every unit of work is a job: a GetRecords batch of one shard, a
 * stream-time tick, closing every race at the end of a replay, or deleting
 * delivered outbox rows. Jobs run one at a time, in submission order, on a
 * libuv worker thread (uv_queue_work), so the loop thread never waits on a
 * commit and the store and the aggregator are never used by two threads at
 * once. A job opens one write transaction (BEGIN IMMEDIATE) and puts
 * everything it causes into it: idempotency rows, samples, race state, dead
 * letters, outbox messages, deletions of delivered messages and the shard
 * checkpoint. A crash therefore keeps all of a batch or none of it, and the
 * records of a batch that did not commit are read again from the stored
 * checkpoint.
 *
 * Records that share one ApproximateArrivalTimestamp millisecond come in
 * one job (daemon/merge.c, daemon/replay.c; the one exception is a stalled
 * shard past the merge's hold limit), but their order there depends on the
 * shards that delivered them. Such a group is applied in an order
 * of their contents instead: valid records by (deviceTimestamp, uuid),
 * then rejected ones, each by their bytes, with the shard and sequence
 * number last for identical bytes. So one shard or many, the same records
 * close the same seconds, win the same conflicts and publish the same
 * bytes.
 *
 * The aggregator's memory changes while the job runs. If the commit fails,
 * memory and database disagree, so the pipeline stops taking jobs and
 * reports a fatal error; the daemon exits and the next start rebuilds the
 * aggregator from the database.
 *
 * Messages leave through the outbox: only after the commit are they handed
 * to the publisher, and their rows are deleted by a later job once the
 * publisher reports them delivered. A crash in between sends them again,
 * byte for byte. While the outbox contains outbox.max rows, only jobs that
 * delete rows start (daemon/outbox_gate.c).
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/seqnum.h"
#include "common/sjson.h"
#include "common/strbuf.h"
#include "publisher/publisher.h"
#include "store/idempotency.h"

/* Deleted outbox rows per job, so one job never grows without bound. */
#define PIPELINE_MAX_ACKS_PER_JOB 20000
/* Expired idempotency rows deleted per job: more than a job can add at
 * the largest GetRecords batch, so the table does not grow, yet bounded so
 * a job never stalls on a backlog of expired rows. */
#define PIPELINE_EXPIRE_PER_JOB 20000

enum job_kind { JOB_BATCH, JOB_TICK, JOB_CLOSE_ALL, JOB_ACKS };

/* A record of a job with its shard and, once decoded, its contents. */
struct group_entry {
    const char *shard_id;
    const struct shard_record *r;
    bool valid;
    struct agg_record rec;      /* when valid */
    struct agg_reject_info why; /* when not valid */
    /* Owned by the pipeline and kept across groups, so the next record
     * decoded in this entry reuses its memory. Read it only when valid. */
    struct sjson_doc *doc;
};

struct out_message {
    int64_t id;
    char *topic;
    char *payload;
    size_t len;
};

struct job {
    uv_work_t uv_work;
    struct pipeline *pl;
    enum job_kind kind;
    struct pipeline_work *work; /* JOB_BATCH, owned */
    int64_t now_ms;             /* JOB_TICK */
    int64_t *acks;              /* owned; outbox ids to delete */
    size_t ack_count;
    size_t deleted;           /* outbox rows the acks deleted */
    struct out_message *msgs; /* owned; built by the worker */
    size_t msg_count;
    size_t msg_cap;
    bool failed;
    char error[512];
    struct job *next;
};

struct pipeline {
    uv_loop_t *loop;
    struct store *store;
    const struct podium_config *cfg;
    struct pipeline_hooks hooks;
    struct agg *agg;
    struct idem_table *idem;         /* borrowed from the store */
    struct idem_keyexpr *key_expr;   /* owned */
    struct idem_keyexpr *validation; /* owned; NULL: the whole record */

    struct job *head; /* queued jobs, oldest first */
    struct job *tail;
    struct job *running;
    uint64_t running_since_ms; /* uv_now() when running started */
    bool failed;
    struct outbox_gate outbox;

    int64_t *acks; /* delivered outbox ids not yet given to a job */
    size_t ack_count;
    size_t ack_cap;

    /* Worker-side scratch, used only by the running job. */
    struct job *current;
    const char *current_shard;
    struct group_entry *group;  /* records of one arrival millisecond */
    struct group_entry **order; /* the same, sorted: entries are large */
    size_t group_cap;
    struct agg_decoder *decoder;
    struct strbuf ids[3];
    struct strbuf topic;
    struct strbuf key;

    struct log_limit reject_limit;
    struct log_limit conflict_limit;
    struct log_limit message_limit;
    struct pipeline_counters counters;
};

static int sink_sample(void *arg, const struct agg_sample_row *row);
static int sink_race_state(void *arg, const struct agg_id *race,
                           const char *json, size_t len);
static int sink_message(void *arg, const struct agg_message *msg);
static int sink_class_state(void *arg, const struct agg_id *class_id,
                            const char *json, size_t len);
static int sink_history(void *arg, const struct agg_history_row *row);

/* ---- construction ---------------------------------------------------- */

static void agg_config_from(const struct podium_config *cfg,
                            struct agg_config *out)
{
    memset(out, 0, sizeof *out);
    out->max_seconds = cfg->race_max_seconds;
    out->allowed_lateness_s = cfg->allowed_lateness_s;
    out->idle_close_s = cfg->idle_close_s;
    out->max_future_skew_s = cfg->max_future_skew_s;
    out->max_second_jump = cfg->max_second_jump;
    out->late_policy =
        cfg->late_policy == CFG_LATE_DROP ? AGG_LATE_DROP : AGG_LATE_AMEND;
    out->amend_window_s = cfg->amend_window_s;
    out->top_n = cfg->top_n;
    out->alleycat = cfg->alleycat_enabled;
}

/*
 * Compile the idempotency key and validation expressions of cfg into *key
 * and *validation (owned; *validation is NULL for the whole record).
 * Returns 0, or -1 with a message naming the setting in err.
 */
int pipeline_compile_keys(const struct podium_config *cfg,
                          struct idem_keyexpr **key,
                          struct idem_keyexpr **validation, char *err,
                          size_t err_len)
{
    char detail[256];

    *key = *validation = NULL;
    if (idem_keyexpr_compile(cfg->idempotency_key, key, detail,
                             sizeof detail) != 0) {
        snprintf(err, err_len, "invalid value for idempotency.key: %s", detail);
        return -1;
    }
    if (cfg->idempotency_validation != NULL &&
        idem_keyexpr_compile(cfg->idempotency_validation, validation, detail,
                             sizeof detail) != 0) {
        snprintf(err, err_len, "invalid value for idempotency.validation: %s",
                 detail);
        idem_keyexpr_free(*key);
        *key = NULL;
        return -1;
    }
    return 0;
}

/*
 * Create a pipeline over an open store. The store and cfg are borrowed and
 * must outlive the pipeline. Returns NULL when out of memory.
 */
struct pipeline *pipeline_new(uv_loop_t *loop, struct store *st,
                              const struct podium_config *cfg,
                              const struct pipeline_hooks *hooks)
{
    struct pipeline *pl = calloc(1, sizeof *pl);
    if (pl == NULL)
        return NULL;
    pl->loop = loop;
    pl->store = st;
    pl->cfg = cfg;
    pl->hooks = *hooks;
    for (size_t i = 0; i < 3; i++)
        sb_init(&pl->ids[i], 256);
    sb_init(&pl->topic, 4096);
    sb_init(&pl->key, IDEM_MAX_KEY);
    pl->reject_limit = (struct log_limit)LOG_LIMIT_INIT(10000, 20);
    pl->conflict_limit = (struct log_limit)LOG_LIMIT_INIT(10000, 20);
    pl->message_limit = (struct log_limit)LOG_LIMIT_INIT(10000, 20);

    struct agg_config acfg;
    struct agg_sink sink = {pl,           sink_sample,      sink_race_state,
                            sink_message, sink_class_state, sink_history};
    char err[512] = "";
    agg_config_from(cfg, &acfg);
    pl->agg = agg_new(&acfg, &sink);
    pl->decoder = agg_decoder_new();
    pl->idem = store_idempotency(st);
    if (pl->agg == NULL || pl->decoder == NULL || pl->idem == NULL ||
        pipeline_compile_keys(cfg, &pl->key_expr, &pl->validation, err,
                              sizeof err) != 0) {
        log_error("main", NULL, "failed to create the pipeline: %s",
                  pl->idem == NULL ? "the idempotency table is not open"
                  : pl->agg == NULL || pl->decoder == NULL ? "out of memory"
                                                           : err);
        pipeline_free(pl);
        return NULL;
    }
    return pl;
}

static void out_messages_free(struct job *job)
{
    for (size_t i = 0; i < job->msg_count; i++) {
        free(job->msgs[i].topic);
        free(job->msgs[i].payload);
    }
    free(job->msgs);
    job->msgs = NULL;
    job->msg_count = job->msg_cap = 0;
}

void pipeline_work_free(struct pipeline_work *work)
{
    if (work == NULL)
        return;
    for (size_t i = 0; i < work->segment_count; i++)
        shard_batch_free(work->segments[i]);
    for (size_t i = 0; i < work->completed_count; i++)
        free(work->completed_shards[i]);
    free(work->segments);
    free(work->completed_shards);
    free(work);
}

static void job_free(struct job *job)
{
    if (job == NULL)
        return;
    pipeline_work_free(job->work);
    free(job->acks);
    out_messages_free(job);
    free(job);
}

/* Free the pipeline. No job may be running (the loop has stopped). */
void pipeline_free(struct pipeline *pl)
{
    if (pl == NULL)
        return;
    while (pl->head != NULL) {
        struct job *next = pl->head->next;
        job_free(pl->head);
        pl->head = next;
    }
    agg_free(pl->agg);
    idem_keyexpr_free(pl->key_expr);
    idem_keyexpr_free(pl->validation);
    free(pl->acks);
    for (size_t i = 0; i < 3; i++)
        sb_free(&pl->ids[i]);
    sb_free(&pl->topic);
    sb_free(&pl->key);
    for (size_t i = 0; i < pl->group_cap; i++)
        sjson_doc_free(pl->group[i].doc);
    free(pl->group);
    agg_decoder_free(pl->decoder);
    free(pl->order);
    free(pl);
}

const struct pipeline_counters *pipeline_counters(const struct pipeline *pl)
{
    return &pl->counters;
}

static void count(atomic_uint_fast64_t *counter)
{
    atomic_fetch_add_explicit(counter, 1, memory_order_relaxed);
}

/* ---- restore --------------------------------------------------------- */

struct restore_ids {
    struct agg_id race;
    struct agg_id racer;
    struct agg_id class_id;
};

static int restore_sample(void *arg, const struct store_sample *s)
{
    struct pipeline *pl = arg;
    struct restore_ids ids;

    if (agg_id_from_json(s->race_id, strlen(s->race_id), &ids.race) != 0 ||
        agg_id_from_json(s->racer_id, strlen(s->racer_id), &ids.racer) != 0 ||
        agg_id_from_json(s->class_id, strlen(s->class_id), &ids.class_id) !=
            0) {
        log_error("main", NULL,
                  "failed to restore sample: bad id in row "
                  "race %s racer %s",
                  s->race_id, s->racer_id);
        return -1;
    }
    struct agg_sample_row row = {
        .race = &ids.race,
        .racer = &ids.racer,
        .class_id = &ids.class_id,
        .second = s->second,
        .name = s->name,
        .name_len = s->name_len,
        .uuid = s->uuid,
        .uuid_len = s->uuid_len,
        .device_ts_ms = s->device_ts_ms,
        .arrival_ms = s->arrival_ms,
        .cadence4 = s->cadence4,
        .resistance4 = s->resistance4,
        .output4 = s->output4,
        .cadence_exact = s->cadence_exact,
        .resistance_exact = s->resistance_exact,
        .final = s->final,
    };
    return agg_restore_sample(pl->agg, &row);
}

static int restore_race(void *arg, const char *key, const char *value,
                        size_t len)
{
    struct pipeline *pl = arg;
    if (agg_restore_race(pl->agg, value, len) != 0) {
        log_error("main", NULL, "failed to restore race %s: invalid state",
                  key);
        return -1;
    }
    return 0;
}

static int restore_class(void *arg, const char *key, const char *value,
                         size_t len)
{
    struct pipeline *pl = arg;
    if (agg_restore_class(pl->agg, value, len) != 0) {
        log_error("main", NULL, "failed to restore class %s: invalid state",
                  key);
        return -1;
    }
    return 0;
}

/*
 * Rebuild the aggregator from the samples and race states in the store, so
 * that processing continues exactly where the last commit left it.
 */
static void outbox_changed(struct pipeline *pl, bool full_changed)
{
    atomic_store_explicit(&pl->counters.outbox_depth, pl->outbox.depth,
                          memory_order_relaxed);
    if (full_changed && pl->outbox.full)
        count(&pl->counters.outbox_pauses);
}

/* Count the messages left in the outbox by the last run. */
static int restore_outbox_depth(struct pipeline *pl)
{
    int64_t rows;
    if (store_outbox_count(pl->store, &rows) != 0) {
        log_error("main", NULL, "failed to count the outbox: %s",
                  store_errmsg(pl->store));
        return -1;
    }
    outbox_gate_init(&pl->outbox, (uint64_t)pl->cfg->outbox_max,
                     (uint64_t)rows);
    outbox_changed(pl, outbox_gate_update(&pl->outbox));
    return 0;
}

int pipeline_restore(struct pipeline *pl)
{
    char text[32];

    if (store_samples_load(pl->store, restore_sample, pl) != 0 ||
        store_state_load(pl->store, "race", restore_race, pl) != 0 ||
        store_state_load(pl->store, "class", restore_class, pl) != 0) {
        log_error("main", NULL, "failed to restore state: %s",
                  store_errmsg(pl->store));
        return -1;
    }
    int found = store_meta_get(pl->store, "stream_time_ms", text, sizeof text);
    if (found < 0) {
        log_error("main", NULL, "failed to read stream time: %s",
                  store_errmsg(pl->store));
        return -1;
    }
    if (found == 1)
        agg_restore_stream_time(pl->agg, strtoll(text, NULL, 10));
    if (restore_outbox_depth(pl) != 0)
        return -1;
    int rc = agg_restore_finish(pl->agg);
    if (rc != 0) {
        log_error("main", NULL,
                  "failed to rebuild race results and class boards: %s",
                  rc == -ENOMEM ? "out of memory"
                                : "a race state disagrees with its samples");
        return -1;
    }
    return 0;
}

/* ---- sink: aggregator output into the open transaction ------------- */

static int sink_sample(void *arg, const struct agg_sample_row *row)
{
    struct pipeline *pl = arg;
    for (size_t i = 0; i < 3; i++)
        sb_reset(&pl->ids[i]);
    agg_id_to_json(row->race, &pl->ids[0]);
    agg_id_to_json(row->racer, &pl->ids[1]);
    agg_id_to_json(row->class_id, &pl->ids[2]);

    struct store_sample s = {
        .race_id = pl->ids[0].data,
        .racer_id = pl->ids[1].data,
        .second = row->second,
        .class_id = pl->ids[2].data,
        .name = row->name,
        .name_len = row->name_len,
        .uuid = row->uuid,
        .uuid_len = row->uuid_len,
        .device_ts_ms = row->device_ts_ms,
        .arrival_ms = row->arrival_ms,
        .cadence4 = row->cadence4,
        .resistance4 = row->resistance4,
        .output4 = row->output4,
        .cadence_exact = row->cadence_exact,
        .resistance_exact = row->resistance_exact,
        .final = row->final,
    };
    return store_sample_put(pl->store, &s);
}

static int sink_race_state(void *arg, const struct agg_id *race,
                           const char *json, size_t len)
{
    struct pipeline *pl = arg;
    sb_reset(&pl->ids[0]);
    agg_id_to_json(race, &pl->ids[0]);
    return store_state_put(pl->store, "race", pl->ids[0].data, json, len);
}

static int sink_class_state(void *arg, const struct agg_id *class_id,
                            const char *json, size_t len)
{
    struct pipeline *pl = arg;
    sb_reset(&pl->ids[0]);
    agg_id_to_json(class_id, &pl->ids[0]);
    return store_state_put(pl->store, "class", pl->ids[0].data, json, len);
}

static int sink_history(void *arg, const struct agg_history_row *row)
{
    struct pipeline *pl = arg;
    for (size_t i = 0; i < 3; i++)
        sb_reset(&pl->ids[i]);
    agg_id_to_json(row->class_id, &pl->ids[0]);
    agg_id_to_json(row->racer, &pl->ids[1]);
    if (row->race == NULL)
        return store_history_delete(pl->store, pl->ids[0].data, pl->ids[1].data,
                                    row->second);
    agg_id_to_json(row->race, &pl->ids[2]);
    struct store_history_row h = {
        .class_id = pl->ids[0].data,
        .racer_id = pl->ids[1].data,
        .second = row->second,
        .output4 = row->output4,
        .race_id = pl->ids[2].data,
    };
    return store_history_put(pl->store, &h);
}

/*
 * Keep the newest results and class boards for `podium query`, under the
 * kinds it reads ("results" by raceId, "class-leaderboard" by classId),
 * whether or not the message can be published.
 */
static int keep_last_message(struct pipeline *pl, const struct agg_message *msg)
{
    const char *kind =
        msg->kind == AGG_MSG_RACE_RESULTS ? "results" : "class-leaderboard";
    if (msg->kind == AGG_MSG_RACE_LEADERBOARD || msg->kind == AGG_MSG_ALLEYCAT)
        return 0;
    sb_reset(&pl->ids[0]);
    agg_id_to_json(msg->race != NULL ? msg->race : msg->class_id, &pl->ids[0]);
    return store_last_message_put(pl->store, kind, pl->ids[0].data,
                                  msg->revision, msg->payload,
                                  msg->payload_len);
}

static const char *topic_template(const struct podium_config *cfg,
                                  enum agg_message_kind kind)
{
    switch (kind) {
    case AGG_MSG_RACE_LEADERBOARD:
        return cfg->topic_race_leaderboard;
    case AGG_MSG_RACE_RESULTS:
        return cfg->topic_race_results;
    case AGG_MSG_CLASS_LEADERBOARD:
        return cfg->topic_class_leaderboard;
    case AGG_MSG_ALLEYCAT:
        return cfg->alleycat_topic;
    }
    return NULL;
}

/* Log a message that cannot be published; it is counted, never sent. */
static int drop_message(struct pipeline *pl, const struct agg_message *msg,
                        const char *reason)
{
    uint32_t suppressed;
    count(&pl->counters.messages_invalid);
    if (log_limit_allow(&pl->message_limit, (uint64_t)log_now_ms(),
                        &suppressed)) {
        struct log_ids ids = {.race = msg->race ? msg->race->str : NULL};
        char note[64] = "";
        if (suppressed > 0)
            snprintf(note, sizeof note,
                     " (%" PRIu32 " similar errors not logged)", suppressed);
        if (msg->kind == AGG_MSG_CLASS_LEADERBOARD)
            log_error("main", &ids,
                      "failed to build the leaderboard of class %s: %s%s",
                      msg->class_id->str, reason, note);
        else if (msg->kind == AGG_MSG_ALLEYCAT)
            log_error("main", &ids,
                      "failed to build the alleycat message of class %s for "
                      "second %" PRId32 ": %s%s",
                      msg->class_id->str, msg->second, reason, note);
        else
            log_error("main", &ids,
                      "failed to build the %s for second %" PRId32 ": %s%s",
                      msg->kind == AGG_MSG_RACE_RESULTS ? "results"
                                                        : "leaderboard",
                      msg->second, reason, note);
    }
    return 0;
}

static int keep_message(struct job *job, int64_t id, const char *topic,
                        const char *payload, size_t len)
{
    if (job->msg_count == job->msg_cap) {
        size_t cap = job->msg_cap ? job->msg_cap * 2 : 16;
        struct out_message *p = realloc(job->msgs, cap * sizeof *p);
        if (p == NULL)
            return -1;
        job->msgs = p;
        job->msg_cap = cap;
    }
    struct out_message *m = &job->msgs[job->msg_count];
    m->id = id;
    m->topic = strdup(topic);
    m->payload = malloc(len + 1);
    if (m->topic == NULL || m->payload == NULL) {
        free(m->topic);
        free(m->payload);
        return -1;
    }
    memcpy(m->payload, payload, len);
    m->payload[len] = '\0';
    m->len = len;
    job->msg_count++;
    return 0;
}

static int sink_message(void *arg, const struct agg_message *msg)
{
    struct pipeline *pl = arg;
    const struct agg_id *race = msg->race, *cls = msg->class_id;
    char err[256];
    int64_t id;

    if (keep_last_message(pl, msg) != 0)
        return -1;
    sb_reset(&pl->topic);
    if (pub_topic_expand(topic_template(pl->cfg, msg->kind),
                         race ? race->str : NULL, race ? race->len : 0,
                         cls ? cls->str : NULL, cls ? cls->len : 0, &pl->topic,
                         err, sizeof err) != 0)
        return drop_message(pl, msg, err);
    if (msg->payload_len > PUB_MAX_PAYLOAD) {
        snprintf(err, sizeof err,
                 "payload of %zu bytes is over the %d-byte limit; lower "
                 "leaderboard.top_n",
                 msg->payload_len, PUB_MAX_PAYLOAD);
        return drop_message(pl, msg, err);
    }
    if (store_outbox_add(pl->store, pl->topic.data, msg->payload,
                         msg->payload_len, &id) != 0)
        return -1;
    count(&pl->counters.messages_built);
    return keep_message(pl->current, id, pl->topic.data, msg->payload,
                        msg->payload_len);
}

/* ---- worker: records into the transaction ------------------------- */

static int dead_letter(struct pipeline *pl, const struct shard_record *r,
                       const char *reason, const char *detail)
{
    struct store_dead_letter d = {
        .shard_id = pl->current_shard,
        .seq = r->seq,
        .subseq = r->subseq,
        .arrival_ms = r->arrival_ms,
        .reason = reason,
        .detail = detail,
        .data = r->data,
        .data_len = r->len,
    };
    return store_dead_letter_add(pl->store, &d);
}

static void log_record(struct pipeline *pl, struct log_limit *limit,
                       const struct shard_record *r, const char *what,
                       const char *detail)
{
    uint32_t suppressed;
    if (!log_limit_allow(limit, (uint64_t)log_now_ms(), &suppressed))
        return;
    struct log_ids ids = {.stream = pl->cfg->stream_name,
                          .shard = pl->current_shard,
                          .seq = r->seq};
    char note[64] = "";
    if (suppressed > 0)
        snprintf(note, sizeof note, " (%" PRIu32 " similar lines not logged)",
                 suppressed);
    log_warn("main", &ids, "%s: %s%s", what, detail, note);
}

static int reject_record(struct pipeline *pl, const struct shard_record *r,
                         const struct agg_reject_info *why)
{
    const char *reason = agg_reject_name(why->reason);
    count(&pl->counters.rejected[why->reason]);
    log_record(pl, &pl->reject_limit, r, "rejected record", why->detail);
    return dead_letter(pl, r, reason, why->detail);
}

static bool outcome_applied(enum agg_outcome outcome)
{
    return outcome == AGG_APPLIED || outcome == AGG_CONFLICT_REPLACED ||
           outcome == AGG_LATE_AMENDED;
}

/*
 * Dead-letter detail for a record with this outcome, or NULL when the
 * outcome needs no dead letter (applied, or counted only).
 */
static const char *outcome_dead_letter_detail(enum agg_outcome outcome)
{
    switch (outcome) {
    case AGG_QUARANTINED_SKEW:
        return "deviceTimestamp is too far ahead of the arrival time "
               "(race.max_future_skew_s)";
    case AGG_QUARANTINED_JUMP:
        return "second jumps too far past the race's latest second "
               "(race.max_second_jump)";
    case AGG_OVER_CAPACITY:
        return "the aggregator's limit of races, riders per race, or names "
               "and classes per rider is reached";
    default:
        return NULL;
    }
}

/* Apply a record to the aggregator and count and file its outcome. */
static int apply_record(struct pipeline *pl, const struct shard_record *r,
                        const struct agg_record *rec, enum agg_outcome *outcome)
{
    int rc = agg_apply(pl->agg, rec, r->arrival_ms, outcome);
    if (rc != 0)
        return rc;

    count(&pl->counters.outcomes[*outcome]);
    if (outcome_applied(*outcome))
        count(&pl->counters.records_applied);
    if (*outcome == AGG_CONFLICT_KEPT || *outcome == AGG_CONFLICT_REPLACED)
        log_record(pl, &pl->conflict_limit, r, "sample conflict",
                   "another record has other values for the same rider "
                   "and second; the one with the smaller "
                   "(deviceTimestamp, uuid) is kept");
    const char *detail = outcome_dead_letter_detail(*outcome);
    if (detail != NULL)
        return dead_letter(pl, r, agg_outcome_name(*outcome), detail);
    return 0;
}

/*
 * Handle a record whose key expression selects nothing. With missing_key
 * process it is applied without deduplication, and the sample rule still
 * keeps one sample per rider and second. With reject it is a dead letter.
 */
static int missing_key(struct pipeline *pl, const struct shard_record *r,
                       const struct agg_record *rec)
{
    enum agg_outcome outcome;
    if (pl->cfg->missing_key == CFG_MISSING_KEY_REJECT) {
        count(&pl->counters.missing_key_rejected);
        log_record(pl, &pl->reject_limit, r, "rejected record",
                   "the idempotency key is missing, null or empty");
        return dead_letter(pl, r, "missing_key",
                           "the idempotency key expression selects nothing "
                           "(idempotency.missing_key is reject)");
    }
    count(&pl->counters.missing_key_processed);
    return apply_record(pl, r, rec, &outcome);
}

static int claim_failed(struct pipeline *pl, const char *what)
{
    log_error("main", NULL, "failed to %s an idempotency key: %s", what,
              idem_errmsg(pl->idem));
    return -1;
}

/*
 * Claim the record's key, and apply the record when the key is new: the
 * claim, the effects and the completion commit together.
 */
static int claim_and_apply(struct pipeline *pl, const struct shard_record *r,
                           const struct agg_record *rec,
                           const struct sjson_value *root)
{
    uint8_t hash[IDEM_HASH_LEN];
    const uint8_t *payload_hash = rec->hash;
    enum idem_result result;
    enum agg_outcome outcome;

    sb_reset(&pl->key);
    int have = idem_keyexpr_eval(pl->key_expr, root, &pl->key);
    if (have < 0)
        return claim_failed(pl, "build");
    if (have == 0)
        return missing_key(pl, r, rec);
    /* The aggregator already hashed the whole record the same way. */
    if (pl->validation != NULL) {
        if (idem_payload_hash(pl->validation, root, hash) != 0)
            return claim_failed(pl, "hash");
        payload_hash = hash;
    }

    struct idem_claim c = {pl->key.data,  pl->key.len,       payload_hash,
                           r->arrival_ms, pl->current_shard, r->seq,
                           r->subseq};
    /* A new key's row is written once, COMPLETED, by idem_complete below;
     * a failed apply rolls the whole batch back. */
    if (idem_claim_deferred(pl->idem, &c, &result, NULL) != 0)
        return claim_failed(pl, "claim");
    switch (result) {
    case IDEM_NEW:
        break;
    case IDEM_DUPLICATE:
        count(&pl->counters.duplicates);
        return 0;
    case IDEM_CONFLICT:
        count(&pl->counters.validation_conflicts);
        log_record(pl, &pl->conflict_limit, r, "validation conflict",
                   "a record with this key was seen before with other "
                   "contents; this copy is not applied");
        return dead_letter(pl, r, "validation_conflict",
                           "the key was seen before with other contents");
    case IDEM_KEY_MISSING:
        return missing_key(pl, r, rec);
    case IDEM_IN_PROGRESS:
        /* Every claim completes in its own transaction, so a live claim
         * means a second writer: stop rather than guess. */
        log_error("main", NULL,
                  "idempotency key %.*s is claimed by a "
                  "running writer; is another podium using %s?",
                  (int)pl->key.len, pl->key.data, pl->cfg->store_path);
        return -1;
    }
    if (apply_record(pl, r, rec, &outcome) != 0)
        return -1;
    if (idem_complete(pl->idem, pl->key.data, pl->key.len,
                      agg_outcome_name(outcome), r->arrival_ms) != 0)
        return claim_failed(pl, "complete");
    return 0;
}

/*
 * Decode the record of e. Returns 0, with e->valid false when the record
 * is rejected, or -1 when memory runs out.
 */
static int decode_entry(struct pipeline *pl, struct group_entry *e)
{
    count(&pl->counters.records_read);
    e->valid = agg_record_decode(pl->decoder, e->r->data, e->r->len,
                                 pl->cfg->race_max_seconds, &e->rec, &e->why,
                                 &e->doc) == 0;
    /* Out of memory: the job fails and its records are read again after
     * the restart. */
    return e->valid || e->why.reason != AGG_REJECT_NONE ? 0 : -1;
}

static int apply_entry(struct pipeline *pl, struct group_entry *e)
{
    pl->current_shard = e->shard_id;
    if (!e->valid)
        return reject_record(pl, e->r, &e->why);
    return claim_and_apply(pl, e->r, &e->rec, sjson_doc_root(e->doc));
}

static int compare_bytes(const void *a, size_t a_len, const void *b,
                         size_t b_len)
{
    int c = memcmp(a, b, a_len < b_len ? a_len : b_len);
    if (c != 0)
        return c;
    return a_len < b_len ? -1 : a_len > b_len;
}

/* The order of a group of one arrival millisecond (see the top). */
static int compare_entries(const void *pa, const void *pb)
{
    const struct group_entry *a = *(struct group_entry *const *)pa;
    const struct group_entry *b = *(struct group_entry *const *)pb;
    int c;

    if (a->valid != b->valid)
        return a->valid ? -1 : 1;
    if (a->valid) {
        if (a->rec.device_ts_ms != b->rec.device_ts_ms)
            return a->rec.device_ts_ms < b->rec.device_ts_ms ? -1 : 1;
        c = compare_bytes(a->rec.uuid, a->rec.uuid_len, b->rec.uuid,
                          b->rec.uuid_len);
        if (c != 0)
            return c;
    }
    c = compare_bytes(a->r->data, a->r->len, b->r->data, b->r->len);
    if (c != 0)
        return c;
    c = strcmp(a->shard_id, b->shard_id);
    if (c != 0)
        return c;
    return seqnum_cmp_ext(a->r->seq, a->r->subseq, b->r->seq, b->r->subseq);
}

/* Decode, order and apply the n records of pl->group. */
static int process_group(struct pipeline *pl, size_t n)
{
    struct group_entry *group = pl->group;
    int rc = 0;

    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = decode_entry(pl, &group[i]);
    for (size_t i = 0; rc == 0 && i < n; i++)
        pl->order[i] = &group[i];
    if (rc == 0 && n > 1)
        qsort(pl->order, n, sizeof *pl->order, compare_entries);
    for (size_t i = 0; rc == 0 && i < n; i++)
        rc = apply_entry(pl, pl->order[i]);
    return rc;
}

static int group_push(struct pipeline *pl, size_t n, const char *shard_id,
                      const struct shard_record *r)
{
    if (n == pl->group_cap) {
        size_t cap = pl->group_cap ? pl->group_cap * 2 : 64;
        struct group_entry *p = realloc(pl->group, cap * sizeof *p);
        if (p == NULL)
            return -1;
        for (size_t i = pl->group_cap; i < cap; i++)
            p[i].doc = NULL;
        pl->group = p;
        struct group_entry **order = realloc(pl->order, cap * sizeof *order);
        if (order == NULL)
            return -1;
        pl->order = order;
        pl->group_cap = cap;
    }
    pl->group[n].shard_id = shard_id;
    pl->group[n].r = r;
    pl->group[n].valid = false;
    return 0;
}

static int store_checkpoint(struct pipeline *pl,
                            const struct shard_batch *batch)
{
    if (batch->checkpoint_seq == NULL && !batch->shard_end)
        return 0;

    struct store_checkpoint cp = {
        .shard_id = batch->shard_id,
        .seq = batch->checkpoint_seq,
        .subseq = batch->checkpoint_subseq,
        .finished = batch->shard_end,
    };
    return store_checkpoint_put(pl->store, &cp);
}

/*
 * Apply the records of work in its order, each run of records with one
 * arrival millisecond as a group, then store the checkpoint of every
 * segment. The store keeps the newest checkpoint of a shard, and all of
 * them commit together.
 */
static int process_work(struct pipeline *pl, const struct pipeline_work *work)
{
    size_t n = 0;
    int64_t group_ms = 0;
    int rc = 0;

    for (size_t s = 0; rc == 0 && s < work->segment_count; s++) {
        const struct shard_batch *segment = work->segments[s];
        for (size_t i = 0; rc == 0 && i < segment->count; i++) {
            const struct shard_record *r = &segment->records[i];
            if (n > 0 && r->arrival_ms != group_ms) {
                rc = process_group(pl, n);
                n = 0;
            }
            if (rc == 0)
                rc = group_push(pl, n++, segment->shard_id, r);
            group_ms = r->arrival_ms;
        }
    }
    if (rc == 0 && n > 0)
        rc = process_group(pl, n);
    for (size_t s = 0; rc == 0 && s < work->segment_count; s++)
        rc = store_checkpoint(pl, work->segments[s]);
    return rc;
}

static int save_stream_time(struct pipeline *pl)
{
    char text[32];
    snprintf(text, sizeof text, "%" PRId64, agg_stream_time(pl->agg));
    return store_meta_put(pl->store, "stream_time_ms", text);
}

/* Delete a bounded number of expired idempotency rows, by stream time, so
 * a replay expires keys the same way as the live run did. */
static int expire_keys(struct pipeline *pl)
{
    size_t deleted = 0;
    if (agg_stream_time(pl->agg) < 0)
        return 0; /* no record read yet */
    if (idem_expire_step(pl->idem, agg_stream_time(pl->agg),
                         PIPELINE_EXPIRE_PER_JOB, &deleted) != 0)
        return claim_failed(pl, "expire");
    return 0;
}

static int run_job(struct pipeline *pl, struct job *job)
{
    int rc = 0;
    if (job->ack_count > 0)
        rc = store_outbox_delete(pl->store, job->acks, job->ack_count,
                                 &job->deleted);
    if (rc == 0) {
        switch (job->kind) {
        case JOB_BATCH:
            rc = process_work(pl, job->work);
            break;
        case JOB_TICK:
            rc = agg_advance(pl->agg, job->now_ms);
            break;
        case JOB_CLOSE_ALL:
            rc = agg_close_all(pl->agg);
            break;
        case JOB_ACKS:
            break;
        }
    }
    if (rc == 0)
        rc = agg_flush(pl->agg);
    if (rc == 0)
        rc = save_stream_time(pl);
    if (rc == 0)
        rc = expire_keys(pl);
    return rc;
}

const uint64_t pipeline_commit_bounds_us[PIPELINE_COMMIT_BUCKETS] = {
    1000,   5000,   10000,   25000,   50000,  100000,
    250000, 500000, 1000000, 2500000, 5000000};

/* Count one committed job's time from BEGIN to COMMIT for the metrics. */
static void observe_commit(struct pipeline *pl, uint64_t elapsed_us)
{
    for (size_t i = 0; i < PIPELINE_COMMIT_BUCKETS; i++) {
        if (elapsed_us <= pipeline_commit_bounds_us[i]) {
            count(&pl->counters.commit_buckets[i]);
            break;
        }
    }
    atomic_fetch_add_explicit(&pl->counters.commit_us_sum, elapsed_us,
                              memory_order_relaxed);
    count(&pl->counters.commit_count);
}

/* Worker thread: one transaction for the whole job. */
static void job_work(uv_work_t *work)
{
    struct job *job = work->data;
    struct pipeline *pl = job->pl;
    uint64_t started_ns = uv_hrtime();

    pl->current = job;
    if (store_begin(pl->store) != 0 || run_job(pl, job) != 0 ||
        store_commit(pl->store) != 0) {
        const char *why = store_errmsg(pl->store);
        snprintf(job->error, sizeof job->error, "failed to commit batch: %s",
                 why[0] ? why : "see the error logged before");
        store_rollback(pl->store);
        out_messages_free(job);
        job->failed = true;
    } else {
        observe_commit(pl, (uv_hrtime() - started_ns) / 1000);
    }
    pl->current = NULL;
    pl->current_shard = NULL;
}

/* ---- loop side: queue and completion ------------------------------ */

static void start_next(struct pipeline *pl);

static void job_done(uv_work_t *work, int status)
{
    struct job *job = work->data;
    struct pipeline *pl = job->pl;

    pl->running = NULL;
    if (status != 0 && !job->failed) {
        job->failed = true;
        snprintf(job->error, sizeof job->error, "failed to run batch: %s",
                 uv_strerror(status));
    }
    if (job->failed) {
        pl->failed = true;
        pl->hooks.fatal(pl->hooks.arg, job->error);
        job_free(job);
        return;
    }
    count(&pl->counters.batches_committed);
    outbox_changed(
        pl, outbox_gate_commit(&pl->outbox, job->msg_count, job->deleted));
    for (size_t i = 0; i < job->msg_count; i++) {
        struct out_message *m = &job->msgs[i];
        pl->hooks.message(pl->hooks.arg, m->id, m->topic, m->payload, m->len);
    }
    if (job->kind == JOB_BATCH) {
        for (size_t i = 0; i < job->work->completed_count; i++)
            pl->hooks.batch_committed(pl->hooks.arg,
                                      job->work->completed_shards[i]);
    }
    job_free(job);
    start_next(pl);
    if (pipeline_idle(pl) && pl->hooks.idle != NULL)
        pl->hooks.idle(pl->hooks.arg);
}

/* Hand the delivered ids collected so far to job (up to the cap). */
static void take_acks(struct pipeline *pl, struct job *job)
{
    size_t n = pl->ack_count;
    if (n == 0)
        return;
    if (n > PIPELINE_MAX_ACKS_PER_JOB)
        n = PIPELINE_MAX_ACKS_PER_JOB;
    job->acks = malloc(n * sizeof *job->acks);
    if (job->acks == NULL)
        return; /* they stay queued for a later job */
    memcpy(job->acks, pl->acks, n * sizeof *job->acks);
    job->ack_count = n;
    memmove(pl->acks, pl->acks + n, (pl->ack_count - n) * sizeof *pl->acks);
    pl->ack_count -= n;
}

static struct job *job_new(enum job_kind kind);

/* True when job must wait because the outbox is full. */
static bool job_held(const struct pipeline *pl, const struct job *job)
{
    return pl->outbox.full && job->kind != JOB_ACKS;
}

/*
 * The job to run next, taken off the queue, or NULL. While the head job is
 * held, a job that only deletes the delivered rows runs instead, because
 * deleting them is what lets the held jobs go on.
 */
static struct job *next_job(struct pipeline *pl)
{
    struct job *job = pl->head;
    if (job != NULL && !job_held(pl, job)) {
        pl->head = job->next;
        if (pl->head == NULL)
            pl->tail = NULL;
        job->next = NULL;
        return job;
    }
    if (job == NULL || pl->ack_count == 0)
        return NULL;
    job = job_new(JOB_ACKS);
    if (job != NULL)
        job->pl = pl;
    return job;
}

static void start_next(struct pipeline *pl)
{
    if (pl->running != NULL || pl->failed)
        return;
    struct job *job = next_job(pl);
    if (job == NULL)
        return;

    take_acks(pl, job);
    job->uv_work.data = job;
    pl->running = job;
    pl->running_since_ms = uv_now(pl->loop);
    int rc = uv_queue_work(pl->loop, &job->uv_work, job_work, job_done);
    if (rc != 0) {
        pl->running = NULL;
        pl->failed = true;
        job_free(job);
        pl->hooks.fatal(pl->hooks.arg, "failed to queue batch work");
    }
}

static void enqueue(struct pipeline *pl, struct job *job)
{
    job->pl = pl;
    if (pl->tail != NULL)
        pl->tail->next = job;
    else
        pl->head = job;
    pl->tail = job;
    start_next(pl);
}

static struct job *job_new(enum job_kind kind)
{
    struct job *job = calloc(1, sizeof *job);
    if (job == NULL) {
        log_error("main", NULL, "failed to queue a job: out of memory");
        return NULL;
    }
    job->kind = kind;
    return job;
}

void pipeline_submit_work(struct pipeline *pl, struct pipeline_work *work)
{
    struct job *job = pl->failed ? NULL : job_new(JOB_BATCH);
    if (job == NULL) {
        /* Not committed, so its records are read again after a restart. */
        pipeline_work_free(work);
        return;
    }
    job->work = work;
    enqueue(pl, job);
}

void pipeline_submit_batch(struct pipeline *pl, struct shard_batch *batch)
{
    struct pipeline_work *work = calloc(1, sizeof *work);
    if (work != NULL) {
        work->segments = malloc(sizeof *work->segments);
        work->completed_shards = malloc(sizeof *work->completed_shards);
    }
    char *shard_id = strdup(batch->shard_id);
    if (work == NULL || work->segments == NULL ||
        work->completed_shards == NULL || shard_id == NULL) {
        log_error("main", NULL, "failed to queue a batch: out of memory");
        free(shard_id);
        pipeline_work_free(work);
        shard_batch_free(batch);
        return;
    }
    work->segments[0] = batch;
    work->segment_count = 1;
    work->completed_shards[0] = shard_id;
    work->completed_count = 1;
    pipeline_submit_work(pl, work);
}

void pipeline_submit_tick(struct pipeline *pl, int64_t now_ms)
{
    struct job *job = pl->failed ? NULL : job_new(JOB_TICK);
    if (job == NULL)
        return;
    job->now_ms = now_ms;
    enqueue(pl, job);
}

void pipeline_submit_close_all(struct pipeline *pl)
{
    struct job *job = pl->failed ? NULL : job_new(JOB_CLOSE_ALL);
    if (job != NULL)
        enqueue(pl, job);
}

void pipeline_ack(struct pipeline *pl, int64_t id)
{
    if (pl->ack_count == pl->ack_cap) {
        size_t cap = pl->ack_cap ? pl->ack_cap * 2 : 1024;
        int64_t *p = realloc(pl->acks, cap * sizeof *p);
        if (p == NULL) {
            /* The row stays in the outbox and is sent again on restart. */
            log_warn("main", NULL,
                     "failed to record delivery of outbox "
                     "message %" PRId64 ": out of memory",
                     id);
            return;
        }
        pl->acks = p;
        pl->ack_cap = cap;
    }
    pl->acks[pl->ack_count++] = id;
    /* Held jobs wait for deletions that no tick would queue. */
    if (pl->outbox.full)
        start_next(pl);
}

void pipeline_flush_acks(struct pipeline *pl)
{
    if (pl->ack_count == 0 || pl->failed)
        return;
    struct job *job = job_new(JOB_ACKS);
    if (job != NULL)
        enqueue(pl, job);
}

uint64_t pipeline_running_ms(const struct pipeline *pl, uint64_t now_ms)
{
    if (pl->running == NULL || now_ms < pl->running_since_ms)
        return 0;
    return now_ms - pl->running_since_ms;
}

bool pipeline_idle(const struct pipeline *pl)
{
    return pl->running == NULL && (pl->head == NULL || pl->failed);
}

bool pipeline_outbox_full(const struct pipeline *pl)
{
    return pl->outbox.full;
}

size_t pipeline_discard_held(struct pipeline *pl)
{
    struct job **link = &pl->head;
    size_t discarded = 0;

    pl->tail = NULL;
    while (*link != NULL) {
        struct job *job = *link;
        if (!job_held(pl, job)) {
            pl->tail = job;
            link = &job->next;
            continue;
        }
        *link = job->next;
        job_free(job);
        discarded++;
    }
    return discarded;
}

size_t pipeline_pending_acks(const struct pipeline *pl)
{
    return pl->ack_count;
}
