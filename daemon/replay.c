/*
 * `podium replay FILE...`: feed recordings through the pipeline of
 * `podium run`.
 *
 * A recording is JSON lines, one Kinesis record a line, with the field
 * names and types of the Kinesis API. The fields are ShardId,
 * SequenceNumber (decimal string), SubSequenceNumber (only on a user record
 * of a KPL aggregate), ApproximateArrivalTimestamp (seconds since the
 * epoch, a number with millisecond precision), PartitionKey and Data
 * (base64). `podium simulate --out` writes this format.
 *
 * Each line is parsed once. The first pass checks every line and writes
 * each good one, decoded, to a temporary spool file of its shard (in
 * $TMPDIR, else /tmp, unlinked at once), so a bad line under --on-bad-line
 * fail changes nothing in the store. Within one file, a line whose
 * sequence number is not after the line before it of the same shard is a
 * bad line too. Lines of only white space are ignored. The second pass
 * streams: each shard has its own cursor that reads the shard's spool,
 * which contains the shard's good lines in file order (files in the order
 * given). The cursors are merged in the order of the merge of `podium run`
 * with every record present: by arrival time, then by shard id. Memory
 * holds one Kinesis record per shard plus the jobs in flight, whatever the
 * size of the files; the spools take about the decoded size of the
 * records on disk.
 *
 * The merged records are cut into jobs of --batch-size Kinesis records,
 * and one last job closes every open second. A job may hold more records
 * than that, because it never ends between two records of one KPL
 * aggregate or between two records with the same arrival millisecond: the
 * pipeline orders records that share an arrival millisecond within a job.
 * Stream time comes only from the records' arrival times and no clock tick
 * is ever queued, so the same recording makes the same decisions, and
 * publishes the same bytes, at any batch size and speed.
 * --speed X only delays each job until its newest record is due.
 *
 * Data that is a KPL aggregate is split by kpl_deaggregate(), as the shard
 * reader does, into user records with sub-sequence numbers 0, 1, 2...
 *
 * No checkpoint is stored: the shard ids of a recording may be those of a
 * live stream whose checkpoints `podium run` keeps in the same store, and a
 * replayed position must not move them. A second replay of the same file
 * applies nothing twice because every record claims its idempotency key.
 *
 * The replay ends once the publisher has acknowledged every message of the
 * outbox, including messages left by an earlier run, or fails when
 * --publish-timeout seconds pass first. SIGINT or SIGTERM ends it once the
 * jobs in flight have committed, with exit status 128 plus the signal
 * number; the seconds still open stay open, so that replaying the same
 * files again finishes the race.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <float.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/aws.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/sjson.h"
#include "publisher/publisher.h"
#include "shardreader/kpl.h"
#include "store/idempotency.h"

/* Default and maximum of --publish-timeout, in seconds. */
#define REPLAY_PUBLISH_TIMEOUT_S     30
#define REPLAY_MAX_PUBLISH_TIMEOUT_S 86400
/* How often the loop checks progress and submits due jobs. */
#define REPLAY_TICK_MS 20
/* Maximum stream time that one job spans at --speed X > 0. */
#define REPLAY_SPAN_MS 100
/* Range of --speed other than 0. At the minimum, one minute of recording
 * takes about 17 hours to replay. */
#define REPLAY_MIN_SPEED 0.001
#define REPLAY_MAX_SPEED 1000000.0
/* Outbox rows loaded per query at start-up. */
#define REPLAY_OUTBOX_PAGE 1000
/* Maximum length of a value quoted in a bad-line message. */
#define REPLAY_QUOTE_MAX 60
/* Jobs submitted to the pipeline and not yet committed. Enough to keep
 * the worker busy while the loop builds the next one. */
#define REPLAY_JOBS_IN_FLIGHT 4
/* Minimum time between two redraws of the progress bar. */
#define REPLAY_PROGRESS_MS 250
/* Width of the bar itself, in characters. */
#define REPLAY_BAR_WIDTH 24
/* Bad lines reported one by one; the rest are only counted. */
#define REPLAY_BAD_LINES_SHOWN 20
/* Members of a line read without building a JSON document. A line with
 * more is parsed into one. A recording line has five or six. */
#define REPLAY_LINE_MEMBERS 16

enum replay_phase {
    REPLAY_APPLYING,   /* jobs queued, waiting for the pipeline */
    REPLAY_PUBLISHING, /* waiting for the publisher's acks */
    REPLAY_DELETING,   /* deleting the delivered outbox rows */
    REPLAY_CLOSING
};

enum replay_progress { PROGRESS_AUTO, PROGRESS_ALWAYS, PROGRESS_NEVER };

struct replay_options {
    int64_t batch_size; /* Kinesis records per job; 0: kinesis.max_records */
    double speed;       /* stream time per wall time; 0: as fast as possible */
    int64_t publish_timeout_s; /* time the publisher gets at the end */
    bool skip_bad_lines;
    enum replay_progress progress;
    char **files;
    size_t file_count;
};

/* A shard's position in one file: the sequence number of its last good
 * line and the number of that line. */
struct seq_position {
    bool set;
    size_t file;
    uint64_t line_no;
    int64_t subseq; /* -1: the line has no SubSequenceNumber */
    char seq[129];
};

/*
 * The fixed part of a spool entry, followed by seq_len bytes of
 * SequenceNumber, key_len bytes of PartitionKey and data_len bytes of
 * decoded Data. The spool lives only as long as the process, so the
 * fields are in the machine's own byte order.
 */
struct spool_entry {
    int64_t arrival_ms;
    int64_t subseq; /* -1 when the line has none */
    uint32_t seq_len;
    uint32_t key_len;
    uint32_t data_len;
    uint32_t unused; /* zero, so that the size is a multiple of 8 */
};

/*
 * The next records of one shard: the user records of the Kinesis record
 * read last, from the shard's own spool, so that shards laid out one after
 * the other in a file need no buffering.
 */
struct shard_cursor {
    char *shard_id;
    FILE *spool;              /* the shard's good lines, decoded */
    uint64_t spooled;         /* entries written by the first pass */
    uint64_t unspooled;       /* entries read back by the second pass */
    struct shard_batch *head; /* records not merged yet from next on */
    size_t next;
    struct shard_batch *spare; /* an emptied head, reused by load_head */
    bool merged_any;
    char prev_seq[129]; /* the record merged last, for KPL aggregates */
    int64_t prev_subseq;
    /* The last good line of the shard in one file, to check that the
     * sequence numbers grow. */
    struct seq_position checked;
};

/* A job being built from the merge. */
struct job_draft {
    struct pipeline_work *work;
    int64_t first_arrival_ms;
    int64_t newest_arrival_ms;
    int64_t last_arrival_ms; /* of the record added last */
    int64_t kinesis_records;
    uint64_t user_records;
};

/* The terminal progress bar on standard error. */
struct progress {
    bool enabled;
    bool drawn;          /* a bar is on the screen, without a newline */
    int64_t started_ms;  /* start of the current pass */
    int64_t drawn_ms;    /* time of the last redraw */
    uint64_t done_bytes; /* first pass */
    uint64_t total_bytes;
};

/*
 * Buffers of parse_line, reused for every line, and of the spool reads,
 * so that a record costs no allocation once they fit the longest one.
 */
struct line_scratch {
    char *strings; /* decoded JSON strings, one byte more than the line */
    size_t strings_cap;
    struct sjson_value members[REPLAY_LINE_MEMBERS];
    struct sjson_doc *doc; /* a line with more members, or NULL */
    uint8_t *data;         /* Data, base64-decoded */
    size_t data_cap;
};

struct replay {
    uv_loop_t loop;
    struct podium_config cfg;
    struct replay_options opts;
    struct shard_cursor *cursors;
    size_t cursor_count;
    size_t cursor_cap;
    const char *spool_dir; /* $TMPDIR, else /tmp */
    struct line_scratch scratch;
    struct store *store;
    struct pipeline *pipeline;
    struct publisher *publisher;
    struct aws_credentials creds;
    uv_timer_t tick;

    /* Jobs: the next one to submit, the record counts of those in flight
     * (they commit in submission order), and whether the input ended. */
    struct job_draft ready;
    uint64_t in_flight[REPLAY_JOBS_IN_FLIGHT];
    size_t in_flight_head;
    size_t in_flight_count;
    bool input_done;   /* every record went into a job */
    bool close_queued; /* the job that closes every second was queued */
    bool have_first_arrival;
    int64_t first_arrival_ms; /* of the first job: the --speed origin */
    uint64_t committed_user_records;
    struct progress progress;

