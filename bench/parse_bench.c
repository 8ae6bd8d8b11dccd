/*
 * parse_bench: the cost of parsing a recording and nothing else. Reads FILE
 * with read(2) in blocks of 1 MiB and splits it into lines. Each line is
 * parsed as a Kinesis record in JSON, its base64 Data is decoded with
 * common/base64.h, and the payload is parsed as JSON and must have a
 * non-empty string "uuid" (podium's default idempotency key).
 *
 * usage: parse_bench --parser sjson|jansson|mixed FILE
 *
 *   sjson    both documents with podium's strict parser, common/sjson.h,
 *            as `podium replay` parses a recording line and its payload
 *   jansson  both documents with jansson (json_loadb, duplicate keys
 *            rejected as podium asks of it)
 *   mixed    the record with jansson and the payload with sjson, as
 *            `podium run` parses a GetRecords reply and each payload
 *
 * Prints one JSON line on stdout: records, bytes, wall and CPU seconds and
 * records per second of each. A line that fails to parse stops the run with
 * FILE:LINE and the reason. Exit status: 0 success, 1 read or parse
 * failure, 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/base64.h"
#include "common/sjson.h"
#include "bench/bench_clock.h"

#define BLOCK_BYTES (1024 * 1024)

enum parser { PARSER_SJSON, PARSER_JANSSON, PARSER_MIXED };

static const char *const parser_names[] = {"sjson", "jansson", "mixed"};

/* The state of one run: where it is in FILE and the buffers it reuses. */
struct parse_run {
    enum parser parser;
    const char *path;
    uint64_t line_no;
    uint8_t *payload; /* decoded Data */
    size_t payload_cap;
    char error[320];
};

/* Decode n characters of base64 into run->payload. Returns 0 and sets
 * *len, or -1 with run->error set. */
static int decode_data(struct parse_run *run, const char *b64, size_t n,
                       size_t *len)
{
    size_t need = BASE64_DECODED_MAX(n);
    if (need > run->payload_cap) {
        uint8_t *p = realloc(run->payload, need);
        if (p == NULL) {
            snprintf(run->error, sizeof run->error, "out of memory");
            return -1;
        }
        run->payload = p;
        run->payload_cap = need;
    }
    if (base64_decode(b64, n, run->payload, len) != 0) {
        snprintf(run->error, sizeof run->error, "Data is not valid base64");
        return -1;
    }
    return 0;
}

/* Parse the payload with sjson and check its uuid. */
static int check_payload_sjson(struct parse_run *run, size_t len)
{
    struct sjson_doc *doc = NULL;
    struct sjson_err err;
    if (sjson_parse((const char *)run->payload, len, NULL, &doc, &err) != 0) {
        snprintf(run->error, sizeof run->error,
                 "payload is not valid JSON: %s at offset %zu", err.message,
                 err.offset);
        return -1;
    }
    const struct sjson_value *uuid =
        sjson_object_get(sjson_doc_root(doc), "uuid");
    bool ok = uuid != NULL && uuid->type == SJSON_STRING && uuid->len > 0;
    sjson_doc_free(doc);
    if (!ok) {
        snprintf(run->error, sizeof run->error,
                 "payload has no string \"uuid\"");
        return -1;
    }
    return 0;
}

static int check_payload_jansson(struct parse_run *run, size_t len)
{
    json_error_t err;
    json_t *root = json_loadb((const char *)run->payload, len,
                              JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        snprintf(run->error, sizeof run->error, "payload is not valid JSON: %s",
                 err.text);
        return -1;
    }
    const json_t *uuid = json_object_get(root, "uuid");
    bool ok = json_is_string(uuid) && json_string_length(uuid) > 0;
    json_decref(root);
    if (!ok) {
        snprintf(run->error, sizeof run->error,
                 "payload has no string \"uuid\"");
        return -1;
    }
    return 0;
}

static int parse_line_sjson(struct parse_run *run, const char *line, size_t n)
{
    struct sjson_doc *doc = NULL;
    struct sjson_err err;
    if (sjson_parse(line, n, NULL, &doc, &err) != 0) {
        snprintf(run->error, sizeof run->error,
                 "record is not valid JSON: %s at offset %zu", err.message,
                 err.offset);
        return -1;
    }
    const struct sjson_value *data =
        sjson_object_get(sjson_doc_root(doc), "Data");
    size_t len = 0;
    int rc = -1;
    if (data == NULL || data->type != SJSON_STRING)
        snprintf(run->error, sizeof run->error, "record has no string Data");
    else
        rc = decode_data(run, data->str, data->len, &len);
    sjson_doc_free(doc);
    if (rc != 0)
        return -1;
    return check_payload_sjson(run, len);
}

