/*
 * State shared by the aggregator's source files. Nothing here is part of
 * the module's interface.
 *
 * A race owns its riders. A rider owns one slot per second, in blocks of
 * SLOT_BLOCK seconds, and a byte arena for names and for the uuids, times
 * and exact texts that do not fit in a slot.
 */
#ifndef PODIUM_AGGREGATOR_INTERNAL_H
#define PODIUM_AGGREGATOR_INTERNAL_H

#include "aggregator/aggregator.h"
#include "aggregator/fixed.h"

#define AGG_MAX_NAMES_PER_RIDER   64 /* distinct names of one rider */
#define AGG_MAX_CLASSES_PER_RIDER 64 /* distinct classIds of one rider */

/* Largest message or race state document, in bytes. */
#define AGG_MAX_DOCUMENT_BYTES (256u * 1024 * 1024)

/* Hash index from ids to positions in an array, open addressing. */
struct id_index {
    uint32_t *hashes;
    uint32_t *positions; /* position + 1; 0 marks an empty bucket */
    uint32_t cap;        /* power of two, or 0 */
    uint32_t count;
};

uint32_t agg_id_hash(const struct agg_id *id);
/* Position of the id, or -1. key_at returns the id stored at a position. */
int64_t id_index_find(const struct id_index *index, const struct agg_id *id,
                      const struct agg_id *(*key_at)(const void *, uint32_t),
                      const void *owner);
/* Add a position whose id is not in the index yet. Returns 0 or -ENOMEM. */
int id_index_add(struct id_index *index, const struct agg_id *id,
                 uint32_t position);
void id_index_free(struct id_index *index);

/*
 * Check a string id: not empty, at most AGG_MAX_ID_BYTES, no control
 * character. Returns AGG_REJECT_NONE, AGG_REJECT_BAD_ID or
 * AGG_REJECT_TOO_LONG.
 */
enum agg_reject agg_id_check_string(const char *s, size_t len);

struct sjson_value;
/*
 * Read an id from a parsed JSON value: a string that passes
 * agg_id_check_string, or an integer without fraction or exponent within
 * int64. Returns AGG_REJECT_NONE, WRONG_TYPE, BAD_NUMBER, BAD_ID or
 * TOO_LONG.
 */
enum agg_reject agg_id_from_value(const struct sjson_value *v,
                                  struct agg_id *id);
/* Strict JSON integer within int64. Returns 0 or -1. */
int agg_parse_int64(const char *text, size_t len, int64_t *out);
void agg_id_set_num(struct agg_id *id, int64_t num);
/* len <= AGG_MAX_ID_BYTES. */
void agg_id_set_string(struct agg_id *id, const char *s, size_t len);

/* ---- samples ------------------------------------------------------------ */

#define SLOT_PRESENT      1u
#define SLOT_FINAL        2u
#define SLOT_WIDE_DEVICE  4u  /* device_ts is the arena offset of an int64 */
#define SLOT_WIDE_ARRIVAL 8u  /* arrival is the arena offset of an int64 */
#define SLOT_UUID_TEXT    16u /* uuid.text: a non-canonical uuid's bytes */
#define SLOT_EXACT        32u /* the exact texts are in rider.exacts */

/* A canonical uuid's text length and its packed size. */
#define SLOT_UUID_CHARS  36
#define SLOT_UUID_PACKED 16

/* Seconds per entry of rider.prefix. */
#define PREFIX_SPAN 16

/* Slots per block of rider.blocks. */
#define SLOT_BLOCK 64

/*
 * One rider's second: 40 bytes and nothing else for the usual sample,
 * which has a canonical uuid, times within about 24 days of the rider's
 * first sample and values with at most 4 decimals. Anything else keeps
 * its exact form in the rider's arena, so every value reads back exactly.
 */
struct slot {
    int32_t device_ts; /* deviceTimestamp - rider.device_base, in ms */
    int32_t arrival;   /* arrival time - rider.arrival_base, in ms */
    int32_t cadence4;
    int32_t resistance4;
    int32_t output4;
    union {
        uint8_t packed[SLOT_UUID_PACKED]; /* a canonical uuid */
        struct {
            uint32_t at; /* arena offset */
            uint32_t len;
        } text; /* any other uuid, with SLOT_UUID_TEXT */
    } uuid;
    uint8_t name_idx;  /* into rider.names */
    uint8_t class_idx; /* into rider.classes */
    uint8_t flags;     /* SLOT_* */
};