    enum replay_phase phase;
    int exit_code;
    int interrupted; /* the signal that stopped the replay, or 0 */
    uv_signal_t sigint;
    uv_signal_t sigterm;
    bool summary_to_stderr; /* the messages go to standard output */
    int64_t started_ms;     /* wall time the first job was submitted */
    int64_t deadline_ms;
    int open_handles;

    uint64_t lines;
    uint64_t kinesis_records;
    uint64_t user_records;
    uint64_t bad_lines;
};

/* ---- the progress bar ---------------------------------------------- */

static void progress_init(struct replay *r)
{
    switch (r->opts.progress) {
    case PROGRESS_ALWAYS:
        r->progress.enabled = true;
        break;
    case PROGRESS_NEVER:
        r->progress.enabled = false;
        break;
    case PROGRESS_AUTO:
        r->progress.enabled = isatty(STDERR_FILENO) == 1;
        break;
    }
}

/* Format a number of seconds as "M:SS" or "H:MM:SS". */
static void format_duration(double seconds, char *out, size_t out_len)
{
    if (!isfinite(seconds) || seconds < 0 || seconds > 359999) {
        snprintf(out, out_len, "-:--");
        return;
    }
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(out, out_len, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60,
                 s % 60);
    else
        snprintf(out, out_len, "%ld:%02ld", s / 60, s % 60);
}

/*
 * Draw one line: what runs, the percentage and bar of done out of total,
 * the amounts in unit (done and total divided by scale), the rate and the
 * time left. It is the status line of common/log.h, so it replaces the
 * line drawn before, and log lines erase it and draw it again below them.
 */
static void progress_draw(struct replay *r, const char *what, uint64_t done,
                          uint64_t total, const char *unit, double scale,
                          int64_t now)
{
    struct progress *p = &r->progress;
    double fraction = total > 0 ? (double)done / (double)total : 1.0;
    if (fraction > 1)
        fraction = 1;
    char bar[REPLAY_BAR_WIDTH + 1];
    int filled = (int)(fraction * REPLAY_BAR_WIDTH);
    for (int i = 0; i < REPLAY_BAR_WIDTH; i++)
        bar[i] = i < filled ? '#' : '-';
    bar[REPLAY_BAR_WIDTH] = '\0';

    double elapsed_s = (double)(now - p->started_ms) / 1000.0;
    double per_s = elapsed_s > 0 ? (double)done / elapsed_s : 0;
    char left[24];
    format_duration(per_s > 0 && done <= total ? (double)(total - done) / per_s
                                               : NAN,
                    left, sizeof left);
    int decimals = scale > 1 ? 1 : 0;
    char text[256];
    snprintf(text, sizeof text,
             "podium replay: %s %3d%% [%s] %.*f/%.*f %s, %.*f %s/s, %s left",
             what, (int)(fraction * 100), bar, decimals, (double)done / scale,
             decimals, (double)total / scale, unit, decimals, per_s / scale,
             unit, left);
    fflush(stderr);
    log_status_show(text);
    p->drawn = true;
    p->drawn_ms = now;
}

/* Tell whether the bar is due for a redraw. */
static bool progress_due(const struct replay *r, int64_t now)
{
    return r->progress.enabled &&
           (!r->progress.drawn ||
            now - r->progress.drawn_ms >= REPLAY_PROGRESS_MS);
}

/* Draw the first pass: bytes checked out of all. */
static void progress_check(struct replay *r, int64_t now, bool force)
{
    if (force ? r->progress.enabled : progress_due(r, now))
        progress_draw(r, "checking", r->progress.done_bytes,
                      r->progress.total_bytes, "MB", 1e6, now);
}

/* Draw the second pass: user records committed out of all. */
static void progress_replay(struct replay *r, int64_t now, bool force)
{
    if (force ? r->progress.enabled : progress_due(r, now))
        progress_draw(r, "replaying", r->committed_user_records,
                      r->user_records, "records", 1, now);
}

/* End the bar's line, so that what is printed next starts on its own
 * line. */
static void progress_end(struct replay *r)
{
    if (!r->progress.drawn)
        return;
    log_status_end(true);
    r->progress.drawn = false;
}

/* Erase the bar, which shows a state that did not finish. */
static void progress_erase(struct replay *r)
{
    if (!r->progress.drawn)
        return;
    log_status_end(false);
    r->progress.drawn = false;
}

/* ---- reading the recordings ---------------------------------------- */

/*
 * A short rendering of v for error messages: a number as written, a string
 * in quotes with control bytes shown as '?', anything else by its kind.
 */
static void quote_value(const struct sjson_value *v, char *out, size_t out_len)
{
    static const char *const kinds[] = {
        [SJSON_NULL] = "null",        [SJSON_FALSE] = "false",
        [SJSON_TRUE] = "true",        [SJSON_ARRAY] = "an array",
        [SJSON_OBJECT] = "an object",
    };
    if (v == NULL) {
        snprintf(out, out_len, "nothing");
        return;
    }
    if (v->type != SJSON_NUMBER && v->type != SJSON_STRING) {
        snprintf(out, out_len, "%s", kinds[v->type]);
        return;
    }

    char text[REPLAY_QUOTE_MAX + 1];
    size_t n = v->len < REPLAY_QUOTE_MAX ? v->len : REPLAY_QUOTE_MAX;
    for (size_t i = 0; i < n; i++)
        text[i] = (unsigned char)v->str[i] < 0x20 ? '?' : v->str[i];
    text[n] = '\0';
    const char *quote = v->type == SJSON_STRING ? "\"" : "";
    snprintf(out, out_len, "%s%s%s%s", quote, text, quote,
             n < v->len ? "..." : "");
}

static bool is_string(const struct sjson_value *v)
{
    return v != NULL && v->type == SJSON_STRING;
}

/* A parsed line: pointers into the line_scratch that parsed it, valid
 * until it parses the next line. */
struct line_record {
    const char *shard_id;
    const char *seq;
    int64_t subseq; /* -1 when the line has none */
    int64_t arrival_ms;
    const char *partition_key;
    const uint8_t *data; /* Data, base64-decoded */
    size_t len;
};

/* Make *buf hold at least need bytes. Returns 0, or -1 when out of
 * memory, leaving *buf as it was. */
static int reserve_bytes(void **buf, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t grown = *cap * 2 > need ? *cap * 2 : need;
    void *p = realloc(*buf, grown);
    if (p == NULL)
        return -1;
    *buf = p;
    *cap = grown;
    return 0;
}

/*
 * Convert a JSON number token of len bytes (checked by the parser) to the
 * double that strtod gives. A token without an exponent and with at most
 * 15 digits is an integer below 2^53 over a power of ten up to 10^15.
 * Both are exact doubles, so one IEEE division rounds the quotient
 * correctly, as strtod does. Other tokens go to strtod.
 */
static double number_to_double(const char *token, size_t len)
{
#if FLT_EVAL_METHOD == 0
    static const double powers_of_ten[] = {1e0,  1e1,  1e2,  1e3, 1e4,  1e5,
                                           1e6,  1e7,  1e8,  1e9, 1e10, 1e11,
                                           1e12, 1e13, 1e14, 1e15};
    const char *s = token, *end = token + len;
    bool negative = s < end && *s == '-';
    bool point = false;
    uint64_t mantissa = 0;
    int digits = 0, fraction_digits = 0;

    for (s += negative; s < end; s++) {
        if (*s == '.' && !point) {
            point = true;
            continue;
        }
        if (*s < '0' || *s > '9' || digits == 15)
            return strtod(token, NULL);
        mantissa = mantissa * 10 + (uint64_t)(*s - '0');
        digits++;
        fraction_digits += point;
    }
    if (digits == 0)
        return strtod(token, NULL);
    double value = (double)mantissa / powers_of_ten[fraction_digits];
    return negative ? -value : value;
#else
    /* Extended precision in intermediate results could round twice. */
    (void)len;
    return strtod(token, NULL);
#endif
}

/* Tell whether the n bytes of s (NUL-terminated) are all decimal digits,
 * with at least one. strspn stops at the NUL, so a NUL inside s fails. */
static bool all_digits(const char *s, size_t n)
{
    return n > 0 && strspn(s, "0123456789") == n;
}

/* The members of a line that check_fields reads. */
enum line_field {
    FIELD_SHARD_ID,
    FIELD_SEQUENCE_NUMBER,
    FIELD_SUB_SEQUENCE_NUMBER,
    FIELD_ARRIVAL_TIMESTAMP,
    FIELD_PARTITION_KEY,
    FIELD_DATA,
    FIELD_COUNT
};

/*
 * Find the members of the object root that check_fields reads, in one
 * pass over its members, and set the others in found to NULL. The names
 * differ in length, so the length picks the one name to compare. The
 * parser rejects repeated names, so this finds what sjson_object_get
 * finds.
 */
