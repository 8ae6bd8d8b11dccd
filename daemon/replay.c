/*
 * `podium replay FILE...`: feed recordings through the pipeline of
 * `podium run`.
 *
 * A recording is JSON lines, one Kinesis record a line, with the field
 * names and types of the Kinesis API. The fields are ShardId,
 * SequenceNumber (decimal string), SubSequenceNumber (only on a user record
 * of a KPL aggregate), ApproximateArrivalTimestamp (seconds since the
 * epoch, a number with millisecond precision), PartitionKey and Data
 * (base64). `podium simulate --out` writes this format.
 *
 * Every file is read and checked before anything is applied, so a bad line
 * under --on-bad-line fail changes nothing in the store. The records of
 * each shard keep their order in the files (files in the order given).
 * They go to the pipeline in the order of the merge of `podium run` with
 * every record present: by arrival time, then by shard id. They are cut
 * into jobs of --batch-size Kinesis records, and one last job closes
 * every open second. Stream time comes
 * only from the records' arrival times and no clock tick is ever queued, so the
 * same recording makes the same decisions, and publishes the same bytes, at any
 * batch size and speed.
 * --speed X only delays each job until its newest record is due.
 *
 * Data that is a KPL aggregate is split by kpl_deaggregate(), as the shard
 * reader does, into user records with sub-sequence numbers 0, 1, 2...
 *
 * No checkpoint is stored: the shard ids of a recording may be those of a
 * live stream whose checkpoints `podium run` keeps in the same store, and a
 * replayed position must not move them. A second replay of the same file
 * applies nothing twice because every record claims its idempotency key.
 *
 * The replay ends once the publisher has acknowledged every message of the
 * outbox, including messages left by an earlier run, or fails when
 * --publish-timeout seconds pass first.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/aws.h"
#include "common/base64.h"
#include "common/log.h"
#include "publisher/publisher.h"
#include "shardreader/kpl.h"
#include "store/idempotency.h"

/* Default and maximum of --publish-timeout, in seconds. */
#define REPLAY_PUBLISH_TIMEOUT_S     30
#define REPLAY_MAX_PUBLISH_TIMEOUT_S 86400
/* How often the loop checks progress and submits due jobs. */
#define REPLAY_TICK_MS 20
/* Maximum stream time that one job spans at --speed X > 0. */
#define REPLAY_SPAN_MS 100
/* Maximum --speed. */
#define REPLAY_MAX_SPEED 1000000.0
/* Outbox rows loaded per query at start-up. */
#define REPLAY_OUTBOX_PAGE 1000
/* Maximum length of a value quoted in a bad-line message. */
#define REPLAY_QUOTE_MAX 60

enum replay_phase {
    REPLAY_APPLYING,   /* jobs queued, waiting for the pipeline */
    REPLAY_PUBLISHING, /* waiting for the publisher's acks */
    REPLAY_DELETING,   /* deleting the delivered outbox rows */
    REPLAY_CLOSING
};

struct replay_options {
    int64_t batch_size; /* Kinesis records per job; 0: kinesis.max_records */
    double speed;       /* stream time per wall time; 0: as fast as possible */
    int64_t publish_timeout_s; /* time the publisher gets at the end */
    bool skip_bad_lines;
    char **files;
    size_t file_count;
};

/* A job built from the files, with the arrival times it spans. */
struct queued_job {
    struct pipeline_work *work;
    int64_t first_arrival_ms;
    int64_t newest_arrival_ms;
};

/* The jobs built from the files, in order. */
struct work_list {
    struct queued_job *items;
    size_t count;
    size_t cap;
    size_t next;             /* first job not yet submitted */
    struct queued_job *open; /* the job being filled, the last in items */
    int64_t open_records;    /* Kinesis records in open */
};

struct shard_input;

