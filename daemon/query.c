/*
 * `podium query`: print race results, a class leaderboard, the class
 * history or the stored samples from the store as JSON on standard output.
 *
 * The store is opened read-only and never migrated, so a query can run
 * while `podium run` writes the same database: WAL mode gives the reader
 * the last committed batch. Results and class leaderboards are printed as
 * the last revision that podium published, byte for byte.
 *
 * Exit status: 0 when something was found and printed, 1 when nothing is
 * stored for the ids given (reported on standard error) or the store
 * cannot be read, 2 on a usage or configuration error.
 */
#include "daemon/daemon.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sjson.h"
#include "common/strbuf.h"

#define QUERY_MAX_SECOND 86400 /* the largest race.max_seconds */

enum query_kind {
    QUERY_RESULTS,
    QUERY_CLASS_LEADERBOARD,
    QUERY_CLASS_HISTORY,
    QUERY_SAMPLES
};

struct query_opts {
    enum query_kind kind;
    struct common_opts common;
    const char *race; /* argument texts, NULL when not given */
    const char *class_id;
    const char *racer;
    int32_t second; /* 0: every second */
};

static void query_usage(FILE *out)
{
    fputs(
        "usage: podium query results --race ID [options]\n"
        "       podium query class-leaderboard --class ID [options]\n"
        "       podium query class-history --class ID [--racer ID]\n"
        "           [--second N] [options]\n"
        "       podium query samples [--race ID] [--racer ID] [--second N]\n"
        "           [options]\n"
        "\n"
        "Print from the database at store.path, as one JSON document on\n"
        "standard output:\n"
        "  results            the last published results of a race\n"
        "  class-leaderboard  the last published all-time leaderboard of a "
        "class\n"
        "  class-history      each rider's best output at each second of a\n"
        "                     race in the class, as {\"classId\":...,"
        "\"entries\":\n"
        "                     "
        "[{\"second\":...,\"racerId\":...,\"output\":...,\n"
        "                     \"raceId\":...}]}, by second, then output\n"
        "                     (highest first), then racerId\n"
        "  samples            the stored sample of each (race, rider,\n"
        "                     second), one JSON object per line, by raceId,\n"
        "                     racerId, then second: {\"raceId\":...,\n"
        "                     \"racerId\":...,\"second\":...,\"classId\":...,\n"
        "                     "
        "\"name\":...,\"uuid\":...,\"deviceTimestamp\":...,\n"
        "                     \"arrivalMs\":...,\"cadence\":...,\n"
        "                     "
        "\"resistance\":...,\"output\":...,\"final\":...}\n"
        "\n"
        "An ID that is a JSON integer (42) is a number, and one in double\n"
        "quotes ('\"42\"') is a string, as in the records; any other text is\n"
        "a string as written (R-7). --second N takes a second from 1 to "
        "86400.\n"
        "\n"
        "options:\n"
        "  --config FILE     configuration file, as for podium run\n"
        "  --set KEY=VALUE   override one setting (store.path=FILE); "
        "repeatable\n"
        "\n"
        "The database is opened read-only and may be in use by podium run.\n"
        "Exit status: 0 found, 1 nothing stored for the ids given or the\n"
        "database cannot be read, 2 invalid arguments.\n",
        out);
}

/*
 * Read an id argument into *id, the way the records write ids. Returns 0,
 * or -1 after printing what is wrong with it.
 */
static int parse_id_arg(const char *option, const char *text, struct agg_id *id)
{
    size_t len = strlen(text);

    if (agg_id_from_json(text, len, id) == 0)
        return 0;
    if (text[0] == '"') {
        fprintf(stderr,
                "podium query: invalid %s '%s': a quoted id must be a JSON "
                "string of 1 to %d bytes without control characters\n",
                option, text, AGG_MAX_ID_BYTES);
        return -1;
    }
    if (len == 0 || len > AGG_MAX_ID_BYTES) {
        fprintf(stderr,
                "podium query: invalid %s '%s': an id has 1 to %d bytes\n",
                option, text, AGG_MAX_ID_BYTES);
        return -1;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c < 0x20 || c == 0x7f) {
            fprintf(stderr,
                    "podium query: invalid %s: byte %zu is a control "
                    "character, which no id contains\n",
                    option, i + 1);
            return -1;
        }
    }
    memset(id, 0, sizeof *id);
    memcpy(id->str, text, len);
    id->len = (uint8_t)len;
    return 0;
}

