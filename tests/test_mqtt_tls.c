/*
 * MQTT over TLS with client certificates, the way AWS IoT Core uses it,
 * against a real mosquitto (/usr/sbin/mosquitto) that each case starts on a
 * free 127.0.0.1 port. The broker requires a client certificate signed by
 * the test CA and takes the certificate's common name as the user name.
 * Certificates come from tools/make-test-certs.sh, which each case runs in
 * its own temporary folder. A libmosquitto subscriber on its own thread
 * connects over TLS too and records what the broker delivers.
 */
#include "tests/mqtt_subscriber.h"
#include "tests/testlib.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <uv.h>

#include "common/log.h"
#include "config/config.h"
#include "publisher/publisher.h"

#define MOSQUITTO_BIN "/usr/sbin/mosquitto"
#define MAX_IDS       1024
#define MAX_BROKERS   4
/* Payloads of these ids are larger than a TLS record (16 KiB), so one
 * PUBLISH spans several records. */
#define LARGE_ID_EVERY   50
#define LARGE_PAYLOAD    (100 * 1024)
#define MAX_PAYLOAD_SIZE (LARGE_PAYLOAD + 128)

/* ---- files --------------------------------------------------------- */

static char certs[4200];

/* Run tools/make-test-certs.sh once per process; returns the folder. */
static const char *certs_dir(void)
{
    const char *source = getenv("PODIUM_SOURCE_DIR");
    char cmd[8600];

    if (certs[0] != '\0')
        return certs;
    if (source == NULL)
        test_fail(__FILE__, __LINE__,
                  "PODIUM_SOURCE_DIR is not set: run this test through ctest");
    /* mosquitto started as root reads its key as the user "mosquitto", who
     * must be able to enter the temporary folder (mkdtemp makes it 0700). */
    ASSERT_EQ(chmod(test_tmpdir(), 0755), 0);
    snprintf(certs, sizeof certs, "%s/certs", test_tmpdir());
    snprintf(cmd, sizeof cmd, "bash '%s/tools/make-test-certs.sh' '%s'", source,
             certs);
    if (system(cmd) != 0)
        test_fail(__FILE__, __LINE__, "%s failed", cmd);
    return certs;
}

/* Path of NAME.EXT in the certificate folder; each path is kept until
 * exit, so callers may hold any number of them. */
static const char *cert_file(const char *name, const char *ext)
{
    static char paths[32][4300];
    static size_t used;
    char path[4300];

    snprintf(path, sizeof path, "%s/%s.%s", certs_dir(), name, ext);
    for (size_t i = 0; i < used; i++) {
        if (strcmp(paths[i], path) == 0)
            return paths[i];
    }
    ASSERT_TRUE(used < sizeof paths / sizeof paths[0]);
    memcpy(paths[used], path, sizeof path);
    return paths[used++];
}

static char *read_text(const char *path)
{
    FILE *f = fopen(path, "rb");
    char *data;
    long size;

    if (f == NULL)
        return strdup("");
    fseek(f, 0, SEEK_END);
    size = ftell(f);
    fseek(f, 0, SEEK_SET);
    data = malloc((size_t)size + 1);
    ASSERT_TRUE(data != NULL);
    data[fread(data, 1, (size_t)size, f)] = '\0';
    fclose(f);
    return data;
}

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ASSERT_TRUE(f != NULL);
    fputs(text, f);
    fclose(f);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- podium's log --------------------------------------------------- */

static char log_path[4300];

/* Send podium's log lines, debug included, to a file of this case. */
static void capture_log(void)
{
    int fd;

    snprintf(log_path, sizeof log_path, "%s/podium.log", test_tmpdir());
    fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    ASSERT_TRUE(fd >= 0);
    log_set_fd(fd);
    log_set_level(LOG_DEBUG);
}

static void expect_log_contains(const char *needle, int line)
{
    char *text = read_text(log_path);

    if (strstr(text, needle) == NULL)
        test_fail(__FILE__, line, "podium's log lacks \"%s\"; the log:\n%s",
                  needle, text);
    free(text);
}

