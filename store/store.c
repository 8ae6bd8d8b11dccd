/*
 * Design note
 *
 * Tables (schema version 5, stored in PRAGMA user_version):
 *   sample_log     the samples of telemetry, in the order the aggregator
 *                  stored them: one row per transaction, whose BLOB packs
 *                  all of that transaction's samples (store/batch_log.h).
 *                  A later sample of a (race, racer, second) replaces the
 *                  earlier one when the log is read back. One append per
 *                  batch costs a fraction of a B-tree insert per sample,
 *                  and the log is read only at start-up and by
 *                  `podium query samples`.
 *   agg_state      small JSON documents of the aggregators by (kind, key).
 *   checkpoints    last committed (sequence, sub-sequence) per shard.
 *   outbox         messages waiting to be published, in id order.
 *   dead_letters   records that could not be applied, with the reason.
 *                  There is one row per (shard, sequence, sub-sequence), so
 *                  a record read again by a replay or a restart is filed
 *                  once.
 *   meta           small settings of the store itself.
 *   last_messages  the newest revision of each race result and class
 *                  leaderboard, kept for `podium query` after the outbox
 *                  row is gone.
 *   history_log    the class history, the best output of each rider at
 *                  each second of a race, per class: a log like
 *                  sample_log, in which a later row of a (class, racer,
 *                  second) replaces or deletes the earlier one. The daemon
 *                  only writes it; `podium query class-history` reads it.
 * The idempotency library (store/idempotency.h) keeps its own tables in the
 * same database and on the same connection, so its rows are part of the
 * batch transaction too.
 * Tables with a natural key are WITHOUT ROWID, so the primary key is the
 * b-tree key and a lookup reads one b-tree instead of an index and a table.
 * outbox and dead_letters use AUTOINCREMENT so that an id is never reused,
 * even after the newest rows were deleted: the publisher resumes with
 * "id > last published id".
 *
 * One transaction per batch: the idempotency rows, sample changes,
 * aggregator state, dead letters, outbox messages and the shard checkpoint of
 * one batch of Kinesis records are written between store_begin() and
 * store_commit(). After a crash the daemon resumes reading after the stored
 * checkpoint. A checkpoint kept without the effects of the records before it
 * would skip those records. Idempotency rows kept without their sample and
 * state changes would make the re-read records count as duplicates, so
 * their effects would be lost. Keeping all of a batch or none avoids both.
 *
 * Journal: WAL lets readers (tools, backups) run during a batch and makes a
 * commit one sequential append plus one fsync. synchronous=FULL fsyncs the
 * WAL at every commit. With synchronous=NORMAL, SQLite syncs the WAL only at
 * checkpoints, so a committed transaction can roll back after a power loss
 * or OS crash. Here that is not acceptable: once a batch is committed, the
 * publisher may send its outbox rows. A rollback would then rewind the
 * checkpoint and the outbox after the messages left, and the re-read records
 * would publish them again, possibly with different content.
 *
 * Threading: the connection is opened with SQLITE_OPEN_NOMUTEX (multi-thread
 * mode), so SQLite takes no mutex per call and a struct store must never be
 * used by two threads at once. The daemon hands the store to one worker job
 * at a time (uv_queue_work), and libuv's queue orders the hand-over between
 * threads. Every statement is prepared once at open with
 * SQLITE_PREPARE_PERSISTENT and reset after each use, so no statement keeps
 * a read transaction open between calls.
 *
 * Commit latency, measured by the test case store_batch_commit_prints_latency
 * (tests/test_store.c) in a RelWithDebInfo build without sanitizers, on ext4
 * on the virtio disk of a 2-vCPU AMD EPYC VM, 3 runs of 20 batches. Each
 * batch is 1,000 samples, 1,000 idempotency rows, 1 checkpoint and 10 outbox
 * rows with synchronous=FULL:
 *   BEGIN to end of COMMIT: median 4-6 ms, max 11-14 ms
 *   COMMIT alone:           median 1.0 ms, max 8-10 ms
 * Each commit costs one fdatasync() of the WAL (counted with strace). The
 * maxima are the commits that also ran a WAL checkpoint, which SQLite does
 * inside the commit that takes the WAL past 1,000 pages. This virtual disk
 * completes an fdatasync() in about 0.2 ms, so a physical disk that really
 * flushes its cache will make commits slower.
 */
#include "store/store.h"
#include "store/idempotency.h"
#include "store/batch_log.h"

#include "common/seqnum.h"
#include "store/sqlite_errname.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STORE_SCHEMA_VERSION  5
#define STORE_BUSY_TIMEOUT_MS 5000
#define STORE_HASH_LEN        32
#define STORE_ERRMSG_LEN      1024

/* ---- statements ----------------------------------------------------- */

enum stmt_id {
    STMT_BEGIN,
    STMT_COMMIT,
    STMT_ROLLBACK,
    STMT_SAMPLE_PUT,
    STMT_SAMPLE_LOAD,
    STMT_STATE_PUT,
    STMT_STATE_DELETE,
    STMT_STATE_LOAD,
    STMT_CHECKPOINT_GET,
    STMT_CHECKPOINT_PUT,
    STMT_CHECKPOINT_LOAD,
    STMT_OUTBOX_ADD,
    STMT_OUTBOX_DELETE,
    STMT_OUTBOX_LOAD,
    STMT_OUTBOX_COUNT,
    STMT_DEAD_LETTER_ADD,
    STMT_DEAD_LETTER_LOAD,
    STMT_DEAD_LETTER_COUNT,
    STMT_META_PUT,
    STMT_META_GET,
    STMT_LAST_MESSAGE_PUT,
    STMT_LAST_MESSAGE_GET,
    STMT_HISTORY_PUT,
    STMT_HISTORY_LOAD,
    STMT_COUNT
};

static const char *const stmt_sql[STMT_COUNT] = {
    [STMT_BEGIN] = "BEGIN IMMEDIATE",
    [STMT_COMMIT] = "COMMIT",
    [STMT_ROLLBACK] = "ROLLBACK",
    [STMT_SAMPLE_PUT] = "INSERT INTO sample_log (format, count, data)"
                        " VALUES (?1, ?2, ?3)",
    [STMT_SAMPLE_LOAD] = "SELECT id, format, count, data FROM sample_log"
                         " ORDER BY id",
    [STMT_STATE_PUT] = "INSERT OR REPLACE INTO agg_state (kind, key, value)"
                       " VALUES (?1, ?2, ?3)",
    [STMT_STATE_DELETE] = "DELETE FROM agg_state WHERE kind = ?1 AND key = ?2",
    [STMT_STATE_LOAD] = "SELECT key, value FROM agg_state WHERE kind = ?1"
                        " ORDER BY key",
    [STMT_CHECKPOINT_GET] = "SELECT seq, subseq, finished FROM checkpoints"
                            " WHERE shard_id = ?1",
    [STMT_CHECKPOINT_PUT] = "INSERT OR REPLACE INTO checkpoints"
                            " (shard_id, seq, subseq, finished)"
                            " VALUES (?1, ?2, ?3, ?4)",
    [STMT_CHECKPOINT_LOAD] = "SELECT shard_id, seq, subseq, finished"
                             " FROM checkpoints ORDER BY shard_id",
    [STMT_OUTBOX_ADD] = "INSERT INTO outbox (topic, payload) VALUES (?1, ?2)",
    [STMT_OUTBOX_DELETE] = "DELETE FROM outbox WHERE id = ?1",
    [STMT_OUTBOX_LOAD] = "SELECT id, topic, payload FROM outbox"
                         " WHERE id > ?1 ORDER BY id LIMIT ?2",
    [STMT_OUTBOX_COUNT] = "SELECT count(*) FROM outbox",
    /* Only the record's own uniqueness conflict is ignored: a NOT NULL
     * violation still fails, which INSERT OR IGNORE would hide. */
    [STMT_DEAD_LETTER_ADD] = "INSERT INTO dead_letters"
                             " (shard_id, seq, subseq, arrival_ms, reason,"
                             " detail, data)"
                             " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                             " ON CONFLICT (shard_id, seq, subseq)"
                             " DO NOTHING",
    [STMT_DEAD_LETTER_LOAD] = "SELECT id, shard_id, seq, subseq, arrival_ms,"
                              " reason, detail, data FROM dead_letters"
                              " WHERE id > ?1 ORDER BY id LIMIT ?2",
    [STMT_DEAD_LETTER_COUNT] = "SELECT count(*) FROM dead_letters",
    [STMT_META_PUT] = "INSERT OR REPLACE INTO meta (key, value)"
                      " VALUES (?1, ?2)",
    [STMT_META_GET] = "SELECT value FROM meta WHERE key = ?1",
    [STMT_LAST_MESSAGE_PUT] = "INSERT OR REPLACE INTO last_messages"
                              " (kind, key, revision, payload)"
                              " VALUES (?1, ?2, ?3, ?4)",
    [STMT_LAST_MESSAGE_GET] = "SELECT revision, payload FROM last_messages"
                              " WHERE kind = ?1 AND key = ?2",
    [STMT_HISTORY_PUT] = "INSERT INTO history_log (format, count, data)"
                         " VALUES (?1, ?2, ?3)",
    [STMT_HISTORY_LOAD] = "SELECT id, format, count, data FROM history_log"
                          " ORDER BY id",
};

