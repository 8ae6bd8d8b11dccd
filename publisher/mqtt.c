/*
 * MQTT 3.1.1 transport at QoS 1 through libmosquitto, driven by the libuv
 * loop: a uv_poll on mosquitto_socket() calls mosquitto_loop_read and
 * mosquitto_loop_write, and a 1 s timer calls mosquitto_loop_misc for the
 * keepalive. Nothing here calls mosquitto_loop or mosquitto_loop_forever.
 *
 * Each connection uses a new mosquitto instance with a clean session, which
 * is destroyed when the connection ends. libmosquitto therefore never
 * resends a message on its own, and the publisher queue alone decides what
 * is sent again after a reconnect. libmosquitto callbacks only record what
 * happened. The connection is torn down, and ack_cb runs, after the
 * mosquitto_* call returns, because a callback must not destroy its own
 * instance.
 */
#include "publisher/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <mosquitto.h>

#define MQTT_DEFAULT_CLIENT_ID  "podium"
#define MQTT_KEEPALIVE_S        30
#define MQTT_MISC_INTERVAL_MS   1000
#define MQTT_CONNECT_TIMEOUT_MS 10000
#define MQTT_BACKOFF_MIN_MS     500
#define MQTT_MAX_INFLIGHT       65535 /* MQTT packet ids are 16-bit */

static void mqtt_start_connect(struct publisher *pub);

static uv_once_t mqtt_lib_once = UV_ONCE_INIT;

/*
 * mosquitto_lib_init is not thread-safe, so uv_once runs it once per
 * process. mosquitto_lib_cleanup is never called: other code in the process
 * may still use libmosquitto, and the process exit frees what it holds.
 */
static void mqtt_lib_init(void)
{
    mosquitto_lib_init();
}

