/*
 * The batch pipeline against a real SQLite file and the real aggregator:
 * what one committed batch leaves in the store, what it hands to the
 * publisher, and that a restart continues byte for byte. The checkpoint
 * cases kill a pipeline inside a batch and check that the restart resumes
 * from the last committed batch and that a checkpoint never moves back.
 */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>
#include <uv.h>

#include "common/log.h"
#include "common/seqnum.h"
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
    /* With track_checkpoints, the stored checkpoint of the shard at each
     * batch_committed call, in call order. */
    bool track_checkpoints;
    char seen[8][SEQNUM_MAX_DIGITS + 1];
    size_t seen_count;
};

/* The stored checkpoint of one shard. */
struct shard_checkpoint {
    const char *shard_id;
    bool found;
    char seq[SEQNUM_MAX_DIGITS + 1]; /* empty when the row has no seq */
};

static int match_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    struct shard_checkpoint *out = arg;
    if (strcmp(cp->shard_id, out->shard_id) != 0)
        return 0;
    out->found = true;
    snprintf(out->seq, sizeof out->seq, "%s", cp->seq ? cp->seq : "");
    return 0;
}

static struct shard_checkpoint read_checkpoint(struct store *st,
                                               const char *shard_id)
{
    struct shard_checkpoint cp = {.shard_id = shard_id};
    ASSERT_EQ(store_checkpoints_load(st, match_checkpoint, &cp), 0);
    return cp;
}

