/*
 * Tests of the AWS IoT data plane transport against a real HTTP server on
 * 127.0.0.1, tests/iot-publish-server.js. The server checks the SigV4
 * signature of every request with the smithy signer from npm, which shares
 * no code with common/sigv4.c. It injects faults by rules and logs every
 * request with its decoded topic and payload. Unless a case sends a wrong
 * signature on purpose, it fails when the server saw a bad signature.
 */
#include "tests/testlib.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <uv.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/sigv4.h"
#include "publisher/publisher.h"

#define KEY_ID        "AKIDIOTTEST"
#define SECRET        "iotTestSecret/Key+0123456789abcdefghijklmn"
#define SESSION_TOKEN "IoTTestSessionToken/With+Symbols=="
#define REGION        "eu-west-1"
#define MAX_IDS       4096
#define MAX_LOGGED    8192

/* ---- the server ---------------------------------------------------- */

static pid_t server_pid;
static int server_port;
static char server_log[4300];
static char server_rules[4300];

static const char *source_dir(void)
{
    const char *dir = getenv("PODIUM_SOURCE_DIR");

    if (dir == NULL) {
        fprintf(stderr, "PODIUM_SOURCE_DIR is not set: run through ctest\n");
        exit(2);
    }
    return dir;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void kill_server(void)
{
    if (server_pid > 0) {
        kill(server_pid, SIGKILL);
        waitpid(server_pid, NULL, 0);
        server_pid = 0;
    }
}

/* Write text to path through a rename, so a reader sees all or nothing. */
static void write_file(const char *path, const char *text)
{
    char tmp[4400];
    FILE *f;

    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    f = fopen(tmp, "w");
    ASSERT_TRUE(f != NULL);
    ASSERT_TRUE(fputs(text, f) >= 0);
    ASSERT_EQ(fclose(f), 0);
    ASSERT_EQ(rename(tmp, path), 0);
}

/* Replace the server's fault rules, which it reads on its next request. */
static void set_rules(const char *rules)
{
    write_file(server_rules, rules);
}

static int read_port(const char *path)
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

/*
 * Start the server on port (0 for a free one) with its credentials in the
 * child's environment, and return its port once it listens. The log and
 * the rules stay the same files across restarts.
 */
static int server_start_on(int port)
{
    char port_file[4300], port_arg[16], out[4300];
    const char *src = source_dir();

    ASSERT_EQ(server_pid, 0);
    snprintf(server_log, sizeof server_log, "%s/requests.jsonl", test_tmpdir());
    snprintf(server_rules, sizeof server_rules, "%s/rules.json", test_tmpdir());
    snprintf(port_file, sizeof port_file, "%s/server.port", test_tmpdir());
    snprintf(out, sizeof out, "%s/server.out", test_tmpdir());
    snprintf(port_arg, sizeof port_arg, "%d", port);
    unlink(port_file);
    atexit(kill_server);

    server_pid = fork();
    ASSERT_TRUE(server_pid >= 0);
    if (server_pid == 0) {
        char loopback[4200], script[4200];
        int fd = open(out, O_WRONLY | O_CREAT | O_APPEND, 0644);

        /* The server dies with the test even when ctest kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        setenv("AWS_ACCESS_KEY_ID", KEY_ID, 1);
        setenv("AWS_SECRET_ACCESS_KEY", SECRET, 1);
        setenv("AWS_SESSION_TOKEN", SESSION_TOKEN, 1);
        setenv("AWS_REGION", REGION, 1);
        snprintf(loopback, sizeof loopback, "%s/tools/force-loopback.cjs", src);
        snprintf(script, sizeof script, "%s/tests/iot-publish-server.js", src);
        execlp("node", "node", "-r", loopback, script, "--port-file", port_file,
               "--log", server_log, "--rules", server_rules, "--port", port_arg,
               (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 400; i++) {
        int got = read_port(port_file);
        if (got > 0)
            return got;
        if (waitpid(server_pid, NULL, WNOHANG) == server_pid) {
            server_pid = 0;
            test_fail(__FILE__, __LINE__,
                      "the IoT test server exited: see %s; run 'bash "
                      "tools/peers.sh install' if npm packages are missing",
                      out);
        }
        sleep_ms(25);
    }
    test_fail(__FILE__, __LINE__, "the IoT test server did not start: see %s",
              out);
}

static int server_start(const char *rules)
{
    snprintf(server_rules, sizeof server_rules, "%s/rules.json", test_tmpdir());
    set_rules(rules);
    server_port = server_start_on(0);
    return server_port;
}

/* Stop the server. Requests get "connection refused" until a restart. */
static void server_stop(void)
{
    ASSERT_TRUE(server_pid > 0);
    kill(server_pid, SIGTERM);
    waitpid(server_pid, NULL, 0);
    server_pid = 0;
}

/* ---- the server's request log -------------------------------------- */

struct logged {
    int64_t t;
    char topic[1024];
    char path[2048];
    uint8_t *payload;
    size_t payload_len;
    bool signature_ok;
    int status;
    bool published;
};

static struct logged logged[MAX_LOGGED];
static size_t logged_count;

static const char *member_text(json_t *obj, const char *key)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s != NULL ? s : "";
}

/* Read the whole request log into logged[]. */
static void read_log(void)
{
    FILE *f = fopen(server_log, "r");
    static char line[1 << 19];

    for (size_t i = 0; i < logged_count; i++)
        free(logged[i].payload);
    logged_count = 0;
    if (f == NULL)
        return;
    while (fgets(line, sizeof line, f) != NULL) {
        json_error_t error;
        json_t *obj = json_loads(line, 0, &error);
        struct logged *r = &logged[logged_count];
        const char *b64;

        if (obj == NULL)
            test_fail(__FILE__, __LINE__, "bad log line in %s: %s", server_log,
                      error.text);
        ASSERT_TRUE(logged_count < MAX_LOGGED);
        r->t = json_integer_value(json_object_get(obj, "t"));
        snprintf(r->topic, sizeof r->topic, "%s", member_text(obj, "topic"));
        snprintf(r->path, sizeof r->path, "%s", member_text(obj, "path"));
        r->signature_ok = strcmp(member_text(obj, "signature"), "ok") == 0;
        r->status = (int)json_integer_value(json_object_get(obj, "status"));
        r->published = json_is_true(json_object_get(obj, "published"));
        b64 = member_text(obj, "payload");
        r->payload = malloc(BASE64_DECODED_MAX(strlen(b64)) + 1);
        ASSERT_EQ(base64_decode(b64, strlen(b64), r->payload, &r->payload_len),
                  0);
        json_decref(obj);
        logged_count++;
    }
    fclose(f);
}

/* Fail unless every request the server saw was signed correctly. */
static void assert_signatures_ok(void)
{
    read_log();
    ASSERT_TRUE(logged_count > 0);
    for (size_t i = 0; i < logged_count; i++) {
        if (!logged[i].signature_ok)
            test_fail(__FILE__, __LINE__,
                      "the server saw a bad signature on request %zu (%s): "
                      "see %s",
                      i, logged[i].path, server_log);
    }
}

/* ---- messages ------------------------------------------------------ */

/* Payload of message id: its id first, then bytes of every value. */
static size_t make_payload(int64_t id, uint8_t *buf, size_t size)
{
    int n = snprintf((char *)buf, size, "{\"id\":%" PRId64 "}", id);
    size_t len = (size_t)n;

    for (int64_t i = 0; i < id % 41 && len < size; i++)
        buf[len++] = (uint8_t)((id * 7 + i * 13) & 0xff);
    return len;
}

/* Message id of a payload made by make_payload. */
static int64_t payload_id(const uint8_t *payload, size_t len)
{
    char text[32];
    int64_t id = -1;

    snprintf(text, sizeof text, "%.*s", (int)(len < 31 ? len : 31),
             (const char *)payload);
    if (sscanf(text, "{\"id\":%" SCNd64, &id) != 1)
        return -1;
    return id;
}

static void make_topic(int64_t id, int topics, char *buf, size_t size)
{
    snprintf(buf, size, "podium/races/r%" PRId64 "/leaderboard", id % topics);
}

/* ---- publisher harness --------------------------------------------- */

struct ctx {
    uv_loop_t loop;
    struct publisher *pub;
    int acks[MAX_IDS];
    int64_t ack_order[MAX_IDS];
    size_t ack_count;
    size_t target;
    bool closed;
};

static void on_ack(void *arg, int64_t id)
{
    struct ctx *c = arg;

    ASSERT_FALSE(c->closed);
    ASSERT_TRUE(id >= 0);
    ASSERT_TRUE(id < MAX_IDS);
    c->acks[id]++;
    c->ack_order[c->ack_count++] = id;
}

static void on_closed(void *arg)
{
    struct ctx *c = arg;
    c->closed = true;
}

static void on_tick(uv_timer_t *timer)
{
    (void)timer;
}

/* Run the loop until cond(c) or timeout_ms pass; returns cond(c). */
static bool run_until(struct ctx *c, bool (*cond)(struct ctx *),
                      uint64_t timeout_ms)
{
    uv_timer_t tick;
    uint64_t deadline;
    bool ok;

    uv_timer_init(&c->loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    uv_update_time(&c->loop);
    deadline = uv_now(&c->loop) + timeout_ms;
    while (!(ok = cond(c)) && uv_now(&c->loop) < deadline)
        uv_run(&c->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&tick, NULL);
    uv_run(&c->loop, UV_RUN_NOWAIT);
    return ok;
}

static bool never(struct ctx *c)
{
    (void)c;
    return false;
}

static bool acks_reached(struct ctx *c)
{
    return c->ack_count >= c->target;
}

static bool is_closed(struct ctx *c)
{
    return c->closed;
}

static struct ctx *ctx_new(void)
{
    static struct ctx contexts[2];
    static size_t used;
    struct ctx *c;

    ASSERT_TRUE(used < sizeof contexts / sizeof contexts[0]);
    c = &contexts[used++];
    ASSERT_EQ(uv_loop_init(&c->loop), 0);
    return c;
}

static struct aws_credentials test_creds = {
    .access_key_id = (char *)KEY_ID,
    .secret_access_key = (char *)SECRET,
    .session_token = (char *)SESSION_TOKEN,
};

/* A configuration for the server on port, with short retry delays. */
static void iot_config(struct pub_config *cfg, char *url, size_t url_len,
                       int port, size_t max_inflight)
{
    snprintf(url, url_len, "http://127.0.0.1:%d", port);
    memset(cfg, 0, sizeof *cfg);
    cfg->transport = PUB_IOT;
    cfg->iot_endpoint = url;
    cfg->iot_region = REGION;
    cfg->iot_credentials = &test_creds;
    cfg->max_inflight = max_inflight;
    cfg->iot_timeout_ms = 5000;
    cfg->iot_retry_min_ms = 40;
    cfg->iot_retry_max_ms = 400;
}

static void open_publisher(struct ctx *c, const struct pub_config *cfg)
{
    char err[512] = "";

    c->pub = publisher_new(&c->loop, cfg, on_ack, c, err, sizeof err);
    if (c->pub == NULL)
        test_fail(__FILE__, __LINE__, "publisher_new: %s", err);
}

/* Close the publisher, then check that the loop has nothing left. */
static void close_publisher(struct ctx *c)
{
    publisher_close(c->pub, on_closed, c);
    ASSERT_TRUE(run_until(c, is_closed, 5000));
    c->pub = NULL;
    uv_run(&c->loop, UV_RUN_NOWAIT);
    ASSERT_EQ(uv_loop_close(&c->loop), 0);
}

static void submit_range(struct ctx *c, int64_t first, int64_t end, int topics)
{
    char topic[128];
    uint8_t payload[256];

    for (int64_t id = first; id < end; id++) {
        size_t len = make_payload(id, payload, sizeof payload);
        make_topic(id, topics, topic, sizeof topic);
        ASSERT_EQ(publisher_submit(c->pub, id, topic, payload, len), 0);
    }
}

/*
 * Check the server's log against messages [0, count) made by submit_range:
 * every request carries the message's exact bytes on its topic, every
 * message was published exactly once, and within each topic the
 * publications follow submission order.
 */
static void check_published(int64_t count, int topics)
{
    int published[MAX_IDS] = {0};
    int64_t last_of_topic[64];
    uint8_t expected[256];
    char topic[128];

    ASSERT_TRUE(topics <= 64);
    for (int i = 0; i < topics; i++)
        last_of_topic[i] = -1;
    read_log();
    for (size_t i = 0; i < logged_count; i++) {
        const struct logged *r = &logged[i];
        int64_t id = payload_id(r->payload, r->payload_len);

        ASSERT_TRUE(id >= 0);
        ASSERT_TRUE(id < count);
        make_topic(id, topics, topic, sizeof topic);
        ASSERT_STR_EQ(r->topic, topic);
        /* Every send of a message, resends included, has the same bytes. */
        size_t len = make_payload(id, expected, sizeof expected);
        ASSERT_MEM_EQ(r->payload, r->payload_len, expected, len);
        if (!r->published)
            continue;
        published[id]++;
        if (id <= last_of_topic[id % topics])
            test_fail(__FILE__, __LINE__,
                      "message %" PRId64 " was published after message "
                      "%" PRId64 " of the same topic %s",
                      id, last_of_topic[id % topics], topic);
        last_of_topic[id % topics] = id;
    }
    for (int64_t id = 0; id < count; id++) {
        if (published[id] != 1)
            test_fail(__FILE__, __LINE__,
                      "message %" PRId64 " was published %d times", id,
                      published[id]);
    }
}

/* Check that the acks of each topic came in submission order. */
static void check_ack_order(const struct ctx *c, int topics)
{
    int64_t last_of_topic[64];

    for (int i = 0; i < topics; i++)
        last_of_topic[i] = -1;
    for (size_t i = 0; i < c->ack_count; i++) {
        int64_t id = c->ack_order[i];
        ASSERT_TRUE(id > last_of_topic[id % topics]);
        last_of_topic[id % topics] = id;
    }
}

/* ---- delivery ------------------------------------------------------ */

TEST(iot_publishes_in_order_signed)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = server_start("[]");

    iot_config(&cfg, url, sizeof url, port, 8);
    open_publisher(c, &cfg);
    ASSERT_TRUE(publisher_connected(c->pub));
    submit_range(c, 0, 300, 7);
    ASSERT_EQ(publisher_pending(c->pub), 300);
    /* ack_cb never runs inside publisher_submit. */
    ASSERT_EQ(c->ack_count, 0);

    c->target = 300;
    ASSERT_TRUE(run_until(c, acks_reached, 30000));
    for (int id = 0; id < 300; id++)
        ASSERT_EQ(c->acks[id], 1);
    ASSERT_EQ(publisher_pending(c->pub), 0);
    check_ack_order(c, 7);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 300);
    ASSERT_EQ(stats.resent, 0);
    ASSERT_EQ(stats.acked, 300);
    ASSERT_TRUE(publisher_connected(c->pub));

    assert_signatures_ok();
    check_published(300, 7);
    ASSERT_STR_EQ(logged[0].path,
                  "/topics/podium%2Fraces%2Fr0%2Fleaderboard?qos=1");
    close_publisher(c);
}

TEST(iot_publishes_max_size_payload)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64];
    uint8_t *big = malloc(PUB_MAX_PAYLOAD);
    int port = server_start("[]");

    for (size_t i = 0; i < PUB_MAX_PAYLOAD; i++)
        big[i] = (uint8_t)(i * 31 + 7);
    iot_config(&cfg, url, sizeof url, port, 4);
    open_publisher(c, &cfg);
    ASSERT_EQ(publisher_submit(c->pub, 1, "big/one", big, PUB_MAX_PAYLOAD), 0);
    ASSERT_EQ(publisher_submit(c->pub, 2, "empty/one", NULL, 0), 0);
    c->target = 2;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));

    assert_signatures_ok();
    ASSERT_EQ(logged_count, 2);
    for (size_t i = 0; i < 2; i++) {
        if (strcmp(logged[i].topic, "big/one") == 0)
            ASSERT_MEM_EQ(logged[i].payload, logged[i].payload_len, big,
                          PUB_MAX_PAYLOAD);
        else
            ASSERT_EQ(logged[i].payload_len, 0);
    }
    free(big);
    close_publisher(c);
}

