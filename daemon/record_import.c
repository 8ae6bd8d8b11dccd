/*
 * `podium record --import`: convert the output of
 * `aws kinesis get-records --shard-iterator ...` into a recording.
 *
 * Each file is one JSON document such as
 *     {"Records":[{"SequenceNumber":"4959...","ApproximateArrivalTimestamp":
 *       "2026-12-04T10:15:30.123000+00:00","Data":"eyJ...","PartitionKey":
 *       "17"}],"NextShardIterator":"...","MillisBehindLatest":0}
 * and the files are pages of one shard, given in the order they were read.
 * AWS CLI v2 prints ApproximateArrivalTimestamp as ISO 8601 text by
 * default, and AWS CLI v1 (or cli_timestamp_format=none) as a number of
 * seconds; both are read, with any UTC offset. get-records output names no
 * shard, so --shard-id gives it. Members other than the four above, such
 * as EncryptionType, are ignored.
 *
 * Every file is read and checked before anything is written. A file that
 * is not JSON or has no Records array always fails the import, and so does
 * a record whose SequenceNumber is not after the one before it: that means
 * pages out of order or given twice, or a page changed, and skipping the
 * records would lose a page. Such records are reported once per file, with a count. A bad
 * record (a missing or invalid member) is reported with the file and its
 * index in Records, and records of one file with the same problem are
 * reported once, with a count. Under --on-bad-record fail nothing is
 * written and the exit status is 1. Under skip the record is left out, and
 * counted in the summary.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/seqnum.h"
#include "common/sjson.h"

/* Largest get-records output file read. One GetRecords reply carries at
 * most 10 MiB of data, about 14 MiB in base64, plus indentation. */
#define IMPORT_MAX_FILE_BYTES ((size_t)256 << 20)
/* Maximum length of a value quoted in a message. */
#define IMPORT_QUOTE_MAX 60
/* Kinesis allows 256 characters, at most 1,024 bytes of UTF-8, as replay
 * checks too. */
#define IMPORT_MAX_PARTITION_KEY_BYTES 1024
/* Distinct problems reported for one file; the rest are only counted. */
#define IMPORT_PROBLEMS_SHOWN 20

/* Bad records of one file with the same message. */
struct import_problem {
    char message[600];
    size_t first_index;
    uint64_t count;
};

/* Records of one file whose SequenceNumber is not after the record
 * converted before them. */
struct order_problem {
    uint64_t count;
    size_t first_index;
    char first_seq[SEQNUM_MAX_DIGITS + 1];
    char prev_seq[SEQNUM_MAX_DIGITS + 1];
    const char *prev_file;
    size_t prev_index;
};

struct importer {
    const struct import_options *opts;
    struct strbuf out;
    /* The last record converted, to check the order across pages. */
    char prev_seq[SEQNUM_MAX_DIGITS + 1];
    const char *prev_file;
    size_t prev_index;
    uint64_t records;
    uint64_t bad_records;
    bool order_failed; /* some file had records out of order */
};

/* Write a short rendering of v for messages into out. */
static void quote_value(const struct sjson_value *v, char *out, size_t len)
{
    if (v == NULL) {
        snprintf(out, len, "nothing");
        return;
    }
    switch (v->type) {
    case SJSON_STRING:
        if (v->len > IMPORT_QUOTE_MAX)
            snprintf(out, len, "\"%.*s...\"", IMPORT_QUOTE_MAX, v->str);
        else
            snprintf(out, len, "\"%.*s\"", (int)v->len, v->str);
        return;
    case SJSON_NUMBER:
        snprintf(out, len, "%.*s",
                 (int)(v->len > IMPORT_QUOTE_MAX ? IMPORT_QUOTE_MAX : v->len),
                 v->str);
        return;
    case SJSON_NULL:
        snprintf(out, len, "null");
        return;
    case SJSON_TRUE:
    case SJSON_FALSE:
        snprintf(out, len, v->type == SJSON_TRUE ? "true" : "false");
        return;
    case SJSON_ARRAY:
        snprintf(out, len, "an array");
        return;
    case SJSON_OBJECT:
        snprintf(out, len, "an object");
        return;
    }
    snprintf(out, len, "a value");
}

