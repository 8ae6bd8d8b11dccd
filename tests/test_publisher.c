/*
 * Publisher tests. The MQTT cases run against a real mosquitto broker
 * (/usr/sbin/mosquitto) that each case starts on a free 127.0.0.1 port with
 * its own configuration file, and a libmosquitto subscriber on its own
 * thread. The max_inflight case uses a small fake broker on a thread that
 * reads PUBLISH packets and sends PUBACK only when the test calls for it, so
 * the test can count what is on the wire.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <uv.h>

#include "publisher/publisher.h"

#define MOSQUITTO_BIN "/usr/sbin/mosquitto"
#define MAX_IDS       4096
#define MAX_BROKERS   8

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

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* A port that was free a moment ago: bind 127.0.0.1:0 and read it. */
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

/* Start mosquitto on 127.0.0.1:port; returns its pid once it accepts. */
static pid_t broker_start(int port)
{
    char conf[4200];
    FILE *f;
    pid_t pid;
    int slot = -1;

    snprintf(conf, sizeof conf, "%s/mosquitto-%d.conf", test_tmpdir(), port);
    f = fopen(conf, "w");
    ASSERT_TRUE(f != NULL);
    fprintf(f,
            "listener %d 127.0.0.1\nallow_anonymous true\n"
            "persistence false\nlog_dest stderr\n",
            port);
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
        /* The broker dies with the test even when ctest kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execl(MOSQUITTO_BIN, MOSQUITTO_BIN, "-c", conf, (char *)NULL);
        _exit(127);
    }
    broker_pids[slot] = pid;
    for (int i = 0; i < 250 && !port_accepts(port); i++)
        sleep_ms(20);
    ASSERT_TRUE(port_accepts(port));
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

/* ---- subscriber ---------------------------------------------------- */

/* ---- publisher harness --------------------------------------------- */

struct ctx {
    uv_loop_t loop;
    struct publisher *pub;
    int acks[MAX_IDS];
    int64_t ack_order[MAX_IDS * 2];
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

static bool is_connected(struct ctx *c)
{
    return publisher_connected(c->pub);
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

static void mqtt_config(struct pub_config *cfg, char *url, size_t url_len,
                        int port, size_t max_inflight)
{
    snprintf(url, url_len, "mqtt://127.0.0.1:%d", port);
    memset(cfg, 0, sizeof *cfg);
    cfg->transport = PUB_MQTT;
    cfg->mqtt_url = url;
    cfg->mqtt_client_id = "podium-test";
    cfg->max_inflight = max_inflight;
}

static void open_publisher(struct ctx *c, const struct pub_config *cfg)
{
    char err[256] = "";
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

/* Message id's bytes: the payload varies in length and content. */
static size_t make_payload(int64_t id, char *buf, size_t size)
{
    int n = snprintf(buf, size, "{\"id\":%" PRId64 ",\"pad\":\"", id);
    for (int64_t i = 0; i < id % 37; i++)
        n += snprintf(buf + n, size - (size_t)n, "%c",
                      (char)('a' + (id + i) % 26));
    n += snprintf(buf + n, size - (size_t)n, "\"}");
    return (size_t)n;
}

static void make_topic(int64_t id, char *buf, size_t size)
{
    snprintf(buf, size, "race/r%" PRId64 "/leaderboard", id % 5);
}

static void submit_range(struct ctx *c, int64_t first, int64_t end)
{
    char topic[64], payload[128];
    for (int64_t id = first; id < end; id++) {
        size_t len = make_payload(id, payload, sizeof payload);
        make_topic(id, topic, sizeof topic);
        ASSERT_EQ(publisher_submit(c->pub, id, topic, payload, len), 0);
    }
}

/* Parse the id from a received payload and check its bytes and topic. */
static int64_t check_received(const struct received *r)
{
    char topic[64], payload[128];
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

/* ---- MQTT delivery ------------------------------------------------- */

TEST(publisher_delivers_thousand_messages_in_order)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = free_port();

    broker_start(port);
    sub_start(&sub, port, NULL);
    mqtt_config(&cfg, url, sizeof url, port, 20);
    open_publisher(c, &cfg);
    submit_range(c, 0, 1000);
    ASSERT_EQ(publisher_pending(c->pub), 1000);

    c->target = 1000;
    c->sub = &sub;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 60000));
    sleep_ms(200);
    sub_stop(&sub);

    for (int64_t id = 0; id < 1000; id++)
        ASSERT_EQ(c->acks[id], 1);
    ASSERT_EQ(c->ack_count, 1000);
    ASSERT_EQ(publisher_pending(c->pub), 0);
    ASSERT_EQ(sub.count, 1000);
    for (size_t i = 0; i < sub.count; i++)
        ASSERT_EQ(check_received(&sub.msgs[i]), (int64_t)i);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 1000);
    ASSERT_EQ(stats.resent, 0);
    ASSERT_EQ(stats.acked, 1000);
    ASSERT_EQ(stats.connections, 1);
    sub_free(&sub);
    close_publisher(c);
}

TEST(publisher_connects_after_broker_starts)
{
    struct ctx *c = ctx_new();
    struct subscriber sub;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = free_port();

    mqtt_config(&cfg, url, sizeof url, port, 20);
    open_publisher(c, &cfg);
    submit_range(c, 0, 10);
    ASSERT_FALSE(run_until(c, is_connected, 1500));
    ASSERT_EQ(publisher_pending(c->pub), 10);
    ASSERT_EQ(c->ack_count, 0);
    publisher_stats(c->pub, &stats);
    /* One attempt at start, then retries after 0.25-0.5 s and 0.5-1 s. */
    ASSERT_TRUE(stats.connect_attempts >= 2);
    ASSERT_TRUE(stats.connect_attempts <= 4);

    /* The loop does not run while the broker and subscriber start, so the
     * publisher cannot deliver before the subscription exists. */
    broker_start(port);
    sub_start(&sub, port, NULL);
    c->target = 10;
    c->sub = &sub;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 10000));
    ASSERT_TRUE(publisher_connected(c->pub));
    sub_stop(&sub);
    for (size_t i = 0; i < sub.count; i++)
        ASSERT_EQ(check_received(&sub.msgs[i]), (int64_t)i);
    ASSERT_EQ(sub.count, 10);
    sub_free(&sub);
    close_publisher(c);
}

