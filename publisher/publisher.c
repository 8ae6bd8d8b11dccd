/*
 * Publisher dispatch and message queue.
 *
 * Queue. publisher_submit checks a message, copies it into one allocation
 * and appends it to a queue in submission order. The MQTT and file
 * transports send from the front of the queue: the MQTT transport keeps at
 * most max_inflight messages on the wire (PUBLISH sent, PUBACK not yet
 * received) and stores each one's MQTT packet id (mid); the file transport
 * writes one line at a time. The IoT transport (iot.c) keeps the messages
 * of each topic in a list of its own and sends topics in parallel.
 *
 * Acknowledgement. A PUBACK for a mid, a line written completely, or a 2xx
 * reply of the IoT data plane moves the message from the queue to the
 * acked list. ack_cb runs for it later in the same loop callback, after
 * libmosquitto or libcurl has returned, so that ack_cb may call
 * publisher_submit or publisher_close. A message leaves the queue once, so
 * ack_cb runs at most once for each message.
 *
 * Resend. For MQTT, sends go in order and only acknowledged messages leave
 * the queue, so the messages sent and not acknowledged are always a prefix
 * of the queue. When a connection is lost, pub_queue_rewind() forgets their
 * mids and moves the send point back to the head: after the next CONNACK
 * every unacknowledged message is sent again, in order, from the stored
 * bytes. A message that reached the broker before the connection broke, but
 * whose PUBACK did not arrive, is delivered twice (at least once delivery).
 * The IoT transport resends a message whose request failed from the same
 * stored bytes.
 */
#include "publisher/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct pub_message *message_new(int64_t id, const char *topic,
                                       size_t topic_len, const void *payload,
                                       size_t payload_len)
{
    struct pub_message *msg = malloc(sizeof *msg + topic_len + 1 + payload_len);
    if (msg == NULL)
        return NULL;
    memset(msg, 0, sizeof *msg);
    msg->id = id;
    msg->topic_len = topic_len;
    msg->payload_len = payload_len;
    msg->topic = msg->data;
    msg->payload = msg->data + topic_len + 1;
    memcpy(msg->topic, topic, topic_len);
    msg->topic[topic_len] = '\0';
    if (payload_len > 0)
        memcpy(msg->payload, payload, payload_len);
    return msg;
}

static void queue_push(struct pub_queue *queue, struct pub_message *msg)
{
    msg->next = NULL;
    msg->prev = queue->tail;
    if (queue->tail != NULL)
        queue->tail->next = msg;
    else
        queue->head = msg;
    queue->tail = msg;
    if (queue->next_send == NULL)
        queue->next_send = msg;
    queue->length++;
}

/*
 * Remove a sent message from the queue. For MQTT and file it is one before
 * next_send; the IoT transport acknowledges messages anywhere in the queue.
 */
static void queue_unlink_sent(struct pub_queue *queue, struct pub_message *msg)
{
    if (queue->next_send == msg)
        queue->next_send = msg->next;
    if (msg->prev != NULL)
        msg->prev->next = msg->next;
    else
        queue->head = msg->next;
    if (msg->next != NULL)
        msg->next->prev = msg->prev;
    else
        queue->tail = msg->prev;
    msg->prev = msg->next = NULL;
    queue->length--;
    queue->inflight--;
}

/*
 * Mark every sent message as not sent, so the transport sends the whole
 * queue again from the head. Loop thread only.
 */
void pub_queue_rewind(struct pub_queue *queue)
{
    for (struct pub_message *m = queue->head; m != queue->next_send;
         m = m->next)
        m->mid = 0;
    queue->next_send = queue->head;
    queue->inflight = 0;
}

/*
 * Find the sent message with MQTT packet id mid, or NULL. The scan covers
 * at most max_inflight messages, which is cheaper than keeping an index.
 */
struct pub_message *pub_queue_find_sent(const struct pub_queue *queue, int mid)
{
    for (struct pub_message *m = queue->head; m != queue->next_send;
         m = m->next) {
        if (m->mid == mid)
            return m;
    }
    return NULL;
}