/* The id argument as the JSON text the store uses as its key. Returns 0,
 * or -1 after printing the error. */
static int id_key(const char *option, const char *text, struct strbuf *key)
{
    struct agg_id id;

    if (parse_id_arg(option, text, &id) != 0)
        return -1;
    sb_reset(key);
    agg_id_to_json(&id, key);
    return sb_error(key) == 0 ? 0 : -1;
}

static int parse_second(const char *text, int32_t *second)
{
    char *end = NULL;
    long value = strtol(text, &end, 10);

    if (text[0] < '0' || text[0] > '9' || *end != '\0' || value < 1 ||
        value > QUERY_MAX_SECOND) {
        fprintf(stderr,
                "podium query: invalid --second '%s': expected an integer "
                "from 1 to %d\n",
                text, QUERY_MAX_SECOND);
        return -1;
    }
    *second = (int32_t)value;
    return 0;
}

static int parse_kind(const char *word, enum query_kind *kind)
{
    if (strcmp(word, "results") == 0)
        *kind = QUERY_RESULTS;
    else if (strcmp(word, "class-leaderboard") == 0)
        *kind = QUERY_CLASS_LEADERBOARD;
    else if (strcmp(word, "class-history") == 0)
        *kind = QUERY_CLASS_HISTORY;
    else if (strcmp(word, "samples") == 0)
        *kind = QUERY_SAMPLES;
    else
        return -1;
    return 0;
}

/* Check which options the query kind requires and accepts. */
static int check_options(const struct query_opts *q)
{
    static const char *const names[] = {"results", "class-leaderboard",
                                        "class-history", "samples"};
    const char *name = names[q->kind];
    const char *missing = NULL, *extra = NULL;

    if (q->kind == QUERY_SAMPLES) {
        extra = q->class_id ? "--class" : NULL;
    } else if (q->kind == QUERY_RESULTS) {
        missing = q->race == NULL ? "--race ID" : NULL;
        extra = q->class_id ? "--class"
                : q->racer  ? "--racer"
                : q->second ? "--second"
                            : NULL;
    } else {
        missing = q->class_id == NULL ? "--class ID" : NULL;
        if (q->race != NULL)
            extra = "--race";
        else if (q->kind == QUERY_CLASS_LEADERBOARD && q->racer != NULL)
            extra = "--racer";
        else if (q->kind == QUERY_CLASS_LEADERBOARD && q->second != 0)
            extra = "--second";
    }
    if (missing != NULL) {
        fprintf(stderr,
                "podium query %s: missing %s; run podium query --help for "
                "an example\n",
                name, missing);
        return -1;
    }
    if (extra != NULL) {
        fprintf(stderr,
                "podium query %s: %s does not apply to this query; remove "
                "it\n",
                name, extra);
        return -1;
    }
    return 0;
}

/* Parse argv (argv[0] is "query"). Returns 0, 2 on a usage error, or -1
 * when --help was printed. */
