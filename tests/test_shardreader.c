/*
 * Tests of the shard reader and the putter against kinesalite, a local
 * Kinesis API server started with tools/peers.sh. Faults that kinesalite
 * never produces (timeouts, throttling, expired iterators, partial
 * PutRecords failures) come from tests/kinesis-fault-proxy.js, which such
 * a test starts between the client and kinesalite.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "common/aws.h"
#include "common/httpc.h"
#include "common/log.h"
#include "common/seqnum.h"
#include "shardreader/kinesis.h"
#include "shardreader/shardreader.h"
#include "tests/kinesis_testlib.h"
#include "tests/testlib.h"

/* ---- reading ------------------------------------------------------------- */

TEST(shard_batch_move_hands_over_record)
{
    struct shard_batch *from = shard_batch_new("shardId-000000000001");
    struct shard_batch *to = shard_batch_new("shardId-000000000001");
    ASSERT_TRUE(from != NULL);
    ASSERT_TRUE(to != NULL);
    ASSERT_EQ(shard_batch_add(from, "abc", 3, "101", 0, 1000, "k1"), 0);
    ASSERT_EQ(shard_batch_add(from, "de", 2, "102", 1, 2000, "k2"), 0);

    ASSERT_EQ(shard_batch_move(to, from, 1), 0);
    ASSERT_EQ(shard_batch_move(to, from, 0), 0);
    ASSERT_EQ(to->count, 2);
    ASSERT_MEM_EQ(to->records[0].data, to->records[0].len, "de", 2);
    ASSERT_STR_EQ(to->records[0].seq, "102");
    ASSERT_STR_EQ(to->records[0].partition_key, "k2");
    ASSERT_EQ(to->records[0].subseq, 1);
    ASSERT_EQ(to->records[0].arrival_ms, 2000);
    ASSERT_MEM_EQ(to->records[1].data, to->records[1].len, "abc", 3);
    ASSERT_STR_EQ(to->records[1].seq, "101");
    /* The records left behind are empty, and to keeps no checkpoint. */
    ASSERT_EQ(from->count, 2);
    ASSERT_TRUE(from->records[0].seq == NULL);
    ASSERT_TRUE(from->records[1].data == NULL);
    ASSERT_TRUE(to->checkpoint_seq == NULL);
    shard_batch_free(from);
    shard_batch_free(to);
}

TEST(shard_batch_clear_empties_for_reuse)
{
    struct shard_batch *batch = shard_batch_new("shardId-000000000001");
    ASSERT_TRUE(batch != NULL);
    ASSERT_EQ(shard_batch_add(batch, "abc", 3, "101", 0, 1000, "k1"), 0);
    ASSERT_EQ(shard_batch_add(batch, "de", 2, "102", 0, 2000, "k2"), 0);

    shard_batch_clear(batch);
    ASSERT_EQ(batch->count, 0);
    ASSERT_STR_EQ(batch->shard_id, "shardId-000000000001");
    ASSERT_EQ(shard_batch_add(batch, "f", 1, "103", 0, 3000, "k3"), 0);
    ASSERT_EQ(batch->count, 1);
    ASSERT_MEM_EQ(batch->records[0].data, batch->records[0].len, "f", 1);
    ASSERT_STR_EQ(batch->checkpoint_seq, "103");
    shard_batch_free(batch);
}

/* Fill data with a pattern that depends on record i. */
static void fill_record(char *data, size_t len, size_t i)
{
    for (size_t k = 0; k < len; k++)
        data[k] = (char)('a' + (i * 7 + k) % 26);
}

/* Check that record rec is record i with its pattern. */
static void check_record(const struct shard_record *rec, size_t i, size_t len)
{
    char expected[20000], seq[32], key[32];

    fill_record(expected, len, i);
    snprintf(seq, sizeof seq, "%zu", 100000 + i);
    snprintf(key, sizeof key, "k%zu", i);
    ASSERT_MEM_EQ(rec->data, rec->len, expected, len);
    ASSERT_STR_EQ(rec->seq, seq);
    ASSERT_STR_EQ(rec->partition_key, key);
    ASSERT_EQ(rec->arrival_ms, (int64_t)i);
}

/* The length of record i: mostly small, some larger than the share of a
 * chunk that a record may take, so those get memory of their own. */
static size_t record_len(size_t i)
{
    return i % 50 == 49 ? 9000 + i : 200 + i % 300;
}

TEST(shard_batch_records_outlive_their_batch)
{
    /* As a replay does: add each record to a head batch, move it to one of
     * two segments and clear the head, so that the records of one chunk
     * end up in both segments. */
    struct shard_batch *head = shard_batch_new("shardId-000000000001");
    struct shard_batch *seg[2] = {shard_batch_new("shardId-000000000001"),
                                  shard_batch_new("shardId-000000000001")};
    char data[20000], seq[32], key[32];
    size_t count = 1000;

    ASSERT_TRUE(head != NULL);
    ASSERT_TRUE(seg[0] != NULL);
    ASSERT_TRUE(seg[1] != NULL);
    for (size_t i = 0; i < count; i++) {
        fill_record(data, record_len(i), i);
        snprintf(seq, sizeof seq, "%zu", 100000 + i);
        snprintf(key, sizeof key, "k%zu", i);
        ASSERT_EQ(
            shard_batch_add(head, data, record_len(i), seq, 0, (int64_t)i, key),
            0);
        ASSERT_STR_EQ(head->checkpoint_seq, seq);
        ASSERT_EQ(shard_batch_move(seg[i % 2], head, 0), 0);
        shard_batch_clear(head);
    }

    /* Freeing the head, then one segment, leaves the other's records
     * intact, even after the freed memory is handed out and
     * overwritten. */
    shard_batch_free(head);
    shard_batch_free(seg[0]);
    void *reused[8];
    for (size_t k = 0; k < 8; k++) {
        reused[k] = malloc(64 * 1024 + 64 * k);
        ASSERT_TRUE(reused[k] != NULL);
        memset(reused[k], 'X', 64 * 1024 + 64 * k);
    }
    ASSERT_EQ(seg[1]->count, count / 2);
    for (size_t j = 0; j < seg[1]->count; j++)
        check_record(&seg[1]->records[j], 2 * j + 1, record_len(2 * j + 1));
    for (size_t k = 0; k < 8; k++)
        free(reused[k]);
    shard_batch_free(seg[1]);
}

