/*
 * Reading a Kinesis data stream the way the Kinesis Client Library does for
 * one worker: discover shards with ListShards, read every open shard
 * concurrently on one libuv loop with GetRecords, hand each batch to the
 * consumer and continue a shard only after the consumer has committed the
 * batch. Parents are read to their end before their children start.
 *
 * Also here: the Kinesis API calls used by `podium simulate` (PutRecords in
 * batches of at most 500 records, failed entries retried).
 */
#ifndef PODIUM_SHARDREADER_SHARDREADER_H
#define PODIUM_SHARDREADER_SHARDREADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/aws.h"
#include "common/httpc.h"

/* One Kinesis record, Data already base64-decoded. */
struct shard_record {
    const uint8_t *data;
    size_t len;
    const char *seq;    /* decimal sequence number */
    int64_t subseq;     /* index inside a KPL aggregate; 0 for plain */
    int64_t arrival_ms; /* ApproximateArrivalTimestamp in ms */
    const char *partition_key;
};

/*
 * One GetRecords reply, owned by the consumer after on_batch (free it with
 * shard_batch_free). The shard is not read further until the consumer calls
 * reader_batch_committed() for it.
 */
struct shard_batch {
    char *shard_id;
    struct shard_record *records;
    size_t count;
    /* Checkpoint to store with this batch: the last record's position, or
     * the previous checkpoint when the batch is empty (may be NULL). */
    char *checkpoint_seq;
    int64_t checkpoint_subseq;
    bool shard_end;        /* closed shard read to its end: store finished */
    int64_t millis_behind; /* MillisBehindLatest, -1 when absent */
    /* The reply had fewer records than the GetRecords Limit and
     * MillisBehindLatest 0: nothing more was waiting in the shard. */
    bool at_tip;
    /* Kept by the functions below: the length of the records array and
     * the shared memory that shard_batch_add copies records into. */
    size_t records_cap;
    struct record_chunk *chunk;
};

void shard_batch_free(struct shard_batch *batch);

/* An empty batch of shard_id for sources other than GetRecords (owned by
 * the caller), or NULL when out of memory. */
struct shard_batch *shard_batch_new(const char *shard_id);

/* Append a copy of a record and make it the batch's checkpoint. The copy
 * lies in memory shared with other records, but each record stays free to
 * move to another batch and is freed with the batch that contains it.
 * Returns 0 or -ENOMEM. */
int shard_batch_add(struct shard_batch *batch, const void *data, size_t len,
                    const char *seq, int64_t subseq, int64_t arrival_ms,
                    const char *partition_key);

/* Move record index of from to the end of to, without a copy, leaving an
 * empty record in from and the checkpoint of to unchanged. Returns 0 or
 * -ENOMEM. */
int shard_batch_move(struct shard_batch *to, struct shard_batch *from,
                     size_t index);

/* Free the records of batch and leave it empty for reuse. */
void shard_batch_clear(struct shard_batch *batch);

enum reader_position {
    READER_TRIM_HORIZON,
    READER_LATEST,
    READER_AT_TIMESTAMP
};

struct reader_config {
    const char *stream_name;
    const struct aws_endpoint *endpoint;
    const struct aws_credentials *credentials;
    enum reader_position initial_position; /* when no checkpoint exists */
    int64_t initial_timestamp_ms;
    int32_t poll_interval_ms; /* >= 200: at most 5 GetRecords/s/shard */
    int32_t request_timeout_ms;
    int32_t max_records; /* GetRecords Limit, 1..10000 */
    int32_t shard_sync_interval_s;
    /* Hand over each Kinesis record as received, a KPL aggregate included
     * as one record with its raw Data, rather than split into its user
     * records (for `podium record`). */
    bool keep_aggregates;
};

/* A stored checkpoint, as loaded from the store at start-up. */
struct reader_checkpoint {
    const char *shard_id;
    const char *seq; /* NULL when none */
    int64_t subseq;
    bool finished;
};

struct reader_callbacks {
    void *arg;
    /* A batch to apply; ownership passes to the consumer. */
    void (*on_batch)(void *arg, struct shard_batch *batch);
    /* The first ListShards succeeded; open_shards may be 0. */
    void (*on_ready)(void *arg, size_t open_shards);
    /* A fatal error (stream not found, bad credentials): the daemon stops. */
    void (*on_fatal)(void *arg, const char *message);
};

struct reader;

struct reader *reader_new(uv_loop_t *loop, struct httpc *http,
                          const struct reader_config *cfg,
                          const struct reader_callbacks *cbs);