TEST(publisher_resends_after_broker_restart)
{
    struct ctx *c = ctx_new();
    struct subscriber sub1, sub2;
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int seen[300] = {0};
    int port = free_port();
    pid_t broker = broker_start(port);

    sub_start(&sub1, port, NULL);
    mqtt_config(&cfg, url, sizeof url, port, 50);
    open_publisher(c, &cfg);
    submit_range(c, 0, 100);
    c->target = 100;
    c->sub = &sub1;
    ASSERT_TRUE(run_until(c, acks_and_sub_reached, 10000));

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
    broker_start(port);
    sub_start(&sub2, port, NULL);
    c->target = 300;
    c->sub = &sub2;
    ASSERT_TRUE(run_until(c, acks_reached, 20000));
    sleep_ms(300);
    sub_stop(&sub2);

    for (int id = 0; id < 300; id++)
        ASSERT_EQ(c->acks[id], 1);
    ASSERT_EQ(c->ack_count, 300);
    publisher_stats(c->pub, &stats);
    ASSERT_TRUE(stats.resent >= 50);
    ASSERT_EQ(stats.connections, 2);
    for (size_t i = 0; i < sub1.count; i++)
        seen[check_received(&sub1.msgs[i])]++;
    for (size_t i = 0; i < sub2.count; i++)
        seen[check_received(&sub2.msgs[i])]++;
    for (int id = 0; id < 300; id++)
        ASSERT_TRUE(seen[id] >= 1);
    sub_free(&sub1);
    sub_free(&sub2);
    close_publisher(c);
}

TEST(publisher_closes_with_messages_in_flight)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg;
    struct pub_stats stats;
    char url[64];
    int port = free_port();
    pid_t broker = broker_start(port);

    mqtt_config(&cfg, url, sizeof url, port, 20);
    open_publisher(c, &cfg);
    ASSERT_TRUE(run_until(c, is_connected, 5000));
    broker_signal(broker, SIGSTOP);
    submit_range(c, 0, 100);
    run_until(c, never, 200);
    publisher_stats(c->pub, &stats);
    ASSERT_EQ(stats.sent, 20);
    ASSERT_EQ(publisher_pending(c->pub), 100);

    /* on_ack fails the test if an ack arrives after publisher_close. */
    close_publisher(c);
    ASSERT_EQ(c->ack_count, 0);
}