TEST(iot_encodes_topics_needing_escapes)
{
    static const struct {
        const char *topic;
        const char *path; /* expected request path and query */
    } cases[] = {
        {"race/R 7/leaderboard", "/topics/race%2FR%207%2Fleaderboard?qos=1"},
        {"100%/done", "/topics/100%25%2Fdone?qos=1"},
        {"caf\xc3\xa9/\xc3\xa9t\xc3\xa9",
         "/topics/caf%C3%A9%2F%C3%A9t%C3%A9?qos=1"},
        {"k=v&x=y", "/topics/k%3Dv%26x%3Dy?qos=1"},
        {"time:12:00", "/topics/time%3A12%3A00?qos=1"},
        {"what?now", "/topics/what%3Fnow?qos=1"},
        {"a//b", "/topics/a%2F%2Fb?qos=1"},
        {"/leading", "/topics/%2Fleading?qos=1"},
        {"trailing/", "/topics/trailing%2F?qos=1"},
        {"race/../x", "/topics/race%2F..%2Fx?qos=1"},
        {"..", "/topics/%2E%2E?qos=1"},
        {".", "/topics/%2E?qos=1"},
        {"AZaz09-_.~", "/topics/AZaz09-_.~?qos=1"},
        {"quote\"back\\slash;semi,comma'(x)*!$@",
         "/topics/quote%22back%5Cslash%3Bsemi%2Ccomma%27%28x%29%2A%21%24%40"
         "?qos=1"},
    };
    size_t n = sizeof cases / sizeof cases[0];
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64];
    int port = server_start("[]");

    iot_config(&cfg, url, sizeof url, port, 4);
    open_publisher(c, &cfg);
    for (size_t i = 0; i < n; i++) {
        char payload[32];
        int len = snprintf(payload, sizeof payload, "{\"id\":%zu}", i);
        ASSERT_EQ(publisher_submit(c->pub, (int64_t)i, cases[i].topic, payload,
                                   (size_t)len),
                  0);
    }
    c->target = n;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));

    assert_signatures_ok();
    ASSERT_EQ(logged_count, n);
    for (size_t i = 0; i < logged_count; i++) {
        int64_t id = payload_id(logged[i].payload, logged[i].payload_len);
        ASSERT_TRUE(id >= 0);
        ASSERT_TRUE((size_t)id < n);
        ASSERT_TRUE(logged[i].published);
        ASSERT_STR_EQ(logged[i].topic, cases[id].topic);
        ASSERT_STR_EQ(logged[i].path, cases[id].path);
    }
    close_publisher(c);
}

