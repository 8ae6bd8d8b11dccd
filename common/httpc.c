/*
 * libcurl's multi_socket interface on a libuv loop. libcurl reports which
 * sockets to watch through the socket callback (one uv_poll_t each) and when to
 * call it back through the timer callback (one uv_timer_t). Transfers that
 * finished are collected with curl_multi_info_read() after each
 * curl_multi_socket_action().
 *
 * Memory rules: a libuv handle lives until its close callback, so socket
 * contexts and the client itself are freed there. Cancelled calls are
 * removed from the multi handle at once but freed from a uv_idle_t, so that
 * a call can be cancelled from inside any callback. This is the only file in
 * the project that includes curl/curl.h.
 */
#include "common/httpc.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "common/strbuf.h"

/* A socket that libcurl asked us to watch. */
struct httpc_socket {
    uv_poll_t poll; /* poll.data is the client */
    curl_socket_t fd;
    struct httpc_socket *next; /* in client->sockets */
};

enum call_state {
    CALL_ACTIVE, /* added to the multi handle */
    CALL_DONE,   /* removed; the done callback is running */
    CALL_DEAD,   /* removed; waits in client->dead to be freed */
};

struct httpc_call {
    struct httpc *client;
    CURL *easy;
    struct curl_slist *headers;
    char *body;             /* copy of the request body */
    struct strbuf response; /* max is the request's max_response */
    bool too_large;
    bool out_of_memory;
    enum call_state state;
    httpc_done_cb cb;
    void (*on_cancel)(void *arg);
    void *arg;
    char error_text[CURL_ERROR_SIZE];
    struct httpc_call *prev, *next; /* in client->active or client->dead */
};

struct httpc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t timer; /* libcurl's timeout */
    uv_idle_t reaper; /* frees client->dead on the next loop iteration */
    struct httpc_socket *sockets;
    struct httpc_call *active;
    struct httpc_call *dead;
    size_t pending;
    unsigned open_handles;   /* uv handles whose close callback has not run */
    unsigned dispatch_depth; /* > 0 while transfers are being completed */
    bool closing;
    bool torn_down;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static CURLcode global_result = CURLE_FAILED_INIT;

static void global_init_once(void)
{
    global_result = curl_global_init(CURL_GLOBAL_DEFAULT);
}

int httpc_global_init(void)
{
    pthread_once(&global_once, global_init_once);
    return global_result == CURLE_OK ? 0 : -EIO;
}

static void list_push(struct httpc_call **head, struct httpc_call *call)
{
    call->prev = NULL;
    call->next = *head;
    if (*head != NULL)
        (*head)->prev = call;
    *head = call;
}

