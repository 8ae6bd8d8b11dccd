/*
 * Design note
 *
 * Table (schema version 1, in idem_meta):
 *   idem_rows(id INTEGER PRIMARY KEY, key, status, expiry_s,
 *             in_progress_expiry_ms, owner, hash, outcome, shard_id, seq,
 *             subseq)
 * status is 1 (INPROGRESS) or 2 (COMPLETED). EXPIRED is never stored: a row
 * is expired when expiry_s <= now_ms / 1000.
 *
 * Rows are appended with ids from a counter that only grows in this
 * process, so every claim writes at the right edge of the rowid B-tree and
 * expiry deletes at its left edge. There is no SQL index on key. The
 * in-memory index (idem_index.c) maps a key's SipHash to the id of the
 * NEWEST row of that key, and a rowid lookup plus a byte comparison of the
 * key confirms a candidate. A key gets a second row only when its newest
 * row expired, so at most one row of a key is ever live, and the older rows
 * wait for expiry to delete them.
 *
 * The database is the authority and the index is a hint that heals itself:
 * a candidate id whose row is gone (a claim rolled back by the caller) is
 * dropped from the index on sight. The counter never reuses an id in this
 * process, so such an id can never point at another key's row.
 *
 * Owners: one writer per database, so a row that is INPROGRESS under
 * another owner token was left by a dead instance. idem_claim() takes such
 * a row over at once, and idem_reclaim_dead() deletes those that the index
 * rebuild found.
 * A row without an in-progress expiry therefore never blocks its key past
 * the life of its owner.
 *
 * Completing a claim that this table made reads no row. A small memo of
 * our recent claims gives the row id and the columns that the cache copy
 * needs. The UPDATE itself checks that the row still has the key and is
 * our INPROGRESS claim. When it changes no row (rolled back, taken over or
 * completed elsewhere), the full lookup decides as before.
 *
 * A deferred claim (idem_claim_deferred) that completes is queued in
 * memory, COMPLETED, and written with other queued rows by one multi-row
 * INSERT, so the statement overhead is paid once per up to 64 rows.
 * When all queued rows have the same outcome and shard, as in a batch of
 * one shard, the INSERT binds those two texts once.
 *
 * Transactions: on a connection passed to idem_open(), the library never
 * begins or commits. The caller must call idem_after_rollback() after a
 * rollback, because the LRU cache may hold a COMPLETED row that the rollback
 * undid.
 */
#include "store/idem_internal.h"
#include "store/sqlite_errname.h"

#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCHEMA_VERSION  1
#define ROW_INPROGRESS  1
#define ROW_COMPLETED   2
#define BUSY_TIMEOUT_MS 5000
/* Bounds the cache's bucket array; far above any useful LRU size. */
#define MAX_CACHE_SIZE ((size_t)1 << 24)

enum stmt_id {
    STMT_GET,
    STMT_GET_KEY,
    STMT_INSERT,
    STMT_TAKE_OVER,
    STMT_COMPLETE,
    STMT_COMPLETE_OWN,
    STMT_DELETE,
    STMT_RECLAIM,
    STMT_EXPIRE_SCAN,
    STMT_EXPIRE_DELETE,
    STMT_COUNT
};

static const char *const stmt_sql[STMT_COUNT] = {
    [STMT_GET] = "SELECT key, status, expiry_s, in_progress_expiry_ms, owner,"
                 " hash, outcome, shard_id, seq, subseq"
                 " FROM idem_rows WHERE id = ?1",
    [STMT_GET_KEY] = "SELECT key FROM idem_rows WHERE id = ?1",
    [STMT_INSERT] = "INSERT INTO idem_rows (id, key, status, expiry_s,"
                    " in_progress_expiry_ms, owner, hash, shard_id, seq,"
                    " subseq) VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    [STMT_TAKE_OVER] = "UPDATE idem_rows SET owner = ?2,"
                       " in_progress_expiry_ms = ?3 WHERE id = ?1",
    [STMT_COMPLETE] = "UPDATE idem_rows SET status = 2, outcome = ?2,"
                      " expiry_s = ?3, in_progress_expiry_ms = NULL"
                      " WHERE id = ?1",
    [STMT_COMPLETE_OWN] = "UPDATE idem_rows SET status = 2, outcome = ?2,"
                          " expiry_s = ?3, in_progress_expiry_ms = NULL"
                          " WHERE id = ?1 AND status = 1 AND owner = ?4"
                          " AND key = ?5",
    [STMT_DELETE] = "DELETE FROM idem_rows WHERE id = ?1",
    [STMT_RECLAIM] = "DELETE FROM idem_rows"
                     " WHERE id = ?1 AND status = 1 AND owner <> ?2",
    [STMT_EXPIRE_SCAN] = "SELECT id, key, expiry_s FROM idem_rows"
                         " WHERE id >= ?1 ORDER BY id LIMIT ?2",
    [STMT_EXPIRE_DELETE] = "DELETE FROM idem_rows"
                           " WHERE id >= ?1 AND id <= ?2 AND expiry_s <= ?3",
};

/*
 * Memo entry of a claim that this table made (IDEM_NEW): the row id and
 * the columns that the cache copy of the completed row needs. The
 * completion checks id, key, status and owner in its UPDATE and falls back
 * to the full lookup when no row matched. A stale entry therefore costs
 * one statement and never changes a result. Entries are direct-mapped by
 * key hash, and a newer claim replaces an older one.
 */
#define MEMO_SLOTS 64

struct claim_memo {
    bool used;
    int64_t id;
    uint64_t key_hash;
    uint8_t hash[IDEM_HASH_LEN];
    bool hash_valid;
    int64_t subseq;
    char shard_id[64];
    char seq[130];
};

_Static_assert(sizeof((struct claim_memo *)0)->shard_id ==
                       sizeof((struct idem_record *)0)->shard_id &&
                   sizeof((struct claim_memo *)0)->seq ==
                       sizeof((struct idem_record *)0)->seq,
               "the memo keeps the text columns of a record");

/*
 * A row to append for a key without a live row: our INPROGRESS claim,
 * written now or deferred. Pointers are borrowed.
 */
struct new_row {
    int64_t id;
    const void *key;
    size_t key_len;
    uint64_t key_hash;
    const uint8_t *hash;
    const char *shard_id; /* NULL stores NULL */
    const char *seq;      /* NULL stores NULL */
    int64_t subseq;
    int64_t expiry_s;
    int64_t in_progress_expiry_ms; /* 0 stores NULL */
    bool replace;                  /* probe is at an older row of the key */
    struct idem_probe probe;
};

/*
 * Completed rows of deferred claims wait in a queue and are written
 * together, COMPLETED, by one multi-row INSERT. That happens when the
 * queue is full, when a read reaches the id of a queued row, and before
 * expiry, reclaim, begin, commit and idem_flush(). The index and the cache
 * know a queued row at once. Each row takes QUEUE_ROW_PARAMS parameters, and
 * all rows share the owner token as ?1, so the connection's parameter limit
 * bounds the rows per statement.
 */
#define QUEUE_MAX        64
#define QUEUE_ROW_PARAMS 8
/* With one outcome and shard for all rows: 6 parameters per row, after
 * the owner, the outcome and the shard. */
#define SHARED_ROW_PARAMS  6
#define SHARED_FIRST_PARAM 4

struct queued_row {
    int64_t id;
    int64_t expiry_s;
    int64_t subseq;
    size_t key_len;
    int outcome_len; /* -1 stores NULL */
    int shard_len;   /* -1 stores NULL */
    int seq_len;     /* -1 stores NULL */
    uint8_t hash[IDEM_HASH_LEN];
    char shard_id[64];
    char seq[130];
    char outcome[IDEM_MAX_OUTCOME + 1];
    uint8_t key[IDEM_MAX_KEY];
};

/*
 * A claim of idem_claim_deferred() whose row is not written yet. Its id is
 * taken and counted in rows, but the index and the memo learn of it only
 * when the row is written or queued. Every call on the table but the
 * completion or release of this key writes it first, so no other call can
 * miss it. Its columns live in the free queue slot after the queued rows
 * (queue[queue_len]), so that completing it queues the row without a copy.
 * Nothing writes or adds to the queue while a claim is pending.
 */
struct pending_claim {
    bool active;
    struct new_row row; /* points into queue[queue_len] */
};

/* An INPROGRESS row of a dead owner, found by the index rebuild. */
struct dead_row {
    int64_t id;
    uint64_t key_hash;
};

