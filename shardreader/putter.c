/*
 * PutRecords for the simulator. Records queue in order; full calls go out
 * as the queue fills and kinesis_putter_finish() flushes the rest. At most
 * PUT_MAX_IN_FLIGHT calls run at once. When a call fails as a whole
 * (throttling, 5xx, timeout) or some of its entries fail (a reply with
 * FailedRecordCount > 0), the failed entries go back to the front of the
 * queue in their order and the putter pauses for a backoff with full
 * jitter. An entry that failed max_attempts times (10 by default), or an error
 * that a retry cannot fix (missing stream, bad credentials), ends the run with
 * an error for done_cb.
 *
 * Limits are those of the PutRecords API:
 * https://docs.aws.amazon.com/kinesis/latest/APIReference/API_PutRecords.html
 *
 * All functions run on the loop thread.
 */
#include "shardreader/shardreader.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/base64.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "shardreader/kinesis.h"

#define PUT_LOG         "shard"
#define PUT_MAX_RECORDS 500
/* Data plus partition keys of one call. */
#define PUT_MAX_CALL_BYTES ((size_t)5 << 20)
/* Data plus partition key of one record. */
#define PUT_MAX_RECORD_BYTES ((size_t)1 << 20)
#define PUT_MAX_KEY_CHARS    256
/* Request body: 5 MiB in base64 plus up to 500 escaped partition keys. */
#define PUT_MAX_BODY ((size_t)16 << 20)
/* Reply: 500 entries of sequence number and shard id, about 150 B each. */
#define PUT_MAX_RESPONSE            ((size_t)1 << 20)
#define PUT_MAX_IN_FLIGHT           2
#define PUT_DEFAULT_ATTEMPTS        10
#define PUT_DEFAULT_BACKOFF_BASE_MS 100
#define PUT_BACKOFF_CAP_MS          30000
#define PUT_ERROR_TEXT              512
/* Bytes encoded per step: a multiple of 3, so the chunks join without
 * padding in between. */
#define PUT_B64_CHUNK 3072

struct put_entry {
    uint8_t *data; /* owned */
    size_t len;
    char *key; /* owned */
    uint32_t attempts;
};

/* Ring buffer of entries waiting to be sent. */
struct put_queue {
    struct put_entry *items;
    size_t head;
    size_t count;
    size_t cap;
    size_t bytes; /* data plus keys of the queued entries */
};

struct put_call {
    struct kinesis_putter *p;
    struct httpc_call *http;   /* borrowed while in flight, else NULL */
    struct put_entry *entries; /* owned */
    size_t count;
};

struct kinesis_putter {
    uv_loop_t *loop;
    uv_timer_t timer; /* backoff; closed when the run is done */
    bool timer_closed;
    bool free_requested;
    struct aws_client *aws;
    char *stream;
    char *endpoint_url;
    struct log_ids log_ids; /* the stream alone */
    int32_t timeout_ms;
    struct put_queue queue;
    struct put_call calls[PUT_MAX_IN_FLIGHT];
    size_t in_flight;  /* records in the calls above */
    uint32_t failures; /* failed calls in a row */
    uint32_t max_attempts;
    uint32_t backoff_base_ms;
    bool backing_off;
    bool finishing;
    bool flushing; /* send partial calls until the queue is empty */
    bool done;     /* done_cb is due or ran */
    char *error;
    void (*done_cb)(void *arg, const char *error);
    void *done_arg;
    uint64_t rng;
    struct log_limit warn_limit;
};

static void putter_pump(struct kinesis_putter *p);

/* ---- queue -------------------------------------------------------------- */

static size_t entry_bytes(const struct put_entry *e)
{
    return e->len + strlen(e->key);
}

static void entry_free(struct put_entry *e)
{
    free(e->data);
    free(e->key);
}

static int queue_grow(struct put_queue *q)
{
    if (q->count < q->cap)
        return 0;
    size_t cap = q->cap ? q->cap * 2 : 1024;
    struct put_entry *items = malloc(cap * sizeof *items);
    if (items == NULL)
        return -1;
    for (size_t i = 0; i < q->count; i++)
        items[i] = q->items[(q->head + i) % q->cap];
    free(q->items);
    q->items = items;
    q->head = 0;
    q->cap = cap;
    return 0;
}

