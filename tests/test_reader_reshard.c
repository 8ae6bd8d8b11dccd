/*
 * Resharding tests of the shard reader against both local Kinesis servers.
 * Children start only after all their parents are finished, whether the
 * reader learns them from ChildShards or from ListShards. A closed shard's
 * end is delivered with its records and never read again. A periodic
 * listing finds shards that another client created.
 *
 * Every scenario runs against kinesalite, which never sends ChildShards,
 * and against kinesis-local, which does. The reader talks to the server
 * through tests/kinesis-fault-proxy.js, which logs every request. The
 * test's own calls (create, put, split, merge) go to the server directly,
 * so the proxy log contains only the reader's requests.
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

/* EndingSequenceNumber that kinesis-local reports for every closed shard. */
#define SENTINEL_SEQ "9223372036854775807"

/* ---- servers and consumers ----------------------------------------------- */

/*
 * Start server ("kinesalite" or "kinesis-local") and the proxy in front of
 * it with rules. direct talks to the server, e to the proxy.
 */
static void start_server(const char *server, const char *rules,
                         struct env *direct, struct env *e)
{
    int port = start_peer(server, false);
    env_init(direct, port);
    env_init(e, start_proxy(port, rules));
}

static bool is_kinesis_local(const char *server)
{
    return strcmp(server, "kinesis-local") == 0;
}

/*
 * A consumer that commits every batch from inside on_batch, except the end
 * batch of the shards in hold, which it keeps until release_end().
 */
struct holder {
    struct consumer c; /* first, so the testlib callbacks can take h */
    const char *hold[2];
};

static bool is_held(const struct holder *h, const char *shard_id)
{
    for (size_t i = 0; i < 2; i++) {
        if (h->hold[i] != NULL && strcmp(h->hold[i], shard_id) == 0)
            return true;
    }
    return false;
}

static void holder_on_batch(void *arg, struct shard_batch *batch)
{
    struct holder *h = arg;
    bool keep = batch->shard_end && is_held(h, batch->shard_id);
    const char *shard_id = batch->shard_id;

    on_batch(&h->c, batch); /* stores the batch, since auto_commit is off */
    if (!keep)
        reader_batch_committed(h->c.rd, shard_id);
}

static void holder_start(struct holder *h, struct env *e,
                         const struct reader_config *cfg)
{
    struct reader_callbacks cbs = {h, holder_on_batch, on_ready, on_fatal};
    h->c.auto_commit = false;
    h->c.rd = reader_new(&e->loop, e->http, cfg, &cbs);
    ASSERT_TRUE(h->c.rd != NULL);
    ASSERT_EQ(reader_start(h->c.rd, NULL, 0), 0);
}

/* Commit the end batch of shard_id that h kept back. */
static void release_end(struct holder *h, const char *shard_id)
{
    for (size_t i = 0; i < 2; i++) {
        if (h->hold[i] != NULL && strcmp(h->hold[i], shard_id) == 0)
            h->hold[i] = NULL;
    }
    ASSERT_TRUE(end_batch_of(&h->c, shard_id) >= 0);
    reader_batch_committed(h->c.rd, shard_id);
}

/* ---- proxy log ----------------------------------------------------------- */

static bool entry_is(const json_t *entry, const char *action,
                     const char *shard_id)
{
    const char *act = json_string_value(json_object_get(entry, "action"));
    const char *shard = json_string_value(json_object_get(entry, "shard"));
    return act != NULL && strcmp(act, action) == 0 &&
           (shard_id == NULL ||
            (shard != NULL && strcmp(shard, shard_id) == 0));
}

static bool is_request(const json_t *entry)
{
    return json_object_get(entry, "reply") == NULL;
}

/* Count the requests for action (and shard_id unless NULL) from log index
 * from on. */
static size_t count_logged(const json_t *log, size_t from, const char *action,
                           const char *shard_id)
{
    size_t n = 0;
    for (size_t i = from; i < json_array_size(log); i++) {
        const json_t *entry = json_array_get(log, i);
        n += is_request(entry) && entry_is(entry, action, shard_id);
    }
    return n;
}

static size_t iterator_count(const char *shard_id)
{
    json_t *reqs = iterator_requests(shard_id);
    size_t n = json_array_size(reqs);
    json_decref(reqs);
    return n;
}

/*
 * Return the log index of the GetRecords reply that ended shard_id, which
 * has status 200 and no NextShardIterator. Fails unless there is exactly
 * one.
 */