/* ---- in-flight limits ---------------------------------------------- */

TEST(iot_limits_requests_in_flight)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = server_start("[{\"fault\":\"slow\",\"delay_ms\":600}]");

    iot_config(&cfg, url, sizeof url, port, 3);
    open_publisher(c, &cfg);
    /* 10 topics: only 3 requests may be in flight. */
    submit_range(c, 0, 10, 10);
    run_until(c, never, 300);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 3);
    ASSERT_EQ(c->ack_count, 0);
    c->target = 10;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));
    close_publisher(c);
    /* Only 3 requests arrived before the first reply could come back. */
    read_log();
    ASSERT_EQ(logged_count, 10);
    int64_t first = logged[0].t;
    size_t early = 0;
    for (size_t i = 1; i < logged_count; i++) {
        if (logged[i].t < first)
            first = logged[i].t;
    }
    for (size_t i = 0; i < logged_count; i++) {
        if (logged[i].t < first + 600)
            early++;
    }
    ASSERT_EQ(early, 3);

    /* One topic: one request at a time, whatever the limit. */
    c = ctx_new();
    iot_config(&cfg, url, sizeof url, port, 8);
    open_publisher(c, &cfg);
    submit_range(c, 0, 3, 1);
    run_until(c, never, 300);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 1);
    ASSERT_EQ(c->ack_count, 0);
    c->target = 3;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));
    ASSERT_EQ(c->ack_order[0], 0);
    ASSERT_EQ(c->ack_order[1], 1);
    ASSERT_EQ(c->ack_order[2], 2);
    assert_signatures_ok();
    /* Each request arrived after the reply to the one before. */
    ASSERT_EQ(logged_count, 13);
    for (size_t i = 11; i < logged_count; i++)
        ASSERT_TRUE(logged[i].t - logged[i - 1].t >= 600);
    close_publisher(c);
}