TEST(shard_batch_add_grows_checkpoint)
{
    struct shard_batch *batch = shard_batch_new("shardId-000000000001");
    ASSERT_TRUE(batch != NULL);
    ASSERT_EQ(shard_batch_add(batch, "a", 1, "99", 0, 1, "k"), 0);
    ASSERT_STR_EQ(batch->checkpoint_seq, "99");
    ASSERT_EQ(shard_batch_add(batch, "b", 1, "100000", 2, 2, "k"), 0);
    ASSERT_STR_EQ(batch->checkpoint_seq, "100000");
    ASSERT_EQ(batch->checkpoint_subseq, 2);
    ASSERT_EQ(shard_batch_add(batch, "c", 1, "7", 0, 3, "k"), 0);
    ASSERT_STR_EQ(batch->checkpoint_seq, "7");
    ASSERT_EQ(batch->count, 3);
    ASSERT_STR_EQ(batch->records[1].seq, "100000");
    shard_batch_free(batch);
}

TEST(shard_reader_reads_all_put_records)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 2);
    /* 1,200 records need at least three PutRecords calls of 500. */
    put_records(&e, "race", 0, 1200);

    struct reader_config cfg = reader_config(&e, "race");
    cfg.max_records = 300;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 1200 && reader_caught_up(c.rd));

    ASSERT_TRUE(c.ready);
    ASSERT_EQ(c.open_shards, 2);
    ASSERT_TRUE(c.fatal == NULL);
    check_records(&c, 0, 1200);
    ASSERT_TRUE(shard_records(&c, SHARD0) > 0);
    ASSERT_TRUE(shard_records(&c, SHARD1) > 0);
    for (size_t b = 0; b < c.batch_count; b++) {
        const struct shard_batch *batch = c.batches[b];
        ASSERT_TRUE(batch->count <= 300);
        ASSERT_FALSE(batch->shard_end);
        ASSERT_STR_EQ(batch->checkpoint_seq,
                      batch->records[batch->count - 1].seq);
    }
    ASSERT_EQ(reader_millis_behind(c.rd, SHARD0), 0);
    ASSERT_EQ(reader_millis_behind(c.rd, "shardId-999"), -1);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_resumes_after_checkpoint)
{
    struct env e;
    struct consumer first = {.auto_commit = true};
    struct consumer second = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 2);
    put_records(&e, "race", 0, 40);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&first, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, first.records == 40 && reader_caught_up(first.rd));

    /* Checkpoint shard 0 after its third record and shard 1 after its
     * last one. */
    const struct shard_record *cut0 = NULL, *cut1 = NULL;
    size_t after0 = 0, seen0 = 0;
    for (size_t b = 0; b < first.batch_count; b++) {
        const struct shard_batch *batch = first.batches[b];
        for (size_t i = 0; i < batch->count; i++) {
            if (strcmp(batch->shard_id, SHARD1) == 0) {
                cut1 = &batch->records[i];
            } else if (++seen0 == 3) {
                cut0 = &batch->records[i];
            } else if (seen0 > 3) {
                after0++;
            }
        }
    }
    ASSERT_TRUE(cut0 != NULL);
    ASSERT_TRUE(cut1 != NULL);
    struct reader_checkpoint cps[] = {
        {SHARD0, cut0->seq, 0, false},
        {SHARD1, cut1->seq, 0, false},
    };

    put_records(&e, "race", 40, 20);
    consumer_start(&second, &e, &cfg, cps, 2);
    WAIT_FOR(&e, second.records >= after0 + 20 && reader_caught_up(second.rd));
    /* One more poll of each shard: nothing else may come. */
    run_for(&e, 3 * POLL_MS);
    ASSERT_EQ(second.records, after0 + 20);
    for (size_t b = 0; b < second.batch_count; b++) {
        const struct shard_batch *batch = second.batches[b];
        const char *cut =
            strcmp(batch->shard_id, SHARD0) == 0 ? cut0->seq : cut1->seq;
        for (size_t i = 0; i < batch->count; i++)
            ASSERT_TRUE(seqnum_cmp(batch->records[i].seq, cut) > 0);
    }
    /* Records 40..59 all arrived, whichever shard they went to. */
    size_t fresh = 0;
    for (size_t b = 0; b < second.batch_count; b++) {
        for (size_t i = 0; i < second.batches[b]->count; i++)
            fresh += payload_index(&second.batches[b]->records[i]) >= 40;
    }
    ASSERT_EQ(fresh, 20);

    consumer_finish(&second, &e);
    consumer_finish(&first, &e);
    env_close(&e);
}