/* Start with the stored checkpoints (copied). Returns 0 or -1. */
int reader_start(struct reader *rd, const struct reader_checkpoint *cps,
                 size_t count);

/*
 * The consumer committed the batch of shard_id: its checkpoint is durable,
 * and when shard_end was set the shard is stored as finished. The reader
 * schedules the next GetRecords (no sooner than poll_interval_ms after the
 * previous one) or, for a finished shard, starts children whose parents are
 * all finished.
 */
void reader_batch_committed(struct reader *rd, const char *shard_id);

/*
 * Pause or resume reading. While paused, no GetShardIterator or GetRecords
 * call starts; calls already in flight finish and deliver their batches,
 * and ListShards goes on. A shard whose call came due meanwhile starts it
 * when reading resumes.
 */
void reader_set_paused(struct reader *rd, bool paused);
/* True when every open shard's last reply was empty with
 * MillisBehindLatest 0, so stream time may follow the clock. */
bool reader_caught_up(const struct reader *rd);

/* Counters since reader_new: calls made, and failures by cause. */
struct reader_counters {
    uint64_t list_shards_calls;
    uint64_t get_shard_iterator_calls;
    uint64_t get_records_calls;
    uint64_t batches;           /* batches handed to on_batch */
    uint64_t records;           /* records in those batches */
    uint64_t expired_iterators; /* ExpiredIteratorException */
    uint64_t throttled;         /* ProvisionedThroughputExceeded, ... */
    uint64_t server_errors;     /* 5xx, InternalFailure */
    uint64_t timeouts;          /* request_timeout_ms passed */
    uint64_t connection_errors; /* connect or transfer failures */
    uint64_t other_errors;      /* invalid replies, other 4xx errors */
};

void reader_get_counters(const struct reader *rd, struct reader_counters *out);

/* State of one shard, for metrics and status lines. */
struct reader_shard_info {
    const char *shard_id;  /* borrowed, valid until reader_stop */
    bool open;             /* ListShards shows no EndingSequenceNumber */
    bool finished;         /* read to its end and committed */
    bool reading;          /* started and not finished */
    int64_t millis_behind; /* last MillisBehindLatest, -1 when unknown */
    uint64_t get_records_calls;
    /* Reading, no batch with the consumer, and the last reply was empty
     * with MillisBehindLatest 0 or absent: nothing older is to come. */
    bool caught_up;
};

/* Number of shards known from ListShards or from the checkpoints. */
size_t reader_shard_count(const struct reader *rd);

/* Describe shard index (0 to count - 1, in shard id order). Returns 0, or
 * -1 when index is out of range. */
int reader_shard_info(const struct reader *rd, size_t index,
                      struct reader_shard_info *out);

/* MillisBehindLatest of the last GetRecords reply for shard_id, or -1 when
 * unknown (no reply yet, or the server left it out). */
int64_t reader_millis_behind(const struct reader *rd, const char *shard_id);

/* Stop issuing requests, cancel those in flight, then call stopped_cb. */
void reader_stop(struct reader *rd, void (*stopped_cb)(void *arg), void *arg);
void reader_free(struct reader *rd);

/* ---- PutRecords for the simulator -------------------------------------- */

struct kinesis_putter;

/*
 * Create a putter for stream. done_cb runs once after kinesis_putter_finish
 * when every record was accepted (error NULL) or retries were exhausted
 * (error says why).
 */
struct kinesis_putter *kinesis_putter_new(uv_loop_t *loop, struct httpc *http,
                                          const struct aws_endpoint *ep,
                                          const struct aws_credentials *creds,
                                          const char *stream_name,
                                          int32_t request_timeout_ms);

/* Queue a record (copied). Sends full PutRecords calls as records queue. */
int kinesis_putter_add(struct kinesis_putter *p, const void *data, size_t len,
                       const char *partition_key);

/*
 * Set how often a record is tried before the run fails (default 10) and the
 * base of the backoff between tries in ms (default 100; the cap is 30 s).
 */
void kinesis_putter_set_retry(struct kinesis_putter *p, uint32_t max_attempts,
                              uint32_t backoff_base_ms);

/* Send the queued records now, in calls that need not be full. */
void kinesis_putter_flush(struct kinesis_putter *p);

/* Number of records queued or in flight. */
size_t kinesis_putter_pending(const struct kinesis_putter *p);

/* Flush everything, then call done_cb(arg, error). */
void kinesis_putter_finish(struct kinesis_putter *p,
                           void (*done_cb)(void *arg, const char *error),
                           void *arg);
void kinesis_putter_free(struct kinesis_putter *p);

#endif