/* ---- faults -------------------------------------------------------- */

TEST(iot_retries_each_fault_kind)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    /* The rules apply to the first requests, one kind after another. */
    int port = server_start("[{\"fault\":\"500\",\"times\":2},"
                            "{\"fault\":\"429\",\"times\":2},"
                            "{\"fault\":\"403\",\"times\":1},"
                            "{\"fault\":\"cut\",\"times\":2},"
                            "{\"fault\":\"503\",\"times\":1},"
                            "{\"fault\":\"400\",\"times\":1}]");

    iot_config(&cfg, url, sizeof url, port, 4);
    open_publisher(c, &cfg);
    submit_range(c, 0, 40, 3);
    c->target = 40;
    ASSERT_TRUE(run_until(c, acks_reached, 30000));
    for (int id = 0; id < 40; id++)
        ASSERT_EQ(c->acks[id], 1);
    check_ack_order(c, 3);

    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.failed_server, 3);
    ASSERT_EQ(stats.failed_throttled, 2);
    ASSERT_EQ(stats.failed_auth, 1);
    ASSERT_EQ(stats.failed_status, 1);
    ASSERT_EQ(stats.failed_timeout, 0);
    /* A reply cut short fails even after a 200 status line, because the
     * message may or may not have been published. */
    ASSERT_EQ(stats.failed_network, 2);
    ASSERT_EQ(stats.resent, 9);
    ASSERT_EQ(stats.sent, 49);
    ASSERT_EQ(stats.acked, 40);
    ASSERT_TRUE(publisher_connected(c->pub));

    assert_signatures_ok();
    ASSERT_EQ(logged_count, 49);
    check_published(40, 3);
    close_publisher(c);
}