/*
 * Fail when text contains a line of the base64 body of any private key of
 * the test, so a key that reaches a log or message is caught.
 */
static void expect_no_key_material(const char *text, const char *where)
{
    static const char *const keys[] = {"client", "other-client",
                                       "server", "server-other-host",
                                       "ca",     "other-ca"};

    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        char *pem = read_text(cert_file(keys[i], "key"));
        char *save = NULL;

        for (char *line = strtok_r(pem, "\n", &save); line != NULL;
             line = strtok_r(NULL, "\n", &save)) {
            if (strncmp(line, "-----", 5) == 0 || strlen(line) < 16)
                continue;
            if (strstr(text, line) != NULL)
                test_fail(__FILE__, __LINE__,
                          "%s contains a line of %s.key: %s", where, keys[i],
                          line);
        }
        free(pem);
    }
}

static void expect_log_has_no_key_material(void)
{
    char *text = read_text(log_path);
    expect_no_key_material(text, "podium's log");
    free(text);
}

/* ---- brokers ------------------------------------------------------- */

static pid_t broker_pids[MAX_BROKERS];

static void kill_brokers(void)
{
    for (int i = 0; i < MAX_BROKERS; i++) {
        if (broker_pids[i] > 0) {
            kill(broker_pids[i], SIGKILL);
            waitpid(broker_pids[i], NULL, 0);
            broker_pids[i] = 0;
        }
    }
}

static int free_port(void)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ASSERT_TRUE(fd >= 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&addr, &len), 0);
    close(fd);
    return ntohs(addr.sin_port);
}

static bool port_accepts(int port)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    bool ok;

    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    ok = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    close(fd);
    return ok;
}

static char broker_log[4300];

/*
 * Start mosquitto on 127.0.0.1:port with the server certificate
 * server_cert (a name such as "server"), as tools/peers.sh starts the peer
 * mosquitto-tls, or with a plain MQTT listener when server_cert is NULL.
 * Its log goes to broker_log. Returns its pid once the port accepts.
 */