/* ---- max_inflight against a fake broker ---------------------------- */

struct fake_broker {
    int listen_fd;
    int conn_fd;
    int port;
    pthread_t thread;
    pthread_mutex_t mutex;
    int mids[MAX_IDS];    /* packet id of each PUBLISH, in arrival order */
    int64_t ids[MAX_IDS]; /* message id parsed from its payload */
    size_t received;
};

static bool read_full(int fd, void *buf, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = read(fd, (char *)buf + done, len - done);
        if (n <= 0)
            return false;
        done += (size_t)n;
    }
    return true;
}

/* Read one MQTT packet: returns its first byte, or -1 at end of stream. */
static int read_packet(int fd, unsigned char *body, size_t size, size_t *len)
{
    unsigned char header, byte;
    size_t length = 0, mult = 1;

    if (!read_full(fd, &header, 1))
        return -1;
    do {
        if (!read_full(fd, &byte, 1))
            return -1;
        length += (byte & 127) * mult;
        mult *= 128;
    } while (byte & 128);
    if (length > size || !read_full(fd, body, length))
        return -1;
    *len = length;
    return header;
}

static void fake_write(struct fake_broker *fb, const void *buf, size_t len)
{
    pthread_mutex_lock(&fb->mutex);
    ssize_t n = write(fb->conn_fd, buf, len);
    pthread_mutex_unlock(&fb->mutex);
    (void)n;
}

static void *fake_broker_main(void *arg)
{
    static const unsigned char connack[] = {0x20, 0x02, 0x00, 0x00};
    static const unsigned char pingresp[] = {0xd0, 0x00};
    struct fake_broker *fb = arg;
    unsigned char body[4096];
    size_t len;
    int header;

    fb->conn_fd = accept(fb->listen_fd, NULL, NULL);
    if (fb->conn_fd < 0)
        return NULL;
    while ((header = read_packet(fb->conn_fd, body, sizeof body, &len)) >= 0) {
        if ((header & 0xf0) == 0x10) {
            fake_write(fb, connack, sizeof connack);
        } else if ((header & 0xf0) == 0xc0) {
            fake_write(fb, pingresp, sizeof pingresp);
        } else if ((header & 0xf0) == 0x30 && len >= 4) {
            size_t topic_len = (size_t)body[0] << 8 | body[1];
            size_t at = 2 + topic_len;
            int64_t id = -1;
            char text[64] = "";
            memcpy(text, body + at + 2,
                   len - at - 2 < sizeof text - 1 ? len - at - 2
                                                  : sizeof text - 1);
            sscanf(text, "{\"id\":%" SCNd64, &id);
            pthread_mutex_lock(&fb->mutex);
            fb->mids[fb->received] = body[at] << 8 | body[at + 1];
            fb->ids[fb->received] = id;
            fb->received++;
            pthread_mutex_unlock(&fb->mutex);
        } else if ((header & 0xf0) == 0xe0) {
            break;
        }
    }
    return NULL;
}

static void fake_broker_start(struct fake_broker *fb)
{
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;

    memset(fb, 0, sizeof *fb);
    pthread_mutex_init(&fb->mutex, NULL);
    fb->conn_fd = -1;
    fb->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fb->listen_fd, (struct sockaddr *)&addr, sizeof addr), 0);
    ASSERT_EQ(listen(fb->listen_fd, 1), 0);
    ASSERT_EQ(getsockname(fb->listen_fd, (struct sockaddr *)&addr, &len), 0);
    fb->port = ntohs(addr.sin_port);
    ASSERT_EQ(pthread_create(&fb->thread, NULL, fake_broker_main, fb), 0);
}

static size_t fake_received(struct fake_broker *fb)
{
    pthread_mutex_lock(&fb->mutex);
    size_t n = fb->received;
    pthread_mutex_unlock(&fb->mutex);
    return n;
}