TEST(shard_reader_waits_for_batch_commit)
{
    struct env e;
    struct consumer c = {.auto_commit = false};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 1);
    put_records(&e, "race", 0, 30);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.max_records = 10;
    consumer_start(&c, &e, &cfg, NULL, 0);

    WAIT_FOR(&e, c.batch_count == 1);
    /* Five poll intervals pass without a commit: no further GetRecords. */
    run_for(&e, 5 * POLL_MS);
    ASSERT_EQ(c.batch_count, 1);
    ASSERT_EQ(c.batches[0]->count, 10);
    ASSERT_EQ(shard_calls(c.rd, SHARD0), 1);
    ASSERT_FALSE(reader_caught_up(c.rd));

    /* A commit for a shard with nothing pending is ignored. */
    reader_batch_committed(c.rd, "shardId-999");

    for (size_t n = 1; n < 3; n++) {
        reader_batch_committed(c.rd, SHARD0);
        WAIT_FOR(&e, c.batch_count == n + 1);
        run_for(&e, 2 * POLL_MS);
        ASSERT_EQ(c.batch_count, n + 1);
        const struct shard_batch *prev = c.batches[n - 1];
        const struct shard_batch *next = c.batches[n];
        ASSERT_TRUE(seqnum_cmp(prev->checkpoint_seq, next->records[0].seq) < 0);
    }
    reader_batch_committed(c.rd, SHARD0);
    WAIT_FOR(&e, reader_caught_up(c.rd));
    ASSERT_EQ(c.records, 30);
    check_records(&c, 0, 30);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_pause_stops_requests)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 2);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    /* Paused before the first listing returns: no shard starts reading. */
    reader_set_paused(c.rd, true);
    WAIT_FOR(&e, c.ready);
    run_for(&e, 5 * POLL_MS);
    struct reader_counters counters;
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.get_shard_iterator_calls, 0);
    ASSERT_EQ(counters.get_records_calls, 0);

    reader_set_paused(c.rd, false);
    WAIT_FOR(&e, reader_caught_up(c.rd));

    /* Paused while polling: the calls in flight end and no new one starts,
     * not even for records put meanwhile. */
    reader_set_paused(c.rd, true);
    run_for(&e, 2 * POLL_MS);
    reader_get_counters(c.rd, &counters);
    uint64_t calls = counters.get_records_calls;
    put_records(&e, "race", 0, 20);
    run_for(&e, 5 * POLL_MS);
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.get_records_calls, calls);
    ASSERT_EQ(c.records, 0);

    reader_set_paused(c.rd, false);
    WAIT_FOR(&e, c.records == 20);
    check_records(&c, 0, 20);
    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_empty_stream_catches_up)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 2);
    struct reader_config cfg = reader_config(&e, "race");
    uint64_t start = now_ms();
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.ready);
    ASSERT_EQ(c.open_shards, 2);
    WAIT_FOR(&e, reader_caught_up(c.rd));
    run_for(&e, 2000);

    /* Count calls against the time that passed: at most one call per poll
     * interval per shard, plus the first. */
    uint64_t elapsed = now_ms() - start;
    uint64_t limit = elapsed / POLL_MS + 1;
    const char *shards[] = {SHARD0, SHARD1};
    for (int i = 0; i < 2; i++) {
        uint64_t calls = shard_calls(c.rd, shards[i]);
        ASSERT_TRUE(calls >= 2);
        if (calls > limit)
            test_fail(__FILE__, __LINE__,
                      "%s: %llu GetRecords calls in %llu ms", shards[i],
                      (unsigned long long)calls, (unsigned long long)elapsed);
    }
    ASSERT_TRUE(reader_caught_up(c.rd));
    ASSERT_EQ(c.batch_count, 0);

    struct reader_counters counters;
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.list_shards_calls, 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    ASSERT_EQ(counters.batches, 0);
    ASSERT_EQ(counters.timeouts + counters.throttled + counters.other_errors,
              0);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_reads_parent_before_children)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 1);
    /* LATEST for shards without a parent: the children must still start
     * at TRIM_HORIZON, or records put before the reader found them would
     * be lost. */
    struct reader_config cfg = reader_config(&e, "race");
    cfg.initial_position = READER_LATEST;
    cfg.shard_sync_interval_s = 1;
    cfg.max_records = 7;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, reader_caught_up(c.rd));

    put_records(&e, "race", 0, 20);
    WAIT_FOR(&e, c.records == 20);
    ASSERT_EQ(kinesis_call(&e, "SplitShard",
                           "{\"StreamName\":\"race\",\"ShardToSplit\":\"" SHARD0
                           "\",\"NewStartingHashKey\":"
                           "\"170141183460469231731687303715884105728\"}",
                           NULL),
              200);
    wait_active(&e, "race");
    put_records(&e, "race", 20, 40);
    WAIT_FOR(&e, c.records == 60 && reader_caught_up(c.rd));

    check_records(&c, 0, 60);
    long end = -1;
    for (size_t b = 0; b < c.batch_count; b++) {
        if (c.batches[b]->shard_end) {
            ASSERT_EQ(end, -1);
            end = (long)b;
        }
    }
    ASSERT_TRUE(end >= 0);
    ASSERT_STR_EQ(c.batches[end]->shard_id, SHARD0);
    /* Records 0..19 went to the parent, 20..59 to the children. */
    ASSERT_EQ(shard_records(&c, SHARD0), 20);
    ASSERT_EQ(shard_records(&c, SHARD1) + shard_records(&c, SHARD2), 40);
    ASSERT_TRUE(first_batch_of(&c, SHARD1) > end);
    ASSERT_TRUE(first_batch_of(&c, SHARD2) > end);

    struct reader_shard_info info;
    ASSERT_EQ(reader_shard_info(c.rd, 0, &info), 0);
    ASSERT_STR_EQ(info.shard_id, SHARD0);
    ASSERT_TRUE(info.finished);
    ASSERT_FALSE(info.open);
    ASSERT_EQ(reader_shard_count(c.rd), 3);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_skips_finished_parent)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 1);
    put_records(&e, "race", 0, 10);
    ASSERT_EQ(kinesis_call(&e, "SplitShard",
                           "{\"StreamName\":\"race\",\"ShardToSplit\":\"" SHARD0
                           "\",\"NewStartingHashKey\":"
                           "\"170141183460469231731687303715884105728\"}",
                           NULL),
              200);
    wait_active(&e, "race");
    put_records(&e, "race", 10, 10);

    /* The parent was finished in an earlier run: only the children are
     * read, from TRIM_HORIZON. */
    struct reader_checkpoint cps[] = {{SHARD0, NULL, 0, true}};
    struct reader_config cfg = reader_config(&e, "race");
    cfg.initial_position = READER_LATEST;
    consumer_start(&c, &e, &cfg, cps, 1);
    WAIT_FOR(&e, c.records == 10 && reader_caught_up(c.rd));
    check_records(&c, 10, 10);
    ASSERT_EQ(shard_records(&c, SHARD0), 0);
    ASSERT_EQ(shard_calls(c.rd, SHARD0), 0);

    consumer_finish(&c, &e);
    env_close(&e);
}