static void list_remove(struct httpc_call **head, struct httpc_call *call)
{
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        *head = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

/* Free a call that is no longer in the multi handle. */
static void free_call(struct httpc_call *call)
{
    if (call->easy != NULL)
        curl_easy_cleanup(call->easy);
    curl_slist_free_all(call->headers);
    free(call->body);
    sb_free(&call->response);
    free(call);
}

/* Free the client once teardown has started and every handle is closed. */
static void finish_close(struct httpc *client)
{
    if (!client->torn_down || client->open_handles > 0)
        return;

    void (*closed_cb)(void *arg) = client->closed_cb;
    void *closed_arg = client->closed_arg;
    free(client);
    if (closed_cb != NULL)
        closed_cb(closed_arg);
}

static void on_handle_closed(uv_handle_t *handle)
{
    struct httpc *client = handle->data;

    client->open_handles--;
    finish_close(client);
}

static void on_socket_closed(uv_handle_t *handle)
{
    struct httpc_socket *sock = (struct httpc_socket *)handle;
    struct httpc *client = handle->data;

    free(sock);
    client->open_handles--;
    finish_close(client);
}

/*
 * Stop watching a socket and close its poll handle. The socket itself
 * belongs to libcurl, which closes it after this.
 */
static void close_socket(struct httpc *client, struct httpc_socket *sock)
{
    for (struct httpc_socket **p = &client->sockets; *p != NULL;
         p = &(*p)->next) {
        if (*p == sock) {
            *p = sock->next;
            break;
        }
    }
    curl_multi_assign(client->multi, sock->fd, NULL);
    uv_poll_stop(&sock->poll);
    uv_close((uv_handle_t *)&sock->poll, on_socket_closed);
}

/* Map a libcurl result to the error reported to the caller. */
static enum httpc_error map_result(const struct httpc_call *call,
                                   CURLcode result, long status)
{
    if (result == CURLE_OK)
        return HTTPC_OK;
    if (call->too_large || result == CURLE_FILESIZE_EXCEEDED)
        return HTTPC_ERR_TOO_LARGE;
    if (call->out_of_memory)
        return HTTPC_ERR_INTERNAL;

    switch (result) {
    case CURLE_OPERATION_TIMEDOUT:
        return HTTPC_ERR_TIMEOUT;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
        return HTTPC_ERR_CONNECT;
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
        /* A reset before the status line means the request never got in. */
        return status == 0 ? HTTPC_ERR_CONNECT : HTTPC_ERR_TRANSFER;
    case CURLE_OUT_OF_MEMORY:
    case CURLE_FAILED_INIT:
    case CURLE_BAD_FUNCTION_ARGUMENT:
        return HTTPC_ERR_INTERNAL;
    default:
        return HTTPC_ERR_TRANSFER;
    }
}

/* Remove a finished call, run its done callback, then free it. */
static void complete_call(struct httpc *client, struct httpc_call *call,
                          CURLcode result)
{
    struct httpc_response resp = {0};
    char too_large_text[96];

    list_remove(&client->active, call);
    client->pending--;
    curl_multi_remove_handle(client->multi, call->easy);
    call->state = CALL_DONE;

    curl_easy_getinfo(call->easy, CURLINFO_RESPONSE_CODE, &resp.status);
    resp.error = map_result(call, result, resp.status);
    resp.body = "";
    if (resp.error == HTTPC_OK && call->response.data != NULL) {
        resp.body = call->response.data;
        resp.body_len = call->response.len;
    }
    if (resp.error == HTTPC_ERR_TOO_LARGE) {
        snprintf(too_large_text, sizeof too_large_text,
                 "response body larger than %zu bytes", call->response.max);
        resp.error_text = too_large_text;
    } else if (resp.error != HTTPC_OK) {
        resp.error_text = call->error_text[0] != '\0'
                              ? call->error_text
                              : curl_easy_strerror(result);
    }

    call->cb(call->arg, &resp);
    free_call(call);
}

/*
 * Complete every transfer that libcurl reports as done. Stops early when a
 * done callback closed the client, because the teardown follows.
 */
static void complete_transfers(struct httpc *client)
{
    CURLMsg *msg;
    int left;

    while (!client->closing &&
           (msg = curl_multi_info_read(client->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;

        struct httpc_call *call = NULL;
        CURLcode result = msg->data.result;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &call);
        complete_call(client, call, result);
    }
}

static void teardown(struct httpc *client);

/* Let libcurl act on a socket event or timeout, then complete transfers. */
static void drive(struct httpc *client, curl_socket_t fd, int events)
{
    int running = 0;

    client->dispatch_depth++;
    curl_multi_socket_action(client->multi, fd, events, &running);
    complete_transfers(client);
    client->dispatch_depth--;

    /* httpc_close() from a done callback leaves the teardown to here. */
    if (client->closing && client->dispatch_depth == 0)
        teardown(client);
}

static void on_poll(uv_poll_t *poll, int status, int events)
{
    struct httpc_socket *sock = (struct httpc_socket *)poll;
    int flags = 0;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    drive(poll->data, sock->fd, flags);
}

static void on_timer(uv_timer_t *timer)
{
    drive(timer->data, CURL_SOCKET_TIMEOUT, 0);
}

/*
 * CURLMOPT_TIMERFUNCTION: libcurl wants curl_multi_socket_action() called
 * with CURL_SOCKET_TIMEOUT after timeout_ms, or never when it is -1. It must
 * not be called from here, so a timeout of 0 also goes through the timer.
 */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    struct httpc *client = userp;

    (void)multi;
    if (client->closing)
        return 0;
    if (timeout_ms < 0)
        return uv_timer_stop(&client->timer) == 0 ? 0 : -1;
    return uv_timer_start(&client->timer, on_timer, (uint64_t)timeout_ms, 0) ==
                   0
               ? 0
               : -1;
}

/* Create the poll handle for a socket libcurl has not reported before. */
static struct httpc_socket *open_socket(struct httpc *client, curl_socket_t fd)
{
    struct httpc_socket *sock = calloc(1, sizeof *sock);

    if (sock == NULL)
        return NULL;
    if (uv_poll_init_socket(client->loop, &sock->poll, fd) != 0) {
        free(sock);
        return NULL;
    }
    sock->poll.data = client;
    sock->fd = fd;
    sock->next = client->sockets;
    client->sockets = sock;
    client->open_handles++;
    curl_multi_assign(client->multi, fd, sock);
    return sock;
}

/*
 * CURLMOPT_SOCKETFUNCTION: start, change or stop watching socket fd.
 * Returning -1 makes libcurl (7.85 and later) fail every transfer.
 * libcurl also calls this from curl_multi_cleanup() for cached connections.
 */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp)
{
    struct httpc *client = userp;
    struct httpc_socket *sock = socketp;
    int events = 0;

    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (sock != NULL)
            close_socket(client, sock);
        return 0;
    }
    if (client->closing)
        return 0;

    if (sock == NULL)
        sock = open_socket(client, fd);
    if (sock == NULL)
        return -1;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&sock->poll, events, on_poll) == 0 ? 0 : -1;
}