/* Read the whole file at path into an owned buffer. Returns 0, or -1 with
 * the reason in err. */
static int read_whole_file(const char *path, char **text, size_t *len,
                           char *err, size_t err_len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, err_len,
                 "cannot read %s: %s; check the path and its "
                 "permissions",
                 path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        if (n == cap) {
            if (cap >= IMPORT_MAX_FILE_BYTES) {
                snprintf(err, err_len,
                         "%s is larger than %zu MiB, which no get-records "
                         "output reaches; pass each page in its own file",
                         path, IMPORT_MAX_FILE_BYTES >> 20);
                free(buf);
                fclose(f);
                return -1;
            }
            char *grown = realloc(buf, cap * 2);
            if (grown == NULL)
                break;
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    if (buf == NULL || ferror(f)) {
        snprintf(err, err_len, "failed to read %s: %s", path,
                 buf == NULL ? "out of memory" : strerror(errno));
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    *text = buf;
    *len = n;
    return 0;
}

/* Line and column (from 1) of byte offset in text. */
static void line_and_column(const char *text, size_t offset, size_t *line,
                            size_t *column)
{
    *line = 1;
    *column = 1;
    for (size_t i = 0; i < offset; i++) {
        if (text[i] == '\n') {
            (*line)++;
            *column = 1;
        } else {
            (*column)++;
        }
    }
}

/* ---- one record ------------------------------------------------------- */

/* A checked record: pointers into the document, Data decoded. */
struct import_record {
    const char *seq;
    int64_t arrival_ms;
    const char *partition_key;
    size_t partition_key_len;
    uint8_t *data; /* owned */
    size_t len;
};

static int check_seq(const struct sjson_value *v, struct import_record *rec,
                     char *err, size_t err_len)
{
    char q[IMPORT_QUOTE_MAX + 8];
    if (v == NULL) {
        snprintf(err, err_len, "SequenceNumber is missing");
        return -1;
    }
    if (v->type != SJSON_STRING || strlen(v->str) != v->len ||
        !seqnum_valid(v->str)) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "SequenceNumber must be a string of up to %d decimal "
                 "digits, got %s",
                 SEQNUM_MAX_DIGITS, q);
        return -1;
    }
    rec->seq = v->str;
    return 0;
}

static int check_arrival(const struct sjson_value *v, struct import_record *rec,
                         char *err, size_t err_len)
{
    char q[IMPORT_QUOTE_MAX + 8], why[200];
    int rc;

    if (v == NULL) {
        snprintf(err, err_len, "ApproximateArrivalTimestamp is missing");
        return -1;
    }
    if (v->type == SJSON_STRING)
        rc = recording_parse_iso8601(v->str, v->len, &rec->arrival_ms, why,
                                     sizeof why);
    else if (v->type == SJSON_NUMBER)
        rc = recording_parse_epoch(v->str, v->len, &rec->arrival_ms, why,
                                   sizeof why);
    else {
        snprintf(why, sizeof why,
                 "must be ISO 8601 text or a number of seconds since the "
                 "epoch");
        rc = -1;
    }
    if (rc != 0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len, "ApproximateArrivalTimestamp %s %s", q, why);
        return -1;
    }
    return 0;
}

static int check_partition_key(const struct sjson_value *v,
                               struct import_record *rec, char *err,
                               size_t err_len)
{
    char q[IMPORT_QUOTE_MAX + 8];
    if (v == NULL) {
        snprintf(err, err_len, "PartitionKey is missing");
        return -1;
    }
    if (v->type != SJSON_STRING || v->len == 0 ||
        v->len > IMPORT_MAX_PARTITION_KEY_BYTES ||
        memchr(v->str, '\0', v->len) != NULL) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "PartitionKey must be a string of 1 to %d bytes without "
                 "U+0000, got %s",
                 IMPORT_MAX_PARTITION_KEY_BYTES, q);
        return -1;
    }
    rec->partition_key = v->str;
    rec->partition_key_len = v->len;
    return 0;
}

