/*
 * The batch pipeline against a real SQLite file and the real aggregator:
 * what one committed batch leaves in the store, what it hands to the
 * publisher, and that a restart continues byte for byte.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "daemon/daemon.h"
#include "store/idempotency.h"
#include "tests/testlib.h"

struct captured {
    int64_t id;
    char *topic;
    char *payload;
};

struct harness {
    uv_loop_t loop;
    struct podium_config cfg;
    struct store *store;
    struct pipeline *pl;
    struct captured msgs[4096];
    size_t msg_count;
    size_t committed;
    char fatal[512];
    uint64_t next_seq;
};

static void on_committed(void *arg, const char *shard_id)
{
    struct harness *h = arg;
    (void)shard_id;
    h->committed++;
}

static void on_message(void *arg, int64_t id, const char *topic,
                       const char *payload, size_t len)
{
    struct harness *h = arg;
    ASSERT_TRUE(h->msg_count < 4096);
    h->msgs[h->msg_count].id = id;
    h->msgs[h->msg_count].topic = strdup(topic);
    h->msgs[h->msg_count].payload = strndup(payload, len);
    h->msg_count++;
}

static void on_fatal(void *arg, const char *message)
{
    struct harness *h = arg;
    snprintf(h->fatal, sizeof h->fatal, "%s", message);
}

static void harness_open(struct harness *h, const char *db,
                         const char *const *sets, size_t set_count)
{
    char err[512];
    char *env[] = {NULL};
    struct pipeline_hooks hooks = {h, on_committed, on_message, on_fatal, NULL};

    ASSERT_EQ(uv_loop_init(&h->loop), 0);
    if (cfg_load(&h->cfg, NULL, false, env, sets, set_count, err, sizeof err) !=
        0)
        test_fail(__FILE__, __LINE__, "config: %s", err);
    if (store_open(db, &h->store, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "store: %s", err);
    struct idem_options opts = {h->cfg.idempotency_expiry_s,
                                h->cfg.idempotency_in_progress_timeout_ms,
                                (size_t)h->cfg.idempotency_cache_size};
    static const uint8_t owner[IDEM_OWNER_LEN] = {'p', 'i', 'p', 'e'};
    if (store_open_idempotency(h->store, &opts, owner, err, sizeof err))
        test_fail(__FILE__, __LINE__, "idempotency: %s", err);
    h->pl = pipeline_new(&h->loop, h->store, &h->cfg, &hooks);
    ASSERT_TRUE(h->pl != NULL);
    ASSERT_EQ(pipeline_restore(h->pl), 0);
}

static void harness_close(struct harness *h)
{
    ASSERT_EQ(uv_run(&h->loop, UV_RUN_DEFAULT), 0);
    pipeline_free(h->pl);
    store_close(h->store);
    cfg_free(&h->cfg);
    ASSERT_EQ(uv_loop_close(&h->loop), 0);
    for (size_t i = 0; i < h->msg_count; i++) {
        free(h->msgs[i].topic);
        free(h->msgs[i].payload);
    }
    h->msg_count = 0;
}

/* Run the loop until every queued job committed. */
static void drain(struct harness *h)
{
    while (!pipeline_idle(h->pl))
        uv_run(&h->loop, UV_RUN_ONCE);
    ASSERT_STR_EQ(h->fatal, "");
}

static const char *telemetry(char *buf, size_t n, const char *uuid, int racer,
                             int second, const char *cadence,
                             const char *resistance)
{
    snprintf(
        buf, n,
        "{\"uuid\":\"%s\",\"event\":\"update\",\"deviceTimestamp\":%" PRId64
        ",\"second\":%d,\"raceId\":\"R-7\",\"name\":\"Racer "
        "%d\",\"racerId\":\"rc-%d\",\"classId\":\"B\",\"cadence\":%s,"
        "\"resistance\":%s}",
        uuid, (int64_t)1767225600000 + second * 1000, second, racer, racer,
        cadence, resistance);
    return buf;
}

static void add(struct harness *h, struct shard_batch *b, const char *data,
                int64_t arrival_ms)
{
    char seq[64];
    snprintf(seq, sizeof seq, "49%054" PRIu64, ++h->next_seq);
    ASSERT_EQ(shard_batch_add(b, data, strlen(data), seq, 0, arrival_ms, "pk"),
              0);
}

static int64_t count_rows(struct harness *h,
                          int (*fn)(struct store *, int64_t *))
{
    int64_t n = -1;
    ASSERT_EQ(fn(h->store, &n), 0);
    return n;
}

