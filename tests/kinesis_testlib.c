#include "tests/kinesis_testlib.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/seqnum.h"
#include "shardreader/kinesis.h"

/* ---- peers --------------------------------------------------------------- */

static char peers_dir[4200];
static char proxy_dir[4200];
static char proxy_rules[4300];
static char proxy_log[4300];
static pid_t proxy_pid;
static bool watchdog_started;

static const char *source_dir(void)
{
    const char *src = getenv("PODIUM_SOURCE_DIR");
    if (src == NULL) {
        fprintf(stderr, "PODIUM_SOURCE_DIR is not set: run through ctest\n");
        exit(2);
    }
    return src;
}

static void run_shell(const char *cmd)
{
    if (system(cmd) != 0)
        test_fail(__FILE__, __LINE__, "command failed: %s", cmd);
}

static void stop_peers(void)
{
    char cmd[8600];
    if (proxy_pid > 0)
        kill(proxy_pid, SIGTERM);
    if (peers_dir[0] == '\0')
        return;
    snprintf(cmd, sizeof cmd, "'%s/tools/peers.sh' stop '%s' >&2", source_dir(),
             peers_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "failed to stop the peers in %s\n", peers_dir);
}

static int read_port_file(const char *path)
{
    FILE *f = fopen(path, "r");
    int port = 0;
    if (f == NULL)
        return 0;
    if (fscanf(f, "%d", &port) != 1)
        port = 0;
    fclose(f);
    return port;
}

static void write_file(const char *path, const char *text)
{
    char tmp[4400];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    ASSERT_TRUE(f != NULL);
    ASSERT_EQ(fputs(text, f) >= 0, 1);
    ASSERT_EQ(fclose(f), 0);
    /* A rename gives readers either the old or the new text, never half. */
    ASSERT_EQ(rename(tmp, path), 0);
}

/*
 * A sanitizer report or a ctest timeout ends the case without atexit
 * handlers, so a shell also waits for this process to end and then stops
 * the peers and the proxy that are still recorded in the tmpdir.
 */
static void start_watchdog(void)
{
    char cmd[20000];
    if (watchdog_started)
        return;
    watchdog_started = true;
    int n = snprintf(cmd, sizeof cmd,
                     "(while kill -0 %d 2>/dev/null; do sleep 1; done; "
                     "'%s/tools/peers.sh' stop '%s'; "
                     "p=$(cat '%s/proxy.pid' 2>/dev/null) && "
                     "grep -q kinesis-fault-proxy /proc/$p/cmdline 2>/dev/null "
                     "&& kill $p) </dev/null >/dev/null 2>&1 &",
                     (int)getpid(), source_dir(), peers_dir, proxy_dir);
    ASSERT_TRUE(n > 0);
    ASSERT_TRUE((size_t)n < sizeof cmd);
    run_shell(cmd);
}

static void init_dirs(void)
{
    if (peers_dir[0] != '\0')
        return;
    snprintf(peers_dir, sizeof peers_dir, "%s/peers", test_tmpdir());
    snprintf(proxy_dir, sizeof proxy_dir, "%s/proxy", test_tmpdir());
    if (mkdir(proxy_dir, 0700) != 0 && errno != EEXIST)
        test_fail(__FILE__, __LINE__, "mkdir %s: %s", proxy_dir,
                  strerror(errno));
    atexit(stop_peers);
}

int start_peer(const char *peer, bool faketime)
{
    char cmd[8600], path[4300];

    init_dirs();
    snprintf(cmd, sizeof cmd,
             "PEERS_FAKETIME=%d '%s/tools/peers.sh' start %s '%s' >&2",
             faketime ? 1 : 0, source_dir(), peer, peers_dir);
    if (system(cmd) != 0)
        test_fail(__FILE__, __LINE__,
                  "failed to start %s: run 'tools/peers.sh install' and see "
                  "%s/%s.log",
                  peer, peers_dir, peer);
    start_watchdog();
    snprintf(path, sizeof path, "%s/%s.port", peers_dir, peer);
    int port = read_port_file(path);
    ASSERT_TRUE(port > 0);
    return port;
}

int start_kinesalite(void)
{
    return start_peer("kinesalite", false);
}

void set_peer_clock_offset(int seconds)
{
    char path[4300], text[32];
    snprintf(path, sizeof path, "%s/faketime.rc", peers_dir);
    snprintf(text, sizeof text, "%+d\n", seconds);
    write_file(path, text);
}