struct store {
    sqlite3 *db;
    struct idem_table *idem; /* NULL until store_open_idempotency */
    size_t idem_reclaimed;   /* claims of dead owners released at open */
    sqlite3_stmt *stmt[STMT_COUNT];
    struct batch_log_buf samples; /* put in the open transaction */
    struct batch_log_buf history;
    char errmsg[STORE_ERRMSG_LEN];
};

/* ---- errors --------------------------------------------------------- */

static int fail(struct store *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int fail_sqlite(struct store *st, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct store *st, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(st->errmsg, sizeof st->errmsg, fmt, ap);
    va_end(ap);
    return -1;
}

/*
 * Record "<context>: <code name>: <SQLite message>" for result code rc and
 * return -1. Call it before resetting the failed statement, while
 * sqlite3_errmsg() still describes this error.
 */
static int fail_sqlite(struct store *st, int rc, const char *fmt, ...)
{
    char context[STORE_ERRMSG_LEN / 2];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);

    const char *detail = st->db ? sqlite3_errmsg(st->db) : sqlite3_errstr(rc);
    return fail(st, "%s: %s: %s", context, store_sqlite_errname(rc), detail);
}

/* ---- binding and stepping ------------------------------------------- */

/*
 * Parameters are bound through a binder that keeps the first error, so a
 * function binds all its parameters and checks once. Values are bound with
 * SQLITE_STATIC: the statement is stepped and reset before the caller's
 * memory can change.
 */
struct binder {
    sqlite3_stmt *stmt;
    int rc;
};

static struct binder bind_start(struct store *st, enum stmt_id id)
{
    struct binder b = {st->stmt[id], SQLITE_OK};
    return b;
}

static void bind_text(struct binder *b, int idx, const char *value)
{
    if (b->rc != SQLITE_OK)
        return;
    if (value == NULL)
        b->rc = sqlite3_bind_null(b->stmt, idx);
    else
        b->rc = sqlite3_bind_text(b->stmt, idx, value, -1, SQLITE_STATIC);
}

/* A NULL value binds SQL NULL, and any other pointer binds len bytes. */
static void bind_blob(struct binder *b, int idx, const void *value, size_t len)
{
    if (b->rc != SQLITE_OK)
        return;
    if (value == NULL)
        b->rc = sqlite3_bind_null(b->stmt, idx);
    else
        b->rc = sqlite3_bind_blob64(b->stmt, idx, value, len, SQLITE_STATIC);
}

static void bind_int64(struct binder *b, int idx, int64_t value)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->stmt, idx, value);
}

static void stmt_done(sqlite3_stmt *stmt)
{
    sqlite3_reset(stmt);
    sqlite3_clear_bindings(stmt);
}

/*
 * Step a bound statement that returns no row and reset it. On failure the
 * message starts with what. Returns 0 or -1.
 */
static int exec_bound(struct store *st, struct binder *b, const char *what)
{
    int rc = b->rc;

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(b->stmt);
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        fail_sqlite(st, rc, "%s", what);

    stmt_done(b->stmt);
    return rc == SQLITE_OK ? 0 : -1;
}

/*
 * Step a bound query to its first row. Returns 1 with the row available, and
 * the caller resets the statement with stmt_done(). Returns 0 when there is
 * no row and -1 on error, with the statement already reset.
 */
static int query_first(struct store *st, struct binder *b, const char *what)
{
    int rc = b->rc;

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(b->stmt);
        if (rc == SQLITE_ROW)
            return 1;
        if (rc == SQLITE_DONE)
            rc = SQLITE_OK;
    }
    if (rc != SQLITE_OK)
        fail_sqlite(st, rc, "%s", what);

    stmt_done(b->stmt);
    return rc == SQLITE_OK ? 0 : -1;
}

/* Run a "SELECT count(*)" statement. Returns 0 or -1. */
static int query_count(struct store *st, enum stmt_id id, const char *what,
                       int64_t *count)
{
    struct binder b = bind_start(st, id);
    int found = query_first(st, &b, what);

    if (found < 0)
        return -1;
    if (found == 0)
        return fail(st, "%s: the query returned no row", what);

    *count = sqlite3_column_int64(b.stmt, 0);
    stmt_done(b.stmt);
    return 0;
}

/* ---- reading columns ------------------------------------------------ */

/*
 * Read a TEXT or BLOB column as bytes followed by a NUL terminator, which
 * SQLite adds without changing the bytes (so embedded NULs survive). SQL NULL
 * gives NULL and length 0. The pointer is valid until the statement steps or
 * resets. Returns SQLITE_OK, or SQLITE_NOMEM when SQLite could not allocate
 * the terminated copy.
 */
static int column_bytes(sqlite3_stmt *stmt, int col, const char **out,
                        size_t *len)
{
    *out = NULL;
    if (len != NULL)
        *len = 0;
    if (sqlite3_column_type(stmt, col) == SQLITE_NULL)
        return SQLITE_OK;

    const unsigned char *text = sqlite3_column_text(stmt, col);
    if (text == NULL)
        return SQLITE_NOMEM;

    *out = (const char *)text;
    if (len != NULL)
        *len = (size_t)sqlite3_column_bytes(stmt, col);
    return SQLITE_OK;
}

/* ---- opening and schema --------------------------------------------- */

static int exec_sql(struct store *st, const char *sql)
{
    int rc = sqlite3_exec(st->db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        return fail_sqlite(st, rc, "%s", sql);
    return 0;
}

/* Run count statements in order, stopping at the first that fails. */
static int exec_all(struct store *st, const char *const *sql, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (exec_sql(st, sql[i]) != 0)
            return -1;
    }
    return 0;
}

/*
 * Prepare sql and step it to its first row. Returns 0 with *out positioned
 * on the row (the caller finalizes it), or -1 with *out finalized.
 */
static int query_single(struct store *st, const char *sql, sqlite3_stmt **out)
{
    int rc = sqlite3_prepare_v2(st->db, sql, -1, out, NULL);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(*out);
        if (rc == SQLITE_ROW)
            return 0;
    }

    if (rc == SQLITE_DONE)
        fail(st, "%s: the query returned no row", sql);
    else
        fail_sqlite(st, rc, "%s", sql);
    sqlite3_finalize(*out);
    *out = NULL;
    return -1;
}

/* Run a statement that returns one integer, such as a PRAGMA query. */
static int query_int(struct store *st, const char *sql, int64_t *value)
{
    sqlite3_stmt *stmt;

    if (query_single(st, sql, &stmt) != 0)
        return -1;
    *value = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    return 0;
}

/*
 * Switch to WAL and check the result: PRAGMA journal_mode returns the mode
 * in effect, which stays the old one when WAL is impossible (an in-memory
 * database, or a VFS without shared-memory support).
 */
static int enable_wal(struct store *st)
{
    sqlite3_stmt *stmt;
    int result = 0;

    if (query_single(st, "PRAGMA journal_mode = WAL", &stmt) != 0)
        return -1;

    const char *mode = (const char *)sqlite3_column_text(stmt, 0);
    if (mode == NULL || strcmp(mode, "wal") != 0) {
        result = fail(st,
                      "PRAGMA journal_mode = WAL returned \"%s\" instead of"
                      " \"wal\", and the store requires WAL",
                      mode ? mode : "(null)");
    }

    sqlite3_finalize(stmt);
    return result;
}

/*
 * The busy timeout is set first so that switching to WAL, which needs an
 * exclusive lock on a new file, waits for another process opening it too.
 * foreign_keys stays off: no table declares a foreign key, and it is set
 * explicitly so that a build with SQLITE_DEFAULT_FOREIGN_KEYS=1 behaves the
 * same.
 */
