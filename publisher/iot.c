/*
 * AWS IoT Core data plane transport. Each message is one HTTPS request
 *   POST /topics/<percent-encoded topic>?qos=1
 * to iot.endpoint with the payload bytes as the body, signed with SigV4
 * (signing name "iotdata") by aws_signed_post().
 *
 * Order. The messages of one topic go in submission order, one request at
 * a time: the next message of a topic is sent only after the one before it
 * got a 2xx reply. Different topics are sent in parallel, up to
 * max_inflight requests.
 *
 * Retries. Every failed request is retried from the message's stored bytes:
 * any status outside 2xx (403 included), a timeout, a connection error, or
 * a request that could not be started. A message is never dropped while the
 * publisher is open. Two delays apply, both exponential with jitter:
 * - The topic waits retry_min_ms * 2^(failures - 1), at most retry_max_ms,
 *   before its head message is sent again, so that a message that keeps
 *   failing is not retried after every success of another topic.
 * - The whole transport pauses after a failure, then sends one request at
 *   a time (probing) until one gets a 2xx reply, because throttling, an
 *   endpoint that is down or bad credentials affect every topic alike. The
 *   pause doubles with each failed probe. A request that was already in
 *   flight when the pause began does not double it again, so a burst of
 *   failures from one outage counts once.
 * publisher_submit only queues, so a retry never blocks submission.
 *
 * Requests go through an HTTP client of the transport's own, driven by the
 * same libuv loop. ack_cb runs after the HTTP client's callback is done
 * with the reply (pub_report_acks), so it may call publisher_submit or
 * publisher_close.
 */
#include "publisher/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/aws.h"

#define IOT_SIGNING_NAME "iotdata"
#define IOT_PATH_PREFIX  "/topics/"
#define IOT_QUERY        "qos=1"
/* Content type of Publish in aws-sdk-js-v3. The data plane takes any bytes. */
#define IOT_CONTENT_TYPE       "application/octet-stream"
#define IOT_DEFAULT_TIMEOUT_MS 10000
#define IOT_RETRY_MIN_MS       500
#define IOT_RETRY_MAX_MS       30000
/* Each request in flight may hold its own HTTP/1.1 connection. */
#define IOT_MAX_INFLIGHT 1000
#define IOT_MIN_BUCKETS  64
/* Bytes of the reply's error message quoted in a log line. */
#define IOT_MESSAGE_QUOTE 160

enum iot_topic_state { IOT_READY, IOT_SENDING, IOT_WAITING };

/* One topic with queued messages. */
struct iot_topic {
    struct publisher *pub;
    struct iot_topic *hash_next;
    struct iot_topic *prev; /* in pub->iot.ready or pub->iot.waiting */
    struct iot_topic *next;
    enum iot_topic_state state;
    struct pub_message *head; /* oldest message, the one sent next */
    struct pub_message *tail;
    struct httpc_call *call; /* while IOT_SENDING */
    uint64_t generation;     /* pub->iot.generation when the call started */
    uint64_t retry_at_ms;    /* while IOT_WAITING, in loop time */
    uint32_t hash;
    char *wire_path; /* "/topics/<encoded topic>" */
    size_t topic_len;
    char topic[]; /* NUL-terminated */
};

/* Why a request failed: a stats counter and words for the log. */
struct iot_failure {
    uint64_t *counter;
    char what[320];
};

static void iot_send_ready(struct publisher *pub);

/* ---- topic table and lists --------------------------------------- */

/* FNV-1a: fast and good enough for a table that tests keys in full. */
static uint32_t hash_topic(const char *topic, size_t len)
{
    uint32_t h = 2166136261u;

    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)topic[i];
        h *= 16777619u;
    }
    return h;
}

static struct iot_topic *find_topic(const struct pub_iot *iot,
                                    const char *topic, size_t len,
                                    uint32_t hash)
{
    struct iot_topic *t = iot->buckets[hash & (iot->bucket_count - 1)];

    for (; t != NULL; t = t->hash_next) {
        if (t->hash == hash && t->topic_len == len &&
            memcmp(t->topic, topic, len) == 0)
            return t;
    }
    return NULL;
}