int start_proxy(int upstream_port, const char *rules)
{
    char port_path[4300], pid_path[4300], cmd[20000];

    init_dirs();
    ASSERT_EQ(proxy_pid, 0);
    snprintf(proxy_rules, sizeof proxy_rules, "%s/rules.json", proxy_dir);
    snprintf(port_path, sizeof port_path, "%s/proxy.port", proxy_dir);
    snprintf(pid_path, sizeof pid_path, "%s/proxy.pid", proxy_dir);
    snprintf(proxy_log, sizeof proxy_log, "%s/requests.log", proxy_dir);
    write_file(proxy_rules, rules);
    int n = snprintf(cmd, sizeof cmd,
                     "node -r '%s/tools/force-loopback.cjs' "
                     "'%s/tests/kinesis-fault-proxy.js' %d '%s' '%s' '%s' "
                     "</dev/null >'%s/proxy.out' 2>&1 & echo $! >'%s'",
                     source_dir(), source_dir(), upstream_port, proxy_rules,
                     proxy_log, port_path, proxy_dir, pid_path);
    ASSERT_TRUE(n > 0);
    ASSERT_TRUE((size_t)n < sizeof cmd);
    run_shell(cmd);
    start_watchdog();
    proxy_pid = (pid_t)read_port_file(pid_path);
    ASSERT_TRUE(proxy_pid > 0);
    for (int i = 0; i < 200; i++) {
        int port = read_port_file(port_path);
        if (port > 0)
            return port;
        usleep(50 * 1000);
    }
    test_fail(__FILE__, __LINE__, "the proxy did not start: see %s/proxy.out",
              proxy_dir);
}

void set_proxy_rules(const char *rules)
{
    ASSERT_TRUE(proxy_rules[0] != '\0');
    write_file(proxy_rules, rules);
}

const char *proxy_log_path(void)
{
    return proxy_log;
}

size_t count_requests(const char *action)
{
    json_t *reqs = logged_requests(action, NULL);
    size_t n = json_array_size(reqs);
    json_decref(reqs);
    return n;
}

json_t *logged_requests(const char *action, const char *shard_id)
{
    json_t *out = json_array();
    char line[1 << 16];
    FILE *f = fopen(proxy_log, "r");
    ASSERT_TRUE(f != NULL);
    while (fgets(line, sizeof line, f) != NULL) {
        json_t *entry = json_loads(line, 0, NULL);
        ASSERT_TRUE(entry != NULL);
        const char *act = json_string_value(json_object_get(entry, "action"));
        const char *shard = json_string_value(json_object_get(entry, "shard"));
        if (json_object_get(entry, "reply") == NULL && act != NULL &&
            strcmp(act, action) == 0 &&
            (shard_id == NULL ||
             (shard != NULL && strcmp(shard, shard_id) == 0)))
            json_array_append(out, entry);
        json_decref(entry);
    }
    fclose(f);
    return out;
}

json_t *iterator_requests(const char *shard_id)
{
    json_t *entries = logged_requests("GetShardIterator", shard_id);
    json_t *out = json_array();
    size_t i;
    json_t *entry;
    json_array_foreach(entries, i, entry)
    {
        json_array_append(out, json_object_get(entry, "input"));
    }
    json_decref(entries);
    return out;
}

/* ---- loop, client and direct calls -------------------------------------- */
/* ---- loop, client and direct calls -------------------------------------- */

static void tick_cb(uv_timer_t *timer)
{
    (void)timer;
}

void env_init(struct env *e, int port)
{
    char url[64], err[256];

    memset(e, 0, sizeof *e);
    e->port = port;
    ASSERT_EQ(uv_loop_init(&e->loop), 0);
    ASSERT_EQ(httpc_new(&e->loop, &e->http), 0);
    snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
    ASSERT_EQ(
        aws_endpoint_init(&e->ep, url, "us-east-1", "kinesis", err, sizeof err),
        0);
    /* kinesalite reads a 12-digit key id as an account: use letters. */
    e->creds.access_key_id = strdup("AKIDEXAMPLE");
    e->creds.secret_access_key = strdup("SECRETEXAMPLE");
    e->aws =
        aws_client_new(e->http, &e->ep, &e->creds, "Kinesis_20131202", NULL);
    ASSERT_TRUE(e->aws != NULL);
    uv_timer_init(&e->loop, &e->tick);
    uv_timer_start(&e->tick, tick_cb, 10, 10);
}

void env_close(struct env *e)
{
    aws_client_free(e->aws);
    httpc_close(e->http, NULL, NULL);
    uv_close((uv_handle_t *)&e->tick, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    ASSERT_EQ(uv_loop_close(&e->loop), 0);
    aws_endpoint_clear(&e->ep);
    aws_credentials_clear(&e->creds);
}

uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000;
}

