/*
 * AWS plumbing shared by the Kinesis reader and the IoT publisher:
 * credentials from the environment, endpoint URLs, and signed calls to
 * JSON-protocol APIs (POST / with X-Amz-Target) on top of httpc.
 */
#ifndef PODIUM_COMMON_AWS_H
#define PODIUM_COMMON_AWS_H

#include <stddef.h>
#include <stdint.h>

#include "common/httpc.h"
#include "common/sigv4.h"

/*
 * Read AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN.
 * Returns 0, or -ENOENT when the key id or the secret is missing.
 */
int aws_credentials_from_env(struct aws_credentials *out);

struct aws_endpoint {
    char *url;     /* owned; "http://127.0.0.1:4567" without a trailing '/' */
    char *host;    /* owned; Host header value, with :port when not default */
    char *region;  /* owned */
    char *service; /* owned; signing name, e.g. "kinesis" */
};

/*
 * Parse an http:// or https:// URL: host[:port] with an optional trailing
 * '/', and no path, query, fragment or user info. The host is lower-cased.
 * Returns 0, -ENOMEM, or -EINVAL with a message in err naming the value and
 * what is expected (a URL with user info is not echoed, as it may contain a
 * password). region and service are lower-case letters, digits and '-'.
 */
int aws_endpoint_init(struct aws_endpoint *ep, const char *url,
                      const char *region, const char *service, char *err,
                      size_t err_len);
void aws_endpoint_clear(struct aws_endpoint *ep);

struct aws_client;

struct aws_reply {
    enum httpc_error transport; /* HTTPC_OK when an HTTP reply came back */
    const char *transport_text;
    long status;
    /* For a non-2xx reply with a JSON body: the "__type" after any '#'
     * (e.g. "ExpiredIteratorException") and "message"/"Message"; else NULL. */
    const char *error_type;
    const char *error_message;
    const char *body; /* borrowed, valid during the callback */
    size_t body_len;
};

typedef void (*aws_reply_cb)(void *arg, const struct aws_reply *reply);

/*
 * Create a client for one endpoint. target_prefix is the X-Amz-Target prefix
 * ("Kinesis_20131202"), or NULL for a client that only calls
 * aws_signed_post(). The client copies ep and creds; http is borrowed and
 * must outlive the client. now_fn returns the signing time in seconds; NULL
 * means time(NULL). Returns NULL on bad input or out of memory.
 */
struct aws_client *aws_client_new(struct httpc *http,
                                  const struct aws_endpoint *ep,
                                  const struct aws_credentials *creds,
                                  const char *target_prefix,
                                  int64_t (*now_fn)(void));
/* Free the client. Calls in flight stay valid and complete as usual. */
void aws_client_free(struct aws_client *client);

/*
 * POST a signed JSON request for action ("GetRecords"); the body is copied.
 * cb runs once unless the returned call is cancelled with httpc_cancel().
 * Returns NULL when the request could not be started.
 */
struct httpc_call *aws_json_call(struct aws_client *client, const char *action,
                                 const char *body, size_t body_len,
                                 long timeout_ms, size_t max_response,
                                 aws_reply_cb cb, void *arg);

/* Maximum reply body of aws_signed_post(); IoT Publish replies are tiny. */
#define AWS_SIGNED_POST_MAX_RESPONSE (64 * 1024)

/*
 * POST a signed request with an arbitrary wire path and query (for the IoT
 * data plane: path "/topics/<encoded topic>", query "qos=1"). Both must be
 * percent-encoded already and at most 4096 bytes long; the path starts with
 * '/'. content_type may be NULL. cb runs once unless the returned call is
 * cancelled. Returns NULL when the request could not be started.
 */
struct httpc_call *aws_signed_post(struct aws_client *client,
                                   const char *wire_path, const char *query,
                                   const char *content_type, const void *body,
                                   size_t body_len, long timeout_ms,
                                   aws_reply_cb cb, void *arg);

#endif