/* Count one send of msg in the message and the stats. */
void pub_count_send(struct publisher *pub, struct pub_message *msg)
{
    msg->sends++;
    pub->stats.sent++;
    if (msg->sends > 1)
        pub->stats.resent++;
}

/* Advance the send point past msg, which must be queue->next_send. */
void pub_queue_mark_sent(struct publisher *pub, struct pub_message *msg)
{
    pub->queue.next_send = msg->next;
    pub->queue.inflight++;
    pub_count_send(pub, msg);
}

/*
 * Move a sent message to the acked list; ack_cb runs for it from
 * pub_report_acks(). Safe inside libmosquitto callbacks. Loop thread only.
 */
void pub_message_acked(struct publisher *pub, struct pub_message *msg)
{
    queue_unlink_sent(&pub->queue, msg);
    if (pub->acked_tail != NULL)
        pub->acked_tail->next = msg;
    else
        pub->acked_head = msg;
    pub->acked_tail = msg;
    pub->acked_count++;
    pub->stats.acked++;
}

/*
 * Run ack_cb for each acknowledged message, oldest first, and free it.
 * Stops when ack_cb closes the publisher. Must not run inside a libmosquitto
 * call, because ack_cb may call publisher_submit or publisher_close. Each
 * message is taken off the list before its callback, so a nested call
 * reports the rest and no message is reported twice.
 */
void pub_report_acks(struct publisher *pub)
{
    struct pub_message *msg;

    while (!pub->closing && (msg = pub->acked_head) != NULL) {
        int64_t id = msg->id;

        pub->acked_head = msg->next;
        if (pub->acked_head == NULL)
            pub->acked_tail = NULL;
        pub->acked_count--;
        free(msg);
        pub->ack_cb(pub->ack_arg, id);
    }
}

/* Draw a delay between base_ms / 2 and base_ms. */
uint64_t pub_jitter(uint64_t base_ms, uint64_t *rng_state)
{
    uint64_t x = *rng_state;

    /* xorshift64: jitter needs no cryptographic quality. */
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *rng_state = x;

    /* Half fixed, half random, so that many clients spread out. */
    return base_ms / 2 + x % (base_ms / 2 + 1);
}

/* Draw a reconnect or retry delay and double *backoff_ms up to max_ms. */
uint64_t pub_backoff_next(uint64_t *backoff_ms, uint64_t max_ms,
                          uint64_t *rng_state)
{
    uint64_t base = *backoff_ms;

    *backoff_ms = base * 2 > max_ms ? max_ms : base * 2;
    return pub_jitter(base, rng_state);
}

static void free_messages(struct pub_message *msg)
{
    while (msg != NULL) {
        struct pub_message *next = msg->next;
        free(msg);
        msg = next;
    }
}

/* Free the publisher and run closed_cb once the last handle has closed. */
static void finish_close(struct publisher *pub)
{
    void (*closed_cb)(void *arg) = pub->closed_cb;
    void *arg = pub->closed_arg;

    free_messages(pub->queue.head);
    free_messages(pub->acked_head);
    if (pub->transport == PUB_MQTT)
        mqtt_free(pub);
    else if (pub->transport == PUB_IOT)
        iot_free(pub);
    else
        file_free(pub);
    free(pub);
    if (closed_cb != NULL)
        closed_cb(arg);
}

/*
 * Count one closed handle or module (such as the IoT transport's HTTP
 * client) of pub, given as arg, and free pub after the last one.
 */
void pub_module_closed(void *arg)
{
    struct publisher *pub = arg;

    pub->open_handles--;
    if (pub->closing && pub->open_handles == 0)
        finish_close(pub);
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct publisher *pub = handle->data;

    if (pub->transport == PUB_MQTT)
        mqtt_handle_closed(pub, handle);
    pub_module_closed(pub);
}