static int queue_push_back(struct put_queue *q, const struct put_entry *e)
{
    if (queue_grow(q) != 0)
        return -1;
    q->items[(q->head + q->count) % q->cap] = *e;
    q->count++;
    q->bytes += entry_bytes(e);
    return 0;
}

static int queue_push_front(struct put_queue *q, const struct put_entry *e)
{
    if (queue_grow(q) != 0)
        return -1;
    q->head = (q->head + q->cap - 1) % q->cap;
    q->items[q->head] = *e;
    q->count++;
    q->bytes += entry_bytes(e);
    return 0;
}

static struct put_entry queue_pop_front(struct put_queue *q)
{
    struct put_entry e = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->count--;
    q->bytes -= entry_bytes(&e);
    return e;
}

static void queue_clear(struct put_queue *q)
{
    while (q->count > 0) {
        struct put_entry e = queue_pop_front(q);
        entry_free(&e);
    }
}

/* ---- failure and completion -------------------------------------------- */

static void timer_closed(uv_handle_t *handle);

/* Close the timer once no call is left; done_cb runs from its close
 * callback. */
static void putter_check_done(struct kinesis_putter *p)
{
    if (!p->finishing || p->done || p->in_flight > 0)
        return;
    if (p->queue.count > 0 && p->error == NULL)
        return;
    p->done = true;
    uv_close((uv_handle_t *)&p->timer, timer_closed);
}

/* End the run with an error: drop the queue, keep the first cause. */
static void putter_fail(struct kinesis_putter *p, const char *cause)
{
    if (p->error != NULL)
        return;
    size_t len =
        strlen(p->stream) + strlen(p->endpoint_url) + strlen(cause) + 32;
    p->error = malloc(len);
    if (p->error != NULL)
        snprintf(p->error, len, "stream \"%s\" at %s: %s", p->stream,
                 p->endpoint_url, cause);
    log_error(PUT_LOG, &p->log_ids,
              "failed to put records: %s; dropping %zu queued records", cause,
              p->queue.count);
    queue_clear(&p->queue);
}

static void backoff_done(uv_timer_t *timer)
{
    struct kinesis_putter *p = timer->data;
    p->backing_off = false;
    putter_pump(p);
    putter_check_done(p);
}

/* Pause sending for a backoff after a failed call or failed entries. */
static void putter_backoff(struct kinesis_putter *p, size_t count,
                           const char *cause)
{
    uint32_t suppressed;
    uint64_t delay = kinesis_backoff_ms(&p->rng, ++p->failures,
                                        p->backoff_base_ms, PUT_BACKOFF_CAP_MS);
    if (log_limit_allow(&p->warn_limit, uv_now(p->loop), &suppressed)) {
        char note[64] = "";
        if (suppressed > 0)
            snprintf(note, sizeof note, " (%u similar warnings suppressed)",
                     suppressed);
        log_warn(PUT_LOG, &p->log_ids,
                 "failed to put %zu records: %s; retrying in %" PRIu64 " ms%s",
                 count, cause, delay, note);
    }
    p->backing_off = true;
    uv_timer_start(&p->timer, backoff_done, delay, 0);
}

/*
 * Put failed entries (taken from a call) back at the front of the queue in
 * their order and pause for a backoff, or end the run when one has used
 * all its attempts.
 */
static void retry_entries(struct kinesis_putter *p, struct put_entry *failed,
                          size_t count, const char *cause)
{
    for (size_t i = 0; i < count && p->error == NULL; i++) {
        if (++failed[i].attempts >= p->max_attempts) {
            char text[PUT_ERROR_TEXT + 64];
            snprintf(text, sizeof text, "%s after %u attempts", cause,
                     p->max_attempts);
            putter_fail(p, text);
        }
    }
    for (size_t i = count; i-- > 0;) {
        if (p->error == NULL && queue_push_front(&p->queue, &failed[i]) == 0)
            continue;
        entry_free(&failed[i]);
        if (p->error == NULL)
            putter_fail(p, "out of memory");
    }
    if (p->error == NULL)
        putter_backoff(p, count, cause);
}