static void on_committed(void *arg, const char *shard_id)
{
    struct harness *h = arg;
    h->committed++;
    /* The pipeline calls this between jobs, so the store is free to read. */
    if (h->track_checkpoints && h->seen_count < 8) {
        struct shard_checkpoint cp = read_checkpoint(h->store, shard_id);
        memcpy(h->seen[h->seen_count++], cp.seq, sizeof cp.seq);
    }
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

static const char *telemetry_event(char *buf, size_t n, const char *uuid,
                                   const char *event, int racer, int second,
                                   const char *cadence, const char *resistance)
{
    snprintf(buf, n,
             "{\"uuid\":\"%s\",\"event\":\"%s\",\"deviceTimestamp\":%" PRId64
             ",\"second\":%d,\"raceId\":\"R-7\",\"name\":\"Racer "
             "%d\",\"racerId\":\"rc-%d\",\"classId\":\"B\",\"cadence\":%s,"
             "\"resistance\":%s}",
             uuid, event, (int64_t)1767225600000 + second * 1000, second, racer,
             racer, cadence, resistance);
    return buf;
}

static const char *telemetry(char *buf, size_t n, const char *uuid, int racer,
                             int second, const char *cadence,
                             const char *resistance)
{
    return telemetry_event(buf, n, uuid, "update", racer, second, cadence,
                           resistance);
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

/*
 * The first rejected record is logged without a count of lines left out,
 * because the rate limit has left none out yet.
 */
TEST(pipeline_first_reject_log_line)
{
    struct harness h = {0};
    char path[4096], log_path[4096];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    snprintf(log_path, sizeof log_path, "%s/pipeline.log", test_tmpdir());
    FILE *log_file = fopen(log_path, "w+");
    ASSERT_TRUE(log_file != NULL);
    log_set_fd(fileno(log_file));
    harness_open(&h, path, NULL, 0);

    struct shard_batch *b = shard_batch_new("shardId-000000000000");
    add(&h, b, "not json", 1767225601400);
    pipeline_submit_batch(h.pl, b);
    drain(&h);
    harness_close(&h);
    log_set_fd(2);

    char text[8192];
    rewind(log_file);
    size_t n = fread(text, 1, sizeof text - 1, log_file);
    text[n] = '\0';
    fclose(log_file);
    ASSERT_TRUE(strstr(text, "rejected record: ") != NULL);
    ASSERT_TRUE(strstr(text, "similar lines not logged") == NULL);
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

/* Queue one batch per second from..to of three riders, without running
 * the loop. */
static void queue_seconds(struct harness *h, int from, int to)
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
    }
}

/* Feed seconds from..to for three riders, one committed batch per second. */
static void feed_seconds(struct harness *h, int from, int to)
{
    for (int s = from; s <= to; s++) {
        queue_seconds(h, s, s);
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

/*
 * Feed seconds 1..20 once without a stop and once with a restart after
 * second 9, each into a fresh store in tmpdir named by prefix, and check
 * that both publish the same messages. Returns them (owned).
 */
static char *expect_restart_identical(const char *prefix,
                                      const char *const *sets, size_t set_count)
{
    struct harness h = {0};
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/%s-a.db", test_tmpdir(), prefix);
    snprintf(b, sizeof b, "%s/%s-b.db", test_tmpdir(), prefix);

    /* Uninterrupted run. */
    harness_open(&h, a, sets, set_count);
    feed_seconds(&h, 1, 20);
    pipeline_submit_tick(h.pl, 1767225600000 + 40000);
    drain(&h);
    char *whole = joined_messages(&h);
    harness_close(&h);

    /* The same records with a restart after second 9. */
    h.next_seq = 0;
    harness_open(&h, b, sets, set_count);
    feed_seconds(&h, 1, 9);
    char *first = joined_messages(&h);
    harness_close(&h);
    harness_open(&h, b, sets, set_count);
    feed_seconds(&h, 10, 20);
    pipeline_submit_tick(h.pl, 1767225600000 + 40000);
    drain(&h);
    char *second = joined_messages(&h);
    harness_close(&h);

    char *both = calloc(1, strlen(first) + strlen(second) + 1);
    strcat(strcat(both, first), second);
    ASSERT_STR_EQ(both, whole);
    ASSERT_TRUE(strstr(whole, "\"second\":20,") != NULL);
    free(first);
    free(second);
    free(both);
    return whole;
}

TEST(pipeline_restart_continues_identically)
{
    free(expect_restart_identical("plain", NULL, 0));
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

/* ---- checkpoints against crashes ------------------------------------ */

/*
 * A consumer that saves the newest fetched sequence number while records
 * still wait in memory loses those records in a crash, and one whose
 * batches complete out of order can move its checkpoint back and apply
 * records twice. The pipeline writes a batch's records, their effects and
 * the shard checkpoint in one transaction, one job at a time, and the store
 * rejects a checkpoint older than the stored one. These cases kill a real
 * pipeline inside a batch and restart over the same SQLite file.
 */

#define CP_SHARD "shardId-000000000003"

/* Kinesis-like sequence numbers of 56 digits: a fixed prefix of 52 digits
 * and the 4-digit tail that the tests name them by. */
#define SEQ_AT(tail) "4965485271849325706284519103746811023547910194620177" tail

/* 10^55 - 1 and 10^55, the last 55-digit and the first 56-digit sequence
 * number. As strings the 55-digit one sorts after the 56-digit one. */
#define SEQ_55 "9999999999999999999999999999999999999999999999999999999"
#define SEQ_56                                                                 \
    "1000000000000000000000000000000000000000000000000000000"                  \
    "0"

struct test_record {
    const char *uuid;
    int racer;
    int second;
    const char *cadence;
    const char *resistance;
    const char *seq;
};

/* One batch of five records of rider telemetry over two seconds. */
static const struct test_record batch_0601[] = {
    {"u-0601", 61, 6, "91.5", "12.1", SEQ_AT("0701")},
    {"u-0602", 62, 6, "88", "13", SEQ_AT("0702")},
    {"u-0603", 63, 6, "95.25", "11.75", SEQ_AT("0703")},
    {"u-0604", 61, 7, "92", "12.2", SEQ_AT("0704")},
    {"u-0605", 62, 7, "87.5", "13.1", SEQ_AT("0705")},
};

/* Batches of one shard, read one after the other. */
static const struct test_record batch_0801[] = {
    {"u-0801", 81, 8, "90", "12", SEQ_AT("0801")},
    {"u-0802", 82, 8, "85.5", "12.5", SEQ_AT("0802")},
    {"u-0803", 83, 8, "79", "14", SEQ_AT("0803")},
};
static const struct test_record batch_0804[] = {
    {"u-0804", 81, 9, "91", "12", SEQ_AT("0804")},
    {"u-0805", 82, 9, "86", "12.5", SEQ_AT("0805")},
    {"u-0806", 83, 9, "80.25", "14", SEQ_AT("0806")},
};
static const struct test_record batch_0807[] = {
    {"u-0807", 81, 10, "92", "12", SEQ_AT("0807")},
    {"u-0808", 82, 10, "86.5", "12.5", SEQ_AT("0808")},
    {"u-0809", 83, 10, "81", "14", SEQ_AT("0809")},
};

#define COUNT_OF(a) (sizeof(a) / sizeof(a)[0])

/* A batch of CP_SHARD with the given records, each at its own seq. */
static struct shard_batch *make_batch(const struct test_record *records,
                                      size_t count)
{
    char buf[512];
    struct shard_batch *b = shard_batch_new(CP_SHARD);
    ASSERT_TRUE(b != NULL);
    for (size_t i = 0; i < count; i++) {
        const struct test_record *r = &records[i];
        telemetry(buf, sizeof buf, r->uuid, r->racer, r->second, r->cadence,
                  r->resistance);
        int64_t arrival = 1767225600000 + r->second * 1000 + 100 + (int64_t)i;
        ASSERT_EQ(
            shard_batch_add(b, buf, strlen(buf), r->seq, 0, arrival, "pk"), 0);
    }
    return b;
}

/* Run the loop until the queue is empty after a job failed. */
static void drain_expecting_fatal(struct harness *h)
{
    while (!pipeline_idle(h->pl))
        uv_run(&h->loop, UV_RUN_ONCE);
    if (h->fatal[0] == '\0')
        test_fail(__FILE__, __LINE__,
                  "expected the last job to fail, but every job committed");
}

/* ---- stopping a child inside its transaction ------------------------ */

/*
 * In WAL mode, once BEGIN IMMEDIATE has the write lock, neither the writes
 * nor the COMMIT wait for other connections. So no lock held by another
 * process can stop the child half way through a batch. The child instead
 * watches its own store connection through the SQLite trace API, installed
 * on every connection by sqlite3_auto_extension(). Completing the
 * idempotency claim is the last write for a new record, and a deferred
 * claim's row may wait for the end of the batch. After the statement that
 * completes the stop_after-th claim, the worker thread reports whether a
 * transaction is open and waits there to be killed. The pipeline itself runs
 * unchanged.
 */
static struct {
    int fd;
    int completed;
    int stop_after;
} child_stop;

static int stop_after_completions(unsigned type, void *ctx, void *p, void *x)
{
    sqlite3_stmt *stmt = p;
    /* A claim completes by an update, or, when the claim was deferred, by
     * inserting its row completed, together with the rows of other
     * deferred claims: count the rows that the statement wrote. */
    static const char complete[] = "UPDATE idem_rows SET status = 2,";
    static const char insert_completed[] =
        "INSERT INTO idem_rows (id, key, status, expiry_s, owner,";
    const char *sql = sqlite3_sql(stmt);
    (void)type;
    (void)ctx;
    (void)x;

    if (strncmp(sql, complete, sizeof complete - 1) != 0 &&
        strncmp(sql, insert_completed, sizeof insert_completed - 1) != 0)
        return 0;
    child_stop.completed += sqlite3_changes(sqlite3_db_handle(stmt));
    if (child_stop.completed < child_stop.stop_after)
        return 0;
    /* 't' reports an open transaction, the state the parent expects.
     * 'a' (autocommit) would mean there is nothing left to crash. */
    char state = sqlite3_get_autocommit(sqlite3_db_handle(stmt)) ? 'a' : 't';
    if (write(child_stop.fd, &state, 1) != 1)
        _exit(4);
    for (;;)
        pause();
}

static int trace_connection(sqlite3 *db, const char **err,
                            const struct sqlite3_api_routines *api)
{
    (void)err;
    (void)api;
    return sqlite3_trace_v2(db, SQLITE_TRACE_PROFILE, stop_after_completions,
                            NULL);
}

/*
 * Child process: open a pipeline over path, queue the batches and stop
 * inside the job that completes the stop_after-th record. It writes 'd' and
 * exits when the batches commit without reaching that record.
 */
static void child_run_batches(const char *path,
                              const struct test_record *const *batches,
                              const size_t *counts, size_t batch_count,
                              int stop_after, int fd)
{
    struct harness h = {0};

    /* A failed assertion calls exit(), whose handler would otherwise
     * delete the directory that the parent still needs. */
    setenv("PODIUM_KEEP_TMP", "1", 1);
    child_stop.fd = fd;
    child_stop.stop_after = stop_after;
    if (sqlite3_auto_extension((void (*)(void))trace_connection) != SQLITE_OK)
        _exit(3);

    harness_open(&h, path, NULL, 0);
    for (size_t i = 0; i < batch_count; i++)
        pipeline_submit_batch(h.pl, make_batch(batches[i], counts[i]));
    drain(&h);
    if (write(fd, "d", 1) != 1)
        _exit(4);
    _exit(0);
}

/*
 * Fork a child that runs the batches through a pipeline over path, wait
 * until it stops inside the transaction of record stop_after (1-based,
 * counted over all batches), and kill it with SIGKILL.
 */
static void kill_inside_batch(const char *path,
                              const struct test_record *const *batches,
                              const size_t *counts, size_t batch_count,
                              int stop_after)
{
    int fds[2];
    int status = 0;
    char state = 0;

    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        child_run_batches(path, batches, counts, batch_count, stop_after,
                          fds[1]);
    }
    close(fds[1]);

    ssize_t n = read(fds[0], &state, 1);
    close(fds[0]);
    if (n != 1 || state != 't') {
        waitpid(pid, &status, 0);
        test_fail(__FILE__, __LINE__,
                  "the child did not stop inside a transaction at record %d "
                  "(reported '%c', exit status %d)",
                  stop_after, n == 1 ? state : '-', status);
    }

    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_EQ(WTERMSIG(status), SIGKILL);
}

/* ---- store contents as text ----------------------------------------- */

static int dump_sample(void *arg, const struct store_sample *s)
{
    FILE *out = arg;
    fprintf(out, "sample %s %s %" PRId32 " %s ", s->race_id, s->racer_id,
            s->second, s->class_id);
    fwrite(s->name, 1, s->name_len, out);
    fputc(' ', out);
    fwrite(s->uuid, 1, s->uuid_len, out);
    fprintf(out,
            " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64
            " %s %s %d\n",
            s->device_ts_ms, s->arrival_ms, s->cadence4, s->resistance4,
            s->output4, s->cadence_exact, s->resistance_exact, (int)s->final);
    return 0;
}

static int dump_state(void *arg, const char *key, const char *value,
                      size_t value_len)
{
    FILE *out = arg;
    fprintf(out, "race %s ", key);
    fwrite(value, 1, value_len, out);
    fputc('\n', out);
    return 0;
}

static int dump_outbox(void *arg, int64_t id, const char *topic,
                       const void *payload, size_t payload_len)
{
    FILE *out = arg;
    fprintf(out, "outbox %" PRId64 " %s ", id, topic);
    fwrite(payload, 1, payload_len, out);
    fputc('\n', out);
    return 0;
}

static int dump_class_state(void *arg, const char *key, const char *value,
                            size_t value_len)
{
    FILE *out = arg;
    fprintf(out, "class %s ", key);
    fwrite(value, 1, value_len, out);
    fputc('\n', out);
    return 0;
}

static int dump_history(void *arg, const struct store_history_row *row)
{
    FILE *out = arg;
    fprintf(out, "history %s %s %" PRId32 " %" PRId64 " %s\n", row->class_id,
            row->racer_id, row->second, row->output4, row->race_id);
    return 0;
}

static int dump_last_message(void *arg, int32_t revision, const char *payload,
                             size_t len)
{
    FILE *out = arg;
    fprintf(out, "last %" PRId32 " ", revision);
    fwrite(payload, 1, len, out);
    fputc('\n', out);
    return 0;
}

static int dump_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    FILE *out = arg;
    fprintf(out, "checkpoint %s %s %" PRId64 " %d\n", cp->shard_id,
            cp->seq ? cp->seq : "-", cp->subseq, (int)cp->finished);
    return 0;
}

/*
 * Everything a restart rebuilds from and everything the publisher sends:
 * samples, race and class states, the history and last messages of race
 * R-7 and class B, outbox rows, checkpoints, the stream time and the
 * number of dead letters. Returns a malloc'ed string.
 */
static char *dump_store(struct harness *h)
{
    char *text = NULL;
    size_t len = 0;
    char stream_time[32] = "";
    FILE *out = open_memstream(&text, &len);
    ASSERT_TRUE(out != NULL);

    ASSERT_EQ(store_samples_load(h->store, dump_sample, out), 0);
    ASSERT_EQ(store_state_load(h->store, "race", dump_state, out), 0);
    ASSERT_EQ(store_state_load(h->store, "class", dump_class_state, out), 0);
    ASSERT_TRUE(
        store_history_load(h->store, "\"B\"", NULL, 0, dump_history, out) == 0);
    ASSERT_TRUE(store_last_message_get(h->store, "results", "\"R-7\"",
                                       dump_last_message, out) >= 0);
    ASSERT_TRUE(store_last_message_get(h->store, "class-leaderboard", "\"B\"",
                                       dump_last_message, out) >= 0);
    ASSERT_EQ(store_outbox_load(h->store, 0, 100000, dump_outbox, out), 0);
    ASSERT_EQ(store_checkpoints_load(h->store, dump_checkpoint, out), 0);
    ASSERT_EQ(store_meta_get(h->store, "stream_time_ms", stream_time,
                             sizeof stream_time),
              1);
    fprintf(out, "stream_time_ms %s\n", stream_time);
    fprintf(out, "dead_letters %" PRId64 "\n",
            count_rows(h, store_dead_letter_count));
    ASSERT_EQ(fclose(out), 0);
    return text;
}

struct uuid_count {
    const char *uuid;
    int samples;
};

static int count_uuid(void *arg, const struct store_sample *s)
{
    struct uuid_count *c = arg;
    if (s->uuid_len == strlen(c->uuid) &&
        memcmp(s->uuid, c->uuid, s->uuid_len) == 0)
        c->samples++;
    return 0;
}

static int samples_of(struct harness *h, const char *uuid)
{
    struct uuid_count c = {uuid, 0};
    ASSERT_EQ(store_samples_load(h->store, count_uuid, &c), 0);
    return c.samples;
}

static uint64_t idempotency_rows(struct harness *h)
{
    struct idem_stats stats;
    idem_stats(store_idempotency(h->store), &stats);
    return stats.rows;
}

/* ---- the cases -------------------------------------------------------- */

TEST(checkpoint_survives_kill_inside_batch)
{
    struct harness h = {0};
    char crashed[4096], clean[4096];
    const struct test_record *batches[] = {batch_0601};
    const size_t counts[] = {COUNT_OF(batch_0601)};
    snprintf(crashed, sizeof crashed, "%s/checkpoint-crashed.db",
             test_tmpdir());
    snprintf(clean, sizeof clean, "%s/checkpoint-clean.db", test_tmpdir());
    ASSERT_EQ(strlen(batch_0601[0].seq), 56);

    /* Killed after u-0601..u-0603 were applied, before the commit. */
    kill_inside_batch(crashed, batches, counts, 1, 3);

    /* Nothing of the batch survived: no checkpoint, so the reader starts
     * before u-0601 again, and no sample or claim that would make the
     * replay count the first three records as duplicates. */
    harness_open(&h, crashed, NULL, 0);
    ASSERT_FALSE(read_checkpoint(h.store, CP_SHARD).found);
    ASSERT_EQ(count_rows(&h, store_sample_count), 0);
    ASSERT_EQ(count_rows(&h, store_outbox_count), 0);
    ASSERT_EQ(idempotency_rows(&h), 0);

    /* The replay applies every record once. */
    pipeline_submit_batch(h.pl, make_batch(batch_0601, COUNT_OF(batch_0601)));
    drain(&h);
    const struct pipeline_counters *c = pipeline_counters(h.pl);
    ASSERT_EQ(c->records_applied, 5);
    ASSERT_EQ(c->duplicates, 0);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_AT("0705"));
    for (size_t i = 0; i < COUNT_OF(batch_0601); i++)
        ASSERT_EQ(samples_of(&h, batch_0601[i].uuid), 1);

    /* A second delivery of the same batch changes nothing. */
    pipeline_submit_batch(h.pl, make_batch(batch_0601, COUNT_OF(batch_0601)));
    drain(&h);
    ASSERT_EQ(c->records_applied, 5);
    ASSERT_EQ(c->duplicates, 5);
    ASSERT_EQ(count_rows(&h, store_sample_count), 5);

    pipeline_submit_close_all(h.pl);
    drain(&h);
    char *after_crash = joined_messages(&h);
    char *after_crash_store = dump_store(&h);
    harness_close(&h);

    /* The same batch in a run that never crashed. */
    harness_open(&h, clean, NULL, 0);
    pipeline_submit_batch(h.pl, make_batch(batch_0601, COUNT_OF(batch_0601)));
    pipeline_submit_close_all(h.pl);
    drain(&h);
    char *reference = joined_messages(&h);
    char *reference_store = dump_store(&h);
    harness_close(&h);

    ASSERT_TRUE(strstr(reference, "\"second\":7,") != NULL);
    ASSERT_STR_EQ(after_crash, reference);
    ASSERT_STR_EQ(after_crash_store, reference_store);
    free(after_crash);
    free(after_crash_store);
    free(reference);
    free(reference_store);
}

TEST(checkpoint_stays_at_last_committed_batch)
{
    struct harness h = {0};
    char path[4096];
    const struct test_record *batches[] = {batch_0801, batch_0804};
    const size_t counts[] = {COUNT_OF(batch_0801), COUNT_OF(batch_0804)};
    snprintf(path, sizeof path, "%s/checkpoint-two-batches.db", test_tmpdir());

    /* The first batch commits. The child dies after u-0805 was applied
     * inside the second batch's transaction. */
    kill_inside_batch(path, batches, counts, 2, 5);

    harness_open(&h, path, NULL, 0);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_AT("0803"));
    ASSERT_EQ(count_rows(&h, store_sample_count), 3);
    ASSERT_EQ(samples_of(&h, "u-0803"), 1);
    ASSERT_EQ(samples_of(&h, "u-0804"), 0);
    ASSERT_EQ(samples_of(&h, "u-0805"), 0);
    ASSERT_EQ(idempotency_rows(&h), 3);

    /* Reading on after u-0803 delivers the second batch again. */
    pipeline_submit_batch(h.pl, make_batch(batch_0804, COUNT_OF(batch_0804)));
    drain(&h);
    ASSERT_EQ(pipeline_counters(h.pl)->records_applied, 3);
    ASSERT_EQ(pipeline_counters(h.pl)->duplicates, 0);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_AT("0806"));
    ASSERT_EQ(count_rows(&h, store_sample_count), 6);
    harness_close(&h);
}

