/*
 * Tests of the SigV4 signer, the libuv-driven HTTP client and the AWS call
 * layer. The signatures expected below were computed with botocore from the
 * AWS documentation's example keys. Network tests talk only to a server that
 * the test runs itself on 127.0.0.1.
 */
#include "tests/testlib.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/aws.h"
#include "common/httpc.h"
#include "common/sigv4.h"
#include "common/strbuf.h"

#define EXAMPLE_KEY_ID "AKIDEXAMPLE"
#define EXAMPLE_SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define EXAMPLE_TIME   1767225600 /* 20260101T000000Z */
#define IOT_HOST       "example-ats.iot.eu-west-1.amazonaws.com"
#define IOT_BODY       "{\"raceId\":\"R-7\",\"classId\":\"B\",\"second\":42}"
#define KINESIS_BODY                                                           \
    "{\"ShardIterator\": \"AAAAexampleIterator\", \"Limit\": 1000}"

/* Build credentials from string literals, so never clear them. */
static struct aws_credentials example_creds(const char *token)
{
    struct aws_credentials creds = {
        .access_key_id = (char *)EXAMPLE_KEY_ID,
        .secret_access_key = (char *)EXAMPLE_SECRET,
        .session_token = (char *)token,
    };
    return creds;
}

/* Canonical URI of wire_path, as a string owned by the caller. */
static char *canonical_uri_of(const char *wire_path)
{
    struct strbuf sb;

    sb_init(&sb, 4096);
    ASSERT_EQ(sigv4_canonical_uri(&sb, wire_path), 0);
    return sb_take(&sb, NULL);
}

/* Sign the IoT Publish request of the golden vectors. */
static void sign_iot_publish(const char *token, struct sigv4_output *out)
{
    struct aws_credentials creds = example_creds(token);
    char *uri = canonical_uri_of("/topics/leaderboards%2FR-7%2FB");
    struct sigv4_input in = {
        .method = "POST",
        .host = IOT_HOST,
        .canonical_uri = uri,
        .canonical_query = "qos=1",
        .payload = IOT_BODY,
        .payload_len = strlen(IOT_BODY),
        .region = "eu-west-1",
        .service = "iotdata",
        .unix_time = EXAMPLE_TIME,
    };

    ASSERT_STR_EQ(uri, "/topics/leaderboards%252FR-7%252FB");
    ASSERT_EQ(sigv4_sign(&in, &creds, out), 0);
    free(uri);
}

TEST(sigv4_iot_token)
{
    struct sigv4_output out;

    sign_iot_publish("EXAMPLETOKEN", &out);
    ASSERT_STR_EQ(out.amz_date, "20260101T000000Z");
    ASSERT_STR_EQ(out.payload_hash, "60151426d8d00a02988fbb54f8e6a7ae1a02fbb0"
                                    "126ba4ff79ef6f52229fd0b5");
    ASSERT_STR_EQ(out.signed_headers, "host;x-amz-date;x-amz-security-token");
    ASSERT_STR_EQ(out.signature, "3355bb93fb9f9692282ccd8d5a098edc052dc065"
                                 "22c0dfdb085544fae833cec3");
    ASSERT_STR_EQ(out.authorization,
                  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/"
                  "eu-west-1/iotdata/aws4_request, SignedHeaders=host;"
                  "x-amz-date;x-amz-security-token, Signature=3355bb93fb9f96"
                  "92282ccd8d5a098edc052dc06522c0dfdb085544fae833cec3");
}

TEST(sigv4_iot_no_token)
{
    static const char *const tokens[] = {NULL, ""};

    for (size_t i = 0; i < 2; i++) {
        struct sigv4_output out;
        sign_iot_publish(tokens[i], &out);
        ASSERT_STR_EQ(out.signed_headers, "host;x-amz-date");
        ASSERT_STR_EQ(out.signature, "cd8ca9dcdfe2f4a72d16b5c8668c2d28295c2438"
                                     "b32077ed4298992e397adc46");
    }
}

TEST(sigv4_kinesis_get_records)
{
    struct aws_credentials creds = example_creds("EXAMPLETOKEN");
    /* Mixed-case names and padded values test canonicalisation too. */
    struct sigv4_header headers[] = {
        {"X-Amz-Target", "  Kinesis_20131202.GetRecords "},
        {"Content-Type", "application/x-amz-json-1.1"},
    };
    char *uri = canonical_uri_of("/");
    struct sigv4_input in = {
        .method = "POST",
        .host = "kinesis.eu-west-1.amazonaws.com",
        .canonical_uri = uri,
        .canonical_query = "",
        .headers = headers,
        .header_count = 2,
        .payload = KINESIS_BODY,
        .payload_len = strlen(KINESIS_BODY),
        .region = "eu-west-1",
        .service = "kinesis",
        .unix_time = EXAMPLE_TIME,
    };
    struct sigv4_output out;

    ASSERT_STR_EQ(uri, "/");
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), 0);
    ASSERT_STR_EQ(out.signed_headers,
                  "content-type;host;x-amz-date;x-amz-security-token;"
                  "x-amz-target");
    ASSERT_STR_EQ(out.signature, "42d8b22fb33ca8ea653586ccae30c168bea8199e"
                                 "dae7129d1fb71b47a224acea");
    free(uri);
}