struct replay {
    uv_loop_t loop;
    struct podium_config cfg;
    struct replay_options opts;
    struct shard_input *shards; /* the records read, by shard */
    size_t shard_count;
    size_t shard_cap;
    struct work_list jobs;
    struct store *store;
    struct pipeline *pipeline;
    struct publisher *publisher;
    struct aws_credentials creds;
    uv_timer_t tick;

    enum replay_phase phase;
    int exit_code;
    int64_t started_ms; /* wall time the first job was submitted */
    int64_t deadline_ms;
    int open_handles;

    uint64_t lines;
    uint64_t kinesis_records;
    uint64_t user_records;
    uint64_t bad_lines;
};

/* ---- reading the recordings ---------------------------------------- */

/* A short JSON rendering of v for error messages. */
static void quote_value(const json_t *v, char *out, size_t out_len)
{
    char *text = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    if (text == NULL) {
        snprintf(out, out_len, "nothing");
        return;
    }
    if (strlen(text) > REPLAY_QUOTE_MAX)
        snprintf(out, out_len, "%.*s...", REPLAY_QUOTE_MAX, text);
    else
        snprintf(out, out_len, "%s", text);
    free(text);
}

/* A parsed line: pointers into the JSON document, Data decoded. */
struct line_record {
    const char *shard_id;
    const char *seq;
    int64_t subseq; /* -1 when the line has none */
    int64_t arrival_ms;
    const char *partition_key;
    uint8_t *data; /* owned */
    size_t len;
};

static bool all_digits(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            return false;
    }
    return true;
}

/*
 * Check the fields of one line. Returns 0, or -1 with what was wrong, the
 * value and what to do in err.
 */
static int check_fields(const json_t *root, struct line_record *out, char *err,
                        size_t err_len)
{
    char q[REPLAY_QUOTE_MAX + 8];
    const json_t *v;

    if (!json_is_object(root)) {
        quote_value(root, q, sizeof q);
        snprintf(err, err_len, "expected a JSON object, got %s", q);
        return -1;
    }
    v = json_object_get(root, "ShardId");
    if (!json_is_string(v) || json_string_length(v) == 0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len, "ShardId must be a non-empty string, got %s", q);
        return -1;
    }
    out->shard_id = json_string_value(v);
    v = json_object_get(root, "SequenceNumber");
    if (!json_is_string(v) || !all_digits(json_string_value(v)) ||
        json_string_length(v) > 128) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "SequenceNumber must be a string of up to 128 decimal "
                 "digits, got %s",
                 q);
        return -1;
    }
    out->seq = json_string_value(v);
    v = json_object_get(root, "SubSequenceNumber");
    out->subseq = -1;
    if (v != NULL) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            quote_value(v, q, sizeof q);
            snprintf(err, err_len,
                     "SubSequenceNumber must be a non-negative integer, got "
                     "%s; leave it out for a record that is not a user "
                     "record of a KPL aggregate",
                     q);
            return -1;
        }
        out->subseq = (int64_t)json_integer_value(v);
    }
    v = json_object_get(root, "ApproximateArrivalTimestamp");
    double seconds = json_is_number(v) ? json_number_value(v) : -1;
    if (!json_is_number(v) || !isfinite(seconds) || seconds < 0 ||
        seconds > 253402300799.0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "ApproximateArrivalTimestamp must be a number of seconds "
                 "since the epoch, such as 1620824038.331, got %s",
                 q);
        return -1;
    }
    out->arrival_ms = llround(seconds * 1000.0);
    v = json_object_get(root, "PartitionKey");
    if (!json_is_string(v) || json_string_length(v) == 0 ||
        json_string_length(v) > KPL_MAX_PARTITION_KEY_BYTES) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "PartitionKey must be a non-empty string of at most 1024 "
                 "bytes, got %s",
                 q);
        return -1;
    }
    out->partition_key = json_string_value(v);
    v = json_object_get(root, "Data");
    if (!json_is_string(v)) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len, "Data must be a base64 string, got %s", q);
        return -1;
    }
    size_t n = json_string_length(v);
    out->data = malloc(BASE64_DECODED_MAX(n));
    if (out->data == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (base64_decode(json_string_value(v), n, out->data, &out->len) != 0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "Data is not valid base64 (standard alphabet, with "
                 "padding): %s",
                 q);
        free(out->data);
        out->data = NULL;
        return -1;
    }
    return 0;
}