/* CURLOPT_WRITEFUNCTION: store the body, aborting past max_response. */
static size_t write_cb(char *data, size_t size, size_t nmemb, void *userp)
{
    struct httpc_call *call = userp;
    size_t n = size * nmemb;
    int rc = sb_append(&call->response, data, n);

    if (rc == -EMSGSIZE)
        call->too_large = true;
    else if (rc != 0)
        call->out_of_memory = true;

    /* Any count other than n makes libcurl fail with CURLE_WRITE_ERROR. */
    return rc == 0 ? n : 0;
}

int httpc_new(uv_loop_t *loop, struct httpc **out)
{
    struct httpc *client;

    *out = NULL;
    if (httpc_global_init() != 0)
        return -EIO;
    client = calloc(1, sizeof *client);
    if (client == NULL)
        return -ENOMEM;
    client->loop = loop;
    client->multi = curl_multi_init();
    if (client->multi == NULL) {
        free(client);
        return -ENOMEM;
    }

    curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client);
    curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client);

    /* uv_timer_init() and uv_idle_init() only fill in the struct and
     * return 0 on Unix (libuv 1.44). */
    uv_timer_init(loop, &client->timer);
    uv_idle_init(loop, &client->reaper);
    client->timer.data = client;
    client->reaper.data = client;
    client->open_handles = 2;
    *out = client;
    return 0;
}

/* Build the header list: the caller's lines, then "Expect:". */
static int build_headers(struct httpc_call *call,
                         const struct httpc_request *req)
{
    for (size_t i = 0; i <= req->header_count; i++) {
        /* An empty "Expect:" stops libcurl from sending
         * "Expect: 100-continue" and waiting for the reply to it. */
        const char *line = i < req->header_count ? req->headers[i] : "Expect:";
        if (line == NULL || strpbrk(line, "\r\n") != NULL)
            return -EINVAL;

        struct curl_slist *list = curl_slist_append(call->headers, line);
        if (list == NULL)
            return -ENOMEM;
        call->headers = list;
    }
    return 0;
}

/* Apply the options of every request; returns the first failure. */
static CURLcode set_common_options(struct httpc_call *call,
                                   const struct httpc_request *req)
{
    CURL *easy = call->easy;
    long connect_ms =
        req->connect_timeout_ms > 0 ? req->connect_timeout_ms : req->timeout_ms;
    CURLcode rc = curl_easy_setopt(easy, CURLOPT_URL, req->url);

    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
    /* An empty proxy disables proxies, http_proxy and friends included. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_PROXY, "");
    /* libcurl 7.88 would pick HTTP/2 for https:// URLs. HTTP/1.1 is what
     * the loopback tests exercise, and botocore (urllib3) speaks only 1.1. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_HTTP_VERSION,
                              (long)CURL_HTTP_VERSION_1_1);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, req->timeout_ms);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_HTTPHEADER, call->headers);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, write_cb);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_WRITEDATA, call);
    /* Fails early when the reply announces a too large Content-Length. */
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE,
                              (curl_off_t)req->max_response);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, call->error_text);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_PRIVATE, call);
    return rc;
}

/* Set the method and, for POST and PUT, the body copy. */
static CURLcode set_method(struct httpc_call *call,
                           const struct httpc_request *req)
{
    CURL *easy = call->easy;
    CURLcode rc;

    if (strcmp(req->method, "GET") == 0)
        return curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);

    rc = curl_easy_setopt(easy, CURLOPT_POST, 1L);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                              (curl_off_t)req->body_len);
    if (rc == CURLE_OK)
        rc = curl_easy_setopt(easy, CURLOPT_POSTFIELDS, call->body);
    /* A PUT sends its body the way a POST does. */
    if (rc == CURLE_OK && strcmp(req->method, "PUT") == 0)
        rc = curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "PUT");
    return rc;
}