struct idem_table {
    sqlite3 *db; /* owned when own_db, else borrowed */
    bool own_db;
    struct idem_options opts;
    uint8_t owner[IDEM_OWNER_LEN];
    sqlite3_stmt *stmts[STMT_COUNT];
    struct idem_index index;
    struct idem_cache cache;
    uint64_t rows;
    uint64_t cache_hits;
    uint64_t cache_misses;
    int64_t next_id;     /* id of the next appended row */
    int64_t expire_from; /* lowest id that expiry has still to examine */
    struct claim_memo memo[MEMO_SLOTS];
    struct pending_claim pending;
    struct queued_row *queue; /* owned, queue_cap rows */
    size_t queue_len;
    size_t queue_cap;
    bool queue_shares_texts; /* all queued rows have the outcome and shard
                                of queue[0] */
    /* The INSERT of n queued rows as [n][shared]: with 8 parameters per
     * row, or with one outcome and shard for all rows (shared). Each is
     * prepared when first needed. */
    sqlite3_stmt *insert_rows[QUEUE_MAX + 1][2];
    struct dead_row *dead; /* owned */
    size_t dead_count;
    size_t dead_cap;
    char err[512];
};

/* The newest row of a key, as read from the database. */
struct found_row {
    int64_t id;
    int stored_status; /* ROW_INPROGRESS or ROW_COMPLETED */
    bool owner_ours;   /* owner is exactly our token */
    bool hash_valid;   /* hash has IDEM_HASH_LEN bytes */
    struct idem_record rec;
};

/* ---- errors ----------------------------------------------------------- */

static const char *errname(int rc)
{
    return store_sqlite_errname(rc);
}

__attribute__((format(printf, 2, 3))) static int fail(struct idem_table *t,
                                                      const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(t->err, sizeof t->err, fmt, ap);
    va_end(ap);
    return -1;
}

/* Record "what: CODE_NAME: SQLite message" and return -1. Call before the
 * statement is reset, which may change the connection's message. */
static int fail_sqlite(struct idem_table *t, int rc, const char *what)
{
    return fail(t, "%s: %s: %s", what, errname(rc), sqlite3_errmsg(t->db));
}

/* ---- statements ------------------------------------------------------- */

/*
 * Bind parameters one by one and keep the first error, so a call site
 * checks once. Statements are reset but their bindings kept: each call
 * site binds every parameter, except our owner token, which
 * prepare_statements() binds once.
 */
struct binder {
    sqlite3_stmt *stmt;
    int rc;
};

static struct binder bind_start(struct idem_table *t, enum stmt_id id)
{
    struct binder b = {t->stmts[id], SQLITE_OK};

    return b;
}

static void bind_int64(struct binder *b, int col, int64_t v)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_int64(b->stmt, col, v);
}

/* Bind v, or NULL when v is 0. */
static void bind_int64_or_null(struct binder *b, int col, int64_t v)
{
    if (b->rc == SQLITE_OK && v == 0)
        b->rc = sqlite3_bind_null(b->stmt, col);
    else
        bind_int64(b, col, v);
}

static void bind_blob(struct binder *b, int col, const void *p, size_t n)
{
    if (b->rc == SQLITE_OK)
        b->rc = sqlite3_bind_blob64(b->stmt, col, p, n, SQLITE_STATIC);
}

/* Bind a NUL-terminated string, or NULL when s is NULL. */
static void bind_text(struct binder *b, int col, const char *s)
{
    if (b->rc != SQLITE_OK)
        return;
    if (s == NULL)
        b->rc = sqlite3_bind_null(b->stmt, col);
    else
        b->rc = sqlite3_bind_text(b->stmt, col, s, -1, SQLITE_STATIC);
}

/* Run a statement that returns no row, then reset it. Returns 0 or -1. */
static int exec_bound(struct idem_table *t, struct binder *b, const char *what)
{
    int rc = b->rc == SQLITE_OK ? sqlite3_step(b->stmt) : b->rc;
    int out = rc == SQLITE_DONE ? 0 : fail_sqlite(t, rc, what);

    sqlite3_reset(b->stmt);
    return out;
}

/*
 * Step a query once. Returns 1 on a row (the caller reads it and calls
 * query_done()), 0 when there is none, or -1; both of the latter reset the
 * statement.
 */
static int query_step(struct idem_table *t, struct binder *b, const char *what)
{
    int rc = b->rc == SQLITE_OK ? sqlite3_step(b->stmt) : b->rc;

    if (rc == SQLITE_ROW)
        return 1;
    int out = rc == SQLITE_DONE ? 0 : fail_sqlite(t, rc, what);
    sqlite3_reset(b->stmt);
    return out;
}

static void query_done(sqlite3_stmt *stmt)
{
    sqlite3_reset(stmt);
}

static int exec_sql(struct idem_table *t, const char *sql, const char *what)
{
    int rc = sqlite3_exec(t->db, sql, NULL, NULL, NULL);

    return rc == SQLITE_OK ? 0 : fail_sqlite(t, rc, what);
}

/* ---- queue of completed rows ------------------------------------------ */

/* Bind s of len bytes, or NULL when len is negative. */
static void bind_text_len(struct binder *b, int col, const char *s, int len)
{
    if (b->rc != SQLITE_OK)
        return;
    if (len < 0)
        b->rc = sqlite3_bind_null(b->stmt, col);
    else
        b->rc = sqlite3_bind_text(b->stmt, col, s, len, SQLITE_STATIC);
}

/* The rows that one statement may insert under the connection's limit on
 * the number of parameters, at least 1 and at most QUEUE_MAX. */
static size_t queue_capacity(sqlite3 *db)
{
    int limit = sqlite3_limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
    size_t rows = limit > 1 ? (size_t)(limit - 1) / QUEUE_ROW_PARAMS : 0;

    if (rows < 1)
        return 1;
    if (rows > QUEUE_MAX)
        return QUEUE_MAX;
    return rows;
}

/* The first parameter of queued row i in the INSERT of queued rows. */
static int row_param(size_t i, bool shared)
{
    return shared ? SHARED_FIRST_PARAM + (int)i * SHARED_ROW_PARAMS
                  : 2 + (int)i * QUEUE_ROW_PARAMS;
}

/*
 * Prepare the INSERT of n queued rows with the owner token as ?1. Each row
 * has 8 parameters from row_param(): id, key, expiry_s, hash, outcome,
 * shard_id, seq, subseq. When shared, the outcome is ?2 and the shard ?3
 * for all rows, and each row has the other 6. Returns 0 or -1.
 */
static int prepare_insert_rows(struct idem_table *t, size_t n, bool shared)
{
    static const char head[] =
        "INSERT INTO idem_rows (id, key, status, expiry_s, owner, hash,"
        " outcome, shard_id, seq, subseq) VALUES ";
    /* Nine numbers of up to 4 digits and the text around them. */
    size_t cap = sizeof head + n * 80;
    char *sql = malloc(cap);

    if (sql == NULL)
        return fail(t, "out of memory preparing an idempotency insert");
    size_t len = sizeof head - 1;
    memcpy(sql, head, len);
    for (size_t i = 0; i < n; i++) {
        int p = row_param(i, shared);
        const char *sep = i > 0 ? ", " : "";
        if (shared) {
            len += (size_t)snprintf(sql + len, cap - len,
                                    "%s(?%d, ?%d, 2, ?%d, ?1, ?%d, ?2, ?3,"
                                    " ?%d, ?%d)",
                                    sep, p, p + 1, p + 2, p + 3, p + 4, p + 5);
        } else {
            len += (size_t)snprintf(sql + len, cap - len,
                                    "%s(?%d, ?%d, 2, ?%d, ?1, ?%d, ?%d, ?%d,"
                                    " ?%d, ?%d)",
                                    sep, p, p + 1, p + 2, p + 3, p + 4, p + 5,
                                    p + 6, p + 7);
        }
    }
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v3(t->db, sql, (int)len, SQLITE_PREPARE_PERSISTENT,
                                &stmt, NULL);
    free(sql);
    if (rc == SQLITE_OK)
        rc =
            sqlite3_bind_blob(stmt, 1, t->owner, IDEM_OWNER_LEN, SQLITE_STATIC);
    if (rc != SQLITE_OK) {
        fail(t, "prepare idempotency insert of %zu rows: %s: %s", n,
             errname(rc), sqlite3_errmsg(t->db));
        sqlite3_finalize(stmt);
        return -1;
    }
    t->insert_rows[n][shared] = stmt;
    return 0;
}