TEST(checkpoint_keeps_newer_after_older_batch)
{
    struct harness h = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/checkpoint-older.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);
    h.track_checkpoints = true;

    /* The first batch starts at once and the other two wait in the queue
     * together. Each commit still leaves the checkpoint of its own batch,
     * because jobs complete in submission order and no commit saves the
     * position of a batch still waiting. */
    pipeline_submit_batch(h.pl, make_batch(batch_0801, COUNT_OF(batch_0801)));
    pipeline_submit_batch(h.pl, make_batch(batch_0804, COUNT_OF(batch_0804)));
    pipeline_submit_batch(h.pl, make_batch(batch_0807, COUNT_OF(batch_0807)));
    drain(&h);
    ASSERT_EQ(h.seen_count, 3);
    ASSERT_STR_EQ(h.seen[0], SEQ_AT("0803"));
    ASSERT_STR_EQ(h.seen[1], SEQ_AT("0806"));
    ASSERT_STR_EQ(h.seen[2], SEQ_AT("0809"));

    /* An older batch once more, as an out-of-order completion would commit
     * it: the store rejects its older checkpoint, the whole job rolls back
     * and the pipeline stops. */
    pipeline_submit_batch(h.pl, make_batch(batch_0804, COUNT_OF(batch_0804)));
    drain_expecting_fatal(&h);
    ASSERT_TRUE(strstr(h.fatal, "older than the stored") != NULL);
    ASSERT_EQ(h.seen_count, 3);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_AT("0809"));
    ASSERT_EQ(count_rows(&h, store_sample_count), 9);
    harness_close(&h);

    /* The newer checkpoint is what a restart resumes from. */
    harness_open(&h, path, NULL, 0);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_AT("0809"));
    harness_close(&h);
}