struct arena_text {
    uint32_t at;
    uint8_t len;
};

/* Running total and latest present second through a multiple of
 * PREFIX_SPAN seconds. */
struct prefix {
    int64_t total4;
    int32_t latest;
};

/* The arena offset of "cadence\0resistance\0" of a slot whose 4-decimal
 * values are not exact. */
struct exact_text {
    int32_t second;
    uint32_t at;
};

struct rider {
    struct agg_id id;
    /* The slot of second is slot (second - 1) % SLOT_BLOCK of block
     * (second - 1) / SLOT_BLOCK (see rider_slot). Growing a rider adds a block
     * and never moves a slot, so it leaves no freed slot arrays in the
     * heap. Only the small table of block pointers is reallocated. */
    struct slot **blocks;
    uint32_t block_count;
    uint32_t block_cap;
    int32_t slot_cap;   /* block_count * SLOT_BLOCK */
    int32_t min_second; /* 0 while the rider has no sample */
    int32_t max_second;
    int32_t final_second; /* largest second flagged final, or 0 */
    /* The times of the rider's first sample. Slots store their times as
     * offsets from these. */
    int64_t device_base;
    int64_t arrival_base;
    /* prefix[k] covers seconds 1 .. PREFIX_SPAN * (k + 1). The first
     * prefix_valid entries are up to date. */
    struct prefix *prefix;
    uint32_t prefix_cap;
    uint32_t prefix_valid;
    char *arena;
    uint32_t arena_len;
    uint32_t arena_cap;
    struct arena_text *names;
    uint32_t name_count;
    uint32_t name_cap;
    struct agg_id *classes;
    uint32_t class_count;
    uint32_t class_cap;
    struct exact_text *exacts; /* by second; stale where !SLOT_EXACT */
    uint32_t exact_count;
    uint32_t exact_cap;
    uint32_t result_class; /* position + 1 in agg.classes of the class whose
                              board counts this rider's total in this race;
                              0 while the race has no results */
};

struct race_second {
    int64_t max_arrival; /* of the samples at this second; INT64_MIN: none */
    int64_t ts;          /* max_arrival over seconds <= this one, cached */
    int32_t revision;
};

struct race {
    struct agg_id id;
    struct rider *riders;
    uint32_t rider_count;
    uint32_t rider_cap;
    struct id_index rider_index;
    struct race_second *seconds; /* seconds[second - 1] */
    int32_t second_cap;
    int32_t first_second; /* smallest sample second; 0 while empty */
    int32_t latest_second;
    int32_t published_from;    /* first published second; 0: none yet */
    int32_t published_through; /* last published second; 0: none yet */
    int32_t ts_valid_through;  /* race_second.ts valid through here */
    int64_t activity_ms;       /* stream time of the last applied sample */
    uint32_t active_riders;    /* riders with at least one sample */
    uint32_t final_riders;     /* riders with a sample flagged final */
    int32_t results_revision;  /* of the last results sent */
    int64_t class_ts;          /* results ts when the classes last saw it */
    uint8_t results_hash[32];  /* of the last results sent, revision left
                                  out */
    bool results_published;
    bool results_stale; /* a sample changed since the results were built */
    bool dirty;         /* state changed since the last flush */
    bool open;          /* listed in agg.open */
};

struct board_entry {
    int64_t total4;
    const struct agg_id *racer;
    uint32_t rider;
    int32_t latest;
};

/* ---- classes ------------------------------------------------------------ */

/* A race whose results counted the rider in the class, with the total. */
struct class_entry {
    uint32_t race; /* position in agg.races */
    int64_t total4;
};

/* The best output of a rider at one second, and the race that set it. */
struct history_cell {
    int32_t output4;
    uint32_t race; /* position + 1 in agg.races; 0: no output yet */
};

struct class_rider {
    struct agg_id id;
    struct class_entry *entries;
    uint32_t entry_count;
    uint32_t entry_cap;
    int64_t best;                 /* index into entries, or -1 */
    struct history_cell *history; /* history[second - 1] */
    int32_t history_len;
    uint32_t history_cap;
};

struct class_board {
    struct agg_id id;
    struct class_rider *riders;
    uint32_t rider_count;
    uint32_t rider_cap;
    struct id_index rider_index;
    int32_t revision; /* of the last board sent */
    uint8_t hash[32]; /* of the last board sent, revision left out */
    bool published;
    bool touched; /* may have changed in this call: compare at its end */
    bool dirty;   /* state changed since the last flush */
};

