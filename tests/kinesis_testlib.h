/*
 * Helpers for tests that read a real local Kinesis server: start a peer
 * (kinesalite or kinesis-local, optionally under libfaketime) with
 * tools/peers.sh, put the fault proxy tests/kinesis-fault-proxy.js in front
 * of it, make direct API calls, put records, and run a shard reader with a
 * consumer that keeps every batch.
 *
 * Every peer and proxy a case starts is stopped at exit, and also when the
 * case dies without running its atexit handlers (a watchdog shell waits for
 * the case's pid).
 */
#ifndef PODIUM_TESTS_KINESIS_TESTLIB_H
#define PODIUM_TESTS_KINESIS_TESTLIB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <uv.h>

#include "common/aws.h"
#include "common/httpc.h"
#include "shardreader/shardreader.h"
#include "tests/testlib.h"

/* Bound of every wait, so that a broken case fails instead of hanging. */
#define WAIT_MS     60000
#define POLL_MS     200
#define MAX_BATCHES 4096

#define SHARD0 "shardId-000000000000"
#define SHARD1 "shardId-000000000001"
#define SHARD2 "shardId-000000000002"
#define SHARD3 "shardId-000000000003"
#define SHARD4 "shardId-000000000004"

/* The middle of the hash key range, to split a one-shard stream in two. */
#define MID_HASH_KEY "170141183460469231731687303715884105728"

/* ---- peers --------------------------------------------------------------- */

/* Start kinesalite in the case's tmpdir and return its port. */
int start_kinesalite(void);

/*
 * Start peer ("kinesalite" or "kinesis-local") and return its plain HTTP
 * port. With faketime, the peer runs under libfaketime and
 * set_peer_clock_offset() moves its clock.
 */
int start_peer(const char *peer, bool faketime);

/* Move the clock of the peer started with faketime by seconds from now. */
void set_peer_clock_offset(int seconds);

/*
 * Start the fault proxy in front of upstream_port with rules (a JSON array,
 * see tests/kinesis-fault-proxy.js) and return its port. One proxy per case.
 */
int start_proxy(int upstream_port, const char *rules);

/* Replace the proxy's rules; it reads them again on its next request. */
void set_proxy_rules(const char *rules);

/* Path of the proxy's request log. */
const char *proxy_log_path(void);

/* Number of requests for action in the proxy's log. */
size_t count_requests(const char *action);

/*
 * The proxy's log as an array of JSON objects (owned), restricted to the
 * requests (not replies) for action and, when shard_id is not NULL, that
 * shard.
 */
json_t *logged_requests(const char *action, const char *shard_id);

/* The GetShardIterator request bodies for shard_id (owned array). */
json_t *iterator_requests(const char *shard_id);

/*
 * Every line of the proxy's log, requests and replies, in the order the
 * proxy wrote them (owned array of JSON objects).
 */
json_t *proxy_log_entries(void);

/* ---- loop, client and direct calls -------------------------------------- */

struct env {
    uv_loop_t loop;
    uv_timer_t tick; /* wakes the loop while a case waits */
    struct httpc *http;
    struct aws_endpoint ep;
    struct aws_credentials creds;
    struct aws_client *aws;
    int port;
};

void env_init(struct env *e, int port);
void env_close(struct env *e);
uint64_t now_ms(void);

/* Run the loop until cond is true; fail after WAIT_MS. */
#define WAIT_FOR(e, cond)                                                      \
    do {                                                                       \
        uint64_t wait_deadline_ = now_ms() + WAIT_MS;                          \
        while (!(cond)) {                                                      \
            if (now_ms() > wait_deadline_)                                     \
                test_fail(__FILE__, __LINE__, "timed out waiting for %s",      \
                          #cond);                                              \
            uv_run(&(e)->loop, UV_RUN_ONCE);                                   \
        }                                                                      \
    } while (0)

/* Run the loop for ms milliseconds. */
void run_for(struct env *e, uint64_t ms);

/* Make one Kinesis call and return the status; *body_out (owned) gets the
 * reply body when not NULL. */
long kinesis_call(struct env *e, const char *action, const char *body,
                  char **body_out);

/* Wait until DescribeStreamSummary reports the stream ACTIVE. */
void wait_active(struct env *e, const char *stream);
void create_stream(struct env *e, const char *stream, int shards);

/* SplitShard at new_start_hash_key, then wait for ACTIVE. */
void split_shard(struct env *e, const char *stream, const char *shard,
                 const char *new_start_hash_key);

/* MergeShards of two adjacent shards, then wait for ACTIVE. */
void merge_shards(struct env *e, const char *stream, const char *shard,
                  const char *adjacent);

/*
 * SplitShard at the middle of the HashKeyRange that ListShards reports for
 * shard, then wait for ACTIVE. Servers differ in where their ranges end, so
 * the split point comes from the listing rather than a constant.
 */
void split_shard_in_half(struct env *e, const char *stream, const char *shard);

/* ---- records ------------------------------------------------------------- */

/* Payload of record i: a text header, then binary bytes including NUL, of a
 * length that varies with i. */
size_t make_payload(int i, uint8_t *out);

/* i of a payload from make_payload, or -1. */
int payload_index(const struct shard_record *r);

/* What a putter reported to put_done(). */
struct put_result {
    bool done;
    char *error; /* owned, NULL on success */
};

/* A kinesis_putter_finish() callback that fills a struct put_result. */
void put_done(void *arg, const char *error);

/* Put records first..first+count-1 (partition key "key-i"). */
void put_records(struct env *e, const char *stream, int first, int count);

/* ---- consumer ------------------------------------------------------------ */

struct consumer {
    struct reader *rd;
    bool auto_commit;
    bool ready;
    size_t open_shards;
    char *fatal;
    bool stopped;
    struct shard_batch *batches[MAX_BATCHES];
    size_t batch_count;
    size_t records;
};

/* The callbacks consumer_start installs, for cases that build their own. */
void on_batch(void *arg, struct shard_batch *batch);
void on_ready(void *arg, size_t open_shards);
void on_fatal(void *arg, const char *message);

/* A reader configuration for stream through e, polling every POLL_MS. */
struct reader_config reader_config(struct env *e, const char *stream);

void consumer_start(struct consumer *c, struct env *e,
                    const struct reader_config *cfg,
                    const struct reader_checkpoint *cps, size_t n);

/* Stop and free the reader and the batches. */
void consumer_finish(struct consumer *c, struct env *e);

/* GetRecords calls the reader made for shard_id. */
uint64_t shard_calls(const struct reader *rd, const char *shard_id);

/* The reader's view of shard_id. */
struct reader_shard_info shard_info(const struct reader *rd,
                                    const char *shard_id);

struct reader_counters counters_of(const struct reader *rd);

/*
 * Check that the consumer saw records first..first+count-1 exactly once,
 * with payloads and partition keys intact, in increasing sequence order
 * within each shard.
 */
void check_records(const struct consumer *c, int first, int count);

/* Number of records the consumer saw from shard_id. */
size_t shard_records(const struct consumer *c, const char *shard_id);

/* Index of the first batch of shard_id in arrival order, or -1. */
long first_batch_of(const struct consumer *c, const char *shard_id);

/* Index of the batch that ended shard_id, or -1. */
long end_batch_of(const struct consumer *c, const char *shard_id);

#endif