/* Work of one job: one segment per batch, all of CP_SHARD. */
static struct pipeline_work *make_work(struct shard_batch *first,
                                       struct shard_batch *second)
{
    struct pipeline_work *work = calloc(1, sizeof *work);
    ASSERT_TRUE(work != NULL);
    work->segments = calloc(2, sizeof *work->segments);
    work->completed_shards = calloc(1, sizeof *work->completed_shards);
    ASSERT_TRUE(work->segments != NULL);
    ASSERT_TRUE(work->completed_shards != NULL);
    work->segments[0] = first;
    work->segments[1] = second;
    work->segment_count = 2;
    work->completed_shards[0] = strdup(CP_SHARD);
    work->completed_count = 1;
    return work;
}

TEST(checkpoint_compares_seqs_numerically)
{
    struct harness h = {0};
    char path[4096];
    const struct test_record at_55[] = {
        {"u-0991", 91, 9, "90", "12", SEQ_55},
    };
    const struct test_record at_56[] = {
        {"u-0992", 92, 9, "85", "12", SEQ_56},
    };
    snprintf(path, sizeof path, "%s/checkpoint-digits.db", test_tmpdir());
    ASSERT_EQ(strlen(SEQ_55), 55);
    ASSERT_EQ(strlen(SEQ_56), 56);
    harness_open(&h, path, NULL, 0);

    /* One job stores the 55-digit checkpoint and then the 56-digit one,
     * which is the later position although it sorts first as a string. */
    pipeline_submit_work(h.pl,
                         make_work(make_batch(at_55, 1), make_batch(at_56, 1)));
    drain(&h);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_56);
    ASSERT_EQ(count_rows(&h, store_sample_count), 2);

    /* The record at the 55-digit position delivered again must not move
     * the checkpoint back to it. */
    pipeline_submit_batch(h.pl, make_batch(at_55, 1));
    drain_expecting_fatal(&h);
    ASSERT_TRUE(strstr(h.fatal, "older than the stored") != NULL);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_56);
    harness_close(&h);

    harness_open(&h, path, NULL, 0);
    ASSERT_STR_EQ(read_checkpoint(h.store, CP_SHARD).seq, SEQ_56);
    ASSERT_EQ(count_rows(&h, store_sample_count), 2);
    harness_close(&h);
}

