/*
 * `podium record`: capture a live stream into a recording for
 * `podium replay`, or convert `aws kinesis get-records` output into one
 * (--import, daemon/record_import.c).
 *
 * The capture reads every shard with the shard reader of `podium run`, so
 * children of a split or merge start only after their parents were read
 * to their end. The reader keeps KPL aggregates whole (keep_aggregates),
 * so each line is one Kinesis record as received: an aggregate's Data is
 * its raw bytes and the line has no SubSequenceNumber, and replay splits
 * it as the reader would. Lines of one shard are in sequence order
 * because the reader hands over one batch per shard at a time and each
 * batch is written before the shard is read further. Lines of different
 * shards interleave.
 *
 * Positions live in memory only: the capture opens no store and stores no
 * checkpoint, so it never moves the positions of `podium run`. Every
 * capture starts at --start (TRIM_HORIZON by default) on each shard that
 * has no parent.
 *
 * The file is created, or an existing one emptied, only once the first
 * ListShards succeeded, so a mistyped stream name or endpoint leaves an
 * existing file as it was. It is flushed at least once a second, so a
 * killed capture loses at most the last second of records. It stops on SIGINT
 * or SIGTERM, once every shard has been caught up for --until-idle seconds, or
 * after
 * --max-records Kinesis records, and then flushes and closes the file and
 * prints a summary with the records of each shard on standard error.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/aws.h"
#include "common/log.h"

/* How often the loop flushes the file and checks for idleness. */
#define RECORD_TICK_MS 200
/* Maximum --until-idle, in seconds. */
#define RECORD_MAX_UNTIL_IDLE_S 86400
/* Maximum --max-records. */
#define RECORD_MAX_RECORDS 1000000000000LL

struct record_options {
    const char *out;            /* "-" is standard output */
    enum reader_position start; /* READER_TRIM_HORIZON or READER_LATEST */
    int64_t until_idle_s;       /* 0: never stop for idleness */
    int64_t max_records;        /* 0: no limit */
};

/* Records written for one shard. */
struct shard_count {
    char *shard_id;
    uint64_t records;
    char *last_seq; /* NULL while none */
};

enum stop_reason {
    STOP_NONE,
    STOP_SIGNAL,
    STOP_IDLE,
    STOP_MAX_RECORDS,
    STOP_ERROR
};

struct recorder {
    uv_loop_t loop;
    struct podium_config cfg;
    struct record_options opts;
    struct httpc *http;
    struct reader *reader;
    struct aws_endpoint endpoint;
    struct aws_credentials creds;
    uv_signal_t sigint;
    uv_signal_t sigterm;
    uv_timer_t tick;

    FILE *out;
    bool unflushed; /* lines written since the last fflush */
    struct strbuf line;
    struct shard_count *shards;
    size_t shard_count;
    uint64_t records;

    int64_t idle_since_ms; /* -1 while some shard is not caught up */
    enum stop_reason stop;
    bool stopping;
    int exit_code;
    int open_handles;
};

static const char *stop_reason_name(enum stop_reason reason)
{
    switch (reason) {
    case STOP_SIGNAL:
        return "signal";
    case STOP_IDLE:
        return "until-idle";
    case STOP_MAX_RECORDS:
        return "max-records";
    case STOP_ERROR:
        return "error";
    default:
        return "none";
    }
}

/* ---- writing ---------------------------------------------------------- */

/* The count of shard_id, created when new. NULL when out of memory. */
static struct shard_count *count_for(struct recorder *r, const char *shard_id)
{
    for (size_t i = 0; i < r->shard_count; i++) {
        if (strcmp(r->shards[i].shard_id, shard_id) == 0)
            return &r->shards[i];
    }
    struct shard_count *p =
        realloc(r->shards, (r->shard_count + 1) * sizeof *p);
    if (p == NULL)
        return NULL;
    r->shards = p;
    struct shard_count *c = &r->shards[r->shard_count];
    *c = (struct shard_count){strdup(shard_id), 0, NULL};
    if (c->shard_id == NULL)
        return NULL;
    r->shard_count++;
    return c;
}