static void find_fields(const struct sjson_value *root,
                        const struct sjson_value *found[FIELD_COUNT])
{
    static const char *const names[FIELD_COUNT] = {
        [FIELD_SHARD_ID] = "ShardId",
        [FIELD_SEQUENCE_NUMBER] = "SequenceNumber",
        [FIELD_SUB_SEQUENCE_NUMBER] = "SubSequenceNumber",
        [FIELD_ARRIVAL_TIMESTAMP] = "ApproximateArrivalTimestamp",
        [FIELD_PARTITION_KEY] = "PartitionKey",
        [FIELD_DATA] = "Data",
    };

    for (size_t f = 0; f < FIELD_COUNT; f++)
        found[f] = NULL;
    for (size_t i = 0; root->items != NULL && i < root->count; i++) {
        const struct sjson_value *member = &root->items[i];
        enum line_field f;
        switch (member->key_len) {
        case 7:
            f = FIELD_SHARD_ID;
            break;
        case 14:
            f = FIELD_SEQUENCE_NUMBER;
            break;
        case 17:
            f = FIELD_SUB_SEQUENCE_NUMBER;
            break;
        case 27:
            f = FIELD_ARRIVAL_TIMESTAMP;
            break;
        case 12:
            f = FIELD_PARTITION_KEY;
            break;
        case 4:
            f = FIELD_DATA;
            break;
        default:
            continue;
        }
        if (memcmp(member->key, names[f], member->key_len) == 0)
            found[f] = member;
    }
}

/*
 * Check the fields of one line and decode its Data into s->data. Returns
 * 0, or -1 with what was wrong, the value and what to do in err.
 */
static int check_fields(const struct sjson_value *root, struct line_scratch *s,
                        struct line_record *out, char *err, size_t err_len)
{
    char q[REPLAY_QUOTE_MAX + 8];
    const struct sjson_value *v, *found[FIELD_COUNT];

    if (root->type != SJSON_OBJECT) {
        quote_value(root, q, sizeof q);
        snprintf(err, err_len, "expected a JSON object, got %s", q);
        return -1;
    }
    find_fields(root, found);
    v = found[FIELD_SHARD_ID];
    if (!is_string(v) || v->len == 0 || strlen(v->str) != v->len) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "ShardId must be a non-empty string without U+0000, got %s",
                 q);
        return -1;
    }
    out->shard_id = v->str;
    v = found[FIELD_SEQUENCE_NUMBER];
    if (!is_string(v) || !all_digits(v->str, v->len) || v->len > 128) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "SequenceNumber must be a string of up to 128 decimal "
                 "digits, got %s",
                 q);
        return -1;
    }
    out->seq = v->str;
    v = found[FIELD_SUB_SEQUENCE_NUMBER];
    out->subseq = -1;
    if (v != NULL) {
        char *end = NULL;
        long long subseq = -1;
        errno = 0;
        if (v->type == SJSON_NUMBER && v->str[0] != '-' &&
            strcspn(v->str, ".eE") == v->len)
            subseq = strtoll(v->str, &end, 10);
        if (subseq < 0 || errno != 0 || end != v->str + v->len) {
            quote_value(v, q, sizeof q);
            snprintf(err, err_len,
                     "SubSequenceNumber must be a non-negative integer, got "
                     "%s; leave it out for a record that is not a user "
                     "record of a KPL aggregate",
                     q);
            return -1;
        }
        out->subseq = (int64_t)subseq;
    }
    v = found[FIELD_ARRIVAL_TIMESTAMP];
    /* The same double as a JSON library would give, from the exact text. */
    double seconds = v != NULL && v->type == SJSON_NUMBER
                         ? number_to_double(v->str, v->len)
                         : -1;
    if (v == NULL || v->type != SJSON_NUMBER || !isfinite(seconds) ||
        seconds < 0 || seconds > 253402300799.0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "ApproximateArrivalTimestamp must be a number of seconds "
                 "since the epoch, such as 1620824038.331, got %s",
                 q);
        return -1;
    }
    out->arrival_ms = llround(seconds * 1000.0);
    v = found[FIELD_PARTITION_KEY];
    if (!is_string(v) || v->len == 0 || strlen(v->str) != v->len ||
        v->len > KPL_MAX_PARTITION_KEY_BYTES) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "PartitionKey must be a non-empty string without U+0000 of at "
                 "most 1024 "
                 "bytes, got %s",
                 q);
        return -1;
    }
    out->partition_key = v->str;
    v = found[FIELD_DATA];
    if (!is_string(v)) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len, "Data must be a base64 string, got %s", q);
        return -1;
    }
    size_t n = v->len;
    if (reserve_bytes((void **)&s->data, &s->data_cap,
                      BASE64_DECODED_MAX(n) + 1) != 0) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (base64_decode(v->str, n, s->data, &out->len) != 0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "Data is not valid base64 (standard alphabet, with "
                 "padding): %s",
                 q);
        return -1;
    }
    out->data = s->data;
    return 0;
}

/*
 * Open an empty spool file in r->spool_dir, already unlinked so that it
 * goes away with the process. Returns NULL with errno set on failure.
 */
static FILE *spool_open(const struct replay *r)
{
    char path[PATH_MAX];
    int n =
        snprintf(path, sizeof path, "%s/podium-replay-XXXXXX", r->spool_dir);
    if (n < 0 || (size_t)n >= sizeof path) {
        errno = ENAMETOOLONG;
        return NULL;
    }
    int fd = mkstemp(path);
    if (fd < 0)
        return NULL;
    /* A spool that stays in the folder would outlive the replay. */
    FILE *f = unlink(path) == 0 ? fdopen(fd, "w+b") : NULL;
    if (f == NULL) {
        int saved = errno;
        close(fd);
        unlink(path);
        errno = saved;
    }
    return f;
}

/* The cursor of shard_id, created with its spool when it is new. NULL with
 * what went wrong in err. */
static struct shard_cursor *cursor_for(struct replay *r, const char *shard_id,
                                       char *err, size_t err_len)
{
    for (size_t i = 0; i < r->cursor_count; i++) {
        if (strcmp(r->cursors[i].shard_id, shard_id) == 0)
            return &r->cursors[i];
    }
    if (r->cursor_count == r->cursor_cap) {
        size_t cap = r->cursor_cap ? r->cursor_cap * 2 : 8;
        struct shard_cursor *p = realloc(r->cursors, cap * sizeof *p);
        if (p == NULL)
            return NULL;
        r->cursors = p;
        r->cursor_cap = cap;
    }
    struct shard_cursor *c = &r->cursors[r->cursor_count];
    memset(c, 0, sizeof *c);
    c->shard_id = strdup(shard_id);
    if (c->shard_id == NULL) {
        snprintf(err, err_len, "out of memory");
        return NULL;
    }
    c->spool = spool_open(r);
    if (c->spool == NULL) {
        snprintf(err, err_len,
                 "cannot create a temporary file in %s for the records of "
                 "shard %s: %s; set TMPDIR to a writable folder with room "
                 "for the decoded records (about two thirds of the "
                 "recordings' size)",
                 r->spool_dir, shard_id, strerror(errno));
        free(c->shard_id);
        return NULL;
    }
    r->cursor_count++;
    return c;
}

static void free_cursors(struct replay *r)
{
    for (size_t i = 0; i < r->cursor_count; i++) {
        struct shard_cursor *c = &r->cursors[i];
        if (c->spool != NULL)
            fclose(c->spool);
        shard_batch_free(c->head);
        shard_batch_free(c->spare);
        free(c->shard_id);
    }
    free(r->cursors);
    r->cursors = NULL;
    r->cursor_count = r->cursor_cap = 0;
    free(r->scratch.strings);
    sjson_doc_free(r->scratch.doc);
    free(r->scratch.data);
    memset(&r->scratch, 0, sizeof r->scratch);
}

/*
 * Parse and check one line with the buffers of s. Returns 0 with rec
 * filled in, or -1 with what was wrong, the value and what to do in err.
 * The line's members are read without building a JSON document, unless
 * there are more than REPLAY_LINE_MEMBERS of them. Both ways accept and
 * reject the same lines with the same messages.
 */
static int parse_line(struct line_scratch *s, const char *line, size_t n,
                      struct line_record *rec, char *err, size_t err_len)
{
    /* A line needs no more bytes than its own record, and no nesting
     * beyond a few levels. */
    struct sjson_limits limits = {.max_bytes = n + 1, .max_depth = 8};
    struct sjson_err jerr;
    struct sjson_value flat;
    const struct sjson_value *root = &flat;