/* ---- results across a restart ------------------------------------------ */

/*
 * One batch per step of a race of three riders: seconds 1..8, every rider
 * sending final at second 8, then a late record that lowers rider 11's
 * second 7, then a tick that closes the race.
 */
static void feed_results_step(struct harness *h, int step)
{
    char buf[512], uuid[32], cad[16];
    struct shard_batch *b = shard_batch_new("shardId-000000000000");

    if (step <= 8) {
        for (int racer = 11; racer <= 13; racer++) {
            snprintf(uuid, sizeof uuid, "u-%d-%d", racer, step);
            snprintf(cad, sizeof cad, "%d.%d", 60 + racer, step);
            add(h, b,
                telemetry_event(buf, sizeof buf, uuid,
                                step == 8 ? "final" : "update", racer, step,
                                cad, "12.1"),
                1767225600000 + step * 1000 + 100);
        }
        pipeline_submit_batch(h->pl, b);
    } else if (step == 9) {
        /* The uuid sorts before "u-11-7" at the same deviceTimestamp, so
         * this conflicting record wins. */
        add(h, b, telemetry(buf, sizeof buf, "u-0", 11, 7, "1", "1"),
            1767225600000 + 9 * 1000 + 100);
        pipeline_submit_batch(h->pl, b);
    } else {
        shard_batch_free(b);
        pipeline_submit_tick(h->pl, 1767225600000 + 60000);
    }
    drain(h);
}

#define RESULTS_STEPS 10

TEST(pipeline_results_survive_restart)
{
    struct harness h = {0};
    char path[4096];

    /* Uninterrupted run. */
    snprintf(path, sizeof path, "%s/whole.db", test_tmpdir());
    harness_open(&h, path, NULL, 0);
    for (int step = 1; step <= RESULTS_STEPS; step++)
        feed_results_step(&h, step);
    char *whole = joined_messages(&h);
    char *whole_store = dump_store(&h);
    harness_close(&h);
    ASSERT_TRUE(strstr(whole, "podium/races/R-7/results {\"type\":\"results\","
                              "\"raceId\":\"R-7\",\"second\":8,"
                              "\"revision\":1,") != NULL);
    ASSERT_TRUE(strstr(whole, "podium/classes/B/leaderboard "
                              "{\"type\":\"class-leaderboard\","
                              "\"classId\":\"B\",\"revision\":1,") != NULL);
    ASSERT_TRUE(strstr(whole_store, "history \"B\" \"rc-11\" 7 ") != NULL);

    /* The same batches with a restart after each step. */
    for (int cut = 1; cut < RESULTS_STEPS; cut++) {
        fprintf(stderr, "restart after step %d\n", cut);
        snprintf(path, sizeof path, "%s/cut-%d.db", test_tmpdir(), cut);
        h.next_seq = 0;
        harness_open(&h, path, NULL, 0);
        for (int step = 1; step <= cut; step++)
            feed_results_step(&h, step);
        char *first = joined_messages(&h);
        harness_close(&h);
        harness_open(&h, path, NULL, 0);
        for (int step = cut + 1; step <= RESULTS_STEPS; step++)
            feed_results_step(&h, step);
        char *second = joined_messages(&h);
        char *store = dump_store(&h);
        harness_close(&h);

        char *both = calloc(1, strlen(first) + strlen(second) + 1);
        strcat(strcat(both, first), second);
        ASSERT_STR_EQ(both, whole);
        ASSERT_STR_EQ(store, whole_store);
        free(first);
        free(second);
        free(both);
        free(store);
    }
    free(whole);
    free(whole_store);
}