static char *copy_optional(const char *s)
{
    return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

/* Text for a libmosquitto result; MOSQ_ERR_ERRNO leaves the cause in errno. */
static const char *mqtt_error_text(int rc)
{
    if (rc == MOSQ_ERR_ERRNO)
        return strerror(errno);
    return mosquitto_strerror(rc);
}

/* Record why the connection failed; the first reason wins. */
static void mqtt_mark_broken(struct pub_mqtt *m, const char *reason)
{
    if (m->broken)
        return;
    m->broken = true;
    /* A longer reason is cut to the buffer; the precision says so. */
    snprintf(m->broken_reason, sizeof m->broken_reason, "%.*s",
             (int)sizeof m->broken_reason - 1, reason);
}

/* Write a log line unless too many came in the last minute. */
static bool mqtt_log_allowed(struct publisher *pub, uint32_t *suppressed)
{
    return log_limit_allow(&pub->mqtt.log_limit, uv_now(pub->loop), suppressed);
}

/*
 * Parse mqtt://host[:port] or mqtts://host[:port] into m. An IPv6 address
 * goes in brackets: mqtt://[::1]:1883.
 */
static int mqtt_parse_url(struct pub_mqtt *m, const char *url, char *err,
                          size_t err_len)
{
    const char *host, *end, *rest;
    size_t host_len;

    if (url == NULL || url[0] == '\0') {
        snprintf(err, err_len,
                 "mqtt.url is missing; expected "
                 "mqtt://host:port or mqtts://host:port");
        return -1;
    }
    if (strncmp(url, "mqtt://", 7) == 0) {
        m->tls = false;
        m->port = 1883;
        host = url + 7;
    } else if (strncmp(url, "mqtts://", 8) == 0) {
        m->tls = true;
        m->port = 8883;
        host = url + 8;
    } else {
        goto invalid;
    }

    if (host[0] == '[') {
        host++;
        end = strchr(host, ']');
        if (end == NULL)
            goto invalid;
        rest = end + 1;
    } else {
        end = host + strcspn(host, ":/@?#");
        rest = end;
    }
    host_len = (size_t)(end - host);
    if (host_len == 0 || host_len >= sizeof m->host)
        goto invalid;
    memcpy(m->host, host, host_len);
    m->host[host_len] = '\0';

    if (rest[0] == ':') {
        char *port_end;
        long port;

        if (rest[1] < '0' || rest[1] > '9')
            goto invalid;
        errno = 0;
        port = strtol(rest + 1, &port_end, 10);
        if (errno != 0 || port < 1 || port > 65535 || *port_end != '\0')
            goto invalid;
        m->port = (int)port;
    } else if (rest[0] != '\0') {
        goto invalid;
    }
    return 0;

invalid:
    snprintf(err, err_len,
             "invalid MQTT URL \"%s\" in mqtt.url: expected "
             "mqtt://host:port or mqtts://host:port",
             url);
    return -1;
}

/* Check the TLS settings that mqtts:// needs; libmosquitto checks that the
 * files can be read. */
static int mqtt_check_tls(const struct pub_mqtt *m, char *err, size_t err_len)
{
    if (!m->tls)
        return 0;
    if (m->ca_file == NULL) {
        snprintf(err, err_len,
                 "mqtts:// needs a CA file to verify the broker; set "
                 "mqtt.ca_file, or use mqtt://");
        return -1;
    }
    if ((m->cert_file == NULL) != (m->key_file == NULL)) {
        snprintf(err, err_len,
                 "mqtt.cert_file and mqtt.key_file must be set together "
                 "(mqtt.cert_file %s, mqtt.key_file %s)",
                 m->cert_file ? m->cert_file : "unset",
                 m->key_file ? m->key_file : "unset");
        return -1;
    }
    return 0;
}

static void mqtt_on_connect(struct mosquitto *mosq, void *obj, int rc)
{
    struct publisher *pub = obj;
    struct pub_mqtt *m = &pub->mqtt;
    char reason[128];

    (void)mosq;
    if (rc != 0) {
        snprintf(reason, sizeof reason, "broker rejected the connection: %s",
                 mosquitto_connack_string(rc));
        mqtt_mark_broken(m, reason);
        return;
    }
    m->connected = true;
    m->backoff_ms = MQTT_BACKOFF_MIN_MS;
    pub->stats.connections++;
    log_info(PUB_LOG_MODULE, NULL,
             "connected to %s:%d as client %s; %zu messages to send", m->host,
             m->port, m->client_id, pub->queue.length);
}

static void mqtt_on_disconnect(struct mosquitto *mosq, void *obj, int rc)
{
    struct publisher *pub = obj;

    (void)mosq;
    mqtt_mark_broken(&pub->mqtt, rc == MOSQ_ERR_SUCCESS
                                     ? "disconnected by the client"
                                     : mqtt_error_text(rc));
}

/* PUBACK for a QoS 1 message: mid is the packet id from mosquitto_publish. */
static void mqtt_on_publish(struct mosquitto *mosq, void *obj, int mid)
{
    struct publisher *pub = obj;
    struct pub_message *msg = pub_queue_find_sent(&pub->queue, mid);

    (void)mosq;
    if (msg == NULL) {
        log_warn(PUB_LOG_MODULE, NULL,
                 "ignored PUBACK for packet id %d, which is not in flight",
                 mid);
        return;
    }
    pub_message_acked(pub, msg);
}

/*
 * Create a configured mosquitto instance for one connection (owned by the
 * caller). Returns NULL with a message in err.
 */
static struct mosquitto *mqtt_new_client(struct publisher *pub, char *err,
                                         size_t err_len)
{
    struct pub_mqtt *m = &pub->mqtt;
    struct mosquitto *mosq = mosquitto_new(m->client_id, true, pub);
    int rc;

    if (mosq == NULL) {
        snprintf(err, err_len, "cannot create an MQTT client: %s",
                 strerror(errno));
        return NULL;
    }
    mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
    /* The queue limits what is in flight. libmosquitto's own limit (20 by
     * default) is raised to match, so it never delays a message. */
    mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, (int)m->max_inflight);
    mosquitto_connect_callback_set(mosq, mqtt_on_connect);
    mosquitto_disconnect_callback_set(mosq, mqtt_on_disconnect);
    mosquitto_publish_callback_set(mosq, mqtt_on_publish);
    if (m->tls) {
        rc = mosquitto_tls_set(mosq, m->ca_file, NULL, m->cert_file,
                               m->key_file, NULL);
        if (rc != MOSQ_ERR_SUCCESS) {
            snprintf(err, err_len,
                     "cannot use the MQTT TLS files (mqtt.ca_file %s, "
                     "mqtt.cert_file %s, mqtt.key_file %s): %s; check that "
                     "they exist and are readable",
                     m->ca_file, m->cert_file ? m->cert_file : "unset",
                     m->key_file ? m->key_file : "unset", mqtt_error_text(rc));
            mosquitto_destroy(mosq);
            return NULL;
        }
    }
    return mosq;
}

/*
 * Check the configuration, create the first client and start connecting.
 * Returns -1 with a message in err, with no handle initialized. Loop thread
 * only.
 */