TEST(iot_retries_after_timeout)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port =
        server_start("[{\"fault\":\"slow\",\"delay_ms\":1500,\"times\":1}]");

    iot_config(&cfg, url, sizeof url, port, 4);
    cfg.iot_timeout_ms = 400;
    open_publisher(c, &cfg);
    submit_range(c, 0, 3, 1);
    c->target = 3;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.failed_timeout, 1);
    ASSERT_EQ(stats.resent, 1);

    /* The server logs the abandoned request once its delay is over. */
    sleep_ms(1500);
    assert_signatures_ok();
    ASSERT_EQ(logged_count, 4);
    check_published(3, 1);
    close_publisher(c);
}

TEST(iot_keeps_topic_order_under_faults)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    /* Faults spread over the run, some on one topic only. */
    int port = server_start(
        "[{\"fault\":\"500\",\"topic\":\"podium/races/r2/leaderboard\","
        "\"skip\":3,\"times\":4},"
        "{\"fault\":\"reset\",\"topic\":\"podium/races/r5/leaderboard\","
        "\"skip\":10,\"times\":3},"
        "{\"fault\":\"429\",\"skip\":40,\"times\":6},"
        "{\"fault\":\"503\",\"skip\":120,\"times\":5},"
        "{\"fault\":\"slow\",\"delay_ms\":150,\"skip\":200,\"times\":20}]");

    iot_config(&cfg, url, sizeof url, port, 6);
    open_publisher(c, &cfg);
    submit_range(c, 0, 200, 9);
    run_until(c, never, 100);
    /* Submitting while retries wait neither blocks nor reorders. */
    submit_range(c, 200, 400, 9);
    c->target = 400;
    ASSERT_TRUE(run_until(c, acks_reached, 60000));
    for (int id = 0; id < 400; id++)
        ASSERT_EQ(c->acks[id], 1);
    check_ack_order(c, 9);
    publisher_stats(c->pub, &stats);
    /* 18 faults, less the resets that libcurl absorbed by sending the
     * request again on a new connection. */
    ASSERT_EQ(stats.failed_server, 9);
    ASSERT_EQ(stats.failed_throttled, 6);
    ASSERT_TRUE(stats.failed_network <= 3);
    ASSERT_EQ(stats.resent, 15 + stats.failed_network);

    assert_signatures_ok();
    check_published(400, 9);
    close_publisher(c);
}