static size_t end_reply_index(const json_t *log, const char *shard_id)
{
    size_t found = SIZE_MAX;
    for (size_t i = 0; i < json_array_size(log); i++) {
        const json_t *entry = json_array_get(log, i);
        if (is_request(entry) || !entry_is(entry, "GetRecords", shard_id) ||
            json_integer_value(json_object_get(entry, "reply")) != 200 ||
            json_is_true(json_object_get(entry, "next")))
            continue;
        if (found != SIZE_MAX)
            test_fail(__FILE__, __LINE__,
                      "%s ended twice: log lines %zu and %zu", shard_id,
                      found + 1, i + 1);
        found = i;
    }
    if (found == SIZE_MAX)
        test_fail(__FILE__, __LINE__, "no reply ended %s in %s", shard_id,
                  proxy_log_path());
    return found;
}

/* Check the ShardIteratorType of the first GetShardIterator for shard_id. */
static void expect_first_iterator(const char *shard_id, const char *type)
{
    json_t *reqs = iterator_requests(shard_id);
    ASSERT_TRUE(json_array_size(reqs) >= 1);
    ASSERT_STR_EQ(json_string_value(kinesis_member(json_array_get(reqs, 0),
                                                   "ShardIteratorType")),
                  type);
    json_decref(reqs);
}

/* Check that no request of the proxy log contains text. */
static void expect_not_sent(const char *text)
{
    json_t *log = proxy_log_entries();
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        if (!is_request(entry))
            continue;
        char *input = json_dumps(json_object_get(entry, "input"), 0);
        ASSERT_TRUE(input != NULL);
        if (strstr(input, text) != NULL)
            test_fail(__FILE__, __LINE__, "line %zu of %s sent %s: %s", i + 1,
                      proxy_log_path(), text, input);
        free(input);
    }
    json_decref(log);
}

/* Check that shard_id is known to the reader and not being read. */
static void expect_not_started(const struct reader *rd, const char *shard_id)
{
    ASSERT_EQ(iterator_count(shard_id), 0);
    struct reader_shard_info info = shard_info(rd, shard_id);
    ASSERT_FALSE(info.reading);
    ASSERT_FALSE(info.finished);
    ASSERT_EQ(info.get_records_calls, 0);
}

/*
 * Run the loop until the reader has sent count more ListShards calls, then
 * a few poll intervals more. Every listing runs the check that starts
 * shards whose parents are done, so a child that starts too early does so
 * within this window.
 */
static void run_listings(struct env *e, size_t count)
{
    size_t target = count_requests("ListShards") + count;
    WAIT_FOR(e, count_requests("ListShards") >= target);
    run_for(e, 5 * POLL_MS);
}

/* ---- children wait for their parent -------------------------------------- */