static int list_push(struct work_list *list, struct pipeline_work *work,
                     int64_t arrival_ms)
{
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        struct queued_job *p = realloc(list->items, cap * sizeof *p);
        if (p == NULL)
            return -1;
        list->items = p;
        list->cap = cap;
    }
    list->items[list->count++] =
        (struct queued_job){work, arrival_ms, arrival_ms};
    return 0;
}

/* Free the jobs that were not submitted. */
static void list_free(struct work_list *list)
{
    for (size_t i = list->next; i < list->count; i++)
        pipeline_work_free(list->items[i].work);
    free(list->items);
    memset(list, 0, sizeof *list);
}

/*
 * Tell whether a record arriving at arrival_ms starts a new job. It does
 * when the open job contains batch_size Kinesis records or, at --speed
 * X > 0, spans REPLAY_SPAN_MS of stream time, so that a job waits for its
 * newest record at most that long.
 */
static bool starts_job(const struct replay *r, const struct work_list *list,
                       int64_t batch_size, int64_t arrival_ms)
{
    if (list->open == NULL || list->open_records >= batch_size)
        return true;
    return r->opts.speed > 0 &&
           arrival_ms - list->open->first_arrival_ms >= REPLAY_SPAN_MS;
}

/*
 * The segment of shard_id at the end of the open job, starting a new job
 * when starts_job() returns true. NULL when out of memory.
 */
static struct shard_batch *segment_for(struct replay *r, struct work_list *list,
                                       const char *shard_id, int64_t batch_size,
                                       int64_t arrival_ms, bool may_start_job)
{
    if (list->open == NULL ||
        (may_start_job && starts_job(r, list, batch_size, arrival_ms))) {
        struct pipeline_work *work = calloc(1, sizeof *work);
        if (work == NULL || list_push(list, work, arrival_ms) != 0) {
            free(work);
            return NULL;
        }
        /* Taken after the push, whose realloc may move the items. */
        list->open = &list->items[list->count - 1];
        list->open_records = 0;
    }
    if (arrival_ms > list->open->newest_arrival_ms)
        list->open->newest_arrival_ms = arrival_ms;
    struct pipeline_work *work = list->open->work;
    if (work->segment_count > 0) {
        struct shard_batch *last = work->segments[work->segment_count - 1];
        if (strcmp(last->shard_id, shard_id) == 0)
            return last;
    }
    struct shard_batch **p =
        realloc(work->segments, (work->segment_count + 1) * sizeof *p);
    if (p == NULL)
        return NULL;
    work->segments = p;
    struct shard_batch *segment = shard_batch_new(shard_id);
    if (segment == NULL)
        return NULL;
    work->segments[work->segment_count++] = segment;
    return segment;
}

/* Append one Kinesis record, split when it is a KPL aggregate. */
/* The records of one shard in file order, with the next one to merge. */
struct shard_input {
    struct shard_batch *batch;
    size_t next;
};