/*
 * Write the queued rows with one INSERT and empty the queue. Returns 0 or
 * -1; after a failure the rows are gone, as if their statements had
 * failed, and the caller rolls back.
 */
static int write_queue(struct idem_table *t)
{
    size_t n = t->queue_len;

    if (n == 0)
        return 0;
    t->queue_len = 0;
    bool shared = t->queue_shares_texts;
    if (t->insert_rows[n][shared] == NULL &&
        prepare_insert_rows(t, n, shared) != 0)
        return -1;

    struct binder b = {t->insert_rows[n][shared], SQLITE_OK};
    const struct queued_row *first = &t->queue[0];
    if (shared) {
        bind_text_len(&b, 2, first->outcome, first->outcome_len);
        bind_text_len(&b, 3, first->shard_id, first->shard_len);
    }
    for (size_t i = 0; i < n; i++) {
        const struct queued_row *q = &t->queue[i];
        int p = row_param(i, shared);
        bind_int64(&b, p, q->id);
        bind_blob(&b, p + 1, q->key, q->key_len);
        bind_int64(&b, p + 2, q->expiry_s);
        bind_blob(&b, p + 3, q->hash, IDEM_HASH_LEN);
        int next = p + 4;
        if (!shared) {
            bind_text_len(&b, next++, q->outcome, q->outcome_len);
            bind_text_len(&b, next++, q->shard_id, q->shard_len);
        }
        bind_text_len(&b, next, q->seq, q->seq_len);
        bind_int64(&b, next + 1, q->subseq);
    }
    return exec_bound(t, &b, "insert idempotency rows");
}

/* ---- reading rows ----------------------------------------------------- */

/* Copy a text column into dst (cap bytes with the NUL), cutting it short
 * when the stored text is longer than any value this library writes. */
static void copy_text(char *dst, size_t cap, sqlite3_stmt *stmt, int col)
{
    const unsigned char *s = sqlite3_column_text(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);

    if (s == NULL)
        n = 0;
    if (n >= cap)
        n = cap - 1;
    if (n > 0)
        memcpy(dst, s, n);
    dst[n] = '\0';
}

static bool column_equals(sqlite3_stmt *stmt, int col, const void *bytes,
                          size_t len)
{
    const void *p = sqlite3_column_blob(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);

    return n == len && (len == 0 || (p != NULL && memcmp(p, bytes, len) == 0));
}

/* Copy a blob column into a fixed array, zero-padded or cut to size. */
static void copy_blob(uint8_t *dst, size_t cap, sqlite3_stmt *stmt, int col)
{
    const void *p = sqlite3_column_blob(stmt, col);
    size_t n = (size_t)sqlite3_column_bytes(stmt, col);

    memset(dst, 0, cap);
    if (p != NULL)
        memcpy(dst, p, n < cap ? n : cap);
}

/*
 * Fill *row from the current STMT_GET row. The database is external input:
 * an unknown status is an error, while an owner or hash of the wrong length
 * only fails to match ours.
 */
static int read_found_row(struct idem_table *t, sqlite3_stmt *stmt, int64_t id,
                          struct found_row *row)
{
    int64_t status = sqlite3_column_int64(stmt, 1);

    if (status != ROW_INPROGRESS && status != ROW_COMPLETED) {
        return fail(t,
                    "idempotency row %" PRId64 " has invalid status %" PRId64
                    ": expected 1 (INPROGRESS) or 2 (COMPLETED)",
                    id, status);
    }

    memset(row, 0, sizeof *row);
    row->id = id;
    row->stored_status = (int)status;
    row->rec.status = status == ROW_INPROGRESS ? IDEM_STATUS_INPROGRESS
                                               : IDEM_STATUS_COMPLETED;
    row->rec.expiry_s = sqlite3_column_int64(stmt, 2);
    row->rec.in_progress_expiry_ms = sqlite3_column_int64(stmt, 3);
    row->owner_ours = column_equals(stmt, 4, t->owner, IDEM_OWNER_LEN);
    copy_blob(row->rec.owner, IDEM_OWNER_LEN, stmt, 4);
    row->hash_valid = sqlite3_column_bytes(stmt, 5) == IDEM_HASH_LEN;
    copy_blob(row->rec.hash, IDEM_HASH_LEN, stmt, 5);
    copy_text(row->rec.outcome, sizeof row->rec.outcome, stmt, 6);
    copy_text(row->rec.shard_id, sizeof row->rec.shard_id, stmt, 7);
    copy_text(row->rec.seq, sizeof row->rec.seq, stmt, 8);
    row->rec.subseq = sqlite3_column_int64(stmt, 9);
    return 0;
}

/*
 * Read row id when its key is key. Returns 1 with *row filled, 0 when the
 * row has another key, 2 when no row has this id, or -1.
 */
static int fetch_row(struct idem_table *t, int64_t id, const void *key,
                     size_t len, struct found_row *row)
{
    /* Queued ids are the newest: write them before reading one. */
    if (t->queue_len > 0 && id >= t->queue[0].id && write_queue(t) != 0)
        return -1;

    struct binder b = bind_start(t, STMT_GET);
    bind_int64(&b, 1, id);

    int rc = query_step(t, &b, "read idempotency row");
    if (rc <= 0)
        return rc < 0 ? -1 : 2;
    rc = column_equals(b.stmt, 0, key, len) ? 1 : 0;
    if (rc == 1 && read_found_row(t, b.stmt, id, row) != 0)
        rc = -1;
    query_done(b.stmt);
    return rc;
}

/*
 * Find the newest row of key through the index. Returns 1 with *row
 * filled and *probe at its slot, 0 when the key has no row, or -1.
 * Candidates whose row is gone are removed from the index on the way.
 */
static int find_row(struct idem_table *t, const void *key, size_t len,
                    uint64_t hash, struct idem_probe *probe,
                    struct found_row *row)
{
    int64_t id;

    idem_index_probe_start(&t->index, hash, probe);
    while (idem_index_probe_next(&t->index, probe, &id)) {
        int rc = fetch_row(t, id, key, len, row);
        if (rc == 2)
            idem_index_remove(&t->index, probe);
        else if (rc != 0)
            return rc;
    }
    return 0;
}

/* ---- checks ----------------------------------------------------------- */

static int check_key(struct idem_table *t, const void *key, size_t len)
{
    if (key == NULL || len == 0)
        return fail(t, "idempotency key is missing");
    if (len > IDEM_MAX_KEY) {
        return fail(t, "idempotency key of %zu bytes is too long: max %d", len,
                    IDEM_MAX_KEY);
    }
    return 0;
}

static int check_now(struct idem_table *t, int64_t now_ms)
{
    if (now_ms < 0)
        return fail(t, "invalid now_ms %" PRId64 ": must be >= 0", now_ms);
    return 0;
}

/* Compute a + b, failing instead of overflowing. */
static int add_time(struct idem_table *t, int64_t a, int64_t b, int64_t *sum,
                    const char *what)
{
    if (__builtin_add_overflow(a, b, sum))
        return fail(t, "%s overflows: %" PRId64 " + %" PRId64, what, a, b);
    return 0;
}

static int check_text(struct idem_table *t, const char *s, size_t cap,
                      const char *what)
{
    if (s != NULL && strlen(s) >= cap)
        return fail(t, "%s \"%.40s...\" is too long: max %zu bytes", what, s,
                    cap - 1);
    return 0;
}

static int check_claim(struct idem_table *t, const struct idem_claim *c)
{
    struct idem_record *r = NULL;

    if (c->key != NULL && c->key_len > 0 &&
        check_key(t, c->key, c->key_len) != 0)
        return -1;
    if (c->hash == NULL)
        return fail(t, "idempotency payload hash is missing");
    if (check_now(t, c->now_ms) != 0)
        return -1;
    if (check_text(t, c->shard_id, sizeof r->shard_id, "shard id") != 0)
        return -1;
    return check_text(t, c->seq, sizeof r->seq, "sequence number");
}

/* ---- memo of our claims ---------------------------------------------- */

static struct claim_memo *memo_slot(struct idem_table *t, uint64_t key_hash)
{
    return &t->memo[key_hash % MEMO_SLOTS];
}

/* Copy s, cut to cap - 1 bytes, or an empty string for NULL. */
static void copy_str(char *dst, size_t cap, const char *s)
{
    size_t n = s != NULL ? strlen(s) : 0;

    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s != NULL ? s : "", n);
    dst[n] = '\0';
}

