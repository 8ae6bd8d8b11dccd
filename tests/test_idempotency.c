/*
 * Tests of the idempotency table (store/idempotency.c and its index and
 * cache). Every case uses a real SQLite file in a fresh directory. CTest
 * runs each case twice: without the LRU cache, and with
 * PODIUM_IDEM_CACHE=1024 (the "_cached" names), because every result must
 * be the same with the cache on and off. Times are explicit now_ms values,
 * so no case sleeps.
 */
#include "store/idem_internal.h"
#include "store/idempotency.h"
#include "tests/testlib.h"

#include <errno.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <unistd.h>

/* 2023-11-14T22:13:20Z, a whole second. */
#define T0         INT64_C(1700000000000)
#define EXPIRY_S   3600
#define TIMEOUT_MS 30000

#define ASSERT_OK(t, call)                                                     \
    do {                                                                       \
        if ((call) != 0)                                                       \
            test_fail(__FILE__, __LINE__, "%s failed: %s", #call,              \
                      idem_errmsg(t));                                         \
    } while (0)

#define ASSERT_CONTAINS(haystack, needle)                                      \
    do {                                                                       \
        const char *test_h_ = (haystack), *test_n_ = (needle);                 \
        if (strstr(test_h_, test_n_) == NULL)                                  \
            test_fail(__FILE__, __LINE__, "\"%s\" does not contain \"%s\"",    \
                      test_h_, test_n_);                                       \
    } while (0)

static const uint8_t OWNER_A[IDEM_OWNER_LEN] = "owner-A-00000000";
static const uint8_t OWNER_B[IDEM_OWNER_LEN] = "owner-B-11111111";

/* ---- helpers -------------------------------------------------------- */

static size_t cache_size(void)
{
    const char *s = getenv("PODIUM_IDEM_CACHE");

    return s != NULL ? (size_t)strtoul(s, NULL, 10) : 0;
}

static bool cache_on(void)
{
    return cache_size() > 0;
}

static struct idem_options options(int64_t expiry_s, int64_t timeout_ms)
{
    struct idem_options o = {expiry_s, timeout_ms, cache_size()};

    return o;
}

static const char *db_path(const char *name)
{
    static char path[4096];

    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    return path;
}

static struct idem_table *open_with(const char *path,
                                    const struct idem_options *opts,
                                    const uint8_t *owner)
{
    char err[1024];
    struct idem_table *t = NULL;

    if (idem_open_path(path, opts, owner, &t, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "idem_open_path: %s", err);
    return t;
}

static struct idem_table *open_default(const char *path, const uint8_t *owner)
{
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);

    return open_with(path, &o, owner);
}

/* A payload hash of 32 copies of byte b. */
static const uint8_t *hash_of(uint8_t b)
{
    static uint8_t hashes[256][IDEM_HASH_LEN];

    memset(hashes[b], b, IDEM_HASH_LEN);
    return hashes[b];
}

static enum idem_result claim(struct idem_table *t, const char *key,
                              uint8_t hash_byte, int64_t now_ms,
                              struct idem_record *existing)
{
    struct idem_claim c = {key,
                           key != NULL ? strlen(key) : 0,
                           hash_of(hash_byte),
                           now_ms,
                           "shard-1",
                           "123",
                           4};
    enum idem_result r;

    if (idem_claim(t, &c, &r, existing) != 0)
        test_fail(__FILE__, __LINE__, "idem_claim(%s): %s", key,
                  idem_errmsg(t));
    return r;
}

static int complete(struct idem_table *t, const char *key, const char *outcome,
                    int64_t now_ms)
{
    return idem_complete(t, key, strlen(key), outcome, now_ms);
}

static int release(struct idem_table *t, const char *key)
{
    return idem_release(t, key, strlen(key));
}

/* Look key up; 1 when a row exists, 0 when none. */
static int lookup(struct idem_table *t, const char *key, int64_t now_ms,
                  struct idem_record *out)
{
    int rc = idem_lookup(t, key, strlen(key), now_ms, out);

    if (rc < 0)
        test_fail(__FILE__, __LINE__, "idem_lookup(%s): %s", key,
                  idem_errmsg(t));
    return rc;
}

static uint64_t row_count(const struct idem_table *t)
{
    struct idem_stats s;

    idem_stats(t, &s);
    return s.rows;
}

/* Run SQL on the file through a connection of its own, the way an older
 * build or an operator would. */
static void exec_on_file(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;

    if (sqlite3_open(path, &db) != SQLITE_OK ||
        sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK)
        test_fail(__FILE__, __LINE__, "%s: %s", sql,
                  msg != NULL ? msg : sqlite3_errmsg(db));
    sqlite3_close(db);
}

/* Create the tables of a fresh database file and close it again. */
static void create_tables(const char *path)
{
    idem_close(open_default(path, OWNER_A));
}

/*
 * Fork a child that opens path as OWNER_A, claims key at now_ms, commits,
 * and is then killed with SIGKILL before it can complete the claim.
 */
static void claim_in_killed_child(const char *path, const char *key,
                                  int64_t now_ms)
{
    int fds[2];
    ASSERT_EQ(pipe(fds), 0);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);

    if (pid == 0) {
        struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
        struct idem_table *t = NULL;
        char err[512];
        struct idem_claim c = {key,  strlen(key), hash_of(1), now_ms,
                               NULL, NULL,        0};
        enum idem_result r;
        if (idem_open_path(path, &o, OWNER_A, &t, err, sizeof err) != 0 ||
            idem_begin(t) != 0 || idem_claim(t, &c, &r, NULL) != 0 ||
            r != IDEM_NEW || idem_commit(t) != 0)
            _exit(3);
        if (write(fds[1], "c", 1) != 1)
            _exit(4);
        for (;;)
            pause();
    }

    char byte = 0;
    close(fds[1]);
    ASSERT_EQ(read(fds[0], &byte, 1), 1);
    close(fds[0]);
    ASSERT_EQ(kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_EQ(WTERMSIG(status), SIGKILL);
}

/* ---- claim results ---------------------------------------------------- */

TEST(idem_first_claim_is_new)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(1), IDEM_HASH_LEN);
    ASSERT_EQ(rec.expiry_s, T0 / 1000 + EXPIRY_S);
    ASSERT_EQ(rec.in_progress_expiry_ms, T0 + TIMEOUT_MS);
    ASSERT_STR_EQ(rec.shard_id, "shard-1");
    ASSERT_STR_EQ(rec.seq, "123");
    ASSERT_EQ(rec.subseq, 4);
    ASSERT_STR_EQ(rec.outcome, "");
    ASSERT_EQ(row_count(t), 1);
    ASSERT_EQ(lookup(t, "k2", T0, &rec), 0);
    idem_close(t);
}

TEST(idem_completed_claim_is_duplicate)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 500));
    for (int i = 0; i < 3; i++) {
        memset(&rec, 0, sizeof rec);
        ASSERT_EQ(claim(t, "k1", 1, T0 + 1000, &rec), IDEM_DUPLICATE);
        ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
        ASSERT_STR_EQ(rec.outcome, "applied");
        ASSERT_EQ(rec.in_progress_expiry_ms, 0);
        ASSERT_STR_EQ(rec.shard_id, "shard-1");
    }
    ASSERT_EQ(row_count(t), 1);

    struct idem_stats s;
    idem_stats(t, &s);
    if (cache_on())
        ASSERT_EQ(s.cache_hits, 3);
    else
        ASSERT_EQ(s.cache_hits + s.cache_misses, 0);
    idem_close(t);
}

TEST(idem_other_hash_is_conflict)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    /* Validation comes before status: in progress, yet a conflict. */
    ASSERT_EQ(claim(t, "k1", 2, T0 + 1, &rec), IDEM_CONFLICT);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(1), IDEM_HASH_LEN);

    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 2));
    ASSERT_EQ(claim(t, "k1", 2, T0 + 3, &rec), IDEM_CONFLICT);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_STR_EQ(rec.outcome, "applied");
    idem_close(t);
}

TEST(idem_conflict_keeps_first_hash)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k1", 2, T0, NULL), IDEM_CONFLICT);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 1);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(1), IDEM_HASH_LEN);
    ASSERT_EQ(claim(t, "k1", 2, T0, NULL), IDEM_CONFLICT);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_DUPLICATE);

    /* The stored hash also survives a reopen. */
    idem_close(t);
    t = open_default(db_path("t.db"), OWNER_A);
    ASSERT_EQ(claim(t, "k1", 2, T0, NULL), IDEM_CONFLICT);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_DUPLICATE);
    idem_close(t);
}