/* Count an initialized handle of pub; it must be closed with
 * pub_close_handle() before the publisher is freed. */
void pub_handle_opened(struct publisher *pub, uv_handle_t *handle)
{
    handle->data = pub;
    pub->open_handles++;
}

void pub_close_handle(struct publisher *pub, uv_handle_t *handle)
{
    (void)pub;
    if (!uv_is_closing(handle))
        uv_close(handle, on_handle_closed);
}

struct publisher *publisher_new(uv_loop_t *loop, const struct pub_config *cfg,
                                pub_ack_cb ack_cb, void *arg, char *err,
                                size_t err_len)
{
    struct publisher *pub;
    int rc;

    if (cfg->transport != PUB_MQTT && cfg->transport != PUB_IOT &&
        cfg->transport != PUB_FILE) {
        snprintf(err, err_len, "unknown publish transport %d",
                 (int)cfg->transport);
        return NULL;
    }
    if (ack_cb == NULL) {
        snprintf(err, err_len, "publisher_new needs an ack callback");
        return NULL;
    }
    pub = calloc(1, sizeof *pub);
    if (pub == NULL) {
        snprintf(err, err_len, "out of memory creating the publisher");
        return NULL;
    }
    pub->loop = loop;
    pub->transport = cfg->transport;
    pub->ack_cb = ack_cb;
    pub->ack_arg = arg;

    /* The transports check everything before they initialize a handle, so
     * a failed open leaves nothing to close. */
    if (cfg->transport == PUB_MQTT)
        rc = mqtt_open(pub, cfg, err, err_len);
    else if (cfg->transport == PUB_IOT)
        rc = iot_open(pub, cfg, err, err_len);
    else
        rc = file_open(pub, cfg, err, err_len);
    if (rc != 0) {
        free(pub);
        return NULL;
    }
    return pub;
}

int publisher_submit(struct publisher *pub, int64_t id, const char *topic,
                     const void *payload, size_t payload_len)
{
    struct pub_message *msg;
    size_t topic_len;

    if (pub->closing || topic == NULL)
        return -1;
    if (payload_len > PUB_MAX_PAYLOAD || (payload == NULL && payload_len > 0))
        return -1;
    topic_len = strnlen(topic, PUB_MAX_TOPIC + 1);
    if (pub_topic_check(topic, topic_len, NULL, 0) != 0)
        return -1;

    msg = message_new(id, topic, topic_len, payload, payload_len);
    if (msg == NULL)
        return -1;
    if (pub->transport == PUB_IOT && iot_enqueue(pub, msg) != 0) {
        free(msg);
        return -1;
    }
    queue_push(&pub->queue, msg);
    if (pub->transport == PUB_MQTT)
        mqtt_kick(pub);
    else if (pub->transport == PUB_IOT)
        iot_kick(pub);
    else
        file_kick(pub);
    return 0;
}

size_t publisher_pending(const struct publisher *pub)
{
    return pub->queue.length + pub->acked_count;
}

bool publisher_connected(const struct publisher *pub)
{
    if (pub->transport == PUB_MQTT)
        return pub->mqtt.connected;
    if (pub->transport == PUB_IOT)
        return pub->iot.last_ok;
    return true;
}

void publisher_stats(const struct publisher *pub, struct pub_stats *out)
{
    *out = pub->stats;
}

/*
 * Start closing: the transport disconnects and closes its handles, and the
 * last close callback frees pub and runs closed_cb. Messages not yet
 * acknowledged are dropped, and ack_cb no longer runs. Loop thread only.
 */
void publisher_close(struct publisher *pub, void (*closed_cb)(void *arg),
                     void *arg)
{
    if (pub->closing)
        return;
    pub->closing = true;
    pub->closed_cb = closed_cb;
    pub->closed_arg = arg;
    if (pub->transport == PUB_MQTT)
        mqtt_close(pub);
    else if (pub->transport == PUB_IOT)
        iot_close(pub);
    else
        file_close(pub);
}