/* Remember that row id is our INPROGRESS claim of the key with key_hash,
 * with the hash, shard, sequence and subsequence that the row holds. */
static void memo_put(struct idem_table *t, uint64_t key_hash, int64_t id,
                     const uint8_t *hash, bool hash_valid, const char *shard_id,
                     const char *seq, int64_t subseq)
{
    struct claim_memo *m = memo_slot(t, key_hash);

    m->used = true;
    m->id = id;
    m->key_hash = key_hash;
    memcpy(m->hash, hash, IDEM_HASH_LEN);
    m->hash_valid = hash_valid;
    m->subseq = subseq;
    copy_str(m->shard_id, sizeof m->shard_id, shard_id);
    copy_str(m->seq, sizeof m->seq, seq);
}

/* Forget the entry of row id, if the memo has one. */
static void memo_drop(struct idem_table *t, uint64_t key_hash, int64_t id)
{
    struct claim_memo *m = memo_slot(t, key_hash);

    if (m->used && m->id == id)
        m->used = false;
}

static void memo_clear(struct idem_table *t)
{
    for (size_t i = 0; i < MEMO_SLOTS; i++)
        t->memo[i].used = false;
}

/* ---- claim ------------------------------------------------------------ */

const char *idem_result_name(enum idem_result r)
{
    switch (r) {
    case IDEM_NEW:
        return "new";
    case IDEM_DUPLICATE:
        return "duplicate";
    case IDEM_IN_PROGRESS:
        return "in_progress";
    case IDEM_CONFLICT:
        return "conflict";
    case IDEM_KEY_MISSING:
        return "key_missing";
    }
    return "unknown";
}

static void set_existing(struct idem_record *existing,
                         const struct idem_record *rec)
{
    if (existing == NULL)
        return;
    if (rec != NULL)
        *existing = *rec;
    else
        memset(existing, 0, sizeof *existing);
}

/* Remember a live COMPLETED row, unless its hash could never match. */
static void cache_row(struct idem_table *t, uint64_t key_hash, const void *key,
                      size_t len, const struct found_row *row)
{
    if (row->stored_status == ROW_COMPLETED && row->hash_valid)
        idem_cache_put(&t->cache, key_hash, key, len, &row->rec);
}

/* Decide a claim from the cache. Returns true when it did. */
static bool claim_from_cache(struct idem_table *t, const struct idem_claim *c,
                             uint64_t key_hash, enum idem_result *result,
                             struct idem_record *existing)
{
    if (t->cache.capacity == 0)
        return false;

    const struct idem_record *rec = idem_cache_get(
        &t->cache, key_hash, c->key, c->key_len, c->now_ms / 1000);
    if (rec == NULL) {
        t->cache_misses++;
        return false;
    }
    t->cache_hits++;
    bool same = memcmp(rec->hash, c->hash, IDEM_HASH_LEN) == 0;
    *result = same ? IDEM_DUPLICATE : IDEM_CONFLICT;
    set_existing(existing, rec);
    return true;
}

/* The in-progress expiry of a claim made at now_ms: 0 (stored as NULL)
 * when claims never time out. */
static int in_progress_expiry(struct idem_table *t, int64_t now_ms,
                              int64_t *out)
{
    *out = 0;
    if (t->opts.in_progress_timeout_ms == 0)
        return 0;
    return add_time(t, now_ms, t->opts.in_progress_timeout_ms, out,
                    "in-progress expiry");
}

/* Insert row as our INPROGRESS claim. Returns 0 or -1. */
static int insert_row(struct idem_table *t, const struct new_row *row)
{
    struct binder b = bind_start(t, STMT_INSERT);

    bind_int64(&b, 1, row->id);
    bind_blob(&b, 2, row->key, row->key_len);
    bind_int64(&b, 3, row->expiry_s);
    bind_int64_or_null(&b, 4, row->in_progress_expiry_ms);
    bind_blob(&b, 6, row->hash, IDEM_HASH_LEN);
    bind_text(&b, 7, row->shard_id);
    bind_text(&b, 8, row->seq);
    bind_int64(&b, 9, row->subseq);
    return exec_bound(t, &b, "insert idempotency row");
}

/*
 * Point the index at the inserted row, through the probe when an expired
 * row of the key has the slot, else with a new entry, and remember an
 * INPROGRESS row in the memo. Returns 0 or -1.
 */
static int index_new_row(struct idem_table *t, const struct new_row *row,
                         bool in_progress)
{
    int rc = row->replace
                 ? idem_index_replace(&t->index, &row->probe, row->id)
                 : idem_index_insert(&t->index, row->key_hash, row->id);
    if (rc != 0) {
        return fail(t, "update idempotency index for row %" PRId64 ": %s",
                    row->id, strerror(-rc));
    }
    if (in_progress) {
        memo_put(t, row->key_hash, row->id, row->hash, true, row->shard_id,
                 row->seq, row->subseq);
    }
    return 0;
}

/* Copy the text s, or NULL, into dst; returns its length or -1 for NULL.
 * check_claim() bounded the text by the size of dst. */
static int copy_text_len(char *dst, size_t cap, const char *s)
{
    if (s == NULL)
        return -1;
    size_t n = strlen(s);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return (int)n;
}

/* Keep a copy of row as the pending claim, to be written or queued later,
 * in the free queue slot. */
static void defer_row(struct idem_table *t, const struct new_row *row)
{
    struct pending_claim *p = &t->pending;
    struct queued_row *q = &t->queue[t->queue_len];

    p->active = true;
    p->row = *row;
    memcpy(q->key, row->key, row->key_len);
    p->row.key = q->key;
    memcpy(q->hash, row->hash, IDEM_HASH_LEN);
    p->row.hash = q->hash;
    q->shard_len =
        copy_text_len(q->shard_id, sizeof q->shard_id, row->shard_id);
    p->row.shard_id = q->shard_len >= 0 ? q->shard_id : NULL;
    q->seq_len = copy_text_len(q->seq, sizeof q->seq, row->seq);
    p->row.seq = q->seq_len >= 0 ? q->seq : NULL;
}

/* Write the pending claim, if any, as an INPROGRESS row. Returns 0 or -1;
 * after a failure the claim is gone, as if its statement had failed. */
static int flush_pending(struct idem_table *t)
{
    if (!t->pending.active)
        return 0;
    t->pending.active = false;
    if (insert_row(t, &t->pending.row) != 0)
        return -1;
    return index_new_row(t, &t->pending.row, true);
}

/* Write the pending claim and the queued rows. Returns 0 or -1. */
static int flush_all(struct idem_table *t)
{
    if (flush_pending(t) != 0)
        return -1;
    return write_queue(t);
}

/* Whether the pending claim is of key. */
static bool pending_is(const struct idem_table *t, const void *key, size_t len)
{
    const struct new_row *row = &t->pending.row;

    return t->pending.active && row->key_len == len &&
           memcmp(row->key, key, len) == 0;
}

/* Hash key, or reuse the hash of the pending claim when it is of key. */
static uint64_t key_hash_of(const struct idem_table *t, const void *key,
                            size_t len)
{
    return pending_is(t, key, len) ? t->pending.row.key_hash
                                   : idem_index_hash(&t->index, key, len);
}

/*
 * Append an INPROGRESS row of ours for a key with no live row, now or,
 * when defer is set, as the pending claim. probe is at the slot of an
 * expired row of the key, or NULL. Returns 0 or -1.
 */
static int append_claim(struct idem_table *t, const struct idem_claim *c,
                        uint64_t key_hash, const struct idem_probe *probe,
                        bool defer)
{
    struct new_row row = {
        .id = t->next_id,
        .key = c->key,
        .key_len = c->key_len,
        .key_hash = key_hash,
        .hash = c->hash,
        .shard_id = c->shard_id,
        .seq = c->seq,
        .subseq = c->subseq,
        .replace = probe != NULL,
    };

    if (add_time(t, c->now_ms / 1000, t->opts.expiry_s, &row.expiry_s,
                 "expiry") != 0 ||
        in_progress_expiry(t, c->now_ms, &row.in_progress_expiry_ms) != 0)
        return -1;
    if (t->next_id == INT64_MAX)
        return fail(t, "idempotency row ids are exhausted");
    if (probe != NULL)
        row.probe = *probe;

    /* The id is taken only by a row that was inserted or deferred. */
    if (defer)
        defer_row(t, &row);
    else if (insert_row(t, &row) != 0)
        return -1;
    t->next_id++;
    t->rows++;
    idem_cache_remove(&t->cache, key_hash, c->key, c->key_len);
    return defer ? 0 : index_new_row(t, &row, true);
}