/* The input of shard_id, created when it is new. NULL when out of memory. */
static struct shard_input *input_for(struct replay *r, const char *shard_id)
{
    for (size_t i = 0; i < r->shard_count; i++) {
        if (strcmp(r->shards[i].batch->shard_id, shard_id) == 0)
            return &r->shards[i];
    }
    if (r->shard_count == r->shard_cap) {
        size_t cap = r->shard_cap ? r->shard_cap * 2 : 8;
        struct shard_input *p = realloc(r->shards, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        r->shards = p;
        r->shard_cap = cap;
    }
    struct shard_batch *batch = shard_batch_new(shard_id);
    if (batch == NULL)
        return NULL;
    r->shards[r->shard_count] = (struct shard_input){batch, 0};
    return &r->shards[r->shard_count++];
}

static void free_inputs(struct replay *r)
{
    for (size_t i = 0; i < r->shard_count; i++)
        shard_batch_free(r->shards[i].batch);
    free(r->shards);
    r->shards = NULL;
    r->shard_count = r->shard_cap = 0;
}

/* Append one Kinesis record to its shard, split when it is a KPL
 * aggregate. */
static int add_record(struct replay *r, const struct line_record *rec)
{
    struct shard_input *in = input_for(r, rec->shard_id);
    if (in == NULL)
        return -1;
    r->kinesis_records++;

    /* A line with SubSequenceNumber is already one user record. */
    struct kpl_user_record *users = NULL;
    size_t count = 0;
    enum kpl_result kind = KPL_NOT_AGGREGATE;
    if (rec->subseq < 0)
        kind = kpl_deaggregate(rec->data, rec->len, &users, &count);
    if (kind == KPL_ERROR)
        return -1;
    if (kind == KPL_NOT_AGGREGATE) {
        r->user_records++;
        return shard_batch_add(in->batch, rec->data, rec->len, rec->seq,
                               rec->subseq < 0 ? 0 : rec->subseq,
                               rec->arrival_ms, rec->partition_key);
    }
    int rc = 0;
    char key[KPL_MAX_PARTITION_KEY_BYTES + 1];
    for (size_t i = 0; rc == 0 && i < count; i++) {
        /* kpl.h caps keys at KPL_MAX_PARTITION_KEY_BYTES. */
        memcpy(key, users[i].partition_key, users[i].partition_key_len);
        key[users[i].partition_key_len] = '\0';
        rc = shard_batch_add(in->batch, users[i].data, users[i].len, rec->seq,
                             (int64_t)i, rec->arrival_ms, key);
        r->user_records++;
    }
    free(users);
    return rc;
}

/*
 * The input whose next record comes first in the order of the merge of
 * `podium run` (daemon/merge.c) once every record is held: by arrival
 * time, then by shard id. NULL when every record was taken.
 */
static struct shard_input *first_input(struct replay *r)
{
    struct shard_input *best = NULL;
    for (size_t i = 0; i < r->shard_count; i++) {
        struct shard_input *in = &r->shards[i];
        if (in->next >= in->batch->count)
            continue;
        if (best == NULL) {
            best = in;
            continue;
        }
        int64_t a = in->batch->records[in->next].arrival_ms;
        int64_t b = best->batch->records[best->next].arrival_ms;
        if (a < b ||
            (a == b && strcmp(in->batch->shard_id, best->batch->shard_id) < 0))
            best = in;
    }
    return best;
}

/* Tell whether record i of batch is a later user record of the same KPL
 * aggregate as record i - 1, so no job may start between them. */
static bool continues_aggregate(const struct shard_batch *batch, size_t i)
{
    if (i == 0)
        return false;
    const struct shard_record *prev = &batch->records[i - 1];
    const struct shard_record *rec = &batch->records[i];
    return strcmp(prev->seq, rec->seq) == 0 && rec->subseq > prev->subseq;
}

/*
 * Build the jobs from the records of every shard, merged in the order of
 * `podium run`. batch_size counts Kinesis records, so the user records of
 * one aggregate always share a job. Returns 0 or -1 when out of memory.
 */
static int build_jobs(struct replay *r, struct work_list *list)
{
    int64_t batch_size =
        r->opts.batch_size > 0 ? r->opts.batch_size : r->cfg.max_records;
    struct shard_input *in;

    while ((in = first_input(r)) != NULL) {
        const struct shard_record *rec = &in->batch->records[in->next];
        bool continued = continues_aggregate(in->batch, in->next);
        struct shard_batch *segment =
            segment_for(r, list, in->batch->shard_id, batch_size,
                        rec->arrival_ms, !continued);
        if (segment == NULL ||
            shard_batch_add(segment, rec->data, rec->len, rec->seq, rec->subseq,
                            rec->arrival_ms, rec->partition_key) != 0)
            return -1;
        if (!continued)
            list->open_records++;
        in->next++;
    }
    return 0;
}

/*
 * Read one file into the shard inputs of r. Returns 0; 1 after a bad line under
 * --on-bad-line fail or on a runtime failure; 2 when the file cannot be read.
 */
static int read_file(struct replay *r, const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr,
                "podium replay: cannot read %s: %s; check the path and its "
                "permissions\n",
                path, strerror(errno));
        return 2;
    }
    char *line = NULL, err[512];
    size_t cap = 0;
    ssize_t n;
    uint64_t line_no = 0;
    int rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        json_error_t jerr;
        struct line_record rec = {0};
        line_no++;
        r->lines++;
        json_t *root =
            json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
        if (root == NULL)
            snprintf(err, sizeof err, "not JSON: %s at column %d", jerr.text,
                     jerr.column);
        if (root != NULL && check_fields(root, &rec, err, sizeof err) == 0) {
            if (add_record(r, &rec) != 0) {
                fprintf(stderr,
                        "podium replay: %s:%" PRIu64 ": out of memory\n", path,
                        line_no);
                rc = 1;
            }
        } else {
            r->bad_lines++;
            fprintf(stderr, "podium replay: %s:%" PRIu64 ": %s; %s\n", path,
                    line_no, err,
                    r->opts.skip_bad_lines
                        ? "line skipped"
                        : "nothing was applied; fix the line or pass "
                          "--on-bad-line skip");
            if (!r->opts.skip_bad_lines)
                rc = 1;
        }
        free(rec.data);
        json_decref(root);
    }
    if (rc == 0 && ferror(f)) {
        fprintf(stderr, "podium replay: failed to read %s: %s\n", path,
                strerror(errno));
        rc = 2;
    }
    free(line);
    fclose(f);
    return rc;
}