static int check_data(const struct sjson_value *v, struct import_record *rec,
                      char *err, size_t err_len)
{
    char q[IMPORT_QUOTE_MAX + 8];
    if (v == NULL) {
        snprintf(err, err_len, "Data is missing");
        return -1;
    }
    if (v->type != SJSON_STRING) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len, "Data must be a base64 string, got %s", q);
        return -1;
    }
    rec->data = malloc(BASE64_DECODED_MAX(v->len));
    if (rec->data == NULL) {
        snprintf(err, err_len, "out of memory");
        return -1;
    }
    if (base64_decode(v->str, v->len, rec->data, &rec->len) != 0) {
        quote_value(v, q, sizeof q);
        snprintf(err, err_len,
                 "Data is not valid base64 (standard alphabet, with "
                 "padding): %s",
                 q);
        free(rec->data);
        rec->data = NULL;
        return -1;
    }
    return 0;
}

/* Check item, one member of Records. Returns 0 with rec, or -1 with err. */
static int check_record(const struct sjson_value *item,
                        struct import_record *rec, char *err, size_t err_len)
{
    char q[IMPORT_QUOTE_MAX + 8];
    memset(rec, 0, sizeof *rec);
    if (item->type != SJSON_OBJECT) {
        quote_value(item, q, sizeof q);
        snprintf(err, err_len, "expected a JSON object, got %s", q);
        return -1;
    }
    if (check_seq(sjson_object_get(item, "SequenceNumber"), rec, err,
                  err_len) != 0 ||
        check_arrival(sjson_object_get(item, "ApproximateArrivalTimestamp"),
                      rec, err, err_len) != 0 ||
        check_partition_key(sjson_object_get(item, "PartitionKey"), rec, err,
                            err_len) != 0)
        return -1;
    return check_data(sjson_object_get(item, "Data"), rec, err, err_len);
}

/* ---- one file --------------------------------------------------------- */

/* Count a bad record under its message in problems (up to
 * IMPORT_PROBLEMS_SHOWN of them) or in *unlisted. */
static void note_problem(struct import_problem *problems, size_t *count,
                         uint64_t *unlisted, size_t index, const char *message)
{
    for (size_t i = 0; i < *count; i++) {
        if (strcmp(problems[i].message, message) == 0) {
            problems[i].count++;
            return;
        }
    }
    if (*count == IMPORT_PROBLEMS_SHOWN) {
        (*unlisted)++;
        return;
    }
    struct import_problem *p = &problems[(*count)++];
    snprintf(p->message, sizeof p->message, "%s", message);
    p->first_index = index;
    p->count = 1;
}

/* Print the bad records of one file, each problem once. */
static void report_problems(const struct importer *im, const char *path,
                            const struct import_problem *problems, size_t count,
                            uint64_t unlisted)
{
    bool skip = im->opts->skip_bad_records;
    for (size_t i = 0; i < count; i++) {
        const struct import_problem *p = &problems[i];
        if (p->count == 1)
            fprintf(stderr, "podium record: %s: Records[%zu]: %s; %s\n", path,
                    p->first_index, p->message,
                    skip ? "record skipped"
                         : "nothing was written; fix the record or pass "
                           "--on-bad-record skip");
        else
            fprintf(stderr,
                    "podium record: %s: Records[%zu] and %" PRIu64
                    " more records: %s; %s\n",
                    path, p->first_index, p->count - 1, p->message,
                    skip ? "records skipped"
                         : "nothing was written; fix the records or pass "
                           "--on-bad-record skip");
    }
    if (unlisted > 0)
        fprintf(stderr,
                "podium record: %s: %" PRIu64 " more bad records with "
                "other problems; %s\n",
                path, unlisted,
                skip ? "records skipped"
                     : "nothing was written; fix the records or pass "
                       "--on-bad-record skip");
}