/*
 * An empty reply proves nothing about records put after it. When the loop did
 * not run for longer than a request timeout plus a poll interval (the
 * process was stopped, or the host was suspended), the reader must not
 * count as caught up until a shard replies again; otherwise stream time
 * would follow the clock past records that wait in the stream.
 */
TEST(shard_reader_stale_reply_is_not_caught_up)
{
    struct env e;
    struct consumer c = {.auto_commit = true};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 1);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.request_timeout_ms = 1000;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, reader_caught_up(c.rd));

    put_records(&e, "race", 0, 5);
    /* put_records ran the loop: wait for the next empty reply first. */
    WAIT_FOR(&e, c.records == 5 && reader_caught_up(c.rd));
    usleep((useconds_t)(cfg.request_timeout_ms + 2 * cfg.poll_interval_ms) *
           1000);
    uv_update_time(&e.loop);
    ASSERT_FALSE(reader_caught_up(c.rd));
    ASSERT_FALSE(shard_info(c.rd, SHARD0).caught_up);

    /* The next empty reply makes it current again. */
    WAIT_FOR(&e, reader_caught_up(c.rd));
    ASSERT_EQ(c.records, 5);

    consumer_finish(&c, &e);
    env_close(&e);
}

/* ---- failures ------------------------------------------------------------ */

TEST(shard_reader_reports_missing_stream)
{
    struct env e;
    struct consumer c = {.auto_commit = true};
    char expected[128];

    env_init(&e, start_kinesalite());
    struct reader_config cfg = reader_config(&e, "nope");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.fatal != NULL);

    snprintf(expected, sizeof expected,
             "stream \"nope\" not found at http://127.0.0.1:%d: ", e.port);
    if (strncmp(c.fatal, expected, strlen(expected)) != 0)
        test_fail(__FILE__, __LINE__, "unexpected message: %s", c.fatal);
    ASSERT_TRUE(strstr(c.fatal, "ResourceNotFoundException") != NULL);
    ASSERT_FALSE(c.ready);
    ASSERT_FALSE(reader_caught_up(c.rd));

    consumer_finish(&c, &e);
    env_close(&e);
}

/* A TCP listener that accepts connections and never sends a byte. */
struct silent_server {
    uv_tcp_t listener;
    uv_tcp_t clients[64];
    int client_count;
    int port;
};

static void silent_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    static char scratch[65536];
    (void)h;
    (void)size;
    *buf = uv_buf_init(scratch, sizeof scratch);
}

static void silent_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    (void)buf;
    if (n < 0)
        uv_read_stop(s);
}

static void silent_accept(uv_stream_t *server, int status)
{
    struct silent_server *srv = server->data;
    if (status != 0 || srv->client_count == 64)
        return;
    uv_tcp_t *client = &srv->clients[srv->client_count++];
    uv_tcp_init(server->loop, client);
    ASSERT_EQ(uv_accept(server, (uv_stream_t *)client), 0);
    uv_read_start((uv_stream_t *)client, silent_alloc, silent_read);
}

