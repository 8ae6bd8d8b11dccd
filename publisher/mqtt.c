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
 *
 * TLS (mqtts://) works as AWS IoT Core requires it. Each connection offers
 * TLS 1.2 or newer and verifies the broker's certificate against
 * mqtt.ca_file and its host name against the host in mqtt.url. It presents
 * the client certificate of mqtt.cert_file and mqtt.key_file when they are
 * set. publisher_new loads the files once with OpenSSL, so a file that the
 * handshake could not use is a configuration error, not a failure of every
 * connection. libmosquitto reports why a handshake failed only through its
 * log callback, so mqtt_on_log keeps those lines for the reconnect
 * message. The private key never reaches a log line: errors name its file.
 */
#include "publisher/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <mosquitto.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#define MQTT_DEFAULT_CLIENT_ID  "podium"
#define MQTT_KEEPALIVE_S        30
#define MQTT_MISC_INTERVAL_MS   1000
#define MQTT_CONNECT_TIMEOUT_MS 10000
#define MQTT_BACKOFF_MIN_MS     500
#define MQTT_MAX_INFLIGHT       65535 /* MQTT packet ids are 16-bit */
/* The oldest TLS version offered; AWS IoT Core requires 1.2 or newer. */
#define MQTT_TLS_MIN_VERSION "tlsv1.2"

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

/* Record a TLS failure as the reason the connection failed, unless an
 * earlier reason was recorded. */
static void mqtt_mark_tls_failed(struct pub_mqtt *m, const char *reason)
{
    if (!m->broken)
        m->tls_failed = true;
    mqtt_mark_broken(m, reason);
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
    /* URL schemes are case-insensitive (RFC 3986), as in the config check. */
    if (strncasecmp(url, "mqtt://", 7) == 0) {
        m->tls = false;
        m->port = 1883;
        host = url + 7;
    } else if (strncasecmp(url, "mqtts://", 8) == 0) {
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

/*
 * Passphrase callback that supplies none. Without it, OpenSSL would prompt
 * on the terminal for an encrypted key, which a daemon cannot answer.
 */
static int mqtt_no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return -1;
}

/* The reason of OpenSSL's latest error, for messages. */
static const char *mqtt_openssl_reason(void)
{
    unsigned long code = ERR_peek_last_error();
    const char *reason = code != 0 ? ERR_reason_error_string(code) : NULL;

    return reason != NULL ? reason : "no reason given by OpenSSL";
}

/* Check that the file that setting names is a readable regular file. */
static int mqtt_check_readable(const char *setting, const char *path, char *err,
                               size_t err_len)
{
    struct stat st;
    FILE *file = fopen(path, "r");

    if (file == NULL) {
        snprintf(err, err_len,
                 "cannot read %s %s: %s; set %s to a readable "
                 "PEM file",
                 setting, path, strerror(errno), setting);
        return -1;
    }
    if (fstat(fileno(file), &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, err_len,
                 "cannot read %s %s: not a regular file; set %s to a PEM file",
                 setting, path, setting);
        fclose(file);
        return -1;
    }
    fclose(file);
    return 0;
}

/* Check that key_path contains the private key of the certificate in ctx. */
static int mqtt_check_key(SSL_CTX *ctx, const char *cert_path,
                          const char *key_path, char *err, size_t err_len)
{
    FILE *file = fopen(key_path, "r");
    EVP_PKEY *key;
    int matches;

    if (file == NULL) {
        snprintf(err, err_len, "cannot read mqtt.key_file %s: %s", key_path,
                 strerror(errno));
        return -1;
    }
    key = PEM_read_PrivateKey(file, NULL, mqtt_no_passphrase, NULL);
    fclose(file);
    if (key == NULL) {
        snprintf(err, err_len,
                 "mqtt.key_file %s contains no PEM private key that podium "
                 "can read (%s); an encrypted key is not supported, so set "
                 "mqtt.key_file to an unencrypted key file",
                 key_path, mqtt_openssl_reason());
        return -1;
    }
    matches = X509_check_private_key(SSL_CTX_get0_certificate(ctx), key);
    EVP_PKEY_free(key);
    if (matches != 1) {
        snprintf(err, err_len,
                 "mqtt.key_file %s does not match the certificate in "
                 "mqtt.cert_file %s; set mqtt.key_file to the private key of "
                 "that certificate",
                 key_path, cert_path);
        return -1;
    }
    return 0;
}

/*
 * Load the TLS files into a throw-away OpenSSL context the way libmosquitto
 * loads them for each connection, so that a file it would reject fails here
 * with the name of its setting.
 */
static int mqtt_check_tls_files(const struct pub_mqtt *m, char *err,
                                size_t err_len)
{
    SSL_CTX *ctx;
    int rc = -1;

    if (mqtt_check_readable("mqtt.ca_file", m->ca_file, err, err_len) != 0)
        return -1;
    if (m->cert_file != NULL &&
        (mqtt_check_readable("mqtt.cert_file", m->cert_file, err, err_len) !=
             0 ||
         mqtt_check_readable("mqtt.key_file", m->key_file, err, err_len) != 0))
        return -1;

    ERR_clear_error();
    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) {
        snprintf(err, err_len, "cannot create a TLS context: %s",
                 mqtt_openssl_reason());
        goto out;
    }
    if (SSL_CTX_load_verify_locations(ctx, m->ca_file, NULL) != 1) {
        snprintf(err, err_len,
                 "mqtt.ca_file %s contains no usable PEM certificate (%s); "
                 "set mqtt.ca_file to the CA certificate that signed the "
                 "broker's certificate",
                 m->ca_file, mqtt_openssl_reason());
        goto out;
    }
    if (m->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(ctx, m->cert_file) != 1) {
            snprintf(err, err_len,
                     "mqtt.cert_file %s contains no usable PEM certificate "
                     "(%s); set mqtt.cert_file to the client certificate",
                     m->cert_file, mqtt_openssl_reason());
            goto out;
        }
        if (mqtt_check_key(ctx, m->cert_file, m->key_file, err, err_len) != 0)
            goto out;
    }
    rc = 0;
out:
    SSL_CTX_free(ctx);
    /* Failed loads leave entries in OpenSSL's thread-local error queue. */
    ERR_clear_error();
    return rc;
}