static void children_wait_for_parent(const char *server)
{
    struct env direct, e;
    struct holder h = {.hold = {SHARD0}};

    start_server(server, "[]", &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 30);
    split_shard_in_half(&direct, "race", SHARD0);
    put_records(&direct, "race", 30, 40);

    /* The first listing already names both children with their parent. */
    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 1;
    cfg.max_records = 10;
    holder_start(&h, &e, &cfg);
    WAIT_FOR(&e, end_batch_of(&h.c, SHARD0) >= 0);
    ASSERT_EQ(reader_shard_count(h.c.rd), 3);

    /* The parent's end is read but not committed: no child may start. */
    run_listings(&e, 2);
    expect_not_started(h.c.rd, SHARD1);
    expect_not_started(h.c.rd, SHARD2);
    struct reader_shard_info parent = shard_info(h.c.rd, SHARD0);
    ASSERT_TRUE(parent.reading);
    ASSERT_FALSE(parent.finished);
    ASSERT_EQ(h.c.records, 30);

    release_end(&h, SHARD0);
    WAIT_FOR(&e, h.c.records >= 70 && reader_caught_up(h.c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(h.c.fatal == NULL);
    check_records(&h.c, 0, 70);
    ASSERT_EQ(shard_records(&h.c, SHARD0), 30);
    ASSERT_TRUE(shard_info(h.c.rd, SHARD0).finished);
    long end = end_batch_of(&h.c, SHARD0);
    const char *children[] = {SHARD1, SHARD2};
    for (size_t i = 0; i < 2; i++) {
        ASSERT_TRUE(shard_records(&h.c, children[i]) > 0);
        ASSERT_TRUE(first_batch_of(&h.c, children[i]) > end);
        ASSERT_EQ(iterator_count(children[i]), 1);
        expect_first_iterator(children[i], "TRIM_HORIZON");
    }

    consumer_finish(&h.c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_children_wait_for_parent_kinesalite)
{
    children_wait_for_parent("kinesalite");
}

TEST(reshard_children_wait_for_parent_kinesis_local)
{
    children_wait_for_parent("kinesis-local");
}

/* ---- a merge waits for both parents -------------------------------------- */

/*
 * Merge shards 0 and 1 into shard 2, and keep the end batch of held_parent
 * uncommitted while the other parent finishes. The child must wait.
 */
static void merge_waits_for_parent(const char *server, const char *held_parent)
{
    const char *other = strcmp(held_parent, SHARD0) == 0 ? SHARD1 : SHARD0;
    struct env direct, e;
    struct holder h = {.hold = {held_parent}};

    start_server(server, "[]", &direct, &e);
    create_stream(&direct, "race", 2);
    put_records(&direct, "race", 0, 40);
    merge_shards(&direct, "race", SHARD0, SHARD1);
    put_records(&direct, "race", 40, 30);

    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 1;
    holder_start(&h, &e, &cfg);
    WAIT_FOR(&e, end_batch_of(&h.c, held_parent) >= 0 &&
                     shard_info(h.c.rd, other).finished);

    run_listings(&e, 2);
    expect_not_started(h.c.rd, SHARD2);
    ASSERT_FALSE(shard_info(h.c.rd, held_parent).finished);
    ASSERT_EQ(h.c.records, 40);

    release_end(&h, held_parent);
    WAIT_FOR(&e, h.c.records >= 70 && reader_caught_up(h.c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(h.c.fatal == NULL);
    check_records(&h.c, 0, 70);
    ASSERT_TRUE(shard_records(&h.c, SHARD0) > 0);
    ASSERT_TRUE(shard_records(&h.c, SHARD1) > 0);
    ASSERT_EQ(shard_records(&h.c, SHARD2), 30);
    ASSERT_TRUE(first_batch_of(&h.c, SHARD2) > end_batch_of(&h.c, SHARD0));
    ASSERT_TRUE(first_batch_of(&h.c, SHARD2) > end_batch_of(&h.c, SHARD1));
    ASSERT_EQ(iterator_count(SHARD2), 1);
    expect_first_iterator(SHARD2, "TRIM_HORIZON");

    consumer_finish(&h.c, &e);
    env_close(&e);
    env_close(&direct);
}

/* Shard 0 is the merge's ParentShardId, shard 1 its AdjacentParentShardId. */
TEST(reshard_merge_waits_for_shard0_kinesalite)
{
    merge_waits_for_parent("kinesalite", SHARD0);
}

TEST(reshard_merge_waits_for_shard0_kinesis_local)
{
    merge_waits_for_parent("kinesis-local", SHARD0);
}

TEST(reshard_merge_waits_for_shard1_kinesalite)
{
    merge_waits_for_parent("kinesalite", SHARD1);
}

TEST(reshard_merge_waits_for_shard1_kinesis_local)
{
    merge_waits_for_parent("kinesis-local", SHARD1);
}

/* ---- how the children are found ------------------------------------------ */

/*
 * Split the shard while the reader reads it, so that the reader learns of
 * the children only at the parent's end. It learns from ChildShards when
 * the reply still contains them after the proxy's rules, and otherwise
 * from the ListShards call that the parent's end triggers. The proxy logs
 * each GetRecords reply before a rule changes it.
 */
static void children_found(const char *server, const char *rules,
                           bool child_shards)
{
    struct env direct, e;
    struct holder h = {0};

    start_server(server, rules, &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 30);

    /* A sync interval far longer than any wait, so that only the parent's
     * end can lead to a listing. */
    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 3600;
    holder_start(&h, &e, &cfg);
    WAIT_FOR(&e, h.c.records >= 30 && reader_caught_up(h.c.rd));
    ASSERT_EQ(reader_shard_count(h.c.rd), 1);

    split_shard_in_half(&direct, "race", SHARD0);
    put_records(&direct, "race", 30, 40);
    WAIT_FOR(&e, h.c.records >= 70 && reader_caught_up(h.c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(h.c.fatal == NULL);
    check_records(&h.c, 0, 70);
    long end = end_batch_of(&h.c, SHARD0);
    ASSERT_TRUE(end >= 0);

    json_t *log = proxy_log_entries();
    size_t end_reply = end_reply_index(log, SHARD0);
    const json_t *named =
        json_object_get(json_array_get(log, end_reply), "children");
    ASSERT_EQ(json_array_size(named), is_kinesis_local(server) ? 2 : 0);

    /* The first GetShardIterator of a child, which must follow the end. */
    size_t first_child = SIZE_MAX;
    for (size_t i = 0; i < json_array_size(log); i++) {
        const json_t *entry = json_array_get(log, i);
        if (is_request(entry) &&
            (entry_is(entry, "GetShardIterator", SHARD1) ||
             entry_is(entry, "GetShardIterator", SHARD2))) {
            first_child = i;
            break;
        }
    }
    ASSERT_TRUE(first_child != SIZE_MAX);
    ASSERT_TRUE(first_child > end_reply);

    size_t lists = 0;
    for (size_t i = end_reply; i < first_child; i++) {
        const json_t *entry = json_array_get(log, i);
        lists += is_request(entry) && entry_is(entry, "ListShards", NULL);
    }
    if (child_shards)
        ASSERT_EQ(lists, 0);
    else
        ASSERT_TRUE(lists >= 1);
    json_decref(log);

    const char *children[] = {SHARD1, SHARD2};
    for (size_t i = 0; i < 2; i++) {
        ASSERT_TRUE(first_batch_of(&h.c, children[i]) > end);
        ASSERT_EQ(iterator_count(children[i]), 1);
        expect_first_iterator(children[i], "TRIM_HORIZON");
    }

    consumer_finish(&h.c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_children_from_child_shards_kinesis_local)
{
    children_found("kinesis-local", "[]", true);
}

TEST(reshard_children_from_listing_kinesis_local)
{
    children_found("kinesis-local",
                   "[{\"action\":\"GetRecords\",\"fault\":\"nochildren\"}]",
                   false);
}

TEST(reshard_children_from_listing_kinesalite)
{
    children_found("kinesalite", "[]", false);
}

/* ---- the end of a closed shard ------------------------------------------- */

/* The checkpoint of the last batch of shard_id, or NULL. */
static const char *last_checkpoint(const struct consumer *c,
                                   const char *shard_id)
{
    const char *seq = NULL;
    for (size_t b = 0; b < c->batch_count; b++) {
        if (strcmp(c->batches[b]->shard_id, shard_id) == 0)
            seq = c->batches[b]->checkpoint_seq;
    }
    return seq;
}

/*
 * Read a split shard to its end and check the end batch against the reply
 * that ended it. Then restart with the parent stored as finished and the
 * children at their checkpoints: the parent is never read again.
 */
static void closed_shard_end(const char *server)
{
    struct env direct, e;
    struct holder first = {0}, second = {0};

    start_server(server, "[]", &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 20);
    split_shard_in_half(&direct, "race", SHARD0);
    put_records(&direct, "race", 20, 40);

    struct reader_config cfg = reader_config(&e, "race");
    holder_start(&first, &e, &cfg);
    WAIT_FOR(&e, first.c.records >= 60 && reader_caught_up(first.c.rd));
    run_for(&e, 3 * POLL_MS);
    check_records(&first.c, 0, 60);
    ASSERT_EQ(shard_records(&first.c, SHARD0), 20);

    /* The end batch is the parent's last, and contains the records of the
     * reply that ended the shard. kinesis-local sends the last records and
     * the end in one reply, while kinesalite ends with an empty reply. */
    long end = end_batch_of(&first.c, SHARD0);
    ASSERT_TRUE(end >= 0);
    for (size_t b = (size_t)end + 1; b < first.c.batch_count; b++)
        ASSERT_TRUE(strcmp(first.c.batches[b]->shard_id, SHARD0) != 0);
    json_t *log = proxy_log_entries();
    const json_t *reply = json_array_get(log, end_reply_index(log, SHARD0));
    size_t end_records =
        (size_t)json_integer_value(json_object_get(reply, "records"));
    json_decref(log);
    const struct shard_batch *end_batch = first.c.batches[end];
    ASSERT_TRUE(end_batch->shard_end);
    ASSERT_EQ(end_batch->count, end_records);
    if (is_kinesis_local(server))
        ASSERT_TRUE(end_batch->count > 0);
    if (end_batch->count > 0) {
        ASSERT_STR_EQ(end_batch->checkpoint_seq,
                      end_batch->records[end_batch->count - 1].seq);
        for (size_t i = 0; i < end_batch->count; i++)
            ASSERT_TRUE(payload_index(&end_batch->records[i]) < 20);
    }
    ASSERT_TRUE(end_batch->checkpoint_seq != NULL);

    ASSERT_TRUE(last_checkpoint(&first.c, SHARD1) != NULL);
    ASSERT_TRUE(last_checkpoint(&first.c, SHARD2) != NULL);
    char *parent_cp = strdup(end_batch->checkpoint_seq);
    char *child1_cp = strdup(last_checkpoint(&first.c, SHARD1));
    char *child2_cp = strdup(last_checkpoint(&first.c, SHARD2));
    consumer_finish(&first.c, &e);

    /* Restart as the daemon would after storing those checkpoints. */
    log = proxy_log_entries();
    size_t mark = json_array_size(log);
    json_decref(log);
    struct reader_checkpoint cps[] = {
        {SHARD0, parent_cp, 0, true},
        {SHARD1, child1_cp, 0, false},
        {SHARD2, child2_cp, 0, false},
    };
    struct reader_callbacks cbs = {&second, holder_on_batch, on_ready,
                                   on_fatal};
    second.c.rd = reader_new(&e.loop, e.http, &cfg, &cbs);
    ASSERT_TRUE(second.c.rd != NULL);
    ASSERT_EQ(reader_start(second.c.rd, cps, 3), 0);
    put_records(&direct, "race", 60, 20);
    WAIT_FOR(&e, second.c.records >= 20 && reader_caught_up(second.c.rd));
    run_for(&e, 5 * POLL_MS);

    ASSERT_TRUE(second.c.fatal == NULL);
    check_records(&second.c, 60, 20);
    ASSERT_TRUE(shard_info(second.c.rd, SHARD0).finished);
    ASSERT_EQ(shard_calls(second.c.rd, SHARD0), 0);
    log = proxy_log_entries();
    ASSERT_TRUE(count_logged(log, mark, "ListShards", NULL) >= 1);
    ASSERT_EQ(count_logged(log, mark, "GetShardIterator", SHARD0), 0);
    ASSERT_EQ(count_logged(log, mark, "GetRecords", SHARD0), 0);
    ASSERT_EQ(count_logged(log, mark, "GetShardIterator", SHARD1), 1);
    ASSERT_EQ(count_logged(log, mark, "GetShardIterator", SHARD2), 1);
    json_decref(log);

    /* Neither reader ever sent the sentinel that kinesis-local lists as
     * the EndingSequenceNumber of a closed shard. */
    expect_not_sent(SENTINEL_SEQ);

    consumer_finish(&second.c, &e);
    free(parent_cp);
    free(child1_cp);
    free(child2_cp);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_closed_shard_end_kinesalite)
{
    closed_shard_end("kinesalite");
}

TEST(reshard_closed_shard_end_kinesis_local)
{
    closed_shard_end("kinesis-local");
}

/* ---- periodic listing ---------------------------------------------------- */

/*
 * With shard_sync_interval_s = 1 the reader lists the shards every second.
 * While a batch of shard 0 waits for its commit, the reader cannot read to
 * the shard's end, so only such a listing can reveal a split that another
 * client makes meanwhile.
 */
static void listing_finds_split(const char *server)
{
    struct env direct, e;
    struct consumer c = {.auto_commit = false};

    start_server(server, "[]", &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 10);

    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 1;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.batch_count == 1);

    /* Three more listings take at least two sync intervals. */
    size_t lists = count_requests("ListShards");
    uint64_t start = now_ms();
    WAIT_FOR(&e, count_requests("ListShards") >= lists + 3);
    ASSERT_TRUE(now_ms() - start >= 1900);

    split_shard_in_half(&direct, "race", SHARD0);
    put_records(&direct, "race", 10, 40);
    WAIT_FOR(&e,
             reader_shard_count(c.rd) == 3 && !shard_info(c.rd, SHARD0).open);
    ASSERT_EQ(shard_calls(c.rd, SHARD0), 1);
    run_for(&e, 3 * POLL_MS);
    expect_not_started(c.rd, SHARD1);
    expect_not_started(c.rd, SHARD2);

    c.auto_commit = true;
    reader_batch_committed(c.rd, SHARD0);
    WAIT_FOR(&e, c.records >= 50 && reader_caught_up(c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(c.fatal == NULL);
    check_records(&c, 0, 50);
    long end = end_batch_of(&c, SHARD0);
    ASSERT_TRUE(end >= 0);
    ASSERT_TRUE(first_batch_of(&c, SHARD1) > end);
    ASSERT_TRUE(first_batch_of(&c, SHARD2) > end);

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_listing_finds_split_kinesalite)
{
    listing_finds_split("kinesalite");
}

TEST(reshard_listing_finds_split_kinesis_local)
{
    listing_finds_split("kinesis-local");
}

/*
 * A stream that is still being created lists no shard (kinesalite does so
 * for 50 ms under tools/peers.sh). The proxy replies to the first two
 * listings that way, so the case does not depend on that window. The
 * reader must list again soon, not after the sync interval, and read the
 * shard once it appears, from TRIM_HORIZON.
 */
static void listing_waits_for_first_shard(const char *server)
{
    struct env direct, e;
    struct consumer c = {.auto_commit = true};

    start_server(server,
                 "[{\"action\":\"ListShards\",\"fault\":\"noshards\","
                 "\"times\":2}]",
                 &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 20);
    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 3600;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.ready);
    ASSERT_EQ(c.open_shards, 0);
    ASSERT_EQ(reader_shard_count(c.rd), 0);

    WAIT_FOR(&e, c.records >= 20 && reader_caught_up(c.rd));
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(c.fatal == NULL);
    check_records(&c, 0, 20);
    ASSERT_EQ(reader_shard_count(c.rd), 1);
    ASSERT_EQ(count_requests("ListShards"), 3);
    expect_first_iterator(SHARD0, "TRIM_HORIZON");

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_listing_waits_for_first_shard_kinesalite)
{
    listing_waits_for_first_shard("kinesalite");
}

TEST(reshard_listing_waits_for_first_shard_kinesis_local)
{
    listing_waits_for_first_shard("kinesis-local");
}

/*
 * Another client splits the shard while the reader polls it and finds
 * nothing: the reader finds the children and reads them.
 */
static void split_while_idle(const char *server)
{
    struct env direct, e;
    struct consumer c = {.auto_commit = true};

    start_server(server, "[]", &direct, &e);
    create_stream(&direct, "race", 1);
    put_records(&direct, "race", 0, 20);

    struct reader_config cfg = reader_config(&e, "race");
    cfg.shard_sync_interval_s = 1;
    consumer_start(&c, &e, &cfg, NULL, 0);
    WAIT_FOR(&e, c.records >= 20 && reader_caught_up(c.rd));
    uint64_t idle_polls = shard_calls(c.rd, SHARD0) + 3;
    WAIT_FOR(&e, shard_calls(c.rd, SHARD0) >= idle_polls);
    ASSERT_EQ(c.batch_count, 1);

    split_shard_in_half(&direct, "race", SHARD0);
    put_records(&direct, "race", 20, 40);
    WAIT_FOR(&e, c.records >= 60 && reader_caught_up(c.rd));
    WAIT_FOR(&e, !shard_info(c.rd, SHARD0).open);
    run_for(&e, 3 * POLL_MS);

    ASSERT_TRUE(c.fatal == NULL);
    check_records(&c, 0, 60);
    ASSERT_EQ(reader_shard_count(c.rd), 3);
    ASSERT_TRUE(shard_info(c.rd, SHARD0).finished);
    long end = end_batch_of(&c, SHARD0);
    ASSERT_TRUE(end >= 0);
    const char *children[] = {SHARD1, SHARD2};
    for (size_t i = 0; i < 2; i++) {
        ASSERT_TRUE(shard_records(&c, children[i]) > 0);
        ASSERT_TRUE(first_batch_of(&c, children[i]) > end);
        ASSERT_TRUE(shard_info(c.rd, children[i]).open);
        expect_first_iterator(children[i], "TRIM_HORIZON");
    }

    consumer_finish(&c, &e);
    env_close(&e);
    env_close(&direct);
}

TEST(reshard_split_while_idle_kinesalite)
{
    split_while_idle("kinesalite");
}

TEST(reshard_split_while_idle_kinesis_local)
{
    split_while_idle("kinesis-local");
}
