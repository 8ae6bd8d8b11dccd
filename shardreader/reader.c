/*
 * Kinesis shard reader: one worker of the Kinesis Client Library (KCL)
 * model, on one libuv loop.
 *
 * Shard lifecycle. ListShards (paginated with NextToken) runs at start,
 * every shard_sync_interval_s, every second while the stream lists no
 * shard, and whenever a finished shard has no known child. Each shard moves
 * through
 *     IDLE -> ITERATOR -> READING <-> COMMIT -> FINISHED
 * IDLE: known but not readable yet, because a parent (ParentShardId or
 * AdjacentParentShardId) is not finished. A known parent that a later
 * listing no longer includes (aged out past retention) does not block.
 * ITERATOR: a GetShardIterator call is due or in flight. READING: a
 * GetRecords call is due or in flight, at most one per poll_interval_ms
 * (5 per second at the 200 ms minimum, the per-shard limit). An empty
 * reply waits for the next poll. COMMIT: a batch is with the consumer and the
 * shard is not read further until reader_batch_committed(). FINISHED: the
 * end of a closed shard (a reply without NextShardIterator, whose records
 * are delivered like any others) was committed. A finished shard is never
 * read again, also after a restart, since the consumer stores it as
 * finished with the last batch.
 *
 * Checkpoints. The reader never stores iterators. A shard with a committed
 * checkpoint gets AFTER_SEQUENCE_NUMBER; a checkpoint inside a KPL aggregate
 * (sub-sequence > 0) gets AT_SEQUENCE_NUMBER, and the user records up to
 * the checkpoint are dropped. A shard without a checkpoint starts at
 * TRIM_HORIZON when it has a known parent (a child after resharding), else
 * at the configured initial position (TRIM_HORIZON, LATEST or
 * AT_TIMESTAMP). The exception is a child whose parents were already
 * closed when they started at LATEST or AT_TIMESTAMP. Nothing of them was
 * read, so the child starts at that initial position too. Thus a reader
 * started at LATEST after a split skips the records put before it.
 * Each batch carries the checkpoint the consumer stores with it in the same
 * transaction as its effects, and only the committed checkpoint is used to
 * build an iterator. Sequence numbers are compared as decimal strings of
 * any length, never as doubles.
 *
 * Retries. ExpiredIteratorException: one new GetShardIterator after the
 * committed checkpoint, never the dead iterator again. Throttling, 5xx,
 * timeouts and connection errors: the same request again after exponential
 * backoff with jitter (at least poll_interval_ms * 2^(n-1), at most 30 s),
 * per shard, so other shards keep going. A GetRecords that the server
 * rejects as invalid, or that failed 4 times in a row for reasons other
 * than throttling, continues with a new iterator from the committed
 * checkpoint. Warnings are rate-limited and every failure is counted by
 * cause (reader_get_counters). A missing stream and rejected credentials
 * are fatal (on_fatal). Every request has request_timeout_ms, so a call
 * that the server never responds to ends too.
 *
 * Resharding. SplitShard and MergeShards close shards and create children
 * that name them as parents. The reader learns children from ChildShards
 * in a closed shard's last GetRecords reply when the server sends it, and
 * from ListShards otherwise. Either way a child starts at TRIM_HORIZON only
 * after all its parents are finished, so a merge waits for both. ListShards
 * reports a closed shard with an EndingSequenceNumber, but the reader only
 * uses that to report open shards and never compares sequence numbers
 * against it, because some emulators put a sentinel there. JSON members
 * that are null count as absent.
 *
 * All functions run on the loop thread.
 */
#include "shardreader/shardreader.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/seqnum.h"
#include "shardreader/batch.h"
#include "shardreader/kinesis.h"
#include "shardreader/kpl.h"

#define SHARD_LOG "shard"

/*
 * GetRecords returns at most 10 MiB of data, which is 13.4 MiB in base64,
 * plus up to 10,000 records of sequence number, partition key (256 bytes at
 * most) and member names, about 4 MiB more.
 */
#define SHARD_MAX_RESPONSE ((size_t)24 << 20)
/* GetShardIterator replies contain one iterator of at most 512 characters. */
#define SHARD_MAX_ITERATOR_RESPONSE ((size_t)64 << 10)
/* ListShards pages contain at most 1,000 shards of about 400 bytes each. */
#define SHARD_MAX_LIST_RESPONSE ((size_t)4 << 20)
#define SHARD_LIST_PAGE_SIZE    1000
/* Pages of one listing: 100,000 shards, far above Kinesis shard quotas. */
#define SHARD_MAX_LIST_PAGES 100
#define SHARD_MAX_SHARDS     100000
/* ShardId is 1 to 128 characters in the Kinesis API. */
#define SHARD_MAX_ID_LEN     128
#define SHARD_BACKOFF_CAP_MS 30000
#define SHARD_ERROR_TEXT     512
/*
 * GetRecords failures in a row (other than throttling) after which the
 * iterator is dropped and a new one is built from the committed checkpoint.
 * Some servers respond to every later call with the same 5xx once they stop
 * accepting an iterator. A fresh one costs one call, skips no record and
 * repeats no committed one.
 */
#define SHARD_ITERATOR_REFRESH_FAILURES 4
/* Warnings about retries: at most 10 lines every 10 s per reader. */
#define SHARD_WARN_WINDOW_MS 10000
#define SHARD_WARN_MAX       10

enum shard_state {
    SHARD_IDLE,
    SHARD_ITERATOR,
    SHARD_READING,
    SHARD_COMMIT,
    SHARD_FINISHED
};

struct shard {
    struct reader *rd;
    uv_timer_t timer;        /* next call or retry of this shard */
    struct httpc_call *call; /* borrowed from httpc while in flight */
    char *id;
    char *parent_id; /* owned, NULL when none */
    char *adjacent_parent_id;
    bool listed; /* in the latest ListShards result */
    /* Known before the latest listing was requested and missing from it:
     * aged out past retention, so it blocks no child. */
    bool aged_out;
    uint64_t known_since; /* list_generation when the shard was added */
    bool announced;       /* named in a parent's ChildShards */
    bool closed;          /* ListShards showed an EndingSequenceNumber */
    /* Started at LATEST or AT_TIMESTAMP, without a checkpoint, while
     * already closed: none of its records were read, so its children
     * start at that initial position too. */
    bool skipped_to_initial;
    enum shard_state state;
    /* Committed checkpoint (owned, NULL when none). */
    char *checkpoint_seq;
    int64_t checkpoint_subseq;
    /* Checkpoint of the batch with the consumer. */
    char *pending_seq;
    int64_t pending_subseq;
    bool pending_end;
    char *iterator; /* owned; NULL while none is held */
    /* Drop user records up to this position (AT_SEQUENCE_NUMBER start). */
    char *skip_seq;
    int64_t skip_subseq;
    uint64_t last_get_ms; /* loop time when the last GetRecords started */
    bool has_last_get;
    uint32_t attempt;      /* failed calls in a row */
    uint32_t failed_reads; /* GetRecords failures in a row, except throttling */
    int64_t millis_behind;
    bool replied_empty;     /* the last GetRecords reply had no records */
    uint64_t last_reply_ms; /* loop time of the last GetRecords reply */
    uint64_t get_records_calls;
    bool parked; /* a request came due while the reader was paused */
};

/* One shard as ListShards describes it. */
struct shard_desc {
    char *id;
    char *parent_id;
    char *adjacent_parent_id;
    bool closed;
};

/* A ListShards run over all its pages. */
struct shard_listing {
    struct shard_desc *items;
    size_t count;
    size_t cap;
    char *next_token;
    int pages;
};

struct reader {
    uv_loop_t *loop;
    struct aws_client *aws;
    struct reader_config cfg; /* stream_name points at stream */
    char *stream;
    char *endpoint_url;
    struct log_ids log_ids; /* the stream alone */
    struct reader_callbacks cbs;
    /* Shards sorted by id; each is owned and freed in its close callback. */
    struct shard **shards;
    size_t shard_count;
    size_t shard_cap;
    uv_timer_t sync_timer; /* next ListShards, or its retry */
    struct httpc_call *list_call;
    struct shard_listing listing;
    uint32_t list_attempt;
    uint64_t list_generation; /* listings started, counted at page one */
    bool started;
    bool handles_ready; /* reader_start succeeded: timers exist */
    bool ready;         /* the first listing completed */
    bool stopping;      /* reader_stop or reader_free ran, or a fatal error */
    bool paused;        /* reader_set_paused: no GetShardIterator or
                           GetRecords starts */
    bool closed;        /* all handles closed */
    bool free_requested;
    size_t open_handles;
    void (*stopped_cb)(void *arg);
    void *stopped_arg;
    struct reader_counters counters;
    struct log_limit warn_limit;
    uint64_t rng;
};