static void fake_puback(struct fake_broker *fb, size_t index)
{
    pthread_mutex_lock(&fb->mutex);
    int mid = fb->mids[index];
    pthread_mutex_unlock(&fb->mutex);
    unsigned char puback[] = {0x40, 0x02, (unsigned char)(mid >> 8),
                              (unsigned char)(mid & 0xff)};
    fake_write(fb, puback, sizeof puback);
}

static struct fake_broker *current_fake;
static size_t fake_target;

static bool fake_reached(struct ctx *c)
{
    (void)c;
    return fake_received(current_fake) >= fake_target;
}

/* Above libmosquitto's default limit of 20, so that the test also shows
 * that libmosquitto does not hold messages back. */
#define FAKE_INFLIGHT 30
#define FAKE_MESSAGES 100

TEST(publisher_respects_max_inflight)
{
    struct ctx *c = ctx_new();
    struct fake_broker fb;
    struct pub_config cfg;
    char url[64];
    size_t acked_by_broker = 2;

    fake_broker_start(&fb);
    current_fake = &fb;
    mqtt_config(&cfg, url, sizeof url, fb.port, FAKE_INFLIGHT);
    open_publisher(c, &cfg);
    submit_range(c, 0, FAKE_MESSAGES);

    /* Without PUBACK exactly max_inflight messages go on the wire. */
    fake_target = FAKE_INFLIGHT;
    ASSERT_TRUE(run_until(c, fake_reached, 5000));
    run_until(c, never, 300);
    ASSERT_EQ(fake_received(&fb), FAKE_INFLIGHT);
    ASSERT_EQ(c->ack_count, 0);

    /* PUBACK in reverse order: acks follow the broker's order, and each
     * frees one slot. */
    fake_puback(&fb, 1);
    fake_puback(&fb, 0);
    fake_target = FAKE_INFLIGHT + 2;
    ASSERT_TRUE(run_until(c, fake_reached, 5000));
    run_until(c, never, 300);
    ASSERT_EQ(fake_received(&fb), FAKE_INFLIGHT + 2);
    ASSERT_EQ(c->ack_count, 2);
    ASSERT_EQ(c->ack_order[0], 1);
    ASSERT_EQ(c->ack_order[1], 0);

    /* Acknowledge the rest as it arrives, checking the limit each time. */
    for (int round = 0; round < 400 && c->ack_count < FAKE_MESSAGES; round++) {
        size_t received = fake_received(&fb);

        ASSERT_TRUE(received - acked_by_broker <= FAKE_INFLIGHT);
        while (acked_by_broker < received)
            fake_puback(&fb, acked_by_broker++);
        run_until(c, never, 20);
    }
    ASSERT_EQ(c->ack_count, FAKE_MESSAGES);
    ASSERT_EQ(fake_received(&fb), FAKE_MESSAGES);
    for (size_t i = 0; i < FAKE_MESSAGES; i++)
        ASSERT_EQ(fb.ids[i], (int64_t)i);
    for (int id = 0; id < FAKE_MESSAGES; id++)
        ASSERT_EQ(c->acks[id], 1);

    close_publisher(c);
    pthread_join(fb.thread, NULL);
    close(fb.conn_fd);
    close(fb.listen_fd);
}

/* ---- configuration and input checks -------------------------------- */

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

TEST(publisher_rejects_invalid_config)
{
    struct pub_config cfg = {.transport = PUB_MQTT, .max_inflight = 10};
    static const char *const bad_urls[] = {
        "http://127.0.0.1:1883", "mqtt://",          "mqtt://host:0",
        "mqtt://host:65536",     "mqtt://host:12x",  "mqtt://host/path",
        "mqtt://[::1",           "mqtt://user@host", "mqtt://host:",
    };

    for (size_t i = 0; i < sizeof bad_urls / sizeof bad_urls[0]; i++) {
        cfg.mqtt_url = bad_urls[i];
        expect_config_error(&cfg, "invalid MQTT URL");
    }
    cfg.mqtt_url = NULL;
    expect_config_error(&cfg, "mqtt.url is missing");
    cfg.mqtt_url = "mqtt://127.0.0.1:1883";
    cfg.max_inflight = 0;
    expect_config_error(&cfg, "between 1 and 65535");

    cfg.transport = PUB_FILE;
    cfg.file_path = "/nonexistent-dir/out.jsonl";
    expect_config_error(&cfg, "cannot open publish file "
                              "/nonexistent-dir/out.jsonl");
}

