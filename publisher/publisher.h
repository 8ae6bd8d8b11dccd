/*
 * Publishing messages from the outbox: MQTT 3.1.1 at QoS 1 through
 * libmosquitto driven by the libuv loop, JSON lines to a file or standard
 * output, or the AWS IoT Core data plane (HTTPS Publish, SigV4-signed). A
 * message is acknowledged to the caller only once the broker sent PUBACK,
 * the line was written or the data plane replied 2xx, and is sent again,
 * byte for byte, until then. MQTT and file send in submission order; the
 * IoT transport keeps submission order within each topic and sends
 * different topics in parallel.
 */
#ifndef PODIUM_PUBLISHER_PUBLISHER_H
#define PODIUM_PUBLISHER_PUBLISHER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/strbuf.h"

#define PUB_MAX_PAYLOAD       (128 * 1024) /* AWS IoT Core message size limit */
#define PUB_MAX_TOPIC         256 /* AWS IoT Core topic length, bytes */
#define PUB_MAX_TOPIC_SLASHES 7   /* AWS IoT Core topic depth limit */

enum pub_transport { PUB_MQTT, PUB_IOT, PUB_FILE };

struct aws_credentials;

struct pub_config {
    enum pub_transport transport;
    const char *file_path; /* PUB_FILE: path, or "-" for standard output */
    const char *mqtt_url;  /* mqtt://host:port or mqtts://host:port */
    const char *mqtt_client_id;
    const char *mqtt_ca_file;
    const char *mqtt_cert_file;
    const char *mqtt_key_file;
    size_t max_inflight; /* messages sent but not acknowledged */
    /* PUB_IOT: data plane URL such as https://xxx-ats.iot.REGION.amazonaws.com,
     * the SigV4 signing region, and credentials (copied). */
    const char *iot_endpoint;
    const char *iot_region;
    const struct aws_credentials *iot_credentials;
    long iot_timeout_ms;       /* one request, connect included; 0: 10 s */
    uint32_t iot_retry_min_ms; /* first retry delay; 0: 500 ms */
    uint32_t iot_retry_max_ms; /* maximum retry delay; 0: 30 s */
};

struct publisher;

/* Called on the loop thread once message id is acknowledged or written. */
typedef void (*pub_ack_cb)(void *arg, int64_t id);

/*
 * Create a publisher and start connecting. Returns NULL with a message in
 * err when the configuration is unusable (bad URL, unreadable file).
 */
struct publisher *publisher_new(uv_loop_t *loop, const struct pub_config *cfg,
                                pub_ack_cb ack_cb, void *arg, char *err,
                                size_t err_len);

/*
 * Queue a message (copied). Returns 0, or -1 when the message is invalid or
 * cannot be queued. A message is invalid when its payload is over
 * PUB_MAX_PAYLOAD bytes, or its topic is empty, is over PUB_MAX_TOPIC bytes,
 * has more than PUB_MAX_TOPIC_SLASHES slashes, contains '+' or '#', or is
 * not valid UTF-8 without control characters. Also returns -1 when out of
 * memory or after publisher_close. ack_cb never runs before this returns.
 */
int publisher_submit(struct publisher *pub, int64_t id, const char *topic,
                     const void *payload, size_t payload_len);

/* Messages submitted and not yet acknowledged. */
size_t publisher_pending(const struct publisher *pub);

/*
 * True while connected: MQTT after CONNACK, always for the file transport.
 * The IoT transport has no lasting connection, so it returns whether the
 * last request that finished got a 2xx reply (true before the first one).
 */
bool publisher_connected(const struct publisher *pub);

/* Counters since publisher_new, for metrics and tests. */
struct pub_stats {
    uint64_t connect_attempts; /* MQTT connections started */
    uint64_t connections;      /* MQTT connections accepted by CONNACK */
    uint64_t sent;   /* PUBLISH packets, lines or IoT requests, resends too */
    uint64_t resent; /* sends of a message that was sent before */
    uint64_t acked;  /* messages acknowledged, written or given a 2xx reply */
    /* IoT requests that failed, by cause. Each one is retried. */
    uint64_t failed_throttled; /* HTTP 429 or ThrottlingException */
    uint64_t failed_server;    /* HTTP 5xx */
    uint64_t failed_auth;      /* HTTP 401 or 403 */
    uint64_t failed_status;    /* any other status outside 2xx */
    uint64_t failed_timeout;   /* no complete reply within the timeout */
    uint64_t failed_network;   /* connect failed, reset or broken reply */
    uint64_t failed_local;     /* the request could not be built or started */
};

/* Copy the counters into out. */
void publisher_stats(const struct publisher *pub, struct pub_stats *out);

/*
 * Disconnect and close handles; closed_cb runs when all are closed, after
 * pub was freed. Unacknowledged messages are dropped, and ack_cb does not
 * run after this call. Loop thread only. A second call does nothing.
 */
void publisher_close(struct publisher *pub, void (*closed_cb)(void *arg),
                     void *arg);

/*
 * Expand a topic template: {raceId} and {classId} are replaced by the id's
 * text (digits, or the string without quotes). A value containing '/', '+',
 * '#' or U+0000, or a result over PUB_MAX_TOPIC bytes or with more than
 * PUB_MAX_TOPIC_SLASHES slashes, is rejected with a message in err.
 * race_id or class_id may be NULL when the template does not use it. out
 * is reset first. An unknown placeholder, or a '{' without '}', is an error.
 */
int pub_topic_expand(const char *tmpl, const char *race_id, size_t race_len,
                     const char *class_id, size_t class_len, struct strbuf *out,
                     char *err, size_t err_len);

#endif
