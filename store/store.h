/*
 * The durable state of podium in one SQLite database (WAL mode): idempotency
 * rows, per-second samples, aggregator state, shard checkpoints, the outbox
 * of messages to publish, the dead letters, the last race results and class
 * leaderboards, and the class history. A batch writes all of them
 * between store_begin() and store_commit(), so a crash keeps all of a batch
 * or none of it.
 *
 * A struct store is used by one thread at a time. The daemon hands it from
 * the loop thread to one worker job at a time and never uses it concurrently.
 *
 * Load functions pass pointers that are valid only during the callback. A
 * callback must not call functions of the same store.
 */
#ifndef PODIUM_STORE_STORE_H
#define PODIUM_STORE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;

/*
 * Open or create the database at path and bring its schema up to date.
 * Returns 0, or -1 with a message in err naming the path and the SQLite
 * error.
 */
int store_open(const char *path, struct store **out, char *err, size_t err_len);

/*
 * Open an existing database read-only, without migrating it, while another
 * process may write it. A missing file or a schema version other than this
 * build's is an error, with what to do in err. Only the load and get
 * functions may be used on it.
 */
int store_open_readonly(const char *path, struct store **out, char *err,
                        size_t err_len);
void store_close(struct store *st);

/* The last SQLite error message (borrowed, valid until the next call). */
const char *store_errmsg(const struct store *st);

/*
 * BEGIN IMMEDIATE, COMMIT, ROLLBACK. Return 0 or -1. A failed commit rolls
 * the transaction back itself; store_rollback() without an open transaction
 * does nothing.
 */
int store_begin(struct store *st);
int store_commit(struct store *st);
void store_rollback(struct store *st);

/* ---- idempotency ---------------------------------------------------- */

struct idem_options;
struct idem_table;

/*
 * Open the idempotency table (store/idempotency.h) on this database and
 * release claims left unfinished by earlier processes. owner is this
 * process's token of 16 bytes. Returns 0, or -1 with a message in err.
 */
int store_open_idempotency(struct store *st, const struct idem_options *opts,
                           const uint8_t owner[16], char *err, size_t err_len);

/* The table opened by store_open_idempotency (borrowed), or NULL. */
struct idem_table *store_idempotency(struct store *st);

/* Number of unfinished claims released by store_open_idempotency. */
size_t store_idempotency_reclaimed(const struct store *st);

/* ---- samples ---------------------------------------------------------- */

/* Ids are stored as JSON text: 5402746 or "R-7", so they keep their type. */
struct store_sample {
    const char *race_id;
    const char *racer_id;
    int32_t second;
    const char *class_id;
    const char *name; /* UTF-8, may contain U+0000 */
    size_t name_len;
    const char *uuid;
    size_t uuid_len;
    int64_t device_ts_ms;
    int64_t arrival_ms;
    int64_t cadence4; /* values in 1/10000 */
    int64_t resistance4;
    int64_t output4;
    const char *cadence_exact; /* canonical exact values for comparisons */
    const char *resistance_exact;
    bool final;
};

/*
 * Store the sample of (race_id, racer_id, second), which replaces any
 * earlier one of the same key. Inside a transaction the sample is written
 * at store_commit() and dropped by a rollback.
 */
int store_sample_put(struct store *st, const struct store_sample *s);

/* Call cb for every sample in the order they were stored. A key can come
 * more than once, and then the later sample replaces the earlier one. A
 * non-zero return from cb stops the scan and is returned. */
typedef int (*store_sample_cb)(void *arg, const struct store_sample *s);
int store_samples_load(struct store *st, store_sample_cb cb, void *arg);

/* Number of distinct (race, racer, second) keys among the stored samples.
 * It reads the whole log, so it is meant for tests and tools. */
int store_sample_count(struct store *st, int64_t *count);

/* ---- aggregator state: small JSON documents by (kind, key) ---------- */

int store_state_put(struct store *st, const char *kind, const char *key,
                    const char *value, size_t value_len);
int store_state_delete(struct store *st, const char *kind, const char *key);
typedef int (*store_state_cb)(void *arg, const char *key, const char *value,
                              size_t value_len);
int store_state_load(struct store *st, const char *kind, store_state_cb cb,
                     void *arg);