    sjson_doc_free(s->doc);
    s->doc = NULL;
    if (reserve_bytes((void **)&s->strings, &s->strings_cap, n + 1) != 0) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (sjson_parse_flat(line, n, &limits, s->strings, s->members,
                         REPLAY_LINE_MEMBERS, &flat, &jerr) != SJSON_OK) {
        snprintf(err, err_len, "not JSON: %s at byte %zu", jerr.message,
                 jerr.offset + 1);
        return -1;
    }
    if (flat.count > 0 && flat.items == NULL) {
        /* More members than s->members holds. The line parsed once
         * already, so only running out of memory fails here. */
        if (sjson_parse(line, n, &limits, &s->doc, &jerr) != SJSON_OK) {
            snprintf(err, err_len, "out of memory");
            return -1;
        }
        root = sjson_doc_root(s->doc);
    }
    return check_fields(root, s, rec, err, err_len);
}

/*
 * Split the Data of rec into user records when it is a KPL aggregate.
 * Returns the kind, with *users and *count set for KPL_AGGREGATE. A line
 * with SubSequenceNumber is already one user record.
 */
static enum kpl_result split_record(const struct line_record *rec,
                                    struct kpl_user_record **users,
                                    size_t *count)
{
    *users = NULL;
    *count = 0;
    if (rec->subseq >= 0)
        return KPL_NOT_AGGREGATE;
    return kpl_deaggregate(rec->data, rec->len, users, count);
}

/* Write what went wrong with c's spool into err. */
static void spool_error(const struct replay *r, const struct shard_cursor *c,
                        const char *doing, char *err, size_t err_len)
{
    snprintf(err, err_len,
             "cannot %s the temporary file in %s that holds the records of "
             "shard %s: %s; set TMPDIR to a folder with room for the "
             "decoded records (about two thirds of the recordings' size)",
             doing, r->spool_dir, c->shard_id,
             errno != 0 ? strerror(errno) : "unexpected end of file");
}

/*
 * Count one good line of the first pass and write it to its shard's
 * spool. After a bad line under --on-bad-line fail nothing will be
 * applied, so later lines are only counted. Returns 0, or -1 with what
 * went wrong in err.
 */
static int note_good_line(struct replay *r, struct shard_cursor *c,
                          const struct line_record *rec, char *err,
                          size_t err_len)
{
    struct kpl_user_record *users;
    size_t count;
    enum kpl_result kind = split_record(rec, &users, &count);
    if (kind == KPL_ERROR) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    r->kinesis_records++;
    r->user_records += kind == KPL_AGGREGATE ? count : 1;
    free(users);
    if (r->bad_lines > 0 && !r->opts.skip_bad_lines)
        return 0;

    struct spool_entry e = {
        .arrival_ms = rec->arrival_ms,
        .subseq = rec->subseq,
        .seq_len = (uint32_t)strlen(rec->seq),
        .key_len = (uint32_t)strlen(rec->partition_key),
        .data_len = (uint32_t)rec->len,
    };
    errno = 0;
    if (fwrite(&e, sizeof e, 1, c->spool) != 1 ||
        fwrite(rec->seq, 1, e.seq_len, c->spool) != e.seq_len ||
        fwrite(rec->partition_key, 1, e.key_len, c->spool) != e.key_len ||
        fwrite(rec->data, 1, e.data_len, c->spool) != e.data_len) {
        spool_error(r, c, "write to", err, err_len);
        return -1;
    }
    c->spooled++;
    return 0;
}

/* Tell whether a line contains only white space, such as the empty line
 * that many editors leave at the end of a file. */
static bool is_blank(const char *line, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (line[i] != ' ' && line[i] != '\t' && line[i] != '\r' &&
            line[i] != '\n')
            return false;
    }
    return true;
}

/* Copy the NUL-terminated seq into out (out_len bytes), cut to fit as
 * snprintf would, without the cost of snprintf on the per-record path. */
static void copy_seq(char *out, size_t out_len, const char *seq)
{
    size_t n = strnlen(seq, out_len - 1);

    memcpy(out, seq, n);
    out[n] = '\0';
}

/* Compare two strings of decimal digits as numbers: <0, 0 or >0. */
static int compare_seq(const char *a, const char *b)
{
    while (*a == '0')
        a++;
    while (*b == '0')
        b++;
    size_t la = strlen(a), lb = strlen(b);
    if (la != lb)
        return la < lb ? -1 : 1;
    return strcmp(a, b);
}

/* Write "SequenceNumber S" or "SequenceNumber S SubSequenceNumber N". */
static void format_position(const char *seq, int64_t subseq, char *out,
                            size_t out_len)
{
    if (subseq < 0)
        snprintf(out, out_len, "SequenceNumber %s", seq);
    else
        snprintf(out, out_len, "SequenceNumber %s SubSequenceNumber %" PRId64,
                 seq, subseq);
}

/*
 * Check that rec, at line line_no of file, comes after the shard's line at
 * *last when that is in the same file: a greater SequenceNumber, or the
 * same one with a greater SubSequenceNumber (user records of one KPL
 * aggregate). Moves *last to rec when it does. Returns 0, or -1 with the
 * reason in err.
 */
static int check_order(struct seq_position *last, size_t file, uint64_t line_no,
                       const struct line_record *rec, char *err, size_t err_len)
{
    if (last->set && last->file == file) {
        int cmp = compare_seq(rec->seq, last->seq);
        bool after =
            cmp > 0 || (cmp == 0 && rec->subseq >= 0 && last->subseq >= 0 &&
                        rec->subseq > last->subseq);
        if (!after) {
            char here[200], before[200];
            format_position(rec->seq, rec->subseq, here, sizeof here);
            format_position(last->seq, last->subseq, before, sizeof before);
            snprintf(err, err_len,
                     "%s of shard %s is not after %s on line %" PRIu64
                     "; within one file the lines of a shard must be in "
                     "sequence order, each record once",
                     here, rec->shard_id, before, last->line_no);
            return -1;
        }
    }
    last->set = true;
    last->file = file;
    last->line_no = line_no;
    last->subseq = rec->subseq;
    copy_seq(last->seq, sizeof last->seq, rec->seq);
    return 0;
}

/* Count a bad line of the first pass and print it, unless
 * REPLAY_BAD_LINES_SHOWN were printed already. */
static void report_bad_line(struct replay *r, const char *path,
                            uint64_t line_no, const char *err)
{
    r->bad_lines++;
    if (r->bad_lines > REPLAY_BAD_LINES_SHOWN)
        return;
    progress_erase(r);
    fprintf(stderr, "podium replay: %s:%" PRIu64 ": %s%s\n", path, line_no, err,
            r->opts.skip_bad_lines ? "; line skipped" : "");
}

/* The signal that arrived during the first pass, or 0. The pass runs
 * before the event loop, so a plain handler sets this flag. */
static volatile sig_atomic_t check_signal;

static void on_check_signal(int signum)
{
    check_signal = signum;
}

/*
 * Check one line of the first pass. Returns 0 with rec and *cursor, the
 * cursor of its shard, filled in; -1 for a bad line and -2 when the
 * replay cannot go on, with what was wrong in err.
 */
static int check_line(struct replay *r, size_t file, const char *line, size_t n,
                      uint64_t line_no, struct line_record *rec,
                      struct shard_cursor **cursor, char *err, size_t err_len)
{
    if (line_no == 1 && n >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
        snprintf(err, err_len,
                 "the file starts with a UTF-8 byte order mark (bytes EF BB "
                 "BF), which a recording must not contain; save the file "
                 "without it, for example with sed -i '1s/^\\xEF\\xBB\\xBF//' "
                 "FILE");
        return -1;
    }
    if (parse_line(&r->scratch, line, n, rec, err, err_len) != 0)
        return strcmp(err, "out of memory") == 0 ? -2 : -1;
    struct shard_cursor *c = cursor_for(r, rec->shard_id, err, err_len);
    if (c == NULL)
        return -2;
    *cursor = c;
    return check_order(&c->checked, file, line_no, rec, err, err_len);
}

/*
 * First pass over one file: check every line, count the records and note
 * where each shard's lines lie. Lines of only white space are ignored. A
 * bad line is reported and counted, and the pass goes on, so that every
 * bad line is known before the replay fails under --on-bad-line fail.
 * Returns 0; 1 on a runtime failure; 2 when the file cannot be read;
 * 128 plus the signal number after SIGINT or SIGTERM.
 */