TEST(idem_own_live_claim_in_progress)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k1", 1, T0 + 1000, &rec), IDEM_IN_PROGRESS);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_EQ(claim(t, "k1", 1, T0 + TIMEOUT_MS - 1, NULL), IDEM_IN_PROGRESS);

    /* Once the in-progress expiry passes, the claim may be made again. */
    ASSERT_EQ(claim(t, "k1", 1, T0 + TIMEOUT_MS, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(t, "k1", T0 + TIMEOUT_MS, &rec), 1);
    ASSERT_EQ(rec.in_progress_expiry_ms, T0 + 2 * TIMEOUT_MS);
    ASSERT_EQ(rec.expiry_s, T0 / 1000 + EXPIRY_S);
    ASSERT_EQ(row_count(t), 1);
    idem_close(t);
}

TEST(idem_missing_key_stores_nothing)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_claim c = {NULL, 0, hash_of(1), T0, NULL, NULL, 0};
    enum idem_result r = IDEM_NEW;

    ASSERT_OK(t, idem_claim(t, &c, &r, NULL));
    ASSERT_EQ(r, IDEM_KEY_MISSING);
    c.key = "";
    r = IDEM_NEW;
    ASSERT_OK(t, idem_claim(t, &c, &r, NULL));
    ASSERT_EQ(r, IDEM_KEY_MISSING);
    c.key = "k1"; /* a pointer with length 0 is missing too */
    ASSERT_OK(t, idem_claim(t, &c, &r, NULL));
    ASSERT_EQ(r, IDEM_KEY_MISSING);
    ASSERT_EQ(row_count(t), 0);

    ASSERT_EQ(idem_complete(t, NULL, 0, "applied", T0), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "key is missing");
    ASSERT_EQ(idem_release(t, "", 0), -1);
    idem_close(t);
}

TEST(idem_invalid_claim_is_rejected)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_claim c = {"k1", 2, NULL, T0, NULL, NULL, 0};
    enum idem_result r;
    char long_key[IDEM_MAX_KEY + 1];

    ASSERT_EQ(idem_claim(t, &c, &r, NULL), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "payload hash is missing");
    c.hash = hash_of(1);
    c.now_ms = -1;
    ASSERT_EQ(idem_claim(t, &c, &r, NULL), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "invalid now_ms -1");
    c.now_ms = T0;
    memset(long_key, 'k', sizeof long_key);
    c.key = long_key;
    c.key_len = sizeof long_key;
    ASSERT_EQ(idem_claim(t, &c, &r, NULL), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "too long: max 1024");
    ASSERT_EQ(row_count(t), 0);
    idem_close(t);
}

/* ---- owners ----------------------------------------------------------- */

TEST(idem_stale_owner_complete_rejected)
{
    const char *path = db_path("t.db");
    struct idem_table *a = open_default(path, OWNER_A);
    struct idem_record rec;

    ASSERT_OK(a, idem_begin(a));
    ASSERT_EQ(claim(a, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(a, idem_commit(a));

    /* B takes the claim over once A's in-progress expiry has passed. */
    struct idem_table *b = open_default(path, OWNER_B);
    ASSERT_OK(b, idem_begin(b));
    ASSERT_EQ(claim(b, "k1", 1, T0 + TIMEOUT_MS, NULL), IDEM_NEW);
    ASSERT_OK(b, idem_commit(b));

    ASSERT_OK(a, idem_begin(a));
    ASSERT_EQ(complete(a, "k1", "from A", T0 + TIMEOUT_MS + 1), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(a), "not an INPROGRESS claim of this owner");
    ASSERT_EQ(release(a, "k1"), -EPERM);
    idem_rollback(a);

    ASSERT_OK(b, idem_begin(b));
    ASSERT_OK(b, complete(b, "k1", "from B", T0 + TIMEOUT_MS + 2));
    ASSERT_OK(b, idem_commit(b));

    ASSERT_EQ(lookup(a, "k1", T0 + TIMEOUT_MS + 3, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_B, IDEM_OWNER_LEN);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(1), IDEM_HASH_LEN);
    ASSERT_STR_EQ(rec.outcome, "from B");
    idem_close(a);
    idem_close(b);
}

TEST(idem_complete_needs_own_claim)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);

    ASSERT_EQ(complete(t, "never", "applied", T0), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(t), "no claim");
    ASSERT_EQ(release(t, "never"), -EPERM);

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    ASSERT_EQ(complete(t, "k1", "again", T0), -EPERM);
    ASSERT_EQ(release(t, "k1"), -EPERM);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_DUPLICATE);
    idem_close(t);
}

TEST(idem_release_makes_key_new)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, release(t, "k1"));
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    ASSERT_EQ(row_count(t), 0);
    ASSERT_EQ(claim(t, "k1", 2, T0 + 1, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(t, "k1", T0 + 1, &rec), 1);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(2), IDEM_HASH_LEN);
    idem_close(t);
}

/* ---- crashes and restarts --------------------------------------------- */