/* Write one Kinesis record. Returns 0, or -1 after logging why. */
static int write_record(struct recorder *r, struct shard_count *count,
                        const struct shard_record *rec)
{
    struct recording_line line = {
        .shard_id = count->shard_id,
        .seq = rec->seq,
        .subseq = -1,
        .arrival_ms = rec->arrival_ms,
        .partition_key = rec->partition_key,
        .partition_key_len = strlen(rec->partition_key),
        .data = rec->data,
        .len = rec->len,
    };
    struct log_ids ids = {.shard = count->shard_id, .seq = rec->seq};

    sb_reset(&r->line);
    if (recording_append_line(&r->line, &line) != 0) {
        log_error("record", &ids, "out of memory while writing a record");
        return -1;
    }
    if (fwrite(r->line.data, 1, r->line.len, r->out) != r->line.len) {
        log_error("record", &ids, "failed to write %s: %s", r->opts.out,
                  strerror(errno));
        return -1;
    }
    char *seq = strdup(rec->seq);
    if (seq == NULL) {
        log_error("record", &ids, "out of memory while counting a record");
        return -1;
    }
    free(count->last_seq);
    count->last_seq = seq;
    count->records++;
    r->records++;
    r->unflushed = true;
    return 0;
}

static int flush_out(struct recorder *r)
{
    if (!r->unflushed)
        return 0;
    r->unflushed = false;
    if (fflush(r->out) == 0)
        return 0;
    log_error("record", NULL, "failed to write %s: %s", r->opts.out,
              strerror(errno));
    return -1;
}

/* ---- stopping --------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *handle)
{
    struct recorder *r = handle->data;
    r->open_handles--;
}

static void on_module_closed(void *arg)
{
    struct recorder *r = arg;
    r->open_handles--;
}

/* The reader has stopped: close the other handles so the loop ends. */
static void on_reader_stopped(void *arg)
{
    struct recorder *r = arg;
    r->open_handles = 3;
    uv_close((uv_handle_t *)&r->sigint, on_handle_closed);
    uv_close((uv_handle_t *)&r->sigterm, on_handle_closed);
    uv_close((uv_handle_t *)&r->tick, on_handle_closed);
    if (r->http != NULL) {
        r->open_handles++;
        httpc_close(r->http, on_module_closed, r);
        r->http = NULL;
    }
}

static void begin_stop(struct recorder *r, enum stop_reason reason)
{
    if (reason == STOP_ERROR)
        r->exit_code = 1;
    if (r->stopping)
        return;
    r->stopping = true;
    r->stop = reason;
    reader_stop(r->reader, on_reader_stopped, r);
}

/* ---- reader callbacks ------------------------------------------------- */

static int open_out(struct recorder *r);

static void on_batch(void *arg, struct shard_batch *batch)
{
    struct recorder *r = arg;
    struct shard_count *count = count_for(r, batch->shard_id);
    int rc = 0;

    if (count == NULL) {
        struct log_ids ids = {.shard = batch->shard_id};
        log_error("record", &ids, "out of memory while counting a shard");
        rc = -1;
    }
    if (rc == 0 && r->out == NULL && open_out(r) != 0)
        rc = -1;

    /* Once --max-records lines are written, the rest of the batch is not. */
    for (size_t i = 0; rc == 0 && i < batch->count; i++) {
        if (r->stop == STOP_MAX_RECORDS)
            break;
        rc = write_record(r, count, &batch->records[i]);
        if (rc == 0 && r->opts.max_records > 0 &&
            r->records >= (uint64_t)r->opts.max_records)
            begin_stop(r, STOP_MAX_RECORDS);
    }
    if (batch->count > 0)
        r->idle_since_ms = -1;
    if (rc != 0) {
        begin_stop(r, STOP_ERROR);
    } else if (!r->stopping) {
        /* The lines are in the file's buffer: the batch is done, and the
         * reader's in-memory position moves past it. */
        reader_batch_committed(r->reader, batch->shard_id);
    }
    shard_batch_free(batch);
}

