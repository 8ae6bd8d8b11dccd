/*
 * Tests of store/: every case uses a real SQLite file in a fresh temporary
 * directory. The crash cases fork a writer and kill it with SIGKILL, then
 * reopen the file the way the daemon does after a crash.
 */
#include "store/store.h"
#include "store/idempotency.h"
#include "tests/testlib.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ASSERT_OK(st, call)                                                    \
    do {                                                                       \
        if ((call) != 0)                                                       \
            test_fail(__FILE__, __LINE__, "%s failed: %s", #call,              \
                      store_errmsg(st));                                       \
    } while (0)

#define ASSERT_CONTAINS(haystack, needle)                                      \
    do {                                                                       \
        const char *test_h_ = (haystack), *test_n_ = (needle);                 \
        if (strstr(test_h_, test_n_) == NULL)                                  \
            test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",    \
                      test_h_, test_n_);                                       \
    } while (0)

/* ---- helpers -------------------------------------------------------- */

static const char *db_path(const char *name)
{
    static char path[4096];

    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    return path;
}

static const struct idem_options idem_opts = {3600, 30000, 0};
static const uint8_t test_owner[IDEM_OWNER_LEN] = {'t', 'e', 's', 't'};

static struct store *open_store(const char *path)
{
    char err[1024];
    struct store *st = NULL;

    if (store_open(path, &st, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "store_open: %s", err);
    if (store_open_idempotency(st, &idem_opts, test_owner, err, sizeof err))
        test_fail(__FILE__, __LINE__, "store_open_idempotency: %s", err);
    return st;
}

static bool file_exists(const char *path)
{
    struct stat sb;

    return stat(path, &sb) == 0;
}

static struct store_sample make_sample(const char *race, const char *racer,
                                       int32_t second)
{
    struct store_sample s = {
        .race_id = race,
        .racer_id = racer,
        .second = second,
        .class_id = "\"open\"",
        .name = "Ann",
        .name_len = 3,
        .uuid = "5f0c",
        .uuid_len = 4,
        .device_ts_ms = 1700000000000 + (int64_t)second * 1000,
        .arrival_ms = 1700000000250 + (int64_t)second * 1000,
        .cadence4 = 900000,
        .resistance4 = 450000,
        .output4 = 2500000,
        .cadence_exact = "90",
        .resistance_exact = "45",
        .final = false,
    };
    return s;
}

static int64_t sample_count(struct store *st)
{
    int64_t count = -1;

    ASSERT_OK(st, store_sample_count(st, &count));
    return count;
}

static int64_t outbox_count(struct store *st)
{
    int64_t count = -1;

    ASSERT_OK(st, store_outbox_count(st, &count));
    return count;
}

/* A copy of a loaded sample, since load callbacks get borrowed pointers. */
struct sample_copy {
    char race_id[32];
    char racer_id[32];
    int32_t second;
    bool name_null;
    char name[32];
    size_t name_len;
    char uuid[32];
    size_t uuid_len;
    bool name_terminated;
    struct store_sample raw; /* numeric fields only */
};

struct sample_list {
    struct sample_copy items[16];
    int count;
    int stop_after; /* return 7 after this many rows, or never when 0 */
};

static int collect_sample(void *arg, const struct store_sample *s)
{
    struct sample_list *list = arg;

    if (list->count == 16)
        return -100;
    struct sample_copy *c = &list->items[list->count++];
    snprintf(c->race_id, sizeof c->race_id, "%s", s->race_id);
    snprintf(c->racer_id, sizeof c->racer_id, "%s", s->racer_id);
    c->second = s->second;
    c->name_null = s->name == NULL;
    c->name_len = s->name_len;
    if (s->name != NULL && s->name_len < sizeof c->name) {
        memcpy(c->name, s->name, s->name_len);
        c->name_terminated = s->name[s->name_len] == '\0';
    }
    c->uuid_len = s->uuid_len;
    if (s->uuid != NULL && s->uuid_len < sizeof c->uuid)
        memcpy(c->uuid, s->uuid, s->uuid_len);
    c->raw = *s;
    c->raw.race_id = c->raw.racer_id = c->raw.class_id = NULL;
    c->raw.name = c->raw.uuid = NULL;
    c->raw.cadence_exact = c->raw.resistance_exact = NULL;

    if (list->stop_after != 0 && list->count == list->stop_after)
        return 7;
    return 0;
}

struct checkpoint_copy {
    char shard_id[64];
    char seq[160];
    bool seq_null;
    int64_t subseq;
    bool finished;
};

struct checkpoint_list {
    struct checkpoint_copy items[8];
    int count;
};

static int collect_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    struct checkpoint_list *list = arg;

    if (list->count == 8)
        return -100;
    struct checkpoint_copy *c = &list->items[list->count++];
    snprintf(c->shard_id, sizeof c->shard_id, "%s", cp->shard_id);
    c->seq_null = cp->seq == NULL;
    snprintf(c->seq, sizeof c->seq, "%s", cp->seq ? cp->seq : "");
    c->subseq = cp->subseq;
    c->finished = cp->finished;
    return 0;
}

static struct checkpoint_list load_checkpoints(struct store *st)
{
    struct checkpoint_list list = {0};

    ASSERT_OK(st, store_checkpoints_load(st, collect_checkpoint, &list));
    return list;
}

struct outbox_copy {
    int64_t id;
    char topic[64];
    char payload[64];
    size_t payload_len;
};

struct outbox_list {
    struct outbox_copy items[16];
    int count;
};

static int collect_outbox(void *arg, int64_t id, const char *topic,
                          const void *payload, size_t payload_len)
{
    struct outbox_list *list = arg;

    if (list->count == 16 || payload_len > 64)
        return -100;
    struct outbox_copy *c = &list->items[list->count++];
    c->id = id;
    snprintf(c->topic, sizeof c->topic, "%s", topic);
    memcpy(c->payload, payload, payload_len);
    c->payload_len = payload_len;
    return 0;
}

static struct outbox_list load_outbox(struct store *st, int64_t after_id,
                                      size_t limit)
{
    struct outbox_list list = {0};

    ASSERT_OK(st,
              store_outbox_load(st, after_id, limit, collect_outbox, &list));
    return list;
}

static const uint8_t hash_a[32] = {0xaa, 1, 2, 3};

/*
 * Claim key in the store's idempotency table and, when it is new, complete
 * it as applied. Returns the claim result.
 */
static enum idem_result claim_key(struct store *st, const char *key)
{
    struct idem_table *t = store_idempotency(st);
    struct idem_claim c = {key, strlen(key), hash_a, 1000000, NULL, NULL, 0};
    enum idem_result result;

    if (idem_claim(t, &c, &result, NULL) != 0)
        test_fail(__FILE__, __LINE__, "idem_claim: %s", idem_errmsg(t));
    if (result == IDEM_NEW &&
        idem_complete(t, key, strlen(key), "applied", 1000000) != 0)
        test_fail(__FILE__, __LINE__, "idem_complete: %s", idem_errmsg(t));
    return result;
}

/* ---- open, reopen, transactions ------------------------------------- */

TEST(store_open_creates_schema_and_wal)
{
    const char *path = db_path("podium.db");
    char wal[4200];
    struct store *st = open_store(path);

    snprintf(wal, sizeof wal, "%s-wal", path);
    ASSERT_TRUE(file_exists(path));
    ASSERT_TRUE(file_exists(wal));
    ASSERT_EQ(sample_count(st), 0);
    ASSERT_EQ(outbox_count(st), 0);
    ASSERT_EQ(load_checkpoints(st).count, 0);
    store_close(st);

    /*
     * The file header records WAL as file format version 2 at offsets 18
     * and 19, and PRAGMA user_version as a big-endian integer at offset 60.
     */
    unsigned char header[100];
    FILE *f = fopen(path, "rb");
    ASSERT_TRUE(f != NULL);
    ASSERT_EQ(fread(header, 1, sizeof header, f), sizeof header);
    fclose(f);
    ASSERT_EQ(header[18], 2);
    ASSERT_EQ(header[19], 2);
    ASSERT_EQ(header[60], 0);
    ASSERT_EQ(header[61], 0);
    ASSERT_EQ(header[62], 0);
    ASSERT_EQ(header[63], 5);
}

TEST(store_reopen_keeps_data)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct store_sample s = make_sample("\"R-7\"", "5402746", 12);
    struct store_checkpoint cp = {"shardId-000000000001", "1234", 2, false};
    struct store_dead_letter dl = {
        "shardId-000000000001", "1233",           0,    99,
        "invalid_json",         "unexpected '}'", "{]", 2};

    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_OK(st, store_state_put(st, "leader", "\"R-7\"", "{}", 2));
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    ASSERT_OK(st, store_outbox_add(st, "race/R-7", "{\"a\":1}", 7, NULL));
    ASSERT_OK(st, store_dead_letter_add(st, &dl));
    ASSERT_OK(st, store_meta_put(st, "stream_time_ms", "1700000000000"));
    ASSERT_EQ(claim_key(st, "k1"), IDEM_NEW);
    ASSERT_OK(st, store_commit(st));
    store_close(st);

    st = open_store(path);
    char value[64];
    int64_t dead = 0;
    struct checkpoint_list cps = load_checkpoints(st);
    ASSERT_EQ(sample_count(st), 1);
    ASSERT_EQ(outbox_count(st), 1);
    ASSERT_OK(st, store_dead_letter_count(st, &dead));
    ASSERT_EQ(dead, 1);
    ASSERT_EQ(cps.count, 1);
    ASSERT_STR_EQ(cps.items[0].seq, "1234");
    ASSERT_EQ(cps.items[0].subseq, 2);
    ASSERT_EQ(store_meta_get(st, "stream_time_ms", value, sizeof value), 1);
    ASSERT_STR_EQ(value, "1700000000000");
    ASSERT_EQ(claim_key(st, "k1"), IDEM_DUPLICATE);
    store_close(st);
}

