/*
 * Shard iterator expiry against both local Kinesis servers. Both expire an
 * iterator 300 s after they issued it, by their own clock. The servers run
 * under libfaketime (start_peer with faketime), and set_peer_clock_offset()
 * moves that clock ahead, so an iterator expires without a five-minute
 * wait and the ExpiredIteratorException comes from the server itself.
 *
 * The reader talks to the server through tests/kinesis-fault-proxy.js with
 * no rules, which only logs the requests. The test puts records directly
 * to the server, so the putter's calls also show that a server with a
 * moved clock still accepts requests signed with the real time.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <uv.h>

#include "shardreader/kinesis.h"
#include "shardreader/shardreader.h"
#include "tests/kinesis_testlib.h"
#include "tests/testlib.h"

/* More than the 300 s for which both servers accept an iterator. */
#define EXPIRY_JUMP_S 360

/*
 * Start server ("kinesalite" or "kinesis-local") under libfaketime with a
 * one-shard stream, and the logging proxy in front of it. direct talks to
 * the server, e to the proxy.
 */
static void start_server(const char *server, struct env *direct, struct env *e)
{
    int port = start_peer(server, true);
    env_init(direct, port);
    env_init(e, start_proxy(port, "[]"));
    create_stream(direct, "race", 1);
}

/* Return element index of reqs, failing when there is none. */
static json_t *iterator_request(json_t *reqs, size_t index)
{
    ASSERT_TRUE(index < json_array_size(reqs));
    return json_array_get(reqs, index);
}

static void expect_iterator(json_t *req, const char *type, const char *seq)
{
    ASSERT_STR_EQ(json_string_value(kinesis_member(req, "ShardIteratorType")),
                  type);
    if (seq != NULL)
        ASSERT_STR_EQ(
            json_string_value(kinesis_member(req, "StartingSequenceNumber")),
            seq);
    else
        ASSERT_TRUE(kinesis_member(req, "StartingSequenceNumber") == NULL);
}

/*
 * Count the logged GetRecords replies with status 400, failing on any
 * status but 200 and 400. Also check that the proxy injected no fault, so
 * every error came from the server.
 */
static size_t rejected_replies(void)
{
    json_t *log = proxy_log_entries();
    size_t i, rejected = 0;
    json_t *entry;

    json_array_foreach(log, i, entry)
    {
        ASSERT_TRUE(json_string_value(json_object_get(entry, "fault")) == NULL);
        const json_t *status = json_object_get(entry, "reply");
        if (status == NULL || json_integer_value(status) == 200)
            continue;
        if (json_integer_value(status) != 400)
            test_fail(__FILE__, __LINE__, "line %zu of %s: status %lld", i + 1,
                      proxy_log_path(), (long long)json_integer_value(status));
        rejected++;
    }
    json_decref(log);
    return rejected;
}

/* Count the requests for action to shard 0 in the proxy log. */
static size_t shard0_requests(const char *action)
{
    json_t *reqs = logged_requests(action, SHARD0);
    size_t n = json_array_size(reqs);
    json_decref(reqs);
    return n;
}

/* Request an iterator for shard 0 directly and return it (owned). */
static char *direct_iterator(struct env *direct)
{
    char *body;
    ASSERT_EQ(kinesis_call(direct, "GetShardIterator",
                           "{\"StreamName\":\"race\",\"ShardId\":\"" SHARD0
                           "\",\"ShardIteratorType\":\"LATEST\"}",
                           &body),
              200);
    json_t *root = json_loads(body, 0, NULL);
    free(body);
    ASSERT_TRUE(root != NULL);
    char *it =
        strdup(json_string_value(json_object_get(root, "ShardIterator")));
    json_decref(root);
    return it;
}

/* Check that the server now rejects iterator (freed here), which it issued
 * before the jump. */