static pid_t broker_start(int port, const char *server_cert)
{
    char conf[4300];
    FILE *f;
    pid_t pid;
    int slot = -1;

    snprintf(conf, sizeof conf, "%s/mosquitto-%d.conf", test_tmpdir(), port);
    snprintf(broker_log, sizeof broker_log, "%s/mosquitto-%d.log",
             test_tmpdir(), port);
    f = fopen(conf, "w");
    ASSERT_TRUE(f != NULL);
    fprintf(f, "per_listener_settings true\nlistener %d 127.0.0.1\n", port);
    if (server_cert != NULL)
        fprintf(f,
                "cafile %s\ncertfile %s\nkeyfile %s\n"
                "require_certificate true\nuse_identity_as_username true\n"
                "tls_version tlsv1.2\n",
                cert_file("ca", "pem"), cert_file(server_cert, "pem"),
                cert_file(server_cert, "key"));
    fprintf(f, "allow_anonymous true\npersistence false\nlog_dest stderr\n"
               "max_queued_messages 0\n");
    fclose(f);

    for (int i = 0; i < MAX_BROKERS && slot < 0; i++) {
        if (broker_pids[i] == 0)
            slot = i;
    }
    ASSERT_TRUE(slot >= 0);
    atexit(kill_brokers);
    pid = fork();
    ASSERT_TRUE(pid >= 0);
    if (pid == 0) {
        int fd = open(broker_log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        /* The broker dies with the test even when ctest kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (fd >= 0) {
            dup2(fd, STDOUT_FILENO);
            dup2(fd, STDERR_FILENO);
        }
        execl(MOSQUITTO_BIN, MOSQUITTO_BIN, "-c", conf, (char *)NULL);
        _exit(127);
    }
    broker_pids[slot] = pid;
    for (int i = 0; i < 250 && !port_accepts(port); i++)
        sleep_ms(20);
    if (!port_accepts(port)) {
        char *text = read_text(broker_log);
        test_fail(
            __FILE__, __LINE__,
            "mosquitto did not listen on port %d within 5 s; its log:\n%s",
            port, text);
    }
    return pid;
}

/* Send sig to a broker; SIGKILL also reaps it. */
static void broker_signal(pid_t pid, int sig)
{
    ASSERT_EQ(kill(pid, sig), 0);
    if (sig != SIGKILL)
        return;
    waitpid(pid, NULL, 0);
    for (int i = 0; i < MAX_BROKERS; i++) {
        if (broker_pids[i] == pid)
            broker_pids[i] = 0;
    }
}

static void expect_broker_log_contains(const char *needle, int line)
{
    char *text = read_text(broker_log);

    if (strstr(text, needle) == NULL)
        test_fail(__FILE__, line, "mosquitto's log lacks \"%s\"; the log:\n%s",
                  needle, text);
    free(text);
}

/* ---- subscriber ---------------------------------------------------- */

/*
 * TLS settings of a subscriber with the client certificate "client". With
 * check_host false it accepts a broker certificate for another host name,
 * so a test can show that such a broker works for a client that does not
 * check the name.
 */
static const struct subscriber_tls *tls_subscriber(bool check_host)
{
    static struct subscriber_tls tls;
    tls.ca_file = cert_file("ca", "pem");
    tls.cert_file = cert_file("client", "pem");
    tls.key_file = cert_file("client", "key");
    tls.check_host = check_host;
    return &tls;
}

/* ---- publisher harness --------------------------------------------- */

struct ctx {
    uv_loop_t loop;
    struct publisher *pub;
    int acks[MAX_IDS];
    size_t ack_count;
    bool closed;
    size_t target; /* ack count that acks_reached waits for */
    struct subscriber *sub;
};

static void on_ack(void *arg, int64_t id)
{
    struct ctx *c = arg;
    ASSERT_TRUE(id >= 0);
    ASSERT_TRUE(id < MAX_IDS);
    ASSERT_FALSE(c->closed);
    c->acks[id]++;
    c->ack_count++;
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

    /* The tick wakes the loop so that conditions set by other threads
     * are seen within 10 ms. */
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

static bool acks_and_sub_reached(struct ctx *c)
{
    return c->ack_count >= c->target && sub_count(c->sub) >= c->target;
}

static bool is_closed(struct ctx *c)
{
    return c->closed;
}

static bool is_disconnected(struct ctx *c)
{
    return !publisher_connected(c->pub);
}

/* A fresh context from static storage, so a failed case leaks nothing. */
static struct ctx *ctx_new(void)
{
    static struct ctx contexts[4];
    static size_t used;
    struct ctx *c;

    ASSERT_TRUE(used < sizeof contexts / sizeof contexts[0]);
    c = &contexts[used++];
    ASSERT_EQ(uv_loop_init(&c->loop), 0);
    return c;
}

/*
 * An mqtts:// configuration for 127.0.0.1:port that trusts the CA ca and
 * presents the certificate and key named client (NULL: no client
 * certificate).
 */
static void tls_config(struct pub_config *cfg, char *url, size_t url_len,
                       int port, const char *ca, const char *client)
{
    snprintf(url, url_len, "mqtts://127.0.0.1:%d", port);
    memset(cfg, 0, sizeof *cfg);
    cfg->transport = PUB_MQTT;
    cfg->mqtt_url = url;
    cfg->mqtt_client_id = "podium-tls-test";
    cfg->mqtt_ca_file = cert_file(ca, "pem");
    if (client != NULL) {
        cfg->mqtt_cert_file = cert_file(client, "pem");
        cfg->mqtt_key_file = cert_file(client, "key");
    }
    cfg->max_inflight = 50;
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

/* Message id's bytes: every LARGE_ID_EVERY-th payload is over 16 KiB. */
static size_t make_payload(int64_t id, char *buf, size_t size)
{
    size_t pad = id % LARGE_ID_EVERY == 0 ? LARGE_PAYLOAD : (size_t)(id % 37);
    int n = snprintf(buf, size, "{\"id\":%" PRId64 ",\"pad\":\"", id);

    for (size_t i = 0; i < pad; i++)
        buf[n++] = (char)('a' + ((size_t)id + i) % 26);
    n += snprintf(buf + n, size - (size_t)n, "\"}");
    return (size_t)n;
}

static void make_topic(int64_t id, char *buf, size_t size)
{
    snprintf(buf, size, "podium/races/r%" PRId64 "/leaderboard", id % 5);
}

static void submit_range(struct ctx *c, int64_t first, int64_t end)
{
    static char payload[MAX_PAYLOAD_SIZE];
    char topic[64];

    for (int64_t id = first; id < end; id++) {
        size_t len = make_payload(id, payload, sizeof payload);
        make_topic(id, topic, sizeof topic);
        ASSERT_EQ(publisher_submit(c->pub, id, topic, payload, len), 0);
    }
}

/* Parse the id from a received payload and check its bytes and topic. */
static int64_t check_received(const struct received *r)
{
    static char payload[MAX_PAYLOAD_SIZE];
    char topic[64];
    int64_t id = -1;

    ASSERT_EQ(sscanf(r->payload, "{\"id\":%" SCNd64, &id), 1);
    ASSERT_TRUE(id >= 0);
    ASSERT_TRUE(id < MAX_IDS);
    size_t len = make_payload(id, payload, sizeof payload);
    make_topic(id, topic, sizeof topic);
    ASSERT_MEM_EQ(r->payload, r->len, payload, len);
    ASSERT_STR_EQ(r->topic, topic);
    return id;
}

/* CPU time this process used so far, in milliseconds. */
static long cpu_ms(void)
{
    struct rusage ru;

    ASSERT_EQ(getrusage(RUSAGE_SELF, &ru), 0);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000L +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000L;
}

/*
 * Run a publisher whose connections the TLS handshake rejects for 2.5 s,
 * then check what must hold for every such rejection. Nothing is
 * acknowledged or delivered, the messages wait, and the publisher keeps
 * retrying with backoff. Its log reports that the handshake failed, with
 * reason or other_reason (when not NULL) as the cause, and contains no key
 * material. A broker that rejects the client certificate sends an alert
 * and resets the connection, and the reset may discard the alert, so
 * those cases accept either cause.
 */
static void expect_rejected(struct ctx *c, struct subscriber *sub,
                            const char *reason, const char *other_reason,
                            int line)
{
    struct pub_stats stats;
    char *log_text;

    submit_range(c, 0, 5);
    run_until(c, never, 2500);
    publisher_stats(c->pub, &stats);
    if (stats.connections != 0 || c->ack_count != 0)
        test_fail(__FILE__, line,
                  "the TLS handshake was expected to fail, but %" PRIu64
                  " connections were accepted and %zu messages acknowledged",
                  stats.connections, c->ack_count);
    ASSERT_FALSE(publisher_connected(c->pub));
    ASSERT_EQ(stats.sent, 0);
    ASSERT_EQ(publisher_pending(c->pub), 5);
    /* One attempt at start, then retries after 0.25-0.5 s, 0.5-1 s and
     * 1-2 s: at least two, and few enough to show the backoff. */
    ASSERT_TRUE(stats.connect_attempts >= 2);
    ASSERT_TRUE(stats.connect_attempts <= 5);
    if (sub != NULL)
        ASSERT_EQ(sub_count(sub), 0);
    expect_log_contains("\"level\":\"error\"", line);
    expect_log_contains("TLS handshake failed: ", line);
    expect_log_contains("5 messages wait; retrying in", line);
    log_text = read_text(log_path);
    /* Every failed attempt is logged as a TLS failure, up to the limit of
     * 10 lines a minute. */
    for (const char *p = strstr(log_text, "cannot connect to "); p != NULL;
         p = strstr(p + 1, "cannot connect to ")) {
        const char *end = strchr(p, '\n');
        const char *tls = strstr(p, ": TLS handshake failed: ");
        if (tls == NULL || (end != NULL && tls > end))
            test_fail(__FILE__, line,
                      "a failed attempt was not logged as a TLS handshake "
                      "failure; the log:\n%s",
                      log_text);
    }
    if (strstr(log_text, reason) == NULL &&
        (other_reason == NULL || strstr(log_text, other_reason) == NULL))
        test_fail(__FILE__, line,
                  "podium's log lacks \"%s\"%s%s%s; the log:\n%s", reason,
                  other_reason != NULL ? " and \"" : "",
                  other_reason != NULL ? other_reason : "",
                  other_reason != NULL ? "\"" : "", log_text);
    free(log_text);
    expect_log_has_no_key_material();
}

/* ---- delivery ------------------------------------------------------ */

TEST(mqtt_tls_delivers_with_client_cert)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = free_port();

    capture_log();
    broker_start(port, "server");
    sub_start(&sub, port, tls_subscriber(true));
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    submit_range(c, 0, 200);

    c->target = 200;
    c->sub = &sub;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 30000));
    sleep_ms(200);
    sub_stop(&sub);

    for (int id = 0; id < 200; id++)
        ASSERT_EQ(c->acks[id], 1);
    ASSERT_EQ(publisher_pending(c->pub), 0);
    ASSERT_EQ(sub.count, 200);
    for (size_t i = 0; i < sub.count; i++)
        ASSERT_EQ(check_received(&sub.msgs[i]), (int64_t)i);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 200);
    ASSERT_EQ(stats.resent, 0);
    ASSERT_EQ(stats.connections, 1);
    /* The broker took the certificate's common name as the user name. */
    expect_broker_log_contains("u'podium-test-client'", __LINE__);
    expect_log_has_no_key_material();
    sub_free(&sub);
    close_publisher(c);
}

/* ---- rejected handshakes ------------------------------------------- */

TEST(mqtt_tls_rejects_missing_client_cert)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    char url[64];
    int port = free_port();

    capture_log();
    broker_start(port, "server");
    sub_start(&sub, port, tls_subscriber(true));
    tls_config(&cfg, url, sizeof url, port, "ca", NULL);
    open_publisher(c, &cfg);
    expect_rejected(c, &sub, "alert certificate required",
                    "does so when none is sent, so set mqtt.cert_file and "
                    "mqtt.key_file",
                    __LINE__);
    expect_broker_log_contains("peer did not return a certificate", __LINE__);
    close_publisher(c);
    ASSERT_EQ(c->ack_count, 0);

    /* With the client certificate set, a new publisher delivers the same
     * messages. */
    c = ctx_new();
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    submit_range(c, 0, 5);
    c->target = 5;
    c->sub = &sub;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 10000));
    sleep_ms(100);
    sub_stop(&sub);
    ASSERT_EQ(sub.count, 5);
    for (size_t i = 0; i < sub.count; i++)
        ASSERT_EQ(check_received(&sub.msgs[i]), (int64_t)i);
    sub_free(&sub);
    close_publisher(c);
}