static int count_state(void *arg, const char *key, const char *value,
                       size_t value_len)
{
    (void)key;
    (void)value;
    (void)value_len;
    (*(int *)arg)++;
    return 0;
}

TEST(store_rollback_discards_whole_batch)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_sample s = make_sample("\"R-1\"", "1", 0);
    struct store_checkpoint cp = {"shardId-000000000000", "77", 0, true};
    struct store_dead_letter dl = {.reason = "duplicate_key"};
    int64_t dead = -1;
    int states = 0;
    char value[16];

    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_OK(st, store_state_put(st, "leader", "1", "{}", 2));
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    ASSERT_OK(st, store_outbox_add(st, "race/R-1", "{}", 2, NULL));
    ASSERT_OK(st, store_dead_letter_add(st, &dl));
    ASSERT_OK(st, store_meta_put(st, "k", "v"));
    ASSERT_EQ(claim_key(st, "k1"), IDEM_NEW);
    store_rollback(st);

    ASSERT_EQ(sample_count(st), 0);
    ASSERT_EQ(outbox_count(st), 0);
    ASSERT_EQ(load_checkpoints(st).count, 0);
    ASSERT_OK(st, store_dead_letter_count(st, &dead));
    ASSERT_EQ(dead, 0);
    ASSERT_OK(st, store_state_load(st, "leader", count_state, &states));
    ASSERT_EQ(states, 0);
    ASSERT_EQ(store_meta_get(st, "k", value, sizeof value), 0);
    /* The in-memory index must forget the rolled-back claim too. */
    ASSERT_EQ(claim_key(st, "k1"), IDEM_NEW);

    /* Without an open transaction, rollback does nothing and commit fails. */
    store_rollback(st);
    ASSERT_EQ(store_commit(st), -1);
    ASSERT_CONTAINS(store_errmsg(st), "no transaction is active");
    store_close(st);
}

TEST(store_begin_reports_busy_lock)
{
    const char *path = db_path("podium.db");
    struct store *first = open_store(path);
    struct store *second = open_store(path);

    /* The second BEGIN IMMEDIATE waits for the 5 s busy timeout. */
    ASSERT_OK(first, store_begin(first));
    ASSERT_EQ(store_begin(second), -1);
    ASSERT_CONTAINS(store_errmsg(second), "SQLITE_BUSY");
    ASSERT_CONTAINS(store_errmsg(second), "database is locked");

    ASSERT_OK(first, store_commit(first));
    ASSERT_OK(second, store_begin(second));
    ASSERT_OK(second, store_commit(second));
    store_close(second);
    store_close(first);
}

/* ---- open errors ---------------------------------------------------- */

TEST(store_open_missing_dir_names_path)
{
    char path[4200];
    char dir[4200];
    char err[1024] = "";
    struct store *st = (struct store *)&err;

    snprintf(dir, sizeof dir, "%s/no-such-dir", test_tmpdir());
    snprintf(path, sizeof path, "%s/no-such-dir/podium.db", test_tmpdir());
    ASSERT_EQ(store_open(path, &st, err, sizeof err), -1);
    ASSERT_TRUE(st == NULL);
    ASSERT_CONTAINS(err, path);
    ASSERT_CONTAINS(err, "SQLITE_CANTOPEN");
    ASSERT_CONTAINS(err, "does not exist");
    ASSERT_FALSE(file_exists(dir));
}

TEST(store_open_rejects_newer_schema)
{
    const char *path = db_path("podium.db");
    char err[1024] = "";
    struct store *st = open_store(path);

    store_close(st);

    /* PRAGMA user_version is the big-endian integer at offset 60. */
    FILE *f = fopen(path, "r+b");
    ASSERT_TRUE(f != NULL);
    ASSERT_EQ(fseek(f, 63, SEEK_SET), 0);
    ASSERT_EQ(fputc(99, f), 99);
    ASSERT_EQ(fclose(f), 0);

    ASSERT_EQ(store_open(path, &st, err, sizeof err), -1);
    ASSERT_CONTAINS(err, path);
    ASSERT_CONTAINS(err, "schema version 99 is newer");
}

TEST(store_open_rejects_non_database)
{
    const char *path = db_path("notes.txt");
    char err[1024] = "";
    struct store *st = NULL;

    FILE *f = fopen(path, "wb");
    ASSERT_TRUE(f != NULL);
    for (int i = 0; i < 100; i++)
        fputs("this is a text file, not an SQLite database\n", f);
    ASSERT_EQ(fclose(f), 0);

    ASSERT_EQ(store_open(path, &st, err, sizeof err), -1);
    ASSERT_TRUE(st == NULL);
    ASSERT_CONTAINS(err, path);
    ASSERT_CONTAINS(err, "SQLITE_NOTADB");
}

/* ---- samples -------------------------------------------------------- */

TEST(store_sample_put_replaces_existing)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_sample s = make_sample("\"R-7\"", "12", 5);
    struct sample_list list = {0};

    ASSERT_OK(st, store_sample_put(st, &s));
    s.cadence4 = 1234567;
    s.output4 = INT64_MAX;
    s.device_ts_ms = INT64_MIN;
    s.final = true;
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_EQ(sample_count(st), 1);

    /* Both come back, in the order they were put, so the reader keeps
     * the second. */
    ASSERT_OK(st, store_samples_load(st, collect_sample, &list));
    ASSERT_EQ(list.count, 2);
    ASSERT_EQ(list.items[0].raw.cadence4, 900000);
    ASSERT_FALSE(list.items[0].raw.final);
    ASSERT_EQ(list.items[1].raw.cadence4, 1234567);
    ASSERT_EQ(list.items[1].raw.resistance4, 450000);
    ASSERT_EQ(list.items[1].raw.output4, INT64_MAX);
    ASSERT_EQ(list.items[1].raw.device_ts_ms, INT64_MIN);
    ASSERT_EQ(list.items[1].raw.arrival_ms, 1700000005250);
    ASSERT_TRUE(list.items[1].raw.final);
    store_close(st);
}

/* A deferred claim that was never completed is written by the commit, so
 * a second run finds the key claimed instead of new. */