TEST(pipeline_batch_commits_everything)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    struct shard_batch *b = shard_batch_new("shardId-000000000000");
    add(&h, b, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
        1767225601100);
    add(&h, b, telemetry(buf, sizeof buf, "u-2", 12, 1, "80", "10"),
        1767225601200);
    add(&h, b, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
        1767225601300); /* duplicate uuid, same payload */
    add(&h, b, "not json", 1767225601400);
    pipeline_submit_batch(h.pl, b);
    drain(&h);

    ASSERT_EQ(h.committed, 1);
    ASSERT_EQ(count_rows(&h, store_sample_count), 2);
    ASSERT_EQ(count_rows(&h, store_dead_letter_count), 1);
    const struct pipeline_counters *c = pipeline_counters(h.pl);
    ASSERT_EQ(c->records_read, 4);
    ASSERT_EQ(c->records_applied, 2);
    ASSERT_EQ(c->duplicates, 1);
    ASSERT_EQ(c->rejected[AGG_REJECT_NOT_JSON], 1);
    harness_close(&h);
}

TEST(pipeline_validation_conflict_not_applied)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    struct shard_batch *b = shard_batch_new("shardId-000000000000");
    add(&h, b, telemetry(buf, sizeof buf, "u-0901", 11, 9, "90", "12.5"),
        1767225609100);
    add(&h, b, telemetry(buf, sizeof buf, "u-0901", 11, 9, "91", "12.5"),
        1767225609200);
    pipeline_submit_batch(h.pl, b);
    drain(&h);

    ASSERT_EQ(count_rows(&h, store_sample_count), 1);
    ASSERT_EQ(count_rows(&h, store_dead_letter_count), 1);
    ASSERT_EQ(pipeline_counters(h.pl)->validation_conflicts, 1);
    harness_close(&h);
}

TEST(pipeline_reordered_keys_are_duplicates)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    struct shard_batch *b = shard_batch_new("shardId-000000000000");
    add(&h, b, telemetry(buf, sizeof buf, "u-0901", 11, 9, "90", "12.5"),
        1767225609100);
    /* The same record with other key order, number forms and spacing. */
    add(&h, b,
        "{ \"resistance\" : 12.50, \"cadence\" : 9.0e1, \"classId\":\"B\","
        "\"racerId\":\"rc-11\",\"name\":\"Racer 11\",\"raceId\":\"R-7\","
        "\"second\":9,\"deviceTimestamp\":1767225609000,"
        "\"event\":\"update\",\"uuid\":\"u-0901\" }",
        1767225609200);
    pipeline_submit_batch(h.pl, b);
    drain(&h);

    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 1);
    ASSERT_EQ(pipeline_counters(h.pl)->validation_conflicts, 0);
    ASSERT_EQ(count_rows(&h, store_dead_letter_count), 0);
    harness_close(&h);
}

/* Feed seconds 1..n for three riders, one batch per second. */
static void feed_seconds(struct harness *h, int from, int to)
{
    char buf[512], uuid[32], cad[16];
    for (int s = from; s <= to; s++) {
        struct shard_batch *b = shard_batch_new("shardId-000000000000");
        for (int racer = 11; racer <= 13; racer++) {
            snprintf(uuid, sizeof uuid, "u-%d-%d", racer, s);
            snprintf(cad, sizeof cad, "%d.%d", 60 + racer, s % 10);
            add(h, b, telemetry(buf, sizeof buf, uuid, racer, s, cad, "12.1"),
                1767225600000 + s * 1000 + 100);
        }
        pipeline_submit_batch(h->pl, b);
        drain(h);
    }
}

static char *joined_messages(struct harness *h)
{
    size_t total = 1;
    for (size_t i = 0; i < h->msg_count; i++)
        total += strlen(h->msgs[i].topic) + strlen(h->msgs[i].payload) + 2;
    char *out = calloc(1, total);
    for (size_t i = 0; i < h->msg_count; i++) {
        strcat(out, h->msgs[i].topic);
        strcat(out, " ");
        strcat(out, h->msgs[i].payload);
        strcat(out, "\n");
    }
    return out;
}