TEST(mqtt_tls_rejects_client_of_other_ca)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    char url[64];
    int port = free_port();

    capture_log();
    broker_start(port, "server");
    sub_start(&sub, port, tls_subscriber(true));
    tls_config(&cfg, url, sizeof url, port, "ca", "other-client");
    open_publisher(c, &cfg);
    expect_rejected(c, &sub, "alert unknown ca",
                    "it may have rejected the client certificate in "
                    "mqtt.cert_file",
                    __LINE__);
    expect_broker_log_contains("certificate verify failed", __LINE__);
    sub_stop(&sub);
    sub_free(&sub);
    close_publisher(c);
}

TEST(mqtt_tls_rejects_server_of_other_ca)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    char url[64];
    int port = free_port();

    capture_log();
    broker_start(port, "server");
    /* The subscriber trusts the broker's CA and connects. */
    sub_start(&sub, port, tls_subscriber(true));
    tls_config(&cfg, url, sizeof url, port, "other-ca", "client");
    open_publisher(c, &cfg);
    /* mosquitto sends its CA with its certificate, and OpenSSL names the
     * untrusted CA in the reason. */
    expect_rejected(c, &sub,
                    "certificate verify failed; broker certificate: "
                    "self-signed certificate in certificate chain",
                    NULL, __LINE__);
    sub_stop(&sub);
    sub_free(&sub);
    close_publisher(c);
}