/* Double the bucket array once topics outnumber buckets. 0 or -1. */
static int grow_table(struct pub_iot *iot)
{
    size_t count = iot->bucket_count * 2;
    struct iot_topic **buckets = calloc(count, sizeof *buckets);

    if (buckets == NULL)
        return -1;
    for (size_t i = 0; i < iot->bucket_count; i++) {
        struct iot_topic *t = iot->buckets[i];
        while (t != NULL) {
            struct iot_topic *next = t->hash_next;
            size_t slot = t->hash & (count - 1);
            t->hash_next = buckets[slot];
            buckets[slot] = t;
            t = next;
        }
    }
    free(iot->buckets);
    iot->buckets = buckets;
    iot->bucket_count = count;
    return 0;
}

static void list_append(struct iot_topic_list *list, struct iot_topic *t)
{
    t->next = NULL;
    t->prev = list->tail;
    if (list->tail != NULL)
        list->tail->next = t;
    else
        list->head = t;
    list->tail = t;
}

static void list_remove(struct iot_topic_list *list, struct iot_topic *t)
{
    if (t->prev != NULL)
        t->prev->next = t->next;
    else
        list->head = t->next;
    if (t->next != NULL)
        t->next->prev = t->prev;
    else
        list->tail = t->prev;
    t->prev = t->next = NULL;
}

/*
 * Append the wire path of topic to sb: "/topics/" and the topic with every
 * byte outside the unreserved set (A-Z a-z 0-9 - _ . ~) percent-encoded,
 * '/' included. The AWS IoT developer guide gives the URL as
 * /topics/url_encoded_topic_name, and the AWS SDKs encode '/' in the
 * {topic} label of Publish too (botocore's percent_encode, aws-sdk-js-v3's
 * extendedEncodeURIComponent). With '/' encoded the topic stays one path
 * segment, so neither libcurl, which removes "." and ".." segments, nor a
 * signer that normalizes the path (the smithy signer also drops empty
 * segments) changes a topic such as "a//b" or "race/../b". For the same
 * reason the dots of a topic that is exactly "." or ".." become %2E.
 * SigV4 for non-S3 services encodes this path once more in the canonical
 * request (sigv4_canonical_uri), so "%2F" is signed as "%252F".
 */
static int append_wire_path(struct strbuf *sb, const char *topic, size_t len)
{
    sb_puts(sb, IOT_PATH_PREFIX);
    if ((len == 1 && topic[0] == '.') ||
        (len == 2 && topic[0] == '.' && topic[1] == '.')) {
        for (size_t i = 0; i < len; i++)
            sb_puts(sb, "%2E");
        return sb_error(sb);
    }
    return sigv4_uri_encode(sb, topic, len, true);
}

/* Create the entry of a topic, in no list yet. NULL when out of memory. */
static struct iot_topic *new_topic(struct publisher *pub, const char *topic,
                                   size_t len, uint32_t hash)
{
    struct iot_topic *t = calloc(1, sizeof *t + len + 1);
    struct strbuf path;

    if (t == NULL)
        return NULL;
    /* Each byte takes at most 3 characters when encoded. */
    sb_init(&path, sizeof IOT_PATH_PREFIX + 3 * len);
    if (append_wire_path(&path, topic, len) != 0 ||
        (t->wire_path = sb_take(&path, NULL)) == NULL) {
        sb_free(&path);
        free(t);
        return NULL;
    }
    t->pub = pub;
    t->hash = hash;
    t->topic_len = len;
    memcpy(t->topic, topic, len);
    t->topic[len] = '\0';
    return t;
}

/* Unlink a topic that has no message left from the table and free it. */
static void drop_topic(struct pub_iot *iot, struct iot_topic *t)
{
    struct iot_topic **p = &iot->buckets[t->hash & (iot->bucket_count - 1)];

    while (*p != t)
        p = &(*p)->hash_next;
    *p = t->hash_next;
    iot->topic_count--;
    free(t->wire_path);
    free(t);
}

/* ---- open ---------------------------------------------------------- */

/*
 * Check the configuration, then create the HTTP client, the signing client
 * and the retry timer. Returns -1 with a message in err and nothing to
 * close, except when memory runs out after the HTTP client was created:
 * its handles then close on the next run of the loop. Loop thread only.
 */