static void expect_expired(struct env *direct, char *iterator)
{
    char req[1024], *body;
    snprintf(req, sizeof req, "{\"ShardIterator\":\"%s\"}", iterator);
    ASSERT_EQ(kinesis_call(direct, "GetRecords", req, &body), 400);
    ASSERT_TRUE(strstr(body, "ExpiredIteratorException") != NULL);
    free(body);
    free(iterator);
}

/* Check that the shard is still read and nothing was reported fatal. */
static void expect_running(const struct consumer *c)
{
    ASSERT_TRUE(c->fatal == NULL);
    struct reader_shard_info info = shard_info(c->rd, SHARD0);
    ASSERT_TRUE(info.reading);
    ASSERT_FALSE(info.finished);
    ASSERT_TRUE(reader_caught_up(c->rd));
}

/* ---- an iterator expires while the shard is idle ------------------------- */

/*
 * Record 101 is read and committed, then the reader polls an empty shard
 * while the server's clock jumps past the iterator's lifetime. The next
 * GetRecords fails with ExpiredIteratorException, and the reader requests
 * one new iterator after the committed checkpoint.
 */
static void expiry_after_stall(const char *server)
{
    struct env direct, e;
    struct consumer c = {.auto_commit = true};

    start_server(server, &direct, &e);
    put_records(&direct, "race", 101, 1);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records >= 1 && reader_caught_up(c.rd));
    char *committed = strdup(c.batches[0]->checkpoint_seq);
    ASSERT_STR_EQ(committed, c.batches[0]->records[0].seq);

    set_peer_clock_offset(EXPIRY_JUMP_S);
    WAIT_FOR(&e, counters_of(c.rd).expired_iterators >= 1 &&
                     counters_of(c.rd).get_shard_iterator_calls >= 2 &&
                     reader_caught_up(c.rd));
    ASSERT_EQ(counters_of(c.rd).expired_iterators, 1);

    /* The putter and the direct calls work against the moved clock. */
    put_records(&direct, "race", 102, 1);
    wait_active(&direct, "race");
    WAIT_FOR(&e, c.records >= 2);
    run_for(&e, 5 * POLL_MS);

    check_records(&c, 101, 2);
    expect_running(&c);
    struct reader_counters counters = counters_of(c.rd);
    ASSERT_EQ(counters.expired_iterators, 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    ASSERT_EQ(counters.other_errors + counters.server_errors, 0);

    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 2);
    expect_iterator(iterator_request(reqs, 0), "TRIM_HORIZON", NULL);
    expect_iterator(iterator_request(reqs, 1), "AFTER_SEQUENCE_NUMBER",
                    committed);
    json_decref(reqs);
    ASSERT_EQ(rejected_replies(), 1);

    free(committed);
    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(expiry_after_stall_kinesalite)
{
    expiry_after_stall("kinesalite");
}

TEST(expiry_after_stall_kinesis_local)
{
    expiry_after_stall("kinesis-local");
}

/* ---- an iterator expires while a batch waits for its commit -------------- */

/*
 * Batch 2 (record 102) is read, and the server's clock jumps while the
 * consumer holds it. The reader must neither read on nor build an iterator
 * from record 102 while that batch is uncommitted. Once it is committed,
 * the stale iterator fails and the new one starts after record 102, the
 * checkpoint committed by then, so record 102 is not delivered again.
 */