int mqtt_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len)
{
    struct pub_mqtt *m = &pub->mqtt;

    uv_once(&mqtt_lib_once, mqtt_lib_init);
    if (mqtt_parse_url(m, cfg->mqtt_url, err, err_len) != 0)
        return -1;
    if (cfg->max_inflight < 1 || cfg->max_inflight > MQTT_MAX_INFLIGHT) {
        snprintf(err, err_len,
                 "MQTT max in-flight messages is %zu; it must be between 1 "
                 "and %d",
                 cfg->max_inflight, MQTT_MAX_INFLIGHT);
        return -1;
    }
    m->max_inflight = (unsigned)cfg->max_inflight;
    m->client_id = copy_optional(cfg->mqtt_client_id);
    if (m->client_id == NULL)
        m->client_id = strdup(MQTT_DEFAULT_CLIENT_ID);
    m->ca_file = copy_optional(cfg->mqtt_ca_file);
    m->cert_file = copy_optional(cfg->mqtt_cert_file);
    m->key_file = copy_optional(cfg->mqtt_key_file);
    if (m->client_id == NULL || mqtt_check_tls(m, err, err_len) != 0)
        goto fail;
    m->mosq = mqtt_new_client(pub, err, err_len);
    if (m->mosq == NULL)
        goto fail;

    m->backoff_ms = MQTT_BACKOFF_MIN_MS;
    m->rng_state = uv_hrtime() | 1;
    m->log_limit = (struct log_limit)LOG_LIMIT_INIT(60000, 10);
    uv_timer_init(pub->loop, &m->misc_timer);
    pub_handle_opened(pub, (uv_handle_t *)&m->misc_timer);
    uv_timer_init(pub->loop, &m->retry_timer);
    pub_handle_opened(pub, (uv_handle_t *)&m->retry_timer);
    mqtt_start_connect(pub);
    return 0;

fail:
    if (m->client_id == NULL)
        snprintf(err, err_len, "out of memory creating the MQTT client");
    mqtt_free(pub);
    return -1;
}

static void mqtt_update_poll(struct publisher *pub);

static void mqtt_on_retry_timer(uv_timer_t *timer)
{
    mqtt_start_connect(timer->data);
}

/*
 * Tear down the current connection: close the poll, destroy the instance,
 * rewind the queue so every unacknowledged message is sent again, and
 * schedule a reconnect. Must not run inside a libmosquitto call.
 */
static void mqtt_drop_connection(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;
    bool was_connected = m->connected;
    size_t unacked = pub->queue.inflight;
    uint64_t delay_ms =
        pub_backoff_next(&m->backoff_ms, PUB_BACKOFF_MAX_MS, &m->rng_state);
    uint32_t suppressed;

    if (m->poll_state == PUB_POLL_ACTIVE) {
        m->poll_state = PUB_POLL_CLOSING;
        pub_close_handle(pub, (uv_handle_t *)&m->poll);
    }
    if (m->mosq != NULL) {
        mosquitto_destroy(m->mosq);
        m->mosq = NULL;
    }
    m->connected = false;
    m->broken = false;
    pub_queue_rewind(&pub->queue);

    if (mqtt_log_allowed(pub, &suppressed)) {
        char note[64] = "";

        if (suppressed > 0)
            snprintf(note, sizeof note, " (%u similar lines suppressed)",
                     suppressed);
        if (was_connected)
            log_warn(PUB_LOG_MODULE, NULL,
                     "disconnected from %s:%d: %s; reconnecting in %.1f s; "
                     "%zu messages wait, %zu of them sent without PUBACK "
                     "and sent again%s",
                     m->host, m->port, m->broken_reason,
                     (double)delay_ms / 1000.0, pub->queue.length, unacked,
                     note);
        else
            log_warn(PUB_LOG_MODULE, NULL,
                     "cannot connect to %s:%d: %s; %zu messages wait; "
                     "retrying in %.1f s%s",
                     m->host, m->port, m->broken_reason, pub->queue.length,
                     (double)delay_ms / 1000.0, note);
    }
    uv_timer_start(&m->retry_timer, mqtt_on_retry_timer, delay_ms, 0);
}

/*
 * Send queued messages while fewer than max_inflight are unacknowledged.
 * Outside callbacks mosquitto_publish writes to the socket at once, and a
 * failed write marks the connection broken.
 */