/*
 * Check the TLS settings. mqtts:// needs a CA file, and a client
 * certificate needs its key. TLS files set for mqtt:// are not used, which
 * is worth a warning: the connection is not encrypted.
 */
static int mqtt_check_tls(const struct pub_mqtt *m, char *err, size_t err_len)
{
    if (!m->tls) {
        if (m->ca_file != NULL || m->cert_file != NULL || m->key_file != NULL)
            log_warn(PUB_LOG_MODULE, NULL,
                     "mqtt.ca_file, mqtt.cert_file and mqtt.key_file are "
                     "ignored because mqtt.url is mqtt://, without TLS; use "
                     "mqtts://%s:%d to connect with TLS",
                     m->host, m->port == 1883 ? 8883 : m->port);
        return 0;
    }
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
    return mqtt_check_tls_files(m, err, err_len);
}

/* Append text, without a final '.', to the errors of the current
 * connection unless it is there already. */
static void mqtt_add_lib_error(struct pub_mqtt *m, const char *text)
{
    size_t used = strlen(m->lib_errors);
    size_t len = strlen(text);
    char item[sizeof m->lib_errors];

    if (len > 0 && text[len - 1] == '.')
        len--;
    if (len == 0)
        return;
    snprintf(item, sizeof item, "%.*s", (int)len, text);
    if (strstr(m->lib_errors, item) != NULL)
        return;
    snprintf(m->lib_errors + used, sizeof m->lib_errors - used, "%s%s",
             used > 0 ? "; " : "", item);
}

/*
 * Keep the errors that libmosquitto logs, such as "OpenSSL Error[0]:
 * error:0A000086:SSL routines::certificate verify failed" or "Error: host
 * name verification failed.". They are the only report of why TLS failed.
 * Lines of other levels are dropped: they are libmosquitto's debug output.
 */