/* ---- calls -------------------------------------------------------------- */

/* Append a JSON string holding the base64 of data. */
static void append_base64(struct strbuf *sb, const uint8_t *data, size_t len)
{
    char chunk[BASE64_ENCODED_LEN(PUT_B64_CHUNK) + 1];
    sb_putc(sb, '"');
    for (size_t off = 0; off < len; off += PUT_B64_CHUNK) {
        size_t n = len - off < PUT_B64_CHUNK ? len - off : PUT_B64_CHUNK;
        size_t out = base64_encode(data + off, n, chunk);
        sb_append(sb, chunk, out);
    }
    sb_putc(sb, '"');
}

/* Build the PutRecords body for the call's entries (owned by the caller,
 * free with free()), or NULL. */
static char *build_body(const struct kinesis_putter *p,
                        const struct put_call *call, size_t *len)
{
    struct strbuf sb;
    sb_init(&sb, PUT_MAX_BODY);
    sb_puts(&sb, "{\"StreamName\":");
    sb_json_string(&sb, p->stream, strlen(p->stream));
    sb_puts(&sb, ",\"Records\":[");
    for (size_t i = 0; i < call->count; i++) {
        const struct put_entry *e = &call->entries[i];
        sb_puts(&sb, i ? ",{\"Data\":" : "{\"Data\":");
        append_base64(&sb, e->data, e->len);
        sb_puts(&sb, ",\"PartitionKey\":");
        sb_json_string(&sb, e->key, strlen(e->key));
        sb_putc(&sb, '}');
    }
    sb_puts(&sb, "]}");
    if (sb_error(&sb) != 0) {
        sb_free(&sb);
        return NULL;
    }
    return sb_take(&sb, len);
}

/* Give the call's entries back to the caller's array and clear the slot. */
static struct put_entry *release_call(struct put_call *call, size_t *count)
{
    struct put_entry *entries = call->entries;
    *count = call->count;
    call->p->in_flight -= call->count;
    call->entries = NULL;
    call->count = 0;
    call->http = NULL;
    return entries;
}

/*
 * Handle a reply that came back 200: accept the entries that have a
 * SequenceNumber and requeue those with an ErrorCode.
 */
static void handle_accepted(struct kinesis_putter *p, struct put_call *call,
                            const struct aws_reply *reply)
{
    char cause[PUT_ERROR_TEXT] = "";
    json_t *root = kinesis_parse_object(reply->body, reply->body_len,
                                        PUT_MAX_RESPONSE, cause, sizeof cause);
    const json_t *results = kinesis_member(root, "Records");
    size_t count, failed = 0;
    struct put_entry *entries = release_call(call, &count);

    if (root == NULL || json_array_size(results) != count) {
        if (root != NULL)
            snprintf(cause, sizeof cause,
                     "reply has %zu results for %zu "
                     "records",
                     json_array_size(results), count);
        retry_entries(p, entries, count, cause);
        free(entries);
        json_decref(root);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        const json_t *r = json_array_get(results, i);
        const char *code = kinesis_string_member(r, "ErrorCode");
        if (code == NULL) {
            entry_free(&entries[i]);
            continue;
        }
        if (failed == 0) {
            const char *msg = kinesis_string_member(r, "ErrorMessage");
            snprintf(cause, sizeof cause, "%s: %s", code, msg ? msg : "");
        }
        entries[failed++] = entries[i];
    }
    json_decref(root);
    if (failed == 0) {
        p->failures = 0;
    } else {
        retry_entries(p, entries, failed, cause);
    }
    free(entries);
}

static void put_reply(void *arg, const struct aws_reply *reply)
{
    struct put_call *call = arg;
    struct kinesis_putter *p = call->p;
    enum kinesis_outcome outcome = kinesis_classify(reply);

    call->http = NULL;
    if (outcome == KINESIS_OK) {
        handle_accepted(p, call, reply);
    } else {
        char cause[PUT_ERROR_TEXT];
        size_t count;
        struct put_entry *entries = release_call(call, &count);
        kinesis_describe(reply, cause, sizeof cause);
        if (kinesis_retryable(outcome)) {
            retry_entries(p, entries, count, cause);
        } else {
            for (size_t i = 0; i < count; i++)
                entry_free(&entries[i]);
            putter_fail(p, cause);
        }
        free(entries);
    }
    putter_pump(p);
    putter_check_done(p);
}