static int check_file(struct replay *r, size_t file)
{
    const char *path = r->opts.files[file];
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        fprintf(stderr,
                "podium replay: cannot read %s: %s; check the path and its "
                "permissions\n",
                path, strerror(errno));
        return 2;
    }
    char *line = NULL, err[768];
    size_t cap = 0;
    ssize_t n;
    uint64_t line_no = 0;
    int rc = 0;

    while (rc == 0 && (n = getline(&line, &cap, f)) >= 0) {
        struct line_record rec = {0};
        struct shard_cursor *c = NULL;
        line_no++;
        r->lines++;
        int checked = is_blank(line, (size_t)n)
                          ? 1 /* nothing to apply and nothing to report */
                          : check_line(r, file, line, (size_t)n, line_no, &rec,
                                       &c, err, sizeof err);
        if (checked == 0 && note_good_line(r, c, &rec, err, sizeof err) != 0)
            checked = -2;
        if (checked == -1) {
            report_bad_line(r, path, line_no, err);
        } else if (checked == -2) {
            /* A spool's message names its folder and shard, not a line. */
            progress_erase(r);
            if (strcmp(err, "out of memory") == 0)
                fprintf(stderr, "podium replay: %s:%" PRIu64 ": %s\n", path,
                        line_no, err);
            else
                fprintf(stderr, "podium replay: %s\n", err);
            rc = 1;
        }
        r->progress.done_bytes += (uint64_t)n;
        progress_check(r, log_now_ms(), false);
        if (rc == 0 && check_signal != 0)
            rc = 128 + check_signal;
    }
    if (rc == 0 && ferror(f)) {
        progress_erase(r);
        fprintf(stderr, "podium replay: failed to read %s: %s\n", path,
                strerror(errno));
        rc = 2;
    }
    free(line);
    fclose(f);
    return rc;
}

/* Append the user records of rec to a new head of c. Returns 0 or -1 when
 * out of memory. */
static int load_head(struct shard_cursor *c, const struct line_record *rec)
{
    struct kpl_user_record *users;
    size_t count;
    enum kpl_result kind = split_record(rec, &users, &count);
    if (kind == KPL_ERROR)
        return -1;
    c->head = c->spare != NULL ? c->spare : shard_batch_new(c->shard_id);
    c->spare = NULL;
    c->next = 0;
    int rc = c->head == NULL ? -1 : 0;
    if (rc == 0 && kind == KPL_NOT_AGGREGATE)
        rc = shard_batch_add(c->head, rec->data, rec->len, rec->seq,
                             rec->subseq < 0 ? 0 : rec->subseq, rec->arrival_ms,
                             rec->partition_key);
    char key[KPL_MAX_PARTITION_KEY_BYTES + 1];
    for (size_t i = 0; rc == 0 && kind == KPL_AGGREGATE && i < count; i++) {
        /* kpl.h caps keys at KPL_MAX_PARTITION_KEY_BYTES. */
        memcpy(key, users[i].partition_key, users[i].partition_key_len);
        key[users[i].partition_key_len] = '\0';
        rc = shard_batch_add(c->head, users[i].data, users[i].len, rec->seq,
                             (int64_t)i, rec->arrival_ms, key);
    }
    free(users);
    return rc == 0 ? 0 : -1;
}

/*
 * Read the next Kinesis record of c's shard from its spool into c->head.
 * Returns 1 when one was read, 0 when the shard has no more, -1 after
 * printing why.
 */
static int read_next_record(struct replay *r, struct shard_cursor *c)
{
    char err[768];
    struct line_scratch *s = &r->scratch;
    struct spool_entry e;

    if (c->unspooled == c->spooled)
        return 0;
    errno = 0;
    if (fread(&e, sizeof e, 1, c->spool) != 1) {
        spool_error(r, c, "read", err, sizeof err);
        goto failed;
    }
    /* Room for both texts with their NULs, and for the data. */
    size_t texts = (size_t)e.seq_len + e.key_len + 2;
    if (reserve_bytes((void **)&s->strings, &s->strings_cap, texts) != 0 ||
        reserve_bytes((void **)&s->data, &s->data_cap,
                      (size_t)e.data_len + 1) != 0) {
        snprintf(err, sizeof err, "out of memory");
        goto failed;
    }
    char *seq = s->strings, *key = s->strings + e.seq_len + 1;
    errno = 0;
    if (fread(seq, 1, e.seq_len, c->spool) != e.seq_len ||
        fread(key, 1, e.key_len, c->spool) != e.key_len ||
        fread(s->data, 1, e.data_len, c->spool) != e.data_len) {
        spool_error(r, c, "read", err, sizeof err);
        goto failed;
    }
    seq[e.seq_len] = '\0';
    key[e.key_len] = '\0';
    c->unspooled++;

    struct line_record rec = {
        .shard_id = c->shard_id,
        .seq = seq,
        .subseq = e.subseq,
        .arrival_ms = e.arrival_ms,
        .partition_key = key,
        .data = s->data,
        .len = e.data_len,
    };
    if (load_head(c, &rec) == 0)
        return 1;
    snprintf(err, sizeof err, "out of memory");
failed:
    progress_erase(r);
    fprintf(stderr, "podium replay: shard %s: %s\n", c->shard_id, err);
    return -1;
}

/* Make c->head hold a record not yet merged, unless the shard has no more.
 * Returns 0 or -1 after printing why. */
static int fill_cursor(struct replay *r, struct shard_cursor *c)
{
    while (c->head == NULL || c->next >= c->head->count) {
        if (c->head != NULL) {
            shard_batch_clear(c->head);
            c->spare = c->head;
            c->head = NULL;
        }
        int rc = read_next_record(r, c);
        if (rc <= 0)
            return rc;
    }
    return 0;
}

/*
 * The cursor whose next record comes first in the order of the merge of
 * `podium run` (daemon/merge.c) once every record is held: by arrival
 * time, then by shard id. *out is NULL when every record was merged.
 * Returns 0 or -1 after printing why.
 */
static int first_cursor(struct replay *r, struct shard_cursor **out)
{
    struct shard_cursor *best = NULL;
    *out = NULL;
    for (size_t i = 0; i < r->cursor_count; i++) {
        struct shard_cursor *c = &r->cursors[i];
        if (fill_cursor(r, c) != 0)
            return -1;
        if (c->head == NULL)
            continue;
        if (best == NULL) {
            best = c;
            continue;
        }
        int64_t a = c->head->records[c->next].arrival_ms;
        int64_t b = best->head->records[best->next].arrival_ms;
        if (a < b || (a == b && strcmp(c->shard_id, best->shard_id) < 0))
            best = c;
    }
    *out = best;
    return 0;
}

/* Tell whether rec is a later user record of the same KPL aggregate as the
 * record of c merged last, so no job may start between them. */
static bool continues_aggregate(const struct shard_cursor *c,
                                const struct shard_record *rec)
{
    return c->merged_any && strcmp(c->prev_seq, rec->seq) == 0 &&
           rec->subseq > c->prev_subseq;
}

/* ---- cutting the merge into jobs ------------------------------------ */

static void draft_free(struct job_draft *draft)
{
    pipeline_work_free(draft->work);
    memset(draft, 0, sizeof *draft);
}

/*
 * Tell whether a record arriving at arrival_ms starts a new job. It does
 * when the draft contains batch_size Kinesis records or, at --speed X > 0,
 * spans REPLAY_SPAN_MS of stream time, so that a job waits for its newest
 * record at most that long. Never between two records of one arrival
 * millisecond: the pipeline puts those in a canonical order only within a
 * job.
 */
static bool starts_job(const struct replay *r, const struct job_draft *draft,
                       int64_t batch_size, int64_t arrival_ms)
{
    if (arrival_ms == draft->last_arrival_ms)
        return false;
    if (draft->kinesis_records >= batch_size)
        return true;
    return r->opts.speed > 0 &&
           arrival_ms - draft->first_arrival_ms >= REPLAY_SPAN_MS;
}

/* The segment of shard_id at the end of the draft. NULL when out of
 * memory. */
static struct shard_batch *segment_for(struct job_draft *draft,
                                       const char *shard_id)
{
    struct pipeline_work *work = draft->work;
    if (work->segment_count > 0) {
        struct shard_batch *last = work->segments[work->segment_count - 1];
        if (strcmp(last->shard_id, shard_id) == 0)
            return last;
    }
    struct shard_batch **p =
        realloc(work->segments, (work->segment_count + 1) * sizeof *p);
    if (p == NULL)
        return NULL;
    work->segments = p;
    struct shard_batch *segment = shard_batch_new(shard_id);
    if (segment == NULL)
        return NULL;
    work->segments[work->segment_count++] = segment;
    return segment;
}

/* Move the next record of c to the draft. Returns 0 or -1 when out of
 * memory. */
