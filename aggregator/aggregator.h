/*
 * Telemetry records to leaderboards. Three parts:
 *   - record decoding and validation (every rule of the input contract);
 *   - exact fixed-point scoring: output = (cadence + 35) x (resistance + 65)
 *     / 100 rounded half up to 4 decimals, kept in 1/10000 units;
 *   - per-race state: one sample per (raceId, racerId, second), totals,
 *     ranking, closing of seconds on stream time, and the leaderboard
 *     messages, built byte for byte the same whatever the arrival order;
 *   - race results, the all-time leaderboard of each class and the class
 *     history (best output per rider and second), derived from the
 *     samples of the races whose results were published.
 *
 * The aggregator does no I/O. Everything that must be stored or published
 * goes out through the sink callbacks, which the daemon turns into rows of
 * the batch transaction.
 */
#ifndef PODIUM_AGGREGATOR_AGGREGATOR_H
#define PODIUM_AGGREGATOR_AGGREGATOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/strbuf.h"

#define AGG_MAX_ID_BYTES     64 /* ids and names, in UTF-8 bytes */
#define AGG_MAX_EXACT_TEXT   64 /* canonical exact number text */
#define AGG_MAX_RECORD_BYTES (1024 * 1024)
#define AGG_MAX_CADENCE      1000   /* accepted range of cadence */
#define AGG_MAX_RESISTANCE   1000   /* accepted range of resistance */
#define AGG_MAX_RACES        100000 /* races held in memory */
#define AGG_MAX_RACERS       100000 /* riders per race */

/* raceId, racerId or classId: an integer or a string, as in the input. */
struct agg_id {
    bool is_num;
    int64_t num;
    uint8_t len;                    /* string length in bytes */
    char str[AGG_MAX_ID_BYTES + 1]; /* NUL-terminated string form; for a
                                       number, its decimal digits */
};

/* Numbers by value first, then strings by bytes. */
int agg_id_cmp(const struct agg_id *a, const struct agg_id *b);
/* Append the id as JSON: 5402746 or "R-7". */
int agg_id_to_json(const struct agg_id *id, struct strbuf *sb);
/* Parse what agg_id_to_json wrote. Returns 0 or -1. */
int agg_id_from_json(const char *text, size_t len, struct agg_id *id);

/* ---- records ---------------------------------------------------------- */

enum agg_reject {
    AGG_REJECT_NONE = 0,
    AGG_REJECT_TOO_LARGE, /* data over AGG_MAX_RECORD_BYTES */
    AGG_REJECT_NOT_JSON,  /* syntax error, trailing bytes */
    AGG_REJECT_TOO_DEEP,  /* nesting past the parser's limit */
    AGG_REJECT_INVALID_UTF8,
    AGG_REJECT_NOT_OBJECT,
    AGG_REJECT_DUPLICATE_KEY,
    AGG_REJECT_MISSING_FIELD,
    AGG_REJECT_WRONG_TYPE,
    AGG_REJECT_BAD_NUMBER,   /* not finite, too big, too precise */
    AGG_REJECT_BAD_EVENT,    /* event not "update" or "final" */
    AGG_REJECT_BAD_ID,       /* U+0000 or a control character in an id */
    AGG_REJECT_TOO_LONG,     /* id or name longer than 64 bytes */
    AGG_REJECT_SECOND_RANGE, /* second outside 1..max_seconds */
    AGG_REJECT_VALUE_RANGE,  /* cadence or resistance out of range */
    AGG_REJECT_COUNT
};

/* Short stable name for logs, metrics and dead letters. */
const char *agg_reject_name(enum agg_reject reason);

struct agg_record {
    char uuid[AGG_MAX_ID_BYTES + 1];
    uint8_t uuid_len;
    bool final;
    int64_t device_ts_ms;
    int32_t second;
    struct agg_id race;
    struct agg_id racer;
    struct agg_id class_id;
    char name[AGG_MAX_ID_BYTES + 1];
    uint8_t name_len; /* may contain U+0000: use the length */
    int64_t cadence4; /* rounded half up to 1/10000, for display */
    int64_t resistance4;
    int64_t output4; /* exact formula, rounded half up, 1/10000 */
    /* Canonical exact values: mantissa digits, 'e', exponent ("125e-1"),
     * so 90, 90.0 and 9.0e1 compare equal. */
    char cadence_exact[AGG_MAX_EXACT_TEXT];
    char resistance_exact[AGG_MAX_EXACT_TEXT];
    uint8_t hash[32]; /* SHA-256 of the canonical form of the record */
};