/* Move up to one call's worth of entries from the queue into call. */
static int fill_call(struct kinesis_putter *p, struct put_call *call)
{
    size_t n = 0, bytes = 0;
    while (n < p->queue.count && n < PUT_MAX_RECORDS) {
        const struct put_entry *e =
            &p->queue.items[(p->queue.head + n) % p->queue.cap];
        if (n > 0 && bytes + entry_bytes(e) > PUT_MAX_CALL_BYTES)
            break;
        bytes += entry_bytes(e);
        n++;
    }
    call->entries = malloc(n * sizeof *call->entries);
    if (call->entries == NULL)
        return -1;
    for (size_t i = 0; i < n; i++)
        call->entries[i] = queue_pop_front(&p->queue);
    call->count = n;
    p->in_flight += n;
    return 0;
}

/* Send one PutRecords call from the front of the queue. */
static void send_call(struct kinesis_putter *p, struct put_call *call)
{
    size_t len = 0, count;
    char *body;

    if (fill_call(p, call) != 0) {
        putter_fail(p, "out of memory");
        return;
    }
    body = build_body(p, call, &len);
    if (body != NULL)
        call->http =
            aws_json_call(p->aws, "PutRecords", body, len, p->timeout_ms,
                          PUT_MAX_RESPONSE, put_reply, call);
    free(body);
    if (call->http == NULL) {
        struct put_entry *entries = release_call(call, &count);
        retry_entries(p, entries, count, "request not started");
        free(entries);
    }
}

static struct put_call *free_slot(struct kinesis_putter *p)
{
    for (int i = 0; i < PUT_MAX_IN_FLIGHT; i++) {
        if (p->calls[i].entries == NULL)
            return &p->calls[i];
    }
    return NULL;
}

/* Send calls while a slot is free: full ones, or any once flushing or
 * finishing. */
static void putter_pump(struct kinesis_putter *p)
{
    struct put_call *call;

    while (p->error == NULL && !p->backing_off && !p->done &&
           p->queue.count > 0 && (call = free_slot(p)) != NULL) {
        bool full = p->queue.count >= PUT_MAX_RECORDS ||
                    p->queue.bytes >= PUT_MAX_CALL_BYTES;
        if (!full && !p->finishing && !p->flushing)
            break;
        send_call(p, call);
    }
    if (p->queue.count == 0)
        p->flushing = false;
}

/* ---- public API --------------------------------------------------------- */

struct kinesis_putter *kinesis_putter_new(uv_loop_t *loop, struct httpc *http,
                                          const struct aws_endpoint *ep,
                                          const struct aws_credentials *creds,
                                          const char *stream_name,
                                          int32_t request_timeout_ms)
{
    if (stream_name == NULL || stream_name[0] == '\0' ||
        request_timeout_ms <= 0)
        return NULL;
    struct kinesis_putter *p = calloc(1, sizeof *p);
    if (p == NULL)
        return NULL;
    p->loop = loop;
    p->stream = strdup(stream_name);
    p->endpoint_url = strdup(ep->url ? ep->url : "");
    p->aws = aws_client_new(http, ep, creds, KINESIS_TARGET_PREFIX, NULL);
    if (p->stream == NULL || p->endpoint_url == NULL || p->aws == NULL) {
        aws_client_free(p->aws);
        free(p->stream);
        free(p->endpoint_url);
        free(p);
        return NULL;
    }
    p->timeout_ms = request_timeout_ms;
    p->max_attempts = PUT_DEFAULT_ATTEMPTS;
    p->backoff_base_ms = PUT_DEFAULT_BACKOFF_BASE_MS;
    p->log_ids.stream = p->stream;
    p->rng = kinesis_rng_seed(p);
    p->warn_limit = (struct log_limit)LOG_LIMIT_INIT(10000, 10);
    for (int i = 0; i < PUT_MAX_IN_FLIGHT; i++)
        p->calls[i].p = p;
    uv_timer_init(loop, &p->timer);
    p->timer.data = p;
    return p;
}