/*
 * Whether an INPROGRESS row may be taken over: its owner is another,
 * necessarily dead, instance (one writer per database), or its in-progress
 * expiry passed. A row of ours without an in-progress expiry stays ours.
 */
static bool may_take_over(const struct found_row *row, int64_t now_ms)
{
    int64_t ipe_ms = row->rec.in_progress_expiry_ms;

    return !row->owner_ours || (ipe_ms != 0 && ipe_ms <= now_ms);
}

/* Make an INPROGRESS row ours in place. The hash, shard and sequence of
 * the first claim stay. Returns 0 or -1. */
static int take_over(struct idem_table *t, const struct idem_claim *c,
                     uint64_t key_hash, const struct found_row *row)
{
    int64_t ipe_ms;

    if (in_progress_expiry(t, c->now_ms, &ipe_ms) != 0)
        return -1;

    struct binder b = bind_start(t, STMT_TAKE_OVER);
    bind_int64(&b, 1, row->id);
    bind_int64_or_null(&b, 3, ipe_ms);
    if (exec_bound(t, &b, "take over idempotency row") != 0)
        return -1;
    idem_cache_remove(&t->cache, key_hash, c->key, c->key_len);
    memo_put(t, key_hash, row->id, row->rec.hash, row->hash_valid,
             row->rec.shard_id, row->rec.seq, row->rec.subseq);
    return 0;
}

/* Decide a claim on the live newest row of its key. Returns 0 or -1. */
static int claim_live(struct idem_table *t, const struct idem_claim *c,
                      uint64_t key_hash, const struct found_row *row,
                      enum idem_result *result, struct idem_record *existing)
{
    bool same =
        row->hash_valid && memcmp(row->rec.hash, c->hash, IDEM_HASH_LEN) == 0;

    /* Validation comes before status, so a different payload is reported
     * even while the first one is still in progress. */
    if (!same) {
        *result = IDEM_CONFLICT;
    } else if (row->stored_status == ROW_COMPLETED) {
        *result = IDEM_DUPLICATE;
        cache_row(t, key_hash, c->key, c->key_len, row);
    } else if (may_take_over(row, c->now_ms)) {
        if (take_over(t, c, key_hash, row) != 0)
            return -1;
        *result = IDEM_NEW;
        set_existing(existing, NULL);
        return 0;
    } else {
        *result = IDEM_IN_PROGRESS;
    }
    set_existing(existing, &row->rec);
    return 0;
}

/* Claim c; an IDEM_NEW claim of a key without a live row is only
 * deferred when defer is set. */
static int claim_one(struct idem_table *t, const struct idem_claim *c,
                     bool defer, enum idem_result *result,
                     struct idem_record *existing)
{
    if (flush_pending(t) != 0 || check_claim(t, c) != 0)
        return -1;
    if (c->key == NULL || c->key_len == 0) {
        *result = IDEM_KEY_MISSING;
        set_existing(existing, NULL);
        return 0;
    }

    uint64_t key_hash = idem_index_hash(&t->index, c->key, c->key_len);
    if (claim_from_cache(t, c, key_hash, result, existing))
        return 0;

    struct idem_probe probe;
    struct found_row row;
    int found = find_row(t, c->key, c->key_len, key_hash, &probe, &row);
    if (found < 0)
        return -1;
    if (found == 1 && row.rec.expiry_s > c->now_ms / 1000)
        return claim_live(t, c, key_hash, &row, result, existing);

    if (append_claim(t, c, key_hash, found == 1 ? &probe : NULL, defer) != 0)
        return -1;
    *result = IDEM_NEW;
    set_existing(existing, NULL);
    return 0;
}

int idem_claim(struct idem_table *t, const struct idem_claim *c,
               enum idem_result *result, struct idem_record *existing)
{
    return claim_one(t, c, false, result, existing);
}

int idem_claim_deferred(struct idem_table *t, const struct idem_claim *c,
                        enum idem_result *result, struct idem_record *existing)
{
    return claim_one(t, c, true, result, existing);
}

int idem_flush(struct idem_table *t)
{
    return flush_all(t);
}

int idem_claim_batch(struct idem_table *t, const struct idem_claim *claims,
                     size_t count, enum idem_result *results)
{
    for (size_t i = 0; i < count; i++) {
        if (idem_claim(t, &claims[i], &results[i], NULL) != 0)
            return -1;
    }
    return 0;
}

/* ---- complete, release, lookup ---------------------------------------- */

/*
 * Find our INPROGRESS claim of key. Returns 1 with *row and *probe set,
 * -EPERM when the newest row of key is missing, COMPLETED or another
 * owner's, or -1.
 */
static int find_own_claim(struct idem_table *t, const void *key, size_t len,
                          uint64_t key_hash, struct idem_probe *probe,
                          struct found_row *row)
{
    int found = find_row(t, key, len, key_hash, probe, row);

    if (found < 0)
        return -1;
    if (found == 0) {
        fail(t, "idempotency key has no claim to finish");
        return -EPERM;
    }
    if (row->stored_status != ROW_INPROGRESS || !row->owner_ours) {
        fail(t,
             "idempotency row %" PRId64 " is not an INPROGRESS claim of"
             " this owner",
             row->id);
        return -EPERM;
    }
    return 1;
}

/* Describe our INPROGRESS row id with the given columns, for the cache. */
static void fill_own_row(struct idem_table *t, struct found_row *row,
                         int64_t id, const uint8_t *hash, bool hash_valid,
                         const char *shard_id, const char *seq, int64_t subseq)
{
    memset(row, 0, sizeof *row);
    row->id = id;
    row->stored_status = ROW_INPROGRESS;
    row->owner_ours = true;
    row->hash_valid = hash_valid;
    row->rec.status = IDEM_STATUS_INPROGRESS;
    memcpy(row->rec.owner, t->owner, IDEM_OWNER_LEN);
    memcpy(row->rec.hash, hash, IDEM_HASH_LEN);
    copy_str(row->rec.shard_id, sizeof row->rec.shard_id, shard_id);
    copy_str(row->rec.seq, sizeof row->rec.seq, seq);
    row->rec.subseq = subseq;
}

/*
 * Complete the claim that the memo holds for key, checking in the UPDATE
 * that row id still has this key and is our INPROGRESS claim. Returns 1
 * with *row describing the row as it was, 0 when the memo has no entry or
 * no row matched (the caller then looks the row up), or -1.
 */
static int complete_from_memo(struct idem_table *t, const void *key, size_t len,
                              uint64_t key_hash, const char *outcome,
                              int64_t expiry_s, struct found_row *row)
{
    struct claim_memo *m = memo_slot(t, key_hash);

    if (!m->used || m->key_hash != key_hash)
        return 0;
    m->used = false;

    struct binder b = bind_start(t, STMT_COMPLETE_OWN);
    bind_int64(&b, 1, m->id);
    bind_text(&b, 2, outcome);
    bind_int64(&b, 3, expiry_s);
    bind_blob(&b, 5, key, len);
    if (exec_bound(t, &b, "complete idempotency row") != 0)
        return -1;
    if (sqlite3_changes64(t->db) != 1)
        return 0;

    fill_own_row(t, row, m->id, m->hash, m->hash_valid, m->shard_id, m->seq,
                 m->subseq);
    return 1;
}

static bool same_text(const char *a, int a_len, const char *b, int b_len)
{
    return a_len == b_len && (a_len <= 0 || memcmp(a, b, (size_t)a_len) == 0);
}

/* Whether queued rows a and b have the same outcome and shard. */
static bool same_texts(const struct queued_row *a, const struct queued_row *b)
{
    return same_text(a->outcome, a->outcome_len, b->outcome, b->outcome_len) &&
           same_text(a->shard_id, a->shard_len, b->shard_id, b->shard_len);
}

/*
 * Complete the pending claim, which is of key, by queueing its row
 * COMPLETED, and write the queue when it is full. Returns 0 with *row
 * describing the claim, or -1; either way the claim is no longer pending.
 */