struct agg_reject_info {
    enum agg_reject reason;
    char detail[192]; /* names the field and value, e.g.
                         "second 0 is outside 1..3600" */
};

/*
 * Decode and validate one record. Returns 0 and fills *rec, or -1 and fills
 * *why. max_seconds bounds "second". Returns -ENOMEM, with why->reason
 * AGG_REJECT_NONE, when memory runs out: the record itself may be valid.
 */
int agg_record_parse(const uint8_t *data, size_t len, int32_t max_seconds,
                     struct agg_record *rec, struct agg_reject_info *why);

/*
 * Buffers and a SHA-256 context that agg_record_decode reuses from one
 * record to the next, so that decoding allocates nothing in the steady
 * state. Use one per thread.
 */
struct agg_decoder;

/* A new decoder (owned), or NULL when out of memory. */
struct agg_decoder *agg_decoder_new(void);
void agg_decoder_free(struct agg_decoder *dec);

struct sjson_doc;
/*
 * The same as agg_record_parse with the scratch of dec, and on success
 * the parsed record in *doc for the idempotency key and payload hash. On
 * entry *doc is NULL or the document of an earlier call, whose memory is
 * reused. It stays the caller's in every case (free it with
 * sjson_doc_free), but only a successful call leaves a document to read.
 */
int agg_record_decode(struct agg_decoder *dec, const uint8_t *data, size_t len,
                      int32_t max_seconds, struct agg_record *rec,
                      struct agg_reject_info *why, struct sjson_doc **doc);

/*
 * output = (cadence + 35) x (resistance + 65) / 100, rounded half up to
 * 4 decimals, in 1/10000 units, computed exactly from the canonical texts.
 * Returns 0, or -1 when a text is not a canonical exact number.
 */
int agg_output4(const char *cadence_exact, const char *resistance_exact,
                int64_t *output4);

/* ---- aggregation ------------------------------------------------------ */

enum agg_late_policy { AGG_LATE_AMEND, AGG_LATE_DROP };

struct agg_config {
    int32_t max_seconds;
    int32_t allowed_lateness_s;
    int32_t idle_close_s;
    int32_t max_future_skew_s;
    int32_t max_second_jump;
    enum agg_late_policy late_policy;
    int32_t amend_window_s;
    int32_t top_n; /* entries per leaderboard; 0 or less lists everyone */
    bool alleycat; /* also send AGG_MSG_ALLEYCAT after each leaderboard */
};

enum agg_outcome {
    AGG_APPLIED,           /* new sample */
    AGG_UNCHANGED,         /* same values as the stored sample. A late
                              copy that changes a shown name, classId or
                              ts still republishes like an amendment */
    AGG_CONFLICT_KEPT,     /* other values; the stored sample wins */
    AGG_CONFLICT_REPLACED, /* other values; this record wins */
    AGG_LATE_AMENDED,      /* late, applied, leaderboards republished */
    AGG_LATE_DROPPED,      /* late under late_policy drop */
    AGG_TOO_LATE,          /* later than amend_window: no change */
    AGG_QUARANTINED_SKEW,  /* device time too far ahead of arrival */
    AGG_QUARANTINED_JUMP,  /* second jumps past max_second_jump */
    AGG_OVER_CAPACITY,     /* would pass AGG_MAX_RACES, AGG_MAX_RACERS or the
                              names or classIds kept per rider: no change */
    AGG_OUTCOME_COUNT
};

const char *agg_outcome_name(enum agg_outcome outcome);

/* A sample as stored and restored. */
struct agg_sample_row {
    const struct agg_id *race;
    const struct agg_id *racer;
    const struct agg_id *class_id;
    int32_t second;
    const char *name;
    size_t name_len;
    const char *uuid;
    size_t uuid_len;
    int64_t device_ts_ms;
    int64_t arrival_ms;
    int64_t cadence4;
    int64_t resistance4;
    int64_t output4;
    const char *cadence_exact;
    const char *resistance_exact;
    bool final;
};