static int configure_connection(struct store *st)
{
    int rc = sqlite3_busy_timeout(st->db, STORE_BUSY_TIMEOUT_MS);
    int64_t synchronous = 0;

    if (rc != SQLITE_OK)
        return fail_sqlite(st, rc, "sqlite3_busy_timeout");
    if (enable_wal(st) != 0)
        return -1;
    if (exec_sql(st, "PRAGMA synchronous = FULL") != 0)
        return -1;
    if (query_int(st, "PRAGMA synchronous", &synchronous) != 0)
        return -1;
    if (synchronous != 2) {
        return fail(st, "PRAGMA synchronous is %" PRId64 " instead of 2 (FULL)",
                    synchronous);
    }
    /* Up to 4 MiB of page cache. The interior pages of the idempotency
     * table take under 0.5% of it: 37 pages for 300,000 rows of 186 bytes.
     * So an hour of 1,000 riders, 3.6 million rows, needs about 2 MB, and
     * reading an old row costs one leaf page. SQLite fills the cache only
     * as pages are read, within the daemon's budget of 64 MiB. */
    if (exec_sql(st, "PRAGMA cache_size = -4096") != 0)
        return -1;
    return exec_sql(st, "PRAGMA foreign_keys = OFF");
}

/* Version 1: the initial schema. */
static int migrate_to_v1(struct store *st)
{
    static const char *const sql[] = {
        "CREATE TABLE idempotency ("
        " key BLOB PRIMARY KEY,"
        " status TEXT NOT NULL"
        "  CHECK (status IN ('INPROGRESS', 'COMPLETED')),"
        " expiry_s INTEGER NOT NULL,"
        " in_progress_expiry_ms INTEGER,"
        " owner TEXT,"
        " hash BLOB NOT NULL,"
        " outcome TEXT,"
        " shard_id TEXT,"
        " seq TEXT,"
        " subseq INTEGER"
        ") WITHOUT ROWID",

        "CREATE TABLE samples ("
        " race_id TEXT NOT NULL,"
        " racer_id TEXT NOT NULL,"
        " second INTEGER NOT NULL,"
        " class_id TEXT,"
        " name BLOB,"
        " uuid BLOB,"
        " device_ts_ms INTEGER,"
        " arrival_ms INTEGER,"
        " cadence4 INTEGER,"
        " resistance4 INTEGER,"
        " output4 INTEGER,"
        " cadence_exact TEXT,"
        " resistance_exact TEXT,"
        " final INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (race_id, racer_id, second)"
        ") WITHOUT ROWID",

        "CREATE TABLE agg_state ("
        " kind TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " value BLOB,"
        " PRIMARY KEY (kind, key)"
        ") WITHOUT ROWID",

        "CREATE TABLE checkpoints ("
        " shard_id TEXT PRIMARY KEY,"
        " seq TEXT,"
        " subseq INTEGER NOT NULL DEFAULT 0,"
        " finished INTEGER NOT NULL DEFAULT 0"
        ") WITHOUT ROWID",

        "CREATE TABLE outbox ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " topic TEXT NOT NULL,"
        " payload BLOB NOT NULL"
        ")",

        "CREATE TABLE dead_letters ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT,"
        " shard_id TEXT,"
        " seq TEXT,"
        " subseq INTEGER,"
        " arrival_ms INTEGER,"
        " reason TEXT NOT NULL,"
        " detail TEXT,"
        " data BLOB"
        ")",

        "CREATE TABLE meta ("
        " key TEXT PRIMARY KEY,"
        " value TEXT"
        ") WITHOUT ROWID",
    };

    return exec_all(st, sql, sizeof sql / sizeof sql[0]);
}

/*
 * Version 2: idempotency keys move to the idempotency library's tables,
 * whose rows are appended in claim order. The version 1 table was keyed by
 * the key itself; its rows are not carried over.
 */
static int migrate_to_v2(struct store *st)
{
    return exec_sql(st, "DROP TABLE IF EXISTS idempotency");
}

/*
 * Version 3: race results, class leaderboards and class history. Nothing
 * is copied: the aggregator derives them from the samples, and the races
 * of a version 2 database, which have no results yet, publish them at the
 * first stream-time advance after the upgrade.
 */
static int migrate_to_v3(struct store *st)
{
    static const char *const sql[] = {
        "CREATE TABLE last_messages ("
        " kind TEXT NOT NULL,"
        " key TEXT NOT NULL,"
        " revision INTEGER NOT NULL,"
        " payload BLOB NOT NULL,"
        " PRIMARY KEY (kind, key)"
        ") WITHOUT ROWID",

        "CREATE TABLE class_history ("
        " class_id TEXT NOT NULL,"
        " racer_id TEXT NOT NULL,"
        " second INTEGER NOT NULL,"
        " output4 INTEGER NOT NULL,"
        " race_id TEXT NOT NULL,"
        " PRIMARY KEY (class_id, racer_id, second)"
        ") WITHOUT ROWID",
    };

    return exec_all(st, sql, sizeof sql / sizeof sql[0]);
}

/*
 * Version 4: a record is filed as a dead letter once. Rows that an earlier
 * version filed again for the same record are removed, keeping the first.
 * Rows without a shard (none are written today) stay, because NULLs never
 * conflict in a unique index.
 */
static int migrate_to_v4(struct store *st)
{
    static const char *const sql[] = {
        "DELETE FROM dead_letters WHERE id NOT IN"
        " (SELECT min(id) FROM dead_letters"
        "  GROUP BY shard_id, seq, subseq)"
        " AND shard_id IS NOT NULL AND seq IS NOT NULL"
        " AND subseq IS NOT NULL",

        "CREATE UNIQUE INDEX dead_letters_record"
        " ON dead_letters (shard_id, seq, subseq)",
    };

    return exec_all(st, sql, sizeof sql / sizeof sql[0]);
}