static void on_ready(void *arg, size_t open_shards)
{
    struct recorder *r = arg;
    struct log_ids ids = {.stream = r->cfg.stream_name};
    if (r->out == NULL && open_out(r) != 0) {
        begin_stop(r, STOP_ERROR);
        return;
    }
    log_info("record", &ids, "ready: recording %zu open shards to %s",
             open_shards, r->opts.out);
}

static void on_reader_fatal(void *arg, const char *message)
{
    struct recorder *r = arg;
    struct log_ids ids = {.stream = r->cfg.stream_name};
    log_error("record", &ids, "stopping: %s", message);
    begin_stop(r, STOP_ERROR);
}

static void on_signal(uv_signal_t *handle, int signum)
{
    struct recorder *r = handle->data;
    if (r->stopping) {
        log_warn("record", NULL, "second signal %d: exiting now", signum);
        if (r->out != NULL)
            fflush(r->out);
        exit(r->exit_code);
    }
    log_info("record", NULL, "received signal %d", signum);
    begin_stop(r, STOP_SIGNAL);
}

static void on_tick(uv_timer_t *timer)
{
    struct recorder *r = timer->data;
    int64_t now = log_now_ms();

    if (flush_out(r) != 0) {
        begin_stop(r, STOP_ERROR);
        return;
    }
    if (r->stopping || r->opts.until_idle_s == 0)
        return;
    if (!reader_caught_up(r->reader)) {
        r->idle_since_ms = -1;
        return;
    }
    if (r->idle_since_ms < 0)
        r->idle_since_ms = now;
    if (now - r->idle_since_ms >= r->opts.until_idle_s * 1000) {
        log_info("record", NULL,
                 "every shard has been caught up for %" PRId64
                 " s (--until-idle): stopping",
                 r->opts.until_idle_s);
        begin_stop(r, STOP_IDLE);
    }
}

/* ---- summary ---------------------------------------------------------- */

/* Print one JSON line on standard error with the records of every shard
 * the reader knew, those without records included. */
static void print_summary(struct recorder *r)
{
    struct strbuf sb;
    sb_init(&sb, (size_t)1 << 30);
    sb_puts(&sb, "{\"out\":");
    sb_json_string(&sb, r->opts.out, strlen(r->opts.out));
    sb_printf(&sb, ",\"records\":%" PRIu64 ",\"stopped\":\"%s\",\"shards\":{",
              r->records, stop_reason_name(r->stop));
    size_t known = r->reader != NULL ? reader_shard_count(r->reader) : 0;
    bool first = true;
    for (size_t i = 0; i < known; i++) {
        struct reader_shard_info info;
        if (reader_shard_info(r->reader, i, &info) != 0)
            continue;
        (void)count_for(r, info.shard_id);
    }
    for (size_t i = 0; i < r->shard_count; i++) {
        const struct shard_count *c = &r->shards[i];
        sb_puts(&sb, first ? "" : ",");
        first = false;
        sb_json_string(&sb, c->shard_id, strlen(c->shard_id));
        sb_printf(&sb, ":{\"records\":%" PRIu64 ",\"last_sequence_number\":",
                  c->records);
        if (c->last_seq != NULL)
            sb_json_string(&sb, c->last_seq, strlen(c->last_seq));
        else
            sb_puts(&sb, "null");
        sb_puts(&sb, "}");
    }
    sb_puts(&sb, "}}\n");
    if (sb_error(&sb) == 0)
        fputs(sb.data, stderr);
    sb_free(&sb);
}

/* ---- start-up --------------------------------------------------------- */

/* Resolve endpoint and credentials. Returns 0 or an exit status. */
static int prepare_aws(struct recorder *r)
{
    char err[512];
    if (r->cfg.stream_name == NULL) {
        fprintf(stderr, "podium record: stream.name is not set; set it in the "
                        "configuration file, with PODIUM_STREAM_NAME or with "
                        "--set stream.name=NAME\n");
        return 2;
    }
    if (aws_endpoint_init(&r->endpoint, r->cfg.kinesis_endpoint, r->cfg.region,
                          "kinesis", err, sizeof err) != 0) {
        fprintf(stderr, "podium record: invalid kinesis.endpoint: %s\n", err);
        return 2;
    }
    /* Fails before the output file is opened; the fetch comes later. */
    return daemon_credentials_check(&r->cfg, "podium record");
}

