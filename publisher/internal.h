/*
 * State shared by the publisher's source files: the message queue, the
 * transports' state and the helpers they call. Not part of the public API.
 */
#ifndef PODIUM_PUBLISHER_INTERNAL_H
#define PODIUM_PUBLISHER_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <uv.h>

#include "common/log.h"
#include "common/strbuf.h"
#include "publisher/publisher.h"

#define PUB_LOG_MODULE "publish"
/* Maximum reconnect or retry delay of the MQTT and file transports. */
#define PUB_BACKOFF_MAX_MS 30000

struct mosquitto;
struct httpc;
struct aws_client;
struct iot_topic;

/* One submitted message; topic and payload live in the same allocation. */
struct pub_message {
    struct pub_message *prev;
    struct pub_message *next;
    struct pub_message *topic_next; /* IoT: next message of the same topic */
    int64_t id;
    int mid;        /* MQTT packet id on the current connection, or 0 */
    uint32_t sends; /* times the message was sent, resends included */
    size_t topic_len;
    size_t payload_len;
    char *topic;   /* NUL-terminated, points into data */
    char *payload; /* points into data */
    char data[];
};

/*
 * Messages in submission order. For MQTT and file, the messages sent on the
 * current connection and not yet acknowledged always form a prefix of the
 * list, because sends go in order and an acknowledged message leaves the
 * list. next_send marks the end of that prefix. The IoT transport keeps its
 * own order per topic (struct pub_iot) and uses this list only to count and
 * free messages, never next_send.
 */
struct pub_queue {
    struct pub_message *head;
    struct pub_message *tail;
    struct pub_message *next_send; /* first message not sent yet, or NULL */
    size_t length;
    size_t inflight; /* messages sent and not acknowledged or failed */
};

enum pub_poll_state { PUB_POLL_NONE, PUB_POLL_ACTIVE, PUB_POLL_CLOSING };

struct pub_mqtt {
    struct mosquitto *mosq; /* owned; NULL between connections */
    uv_poll_t poll;         /* watches mosquitto_socket() of mosq */
    uv_timer_t misc_timer;  /* keepalive and connect timeout */
    uv_timer_t retry_timer; /* reconnect backoff */
    enum pub_poll_state poll_state;
    bool connect_after_poll_closed;
    bool connected; /* CONNACK accepted on the current connection */
    bool broken;    /* connection lost; torn down after the current call */
    char broken_reason[1024];
    /* broken_reason is a TLS failure, such as a rejected certificate. */
    bool tls_failed;
    /* Errors that libmosquitto logged on the current connection, such as
     * why the TLS handshake failed, joined by "; ". */
    char lib_errors[512];
    bool tls;
    char host[256];
    int port;
    char *client_id; /* owned copies of the configuration strings */
    char *ca_file;
    char *cert_file;
    char *key_file;
    unsigned max_inflight;
    uint64_t backoff_ms;
    uint64_t connect_started_ms;
    uint64_t rng_state;
    struct log_limit log_limit;
};

struct pub_file {
    int fd;
    bool owns_fd;     /* false for standard output */
    char *path;       /* owned */
    uv_timer_t timer; /* runs the writes outside publisher_submit */
    bool retry_pending;
    uint64_t retry_ms;
    struct strbuf line; /* the line of the queue head while it is written */
    size_t line_written;
    bool line_ready;
    struct log_limit log_limit;
};

/* Topics in a list of the IoT transport, oldest first. */
struct iot_topic_list {
    struct iot_topic *head;
    struct iot_topic *tail;
};

/*
 * IoT transport state. Each topic with queued messages has an entry in a
 * hash table. The entry is in the ready list, sending, or in the waiting
 * list until its retry time. See iot.c for the retry rules.
 */
struct pub_iot {
    struct httpc *http;        /* owned */
    struct aws_client *client; /* owned; signs with service "iotdata" */
    char *endpoint_url;        /* owned, for logs */
    uv_timer_t timer;          /* wakes the sender at the next retry time */
    struct iot_topic **buckets;
    size_t bucket_count; /* a power of 2 */
    size_t topic_count;
    struct iot_topic_list ready;   /* can be sent now, oldest first */
    struct iot_topic_list waiting; /* head message failed; wait for retry */
    unsigned max_inflight;
    long timeout_ms;
    uint64_t retry_min_ms;
    uint64_t retry_max_ms;
    uint64_t backoff_ms;     /* next pause after a failure */
    uint64_t pause_until_ms; /* no request starts before this loop time */
    uint64_t generation;     /* counts pauses; see iot_handle_failure */
    bool probing;            /* one request at a time until a 2xx reply */
    bool last_ok;            /* the last finished request got 2xx */
    uint32_t failures_since_ok;
    uint64_t rng_state;
    struct log_limit log_limit;          /* failure warnings */
    struct log_limit recovery_log_limit; /* "works again" lines */
};

struct publisher {
    uv_loop_t *loop;
    enum pub_transport transport;
    pub_ack_cb ack_cb;
    void *ack_arg;
    void (*closed_cb)(void *arg);
    void *closed_arg;
    bool closing;
    int open_handles; /* initialized handles whose close callback is due */
    struct pub_queue queue;
    /* Acknowledged messages waiting for ack_cb, oldest first. */
    struct pub_message *acked_head;
    struct pub_message *acked_tail;
    size_t acked_count;
    struct pub_stats stats;
    struct pub_mqtt mqtt;
    struct pub_file file;
    struct pub_iot iot;
};

/* publisher.c: queue and handle helpers, loop thread only. */
void pub_queue_rewind(struct pub_queue *queue);
struct pub_message *pub_queue_find_sent(const struct pub_queue *queue, int mid);
void pub_queue_mark_sent(struct publisher *pub, struct pub_message *msg);
void pub_count_send(struct publisher *pub, struct pub_message *msg);
void pub_message_acked(struct publisher *pub, struct pub_message *msg);
void pub_report_acks(struct publisher *pub);
void pub_handle_opened(struct publisher *pub, uv_handle_t *handle);
void pub_close_handle(struct publisher *pub, uv_handle_t *handle);
void pub_module_closed(void *arg);
uint64_t pub_jitter(uint64_t base_ms, uint64_t *rng_state);
uint64_t pub_backoff_next(uint64_t *backoff_ms, uint64_t max_ms,
                          uint64_t *rng_state);

/* topic.c */
int pub_topic_check(const char *topic, size_t len, char *err, size_t err_len);

/* mqtt.c */
int mqtt_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len);
void mqtt_kick(struct publisher *pub);
void mqtt_close(struct publisher *pub);
void mqtt_handle_closed(struct publisher *pub, uv_handle_t *handle);
void mqtt_free(struct publisher *pub);

/* iot.c */
int iot_open(struct publisher *pub, const struct pub_config *cfg, char *err,
             size_t err_len);
int iot_enqueue(struct publisher *pub, struct pub_message *msg);
void iot_kick(struct publisher *pub);
void iot_close(struct publisher *pub);
void iot_free(struct publisher *pub);

/* file.c */
int file_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len);
void file_kick(struct publisher *pub);
void file_close(struct publisher *pub);
void file_free(struct publisher *pub);

#endif
