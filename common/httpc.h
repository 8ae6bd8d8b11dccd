/*
 * Asynchronous HTTP client: libcurl's multi interface driven by a libuv loop
 * (socket and timer callbacks, never a blocking call). Every request has a
 * timeout and a response size cap. All functions run on the loop thread.
 */
#ifndef PODIUM_COMMON_HTTPC_H
#define PODIUM_COMMON_HTTPC_H

#include <stddef.h>

#include <uv.h>

struct httpc;
struct httpc_call;

struct httpc_request {
    const char *method; /* "GET", "POST" or "PUT" */
    const char *url;
    const char *const *headers; /* "Name: value" lines */
    size_t header_count;
    const void *body; /* copied by httpc_start */
    size_t body_len;
    long timeout_ms;         /* whole request, connect included; required */
    size_t max_response;     /* larger bodies fail with HTTPC_ERR_TOO_LARGE */
    long connect_timeout_ms; /* connect phase; 0 means timeout_ms */
    /* Optional. Runs once instead of the done callback when the call is
     * cancelled by httpc_cancel() or httpc_close(), so that the owner of arg
     * can release it. It must not call httpc functions. */
    void (*on_cancel)(void *arg);
};

enum httpc_error {
    HTTPC_OK = 0,        /* a status line was received */
    HTTPC_ERR_TIMEOUT,   /* timeout_ms passed */
    HTTPC_ERR_CONNECT,   /* could not connect, refused, reset */
    HTTPC_ERR_TRANSFER,  /* connection broke mid-reply, bad reply */
    HTTPC_ERR_TOO_LARGE, /* reply body passed max_response */
    HTTPC_ERR_INTERNAL   /* out of memory, curl setup failure */
};

struct httpc_response {
    enum httpc_error error;
    const char *error_text; /* why it failed, when error != HTTPC_OK */
    long status;            /* HTTP status when error == HTTPC_OK */
    /* Borrowed and NUL-terminated, valid during cb; "" on an error. */
    const char *body;
    size_t body_len;
};

typedef void (*httpc_done_cb)(void *arg, const struct httpc_response *resp);

/*
 * Initialise libcurl once per process (curl_global_init). It is not safe to
 * run while other threads use libcurl or OpenSSL, so call it from main()
 * before starting threads. httpc_new() calls it too, which is enough for
 * single-threaded programs. Returns 0 or -EIO.
 */
int httpc_global_init(void);

/* Create a client on loop. Returns 0 or a negative errno. */
int httpc_new(uv_loop_t *loop, struct httpc **out);

/*
 * Start a request; cb runs exactly once on the loop thread, unless the call
 * is cancelled first. Returns NULL (and never calls cb) when the request
 * cannot be started. The returned handle is borrowed and becomes invalid
 * once cb has returned.
 */
struct httpc_call *httpc_start(struct httpc *client,
                               const struct httpc_request *req,
                               httpc_done_cb cb, void *arg);

/*
 * Abandon a call: its done callback will not run, but the request's
 * on_cancel does, before this returns. Safe from inside any httpc callback.
 * A NULL call, or a call whose done callback is running, is ignored.
 */
void httpc_cancel(struct httpc_call *call);

/* Number of calls in flight. */
size_t httpc_pending(const struct httpc *client);

/*
 * Cancel every call and close the libuv handles. closed_cb runs once all
 * handles are closed; the client is freed before that.
 */
void httpc_close(struct httpc *client, void (*closed_cb)(void *arg), void *arg);

#endif