/* ---- rank ties through the pipeline ------------------------------------ */

/*
 * Race R-7, class B, seconds 1..3. rc-11 and rc-12 send the same values
 * every second and rc-13 higher ones; rc-14 sends cadence 0 and resistance
 * 0. Each output needs exact decimal arithmetic: in binary floating point
 * (60.05 + 35) x (12.1 + 65) / 100 comes out just below 73.28355 and
 * rounds to 73.2835 instead of 73.2836, and likewise for 60.35 with 12.3.
 * Every rider sends event "final" at second 3.
 */
static const struct tie_rider {
    int racer;
    const char *cadence[3];
    const char *resistance[3];
} tie_riders[] = {
    {11, {"60.05", "61", "60.35"}, {"12.1", "12.2", "12.3"}},
    {12, {"60.05", "61", "60.35"}, {"12.1", "12.2", "12.3"}},
    {13, {"90", "90", "90"}, {"20", "20", "20"}},
    {14, {"0", "0", "0"}, {"0", "0", "0"}},
};

#define TIE_RIDERS  COUNT_OF(tie_riders)
#define TIE_SECONDS 3
#define TIE_SHARD_A "shardId-000000000000"
#define TIE_SHARD_B "shardId-000000000001"

/* The record of tie_riders[rider] at second, arriving at the given offset
 * after the start of the second. */
static void tie_add(struct harness *h, struct shard_batch *b, size_t rider,
                    int second, int offset_ms)
{
    const struct tie_rider *t = &tie_riders[rider];
    char buf[512], uuid[32];

    snprintf(uuid, sizeof uuid, "u-%d-%d", t->racer, second);
    telemetry_event(buf, sizeof buf, uuid,
                    second == TIE_SECONDS ? "final" : "update", t->racer,
                    second, t->cadence[second - 1], t->resistance[second - 1]);
    add(h, b, buf, 1767225600000 + second * 1000 + offset_ms);
}

/* Order A: every record through one shard, one batch per second, riders
 * arriving in list order 100 ms apart. */
static void tie_deliver_one_shard(struct harness *h)
{
    for (int second = 1; second <= TIE_SECONDS; second++) {
        struct shard_batch *b = shard_batch_new(TIE_SHARD_A);
        for (size_t rider = 0; rider < TIE_RIDERS; rider++)
            tie_add(h, b, rider, second, 100 * (int)(rider + 1));
        pipeline_submit_batch(h->pl, b);
        drain(h);
    }
}

/*
 * Order B: the riders of each second arrive in reverse list order, with the
 * same four arrival times as in order A, alternating between two shards.
 * All three seconds form one job whose segments switch shard at every
 * record, as the merge builds them.
 */
static void tie_deliver_two_shards(struct harness *h)
{
    struct pipeline_work *work = calloc(1, sizeof *work);
    ASSERT_TRUE(work != NULL);
    work->segments = calloc(TIE_SECONDS * TIE_RIDERS, sizeof *work->segments);
    work->completed_shards = calloc(2, sizeof *work->completed_shards);
    ASSERT_TRUE(work->segments != NULL);
    ASSERT_TRUE(work->completed_shards != NULL);

    for (int second = 1; second <= TIE_SECONDS; second++) {
        for (size_t i = 0; i < TIE_RIDERS; i++) {
            size_t rider = TIE_RIDERS - 1 - i;
            struct shard_batch *b =
                shard_batch_new(i % 2 == 0 ? TIE_SHARD_B : TIE_SHARD_A);
            ASSERT_TRUE(b != NULL);
            tie_add(h, b, rider, second, 100 * (int)(i + 1));
            work->segments[work->segment_count++] = b;
        }
    }
    work->completed_shards[0] = strdup(TIE_SHARD_A);
    work->completed_shards[1] = strdup(TIE_SHARD_B);
    work->completed_count = 2;
    pipeline_submit_work(h->pl, work);
    drain(h);
}

/* The payload of the last message on topic whose payload contains part,
 * or NULL. */
static const char *last_payload(const struct harness *h, const char *topic,
                                const char *part)
{
    for (size_t i = h->msg_count; i > 0; i--) {
        const struct captured *m = &h->msgs[i - 1];
        if (strcmp(m->topic, topic) == 0 && strstr(m->payload, part) != NULL)
            return m->payload;
    }
    return NULL;
}

struct tie_run {
    char *messages; /* every message, "TOPIC PAYLOAD" lines */
    char *leaderboard;
    char *results;
    char *class_board;
};

static void tie_run(struct tie_run *run, const char *name,
                    void (*deliver)(struct harness *))
{
    struct harness h = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.db", test_tmpdir(), name);
    harness_open(&h, path, NULL, 0);

    deliver(&h);
    /* Idle closing publishes seconds 2 and 3. */
    pipeline_submit_tick(h.pl, 1767225600000 + 60000);
    drain(&h);

    ASSERT_EQ(pipeline_counters(h.pl)->records_applied,
              TIE_SECONDS * TIE_RIDERS);
    const char *board =
        last_payload(&h, "podium/races/R-7/leaderboard", "\"second\":3,");
    const char *results = last_payload(&h, "podium/races/R-7/results", "");
    const char *class_board =
        last_payload(&h, "podium/classes/B/leaderboard", "");
    ASSERT_TRUE(board != NULL);
    ASSERT_TRUE(results != NULL);
    ASSERT_TRUE(class_board != NULL);
    run->messages = joined_messages(&h);
    run->leaderboard = strdup(board);
    run->results = strdup(results);
    run->class_board = strdup(class_board);
    harness_close(&h);
}

static void tie_run_free(struct tie_run *run)
{
    free(run->messages);
    free(run->leaderboard);
    free(run->results);
    free(run->class_board);
}

/*
 * Totals at second 3: rc-13 3 x 106.25 = 318.75; rc-11 and rc-12
 * 73.2836 + 74.112 + 73.7056 = 221.1012; rc-14 3 x 22.75 = 68.25.
 */