TEST(store_commit_writes_deferred_claim)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct idem_table *t = store_idempotency(st);
    struct idem_claim c = {"k-deferred", 10, hash_a, 1000000, NULL, NULL, 0};
    struct idem_record rec;
    enum idem_result result;

    ASSERT_OK(st, store_begin(st));
    ASSERT_EQ(idem_claim_deferred(t, &c, &result, NULL), 0);
    ASSERT_EQ(result, IDEM_NEW);
    ASSERT_OK(st, store_commit(st));
    store_close(st);

    st = open_store(path);
    t = store_idempotency(st);
    ASSERT_EQ(idem_lookup(t, "k-deferred", 10, 1000000, &rec), 1);
    store_close(st);
}

TEST(store_samples_commit_with_their_transaction)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct store_sample a = make_sample("\"R-7\"", "12", 5);
    struct store_sample b = make_sample("\"R-7\"", "13", 5);
    struct sample_list list = {0};

    /* A rolled-back sample is gone. */
    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_sample_put(st, &a));
    store_rollback(st);
    ASSERT_EQ(sample_count(st), 0);

    /* A sample put in the open transaction is seen by a load in it. */
    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_sample_put(st, &a));
    ASSERT_EQ(sample_count(st), 1);
    ASSERT_OK(st, store_sample_put(st, &b));
    ASSERT_OK(st, store_commit(st));
    store_close(st);

    st = open_store(path);
    ASSERT_OK(st, store_samples_load(st, collect_sample, &list));
    ASSERT_EQ(list.count, 2);
    ASSERT_STR_EQ(list.items[0].racer_id, "12");
    ASSERT_STR_EQ(list.items[1].racer_id, "13");
    store_close(st);
}

/* Overwrite the data or format of the first sample log row. */
static void damage_log(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *err = NULL;

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    if (sqlite3_exec(db, sql, NULL, NULL, &err) != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "damage: %s", err);
    sqlite3_close(db);
}

TEST(store_samples_load_names_damaged_log_row)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct store_sample a = make_sample("\"R-7\"", "12", 5);
    struct sample_list list = {0};
    const struct {
        const char *sql;
        const char *error;
    } cases[] = {
        {"UPDATE sample_log SET data = substr(data, 1, 3)",
         "sample log row 1 is damaged at entry 0 of 1: an entry is cut short"},
        {"UPDATE sample_log SET data = substr(data, 1, 30)",
         "entry 0 of 1: a text is longer than the rest of the entry"},
        {"UPDATE sample_log SET data = data || x'00'",
         "sample log row 1 is damaged at entry 1 of 1: bytes after the last"},
        {"UPDATE sample_log SET count = 2",
         "sample log row 1 is damaged at entry 1 of 2: an entry is cut short"},
        {"UPDATE sample_log SET data = x'40' || substr(data, 2)",
         "entry 0 of 1: an entry has unknown flags"},
        {"UPDATE sample_log SET format = 9",
         "sample log row 1 has format 9, which this build cannot read"},
    };

    ASSERT_OK(st, store_sample_put(st, &a));
    store_close(st);
    damage_log(path, "CREATE TABLE keep AS SELECT * FROM sample_log");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        damage_log(path, "DELETE FROM sample_log;"
                         " INSERT INTO sample_log SELECT * FROM keep");
        damage_log(path, cases[i].sql);
        st = open_store(path);
        list.count = 0;
        ASSERT_EQ(store_samples_load(st, collect_sample, &list), -1);
        ASSERT_CONTAINS(store_errmsg(st), cases[i].error);
        store_close(st);
    }
}

static int check_sample_strings(void *arg, const struct store_sample *s)
{
    (void)arg;
    ASSERT_STR_EQ(s->race_id, "\"R-1\"");
    ASSERT_STR_EQ(s->racer_id, "7");
    ASSERT_STR_EQ(s->class_id, "\"open\"");
    ASSERT_STR_EQ(s->cadence_exact, "90.25");
    ASSERT_TRUE(s->resistance_exact == NULL);
    return 0;
}

TEST(store_samples_load_keeps_order_and_nuls)
{
    struct store *st = open_store(db_path("podium.db"));
    struct sample_list list = {0};
    const char nul_name[] = "An\0na";
    const char nul_uuid[] = {'\0', 'x', '\0'};
    struct {
        const char *race;
        const char *racer;
        int32_t second;
    } puts[] = {
        {"\"R-2\"", "1", 1},  {"\"R-1\"", "2", 2},
        {"\"R-1\"", "1", 10}, {"\"R-1\"", "1", INT32_MAX},
        {"\"R-1\"", "1", 2},  {"\"R-1\"", "1", INT32_MIN},
    };

    for (size_t i = 0; i < sizeof puts / sizeof puts[0]; i++) {
        struct store_sample s =
            make_sample(puts[i].race, puts[i].racer, puts[i].second);
        if (puts[i].second == 2 && strcmp(puts[i].racer, "1") == 0) {
            s.name = nul_name;
            s.name_len = 5;
            s.uuid = nul_uuid;
            s.uuid_len = 3;
        } else if (puts[i].second == 10) {
            s.name = "";
            s.name_len = 0;
        } else if (puts[i].second == 1) {
            s.name = NULL;
            s.name_len = 0;
        }
        ASSERT_OK(st, store_sample_put(st, &s));
    }

    /* Samples come back in the order they were put. */
    ASSERT_OK(st, store_samples_load(st, collect_sample, &list));
    ASSERT_EQ(list.count, 6);
    for (size_t i = 0; i < sizeof puts / sizeof puts[0]; i++) {
        ASSERT_STR_EQ(list.items[i].race_id, puts[i].race);
        ASSERT_STR_EQ(list.items[i].racer_id, puts[i].racer);
        ASSERT_EQ(list.items[i].second, puts[i].second);
    }

    /* NULs inside name and uuid survive, and a NUL follows the bytes. */
    ASSERT_MEM_EQ(list.items[4].name, list.items[4].name_len, nul_name, 5);
    ASSERT_TRUE(list.items[4].name_terminated);
    ASSERT_MEM_EQ(list.items[4].uuid, list.items[4].uuid_len, nul_uuid, 3);

    /* An empty name stays empty, and a NULL name stays NULL. */
    ASSERT_FALSE(list.items[2].name_null);
    ASSERT_EQ(list.items[2].name_len, 0);
    ASSERT_TRUE(list.items[0].name_null);
    ASSERT_MEM_EQ(list.items[5].name, list.items[5].name_len, "Ann", 3);
    store_close(st);
}

TEST(store_samples_load_keeps_text_fields)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_sample s = make_sample("\"R-1\"", "7", 3);

    s.cadence_exact = "90.25";
    s.resistance_exact = NULL;
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_OK(st, store_samples_load(st, check_sample_strings, NULL));
    store_close(st);
}

TEST(store_load_returns_callback_result)
{
    struct store *st = open_store(db_path("podium.db"));
    struct sample_list list = {.stop_after = 2};

    for (int32_t second = 0; second < 5; second++) {
        struct store_sample s = make_sample("\"R-1\"", "1", second);
        ASSERT_OK(st, store_sample_put(st, &s));
    }
    ASSERT_EQ(store_samples_load(st, collect_sample, &list), 7);
    ASSERT_EQ(list.count, 2);

    /* The interrupted scan left no statement busy: a write still works. */
    ASSERT_OK(st, store_begin(st));
    struct store_sample s = make_sample("\"R-1\"", "1", 9);
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_OK(st, store_commit(st));
    ASSERT_EQ(sample_count(st), 6);
    store_close(st);
}

/* ---- aggregator state ----------------------------------------------- */

struct state_list {
    char keys[8][32];
    char values[8][32];
    size_t lens[8];
    bool terminated[8];
    int count;
};