TEST(idem_killed_claimer_is_taken_over)
{
    const char *path = db_path("t.db");
    struct idem_record rec;

    claim_in_killed_child(path, "k1", T0);

    /* 5 s later the dead owner's in-progress expiry is 25 s away, but a
     * claim of another owner may not wait for it. */
    struct idem_table *t = open_default(path, OWNER_B);
    ASSERT_EQ(lookup(t, "k1", T0 + 5000, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_EQ(rec.in_progress_expiry_ms, T0 + TIMEOUT_MS);

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim(t, "k1", 1, T0 + 5000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 5001));
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(lookup(t, "k1", T0 + 5002, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_B, IDEM_OWNER_LEN);

    /* A taken-over row is no longer dead, so nothing is reclaimed. */
    size_t reclaimed = 99;
    ASSERT_OK(t, idem_begin(t));
    ASSERT_OK(t, idem_reclaim_dead(t, &reclaimed));
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(reclaimed, 0);
    ASSERT_EQ(row_count(t), 1);
    idem_close(t);
}

TEST(idem_reclaim_deletes_killed_claim)
{
    const char *path = db_path("t.db");
    struct idem_record rec;
    size_t reclaimed = 0;

    claim_in_killed_child(path, "k1", T0);

    struct idem_table *t = open_default(path, OWNER_B);
    ASSERT_EQ(row_count(t), 1);
    ASSERT_OK(t, idem_begin(t));
    ASSERT_OK(t, idem_reclaim_dead(t, &reclaimed));
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(reclaimed, 1);
    ASSERT_EQ(row_count(t), 0);
    ASSERT_EQ(lookup(t, "k1", T0 + 5000, &rec), 0);
    ASSERT_EQ(claim(t, "k1", 1, T0 + 5000, NULL), IDEM_NEW);

    ASSERT_OK(t, idem_reclaim_dead(t, &reclaimed));
    ASSERT_EQ(reclaimed, 0);
    idem_close(t);

    /* The deletion was committed: a reopen finds only B's new claim. */
    t = open_default(path, OWNER_B);
    ASSERT_EQ(row_count(t), 1);
    ASSERT_EQ(lookup(t, "k1", T0 + 5000, &rec), 1);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_B, IDEM_OWNER_LEN);
    idem_close(t);
}

TEST(idem_null_progress_expiry_never_blocks)
{
    const char *path = db_path("t.db");
    char sql[1024];
    size_t reclaimed = 0;

    /* Rows as a build without in-progress expiries wrote them: NULL, 0,
     * and an owner token of another length. */
    create_tables(path);
    snprintf(sql, sizeof sql,
             "INSERT INTO idem_rows (id, key, status, expiry_s,"
             " in_progress_expiry_ms, owner, hash) VALUES"
             " (1, 'k-null', 1, %" PRId64 ", NULL, zeroblob(16),"
             "  zeroblob(32)),"
             " (2, 'k-zero', 1, %" PRId64 ", 0, zeroblob(16), zeroblob(32)),"
             " (3, 'k-short', 1, %" PRId64 ", NULL, x'0102', zeroblob(32))",
             T0 / 1000 + EXPIRY_S, T0 / 1000 + EXPIRY_S, T0 / 1000 + EXPIRY_S);
    exec_on_file(path, sql);

    struct idem_table *t = open_default(path, OWNER_B);
    ASSERT_EQ(claim(t, "k-null", 0, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k-short", 0, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, idem_reclaim_dead(t, &reclaimed));
    ASSERT_EQ(reclaimed, 1); /* k-zero; the others are B's now */
    ASSERT_EQ(claim(t, "k-zero", 0, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k-null", "applied", T0 + 2000));
    ASSERT_OK(t, complete(t, "k-zero", "applied", T0 + 2000));
    ASSERT_EQ(row_count(t), 3);
    idem_close(t);
}

TEST(idem_new_owner_token_does_not_stall)
{
    const char *path = db_path("t.db");
    struct idem_options no_timeout = options(EXPIRY_S, 0);
    struct idem_record rec;

    /* A claims without an in-progress timeout, then stops cleanly before
     * completing, as a container that is replaced would. */
    struct idem_table *a = open_with(path, &no_timeout, OWNER_A);
    ASSERT_EQ(claim(a, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(a, "k1", T0, &rec), 1);
    ASSERT_EQ(rec.in_progress_expiry_ms, 0);
    ASSERT_EQ(claim(a, "k1", 1, T0 + 1000, NULL), IDEM_IN_PROGRESS);
    idem_close(a);

    /* Its successor has another token and gets the key at once. */
    struct idem_table *b = open_with(path, &no_timeout, OWNER_B);
    ASSERT_EQ(claim(b, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(b, "k1", T0, &rec), 1);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_B, IDEM_OWNER_LEN);
    ASSERT_EQ(claim(b, "k1", 1, T0 + 1000, NULL), IDEM_IN_PROGRESS);
    ASSERT_OK(b, complete(b, "k1", "applied", T0 + 1000));
    idem_close(b);
}

/* ---- expiry ----------------------------------------------------------- */

TEST(idem_expiry_boundary_is_exact)
{
    const int64_t expiry = 100;
    struct idem_options o = options(expiry, TIMEOUT_MS);
    struct idem_table *t = open_with(db_path("t.db"), &o, OWNER_A);
    struct idem_record rec;
    /* Completion at t sets expiry_s = t / 1000 + expiry, rounding down. */
    const int64_t t1 = T0 + 999;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", t1));
    ASSERT_EQ(lookup(t, "k1", t1 + (expiry - 1) * 1000, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_EQ(claim(t, "k1", 1, t1 + (expiry - 1) * 1000, NULL),
              IDEM_DUPLICATE);

    ASSERT_EQ(lookup(t, "k1", t1 + expiry * 1000, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_EXPIRED);
    /* An expired row allows any payload, and its hash is not compared. */
    ASSERT_EQ(claim(t, "k1", 2, t1 + expiry * 1000, NULL), IDEM_NEW);
    ASSERT_EQ(lookup(t, "k1", t1 + expiry * 1000, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(2), IDEM_HASH_LEN);
    ASSERT_EQ(row_count(t), 2);
    idem_close(t);
}

TEST(idem_expire_step_is_bounded)
{
    const int64_t expiry = 100;
    struct idem_options o = options(expiry, TIMEOUT_MS);
    struct idem_table *t = open_with(db_path("t.db"), &o, OWNER_A);
    char key[32];
    size_t deleted = 0;
    struct idem_record rec;

    /* Key i arrives and completes at T0 + i s, so it expires at
     * T0 + i s + expiry. */
    ASSERT_OK(t, idem_begin(t));
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ASSERT_EQ(claim(t, key, 1, T0 + i * 1000, NULL), IDEM_NEW);
        ASSERT_OK(t, complete(t, key, "applied", T0 + i * 1000));
    }
    ASSERT_OK(t, idem_commit(t));

    /* At T0 + 600 s, keys 0..500 have expired. */
    const int64_t now = T0 + (500 + expiry) * 1000;
    for (int step = 0; step < 5; step++) {
        ASSERT_OK(t, idem_expire_step(t, now, 100, &deleted));
        ASSERT_EQ(deleted, 100);
        ASSERT_EQ(row_count(t), 1000 - 100 * (step + 1));
    }
    ASSERT_OK(t, idem_expire_step(t, now, 100, &deleted));
    ASSERT_EQ(deleted, 1);
    ASSERT_OK(t, idem_expire_step(t, now, 100, &deleted));
    ASSERT_EQ(deleted, 0);
    ASSERT_EQ(row_count(t), 499);

    ASSERT_EQ(lookup(t, "key-0", now, &rec), 0);
    ASSERT_EQ(lookup(t, "key-500", now, &rec), 0);
    ASSERT_EQ(lookup(t, "key-501", now, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_EQ(claim(t, "key-999", 1, now, NULL), IDEM_DUPLICATE);
    ASSERT_EQ(claim(t, "key-3", 1, now, NULL), IDEM_NEW);

    /* The reopened table counts the same rows. */
    idem_close(t);
    t = open_with(db_path("t.db"), &o, OWNER_A);
    ASSERT_EQ(row_count(t), 500);
    ASSERT_EQ(lookup(t, "key-501", now, &rec), 1);
    ASSERT_EQ(lookup(t, "key-3", now, &rec), 1);
    ASSERT_OK(t, idem_expire_step(t, T0 + 10000000, 0, &deleted));
    ASSERT_EQ(deleted, 0);
    ASSERT_OK(t, idem_expire_step(t, T0 + 10000000, SIZE_MAX, &deleted));
    ASSERT_EQ(deleted, 500);
    ASSERT_EQ(row_count(t), 0);
    idem_close(t);
}

TEST(idem_expire_waits_behind_live_row)
{
    const int64_t expiry = 100;
    struct idem_options o = options(expiry, TIMEOUT_MS);
    struct idem_table *t = open_with(db_path("t.db"), &o, OWNER_A);
    size_t deleted = 0;
    struct idem_record rec;

    /* "slow" is claimed first and completed last, so it outlives "fast",
     * which sits to its right. */
    ASSERT_EQ(claim(t, "slow", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "fast", 1, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "fast", "applied", T0 + 1000));
    ASSERT_OK(t, complete(t, "slow", "applied", T0 + 50000));

    const int64_t now = T0 + (1 + expiry) * 1000;
    ASSERT_OK(t, idem_expire_step(t, now, 100, &deleted));
    ASSERT_EQ(deleted, 0);
    ASSERT_EQ(lookup(t, "fast", now, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_EXPIRED);
    ASSERT_EQ(claim(t, "fast", 2, now, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "slow", 1, now, NULL), IDEM_DUPLICATE);

    const int64_t later = T0 + (50 + expiry) * 1000;
    ASSERT_OK(t, idem_expire_step(t, later, 100, &deleted));
    ASSERT_EQ(deleted, 2);
    ASSERT_EQ(lookup(t, "slow", later, &rec), 0);
    ASSERT_EQ(lookup(t, "fast", later, &rec), 1);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(2), IDEM_HASH_LEN);
    idem_close(t);
}

TEST(idem_expire_step_drops_cached_row)
{
    const int64_t expiry = 100;
    struct idem_options o = options(expiry, TIMEOUT_MS);
    struct idem_table *t = open_with(db_path("t.db"), &o, OWNER_A);
    size_t deleted = 0;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_DUPLICATE);
    ASSERT_OK(t, idem_expire_step(t, T0 + expiry * 1000, 10, &deleted));
    ASSERT_EQ(deleted, 1);

    /* A caller clock that steps back must not find the deleted row. */
    ASSERT_EQ(claim(t, "k1", 1, T0 + 1000, NULL), IDEM_NEW);
    idem_close(t);
}

/* ---- index ------------------------------------------------------------ */

TEST(idem_index_survives_reopen_large)
{
    const char *path = db_path("t.db");
    const int n = 200000;
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;
    struct idem_stats s;
    char key[32];

    ASSERT_OK(t, idem_begin(t));
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "device-%07d", i);
        ASSERT_EQ(claim(t, key, (uint8_t)i, T0, NULL), IDEM_NEW);
        if (i % 2 == 0)
            ASSERT_OK(t, complete(t, key, "applied", T0));
    }
    ASSERT_OK(t, idem_commit(t));
    idem_close(t);

    t = open_default(path, OWNER_A);
    idem_stats(t, &s);
    ASSERT_EQ(s.rows, n);
    ASSERT_EQ(s.index_bytes, s.index_slots * 8);
    /* 2^19 slots at a load of 0.38: about 21 bytes per key. */
    ASSERT_EQ(s.index_slots, 1 << 19);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "device-%07d", i);
        ASSERT_EQ(lookup(t, key, T0, &rec), 1);
        ASSERT_EQ(rec.hash[0], (uint8_t)i);
        ASSERT_EQ(rec.status,
                  i % 2 == 0 ? IDEM_STATUS_COMPLETED : IDEM_STATUS_INPROGRESS);
    }
    ASSERT_EQ(lookup(t, "device-x", T0, &rec), 0);

    /* Release every third odd key; backward shifts keep the rest. */
    ASSERT_OK(t, idem_begin(t));
    for (int i = 1; i < n; i += 6) {
        snprintf(key, sizeof key, "device-%07d", i);
        ASSERT_OK(t, release(t, key));
    }
    ASSERT_OK(t, idem_commit(t));
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "device-%07d", i);
        ASSERT_EQ(lookup(t, key, T0, &rec), i % 6 == 1 ? 0 : 1);
    }
    idem_close(t);
}

TEST(idem_reopen_points_at_newest_row)
{
    const char *path = db_path("t.db");
    const int64_t expiry = 100;
    struct idem_options o = options(expiry, TIMEOUT_MS);
    struct idem_table *t = open_with(path, &o, OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "first", T0));
    ASSERT_EQ(claim(t, "k1", 2, T0 + expiry * 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "second", T0 + expiry * 1000));
    ASSERT_EQ(row_count(t), 2);
    idem_close(t);

    t = open_with(path, &o, OWNER_A);
    ASSERT_EQ(lookup(t, "k1", T0 + expiry * 1000, &rec), 1);
    ASSERT_STR_EQ(rec.outcome, "second");
    ASSERT_EQ(claim(t, "k1", 2, T0 + expiry * 1000, NULL), IDEM_DUPLICATE);

    /* Expiring the older row leaves the newer one found. */
    size_t deleted = 0;
    ASSERT_OK(t, idem_expire_step(t, T0 + expiry * 1000, 10, &deleted));
    ASSERT_EQ(deleted, 1);
    ASSERT_EQ(lookup(t, "k1", T0 + expiry * 1000, &rec), 1);
    ASSERT_STR_EQ(rec.outcome, "second");
    idem_close(t);
}

/* Every key gets the same hash: one fingerprint, one home slot. */
static uint64_t same_hash(const void *key, size_t len)
{
    (void)key;
    (void)len;
    return UINT64_C(0x9e3779b900000005);
}

/* The same home slot for every key at up to 256 slots, with
 * fingerprints that differ in their upper bits. */
static uint64_t same_home_hash(const void *key, size_t len)
{
    uint32_t h = 2166136261u; /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ ((const uint8_t *)key)[i]) * 16777619u;
    return (uint64_t)(h | 1u) << 40;
}

static void check_colliding_keys(uint64_t (*hash)(const void *, size_t))
{
    const char *path = db_path("t.db");
    const int n = 300;
    char key[32];
    struct idem_record rec;

    idem_index_set_test_hash(hash);
    struct idem_table *t = open_default(path, OWNER_A);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ASSERT_EQ(claim(t, key, (uint8_t)i, T0, NULL), IDEM_NEW);
    }
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ASSERT_EQ(claim(t, key, (uint8_t)i, T0, NULL), IDEM_IN_PROGRESS);
        if (i % 3 == 0)
            ASSERT_OK(t, release(t, key));
        else if (i % 3 == 1)
            ASSERT_OK(t, complete(t, key, "applied", T0));
    }
    idem_close(t);

    t = open_default(path, OWNER_A);
    for (int i = 0; i < n; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ASSERT_EQ(lookup(t, key, T0, &rec), i % 3 == 0 ? 0 : 1);
        if (i % 3 != 0)
            ASSERT_EQ(rec.hash[0], (uint8_t)i);
        enum idem_result want = i % 3 == 0   ? IDEM_NEW
                                : i % 3 == 1 ? IDEM_DUPLICATE
                                             : IDEM_IN_PROGRESS;
        ASSERT_EQ(claim(t, key, (uint8_t)i, T0, NULL), want);
    }
    idem_close(t);
    idem_index_set_test_hash(NULL);
}