/* Number of Unicode characters in UTF-8 text: bytes that do not continue
 * a sequence. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s != '\0'; s++)
        n += ((unsigned char)*s & 0xC0) != 0x80;
    return n;
}

/*
 * Queue a copy of a record. Returns 0; -EINVAL for a partition key that is
 * empty or longer than 256 characters, or after kinesis_putter_finish();
 * -EMSGSIZE when data and key pass 1 MiB; -EIO after the run failed;
 * -ENOMEM.
 */
int kinesis_putter_add(struct kinesis_putter *p, const void *data, size_t len,
                       const char *partition_key)
{
    if (p->error != NULL)
        return -EIO;
    if (p->finishing || partition_key == NULL || partition_key[0] == '\0' ||
        utf8_chars(partition_key) > PUT_MAX_KEY_CHARS)
        return -EINVAL;
    if (len + strlen(partition_key) > PUT_MAX_RECORD_BYTES)
        return -EMSGSIZE;
    struct put_entry e = {malloc(len ? len : 1), len, strdup(partition_key), 0};
    if (e.data != NULL && len > 0)
        memcpy(e.data, data, len);
    if (e.data == NULL || e.key == NULL ||
        queue_push_back(&p->queue, &e) != 0) {
        entry_free(&e);
        return -ENOMEM;
    }
    putter_pump(p);
    return 0;
}

void kinesis_putter_set_retry(struct kinesis_putter *p, uint32_t max_attempts,
                              uint32_t backoff_base_ms)
{
    p->max_attempts = max_attempts > 0 ? max_attempts : 1;
    p->backoff_base_ms = backoff_base_ms;
}

size_t kinesis_putter_pending(const struct kinesis_putter *p)
{
    return p->queue.count + p->in_flight;
}

/*
 * Flush the queue and call done_cb(arg, error) once every record was
 * accepted (error NULL) or the run failed. done_cb runs on a later loop
 * turn, after the putter closed its timer, so it may call
 * kinesis_putter_free().
 */
void kinesis_putter_flush(struct kinesis_putter *p)
{
    p->flushing = true;
    putter_pump(p);
}

void kinesis_putter_finish(struct kinesis_putter *p,
                           void (*done_cb)(void *arg, const char *error),
                           void *arg)
{
    if (p->finishing)
        return;
    p->finishing = true;
    p->done_cb = done_cb;
    p->done_arg = arg;
    putter_pump(p);
    putter_check_done(p);
}

static void putter_destroy(struct kinesis_putter *p)
{
    for (int i = 0; i < PUT_MAX_IN_FLIGHT; i++) {
        struct put_call *call = &p->calls[i];
        if (call->http != NULL)
            httpc_cancel(call->http);
        for (size_t j = 0; j < call->count; j++)
            entry_free(&call->entries[j]);
        free(call->entries);
    }
    queue_clear(&p->queue);
    free(p->queue.items);
    aws_client_free(p->aws);
    free(p->stream);
    free(p->endpoint_url);
    free(p->error);
    free(p);
}

static void timer_closed(uv_handle_t *handle)
{
    struct kinesis_putter *p = handle->data;
    p->timer_closed = true;
    if (p->free_requested) {
        putter_destroy(p);
        return;
    }
    if (p->done_cb != NULL)
        p->done_cb(p->done_arg, p->error); /* may free p */
}

/*
 * Free the putter, abandoning queued records and calls in flight. Immediate
 * once done_cb ran; otherwise the timer closes first, so the loop must run
 * again before uv_loop_close().
 */
void kinesis_putter_free(struct kinesis_putter *p)
{
    if (p == NULL)
        return;
    if (p->timer_closed) {
        putter_destroy(p);
        return;
    }
    p->free_requested = true;
    for (int i = 0; i < PUT_MAX_IN_FLIGHT; i++) {
        if (p->calls[i].http != NULL)
            httpc_cancel(p->calls[i].http);
        p->calls[i].http = NULL;
    }
    if (!uv_is_closing((uv_handle_t *)&p->timer))
        uv_close((uv_handle_t *)&p->timer, timer_closed);
}