TEST(sigv4_canonical_uri_topics)
{
    static const char *const cases[][2] = {
        {"/topics/leaderboards%2FR%207%2FB%2B",
         "/topics/leaderboards%252FR%25207%252FB%252B"},
        {"/topics/leaderboards%2FR-7%2FB%3D1~x",
         "/topics/leaderboards%252FR-7%252FB%253D1~x"},
        {"", "/"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *uri = canonical_uri_of(cases[i][0]);
        ASSERT_STR_EQ(uri, cases[i][1]);
        free(uri);
    }
}

/* Encode s with sigv4_uri_encode(); returns an owned string. */
static char *encode(const char *s, bool encode_slash)
{
    struct strbuf sb;

    sb_init(&sb, 4096);
    ASSERT_EQ(sigv4_uri_encode(&sb, s, strlen(s), encode_slash), 0);
    return sb_take(&sb, NULL);
}

TEST(sigv4_uri_encode_rules)
{
    static const char *const cases[][3] = {
        /* input, encode_slash false, encode_slash true */
        {"R 7", "R%207", "R%207"},
        {"B+", "B%2B", "B%2B"},
        {"B=1", "B%3D1", "B%3D1"},
        {"a/b", "a/b", "a%2Fb"},
        {"AZaz09-_.~", "AZaz09-_.~", "AZaz09-_.~"},
        {"%\xc3\xa9*", "%25%C3%A9%2A", "%25%C3%A9%2A"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *kept = encode(cases[i][0], false);
        char *encoded = encode(cases[i][0], true);
        ASSERT_STR_EQ(kept, cases[i][1]);
        ASSERT_STR_EQ(encoded, cases[i][2]);
        free(kept);
        free(encoded);
    }
}

TEST(sigv4_canonical_query_sorts)
{
    static const char *const cases[][2] = {
        {"qos=1", "qos=1"},
        {"b=2&a=1&a=0", "a=0&a=1&b=2"},
        {"x=a%2fb&flag", "flag=&x=a%2Fb"},
        {"v=a+b c", "v=a%2Bb%20c"},
        {"", ""},
    };
    struct strbuf sb;

    sb_init(&sb, 4096);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        sb_reset(&sb);
        ASSERT_EQ(sigv4_canonical_query(&sb, cases[i][0]), 0);
        ASSERT_STR_EQ(sb.data != NULL ? sb.data : "", cases[i][1]);
    }
    sb_reset(&sb);
    ASSERT_EQ(sigv4_canonical_query(&sb, "a=%4"), -EINVAL);
    sb_free(&sb);
}

TEST(sigv4_rejects_bad_input)
{
    struct aws_credentials creds = example_creds(NULL);
    struct sigv4_header dup[] = {{"host", "other"}};
    struct sigv4_header newline[] = {{"x-a", "v\r\nx-b: w"}};
    struct sigv4_input in = {
        .method = "POST",
        .host = IOT_HOST,
        .canonical_uri = "/",
        .canonical_query = "",
        .region = "eu-west-1",
        .service = "iotdata",
        .unix_time = EXAMPLE_TIME,
    };
    struct sigv4_output out;

    in.headers = dup;
    in.header_count = 1;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
    in.headers = newline;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
    in.header_count = 0;
    creds.secret_access_key = NULL;
    ASSERT_EQ(sigv4_sign(&in, &creds, &out), -EINVAL);
}

TEST(sigv4_credentials_clear)
{
    struct aws_credentials creds = {
        .access_key_id = strdup("AKID"),
        .secret_access_key = strdup("secret"),
        .session_token = strdup("token"),
    };

    aws_credentials_clear(&creds);
    ASSERT_TRUE(creds.access_key_id == NULL);
    ASSERT_TRUE(creds.secret_access_key == NULL);
    ASSERT_TRUE(creds.session_token == NULL);
    aws_credentials_clear(&creds);
}

/* ---- A tiny HTTP/1.1 server on 127.0.0.1, on the test's own loop. ---- */

#define SERVER_MAX_HEADERS 32
#define SERVER_MAX_REQUEST (64 * 1024)

/* The last request the server received. */
struct received {
    char method[16];
    char target[1024];
    struct {
        char name[64];
        char value[4096];
    } headers[SERVER_MAX_HEADERS];
    size_t header_count;
    char body[4096];
    size_t body_len;
};

/*
 * The server's reply depends on the request path:
 *   /silent      never replies;
 *   /reset-head  resets the connection without replying;
 *   /reset-body  sends half a body, then resets;
 *   /large       sends large_len bytes with a Content-Length;
 *   /stream      sends large_len bytes without one, then closes;
 *   anything else gets status and body.
 */
struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    int port;
    int status;
    const char *body;
    size_t large_len;
    size_t connections;
    size_t requests;
    struct received last;
    struct connection *conns;
};

struct connection {
    uv_tcp_t tcp;
    struct server *server;
    struct strbuf in;
    struct connection *next;
};

struct write_request {
    uv_write_t req;
    struct connection *conn;
    char *data;
    int then; /* 0 keep open, 1 close, 2 reset */
};

static void on_connection_closed(uv_handle_t *handle)
{
    struct connection *conn = handle->data;
    struct server *server = conn->server;

    for (struct connection **p = &server->conns; *p != NULL; p = &(*p)->next) {
        if (*p == conn) {
            *p = conn->next;
            break;
        }
    }
    sb_free(&conn->in);
    free(conn);
}

static void close_connection(struct connection *conn, bool reset)
{
    uv_handle_t *handle = (uv_handle_t *)&conn->tcp;

    if (uv_is_closing(handle))
        return;
    if (reset)
        ASSERT_EQ(uv_tcp_close_reset(&conn->tcp, on_connection_closed), 0);
    else
        uv_close(handle, on_connection_closed);
}

/* A reset that waits until the client has read what was sent before it. */
struct delayed_reset {
    uv_timer_t timer;
    struct connection *conn;
};

static void on_reset_timer_closed(uv_handle_t *handle)
{
    free(handle->data);
}

static void on_reset_timer(uv_timer_t *timer)
{
    struct delayed_reset *reset = timer->data;

    close_connection(reset->conn, true);
    uv_close((uv_handle_t *)timer, on_reset_timer_closed);
}

static void on_written(uv_write_t *req, int status)
{
    struct write_request *wr = (struct write_request *)req;

    (void)status;
    if (wr->then == 1)
        close_connection(wr->conn, false);
    if (wr->then == 2) {
        /* Linux drops unread data when a reset arrives, so give the client
         * 100 ms to read the partial reply first. */
        struct delayed_reset *reset = calloc(1, sizeof *reset);
        ASSERT_TRUE(reset != NULL);
        reset->conn = wr->conn;
        reset->timer.data = reset;
        ASSERT_EQ(uv_timer_init(wr->conn->server->loop, &reset->timer), 0);
        ASSERT_EQ(uv_timer_start(&reset->timer, on_reset_timer, 100, 0), 0);
    }
    free(wr->data);
    free(wr);
}