static int parse_line_jansson(struct parse_run *run, const char *line, size_t n)
{
    json_error_t err;
    json_t *root = json_loadb(line, n, JSON_REJECT_DUPLICATES, &err);
    if (root == NULL) {
        snprintf(run->error, sizeof run->error, "record is not valid JSON: %s",
                 err.text);
        return -1;
    }
    const json_t *data = json_object_get(root, "Data");
    size_t len = 0;
    int rc = -1;
    if (!json_is_string(data))
        snprintf(run->error, sizeof run->error, "record has no string Data");
    else
        rc = decode_data(run, json_string_value(data), json_string_length(data),
                         &len);
    json_decref(root);
    if (rc != 0)
        return -1;
    if (run->parser == PARSER_MIXED)
        return check_payload_sjson(run, len);
    return check_payload_jansson(run, len);
}

static int parse_line(struct parse_run *run, const char *line, size_t n)
{
    run->line_no++;
    if (run->parser == PARSER_SJSON)
        return parse_line_sjson(run, line, n);
    return parse_line_jansson(run, line, n);
}

/* Parse every complete line of block, after the partial line in *carry.
 * What follows the last newline goes back to *carry. */
static int parse_block(struct parse_run *run, const char *block, size_t n,
                       char **carry, size_t *carry_len, size_t *carry_cap)
{
    const char *p = block, *end = block + n;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t part = (size_t)((nl != NULL ? nl : end) - p);
        if (*carry_len + part > *carry_cap && (nl == NULL || *carry_len > 0)) {
            size_t cap = (*carry_len + part) * 2;
            char *c = realloc(*carry, cap);
            if (c == NULL) {
                snprintf(run->error, sizeof run->error, "out of memory");
                return -1;
            }
            *carry = c;
            *carry_cap = cap;
        }
        if (nl == NULL) {
            memcpy(*carry + *carry_len, p, part);
            *carry_len += part;
            return 0;
        }
        int rc;
        if (*carry_len > 0) {
            memcpy(*carry + *carry_len, p, part);
            rc = parse_line(run, *carry, *carry_len + part);
            *carry_len = 0;
        } else {
            rc = parse_line(run, p, part);
        }
        if (rc != 0)
            return -1;
        p = nl + 1;
    }
    return 0;
}

/* Parse every line of the file open as fd. Returns 0, or -1 with
 * run->error set. */
static int parse_file(struct parse_run *run, int fd, uint64_t *bytes)
{
    char *block = malloc(BLOCK_BYTES);
    char *carry = NULL;
    size_t carry_len = 0, carry_cap = 0;
    int rc = 0;
    if (block == NULL) {
        snprintf(run->error, sizeof run->error, "out of memory");
        return -1;
    }
    for (;;) {
        ssize_t n = read(fd, block, BLOCK_BYTES);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(run->error, sizeof run->error, "read failed: %s",
                     strerror(errno));
            rc = -1;
            break;
        }
        if (n == 0)
            break;
        *bytes += (uint64_t)n;
        rc = parse_block(run, block, (size_t)n, &carry, &carry_len, &carry_cap);
        if (rc != 0)
            break;
    }
    /* A last line without a newline. */
    if (rc == 0 && carry_len > 0)
        rc = parse_line(run, carry, carry_len);
    free(carry);
    free(block);
    return rc;
}

static int parse_parser_name(const char *name, enum parser *out)
{
    for (size_t i = 0; i < sizeof parser_names / sizeof parser_names[0]; i++) {
        if (strcmp(name, parser_names[i]) == 0) {
            *out = (enum parser)i;
            return 0;
        }
    }
    return -1;
}

int main(int argc, char **argv)
{
    struct parse_run run = {0};
    if (argc != 4 || strcmp(argv[1], "--parser") != 0) {
        fputs("usage: parse_bench --parser sjson|jansson|mixed FILE\n", stderr);
        return 2;
    }
    if (parse_parser_name(argv[2], &run.parser) != 0) {
        fprintf(stderr,
                "parse_bench: invalid --parser \"%s\" (expected sjson, "
                "jansson or mixed)\n",
                argv[2]);
        return 2;
    }
    run.path = argv[3];
    int fd = open(run.path, O_RDONLY);
    if (fd < 0) {
        fprintf(stderr, "parse_bench: failed to open %s: %s\n", run.path,
                strerror(errno));
        return 1;
    }

    double wall_start = clock_seconds(CLOCK_MONOTONIC);
    double cpu_start = clock_seconds(CLOCK_PROCESS_CPUTIME_ID);
    uint64_t bytes = 0;
    int rc = parse_file(&run, fd, &bytes);
    double wall = clock_seconds(CLOCK_MONOTONIC) - wall_start;
    double cpu = clock_seconds(CLOCK_PROCESS_CPUTIME_ID) - cpu_start;
    close(fd);
    free(run.payload);
    if (rc != 0) {
        fprintf(stderr, "parse_bench: %s:%" PRIu64 ": %s\n", run.path,
                run.line_no, run.error);
        return 1;
    }

    printf("{\"bench\":\"parse\",\"parser\":\"%s\",\"records\":%" PRIu64
           ",\"bytes\":%" PRIu64 ",\"wall_s\":%.4f,\"cpu_s\":%.4f,"
           "\"records_per_wall_s\":%.0f,\"records_per_cpu_s\":%.0f}\n",
           parser_names[run.parser], run.line_no, bytes, wall, cpu,
           per_second(run.line_no, wall), per_second(run.line_no, cpu));
    return 0;
}