/* Write buf as one row of the log that insert appends to, and empty it. */
static int insert_log_row(sqlite3_stmt *insert, struct batch_log_buf *buf)
{
    sqlite3_bind_int(insert, 1, BATCH_LOG_FORMAT);
    sqlite3_bind_int64(insert, 2, buf->count);
    sqlite3_bind_blob64(insert, 3, buf->data, buf->len, SQLITE_STATIC);
    int rc = sqlite3_step(insert);
    sqlite3_reset(insert);
    batch_log_reset(buf);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* Append the version 4 samples row at sel to buf. Returns an SQLite code. */
static int put_v4_sample(sqlite3_stmt *sel, struct batch_log_buf *buf)
{
    static const int text_cols[] = {0, 1, 3, 4, 5, 11, 12};
    struct store_sample smp = {0};
    const char **texts[] = {
        &smp.race_id, &smp.racer_id,      &smp.class_id,        &smp.name,
        &smp.uuid,    &smp.cadence_exact, &smp.resistance_exact};
    size_t lens[7] = {0};
    int rc = SQLITE_OK;

    for (size_t i = 0; i < 7 && rc == SQLITE_OK; i++)
        rc = column_bytes(sel, text_cols[i], texts[i], &lens[i]);
    smp.name_len = lens[3];
    smp.uuid_len = lens[4];
    smp.second = sqlite3_column_int(sel, 2);
    smp.device_ts_ms = sqlite3_column_int64(sel, 6);
    smp.arrival_ms = sqlite3_column_int64(sel, 7);
    smp.cadence4 = sqlite3_column_int64(sel, 8);
    smp.resistance4 = sqlite3_column_int64(sel, 9);
    smp.output4 = sqlite3_column_int64(sel, 10);
    smp.final = sqlite3_column_int64(sel, 13) != 0;
    if (rc == SQLITE_OK && batch_log_put_sample(buf, &smp) != 0)
        rc = SQLITE_NOMEM;
    return rc;
}

/* Append the version 4 class_history row at sel to buf. */
static int put_v4_history(sqlite3_stmt *sel, struct batch_log_buf *buf)
{
    struct store_history_row row = {(const char *)sqlite3_column_text(sel, 0),
                                    (const char *)sqlite3_column_text(sel, 1),
                                    sqlite3_column_int(sel, 2),
                                    sqlite3_column_int64(sel, 3),
                                    (const char *)sqlite3_column_text(sel, 4)};

    return batch_log_put_history(buf, &row, false) != 0 ? SQLITE_NOMEM
                                                        : SQLITE_OK;
}

/*
 * Copy the rows that select_sql returns into the log that insert_sql
 * appends to, a few thousand per log row, with put for each row.
 */
static int copy_to_log(struct store *st, const char *select_sql,
                       const char *insert_sql,
                       int (*put)(sqlite3_stmt *sel, struct batch_log_buf *buf),
                       const char *what)
{
    sqlite3_stmt *sel = NULL, *ins = NULL;
    struct batch_log_buf buf = {0};
    int step = SQLITE_ROW;
    int rc = sqlite3_prepare_v2(st->db, select_sql, -1, &sel, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v2(st->db, insert_sql, -1, &ins, NULL);
    while (rc == SQLITE_OK && (step = sqlite3_step(sel)) == SQLITE_ROW) {
        rc = put(sel, &buf);
        if (rc == SQLITE_OK && buf.count >= 4096)
            rc = insert_log_row(ins, &buf);
    }
    if (rc == SQLITE_OK && step != SQLITE_DONE)
        rc = step;
    if (rc == SQLITE_OK && buf.count > 0)
        rc = insert_log_row(ins, &buf);
    if (rc != SQLITE_OK)
        fail_sqlite(st, rc, "%s", what);
    sqlite3_finalize(sel);
    sqlite3_finalize(ins);
    batch_log_free(&buf);
    return rc == SQLITE_OK ? 0 : -1;
}

/*
 * Version 5: samples and the class history move into logs of one row per
 * transaction (see the design note). The old tables cost a B-tree insert
 * per record, the largest share of the store's work.
 */
static int migrate_to_v5(struct store *st)
{
    static const char *const create[] = {
        "CREATE TABLE sample_log ("
        " id INTEGER PRIMARY KEY,"
        " format INTEGER NOT NULL,"
        " count INTEGER NOT NULL,"
        " data BLOB NOT NULL"
        ")",

        "CREATE TABLE history_log ("
        " id INTEGER PRIMARY KEY,"
        " format INTEGER NOT NULL,"
        " count INTEGER NOT NULL,"
        " data BLOB NOT NULL"
        ")",
    };
    static const char *const drop[] = {
        "DROP TABLE samples",
        "DROP TABLE class_history",
    };

    if (exec_all(st, create, sizeof create / sizeof create[0]) != 0 ||
        copy_to_log(st,
                    "SELECT race_id, racer_id, second, class_id, name, uuid,"
                    " device_ts_ms, arrival_ms, cadence4, resistance4,"
                    " output4, cadence_exact, resistance_exact, final"
                    " FROM samples ORDER BY race_id, racer_id, second",
                    "INSERT INTO sample_log (format, count, data)"
                    " VALUES (?1, ?2, ?3)",
                    put_v4_sample, "copy samples into the sample log") != 0 ||
        copy_to_log(st,
                    "SELECT class_id, racer_id, second, output4, race_id"
                    " FROM class_history ORDER BY class_id, second, racer_id",
                    "INSERT INTO history_log (format, count, data)"
                    " VALUES (?1, ?2, ?3)",
                    put_v4_history, "copy class history into its log") != 0)
        return -1;
    return exec_all(st, drop, sizeof drop / sizeof drop[0]);
}

/* migrations[v] brings the schema from version v - 1 to version v. */
static int (*const migrations[STORE_SCHEMA_VERSION + 1])(struct store *st) = {
    [1] = migrate_to_v1, [2] = migrate_to_v2, [3] = migrate_to_v3,
    [4] = migrate_to_v4, [5] = migrate_to_v5,
};

/*
 * Reject a schema this build cannot use: a newer version, or version 0 (a
 * file podium never set up) that already contains tables of another program.
 */
static int check_schema_version(struct store *st, int64_t version)
{
    int64_t objects = 0;

    if (version > STORE_SCHEMA_VERSION) {
        return fail(st,
                    "schema version %" PRId64 " is newer than the version %d"
                    " this build supports; run a newer podium",
                    version, STORE_SCHEMA_VERSION);
    }
    if (version < 0)
        return fail(st, "invalid schema version %" PRId64, version);
    if (version > 0)
        return 0;

    if (query_int(st, "SELECT count(*) FROM sqlite_schema", &objects) != 0)
        return -1;
    if (objects > 0) {
        return fail(st,
                    "the file has %" PRId64 " schema objects but schema"
                    " version 0, so it is not a podium database",
                    objects);
    }
    return 0;
}

static int set_user_version(struct store *st, int64_t version)
{
    char sql[64];

    snprintf(sql, sizeof sql, "PRAGMA user_version = %" PRId64, version);
    return exec_sql(st, sql);
}

/*
 * Bring the schema to STORE_SCHEMA_VERSION in one IMMEDIATE transaction. A
 * crash leaves the old or the new schema, and of two processes opening a new
 * file at once, the second waits and then finds the current version.
 */
static int migrate(struct store *st)
{
    int64_t version = 0;

    if (exec_sql(st, "BEGIN IMMEDIATE") != 0)
        return -1;

    if (query_int(st, "PRAGMA user_version", &version) != 0)
        goto fail;
    if (check_schema_version(st, version) != 0)
        goto fail;

    for (int64_t v = version + 1; v <= STORE_SCHEMA_VERSION; v++) {
        if (migrations[v](st) != 0 || set_user_version(st, v) != 0)
            goto fail;
    }

    if (exec_sql(st, "COMMIT") != 0)
        goto fail;
    return 0;

fail:
    /* The message of the first error is already in st->errmsg. */
    sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static int prepare_statements(struct store *st)
{
    for (int i = 0; i < STMT_COUNT; i++) {
        int rc =
            sqlite3_prepare_v3(st->db, stmt_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &st->stmt[i], NULL);
        if (rc != SQLITE_OK)
            return fail_sqlite(st, rc, "prepare \"%s\"", stmt_sql[i]);
    }
    return 0;
}

static int open_connection(struct store *st, const char *path)
{
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE |
                SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
    int rc = sqlite3_open_v2(path, &st->db, flags, NULL);

    if (rc != SQLITE_OK)
        return fail_sqlite(st, rc, "sqlite3_open_v2");
    return 0;
}

/*
 * Write into buf why the directory of path cannot hold the database, or ""
 * when it looks usable. SQLite reports only "unable to open database file",
 * which does not tell a missing directory from a missing permission.
 */
static void describe_parent_dir(const char *path, char *buf, size_t len)
{
    char dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    struct stat sb;

    buf[0] = '\0';
    if (slash == NULL)
        snprintf(dir, sizeof dir, ".");
    else if (slash == path)
        snprintf(dir, sizeof dir, "/");
    else
        snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);

    if (stat(dir, &sb) != 0) {
        if (errno == ENOENT) {
            snprintf(buf, len,
                     ". The directory %s does not exist: create it or fix"
                     " the path",
                     dir);
        } else {
            snprintf(buf, len, ". The directory %s is not accessible: %s", dir,
                     strerror(errno));
        }
    } else if (!S_ISDIR(sb.st_mode)) {
        snprintf(buf, len, ". %s is not a directory", dir);
    } else if (access(dir, W_OK | X_OK) != 0) {
        snprintf(buf, len, ". The directory %s is not writable: %s", dir,
                 strerror(errno));
    }
}

/*
 * Open or create the database, configure the connection, migrate the schema
 * and prepare the statements. The parent directory is not created: a missing
 * directory usually means a wrong path, and the error names it.
 */
int store_open(const char *path, struct store **out, char *err, size_t err_len)
{
    char hint[PATH_MAX + 128];
    struct store *st = NULL;

    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        snprintf(err, err_len, "failed to open database: the path is empty");
        return -1;
    }
    st = calloc(1, sizeof *st);
    if (st == NULL) {
        snprintf(err, err_len, "failed to open database %s: out of memory",
                 path);
        return -1;
    }

    if (open_connection(st, path) == 0 && configure_connection(st) == 0 &&
        migrate(st) == 0 && prepare_statements(st) == 0) {
        *out = st;
        return 0;
    }

    describe_parent_dir(path, hint, sizeof hint);
    snprintf(err, err_len, "failed to open database %s: %s%s", path, st->errmsg,
             hint);
    store_close(st);
    return -1;
}

/*
 * Open an existing database read-only, for `podium query`. The schema is not
 * migrated, so a database of another version is rejected with what to do.
 * A podium run may have the database open meanwhile, because in WAL mode a
 * reader sees the last committed batch and does not block the writer's
 * commits.
 */
int store_open_readonly(const char *path, struct store **out, char *err,
                        size_t err_len)
{
    struct stat sb;
    struct store *st = NULL;
    int64_t version = 0;

    *out = NULL;
    if (path == NULL || path[0] == '\0') {
        snprintf(err, err_len, "failed to open database: the path is empty");
        return -1;
    }
    if (stat(path, &sb) != 0) {
        snprintf(err, err_len,
                 "failed to open database %s: %s; check store.path, or run"
                 " podium run first to create it",
                 path, strerror(errno));
        return -1;
    }
    st = calloc(1, sizeof *st);
    if (st == NULL) {
        snprintf(err, err_len, "failed to open database %s: out of memory",
                 path);
        return -1;
    }

    int flags =
        SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_EXRESCODE;
    int rc = sqlite3_open_v2(path, &st->db, flags, NULL);
    if (rc != SQLITE_OK)
        fail_sqlite(st, rc, "sqlite3_open_v2");
    else if ((rc = sqlite3_busy_timeout(st->db, STORE_BUSY_TIMEOUT_MS)) !=
             SQLITE_OK)
        fail_sqlite(st, rc, "sqlite3_busy_timeout");
    else if (query_int(st, "PRAGMA user_version", &version) != 0)
        rc = SQLITE_ERROR;
    else if (version != STORE_SCHEMA_VERSION) {
        fail(st,
             "schema version %" PRId64 " differs from the version %d this"
             " build reads; %s",
             version, STORE_SCHEMA_VERSION,
             version < STORE_SCHEMA_VERSION
                 ? "run podium run of this build once to upgrade it"
                 : "use a newer podium");
        rc = SQLITE_ERROR;
    } else if (prepare_statements(st) != 0)
        rc = SQLITE_ERROR;

    if (rc == SQLITE_OK) {
        *out = st;
        return 0;
    }
    snprintf(err, err_len, "failed to open database %s: %s", path, st->errmsg);
    store_close(st);
    return -1;
}

/*
 * Close the connection. A transaction still open is rolled back, and the
 * last connection to close checkpoints the WAL into the database file.
 */
void store_close(struct store *st)
{
    if (st == NULL)
        return;

    idem_close(st->idem);
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(st->stmt[i]);
    sqlite3_close(st->db);
    batch_log_free(&st->samples);
    batch_log_free(&st->history);
    free(st);
}

const char *store_errmsg(const struct store *st)
{
    return st->errmsg;
}

/* ---- transactions --------------------------------------------------- */

/* Write the entries put in buf since its last flush as one log row. */
static int flush_log(struct store *st, struct batch_log_buf *buf,
                     enum stmt_id id, const char *what)
{
    if (buf->count == 0)
        return 0;
    struct binder b = bind_start(st, id);
    bind_int64(&b, 1, BATCH_LOG_FORMAT);
    bind_int64(&b, 2, buf->count);
    bind_blob(&b, 3, buf->data, buf->len);
    int rc = exec_bound(st, &b, what);
    batch_log_reset(buf);
    return rc;
}

static int flush_samples(struct store *st)
{
    return flush_log(st, &st->samples, STMT_SAMPLE_PUT,
                     "append to the sample log");
}

static int flush_history(struct store *st)
{
    return flush_log(st, &st->history, STMT_HISTORY_PUT,
                     "append to the class history log");
}

/*
 * BEGIN IMMEDIATE takes the write lock at once. Another writer then makes
 * BEGIN wait (up to the busy timeout) or fail with SQLITE_BUSY, instead of a
 * statement halfway through the batch.
 */
int store_begin(struct store *st)
{
    struct binder b = bind_start(st, STMT_BEGIN);

    return exec_bound(st, &b, "BEGIN IMMEDIATE");
}

/* Roll back without replacing the message of the error that caused it. */
static void rollback_quietly(struct store *st)
{
    sqlite3_stmt *stmt = st->stmt[STMT_ROLLBACK];

    /* The idempotency table caches completed keys in memory; a rollback
     * must drop them, or a rolled-back claim would look like a duplicate. */
    if (st->idem != NULL)
        idem_after_rollback(st->idem);
    batch_log_reset(&st->samples);
    batch_log_reset(&st->history);
    if (sqlite3_get_autocommit(st->db))
        return;
    sqlite3_step(stmt);
    stmt_done(stmt);
}

/*
 * Commit the open transaction. On failure the transaction is rolled back
 * when SQLite left it open, so store_rollback() is optional.
 * NOTE: after an I/O error during COMMIT, the commit frame may already be in
 * the WAL file, and recovery at the next open can then keep the batch. The
 * caller should treat the outcome as unknown: stop the batch, reopen the
 * store and reload its state instead of retrying the batch from memory.
 */
int store_commit(struct store *st)
{
    struct binder b = bind_start(st, STMT_COMMIT);

    if (st->idem != NULL && idem_flush(st->idem) != 0) {
        fail(st, "write the pending idempotency rows: %s",
             idem_errmsg(st->idem));
        rollback_quietly(st);
        return -1;
    }
    if (flush_samples(st) == 0 && flush_history(st) == 0 &&
        exec_bound(st, &b, "COMMIT") == 0)
        return 0;
    rollback_quietly(st);
    return -1;
}

/* Roll back the open transaction. Without one, this does nothing. */
void store_rollback(struct store *st)
{
    struct binder b = bind_start(st, STMT_ROLLBACK);

    if (st->idem != NULL)
        idem_after_rollback(st->idem);
    batch_log_reset(&st->samples);
    batch_log_reset(&st->history);
    if (sqlite3_get_autocommit(st->db))
        return;
    exec_bound(st, &b, "ROLLBACK");
}

/* ---- row scans ------------------------------------------------------ */

/*
 * Step stmt through all its rows and call visit for each, then reset stmt.
 * Returns 0, -1 on an SQLite error, or the first non-zero return of visit
 * (visit returns -1 after recording an error of its own).
 */
static int scan_rows(struct store *st, sqlite3_stmt *stmt, const char *what,
                     int (*visit)(struct store *st, sqlite3_stmt *stmt,
                                  void *ctx),
                     void *ctx)
{
    int result = 0;
    int rc;

    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        result = visit(st, stmt, ctx);
        if (result != 0)
            goto cleanup;
    }
    if (rc != SQLITE_DONE)
        result = fail_sqlite(st, rc, "%s", what);

cleanup:
    stmt_done(stmt);
    return result;
}