TEST(publisher_rejects_mqtts_without_ca)
{
    struct pub_config cfg = {.transport = PUB_MQTT, .max_inflight = 10};
    char ca[4200], expected[4400];
    FILE *f;

    cfg.mqtt_url = "mqtts://127.0.0.1:8883";
    expect_config_error(&cfg, "mqtts:// needs a CA file");
    cfg.mqtt_ca_file = "/nonexistent-dir/ca.pem";
    expect_config_error(&cfg, "cannot read mqtt.ca_file "
                              "/nonexistent-dir/ca.pem: No such file or "
                              "directory");
    cfg.mqtt_cert_file = "/nonexistent-dir/cert.pem";
    expect_config_error(&cfg, "must be set together");

    /* A readable CA file must also contain a certificate. The tests in
     * test_mqtt_tls.c connect with valid files. */
    snprintf(ca, sizeof ca, "%s/ca.pem", test_tmpdir());
    f = fopen(ca, "w");
    ASSERT_TRUE(f != NULL);
    fputs("not a certificate\n", f);
    fclose(f);
    cfg.mqtt_ca_file = ca;
    cfg.mqtt_cert_file = NULL;
    snprintf(expected, sizeof expected,
             "mqtt.ca_file %s contains no usable PEM certificate", ca);
    expect_config_error(&cfg, expected);
}

TEST(publisher_rejects_oversize_payload)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg = {.transport = PUB_FILE};
    char path[4200];
    char *big = malloc(PUB_MAX_PAYLOAD + 1);

    snprintf(path, sizeof path, "%s/out.jsonl", test_tmpdir());
    cfg.file_path = path;
    open_publisher(c, &cfg);
    memset(big, '1', PUB_MAX_PAYLOAD + 1);
    ASSERT_EQ(publisher_submit(c->pub, 1, "t", big, PUB_MAX_PAYLOAD + 1), -1);
    ASSERT_EQ(publisher_pending(c->pub), 0);
    ASSERT_EQ(publisher_submit(c->pub, 2, "t", big, PUB_MAX_PAYLOAD), 0);
    c->target = 1;
    ASSERT_TRUE(run_until(c, acks_reached, 5000));
    ASSERT_EQ(c->acks[2], 1);
    free(big);
    close_publisher(c);
}

TEST(publisher_rejects_invalid_topics)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg = {.transport = PUB_FILE};
    char path[4200], long_topic[PUB_MAX_TOPIC + 2];
    static const char *const bad[] = {
        "",
        "a/+/b",
        "a/#",
        "a/b/c/d/e/f/g/h/i",
        "a\x01/b",
        "bad\xff"
        "utf8",
        "a\xc0\x80"
        "b",
    };

    snprintf(path, sizeof path, "%s/out.jsonl", test_tmpdir());
    cfg.file_path = path;
    open_publisher(c, &cfg);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ASSERT_EQ(publisher_submit(c->pub, 1, bad[i], "{}", 2), -1);
    memset(long_topic, 'a', sizeof long_topic - 1);
    long_topic[sizeof long_topic - 1] = '\0';
    ASSERT_EQ(publisher_submit(c->pub, 1, long_topic, "{}", 2), -1);
    long_topic[PUB_MAX_TOPIC] = '\0';
    ASSERT_EQ(publisher_submit(c->pub, 1, long_topic, "{}", 2), 0);
    ASSERT_EQ(publisher_submit(c->pub, 2, "a/b/c/d/e/f/g/h", "{}", 2), 0);
    ASSERT_EQ(publisher_pending(c->pub), 2);
    close_publisher(c);
}

/* ---- file transport ------------------------------------------------ */

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    char *data = malloc(1 << 20);
    ASSERT_TRUE(f != NULL);
    *len = fread(data, 1, 1 << 20, f);
    fclose(f);
    return data;
}