static int complete_pending(struct idem_table *t, const char *outcome,
                            int64_t expiry_s, struct found_row *row)
{
    const struct new_row *p = &t->pending.row;
    struct queued_row *q = &t->queue[t->queue_len];

    t->pending.active = false;
    if (index_new_row(t, p, false) != 0)
        return -1;
    q->id = p->id;
    q->expiry_s = expiry_s;
    q->subseq = p->subseq;
    q->key_len = p->key_len;
    /* check_text() bounded the outcome by the size of the field. */
    q->outcome_len = copy_text_len(q->outcome, sizeof q->outcome, outcome);
    t->queue_shares_texts = t->queue_len == 0 || (t->queue_shares_texts &&
                                                  same_texts(q, &t->queue[0]));
    if (t->cache.capacity > 0)
        fill_own_row(t, row, p->id, p->hash, true, p->shard_id, p->seq,
                     p->subseq);
    /* Outside a transaction, each statement commits on its own, so the
     * row is written at once, as an insert of one row. */
    if (++t->queue_len == t->queue_cap || sqlite3_get_autocommit(t->db))
        return write_queue(t);
    return 0;
}

/* Complete key once the arguments passed their checks. */
static int complete_one(struct idem_table *t, const void *key, size_t key_len,
                        const char *outcome, int64_t expiry_s)
{
    uint64_t key_hash = key_hash_of(t, key, key_len);
    struct found_row row;
    int rc;

    if (pending_is(t, key, key_len))
        rc = complete_pending(t, outcome, expiry_s, &row) == 0 ? 1 : -1;
    else if (flush_pending(t) != 0)
        return -1;
    else
        rc = complete_from_memo(t, key, key_len, key_hash, outcome, expiry_s,
                                &row);
    if (rc < 0)
        return -1;
    if (rc == 0) {
        struct idem_probe probe;
        rc = find_own_claim(t, key, key_len, key_hash, &probe, &row);
        if (rc != 1)
            return rc;

        struct binder b = bind_start(t, STMT_COMPLETE);
        bind_int64(&b, 1, row.id);
        bind_text(&b, 2, outcome);
        bind_int64(&b, 3, expiry_s);
        if (exec_bound(t, &b, "complete idempotency row") != 0)
            return -1;
    }
    if (t->cache.capacity == 0)
        return 0;

    row.stored_status = ROW_COMPLETED;
    row.rec.status = IDEM_STATUS_COMPLETED;
    row.rec.expiry_s = expiry_s;
    row.rec.in_progress_expiry_ms = 0;
    /* check_text() bounded the outcome by the size of the field. */
    copy_str(row.rec.outcome, sizeof row.rec.outcome, outcome);
    cache_row(t, key_hash, key, key_len, &row);
    return 0;
}

int idem_complete(struct idem_table *t, const void *key, size_t key_len,
                  const char *outcome, int64_t now_ms)
{
    int64_t expiry_s;

    if (check_key(t, key, key_len) != 0 || check_now(t, now_ms) != 0 ||
        check_text(t, outcome, IDEM_MAX_OUTCOME + 1, "outcome") != 0 ||
        add_time(t, now_ms / 1000, t->opts.expiry_s, &expiry_s, "expiry") != 0)
        return -1;
    return complete_one(t, key, key_len, outcome, expiry_s);
}

/*
 * The same checks in the same order as idem_complete() for each key, but
 * the time and the expiry are checked and computed once for the batch.
 */