TEST(idem_fingerprint_collisions_compare_keys)
{
    check_colliding_keys(same_hash);
}

TEST(idem_home_slot_collisions_probe_on)
{
    check_colliding_keys(same_home_hash);
}

static uint64_t xorshift(uint64_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Check that each of ids[0..n) with present[i] is found under hashes[i],
 * and that the others are not. */
static void check_index(struct idem_index *ix, const uint64_t *hashes,
                        const bool *present, int n)
{
    size_t count = 0;

    for (int i = 0; i < n; i++) {
        struct idem_probe probe;
        int64_t id;
        bool found = false;
        idem_index_probe_start(ix, hashes[i], &probe);
        while (idem_index_probe_next(ix, &probe, &id))
            found = found || id == i + 1;
        ASSERT_EQ(found, present[i]);
        count += present[i];
    }
    ASSERT_EQ(ix->count, count);
}

TEST(idem_index_backward_shift_deletion)
{
    enum { N = 20000 };
    static uint64_t hashes[N];
    static bool present[N];
    struct idem_index ix;
    uint64_t state = 88172645463325252u;

    ASSERT_EQ(idem_index_init(&ix), 0);
    for (int i = 0; i < N; i++) {
        hashes[i] = xorshift(&state);
        /* A quarter share 16 fingerprints, for long clusters. */
        if (i % 4 == 0)
            hashes[i] = (hashes[i] % 16 + 1) << 32;
        ASSERT_EQ(idem_index_insert(&ix, hashes[i], i + 1), 0);
        present[i] = true;
    }
    ASSERT_TRUE(ix.count * 4 <= idem_index_capacity(&ix) * 3);
    check_index(&ix, hashes, present, N);

    for (int i = 0; i < N; i++) {
        if (xorshift(&state) % 2 == 0)
            continue;
        ASSERT_TRUE(idem_index_remove_id(&ix, hashes[i], i + 1));
        ASSERT_FALSE(idem_index_remove_id(&ix, hashes[i], i + 1));
        present[i] = false;
    }
    check_index(&ix, hashes, present, N);
    idem_index_free(&ix);
}

TEST(idem_index_rebases_large_ids)
{
    struct idem_index ix;
    struct idem_probe probe;
    int64_t id = 0;
    const int64_t far = 11 + (int64_t)UINT32_MAX;

    ASSERT_EQ(idem_index_init(&ix), 0);
    ASSERT_EQ(idem_index_insert(&ix, UINT64_C(1) << 32, 10), 0);
    ASSERT_EQ(idem_index_insert(&ix, UINT64_C(2) << 32, 11), 0);
    /* 10 and far span more than 2^32, so 10 must go first. */
    ASSERT_EQ(idem_index_insert(&ix, UINT64_C(3) << 32, far), -ERANGE);
    ASSERT_TRUE(idem_index_remove_id(&ix, UINT64_C(1) << 32, 10));
    ASSERT_EQ(idem_index_insert(&ix, UINT64_C(3) << 32, far), 0);
    ASSERT_EQ(ix.base_id, 11);

    idem_index_probe_start(&ix, UINT64_C(2) << 32, &probe);
    ASSERT_TRUE(idem_index_probe_next(&ix, &probe, &id));
    ASSERT_EQ(id, 11);
    idem_index_probe_start(&ix, UINT64_C(3) << 32, &probe);
    ASSERT_TRUE(idem_index_probe_next(&ix, &probe, &id));
    ASSERT_EQ(id, far);
    idem_index_free(&ix);
}

/* A cached record whose fields all derive from n. */
static struct idem_record cache_record(int n)
{
    struct idem_record rec;

    memset(&rec, 0, sizeof rec);
    rec.status = IDEM_STATUS_COMPLETED;
    rec.expiry_s = 1000 + n;
    memset(rec.hash, n, IDEM_HASH_LEN);
    snprintf(rec.outcome, sizeof rec.outcome, "outcome-%d", n);
    return rec;
}

/* Keys of increasing length, so that evicted entries are too short for
 * some of the keys that replace them. */
static size_t cache_key(int n, char *key)
{
    size_t len = 1 + (size_t)(n * 37) % 300;

    memset(key, 'a' + n % 26, len);
    snprintf(key, len + 1 < 8 ? len + 1 : 8, "%d", n);
    return len;
}

TEST(idem_cache_evicts_least_recently_used)
{
    struct idem_cache cache;
    char key[512];
    const int capacity = 4, total = 41;

    ASSERT_EQ(idem_cache_init(&cache, (size_t)capacity), 0);
    for (int n = 0; n < total; n++) {
        struct idem_record rec = cache_record(n);
        size_t len = cache_key(n, key);
        idem_cache_put(&cache, (uint64_t)n, key, len, &rec);
        ASSERT_TRUE(cache.count <= (size_t)capacity);

        /* Reading the oldest entry makes it the most recently used, so
         * the next put evicts the one after it. */
        if (n % 5 == 4) {
            int oldest = n - capacity + 1;
            size_t oldest_len = cache_key(oldest, key);
            ASSERT_TRUE(idem_cache_get(&cache, (uint64_t)oldest, key,
                                       oldest_len, 0) != NULL);
        }
    }

    /* Entry 36, read after put 39, outlived entry 37 at put 40. */
    const int present[] = {36, 38, 39, 40};
    for (size_t i = 0; i < 4; i++) {
        int n = present[i];
        size_t len = cache_key(n, key);
        const struct idem_record *got =
            idem_cache_get(&cache, (uint64_t)n, key, len, 0);
        ASSERT_TRUE(got != NULL);
        struct idem_record want = cache_record(n);
        ASSERT_EQ(got->expiry_s, want.expiry_s);
        ASSERT_MEM_EQ(got->hash, IDEM_HASH_LEN, want.hash, IDEM_HASH_LEN);
        ASSERT_STR_EQ(got->outcome, want.outcome);
    }
    for (int n = 0; n < total; n++) {
        if (n == 36 || n >= 38)
            continue;
        size_t len = cache_key(n, key);
        ASSERT_TRUE(idem_cache_get(&cache, (uint64_t)n, key, len, 0) == NULL);
    }
    ASSERT_EQ(cache.count, (size_t)capacity);

    /* A key that shares the hash of a cached one is another key. */
    size_t len = cache_key(40, key);
    key[len - 1] ^= 1;
    ASSERT_TRUE(idem_cache_get(&cache, 40, key, len, 0) == NULL);

    idem_cache_clear(&cache);
    ASSERT_EQ(cache.count, 0);
    ASSERT_TRUE(cache.head == NULL);
    ASSERT_TRUE(cache.tail == NULL);
    idem_cache_free(&cache);
}

TEST(idem_siphash_matches_reference_vectors)
{
    uint8_t key[IDEM_SIPHASH_KEY_LEN], msg[16];

    for (int i = 0; i < 16; i++) {
        key[i] = (uint8_t)i;
        msg[i] = (uint8_t)i;
    }
    /* Vectors of the reference implementation (github.com/veorq/SipHash):
     * key 00..0f, message 00..n-1 for n = 0, 1, 8 and 15. */
    ASSERT_EQ(idem_siphash24(key, msg, 0), 0x726fdb47dd0e0e31);
    ASSERT_EQ(idem_siphash24(key, msg, 1), 0x74f839c593dc67fd);
    ASSERT_EQ(idem_siphash24(key, msg, 8), 0x93f5f5799a932462);
    ASSERT_EQ(idem_siphash24(key, msg, 15), 0xa129ca6149be45e5);
}

/* ---- completing claims made by this table ----------------------------- */

/* The completed row as a lookup returns it, from the cache when it is on. */
static void check_completed(struct idem_table *t, const char *key,
                            uint8_t hash_byte, const char *outcome,
                            const char *shard_id, const char *seq,
                            int64_t subseq, int64_t completed_ms)
{
    struct idem_record rec;

    ASSERT_EQ(lookup(t, key, completed_ms, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_EQ(rec.expiry_s, completed_ms / 1000 + EXPIRY_S);
    ASSERT_EQ(rec.in_progress_expiry_ms, 0);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(hash_byte), IDEM_HASH_LEN);
    ASSERT_STR_EQ(rec.outcome, outcome);
    ASSERT_STR_EQ(rec.shard_id, shard_id);
    ASSERT_STR_EQ(rec.seq, seq);
    ASSERT_EQ(rec.subseq, subseq);
}

TEST(idem_complete_in_claim_transaction)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    char outcome[IDEM_MAX_OUTCOME + 1];

    memset(outcome, 'o', IDEM_MAX_OUTCOME);
    outcome[IDEM_MAX_OUTCOME] = '\0';
    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k2", 2, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k2", "second", T0 + 1500));
    ASSERT_OK(t, complete(t, "k1", outcome, T0 + 2500));
    /* Completing twice fails, in the same transaction and after it. */
    ASSERT_EQ(complete(t, "k1", "again", T0 + 2600), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(t), "not an INPROGRESS claim of this owner");
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(complete(t, "k2", "again", T0 + 2700), -EPERM);

    check_completed(t, "k1", 1, outcome, "shard-1", "123", 4, T0 + 2500);
    check_completed(t, "k2", 2, "second", "shard-1", "123", 4, T0 + 1500);
    ASSERT_EQ(claim(t, "k1", 1, T0 + 3000, NULL), IDEM_DUPLICATE);
    idem_close(t);

    /* The same rows after a reopen, read from the file. */
    t = open_default(db_path("t.db"), OWNER_A);
    check_completed(t, "k1", 1, outcome, "shard-1", "123", 4, T0 + 2500);
    check_completed(t, "k2", 2, "second", "shard-1", "123", 4, T0 + 1500);
    idem_close(t);
}