static void expiry_with_held_batch(const char *server)
{
    struct env direct, e;
    struct consumer c = {.auto_commit = false};

    start_server(server, &direct, &e);
    put_records(&direct, "race", 101, 1);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.batch_count == 1);
    reader_batch_committed(c.rd, SHARD0);
    WAIT_FOR(&e, reader_caught_up(c.rd));

    put_records(&direct, "race", 102, 1);
    WAIT_FOR(&e, c.batch_count == 2);
    const char *held_seq = c.batches[1]->checkpoint_seq;
    ASSERT_EQ(c.batches[1]->count, 1);

    set_peer_clock_offset(EXPIRY_JUMP_S);
    size_t reads = shard0_requests("GetRecords");
    size_t iterators = shard0_requests("GetShardIterator");
    run_for(&e, 5 * POLL_MS);
    ASSERT_EQ(shard0_requests("GetRecords"), reads);
    ASSERT_EQ(shard0_requests("GetShardIterator"), iterators);
    ASSERT_EQ(counters_of(c.rd).expired_iterators, 0);

    c.auto_commit = true;
    reader_batch_committed(c.rd, SHARD0);
    WAIT_FOR(&e, counters_of(c.rd).expired_iterators >= 1 &&
                     counters_of(c.rd).get_shard_iterator_calls >= 2 &&
                     reader_caught_up(c.rd));
    ASSERT_EQ(counters_of(c.rd).expired_iterators, 1);
    put_records(&direct, "race", 103, 1);
    WAIT_FOR(&e, c.records >= 3);
    run_for(&e, 5 * POLL_MS);

    check_records(&c, 101, 3);
    expect_running(&c);
    ASSERT_EQ(counters_of(c.rd).expired_iterators, 1);
    ASSERT_EQ(counters_of(c.rd).get_shard_iterator_calls, 2);
    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 2);
    expect_iterator(iterator_request(reqs, 1), "AFTER_SEQUENCE_NUMBER",
                    held_seq);
    json_decref(reqs);
    ASSERT_EQ(rejected_replies(), 1);

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(expiry_with_held_batch_kinesalite)
{
    expiry_with_held_batch("kinesalite");
}

TEST(expiry_with_held_batch_kinesis_local)
{
    expiry_with_held_batch("kinesis-local");
}

/* ---- a restart builds a new iterator ------------------------------------- */

/*
 * A first reader commits record 101 and stops with record 102 read but not
 * committed. After the server's clock jumps, a second reader that starts
 * from the stored checkpoint requests an iterator after record 101: it
 * delivers record 102 again, since that was never committed, and never
 * gets an ExpiredIteratorException.
 */
static void restart_builds_iterator(const char *server)
{
    struct env direct, e;
    struct consumer first = {.auto_commit = false};
    struct consumer second = {.auto_commit = true};

    start_server(server, &direct, &e);
    put_records(&direct, "race", 101, 2);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.max_records = 1;
    consumer_start(&first, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, first.batch_count == 1);
    reader_batch_committed(first.rd, SHARD0);
    WAIT_FOR(&e, first.batch_count == 2);
    char *committed = strdup(first.batches[0]->checkpoint_seq);
    consumer_finish(&first, &e);

    /* An iterator from before the jump shows that the jump took effect. */
    char *stale = direct_iterator(&direct);
    set_peer_clock_offset(EXPIRY_JUMP_S);
    expect_expired(&direct, stale);
    put_records(&direct, "race", 103, 1);
    struct reader_checkpoint cp = {SHARD0, committed, 0, false};
    consumer_start(&second, &e, &cfg, &cp, 1);
    WAIT_FOR(&e, second.records >= 2 && reader_caught_up(second.rd));
    run_for(&e, 5 * POLL_MS);

    check_records(&second, 102, 2);
    expect_running(&second);
    struct reader_counters counters = counters_of(second.rd);
    ASSERT_EQ(counters.expired_iterators, 0);
    ASSERT_EQ(counters.get_shard_iterator_calls, 1);

    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 2);
    expect_iterator(iterator_request(reqs, 0), "TRIM_HORIZON", NULL);
    expect_iterator(iterator_request(reqs, 1), "AFTER_SEQUENCE_NUMBER",
                    committed);
    json_decref(reqs);
    ASSERT_EQ(rejected_replies(), 0);

    free(committed);
    consumer_finish(&second, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(expiry_restart_builds_iterator_kinesalite)
{
    restart_builds_iterator("kinesalite");
}

TEST(expiry_restart_builds_iterator_kinesis_local)
{
    restart_builds_iterator("kinesis-local");
}