/* The checkpoints of a replayed position are never stored (see above). */
static void drop_checkpoints(struct work_list *list)
{
    for (size_t i = 0; i < list->count; i++) {
        struct pipeline_work *work = list->items[i].work;
        for (size_t j = 0; j < work->segment_count; j++) {
            free(work->segments[j]->checkpoint_seq);
            work->segments[j]->checkpoint_seq = NULL;
        }
    }
}

/* ---- the loop ------------------------------------------------------ */

static void on_message(void *arg, int64_t id, const char *topic,
                       const char *payload, size_t len)
{
    struct replay *r = arg;
    if (publisher_submit(r->publisher, id, topic, payload, len) != 0) {
        struct log_ids ids = {.topic = topic};
        log_error("main", &ids,
                  "failed to queue outbox message %" PRId64
                  " for publishing; it stays in the outbox",
                  id);
        r->exit_code = 1;
    }
}

static void on_committed(void *arg, const char *shard_id)
{
    (void)arg;
    (void)shard_id;
}

static void on_ack(void *arg, int64_t id)
{
    struct replay *r = arg;
    pipeline_ack(r->pipeline, id);
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct replay *r = handle->data;
    r->open_handles--;
}

static void on_module_closed(void *arg)
{
    struct replay *r = arg;
    r->open_handles--;
}

static void close_all(struct replay *r)
{
    if (r->phase == REPLAY_CLOSING)
        return;
    r->phase = REPLAY_CLOSING;
    r->open_handles = 1;
    uv_close((uv_handle_t *)&r->tick, on_handle_closed);
    if (r->publisher != NULL) {
        r->open_handles++;
        publisher_close(r->publisher, on_module_closed, r);
        r->publisher = NULL;
    }
}

static void on_pipeline_fatal(void *arg, const char *message)
{
    struct replay *r = arg;
    log_error("main", NULL, "replay failed: %s", message);
    r->exit_code = 1;
    close_all(r);
}