/* Times at which the server saw message id, in order. */
static size_t attempt_times(int64_t id, int64_t *times, size_t max)
{
    size_t n = 0;

    read_log();
    for (size_t i = 0; i < logged_count && n < max; i++) {
        if (payload_id(logged[i].payload, logged[i].payload_len) == id)
            times[n++] = logged[i].t;
    }
    return n;
}

static bool acked_1(struct ctx *c)
{
    return c->acks[1] > 0;
}

static bool failed_once(struct ctx *c)
{
    struct pub_stats stats;

    publisher_stats(c->pub, &stats);
    return stats.failed_server > 0;
}

TEST(iot_backs_off_between_retries)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64];
    int64_t times[16];
    size_t n;
    /* Message 0's topic fails 5 times. The delays are 100, 200, 400, 800
     * and 800 ms, each drawn between half and all of it. */
    static const int64_t base[] = {100, 200, 400, 800, 800};
    int port = server_start("[{\"fault\":\"500\",\"topic\":\"slow/topic\","
                            "\"times\":5}]");

    iot_config(&cfg, url, sizeof url, port, 4);
    cfg.iot_retry_min_ms = 100;
    cfg.iot_retry_max_ms = 800;
    open_publisher(c, &cfg);
    ASSERT_EQ(publisher_submit(c->pub, 0, "slow/topic", "{\"id\":0}", 8), 0);
    ASSERT_TRUE(run_until(c, failed_once, 2000));
    ASSERT_FALSE(publisher_connected(c->pub));

    /* Another topic submitted while the first one waits gets through
     * first. */
    ASSERT_EQ(publisher_submit(c->pub, 1, "other/topic", "{\"id\":1}", 8), 0);
    ASSERT_TRUE(run_until(c, acked_1, 2000));
    ASSERT_EQ(c->acks[0], 0);

    c->target = 2;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));
    ASSERT_EQ(c->ack_order[0], 1);
    ASSERT_EQ(c->ack_order[1], 0);
    assert_signatures_ok();
    n = attempt_times(0, times, 16);
    ASSERT_EQ(n, 6);
    for (size_t i = 1; i < n; i++) {
        int64_t gap = times[i] - times[i - 1];
        if (gap < base[i - 1] / 2 - 5 || gap > base[i - 1] + 400)
            test_fail(__FILE__, __LINE__,
                      "retry %zu came %" PRId64 " ms after the one before; "
                      "expected %" PRId64 " to %" PRId64 " ms",
                      i, gap, base[i - 1] / 2, base[i - 1]);
    }
    ASSERT_TRUE(times[5] - times[4] > times[1] - times[0]);
    close_publisher(c);
}