/* Send len bytes of data (copied), then keep, close or reset. */
static void send_bytes(struct connection *conn, const char *data, size_t len,
                       int then)
{
    struct write_request *wr = calloc(1, sizeof *wr);

    ASSERT_TRUE(wr != NULL);
    wr->conn = conn;
    wr->then = then;
    wr->data = malloc(len + 1);
    ASSERT_TRUE(wr->data != NULL);
    memcpy(wr->data, data, len);
    uv_buf_t buf = uv_buf_init(wr->data, (unsigned)len);
    ASSERT_EQ(
        uv_write(&wr->req, (uv_stream_t *)&conn->tcp, &buf, 1, on_written), 0);
}

/* Send a reply with a body of len bytes of 'x' and optional length. */
static void send_filler(struct connection *conn, size_t len, bool with_length)
{
    struct strbuf sb;

    sb_init(&sb, len + 1024);
    if (with_length)
        sb_printf(&sb, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
    else
        sb_puts(&sb, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
    for (size_t i = 0; i < len; i++)
        sb_putc(&sb, 'x');
    ASSERT_EQ(sb_error(&sb), 0);
    send_bytes(conn, sb.data, sb.len, with_length ? 0 : 1);
    sb_free(&sb);
}

static void respond(struct connection *conn)
{
    struct server *server = conn->server;
    const char *path = server->last.target;
    static const char partial[] =
        "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789";
    struct strbuf sb;

    if (strcmp(path, "/silent") == 0)
        return;
    if (strcmp(path, "/reset-head") == 0) {
        close_connection(conn, true);
        return;
    }
    if (strcmp(path, "/reset-body") == 0) {
        send_bytes(conn, partial, strlen(partial), 2);
        return;
    }
    if (strcmp(path, "/large") == 0 || strcmp(path, "/stream") == 0) {
        send_filler(conn, server->large_len, strcmp(path, "/large") == 0);
        return;
    }

    sb_init(&sb, SERVER_MAX_REQUEST);
    sb_printf(&sb,
              "HTTP/1.1 %d Test\r\nContent-Type: application/json\r\n"
              "Content-Length: %zu\r\n\r\n%s",
              server->status, strlen(server->body), server->body);
    send_bytes(conn, sb.data, sb.len, 0);
    sb_free(&sb);
}

/* Parse one header line into the next slot of req. */
static void parse_header_line(struct received *req, const char *line,
                              size_t len)
{
    const char *colon = memchr(line, ':', len);

    ASSERT_TRUE(colon != NULL);
    ASSERT_TRUE(req->header_count < SERVER_MAX_HEADERS);
    size_t name_len = (size_t)(colon - line);
    ASSERT_TRUE(name_len < sizeof req->headers[0].name);
    for (size_t i = 0; i < name_len; i++)
        req->headers[req->header_count].name[i] =
            (char)tolower((unsigned char)line[i]);
    req->headers[req->header_count].name[name_len] = '\0';

    const char *value = colon + 1;
    const char *end = line + len;
    while (value < end && *value == ' ')
        value++;
    size_t value_len = (size_t)(end - value);
    ASSERT_TRUE(value_len < sizeof req->headers[0].value);
    memcpy(req->headers[req->header_count].value, value, value_len);
    req->headers[req->header_count].value[value_len] = '\0';
    req->header_count++;
}

/* Value of header name (lower-case) in req, or NULL. */
static const char *find_header(const struct received *req, const char *name)
{
    for (size_t i = 0; i < req->header_count; i++) {
        if (strcmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    }
    return NULL;
}

/*
 * Parse a complete request head of head_len bytes into req. Returns the
 * Content-Length.
 */
static size_t parse_head(struct received *req, const char *data,
                         size_t head_len)
{
    const char *line = data;
    const char *end = data + head_len;
    const char *eol = strstr(line, "\r\n");

    memset(req, 0, sizeof *req);
    ASSERT_EQ(sscanf(line, "%15s %1023s HTTP/1.1", req->method, req->target),
              2);
    for (line = eol + 2; line < end - 2; line = eol + 2) {
        eol = strstr(line, "\r\n");
        parse_header_line(req, line, (size_t)(eol - line));
    }
    const char *length = find_header(req, "content-length");
    return length != NULL ? (size_t)strtoul(length, NULL, 10) : 0;
}

/* Handle every complete request in conn->in. */
static void handle_input(struct connection *conn)
{
    struct server *server = conn->server;

    for (;;) {
        const char *head_end = strstr(conn->in.data, "\r\n\r\n");
        if (head_end == NULL)
            return;
        size_t head_len = (size_t)(head_end - conn->in.data) + 4;
        size_t body_len = parse_head(&server->last, conn->in.data, head_len);
        ASSERT_TRUE(body_len < sizeof server->last.body);
        if (conn->in.len < head_len + body_len)
            return;

        memcpy(server->last.body, conn->in.data + head_len, body_len);
        server->last.body_len = body_len;
        server->requests++;
        size_t used = head_len + body_len;
        memmove(conn->in.data, conn->in.data + used, conn->in.len - used + 1);
        conn->in.len -= used;
        respond(conn);
    }
}

static void on_alloc(uv_handle_t *handle, size_t size, uv_buf_t *buf)
{
    (void)handle;
    buf->base = malloc(size);
    buf->len = buf->base != NULL ? size : 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct connection *conn = stream->data;

    if (nread < 0)
        close_connection(conn, false);
    if (nread > 0) {
        ASSERT_EQ(sb_append(&conn->in, buf->base, (size_t)nread), 0);
        handle_input(conn);
    }
    free(buf->base);
}

static void on_connect(uv_stream_t *listener, int status)
{
    struct server *server = listener->data;
    struct connection *conn = calloc(1, sizeof *conn);

    ASSERT_EQ(status, 0);
    ASSERT_TRUE(conn != NULL);
    conn->server = server;
    sb_init(&conn->in, SERVER_MAX_REQUEST);
    ASSERT_EQ(uv_tcp_init(server->loop, &conn->tcp), 0);
    conn->tcp.data = conn;
    conn->next = server->conns;
    server->conns = conn;
    ASSERT_EQ(uv_accept(listener, (uv_stream_t *)&conn->tcp), 0);
    ASSERT_EQ(uv_read_start((uv_stream_t *)&conn->tcp, on_alloc, on_read), 0);
    server->connections++;
}

/* Bind to 127.0.0.1 on a free port and listen. */
static void server_start(struct server *server, uv_loop_t *loop)
{
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof bound;

    memset(server, 0, sizeof *server);
    server->loop = loop;
    server->status = 200;
    server->body = "{}";
    ASSERT_EQ(uv_ip4_addr("127.0.0.1", 0, &addr), 0);
    ASSERT_EQ(uv_tcp_init(loop, &server->listener), 0);
    server->listener.data = server;
    ASSERT_EQ(uv_tcp_bind(&server->listener, (struct sockaddr *)&addr, 0), 0);
    ASSERT_EQ(uv_listen((uv_stream_t *)&server->listener, 16, on_connect), 0);
    ASSERT_EQ(
        uv_tcp_getsockname(&server->listener, (struct sockaddr *)&bound, &len),
        0);
    server->port = ntohs(((struct sockaddr_in *)&bound)->sin_port);
}

static void server_stop(struct server *server)
{
    uv_close((uv_handle_t *)&server->listener, NULL);
    for (struct connection *c = server->conns; c != NULL; c = c->next)
        close_connection(c, false);
}

/* ---- Client side: a loop with the server, an httpc client and a guard. */

struct fixture {
    uv_loop_t loop;
    struct server server;
    struct httpc *http;
    uv_timer_t guard;
    bool closed;
};

static void on_guard(uv_timer_t *timer)
{
    (void)timer;
    test_fail(__FILE__, __LINE__, "the loop did not finish within 20 s");
}

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof *f);
    ASSERT_EQ(uv_loop_init(&f->loop), 0);
    server_start(&f->server, &f->loop);
    ASSERT_EQ(httpc_new(&f->loop, &f->http), 0);
    ASSERT_EQ(uv_timer_init(&f->loop, &f->guard), 0);
    ASSERT_EQ(uv_timer_start(&f->guard, on_guard, 20000, 0), 0);
    uv_unref((uv_handle_t *)&f->guard);
}

static void on_closed(void *arg)
{
    *(bool *)arg = true;
}

/* Close the client and the server, and check that nothing is left. */
static void fixture_close(struct fixture *f)
{
    if (f->http != NULL)
        httpc_close(f->http, on_closed, &f->closed);
    f->http = NULL;
    server_stop(&f->server);
    uv_close((uv_handle_t *)&f->guard, NULL);
    ASSERT_EQ(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    ASSERT_TRUE(f->closed);
    ASSERT_EQ(uv_loop_close(&f->loop), 0);
}

/* Run the loop one iteration; fail when nothing is left to wait for. */
static void run_once(struct fixture *f)
{
    if (uv_run(&f->loop, UV_RUN_ONCE) == 0)
        test_fail(__FILE__, __LINE__, "the loop ran out of events");
}

static void run_until(struct fixture *f, const bool *flag)
{
    while (!*flag)
        run_once(f);
}

/* A copy of one httpc response. */
struct result {
    bool done;
    int calls;
    int cancels;
    enum httpc_error error;
    long status;
    char body[8192];
    size_t body_len;
    char error_text[256];
};

static void on_done(void *arg, const struct httpc_response *resp)
{
    struct result *r = arg;

    r->done = true;
    r->calls++;
    r->error = resp->error;
    r->status = resp->status;
    ASSERT_TRUE(resp->body != NULL);
    ASSERT_TRUE(resp->body_len < sizeof r->body);
    memcpy(r->body, resp->body, resp->body_len + 1);
    r->body_len = resp->body_len;
    snprintf(r->error_text, sizeof r->error_text, "%s",
             resp->error_text != NULL ? resp->error_text : "");
}

static void on_cancel_count(void *arg)
{
    ((struct result *)arg)->cancels++;
}

static char *url_of(int port, const char *path)
{
    static char url[256];

    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", port, path);
    return url;
}

/* Start a GET of path on the fixture's server. */
static struct httpc_call *start_get(struct fixture *f, const char *path,
                                    long timeout_ms, size_t max_response,
                                    struct result *r)
{
    struct httpc_request req = {
        .method = "GET",
        .url = url_of(f->server.port, path),
        .timeout_ms = timeout_ms,
        .max_response = max_response,
        .on_cancel = on_cancel_count,
    };

    return httpc_start(f->http, &req, on_done, r);
}

TEST(httpc_get_ok)
{
    struct fixture f;
    struct result r = {0};

    fixture_init(&f);
    f.server.body = "{\"ok\":true}";
    ASSERT_TRUE(start_get(&f, "/ok", 5000, 1024, &r) != NULL);
    ASSERT_EQ(httpc_pending(f.http), 1);
    run_until(&f, &r.done);

    ASSERT_EQ(r.calls, 1);
    ASSERT_EQ(r.error, HTTPC_OK);
    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body, "{\"ok\":true}");
    ASSERT_EQ(r.body_len, strlen("{\"ok\":true}"));
    ASSERT_EQ(httpc_pending(f.http), 0);
    ASSERT_STR_EQ(f.server.last.method, "GET");
    ASSERT_STR_EQ(f.server.last.target, "/ok");
    fixture_close(&f);
    ASSERT_EQ(r.cancels, 0);
}

TEST(httpc_post_copies_body)
{
    struct fixture f;
    struct result r = {0};
    char body[] = "hello body";
    const char *headers[] = {"X-Test: 1"};
    struct httpc_request req = {
        .method = "POST",
        .headers = headers,
        .header_count = 1,
        .body = body,
        .body_len = strlen(body),
        .timeout_ms = 5000,
        .max_response = 1024,
    };

    fixture_init(&f);
    req.url = url_of(f.server.port, "/post");
    ASSERT_TRUE(httpc_start(f.http, &req, on_done, &r) != NULL);
    memset(body, 'z', strlen(body));
    run_until(&f, &r.done);

    ASSERT_EQ(r.error, HTTPC_OK);
    ASSERT_STR_EQ(f.server.last.method, "POST");
    ASSERT_MEM_EQ(f.server.last.body, f.server.last.body_len, "hello body",
                  strlen("hello body"));
    ASSERT_STR_EQ(find_header(&f.server.last, "x-test"), "1");
    ASSERT_TRUE(find_header(&f.server.last, "expect") == NULL);
    fixture_close(&f);
}

TEST(httpc_reuses_connection)
{
    struct fixture f;
    struct result first = {0}, second = {0};

    fixture_init(&f);
    ASSERT_TRUE(start_get(&f, "/one", 5000, 1024, &first) != NULL);
    run_until(&f, &first.done);
    ASSERT_TRUE(start_get(&f, "/two", 5000, 1024, &second) != NULL);
    run_until(&f, &second.done);

    ASSERT_EQ(first.error, HTTPC_OK);
    ASSERT_EQ(second.error, HTTPC_OK);
    ASSERT_EQ(f.server.requests, 2);
    ASSERT_EQ(f.server.connections, 1);
    fixture_close(&f);
}

TEST(httpc_timeout)
{
    struct fixture f;
    struct result r = {0};

    fixture_init(&f);
    uint64_t start = uv_hrtime();
    ASSERT_TRUE(start_get(&f, "/silent", 300, 1024, &r) != NULL);
    run_until(&f, &r.done);
    uint64_t elapsed_ms = (uv_hrtime() - start) / 1000000;

    ASSERT_EQ(r.error, HTTPC_ERR_TIMEOUT);
    ASSERT_TRUE(elapsed_ms >= 290);
    ASSERT_TRUE(elapsed_ms < 3000);
    ASSERT_TRUE(r.error_text[0] != '\0');
    fixture_close(&f);
}

TEST(httpc_connection_refused)
{
    struct fixture f;
    struct result r = {0};
    struct sockaddr_in addr = {.sin_family = AF_INET};
    socklen_t len = sizeof addr;
    /* A bound socket that does not listen: connecting to it is refused,
     * and holding it keeps other programs off the port. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    ASSERT_TRUE(fd >= 0);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, (struct sockaddr *)&addr, sizeof addr), 0);
    ASSERT_EQ(getsockname(fd, (struct sockaddr *)&addr, &len), 0);

    fixture_init(&f);
    f.server.port = ntohs(addr.sin_port);
    ASSERT_TRUE(start_get(&f, "/", 5000, 1024, &r) != NULL);
    run_until(&f, &r.done);

    ASSERT_EQ(r.error, HTTPC_ERR_CONNECT);
    fixture_close(&f);
    close(fd);
}

TEST(httpc_too_large)
{
    static const char *const paths[] = {"/large", "/stream"};

    for (size_t i = 0; i < 2; i++) {
        struct fixture f;
        struct result r = {0};

        fixture_init(&f);
        f.server.large_len = 5000;
        ASSERT_TRUE(start_get(&f, paths[i], 5000, 1000, &r) != NULL);
        run_until(&f, &r.done);
        ASSERT_EQ(r.error, HTTPC_ERR_TOO_LARGE);
        ASSERT_TRUE(strstr(r.error_text, "1000") != NULL);
        fixture_close(&f);
    }
}

TEST(httpc_body_at_max)
{
    struct fixture f;
    struct result r = {0};

    fixture_init(&f);
    f.server.large_len = 1000;
    ASSERT_TRUE(start_get(&f, "/stream", 5000, 1000, &r) != NULL);
    run_until(&f, &r.done);
    ASSERT_EQ(r.error, HTTPC_OK);
    ASSERT_EQ(r.body_len, 1000);
    fixture_close(&f);
}

TEST(httpc_reset_mid_reply)
{
    struct fixture f;
    struct result r = {0};

    fixture_init(&f);
    ASSERT_TRUE(start_get(&f, "/reset-body", 5000, 1024, &r) != NULL);
    run_until(&f, &r.done);
    ASSERT_EQ(r.error, HTTPC_ERR_TRANSFER);
    fixture_close(&f);
}

TEST(httpc_reset_before_reply)
{
    struct fixture f;
    struct result r = {0};

    fixture_init(&f);
    ASSERT_TRUE(start_get(&f, "/reset-head", 5000, 1024, &r) != NULL);
    run_until(&f, &r.done);
    ASSERT_EQ(r.error, HTTPC_ERR_CONNECT);
    fixture_close(&f);
}

/* State for a done callback that cancels calls. */
struct canceller {
    struct result result;
    struct httpc_call *self;
    struct httpc_call *victim;
};

static void on_done_cancel(void *arg, const struct httpc_response *resp)
{
    struct canceller *c = arg;

    on_done(&c->result, resp);
    httpc_cancel(c->victim);
    /* Cancelling the call whose callback is running is ignored. */
    httpc_cancel(c->self);
}

TEST(httpc_cancel_in_callback)
{
    struct fixture f;
    struct result victim = {0};
    struct canceller c = {0};
    struct httpc_request req = {
        .method = "GET",
        .timeout_ms = 5000,
        .max_response = 1024,
    };

    fixture_init(&f);
    c.victim = start_get(&f, "/silent", 5000, 1024, &victim);
    ASSERT_TRUE(c.victim != NULL);
    req.url = url_of(f.server.port, "/ok");
    c.self = httpc_start(f.http, &req, on_done_cancel, &c);
    ASSERT_TRUE(c.self != NULL);
    run_until(&f, &c.result.done);

    ASSERT_EQ(c.result.error, HTTPC_OK);
    ASSERT_EQ(victim.calls, 0);
    ASSERT_EQ(victim.cancels, 1);
    ASSERT_EQ(httpc_pending(f.http), 0);
    fixture_close(&f);
    ASSERT_EQ(victim.calls, 0);
}

TEST(httpc_close_in_flight)
{
    struct fixture f;
    struct result r[3] = {{0}};

    fixture_init(&f);
    for (size_t i = 0; i < 3; i++)
        ASSERT_TRUE(start_get(&f, "/silent", 5000, 1024, &r[i]) != NULL);
    while (f.server.requests < 3)
        run_once(&f);
    ASSERT_EQ(httpc_pending(f.http), 3);

    fixture_close(&f);
    for (size_t i = 0; i < 3; i++) {
        ASSERT_EQ(r[i].calls, 0);
        ASSERT_EQ(r[i].cancels, 1);
    }
}

/* State for a done callback that closes the client. */
struct closer {
    struct fixture *f;
    struct result result;
};

static void on_done_close(void *arg, const struct httpc_response *resp)
{
    struct closer *c = arg;

    on_done(&c->result, resp);
    httpc_close(c->f->http, on_closed, &c->f->closed);
    c->f->http = NULL;
}

TEST(httpc_close_in_callback)
{
    struct fixture f;
    struct result other = {0};
    struct closer c = {.f = &f};
    struct httpc_request req = {
        .method = "GET",
        .timeout_ms = 5000,
        .max_response = 1024,
    };

    fixture_init(&f);
    ASSERT_TRUE(start_get(&f, "/silent", 5000, 1024, &other) != NULL);
    req.url = url_of(f.server.port, "/ok");
    ASSERT_TRUE(httpc_start(f.http, &req, on_done_close, &c) != NULL);
    run_until(&f, &f.closed);

    ASSERT_EQ(c.result.calls, 1);
    ASSERT_EQ(other.calls, 0);
    ASSERT_EQ(other.cancels, 1);
    fixture_close(&f);
}

TEST(httpc_rejects_bad_request)
{
    struct fixture f;
    struct result r = {0};
    const char *bad_header[] = {"X-A: 1\r\nX-B: 2"};
    struct httpc_request req = {
        .method = "GET",
        .timeout_ms = 5000,
        .max_response = 1024,
    };

    fixture_init(&f);
    req.url = url_of(f.server.port, "/");
    req.timeout_ms = 0;
    ASSERT_TRUE(httpc_start(f.http, &req, on_done, &r) == NULL);
    req.timeout_ms = 5000;
    req.method = "DELETE";
    ASSERT_TRUE(httpc_start(f.http, &req, on_done, &r) == NULL);
    req.method = "GET";
    req.headers = bad_header;
    req.header_count = 1;
    ASSERT_TRUE(httpc_start(f.http, &req, on_done, &r) == NULL);
    ASSERT_EQ(httpc_pending(f.http), 0);
    fixture_close(&f);
    ASSERT_EQ(r.calls, 0);
}

/* ---- AWS layer ---- */

TEST(aws_endpoint_valid)
{
    static const char *const cases[][3] = {
        /* input, url, Host header */
        {"http://127.0.0.1:4567", "http://127.0.0.1:4567", "127.0.0.1:4567"},
        {"https://Kinesis.eu-west-1.amazonaws.com/",
         "https://kinesis.eu-west-1.amazonaws.com",
         "kinesis.eu-west-1.amazonaws.com"},
        {"https://example.com:443", "https://example.com:443", "example.com"},
        {"HTTP://example.com:80/", "http://example.com:80", "example.com"},
        {"https://example.com:8443", "https://example.com:8443",
         "example.com:8443"},
        {"http://[::1]:4567", "http://[::1]:4567", "[::1]:4567"},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct aws_endpoint ep;
        char err[256] = "";
        ASSERT_EQ(aws_endpoint_init(&ep, cases[i][0], "eu-west-1", "kinesis",
                                    err, sizeof err),
                  0);
        ASSERT_STR_EQ(ep.url, cases[i][1]);
        ASSERT_STR_EQ(ep.host, cases[i][2]);
        ASSERT_STR_EQ(ep.region, "eu-west-1");
        ASSERT_STR_EQ(ep.service, "kinesis");
        aws_endpoint_clear(&ep);
    }
}

TEST(aws_endpoint_invalid)
{
    static const char *const urls[] = {
        "ftp://example.com",        "http://",
        "http://example.com/path",  "http://example.com?x=1",
        "http://example.com#top",   "http://example.com:0",
        "http://example.com:70000", "http://example.com:12a",
        "http://example.com:",      "kinesis.eu-west-1.amazonaws.com",
        "http://exa mple.com",      "http://[::1",
    };

    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        struct aws_endpoint ep;
        char err[256] = "";
        ASSERT_EQ(aws_endpoint_init(&ep, urls[i], "eu-west-1", "kinesis", err,
                                    sizeof err),
                  -EINVAL);
        if (strstr(err, urls[i]) == NULL)
            test_fail(__FILE__, __LINE__, "message does not name %s: %s",
                      urls[i], err);
    }
}

TEST(aws_endpoint_hides_userinfo)
{
    struct aws_endpoint ep;
    char err[256] = "";

    ASSERT_EQ(aws_endpoint_init(&ep, "https://user:hunter2@example.com",
                                "eu-west-1", "kinesis", err, sizeof err),
              -EINVAL);
    ASSERT_TRUE(strstr(err, "user info") != NULL);
    ASSERT_TRUE(strstr(err, "hunter2") == NULL);
    ASSERT_EQ(aws_endpoint_init(&ep, "http://127.0.0.1:1", "EU", "kinesis", err,
                                sizeof err),
              -EINVAL);
    ASSERT_TRUE(strstr(err, "\"EU\"") != NULL);
}

TEST(aws_credentials_env)
{
    struct aws_credentials creds;

    setenv("AWS_ACCESS_KEY_ID", EXAMPLE_KEY_ID, 1);
    setenv("AWS_SECRET_ACCESS_KEY", EXAMPLE_SECRET, 1);
    setenv("AWS_SESSION_TOKEN", "EXAMPLETOKEN", 1);
    ASSERT_EQ(aws_credentials_from_env(&creds), 0);
    ASSERT_STR_EQ(creds.access_key_id, EXAMPLE_KEY_ID);
    ASSERT_STR_EQ(creds.secret_access_key, EXAMPLE_SECRET);
    ASSERT_STR_EQ(creds.session_token, "EXAMPLETOKEN");
    aws_credentials_clear(&creds);

    unsetenv("AWS_SESSION_TOKEN");
    ASSERT_EQ(aws_credentials_from_env(&creds), 0);
    ASSERT_TRUE(creds.session_token == NULL);
    aws_credentials_clear(&creds);

    unsetenv("AWS_SECRET_ACCESS_KEY");
    ASSERT_EQ(aws_credentials_from_env(&creds), -ENOENT);
    setenv("AWS_SECRET_ACCESS_KEY", "", 1);
    ASSERT_EQ(aws_credentials_from_env(&creds), -ENOENT);
}

static int64_t example_now(void)
{
    return EXAMPLE_TIME;
}

/* A copy of one aws_reply. */
struct aws_result {
    bool done;
    int calls;
    enum httpc_error transport;
    long status;
    bool has_type;
    bool has_message;
    char error_type[128];
    char error_message[256];
    char body[4096];
};

static void on_aws_reply(void *arg, const struct aws_reply *reply)
{
    struct aws_result *r = arg;

    r->done = true;
    r->calls++;
    r->transport = reply->transport;
    r->status = reply->status;
    r->has_type = reply->error_type != NULL;
    r->has_message = reply->error_message != NULL;
    snprintf(r->error_type, sizeof r->error_type, "%s",
             r->has_type ? reply->error_type : "");
    snprintf(r->error_message, sizeof r->error_message, "%s",
             r->has_message ? reply->error_message : "");
    ASSERT_TRUE(reply->body_len < sizeof r->body);
    memcpy(r->body, reply->body, reply->body_len);
    r->body[reply->body_len] = '\0';
}

/* An AWS client for service on the fixture's server. */
static struct aws_client *new_aws_client(struct fixture *f, const char *service,
                                         const char *token)
{
    struct aws_credentials creds = example_creds(token);
    struct aws_endpoint ep;
    char url[64], err[256];
    struct aws_client *client;

    snprintf(url, sizeof url, "http://127.0.0.1:%d", f->server.port);
    ASSERT_EQ(
        aws_endpoint_init(&ep, url, "eu-west-1", service, err, sizeof err), 0);
    client =
        aws_client_new(f->http, &ep, &creds, "Kinesis_20131202", example_now);
    ASSERT_TRUE(client != NULL);
    aws_endpoint_clear(&ep);
    return client;
}

/* Run one GetRecords call against the fixture's server. */
static void get_records(struct fixture *f, struct aws_client *client,
                        struct aws_result *r)
{
    memset(r, 0, sizeof *r);
    ASSERT_TRUE(aws_json_call(client, "GetRecords", KINESIS_BODY,
                              strlen(KINESIS_BODY), 5000, 4096, on_aws_reply,
                              r) != NULL);
    run_until(f, &r->done);
    ASSERT_EQ(r->calls, 1);
    ASSERT_EQ(r->transport, HTTPC_OK);
}

TEST(aws_json_error_parsed)
{
    struct fixture f;
    struct aws_client *client;
    struct aws_result r;

    fixture_init(&f);
    client = new_aws_client(&f, "kinesis", "EXAMPLETOKEN");

    f.server.status = 400;
    f.server.body = "{\"__type\":\"com.amazonaws.kinesis.v20131202#"
                    "ExpiredIteratorException\",\"message\":\"Iterator "
                    "expired\"}";
    get_records(&f, client, &r);
    ASSERT_EQ(r.status, 400);
    ASSERT_STR_EQ(r.error_type, "ExpiredIteratorException");
    ASSERT_STR_EQ(r.error_message, "Iterator expired");

    f.server.body = "{\"__type\":\"ResourceNotFoundException\","
                    "\"Message\":\"Stream s not found\"}";
    get_records(&f, client, &r);
    ASSERT_STR_EQ(r.error_type, "ResourceNotFoundException");
    ASSERT_STR_EQ(r.error_message, "Stream s not found");

    f.server.status = 503;
    f.server.body = "Service Unavailable";
    get_records(&f, client, &r);
    ASSERT_EQ(r.status, 503);
    ASSERT_FALSE(r.has_type);
    ASSERT_FALSE(r.has_message);
    ASSERT_STR_EQ(r.body, "Service Unavailable");

    aws_client_free(client);
    fixture_close(&f);
}

TEST(aws_json_ok_passthrough)
{
    struct fixture f;
    struct aws_client *client;
    struct aws_result r;

    fixture_init(&f);
    client = new_aws_client(&f, "kinesis", "EXAMPLETOKEN");
    f.server.body = "{\"Records\":[],\"__type\":\"NotAnError#X\"}";
    get_records(&f, client, &r);

    ASSERT_EQ(r.status, 200);
    ASSERT_STR_EQ(r.body, "{\"Records\":[],\"__type\":\"NotAnError#X\"}");
    ASSERT_FALSE(r.has_type);
    ASSERT_FALSE(r.has_message);
    aws_client_free(client);
    fixture_close(&f);
}

static bool is_in_list(const char *list, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = list; p != NULL; p = strchr(p, ';')) {
        if (*p == ';')
            p++;
        if (strncmp(p, name, n) == 0 && (p[n] == ';' || p[n] == '\0'))
            return true;
    }
    return false;
}