int idem_complete_batch(struct idem_table *t, const void *const *keys,
                        const size_t *key_lens, const char *const *outcomes,
                        size_t count, int64_t now_ms)
{
    int64_t expiry_s = 0;
    bool time_ok =
        now_ms >= 0 &&
        !__builtin_add_overflow(now_ms / 1000, t->opts.expiry_s, &expiry_s);

    for (size_t i = 0; i < count; i++) {
        if (check_key(t, keys[i], key_lens[i]) != 0)
            return -1;
        if (!time_ok) {
            /* Report the error exactly as idem_complete() does. */
            if (check_now(t, now_ms) == 0)
                add_time(t, now_ms / 1000, t->opts.expiry_s, &expiry_s,
                         "expiry");
            return -1;
        }
        if (check_text(t, outcomes[i], IDEM_MAX_OUTCOME + 1, "outcome") != 0)
            return -1;
        int rc = complete_one(t, keys[i], key_lens[i], outcomes[i], expiry_s);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/*
 * Only the newest row of a key is deleted. An older row of the same key
 * cannot be live, because a row is appended only after the previous one
 * expired, so the key simply becomes new.
 */
int idem_release(struct idem_table *t, const void *key, size_t key_len)
{
    if (check_key(t, key, key_len) != 0)
        return -1;

    /* A pending claim has no row and no index entry to delete. */
    if (pending_is(t, key, key_len)) {
        t->pending.active = false;
        if (t->rows > 0)
            t->rows--;
        return 0;
    }
    if (flush_pending(t) != 0)
        return -1;

    uint64_t key_hash = idem_index_hash(&t->index, key, key_len);
    struct idem_probe probe;
    struct found_row row;
    int rc = find_own_claim(t, key, key_len, key_hash, &probe, &row);
    if (rc != 1)
        return rc;

    struct binder b = bind_start(t, STMT_DELETE);
    bind_int64(&b, 1, row.id);
    if (exec_bound(t, &b, "delete idempotency row") != 0)
        return -1;

    idem_index_remove(&t->index, &probe);
    idem_cache_remove(&t->cache, key_hash, key, key_len);
    memo_drop(t, key_hash, row.id);
    if (t->rows > 0)
        t->rows--;
    return 0;
}

int idem_lookup(struct idem_table *t, const void *key, size_t key_len,
                int64_t now_ms, struct idem_record *out)
{
    if (flush_pending(t) != 0 || check_key(t, key, key_len) != 0 ||
        check_now(t, now_ms) != 0)
        return -1;

    int64_t now_s = now_ms / 1000;
    uint64_t key_hash = idem_index_hash(&t->index, key, key_len);
    if (t->cache.capacity > 0) {
        const struct idem_record *rec =
            idem_cache_get(&t->cache, key_hash, key, key_len, now_s);
        if (rec != NULL) {
            t->cache_hits++;
            *out = *rec;
            return 1;
        }
        t->cache_misses++;
    }

    struct idem_probe probe;
    struct found_row row;
    int found = find_row(t, key, key_len, key_hash, &probe, &row);
    if (found <= 0)
        return found;

    if (row.rec.expiry_s <= now_s)
        row.rec.status = IDEM_STATUS_EXPIRED;
    else
        cache_row(t, key_hash, key, key_len, &row);
    *out = row.rec;
    return 1;
}

/* ---- expiry ----------------------------------------------------------- */

/*
 * Delete the rows with ids first..last, which the scan found expired, and
 * move the expiry cursor to next_from (INT64_MIN: past last).
 */
static int delete_expired(struct idem_table *t, int64_t first, int64_t last,
                          int64_t now_s, int64_t next_from, size_t *deleted)
{
    struct binder b = bind_start(t, STMT_EXPIRE_DELETE);
    bind_int64(&b, 1, first);
    bind_int64(&b, 2, last);
    bind_int64(&b, 3, now_s);
    if (exec_bound(t, &b, "delete expired idempotency rows") != 0)
        return -1;

    size_t changes = (size_t)sqlite3_changes64(t->db);
    t->rows = t->rows > changes ? t->rows - changes : 0;
    if (next_from == INT64_MIN)
        next_from = last < INT64_MAX ? last + 1 : last;
    t->expire_from = next_from;
    if (deleted != NULL)
        *deleted = changes;
    return 0;
}

/*
 * Remove the index entry and cache entry of the expired row that the scan
 * in stmt is on. This happens before the delete: should the delete fail,
 * nothing is lost, because an expired key counts as absent anyway.
 */
static void forget_row(struct idem_table *t, sqlite3_stmt *stmt, int64_t id)
{
    const void *key = sqlite3_column_blob(stmt, 1);
    size_t len = (size_t)sqlite3_column_bytes(stmt, 1);
    uint64_t key_hash = idem_index_hash(&t->index, key, len);

    idem_index_remove_id(&t->index, key_hash, id);
    memo_drop(t, key_hash, id);
    if (key != NULL)
        idem_cache_remove(&t->cache, key_hash, key, len);
}

/*
 * Rows are appended in claim order, so the oldest rows sit at the lowest
 * ids. Each step reads forward from expire_from and stops at the first row
 * that has not expired. A later row that expired earlier (it was completed
 * sooner, or written under a shorter expiry_s) waits for the rows before
 * it. That is harmless because reads compare the expiry with now.
 */
int idem_expire_step(struct idem_table *t, int64_t now_ms, size_t max_rows,
                     size_t *deleted)
{
    if (deleted != NULL)
        *deleted = 0;
    if (flush_all(t) != 0 || check_now(t, now_ms) != 0)
        return -1;
    if (max_rows == 0)
        return 0;

    int64_t now_s = now_ms / 1000;
    int64_t first = 0, last = 0, next_from = INT64_MIN;
    size_t expired = 0;
    struct binder b = bind_start(t, STMT_EXPIRE_SCAN);
    bind_int64(&b, 1, t->expire_from);
    bind_int64(&b, 2, max_rows > INT64_MAX ? INT64_MAX : (int64_t)max_rows);

    int rc;
    while ((rc = query_step(t, &b, "scan expired idempotency rows")) == 1) {
        int64_t id = sqlite3_column_int64(b.stmt, 0);
        if (sqlite3_column_int64(b.stmt, 2) > now_s) {
            next_from = id;
            break;
        }
        forget_row(t, b.stmt, id);
        first = expired == 0 ? id : first;
        last = id;
        expired++;
    }
    if (rc == 1)
        query_done(b.stmt);
    else if (rc < 0)
        return -1;
    if (expired == 0) {
        t->expire_from = next_from != INT64_MIN ? next_from : t->expire_from;
        return 0;
    }
    return delete_expired(t, first, last, now_s, next_from, deleted);
}

/* ---- dead owners ------------------------------------------------------ */

static int note_dead_row(struct idem_table *t, int64_t id, uint64_t key_hash)
{
    if (t->dead_count == t->dead_cap) {
        size_t cap = t->dead_cap != 0 ? t->dead_cap * 2 : 16;
        struct dead_row *dead = realloc(t->dead, cap * sizeof *dead);
        if (dead == NULL)
            return fail(t, "out of memory listing dead idempotency claims");
        t->dead = dead;
        t->dead_cap = cap;
    }
    t->dead[t->dead_count].id = id;
    t->dead[t->dead_count].key_hash = key_hash;
    t->dead_count++;
    return 0;
}

/*
 * The delete checks status and owner again, because a claim since the
 * open may have taken the row over. On error the list is kept, and a later
 * call retries: rows already deleted are skipped.
 */
int idem_reclaim_dead(struct idem_table *t, size_t *reclaimed)
{
    size_t n = 0;

    if (reclaimed != NULL)
        *reclaimed = 0;
    if (flush_all(t) != 0)
        return -1;
    for (size_t i = 0; i < t->dead_count; i++) {
        struct binder b = bind_start(t, STMT_RECLAIM);
        bind_int64(&b, 1, t->dead[i].id);
        if (exec_bound(t, &b, "delete dead idempotency claim") != 0)
            return -1;
        if (sqlite3_changes64(t->db) == 0)
            continue;
        idem_index_remove_id(&t->index, t->dead[i].key_hash, t->dead[i].id);
        t->rows = t->rows > 0 ? t->rows - 1 : 0;
        n++;
    }

    free(t->dead);
    t->dead = NULL;
    t->dead_count = t->dead_cap = 0;
    if (reclaimed != NULL)
        *reclaimed = n;
    return 0;
}

/* ---- open ------------------------------------------------------------- */

static int create_schema(struct idem_table *t)
{
    static const char schema[] =
        "CREATE TABLE IF NOT EXISTS idem_meta ("
        " name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;"
        "INSERT OR IGNORE INTO idem_meta (name, value)"
        " VALUES ('schema_version', 1);"
        "CREATE TABLE IF NOT EXISTS idem_rows ("
        " id INTEGER PRIMARY KEY, key BLOB NOT NULL,"
        " status INTEGER NOT NULL, expiry_s INTEGER NOT NULL,"
        " in_progress_expiry_ms INTEGER, owner BLOB NOT NULL,"
        " hash BLOB NOT NULL, outcome TEXT, shard_id TEXT, seq TEXT,"
        " subseq INTEGER NOT NULL DEFAULT 0);";
    sqlite3_stmt *stmt = NULL;

    if (exec_sql(t, schema, "create idempotency tables") != 0)
        return -1;
    int rc = sqlite3_prepare_v2(t->db,
                                "SELECT value FROM idem_meta"
                                " WHERE name = 'schema_version'",
                                -1, &stmt, NULL);
    if (rc != SQLITE_OK)
        return fail_sqlite(t, rc, "read idempotency schema version");
    rc = sqlite3_step(stmt);
    int64_t version = rc == SQLITE_ROW ? sqlite3_column_int64(stmt, 0) : -1;
    int out = rc == SQLITE_ROW || rc == SQLITE_DONE
                  ? 0
                  : fail_sqlite(t, rc, "read idempotency schema version");
    sqlite3_finalize(stmt);
    if (out == 0 && version != SCHEMA_VERSION) {
        out = fail(t,
                   "unsupported idempotency schema version %" PRId64
                   ": this build reads version %d",
                   version, SCHEMA_VERSION);
    }
    return out;
}

/* The parameter that takes our owner token, in the statements that have
 * one. It is bound once, to t->owner, which lives as long as t. */
static const int owner_param[STMT_COUNT] = {
    [STMT_INSERT] = 5,
    [STMT_TAKE_OVER] = 2,
    [STMT_COMPLETE_OWN] = 4,
    [STMT_RECLAIM] = 2,
};

static int prepare_statements(struct idem_table *t)
{
    for (int i = 0; i < STMT_COUNT; i++) {
        int rc =
            sqlite3_prepare_v3(t->db, stmt_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &t->stmts[i], NULL);
        if (rc == SQLITE_OK && owner_param[i] != 0)
            rc = sqlite3_bind_blob(t->stmts[i], owner_param[i], t->owner,
                                   IDEM_OWNER_LEN, SQLITE_STATIC);
        if (rc != SQLITE_OK)
            return fail_sqlite(t, rc, "prepare idempotency statement");
    }
    return 0;
}

/*
 * Point the index at row id of key, which is newer than every row indexed
 * so far: replace the entry of an older row of the same key, or add one.
 */
static int index_row(struct idem_table *t, const void *key, size_t len,
                     uint64_t key_hash, int64_t id)
{
    struct idem_probe probe;
    int64_t candidate;
    int rc = 0;

    idem_index_probe_start(&t->index, key_hash, &probe);
    while (rc == 0 && idem_index_probe_next(&t->index, &probe, &candidate)) {
        struct binder b = bind_start(t, STMT_GET_KEY);
        bind_int64(&b, 1, candidate);
        int found = query_step(t, &b, "read idempotency key");
        if (found < 0)
            return -1;
        if (found == 0)
            continue;
        bool same = column_equals(b.stmt, 0, key, len);
        query_done(b.stmt);
        if (same)
            rc = idem_index_replace(&t->index, &probe, id);
        if (same && rc == 0)
            return 0;
    }
    if (rc == 0)
        rc = idem_index_insert(&t->index, key_hash, id);
    if (rc != 0) {
        return fail(t, "index idempotency row %" PRId64 ": %s", id,
                    strerror(-rc));
    }
    return 0;
}

/* Account for one row of the rebuild scan (the current row of stmt). */
static int rebuild_row(struct idem_table *t, sqlite3_stmt *stmt)
{
    int64_t id = sqlite3_column_int64(stmt, 0);
    const void *key = sqlite3_column_blob(stmt, 1);
    size_t len = (size_t)sqlite3_column_bytes(stmt, 1);
    uint64_t key_hash = idem_index_hash(&t->index, key, len);

    if (t->rows == 0)
        t->expire_from = id;
    t->rows++;
    t->next_id = id < INT64_MAX ? id + 1 : id;

    bool dead = sqlite3_column_int64(stmt, 2) == ROW_INPROGRESS &&
                !column_equals(stmt, 3, t->owner, IDEM_OWNER_LEN);
    if (dead && note_dead_row(t, id, key_hash) != 0)
        return -1;
    /* A key that no claim can carry cannot be looked up either. */
    if (key == NULL || len == 0 || len > IDEM_MAX_KEY)
        return 0;
    return index_row(t, key, len, key_hash, id);
}

/* Rebuild the index with one scan of the table in id order, so that each
 * key ends up pointing at its newest row. */
static int rebuild_index(struct idem_table *t)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(
        t->db, "SELECT id, key, status, owner FROM idem_rows ORDER BY id", -1,
        &stmt, NULL);

    if (rc != SQLITE_OK)
        return fail_sqlite(t, rc, "scan idempotency rows");
    int out = 0;
    while (out == 0 && (rc = sqlite3_step(stmt)) == SQLITE_ROW)
        out = rebuild_row(t, stmt);
    if (out == 0 && rc != SQLITE_DONE)
        out = fail_sqlite(t, rc, "scan idempotency rows");
    sqlite3_finalize(stmt);
    return out;
}

static int check_options(const struct idem_options *opts, char *err,
                         size_t err_len)
{
    const char *what = NULL;

    if (opts->expiry_s < 1)
        what = "expiry_s must be at least 1";
    else if (opts->in_progress_timeout_ms < 0)
        what = "in_progress_timeout_ms must be >= 0";
    else if (opts->cache_size > MAX_CACHE_SIZE)
        what = "cache_size must be at most 16777216";
    if (what == NULL)
        return 0;
    snprintf(err, err_len, "invalid idempotency options: %s", what);
    return -1;
}

/* Open the table on db, which the table owns from now on when own_db,
 * even on failure. */
static int open_table(sqlite3 *db, bool own_db, const struct idem_options *opts,
                      const uint8_t owner[IDEM_OWNER_LEN],
                      struct idem_table **out, char *err, size_t err_len)
{
    struct idem_table *t = calloc(1, sizeof *t);

    *out = NULL;
    if (t == NULL) {
        if (own_db)
            sqlite3_close_v2(db);
        snprintf(err, err_len, "out of memory opening idempotency table");
        return -1;
    }
    t->db = db;
    t->own_db = own_db;
    t->opts = *opts;
    memcpy(t->owner, owner, IDEM_OWNER_LEN);
    t->next_id = 1;
    t->expire_from = INT64_MIN;

    t->queue_cap = queue_capacity(db);
    t->queue = calloc(t->queue_cap, sizeof *t->queue);
    int rc = t->queue != NULL ? idem_index_init(&t->index) : -ENOMEM;
    if (rc == 0)
        rc = idem_cache_init(&t->cache, opts->cache_size);
    if (rc != 0)
        fail(t, "set up idempotency index: %s", strerror(-rc));
    if (rc != 0 || create_schema(t) != 0 || prepare_statements(t) != 0 ||
        rebuild_index(t) != 0) {
        snprintf(err, err_len, "%s", t->err);
        idem_close(t);
        return -1;
    }
    *out = t;
    return 0;
}

int idem_open(struct sqlite3 *db, const struct idem_options *opts,
              const uint8_t owner[IDEM_OWNER_LEN], struct idem_table **out,
              char *err, size_t err_len)
{
    if (db == NULL || opts == NULL || owner == NULL || out == NULL) {
        snprintf(err, err_len,
                 "idem_open: db, opts, owner and out are"
                 " required");
        return -1;
    }
    if (check_options(opts, err, err_len) != 0)
        return -1;
    return open_table(db, false, opts, owner, out, err, err_len);
}

/* Run one PRAGMA and check the single value it returns. */
static int set_pragma(sqlite3 *db, const char *sql, const char *expected,
                      char *err, size_t err_len)
{
    sqlite3_stmt *stmt = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &stmt, NULL);

    if (rc == SQLITE_OK)
        rc = sqlite3_step(stmt);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        snprintf(err, err_len, "%s: %s: %s", sql, errname(rc),
                 sqlite3_errmsg(db));
        sqlite3_finalize(stmt);
        return -1;
    }
    const char *got =
        rc == SQLITE_ROW ? (const char *)sqlite3_column_text(stmt, 0) : NULL;
    int out = 0;
    if (expected != NULL && (got == NULL || strcmp(got, expected) != 0)) {
        snprintf(err, err_len, "%s returned \"%s\" instead of \"%s\"", sql,
                 got != NULL ? got : "(nothing)", expected);
        out = -1;
    }
    sqlite3_finalize(stmt);
    return out;
}