/* Open the recording, once the stream is known to exist. Returns 0, or 1
 * after logging why. */
static int open_out(struct recorder *r)
{
    if (strcmp(r->opts.out, "-") == 0) {
        r->out = stdout;
        return 0;
    }
    r->out = fopen(r->opts.out, "wb");
    if (r->out != NULL)
        return 0;
    log_error("record", NULL,
              "cannot create %s: %s; check the path and its "
              "permissions",
              r->opts.out, strerror(errno));
    return 1;
}

static int start_reader(struct recorder *r)
{
    struct reader_config rc = {
        .stream_name = r->cfg.stream_name,
        .endpoint = &r->endpoint,
        .credentials = &r->creds,
        .initial_position = r->opts.start,
        .poll_interval_ms = r->cfg.poll_interval_ms,
        .request_timeout_ms = r->cfg.request_timeout_ms,
        .max_records = r->cfg.max_records,
        .shard_sync_interval_s = r->cfg.shard_sync_interval_s,
        .keep_aggregates = true,
    };
    struct reader_callbacks cbs = {r, on_batch, on_ready, on_reader_fatal};

    r->reader = reader_new(&r->loop, r->http, &rc, &cbs);
    if (r->reader == NULL) {
        log_error("record", NULL, "failed to create the shard reader");
        return -1;
    }
    /* No checkpoints: positions live in memory only. */
    return reader_start(r->reader, NULL, 0);
}

static int init_loop(struct recorder *r)
{
    if (uv_loop_init(&r->loop) != 0)
        return -1;
    uv_signal_init(&r->loop, &r->sigint);
    uv_signal_init(&r->loop, &r->sigterm);
    uv_timer_init(&r->loop, &r->tick);
    r->sigint.data = r->sigterm.data = r->tick.data = r;
    uv_signal_start(&r->sigint, on_signal, SIGINT);
    uv_signal_start(&r->sigterm, on_signal, SIGTERM);
    uv_timer_start(&r->tick, on_tick, RECORD_TICK_MS, RECORD_TICK_MS);
    return httpc_new(&r->loop, &r->http);
}

/* Flush and close the file. Returns 0, or 1 after logging why. */
static int close_out(struct recorder *r)
{
    if (r->out == NULL) {
        if (strcmp(r->opts.out, "-") != 0)
            log_info("record", NULL,
                     "the stream was never listed, so %s was not created or "
                     "changed",
                     r->opts.out);
        return 0;
    }
    bool ok = fflush(r->out) == 0;
    if (r->out != stdout)
        ok = fclose(r->out) == 0 && ok;
    r->out = NULL;
    if (ok)
        return 0;
    log_error("record", NULL, "failed to write %s: %s", r->opts.out,
              strerror(errno));
    return 1;
}

static int record_stream(struct recorder *r)
{
    int rc = prepare_aws(r);
    if (rc != 0)
        goto out;
    if (init_loop(r) != 0) {
        log_error("record", NULL, "failed to set up the event loop");
        rc = 1;
        goto out;
    }
    int creds_rc =
        daemon_credentials_open(&r->loop, &r->cfg, "podium record", &r->creds);
    if (creds_rc != 0 || start_reader(r) != 0) {
        /* The reader has no handle after a failed start. */
        reader_free(r->reader);
        r->reader = NULL;
        r->stopping = true;
        r->stop = STOP_ERROR;
        r->exit_code = creds_rc != 0 ? creds_rc : 1;
        on_reader_stopped(r);
    } else {
        struct log_ids ids = {.stream = r->cfg.stream_name};
        log_info("record", &ids, "recording stream %s to %s",
                 r->cfg.stream_name, r->opts.out);
    }
    uv_run(&r->loop, UV_RUN_DEFAULT);
    rc = r->exit_code;
    if (close_out(r) != 0)
        rc = 1;
    print_summary(r);
    reader_free(r->reader);
    daemon_credentials_close(&r->creds, NULL, NULL);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&r->loop) != 0)
        log_warn("record", NULL, "handles still open at exit");