TEST(idem_complete_after_rolled_back_claim_fails)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    idem_rollback(t);
    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(complete(t, "k1", "applied", T0), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(t), "no claim");
    idem_rollback(t);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);

    /* Claimed again after the rollback, the key completes normally. */
    ASSERT_EQ(claim(t, "k1", 3, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 1000));
    check_completed(t, "k1", 3, "applied", "shard-1", "123", 4, T0 + 1000);
    idem_close(t);
}

/* A rollback on the caller's connection without idem_after_rollback() is
 * a misuse, but it still cannot complete a claim that is gone. */
TEST(idem_complete_of_vanished_claim_fails)
{
    const char *path = db_path("t.db");
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    struct idem_table *t = NULL;
    sqlite3 *db = NULL;
    char err[512];

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(idem_open(db, &o, OWNER_A, &t, err, sizeof err), 0);
    ASSERT_EQ(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(complete(t, "k1", "applied", T0), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(t), "no claim");
    idem_close(t);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

TEST(idem_claim_release_claim_complete)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, release(t, "k1"));
    ASSERT_EQ(complete(t, "k1", "applied", T0), -EPERM);
    ASSERT_EQ(claim(t, "k1", 2, T0 + 1000, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 2000));
    check_completed(t, "k1", 2, "applied", "shard-1", "123", 4, T0 + 2000);
    ASSERT_EQ(row_count(t), 1);
    idem_close(t);
}