/* Run the loop for ms milliseconds. */
void run_for(struct env *e, uint64_t ms)
{
    uint64_t end = now_ms() + ms;
    while (now_ms() < end)
        uv_run(&e->loop, UV_RUN_ONCE);
}

struct direct_call {
    bool done;
    long status;
    char *body;
};

static void direct_cb(void *arg, const struct aws_reply *reply)
{
    struct direct_call *c = arg;
    c->done = true;
    c->status = reply->transport == HTTPC_OK ? reply->status : -1;
    c->body = strndup(reply->body ? reply->body : "", reply->body_len);
}

/* Make one Kinesis call and return the status; *body_out (owned) gets the
 * reply body when not NULL. */
long kinesis_call(struct env *e, const char *action, const char *body,
                  char **body_out)
{
    struct direct_call c = {0};
    ASSERT_TRUE(aws_json_call(e->aws, action, body, strlen(body), 10000,
                              1 << 20, direct_cb, &c) != NULL);
    WAIT_FOR(e, c.done);
    if (c.status != 200)
        fprintf(stderr, "%s -> %ld %s\n", action, c.status, c.body);
    if (body_out != NULL)
        *body_out = c.body;
    else
        free(c.body);
    return c.status;
}

/* Wait until DescribeStreamSummary reports the stream ACTIVE. */
void wait_active(struct env *e, const char *stream)
{
    char req[256];
    snprintf(req, sizeof req, "{\"StreamName\":\"%s\"}", stream);
    for (int i = 0; i < 400; i++) {
        char *body;
        ASSERT_EQ(kinesis_call(e, "DescribeStreamSummary", req, &body), 200);
        bool active = strstr(body, "\"ACTIVE\"") != NULL;
        free(body);
        if (active)
            return;
        run_for(e, 25);
    }
    test_fail(__FILE__, __LINE__, "stream %s did not become ACTIVE", stream);
}

void create_stream(struct env *e, const char *stream, int shards)
{
    char req[256];
    snprintf(req, sizeof req, "{\"StreamName\":\"%s\",\"ShardCount\":%d}",
             stream, shards);
    ASSERT_EQ(kinesis_call(e, "CreateStream", req, NULL), 200);
    wait_active(e, stream);
}

/* ---- records ------------------------------------------------------------- */

/* Payload of record i: a text header, then binary bytes including NUL, of a
 * length that varies with i. */
size_t make_payload(int i, uint8_t *out)
{
    int n = snprintf((char *)out, 16, "rec-%06d|", i);
    size_t len = (size_t)n + (size_t)(i % 61);
    for (size_t j = (size_t)n; j < len; j++)
        out[j] = (uint8_t)((size_t)i * 7 + j * 13);
    return len;
}

int payload_index(const struct shard_record *r)
{
    int i = -1;
    if (r->len < 11 || sscanf((const char *)r->data, "rec-%6d|", &i) != 1)
        return -1;
    return i;
}

void put_done(void *arg, const char *error)
{
    struct put_result *r = arg;
    r->done = true;
    r->error = error ? strdup(error) : NULL;
}

/* Put records first..first+count-1 through the putter at port. */
void put_records(struct env *e, const char *stream, int first, int count)
{
    struct kinesis_putter *p =
        kinesis_putter_new(&e->loop, e->http, &e->ep, &e->creds, stream, 10000);
    struct put_result r = {0};
    uint8_t data[128];
    char key[32];

    ASSERT_TRUE(p != NULL);
    for (int i = first; i < first + count; i++) {
        snprintf(key, sizeof key, "key-%d", i);
        ASSERT_EQ(kinesis_putter_add(p, data, make_payload(i, data), key), 0);
    }
    kinesis_putter_finish(p, put_done, &r);
    WAIT_FOR(e, r.done);
    if (r.error != NULL)
        test_fail(__FILE__, __LINE__, "put failed: %s", r.error);
    ASSERT_EQ(kinesis_putter_pending(p), 0);
    kinesis_putter_free(p);
}

/* ---- consumer ------------------------------------------------------------ */

void on_batch(void *arg, struct shard_batch *batch)
{
    struct consumer *c = arg;
    if (c->batch_count == MAX_BATCHES)
        test_fail(__FILE__, __LINE__, "more than %d batches", MAX_BATCHES);
    c->batches[c->batch_count++] = batch;
    c->records += batch->count;
    /* Commit from inside on_batch, the hardest case for the reader. */
    if (c->auto_commit)
        reader_batch_committed(c->rd, batch->shard_id);
}