TEST(pipeline_restart_continues_identically)
{
    struct harness h = {0};
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/a.db", test_tmpdir());
    snprintf(b, sizeof b, "%s/b.db", test_tmpdir());

    /* Uninterrupted run. */
    harness_open(&h, a, NULL, 0);
    feed_seconds(&h, 1, 20);
    pipeline_submit_tick(h.pl, 1767225600000 + 40000);
    drain(&h);
    char *whole = joined_messages(&h);
    harness_close(&h);

    /* The same records with a restart after second 9. */
    h.next_seq = 0;
    harness_open(&h, b, NULL, 0);
    feed_seconds(&h, 1, 9);
    char *first = joined_messages(&h);
    harness_close(&h);
    harness_open(&h, b, NULL, 0);
    feed_seconds(&h, 10, 20);
    pipeline_submit_tick(h.pl, 1767225600000 + 40000);
    drain(&h);
    char *second = joined_messages(&h);
    harness_close(&h);

    char *both = calloc(1, strlen(first) + strlen(second) + 1);
    strcat(strcat(both, first), second);
    ASSERT_STR_EQ(both, whole);
    ASSERT_TRUE(strstr(whole, "\"second\":20,") != NULL);
    free(whole);
    free(first);
    free(second);
    free(both);
}

TEST(pipeline_ack_deletes_outbox_rows)
{
    struct harness h = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    feed_seconds(&h, 1, 5);
    int64_t before = count_rows(&h, store_outbox_count);
    ASSERT_TRUE(before > 0);
    ASSERT_EQ(before, h.msg_count);
    for (size_t i = 0; i < h.msg_count; i++)
        pipeline_ack(h.pl, h.msgs[i].id);
    pipeline_flush_acks(h.pl);
    drain(&h);
    ASSERT_EQ(count_rows(&h, store_outbox_count), 0);
    harness_close(&h);
}

struct found_checkpoint {
    int count;
    bool finished;
    char seq[160];
};

static int find_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    struct found_checkpoint *f = arg;
    f->count++;
    f->finished = cp->finished;
    snprintf(f->seq, sizeof f->seq, "%s", cp->seq ? cp->seq : "");
    return 0;
}

TEST(pipeline_checkpoint_marks_shard_end)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    struct shard_batch *b = shard_batch_new("shardId-000000000001");
    add(&h, b, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
        1767225601100);
    b->shard_end = true;
    pipeline_submit_batch(h.pl, b);
    drain(&h);

    struct found_checkpoint found = {0};
    ASSERT_EQ(store_checkpoints_load(h.store, find_checkpoint, &found), 0);
    ASSERT_EQ(found.count, 1);
    ASSERT_TRUE(found.finished);
    ASSERT_STR_EQ(found.seq, "49000000000000000000000000000000000000000000"
                             "000000000001");
    harness_close(&h);
}

/* ---- idempotency through the pipeline ------------------------------- */

static void submit_one(struct harness *h, const char *data, int64_t arrival)
{
    struct shard_batch *b = shard_batch_new("shardId-000000000000");
    add(h, b, data, arrival);
    pipeline_submit_batch(h->pl, b);
    drain(h);
}

static int64_t dead_letters(struct harness *h)
{
    return count_rows(h, store_dead_letter_count);
}

TEST(pipeline_nul_in_uuid_never_collides)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    /* A NUL inside an id is rejected; the key that only looks like its
     * prefix is a record of its own, applied and not a duplicate. */
    submit_one(&h,
               telemetry(buf, sizeof buf, "u-1302\\u0000a", 11, 13, "80", "12"),
               1767225613100);
    submit_one(&h, telemetry(buf, sizeof buf, "u-1302", 12, 13, "85", "12"),
               1767225613200);

    ASSERT_EQ(dead_letters(&h), 1);
    ASSERT_EQ(pipeline_counters(h.pl)->rejected[AGG_REJECT_BAD_ID], 1);
    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 0);
    ASSERT_EQ(count_rows(&h, store_sample_count), 1);
    harness_close(&h);
}

TEST(pipeline_duplicate_object_keys_rejected)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);

    /* Two uuids in one record: rejected, so it is neither deduplicated as
     * u-1402 nor aggregated as u-1403. */
    submit_one(&h,
               "{\"uuid\":\"u-1402\",\"uuid\":\"u-1403\",\"event\":\"update\","
               "\"deviceTimestamp\":1767225614000,\"second\":14,"
               "\"raceId\":\"R-7\",\"name\":\"Racer 12\",\"racerId\":\"rc-12\","
               "\"classId\":\"B\",\"cadence\":80,\"resistance\":12}",
               1767225614100);
    submit_one(&h, telemetry(buf, sizeof buf, "u-1403", 12, 14, "81", "12"),
               1767225614200);

    ASSERT_EQ(pipeline_counters(h.pl)->rejected[AGG_REJECT_DUPLICATE_KEY], 1);
    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 0);
    ASSERT_EQ(count_rows(&h, store_sample_count), 1);
    harness_close(&h);
}

