/*
 * A minimal HTTP/1.1 server for /healthz, /readyz and /metrics on the
 * daemon's loop.
 *
 * Each connection carries one request and is closed after the reply
 * (Connection: close). The request line and headers must fit in
 * HTTP_MAX_REQUEST bytes and arrive within HTTP_REQUEST_TIMEOUT_MS of the
 * connect, so a slow or idle client occupies a connection for a bounded
 * time. At most HTTP_MAX_CONNECTIONS connections are open at once, and the
 * server closes any connection over that limit right after accepting it.
 */
#include "daemon/daemon.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>

#include "common/log.h"

#define HTTP_LOG "http"
/* Request line and headers, including the blank line that ends them. */
#define HTTP_MAX_REQUEST        8192
#define HTTP_REQUEST_TIMEOUT_MS 5000
/* Time to send a reply before the connection is dropped. */
#define HTTP_WRITE_TIMEOUT_MS 10000
#define HTTP_MAX_CONNECTIONS  32
/* Largest /metrics body; the rendering stops with an error past it. */
#define HTTP_MAX_BODY (4u * 1024 * 1024)
#define HTTP_STR_(x)  #x
#define HTTP_STR(x)   HTTP_STR_(x)

struct http_conn;

struct http_server {
    uv_tcp_t listener;
    const struct http_status *status;
    int port;
    struct http_conn *conns; /* open connections, doubly linked */
    size_t conn_count;
    int open_handles; /* listener plus two per connection */
    bool closing;
    void (*closed_cb)(void *arg);
    void *closed_arg;
    struct log_limit drop_limit;
};

struct http_conn {
    struct http_server *srv;
    struct http_conn *prev, *next;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t write_req;
    uv_shutdown_t shutdown_req;
    char request[HTTP_MAX_REQUEST];
    size_t request_len;
    struct strbuf reply;
    bool replied;
    bool closing;
    int closed_handles; /* of tcp and timer */
};

/* ---- closing --------------------------------------------------------- */

static void server_handle_closed(struct http_server *srv)
{
    srv->open_handles--;
    if (srv->closing && srv->open_handles == 0) {
        void (*cb)(void *) = srv->closed_cb;
        void *arg = srv->closed_arg;
        free(srv);
        if (cb != NULL)
            cb(arg);
    }
}

static void on_conn_handle_closed(uv_handle_t *handle)
{
    struct http_conn *conn = handle->data;
    struct http_server *srv = conn->srv;
    /* libuv does not promise an order of close callbacks, so the
     * connection is freed after the second one. */
    if (++conn->closed_handles == 2) {
        sb_free(&conn->reply);
        free(conn);
    }
    server_handle_closed(srv);
}

static void conn_close(struct http_conn *conn)
{
    struct http_server *srv = conn->srv;
    if (conn->closing)
        return;
    conn->closing = true;
    if (conn->prev != NULL)
        conn->prev->next = conn->next;
    else
        srv->conns = conn->next;
    if (conn->next != NULL)
        conn->next->prev = conn->prev;
    srv->conn_count--;
    uv_close((uv_handle_t *)&conn->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&conn->timer, on_conn_handle_closed);
}

static void on_listener_closed(uv_handle_t *handle)
{
    server_handle_closed(handle->data);
}

