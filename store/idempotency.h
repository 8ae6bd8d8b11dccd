/*
 * Idempotency table: remembers which records were already processed, in the
 * manner of the Powertools for AWS Lambda idempotency utility, with the
 * gaps its users reported closed:
 *   - a missing, null, empty or all-null key never becomes a shared row;
 *   - the payload validation hash is kept through every state change;
 *   - complete and release check the owner token, so a stale owner can
 *     never finish or delete a newer owner's claim;
 *   - an INPROGRESS row of a dead owner is reclaimed, and a row without an
 *     in-progress expiry never blocks its key forever.
 *
 * Statuses INPROGRESS and COMPLETED are stored; EXPIRED is computed from the
 * expiry at read time and never stored.
 *
 * The library works on an SQLite connection that the caller owns and may
 * share (podium keeps the table in its store and writes it in the same
 * transaction as the rest of a batch). It does not begin or commit
 * transactions itself, except idem_open_path() users who call
 * idem_begin()/idem_commit(). All calls on one table come from one thread
 * at a time.
 *
 * Layout: rows are appended in claim order under an increasing rowid, and
 * there is no on-disk index on the key, so a claim writes at the right edge
 * of one B-tree and expiry deletes at its left edge. Keys are found through
 * an in-memory index of key fingerprints to rowids, rebuilt when the table
 * is opened. Claim, lookup and expiry therefore cost the same whatever the
 * number of rows; the index costs memory in proportion to the live rows.
 */
#ifndef PODIUM_STORE_IDEMPOTENCY_H
#define PODIUM_STORE_IDEMPOTENCY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sqlite3;
struct sjson_value;
struct strbuf;

#define IDEM_HASH_LEN    32   /* SHA-256 */
#define IDEM_OWNER_LEN   16   /* owner token bytes */
#define IDEM_MAX_KEY     1024 /* key bytes */
#define IDEM_MAX_OUTCOME 256  /* outcome text bytes */

struct idem_options {
    int64_t expiry_s;               /* how long a key is remembered; 3600 */
    int64_t in_progress_timeout_ms; /* INPROGRESS rows older than this may
                                       be taken over; 0 means none */
    size_t cache_size;              /* LRU entries for COMPLETED rows; 0 off */
};

struct idem_table;

/*
 * Open the table on db (borrowed; must outlive the table), creating its
 * tables when absent, and rebuild the in-memory index. owner is this
 * process instance's token (IDEM_OWNER_LEN bytes, e.g. random). Rows left
 * INPROGRESS by any other owner are from a dead instance (one writer per
 * database): idem_claim() takes them over at once, and idem_reclaim_dead()
 * deletes them. idem_open() never begins or commits on db, so it writes
 * only the schema. Returns 0, or -1 with a message in err.
 */
int idem_open(struct sqlite3 *db, const struct idem_options *opts,
              const uint8_t owner[IDEM_OWNER_LEN], struct idem_table **out,
              char *err, size_t err_len);

/* Open a database file of its own (WAL, synchronous=FULL) for programs
 * that use the table alone. Close with idem_close(). */
int idem_open_path(const char *path, const struct idem_options *opts,
                   const uint8_t owner[IDEM_OWNER_LEN], struct idem_table **out,
                   char *err, size_t err_len);
/* BEGIN IMMEDIATE / COMMIT / ROLLBACK on the table's own connection; -1
 * for a table opened with idem_open() on the caller's connection. */
int idem_begin(struct idem_table *t);
int idem_commit(struct idem_table *t);
void idem_rollback(struct idem_table *t);

void idem_close(struct idem_table *t);

/*
 * Delete the INPROGRESS rows of other, dead, owners that the open found,
 * unless a claim took them over since, and report how many went. Run it
 * once at start-up inside a transaction of the caller. Returns 0 or -1.
 */
int idem_reclaim_dead(struct idem_table *t, size_t *reclaimed);

/*
 * Tell the table that the caller rolled back a transaction that used it
 * (idem_rollback() does this itself). It drops the cache, which may hold
 * rows that the rollback undid. Skipping this call can turn a rolled-back
 * completion into a false IDEM_DUPLICATE.
 */
void idem_after_rollback(struct idem_table *t);

/* The last error message (borrowed, valid until the next call). */
const char *idem_errmsg(const struct idem_table *t);

enum idem_status {
    IDEM_STATUS_INPROGRESS,
    IDEM_STATUS_COMPLETED,
    IDEM_STATUS_EXPIRED
};

/* A stored row as a lookup sees it. Strings are copied into the struct. */
struct idem_record {
    enum idem_status status; /* EXPIRED computed from expiry_s */
    int64_t expiry_s;
    int64_t in_progress_expiry_ms; /* 0 when none */
    uint8_t owner[IDEM_OWNER_LEN];
    uint8_t hash[IDEM_HASH_LEN];
    char outcome[IDEM_MAX_OUTCOME + 1];
    char shard_id[64];
    char seq[130];
    int64_t subseq;
};

enum idem_result {
    IDEM_NEW,         /* claimed: an INPROGRESS row of ours now exists */
    IDEM_DUPLICATE,   /* COMPLETED with the same hash: record has it */
    IDEM_IN_PROGRESS, /* a live claim of another owner, or of ours */
    IDEM_CONFLICT,    /* same key, another payload hash: record has it */
    IDEM_KEY_MISSING  /* the key was missing: nothing stored */
};

const char *idem_result_name(enum idem_result r);