static int draft_add(struct job_draft *draft, struct shard_cursor *c,
                     bool continued)
{
    const struct shard_record *rec = &c->head->records[c->next];
    if (draft->work == NULL) {
        draft->work = calloc(1, sizeof *draft->work);
        if (draft->work == NULL)
            return -1;
        draft->first_arrival_ms = draft->newest_arrival_ms = rec->arrival_ms;
    }
    struct shard_batch *segment = segment_for(draft, c->shard_id);
    if (segment == NULL)
        return -1;
    if (rec->arrival_ms > draft->newest_arrival_ms)
        draft->newest_arrival_ms = rec->arrival_ms;
    draft->last_arrival_ms = rec->arrival_ms;
    copy_seq(c->prev_seq, sizeof c->prev_seq, rec->seq);
    c->prev_subseq = rec->subseq;
    /* The move empties rec, so it is read only above. The segment has no
     * checkpoint: draft_finish would drop it anyway. */
    if (shard_batch_move(segment, c->head, c->next) != 0)
        return -1;
    if (!continued)
        draft->kinesis_records++;
    draft->user_records++;
    c->merged_any = true;
    c->next++;
    return 0;
}

/*
 * Prepare the draft for the pipeline: no checkpoint is stored (see above),
 * and the first shard id is listed as completed so that the pipeline
 * reports the commit through the batch_committed hook. Returns 0 or -1
 * when out of memory.
 */
static int draft_finish(struct job_draft *draft)
{
    struct pipeline_work *work = draft->work;
    for (size_t i = 0; i < work->segment_count; i++) {
        free(work->segments[i]->checkpoint_seq);
        work->segments[i]->checkpoint_seq = NULL;
    }
    work->completed_shards = malloc(sizeof *work->completed_shards);
    if (work->completed_shards == NULL)
        return -1;
    work->completed_shards[0] = strdup(work->segments[0]->shard_id);
    if (work->completed_shards[0] == NULL)
        return -1;
    work->completed_count = 1;
    return 0;
}

/*
 * Build the next job from the merge into r->ready. batch_size counts
 * Kinesis records, so the user records of one aggregate always share a
 * job. Returns 1 when a job was built, 0 at the end of the input, -1 after
 * printing why.
 */
static int build_job(struct replay *r)
{
    int64_t batch_size =
        r->opts.batch_size > 0 ? r->opts.batch_size : r->cfg.max_records;
    struct job_draft *draft = &r->ready;
    struct shard_cursor *c;

    for (;;) {
        if (first_cursor(r, &c) != 0)
            return -1;
        if (c == NULL)
            break;
        const struct shard_record *rec = &c->head->records[c->next];
        bool continued = continues_aggregate(c, rec);
        if (draft->work != NULL && !continued &&
            starts_job(r, draft, batch_size, rec->arrival_ms))
            break;
        if (draft_add(draft, c, continued) != 0) {
            progress_erase(r);
            fprintf(stderr, "podium replay: out of memory while building a "
                            "job\n");
            return -1;
        }
    }
    if (draft->work == NULL)
        return 0;
    if (draft_finish(draft) != 0) {
        progress_erase(r);
        fprintf(stderr, "podium replay: out of memory while building a job\n");
        return -1;
    }
    return 1;
}

/* ---- the loop ------------------------------------------------------ */

static void on_message(void *arg, int64_t id, const char *topic,
                       const char *payload, size_t len)
{
    struct replay *r = arg;
    if (r->publisher == NULL)
        return; /* closing after a failure: it stays in the outbox */
    if (publisher_submit(r->publisher, id, topic, payload, len) != 0) {
        struct log_ids ids = {.topic = topic};
        log_error("main", &ids,
                  "failed to queue outbox message %" PRId64
                  " for publishing; it stays in the outbox",
                  id);
        r->exit_code = 1;
    }
}

static bool submit_due_jobs(struct replay *r, int64_t now);

/* A job of the replay committed: count its records and submit the next. */
static void on_committed(void *arg, const char *shard_id)
{
    struct replay *r = arg;
    (void)shard_id;
    if (r->in_flight_count == 0)
        return;
    r->committed_user_records += r->in_flight[r->in_flight_head];
    r->in_flight_head = (r->in_flight_head + 1) % REPLAY_JOBS_IN_FLIGHT;
    r->in_flight_count--;
    if (r->phase != REPLAY_APPLYING)
        return;
    int64_t now = log_now_ms();
    submit_due_jobs(r, now);
    progress_replay(r, now, false);
}

static void on_ack(void *arg, int64_t id)
{
    struct replay *r = arg;
    pipeline_ack(r->pipeline, id);
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct replay *r = handle->data;
    r->open_handles--;
}

static void on_module_closed(void *arg)
{
    struct replay *r = arg;
    r->open_handles--;
}

static void close_all(struct replay *r)
{
    if (r->phase == REPLAY_CLOSING)
        return;
    r->phase = REPLAY_CLOSING;
    r->open_handles = 3;
    uv_close((uv_handle_t *)&r->tick, on_handle_closed);
    uv_close((uv_handle_t *)&r->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&r->sigterm, on_handle_closed);
    if (r->publisher != NULL) {
        r->open_handles++;
        publisher_close(r->publisher, on_module_closed, r);
        r->publisher = NULL;
    }
}

static void on_pipeline_fatal(void *arg, const char *message)
{
    struct replay *r = arg;
    log_error("main", NULL, "replay failed: %s", message);
    r->exit_code = 1;
    close_all(r);
}

/*
 * Submit the jobs whose newest record is due, while fewer than
 * REPLAY_JOBS_IN_FLIGHT wait for the pipeline: every job at --speed 0,
 * else those whose arrival time is at most speed times the wall time since
 * the start past the first arrival. After the last job, queue closing
 * every open second, because the input ends there. Returns true while
 * jobs remain to be submitted.
 */
static bool submit_due_jobs(struct replay *r, int64_t now)
{
    if (r->close_queued || r->interrupted != 0)
        return false;
    while (r->in_flight_count < REPLAY_JOBS_IN_FLIGHT) {
        if (r->ready.work == NULL && !r->input_done) {
            int rc = build_job(r);
            if (rc < 0) {
                r->exit_code = 1;
                close_all(r);
                return false;
            }
            if (rc == 0)
                r->input_done = true;
        }
        if (r->ready.work == NULL)
            break;
        if (!r->have_first_arrival) {
            r->first_arrival_ms = r->ready.first_arrival_ms;
            r->have_first_arrival = true;
        }
        if (r->opts.speed > 0 &&
            (double)r->ready.newest_arrival_ms >
                (double)r->first_arrival_ms +
                    (double)(now - r->started_ms) * r->opts.speed)
            return true;
        size_t slot =
            (r->in_flight_head + r->in_flight_count) % REPLAY_JOBS_IN_FLIGHT;
        r->in_flight[slot] = r->ready.user_records;
        r->in_flight_count++;
        struct pipeline_work *work = r->ready.work;
        memset(&r->ready, 0, sizeof r->ready);
        pipeline_submit_work(r->pipeline, work);
    }
    if (!r->input_done || r->ready.work != NULL)
        return true;
    /* The end of the input closes every second still open. */
    pipeline_submit_close_all(r->pipeline);
    r->close_queued = true;
    return false;
}

static const char *signal_name(int signum)
{
    return signum == SIGINT    ? "SIGINT"
           : signum == SIGTERM ? "SIGTERM"
                               : "a signal";
}

/*
 * End an interrupted replay once the jobs in flight have committed: erase
 * the bar, say what was kept, and delete the acknowledged outbox rows
 * before closing. The seconds still open stay open in the store, so that
 * the next replay of the same files goes on where this one stopped.
 */
static void finish_interrupted(struct replay *r)
{
    progress_erase(r);
    log_warn("main", NULL,
             "replay interrupted by %s: the first %" PRIu64 " of %" PRIu64
             " user records were committed and are kept; %zu messages not "
             "yet acknowledged stay in the outbox and go out with the "
             "next run or replay on this store; replay the same files to "
             "apply the rest",
             signal_name(r->interrupted), r->committed_user_records,
             r->user_records,
             r->publisher ? publisher_pending(r->publisher) : 0);
    if (r->exit_code == 0)
        r->exit_code = 128 + r->interrupted;
    r->phase = REPLAY_DELETING;
    pipeline_flush_acks(r->pipeline);
}

/* SIGINT or SIGTERM: submit no more jobs and end once those in flight have
 * committed; a second signal exits at once. */
static void on_signal(uv_signal_t *handle, int signum)
{
    struct replay *r = handle->data;
    if (r->interrupted != 0) {
        progress_erase(r);
        log_warn("main", NULL,
                 "second signal (%s): exiting now; the jobs committed so far "
                 "are kept",
                 signal_name(signum));
        fflush(stdout);
        _exit(128 + signum);
    }
    r->interrupted = signum;
    if (r->phase == REPLAY_PUBLISHING)
        finish_interrupted(r);
}