/*
 * Submit the jobs whose newest record is due: all of them at --speed 0,
 * else those whose arrival time is at most speed times the wall time since
 * the start past the first arrival. After the last job, queue closing
 * every open second, because the input ends there. Returns true while
 * jobs remain to be submitted.
 */
static bool submit_due_jobs(struct replay *r, int64_t now)
{
    struct work_list *list = &r->jobs;
    if (list->next > list->count)
        return false; /* every job and the close were submitted */
    double due = INFINITY;
    if (r->opts.speed > 0 && list->count > 0)
        due = (double)list->items[0].first_arrival_ms +
              (double)(now - r->started_ms) * r->opts.speed;
    while (list->next < list->count &&
           (double)list->items[list->next].newest_arrival_ms <= due) {
        pipeline_submit_work(r->pipeline, list->items[list->next].work);
        list->next++;
    }
    if (list->next < list->count)
        return true;
    /* The end of the input closes every second still open. */
    pipeline_submit_close_all(r->pipeline);
    list->next = list->count + 1;
    return false;
}

static void on_tick(uv_timer_t *timer)
{
    struct replay *r = timer->data;
    int64_t now = log_now_ms();

    switch (r->phase) {
    case REPLAY_APPLYING:
        if (submit_due_jobs(r, now) || !pipeline_idle(r->pipeline))
            return;
        r->phase = REPLAY_PUBLISHING;
        r->deadline_ms = now + r->opts.publish_timeout_s * 1000;
        return;
    case REPLAY_PUBLISHING:
        if (publisher_pending(r->publisher) > 0) {
            if (now < r->deadline_ms)
                return;
            fprintf(stderr,
                    "podium replay: %zu messages were not acknowledged "
                    "within %" PRId64 " s (--publish-timeout); they stay in "
                    "the outbox and go out with the next run or replay on "
                    "this store; check that the broker or endpoint is "
                    "reachable\n",
                    publisher_pending(r->publisher), r->opts.publish_timeout_s);
            r->exit_code = 1;
        }
        r->phase = REPLAY_DELETING;
        pipeline_flush_acks(r->pipeline);
        return;
    case REPLAY_DELETING:
        if (pipeline_idle(r->pipeline))
            close_all(r);
        return;
    default:
        return;
    }
}

/* ---- start-up ------------------------------------------------------ */

struct outbox_cursor {
    struct replay *r;
    int64_t last_id;
    size_t rows;
};

static int submit_outbox_row(void *arg, int64_t id, const char *topic,
                             const void *payload, size_t len)
{
    struct outbox_cursor *cur = arg;
    cur->last_id = id;
    cur->rows++;
    on_message(cur->r, id, topic, payload, len);
    return 0;
}

/* Hand the messages left in the outbox by an earlier run to the publisher,
 * so that exit status 0 means the whole outbox was delivered. */
static int resend_outbox(struct replay *r)
{
    struct outbox_cursor cur = {r, 0, 0};
    do {
        cur.rows = 0;
        if (store_outbox_load(r->store, cur.last_id, REPLAY_OUTBOX_PAGE,
                              submit_outbox_row, &cur) != 0) {
            log_error("main", NULL, "failed to read the outbox: %s",
                      store_errmsg(r->store));
            return -1;
        }
    } while (cur.rows == REPLAY_OUTBOX_PAGE);
    return 0;
}

static int open_state(struct replay *r)
{
    char err[512];
    struct pipeline_hooks hooks = {r, on_committed, on_message,
                                   on_pipeline_fatal, NULL};

    if (store_open(r->cfg.store_path, &r->store, err, sizeof err) != 0) {
        log_error("main", NULL, "failed to open the store: %s", err);
        return -1;
    }
    if (daemon_open_idempotency(r->store, &r->cfg) != 0)
        return -1;
    r->pipeline = pipeline_new(&r->loop, r->store, &r->cfg, &hooks);
    if (r->pipeline == NULL || pipeline_restore(r->pipeline) != 0)
        return -1;
    return 0;
}