void on_ready(void *arg, size_t open_shards)
{
    struct consumer *c = arg;
    c->ready = true;
    c->open_shards = open_shards;
}

void on_fatal(void *arg, const char *message)
{
    struct consumer *c = arg;
    c->fatal = strdup(message);
}

static void on_stopped(void *arg)
{
    struct consumer *c = arg;
    c->stopped = true;
}

struct reader_config reader_config(struct env *e, const char *stream)
{
    struct reader_config cfg = {
        .stream_name = stream,
        .endpoint = &e->ep,
        .credentials = &e->creds,
        .initial_position = READER_TRIM_HORIZON,
        .poll_interval_ms = POLL_MS,
        .request_timeout_ms = 5000,
        .max_records = 10000,
        .shard_sync_interval_s = 60,
    };
    return cfg;
}

void consumer_start(struct consumer *c, struct env *e,
                    const struct reader_config *cfg,
                    const struct reader_checkpoint *cps, size_t n)
{
    struct reader_callbacks cbs = {c, on_batch, on_ready, on_fatal};
    c->rd = reader_new(&e->loop, e->http, cfg, &cbs);
    ASSERT_TRUE(c->rd != NULL);
    ASSERT_EQ(reader_start(c->rd, cps, n), 0);
}

/* Stop and free the reader and the batches. */
void consumer_finish(struct consumer *c, struct env *e)
{
    reader_stop(c->rd, on_stopped, c);
    WAIT_FOR(e, c->stopped);
    reader_free(c->rd);
    for (size_t i = 0; i < c->batch_count; i++)
        shard_batch_free(c->batches[i]);
    free(c->fatal);
}

uint64_t shard_calls(const struct reader *rd, const char *shard_id)
{
    struct reader_shard_info info;
    for (size_t i = 0; reader_shard_info(rd, i, &info) == 0; i++) {
        if (strcmp(info.shard_id, shard_id) == 0)
            return info.get_records_calls;
    }
    test_fail(__FILE__, __LINE__, "no shard %s", shard_id);
}

/*
 * Check that the consumer saw records first..first+count-1 exactly once,
 * with payloads and partition keys intact, in increasing sequence order
 * within each shard.
 */
void check_records(const struct consumer *c, int first, int count)
{
    int *seen = calloc((size_t)count, sizeof *seen);
    uint8_t expected[128];
    char key[32];

    for (size_t b = 0; b < c->batch_count; b++) {
        const struct shard_batch *batch = c->batches[b];
        for (size_t i = 0; i < batch->count; i++) {
            const struct shard_record *r = &batch->records[i];
            int idx = payload_index(r);
            ASSERT_TRUE(idx >= first);
            ASSERT_TRUE(idx < first + count);
            seen[idx - first]++;
            size_t len = make_payload(idx, expected);
            ASSERT_MEM_EQ(r->data, r->len, expected, len);
            snprintf(key, sizeof key, "key-%d", idx);
            ASSERT_STR_EQ(r->partition_key, key);
            ASSERT_EQ(r->subseq, 0);
            ASSERT_TRUE(r->arrival_ms > 1700000000000LL);
        }
    }
    for (int i = 0; i < count; i++)
        ASSERT_EQ(seen[i], 1);
    free(seen);

    /* Within a shard, every record follows the one before it. */
    const char *ids[8] = {0}, *last[8] = {0};
    for (size_t b = 0; b < c->batch_count; b++) {
        const struct shard_batch *batch = c->batches[b];
        size_t s = 0;
        while (s < 8 && ids[s] && strcmp(ids[s], batch->shard_id) != 0)
            s++;
        ASSERT_TRUE(s < 8);
        ids[s] = batch->shard_id;
        for (size_t i = 0; i < batch->count; i++) {
            if (last[s] != NULL)
                ASSERT_TRUE(seqnum_cmp(last[s], batch->records[i].seq) < 0);
            last[s] = batch->records[i].seq;
        }
    }
}

/* Number of records the consumer saw from shard_id. */
size_t shard_records(const struct consumer *c, const char *shard_id)
{
    size_t n = 0;
    for (size_t b = 0; b < c->batch_count; b++) {
        if (strcmp(c->batches[b]->shard_id, shard_id) == 0)
            n += c->batches[b]->count;
    }
    return n;
}
struct reader_shard_info shard_info(const struct reader *rd,
                                    const char *shard_id)
{
    struct reader_shard_info info;
    for (size_t i = 0; reader_shard_info(rd, i, &info) == 0; i++) {
        if (strcmp(info.shard_id, shard_id) == 0)
            return info;
    }
    test_fail(__FILE__, __LINE__, "no shard %s", shard_id);
}