TEST(mqtt_tls_rejects_host_name_mismatch)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    char url[64];
    int port = free_port();

    capture_log();
    /* The certificate is signed by the trusted CA, for other.test only. */
    broker_start(port, "server-other-host");
    /* A subscriber that does not check the name connects, so only the
     * name can make the publisher fail. */
    sub_start(&sub, port, tls_subscriber(false));
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    expect_rejected(c, &sub,
                    "host name verification failed; the broker certificate "
                    "is not issued for host 127.0.0.1",
                    NULL, __LINE__);
    sub_stop(&sub);
    sub_free(&sub);
    close_publisher(c);
}

/* mqtts:// to a listener without TLS fails the handshake and backs off. */
TEST(mqtt_tls_rejects_plain_listener)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    char url[64];
    int port = free_port();
    long cpu_before;

    capture_log();
    broker_start(port, NULL);
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    cpu_before = cpu_ms();
    expect_rejected(c, NULL, "TLS handshake failed", NULL, __LINE__);
    /* Waiting 2.5 s for retries must not keep a core busy. */
    ASSERT_TRUE(cpu_ms() - cpu_before < 500);
    close_publisher(c);
}

/* ---- a stalled handshake and a broker restart ---------------------- */

TEST(mqtt_tls_handshake_waits_without_spinning)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = free_port();
    pid_t broker = broker_start(port, "server");
    long cpu_before;

    /* A stopped broker accepts the TCP connection in the kernel but never
     * replies to the ClientHello, so the handshake waits for it. */
    capture_log();
    sub_start(&sub, port, tls_subscriber(true));
    broker_signal(broker, SIGSTOP);
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    submit_range(c, 0, 5);
    cpu_before = cpu_ms();
    run_until(c, never, 2000);
    ASSERT_TRUE(cpu_ms() - cpu_before < 500);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.connect_attempts, 1);
    ASSERT_EQ(c->ack_count, 0);

    /* The same handshake finishes once the broker runs again. */
    broker_signal(broker, SIGCONT);
    c->target = 5;
    c->sub = &sub;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 10000));
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.connect_attempts, 1);
    ASSERT_EQ(stats.connections, 1);
    sub_stop(&sub);
    for (size_t i = 0; i < sub.count; i++)
        ASSERT_EQ(check_received(&sub.msgs[i]), (int64_t)i);
    sub_free(&sub);
    close_publisher(c);
}