static void silent_start(struct silent_server *srv, uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof bound;

    memset(srv, 0, sizeof *srv);
    ASSERT_EQ(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    ASSERT_EQ(uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0), 0);
    ASSERT_EQ(uv_listen((uv_stream_t *)&srv->listener, 16, silent_accept), 0);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
    srv->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void silent_stop(struct silent_server *srv)
{
    for (int i = 0; i < srv->client_count; i++)
        uv_close((uv_handle_t *)&srv->clients[i], NULL);
    uv_close((uv_handle_t *)&srv->listener, NULL);
}

TEST(shard_reader_retries_silent_server)
{
    struct env e;
    struct consumer c = {.auto_commit = true};
    struct silent_server srv;
    uv_loop_t *loop;

    /* The listener lives on the loop that env_init creates. */
    memset(&e, 0, sizeof e);
    env_init(&e, 1);
    loop = &e.loop;
    silent_start(&srv, loop);
    aws_endpoint_clear(&e.ep);
    char url[64], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d", srv.port);
    ASSERT_EQ(
        aws_endpoint_init(&e.ep, url, "us-east-1", "kinesis", err, sizeof err),
        0);
    e.port = srv.port;

    struct reader_config cfg = reader_config(&e, "race");
    cfg.request_timeout_ms = 300;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, counters_of(c.rd).timeouts >= 3);
    struct reader_counters counters = counters_of(c.rd);
    /* Each timeout led to another ListShards, and nothing else happened. */
    ASSERT_TRUE(counters.list_shards_calls >= counters.timeouts);
    ASSERT_TRUE(counters.list_shards_calls <= counters.timeouts + 1);
    ASSERT_EQ(counters.get_records_calls, 0);
    ASSERT_TRUE(c.fatal == NULL);
    ASSERT_FALSE(c.ready);

    /* Stopping cancels the call in flight and closes cleanly. */
    consumer_finish(&c, &e);
    silent_stop(&srv);
    env_close(&e);
}

TEST(shard_reader_timeout_spares_other_shards)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 2);
    put_records(&direct, "race", 0, 100);
    env_close(&direct);

    int pport =
        start_proxy(kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD1
                           "\",\"fault\":\"silent\","
                           "\"times\":3}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.request_timeout_ms = 500;
    consumer_start(&c, &e, &cfg, NULL, 0);

    /* Shard 0 is read while shard 1's requests hang. */
    WAIT_FOR(&e,
             shard_records(&c, SHARD0) > 0 && shard_calls(c.rd, SHARD0) >= 2);
    size_t total0 = shard_records(&c, SHARD0);
    ASSERT_EQ(first_batch_of(&c, SHARD1), -1);
    ASSERT_EQ(shard_calls(c.rd, SHARD1), 1);

    WAIT_FOR(&e, c.records == 100 && reader_caught_up(c.rd));
    check_records(&c, 0, 100);
    ASSERT_EQ(shard_records(&c, SHARD0), total0);
    struct reader_counters counters;
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.timeouts, 3);
    /* Retries reuse the iterator: no GetShardIterator beyond the first
     * of each shard. */
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_backs_off_when_throttled)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 2);
    put_records(&direct, "race", 0, 50);
    env_close(&direct);

    int pport = start_proxy(
        kport, "[{\"action\":\"GetRecords\",\"shard\":\"" SHARD0
               "\",\"fault\":\"throttle\",\"times\":3},"
               "{\"action\":\"GetRecords\",\"shard\":\"" SHARD1
               "\",\"fault\":\"internal\",\"skip\":1,\"times\":2}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 50 && reader_caught_up(c.rd));
    check_records(&c, 0, 50);

    struct reader_counters counters;
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.throttled, 3);
    ASSERT_EQ(counters.server_errors, 2);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);
    ASSERT_TRUE(c.fatal == NULL);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_renews_expired_iterator)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 30);
    env_close(&direct);

    /* The second GetRecords finds its iterator expired. */
    int pport = start_proxy(kport, "[{\"action\":\"GetRecords\",\"fault\":"
                                   "\"expired\",\"skip\":1,\"times\":1}]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.max_records = 10;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 30 && reader_caught_up(c.rd));
    check_records(&c, 0, 30);

    struct reader_counters counters;
    reader_get_counters(c.rd, &counters);
    ASSERT_EQ(counters.expired_iterators, 1);
    ASSERT_EQ(counters.get_shard_iterator_calls, 2);

    /* The new iterator starts after the committed checkpoint: the last
     * record of the first batch. */
    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 2);
    json_t *renewed = json_array_get(reqs, 1);
    ASSERT_STR_EQ(json_string_value(kinesis_member(json_array_get(reqs, 0),
                                                   "ShardIteratorType")),
                  "TRIM_HORIZON");
    ASSERT_STR_EQ(
        json_string_value(kinesis_member(renewed, "ShardIteratorType")),
        "AFTER_SEQUENCE_NUMBER");
    ASSERT_STR_EQ(
        json_string_value(kinesis_member(renewed, "StartingSequenceNumber")),
        c.batches[0]->checkpoint_seq);
    json_decref(reqs);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_sends_at_timestamp_seconds)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 5);
    env_close(&direct);

    int pport = start_proxy(kport, "[]");
    env_init(&e, pport);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.initial_position = READER_AT_TIMESTAMP;
    cfg.initial_timestamp_ms = 1000000000123LL; /* 2001, before the records */
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 5 && reader_caught_up(c.rd));
    check_records(&c, 0, 5);

    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 1);
    json_t *req = json_array_get(reqs, 0);
    ASSERT_STR_EQ(json_string_value(kinesis_member(req, "ShardIteratorType")),
                  "AT_TIMESTAMP");
    json_t *ts = kinesis_member(req, "Timestamp");
    ASSERT_TRUE(json_is_number(ts));
    ASSERT_EQ(llround(json_number_value(ts) * 1000), 1000000000123LL);
    json_decref(reqs);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(shard_reader_frees_without_stop)
{
    struct env e;
    struct consumer c = {.auto_commit = true};
    struct reader_callbacks cbs = {&c, on_batch, on_ready, on_fatal};

    env_init(&e, start_kinesalite());
    create_stream(&e, "race", 2);
    struct reader_config cfg = reader_config(&e, "race");

    /* Invalid checkpoints: reader_start fails and leaves no handle, so
     * reader_free is immediate. */
    struct reader_checkpoint bad_seq[] = {{SHARD0, "12x", 0, false}};
    struct reader_checkpoint twice[] = {{SHARD0, "1", 0, false},
                                        {SHARD0, "2", 0, false}};
    struct reader *rd = reader_new(&e.loop, e.http, &cfg, &cbs);
    ASSERT_EQ(reader_start(rd, bad_seq, 1), -1);
    ASSERT_EQ(reader_shard_count(rd), 0);
    reader_free(rd);
    rd = reader_new(&e.loop, e.http, &cfg, &cbs);
    ASSERT_EQ(reader_start(rd, twice, 2), -1);
    reader_free(rd);

    /* A poll interval under 200 ms would pass 5 GetRecords/s/shard. */
    cfg.poll_interval_ms = 100;
    ASSERT_TRUE(reader_new(&e.loop, e.http, &cfg, &cbs) == NULL);
    cfg.poll_interval_ms = POLL_MS;

    /* A running reader freed without reader_stop closes its handles on
     * the next loop turns; env_close checks that the loop closes. */
    c.rd = reader_new(&e.loop, e.http, &cfg, &cbs);
    ASSERT_EQ(reader_start(c.rd, NULL, 0), 0);
    WAIT_FOR(&e, reader_caught_up(c.rd));
    reader_free(c.rd);
    ASSERT_TRUE(c.fatal == NULL);
    env_close(&e);
}