/*
 * WAL makes a commit one append and one fsync; synchronous=FULL makes that
 * fsync happen at every commit, so a committed claim survives power loss.
 */
int idem_open_path(const char *path, const struct idem_options *opts,
                   const uint8_t owner[IDEM_OWNER_LEN], struct idem_table **out,
                   char *err, size_t err_len)
{
    sqlite3 *db = NULL;

    if (path == NULL || opts == NULL || owner == NULL || out == NULL) {
        snprintf(err, err_len,
                 "idem_open_path: path, opts, owner and out"
                 " are required");
        return -1;
    }
    if (check_options(opts, err, err_len) != 0)
        return -1;

    int flags =
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX;
    int rc = sqlite3_open_v2(path, &db, flags, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
    if (rc != SQLITE_OK) {
        snprintf(err, err_len, "open %s: %s: %s", path, errname(rc),
                 db != NULL ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close_v2(db);
        return -1;
    }
    /* A 32 MiB page cache keeps the interior pages of the rowid B-tree of
     * 50 million rows (about 33 MB) in memory, so reading an old row for a
     * duplicate costs one leaf page whatever the table size. SQLite fills
     * the cache only as pages are read. */
    if (set_pragma(db, "PRAGMA journal_mode = WAL", "wal", err, err_len) ||
        set_pragma(db, "PRAGMA synchronous = FULL", NULL, err, err_len) ||
        set_pragma(db, "PRAGMA cache_size = -32768", NULL, err, err_len)) {
        sqlite3_close_v2(db);
        return -1;
    }
    return open_table(db, true, opts, owner, out, err, err_len);
}

/* ---- transactions and teardown ---------------------------------------- */

static int check_own_db(struct idem_table *t)
{
    if (!t->own_db) {
        return fail(t, "the table uses the caller's connection: begin and"
                       " commit there, and call idem_after_rollback()");
    }
    return 0;
}

int idem_begin(struct idem_table *t)
{
    if (check_own_db(t) != 0 || flush_all(t) != 0)
        return -1;
    return exec_sql(t, "BEGIN IMMEDIATE", "begin idempotency transaction");
}

int idem_commit(struct idem_table *t)
{
    if (check_own_db(t) != 0)
        return -1;
    if (flush_all(t) != 0)
        return -1;
    if (exec_sql(t, "COMMIT", "commit idempotency transaction") == 0)
        return 0;
    /* A failed COMMIT may have rolled the transaction back. */
    if (sqlite3_get_autocommit(t->db))
        idem_after_rollback(t);
    return -1;
}

void idem_rollback(struct idem_table *t)
{
    if (t == NULL || !t->own_db)
        return;
    if (!sqlite3_get_autocommit(t->db))
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
    idem_after_rollback(t);
}

/*
 * The index needs no repair: it heals on the next read of a key whose row
 * the rollback removed. The cache may hold COMPLETED rows that the rollback
 * undid, so it is cleared, and so is the memo of claims, whose entries
 * would only fail their check. Expiry restarts from the left edge, because
 * the rollback may have restored rows that it had passed.
 * NOTE: idem_stats() keeps counting rolled-back inserts and deletes in
 * rows until the next open rebuilds the count.
 */
void idem_after_rollback(struct idem_table *t)
{
    if (t == NULL)
        return;
    idem_cache_clear(&t->cache);
    memo_clear(t);
    t->pending.active = false;
    t->queue_len = 0;
    t->expire_from = INT64_MIN;
}

void idem_close(struct idem_table *t)
{
    if (t == NULL)
        return;
    for (int i = 0; i < STMT_COUNT; i++)
        sqlite3_finalize(t->stmts[i]);
    for (size_t n = 0; n <= QUEUE_MAX; n++) {
        sqlite3_finalize(t->insert_rows[n][0]);
        sqlite3_finalize(t->insert_rows[n][1]);
    }
    free(t->queue);
    if (t->own_db)
        sqlite3_close_v2(t->db);
    idem_index_free(&t->index);
    idem_cache_free(&t->cache);
    free(t->dead);
    free(t);
}

const char *idem_errmsg(const struct idem_table *t)
{
    return t != NULL ? t->err : "no idempotency table";
}

void idem_stats(const struct idem_table *t, struct idem_stats *out)
{
    size_t slots = idem_index_capacity(&t->index);

    memset(out, 0, sizeof *out);
    out->rows = t->rows;
    out->index_slots = slots;
    out->index_bytes = slots * sizeof(struct idem_slot);
    out->cache_hits = t->cache_hits;
    out->cache_misses = t->cache_misses;
}