out:
    if (r->out != NULL && r->out != stdout)
        fclose(r->out);
    aws_endpoint_clear(&r->endpoint);
    aws_credentials_clear(&r->creds);
    return rc;
}

/* ---- arguments -------------------------------------------------------- */

static void record_usage(FILE *out)
{
    fputs("usage: podium record --out FILE [options]\n"
          "       podium record --import --shard-id ID --out FILE\n"
          "           [--on-bad-record fail|skip] PAGE.json...\n"
          "\n"
          "Write the Kinesis records of stream.name, every shard, to FILE\n"
          "in the recording format of `podium replay` (JSON lines, one\n"
          "Kinesis record a line, KPL aggregates kept whole). Positions are\n"
          "kept in memory only; no store is opened.\n"
          "\n"
          "options:\n"
          "  --out FILE            the recording ('-' = standard output);\n"
          "                        an existing file is replaced once the\n"
          "                        stream was listed, and kept when it\n"
          "                        cannot be\n"
          "  --start POSITION      trim_horizon (default): every record the\n"
          "                        stream retains; latest: records put after\n"
          "                        the start only\n"
          "  --until-idle S        stop once every shard has been caught up\n"
          "                        for S seconds, 1..86400 (default: run\n"
          "                        until SIGINT or SIGTERM)\n"
          "  --max-records N       stop after N Kinesis records\n"
          "  --config FILE, --set KEY=VALUE   as for run\n"
          "\n"
          "--import converts the output of `aws kinesis get-records` (pages\n"
          "of one shard, in the order they were read) into a recording of\n"
          "shard ID. ApproximateArrivalTimestamp may be ISO 8601 text (AWS\n"
          "CLI v2) or seconds (AWS CLI v1). A bad record is reported with\n"
          "its file and index; under --on-bad-record fail (default) nothing\n"
          "is written and the exit status is 1, under skip it is left out\n"
          "and counted.\n",
          out);
}

static int parse_count(const char *name, const char *text, int64_t max,
                       int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < 1 || v > max) {
        fprintf(stderr,
                "podium record: invalid --%s \"%s\": expected an integer "
                "from 1 to %" PRId64 "\n",
                name, text, max);
        return -1;
    }
    *out = v;
    return 0;
}

/* The options of both modes as given, to reject a mix of the two. */
struct record_args {
    struct record_options live;
    struct import_options import;
    bool import_mode;
    const char *live_option; /* a capture option given, for messages */
    const char *import_option;
    bool config_given;
};

static int parse_option(int opt, struct record_args *a,
                        struct common_opts *common)
{
    switch (opt) {
    case 'o':
        a->live.out = a->import.out = optarg;
        return 0;
    case 'p':
        a->live_option = "--start";
        if (strcmp(optarg, "trim_horizon") == 0) {
            a->live.start = READER_TRIM_HORIZON;
            return 0;
        }
        if (strcmp(optarg, "latest") == 0) {
            a->live.start = READER_LATEST;
            return 0;
        }
        fprintf(stderr,
                "podium record: invalid --start \"%s\": expected "
                "trim_horizon or latest\n",
                optarg);
        return -1;
    case 'u':
        a->live_option = "--until-idle";
        return parse_count("until-idle", optarg, RECORD_MAX_UNTIL_IDLE_S,
                           &a->live.until_idle_s);
    case 'm':
        a->live_option = "--max-records";
        return parse_count("max-records", optarg, RECORD_MAX_RECORDS,
                           &a->live.max_records);
    case 'i':
        a->import_mode = true;
        return 0;
    case 'd':
        a->import_option = "--shard-id";
        a->import.shard_id = optarg;
        return 0;
    case 'b':
        a->import_option = "--on-bad-record";
        if (strcmp(optarg, "skip") == 0 || strcmp(optarg, "fail") == 0) {
            a->import.skip_bad_records = strcmp(optarg, "skip") == 0;
            return 0;
        }
        fprintf(stderr,
                "podium record: invalid --on-bad-record \"%s\": expected "
                "fail or skip\n",
                optarg);
        return -1;
    case 'c':
        a->config_given = true;
        common->config_file = optarg;
        return 0;
    case 's':
        a->config_given = true;
        return common_opts_add_set(common, optarg);
    }
    record_usage(stderr);
    return -1;
}