/* Keys that share a hash: completing one never touches the other's row. */
TEST(idem_complete_compares_key_bytes)
{
    struct idem_table *t;
    struct idem_record rec;

    idem_index_set_test_hash(same_hash);
    t = open_default(db_path("t.db"), OWNER_A);
    ASSERT_EQ(claim(t, "key-a", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(complete(t, "key-b", "applied", T0), -EPERM);
    ASSERT_EQ(lookup(t, "key-a", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_EQ(claim(t, "key-b", 2, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "key-a", "first", T0));
    ASSERT_OK(t, complete(t, "key-b", "second", T0));
    check_completed(t, "key-a", 1, "first", "shard-1", "123", 4, T0);
    check_completed(t, "key-b", 2, "second", "shard-1", "123", 4, T0);
    idem_close(t);
    idem_index_set_test_hash(NULL);
}

/* A second instance with the same owner token completes the claim first:
 * the first instance then finds a COMPLETED row, not its claim. */
TEST(idem_complete_of_row_completed_elsewhere_fails)
{
    const char *path = db_path("t.db");
    struct idem_table *a = open_default(path, OWNER_A);

    ASSERT_OK(a, idem_begin(a));
    ASSERT_EQ(claim(a, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(a, idem_commit(a));

    struct idem_table *a2 = open_default(path, OWNER_A);
    ASSERT_OK(a2, idem_begin(a2));
    ASSERT_OK(a2, complete(a2, "k1", "elsewhere", T0 + 1000));
    ASSERT_OK(a2, idem_commit(a2));
    idem_close(a2);

    ASSERT_OK(a, idem_begin(a));
    ASSERT_EQ(complete(a, "k1", "here", T0 + 2000), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(a), "not an INPROGRESS claim of this owner");
    idem_rollback(a);
    check_completed(a, "k1", 1, "elsewhere", "shard-1", "123", 4, T0 + 1000);
    idem_close(a);
}

/* A take-over keeps the hash, shard and sequence of the first claim, and
 * so does the completed row. */
TEST(idem_taken_over_claim_completes_with_first_row)
{
    const char *path = db_path("t.db");
    struct idem_table *b = open_default(path, OWNER_B);
    struct idem_claim c = {"k1", 2, hash_of(1), T0, "shard-9", "999", 7};
    enum idem_result r;

    ASSERT_OK(b, idem_begin(b));
    ASSERT_EQ(claim(b, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(b, idem_commit(b));
    idem_close(b);

    struct idem_table *t = open_default(path, OWNER_A);
    ASSERT_OK(t, idem_claim(t, &c, &r, NULL));
    ASSERT_EQ(r, IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 1000));
    check_completed(t, "k1", 1, "applied", "shard-1", "123", 4, T0 + 1000);
    idem_close(t);
}

TEST(idem_complete_batch_checks_like_single)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    const void *const keys[3] = {"a", "b", "c"};
    const size_t lens[3] = {1, 0, 1};
    const char *const outcomes[3] = {"one", "two", "three"};
    char single[512];

    ASSERT_EQ(claim(t, "a", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(idem_complete(t, "a", 1, "one", -5), -1);
    snprintf(single, sizeof single, "%s", idem_errmsg(t));
    ASSERT_EQ(idem_complete_batch(t, keys, lens, outcomes, 1, -5), -1);
    ASSERT_STR_EQ(idem_errmsg(t), single);
    ASSERT_CONTAINS(single, "invalid now_ms -5");
    /* The key is checked before the time, as in idem_complete(). */
    ASSERT_EQ(idem_complete_batch(t, keys + 1, lens + 1, outcomes, 1, -5), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "idempotency key is missing");

    struct idem_options forever = options(INT64_MAX, TIMEOUT_MS);
    struct idem_table *f = open_with(db_path("forever.db"), &forever, OWNER_A);
    ASSERT_EQ(idem_complete(f, "a", 1, "one", T0), -1);
    snprintf(single, sizeof single, "%s", idem_errmsg(f));
    ASSERT_EQ(idem_complete_batch(f, keys, lens, outcomes, 1, T0), -1);
    ASSERT_STR_EQ(idem_errmsg(f), single);
    ASSERT_CONTAINS(single, "expiry overflows");
    idem_close(f);

    /* A missing key in the middle stops the batch after the first key. */
    ASSERT_EQ(idem_complete_batch(t, keys, lens, outcomes, 3, T0), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "idempotency key is missing");
    check_completed(t, "a", 1, "one", "shard-1", "123", 4, T0);
    idem_close(t);
}

/* ---- deferred claims -------------------------------------------------- */

static enum idem_result claim_deferred(struct idem_table *t, const char *key,
                                       uint8_t hash_byte, int64_t now_ms)
{
    struct idem_claim c = {
        key, strlen(key), hash_of(hash_byte), now_ms, "shard-1", "123", 4};
    enum idem_result r;

    if (idem_claim_deferred(t, &c, &r, NULL) != 0)
        test_fail(__FILE__, __LINE__, "idem_claim_deferred(%s): %s", key,
                  idem_errmsg(t));
    return r;
}

/* Count the rows of the file with this status, through a connection of
 * its own, so only committed rows count. */
static int64_t rows_on_file(const char *path, int status)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int64_t n = -1;

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT count(*) FROM idem_rows"
                                 " WHERE status = ?1",
                                 -1, &stmt, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_bind_int(stmt, 1, status), SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return n;
}

TEST(idem_deferred_claim_completes)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    ASSERT_EQ(row_count(t), 1);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 1500));
    ASSERT_EQ(complete(t, "k1", "again", T0 + 1600), -EPERM);
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(rows_on_file(path, 1), 0);
    ASSERT_EQ(rows_on_file(path, 2), 1);
    check_completed(t, "k1", 1, "applied", "shard-1", "123", 4, T0 + 1500);
    ASSERT_EQ(claim_deferred(t, "k1", 1, T0 + 2000), IDEM_DUPLICATE);
    ASSERT_EQ(claim_deferred(t, "k1", 2, T0 + 2000), IDEM_CONFLICT);
    idem_close(t);

    t = open_default(path, OWNER_A);
    check_completed(t, "k1", 1, "applied", "shard-1", "123", 4, T0 + 1500);
    ASSERT_EQ(row_count(t), 1);
    idem_close(t);
}

/* Every other call treats a deferred claim as a stored INPROGRESS row. */
TEST(idem_deferred_claim_visible_to_calls)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;
    size_t n = 99;

    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    ASSERT_EQ(claim(t, "k1", 1, T0, &rec), IDEM_IN_PROGRESS);
    ASSERT_EQ(rec.in_progress_expiry_ms, T0 + TIMEOUT_MS);

    ASSERT_EQ(claim_deferred(t, "k2", 2, T0), IDEM_NEW);
    ASSERT_EQ(lookup(t, "k2", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_MEM_EQ(rec.hash, IDEM_HASH_LEN, hash_of(2), IDEM_HASH_LEN);
    ASSERT_STR_EQ(rec.shard_id, "shard-1");
    ASSERT_STR_EQ(rec.seq, "123");
    ASSERT_EQ(rec.subseq, 4);
    ASSERT_EQ(rec.expiry_s, T0 / 1000 + EXPIRY_S);

    /* A second deferred claim writes the first. */
    ASSERT_EQ(claim_deferred(t, "k3", 3, T0), IDEM_NEW);
    ASSERT_EQ(claim_deferred(t, "k4", 4, T0), IDEM_NEW);
    ASSERT_EQ(claim(t, "k3", 3, T0, NULL), IDEM_IN_PROGRESS);

    ASSERT_EQ(claim_deferred(t, "k5", 5, T0), IDEM_NEW);
    ASSERT_OK(t, idem_expire_step(t, T0, 100, &n));
    ASSERT_EQ(n, 0);
    ASSERT_EQ(claim_deferred(t, "k6", 6, T0), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k5", "applied", T0));
    ASSERT_OK(t, complete(t, "k6", "applied", T0));
    ASSERT_EQ(claim_deferred(t, "k7", 7, T0), IDEM_NEW);
    ASSERT_OK(t, release(t, "k4"));
    ASSERT_EQ(claim(t, "k7", 7, T0, NULL), IDEM_IN_PROGRESS);

    /* Without a transaction each of them was written on its own. */
    ASSERT_EQ(rows_on_file(path, 1), 4);
    ASSERT_EQ(rows_on_file(path, 2), 2);
    ASSERT_EQ(row_count(t), 6);
    idem_close(t);
}

TEST(idem_deferred_claim_written_by_commit)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(rows_on_file(path, 1), 1);

    ASSERT_EQ(claim_deferred(t, "k2", 2, T0), IDEM_NEW);
    ASSERT_OK(t, idem_begin(t));
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(rows_on_file(path, 1), 2);

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim_deferred(t, "k3", 3, T0), IDEM_NEW);
    ASSERT_OK(t, idem_flush(t));
    ASSERT_OK(t, idem_flush(t));
    ASSERT_OK(t, complete(t, "k3", "applied", T0));
    ASSERT_OK(t, idem_commit(t));
    idem_close(t);

    /* Another owner finds the claims of a dead instance. */
    t = open_default(path, OWNER_B);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_INPROGRESS);
    ASSERT_MEM_EQ(rec.owner, IDEM_OWNER_LEN, OWNER_A, IDEM_OWNER_LEN);
    ASSERT_EQ(lookup(t, "k3", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_EQ(claim(t, "k2", 2, T0, NULL), IDEM_NEW);
    idem_close(t);
}

/* A deferred claim on the caller's connection is written by idem_flush(). */
TEST(idem_deferred_claim_flushed_on_caller_connection)
{
    const char *path = db_path("t.db");
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    struct idem_table *t = NULL;
    sqlite3 *db = NULL;
    char err[512];

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(idem_open(db, &o, OWNER_A, &t, err, sizeof err), 0);
    ASSERT_EQ(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    ASSERT_OK(t, idem_flush(t));
    ASSERT_EQ(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(rows_on_file(path, 1), 1);
    idem_close(t);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

TEST(idem_deferred_claim_rolled_back)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    idem_rollback(t);
    ASSERT_EQ(complete(t, "k1", "applied", T0), -EPERM);
    ASSERT_CONTAINS(idem_errmsg(t), "no claim");
    ASSERT_EQ(release(t, "k1"), -EPERM);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    ASSERT_EQ(rows_on_file(path, 1), 0);
    ASSERT_EQ(claim_deferred(t, "k1", 2, T0), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    check_completed(t, "k1", 2, "applied", "shard-1", "123", 4, T0);
    idem_close(t);
}

TEST(idem_deferred_claim_released)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;

    ASSERT_EQ(claim_deferred(t, "k1", 1, T0), IDEM_NEW);
    ASSERT_OK(t, release(t, "k1"));
    ASSERT_EQ(release(t, "k1"), -EPERM);
    ASSERT_EQ(complete(t, "k1", "applied", T0), -EPERM);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    ASSERT_EQ(row_count(t), 0);
    ASSERT_EQ(rows_on_file(path, 1) + rows_on_file(path, 2), 0);
    ASSERT_EQ(claim_deferred(t, "k1", 2, T0 + 1000), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0 + 2000));
    check_completed(t, "k1", 2, "applied", "shard-1", "123", 4, T0 + 2000);
    ASSERT_EQ(row_count(t), 1);
    idem_close(t);
}

/* A key whose row expired gets a new row, and the index its new id. */
TEST(idem_deferred_claim_replaces_expired_row)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    int64_t later = T0 + EXPIRY_S * 1000;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "first", T0));
    ASSERT_EQ(claim_deferred(t, "k1", 2, later), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "second", later));
    check_completed(t, "k1", 2, "second", "shard-1", "123", 4, later);
    ASSERT_EQ(rows_on_file(path, 2), 2);

    ASSERT_EQ(claim_deferred(t, "k1", 3, later + EXPIRY_S * 1000), IDEM_NEW);
    ASSERT_OK(t, release(t, "k1"));
    ASSERT_EQ(claim(t, "k1", 2, later + 1000, NULL), IDEM_DUPLICATE);
    idem_close(t);

    t = open_default(path, OWNER_A);
    check_completed(t, "k1", 2, "second", "shard-1", "123", 4, later);
    idem_close(t);
}

/* Text columns that the claim left NULL stay NULL in the completed row. */
TEST(idem_deferred_claim_keeps_null_columns)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_claim c = {"k1", 2, hash_of(1), T0, NULL, NULL, 0};
    enum idem_result r;

    ASSERT_OK(t, idem_claim_deferred(t, &c, &r, NULL));
    ASSERT_EQ(r, IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    idem_close(t);

    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT shard_id IS NULL, seq IS NULL,"
                                 " in_progress_expiry_ms IS NULL, outcome"
                                 " FROM idem_rows",
                                 -1, &stmt, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(stmt, 0), 1);
    ASSERT_EQ(sqlite3_column_int(stmt, 1), 1);
    ASSERT_EQ(sqlite3_column_int(stmt, 2), 1);
    ASSERT_STR_EQ((const char *)sqlite3_column_text(stmt, 3), "applied");
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_DONE);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
}

/* ---- completed rows queued for one multi-row insert -------------------- */