/* Read columns while keeping the first error, like struct binder. */
struct reader {
    sqlite3_stmt *stmt;
    int rc;
};

static const char *read_bytes(struct reader *r, int col, size_t *len)
{
    const char *out = NULL;

    if (len != NULL)
        *len = 0;
    if (r->rc == SQLITE_OK)
        r->rc = column_bytes(r->stmt, col, &out, len);
    return out;
}

/*
 * Stand in for NULL in messages, and in callbacks for NOT NULL columns,
 * which SQLite enforces on every write.
 */
static const char *printable(const char *s)
{
    return s ? s : "(null)";
}

/* ---- idempotency ---------------------------------------------------- */

/*
 * The idempotency table shares this connection, so its rows commit in the
 * same transaction as the rest of a batch. Claims left INPROGRESS by an
 * earlier process are released at once: one process writes a database at
 * a time, so their owner is dead.
 */
int store_open_idempotency(struct store *st, const struct idem_options *opts,
                           const uint8_t owner[IDEM_OWNER_LEN], char *err,
                           size_t err_len)
{
    size_t reclaimed = 0;

    if (idem_open(st->db, opts, owner, &st->idem, err, err_len) != 0)
        return -1;
    if (store_begin(st) != 0 || idem_reclaim_dead(st->idem, &reclaimed) != 0 ||
        store_commit(st) != 0) {
        snprintf(err, err_len, "failed to release unfinished claims: %s",
                 st->errmsg[0] ? st->errmsg : idem_errmsg(st->idem));
        store_rollback(st);
        return -1;
    }
    st->idem_reclaimed = reclaimed;
    return 0;
}

struct idem_table *store_idempotency(struct store *st)
{
    return st->idem;
}

size_t store_idempotency_reclaimed(const struct store *st)
{
    return st->idem_reclaimed;
}

/* ---- samples -------------------------------------------------------- */

/* Bytes of entries after which a log row is written. SQLite copies a row
 * into a record of its own before writing it, so small rows keep a flush's
 * memory small. A race's results emit one history entry per rider and
 * second at once, several MB for a long race. */
#define LOG_FLUSH_BYTES (256u << 10)

/*
 * Samples wait in memory until the commit, or until they fill a log row.
 * Outside a transaction each sample is its own row, so nothing waits for a
 * commit that will not come.
 */