TEST(shard_reader_resumes_inside_aggregate)
{
    struct env e, direct;
    struct consumer first = {.auto_commit = true};
    struct consumer second = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 6);
    struct reader_config cfg = reader_config(&direct, "race");
    consumer_start(&first, &direct, &cfg, NULL, 0);
    WAIT_FOR(&direct, first.records == 6 && reader_caught_up(first.rd));
    char *cut = strdup(first.batches[0]->records[2].seq);
    consumer_finish(&first, &direct);
    env_close(&direct);

    /* Sub-sequence 1 of record 2 was applied: read record 2 again from
     * AT_SEQUENCE_NUMBER and drop its positions up to (seq, 1), which
     * for a plain record (sub-sequence 0) is the whole record. */
    int pport = start_proxy(kport, "[]");
    env_init(&e, pport);
    struct reader_checkpoint cps[] = {{SHARD0, cut, 1, false}};
    cfg = reader_config(&e, "race");
    consumer_start(&second, &e, &cfg, cps, 1);
    WAIT_FOR(&e, second.records == 3 && reader_caught_up(second.rd));
    check_records(&second, 3, 3);

    json_t *reqs = iterator_requests(SHARD0);
    ASSERT_EQ(json_array_size(reqs), 1);
    json_t *req = json_array_get(reqs, 0);
    ASSERT_STR_EQ(json_string_value(kinesis_member(req, "ShardIteratorType")),
                  "AT_SEQUENCE_NUMBER");
    ASSERT_STR_EQ(
        json_string_value(kinesis_member(req, "StartingSequenceNumber")), cut);
    json_decref(reqs);
    free(cut);

    consumer_finish(&second, &e);
    env_close(&e);
}

/* ---- putter -------------------------------------------------------------- */

TEST(kinesis_putter_rejects_invalid_records)
{
    struct env e;
    char long_key[300], wide_key[256 * 3 + 1];

    env_init(&e, 1); /* nothing is sent */
    struct kinesis_putter *p =
        kinesis_putter_new(&e.loop, e.http, &e.ep, &e.creds, "race", 1000);
    ASSERT_TRUE(p != NULL);
    memset(long_key, 'k', 257);
    long_key[257] = '\0';
    /* 256 characters of 3 bytes each are within the limit. */
    for (int i = 0; i < 256; i++)
        memcpy(wide_key + i * 3, "\xe2\x82\xac", 3);
    wide_key[256 * 3] = '\0';
    uint8_t *big = calloc(1, 1 << 20);

    ASSERT_EQ(kinesis_putter_add(p, "x", 1, ""), -EINVAL);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, NULL), -EINVAL);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, long_key), -EINVAL);
    ASSERT_EQ(kinesis_putter_add(p, big, 1 << 20, "k"), -EMSGSIZE);
    ASSERT_EQ(kinesis_putter_add(p, big, (1 << 20) - 1, "k"), 0);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, wide_key), 0);
    ASSERT_EQ(kinesis_putter_add(p, "", 0, "empty"), 0);
    ASSERT_EQ(kinesis_putter_pending(p), 3);
    free(big);

    /* Freed without finishing: queued records are dropped. */
    kinesis_putter_free(p);
    env_close(&e);
}

TEST(kinesis_putter_reports_missing_stream)
{
    struct env e;
    struct put_result r = {0};

    env_init(&e, start_kinesalite());
    struct kinesis_putter *p =
        kinesis_putter_new(&e.loop, e.http, &e.ep, &e.creds, "nope", 5000);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, "k"), 0);
    kinesis_putter_finish(p, put_done, &r);
    WAIT_FOR(&e, r.done);
    ASSERT_TRUE(r.error != NULL);
    ASSERT_TRUE(strstr(r.error, "stream \"nope\" at http://127.0.0.1:") !=
                NULL);
    ASSERT_TRUE(strstr(r.error, "ResourceNotFoundException") != NULL);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, "k"), -EIO);
    free(r.error);
    kinesis_putter_free(p);
    env_close(&e);
}