static void mqtt_send_queued(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;
    struct pub_queue *queue = &pub->queue;

    while (m->connected && !m->broken && queue->next_send != NULL &&
           queue->inflight < m->max_inflight) {
        struct pub_message *msg = queue->next_send;
        int mid = 0;
        int rc =
            mosquitto_publish(m->mosq, &mid, msg->topic, (int)msg->payload_len,
                              msg->payload, 1, false);
        if (rc != MOSQ_ERR_SUCCESS) {
            char reason[160];
            snprintf(reason, sizeof reason,
                     "publishing message %" PRId64 " failed: %s", msg->id,
                     mqtt_error_text(rc));
            mqtt_mark_broken(m, reason);
            return;
        }
        msg->mid = mid;
        pub_queue_mark_sent(pub, msg);
    }
}

/*
 * Act on what the last mosquitto_* calls recorded: tear down a lost
 * connection, or send what the in-flight limit allows and update the poll.
 */
static void mqtt_flush(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;

    if (pub->closing || m->mosq == NULL || m->poll_state != PUB_POLL_ACTIVE)
        return;
    mqtt_send_queued(pub);
    if (m->broken || mosquitto_socket(m->mosq) < 0) {
        mqtt_mark_broken(m, "connection closed");
        mqtt_drop_connection(pub);
        return;
    }
    mqtt_update_poll(pub);
}

/* Report acknowledgements, then flush. Runs after every mosquitto_* call
 * made from a loop callback. */
static void mqtt_after_io(struct publisher *pub)
{
    pub_report_acks(pub);
    mqtt_flush(pub);
}

static void mqtt_on_poll(uv_poll_t *handle, int status, int events)
{
    struct publisher *pub = handle->data;
    struct pub_mqtt *m = &pub->mqtt;
    int rc;

    if (status < 0) {
        int so_error = 0;
        socklen_t len = sizeof so_error;

        /* libuv reports a failed connect (POLLERR) as UV_EBADF, and
         * SO_ERROR gives the cause. */
        getsockopt(mosquitto_socket(m->mosq), SOL_SOCKET, SO_ERROR, &so_error,
                   &len);
        mqtt_mark_broken(m, so_error != 0 ? strerror(so_error)
                                          : uv_strerror(status));
        mqtt_after_io(pub);
        return;
    }
    /* NOTE: during a TLS handshake libmosquitto advances the handshake
     * only in mosquitto_loop_read, so a writable socket is read too. The
     * mqtts:// path is not covered by a test with a TLS broker yet. */
    if ((events & UV_READABLE) || (m->tls && !m->connected)) {
        rc = mosquitto_loop_read(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS)
            mqtt_mark_broken(m, mqtt_error_text(rc));
    }
    if ((events & UV_WRITABLE) && !m->broken &&
        mosquitto_socket(m->mosq) >= 0) {
        rc = mosquitto_loop_write(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS)
            mqtt_mark_broken(m, mqtt_error_text(rc));
    }
    mqtt_after_io(pub);
}

/* Watch the socket for reads, and for writes while libmosquitto has
 * output queued (the CONNECT packet before the TCP connect completes). */
static void mqtt_update_poll(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;
    int events = UV_READABLE;

    if (mosquitto_want_write(m->mosq))
        events |= UV_WRITABLE;
    uv_poll_start(&m->poll, events, mqtt_on_poll);
}

/* Keepalive (PINGREQ and its timeout) and the CONNACK timeout. */
static void mqtt_on_misc_timer(uv_timer_t *timer)
{
    struct publisher *pub = timer->data;
    struct pub_mqtt *m = &pub->mqtt;
    int rc;

    if (m->mosq == NULL || m->poll_state != PUB_POLL_ACTIVE)
        return;
    if (!m->connected &&
        uv_now(pub->loop) - m->connect_started_ms >= MQTT_CONNECT_TIMEOUT_MS) {
        mqtt_mark_broken(m, "connect timed out: no CONNACK within 10 s");
        mqtt_after_io(pub);
        return;
    }
    rc = mosquitto_loop_misc(m->mosq);
    if (rc != MOSQ_ERR_SUCCESS)
        mqtt_mark_broken(m, mqtt_error_text(rc));
    mqtt_after_io(pub);
}

/* Set up the poll for a connection that mosquitto_connect_async started. */
static int mqtt_watch_socket(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;
    int fd = mosquitto_socket(m->mosq);
    int rc;

    if (fd < 0) {
        mqtt_mark_broken(m, "libmosquitto returned no socket");
        return -1;
    }
    rc = uv_poll_init_socket(pub->loop, &m->poll, fd);
    if (rc != 0) {
        mqtt_mark_broken(m, uv_strerror(rc));
        return -1;
    }
    pub_handle_opened(pub, (uv_handle_t *)&m->poll);
    m->poll_state = PUB_POLL_ACTIVE;
    mqtt_update_poll(pub);
    return 0;
}