static bool request_is_valid(const struct httpc_request *req, httpc_done_cb cb)
{
    return cb != NULL && req->url != NULL && req->method != NULL &&
           (strcmp(req->method, "GET") == 0 ||
            strcmp(req->method, "POST") == 0 ||
            strcmp(req->method, "PUT") == 0) &&
           req->timeout_ms > 0 && req->connect_timeout_ms >= 0 &&
           (req->body != NULL || req->body_len == 0) &&
           (req->headers != NULL || req->header_count == 0);
}

/* Allocate a call with its own copies of the body and the header lines. */
static struct httpc_call *new_call(struct httpc *client,
                                   const struct httpc_request *req)
{
    struct httpc_call *call = calloc(1, sizeof *call);

    if (call == NULL)
        return NULL;
    call->client = client;
    sb_init(&call->response, req->max_response);
    call->body = malloc(req->body_len > 0 ? req->body_len : 1);
    call->easy = curl_easy_init();
    if (call->body == NULL || call->easy == NULL ||
        build_headers(call, req) != 0) {
        free_call(call);
        return NULL;
    }
    if (req->body_len > 0)
        memcpy(call->body, req->body, req->body_len);
    return call;
}

struct httpc_call *httpc_start(struct httpc *client,
                               const struct httpc_request *req,
                               httpc_done_cb cb, void *arg)
{
    struct httpc_call *call;

    if (client->closing || !request_is_valid(req, cb))
        return NULL;
    call = new_call(client, req);
    if (call == NULL)
        return NULL;
    call->cb = cb;
    call->on_cancel = req->on_cancel;
    call->arg = arg;

    if (set_common_options(call, req) != CURLE_OK ||
        set_method(call, req) != CURLE_OK ||
        curl_multi_add_handle(client->multi, call->easy) != CURLM_OK) {
        free_call(call);
        return NULL;
    }
    call->state = CALL_ACTIVE;
    list_push(&client->active, call);
    client->pending++;
    return call;
}

size_t httpc_pending(const struct httpc *client)
{
    return client->pending;
}

static void on_reap(uv_idle_t *idle)
{
    struct httpc *client = idle->data;

    uv_idle_stop(idle);
    while (client->dead != NULL) {
        struct httpc_call *call = client->dead;
        list_remove(&client->dead, call);
        free_call(call);
    }
}

/*
 * Take an active call out of the multi handle and queue it for freeing.
 * Removing an easy handle is allowed anywhere except inside a libcurl
 * callback, and no user code runs inside one here.
 */
static void abandon_call(struct httpc *client, struct httpc_call *call)
{
    list_remove(&client->active, call);
    client->pending--;
    curl_multi_remove_handle(client->multi, call->easy);
    call->state = CALL_DEAD;
    list_push(&client->dead, call);

    if (call->on_cancel != NULL)
        call->on_cancel(call->arg);
}

void httpc_cancel(struct httpc_call *call)
{
    if (call == NULL || call->state != CALL_ACTIVE)
        return;

    struct httpc *client = call->client;
    abandon_call(client, call);
    if (!client->closing)
        uv_idle_start(&client->reaper, on_reap);
}

/*
 * Free every call, close every handle and clean up the multi handle. The
 * client itself is freed by the last close callback (finish_close).
 */
static void teardown(struct httpc *client)
{
    if (client->torn_down)
        return;
    client->torn_down = true;

    on_reap(&client->reaper);

    /* Close the poll handles before libcurl closes their sockets, and
     * unassign them so that curl_multi_cleanup() reports no stale context. */
    while (client->sockets != NULL)
        close_socket(client, client->sockets);
    curl_multi_cleanup(client->multi);
    client->multi = NULL;

    uv_timer_stop(&client->timer);
    uv_close((uv_handle_t *)&client->timer, on_handle_closed);
    uv_close((uv_handle_t *)&client->reaper, on_handle_closed);
}

void httpc_close(struct httpc *client, void (*closed_cb)(void *arg), void *arg)
{
    if (client->closing)
        return;
    client->closing = true;
    client->closed_cb = closed_cb;
    client->closed_arg = arg;

    while (client->active != NULL)
        abandon_call(client, client->active);

    /* Inside a done callback, drive() tears down once the callback returns. */
    if (client->dispatch_depth == 0)
        teardown(client);
}