static void shard_timer_cb(uv_timer_t *timer);
static void list_send(struct reader *rd);
static void schedule_list(struct reader *rd, uint64_t delay_ms);
static void start_ready_shards(struct reader *rd);

/* ---- small helpers ------------------------------------------------------ */

static char *dup_or_null(const char *s)
{
    return s != NULL ? strdup(s) : NULL;
}

/* Replace *slot with a copy of value (NULL clears it). Returns 0 or -1. */
static int replace_string(char **slot, const char *value)
{
    char *copy = NULL;
    if (value != NULL && (copy = strdup(value)) == NULL)
        return -1;
    free(*slot);
    *slot = copy;
    return 0;
}

static struct log_ids shard_ids(const struct shard *sh, const char *seq)
{
    struct log_ids ids = {
        .stream = sh->rd->stream, .shard = sh->id, .seq = seq};
    return ids;
}

/* Log a warning about a retry unless too many were logged lately. */
static void warn_limited(struct reader *rd, const struct log_ids *ids,
                         const char *what, const char *reason, uint64_t delay)
{
    uint32_t suppressed;
    if (!log_limit_allow(&rd->warn_limit, uv_now(rd->loop), &suppressed))
        return;
    char note[64] = "";
    if (suppressed > 0)
        snprintf(note, sizeof note, " (%u similar warnings suppressed)",
                 suppressed);
    log_warn(SHARD_LOG, ids, "failed to %s: %s; retrying in %" PRIu64 " ms%s",
             what, reason, delay, note);
}

/* Count a failed call by its cause. */
static void count_failure(struct reader *rd, enum kinesis_outcome outcome)
{
    switch (outcome) {
    case KINESIS_EXPIRED_ITERATOR:
        rd->counters.expired_iterators++;
        break;
    case KINESIS_THROTTLED:
        rd->counters.throttled++;
        break;
    case KINESIS_SERVER_ERROR:
        rd->counters.server_errors++;
        break;
    case KINESIS_TIMEOUT:
        rd->counters.timeouts++;
        break;
    case KINESIS_CONNECTION:
        rd->counters.connection_errors++;
        break;
    default:
        rd->counters.other_errors++;
        break;
    }
}

/*
 * Report a fatal error once and stop issuing requests. The daemon is
 * expected to call reader_stop() from on_fatal or soon after.
 */
static void reader_fail(struct reader *rd, const char *message)
{
    if (rd->stopping)
        return;
    rd->stopping = true;
    log_error(SHARD_LOG, &rd->log_ids, "%s", message);
    if (rd->cbs.on_fatal != NULL)
        rd->cbs.on_fatal(rd->cbs.arg, message);
}

/* ---- shard table ------------------------------------------------------- */

static int shard_cmp(const void *a, const void *b)
{
    const struct shard *const *x = a;
    const struct shard *const *y = b;
    return strcmp((*x)->id, (*y)->id);
}