/*
 * Recompute the signature of a received request from what was sent, and
 * check that every signed header was sent and that no other header was,
 * apart from Authorization and Content-Length.
 */
static void verify_signature(const struct received *req,
                             const struct aws_credentials *creds,
                             const char *service)
{
    const char *auth = find_header(req, "authorization");
    char key_id[64], scope[128], signed_list[512], signature[65];
    char expected_scope[128], names[512], target[1024];
    struct sigv4_header headers[SERVER_MAX_HEADERS];
    size_t header_count = 0;
    char *save = NULL;

    ASSERT_TRUE(auth != NULL);
    ASSERT_EQ(sscanf(auth,
                     "AWS4-HMAC-SHA256 Credential=%63[^/]/%127[^,], "
                     "SignedHeaders=%511[^,], Signature=%64s",
                     key_id, scope, signed_list, signature),
              4);
    ASSERT_STR_EQ(key_id, creds->access_key_id);
    snprintf(expected_scope, sizeof expected_scope,
             "20260101/eu-west-1/%s/aws4_request", service);
    ASSERT_STR_EQ(scope, expected_scope);

    snprintf(names, sizeof names, "%s", signed_list);
    for (char *name = strtok_r(names, ";", &save); name != NULL;
         name = strtok_r(NULL, ";", &save)) {
        const char *value = find_header(req, name);
        if (value == NULL)
            test_fail(__FILE__, __LINE__, "signed header %s not sent", name);
        if (strcmp(name, "host") != 0 && strcmp(name, "x-amz-date") != 0 &&
            strcmp(name, "x-amz-security-token") != 0)
            headers[header_count++] = (struct sigv4_header){name, value};
    }
    for (size_t i = 0; i < req->header_count; i++) {
        const char *name = req->headers[i].name;
        if (!is_in_list(signed_list, name) &&
            strcmp(name, "authorization") != 0 &&
            strcmp(name, "content-length") != 0)
            test_fail(__FILE__, __LINE__, "unsigned header sent: %s", name);
    }

    snprintf(target, sizeof target, "%s", req->target);
    char *query = strchr(target, '?');
    if (query != NULL)
        *query++ = '\0';
    struct strbuf uri, canonical_query;
    sb_init(&uri, 4096);
    sb_init(&canonical_query, 4096);
    ASSERT_EQ(sigv4_canonical_uri(&uri, target), 0);
    ASSERT_EQ(sigv4_canonical_query(&canonical_query, query), 0);

    struct sigv4_input in = {
        .method = req->method,
        .host = find_header(req, "host"),
        .canonical_uri = uri.data,
        .canonical_query = canonical_query.data ? canonical_query.data : "",
        .headers = headers,
        .header_count = header_count,
        .payload = req->body,
        .payload_len = req->body_len,
        .region = "eu-west-1",
        .service = service,
        .unix_time = EXAMPLE_TIME,
    };
    struct sigv4_output out;
    ASSERT_EQ(sigv4_sign(&in, creds, &out), 0);
    ASSERT_STR_EQ(find_header(req, "x-amz-date"), out.amz_date);
    ASSERT_STR_EQ(out.signed_headers, signed_list);
    ASSERT_STR_EQ(out.signature, signature);
    sb_free(&uri);
    sb_free(&canonical_query);
}