static void on_tick(uv_timer_t *timer)
{
    struct replay *r = timer->data;
    int64_t now = log_now_ms();

    switch (r->phase) {
    case REPLAY_APPLYING:
        if (r->interrupted == 0)
            progress_replay(r, now, false);
        if (submit_due_jobs(r, now) || !pipeline_idle(r->pipeline))
            return;
        if (r->phase != REPLAY_APPLYING)
            return; /* failed */
        if (r->interrupted != 0) {
            finish_interrupted(r);
            return;
        }
        progress_replay(r, now, true);
        progress_end(r);
        r->phase = REPLAY_PUBLISHING;
        r->deadline_ms = now + r->opts.publish_timeout_s * 1000;
        return;
    case REPLAY_PUBLISHING:
        if (publisher_pending(r->publisher) > 0) {
            if (now < r->deadline_ms)
                return;
            fprintf(stderr,
                    "podium replay: %zu messages were not acknowledged "
                    "within %" PRId64 " s (--publish-timeout); they stay in "
                    "the outbox and go out with the next run or replay on "
                    "this store; check that the broker or endpoint is "
                    "reachable\n",
                    publisher_pending(r->publisher), r->opts.publish_timeout_s);
            r->exit_code = 1;
        }
        r->phase = REPLAY_DELETING;
        pipeline_flush_acks(r->pipeline);
        return;
    case REPLAY_DELETING:
        if (pipeline_idle(r->pipeline))
            close_all(r);
        return;
    default:
        return;
    }
}

/* ---- start-up ------------------------------------------------------ */

struct outbox_cursor {
    struct replay *r;
    int64_t last_id;
    size_t rows;
};

static int submit_outbox_row(void *arg, int64_t id, const char *topic,
                             const void *payload, size_t len)
{
    struct outbox_cursor *cur = arg;
    cur->last_id = id;
    cur->rows++;
    on_message(cur->r, id, topic, payload, len);
    return 0;
}

/* Hand the messages left in the outbox by an earlier run to the publisher,
 * so that exit status 0 means the whole outbox was delivered. */
static int resend_outbox(struct replay *r)
{
    struct outbox_cursor cur = {r, 0, 0};
    do {
        cur.rows = 0;
        if (store_outbox_load(r->store, cur.last_id, REPLAY_OUTBOX_PAGE,
                              submit_outbox_row, &cur) != 0) {
            log_error("main", NULL, "failed to read the outbox: %s",
                      store_errmsg(r->store));
            return -1;
        }
    } while (cur.rows == REPLAY_OUTBOX_PAGE);
    return 0;
}

static int open_state(struct replay *r)
{
    char err[512];
    struct pipeline_hooks hooks = {r, on_committed, on_message,
                                   on_pipeline_fatal, NULL};

    if (store_open(r->cfg.store_path, &r->store, err, sizeof err) != 0) {
        log_error("main", NULL, "failed to open the store: %s", err);
        return -1;
    }
    if (daemon_open_idempotency(r->store, &r->cfg) != 0)
        return -1;
    r->pipeline = pipeline_new(&r->loop, r->store, &r->cfg, &hooks);
    if (r->pipeline == NULL || pipeline_restore(r->pipeline) != 0)
        return -1;
    return 0;
}

static int start_publisher(struct replay *r)
{
    char err[512];
    struct pub_config pc;
    daemon_pub_config(&r->cfg, &r->creds, &pc);
    r->publisher = publisher_new(&r->loop, &pc, on_ack, r, err, sizeof err);
    if (r->publisher == NULL) {
        log_error("main", NULL, "failed to start the publisher: %s", err);
        return -1;
    }
    return 0;
}

static uint64_t sum_counters(const atomic_uint_fast64_t *counters, size_t n)
{
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += (uint64_t)atomic_load(&counters[i]);
    return sum;
}

static void print_summary(struct replay *r)
{
    const struct pipeline_counters *c =
        r->pipeline ? pipeline_counters(r->pipeline) : NULL;
    uint64_t outcomes[AGG_OUTCOME_COUNT] = {0};
    uint64_t rejected = 0;
    if (c != NULL) {
        for (size_t i = 0; i < AGG_OUTCOME_COUNT; i++)
            outcomes[i] = (uint64_t)c->outcomes[i];
        rejected = sum_counters(c->rejected, AGG_REJECT_COUNT) +
                   (uint64_t)c->missing_key_rejected;
    }
    FILE *out = r->summary_to_stderr ? stderr : stdout;
    fprintf(out,
            "{\"files\":%zu,\"lines\":%" PRIu64 ",\"bad_lines\":%" PRIu64
            ",\"kinesis_records\":%" PRIu64 ",\"user_records\":%" PRIu64
            ",\"applied\":%" PRIu64 ",\"duplicates\":%" PRIu64
            ",\"rejected\":%" PRIu64 ",\"late_amended\":%" PRIu64
            ",\"late_dropped\":%" PRIu64 ",\"too_late\":%" PRIu64
            ",\"quarantined\":%" PRIu64 ",\"messages\":%" PRIu64
            ",\"interrupted\":%s}\n",
            r->opts.file_count, r->lines, r->bad_lines, r->kinesis_records,
            r->user_records, c ? (uint64_t)c->records_applied : 0,
            c ? (uint64_t)c->duplicates : 0, rejected,
            outcomes[AGG_LATE_AMENDED], outcomes[AGG_LATE_DROPPED],
            outcomes[AGG_TOO_LATE],
            outcomes[AGG_QUARANTINED_SKEW] + outcomes[AGG_QUARANTINED_JUMP],
            c ? (uint64_t)c->messages_built : 0,
            r->interrupted != 0 ? "true" : "false");
    fflush(out);
    if (r->bad_lines > 0 && r->opts.skip_bad_lines)
        fprintf(stderr, "podium replay: skipped %" PRIu64 " bad line%s\n",
                r->bad_lines, r->bad_lines == 1 ? "" : "s");
}

/* Write out what the spools buffer and go back to their starts for the
 * second pass. Returns 0, or 1 after printing why. */
static int rewind_spools(struct replay *r)
{
    char err[768];

    for (size_t i = 0; i < r->cursor_count; i++) {
        struct shard_cursor *c = &r->cursors[i];
        errno = 0;
        if (fflush(c->spool) != 0 || fseeko(c->spool, 0, SEEK_SET) != 0) {
            spool_error(r, c, "write to", err, sizeof err);
            fprintf(stderr, "podium replay: %s\n", err);
            return 1;
        }
    }
    return 0;
}

/*
 * First pass over every file: an unreadable file is a usage error (2),
 * whatever the files before it contain, and a bad line under
 * --on-bad-line fail ends the replay (1) before anything is applied.
 */
static int check_files(struct replay *r)
{
    const char *tmpdir = getenv("TMPDIR");
    r->spool_dir = tmpdir != NULL && tmpdir[0] != '\0' ? tmpdir : "/tmp";
    for (size_t i = 0; i < r->opts.file_count; i++) {
        struct stat st;
        FILE *f = fopen(r->opts.files[i], "r");
        if (f == NULL) {
            fprintf(stderr,
                    "podium replay: cannot read %s: %s; check the path and "
                    "its permissions\n",
                    r->opts.files[i], strerror(errno));
            return 2;
        }
        if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode))
            r->progress.total_bytes += (uint64_t)st.st_size;
        fclose(f);
    }
    r->progress.started_ms = log_now_ms();
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->opts.file_count; i++)
        rc = check_file(r, i);
    if (rc >= 128) {
        progress_erase(r);
        return rc;
    }
    if (rc == 0)
        progress_check(r, log_now_ms(), true);
    progress_end(r);
    if (r->bad_lines > REPLAY_BAD_LINES_SHOWN)
        fprintf(stderr,
                "podium replay: %" PRIu64 " more bad lines were not shown\n",
                r->bad_lines - REPLAY_BAD_LINES_SHOWN);
    if (rc == 0 && r->bad_lines > 0 && !r->opts.skip_bad_lines) {
        fprintf(stderr,
                "podium replay: %" PRIu64 " bad line%s; nothing was applied; "
                "fix %s or pass --on-bad-line skip to leave %s out\n",
                r->bad_lines, r->bad_lines == 1 ? "" : "s",
                r->bad_lines == 1 ? "it" : "them",
                r->bad_lines == 1 ? "it" : "them");
        rc = 1;
    }
    return rc == 0 ? rewind_spools(r) : rc;
}

/* Report a replay interrupted during the first pass, before anything was
 * applied. Returns its exit status. */
static int end_check_interrupted(struct replay *r, int rc)
{
    r->interrupted = rc - 128;
    log_warn("main", NULL,
             "replay interrupted by %s while checking the recordings; "
             "nothing was applied",
             signal_name(r->interrupted));
    print_summary(r);
    return rc;
}