/* Claim key deferred with the given texts and complete it with outcome. */
static void claim_and_complete(struct idem_table *t, const char *key,
                               uint8_t hash_byte, const char *shard_id,
                               const char *seq, int64_t subseq,
                               const char *outcome)
{
    struct idem_claim c = {key, strlen(key), hash_of(hash_byte), T0, shard_id,
                           seq, subseq};
    enum idem_result r;

    if (idem_claim_deferred(t, &c, &r, NULL) != 0)
        test_fail(__FILE__, __LINE__, "idem_claim_deferred(%s): %s", key,
                  idem_errmsg(t));
    ASSERT_EQ(r, IDEM_NEW);
    if (idem_complete(t, key, strlen(key), outcome, T0) != 0)
        test_fail(__FILE__, __LINE__, "idem_complete(%s): %s", key,
                  idem_errmsg(t));
}

/* Rows of idem_rows visible to db, its own uncommitted ones included. */
static int64_t rows_on_connection(sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int64_t n = -1;

    ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*) FROM idem_rows", -1,
                                 &stmt, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    n = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return n;
}

/* Open the table on a connection of the test's own, whose limit on the
 * parameters of a statement is max_params (0: SQLite's default). */
static struct idem_table *open_on_connection(const char *path, int max_params,
                                             sqlite3 **db)
{
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    struct idem_table *t = NULL;
    char err[512];

    ASSERT_EQ(sqlite3_open(path, db), SQLITE_OK);
    if (max_params > 0)
        sqlite3_limit(*db, SQLITE_LIMIT_VARIABLE_NUMBER, max_params);
    if (idem_open(*db, &o, OWNER_A, &t, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "idem_open: %s", err);
    return t;
}

/*
 * Inside a transaction, completed deferred claims wait in memory, and every
 * call reads them as stored COMPLETED rows: lookup, claim, complete,
 * release and expiry.
 */
TEST(idem_queued_rows_read_in_transaction)
{
    sqlite3 *db = NULL;
    struct idem_table *t = open_on_connection(db_path("t.db"), 0, &db);
    struct idem_record rec;
    char key[8];
    size_t n = 0;

    ASSERT_EQ(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 1; i <= 6; i++) {
        snprintf(key, sizeof key, "k%d", i);
        claim_and_complete(t, key, (uint8_t)i, "shard-1", "123", i, "applied");
    }
    ASSERT_EQ(rows_on_connection(db), 0);
    ASSERT_EQ(row_count(t), 6);

    ASSERT_EQ(lookup(t, "k2", T0, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_COMPLETED);
    ASSERT_EQ(rec.subseq, 2);
    check_completed(t, "k1", 1, "applied", "shard-1", "123", 1, T0);
    check_completed(t, "k6", 6, "applied", "shard-1", "123", 6, T0);
    ASSERT_EQ(claim(t, "k3", 3, T0 + 1000, &rec), IDEM_DUPLICATE);
    ASSERT_STR_EQ(rec.outcome, "applied");
    ASSERT_EQ(claim(t, "k4", 9, T0 + 1000, &rec), IDEM_CONFLICT);
    ASSERT_EQ(claim_deferred(t, "k5", 5, T0 + 1000), IDEM_DUPLICATE);
    ASSERT_EQ(complete(t, "k5", "again", T0 + 1000), -EPERM);
    ASSERT_EQ(release(t, "k6"), -EPERM);

    /* More rows queue after a read wrote the first ones. */
    claim_and_complete(t, "k7", 7, "shard-1", "123", 7, "applied");
    ASSERT_OK(t, idem_expire_step(t, T0 + EXPIRY_S * 1000, 100, &n));
    ASSERT_EQ(n, 7);
    ASSERT_EQ(rows_on_connection(db), 0);
    ASSERT_EQ(lookup(t, "k7", T0, &rec), 0);
    ASSERT_EQ(claim(t, "k7", 7, T0, NULL), IDEM_NEW);
    ASSERT_EQ(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    idem_close(t);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

/* A rollback drops every queued row, and a later commit writes only the
 * rows queued since. */
TEST(idem_queued_rows_rolled_back)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);
    struct idem_record rec;

    ASSERT_OK(t, idem_begin(t));
    claim_and_complete(t, "k1", 1, "shard-1", "123", 1, "applied");
    claim_and_complete(t, "k2", 2, "shard-1", "123", 2, "applied");
    claim_and_complete(t, "k3", 3, "shard-1", "123", 3, "applied");
    idem_rollback(t);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    ASSERT_EQ(lookup(t, "k3", T0, &rec), 0);
    ASSERT_EQ(complete(t, "k2", "applied", T0), -EPERM);

    ASSERT_OK(t, idem_begin(t));
    claim_and_complete(t, "k2", 4, "shard-2", "456", 4, "late");
    ASSERT_OK(t, idem_commit(t));
    ASSERT_EQ(rows_on_file(path, 1), 0);
    ASSERT_EQ(rows_on_file(path, 2), 1);
    idem_close(t);

    t = open_default(path, OWNER_A);
    ASSERT_EQ(row_count(t), 1);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    check_completed(t, "k2", 4, "late", "shard-2", "456", 4, T0);
    idem_close(t);
}

/*
 * A process that dies inside its transaction, after some queued rows were
 * written because the queue filled and others still waited, leaves no row.
 */
TEST(idem_queued_rows_lost_with_crash_before_commit)
{
    const char *path = db_path("t.db");
    int status = 0;

    create_tables(path);
    pid_t pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        struct idem_table *t = open_default(path, OWNER_A);
        char key[16];
        if (idem_begin(t) != 0)
            _exit(3);
        for (int i = 0; i < 100; i++) {
            snprintf(key, sizeof key, "k%d", i);
            claim_and_complete(t, key, 1, "shard-1", "123", i, "applied");
        }
        kill(getpid(), SIGKILL);
        _exit(4);
    }
    ASSERT_EQ(waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status));
    ASSERT_EQ(rows_on_file(path, 1) + rows_on_file(path, 2), 0);

    struct idem_table *t = open_default(path, OWNER_B);
    ASSERT_EQ(row_count(t), 0);
    ASSERT_EQ(claim(t, "k0", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k99", 1, T0, NULL), IDEM_NEW);
    idem_close(t);
}

/*
 * One INSERT writes as many queued rows as the connection's parameter
 * limit allows: 8 parameters per row and the shared owner token. At
 * 1 + 8 * 3 parameters one INSERT writes 3 rows, at one less only 2. NULL
 * texts stay NULL in a multi-row insert.
 */
static void check_queue_limit(int max_params, int rows_per_insert)
{
    const char *path = db_path("limit.db");
    sqlite3 *db = NULL;
    struct idem_table *t = open_on_connection(path, max_params, &db);
    char key[8];

    ASSERT_EQ(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    for (int i = 1; i <= 7; i++) {
        snprintf(key, sizeof key, "k%d", i);
        if (i == 2)
            claim_and_complete(t, key, 2, NULL, NULL, 0, NULL);
        else
            claim_and_complete(t, key, (uint8_t)i, "shard-9", "77", i, "late");
        ASSERT_EQ(rows_on_connection(db),
                  i / rows_per_insert * rows_per_insert);
    }
    ASSERT_OK(t, idem_flush(t));
    ASSERT_EQ(rows_on_connection(db), 7);
    ASSERT_EQ(sqlite3_exec(db, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
    idem_close(t);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);

    ASSERT_EQ(rows_on_file(path, 2), 7);
    t = open_default(path, OWNER_A);
    check_completed(t, "k1", 1, "late", "shard-9", "77", 1, T0);
    check_completed(t, "k3", 3, "late", "shard-9", "77", 3, T0);
    check_completed(t, "k5", 5, "late", "shard-9", "77", 5, T0);
    check_completed(t, "k7", 7, "late", "shard-9", "77", 7, T0);
    idem_close(t);

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ(
        sqlite3_prepare_v2(db,
                           "SELECT shard_id IS NULL, seq IS NULL,"
                           " outcome IS NULL, subseq, status"
                           " FROM idem_rows WHERE key = CAST('k2' AS BLOB)",
                           -1, &stmt, NULL),
        SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(stmt, 0), 1);
    ASSERT_EQ(sqlite3_column_int(stmt, 1), 1);
    ASSERT_EQ(sqlite3_column_int(stmt, 2), 1);
    ASSERT_EQ(sqlite3_column_int(stmt, 3), 0);
    ASSERT_EQ(sqlite3_column_int(stmt, 4), 2);
    sqlite3_finalize(stmt);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
    ASSERT_EQ(unlink(path), 0);
}

/* Rows queued together keep their own outcome and shard, whether all
 * rows share them or only some do. */
TEST(idem_queued_rows_keep_own_texts)
{
    const char *path = db_path("t.db");
    struct idem_table *t = open_default(path, OWNER_A);

    ASSERT_OK(t, idem_begin(t));
    claim_and_complete(t, "k1", 1, "shard-1", "11", 1, "applied");
    claim_and_complete(t, "k2", 2, "shard-1", "12", 2, "late");
    claim_and_complete(t, "k3", 3, "shard-1", "13", 3, "late");
    ASSERT_OK(t, idem_flush(t));
    claim_and_complete(t, "k4", 4, "shard-2", "14", 4, "late");
    claim_and_complete(t, "k5", 5, "shard-2", "15", 5, "late");
    ASSERT_OK(t, idem_flush(t));
    claim_and_complete(t, "k6", 6, "shard-2", "16", 6, "late");
    claim_and_complete(t, "k7", 7, "shard-3", "17", 7, "late");
    ASSERT_OK(t, idem_flush(t));
    /* A NULL shard and an empty one are different texts. */
    claim_and_complete(t, "k8", 8, NULL, "18", 8, "late");
    claim_and_complete(t, "k9", 9, "", "19", 9, "late");
    ASSERT_OK(t, idem_commit(t));
    idem_close(t);

    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_prepare_v2(db,
                                 "SELECT shard_id IS NULL FROM idem_rows"
                                 " WHERE subseq >= 8 ORDER BY subseq",
                                 -1, &stmt, NULL),
              SQLITE_OK);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(stmt, 0), 1);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    ASSERT_EQ(sqlite3_column_int(stmt, 0), 0);
    ASSERT_EQ(sqlite3_step(stmt), SQLITE_DONE);
    sqlite3_finalize(stmt);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);

    t = open_default(path, OWNER_A);
    check_completed(t, "k1", 1, "applied", "shard-1", "11", 1, T0);
    check_completed(t, "k2", 2, "late", "shard-1", "12", 2, T0);
    check_completed(t, "k3", 3, "late", "shard-1", "13", 3, T0);
    check_completed(t, "k4", 4, "late", "shard-2", "14", 4, T0);
    check_completed(t, "k5", 5, "late", "shard-2", "15", 5, T0);
    check_completed(t, "k6", 6, "late", "shard-2", "16", 6, T0);
    check_completed(t, "k7", 7, "late", "shard-3", "17", 7, T0);
    check_completed(t, "k8", 8, "late", "", "18", 8, T0);
    check_completed(t, "k9", 9, "late", "", "19", 9, T0);
    idem_close(t);
}

TEST(idem_queued_rows_fit_parameter_limit)
{
    check_queue_limit(1 + 8 * 3, 3);
    check_queue_limit(8 * 3, 2);
    check_queue_limit(9, 1);
}

/* ---- batches, rollback, errors ---------------------------------------- */

TEST(idem_batch_claims_in_order)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_claim claims[4] = {
        {"a", 1, hash_of(1), T0, NULL, NULL, 0},
        {"b", 1, hash_of(1), T0, NULL, NULL, 0},
        {"a", 1, hash_of(1), T0, NULL, NULL, 0},
        {NULL, 0, hash_of(1), T0, NULL, NULL, 0},
    };
    enum idem_result results[4];
    const void *const keys[2] = {"a", "b"};
    const size_t lens[2] = {1, 1};
    const char *const outcomes[2] = {"applied", "late"};

    ASSERT_OK(t, idem_claim_batch(t, claims, 4, results));
    ASSERT_EQ(results[0], IDEM_NEW);
    ASSERT_EQ(results[1], IDEM_NEW);
    ASSERT_EQ(results[2], IDEM_IN_PROGRESS);
    ASSERT_EQ(results[3], IDEM_KEY_MISSING);
    ASSERT_OK(t, idem_complete_batch(t, keys, lens, outcomes, 2, T0));
    ASSERT_EQ(idem_complete_batch(t, keys, lens, outcomes, 2, T0), -EPERM);

    ASSERT_OK(t, idem_claim_batch(t, claims, 3, results));
    for (int i = 0; i < 3; i++)
        ASSERT_EQ(results[i], IDEM_DUPLICATE);
    ASSERT_STR_EQ(idem_result_name(IDEM_DUPLICATE), "duplicate");
    idem_close(t);
}