/* ---- shard checkpoints ---------------------------------------------- */

struct store_checkpoint {
    const char *shard_id;
    const char *seq; /* last committed sequence number; NULL when none */
    int64_t subseq;  /* sub-sequence inside a KPL aggregate, else 0 */
    bool finished;   /* read to its end and closed: never read again */
};

int store_checkpoint_put(struct store *st, const struct store_checkpoint *cp);
typedef int (*store_checkpoint_cb)(void *arg,
                                   const struct store_checkpoint *cp);
int store_checkpoints_load(struct store *st, store_checkpoint_cb cb, void *arg);

/* ---- outbox --------------------------------------------------------- */

/* Append a message; *id receives its increasing id. */
int store_outbox_add(struct store *st, const char *topic, const void *payload,
                     size_t payload_len, int64_t *id);
/* Delete the rows of ids; absent ids are skipped. *deleted, unless NULL,
 * receives the number of rows deleted. */
int store_outbox_delete(struct store *st, const int64_t *ids, size_t count,
                        size_t *deleted);
typedef int (*store_outbox_cb)(void *arg, int64_t id, const char *topic,
                               const void *payload, size_t payload_len);
/* Messages with id > after_id in id order, at most limit of them. */
int store_outbox_load(struct store *st, int64_t after_id, size_t limit,
                      store_outbox_cb cb, void *arg);
int store_outbox_count(struct store *st, int64_t *count);

/* ---- dead letters --------------------------------------------------- */

struct store_dead_letter {
    const char *shard_id;
    const char *seq;
    int64_t subseq;
    int64_t arrival_ms;
    const char *reason; /* short name, e.g. "duplicate_key" */
    const char *detail; /* human-readable, e.g. the offending value */
    const void *data;   /* raw record bytes */
    size_t data_len;
};

int store_dead_letter_add(struct store *st, const struct store_dead_letter *d);
int store_dead_letter_count(struct store *st, int64_t *count);
typedef int (*store_dead_letter_cb)(void *arg, int64_t id,
                                    const struct store_dead_letter *d);
/* Dead letters with id > after_id in id order, at most limit of them. */
int store_dead_letters_load(struct store *st, int64_t after_id, size_t limit,
                            store_dead_letter_cb cb, void *arg);

/* ---- last messages: the newest revision of results and class boards -- */

/* Replace the message of (kind, key), such as ("results", "5402746"). */
int store_last_message_put(struct store *st, const char *kind, const char *key,
                           int32_t revision, const void *payload,
                           size_t payload_len);
typedef int (*store_last_message_cb)(void *arg, int32_t revision,
                                     const char *payload, size_t payload_len);
/* Call cb with the stored message. Returns 1 when found, 0 when absent, -1
 * on error, or the non-zero return of cb. */
int store_last_message_get(struct store *st, const char *kind, const char *key,
                           store_last_message_cb cb, void *arg);

/* ---- class history: best output per (class, racer, second) ---------- */

/* Ids are JSON text like the samples' ids. */
struct store_history_row {
    const char *class_id;
    const char *racer_id;
    int32_t second;
    int64_t output4;     /* 1/10000 */
    const char *race_id; /* the race that set it */
};

/* Insert or replace the row of (class_id, racer_id, second). */
int store_history_put(struct store *st, const struct store_history_row *row);
int store_history_delete(struct store *st, const char *class_id,
                         const char *racer_id, int32_t second);
typedef int (*store_history_cb)(void *arg, const struct store_history_row *row);
/*
 * Call cb for the rows of class_id, only those of racer_id unless it is
 * NULL, and only those at second unless it is 0, ordered by second and then
 * by the text of racer_id. A non-zero return from cb stops the scan and is
 * returned.
 */
int store_history_load(struct store *st, const char *class_id,
                       const char *racer_id, int32_t second,
                       store_history_cb cb, void *arg);

/* ---- metadata ------------------------------------------------------- */

/* Small key/value settings of the store itself (stream time, versions). */
int store_meta_put(struct store *st, const char *key, const char *value);
/* Copies the value into buf; returns 1 when found, 0 when absent, -1. */
int store_meta_get(struct store *st, const char *key, char *buf,
                   size_t buf_len);

#endif