static int collect_state(void *arg, const char *key, const char *value,
                         size_t value_len)
{
    struct state_list *list = arg;

    if (list->count == 8 || value_len >= 32)
        return -100;
    snprintf(list->keys[list->count], 32, "%s", key);
    memcpy(list->values[list->count], value, value_len);
    list->lens[list->count] = value_len;
    list->terminated[list->count] = value[value_len] == '\0';
    list->count++;
    return 0;
}

TEST(store_state_put_delete_load)
{
    struct store *st = open_store(db_path("podium.db"));
    struct state_list leader = {0};
    struct state_list other = {0};
    const char nul_value[] = "{\"n\":\"a\0b\"}";

    ASSERT_OK(st, store_state_put(st, "leader", "r2", nul_value,
                                  sizeof nul_value - 1));
    ASSERT_OK(st, store_state_put(st, "leader", "r1", "{\"v\":1}", 7));
    ASSERT_OK(st, store_state_put(st, "leader", "r3", "{}", 2));
    ASSERT_OK(st, store_state_put(st, "other", "r1", "[]", 2));
    ASSERT_OK(st, store_state_put(st, "leader", "r1", "{\"v\":2}", 7));
    ASSERT_OK(st, store_state_delete(st, "leader", "r3"));
    ASSERT_OK(st, store_state_delete(st, "leader", "absent"));

    ASSERT_OK(st, store_state_load(st, "leader", collect_state, &leader));
    ASSERT_EQ(leader.count, 2);
    ASSERT_STR_EQ(leader.keys[0], "r1");
    ASSERT_MEM_EQ(leader.values[0], leader.lens[0], "{\"v\":2}", 7);
    ASSERT_STR_EQ(leader.keys[1], "r2");
    ASSERT_MEM_EQ(leader.values[1], leader.lens[1], nul_value,
                  sizeof nul_value - 1);
    ASSERT_TRUE(leader.terminated[1]);

    ASSERT_OK(st, store_state_load(st, "other", collect_state, &other));
    ASSERT_EQ(other.count, 1);
    ASSERT_MEM_EQ(other.values[0], other.lens[0], "[]", 2);
    store_close(st);
}

/* ---- checkpoints ---------------------------------------------------- */

/* 55 and 56 digits: the shorter one is smaller even with a larger prefix. */
#define SEQ_55 "9999999999999999999999999999999999999999999999999999999"
#define SEQ_56                                                                 \
    "1000000000000000000000000000000000000000000000000000000"                  \
    "0"
#define SEQ_56_NEXT                                                            \
    "1000000000000000000000000000000000000000000000000000000"                  \
    "1"

TEST(store_checkpoint_never_moves_backwards)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_checkpoint cp = {"shardId-000000000000", SEQ_56, 0, false};
    struct checkpoint_list list;

    ASSERT_EQ(strlen(SEQ_55), 55);
    ASSERT_EQ(strlen(SEQ_56), 56);
    ASSERT_OK(st, store_checkpoint_put(st, &cp));

    cp.seq = SEQ_55;
    ASSERT_EQ(store_checkpoint_put(st, &cp), -1);
    ASSERT_CONTAINS(store_errmsg(st), SEQ_55);
    ASSERT_CONTAINS(store_errmsg(st), SEQ_56);

    /* Equal is allowed, a later sub-sequence too, an earlier one is not. */
    cp.seq = SEQ_56;
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    cp.subseq = 3;
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    cp.subseq = 2;
    ASSERT_EQ(store_checkpoint_put(st, &cp), -1);

    /* A checkpoint without a sequence number would also move back. */
    cp.seq = NULL;
    cp.subseq = 0;
    ASSERT_EQ(store_checkpoint_put(st, &cp), -1);

    cp.seq = SEQ_56_NEXT;
    ASSERT_OK(st, store_checkpoint_put(st, &cp));

    list = load_checkpoints(st);
    ASSERT_EQ(list.count, 1);
    ASSERT_STR_EQ(list.items[0].seq, SEQ_56_NEXT);
    ASSERT_EQ(list.items[0].subseq, 0);
    store_close(st);
}

TEST(store_checkpoint_rejects_invalid_seq)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_checkpoint cp = {"shardId-000000000000", NULL, 0, false};
    const char *invalid[] = {"", "12a", "0123", "-5", "1.0"};

    /* A first checkpoint may have no sequence number yet. */
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    ASSERT_TRUE(load_checkpoints(st).items[0].seq_null);

    for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
        cp.seq = invalid[i];
        ASSERT_EQ(store_checkpoint_put(st, &cp), -1);
        ASSERT_CONTAINS(store_errmsg(st), "invalid sequence number");
    }

    cp.seq = "0";
    cp.subseq = -1;
    ASSERT_EQ(store_checkpoint_put(st, &cp), -1);
    ASSERT_CONTAINS(store_errmsg(st), "invalid sub-sequence");
    store_close(st);
}

TEST(store_checkpoint_finished_stays_set)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_checkpoint done = {"shardId-000000000000", "500", 0, true};
    struct store_checkpoint open = {"shardId-000000000001", "400", 0, false};
    struct checkpoint_list list;

    ASSERT_OK(st, store_checkpoint_put(st, &done));
    ASSERT_OK(st, store_checkpoint_put(st, &open));
    done.finished = false;
    done.seq = "501";
    ASSERT_OK(st, store_checkpoint_put(st, &done));

    list = load_checkpoints(st);
    ASSERT_EQ(list.count, 2);
    ASSERT_STR_EQ(list.items[0].shard_id, "shardId-000000000000");
    ASSERT_STR_EQ(list.items[0].seq, "501");
    ASSERT_TRUE(list.items[0].finished);
    ASSERT_STR_EQ(list.items[1].shard_id, "shardId-000000000001");
    ASSERT_FALSE(list.items[1].finished);
    store_close(st);
}

/* ---- outbox --------------------------------------------------------- */

TEST(store_outbox_ids_never_reused)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    int64_t ids[4];

    for (int i = 0; i < 3; i++)
        ASSERT_OK(st, store_outbox_add(st, "t", "x", 1, &ids[i]));
    ASSERT_TRUE(ids[0] < ids[1]);
    ASSERT_TRUE(ids[1] < ids[2]);

    /* After the newest row is deleted, its id is still not handed out. */
    ASSERT_OK(st, store_outbox_delete(st, &ids[2], 1, NULL));
    ASSERT_OK(st, store_outbox_add(st, "t", "x", 1, &ids[3]));
    ASSERT_TRUE(ids[3] > ids[2]);
    ASSERT_OK(st, store_outbox_delete(st, &ids[3], 1, NULL));
    store_close(st);

    int64_t after_reopen;
    st = open_store(path);
    ASSERT_OK(st, store_outbox_add(st, "t", "x", 1, &after_reopen));
    ASSERT_TRUE(after_reopen > ids[3]);
    store_close(st);
}

TEST(store_outbox_load_after_id_limit)
{
    struct store *st = open_store(db_path("podium.db"));
    const char binary[] = {'{', '\0', '}'};
    int64_t ids[5];
    struct outbox_list list;

    for (int i = 0; i < 5; i++) {
        char topic[32];
        snprintf(topic, sizeof topic, "race/R-%d", i);
        ASSERT_OK(st,
                  store_outbox_add(st, topic, binary, sizeof binary, &ids[i]));
    }

    list = load_outbox(st, ids[1], 2);
    ASSERT_EQ(list.count, 2);
    ASSERT_EQ(list.items[0].id, ids[2]);
    ASSERT_STR_EQ(list.items[0].topic, "race/R-2");
    ASSERT_MEM_EQ(list.items[0].payload, list.items[0].payload_len, binary,
                  sizeof binary);
    ASSERT_EQ(list.items[1].id, ids[3]);

    ASSERT_EQ(load_outbox(st, ids[1], 0).count, 0);
    ASSERT_EQ(load_outbox(st, ids[4], 10).count, 0);
    ASSERT_EQ(load_outbox(st, 0, SIZE_MAX).count, 5);
    store_close(st);
}