/* Print the records of one file that are out of order, in one message. */
static void report_order(const char *path, const struct order_problem *o)
{
    char more[64] = "";
    if (o->count > 1)
        snprintf(more, sizeof more, ", nor %s %" PRIu64 " later record%s",
                 o->count == 2 ? "is" : "are", o->count - 1,
                 o->count == 2 ? "" : "s");
    /* The same argument, not the same name: a page given twice has two. */
    bool same_page = o->prev_file == path;
    fprintf(stderr,
            "podium record: %s: Records[%zu]: SequenceNumber %s is not after "
            "%s of %s Records[%zu]%s; %s\n",
            path, o->first_index, o->first_seq, o->prev_seq, o->prev_file,
            o->prev_index, more,
            same_page ? "the records of this page are out of order or "
                        "repeated, which get-records never returns; give the "
                        "page as aws kinesis get-records printed it"
                      : "the pages are out of order or one is given twice; "
                        "give the pages of one shard in the order they were "
                        "read, each once");
}

/* Convert the records of one document. Returns 0, 1 after a bad record
 * under fail or records out of order, or -1 when out of memory. */
static int import_records(struct importer *im, const char *path,
                          const struct sjson_value *records)
{
    int rc = 0;
    char err[600];
    struct import_problem problems[IMPORT_PROBLEMS_SHOWN];
    size_t problem_count = 0;
    uint64_t unlisted = 0;
    struct order_problem order = {0};

    for (size_t i = 0; i < records->count; i++) {
        struct import_record rec;
        if (check_record(&records->items[i], &rec, err, sizeof err) != 0) {
            im->bad_records++;
            note_problem(problems, &problem_count, &unlisted, i, err);
            if (!im->opts->skip_bad_records)
                rc = 1;
            continue;
        }
        if (im->prev_file != NULL && seqnum_cmp(rec.seq, im->prev_seq) <= 0) {
            if (order.count++ == 0) {
                order.first_index = i;
                snprintf(order.first_seq, sizeof order.first_seq, "%s",
                         rec.seq);
                snprintf(order.prev_seq, sizeof order.prev_seq, "%s",
                         im->prev_seq);
                order.prev_file = im->prev_file;
                order.prev_index = im->prev_index;
            }
            free(rec.data);
            continue;
        }
        struct recording_line line = {
            .shard_id = im->opts->shard_id,
            .seq = rec.seq,
            .subseq = -1,
            .arrival_ms = rec.arrival_ms,
            .partition_key = rec.partition_key,
            .partition_key_len = rec.partition_key_len,
            .data = rec.data,
            .len = rec.len,
        };
        int written = recording_append_line(&im->out, &line);
        free(rec.data);
        if (written != 0)
            return -1;
        snprintf(im->prev_seq, sizeof im->prev_seq, "%s", rec.seq);
        im->prev_file = path;
        im->prev_index = i;
        im->records++;
    }
    report_problems(im, path, problems, problem_count, unlisted);
    if (order.count > 0) {
        report_order(path, &order);
        im->order_failed = true;
        rc = 1;
    }
    return rc;
}

/* Read and convert one file. Returns 0, 1 on bad input, or -1 when out of
 * memory. */