TEST(mqtt_tls_resends_after_broker_restart)
{
    struct ctx *c = ctx_new();
    struct subscriber sub1, sub2;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int seen[300] = {0};
    int port = free_port();
    pid_t broker = broker_start(port, "server");

    capture_log();
    sub_start(&sub1, port, tls_subscriber(true));
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    open_publisher(c, &cfg);
    submit_range(c, 0, 100);
    c->target = 100;
    c->sub = &sub1;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 20000));

    /* A stopped broker takes PUBLISH packets into its socket buffer but
     * never replies, so 50 messages are on the wire without PUBACK. */
    broker_signal(broker, SIGSTOP);
    submit_range(c, 100, 300);
    run_until(c, never, 500);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 150);
    ASSERT_EQ(c->ack_count, 100);
    ASSERT_EQ(publisher_pending(c->pub), 200);

    broker_signal(broker, SIGKILL);
    ASSERT_TRUE(run_until(c, is_disconnected, 5000));
    sub_stop(&sub1);
    broker_start(port, "server");
    sub_start(&sub2, port, tls_subscriber(true));
    c->target = 300;
    c->sub = &sub2;
    ASSERT_TRUE(run_until(c, acks_reached, 30000));
    sleep_ms(300);
    sub_stop(&sub2);

    for (int id = 0; id < 300; id++)
        ASSERT_EQ(c->acks[id], 1);
    publisher_stats(c->pub, &stats);
    ASSERT_TRUE(stats.resent >= 50);
    ASSERT_EQ(stats.connections, 2);
    /* Every message reached a subscriber, byte for byte; the 50 that were
     * in flight arrived after the restart. */
    for (size_t i = 0; i < sub1.count; i++)
        seen[check_received(&sub1.msgs[i])]++;
    for (size_t i = 0; i < sub2.count; i++)
        seen[check_received(&sub2.msgs[i])]++;
    for (int id = 0; id < 300; id++)
        ASSERT_TRUE(seen[id] >= 1);
    expect_log_contains("sent without PUBACK and sent again", __LINE__);
    expect_log_has_no_key_material();
    sub_free(&sub1);
    sub_free(&sub2);
    close_publisher(c);
}