TEST(store_outbox_delete_and_count)
{
    struct store *st = open_store(db_path("podium.db"));
    int64_t ids[4];
    int64_t gone[3];
    struct outbox_list list;

    for (int i = 0; i < 4; i++)
        ASSERT_OK(st, store_outbox_add(st, "t", "", 0, &ids[i]));
    ASSERT_EQ(outbox_count(st), 4);

    gone[0] = ids[0];
    gone[1] = ids[2];
    gone[2] = ids[3] + 1000; /* absent ids are skipped */
    size_t deleted = 0;
    ASSERT_OK(st, store_outbox_delete(st, gone, 3, &deleted));
    ASSERT_EQ(deleted, 2);
    ASSERT_OK(st, store_outbox_delete(st, NULL, 0, &deleted));
    ASSERT_EQ(deleted, 0);
    ASSERT_EQ(outbox_count(st), 2);

    list = load_outbox(st, 0, 10);
    ASSERT_EQ(list.count, 2);
    ASSERT_EQ(list.items[0].id, ids[1]);
    ASSERT_EQ(list.items[0].payload_len, 0);
    ASSERT_EQ(list.items[1].id, ids[3]);
    store_close(st);
}

/* ---- dead letters --------------------------------------------------- */

struct dead_letter_list {
    int64_t ids[4];
    char reasons[4][32];
    char data[4][16];
    size_t data_len[4];
    bool data_null[4];
    bool detail_null[4];
    int64_t subseq[4];
    int count;
};

static int collect_dead_letter(void *arg, int64_t id,
                               const struct store_dead_letter *d)
{
    struct dead_letter_list *list = arg;
    int i = list->count;

    if (i == 4 || d->data_len > 16)
        return -100;
    list->ids[i] = id;
    snprintf(list->reasons[i], 32, "%s", d->reason);
    list->data_null[i] = d->data == NULL;
    if (d->data != NULL)
        memcpy(list->data[i], d->data, d->data_len);
    list->data_len[i] = d->data_len;
    list->detail_null[i] = d->detail == NULL;
    list->subseq[i] = d->subseq;
    list->count++;
    return 0;
}

TEST(store_dead_letters_add_and_load)
{
    struct store *st = open_store(db_path("podium.db"));
    const char raw[] = {'\x01', '\0', '\xff'};
    struct store_dead_letter with_data = {"shardId-000000000000",
                                          "1234",
                                          3,
                                          1700000000000,
                                          "invalid_json",
                                          "unexpected byte 0x01",
                                          raw,
                                          sizeof raw};
    struct store_dead_letter bare = {.reason = "duplicate_key"};
    struct store_dead_letter no_reason = {.detail = "x"};
    struct dead_letter_list list = {0};
    int64_t count = -1;

    ASSERT_OK(st, store_dead_letter_add(st, &with_data));
    ASSERT_OK(st, store_dead_letter_add(st, &bare));
    ASSERT_EQ(store_dead_letter_add(st, &no_reason), -1);
    ASSERT_CONTAINS(store_errmsg(st), "SQLITE_CONSTRAINT_NOTNULL");
    ASSERT_CONTAINS(store_errmsg(st), "dead_letters.reason");
    ASSERT_OK(st, store_dead_letter_count(st, &count));
    ASSERT_EQ(count, 2);

    ASSERT_OK(st,
              store_dead_letters_load(st, 0, 10, collect_dead_letter, &list));
    ASSERT_EQ(list.count, 2);
    ASSERT_TRUE(list.ids[0] < list.ids[1]);
    ASSERT_STR_EQ(list.reasons[0], "invalid_json");
    ASSERT_MEM_EQ(list.data[0], list.data_len[0], raw, sizeof raw);
    ASSERT_EQ(list.subseq[0], 3);
    ASSERT_STR_EQ(list.reasons[1], "duplicate_key");
    ASSERT_TRUE(list.data_null[1]);
    ASSERT_TRUE(list.detail_null[1]);

    memset(&list, 0, sizeof list);
    ASSERT_OK(st,
              store_dead_letters_load(st, 0, 1, collect_dead_letter, &list));
    ASSERT_EQ(list.count, 1);
    store_close(st);
}

TEST(store_dead_letter_filed_once)
{
    struct store *st = open_store(db_path("podium.db"));
    struct store_dead_letter first = {
        "shardId-000000000001", "77", 0, 1, "not_json", "first", "x", 1};
    struct store_dead_letter again = first;
    struct store_dead_letter next_user = first;
    struct dead_letter_list list = {0};
    int64_t count = -1;

    again.detail = "read again";
    next_user.subseq = 1;
    ASSERT_OK(st, store_dead_letter_add(st, &first));
    ASSERT_OK(st, store_dead_letter_add(st, &again));
    ASSERT_OK(st, store_dead_letter_add(st, &next_user));
    ASSERT_OK(st, store_dead_letter_count(st, &count));
    ASSERT_EQ(count, 2);
    ASSERT_OK(st,
              store_dead_letters_load(st, 0, 10, collect_dead_letter, &list));
    ASSERT_EQ(list.count, 2);
    ASSERT_EQ(list.subseq[0], 0);
    ASSERT_EQ(list.subseq[1], 1);
    store_close(st);
}

/* ---- meta ----------------------------------------------------------- */

TEST(store_meta_put_get_replace)
{
    struct store *st = open_store(db_path("podium.db"));
    char value[16];
    char small[4];

    ASSERT_EQ(store_meta_get(st, "stream_time_ms", value, sizeof value), 0);
    ASSERT_OK(st, store_meta_put(st, "stream_time_ms", "1000"));
    ASSERT_OK(st, store_meta_put(st, "stream_time_ms", "2000"));
    ASSERT_EQ(store_meta_get(st, "stream_time_ms", value, sizeof value), 1);
    ASSERT_STR_EQ(value, "2000");

    /* "2000" needs 5 bytes with its NUL: an error, never a truncation. */
    ASSERT_EQ(store_meta_get(st, "stream_time_ms", small, sizeof small), -1);
    ASSERT_CONTAINS(store_errmsg(st), "stream_time_ms");

    ASSERT_OK(st, store_meta_put(st, "empty", NULL));
    ASSERT_EQ(store_meta_get(st, "empty", value, sizeof value), 1);
    ASSERT_STR_EQ(value, "");
    store_close(st);
}

/* ---- last messages and class history -------------------------------- */

struct last_message {
    int calls;
    int32_t revision;
    char payload[128];
    size_t len;
};

static int copy_last_message(void *arg, int32_t revision, const char *payload,
                             size_t len)
{
    struct last_message *m = arg;

    m->calls++;
    m->revision = revision;
    ASSERT_TRUE(len < sizeof m->payload);
    memcpy(m->payload, payload, len + 1);
    m->len = len;
    return 0;
}

TEST(store_last_message_put_get_replace)
{
    struct store *st = open_store(db_path("podium.db"));
    struct last_message m = {0};

    ASSERT_EQ(store_last_message_get(st, "results", "7", copy_last_message, &m),
              0);
    ASSERT_EQ(m.calls, 0);
    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st,
              store_last_message_put(st, "results", "7", 0, "{\"a\":0}", 7));
    ASSERT_OK(st,
              store_last_message_put(st, "results", "7", 1, "{\"a\":1}", 7));
    ASSERT_OK(st, store_last_message_put(st, "class-leaderboard", "7", 4,
                                         "{\"c\":\"\\u0000\"}", 14));
    ASSERT_OK(st, store_commit(st));

    ASSERT_EQ(store_last_message_get(st, "results", "7", copy_last_message, &m),
              1);
    ASSERT_EQ(m.calls, 1);
    ASSERT_EQ(m.revision, 1);
    ASSERT_STR_EQ(m.payload, "{\"a\":1}");
    ASSERT_EQ(store_last_message_get(st, "class-leaderboard", "7",
                                     copy_last_message, &m),
              1);
    ASSERT_EQ(m.revision, 4);
    ASSERT_EQ(m.len, 14);
    /* The kind is part of the key: race 7 and class 7 are different. */
    ASSERT_EQ(
        store_last_message_get(st, "results", "\"7\"", copy_last_message, &m),
        0);
    store_close(st);
}