void http_server_close(struct http_server *srv, void (*closed_cb)(void *arg),
                       void *arg)
{
    if (srv->closing)
        return;
    srv->closing = true;
    srv->closed_cb = closed_cb;
    srv->closed_arg = arg;
    while (srv->conns != NULL)
        conn_close(srv->conns);
    uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

/* ---- replies --------------------------------------------------------- */

/*
 * Log why a connection is dropped, at most 5 lines in 10 s, with the
 * number of lines left out before.
 */
static void log_dropped(struct http_server *srv, const char *why)
{
    uint32_t suppressed = 0;
    if (!log_limit_allow(&srv->drop_limit, (uint64_t)log_now_ms(), &suppressed))
        return;
    if (suppressed > 0)
        log_warn(HTTP_LOG, NULL,
                 "closed an HTTP connection: %s (%u similar lines left out)",
                 why, suppressed);
    else
        log_warn(HTTP_LOG, NULL, "closed an HTTP connection: %s", why);
}

static void on_timeout(uv_timer_t *timer)
{
    struct http_conn *conn = timer->data;
    log_dropped(conn->srv,
                conn->replied
                    ? "the client did not read the reply within " HTTP_STR(
                          HTTP_WRITE_TIMEOUT_MS) " ms"
                    : "the client did not send a whole request "
                      "within " HTTP_STR(HTTP_REQUEST_TIMEOUT_MS) " ms");
    conn_close(conn);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void on_written(uv_write_t *req, int status)
{
    struct http_conn *conn = req->data;
    if (conn->closing)
        return;
    /* Send FIN and let the client close, so it reads the whole reply. */
    if (status != 0 || uv_shutdown(&conn->shutdown_req,
                                   (uv_stream_t *)&conn->tcp, on_shutdown) != 0)
        conn_close(conn);
}

static const char *status_text(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/*
 * Send a complete reply and close the connection after it. With head_only
 * the headers keep the body's length but the body is left out.
 *
 * NOTE: a request body is never read. When a client sends one, for example
 * a POST that gets 405, the close may reset the connection before the
 * client reads the reply.
 */
static void send_reply(struct http_conn *conn, int code,
                       const char *content_type, const char *body,
                       size_t body_len, bool head_only)
{
    struct strbuf *r = &conn->reply;

    uv_read_stop((uv_stream_t *)&conn->tcp);
    conn->replied = true;
    uv_timer_start(&conn->timer, on_timeout, HTTP_WRITE_TIMEOUT_MS, 0);
    sb_printf(r,
              "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n",
              code, status_text(code), content_type, body_len);
    if (code == 405)
        sb_puts(r, "Allow: GET, HEAD\r\n");
    sb_puts(r, "\r\n");
    if (!head_only)
        sb_append(r, body, body_len);
    if (sb_error(r) != 0) {
        log_error(HTTP_LOG, NULL,
                  "failed to build an HTTP reply of %zu bytes: out of memory; "
                  "closing the connection",
                  body_len);
        conn_close(conn);
        return;
    }
    uv_buf_t buf = uv_buf_init(r->data, (unsigned)r->len);
    if (uv_write(&conn->write_req, (uv_stream_t *)&conn->tcp, &buf, 1,
                 on_written) != 0)
        conn_close(conn);
}

static void send_text(struct http_conn *conn, int code, const char *text,
                      bool head_only)
{
    send_reply(conn, code, "text/plain; charset=utf-8", text, strlen(text),
               head_only);
}

/* Returns NULL when ready, else why not. */
static const char *not_ready_reason(const struct http_status *st)
{
    if (st->stopping)
        return "stopping";
    if (st->pipeline == NULL)
        return "the store is not open yet";
    if (!st->reader_ready)
        return "the first ListShards has not succeeded yet";
    return NULL;
}

static void serve_metrics(struct http_conn *conn, bool head_only)
{
    struct strbuf body;
    sb_init(&body, HTTP_MAX_BODY);
    metrics_render(conn->srv->status, &body);
    if (sb_error(&body) != 0) {
        log_error(HTTP_LOG, NULL,
                  "failed to render /metrics: %s at %zu bytes (the limit is "
                  "%u bytes)",
                  sb_error(&body) == -ENOMEM ? "out of memory"
                                             : "the body is too large",
                  body.len, HTTP_MAX_BODY);
        send_text(conn, 500, "failed to render the metrics\n", head_only);
    } else {
        send_reply(conn, 200, "text/plain; version=0.0.4; charset=utf-8",
                   body.data != NULL ? body.data : "", body.len, head_only);
    }
    sb_free(&body);
}

/* ---- requests -------------------------------------------------------- */

static bool is_token_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
           (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL);
}

/*
 * Check the header lines between start and end (each ending in "\r\n" or
 * "\n"): a field name of token characters, a colon, and a value without
 * control characters other than tab.
 */
static bool headers_valid(const char *p, const char *end)
{
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol != NULL ? eol : end;
        if (line_end > p && line_end[-1] == '\r')
            line_end--;
        if (line_end == p)
            return true; /* the blank line */
        const char *q = p;
        while (q < line_end && is_token_char(*q))
            q++;
        if (q == p || q == line_end || *q != ':')
            return false;
        for (q++; q < line_end; q++) {
            unsigned char c = (unsigned char)*q;
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                return false;
        }
        p = eol != NULL ? eol + 1 : end;
    }
    return true;
}

/* Route a complete request: request line and headers up to end. */
static void handle_request(struct http_conn *conn, const char *end)
{
    const char *p = conn->request;
    const char *line_end = memchr(p, '\n', (size_t)(end - p));
    size_t line_len = (size_t)(line_end - p);
    if (line_len > 0 && p[line_len - 1] == '\r')
        line_len--;

    /* method SP request-target SP HTTP-version */
    const char *sp1 = memchr(p, ' ', line_len);
    const char *sp2 =
        sp1 != NULL ? memchr(sp1 + 1, ' ', line_len - (size_t)(sp1 + 1 - p))
                    : NULL;
    if (sp1 == NULL || sp2 == NULL || sp1 == p || sp2 == sp1 + 1 ||
        sp1[1] != '/') {
        send_text(conn, 400, "invalid request line\n", false);
        return;
    }
    for (const char *q = p; q < sp1; q++) {
        if (!is_token_char(*q)) {
            send_text(conn, 400, "invalid method\n", false);
            return;
        }
    }
    for (const char *q = sp1 + 1; q < sp2; q++) {
        if ((unsigned char)*q <= 0x20 || *q == 0x7f) {
            send_text(conn, 400, "invalid request target\n", false);
            return;
        }
    }
    size_t version_len = line_len - (size_t)(sp2 + 1 - p);
    if (version_len != 8 || (memcmp(sp2 + 1, "HTTP/1.1", 8) != 0 &&
                             memcmp(sp2 + 1, "HTTP/1.0", 8) != 0)) {
        send_text(conn, 400, "unsupported HTTP version: use HTTP/1.1\n", false);
        return;
    }
    if (!headers_valid(line_end + 1, end)) {
        send_text(conn, 400, "invalid header line\n", false);
        return;
    }

    size_t method_len = (size_t)(sp1 - p);
    bool get = method_len == 3 && memcmp(p, "GET", 3) == 0;
    bool head = method_len == 4 && memcmp(p, "HEAD", 4) == 0;
    /* The path ends at the query string, which every endpoint ignores. */
    const char *path = sp1 + 1;
    size_t path_len = (size_t)(sp2 - path);
    const char *query = memchr(path, '?', path_len);
    if (query != NULL)
        path_len = (size_t)(query - path);

    enum { HEALTHZ, READYZ, METRICS, UNKNOWN } target = UNKNOWN;
    if (path_len == 8 && memcmp(path, "/healthz", 8) == 0)
        target = HEALTHZ;
    else if (path_len == 7 && memcmp(path, "/readyz", 7) == 0)
        target = READYZ;
    else if (path_len == 8 && memcmp(path, "/metrics", 8) == 0)
        target = METRICS;

    if (target == UNKNOWN) {
        send_text(conn, 404,
                  "not found: the endpoints are /healthz, "
                  "/readyz and /metrics\n",
                  head);
        return;
    }
    if (!get && !head) {
        send_text(conn, 405, "method not allowed: use GET or HEAD\n", false);
        return;
    }
    if (target == HEALTHZ) {
        send_text(conn, 200, "ok\n", head);
    } else if (target == READYZ) {
        const char *reason = not_ready_reason(conn->srv->status);
        if (reason == NULL) {
            send_text(conn, 200, "ready\n", head);
        } else {
            char text[128];
            snprintf(text, sizeof text, "not ready: %s\n", reason);
            send_text(conn, 503, text, head);
        }
    } else {
        serve_metrics(conn, head);
    }
}

/* Returns the end of the headers (after the blank line), or NULL. */
static const char *find_headers_end(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < len && p[i + 1] == '\n')
            return p + i + 2;
        if (i + 2 < len && p[i + 1] == '\r' && p[i + 2] == '\n')
            return p + i + 3;
    }
    return NULL;
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    struct http_conn *conn = handle->data;
    (void)suggested;
    buf->base = conn->request + conn->request_len;
    buf->len = sizeof conn->request - conn->request_len;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct http_conn *conn = stream->data;
    (void)buf;
    if (nread == 0 || conn->replied)
        return;
    if (nread < 0) {
        /* EOF before a whole request, or a reset. */
        conn_close(conn);
        return;
    }
    size_t scanned = conn->request_len;
    conn->request_len += (size_t)nread;
    /* Rescan a few bytes before the new data: the blank line may span
     * two reads. */
    size_t from = scanned > 3 ? scanned - 3 : 0;
    const char *end =
        find_headers_end(conn->request + from, conn->request_len - from);
    if (end != NULL) {
        handle_request(conn, end);
        return;
    }
    if (conn->request_len == sizeof conn->request)
        send_text(conn, 431,
                  "request line and headers are over the limit of " HTTP_STR(
                      HTTP_MAX_REQUEST) " bytes\n",
                  false);
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct http_server *srv = listener->data;
    if (status != 0) {
        log_warn(HTTP_LOG, NULL, "failed to accept an HTTP connection: %s",
                 uv_strerror(status));
        return;
    }
    struct http_conn *conn = calloc(1, sizeof *conn);
    if (conn == NULL) {
        log_error(HTTP_LOG, NULL,
                  "failed to accept an HTTP connection: out of memory");
        return;
    }
    conn->srv = srv;
    sb_init(&conn->reply, HTTP_MAX_BODY + 1024);
    uv_tcp_init(listener->loop, &conn->tcp);
    uv_timer_init(listener->loop, &conn->timer);
    conn->tcp.data = conn->timer.data = conn;
    conn->write_req.data = conn->shutdown_req.data = conn;
    conn->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = conn;
    srv->conns = conn;
    srv->conn_count++;
    srv->open_handles += 2;

    int rc = uv_accept(listener, (uv_stream_t *)&conn->tcp);
    if (rc != 0) {
        log_warn(HTTP_LOG, NULL, "failed to accept an HTTP connection: %s",
                 uv_strerror(rc));
        conn_close(conn);
        return;
    }
    if (srv->conn_count > HTTP_MAX_CONNECTIONS) {
        log_dropped(srv, "the limit of " HTTP_STR(
                             HTTP_MAX_CONNECTIONS) " open connections "
                                                   "was reached");
        conn_close(conn);
        return;
    }
    uv_timer_start(&conn->timer, on_timeout, HTTP_REQUEST_TIMEOUT_MS, 0);
    rc = uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read);
    if (rc != 0) {
        log_warn(HTTP_LOG, NULL, "failed to read an HTTP connection: %s",
                 uv_strerror(rc));
        conn_close(conn);
    }
}