struct agg {
    struct agg_config cfg;
    struct agg_sink sink;
    int64_t stream_time_ms;
    struct race **races;
    uint32_t race_count;
    uint32_t race_cap;
    struct id_index race_index;
    uint32_t *open; /* positions of races with unpublished seconds */
    uint32_t open_count;
    uint32_t open_cap;
    struct board_entry *board;
    uint32_t board_cap;
    struct class_board **classes;
    uint32_t class_count;
    uint32_t class_cap;
    struct id_index class_index;
    uint32_t touched_classes; /* count of classes with touched set */
    struct strbuf doc;        /* message and state scratch */
    /* Alleycat scratch: the results object, the classes of one
     * leaderboard, and each rider's leaderboard position + 1 (0: not
     * listed), indexed like race.riders and all 0 between calls. */
    struct strbuf alleycat_results;
    const struct agg_id **alleycat_classes;
    uint32_t alleycat_class_cap;
    uint32_t *alleycat_listed_at;
    uint32_t alleycat_listed_cap;
};

/* ---- race.c ------------------------------------------------------------- */

/*
 * Grow an array of elements to hold at least need, by a quarter at a time
 * but never past limit. Returns 0, -ENOSPC when need passes limit, or -ENOMEM.
 */
int agg_grow(void **items, uint32_t *cap, uint32_t need, uint32_t limit,
             size_t size);

/* The race with this id, or NULL. */
struct race *race_find(const struct agg *agg, const struct agg_id *id);
/* Find or create the race. Returns 0, -ENOSPC past AGG_MAX_RACES, or
 * -ENOMEM. */
int race_get(struct agg *agg, const struct agg_id *id, struct race **out);
void race_free(struct race *race);
/* Find or create the rider. Returns its position in race->riders, -ENOSPC
 * past AGG_MAX_RACERS, or -ENOMEM. */
int64_t race_rider(struct race *race, const struct agg_id *id);
/* Position of the rider in race->riders, or -1. */
int64_t race_find_rider(const struct race *race, const struct agg_id *id);
/* Grow the per-second arrays of the race and, unless NULL, the rider
 * (slots and prefix) to hold second. Returns 0 or -ENOMEM. */
int race_reserve(struct agg *agg, struct race *race, struct rider *rider,
                 int32_t second);

/* A sample about to be stored, from a record or from a stored row. */
struct sample_in {
    int32_t second;
    const struct agg_id *class_id;
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
    bool exact4; /* both values have at most 4 decimals */
    bool final;
};

/*
 * Check the ranges of a sample and derive exact4. Returns 0, or -EINVAL
 * when a value is out of range or its exact text does not round to its
 * 4-decimal value.
 */
int sample_in_check(const struct agg *agg, struct sample_in *in);

/*
 * Store in as the sample of rider at in->second, new or replacing, and
 * update every cache that depends on it. Nothing is sent to the sink.
 * Returns 0, -ENOSPC when the rider has too many distinct names or
 * classIds (nothing changed), or -ENOMEM.
 */
int race_store_sample(struct agg *agg, struct race *race, uint32_t rider,
                      const struct sample_in *in);

/* Position of name in rider->names, adding it if needed. Returns -ENOSPC
 * past AGG_MAX_NAMES_PER_RIDER, or -ENOMEM. */
int rider_intern_name(struct rider *rider, const char *name, size_t len);
int rider_intern_class(struct rider *rider, const struct agg_id *class_id);
/* Append bytes to the arena. Returns the offset, or -ENOMEM. */
int64_t rider_arena_add(struct rider *rider, const void *bytes, size_t len);
/* The slot of second, which must be <= rider->slot_cap. */
static inline struct slot *rider_slot(const struct rider *rider, int32_t second)
{
    uint32_t i = (uint32_t)(second - 1);
    return &rider->blocks[i / SLOT_BLOCK][i % SLOT_BLOCK];
}

/* The uuid text of a slot and its length; a packed uuid is written to buf
 * with a NUL after it. */
const char *slot_uuid(const struct rider *rider, const struct slot *slot,
                      char buf[SLOT_UUID_CHARS + 1], size_t *len);
/* The exact deviceTimestamp and arrival time of a slot. */
int64_t slot_device_ts(const struct rider *rider, const struct slot *slot);
int64_t slot_arrival(const struct rider *rider, const struct slot *slot);

/* Total and latest present second of the rider at second (>= min). */
void rider_total_at(struct rider *rider, int32_t second, int64_t *total4,
                    int32_t *latest);