/* Check the options of the mode chosen. Returns 0 or -1 (printed). */
static int check_mode(struct record_args *a, int argc, char **argv)
{
    if (a->live.out == NULL) {
        fprintf(stderr, "podium record: --out FILE is missing; give the "
                        "file to write, or - for standard output\n");
        return -1;
    }
    if (!a->import_mode) {
        if (a->import_option != NULL || optind < argc) {
            fprintf(stderr, "podium record: %s%s%s only goes with --import\n",
                    a->import_option ? a->import_option : "a file argument",
                    a->import_option ? "" : " such as ",
                    a->import_option ? "" : argv[optind]);
            return -1;
        }
        return 0;
    }
    if (a->live_option != NULL || a->config_given) {
        fprintf(stderr,
                "podium record: %s does not apply to --import, which reads "
                "files and no stream\n",
                a->live_option ? a->live_option : "--config or --set");
        return -1;
    }
    if (a->import.shard_id == NULL || a->import.shard_id[0] == '\0' ||
        strlen(a->import.shard_id) > 128) {
        fprintf(stderr,
                "podium record: --import needs --shard-id ID (1 to 128 "
                "characters), the shard that the get-records output was "
                "read from, such as shardId-000000000000\n");
        return -1;
    }
    if (optind >= argc) {
        fprintf(stderr, "podium record: --import needs at least one file of "
                        "aws kinesis get-records output\n");
        return -1;
    }
    a->import.files = argv + optind;
    a->import.file_count = (size_t)(argc - optind);
    return 0;
}

static int parse_record_args(int argc, char **argv, struct record_args *a,
                             struct common_opts *common)
{
    static const struct option longopts[] = {
        {"out", required_argument, NULL, 'o'},
        {"start", required_argument, NULL, 'p'},
        {"until-idle", required_argument, NULL, 'u'},
        {"max-records", required_argument, NULL, 'm'},
        {"import", no_argument, NULL, 'i'},
        {"shard-id", required_argument, NULL, 'd'},
        {"on-bad-record", required_argument, NULL, 'b'},
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (opt == 'h') {
            record_usage(stdout);
            return 1;
        }
        if (parse_option(opt, a, common) != 0)
            return 2;
    }
    return check_mode(a, argc, argv) == 0 ? 0 : 2;
}

int cmd_record(int argc, char **argv)
{
    struct common_opts common = {0};
    struct record_args args = {0};
    args.live.start = READER_TRIM_HORIZON;

    int rc = parse_record_args(argc, argv, &args, &common);
    if (rc != 0) {
        free(common.sets);
        return rc == 1 ? 0 : rc;
    }
    if (args.import_mode) {
        free(common.sets);
        return record_import(&args.import);
    }
    struct recorder *r = calloc(1, sizeof *r);
    if (r == NULL) {
        free(common.sets);
        return 1;
    }
    r->opts = args.live;
    r->idle_since_ms = -1;
    sb_init(&r->line, (size_t)64 << 20);
    rc = load_config(&common, &r->cfg);
    free(common.sets);
    if (rc == 0) {
        log_set_level((enum log_level)r->cfg.log_level);
        rc = record_stream(r);
        cfg_free(&r->cfg);
    }
    for (size_t i = 0; i < r->shard_count; i++) {
        free(r->shards[i].shard_id);
        free(r->shards[i].last_seq);
    }
    free(r->shards);
    sb_free(&r->line);
    free(r);
    return rc;
}