int store_sample_put(struct store *st, const struct store_sample *s)
{
    int rc = batch_log_put_sample(&st->samples, s);

    if (rc != 0) {
        return fail(st, "insert sample: %s",
                    rc == -ENOMEM ? "out of memory"
                                  : "race_id and racer_id must not be NULL");
    }
    if (sqlite3_get_autocommit(st->db) || st->samples.len >= LOG_FLUSH_BYTES)
        return flush_samples(st);
    return 0;
}

struct sample_scan {
    store_sample_cb cb;
    void *arg;
    int result; /* the non-zero return of cb that stopped the scan */
};

/*
 * How to read one kind of log: its name for messages, and a function that
 * decodes the entry at data[*pos] and hands it on. That function returns
 * 0, -1 with *reason set when the entry is damaged, or 1 to stop the scan,
 * with the reason kept in ctx.
 */
struct log_reader {
    const char *name;
    int (*entry)(const unsigned char *data, size_t len, size_t *pos, void *ctx,
                 const char **reason);
    void *ctx;
};

/* Visit one row of a log (id, format, count, data) with a log_reader. */
static int visit_log_row(struct store *st, sqlite3_stmt *stmt, void *arg)
{
    const struct log_reader *reader = arg;
    int64_t id = sqlite3_column_int64(stmt, 0);
    int64_t format = sqlite3_column_int64(stmt, 1);
    int64_t count = sqlite3_column_int64(stmt, 2);
    const char *data = NULL;
    size_t len = 0;
    int rc = column_bytes(stmt, 3, &data, &len);

    if (rc != SQLITE_OK)
        return fail_sqlite(st, rc, "read %s row %" PRId64, reader->name, id);
    if (format != BATCH_LOG_FORMAT) {
        return fail(st,
                    "%s row %" PRId64 " has format %" PRId64
                    ", which this build cannot read; use the podium version"
                    " that wrote it",
                    reader->name, id, format);
    }

    size_t pos = 0;
    for (int64_t i = 0; i < count || pos < len; i++) {
        const char *reason = "bytes after the last entry";
        rc = i < count ? reader->entry((const unsigned char *)data, len, &pos,
                                       reader->ctx, &reason)
                       : -1;
        if (rc == -1) {
            return fail(st,
                        "%s row %" PRId64 " is damaged at entry %" PRId64
                        " of %" PRId64 ": %s",
                        reader->name, id, i, count, reason);
        }
        if (rc != 0)
            return 1;
    }
    return 0;
}

static int read_sample_entry(const unsigned char *data, size_t len, size_t *pos,
                             void *ctx, const char **reason)
{
    struct sample_scan *scan = ctx;
    struct store_sample s;

    if (batch_log_next_sample(data, len, pos, &s, reason) != 0)
        return -1;
    scan->result = scan->cb(scan->arg, &s);
    return scan->result != 0 ? 1 : 0;
}

int store_samples_load(struct store *st, store_sample_cb cb, void *arg)
{
    struct sample_scan scan = {cb, arg, 0};
    struct log_reader reader = {"sample log", read_sample_entry, &scan};

    if (flush_samples(st) != 0)
        return -1;
    int rc = scan_rows(st, st->stmt[STMT_SAMPLE_LOAD], "load samples",
                       visit_log_row, &reader);
    return rc == 1 ? scan.result : rc;
}

/* The (race, racer, second) keys of the log, to count distinct ones. */
struct key_list {
    char **keys;
    size_t count;
    size_t cap;
};

static int collect_key(void *arg, const struct store_sample *s)
{
    struct key_list *list = arg;
    size_t a = strlen(s->race_id), b = strlen(s->racer_id);
    char *key = malloc(a + b + 16);

    if (key == NULL)
        return -ENOMEM;
    memcpy(key, s->race_id, a + 1);
    memcpy(key + a + 1, s->racer_id, b + 1);
    memcpy(key + a + b + 2, &s->second, sizeof s->second);
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        char **keys = realloc(list->keys, cap * sizeof *keys);
        if (keys == NULL) {
            free(key);
            return -ENOMEM;
        }
        list->keys = keys;
        list->cap = cap;
    }
    list->keys[list->count++] = key;
    return 0;
}

static size_t key_len(const char *key)
{
    size_t a = strlen(key);
    return a + strlen(key + a + 1) + 2 + sizeof(int32_t);
}

static int compare_keys(const void *pa, const void *pb)
{
    const char *a = *(const char *const *)pa, *b = *(const char *const *)pb;
    size_t la = key_len(a), lb = key_len(b);
    int c = memcmp(a, b, la < lb ? la : lb);
    return c != 0 ? c : (la > lb) - (la < lb);
}

/* Counts the log's distinct keys in memory: meant for tests and tools. */
int store_sample_count(struct store *st, int64_t *count)
{
    struct key_list list = {0};
    int rc = store_samples_load(st, collect_key, &list);

    if (rc == -ENOMEM)
        rc = fail(st, "count samples: out of memory");
    if (rc == 0) {
        qsort(list.keys, list.count, sizeof list.keys[0], compare_keys);
        *count = 0;
        for (size_t i = 0; i < list.count; i++) {
            if (i == 0 || compare_keys(&list.keys[i - 1], &list.keys[i]) != 0)
                (*count)++;
        }
    }
    for (size_t i = 0; i < list.count; i++)
        free(list.keys[i]);
    free(list.keys);
    return rc == 0 ? 0 : -1;
}

/* ---- aggregator state ----------------------------------------------- */

int store_state_put(struct store *st, const char *kind, const char *key,
                    const char *value, size_t value_len)
{
    struct binder b = bind_start(st, STMT_STATE_PUT);

    if (value == NULL && value_len != 0)
        return fail(st, "state %s/%s: value is NULL", printable(kind),
                    printable(key));

    bind_text(&b, 1, kind);
    bind_text(&b, 2, key);
    bind_blob(&b, 3, value ? value : "", value_len);
    return exec_bound(st, &b, "store aggregator state");
}

int store_state_delete(struct store *st, const char *kind, const char *key)
{
    struct binder b = bind_start(st, STMT_STATE_DELETE);

    bind_text(&b, 1, kind);
    bind_text(&b, 2, key);
    return exec_bound(st, &b, "delete aggregator state");
}

struct state_scan {
    store_state_cb cb;
    void *arg;
};

static int visit_state(struct store *st, sqlite3_stmt *stmt, void *ctx)
{
    struct state_scan *scan = ctx;
    struct reader r = {stmt, SQLITE_OK};
    size_t value_len;

    const char *key = read_bytes(&r, 0, NULL);
    const char *value = read_bytes(&r, 1, &value_len);
    if (r.rc != SQLITE_OK)
        return fail_sqlite(st, r.rc, "read aggregator state");
    return scan->cb(scan->arg, printable(key), value ? value : "", value_len);
}

/* Values come back NUL-terminated after value_len bytes, in key order. */
int store_state_load(struct store *st, const char *kind, store_state_cb cb,
                     void *arg)
{
    struct state_scan scan = {cb, arg};
    struct binder b = bind_start(st, STMT_STATE_LOAD);

    bind_text(&b, 1, kind);
    if (b.rc != SQLITE_OK) {
        fail_sqlite(st, b.rc, "load aggregator state");
        stmt_done(b.stmt);
        return -1;
    }
    return scan_rows(st, b.stmt, "load aggregator state", visit_state, &scan);
}

/* ---- shard checkpoints ---------------------------------------------- */

/*
 * Check cp against the stored checkpoint of its shard: it must not be older.
 * Sequence numbers compare as big decimal numbers (seqnum_cmp_ext()), so a
 * 55-digit number is below any 56-digit one.
 * Sets *finished when the stored one is finished. Returns 0 or -1.
 */
static int checkpoint_check(struct store *st, const struct store_checkpoint *cp,
                            bool *finished)
{
    struct binder b = bind_start(st, STMT_CHECKPOINT_GET);
    bind_text(&b, 1, cp->shard_id);

    int found = query_first(st, &b, "read checkpoint");
    if (found <= 0)
        return found;

    struct reader r = {b.stmt, SQLITE_OK};
    const char *seq = read_bytes(&r, 0, NULL);
    int64_t subseq = sqlite3_column_int64(b.stmt, 1);
    int result = 0;

    if (sqlite3_column_int64(b.stmt, 2) != 0)
        *finished = true;

    if (r.rc != SQLITE_OK) {
        result = fail_sqlite(st, r.rc, "read checkpoint");
    } else if (seq == NULL) {
        result = 0;
    } else if (!seqnum_valid(seq)) {
        result = fail(st,
                      "stored checkpoint of shard %s has an invalid sequence"
                      " number \"%.140s\"",
                      cp->shard_id, seq);
    } else if (cp->seq == NULL) {
        result =
            fail(st,
                 "checkpoint of shard %s rejected: it has no sequence"
                 " number, but the stored one is %s (sub-sequence %" PRId64 ")",
                 cp->shard_id, seq, subseq);
    } else if (seqnum_cmp_ext(cp->seq, cp->subseq, seq, subseq) < 0) {
        result = fail(st,
                      "checkpoint of shard %s rejected: sequence number %s"
                      " (sub-sequence %" PRId64 ") is older than the stored %s"
                      " (sub-sequence %" PRId64 ")",
                      cp->shard_id, cp->seq, cp->subseq, seq, subseq);
    }

    stmt_done(b.stmt);
    return result;
}