/* Three messages: plain, a topic that needs escaping, a \u0000 payload. */
static void submit_file_messages(struct ctx *c)
{
    ASSERT_EQ(
        publisher_submit(c->pub, 1, "race/r1/leaderboard", "{\"rank\":1}", 10),
        0);
    ASSERT_EQ(publisher_submit(c->pub, 2, "race/\"q\"\\b/\xc3\xa9", "[1,2]", 5),
              0);
    ASSERT_EQ(
        publisher_submit(c->pub, 3, "race/r3", "{\"name\":\"a\\u0000b\"}", 19),
        0);
}

static const char expected_lines[] =
    "{\"topic\":\"race/r1/leaderboard\",\"payload\":{\"rank\":1}}\n"
    "{\"topic\":\"race/\\\"q\\\"\\\\b/\xc3\xa9\",\"payload\":[1,2]}\n"
    "{\"topic\":\"race/r3\",\"payload\":{\"name\":\"a\\u0000b\"}}\n";

TEST(publisher_writes_json_lines_to_file)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg = {.transport = PUB_FILE};
    char path[4200];
    struct stat st;
    size_t len;
    char *data;
    FILE *f;

    snprintf(path, sizeof path, "%s/fresh.jsonl", test_tmpdir());
    umask(022);
    cfg.file_path = path;
    open_publisher(c, &cfg);
    ASSERT_EQ(stat(path, &st), 0);
    ASSERT_EQ(st.st_mode & 0777, 0644);
    ASSERT_TRUE(publisher_connected(c->pub));
    close_publisher(c);

    /* Lines are appended after what the file already contains. */
    snprintf(path, sizeof path, "%s/out.jsonl", test_tmpdir());
    f = fopen(path, "w");
    fputs("old line\n", f);
    fclose(f);
    c = ctx_new();
    open_publisher(c, &cfg);
    submit_file_messages(c);
    /* Writes happen on the loop, never inside publisher_submit. */
    ASSERT_EQ(c->ack_count, 0);
    c->target = 3;
    ASSERT_TRUE(run_until(c, acks_reached, 5000));
    ASSERT_EQ(c->ack_order[0], 1);
    ASSERT_EQ(c->ack_order[1], 2);
    ASSERT_EQ(c->ack_order[2], 3);
    ASSERT_EQ(publisher_pending(c->pub), 0);
    close_publisher(c);

    data = read_file(path, &len);
    ASSERT_TRUE(len > 9);
    ASSERT_MEM_EQ(data, 9, "old line\n", 9);
    ASSERT_MEM_EQ(data + 9, len - 9, expected_lines, sizeof expected_lines - 1);
    free(data);
}

TEST(publisher_writes_dash_to_stdout)
{
    struct ctx *c = ctx_new();
    struct pub_config cfg = {.transport = PUB_FILE, .file_path = "-"};
    char path[4200];
    size_t len;
    char *data;
    int saved, fd;

    snprintf(path, sizeof path, "%s/stdout.jsonl", test_tmpdir());
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_TRUE(fd >= 0);
    fflush(stdout);
    saved = dup(STDOUT_FILENO);
    ASSERT_TRUE(saved >= 0);
    ASSERT_EQ(dup2(fd, STDOUT_FILENO), STDOUT_FILENO);
    close(fd);

    open_publisher(c, &cfg);
    submit_file_messages(c);
    c->target = 3;
    bool done = run_until(c, acks_reached, 5000);
    close_publisher(c);
    ASSERT_EQ(dup2(saved, STDOUT_FILENO), STDOUT_FILENO);
    close(saved);
    ASSERT_TRUE(done);

    /* Closing the publisher leaves standard output open. */
    ASSERT_TRUE(fcntl(STDOUT_FILENO, F_GETFD) != -1);
    data = read_file(path, &len);
    ASSERT_MEM_EQ(data, len, expected_lines, sizeof expected_lines - 1);
    free(data);
}

/* ---- topic expansion ----------------------------------------------- */

static int expand(const char *tmpl, const char *race, size_t race_len,
                  const char *cls, size_t cls_len, struct strbuf *out,
                  char *err)
{
    return pub_topic_expand(tmpl, race, race_len, cls, cls_len, out, err, 256);
}