TEST(pipeline_missing_key_processed)
{
    struct harness h = {0};
    char path[4096], buf[512];
    const char *sets[] = {"idempotency.key=deviceId"};
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, sets, 1);

    /* No shared row for a missing key: each record is applied on its own
     * and only the one-sample-per-second rule keeps the copy harmless. */
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100);
    submit_one(&h, telemetry(buf, sizeof buf, "u-2", 12, 1, "80", "12"),
               1767225601200);
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601300);

    const struct pipeline_counters *c = pipeline_counters(h.pl);
    ASSERT_EQ(c->missing_key_processed, 3);
    ASSERT_EQ(c->duplicates, 0);
    ASSERT_EQ(c->outcomes[AGG_UNCHANGED], 1);
    ASSERT_EQ(count_rows(&h, store_sample_count), 2);
    harness_close(&h);
}

TEST(pipeline_missing_key_rejected)
{
    struct harness h = {0};
    char path[4096], buf[512];
    const char *sets[] = {"idempotency.key=deviceId",
                          "idempotency.missing_key=reject"};
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, sets, 2);

    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100);

    ASSERT_EQ(pipeline_counters(h.pl)->missing_key_rejected, 1);
    ASSERT_EQ(dead_letters(&h), 1);
    ASSERT_EQ(count_rows(&h, store_sample_count), 0);
    harness_close(&h);
}

TEST(pipeline_multiselect_key_per_race)
{
    struct harness h = {0};
    char path[4096];
    const char *sets[] = {"idempotency.key=[raceId, uuid]"};
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, sets, 1);

    /* The same uuid in two races is two keys. */
    submit_one(&h,
               "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":"
               "1767225601000,\"second\":1,\"raceId\":1,\"name\":\"A\","
               "\"racerId\":1,\"classId\":1,\"cadence\":90,\"resistance\":12}",
               1767225601100);
    submit_one(&h,
               "{\"uuid\":\"u-1\",\"event\":\"update\",\"deviceTimestamp\":"
               "1767225601000,\"second\":1,\"raceId\":2,\"name\":\"A\","
               "\"racerId\":1,\"classId\":1,\"cadence\":90,\"resistance\":12}",
               1767225601200);

    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 0);
    ASSERT_EQ(pipeline_counters(h.pl)->validation_conflicts, 0);
    ASSERT_EQ(count_rows(&h, store_sample_count), 2);
    harness_close(&h);
}

TEST(pipeline_validation_subset_of_fields)
{
    struct harness h = {0};
    char path[4096], buf[512];
    const char *sets[] = {"idempotency.validation=[cadence, resistance]"};
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, sets, 1);

    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100);
    /* Another name, same validated fields: a duplicate. */
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 19, 1, "90.0", "12"),
               1767225601200);
    /* Another cadence: a conflict. */
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "91", "12"),
               1767225601300);

    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 1);
    ASSERT_EQ(pipeline_counters(h.pl)->validation_conflicts, 1);
    ASSERT_EQ(count_rows(&h, store_sample_count), 1);
    harness_close(&h);
}

TEST(pipeline_duplicate_found_after_restart)
{
    struct harness h = {0};
    char path[4096], buf[512];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());

    harness_open(&h, path, NULL, 0);
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100);
    harness_close(&h);

    harness_open(&h, path, NULL, 0);
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100 + 3599000);
    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 1);
    harness_close(&h);
}

TEST(pipeline_key_expires_by_stream_time)
{
    struct harness h = {0};
    char path[4096], buf[512];
    const char *sets[] = {"idempotency.expiry_s=60"};
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, sets, 1);

    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100);
    /* After the expiry the key is new again; the sample rule still keeps
     * the redelivered record from counting twice. */
    submit_one(&h, telemetry(buf, sizeof buf, "u-1", 11, 1, "90", "12"),
               1767225601100 + 61000);

    const struct pipeline_counters *c = pipeline_counters(h.pl);
    ASSERT_EQ(c->duplicates, 0);
    ASSERT_EQ(c->outcomes[AGG_UNCHANGED], 1);
    ASSERT_EQ(count_rows(&h, store_sample_count), 1);
    harness_close(&h);
}