static int start_publisher(struct replay *r)
{
    char err[512];
    struct pub_config pc;
    daemon_pub_config(&r->cfg, &r->creds, &pc);
    r->publisher = publisher_new(&r->loop, &pc, on_ack, r, err, sizeof err);
    if (r->publisher == NULL) {
        log_error("main", NULL, "failed to start the publisher: %s", err);
        return -1;
    }
    return 0;
}

static void print_summary(struct replay *r)
{
    const struct pipeline_counters *c =
        r->pipeline ? pipeline_counters(r->pipeline) : NULL;
    printf("{\"files\":%zu,\"lines\":%" PRIu64 ",\"bad_lines\":%" PRIu64
           ",\"kinesis_records\":%" PRIu64 ",\"user_records\":%" PRIu64
           ",\"applied\":%" PRIu64 ",\"duplicates\":%" PRIu64
           ",\"messages\":%" PRIu64 "}\n",
           r->opts.file_count, r->lines, r->bad_lines, r->kinesis_records,
           r->user_records, c ? (uint64_t)c->records_applied : 0,
           c ? (uint64_t)c->duplicates : 0,
           c ? (uint64_t)c->messages_built : 0);
    if (r->bad_lines > 0 && r->opts.skip_bad_lines)
        fprintf(stderr, "podium replay: skipped %" PRIu64 " bad lines\n",
                r->bad_lines);
}