TEST(aws_json_signature_verified)
{
    struct fixture f;
    struct aws_credentials creds = example_creds("EXAMPLETOKEN");
    struct aws_client *client;
    struct aws_result r;

    fixture_init(&f);
    client = new_aws_client(&f, "kinesis", "EXAMPLETOKEN");
    get_records(&f, client, &r);

    const struct received *req = &f.server.last;
    ASSERT_STR_EQ(req->method, "POST");
    ASSERT_STR_EQ(req->target, "/");
    ASSERT_MEM_EQ(req->body, req->body_len, KINESIS_BODY, strlen(KINESIS_BODY));
    ASSERT_STR_EQ(find_header(req, "content-type"),
                  "application/x-amz-json-1.1");
    ASSERT_STR_EQ(find_header(req, "x-amz-target"),
                  "Kinesis_20131202.GetRecords");
    ASSERT_STR_EQ(find_header(req, "x-amz-security-token"), "EXAMPLETOKEN");
    ASSERT_TRUE(find_header(req, "accept") == NULL);
    ASSERT_TRUE(find_header(req, "expect") == NULL);
    verify_signature(req, &creds, "kinesis");
    ASSERT_TRUE(strstr(find_header(req, "authorization"),
                       "SignedHeaders=content-type;host;x-amz-date;"
                       "x-amz-security-token;x-amz-target,") != NULL);

    aws_client_free(client);
    fixture_close(&f);
}