TEST(kinesis_putter_retries_failed_entries)
{
    struct env e, direct;
    struct consumer c = {.auto_commit = true};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 2);
    env_close(&direct);

    /* The first two PutRecords calls lose every odd entry; the putter
     * must send exactly those again. */
    int pport = start_proxy(kport, "[{\"action\":\"PutRecords\",\"fault\":"
                                   "\"partial\",\"times\":2},"
                                   "{\"action\":\"PutRecords\",\"fault\":"
                                   "\"internal\",\"skip\":2,\"times\":1}]");
    env_init(&e, pport);
    put_records(&e, "race", 0, 700);

    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records == 700 && reader_caught_up(c.rd));
    run_for(&e, 2 * POLL_MS);
    ASSERT_EQ(c.records, 700);
    check_records(&c, 0, 700);

    consumer_finish(&c, &e);
    env_close(&e);
}

TEST(kinesis_putter_gives_up_after_attempts)
{
    struct env e, direct;
    struct put_result r = {0};
    int kport = start_kinesalite();

    env_init(&direct, kport);
    create_stream(&direct, "race", 1);
    env_close(&direct);

    int pport = start_proxy(kport, "[{\"action\":\"PutRecords\",\"fault\":"
                                   "\"throttle\",\"times\":1000}]");
    env_init(&e, pport);
    struct kinesis_putter *p =
        kinesis_putter_new(&e.loop, e.http, &e.ep, &e.creds, "race", 5000);
    kinesis_putter_set_retry(p, 4, 20);
    ASSERT_EQ(kinesis_putter_add(p, "x", 1, "k"), 0);
    kinesis_putter_finish(p, put_done, &r);
    WAIT_FOR(&e, r.done);
    ASSERT_TRUE(r.error != NULL);
    ASSERT_TRUE(strstr(r.error, "ProvisionedThroughputExceededException") !=
                NULL);
    ASSERT_TRUE(strstr(r.error, "after 4 attempts") != NULL);
    ASSERT_EQ(count_requests("PutRecords"), 4);
    free(r.error);
    kinesis_putter_free(p);
    env_close(&e);
}

/* ---- KPL aggregates -------------------------------------------------------
 */

#include <openssl/evp.h>

#define AGG_MAX 1024

static void agg_raw(uint8_t *buf, size_t *len, const void *bytes, size_t n)
{
    ASSERT_TRUE(*len + n <= AGG_MAX);
    memcpy(buf + *len, bytes, n);
    *len += n;
}

static void agg_varint(uint8_t *buf, size_t *len, uint64_t v)
{
    do {
        uint8_t byte = (uint8_t)((v & 0x7F) | (v > 0x7F ? 0x80 : 0));
        agg_raw(buf, len, &byte, 1);
        v >>= 7;
    } while (v != 0);
}

/* Append a length-delimited protobuf field. */
static void agg_field(uint8_t *buf, size_t *len, uint32_t field,
                      const void *bytes, size_t n)
{
    agg_varint(buf, len, (uint64_t)field << 3 | 2);
    agg_varint(buf, len, n);
    agg_raw(buf, len, bytes, n);
}

/*
 * Build the Data of a KPL aggregate (magic, AggregatedRecord, MD5) of
 * count user records {"car":first+i} with partition keys "car-<n>". With
 * bad_md5 the digest is wrong. Returns the length.
 */
static size_t make_aggregate(int first, int count, bool bad_md5, uint8_t *out)
{
    static const uint8_t magic[4] = {0xF3, 0x89, 0x9A, 0xC2};
    uint8_t body[AGG_MAX], rec[64];
    size_t body_len = 0, len = 0;
    char text[32];
    unsigned int md_len = 0;

    for (int i = 0; i < count; i++) {
        snprintf(text, sizeof text, "car-%d", first + i);
        agg_field(body, &body_len, 1, text, strlen(text));
    }
    for (int i = 0; i < count; i++) {
        size_t rec_len = 0;
        agg_varint(rec, &rec_len, 1 << 3); /* partition_key_index */
        agg_varint(rec, &rec_len, (uint64_t)i);
        snprintf(text, sizeof text, "{\"car\":%d}", first + i);
        agg_field(rec, &rec_len, 3, text, strlen(text));
        agg_field(body, &body_len, 3, rec, rec_len);
    }
    agg_raw(out, &len, magic, sizeof magic);
    agg_raw(out, &len, body, body_len);
    ASSERT_TRUE(len + 16 <= AGG_MAX);
    ASSERT_EQ(EVP_Digest(body, body_len, out + len, &md_len, EVP_md5(), NULL),
              1);
    if (bad_md5)
        out[len] ^= 0x01;
    return len + md_len;
}

/* The records a consumer saw, in delivery order. */
static size_t flatten(const struct consumer *c, const struct shard_record **out,
                      size_t max)
{
    size_t n = 0;
    for (size_t b = 0; b < c->batch_count; b++) {
        for (size_t i = 0; i < c->batches[b]->count; i++) {
            ASSERT_TRUE(n < max);
            out[n++] = &c->batches[b]->records[i];
        }
    }
    return n;
}

static void expect_record(const struct shard_record *r, const char *seq,
                          int64_t subseq, const char *key, const void *data,
                          size_t len)
{
    ASSERT_STR_EQ(r->seq, seq);
    ASSERT_EQ(r->subseq, subseq);
    ASSERT_STR_EQ(r->partition_key, key);
    ASSERT_MEM_EQ(r->data, r->len, data, len);
}