struct history_list {
    int count;
    char lines[16][96];
};

static int copy_history(void *arg, const struct store_history_row *row)
{
    struct history_list *list = arg;

    ASSERT_TRUE(list->count < 16);
    snprintf(list->lines[list->count++], sizeof list->lines[0],
             "%s %s %d %" PRId64 " %s", row->class_id, row->racer_id,
             (int)row->second, row->output4, row->race_id);
    return 0;
}

static void put_history(struct store *st, const char *class_id,
                        const char *racer, int32_t second, int64_t output4,
                        const char *race)
{
    struct store_history_row row = {class_id, racer, second, output4, race};
    ASSERT_OK(st, store_history_put(st, &row));
}

TEST(store_history_put_delete_load)
{
    struct store *st = open_store(db_path("podium.db"));
    struct history_list all = {0}, racer = {0}, second = {0}, none = {0};

    ASSERT_OK(st, store_begin(st));
    put_history(st, "1", "\"b\"", 2, 900000, "10");
    put_history(st, "1", "\"a\"", 2, 800000, "10");
    put_history(st, "1", "\"a\"", 1, 700000, "10");
    put_history(st, "2", "\"a\"", 1, 100000, "11");
    /* A better output replaces the row of its (class, racer, second). */
    put_history(st, "1", "\"a\"", 1, 750000, "12");
    put_history(st, "1", "\"c\"", 3, 1, "12");
    ASSERT_OK(st, store_history_delete(st, "1", "\"c\"", 3));
    ASSERT_OK(st, store_commit(st));

    ASSERT_OK(st, store_history_load(st, "1", NULL, 0, copy_history, &all));
    ASSERT_EQ(all.count, 3);
    ASSERT_STR_EQ(all.lines[0], "1 \"a\" 1 750000 12");
    ASSERT_STR_EQ(all.lines[1], "1 \"a\" 2 800000 10");
    ASSERT_STR_EQ(all.lines[2], "1 \"b\" 2 900000 10");

    ASSERT_OK(st,
              store_history_load(st, "1", "\"a\"", 0, copy_history, &racer));
    ASSERT_EQ(racer.count, 2);
    ASSERT_OK(st, store_history_load(st, "1", NULL, 2, copy_history, &second));
    ASSERT_EQ(second.count, 2);
    ASSERT_STR_EQ(second.lines[0], "1 \"a\" 2 800000 10");
    ASSERT_OK(st, store_history_load(st, "3", NULL, 0, copy_history, &none));
    ASSERT_EQ(none.count, 0);
    store_close(st);
}

/* The samples table of versions 1 to 4, and the class history of versions
 * 3 and 4, which version 5 replaced with logs. */
#define V4_SAMPLES_SQL                                                         \
    " DROP TABLE sample_log;"                                                  \
    " CREATE TABLE samples (race_id TEXT NOT NULL,"                            \
    " racer_id TEXT NOT NULL, second INTEGER NOT NULL, class_id TEXT,"         \
    " name BLOB, uuid BLOB, device_ts_ms INTEGER, arrival_ms INTEGER,"         \
    " cadence4 INTEGER, resistance4 INTEGER, output4 INTEGER,"                 \
    " cadence_exact TEXT, resistance_exact TEXT,"                              \
    " final INTEGER NOT NULL DEFAULT 0,"                                       \
    " PRIMARY KEY (race_id, racer_id, second)) WITHOUT ROWID;"
#define V4_HISTORY_SQL                                                         \
    " DROP TABLE history_log;"                                                 \
    " CREATE TABLE class_history (class_id TEXT NOT NULL,"                     \
    " racer_id TEXT NOT NULL, second INTEGER NOT NULL,"                        \
    " output4 INTEGER NOT NULL, race_id TEXT NOT NULL,"                        \
    " PRIMARY KEY (class_id, racer_id, second)) WITHOUT ROWID;"

/* Turn a current database back into the version 2 schema, which lacked the
 * two tables that version 3 added and the index of version 4. */
static void downgrade_to_v2(const char *path)
{
    sqlite3 *db = NULL;
    char *err = NULL;

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    int rc = sqlite3_exec(
        db,
        "DROP TABLE last_messages; DROP TABLE history_log;"
        " DROP INDEX dead_letters_record;" V4_SAMPLES_SQL
        " INSERT INTO samples (race_id, racer_id, second, name, uuid)"
        " VALUES ('\"R-7\"', '5402746', 12, X'416E6E', X'35');"
        " PRAGMA user_version = 2;",
        NULL, NULL, &err);
    if (rc != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "downgrade: %s", err);
    sqlite3_close(db);
}

TEST(store_history_load_names_damaged_log_row)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct history_list rows = {0};

    put_history(st, "1", "7", 1, 10000, "3");
    store_close(st);
    damage_log(path, "UPDATE history_log SET data = substr(data, 1, 4)");
    st = open_store(path);
    ASSERT_EQ(store_history_load(st, "1", NULL, 0, copy_history, &rows), -1);
    ASSERT_CONTAINS(store_errmsg(st),
                    "class history log row 1 is damaged at entry 0 of 1");
    ASSERT_EQ(rows.count, 0);
    store_close(st);
}

TEST(store_migrates_v2_keeping_samples)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    struct history_list rows = {0};
    char err[1024] = "";

    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_state_put(st, "race", "\"R-7\"", "{}", 2));
    ASSERT_OK(st, store_commit(st));
    store_close(st);
    downgrade_to_v2(path);

    /* A reader never migrates, and its error names the fix. */
    ASSERT_EQ(store_open_readonly(path, &st, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "schema version 2");
    ASSERT_CONTAINS(err, "run podium run");

    st = open_store(path);
    ASSERT_EQ(sample_count(st), 1);
    ASSERT_OK(st, store_begin(st));
    put_history(st, "1", "5402746", 12, 2500000, "\"R-7\"");
    ASSERT_OK(st, store_last_message_put(st, "results", "\"R-7\"", 0, "{}", 2));
    ASSERT_OK(st, store_commit(st));
    store_close(st);

    ASSERT_EQ(store_open_readonly(path, &st, err, sizeof err), 0);
    ASSERT_EQ(sample_count(st), 1);
    ASSERT_OK(st, store_history_load(st, "1", NULL, 0, copy_history, &rows));
    ASSERT_EQ(rows.count, 1);
    store_close(st);
}

TEST(store_migrates_v3_dropping_repeats)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    sqlite3 *db = NULL;
    char *err = NULL;
    int64_t count = -1;

    store_close(st);
    /* A version 3 store in which a replay filed two records twice. */
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    int rc = sqlite3_exec(
        db,
        "DROP INDEX dead_letters_record;" V4_SAMPLES_SQL V4_HISTORY_SQL
        " INSERT INTO dead_letters (shard_id, seq, subseq, reason)"
        " VALUES ('s-1', '10', 0, 'not_json'), ('s-1', '10', 0, 'not_json'),"
        " ('s-1', '11', 0, 'not_json'), ('s-1', '11', 0, 'not_json'),"
        " ('s-1', '11', 1, 'not_json'), (NULL, NULL, NULL, 'other'),"
        " (NULL, NULL, NULL, 'other');"
        " PRAGMA user_version = 3;",
        NULL, NULL, &err);
    if (rc != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "downgrade: %s", err);
    sqlite3_close(db);

    st = open_store(path);
    ASSERT_OK(st, store_dead_letter_count(st, &count));
    ASSERT_EQ(count, 5);
    store_close(st);
}

/* The single integer that sql returns on the database at path. */
static int64_t query_int_at(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    int64_t value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return value;
}