TEST(aws_empty_token_not_sent)
{
    struct fixture f;
    struct aws_credentials creds = example_creds("");
    struct aws_client *client;
    struct aws_result r;

    fixture_init(&f);
    client = new_aws_client(&f, "kinesis", "");
    get_records(&f, client, &r);

    const struct received *req = &f.server.last;
    ASSERT_TRUE(find_header(req, "x-amz-security-token") == NULL);
    ASSERT_TRUE(strstr(find_header(req, "authorization"),
                       "x-amz-security-token") == NULL);
    verify_signature(req, &creds, "kinesis");

    aws_client_free(client);
    fixture_close(&f);
}

TEST(aws_signed_post_verified)
{
    static const char *const content_types[] = {"application/json", NULL};
    struct aws_credentials creds = example_creds("EXAMPLETOKEN");

    for (size_t i = 0; i < 2; i++) {
        struct fixture f;
        struct aws_result r = {0};
        struct aws_client *client;

        fixture_init(&f);
        client = new_aws_client(&f, "iotdata", "EXAMPLETOKEN");
        ASSERT_TRUE(aws_signed_post(client, "/topics/leaderboards%2FR-7%2FB",
                                    "qos=1", content_types[i], IOT_BODY,
                                    strlen(IOT_BODY), 5000, on_aws_reply,
                                    &r) != NULL);
        run_until(&f, &r.done);

        const struct received *req = &f.server.last;
        ASSERT_EQ(r.status, 200);
        ASSERT_STR_EQ(req->target, "/topics/leaderboards%2FR-7%2FB?qos=1");
        ASSERT_MEM_EQ(req->body, req->body_len, IOT_BODY, strlen(IOT_BODY));
        if (content_types[i] != NULL)
            ASSERT_STR_EQ(find_header(req, "content-type"), content_types[i]);
        else
            ASSERT_TRUE(find_header(req, "content-type") == NULL);
        verify_signature(req, &creds, "iotdata");

        aws_client_free(client);
        fixture_close(&f);
    }
}