static int import_file(struct importer *im, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    char err[600];
    struct sjson_doc *doc = NULL;
    struct sjson_err perr;
    struct sjson_limits limits = {IMPORT_MAX_FILE_BYTES,
                                  SJSON_DEFAULT_MAX_DEPTH};

    if (read_whole_file(path, &text, &len, err, sizeof err) != 0) {
        fprintf(stderr, "podium record: %s\n", err);
        return 1;
    }
    if (sjson_parse(text, len, &limits, &doc, &perr) != 0) {
        size_t line, column;
        line_and_column(text, perr.offset < len ? perr.offset : len, &line,
                        &column);
        fprintf(stderr,
                "podium record: %s: not JSON: %s at line %zu, column %zu; "
                "expected the output of aws kinesis get-records\n",
                path, perr.message, line, column);
        free(text);
        return perr.code == SJSON_ERR_NOMEM ? -1 : 1;
    }
    const struct sjson_value *root = sjson_doc_root(doc);
    const struct sjson_value *records = sjson_object_get(root, "Records");
    int rc;
    if (records == NULL || records->type != SJSON_ARRAY) {
        char q[IMPORT_QUOTE_MAX + 8];
        quote_value(records ? records : root, q, sizeof q);
        fprintf(stderr,
                "podium record: %s: no Records array at the top level (got "
                "%s); expected the output of aws kinesis get-records, "
                "{\"Records\":[...],\"NextShardIterator\":...}\n",
                path, q);
        rc = 1;
    } else {
        rc = import_records(im, path, records);
    }
    sjson_doc_free(doc);
    free(text);
    return rc;
}

/* Write the converted lines to opts->out. Returns 0 or 1. */
static int write_output(struct importer *im)
{
    bool to_stdout = strcmp(im->opts->out, "-") == 0;
    FILE *f = to_stdout ? stdout : fopen(im->opts->out, "wb");
    if (f == NULL) {
        fprintf(stderr, "podium record: cannot create %s: %s\n", im->opts->out,
                strerror(errno));
        return 1;
    }
    bool ok = fwrite(im->out.data ? im->out.data : "", 1, im->out.len, f) ==
              im->out.len;
    ok = fflush(f) == 0 && ok;
    if (!to_stdout)
        ok = fclose(f) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "podium record: failed to write %s: %s\n",
                im->opts->out, strerror(errno));
        return 1;
    }
    return 0;
}

/* Print what was converted as one JSON line on standard error, because
 * standard output may be the recording. */
static void print_summary(const struct importer *im)
{
    struct strbuf sb;
    sb_init(&sb, 1 << 16);
    sb_puts(&sb, "{\"out\":");
    sb_json_string(&sb, im->opts->out, strlen(im->opts->out));
    sb_puts(&sb, ",\"shard_id\":");
    sb_json_string(&sb, im->opts->shard_id, strlen(im->opts->shard_id));
    sb_printf(&sb,
              ",\"files\":%zu,\"records\":%" PRIu64 ",\"bad_records\":%" PRIu64
              "}\n",
              im->opts->file_count, im->records, im->bad_records);
    if (sb_error(&sb) == 0)
        fputs(sb.data, stderr);
    sb_free(&sb);
}

int record_import(const struct import_options *opts)
{
    struct importer im = {.opts = opts};
    int rc = 0;

    /* An unreadable file is a usage error, whatever the files before it
     * contain, as for podium replay. */
    for (size_t i = 0; i < opts->file_count; i++) {
        FILE *f = fopen(opts->files[i], "rb");
        if (f == NULL) {
            fprintf(stderr,
                    "podium record: cannot read %s: %s; check the path and "
                    "its permissions\n",
                    opts->files[i], strerror(errno));
            return 2;
        }
        fclose(f);
    }
    sb_init(&im.out, SIZE_MAX / 2);
    for (size_t i = 0; i < opts->file_count; i++) {
        int file_rc = import_file(&im, opts->files[i]);
        if (file_rc < 0) {
            fprintf(stderr,
                    "podium record: out of memory while converting "
                    "%s\n",
                    opts->files[i]);
            rc = 1;
            break;
        }
        if (file_rc > 0)
            rc = 1;
    }
    if (rc != 0) {
        fprintf(stderr, "podium record: nothing was written to %s\n",
                opts->out);
    } else {
        rc = write_output(&im);
    }
    if (rc == 0) {
        print_summary(&im);
        if (im.bad_records > 0)
            fprintf(stderr, "podium record: skipped %" PRIu64 " bad record%s\n",
                    im.bad_records, im.bad_records == 1 ? "" : "s");
    }
    sb_free(&im.out);
    return rc;
}