static void mqtt_on_log(struct mosquitto *mosq, void *obj, int level,
                        const char *text)
{
    struct publisher *pub = obj;
    struct pub_mqtt *m = &pub->mqtt;
    const char *colon = strstr(text, ": ");
    SSL *ssl;
    long verify_result;
    char note[sizeof m->host + 64];

    if (level != MOSQ_LOG_ERR)
        return;
    /* Drop libmosquitto's "OpenSSL Error[0]: " or "Error: " prefix. */
    if (colon != NULL && (strncmp(text, "OpenSSL Error", 13) == 0 ||
                          strncmp(text, "Error: ", 7) == 0))
        text = colon + 2;
    mqtt_add_lib_error(m, text);
    if (strstr(text, "host name verification failed") != NULL) {
        snprintf(note, sizeof note,
                 "the broker certificate is not issued for host %s", m->host);
        mqtt_add_lib_error(m, note);
    }

    /* OpenSSL's error is "certificate verify failed", and the verify
     * result of the connection gives the cause. When libmosquitto's host name
     * check rejected the certificate, the result is the uninformative
     * X509_V_ERR_UNSPECIFIED. */
    ssl = mosquitto_ssl_get(mosq);
    verify_result = ssl != NULL ? SSL_get_verify_result(ssl) : X509_V_OK;
    if (verify_result != X509_V_OK && verify_result != X509_V_ERR_UNSPECIFIED) {
        snprintf(note, sizeof note, "broker certificate: %s",
                 X509_verify_cert_error_string(verify_result));
        mqtt_add_lib_error(m, note);
    }
}

/*
 * Mark a TLS connection broken that the broker ended before CONNACK
 * without a TLS error that gives the cause. Brokers reject a client certificate
 * this way: mosquitto sends an alert and closes the connection while the
 * client's next data is on the way, so the client gets a reset, which
 * discards the alert.
 */
static void mqtt_mark_ended_before_connack(struct pub_mqtt *m)
{
    char reason[sizeof m->broken_reason];

    if (m->cert_file == NULL)
        snprintf(reason, sizeof reason,
                 "TLS handshake failed: the broker ended the connection "
                 "before CONNACK; a broker that requires a client "
                 "certificate does so when none is sent, so set "
                 "mqtt.cert_file and mqtt.key_file");
    else
        snprintf(reason, sizeof reason,
                 "TLS handshake failed: the broker ended the connection "
                 "before CONNACK; it may have rejected the client "
                 "certificate in mqtt.cert_file %s, so check that the "
                 "broker trusts the CA that signed it",
                 m->cert_file);
    mqtt_mark_tls_failed(m, reason);
}

/*
 * Mark the connection broken after a libmosquitto call returned rc. The
 * errors that libmosquitto logged on the way explain more than rc, which is
 * "A TLS error occurred." or "Protocol error" for every TLS failure.
 */