/* ---- unusable files ------------------------------------------------ */

static void expect_publisher_error(const struct pub_config *cfg,
                                   const char *expected, int line)
{
    uv_loop_t loop;
    char err[1024] = "";
    struct ctx dummy;

    ASSERT_EQ(uv_loop_init(&loop), 0);
    ASSERT_TRUE(publisher_new(&loop, cfg, on_ack, &dummy, err, sizeof err) ==
                NULL);
    if (strstr(err, expected) == NULL)
        test_fail(__FILE__, line, "error \"%s\" lacks \"%s\"", err, expected);
    expect_no_key_material(err, "the error message");
    ASSERT_EQ(uv_loop_close(&loop), 0);
}

TEST(mqtt_tls_publisher_rejects_bad_files)
{
    struct pub_config cfg;
    char url[64], expected[9000], garbage[4300];
    int port = free_port();

    capture_log();
    snprintf(garbage, sizeof garbage, "%s/garbage.pem", test_tmpdir());
    write_text(garbage, "-----BEGIN CERTIFICATE-----\nnot base64\n");

    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_key_file = cert_file("other-client", "key");
    snprintf(expected, sizeof expected,
             "mqtt.key_file %s does not match the certificate in "
             "mqtt.cert_file %s",
             cfg.mqtt_key_file, cfg.mqtt_cert_file);
    expect_publisher_error(&cfg, expected, __LINE__);

    /* A certificate where the key belongs. */
    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_key_file = cert_file("client", "pem");
    snprintf(expected, sizeof expected,
             "mqtt.key_file %s contains no PEM private key", cfg.mqtt_key_file);
    expect_publisher_error(&cfg, expected, __LINE__);

    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_cert_file = garbage;
    snprintf(expected, sizeof expected,
             "mqtt.cert_file %s contains no usable PEM certificate", garbage);
    expect_publisher_error(&cfg, expected, __LINE__);

    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_ca_file = cert_file("missing", "pem");
    snprintf(expected, sizeof expected,
             "cannot read mqtt.ca_file %s: No such file or directory",
             cfg.mqtt_ca_file);
    expect_publisher_error(&cfg, expected, __LINE__);

    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_cert_file = certs_dir();
    snprintf(expected, sizeof expected,
             "cannot read mqtt.cert_file %s: not a regular file", certs_dir());
    expect_publisher_error(&cfg, expected, __LINE__);

    tls_config(&cfg, url, sizeof url, port, "ca", "client");
    cfg.mqtt_key_file = cert_file("missing", "key");
    snprintf(expected, sizeof expected,
             "cannot read mqtt.key_file %s: No such file or directory",
             cfg.mqtt_key_file);
    expect_publisher_error(&cfg, expected, __LINE__);
    expect_log_has_no_key_material();
}

/* ---- configuration checks (exit status 2 in podium run) ------------- */

static int load_config(const char *const *sets, size_t count, char *err,
                       size_t err_len)
{
    struct podium_config cfg;
    char *no_env[] = {NULL};
    int rc = cfg_load(&cfg, NULL, false, no_env, sets, count, err, err_len);

    if (rc == 0)
        cfg_free(&cfg);
    return rc;
}