TEST(iot_survives_server_down)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = server_start("[]");

    iot_config(&cfg, url, sizeof url, port, 8);
    cfg.iot_retry_min_ms = 100;
    cfg.iot_retry_max_ms = 800;
    open_publisher(c, &cfg);
    submit_range(c, 0, 10, 4);
    c->target = 10;
    ASSERT_TRUE(run_until(c, acks_reached, 10000));

    server_stop();
    submit_range(c, 10, 60, 4);
    run_until(c, never, 2000);
    ASSERT_EQ(c->ack_count, 10);
    ASSERT_EQ(publisher_pending(c->pub), 50);
    ASSERT_FALSE(publisher_connected(c->pub));
    publisher_stats(c->pub, &stats);
    ASSERT_TRUE(stats.failed_network >= 2);
    /* While the endpoint is down the transport probes one request at a
     * time with growing pauses (50-100, 100-200, 200-400, 400-800 ms and
     * so on), not every topic at once. */
    ASSERT_TRUE(stats.failed_network <= 14);

    ASSERT_EQ(server_start_on(port), port);
    c->target = 60;
    ASSERT_TRUE(run_until(c, acks_reached, 15000));
    for (int id = 0; id < 60; id++)
        ASSERT_EQ(c->acks[id], 1);
    check_ack_order(c, 4);
    ASSERT_TRUE(publisher_connected(c->pub));
    assert_signatures_ok();
    check_published(60, 4);
    close_publisher(c);
}

TEST(iot_closes_with_requests_in_flight)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64];
    int port = server_start("[{\"fault\":\"slow\",\"delay_ms\":3000}]");

    iot_config(&cfg, url, sizeof url, port, 4);
    open_publisher(c, &cfg);
    submit_range(c, 0, 20, 5);
    run_until(c, never, 200);
    ASSERT_EQ(publisher_pending(c->pub), 20);
    /* on_ack fails the test if an ack arrives after publisher_close. */
    close_publisher(c);
    ASSERT_EQ(c->ack_count, 0);
}

/* ---- signatures and secrets ---------------------------------------- */

TEST(iot_wrong_secret_is_rejected_and_kept)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    struct aws_credentials wrong = {
        .access_key_id = (char *)KEY_ID,
        .secret_access_key = (char *)"notTheSecret",
        .session_token = (char *)SESSION_TOKEN,
    };
    char url[64];
    int port = server_start("[]");

    iot_config(&cfg, url, sizeof url, port, 4);
    cfg.iot_credentials = &wrong;
    open_publisher(c, &cfg);
    submit_range(c, 0, 5, 2);
    run_until(c, never, 1000);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(c->ack_count, 0);
    ASSERT_EQ(publisher_pending(c->pub), 5);
    ASSERT_TRUE(stats.failed_auth >= 2);
    ASSERT_FALSE(publisher_connected(c->pub));

    /* The server's own check rejected every request. */
    read_log();
    ASSERT_TRUE(logged_count >= 2);
    for (size_t i = 0; i < logged_count; i++) {
        ASSERT_FALSE(logged[i].signature_ok);
        ASSERT_EQ(logged[i].status, 403);
        ASSERT_FALSE(logged[i].published);
    }
    close_publisher(c);
}

/* Read a file into a NUL-terminated buffer (owned). */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *data = malloc(1 << 22);
    size_t n;

    ASSERT_TRUE(f != NULL);
    n = fread(data, 1, (1 << 22) - 1, f);
    data[n] = '\0';
    fclose(f);
    return data;
}

/* Copy of text in lower case (owned). */
static char *lower_copy(const char *text)
{
    char *copy = strdup(text);

    for (char *p = copy; *p != '\0'; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    }
    return copy;
}