struct idem_claim {
    const void *key; /* NULL or key_len 0: IDEM_KEY_MISSING */
    size_t key_len;
    const uint8_t *hash;  /* IDEM_HASH_LEN bytes */
    int64_t now_ms;       /* the clock of the caller (podium: arrival time) */
    const char *shard_id; /* where the key was first seen; may be NULL */
    const char *seq;
    int64_t subseq;
};

/*
 * Claim key: a new or expired key, or an INPROGRESS row whose owner is dead
 * or whose in-progress expiry passed, becomes an INPROGRESS row of ours
 * (IDEM_NEW). Otherwise the result says why not, and *existing (may be
 * NULL) receives the stored row. Validation comes first: a live row with
 * another hash is IDEM_CONFLICT whatever its status. Returns 0 or -1.
 */
int idem_claim(struct idem_table *t, const struct idem_claim *c,
               enum idem_result *result, struct idem_record *existing);

/*
 * Claim as idem_claim(), but when the key has no live row, defer writing
 * the new INPROGRESS row. idem_release() of the key then writes nothing.
 * idem_complete() of the key queues the row COMPLETED, and inside a
 * transaction the queued rows of up to 64 completions are written
 * together by one INSERT. Fewer go into one INSERT when the connection's
 * limit on statement parameters (8 per row and 1 more) is lower. Outside a
 * transaction the row is written at once. Every other call that reads or writes
 * rows (claims, lookups, completions and releases of other keys, expiry,
 * reclaim) writes the deferred claim first and reads queued rows as stored, and
 * idem_begin(), idem_commit() and idem_flush() write both. idem_stats()
 * counts the rows already. Only one claim is deferred at a time: the next
 * claim writes the previous one.
 * A caller that commits on its own connection must call idem_flush()
 * before committing, or the deferred claim and the queued rows are not
 * stored. idem_after_rollback() and idem_close() drop them.
 */
int idem_claim_deferred(struct idem_table *t, const struct idem_claim *c,
                        enum idem_result *result, struct idem_record *existing);

/* Write the row of a deferred claim and the queued completed rows, if
 * any. Returns 0 or -1. */
int idem_flush(struct idem_table *t);

/*
 * Mark our claim of key COMPLETED with outcome, refreshing its expiry from
 * now_ms. Returns 0, -1 on a database error, or -EPERM when the key has no
 * INPROGRESS row of ours (never claimed, or taken over by another owner).
 */
int idem_complete(struct idem_table *t, const void *key, size_t key_len,
                  const char *outcome, int64_t now_ms);

/* Delete our INPROGRESS claim of key (the work failed and may be retried).
 * Returns 0, -1, or -EPERM as idem_complete. */
int idem_release(struct idem_table *t, const void *key, size_t key_len);

/* Look key up: 1 and *out filled when a row exists, 0 when none, -1. */
int idem_lookup(struct idem_table *t, const void *key, size_t key_len,
                int64_t now_ms, struct idem_record *out);

/* Claim or complete several keys in order; the same as calling the single
 * forms in a loop, with results[i] for claims[i]. */
int idem_claim_batch(struct idem_table *t, const struct idem_claim *claims,
                     size_t count, enum idem_result *results);
int idem_complete_batch(struct idem_table *t, const void *const *keys,
                        const size_t *key_lens, const char *const *outcomes,
                        size_t count, int64_t now_ms);

/*
 * Delete at most max_rows expired rows, oldest first, and report how many
 * went. Bounded work, so a caller can run it between batches without
 * stalling. Returns 0 or -1.
 */
int idem_expire_step(struct idem_table *t, int64_t now_ms, size_t max_rows,
                     size_t *deleted);

struct idem_stats {
    uint64_t rows;        /* rows in the table (live and not yet swept) */
    uint64_t index_slots; /* slots of the in-memory index */
    uint64_t index_bytes; /* memory of the index */
    uint64_t cache_hits;
    uint64_t cache_misses;
};
void idem_stats(const struct idem_table *t, struct idem_stats *out);

/* ---- keys and payload hashes --------------------------------------- */

/*
 * A key expression, a JMESPath subset: a field (uuid), a dotted path
 * (device.id), a quoted name ("race-id"), or a multi-select list of those
 * ([raceId, uuid]).
 */
struct idem_keyexpr;

/* Compile text. Returns 0, or -1 with a message in err naming the
 * position and what was expected. */
int idem_keyexpr_compile(const char *text, struct idem_keyexpr **out, char *err,
                         size_t err_len);
void idem_keyexpr_free(struct idem_keyexpr *expr);

/*
 * Evaluate expr on a parsed record and append the key bytes to key: the
 * canonical JSON of the selected value (so "5" and 5 differ and a NUL
 * inside a string survives). Returns 1 when a key was produced, 0 when it
 * is missing (absent, null, empty string, empty array or object, or a
 * multi-select whose values are all missing), -1 on error.
 */
int idem_keyexpr_eval(const struct idem_keyexpr *expr,
                      const struct sjson_value *root, struct strbuf *key);

/*
 * SHA-256 of the canonical form of the value that expr selects, or of the
 * whole record when expr is NULL: keys sorted, no insignificant whitespace,
 * numbers by value (90, 90.0 and 9.0e1 hash alike). A selection that is
 * missing hashes as JSON null. Returns 0 or -1.
 */
int idem_payload_hash(const struct idem_keyexpr *expr,
                      const struct sjson_value *root,
                      uint8_t out[IDEM_HASH_LEN]);

#endif