/*
 * Start one connection attempt; a failure schedules the next one. Loop
 * thread only, never inside a libmosquitto call.
 */
static void mqtt_start_connect(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;
    char err[256];
    int rc;

    if (pub->closing)
        return;
    if (m->poll_state == PUB_POLL_CLOSING) {
        /* The poll of the last socket is still closing; a uv_poll_t cannot
         * be initialized again before its close callback. */
        m->connect_after_poll_closed = true;
        return;
    }
    if (m->mosq == NULL)
        m->mosq = mqtt_new_client(pub, err, sizeof err);
    if (m->mosq == NULL) {
        mqtt_mark_broken(m, err);
        mqtt_drop_connection(pub);
        return;
    }
    pub->stats.connect_attempts++;
    m->connect_started_ms = uv_now(pub->loop);
    m->broken = false;
    log_debug(PUB_LOG_MODULE, NULL, "connecting to %s:%d", m->host, m->port);

    /* NOTE: libmosquitto resolves a host name with a blocking getaddrinfo
     * on this thread; an IP address in the URL avoids the wait. */
    rc = mosquitto_connect_async(m->mosq, m->host, m->port, MQTT_KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS) {
        mqtt_mark_broken(m, mqtt_error_text(rc));
        mqtt_drop_connection(pub);
        return;
    }
    if (mqtt_watch_socket(pub) != 0) {
        mqtt_drop_connection(pub);
        return;
    }
    if (!uv_is_active((uv_handle_t *)&m->misc_timer))
        uv_timer_start(&m->misc_timer, mqtt_on_misc_timer,
                       MQTT_MISC_INTERVAL_MS, MQTT_MISC_INTERVAL_MS);
}

/* Send new messages now when connected. Loop thread only. */
void mqtt_kick(struct publisher *pub)
{
    if (pub->mqtt.connected)
        mqtt_flush(pub);
}

/*
 * Send DISCONNECT when connected, close the handles and destroy the
 * instance. The DISCONNECT gets one non-blocking write. If the socket
 * buffer is full, the broker gets a closed connection instead.
 */
void mqtt_close(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;

    if (m->mosq != NULL && m->connected) {
        mosquitto_disconnect(m->mosq);
        if (mosquitto_socket(m->mosq) >= 0 && mosquitto_want_write(m->mosq))
            mosquitto_loop_write(m->mosq, 1);
        log_info(PUB_LOG_MODULE, NULL,
                 "disconnected from %s:%d on close; %zu messages were not "
                 "acknowledged and stay with the caller",
                 m->host, m->port, pub->queue.length);
    }
    /* Close the poll before mosquitto_destroy closes its socket. */
    if (m->poll_state == PUB_POLL_ACTIVE) {
        m->poll_state = PUB_POLL_CLOSING;
        pub_close_handle(pub, (uv_handle_t *)&m->poll);
    }
    if (m->mosq != NULL) {
        mosquitto_destroy(m->mosq);
        m->mosq = NULL;
    }
    m->connected = false;
    pub_close_handle(pub, (uv_handle_t *)&m->misc_timer);
    pub_close_handle(pub, (uv_handle_t *)&m->retry_timer);
}

/* Close callback of an MQTT handle; a pending reconnect waits for the
 * poll. */
void mqtt_handle_closed(struct publisher *pub, uv_handle_t *handle)
{
    struct pub_mqtt *m = &pub->mqtt;

    if (handle != (uv_handle_t *)&m->poll)
        return;
    m->poll_state = PUB_POLL_NONE;
    if (m->connect_after_poll_closed && !pub->closing) {
        m->connect_after_poll_closed = false;
        mqtt_start_connect(pub);
    }
}

/* Free what mqtt_open allocated; the handles are closed already. */
void mqtt_free(struct publisher *pub)
{
    struct pub_mqtt *m = &pub->mqtt;

    if (m->mosq != NULL) {
        mosquitto_destroy(m->mosq);
        m->mosq = NULL;
    }
    free(m->client_id);
    free(m->ca_file);
    free(m->cert_file);
    free(m->key_file);
    m->client_id = m->ca_file = m->cert_file = m->key_file = NULL;
}
