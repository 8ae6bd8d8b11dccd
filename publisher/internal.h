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

struct mosquitto;

/* One submitted message; topic and payload live in the same allocation. */
struct pub_message {
    struct pub_message *prev;
    struct pub_message *next;
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
 * Messages in submission order. The messages sent on the current connection
 * and not yet acknowledged always form a prefix of the list, because sends
 * go in order and an acknowledged message leaves the list. next_send marks
 * the end of that prefix.
 */
struct pub_queue {
    struct pub_message *head;
    struct pub_message *tail;
    struct pub_message *next_send; /* first message not sent yet, or NULL */
    size_t length;
    size_t inflight; /* messages from head up to next_send */
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
    char broken_reason[160];
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
};

/* publisher.c: queue and handle helpers, loop thread only. */
void pub_queue_rewind(struct pub_queue *queue);
struct pub_message *pub_queue_find_sent(const struct pub_queue *queue, int mid);
void pub_queue_mark_sent(struct publisher *pub, struct pub_message *msg);
void pub_message_acked(struct publisher *pub, struct pub_message *msg);
void pub_report_acks(struct publisher *pub);
void pub_handle_opened(struct publisher *pub, uv_handle_t *handle);
void pub_close_handle(struct publisher *pub, uv_handle_t *handle);
uint64_t pub_backoff_next(uint64_t *backoff_ms, uint64_t *rng_state);

/* topic.c */
int pub_topic_check(const char *topic, size_t len, char *err, size_t err_len);

/* mqtt.c */
int mqtt_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len);
void mqtt_kick(struct publisher *pub);
void mqtt_close(struct publisher *pub);
void mqtt_handle_closed(struct publisher *pub, uv_handle_t *handle);
void mqtt_free(struct publisher *pub);

/* file.c */
int file_open(struct publisher *pub, const struct pub_config *cfg, char *err,
              size_t err_len);
void file_kick(struct publisher *pub);
void file_close(struct publisher *pub);
void file_free(struct publisher *pub);

#endif