#define TIE_ENTRY(rank, racer, cadence, resistance, output, total)             \
    "{\"rank\":" rank ",\"racerId\":\"rc-" racer "\",\"name\":\"Racer " racer  \
    "\",\"classId\":\"B\",\"second\":3,\"cadence\":" cadence                   \
    ",\"resistance\":" resistance ",\"output\":" output ",\"total\":" total
#define TIE_ENTRIES(extra13, extra11, extra14)                                 \
    TIE_ENTRY("1", "13", "90", "20", "106.25", "318.75")                       \
    extra13 "}," TIE_ENTRY("2", "11", "60.35", "12.3", "73.7056", "221.1012")  \
        extra11                                                                \
        "}," TIE_ENTRY("2", "12", "60.35", "12.3", "73.7056", "221.1012")      \
            extra11 "}," TIE_ENTRY("4", "14", "0", "0", "22.75", "68.25")      \
                extra14 "}"

static const char tie_leaderboard[] =
    "{\"type\":\"leaderboard\",\"raceId\":\"R-7\",\"second\":3,"
    "\"revision\":0,\"ts\":1767225603400,\"entries\":[" TIE_ENTRIES("", "",
                                                                    "") "]}";

static const char tie_results[] =
    "{\"type\":\"results\",\"raceId\":\"R-7\",\"second\":3,\"revision\":0,"
    "\"ts\":1767225603400,\"entries\":[" TIE_ENTRIES(
        ",\"final\":true,\"finalOutput\":106.25",
        ",\"final\":true,\"finalOutput\":73.7056",
        ",\"final\":true,\"finalOutput\":22.75") "]}";

static const char tie_class_board[] =
    "{\"type\":\"class-leaderboard\",\"classId\":\"B\",\"revision\":0,"
    "\"ts\":1767225603400,\"entries\":["
    "{\"rank\":1,\"racerId\":\"rc-13\",\"name\":\"Racer 13\","
    "\"raceId\":\"R-7\",\"total\":318.75},"
    "{\"rank\":2,\"racerId\":\"rc-11\",\"name\":\"Racer 11\","
    "\"raceId\":\"R-7\",\"total\":221.1012},"
    "{\"rank\":2,\"racerId\":\"rc-12\",\"name\":\"Racer 12\","
    "\"raceId\":\"R-7\",\"total\":221.1012},"
    "{\"rank\":4,\"racerId\":\"rc-14\",\"name\":\"Racer 14\","
    "\"raceId\":\"R-7\",\"total\":68.25}]}";

TEST(pipeline_ties_share_rank_in_any_order)
{
    struct tie_run one_shard, two_shards;

    tie_run(&one_shard, "tie-one-shard", tie_deliver_one_shard);
    tie_run(&two_shards, "tie-two-shards", tie_deliver_two_shards);

    /* rc-13 first; rc-11 and rc-12 share rank 2, listed by racerId; rc-14
     * with cadence 0 and resistance 0 still ranks 4. */
    ASSERT_STR_EQ(one_shard.leaderboard, tie_leaderboard);
    ASSERT_STR_EQ(one_shard.results, tie_results);
    ASSERT_STR_EQ(one_shard.class_board, tie_class_board);

    /* The other arrival order publishes the same bytes. */
    ASSERT_STR_EQ(two_shards.leaderboard, one_shard.leaderboard);
    ASSERT_STR_EQ(two_shards.results, one_shard.results);
    ASSERT_STR_EQ(two_shards.class_board, one_shard.class_board);
    ASSERT_STR_EQ(two_shards.messages, one_shard.messages);

    tie_run_free(&one_shard);
    tie_run_free(&two_shards);
}

/* ---- Alleycat messages ------------------------------------------------ */

static const char *const alleycat_sets[] = {"alleycat.enabled=true"};

TEST(pipeline_alleycat_after_each_leaderboard)
{
    struct harness h = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, alleycat_sets, 1);
    feed_seconds(&h, 1, 6);

    /* Every message, leaderboard or not, is an outbox row. */
    ASSERT_EQ(count_rows(&h, store_outbox_count), h.msg_count);
    size_t boards = 0;
    for (size_t i = 0; i < h.msg_count; i++) {
        if (strstr(h.msgs[i].topic, "/leaderboard") == NULL)
            continue;
        /* All riders are in class "B": one Alleycat message each. */
        boards++;
        ASSERT_TRUE(i + 1 < h.msg_count);
        ASSERT_STR_EQ(h.msgs[i + 1].topic, "alleycat-subscribe");
        ASSERT_EQ(h.msgs[i + 1].id, h.msgs[i].id + 1);
    }
    ASSERT_EQ(boards, 4); /* seconds 1..4 closed; lateness 2 keeps 5, 6 */
    ASSERT_EQ(h.msg_count, 2 * boards);
    /* Second 1: (71.1 + 35) x (12.1 + 65) / 100 = 81.8031 for rc-11,
     * 82.5741 for rc-12 and 83.3451 for rc-13, all arrived at
     * 1767225601100. */
    ASSERT_STR_EQ(h.msgs[1].payload,
                  "{\"msg\":\"results\",\"classId\":\"B\",\"raceId\":\"race-R-"
                  "7\",\"ts\":\"1767225601100\",\"results\":\"{\\\"rc-13\\\":"
                  "83.3451,\\\"rc-12\\\":82.5741,\\\"rc-11\\\":81.8031}\"}");
    harness_close(&h);
}

TEST(pipeline_alleycat_survives_restart)
{
    char *whole = expect_restart_identical("alleycat", alleycat_sets, 1);
    /* 20 leaderboards, each followed by its Alleycat message. */
    int count = 0;
    for (const char *p = whole; (p = strstr(p, "\nalleycat-subscribe ")); p++)
        count++;
    ASSERT_EQ(count, 20);
    free(whole);
}

/* ---- the outbox bound ---------------------------------------------------- */

#define BOUND_SECONDS 80
/* With the Alleycat messages, each closed second adds two messages. */
static const char *const bound_sets[] = {"outbox.max=100",
                                         "alleycat.enabled=true"};