static void expect_config_error(const char *ca, const char *cert,
                                const char *key, const char *expected, int line)
{
    char sets[4][4400], err[2048] = "";
    const char *list[4];

    snprintf(sets[0], sizeof sets[0], "mqtt.url=mqtts://127.0.0.1:8883");
    snprintf(sets[1], sizeof sets[1], "mqtt.ca_file=%s", ca);
    snprintf(sets[2], sizeof sets[2], "mqtt.cert_file=%s", cert);
    snprintf(sets[3], sizeof sets[3], "mqtt.key_file=%s", key);
    for (int i = 0; i < 4; i++)
        list[i] = sets[i];
    if (load_config(list, 4, err, sizeof err) != -1)
        test_fail(__FILE__, line, "cfg_load accepted ca %s, cert %s, key %s",
                  ca, cert, key);
    if (strstr(err, expected) == NULL)
        test_fail(__FILE__, line, "error \"%s\" lacks \"%s\"", err, expected);
    expect_no_key_material(err, "the configuration error");
}

TEST(mqtt_tls_config_rejects_bad_files)
{
    char expected[9000], garbage[4300], sets[4][4400], err[2048];
    const char *ca = cert_file("ca", "pem");
    const char *cert = cert_file("client", "pem");
    const char *key = cert_file("client", "key");
    const char *other_key = cert_file("other-client", "key");
    const char *missing = cert_file("missing", "pem");
    const char *list[4];

    snprintf(garbage, sizeof garbage, "%s/garbage.pem", test_tmpdir());
    write_text(garbage, "not a certificate\n");

    snprintf(expected, sizeof expected,
             "cannot read mqtt.ca_file %s: No such file or directory; set "
             "mqtt.ca_file to a readable PEM file",
             missing);
    expect_config_error(missing, cert, key, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "cannot read mqtt.cert_file %s: No such file or directory",
             missing);
    expect_config_error(ca, missing, key, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "cannot read mqtt.key_file %s: No such file or directory",
             missing);
    expect_config_error(ca, cert, missing, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "cannot read mqtt.ca_file %s: not a regular file", certs_dir());
    expect_config_error(certs_dir(), cert, key, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "mqtt.ca_file %s contains no PEM certificate", garbage);
    expect_config_error(garbage, cert, key, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "mqtt.key_file %s contains no PEM private key", cert);
    expect_config_error(ca, cert, cert, expected, __LINE__);
    snprintf(expected, sizeof expected,
             "mqtt.key_file %s does not match the certificate in "
             "mqtt.cert_file %s; set mqtt.key_file to the private key of "
             "that certificate",
             other_key, cert);
    expect_config_error(ca, cert, other_key, expected, __LINE__);

    /* Valid files pass. */
    snprintf(sets[0], sizeof sets[0], "mqtt.url=mqtts://127.0.0.1:8883");
    snprintf(sets[1], sizeof sets[1], "mqtt.ca_file=%s", ca);
    snprintf(sets[2], sizeof sets[2], "mqtt.cert_file=%s", cert);
    snprintf(sets[3], sizeof sets[3], "mqtt.key_file=%s", key);
    for (int i = 0; i < 4; i++)
        list[i] = sets[i];
    if (load_config(list, 4, err, sizeof err) != 0)
        test_fail(__FILE__, __LINE__, "cfg_load rejected valid files: %s", err);

    /* The files are not read unless the MQTT transport uses TLS. */
    snprintf(sets[0], sizeof sets[0], "mqtt.url=mqtt://127.0.0.1:1883");
    snprintf(sets[1], sizeof sets[1], "mqtt.ca_file=%s", missing);
    ASSERT_EQ(load_config(list, 4, err, sizeof err), 0);
    snprintf(sets[0], sizeof sets[0], "publish.transport=file");
    ASSERT_EQ(load_config(list, 4, err, sizeof err), 0);
}