TEST(aws_signed_post_rejects_raw_path)
{
    struct fixture f;
    struct aws_result r = {0};
    struct aws_client *client;

    fixture_init(&f);
    client = new_aws_client(&f, "iotdata", NULL);
    ASSERT_TRUE(aws_signed_post(client, "/topics/R 7", "qos=1", NULL, "", 0,
                                5000, on_aws_reply, &r) == NULL);
    ASSERT_TRUE(aws_signed_post(client, "topics/x", NULL, NULL, "", 0, 5000,
                                on_aws_reply, &r) == NULL);
    ASSERT_TRUE(aws_signed_post(client, "/topics/x", "a=%zz", NULL, "", 0, 5000,
                                on_aws_reply, &r) == NULL);
    ASSERT_TRUE(aws_json_call(client, "Get\r\nX: y", "{}", 2, 5000, 1024,
                              on_aws_reply, &r) == NULL);
    ASSERT_EQ(httpc_pending(f.http), 0);
    aws_client_free(client);
    fixture_close(&f);
    ASSERT_EQ(r.calls, 0);
}

TEST(aws_cancel_frees_call)
{
    struct fixture f;
    struct aws_result r = {0};
    struct aws_client *client;
    struct httpc_call *call;

    fixture_init(&f);
    client = new_aws_client(&f, "kinesis", NULL);
    call = aws_json_call(client, "GetRecords", "{}", 2, 5000, 1024,
                         on_aws_reply, &r);
    ASSERT_TRUE(call != NULL);
    while (f.server.requests < 1)
        run_once(&f);
    httpc_cancel(call);
    ASSERT_EQ(httpc_pending(f.http), 0);

    /* Freeing the client with a call in flight is allowed too. */
    ASSERT_TRUE(aws_json_call(client, "GetRecords", "{}", 2, 5000, 1024,
                              on_aws_reply, &r) != NULL);
    aws_client_free(client);
    fixture_close(&f);
    ASSERT_EQ(r.calls, 0);
}