struct reader_counters counters_of(const struct reader *rd)
{
    struct reader_counters counters;
    reader_get_counters(rd, &counters);
    return counters;
}

long first_batch_of(const struct consumer *c, const char *shard_id)
{
    for (size_t b = 0; b < c->batch_count; b++) {
        if (strcmp(c->batches[b]->shard_id, shard_id) == 0)
            return (long)b;
    }
    return -1;
}

long end_batch_of(const struct consumer *c, const char *shard_id)
{
    for (size_t b = 0; b < c->batch_count; b++) {
        if (c->batches[b]->shard_end &&
            strcmp(c->batches[b]->shard_id, shard_id) == 0)
            return (long)b;
    }
    return -1;
}

void split_shard(struct env *e, const char *stream, const char *shard,
                 const char *new_start_hash_key)
{
    char req[512];
    snprintf(req, sizeof req,
             "{\"StreamName\":\"%s\",\"ShardToSplit\":\"%s\","
             "\"NewStartingHashKey\":\"%s\"}",
             stream, shard, new_start_hash_key);
    ASSERT_EQ(kinesis_call(e, "SplitShard", req, NULL), 200);
    wait_active(e, stream);
}

void merge_shards(struct env *e, const char *stream, const char *shard,
                  const char *adjacent)
{
    char req[512];
    snprintf(req, sizeof req,
             "{\"StreamName\":\"%s\",\"ShardToMerge\":\"%s\","
             "\"AdjacentShardToMerge\":\"%s\"}",
             stream, shard, adjacent);
    ASSERT_EQ(kinesis_call(e, "MergeShards", req, NULL), 200);
    wait_active(e, stream);
}

json_t *proxy_log_entries(void)
{
    json_t *out = json_array();
    char line[1 << 16];
    FILE *f = fopen(proxy_log, "r");
    ASSERT_TRUE(f != NULL);
    while (fgets(line, sizeof line, f) != NULL) {
        json_t *entry = json_loads(line, 0, NULL);
        ASSERT_TRUE(entry != NULL);
        json_array_append_new(out, entry);
    }
    fclose(f);
    return out;
}

/* Hash keys are 128-bit unsigned integers written in decimal. */
typedef unsigned __int128 hash_key;

static hash_key parse_hash_key(const char *text)
{
    hash_key v = 0;
    ASSERT_TRUE(text != NULL);
    ASSERT_TRUE(text[0] != '\0');
    for (const char *p = text; *p != '\0'; p++) {
        ASSERT_TRUE(*p >= '0');
        ASSERT_TRUE(*p <= '9');
        ASSERT_TRUE(v <= (~(hash_key)0 - (hash_key)(*p - '0')) / 10);
        v = v * 10 + (hash_key)(*p - '0');
    }
    return v;
}

static void format_hash_key(hash_key v, char *out, size_t len)
{
    char digits[48];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + (int)(v % 10));
        v /= 10;
    } while (v != 0);
    ASSERT_TRUE(n < len);
    for (size_t i = 0; i < n; i++)
        out[i] = digits[n - 1 - i];
    out[n] = '\0';
}

void split_shard_in_half(struct env *e, const char *stream, const char *shard)
{
    char req[256], mid[48];
    char *body;
    snprintf(req, sizeof req, "{\"StreamName\":\"%s\"}", stream);
    ASSERT_EQ(kinesis_call(e, "ListShards", req, &body), 200);
    json_t *root = json_loads(body, 0, NULL);
    free(body);
    ASSERT_TRUE(root != NULL);

    const json_t *range = NULL;
    size_t i;
    json_t *item;
    json_array_foreach(json_object_get(root, "Shards"), i, item)
    {
        const char *id = json_string_value(json_object_get(item, "ShardId"));
        if (id != NULL && strcmp(id, shard) == 0)
            range = json_object_get(item, "HashKeyRange");
    }
    ASSERT_TRUE(range != NULL);
    hash_key start = parse_hash_key(
        json_string_value(json_object_get(range, "StartingHashKey")));
    hash_key end = parse_hash_key(
        json_string_value(json_object_get(range, "EndingHashKey")));
    json_decref(root);

    /* The new shard starts one past the middle, so that both halves
     * contain at least one key (start < mid <= end). */
    ASSERT_TRUE(start < end);
    format_hash_key(start + (end - start) / 2 + 1, mid, sizeof mid);
    split_shard(e, stream, shard, mid);
}