/*
 * Store the checkpoint of a shard. An older (sequence, sub-sequence) than the
 * stored one is rejected, an equal one is accepted, and a shard once stored
 * as finished stays finished.
 */
int store_checkpoint_put(struct store *st, const struct store_checkpoint *cp)
{
    bool finished = cp->finished;

    if (cp->shard_id == NULL)
        return fail(st, "checkpoint has no shard id");
    if (cp->seq != NULL && !seqnum_valid(cp->seq)) {
        return fail(st,
                    "checkpoint of shard %s: invalid sequence number"
                    " \"%.140s\"",
                    cp->shard_id, cp->seq);
    }
    if (cp->subseq < 0) {
        return fail(st, "checkpoint of shard %s: invalid sub-sequence %" PRId64,
                    cp->shard_id, cp->subseq);
    }
    if (checkpoint_check(st, cp, &finished) != 0)
        return -1;

    struct binder b = bind_start(st, STMT_CHECKPOINT_PUT);
    bind_text(&b, 1, cp->shard_id);
    bind_text(&b, 2, cp->seq);
    bind_int64(&b, 3, cp->subseq);
    bind_int64(&b, 4, finished ? 1 : 0);
    return exec_bound(st, &b, "store checkpoint");
}

struct checkpoint_scan {
    store_checkpoint_cb cb;
    void *arg;
};

static int visit_checkpoint(struct store *st, sqlite3_stmt *stmt, void *ctx)
{
    struct checkpoint_scan *scan = ctx;
    struct reader r = {stmt, SQLITE_OK};
    struct store_checkpoint cp = {0};

    cp.shard_id = read_bytes(&r, 0, NULL);
    cp.seq = read_bytes(&r, 1, NULL);
    cp.subseq = sqlite3_column_int64(stmt, 2);
    cp.finished = sqlite3_column_int64(stmt, 3) != 0;
    if (r.rc != SQLITE_OK)
        return fail_sqlite(st, r.rc, "read checkpoint");

    if (cp.seq != NULL && !seqnum_valid(cp.seq)) {
        return fail(st,
                    "stored checkpoint of shard %s has an invalid sequence"
                    " number \"%.140s\"",
                    printable(cp.shard_id), cp.seq);
    }
    return scan->cb(scan->arg, &cp);
}

/*
 * Checkpoints come in shard id order. A stored sequence number that is not
 * valid fails the load instead of reaching the shard reader.
 */
int store_checkpoints_load(struct store *st, store_checkpoint_cb cb, void *arg)
{
    struct checkpoint_scan scan = {cb, arg};

    return scan_rows(st, st->stmt[STMT_CHECKPOINT_LOAD], "load checkpoints",
                     visit_checkpoint, &scan);
}

/* ---- outbox --------------------------------------------------------- */

int store_outbox_add(struct store *st, const char *topic, const void *payload,
                     size_t payload_len, int64_t *id)
{
    struct binder b = bind_start(st, STMT_OUTBOX_ADD);

    if (payload == NULL && payload_len != 0)
        return fail(st, "outbox message for %s: payload is NULL",
                    printable(topic));

    bind_text(&b, 1, topic);
    bind_blob(&b, 2, payload ? payload : "", payload_len);
    if (exec_bound(st, &b, "add outbox message") != 0)
        return -1;

    if (id != NULL)
        *id = sqlite3_last_insert_rowid(st->db);
    return 0;
}

/* Delete the given ids; ids that do not exist are skipped. */
int store_outbox_delete(struct store *st, const int64_t *ids, size_t count,
                        size_t *deleted)
{
    size_t n = 0;
    for (size_t i = 0; i < count; i++) {
        struct binder b = bind_start(st, STMT_OUTBOX_DELETE);
        char what[64];

        snprintf(what, sizeof what, "delete outbox message %" PRId64, ids[i]);
        bind_int64(&b, 1, ids[i]);
        if (exec_bound(st, &b, what) != 0)
            return -1;
        n += (size_t)sqlite3_changes(st->db);
    }
    if (deleted != NULL)
        *deleted = n;
    return 0;
}

struct outbox_scan {
    store_outbox_cb cb;
    void *arg;
};

static int visit_outbox(struct store *st, sqlite3_stmt *stmt, void *ctx)
{
    struct outbox_scan *scan = ctx;
    struct reader r = {stmt, SQLITE_OK};
    size_t payload_len;

    int64_t id = sqlite3_column_int64(stmt, 0);
    const char *topic = read_bytes(&r, 1, NULL);
    const char *payload = read_bytes(&r, 2, &payload_len);
    if (r.rc != SQLITE_OK)
        return fail_sqlite(st, r.rc, "read outbox message %" PRId64, id);
    return scan->cb(scan->arg, id, printable(topic), payload ? payload : "",
                    payload_len);
}

/* SQLite takes a 64-bit LIMIT, so a larger size_t is clamped. */
static int64_t limit_rows(size_t limit)
{
    return limit > (size_t)INT64_MAX ? INT64_MAX : (int64_t)limit;
}

/*
 * Run a paged load (rows with id > after_id, at most limit) through visit.
 * The statement takes the id as ?1 and the limit as ?2.
 */
static int scan_after(struct store *st, enum stmt_id id, int64_t after_id,
                      size_t limit, const char *what,
                      int (*visit)(struct store *, sqlite3_stmt *, void *),
                      void *ctx)
{
    struct binder b = bind_start(st, id);

    bind_int64(&b, 1, after_id);
    bind_int64(&b, 2, limit_rows(limit));
    if (b.rc != SQLITE_OK) {
        fail_sqlite(st, b.rc, "%s", what);
        stmt_done(b.stmt);
        return -1;
    }
    return scan_rows(st, b.stmt, what, visit, ctx);
}

/* Payloads come back NUL-terminated after payload_len bytes. */
int store_outbox_load(struct store *st, int64_t after_id, size_t limit,
                      store_outbox_cb cb, void *arg)
{
    struct outbox_scan scan = {cb, arg};

    return scan_after(st, STMT_OUTBOX_LOAD, after_id, limit, "load outbox",
                      visit_outbox, &scan);
}

int store_outbox_count(struct store *st, int64_t *count)
{
    return query_count(st, STMT_OUTBOX_COUNT, "count outbox messages", count);
}

/* ---- dead letters --------------------------------------------------- */

int store_dead_letter_add(struct store *st, const struct store_dead_letter *d)
{
    struct binder b = bind_start(st, STMT_DEAD_LETTER_ADD);

    if (d->data == NULL && d->data_len != 0)
        return fail(st, "dead letter %s: data is NULL", printable(d->reason));

    bind_text(&b, 1, d->shard_id);
    bind_text(&b, 2, d->seq);
    bind_int64(&b, 3, d->subseq);
    bind_int64(&b, 4, d->arrival_ms);
    bind_text(&b, 5, d->reason);
    bind_text(&b, 6, d->detail);
    bind_blob(&b, 7, d->data, d->data_len);
    return exec_bound(st, &b, "add dead letter");
}

struct dead_letter_scan {
    store_dead_letter_cb cb;
    void *arg;
};

static int visit_dead_letter(struct store *st, sqlite3_stmt *stmt, void *ctx)
{
    struct dead_letter_scan *scan = ctx;
    struct reader r = {stmt, SQLITE_OK};
    struct store_dead_letter d = {0};

    int64_t id = sqlite3_column_int64(stmt, 0);
    d.shard_id = read_bytes(&r, 1, NULL);
    d.seq = read_bytes(&r, 2, NULL);
    d.subseq = sqlite3_column_int64(stmt, 3);
    d.arrival_ms = sqlite3_column_int64(stmt, 4);
    d.reason = read_bytes(&r, 5, NULL);
    d.detail = read_bytes(&r, 6, NULL);
    d.data = read_bytes(&r, 7, &d.data_len);
    if (r.rc != SQLITE_OK)
        return fail_sqlite(st, r.rc, "read dead letter %" PRId64, id);

    d.reason = printable(d.reason);
    return scan->cb(scan->arg, id, &d);
}