static size_t count_lines_with(const char *text, const char *needle)
{
    size_t n = 0;

    for (const char *line = text; *line != '\0';) {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        char *copy = strndup(line, len);

        if (strstr(copy, needle) != NULL)
            n++;
        free(copy);
        line += len + (end != NULL ? 1 : 0);
    }
    return n;
}

TEST(iot_logs_failures_without_secrets)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64], log_path[4300];
    char *text;
    int fd;
    /* The 403 reply goes on with the request's Authorization header and
     * session token, as AWS services behind API Gateway do, and none of it
     * may be logged. */
    int port = server_start("[{\"fault\":\"403\",\"times\":30},"
                            "{\"fault\":\"500\",\"times\":30}]");

    snprintf(log_path, sizeof log_path, "%s/podium.log", test_tmpdir());
    fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    ASSERT_TRUE(fd >= 0);
    log_set_fd(fd);
    log_set_level(LOG_DEBUG);

    iot_config(&cfg, url, sizeof url, port, 4);
    cfg.iot_retry_min_ms = 2;
    cfg.iot_retry_max_ms = 8;
    open_publisher(c, &cfg);
    submit_range(c, 0, 12, 3);
    c->target = 12;
    ASSERT_TRUE(run_until(c, acks_reached, 20000));
    close_publisher(c);
    log_set_fd(STDERR_FILENO);
    close(fd);

    assert_signatures_ok();
    text = slurp(log_path);
    ASSERT_TRUE(strstr(text, SECRET) == NULL);
    ASSERT_TRUE(strstr(text, SESSION_TOKEN) == NULL);
    ASSERT_TRUE(strstr(text, "Signature=") == NULL);
    ASSERT_TRUE(strstr(text, "AWS4-HMAC-SHA256") == NULL);
    char *lower = lower_copy(text);
    ASSERT_TRUE(strstr(lower, "authorization") == NULL);
    free(lower);

    /* 60 failures inside one minute give 10 warnings. They name the
     * topic, the status and the reply's first sentence. */
    ASSERT_EQ(count_lines_with(text, "\"level\":\"warn\""), 10);
    ASSERT_TRUE(strstr(text, "HTTP 403 \\\"The request signature we "
                             "calculated does not match the signature you "
                             "provided.\\\"") != NULL);
    ASSERT_TRUE(strstr(text, "\"topic\":\"podium/races/r") != NULL);
    ASSERT_TRUE(strstr(text, "works again after 60 failed requests") != NULL);
    free(text);
}

/* ---- configuration ------------------------------------------------- */

static void expect_config_error(const struct pub_config *cfg,
                                const char *expected)
{
    uv_loop_t loop;
    char err[512] = "";
    struct ctx dummy;

    ASSERT_EQ(uv_loop_init(&loop), 0);
    ASSERT_TRUE(publisher_new(&loop, cfg, on_ack, &dummy, err, sizeof err) ==
                NULL);
    if (strstr(err, expected) == NULL)
        test_fail(__FILE__, __LINE__, "error \"%s\" lacks \"%s\"", err,
                  expected);
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

TEST(iot_rejects_invalid_config)
{
    struct pub_config cfg;
    struct aws_credentials no_secret = {.access_key_id = (char *)KEY_ID};
    char url[64];

    iot_config(&cfg, url, sizeof url, 1, 4);
    cfg.iot_endpoint = NULL;
    expect_config_error(&cfg, "iot.endpoint is missing");
    cfg.iot_endpoint = "iot.example.com";
    expect_config_error(&cfg, "invalid iot.endpoint or aws.region: invalid "
                              "endpoint URL \"iot.example.com\"");
    cfg.iot_endpoint = "https://iot.example.com/topics";
    expect_config_error(&cfg, "a path, query or fragment");
    cfg.iot_endpoint = "https://iot.example.com";
    cfg.iot_region = "EU West";
    expect_config_error(&cfg, "invalid region \"EU West\"");
    cfg.iot_region = REGION;
    cfg.iot_credentials = NULL;
    expect_config_error(&cfg,
                        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    cfg.iot_credentials = &no_secret;
    expect_config_error(&cfg,
                        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
    cfg.iot_credentials = &test_creds;
    cfg.max_inflight = 0;
    expect_config_error(&cfg, "between 1 and 1000");
    cfg.max_inflight = 4;
    cfg.iot_retry_min_ms = 1000;
    cfg.iot_retry_max_ms = 10;
    expect_config_error(&cfg, "the maximum must not be below the minimum");
    cfg.iot_retry_max_ms = 0;
    cfg.iot_timeout_ms = -1;
    expect_config_error(&cfg, "IoT request timeout is -1 ms");
}