TEST(topic_expand_accepts_normal_ids)
{
    struct strbuf out;
    char err[256] = "";

    sb_init(&out, 4096);
    ASSERT_EQ(expand("race/{raceId}/class/{classId}/leaderboard", "123", 3,
                     "U17-women", 9, &out, err),
              0);
    ASSERT_STR_EQ(out.data, "race/123/class/U17-women/leaderboard");
    ASSERT_EQ(expand("race/{raceId}/results", "Z\xc3\xbcrich 2024", 12, NULL, 0,
                     &out, err),
              0);
    ASSERT_STR_EQ(out.data, "race/Z\xc3\xbcrich 2024/results");
    /* The length counts: bytes after it are not part of the id. */
    ASSERT_EQ(expand("{raceId}{raceId}", "42xyz", 2, NULL, 0, &out, err), 0);
    ASSERT_STR_EQ(out.data, "4242");
    ASSERT_EQ(expand("fixed/topic", NULL, 0, NULL, 0, &out, err), 0);
    ASSERT_STR_EQ(out.data, "fixed/topic");
    sb_free(&out);
}

TEST(topic_expand_rejects_bad_values)
{
    static const struct {
        const char *value;
        size_t len;
        const char *expected;
    } cases[] = {
        {"a/b", 3, "contains '/'"}, {"a+b", 3, "contains '+'"},
        {"a#", 2, "contains '#'"},  {"a\0b", 3, "contains U+0000"},
        {"", 0, "value is empty"},
    };
    struct strbuf out;
    char err[256];

    sb_init(&out, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err[0] = '\0';
        ASSERT_EQ(expand("race/{raceId}", cases[i].value, cases[i].len, NULL, 0,
                         &out, err),
                  -1);
        ASSERT_TRUE(strstr(err, "{raceId}") != NULL);
        if (strstr(err, cases[i].expected) == NULL)
            test_fail(__FILE__, __LINE__, "error \"%s\" lacks \"%s\"", err,
                      cases[i].expected);
    }
    err[0] = '\0';
    ASSERT_EQ(expand("c/{classId}", NULL, 0, "x/y", 3, &out, err), -1);
    ASSERT_TRUE(strstr(err, "{classId} value \"x/y\"") != NULL);
    sb_free(&out);
}

TEST(topic_expand_rejects_long_topics)
{
    struct strbuf out;
    char err[256] = "";
    char value[300];

    sb_init(&out, 4096);
    memset(value, 'x', sizeof value);
    ASSERT_EQ(expand("r/{raceId}", value, 250, NULL, 0, &out, err), 0);
    ASSERT_EQ(out.len, 252);
    ASSERT_EQ(expand("r/{raceId}", value, 255, NULL, 0, &out, err), -1);
    ASSERT_TRUE(strstr(err, "257 bytes; the limit is 256 bytes") != NULL);

    ASSERT_EQ(expand("a/b/c/d/e/f/{raceId}/x", "1", 1, NULL, 0, &out, err), 0);
    ASSERT_EQ(expand("a/b/c/d/e/f/g/{raceId}/x", "1", 1, NULL, 0, &out, err),
              -1);
    ASSERT_TRUE(strstr(err, "8 slashes; the limit is 7") != NULL);
    sb_free(&out);
}

TEST(topic_expand_rejects_unknown_placeholders)
{
    struct strbuf out;
    char err[256] = "";

    sb_init(&out, 4096);
    ASSERT_EQ(expand("race/{race}", "1", 1, NULL, 0, &out, err), -1);
    ASSERT_TRUE(strstr(err, "unknown placeholder {race}") != NULL);
    ASSERT_EQ(expand("race/{raceId", "1", 1, NULL, 0, &out, err), -1);
    ASSERT_TRUE(strstr(err, "without a closing '}'") != NULL);
    ASSERT_EQ(expand("race/{raceId}", NULL, 0, NULL, 0, &out, err), -1);
    ASSERT_TRUE(strstr(err, "no race id was given") != NULL);
    ASSERT_EQ(expand("race/+/{raceId}", "1", 1, NULL, 0, &out, err), -1);
    ASSERT_TRUE(strstr(err, "wildcard") != NULL);
    sb_free(&out);
}