static int parse_args(int argc, char **argv, struct query_opts *q)
{
    static const struct option longopts[] = {
        {"config", required_argument, NULL, 'c'},
        {"set", required_argument, NULL, 's'},
        {"race", required_argument, NULL, 'r'},
        {"class", required_argument, NULL, 'k'},
        {"racer", required_argument, NULL, 'i'},
        {"second", required_argument, NULL, 'n'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int opt;

    if (argc >= 2 &&
        (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        query_usage(stdout);
        return -1;
    }
    if (argc < 2 || parse_kind(argv[1], &q->kind) != 0) {
        fprintf(stderr,
                "podium query: %s%s%s; expected results, class-leaderboard, "
                "class-history or samples\n\n",
                argc < 2 ? "missing what to query" : "unknown query \"",
                argc < 2 ? "" : argv[1], argc < 2 ? "" : "\"");
        query_usage(stderr);
        return 2;
    }
    argc--;
    argv++;
    while ((opt = getopt_long(argc, argv, "c:s:h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            q->common.config_file = optarg;
            break;
        case 's':
            if (common_opts_add_set(&q->common, optarg) != 0)
                return 2;
            break;
        case 'r':
            q->race = optarg;
            break;
        case 'k':
            q->class_id = optarg;
            break;
        case 'i':
            q->racer = optarg;
            break;
        case 'n':
            if (parse_second(optarg, &q->second) != 0)
                return 2;
            break;
        case 'h':
            query_usage(stdout);
            return -1;
        default:
            fputs("run podium query --help for the options\n", stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "podium query: unexpected argument \"%s\"\n",
                argv[optind]);
        return 2;
    }
    return check_options(q) == 0 ? 0 : 2;
}

/* ---- printing ------------------------------------------------------------ */

static int print_message(void *arg, int32_t revision, const char *payload,
                         size_t len)
{
    (void)arg;
    (void)revision;
    fwrite(payload, 1, len, stdout);
    fputc('\n', stdout);
    return 0;
}

struct history_entry {
    struct agg_id racer;
    char *race_json;
    int32_t second;
    int64_t output4;
};

struct history_list {
    struct history_entry *items;
    size_t count;
    size_t cap;
    bool failed;
};

static int collect_history(void *arg, const struct store_history_row *row)
{
    struct history_list *list = arg;

    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        struct history_entry *p = realloc(list->items, cap * sizeof *p);
        if (p == NULL) {
            list->failed = true;
            return -1;
        }
        list->items = p;
        list->cap = cap;
    }
    struct history_entry *e = &list->items[list->count];
    if (agg_id_from_json(row->racer_id, strlen(row->racer_id), &e->racer) !=
        0) {
        fprintf(stderr,
                "podium query: the stored class history has an invalid "
                "racerId %s\n",
                row->racer_id);
        list->failed = true;
        return -1;
    }
    e->race_json = strdup(row->race_id);
    if (e->race_json == NULL) {
        list->failed = true;
        return -1;
    }
    e->second = row->second;
    e->output4 = row->output4;
    list->count++;
    return 0;
}

/* By second, then output (highest first), then racerId. */
static int history_cmp(const void *pa, const void *pb)
{
    const struct history_entry *a = pa, *b = pb;
    if (a->second != b->second)
        return a->second < b->second ? -1 : 1;
    if (a->output4 != b->output4)
        return a->output4 > b->output4 ? -1 : 1;
    return agg_id_cmp(&a->racer, &b->racer);
}

static void print_history(const char *class_json,
                          const struct history_list *list)
{
    struct strbuf sb;

    sb_init(&sb, SIZE_MAX);
    sb_printf(&sb, "{\"classId\":%s,\"entries\":[", class_json);
    for (size_t i = 0; i < list->count; i++) {
        const struct history_entry *e = &list->items[i];
        sb_printf(&sb,
                  "%s{\"second\":%" PRId32 ",\"racerId\":", i > 0 ? "," : "",
                  e->second);
        agg_id_to_json(&e->racer, &sb);
        sb_puts(&sb, ",\"output\":");
        sb_fixed4(&sb, e->output4);
        sb_printf(&sb, ",\"raceId\":%s}", e->race_json);
    }
    sb_puts(&sb, "]}\n");
    fwrite(sb.data, 1, sb.len, stdout);
    sb_free(&sb);
}

/* ---- running a query ----------------------------------------------------- */

static int query_message(struct store *st, const struct query_opts *q,
                         const char *path)
{
    const bool results = q->kind == QUERY_RESULTS;
    const char *option = results ? "--race" : "--class";
    struct strbuf key;
    int rc;

    sb_init(&key, 1024);
    if (id_key(option, results ? q->race : q->class_id, &key) != 0) {
        sb_free(&key);
        return 2;
    }
    int found =
        store_last_message_get(st, results ? "results" : "class-leaderboard",
                               key.data, print_message, NULL);
    if (found < 0) {
        fprintf(stderr, "podium query: failed to read %s: %s\n", path,
                store_errmsg(st));
        rc = 1;
    } else if (found == 0) {
        fprintf(stderr,
                "podium query: no %s stored for %s %s in %s; the id is "
                "unknown, or %s\n",
                results ? "results" : "leaderboard", results ? "race" : "class",
                key.data, path,
                results ? "the race has not finished yet"
                        : "no race of the class has finished yet");
        rc = 1;
    } else {
        rc = 0;
    }
    sb_free(&key);
    return rc;
}

static int query_history(struct store *st, const struct query_opts *q,
                         const char *path)
{
    struct strbuf class_key, racer_key;
    struct history_list list = {0};
    int rc = 2;

    sb_init(&class_key, 1024);
    sb_init(&racer_key, 1024);
    if (id_key("--class", q->class_id, &class_key) != 0 ||
        (q->racer != NULL && id_key("--racer", q->racer, &racer_key) != 0))
        goto done;

    if (store_history_load(st, class_key.data, q->racer ? racer_key.data : NULL,
                           q->second, collect_history, &list) != 0) {
        if (!list.failed || list.count == list.cap)
            fprintf(stderr, "podium query: failed to read %s: %s\n", path,
                    list.failed ? "out of memory" : store_errmsg(st));
        rc = 1;
    } else if (list.count == 0) {
        fprintf(stderr,
                "podium query: no class history stored for class %s%s%s%s in "
                "%s; the ids are unknown, or no race of the class has "
                "finished yet\n",
                class_key.data, q->racer ? ", racer " : "",
                q->racer ? racer_key.data : "",
                q->second ? " at that second" : "", path);
        rc = 1;
    } else {
        qsort(list.items, list.count, sizeof list.items[0], history_cmp);
        print_history(class_key.data, &list);
        rc = 0;
    }
done:
    for (size_t i = 0; i < list.count; i++)
        free(list.items[i].race_json);
    free(list.items);
    sb_free(&class_key);
    sb_free(&racer_key);
    return rc;
}

/* ---- samples ------------------------------------------------------------- */

/* One stored sample: its key and its line of output. */
struct sample_entry {
    char *race;
    char *racer;
    int32_t second;
    size_t order; /* position in the log: the later copy of a key wins */
    char *line;
};

struct sample_list {
    const char *race; /* JSON keys to keep, or NULL for any */
    const char *racer;
    int32_t second; /* 0: any */
    struct sample_entry *items;
    size_t count;
    size_t cap;
    size_t seen;
    bool failed;
};

/* Write an optional text as a JSON string, or null. */
static void put_json_text(struct strbuf *sb, const char *s, size_t len)
{
    if (s == NULL)
        sb_puts(sb, "null");
    else
        sb_json_string(sb, s, len);
}

/*
 * Write a value stored in 1/10000 with its exact text: as a plain decimal
 * when the 4-decimal value is exact, else as the exact JSON number.
 */
static void put_value(struct strbuf *sb, int64_t v4, const char *exact)
{
    struct strbuf plain, canonical;

    if (exact == NULL) {
        sb_fixed4(sb, v4);
        return;
    }
    sb_init(&plain, 64);
    sb_init(&canonical, 64);
    sb_fixed4(&plain, v4);
    bool same =
        sb_error(&plain) == 0 &&
        sjson_number_canonical(plain.data, plain.len, &canonical) == 0 &&
        strcmp(canonical.data, exact) == 0;
    sb_puts(sb, same ? plain.data : exact);
    sb_free(&plain);
    sb_free(&canonical);
}

static char *sample_line(const struct store_sample *s)
{
    struct strbuf sb;

    sb_init(&sb, SIZE_MAX);
    sb_printf(&sb,
              "{\"raceId\":%s,\"racerId\":%s,\"second\":%" PRId32
              ",\"classId\":%s,\"name\":",
              s->race_id, s->racer_id, s->second,
              s->class_id ? s->class_id : "null");
    put_json_text(&sb, s->name, s->name_len);
    sb_puts(&sb, ",\"uuid\":");
    put_json_text(&sb, s->uuid, s->uuid_len);
    sb_printf(&sb,
              ",\"deviceTimestamp\":%" PRId64 ",\"arrivalMs\":%" PRId64
              ",\"cadence\":",
              s->device_ts_ms, s->arrival_ms);
    put_value(&sb, s->cadence4, s->cadence_exact);
    sb_puts(&sb, ",\"resistance\":");
    put_value(&sb, s->resistance4, s->resistance_exact);
    sb_puts(&sb, ",\"output\":");
    sb_fixed4(&sb, s->output4);
    sb_printf(&sb, ",\"final\":%s}\n", s->final ? "true" : "false");
    if (sb_error(&sb) != 0) {
        sb_free(&sb);
        return NULL;
    }
    return sb_take(&sb, NULL);
}

static int collect_sample(void *arg, const struct store_sample *s)
{
    struct sample_list *list = arg;
    size_t order = list->seen++;

    if ((list->race != NULL && strcmp(s->race_id, list->race) != 0) ||
        (list->racer != NULL && strcmp(s->racer_id, list->racer) != 0) ||
        (list->second != 0 && s->second != list->second))
        return 0;
    if (list->count == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 256;
        struct sample_entry *p = realloc(list->items, cap * sizeof *p);
        if (p == NULL) {
            list->failed = true;
            return -1;
        }
        list->items = p;
        list->cap = cap;
    }
    struct sample_entry *e = &list->items[list->count];
    e->race = strdup(s->race_id);
    e->racer = strdup(s->racer_id);
    e->line = sample_line(s);
    e->second = s->second;
    e->order = order;
    list->count++;
    if (e->race == NULL || e->racer == NULL || e->line == NULL) {
        list->failed = true;
        return -1;
    }
    return 0;
}

/* By race, racer, second, then log order. */
static int sample_cmp(const void *pa, const void *pb)
{
    const struct sample_entry *a = pa, *b = pb;
    int c = strcmp(a->race, b->race);
    if (c == 0)
        c = strcmp(a->racer, b->racer);
    if (c != 0)
        return c;
    if (a->second != b->second)
        return a->second < b->second ? -1 : 1;
    return (a->order > b->order) - (a->order < b->order);
}

static int query_samples(struct store *st, const struct query_opts *q,
                         const char *path)
{
    struct strbuf race_key, racer_key;
    struct sample_list list = {0};
    int rc = 2;

    sb_init(&race_key, 1024);
    sb_init(&racer_key, 1024);
    if ((q->race != NULL && id_key("--race", q->race, &race_key) != 0) ||
        (q->racer != NULL && id_key("--racer", q->racer, &racer_key) != 0))
        goto done;
    list.race = q->race ? race_key.data : NULL;
    list.racer = q->racer ? racer_key.data : NULL;
    list.second = q->second;

    if (store_samples_load(st, collect_sample, &list) != 0) {
        fprintf(stderr, "podium query: failed to read %s: %s\n", path,
                list.failed ? "out of memory" : store_errmsg(st));
        rc = 1;
    } else if (list.count == 0) {
        fprintf(stderr,
                "podium query: no samples stored%s%s%s%s%s in %s; the ids "
                "are unknown, or no record of them was applied yet\n",
                q->race ? " for race " : "", q->race ? race_key.data : "",
                q->racer ? ", racer " : "", q->racer ? racer_key.data : "",
                q->second ? " at that second" : "", path);
        rc = 1;
    } else {
        qsort(list.items, list.count, sizeof list.items[0], sample_cmp);
        for (size_t i = 0; i < list.count; i++) {
            const struct sample_entry *e = &list.items[i];
            const struct sample_entry *next =
                i + 1 < list.count ? &list.items[i + 1] : NULL;
            /* Print the last copy of each key. */
            if (next != NULL && strcmp(e->race, next->race) == 0 &&
                strcmp(e->racer, next->racer) == 0 && e->second == next->second)
                continue;
            fputs(e->line, stdout);
        }
        rc = 0;
    }
done:
    for (size_t i = 0; i < list.count; i++) {
        free(list.items[i].race);
        free(list.items[i].racer);
        free(list.items[i].line);
    }
    free(list.items);
    sb_free(&race_key);
    sb_free(&racer_key);
    return rc;
}

int cmd_query(int argc, char **argv)
{
    struct query_opts q = {0};
    struct podium_config cfg;
    struct store *st = NULL;
    char err[1024];

    int rc = parse_args(argc, argv, &q);
    if (rc != 0) {
        free(q.common.sets);
        return rc < 0 ? 0 : rc;
    }
    rc = load_config(&q.common, &cfg);
    free(q.common.sets);
    if (rc != 0)
        return rc;

    if (store_open_readonly(cfg.store_path, &st, err, sizeof err) != 0) {
        fprintf(stderr, "podium query: %s\n", err);
        cfg_free(&cfg);
        return 1;
    }
    if (q.kind == QUERY_CLASS_HISTORY)
        rc = query_history(st, &q, cfg.store_path);
    else if (q.kind == QUERY_SAMPLES)
        rc = query_samples(st, &q, cfg.store_path);
    else
        rc = query_message(st, &q, cfg.store_path);
    store_close(st);
    cfg_free(&cfg);
    return rc;
}