/* Binary search among the first count shards, which are sorted by id. */
static struct shard *find_shard_in(const struct reader *rd, const char *id,
                                   size_t count)
{
    size_t lo = 0, hi = count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(rd->shards[mid]->id, id);
        if (c == 0)
            return rd->shards[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static struct shard *find_shard(const struct reader *rd, const char *id)
{
    return find_shard_in(rd, id, rd->shard_count);
}

static void init_shard_timer(struct shard *sh)
{
    uv_timer_init(sh->rd->loop, &sh->timer);
    sh->rd->open_handles++;
}

/*
 * Append a new IDLE shard (owned by the table). The caller re-sorts the
 * table with sort_shards() before the next find_shard(). Returns NULL when
 * memory or the shard limit runs out.
 */
static struct shard *add_shard(struct reader *rd, const char *id)
{
    if (rd->shard_count == SHARD_MAX_SHARDS)
        return NULL;
    if (rd->shard_count == rd->shard_cap) {
        size_t cap = rd->shard_cap ? rd->shard_cap * 2 : 16;
        struct shard **grown = realloc(rd->shards, cap * sizeof *grown);
        if (grown == NULL)
            return NULL;
        rd->shards = grown;
        rd->shard_cap = cap;
    }
    struct shard *sh = calloc(1, sizeof *sh);
    if (sh == NULL || (sh->id = strdup(id)) == NULL) {
        free(sh);
        return NULL;
    }
    sh->rd = rd;
    sh->known_since = rd->list_generation;
    sh->millis_behind = -1;
    sh->timer.data = sh;
    if (rd->handles_ready)
        init_shard_timer(sh);
    rd->shards[rd->shard_count++] = sh;
    return sh;
}

static void sort_shards(struct reader *rd)
{
    if (rd->shard_count > 1)
        qsort(rd->shards, rd->shard_count, sizeof *rd->shards, shard_cmp);
}

static void free_shard(struct shard *sh)
{
    free(sh->id);
    free(sh->parent_id);
    free(sh->adjacent_parent_id);
    free(sh->checkpoint_seq);
    free(sh->pending_seq);
    free(sh->iterator);
    free(sh->skip_seq);
    free(sh);
}

/* ---- scheduling --------------------------------------------------------- */

static void shard_schedule(struct shard *sh, uint64_t delay_ms)
{
    uv_timer_start(&sh->timer, shard_timer_cb, delay_ms, 0);
}

/* Milliseconds until the next GetRecords of sh may start. */
static uint64_t shard_poll_delay(const struct shard *sh)
{
    if (!sh->has_last_get)
        return 0;
    uint64_t due = sh->last_get_ms + (uint64_t)sh->rd->cfg.poll_interval_ms;
    uint64_t now = uv_now(sh->rd->loop);
    return due > now ? due - now : 0;
}

/*
 * Schedule a retry of the shard's current step after a failure, logging a
 * rate-limited warning. A GetRecords retry still keeps the poll interval.
 */
static void shard_backoff(struct shard *sh, const char *what,
                          const char *reason)
{
    struct reader *rd = sh->rd;
    uint64_t delay;

    sh->attempt++;
    delay = kinesis_backoff_ms(&rd->rng, sh->attempt,
                               (uint64_t)rd->cfg.poll_interval_ms,
                               SHARD_BACKOFF_CAP_MS);
    if (sh->state == SHARD_READING && delay < shard_poll_delay(sh))
        delay = shard_poll_delay(sh);
    struct log_ids ids = shard_ids(sh, sh->checkpoint_seq);
    warn_limited(rd, &ids, what, reason, delay);
    shard_schedule(sh, delay);
}

/* ---- GetShardIterator -------------------------------------------------- */

/* True when parent_id is a known shard whose records this reader read or
 * would have read, so that its child continues from TRIM_HORIZON. */
static bool parent_was_read(const struct reader *rd, const char *parent_id)
{
    const struct shard *parent =
        parent_id != NULL ? find_shard(rd, parent_id) : NULL;
    return parent != NULL && !parent->skipped_to_initial;
}

/* True when sh has a parent that ListShards or a checkpoint mentioned and
 * whose records were read. */
static bool has_read_parent(const struct reader *rd, const struct shard *sh)
{
    return parent_was_read(rd, sh->parent_id) ||
           parent_was_read(rd, sh->adjacent_parent_id);
}

/*
 * Fill the position members of a GetShardIterator request for sh and set
 * the record filter that goes with AT_SEQUENCE_NUMBER. Returns 0 or -1.
 */
static int put_start_position(struct shard *sh, json_t *req)
{
    struct reader *rd = sh->rd;
    const char *type;
    int rc = 0;

    free(sh->skip_seq);
    sh->skip_seq = NULL;
    if (sh->checkpoint_seq != NULL) {
        /* A sub-sequence > 0 means part of a KPL aggregate was applied: read
         * the aggregate again and drop what was applied. */
        bool inside = sh->checkpoint_subseq > 0;
        type = inside ? "AT_SEQUENCE_NUMBER" : "AFTER_SEQUENCE_NUMBER";
        rc |= json_object_set_new(req, "StartingSequenceNumber",
                                  json_string(sh->checkpoint_seq));
        if (inside) {
            sh->skip_seq = strdup(sh->checkpoint_seq);
            sh->skip_subseq = sh->checkpoint_subseq;
            rc |= sh->skip_seq == NULL ? -1 : 0;
        }
    } else if (has_read_parent(rd, sh) ||
               rd->cfg.initial_position == READER_TRIM_HORIZON) {
        type = "TRIM_HORIZON";
    } else if (rd->cfg.initial_position == READER_LATEST) {
        type = "LATEST";
        sh->skipped_to_initial = sh->closed;
    } else {
        sh->skipped_to_initial = sh->closed;
        /* Timestamp is seconds since the epoch, as a JSON number. */
        double secs = (double)rd->cfg.initial_timestamp_ms / 1000.0;
        type = "AT_TIMESTAMP";
        rc |= json_object_set_new(req, "Timestamp", json_real(secs));
    }
    rc |= json_object_set_new(req, "ShardIteratorType", json_string(type));
    return rc == 0 ? 0 : -1;
}

static void iterator_reply(void *arg, const struct aws_reply *reply);

/*
 * Send GetShardIterator for sh from its committed checkpoint (or initial
 * position). Loop thread only.
 */
static void shard_get_iterator(struct shard *sh)
{
    struct reader *rd = sh->rd;
    json_t *req =
        json_pack("{s:s, s:s}", "StreamName", rd->stream, "ShardId", sh->id);
    char *body = NULL;

    sh->state = SHARD_ITERATOR;
    if (rd->paused) {
        sh->parked = true;
        json_decref(req);
        return;
    }
    if (req != NULL && put_start_position(sh, req) == 0)
        body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (body != NULL) {
        rd->counters.get_shard_iterator_calls++;
        sh->call =
            aws_json_call(rd->aws, "GetShardIterator", body, strlen(body),
                          rd->cfg.request_timeout_ms,
                          SHARD_MAX_ITERATOR_RESPONSE, iterator_reply, sh);
    }
    free(body);
    if (sh->call == NULL) {
        rd->counters.other_errors++;
        shard_backoff(sh, "get shard iterator", "request not started");
    }
}

static void deliver_batch(struct shard *sh, struct shard_batch *batch);
static struct shard_batch *new_batch(struct shard *sh, bool end);

/*
 * GetShardIterator returns no iterator for a closed shard that has nothing
 * left to read; that is the shard's end, committed like any other.
 */
static void iterator_missing(struct shard *sh)
{
    struct shard_batch *batch = new_batch(sh, true);
    if (batch == NULL) {
        sh->rd->counters.other_errors++;
        shard_backoff(sh, "get shard iterator", "out of memory");
        return;
    }
    deliver_batch(sh, batch);
}

/* Handle the GetShardIterator reply: keep the iterator or retry. */
static void iterator_accept(struct shard *sh, const struct aws_reply *reply)
{
    char err[SHARD_ERROR_TEXT];
    json_t *root =
        kinesis_parse_object(reply->body, reply->body_len,
                             SHARD_MAX_ITERATOR_RESPONSE, err, sizeof err);
    if (root == NULL) {
        sh->rd->counters.other_errors++;
        shard_backoff(sh, "get shard iterator", err);
        return;
    }
    const char *it = kinesis_string_member(root, "ShardIterator");
    if (it == NULL) {
        json_decref(root);
        iterator_missing(sh);
        return;
    }
    if (replace_string(&sh->iterator, it) != 0) {
        json_decref(root);
        sh->rd->counters.other_errors++;
        shard_backoff(sh, "get shard iterator", "out of memory");
        return;
    }
    json_decref(root);
    sh->attempt = 0;
    sh->state = SHARD_READING;
    shard_schedule(sh, shard_poll_delay(sh));
}

static void fail_access(struct reader *rd, const char *action,
                        const struct aws_reply *reply);

static void iterator_reply(void *arg, const struct aws_reply *reply)
{
    struct shard *sh = arg;
    enum kinesis_outcome outcome = kinesis_classify(reply);
    char reason[SHARD_ERROR_TEXT];

    sh->call = NULL;
    if (sh->rd->stopping) /* a fatal error came first */
        return;
    if (outcome == KINESIS_OK) {
        iterator_accept(sh, reply);
        return;
    }
    count_failure(sh->rd, outcome);
    if (outcome == KINESIS_ACCESS_DENIED) {
        fail_access(sh->rd, "get shard iterator", reply);
        return;
    }
    kinesis_describe(reply, reason, sizeof reason);
    shard_backoff(sh, "get shard iterator", reason);
}

/* ---- GetRecords --------------------------------------------------------- */

static void records_reply(void *arg, const struct aws_reply *reply);

/* Send GetRecords with the shard's current iterator. Loop thread only. */
static void shard_get_records(struct shard *sh)
{
    struct reader *rd = sh->rd;
    if (rd->paused) {
        sh->parked = true;
        return;
    }
    json_t *req = json_pack("{s:s, s:i}", "ShardIterator", sh->iterator,
                            "Limit", (json_int_t)rd->cfg.max_records);
    char *body = req != NULL ? json_dumps(req, JSON_COMPACT) : NULL;

    json_decref(req);
    /* Take the time now, not at the start of the loop turn, so that two
     * calls are never closer than poll_interval_ms. */
    uv_update_time(rd->loop);
    sh->last_get_ms = uv_now(rd->loop);
    sh->has_last_get = true;
    if (body != NULL) {
        rd->counters.get_records_calls++;
        sh->get_records_calls++;
        sh->call = aws_json_call(rd->aws, "GetRecords", body, strlen(body),
                                 rd->cfg.request_timeout_ms, SHARD_MAX_RESPONSE,
                                 records_reply, sh);
    }
    free(body);
    if (sh->call == NULL) {
        rd->counters.other_errors++;
        shard_backoff(sh, "get records", "request not started");
    }
}

static void shard_timer_cb(uv_timer_t *timer)
{
    struct shard *sh = timer->data;
    if (sh->rd->stopping)
        return;
    if (sh->state == SHARD_ITERATOR)
        shard_get_iterator(sh);
    else if (sh->state == SHARD_READING)
        shard_get_records(sh);
}

/* Create an empty batch for sh (owned by the caller), or NULL. */
static struct shard_batch *new_batch(struct shard *sh, bool end)
{
    struct shard_batch *batch = calloc(1, sizeof *batch);
    if (batch == NULL)
        return NULL;
    batch->shard_id = strdup(sh->id);
    batch->shard_end = end;
    batch->millis_behind = sh->millis_behind;
    batch->checkpoint_subseq = sh->checkpoint_subseq;
    if (sh->checkpoint_seq != NULL)
        batch->checkpoint_seq = strdup(sh->checkpoint_seq);
    if (batch->shard_id == NULL ||
        (sh->checkpoint_seq != NULL && batch->checkpoint_seq == NULL)) {
        shard_batch_free(batch);
        return NULL;
    }
    return batch;
}

/*
 * Decode one Kinesis record into out. Returns 0, or -1 with the reason in
 * err. The record's block (out->seq) is owned by the caller on success.
 */
static int decode_record(const json_t *item, struct shard_record *out,
                         char *err, size_t err_len)
{
    const char *seq = kinesis_string_member(item, "SequenceNumber");
    const char *key = kinesis_string_member(item, "PartitionKey");
    const json_t *data = kinesis_member(item, "Data");
    const json_t *arrival = kinesis_member(item, "ApproximateArrivalTimestamp");

    if (seq == NULL || !seqnum_valid(seq) || !json_is_string(data)) {
        snprintf(err, err_len,
                 "record without a valid SequenceNumber "
                 "or Data");
        return -1;
    }
    if (key == NULL)
        key = "";
    size_t seq_len = strlen(seq) + 1, key_len = strlen(key) + 1;
    size_t b64_len = json_string_length(data);
    char *block =
        record_block_new(seq_len + key_len + BASE64_DECODED_MAX(b64_len));
    if (block == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    memcpy(block, seq, seq_len);
    memcpy(block + seq_len, key, key_len);
    uint8_t *bytes = (uint8_t *)block + seq_len + key_len;
    if (base64_decode(json_string_value(data), b64_len, bytes, &out->len)) {
        record_block_free(block);
        snprintf(err, err_len, "record %s has invalid base64 Data", seq);
        return -1;
    }
    out->seq = block;
    out->partition_key = block + seq_len;
    out->data = bytes;
    out->subseq = 0;
    out->arrival_ms = 0;
    if (json_is_number(arrival) && isfinite(json_number_value(arrival)) &&
        fabs(json_number_value(arrival)) < 1e13)
        out->arrival_ms = llround(json_number_value(arrival) * 1000.0);
    return 0;
}

/* True when rec is at or before the AT_SEQUENCE_NUMBER filter of sh. */
static bool skip_record(struct shard *sh, const struct shard_record *rec)
{
    if (sh->skip_seq == NULL)
        return false;
    if (seqnum_cmp_ext(rec->seq, rec->subseq, sh->skip_seq, sh->skip_subseq) <=
        0)
        return true;
    /* Records come in order: once one is past the filter, all are. */
    free(sh->skip_seq);
    sh->skip_seq = NULL;
    return false;
}

/* Growable record array of the batch being decoded. */
struct record_list {
    struct shard_batch *batch;
    size_t cap;
};

/* Make room for extra more records. Returns 0 or -1. */
static int reserve_records(struct record_list *list, size_t extra)
{
    struct shard_batch *batch = list->batch;
    if (list->cap - batch->count >= extra)
        return 0;
    if (extra > SIZE_MAX / sizeof *batch->records - batch->count)
        return -1;
    size_t cap = batch->count + extra;
    if (cap < list->cap * 2 &&
        list->cap * 2 < SIZE_MAX / sizeof *batch->records)
        cap = list->cap * 2;
    struct shard_record *grown =
        realloc(batch->records, cap * sizeof *batch->records);
    if (grown == NULL)
        return -1;
    batch->records = grown;
    batch->records_cap = list->cap = cap;
    return 0;
}

/*
 * Append rec (its block owned by the batch from now on) unless the skip
 * filter drops it, in which case its block is freed. Returns 0 or -1, and
 * on -1 the block is freed too.
 */
static int append_record(struct shard *sh, struct record_list *list,
                         const struct shard_record *rec)
{
    if (skip_record(sh, rec)) {
        record_block_free(rec->seq);
        return 0;
    }
    if (reserve_records(list, 1) != 0) {
        record_block_free(rec->seq);
        return -1;
    }
    list->batch->records[list->batch->count++] = *rec;
    return 0;
}

/*
 * Copy user record subseq of the Kinesis record outer into a block of its
 * own, laid out like a decoded record so shard_batch_free() frees it.
 * Returns 0 or -1.
 */
static int copy_user_record(const struct shard_record *outer,
                            const struct kpl_user_record *user, int64_t subseq,
                            struct shard_record *out)
{
    size_t seq_len = strlen(outer->seq) + 1;
    size_t key_len = user->partition_key_len + 1;
    char *block = record_block_new(seq_len + key_len + user->len + 1);
    if (block == NULL)
        return -1;
    memcpy(block, outer->seq, seq_len);
    memcpy(block + seq_len, user->partition_key, user->partition_key_len);
    block[seq_len + user->partition_key_len] = '\0';
    if (user->len > 0)
        memcpy(block + seq_len + key_len, user->data, user->len);
    block[seq_len + key_len + user->len] = '\0';

    out->seq = block;
    out->partition_key = block + seq_len;
    out->data = (const uint8_t *)block + seq_len + key_len;
    out->len = user->len;
    out->subseq = subseq;
    out->arrival_ms = outer->arrival_ms;
    return 0;
}

/*
 * Append the user records of one aggregate. They share the Kinesis
 * record's sequence number and arrival time and get sub-sequence numbers
 * 0, 1, 2... in order. Returns 0 or -1.
 *
 * NOTE: each user record copies the sequence number and partition key, so
 * a 1 MiB aggregate of 100,000 records with 1 KiB keys takes about 120 MB
 * (an estimate from the limits in kpl.h, not measured).
 */
static int append_user_records(struct shard *sh, struct record_list *list,
                               const struct shard_record *outer,
                               const struct kpl_user_record *users,
                               size_t count)
{
    if (reserve_records(list, count) != 0)
        return -1;
    for (size_t i = 0; i < count; i++) {
        struct shard_record probe = *outer, rec;
        probe.subseq = (int64_t)i;
        if (skip_record(sh, &probe))
            continue;
        if (copy_user_record(outer, &users[i], (int64_t)i, &rec) != 0 ||
            append_record(sh, list, &rec) != 0)
            return -1;
    }
    return 0;
}

/*
 * Append the Kinesis record rec (its block owned by this call): its user
 * records when its Data is a KPL aggregate and the reader does not keep
 * aggregates, else rec itself. Data that
 * only looks like an aggregate stays one ordinary record, so the consumer
 * dead-letters it rather than losing it. Returns 0 or -1 with err.
 */
static int append_kinesis_record(struct shard *sh, struct record_list *list,
                                 const struct shard_record *rec, char *err,
                                 size_t err_len)
{
    struct kpl_user_record *users;
    size_t count;
    int rc;

    if (sh->rd->cfg.keep_aggregates) {
        rc = append_record(sh, list, rec);
        if (rc != 0)
            snprintf(err, err_len, "out of memory");
        return rc;
    }
    enum kpl_result kind = kpl_deaggregate(rec->data, rec->len, &users, &count);

    if (kind == KPL_ERROR) {
        snprintf(err, err_len,
                 "failed to check KPL aggregate %s: out of memory or MD5 "
                 "unavailable",
                 rec->seq);
        record_block_free(rec->seq);
        return -1;
    }
    if (kind == KPL_NOT_AGGREGATE) {
        rc = append_record(sh, list, rec);
    } else {
        rc = append_user_records(sh, list, rec, users, count);
        free(users);
        record_block_free(rec->seq);
    }
    if (rc != 0)
        snprintf(err, err_len, "out of memory");
    return rc;
}

/*
 * Append the user records of the Kinesis records in items to batch, with
 * KPL aggregates split into their user records. Each Kinesis record may
 * expand to several user records that share its sequence number. Returns
 * 0, or -1 with the reason in err (the batch keeps what was added so far).
 */
static int decode_records(struct shard *sh, const json_t *items,
                          struct shard_batch *batch, char *err, size_t err_len)
{
    struct record_list list = {batch, 0};
    size_t n = json_array_size(items);

    if (n == 0)
        return 0;
    if (reserve_records(&list, n) != 0) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        struct shard_record rec;
        if (decode_record(json_array_get(items, i), &rec, err, err_len) ||
            append_kinesis_record(sh, &list, &rec, err, err_len))
            return -1;
    }
    return 0;
}

/*
 * Set the checkpoint of a batch to its last record. The skip filter drops
 * only user records at or before the committed checkpoint, so a batch that
 * lost all its records to it, such as the rest of an aggregate whose last
 * user record was committed, keeps the committed checkpoint from
 * new_batch(). Returns 0 or -1.
 */
static int set_batch_checkpoint(struct shard_batch *batch)
{
    if (batch->count == 0)
        return 0;
    const struct shard_record *last = &batch->records[batch->count - 1];
    if (replace_string(&batch->checkpoint_seq, last->seq) != 0)
        return -1;
    batch->checkpoint_subseq = last->subseq;
    return 0;
}

/*
 * Hand batch (owned) to the consumer and wait for its commit. on_batch may
 * call reader_batch_committed() or reader_stop() before returning, so sh
 * is not touched afterwards.
 */
static void deliver_batch(struct shard *sh, struct shard_batch *batch)
{
    struct reader *rd = sh->rd;

    if (replace_string(&sh->pending_seq, batch->checkpoint_seq) != 0) {
        shard_batch_free(batch);
        rd->counters.other_errors++;
        shard_backoff(sh, "get records", "out of memory");
        return;
    }
    sh->pending_subseq = batch->checkpoint_subseq;
    sh->pending_end = batch->shard_end;
    sh->state = SHARD_COMMIT;
    rd->counters.batches++;
    rd->counters.records += batch->count;
    if (batch->shard_end) {
        struct log_ids ids = shard_ids(sh, batch->checkpoint_seq);
        log_info(SHARD_LOG, &ids, "reached the end of shard %s", sh->id);
    }
    rd->cbs.on_batch(rd->cbs.arg, batch);
}

/* True when every parent that sh names is in the shard table. */
static bool parents_known(const struct reader *rd, const struct shard *sh)
{
    return (sh->parent_id == NULL || find_shard(rd, sh->parent_id)) &&
           (sh->adjacent_parent_id == NULL ||
            find_shard(rd, sh->adjacent_parent_id));
}

/* Add child id, named in a ChildShards member, with its parents. Returns
 * the shard, or NULL when out of memory. */
static struct shard *announce_child(struct reader *rd, const char *id,
                                    const char *parent, const char *adjacent)
{
    struct shard *child = find_shard(rd, id);
    if (child == NULL) {
        if ((child = add_shard(rd, id)) == NULL)
            return NULL;
        sort_shards(rd);
    }
    if (child->parent_id == NULL && parent != NULL &&
        (child->parent_id = strdup(parent)) == NULL)
        return NULL;
    if (child->adjacent_parent_id == NULL && adjacent != NULL &&
        (child->adjacent_parent_id = strdup(adjacent)) == NULL)
        return NULL;
    child->announced = true;
    return child;
}

/*
 * Learn the children that the last reply of closed shard sh names in
 * ChildShards, so that they start as soon as all their parents are
 * finished instead of after the next ListShards. Servers that leave
 * ChildShards out rely on the listing that reader_batch_committed()
 * requests at a shard's end. A child with a parent the reader has never
 * seen waits for a listing, requested now, because that parent must be
 * read first.
 */
static void learn_children(struct shard *sh, const json_t *root)
{
    struct reader *rd = sh->rd;
    const json_t *children = kinesis_member(root, "ChildShards");
    struct log_ids ids = shard_ids(sh, NULL);
    bool unknown_parent = false;
    size_t i, learned = 0;
    const json_t *item;

    if (!json_is_array(children))
        return;
    json_array_foreach(children, i, item)
    {
        const char *id = kinesis_string_member(item, "ShardId");
        const json_t *parents = kinesis_member(item, "ParentShards");
        size_t n = json_array_size(parents);
        const char *parent = json_string_value(json_array_get(parents, 0));
        const char *adjacent =
            n > 1 ? json_string_value(json_array_get(parents, 1)) : NULL;
        if (id == NULL || strlen(id) > SHARD_MAX_ID_LEN || parent == NULL ||
            n > 2 || (n > 1 && adjacent == NULL)) {
            log_warn(SHARD_LOG, &ids,
                     "ignored child %zu in the ChildShards of shard %s: it "
                     "needs a ShardId and one or two ParentShards; the "
                     "shard listing will name it",
                     i, sh->id);
            continue;
        }
        struct shard *child = announce_child(rd, id, parent, adjacent);
        if (child == NULL) {
            log_error(SHARD_LOG, &ids, "failed to track shards: out of memory");
            return;
        }
        unknown_parent |= !parents_known(rd, child);
        learned++;
    }
    if (learned > 0)
        log_info(SHARD_LOG, &ids, "shard %s names %zu child shards", sh->id,
                 learned);
    if (unknown_parent && rd->list_call == NULL)
        schedule_list(rd, 0);
}

/*
 * Retry a failed GetRecords after a backoff: with the same iterator, or
 * with a new one from the committed checkpoint when the server rejected
 * the request as invalid or failed too often in a row. Throttling never
 * drops the iterator: the request was fine, only too early.
 */
static void read_failed(struct shard *sh, enum kinesis_outcome outcome,
                        const char *reason)
{
    if (outcome != KINESIS_THROTTLED)
        sh->failed_reads++;
    if (outcome == KINESIS_CLIENT_ERROR || outcome == KINESIS_NOT_FOUND ||
        sh->failed_reads >= SHARD_ITERATOR_REFRESH_FAILURES) {
        struct log_ids ids = shard_ids(sh, sh->checkpoint_seq);
        log_info(SHARD_LOG, &ids,
                 "dropped the iterator of shard %s after %u failed reads "
                 "(last: %s); a new one will start after the committed "
                 "checkpoint",
                 sh->id, sh->failed_reads, reason);
        sh->failed_reads = 0;
        sh->replied_empty = false;
        free(sh->iterator);
        sh->iterator = NULL;
        sh->state = SHARD_ITERATOR;
    }
    shard_backoff(sh, "get records", reason);
}

/*
 * Turn a successful GetRecords reply into a batch, or schedule the next
 * poll when it contains no records. The next iterator replaces the old one,
 * which is never used again.
 */
static void records_accept(struct shard *sh, json_t *root)
{
    char err[SHARD_ERROR_TEXT];
    const json_t *items = kinesis_member(root, "Records");
    const char *next = kinesis_string_member(root, "NextShardIterator");
    const json_t *behind = kinesis_member(root, "MillisBehindLatest");
    struct shard_batch *batch = new_batch(sh, next == NULL);

    if (batch == NULL || (items != NULL && !json_is_array(items))) {
        snprintf(err, sizeof err,
                 batch ? "Records is not an array" : "out of memory");
        goto fail;
    }
    if (decode_records(sh, items, batch, err, sizeof err) != 0)
        goto fail;
    if (set_batch_checkpoint(batch) != 0 ||
        replace_string(&sh->iterator, next) != 0) {
        snprintf(err, sizeof err, "out of memory");
        goto fail;
    }
    sh->attempt = 0;
    sh->failed_reads = 0;
    if (batch->shard_end)
        learn_children(sh, root);
    sh->millis_behind =
        json_is_integer(behind) ? json_integer_value(behind) : -1;
    batch->millis_behind = sh->millis_behind;
    /* A full reply may stop inside a run of records that share one arrival
     * millisecond, and so may a reply that is still behind. */
    batch->at_tip = sh->millis_behind == 0 &&
                    json_array_size(items) < (size_t)sh->rd->cfg.max_records;
    sh->replied_empty = json_array_size(items) == 0;
    sh->last_reply_ms = uv_now(sh->rd->loop);
    if (batch->count == 0 && !batch->shard_end) {
        shard_batch_free(batch);
        shard_schedule(sh, shard_poll_delay(sh));
        return;
    }
    deliver_batch(sh, batch);
    return;
fail:
    shard_batch_free(batch);
    sh->rd->counters.other_errors++;
    read_failed(sh, KINESIS_BAD_REPLY, err);
}

/* Start over from the committed checkpoint with a fresh iterator. */
static void iterator_expired(struct shard *sh)
{
    sh->failed_reads = 0;
    /* Records may have come while the iterator aged: not caught up. */
    sh->replied_empty = false;
    struct log_ids ids = shard_ids(sh, sh->checkpoint_seq);
    log_info(SHARD_LOG, &ids,
             "shard iterator expired; requesting a new one after the "
             "committed checkpoint");
    free(sh->iterator);
    sh->iterator = NULL;
    sh->state = SHARD_ITERATOR;
    shard_get_iterator(sh);
}

static void records_reply(void *arg, const struct aws_reply *reply)
{
    struct shard *sh = arg;
    enum kinesis_outcome outcome = kinesis_classify(reply);
    char reason[SHARD_ERROR_TEXT];

    sh->call = NULL;
    if (sh->rd->stopping) /* a fatal error came first */
        return;
    if (outcome == KINESIS_OK) {
        json_t *root =
            kinesis_parse_object(reply->body, reply->body_len,
                                 SHARD_MAX_RESPONSE, reason, sizeof reason);
        if (root != NULL) {
            records_accept(sh, root);
            json_decref(root);
            return;
        }
        outcome = KINESIS_BAD_REPLY;
    } else {
        kinesis_describe(reply, reason, sizeof reason);
    }
    count_failure(sh->rd, outcome);
    if (outcome == KINESIS_EXPIRED_ITERATOR)
        iterator_expired(sh);
    else if (outcome == KINESIS_ACCESS_DENIED)
        fail_access(sh->rd, "get records", reply);
    else
        read_failed(sh, outcome, reason);
}

/* ---- which shards to read ---------------------------------------------- */

/*
 * True when parent_id does not hold a child back: finished, aged out, or
 * unknown. A parent that only ChildShards named, or that a listing
 * requested before it existed missed, is not aged out: it is read first.
 */
static bool parent_done(const struct reader *rd, const char *parent_id)
{
    if (parent_id == NULL)
        return true;
    const struct shard *parent = find_shard(rd, parent_id);
    return parent == NULL || parent->aged_out ||
           parent->state == SHARD_FINISHED;
}

/* Start every listed shard whose parents are all done. */
static void start_ready_shards(struct reader *rd)
{
    for (size_t i = 0; i < rd->shard_count && !rd->stopping; i++) {
        struct shard *sh = rd->shards[i];
        /* A child that only ChildShards named so far may start once the
         * reader knows all its parents. */
        if (sh->state != SHARD_IDLE ||
            !(sh->listed || (sh->announced && parents_known(rd, sh))))
            continue;
        if (!parent_done(rd, sh->parent_id) ||
            !parent_done(rd, sh->adjacent_parent_id))
            continue;
        struct log_ids ids = shard_ids(sh, sh->checkpoint_seq);
        log_info(SHARD_LOG, &ids, "started reading shard %s", sh->id);
        shard_get_iterator(sh);
    }
}

/* True when some listed shard names sh as a parent. */
static bool has_children(const struct reader *rd, const struct shard *sh)
{
    for (size_t i = 0; i < rd->shard_count; i++) {
        const struct shard *c = rd->shards[i];
        if ((c->parent_id && strcmp(c->parent_id, sh->id) == 0) ||
            (c->adjacent_parent_id &&
             strcmp(c->adjacent_parent_id, sh->id) == 0))
            return true;
    }
    return false;
}

void reader_batch_committed(struct reader *rd, const char *shard_id)
{
    struct shard *sh = find_shard(rd, shard_id);

    if (sh == NULL || sh->state != SHARD_COMMIT) {
        struct log_ids ids = {.stream = rd->stream, .shard = shard_id};
        log_warn(SHARD_LOG, &ids,
                 "ignored a commit for shard %s: no batch is pending",
                 shard_id);
        return;
    }
    free(sh->checkpoint_seq);
    sh->checkpoint_seq = sh->pending_seq;
    sh->checkpoint_subseq = sh->pending_subseq;
    sh->pending_seq = NULL;
    if (rd->stopping)
        return;
    if (!sh->pending_end) {
        sh->state = sh->iterator != NULL ? SHARD_READING : SHARD_ITERATOR;
        shard_schedule(sh, shard_poll_delay(sh));
        return;
    }
    sh->state = SHARD_FINISHED;
    start_ready_shards(rd);
    /* Children appear in ListShards once the shard is closed: look now
     * rather than wait for the next periodic sync. */
    if (!has_children(rd, sh) && rd->list_call == NULL && !rd->stopping)
        schedule_list(rd, 0);
}

/* ---- ListShards --------------------------------------------------------- */

static void listing_clear(struct shard_listing *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free(l->items[i].id);
        free(l->items[i].parent_id);
        free(l->items[i].adjacent_parent_id);
    }
    free(l->items);
    free(l->next_token);
    memset(l, 0, sizeof *l);
}

/* Append the shards of one ListShards page. Returns 0 or -1 with err. */
static int listing_add_page(struct shard_listing *l, const json_t *shards,
                            char *err, size_t err_len)
{
    size_t n = json_array_size(shards);
    if (l->count + n > SHARD_MAX_SHARDS) {
        snprintf(err, err_len, "more than %d shards", SHARD_MAX_SHARDS);
        return -1;
    }
    if (l->count + n > l->cap) {
        size_t cap = l->count + n;
        struct shard_desc *grown = realloc(l->items, cap * sizeof *grown);
        if (grown == NULL) {
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        l->items = grown;
        l->cap = cap;
    }
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(shards, i);
        const char *id = kinesis_string_member(item, "ShardId");
        const json_t *range = kinesis_member(item, "SequenceNumberRange");
        if (id == NULL || strlen(id) > SHARD_MAX_ID_LEN) {
            snprintf(err, err_len, "shard without a valid ShardId");
            return -1;
        }
        struct shard_desc *d = &l->items[l->count++];
        d->id = strdup(id);
        d->parent_id =
            dup_or_null(kinesis_string_member(item, "ParentShardId"));
        d->adjacent_parent_id =
            dup_or_null(kinesis_string_member(item, "AdjacentParentShardId"));
        d->closed = kinesis_string_member(range, "EndingSequenceNumber");
        if (d->id == NULL) {
            snprintf(err, err_len, "out of memory");
            return -1;
        }
    }
    return 0;
}

static int desc_cmp(const void *a, const void *b)
{
    return strcmp(((const struct shard_desc *)a)->id,
                  ((const struct shard_desc *)b)->id);
}

/* Copy the listing's fields for sh. Returns 0 or -1. */
static int update_shard(struct shard *sh, const struct shard_desc *d)
{
    sh->listed = true;
    sh->aged_out = false;
    sh->closed = d->closed;
    if (sh->parent_id == NULL && d->parent_id != NULL &&
        (sh->parent_id = strdup(d->parent_id)) == NULL)
        return -1;
    if (sh->adjacent_parent_id == NULL && d->adjacent_parent_id != NULL &&
        (sh->adjacent_parent_id = strdup(d->adjacent_parent_id)) == NULL)
        return -1;
    return 0;
}

/*
 * Update the shard table from a complete listing: add new shards, refresh
 * listed and closed, and learn parents. Returns 0 or -1.
 */
static int apply_listing(struct reader *rd)
{
    struct shard_listing *l = &rd->listing;
    size_t known = rd->shard_count;
    int rc = 0;

    if (l->count > 1)
        qsort(l->items, l->count, sizeof *l->items, desc_cmp);
    /* A shard added while this listing was in flight may be missing from it
     * only because it is newer than the listing. */
    for (size_t i = 0; i < rd->shard_count; i++) {
        struct shard *sh = rd->shards[i];
        sh->listed = false;
        sh->aged_out = sh->known_since < rd->list_generation;
    }
    for (size_t i = 0; i < l->count && rc == 0; i++) {
        const struct shard_desc *d = &l->items[i];
        if (i > 0 && strcmp(d->id, l->items[i - 1].id) == 0)
            continue;
        /* Search only the shards known before this listing, which are
         * sorted; new ones are appended and sorted once at the end. */
        struct shard *sh = find_shard_in(rd, d->id, known);
        if (sh == NULL)
            sh = add_shard(rd, d->id);
        rc = sh != NULL ? update_shard(sh, d) : -1;
    }
    sort_shards(rd);
    return rc;
}

/* ListShards interval while the stream lists no shard at all. */
#define READER_EMPTY_RELIST_MS 1000

static size_t count_open_shards(const struct reader *rd)
{
    size_t n = 0;
    for (size_t i = 0; i < rd->shard_count; i++)
        n += rd->shards[i]->listed && !rd->shards[i]->closed;
    return n;
}

/* A listing completed: update shards, start readable ones, report ready. */
static void list_done(struct reader *rd)
{
    struct log_ids ids = {.stream = rd->stream};
    int rc = apply_listing(rd);
    size_t shards = rd->listing.count;

    listing_clear(&rd->listing);
    rd->list_attempt = 0;
    /* A stream that is still being created lists no shards; look again
     * soon rather than a whole sync interval later. */
    uint64_t next_ms = (uint64_t)rd->cfg.shard_sync_interval_s * 1000;
    if (shards == 0 && next_ms > READER_EMPTY_RELIST_MS)
        next_ms = READER_EMPTY_RELIST_MS;
    schedule_list(rd, next_ms);
    if (rc != 0) {
        log_error(SHARD_LOG, &ids, "failed to track shards: out of memory");
        return;
    }
    log_debug(SHARD_LOG, &ids, "listed %zu shards", shards);
    start_ready_shards(rd);
    if (!rd->ready && !rd->stopping) {
        rd->ready = true;
        size_t open = count_open_shards(rd);
        log_info(SHARD_LOG, &ids, "listed %zu shards, %zu open", shards, open);
        if (rd->cbs.on_ready != NULL)
            rd->cbs.on_ready(rd->cbs.arg, open);
    }
}

/* Handle one successful ListShards page. */
static void list_page(struct reader *rd, const struct aws_reply *reply)
{
    char err[SHARD_ERROR_TEXT];
    json_t *root = kinesis_parse_object(
        reply->body, reply->body_len, SHARD_MAX_LIST_RESPONSE, err, sizeof err);
    const json_t *shards = root ? kinesis_member(root, "Shards") : NULL;
    const char *token = root ? kinesis_string_member(root, "NextToken") : NULL;

    if (root != NULL && shards != NULL && !json_is_array(shards))
        snprintf(err, sizeof err, "Shards is not an array");
    if (root == NULL || (shards != NULL && !json_is_array(shards)) ||
        listing_add_page(&rd->listing, shards, err, sizeof err) != 0 ||
        replace_string(&rd->listing.next_token,
                       token && token[0] ? token : NULL) != 0) {
        json_decref(root);
        rd->counters.other_errors++;
        listing_clear(&rd->listing);
        log_error(SHARD_LOG, &rd->log_ids, "failed to list shards: %s", err);
        schedule_list(rd, SHARD_BACKOFF_CAP_MS);
        return;
    }
    json_decref(root);
    if (rd->listing.next_token == NULL) {
        list_done(rd);
    } else if (++rd->listing.pages >= SHARD_MAX_LIST_PAGES) {
        listing_clear(&rd->listing);
        reader_fail(rd, "failed to list shards: too many pages");
    } else {
        list_send(rd);
    }
}

/* Report a rejected signature or missing permission as fatal. */
static void fail_access(struct reader *rd, const char *action,
                        const struct aws_reply *reply)
{
    char reason[SHARD_ERROR_TEXT], message[SHARD_ERROR_TEXT * 2];
    kinesis_describe(reply, reason, sizeof reason);
    snprintf(message, sizeof message,
             "failed to %s of stream \"%s\" at %s: %s; check the AWS "
             "credentials and their permissions",
             action, rd->stream, rd->endpoint_url, reason);
    reader_fail(rd, message);
}

/* Handle a failed ListShards call: fatal, retried, or left to the next
 * sync. */
static void list_failed(struct reader *rd, enum kinesis_outcome outcome,
                        const struct aws_reply *reply)
{
    char reason[SHARD_ERROR_TEXT], message[SHARD_ERROR_TEXT * 2];
    struct log_ids ids = {.stream = rd->stream};

    kinesis_describe(reply, reason, sizeof reason);
    count_failure(rd, outcome);
    listing_clear(&rd->listing);
    if (outcome == KINESIS_ACCESS_DENIED) {
        fail_access(rd, "list shards", reply);
    } else if (outcome == KINESIS_NOT_FOUND ||
               (outcome == KINESIS_CLIENT_ERROR && !rd->ready)) {
        snprintf(message, sizeof message,
                 outcome == KINESIS_NOT_FOUND
                     ? "stream \"%s\" not found at %s: %s"
                     : "failed to list shards of stream \"%s\" at %s: %s",
                 rd->stream, rd->endpoint_url, reason);
        reader_fail(rd, message);
    } else if (outcome == KINESIS_EXPIRED_NEXT_TOKEN) {
        /* A NextToken is valid for 300 s: list again from the start. */
        log_warn(SHARD_LOG, &ids, "failed to list shards: %s", reason);
        schedule_list(rd, 0);
    } else {
        uint64_t delay = kinesis_backoff_ms(&rd->rng, ++rd->list_attempt,
                                            (uint64_t)rd->cfg.poll_interval_ms,
                                            SHARD_BACKOFF_CAP_MS);
        warn_limited(rd, &ids, "list shards", reason, delay);
        schedule_list(rd, delay);
    }
}

static void list_reply(void *arg, const struct aws_reply *reply)
{
    struct reader *rd = arg;
    enum kinesis_outcome outcome = kinesis_classify(reply);

    rd->list_call = NULL;
    if (rd->stopping)
        return;
    if (outcome == KINESIS_OK)
        list_page(rd, reply);
    else
        list_failed(rd, outcome, reply);
}

/*
 * Send the next ListShards page: the stream name on the first page, the
 * NextToken alone on later ones, since the API rejects both together
 * (https://docs.aws.amazon.com/kinesis/latest/APIReference/API_ListShards.html).
 * Also the sync timer's callback. Loop thread only.
 */
static void list_send(struct reader *rd)
{
    const char *token = rd->listing.next_token;
    json_t *req;
    char *body = NULL;

    if (rd->stopping || rd->list_call != NULL)
        return;
    if (token != NULL) {
        req = json_pack("{s:s, s:i}", "NextToken", token, "MaxResults",
                        SHARD_LIST_PAGE_SIZE);
    } else {
        rd->list_generation++;
        req = json_pack("{s:s, s:i}", "StreamName", rd->stream, "MaxResults",
                        SHARD_LIST_PAGE_SIZE);
    }
    if (req != NULL)
        body = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (body != NULL) {
        rd->counters.list_shards_calls++;
        rd->list_call = aws_json_call(rd->aws, "ListShards", body, strlen(body),
                                      rd->cfg.request_timeout_ms,
                                      SHARD_MAX_LIST_RESPONSE, list_reply, rd);
    }
    free(body);
    if (rd->list_call == NULL) {
        rd->counters.other_errors++;
        uint64_t delay = kinesis_backoff_ms(&rd->rng, ++rd->list_attempt,
                                            (uint64_t)rd->cfg.poll_interval_ms,
                                            SHARD_BACKOFF_CAP_MS);
        schedule_list(rd, delay);
    }
}

static void sync_timer_cb(uv_timer_t *timer)
{
    list_send(timer->data);
}

/* Run the next ListShards (or its retry) after delay_ms. */
static void schedule_list(struct reader *rd, uint64_t delay_ms)
{
    if (!rd->stopping)
        uv_timer_start(&rd->sync_timer, sync_timer_cb, delay_ms, 0);
}

/* ---- lifecycle ---------------------------------------------------------- */

/* Check the configuration; logs and returns -1 when it cannot work. */
static int check_config(const struct reader_config *cfg)
{
    const char *problem = NULL;

    if (cfg->stream_name == NULL || cfg->stream_name[0] == '\0')
        problem = "stream name is missing";
    else if (cfg->endpoint == NULL || cfg->credentials == NULL)
        problem = "endpoint or credentials are missing";
    else if (cfg->poll_interval_ms < 200)
        problem = "poll interval is below 200 ms (5 GetRecords/s/shard)";
    else if (cfg->request_timeout_ms <= 0)
        problem = "request timeout must be positive";
    else if (cfg->max_records < 1 || cfg->max_records > 10000)
        problem = "max records must be 1 to 10000";
    else if (cfg->shard_sync_interval_s <= 0)
        problem = "shard sync interval must be positive";
    if (problem == NULL)
        return 0;
    log_error(SHARD_LOG, NULL, "failed to create the shard reader: %s",
              problem);
    return -1;
}

/*
 * Create a reader on loop; http is borrowed and must outlive the reader.
 * cfg and cbs are copied. Returns NULL on an invalid configuration or
 * without memory. Loop thread only.
 */
struct reader *reader_new(uv_loop_t *loop, struct httpc *http,
                          const struct reader_config *cfg,
                          const struct reader_callbacks *cbs)
{
    if (check_config(cfg) != 0 || cbs == NULL || cbs->on_batch == NULL)
        return NULL;
    struct reader *rd = calloc(1, sizeof *rd);
    if (rd == NULL)
        return NULL;
    rd->loop = loop;
    rd->cfg = *cfg;
    rd->cbs = *cbs;
    rd->stream = strdup(cfg->stream_name);
    rd->endpoint_url = strdup(cfg->endpoint->url ? cfg->endpoint->url : "");
    rd->aws = aws_client_new(http, cfg->endpoint, cfg->credentials,
                             KINESIS_TARGET_PREFIX, NULL);
    if (rd->stream == NULL || rd->endpoint_url == NULL || rd->aws == NULL) {
        aws_client_free(rd->aws);
        free(rd->stream);
        free(rd->endpoint_url);
        free(rd);
        return NULL;
    }
    rd->cfg.stream_name = rd->stream;
    rd->log_ids.stream = rd->stream;
    rd->warn_limit =
        (struct log_limit)LOG_LIMIT_INIT(SHARD_WARN_WINDOW_MS, SHARD_WARN_MAX);
    rd->rng = kinesis_rng_seed(rd);
    rd->sync_timer.data = rd;
    return rd;
}

/* Add one stored checkpoint to the shard table. Returns 0 or -1. */
static int add_checkpoint(struct reader *rd, const struct reader_checkpoint *cp)
{
    struct log_ids ids = {
        .stream = rd->stream, .shard = cp->shard_id, .seq = cp->seq};
    struct shard *sh;

    if (cp->shard_id == NULL || strlen(cp->shard_id) > SHARD_MAX_ID_LEN ||
        (cp->seq != NULL && !seqnum_valid(cp->seq)) || cp->subseq < 0) {
        log_error(SHARD_LOG, &ids,
                  "failed to load a checkpoint: invalid "
                  "shard id or sequence number");
        return -1;
    }
    sort_shards(rd);
    if (find_shard(rd, cp->shard_id) != NULL) {
        log_error(SHARD_LOG, &ids,
                  "failed to load a checkpoint: shard %s "
                  "appears twice",
                  cp->shard_id);
        return -1;
    }
    if ((sh = add_shard(rd, cp->shard_id)) == NULL)
        return -1;
    if (replace_string(&sh->checkpoint_seq, cp->seq) != 0)
        return -1;
    sh->checkpoint_subseq = cp->subseq;
    if (cp->finished)
        sh->state = SHARD_FINISHED;
    return 0;
}

/* Free every shard of a reader whose timers were never initialised. */
static void drop_shards(struct reader *rd)
{
    for (size_t i = 0; i < rd->shard_count; i++)
        free_shard(rd->shards[i]);
    rd->shard_count = 0;
}

/*
 * Load the stored checkpoints (copied) and start listing shards. Returns 0,
 * or -1 when a checkpoint is invalid or the reader was already started.
 * After -1 the reader has no libuv handle, so reader_free() frees it at
 * once. Loop thread only.
 */
int reader_start(struct reader *rd, const struct reader_checkpoint *cps,
                 size_t count)
{
    if (rd->started || rd->stopping)
        return -1;
    for (size_t i = 0; i < count; i++) {
        if (add_checkpoint(rd, &cps[i]) != 0) {
            drop_shards(rd);
            return -1;
        }
    }
    sort_shards(rd);
    rd->started = true;
    rd->handles_ready = true;
    uv_timer_init(rd->loop, &rd->sync_timer);
    rd->open_handles = 1;
    for (size_t i = 0; i < rd->shard_count; i++)
        init_shard_timer(rd->shards[i]);
    log_info(SHARD_LOG, &rd->log_ids,
             "starting to read stream \"%s\" at %s with %zu checkpoints",
             rd->stream, rd->endpoint_url, count);
    list_send(rd);
    return 0;
}

/*
 * True when the last GetRecords reply of sh was empty and not behind, and
 * came within one request timeout plus one poll interval. An older empty
 * reply proves nothing about records put since, for example after the
 * process was stopped for minutes, so it does not count. A shard in a
 * short backoff (throttled a few times) still counts, so it does not hold
 * back the others.
 */
static bool shard_caught_up(const struct shard *sh)
{
    const struct reader *rd = sh->rd;
    uint64_t fresh_ms = (uint64_t)rd->cfg.request_timeout_ms +
                        (uint64_t)rd->cfg.poll_interval_ms;

    return sh->state != SHARD_IDLE && sh->state != SHARD_FINISHED &&
           sh->state != SHARD_COMMIT && sh->replied_empty &&
           sh->millis_behind <= 0 &&
           uv_now(rd->loop) - sh->last_reply_ms <= fresh_ms;
}

bool reader_caught_up(const struct reader *rd)
{
    if (!rd->ready || rd->stopping)
        return false;
    for (size_t i = 0; i < rd->shard_count; i++) {
        const struct shard *sh = rd->shards[i];
        if (sh->state == SHARD_IDLE || sh->state == SHARD_FINISHED)
            continue;
        if (!shard_caught_up(sh))
            return false;
    }
    return true;
}

void reader_set_paused(struct reader *rd, bool paused)
{
    if (rd->paused == paused)
        return;
    rd->paused = paused;
    if (paused || rd->stopping || !rd->handles_ready)
        return;
    for (size_t i = 0; i < rd->shard_count; i++) {
        struct shard *sh = rd->shards[i];
        if (sh->parked) {
            sh->parked = false;
            shard_schedule(sh, 0);
        }
    }
}

void reader_get_counters(const struct reader *rd, struct reader_counters *out)
{
    *out = rd->counters;
}

size_t reader_shard_count(const struct reader *rd)
{
    return rd->shard_count;
}

int reader_shard_info(const struct reader *rd, size_t index,
                      struct reader_shard_info *out)
{
    if (index >= rd->shard_count)
        return -1;
    const struct shard *sh = rd->shards[index];
    out->shard_id = sh->id;
    out->open = sh->listed && !sh->closed;
    out->finished = sh->state == SHARD_FINISHED;
    out->reading = sh->state != SHARD_IDLE && sh->state != SHARD_FINISHED;
    out->millis_behind = sh->millis_behind;
    out->get_records_calls = sh->get_records_calls;
    out->caught_up = shard_caught_up(sh);
    return 0;
}

int64_t reader_millis_behind(const struct reader *rd, const char *shard_id)
{
    const struct shard *sh = find_shard(rd, shard_id);
    return sh != NULL ? sh->millis_behind : -1;
}

static void reader_destroy(struct reader *rd)
{
    listing_clear(&rd->listing);
    aws_client_free(rd->aws);
    free(rd->shards);
    free(rd->stream);
    free(rd->endpoint_url);
    free(rd);
}

/* The last handle closed: report the stop, then free when asked to. */
static void reader_closed(struct reader *rd)
{
    void (*cb)(void *arg) = rd->stopped_cb;
    bool destroy = rd->free_requested;

    rd->closed = true;
    rd->stopped_cb = NULL;
    if (cb != NULL)
        cb(rd->stopped_arg); /* may call reader_free() */
    if (destroy)
        reader_destroy(rd);
}

static void handle_closed(struct reader *rd)
{
    if (--rd->open_handles == 0)
        reader_closed(rd);
}

static void sync_timer_closed(uv_handle_t *handle)
{
    handle_closed(handle->data);
}

static void shard_closed(uv_handle_t *handle)
{
    struct shard *sh = handle->data;
    struct reader *rd = sh->rd;
    free_shard(sh);
    handle_closed(rd);
}

/* Cancel every call and close every handle; shards are freed as their
 * timers close, and the table is emptied now. */
static void close_all(struct reader *rd)
{
    rd->stopping = true;
    if (rd->list_call != NULL) {
        httpc_cancel(rd->list_call);
        rd->list_call = NULL;
    }
    for (size_t i = 0; i < rd->shard_count; i++) {
        struct shard *sh = rd->shards[i];
        if (sh->call != NULL)
            httpc_cancel(sh->call);
        sh->call = NULL;
        uv_close((uv_handle_t *)&sh->timer, shard_closed);
    }
    rd->shard_count = 0;
    uv_close((uv_handle_t *)&rd->sync_timer, sync_timer_closed);
}

/*
 * Stop: cancel calls in flight, close the handles, then call stopped_cb on
 * a later loop turn (at once when the reader was never started). A batch
 * still with the consumer stays valid, and a later reader_batch_committed()
 * for it is ignored. Loop thread only.
 */
void reader_stop(struct reader *rd, void (*stopped_cb)(void *arg), void *arg)
{
    struct log_ids ids = {.stream = rd->stream};

    if (rd->stopped_cb != NULL || rd->closed || rd->free_requested ||
        (rd->handles_ready && uv_is_closing((uv_handle_t *)&rd->sync_timer))) {
        log_warn(SHARD_LOG, &ids,
                 "ignored reader_stop: the reader is already stopping");
        return;
    }
    log_info(SHARD_LOG, &ids, "stopping to read stream \"%s\"", rd->stream);
    rd->stopping = true;
    if (!rd->handles_ready) {
        rd->closed = true;
        if (stopped_cb != NULL)
            stopped_cb(arg);
        return;
    }
    rd->stopped_cb = stopped_cb;
    rd->stopped_arg = arg;
    close_all(rd);
}

/*
 * Free the reader. This is immediate after reader_stop's callback, or when
 * the reader was never started. Otherwise the reader stops first and is
 * freed once its handles close, so the loop must run again before
 * uv_loop_close(). Loop thread only.
 */
void reader_free(struct reader *rd)
{
    if (rd == NULL)
        return;
    if (!rd->handles_ready || rd->closed) {
        drop_shards(rd);
        reader_destroy(rd);
        return;
    }
    rd->free_requested = true;
    if (!uv_is_closing((uv_handle_t *)&rd->sync_timer))
        close_all(rd);
}