/* ---- start-up -------------------------------------------------------- */

/* Split "HOST:PORT" or "[HOST]:PORT" into host and port. */
static int split_listen(const char *listen, char *host, size_t host_len,
                        char *port, size_t port_len)
{
    const char *colon = strrchr(listen, ':');
    if (colon == NULL)
        return -1;
    const char *h = listen;
    size_t n = (size_t)(colon - listen);
    if (n >= 2 && h[0] == '[' && h[n - 1] == ']') {
        h++;
        n -= 2;
    }
    if (n == 0 || n >= host_len || strlen(colon + 1) >= port_len)
        return -1;
    memcpy(host, h, n);
    host[n] = '\0';
    strcpy(port, colon + 1);
    return 0;
}

static int bind_listener(struct http_server *srv, uv_loop_t *loop,
                         const char *listen)
{
    char host[256], port[8];
    if (split_listen(listen, host, sizeof host, port, sizeof port) != 0) {
        log_error(HTTP_LOG, NULL,
                  "invalid http.listen \"%s\": expected HOST:PORT", listen);
        return -1;
    }
    /* Synchronous: a NULL callback makes uv_getaddrinfo resolve now. */
    uv_getaddrinfo_t req;
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    int rc = uv_getaddrinfo(loop, &req, NULL, host, port, &hints);
    if (rc != 0) {
        log_error(HTTP_LOG, NULL,
                  "failed to resolve the host of http.listen \"%s\": %s",
                  listen, uv_strerror(rc));
        return -1;
    }
    rc = uv_tcp_bind(&srv->listener, req.addrinfo->ai_addr, 0);
    uv_freeaddrinfo(req.addrinfo);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&srv->listener, 64, on_connection);
    if (rc != 0) {
        log_error(HTTP_LOG, NULL,
                  "failed to listen on http.listen \"%s\": %s; choose a free "
                  "port, or port 0 for any",
                  listen, uv_strerror(rc));
        return -1;
    }

    struct sockaddr_storage addr;
    int addr_len = sizeof addr;
    char ip[64] = "?";
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&addr, &addr_len);
    if (addr.ss_family == AF_INET6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
        uv_ip6_name(a6, ip, sizeof ip);
        srv->port = ntohs(a6->sin6_port);
        log_info(HTTP_LOG, NULL, "HTTP server listening on [%s]:%d", ip,
                 srv->port);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
        uv_ip4_name(a4, ip, sizeof ip);
        srv->port = ntohs(a4->sin_port);
        log_info(HTTP_LOG, NULL, "HTTP server listening on %s:%d", ip,
                 srv->port);
    }
    return 0;
}

struct http_server *http_server_start(uv_loop_t *loop, const char *listen,
                                      const struct http_status *status)
{
    struct http_server *srv = calloc(1, sizeof *srv);
    if (srv == NULL) {
        log_error(HTTP_LOG, NULL,
                  "failed to start the HTTP server: out of memory");
        return NULL;
    }
    srv->status = status;
    srv->drop_limit = (struct log_limit)LOG_LIMIT_INIT(10000, 5);
    uv_tcp_init(loop, &srv->listener);
    srv->listener.data = srv;
    srv->open_handles = 1;
    if (bind_listener(srv, loop, listen) != 0) {
        /* The caller runs the loop to close its other handles too. */
        http_server_close(srv, NULL, NULL);
        return NULL;
    }
    return srv;
}