/* Report every message handed over since the last call as delivered. */
static void ack_new(struct harness *h, size_t *acked, size_t limit)
{
    for (; *acked < h->msg_count && *acked < limit; (*acked)++)
        pipeline_ack(h->pl, h->msgs[*acked].id);
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    ASSERT_TRUE(f != NULL);
    static char text[1 << 16];
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    return text;
}

static int count_text(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p++)
        n++;
    return n;
}

TEST(pipeline_outbox_bound_waits_jobs)
{
    struct harness h = {0};
    char a[4096], b[4096], log_path[4096];
    snprintf(a, sizeof a, "%s/a.db", test_tmpdir());
    snprintf(b, sizeof b, "%s/b.db", test_tmpdir());
    snprintf(log_path, sizeof log_path, "%s/log.jsonl", test_tmpdir());

    /* A publisher that never fails: every message is acknowledged. */
    harness_open(&h, a, bound_sets, 2);
    size_t acked = 0;
    for (int s = 1; s <= BOUND_SECONDS; s++) {
        queue_seconds(&h, s, s);
        drain(&h);
        ack_new(&h, &acked, SIZE_MAX);
    }
    pipeline_submit_tick(h.pl, 1767225600000 + 200000);
    drain(&h);
    char *reference = joined_messages(&h);
    ASSERT_EQ(pipeline_counters(h.pl)->outbox_pauses, 0);
    harness_close(&h);

    /* A publisher that is down: nothing is acknowledged. */
    h.next_seq = 0;
    h.committed = 0;
    FILE *log_file = fopen(log_path, "w");
    ASSERT_TRUE(log_file != NULL);
    log_set_fd(fileno(log_file));
    harness_open(&h, b, bound_sets, 2);
    queue_seconds(&h, 1, BOUND_SECONDS);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);

    /* Batch k closes second k - 2, so after batch 52 the outbox contains 100
     * messages: the limit. One job adds at most 2 here, so the bound of
     * outbox.max - 1 plus one job's messages is 101. */
    int64_t depth = count_rows(&h, store_outbox_count);
    ASSERT_TRUE(pipeline_outbox_full(h.pl));
    ASSERT_TRUE(depth >= 100);
    ASSERT_TRUE(depth <= 101);
    ASSERT_EQ(depth, 100);
    ASSERT_EQ(pipeline_counters(h.pl)->outbox_depth, depth);
    ASSERT_EQ(h.msg_count, depth);
    ASSERT_EQ(h.committed, 52);
    ASSERT_FALSE(pipeline_idle(h.pl));
    /* The checkpoint stays at the last committed batch: 52 x 3 records. */
    char seq[64];
    snprintf(seq, sizeof seq, "49%054d", 52 * 3);
    ASSERT_STR_EQ(read_checkpoint(h.store, "shardId-000000000000").seq, seq);

    /* Deliveries down to 90 messages, 90% of outbox.max, keep it full. */
    acked = 0;
    ack_new(&h, &acked, 10);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(count_rows(&h, store_outbox_count), 90);
    ASSERT_TRUE(pipeline_outbox_full(h.pl));
    ASSERT_EQ(h.committed, 52);

    /* One more and the held jobs run, until the outbox is full again. */
    ack_new(&h, &acked, 11);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    ASSERT_TRUE(h.committed > 52);
    ASSERT_TRUE(count_rows(&h, store_outbox_count) <= 101);

    /* The publisher catches up. */
    while (!pipeline_idle(h.pl)) {
        ack_new(&h, &acked, SIZE_MAX);
        uv_run(&h.loop, UV_RUN_ONCE);
    }
    ASSERT_EQ(h.committed, BOUND_SECONDS);
    pipeline_submit_tick(h.pl, 1767225600000 + 200000);
    drain(&h);
    char *delayed = joined_messages(&h);
    const struct pipeline_counters *c = pipeline_counters(h.pl);
    uint64_t pauses = c->outbox_pauses;
    harness_close(&h);
    log_set_fd(2);
    fclose(log_file);

    /* The same messages in the same order as without the outage. */
    ASSERT_STR_EQ(delayed, reference);
    /* One warning per pause, one resume for each but the last. */
    const char *log_text = read_text(log_path);
    ASSERT_TRUE(pauses >= 2);
    ASSERT_EQ(count_text(log_text, "at its limit outbox.max = 100"), pauses);
    ASSERT_EQ(count_text(log_text, "reading resumes"), pauses);
    ASSERT_EQ(count_text(log_text, "\"level\":\"warn\""), pauses);
    free(reference);
    free(delayed);
}

TEST(pipeline_discard_held_jobs_on_stop)
{
    struct harness h = {0};
    char path[4096];
    snprintf(path, sizeof path, "%s/p.db", test_tmpdir());
    harness_open(&h, path, bound_sets, 2);
    queue_seconds(&h, 1, BOUND_SECONDS);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    ASSERT_TRUE(pipeline_outbox_full(h.pl));
    ASSERT_EQ(pipeline_discard_held(h.pl), BOUND_SECONDS - 52);
    ASSERT_TRUE(pipeline_idle(h.pl));
    ASSERT_EQ(h.committed, 52);
    harness_close(&h);

    /* The next start counts the 100 rows left and makes jobs wait at once. */
    harness_open(&h, path, bound_sets, 2);
    ASSERT_EQ(pipeline_counters(h.pl)->outbox_depth, 100);
    ASSERT_TRUE(pipeline_outbox_full(h.pl));
    pipeline_submit_tick(h.pl, 1767225600000 + 200000);
    /* A delivery runs in a job of its own past the held tick. */
    pipeline_ack(h.pl, 1);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    ASSERT_EQ(count_rows(&h, store_outbox_count), 99);
    ASSERT_FALSE(pipeline_idle(h.pl));
    /* Stopping drops the held tick, and deletions still run. */
    pipeline_ack(h.pl, 2);
    ASSERT_EQ(pipeline_discard_held(h.pl), 1);
    ASSERT_EQ(uv_run(&h.loop, UV_RUN_DEFAULT), 0);
    ASSERT_TRUE(pipeline_idle(h.pl));
    ASSERT_EQ(count_rows(&h, store_outbox_count), 98);
    ASSERT_EQ(h.msg_count, 0);
    harness_close(&h);
}