TEST(idem_rolled_back_claim_is_forgotten)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;

    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    idem_rollback(t);
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 0);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);

    /* A completion that is rolled back must not leave a duplicate. */
    ASSERT_OK(t, idem_begin(t));
    ASSERT_EQ(claim(t, "k2", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k2", "applied", T0));
    ASSERT_EQ(claim(t, "k2", 1, T0, NULL), IDEM_DUPLICATE);
    idem_rollback(t);
    ASSERT_EQ(claim(t, "k2", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k2", "applied", T0));
    ASSERT_EQ(claim(t, "k2", 1, T0, NULL), IDEM_DUPLICATE);
    idem_close(t);
}

TEST(idem_caller_connection_stays_in_charge)
{
    const char *path = db_path("t.db");
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    struct idem_table *t = NULL;
    sqlite3 *db = NULL;
    char err[512];

    ASSERT_EQ(sqlite3_open(path, &db), SQLITE_OK);
    ASSERT_EQ(idem_open(db, &o, OWNER_A, &t, err, sizeof err), 0);
    ASSERT_TRUE(sqlite3_get_autocommit(db));
    ASSERT_EQ(idem_begin(t), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "caller's connection");

    ASSERT_EQ(sqlite3_exec(db, "BEGIN", NULL, NULL, NULL), SQLITE_OK);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_DUPLICATE);
    ASSERT_EQ(sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    idem_after_rollback(t);
    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_TRUE(sqlite3_get_autocommit(db));
    idem_close(t);
    ASSERT_EQ(sqlite3_close(db), SQLITE_OK);
}

TEST(idem_errors_name_sqlite_code)
{
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    struct idem_table *t = NULL;
    char err[512];

    ASSERT_EQ(idem_open_path("/nonexistent-dir/t.db", &o, OWNER_A, &t, err,
                             sizeof err),
              -1);
    ASSERT_CONTAINS(err, "SQLITE_CANTOPEN");

    const char *path = db_path("t.db");
    t = open_default(path, OWNER_A);
    exec_on_file(path, "DROP TABLE idem_rows");
    struct idem_claim c = {"k1", 2, hash_of(1), T0, NULL, NULL, 0};
    enum idem_result r;
    ASSERT_EQ(idem_claim(t, &c, &r, NULL), -1);
    ASSERT_CONTAINS(idem_errmsg(t), "SQLITE_ERROR");
    ASSERT_CONTAINS(idem_errmsg(t), "no such table: idem_rows");
    idem_close(t);

    o.expiry_s = 0;
    ASSERT_EQ(idem_open_path(path, &o, OWNER_A, &t, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "expiry_s must be at least 1");
}

TEST(idem_invalid_stored_row_is_error)
{
    const char *path = db_path("t.db");
    char err[512];
    struct idem_table *t = NULL;

    create_tables(path);
    exec_on_file(path, "INSERT INTO idem_rows (id, key, status, expiry_s,"
                       " owner, hash) VALUES (1, 'k1', 7, 9999999999,"
                       " zeroblob(16), zeroblob(32))");
    t = open_default(path, OWNER_A);
    ASSERT_EQ(
        idem_claim(t,
                   &(struct idem_claim){"k1", 2, hash_of(1), T0, NULL, NULL, 0},
                   &(enum idem_result){IDEM_NEW}, NULL),
        -1);
    ASSERT_CONTAINS(idem_errmsg(t), "row 1 has invalid status 7");
    idem_close(t);

    exec_on_file(path, "UPDATE idem_meta SET value = 2");
    struct idem_options o = options(EXPIRY_S, TIMEOUT_MS);
    ASSERT_EQ(idem_open_path(path, &o, OWNER_A, &t, err, sizeof err), -1);
    ASSERT_CONTAINS(err, "unsupported idempotency schema version 2");
}

TEST(idem_stats_count_rows_and_cache)
{
    struct idem_table *t = open_default(db_path("t.db"), OWNER_A);
    struct idem_record rec;
    struct idem_stats s;

    ASSERT_EQ(claim(t, "k1", 1, T0, NULL), IDEM_NEW);
    ASSERT_EQ(claim(t, "k2", 1, T0, NULL), IDEM_NEW);
    ASSERT_OK(t, complete(t, "k1", "applied", T0));
    ASSERT_EQ(lookup(t, "k1", T0, &rec), 1);
    ASSERT_EQ(lookup(t, "k2", T0, &rec), 1);
    /* An expired cache entry is evicted on read and is a miss. */
    ASSERT_EQ(lookup(t, "k1", T0 + EXPIRY_S * 1000, &rec), 1);
    ASSERT_EQ(rec.status, IDEM_STATUS_EXPIRED);

    idem_stats(t, &s);
    ASSERT_EQ(s.rows, 2);
    ASSERT_EQ(s.index_slots, 64);
    ASSERT_EQ(s.index_bytes, 512);
    ASSERT_EQ(s.cache_hits, cache_on() ? 1 : 0);
    ASSERT_EQ(s.cache_misses, cache_on() ? 4 : 0);
    idem_close(t);
}