int iot_open(struct publisher *pub, const struct pub_config *cfg, char *err,
             size_t err_len)
{
    struct pub_iot *iot = &pub->iot;
    const struct aws_credentials *creds = cfg->iot_credentials;
    struct aws_endpoint ep;
    char why[400];
    int rc;

    if (cfg->iot_endpoint == NULL || cfg->iot_endpoint[0] == '\0') {
        snprintf(err, err_len,
                 "iot.endpoint is missing; set it to the AWS IoT data "
                 "endpoint, such as https://xxx-ats.iot.us-east-1."
                 "amazonaws.com (aws iot describe-endpoint --endpoint-type "
                 "iot:Data-ATS prints it)");
        return -1;
    }
    /* A provider (common/awscreds.h) always has credentials. */
    if (creds == NULL ||
        (creds->provider == NULL &&
         (creds->access_key_id == NULL || creds->access_key_id[0] == '\0' ||
          creds->secret_access_key == NULL ||
          creds->secret_access_key[0] == '\0'))) {
        snprintf(err, err_len,
                 "publish transport iot needs AWS credentials; set "
                 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY");
        return -1;
    }
    if (cfg->max_inflight < 1 || cfg->max_inflight > IOT_MAX_INFLIGHT) {
        snprintf(err, err_len,
                 "IoT max in-flight requests is %zu; it must be between 1 "
                 "and %d",
                 cfg->max_inflight, IOT_MAX_INFLIGHT);
        return -1;
    }
    if (cfg->iot_timeout_ms < 0) {
        snprintf(err, err_len,
                 "IoT request timeout is %ld ms; it must be positive, or 0 "
                 "for the default of %d ms",
                 cfg->iot_timeout_ms, IOT_DEFAULT_TIMEOUT_MS);
        return -1;
    }
    iot->retry_min_ms =
        cfg->iot_retry_min_ms > 0 ? cfg->iot_retry_min_ms : IOT_RETRY_MIN_MS;
    iot->retry_max_ms =
        cfg->iot_retry_max_ms > 0 ? cfg->iot_retry_max_ms : IOT_RETRY_MAX_MS;
    if (iot->retry_max_ms < iot->retry_min_ms) {
        snprintf(err, err_len,
                 "IoT retry delays are %" PRIu64 " ms at least and %" PRIu64
                 " ms at most; the maximum must not be below the minimum",
                 iot->retry_min_ms, iot->retry_max_ms);
        return -1;
    }
    rc = aws_endpoint_init(&ep, cfg->iot_endpoint, cfg->iot_region,
                           IOT_SIGNING_NAME, why, sizeof why);
    if (rc != 0) {
        snprintf(err, err_len, "invalid iot.endpoint or aws.region: %s", why);
        return -1;
    }

    iot->endpoint_url = strdup(ep.url);
    iot->bucket_count = IOT_MIN_BUCKETS;
    iot->buckets = calloc(iot->bucket_count, sizeof *iot->buckets);
    if (iot->endpoint_url == NULL || iot->buckets == NULL) {
        snprintf(err, err_len, "out of memory creating the IoT publisher");
        aws_endpoint_clear(&ep);
        iot_free(pub);
        return -1;
    }
    rc = httpc_new(pub->loop, &iot->http);
    if (rc != 0) {
        snprintf(err, err_len,
                 "creating the IoT publisher's HTTP client failed: %s",
                 strerror(-rc));
        iot->http = NULL;
        aws_endpoint_clear(&ep);
        iot_free(pub);
        return -1;
    }
    iot->client = aws_client_new(iot->http, &ep, creds, NULL, NULL);
    aws_endpoint_clear(&ep);
    if (iot->client == NULL) {
        snprintf(err, err_len, "out of memory creating the IoT publisher");
        httpc_close(iot->http, NULL, NULL);
        iot->http = NULL;
        iot_free(pub);
        return -1;
    }

    iot->max_inflight = (unsigned)cfg->max_inflight;
    iot->timeout_ms =
        cfg->iot_timeout_ms > 0 ? cfg->iot_timeout_ms : IOT_DEFAULT_TIMEOUT_MS;
    iot->backoff_ms = iot->retry_min_ms;
    iot->last_ok = true;
    iot->rng_state = uv_hrtime() | 1;
    iot->log_limit = (struct log_limit)LOG_LIMIT_INIT(60000, 10);
    iot->recovery_log_limit = (struct log_limit)LOG_LIMIT_INIT(60000, 10);
    uv_timer_init(pub->loop, &iot->timer);
    pub_handle_opened(pub, (uv_handle_t *)&iot->timer);
    /* The HTTP client counts as one more handle until httpc_close's
     * callback runs. */
    pub->open_handles++;
    log_info(PUB_LOG_MODULE, NULL,
             "publishing to the AWS IoT data plane at %s, %u requests in "
             "parallel at most",
             iot->endpoint_url, iot->max_inflight);
    return 0;
}

/* ---- queueing ------------------------------------------------------ */

/*
 * Append msg to its topic, creating the topic's entry (ready to send) when
 * it has none. Returns -1 when out of memory, with nothing changed.
 */
int iot_enqueue(struct publisher *pub, struct pub_message *msg)
{
    struct pub_iot *iot = &pub->iot;
    uint32_t hash = hash_topic(msg->topic, msg->topic_len);
    struct iot_topic *t = find_topic(iot, msg->topic, msg->topic_len, hash);

    if (t == NULL) {
        if (iot->topic_count >= iot->bucket_count && grow_table(iot) != 0)
            return -1;
        t = new_topic(pub, msg->topic, msg->topic_len, hash);
        if (t == NULL)
            return -1;
        size_t slot = hash & (iot->bucket_count - 1);
        t->hash_next = iot->buckets[slot];
        iot->buckets[slot] = t;
        iot->topic_count++;
        t->state = IOT_READY;
        list_append(&iot->ready, t);
    }
    msg->topic_next = NULL;
    if (t->tail != NULL)
        t->tail->topic_next = msg;
    else
        t->head = msg;
    t->tail = msg;
    return 0;
}

/* Start requests for ready topics, if any. Loop thread only. */
void iot_kick(struct publisher *pub)
{
    if (pub->iot.ready.head != NULL)
        iot_send_ready(pub);
}

/* ---- replies ------------------------------------------------------- */

/* Copy the first sentence of a reply's error message into buf. */
static void first_sentence(const char *message, char *buf, size_t size)
{
    size_t n = 0;

    /* AWS services behind API Gateway follow the first sentence of a
     * signature mismatch message with the canonical request they expected,
     * which contains the x-amz-security-token value, so only the first
     * sentence is logged. */
    while (message[n] != '\0' && message[n] != '\n' && n + 1 < size &&
           n < IOT_MESSAGE_QUOTE &&
           !(message[n] == '.' &&
             (message[n + 1] == ' ' || message[n + 1] == '\n')))
        n++;
    if (message[n] == '.')
        n++;
    snprintf(buf, size, "%.*s", (int)n, message);
}

/* Classify a failed reply for the stats and the log. */
static void describe_failure(struct publisher *pub,
                             const struct aws_reply *reply,
                             struct iot_failure *out)
{
    struct pub_stats *stats = &pub->stats;
    char quoted[IOT_MESSAGE_QUOTE + 2] = "";
    const char *type = reply->error_type;

    switch (reply->transport) {
    case HTTPC_OK:
        break;
    case HTTPC_ERR_TIMEOUT:
        out->counter = &stats->failed_timeout;
        snprintf(out->what, sizeof out->what, "timed out after %ld ms: %s",
                 pub->iot.timeout_ms, reply->transport_text);
        return;
    case HTTPC_ERR_INTERNAL:
        out->counter = &stats->failed_local;
        snprintf(out->what, sizeof out->what, "request failed locally: %s",
                 reply->transport_text);
        return;
    default:
        out->counter = &stats->failed_network;
        snprintf(out->what, sizeof out->what, "connection failed: %s",
                 reply->transport_text);
        return;
    }

    if (reply->status == 429 ||
        (type != NULL && strcmp(type, "ThrottlingException") == 0))
        out->counter = &stats->failed_throttled;
    else if (reply->status >= 500 && reply->status <= 599)
        out->counter = &stats->failed_server;
    else if (reply->status == 401 || reply->status == 403)
        out->counter = &stats->failed_auth;
    else
        out->counter = &stats->failed_status;
    if (reply->error_message != NULL)
        first_sentence(reply->error_message, quoted, sizeof quoted);
    snprintf(out->what, sizeof out->what, "HTTP %ld%s%s%s%s%s", reply->status,
             type != NULL ? " " : "", type != NULL ? type : "",
             quoted[0] != '\0' ? " \"" : "", quoted,
             quoted[0] != '\0' ? "\"" : "");
}

/*
 * Put the topic of a failed request in the waiting list and, when the
 * request started after the last pause began, pause the transport again
 * with a doubled delay.
 */
static void iot_handle_failure(struct publisher *pub, struct iot_topic *t,
                               const struct iot_failure *failure)
{
    struct pub_iot *iot = &pub->iot;
    struct pub_message *msg = t->head;
    uint64_t now = uv_now(pub->loop);
    uint64_t base = iot->retry_min_ms;
    uint64_t topic_delay, pause = 0;
    uint32_t suppressed;

    (*failure->counter)++;
    iot->last_ok = false;
    iot->failures_since_ok++;

    /* msg->sends counts this message's failed requests, because it is
     * acknowledged on its first 2xx reply and never sent twice at once. */
    for (uint32_t i = 1; i < msg->sends && base < iot->retry_max_ms; i++)
        base *= 2;
    if (base > iot->retry_max_ms)
        base = iot->retry_max_ms;
    topic_delay = pub_jitter(base, &iot->rng_state);
    t->retry_at_ms = now + topic_delay;
    t->state = IOT_WAITING;
    list_append(&iot->waiting, t);

    if (t->generation == iot->generation) {
        pause = pub_backoff_next(&iot->backoff_ms, iot->retry_max_ms,
                                 &iot->rng_state);
        iot->pause_until_ms = now + pause;
        iot->generation++;
        iot->probing = true;
    }

    if (log_limit_allow(&iot->log_limit, now, &suppressed)) {
        struct log_ids ids = {.topic = t->topic};
        char paused[64] = "", note[64] = "";

        if (pause > 0)
            snprintf(paused, sizeof paused,
                     "; all sends pause for %.2f s, then go one at a time",
                     (double)pause / 1000.0);
        if (suppressed > 0)
            snprintf(note, sizeof note, " (%u similar lines suppressed)",
                     suppressed);
        log_warn(PUB_LOG_MODULE, &ids,
                 "publishing message %" PRId64 " to %s failed on attempt "
                 "%u: %s; the topic retries in %.2f s%s; %zu messages "
                 "wait%s",
                 msg->id, iot->endpoint_url, msg->sends, failure->what,
                 (double)topic_delay / 1000.0, paused, pub->queue.length, note);
    }
}

/* Acknowledge the topic's head message and queue the topic's next one. */
static void iot_handle_success(struct publisher *pub, struct iot_topic *t)
{
    struct pub_iot *iot = &pub->iot;
    struct pub_message *msg = t->head;
    uint32_t suppressed;

    if (!iot->last_ok && iot->failures_since_ok > 0 &&
        log_limit_allow(&iot->recovery_log_limit, uv_now(pub->loop),
                        &suppressed))
        log_info(PUB_LOG_MODULE, NULL,
                 "publishing to %s works again after %u failed requests%s",
                 iot->endpoint_url, iot->failures_since_ok,
                 suppressed > 0 ? " (earlier recoveries not logged)" : "");
    iot->last_ok = true;
    iot->failures_since_ok = 0;
    iot->probing = false;
    iot->pause_until_ms = 0;
    iot->backoff_ms = iot->retry_min_ms;

    t->head = msg->topic_next;
    if (t->head == NULL)
        t->tail = NULL;
    msg->topic_next = NULL;
    pub_message_acked(pub, msg);

    if (t->head == NULL) {
        drop_topic(iot, t);
        return;
    }
    t->state = IOT_READY;
    list_append(&iot->ready, t);
}

static void iot_on_reply(void *arg, const struct aws_reply *reply)
{
    struct iot_topic *t = arg;
    struct publisher *pub = t->pub;

    t->call = NULL;
    if (reply->transport == HTTPC_OK && reply->status >= 200 &&
        reply->status <= 299) {
        /* pub_message_acked counts the request out of queue.inflight. */
        iot_handle_success(pub, t);
    } else {
        struct iot_failure failure = {0};

        pub->queue.inflight--;
        describe_failure(pub, reply, &failure);
        iot_handle_failure(pub, t, &failure);
    }
    pub_report_acks(pub);
    if (!pub->closing)
        iot_send_ready(pub);
}

/* ---- sending ------------------------------------------------------- */

/* Start the request for the head message of a ready topic. 0 or -1. */
static int iot_start(struct publisher *pub, struct iot_topic *t)
{
    struct pub_iot *iot = &pub->iot;
    struct pub_message *msg = t->head;

    t->call = aws_signed_post(iot->client, t->wire_path, IOT_QUERY,
                              IOT_CONTENT_TYPE, msg->payload, msg->payload_len,
                              iot->timeout_ms, iot_on_reply, t);
    t->generation = iot->generation;
    if (t->call == NULL)
        return -1;
    pub_count_send(pub, msg);
    t->state = IOT_SENDING;
    pub->queue.inflight++;
    return 0;
}

static void iot_on_timer(uv_timer_t *timer)
{
    iot_send_ready(timer->data);
}

/*
 * Move waiting topics whose retry time has come to the ready list, start
 * requests while the limit allows, and set the timer for the next retry.
 */
static void iot_send_ready(struct publisher *pub)
{
    struct pub_iot *iot = &pub->iot;
    uint64_t now = uv_now(pub->loop);
    uint64_t wake = UINT64_MAX;
    size_t limit = iot->probing ? 1 : iot->max_inflight;
    struct iot_topic *t, *next;

    for (t = iot->waiting.head; t != NULL; t = next) {
        next = t->next;
        if (t->retry_at_ms <= now) {
            list_remove(&iot->waiting, t);
            t->state = IOT_READY;
            list_append(&iot->ready, t);
        } else if (t->retry_at_ms < wake) {
            wake = t->retry_at_ms;
        }
    }

    while (now >= iot->pause_until_ms && pub->queue.inflight < limit &&
           (t = iot->ready.head) != NULL) {
        list_remove(&iot->ready, t);
        if (iot_start(pub, t) != 0) {
            struct iot_failure failure = {.counter = &pub->stats.failed_local};

            snprintf(failure.what, sizeof failure.what,
                     "the request could not be started (out of memory or "
                     "an HTTP client failure)");
            iot_handle_failure(pub, t, &failure);
            if (t->retry_at_ms < wake)
                wake = t->retry_at_ms;
        }
        /* A failed start pauses sending or turns probing on. */
        limit = iot->probing ? 1 : iot->max_inflight;
    }

    if (iot->ready.head != NULL)
        wake = now;
    if (wake != UINT64_MAX && wake < iot->pause_until_ms)
        wake = iot->pause_until_ms;
    /* Every reply runs this function again, so while the requests in
     * flight fill the limit no timer is needed. */
    if (wake == UINT64_MAX || pub->queue.inflight >= limit) {
        uv_timer_stop(&iot->timer);
        return;
    }
    uv_timer_start(&iot->timer, iot_on_timer, wake - now, 0);
}

/* ---- closing ------------------------------------------------------- */

/*
 * Cancel the requests in flight and close the timer and the HTTP client.
 * Their messages stay unacknowledged with the caller.
 */
void iot_close(struct publisher *pub)
{
    struct pub_iot *iot = &pub->iot;

    if (pub->queue.length > 0)
        log_info(PUB_LOG_MODULE, NULL,
                 "closing the IoT publisher; %zu messages were not "
                 "acknowledged and stay with the caller",
                 pub->queue.length);
    pub_close_handle(pub, (uv_handle_t *)&iot->timer);
    httpc_close(iot->http, pub_module_closed, pub);
}

/* Free what iot_open allocated; the timer and HTTP client are closed. */
void iot_free(struct publisher *pub)
{
    struct pub_iot *iot = &pub->iot;

    for (size_t i = 0; iot->buckets != NULL && i < iot->bucket_count; i++) {
        struct iot_topic *t = iot->buckets[i];
        while (t != NULL) {
            struct iot_topic *next = t->hash_next;
            free(t->wire_path);
            free(t);
            t = next;
        }
    }
    free(iot->buckets);
    aws_client_free(iot->client);
    free(iot->endpoint_url);
    iot->buckets = NULL;
    iot->client = NULL;
    iot->endpoint_url = NULL;
}