int store_dead_letters_load(struct store *st, int64_t after_id, size_t limit,
                            store_dead_letter_cb cb, void *arg)
{
    struct dead_letter_scan scan = {cb, arg};

    return scan_after(st, STMT_DEAD_LETTER_LOAD, after_id, limit,
                      "load dead letters", visit_dead_letter, &scan);
}

int store_dead_letter_count(struct store *st, int64_t *count)
{
    return query_count(st, STMT_DEAD_LETTER_COUNT, "count dead letters", count);
}

/* ---- metadata ------------------------------------------------------- */

int store_meta_put(struct store *st, const char *key, const char *value)
{
    struct binder b = bind_start(st, STMT_META_PUT);

    bind_text(&b, 1, key);
    bind_text(&b, 2, value);
    return exec_bound(st, &b, "store meta value");
}

/*
 * A value stored as NULL comes back as "". A value that does not fit in
 * buf_len bytes with its NUL is an error, so a truncated value is never
 * mistaken for the stored one.
 */
int store_meta_get(struct store *st, const char *key, char *buf, size_t buf_len)
{
    struct binder b = bind_start(st, STMT_META_GET);
    bind_text(&b, 1, key);

    int found = query_first(st, &b, "read meta value");
    if (found <= 0)
        return found;

    struct reader r = {b.stmt, SQLITE_OK};
    size_t len;
    const char *value = read_bytes(&r, 0, &len);

    if (r.rc != SQLITE_OK) {
        found = fail_sqlite(st, r.rc, "read meta value");
    } else if (len >= buf_len) {
        found = fail(st,
                     "meta value of %s is %zu bytes, too long for a buffer"
                     " of %zu bytes",
                     key, len, buf_len);
    } else {
        memcpy(buf, value ? value : "", len);
        buf[len] = '\0';
    }

    stmt_done(b.stmt);
    return found;
}

/* ---- last messages -------------------------------------------------- */

int store_last_message_put(struct store *st, const char *kind, const char *key,
                           int32_t revision, const void *payload,
                           size_t payload_len)
{
    struct binder b = bind_start(st, STMT_LAST_MESSAGE_PUT);

    if (payload == NULL)
        return fail(st, "last message %s/%s: payload is NULL", printable(kind),
                    printable(key));
    bind_text(&b, 1, kind);
    bind_text(&b, 2, key);
    bind_int64(&b, 3, revision);
    bind_blob(&b, 4, payload, payload_len);
    return exec_bound(st, &b, "store last message");
}

/* The payload comes back NUL-terminated after payload_len bytes. */
int store_last_message_get(struct store *st, const char *kind, const char *key,
                           store_last_message_cb cb, void *arg)
{
    struct binder b = bind_start(st, STMT_LAST_MESSAGE_GET);
    bind_text(&b, 1, kind);
    bind_text(&b, 2, key);

    int found = query_first(st, &b, "read last message");
    if (found <= 0)
        return found;

    struct reader r = {b.stmt, SQLITE_OK};
    size_t len;
    int64_t revision = sqlite3_column_int64(b.stmt, 0);
    const char *payload = read_bytes(&r, 1, &len);
    int rc;

    if (r.rc != SQLITE_OK)
        rc = fail_sqlite(st, r.rc, "read last message");
    else
        rc = cb(arg, (int32_t)revision, payload ? payload : "", len);
    stmt_done(b.stmt);
    return rc != 0 ? rc : 1;
}

/* ---- class history -------------------------------------------------- */

/* Append a row, or the deletion of its key, to the class history log. */
static int put_history(struct store *st, const struct store_history_row *row,
                       bool deleted)
{
    int rc = batch_log_put_history(&st->history, row, deleted);

    if (rc != 0) {
        return fail(st, "store class history: %s",
                    rc == -ENOMEM ? "out of memory"
                                  : "class_id and racer_id must not be NULL");
    }
    if (sqlite3_get_autocommit(st->db) || st->history.len >= LOG_FLUSH_BYTES)
        return flush_history(st);
    return 0;
}

int store_history_put(struct store *st, const struct store_history_row *row)
{
    return put_history(st, row, false);
}

int store_history_delete(struct store *st, const char *class_id,
                         const char *racer_id, int32_t second)
{
    struct store_history_row row = {class_id, racer_id, second, 0, NULL};

    return put_history(st, &row, true);
}

/* One entry of the wanted class, copied out of the log. */
struct history_entry {
    char *racer_id;
    char *race_id; /* NULL for a deletion */
    int32_t second;
    int64_t output4;
    size_t order; /* position in the log: the later entry of a key wins */
};

struct history_scan {
    const char *class_id;
    const char *racer_id; /* NULL: any */
    int32_t second;       /* 0: any */
    struct history_entry *items;
    size_t count;
    size_t cap;
    size_t seen;
};

static int keep_history(struct history_scan *scan,
                        const struct store_history_row *row, bool deleted)
{
    size_t order = scan->seen++;

    if (strcmp(row->class_id, scan->class_id) != 0 ||
        (scan->racer_id != NULL &&
         strcmp(row->racer_id, scan->racer_id) != 0) ||
        (scan->second != 0 && row->second != scan->second))
        return 0;
    if (scan->count == scan->cap) {
        size_t cap = scan->cap ? scan->cap * 2 : 256;
        struct history_entry *p = realloc(scan->items, cap * sizeof *p);
        if (p == NULL)
            return -ENOMEM;
        scan->items = p;
        scan->cap = cap;
    }
    struct history_entry *e = &scan->items[scan->count];
    e->racer_id = strdup(row->racer_id);
    e->race_id = deleted ? NULL : strdup(row->race_id ? row->race_id : "");
    e->second = row->second;
    e->output4 = row->output4;
    e->order = order;
    if (e->racer_id == NULL || (!deleted && e->race_id == NULL)) {
        free(e->racer_id);
        free(e->race_id);
        return -ENOMEM;
    }
    scan->count++;
    return 0;
}

static int read_history_entry(const unsigned char *data, size_t len,
                              size_t *pos, void *ctx, const char **reason)
{
    struct store_history_row row;
    bool deleted;

    if (batch_log_next_history(data, len, pos, &row, &deleted, reason) != 0)
        return -1;
    return keep_history(ctx, &row, deleted) != 0 ? 1 : 0;
}

/* By second, then racer_id, then log order. */
static int history_entry_cmp(const void *pa, const void *pb)
{
    const struct history_entry *a = pa, *b = pb;

    if (a->second != b->second)
        return a->second < b->second ? -1 : 1;
    int c = strcmp(a->racer_id, b->racer_id);
    if (c != 0)
        return c;
    return (a->order > b->order) - (a->order < b->order);
}

/*
 * Read the whole log, keep the entries of the wanted keys and call cb for
 * the last entry of each key unless it is a deletion.
 */
int store_history_load(struct store *st, const char *class_id,
                       const char *racer_id, int32_t second,
                       store_history_cb cb, void *arg)
{
    struct history_scan scan = {class_id, racer_id, second, NULL, 0, 0, 0};
    int rc = flush_history(st);

    struct log_reader reader = {"class history log", read_history_entry, &scan};
    if (rc == 0)
        rc = scan_rows(st, st->stmt[STMT_HISTORY_LOAD], "load class history",
                       visit_log_row, &reader);
    if (rc == 1)
        rc = fail(st, "load class history: out of memory");
    if (rc == 0)
        qsort(scan.items, scan.count, sizeof scan.items[0], history_entry_cmp);
    for (size_t i = 0; rc == 0 && i < scan.count; i++) {
        const struct history_entry *e = &scan.items[i];
        const struct history_entry *next =
            i + 1 < scan.count ? &scan.items[i + 1] : NULL;
        if (e->race_id == NULL || (next != NULL && next->second == e->second &&
                                   strcmp(next->racer_id, e->racer_id) == 0))
            continue;
        struct store_history_row row = {class_id, e->racer_id, e->second,
                                        e->output4, e->race_id};
        rc = cb(arg, &row);
    }
    for (size_t i = 0; i < scan.count; i++) {
        free(scan.items[i].racer_id);
        free(scan.items[i].race_id);
    }
    free(scan.items);
    return rc;
}