/* Forget cached totals that include second after its slot changed. */
void rider_invalidate(struct rider *rider, int32_t second);
/* Recompute final_second after the slot at second lost its final flag. */
void rider_update_final(struct rider *rider, int32_t second);

/* Largest arrival_ms of the race's samples at seconds <= second. */
int64_t race_ts_at(struct race *race, int32_t second);
/* Recompute max_arrival of one second from every rider's slot. */
void race_rescan_arrival(struct race *race, int32_t second);
/* Account a new sample at second in first/latest and max_arrival. */
void race_note_sample(struct race *race, int32_t second, int64_t arrival_ms);

/* List the race for idle closing if it has unpublished seconds or results.
 * Returns 0 or -ENOMEM. */
int agg_mark_open(struct agg *agg, struct race *race);
/* Whether the race still has seconds or results to publish. */
bool race_has_work(const struct race *race);
/* Position of race in agg->races. */
uint32_t agg_race_position(const struct agg *agg, const struct race *race);

/* Point *cadence and *resistance at the exact texts of the slot of second,
 * written into the buffers when the slot keeps only 4-decimal values. */
void slot_exact_texts(const struct rider *rider, const struct slot *slot,
                      int32_t second, char *cadence_buf, char *resistance_buf,
                      size_t buf_len, const char **cadence,
                      const char **resistance);
/* Fill row from a stored slot. uuid_buf (SLOT_UUID_TEXT + 1 bytes) takes
 * an unpacked uuid, and the other buffers regenerated exact texts. */
void slot_to_row(const struct race *race, const struct rider *rider,
                 const struct slot *slot, int32_t second,
                 struct agg_sample_row *row, char *uuid_buf, char *cadence_buf,
                 char *resistance_buf, size_t buf_len);

/* ---- board.c ------------------------------------------------------------ */

/* Build and send the leaderboard of one second, and its Alleycat messages
 * when cfg.alleycat is set. Returns 0 or the error. */
int board_publish(struct agg *agg, struct race *race, int32_t second);

/*
 * Write the results of the race with this revision into agg->doc and their
 * SHA-256, revision left out, into hash. Returns 0 or -ENOMEM.
 */
int results_write(struct agg *agg, struct race *race, int32_t revision,
                  uint8_t hash[32]);

/* SHA-256 of doc without the len bytes at skip_at. Returns 0, or -ENOMEM
 * when OpenSSL fails. */
int doc_hash(const struct strbuf *doc, size_t skip_at, size_t len,
             uint8_t hash[32]);

/* ---- alleycat.c --------------------------------------------------------- */

/*
 * Send one Alleycat results message per class among the first listed
 * entries of agg->board, the ranked leaderboard of second, in classId
 * order. Overwrites agg->doc. Returns 0, the sink's error, or -ENOMEM.
 */
int alleycat_publish(struct agg *agg, struct race *race, int32_t second,
                     uint32_t listed);

/* ---- results.c ---------------------------------------------------------- */

/*
 * Publish the race's results when they are due. The first time is when
 * every rider with a sample has sent "final", or when force is set (idle
 * close, close all). Later, when a sample changed and the message with it,
 * they go again with the revision raised. Updates the class boards and
 * history too. Returns 0, the sink's error, or -ENOMEM.
 */
int results_settle(struct agg *agg, struct race *race, bool force);

/*
 * Count every rider of the race, with the race's results, in the board of
 * the rider's class (the classId of the rider's last sample), and update
 * the rider's best total and history there. quiet sends no history rows
 * (restore). Returns 0, the sink's error, or -ENOMEM.
 */
int classes_update_race(struct agg *agg, struct race *race, bool quiet);

/* Send every touched class board whose message changed, in classId order.
 * Returns 0, the sink's error, or -ENOMEM. */
int classes_publish(struct agg *agg);

/* Send the state of every changed class, in classId order. */
int classes_flush(struct agg *agg);

/* Write the class board with this revision into agg->doc, and its hash. */
int class_write(struct agg *agg, struct class_board *board, int32_t revision,
                uint8_t hash[32]);

/* Find or create the class and set the revision of its last board sent.
 * Returns 0 or -ENOMEM. */
int class_restore(struct agg *agg, const struct agg_id *id, int32_t revision);

void classes_free(struct agg *agg);

/* ---- state.c ------------------------------------------------------------ */

/* Serialize the race state into agg->doc. Returns 0 or -ENOMEM. */
int state_write(struct agg *agg, const struct race *race);

#endif