enum agg_message_kind {
    AGG_MSG_RACE_LEADERBOARD,
    AGG_MSG_RACE_RESULTS,
    AGG_MSG_CLASS_LEADERBOARD,
    /* The leaderboard's entries of one class in the shape of the Alleycat
     * sample's frontend (aggregator/alleycat.c); race and class_id are
     * set, and second and revision are the leaderboard's. */
    AGG_MSG_ALLEYCAT
};

struct agg_message {
    enum agg_message_kind kind;
    const struct agg_id *race;     /* NULL for class leaderboards */
    const struct agg_id *class_id; /* NULL for race leaderboards and
                                      results */
    int32_t second;
    int32_t revision;
    const char *payload; /* JSON object, borrowed during the callback */
    size_t payload_len;
};

/*
 * The best output of a rider at one second of a race, over every race
 * whose results counted the rider in the class. race is NULL when the
 * rider has no such output any more (an amendment moved the rider to
 * another class): the stored row must be deleted.
 */
struct agg_history_row {
    const struct agg_id *class_id;
    const struct agg_id *racer;
    int32_t second;
    int64_t output4;
    const struct agg_id *race;
};

/*
 * Where the aggregator sends what must be persisted or published. Each
 * callback returns 0, or non-zero to abort the current call, which then
 * returns that value; the caller must then roll back and rebuild.
 */
struct agg_sink {
    void *arg;
    int (*sample)(void *arg, const struct agg_sample_row *row);
    int (*race_state)(void *arg, const struct agg_id *race, const char *json,
                      size_t len);
    int (*message)(void *arg, const struct agg_message *msg);
    int (*class_state)(void *arg, const struct agg_id *class_id,
                       const char *json, size_t len);
    int (*history)(void *arg, const struct agg_history_row *row);
};

struct agg;

/* Returns NULL when a setting is negative (max_seconds below 1), a sink
 * callback is missing, or memory runs out. */
struct agg *agg_new(const struct agg_config *cfg, const struct agg_sink *sink);
void agg_free(struct agg *agg);

/*
 * Apply one validated record that arrived at arrival_ms (Kinesis
 * ApproximateArrivalTimestamp). Moves stream time to at least arrival_ms
 * and closes every idle race first, then applies the record and closes the
 * seconds of its race that lateness now closes, emitting their
 * leaderboards. Returns 0 and sets *outcome; the sink's non-zero error;
 * -EINVAL when rec breaks a range that agg_record_parse checks; or -ENOMEM.
 */
int agg_apply(struct agg *agg, const struct agg_record *rec, int64_t arrival_ms,
              enum agg_outcome *outcome);

/*
 * Move stream time to at least stream_time_ms and close idle races, in
 * raceId order. Used while every shard is caught up, so an idle race closes
 * in a live run. Returns 0, the sink's error, or -ENOMEM.
 */
int agg_advance(struct agg *agg, int64_t stream_time_ms);

/* Close every open second of every race (end of a replay). */
int agg_close_all(struct agg *agg);

/* Send the state of every race changed since the last flush to
 * sink->race_state, in raceId order, then that of every changed class to
 * sink->class_state, in classId order. Call once per batch, before commit.
 * Returns 0, the sink's error, or -ENOMEM. */
int agg_flush(struct agg *agg);

int64_t agg_stream_time(const struct agg *agg);

/*
 * Rebuild after a restart: samples first, then race states and class
 * states, then the stream time, and last agg_restore_finish, which derives
 * the class boards and history from the races whose results were
 * published. Nothing is sent to the sink. Each returns 0, -EINVAL for a
 * row or document that is invalid or disagrees with the samples, -ENOSPC
 * past a cap, or -ENOMEM.
 */
int agg_restore_sample(struct agg *agg, const struct agg_sample_row *row);
int agg_restore_race(struct agg *agg, const char *json, size_t len);
int agg_restore_class(struct agg *agg, const char *json, size_t len);
void agg_restore_stream_time(struct agg *agg, int64_t stream_time_ms);
int agg_restore_finish(struct agg *agg);

#endif