static void mqtt_mark_failed(struct publisher *pub, int rc)
{
    struct pub_mqtt *m = &pub->mqtt;
    char reason[sizeof m->broken_reason];
    int saved_errno = errno;
    const char *rc_text = mqtt_error_text(rc);

    /* libmosquitto turns a reset during a TLS read into EPROTO. */
    if (m->lib_errors[0] == '\0' && m->tls && !m->connected &&
        rc == MOSQ_ERR_ERRNO &&
        (saved_errno == ECONNRESET || saved_errno == EPROTO)) {
        mqtt_mark_ended_before_connack(m);
        return;
    }
    if (m->lib_errors[0] != '\0' && m->tls) {
        /* Before CONNACK the broker may still reject the client
         * certificate: with TLS 1.3 the client finishes its side of the
         * handshake first and reads the broker's alert later. */
        snprintf(reason, sizeof reason, "%s: %s",
                 m->connected ? "TLS error" : "TLS handshake failed",
                 m->lib_errors);
        mqtt_mark_tls_failed(m, reason);
        return;
    }
    if (m->lib_errors[0] == '\0')
        snprintf(reason, sizeof reason, "%s", rc_text);
    else
        snprintf(reason, sizeof reason, "%s (%s)", rc_text, m->lib_errors);
    mqtt_mark_broken(m, reason);
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
    if (rc == MOSQ_ERR_SUCCESS)
        mqtt_mark_broken(&pub->mqtt, "disconnected by the client");
    else
        mqtt_mark_failed(pub, rc);
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
    mosquitto_log_callback_set(mosq, mqtt_on_log);
    if (m->tls) {
        rc = mosquitto_tls_set(mosq, m->ca_file, NULL, m->cert_file,
                               m->key_file, mqtt_no_passphrase);
        /* With SSL_VERIFY_PEER the handshake fails unless the broker's
         * certificate chains to mqtt.ca_file. libmosquitto 2.0.11 reads
         * "tlsv1.2" as the oldest version allowed, so TLS 1.3 is used when
         * the broker offers it. */
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_tls_opts_set(mosq, SSL_VERIFY_PEER,
                                        MQTT_TLS_MIN_VERSION, NULL);
        /* Also check the broker's host name against its certificate. This
         * is libmosquitto's default; it is set here so that no later
         * default can turn it off. */
        if (rc == MOSQ_ERR_SUCCESS)
            rc = mosquitto_tls_insecure_set(mosq, false);
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
    if (m->client_id == NULL)
        goto fail;
    if (mqtt_check_tls(m, err, err_len) != 0)
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
    /* A TLS failure, such as a certificate that does not verify, will not
     * go away by itself, so it is logged as an error. */
    enum log_level level = m->tls_failed ? LOG_ERROR : LOG_WARN;
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
    m->tls_failed = false;
    m->lib_errors[0] = '\0';
    pub_queue_rewind(&pub->queue);

    if (mqtt_log_allowed(pub, &suppressed)) {
        char note[64] = "";

        if (suppressed > 0)
            snprintf(note, sizeof note, " (%u similar lines suppressed)",
                     suppressed);
        if (was_connected)
            LOG_AT(level, PUB_LOG_MODULE, NULL,
                   "disconnected from %s:%d: %s; reconnecting in %.1f s; "
                   "%zu messages wait, %zu of them sent without PUBACK "
                   "and sent again%s",
                   m->host, m->port, m->broken_reason,
                   (double)delay_ms / 1000.0, pub->queue.length, unacked, note);
        else
            LOG_AT(level, PUB_LOG_MODULE, NULL,
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
        if (m->tls && !m->connected && so_error == ECONNRESET)
            mqtt_mark_ended_before_connack(m);
        else
            mqtt_mark_broken(m, so_error != 0 ? strerror(so_error)
                                              : uv_strerror(status));
        mqtt_after_io(pub);
        return;
    }
    /* During a TLS handshake libmosquitto advances the handshake only in
     * mosquitto_loop_read, so a writable socket is read too. */
    if ((events & UV_READABLE) || (m->tls && !m->connected)) {
        rc = mosquitto_loop_read(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS)
            mqtt_mark_failed(pub, rc);
    }
    if ((events & UV_WRITABLE) && !m->broken &&
        mosquitto_socket(m->mosq) >= 0) {
        rc = mosquitto_loop_write(m->mosq, 1);
        if (rc != MOSQ_ERR_SUCCESS)
            mqtt_mark_failed(pub, rc);
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
        mqtt_mark_failed(pub, rc);
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
    m->lib_errors[0] = '\0';
    log_debug(PUB_LOG_MODULE, NULL, "connecting to %s:%d", m->host, m->port);

    /* NOTE: libmosquitto resolves a host name with a blocking getaddrinfo
     * on this thread; an IP address in the URL avoids the wait. */
    rc = mosquitto_connect_async(m->mosq, m->host, m->port, MQTT_KEEPALIVE_S);
    if (rc != MOSQ_ERR_SUCCESS) {
        mqtt_mark_failed(pub, rc);
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