static int replay_files(struct replay *r)
{
    struct work_list *list = &r->jobs;
    int rc = 0;

    /* An unreadable file is a usage error, whatever the files before it
     * contain. */
    for (size_t i = 0; i < r->opts.file_count; i++) {
        FILE *f = fopen(r->opts.files[i], "r");
        if (f == NULL) {
            fprintf(stderr,
                    "podium replay: cannot read %s: %s; check the path and "
                    "its permissions\n",
                    r->opts.files[i], strerror(errno));
            return 2;
        }
        fclose(f);
    }
    for (size_t i = 0; rc == 0 && i < r->opts.file_count; i++)
        rc = read_file(r, r->opts.files[i]);
    if (rc == 0 && build_jobs(r, list) != 0) {
        fprintf(stderr, "podium replay: out of memory while building the "
                        "jobs\n");
        rc = 1;
    }
    free_inputs(r);
    if (rc != 0) {
        list_free(list);
        return rc;
    }
    drop_checkpoints(list);
    if (aws_credentials_from_env(&r->creds) != 0 &&
        r->cfg.transport == CFG_TRANSPORT_IOT) {
        fprintf(stderr, "podium replay: no AWS credentials for "
                        "publish.transport=iot: set AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY\n");
        list_free(list);
        return 2;
    }
    if (uv_loop_init(&r->loop) != 0) {
        list_free(list);
        return 1;
    }
    uv_timer_init(&r->loop, &r->tick);
    r->tick.data = r;
    if (open_state(r) != 0 || start_publisher(r) != 0 ||
        resend_outbox(r) != 0) {
        rc = 1;
    } else {
        r->started_ms = log_now_ms();
        submit_due_jobs(r, r->started_ms);
        uv_timer_start(&r->tick, on_tick, REPLAY_TICK_MS, REPLAY_TICK_MS);
    }
    if (rc != 0)
        close_all(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    list_free(list);
    if (rc == 0)
        rc = r->exit_code;
    if (rc == 0 || r->pipeline != NULL)
        print_summary(r);
    pipeline_free(r->pipeline);
    store_close(r->store);
    uv_loop_close(&r->loop);
    aws_credentials_clear(&r->creds);
    return rc;
}

/* ---- arguments ----------------------------------------------------- */

static void replay_usage(FILE *out)
{
    fputs("usage: podium replay [options] FILE...\n"
          "\n"
          "Apply recorded Kinesis records (JSON lines, as written by\n"
          "`podium simulate --out`) to the store through the pipeline of\n"
          "`podium run`, publish the messages and exit once all are\n"
          "acknowledged.\n"
          "\n"
          "options:\n"
          "  --batch-size N       Kinesis records per transaction, 1..10000\n"
          "                       (default kinesis.max_records)\n"
          "  --speed X            0 (default): as fast as possible; X > 0:\n"
          "                       X seconds of ApproximateArrivalTimestamp\n"
          "                       per second, so 1 is real time\n"
          "  --publish-timeout S  seconds the publisher gets to deliver every\n"
          "                       message at the end (default 30); exit 1\n"
          "                       when they pass first\n"
          "  --on-bad-line MODE   fail (default): report the line and apply\n"
          "                       nothing; skip: report it, go on, count it\n"
          "  --config FILE, --set KEY=VALUE   as for run\n",
          out);
}

static int parse_replay_args(int argc, char **argv, struct replay_options *o,
                             struct common_opts *common)
{
    static const struct option longopts[] = {
        {"batch-size", required_argument, NULL, 'b'},
        {"speed", required_argument, NULL, 'x'},
        {"on-bad-line", required_argument, NULL, 'l'},
        {"publish-timeout", required_argument, NULL, 't'},
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    char *end;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            errno = 0;
            o->batch_size = strtoll(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || o->batch_size < 1 ||
                o->batch_size > 10000) {
                fprintf(stderr,
                        "podium replay: invalid --batch-size \"%s\": expected "
                        "an integer from 1 to 10000\n",
                        optarg);
                return 2;
            }
            break;
        case 'x':
            errno = 0;
            o->speed = strtod(optarg, &end);
            if (errno != 0 || end == optarg || *end != '\0' ||
                !(o->speed >= 0 && o->speed <= REPLAY_MAX_SPEED)) {
                fprintf(stderr,
                        "podium replay: invalid --speed \"%s\": expected 0 "
                        "(as fast as possible) or a factor of real time up "
                        "to %.0f, such as 1 or 10\n",
                        optarg, REPLAY_MAX_SPEED);
                return 2;
            }
            break;
        case 't':
            errno = 0;
            o->publish_timeout_s = strtoll(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' ||
                o->publish_timeout_s < 1 ||
                o->publish_timeout_s > REPLAY_MAX_PUBLISH_TIMEOUT_S) {
                fprintf(stderr,
                        "podium replay: invalid --publish-timeout \"%s\": "
                        "expected seconds from 1 to %d\n",
                        optarg, REPLAY_MAX_PUBLISH_TIMEOUT_S);
                return 2;
            }
            break;
        case 'l':
            if (strcmp(optarg, "skip") == 0 || strcmp(optarg, "fail") == 0) {
                o->skip_bad_lines = strcmp(optarg, "skip") == 0;
                break;
            }
            fprintf(stderr,
                    "podium replay: invalid --on-bad-line \"%s\": expected "
                    "skip or fail\n",
                    optarg);
            return 2;
        case 'c':
            common->config_file = optarg;
            break;
        case 's':
            if (common_opts_add_set(common, optarg) != 0)
                return 1;
            break;
        case 'h':
            replay_usage(stdout);
            return -1;
        default:
            replay_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "podium replay: no recording given\n");
        replay_usage(stderr);
        return 2;
    }
    o->files = argv + optind;
    o->file_count = (size_t)(argc - optind);
    return 0;
}

int cmd_replay(int argc, char **argv)
{
    struct common_opts common = {0};
    struct replay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return 1;
    r->opts.publish_timeout_s = REPLAY_PUBLISH_TIMEOUT_S;
    int rc = parse_replay_args(argc, argv, &r->opts, &common);
    if (rc == 0)
        rc = load_config(&common, &r->cfg);
    free(common.sets);
    if (rc == 0) {
        log_set_level((enum log_level)r->cfg.log_level);
        rc = replay_files(r);
        cfg_free(&r->cfg);
    }
    free(r);
    return rc < 0 ? 0 : rc;
}