/* Put an aggregate of 3 user records, a plain record and an aggregate with
 * a wrong MD5 (bytes in *bad, length *bad_len) into a new one-shard stream. */
static void put_kpl_records(struct env *e, uint8_t *bad, size_t *bad_len)
{
    struct kinesis_putter *p =
        kinesis_putter_new(&e->loop, e->http, &e->ep, &e->creds, "race", 10000);
    struct put_result r = {0};
    uint8_t good[AGG_MAX];
    static const char plain[] = "{\"car\":99}";

    create_stream(e, "race", 1);
    ASSERT_TRUE(p != NULL);
    size_t good_len = make_aggregate(0, 3, false, good);
    *bad_len = make_aggregate(10, 2, true, bad);
    ASSERT_EQ(kinesis_putter_add(p, good, good_len, "agg-a"), 0);
    ASSERT_EQ(kinesis_putter_add(p, plain, strlen(plain), "plain"), 0);
    ASSERT_EQ(kinesis_putter_add(p, bad, *bad_len, "agg-b"), 0);
    kinesis_putter_finish(p, put_done, &r);
    WAIT_FOR(e, r.done);
    if (r.error != NULL)
        test_fail(__FILE__, __LINE__, "put failed: %s", r.error);
    kinesis_putter_free(p);
}

TEST(shard_reader_deaggregates_kpl_records)
{
    struct env e;
    struct consumer c = {.auto_commit = true};
    const struct shard_record *recs[8];
    uint8_t bad[AGG_MAX];
    size_t bad_len;

    env_init(&e, start_kinesalite());
    put_kpl_records(&e, bad, &bad_len);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records >= 5 && reader_caught_up(c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_EQ(flatten(&c, recs, 8), 5);
    const char *agg = recs[0]->seq;
    expect_record(recs[0], agg, 0, "car-0", "{\"car\":0}", 9);
    expect_record(recs[1], agg, 1, "car-1", "{\"car\":1}", 9);
    expect_record(recs[2], agg, 2, "car-2", "{\"car\":2}", 9);
    ASSERT_EQ(recs[0]->arrival_ms, recs[2]->arrival_ms);
    ASSERT_TRUE(recs[0]->arrival_ms > 1700000000000LL);
    ASSERT_TRUE(seqnum_cmp(recs[3]->seq, agg) > 0);
    expect_record(recs[3], recs[3]->seq, 0, "plain", "{\"car\":99}", 10);
    /* The aggregate with a wrong MD5 arrives whole, as one record. */
    ASSERT_TRUE(seqnum_cmp(recs[4]->seq, recs[3]->seq) > 0);
    expect_record(recs[4], recs[4]->seq, 0, "agg-b", bad, bad_len);
    const struct shard_batch *last = c.batches[c.batch_count - 1];
    ASSERT_STR_EQ(last->checkpoint_seq, recs[4]->seq);
    ASSERT_EQ(last->checkpoint_subseq, 0);

    consumer_finish(&c, &e);
    env_close(&e);
}

/*
 * Restart the reader at checkpoint (seq of the aggregate, subseq) and
 * check that exactly the records after it arrive.
 */
static void check_restart_inside(struct env *e, const char *agg, int64_t subseq,
                                 size_t expected)
{
    struct consumer c = {.auto_commit = true};
    const struct shard_record *recs[8];
    struct reader_checkpoint cp = {SHARD0, agg, subseq, false};
    struct reader_config cfg = reader_config(e, "race");

    consumer_start(&c, e, &cfg, &cp, 1);
    WAIT_FOR(e, c.records >= expected && reader_caught_up(c.rd));
    run_for(e, 3 * POLL_MS);
    ASSERT_EQ(flatten(&c, recs, 8), expected);
    if (subseq < 2) {
        expect_record(recs[0], agg, 2, "car-2", "{\"car\":2}", 9);
    } else {
        ASSERT_TRUE(seqnum_cmp(recs[0]->seq, agg) > 0);
        ASSERT_STR_EQ(recs[0]->partition_key, "plain");
    }
    for (size_t b = 0; b < c.batch_count; b++) {
        const struct shard_batch *batch = c.batches[b];
        const struct shard_record *end = &batch->records[batch->count - 1];
        ASSERT_STR_EQ(batch->checkpoint_seq, end->seq);
        ASSERT_EQ(batch->checkpoint_subseq, end->subseq);
    }
    consumer_finish(&c, e);
}

TEST(shard_reader_restarts_inside_kpl_aggregate)
{
    struct env e;
    struct consumer first = {.auto_commit = true};
    const struct shard_record *recs[8];
    uint8_t bad[AGG_MAX];
    size_t bad_len;

    env_init(&e, start_kinesalite());
    put_kpl_records(&e, bad, &bad_len);
    struct reader_config cfg = reader_config(&e, "race");
    consumer_start(&first, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, first.records >= 5 && reader_caught_up(first.rd));
    ASSERT_EQ(flatten(&first, recs, 8), 5);
    char *agg = strdup(recs[0]->seq);
    consumer_finish(&first, &e);

    /* After user record 1: user record 2, the plain record, the bad one. */
    check_restart_inside(&e, agg, 1, 3);
    /* After the last user record: the whole aggregate is filtered. */
    check_restart_inside(&e, agg, 2, 2);
    free(agg);
    env_close(&e);
}