static int replay_files(struct replay *r)
{
    int rc;

    progress_init(r);
    r->summary_to_stderr = r->cfg.transport == CFG_TRANSPORT_FILE &&
                           strcmp(r->cfg.publish_file, "-") == 0;
    struct sigaction action = {.sa_handler = on_check_signal};
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    rc = check_files(r);
    if (rc == 0 && check_signal != 0)
        rc = 128 + check_signal;
    if (rc >= 128)
        rc = end_check_interrupted(r, rc);
    if (rc != 0) {
        free_cursors(r);
        return rc;
    }
    /* Only the iot transport signs requests. */
    bool signs = r->cfg.transport == CFG_TRANSPORT_IOT;
    if (signs && daemon_credentials_check(&r->cfg, "podium replay") != 0) {
        free_cursors(r);
        return 2;
    }
    if (uv_loop_init(&r->loop) != 0) {
        free_cursors(r);
        return 1;
    }
    uv_timer_init(&r->loop, &r->tick);
    r->tick.data = r;
    /* From here the loop handles the signals, in place of
     * on_check_signal. */
    uv_signal_init(&r->loop, &r->sigint);
    uv_signal_init(&r->loop, &r->sigterm);
    r->sigint.data = r->sigterm.data = r;
    uv_signal_start(&r->sigint, on_signal, SIGINT);
    uv_signal_start(&r->sigterm, on_signal, SIGTERM);
    if (check_signal != 0)
        r->interrupted = check_signal;
    if (signs)
        rc = daemon_credentials_open(&r->loop, &r->cfg, "podium replay",
                                     &r->creds);
    if (rc != 0) {
        /* rc is the exit status of the failed fetch. */
    } else if (open_state(r) != 0 || start_publisher(r) != 0 ||
               resend_outbox(r) != 0) {
        rc = 1;
    } else {
        r->started_ms = log_now_ms();
        r->progress.started_ms = r->started_ms;
        r->progress.drawn_ms = 0;
        submit_due_jobs(r, r->started_ms);
        uv_timer_start(&r->tick, on_tick, REPLAY_TICK_MS, REPLAY_TICK_MS);
    }
    if (rc != 0)
        close_all(r);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    progress_end(r);
    draft_free(&r->ready);
    free_cursors(r);
    if (rc == 0)
        rc = r->exit_code;
    if (rc == 0 || r->pipeline != NULL)
        print_summary(r);
    pipeline_free(r->pipeline);
    store_close(r->store);
    daemon_credentials_close(&r->creds, NULL, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    uv_loop_close(&r->loop);
    aws_credentials_clear(&r->creds);
    return rc;
}

/* ---- arguments ----------------------------------------------------- */

static void replay_usage(FILE *out)
{
    fputs("usage: podium replay [options] FILE...\n"
          "\n"
          "Apply recorded Kinesis records (JSON lines, as written by\n"
          "`podium simulate --out`) to the store through the pipeline of\n"
          "`podium run`, publish the messages and exit once all are\n"
          "acknowledged.\n"
          "\n"
          "options:\n"
          "  --batch-size N       Kinesis records per transaction, 1..10000\n"
          "                       (default kinesis.max_records)\n"
          "  --speed X            0 (default): as fast as possible; X from\n"
          "                       0.001 to 1000000: X seconds of\n"
          "                       ApproximateArrivalTimestamp per second,\n"
          "                       so 1 is real time\n"
          "  --publish-timeout S  seconds the publisher gets to deliver every\n"
          "                       message at the end (default 30); exit 1\n"
          "                       when they pass first\n"
          "  --on-bad-line MODE   fail (default): report every bad line (the\n"
          "                       first 20, then a count) and apply nothing;\n"
          "                       skip: report them, go on, count them.\n"
          "                       Lines of only white space are ignored\n"
          "  --progress WHEN      auto (default): a progress bar on standard\n"
          "                       error when it is a terminal; always; never\n"
          "  --config FILE, --set KEY=VALUE   as for run\n"
          "\n"
          "The summary is a JSON line on standard output, or on standard\n"
          "error when publish.transport=file writes the messages to\n"
          "standard output (publish.file=-, the default).\n"
          "\n"
          "SIGINT or SIGTERM stops the replay after the jobs in flight\n"
          "commit: what they applied is kept, messages not yet acknowledged\n"
          "stay in the outbox for the next run or replay on the store, the\n"
          "summary has \"interrupted\":true, and the exit status is 130\n"
          "after SIGINT and 143 after SIGTERM. Replaying the same files\n"
          "again applies the rest. A second signal exits at once.\n",
          out);
}

static int parse_replay_args(int argc, char **argv, struct replay_options *o,
                             struct common_opts *common)
{
    static const struct option longopts[] = {
        {"batch-size", required_argument, NULL, 'b'},
        {"speed", required_argument, NULL, 'x'},
        {"on-bad-line", required_argument, NULL, 'l'},
        {"publish-timeout", required_argument, NULL, 't'},
        {"progress", required_argument, NULL, 'p'},
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;
    char *end;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'b':
            errno = 0;
            o->batch_size = strtoll(optarg, &end, 10);
            if (errno != 0 || *end != '\0' || o->batch_size < 1 ||
                o->batch_size > 10000) {
                fprintf(stderr,
                        "podium replay: invalid --batch-size \"%s\": expected "
                        "an integer from 1 to 10000\n",
                        optarg);
                return 2;
            }
            break;
        case 'x':
            errno = 0;
            o->speed = strtod(optarg, &end);
            if (errno != 0 || end == optarg || *end != '\0' ||
                !(o->speed == 0 || (o->speed >= REPLAY_MIN_SPEED &&
                                    o->speed <= REPLAY_MAX_SPEED))) {
                fprintf(stderr,
                        "podium replay: invalid --speed \"%s\": expected 0 "
                        "(as fast as possible) or a factor of real time "
                        "from %g to %.0f, such as 1 or 10\n",
                        optarg, REPLAY_MIN_SPEED, REPLAY_MAX_SPEED);
                return 2;
            }
            break;
        case 't':
            errno = 0;
            o->publish_timeout_s = strtoll(optarg, &end, 10);
            if (errno != 0 || end == optarg || *end != '\0' ||
                o->publish_timeout_s < 1 ||
                o->publish_timeout_s > REPLAY_MAX_PUBLISH_TIMEOUT_S) {
                fprintf(stderr,
                        "podium replay: invalid --publish-timeout \"%s\": "
                        "expected seconds from 1 to %d\n",
                        optarg, REPLAY_MAX_PUBLISH_TIMEOUT_S);
                return 2;
            }
            break;
        case 'l':
            if (strcmp(optarg, "skip") == 0 || strcmp(optarg, "fail") == 0) {
                o->skip_bad_lines = strcmp(optarg, "skip") == 0;
                break;
            }
            fprintf(stderr,
                    "podium replay: invalid --on-bad-line \"%s\": expected "
                    "skip or fail\n",
                    optarg);
            return 2;
        case 'p':
            if (strcmp(optarg, "auto") == 0) {
                o->progress = PROGRESS_AUTO;
            } else if (strcmp(optarg, "always") == 0) {
                o->progress = PROGRESS_ALWAYS;
            } else if (strcmp(optarg, "never") == 0) {
                o->progress = PROGRESS_NEVER;
            } else {
                fprintf(stderr,
                        "podium replay: invalid --progress \"%s\": expected "
                        "auto, always or never\n",
                        optarg);
                return 2;
            }
            break;
        case 'c':
            common->config_file = optarg;
            break;
        case 's':
            if (common_opts_add_set(common, optarg) != 0)
                return 1;
            break;
        case 'h':
            replay_usage(stdout);
            return -1;
        default:
            replay_usage(stderr);
            return 2;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "podium replay: no recording given\n");
        replay_usage(stderr);
        return 2;
    }
    o->files = argv + optind;
    o->file_count = (size_t)(argc - optind);
    return 0;
}

int cmd_replay(int argc, char **argv)
{
    struct common_opts common = {0};
    struct replay *r = calloc(1, sizeof *r);
    if (r == NULL)
        return 1;
    r->opts.publish_timeout_s = REPLAY_PUBLISH_TIMEOUT_S;
    int rc = parse_replay_args(argc, argv, &r->opts, &common);
    if (rc == 0)
        rc = load_config(&common, &r->cfg);
    free(common.sets);
    if (rc == 0) {
        log_set_level((enum log_level)r->cfg.log_level);
        rc = replay_files(r);
        cfg_free(&r->cfg);
    }
    free(r);
    return rc < 0 ? 0 : rc;
}