/* The primary key of table, as written in its CREATE statement. */
static void table_sql(const char *path, const char *table, char *out,
                      size_t out_len)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(
        sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_schema WHERE name = ?1",
                           -1, &stmt, NULL),
        SQLITE_OK);
    sqlite3_bind_text(stmt, 1, table, -1, SQLITE_STATIC);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    snprintf(out, out_len, "%s", (const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

TEST(store_migrates_v4_into_sample_log)
{
    const char *path = db_path("podium.db");
    struct store *st = open_store(path);
    sqlite3 *db = NULL;
    char *err = NULL;
    char sql[1024];
    struct sample_list list = {0};
    struct history_list rows = {0};

    store_close(st);
    /* A version 4 store, with a samples table and a class history table. */
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    int rc = sqlite3_exec(
        db,
        V4_SAMPLES_SQL V4_HISTORY_SQL
        " INSERT INTO samples VALUES ('\"R-7\"', '9', 2, '\"open\"',"
        " X'416E6E', X'35', 1, 2, 900000, 450000, 2500000, '90', '45', 1),"
        " ('\"R-7\"', '10', 1, NULL, X'00', X'36', 3, 4, 1, 2, 3, '1.5',"
        " NULL, 0),"
        " ('\"R-7\"', '9', 1, NULL, X'', X'37', 5, 6, 7, 8, 9, '7', '8', 0);"
        " INSERT INTO class_history VALUES ('1', '9', 2, 20000, '3'),"
        " ('1', '10', 1, 10000, '3'), ('1', '9', 1, 30000, '3');"
        /* More than one log row's worth, in a race sorted after R-7. */
        " WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
        " WHERE i < 9000) INSERT INTO samples (race_id, racer_id, second)"
        " SELECT '\"S\"', '1', i FROM n;"
        " PRAGMA user_version = 4;",
        NULL, NULL, &err);
    if (rc != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "downgrade: %s", err);
    sqlite3_close(db);

    st = open_store(path);
    list.stop_after = 3;
    ASSERT_EQ(store_samples_load(st, collect_sample, &list), 7);
    int64_t count = 0;
    ASSERT_OK(st, store_sample_count(st, &count));
    ASSERT_EQ(count, 9003);
    store_close(st);
    ASSERT_EQ(query_int_at(path, "SELECT count(*) FROM sample_log"), 3);

    /* Every column survives, and the copied samples load by race, rider,
     * then second. */
    ASSERT_EQ(list.count, 3);
    ASSERT_STR_EQ(list.items[0].racer_id, "10");
    ASSERT_EQ(list.items[0].second, 1);
    ASSERT_EQ(list.items[0].raw.cadence4, 1);
    ASSERT_STR_EQ(list.items[1].racer_id, "9");
    ASSERT_EQ(list.items[1].second, 1);
    ASSERT_STR_EQ(list.items[2].racer_id, "9");
    ASSERT_EQ(list.items[2].second, 2);
    ASSERT_EQ(list.items[2].raw.device_ts_ms, 1);
    ASSERT_EQ(list.items[2].raw.arrival_ms, 2);
    ASSERT_EQ(list.items[2].raw.resistance4, 450000);
    ASSERT_EQ(list.items[2].raw.output4, 2500000);
    ASSERT_TRUE(list.items[2].raw.final);

    ASSERT_EQ(store_open_readonly(path, &st, sql, sizeof sql), 0);
    ASSERT_OK(st, store_history_load(st, "1", NULL, 0, copy_history, &rows));
    store_close(st);
    ASSERT_EQ(rows.count, 3);
    ASSERT_STR_EQ(rows.lines[0], "1 10 1 10000 3");
    ASSERT_STR_EQ(rows.lines[1], "1 9 1 30000 3");
    ASSERT_STR_EQ(rows.lines[2], "1 9 2 20000 3");

    table_sql(path, "sample_log", sql, sizeof sql);
    ASSERT_CONTAINS(sql, "data BLOB NOT NULL");
    table_sql(path, "history_log", sql, sizeof sql);
    ASSERT_CONTAINS(sql, "data BLOB NOT NULL");
    ASSERT_EQ(query_int_at(path, "SELECT count(*) FROM sqlite_schema"
                                 " WHERE name IN ('samples', 'class_history')"),
              0);
}

TEST(store_readonly_reads_beside_writer)
{
    const char *path = db_path("podium.db");
    struct store *writer = open_store(path);
    struct store *reader = NULL;
    struct history_list rows = {0};
    char err[1024] = "";

    ASSERT_OK(writer, store_begin(writer));
    put_history(writer, "1", "7", 1, 10000, "3");
    ASSERT_OK(writer, store_commit(writer));

    /* The writer holds the write lock with a batch in progress. */
    ASSERT_OK(writer, store_begin(writer));
    put_history(writer, "1", "7", 2, 20000, "3");
    if (store_open_readonly(path, &reader, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "store_open_readonly: %s", err);
    ASSERT_OK(reader,
              store_history_load(reader, "1", NULL, 0, copy_history, &rows));
    ASSERT_EQ(rows.count, 1);
    ASSERT_STR_EQ(rows.lines[0], "1 7 1 10000 3");

    /* The reader cannot write. */
    struct store_history_row row = {"1", "7", 3, 1, "3"};
    ASSERT_EQ(store_history_put(reader, &row), -1);
    ASSERT_CONTAINS(store_errmsg(reader), "SQLITE_READONLY");
    ASSERT_OK(writer, store_commit(writer));
    store_close(reader);
    store_close(writer);
}

TEST(store_readonly_missing_file_names_path)
{
    const char *path = db_path("absent.db");
    struct store *st = NULL;
    char err[1024] = "";

    ASSERT_EQ(store_open_readonly(path, &st, err, sizeof err), -1);
    ASSERT_TRUE(st == NULL);
    ASSERT_CONTAINS(err, path);
    ASSERT_CONTAINS(err, "No such file");
    ASSERT_CONTAINS(err, "store.path");
    ASSERT_FALSE(file_exists(path));
}

/* ---- crash atomicity ------------------------------------------------ */

#define CRASH_SHARD   "shardId-000000000000"
#define CRASH_SAMPLES 60000

enum crash_point { CRASH_BEFORE_COMMIT, CRASH_AFTER_COMMIT };

/*
 * Child process: write a batch of CRASH_SAMPLES samples, a checkpoint and an
 * outbox row, commit it or not, tell the parent through fd and wait to be
 * killed. The batch is large enough for SQLite to spill uncommitted pages to
 * the WAL before the commit. The child uses _exit so that it never runs the
 * parent's exit handlers, which remove the temporary directory.
 */
static void crash_child(const char *path, enum crash_point point, int fd)
{
    char err[1024];
    struct store *st;
    struct store_checkpoint cp = {CRASH_SHARD, "200", 0, false};

    if (store_open(path, &st, err, sizeof err) != 0 || store_begin(st) != 0)
        _exit(10);
    for (int i = 0; i < CRASH_SAMPLES; i++) {
        struct store_sample s = make_sample("\"R-2\"", "1", i);
        if (store_sample_put(st, &s) != 0)
            _exit(11);
    }
    if (store_checkpoint_put(st, &cp) != 0 ||
        store_outbox_add(st, "race/R-2", "{}", 2, NULL) != 0)
        _exit(12);
    if (point == CRASH_AFTER_COMMIT && store_commit(st) != 0)
        _exit(13);

    if (write(fd, "r", 1) != 1)
        _exit(14);
    for (;;)
        pause();
}

static void crash_before_commit(const char *path, int fd)
{
    crash_child(path, CRASH_BEFORE_COMMIT, fd);
}

static void crash_after_commit(const char *path, int fd)
{
    crash_child(path, CRASH_AFTER_COMMIT, fd);
}

/*
 * Fork a child running body(path, fd), wait until it writes a byte to fd,
 * wait delay_ms more, then kill it with SIGKILL.
 */
static void kill_child_when_ready(const char *path,
                                  void (*body)(const char *path, int fd),
                                  unsigned delay_ms)
{
    int fds[2];
    int status = 0;
    char byte;

    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        close(fds[0]);
        body(path, fds[1]);
        _exit(15);
    }
    close(fds[1]);

    ssize_t n = read(fds[0], &byte, 1);
    close(fds[0]);
    if (n != 1) {
        waitpid(pid, &status, 0);
        test_fail(__FILE__, __LINE__, "writer exited early, status %d", status);
    }
    if (delay_ms > 0)
        usleep(delay_ms * 1000);

    ASSERT_EQ(kill(pid, SIGKILL), 0);
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_EQ(WTERMSIG(status), SIGKILL);
}

/* Commit a first batch (checkpoint "100", one sample, one message). */
static void commit_first_batch(const char *path)
{
    struct store *st = open_store(path);
    struct store_sample s = make_sample("\"R-1\"", "1", 0);
    struct store_checkpoint cp = {CRASH_SHARD, "100", 0, false};

    ASSERT_OK(st, store_begin(st));
    ASSERT_OK(st, store_sample_put(st, &s));
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    ASSERT_OK(st, store_outbox_add(st, "race/R-1", "{}", 2, NULL));
    ASSERT_OK(st, store_commit(st));
    store_close(st);
}

TEST(store_crash_before_commit_keeps_nothing)
{
    const char *path = db_path("podium.db");

    commit_first_batch(path);
    kill_child_when_ready(path, crash_before_commit, 0);

    struct store *st = open_store(path);
    struct checkpoint_list list = load_checkpoints(st);
    ASSERT_EQ(sample_count(st), 1);
    ASSERT_EQ(outbox_count(st), 1);
    ASSERT_EQ(list.count, 1);
    ASSERT_STR_EQ(list.items[0].seq, "100");
    store_close(st);
}

TEST(store_crash_after_commit_keeps_all)
{
    const char *path = db_path("podium.db");

    commit_first_batch(path);
    kill_child_when_ready(path, crash_after_commit, 0);

    struct store *st = open_store(path);
    struct checkpoint_list list = load_checkpoints(st);
    ASSERT_EQ(sample_count(st), 1 + CRASH_SAMPLES);
    ASSERT_EQ(outbox_count(st), 2);
    ASSERT_EQ(list.count, 1);
    ASSERT_STR_EQ(list.items[0].seq, "200");
    store_close(st);
}

#define LOOP_BATCH_SAMPLES 200

static int read_loop_checkpoint(void *arg, const struct store_checkpoint *cp)
{
    *(int64_t *)arg = cp->seq ? strtoll(cp->seq, NULL, 10) : 0;
    return 0;
}

/*
 * Child process: commit batches n = last checkpoint + 1, + 2, ... forever.
 * Batch n writes LOOP_BATCH_SAMPLES samples, as many idempotency rows, one
 * outbox row and checkpoint n, so after any crash the counts must match the
 * stored checkpoint exactly.
 */
static void loop_child(const char *path, int fd)
{
    char err[1024];
    char seq[32];
    char key[64];
    struct store *st;
    int64_t batch = 0;
    bool reported = false;

    if (store_open(path, &st, err, sizeof err) != 0 ||
        store_open_idempotency(st, &idem_opts, test_owner, err, sizeof err) ||
        store_checkpoints_load(st, read_loop_checkpoint, &batch) != 0)
        _exit(10);

    for (;;) {
        batch++;
        snprintf(seq, sizeof seq, "%lld", (long long)batch);
        struct store_checkpoint cp = {CRASH_SHARD, seq, 0, false};
        if (store_begin(st) != 0)
            _exit(11);
        for (int i = 0; i < LOOP_BATCH_SAMPLES; i++) {
            int32_t second = (int32_t)(batch * LOOP_BATCH_SAMPLES + i);
            struct store_sample s = make_sample("\"R-9\"", "1", second);
            snprintf(key, sizeof key, "R-9/1/%d", (int)second);
            if (store_sample_put(st, &s) != 0 || claim_key(st, key) != IDEM_NEW)
                _exit(12);
        }
        if (store_checkpoint_put(st, &cp) != 0 ||
            store_outbox_add(st, "race/R-9", seq, strlen(seq), NULL) != 0 ||
            store_commit(st) != 0)
            _exit(13);
        if (!reported && write(fd, "r", 1) != 1)
            _exit(14);
        reported = true;
    }
}

TEST(store_crash_keeps_whole_batches)
{
    const char *path = db_path("podium.db");
    const unsigned delays_ms[] = {5, 40, 95, 150};
    int64_t previous = 0;

    commit_first_batch(path);
    for (size_t round = 0; round < sizeof delays_ms / sizeof delays_ms[0];
         round++) {
        kill_child_when_ready(path, loop_child, delays_ms[round]);

        struct store *st = open_store(path);
        int64_t batch = 0;
        ASSERT_OK(st, store_checkpoints_load(st, read_loop_checkpoint, &batch));
        ASSERT_TRUE(batch >= 100 + 1);
        ASSERT_TRUE(batch > previous);
        ASSERT_EQ(sample_count(st), 1 + (batch - 100) * LOOP_BATCH_SAMPLES);
        ASSERT_EQ(outbox_count(st), 1 + (batch - 100));
        store_close(st);
        previous = batch;
    }
}

/* ---- commit latency ------------------------------------------------- */

#define LATENCY_BATCHES 20

static double elapsed_ms(const struct timespec *from, const struct timespec *to)
{
    return (double)(to->tv_sec - from->tv_sec) * 1e3 +
           (double)(to->tv_nsec - from->tv_nsec) / 1e6;
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* Write one batch of the size the daemon commits: see the print below. */
static void write_latency_batch(struct store *st, int batch)
{
    char key[64];
    char seq[32];

    for (int i = 0; i < 1000; i++) {
        int32_t second = batch * 1000 + i;
        struct store_sample s = make_sample("\"R-1\"", "1", second);

        snprintf(key, sizeof key, "R-1/1/%d", (int)second);
        ASSERT_OK(st, store_sample_put(st, &s));
        ASSERT_EQ(claim_key(st, key), IDEM_NEW);
    }

    snprintf(seq, sizeof seq, "%d", batch + 1);
    struct store_checkpoint cp = {CRASH_SHARD, seq, 0, false};
    ASSERT_OK(st, store_checkpoint_put(st, &cp));
    for (int i = 0; i < 10; i++)
        ASSERT_OK(st, store_outbox_add(st, "race/R-1", "{}", 2, NULL));
}

/*
 * Print how long a batch takes with synchronous=FULL. It asserts nothing
 * about time: the figure depends on the disk and on the build flags.
 */
TEST(store_batch_commit_prints_latency)
{
    struct store *st = open_store(db_path("podium.db"));
    double total_ms[LATENCY_BATCHES];
    double commit_ms[LATENCY_BATCHES];
    struct timespec start, before_commit, end;

    for (int batch = 0; batch < LATENCY_BATCHES; batch++) {
        clock_gettime(CLOCK_MONOTONIC, &start);
        ASSERT_OK(st, store_begin(st));
        write_latency_batch(st, batch);
        clock_gettime(CLOCK_MONOTONIC, &before_commit);
        ASSERT_OK(st, store_commit(st));
        clock_gettime(CLOCK_MONOTONIC, &end);
        total_ms[batch] = elapsed_ms(&start, &end);
        commit_ms[batch] = elapsed_ms(&before_commit, &end);
    }
    ASSERT_EQ(sample_count(st), LATENCY_BATCHES * 1000);
    ASSERT_EQ(outbox_count(st), LATENCY_BATCHES * 10);
    store_close(st);

    qsort(total_ms, LATENCY_BATCHES, sizeof total_ms[0], compare_doubles);
    qsort(commit_ms, LATENCY_BATCHES, sizeof commit_ms[0], compare_doubles);
    fprintf(stderr,
            "batch of 1000 samples, 1000 idempotency rows, 1 checkpoint and"
            " 10 outbox rows, %d batches:\n"
            "  BEGIN to end of COMMIT: median %.2f ms, max %.2f ms\n"
            "  COMMIT alone:           median %.2f ms, max %.2f ms\n",
            LATENCY_BATCHES, total_ms[LATENCY_BATCHES / 2],
            total_ms[LATENCY_BATCHES - 1], commit_ms[LATENCY_BATCHES / 2],
            commit_ms[LATENCY_BATCHES - 1]);
}
