/*
 * Helpers shared by the reader and the putter (internal to shardreader/):
 * classifying Kinesis replies, exponential backoff with jitter, and reading
 * reply bodies with jansson.
 */
#ifndef PODIUM_SHARDREADER_KINESIS_H
#define PODIUM_SHARDREADER_KINESIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <jansson.h>

#include "common/aws.h"

/* X-Amz-Target prefix of the Kinesis Data Streams API. */
#define KINESIS_TARGET_PREFIX "Kinesis_20131202"

/* Meaning of a reply for the caller, from the transport error, the status
 * and the "__type" of the error body. */
enum kinesis_outcome {
    KINESIS_OK,
    KINESIS_EXPIRED_ITERATOR,   /* ExpiredIteratorException */
    KINESIS_EXPIRED_NEXT_TOKEN, /* ExpiredNextTokenException (ListShards) */
    KINESIS_THROTTLED,          /* ProvisionedThroughputExceeded, ... */
    KINESIS_SERVER_ERROR,       /* 5xx, InternalFailure */
    KINESIS_TIMEOUT,            /* the request timeout passed */
    KINESIS_CONNECTION,         /* connect or transfer failed */
    KINESIS_NOT_FOUND,          /* ResourceNotFoundException */
    KINESIS_ACCESS_DENIED,      /* bad or missing credentials */
    KINESIS_CLIENT_ERROR,       /* any other 4xx: the request is wrong */
    KINESIS_BAD_REPLY           /* too large, or not an HTTP reply */
};

enum kinesis_outcome kinesis_classify(const struct aws_reply *reply);

/* True for outcomes where the same request may succeed later. */
bool kinesis_retryable(enum kinesis_outcome outcome);

/*
 * Write a one-line description of a failed reply into buf, such as
 * "ProvisionedThroughputExceededException: Rate exceeded (HTTP 400)" or
 * "timed out: Operation timed out after 500 milliseconds".
 */
void kinesis_describe(const struct aws_reply *reply, char *buf, size_t len);

/*
 * Return a delay for retry number attempt (1 for the first retry): with
 * step = min(base_ms * 2^(attempt - 1), cap_ms / 2), a value drawn
 * uniformly from [step, 2 * step]. The floor makes each retry wait at least
 * as long as the exponential schedule requires (250, 500, 1000 ms... for a
 * base of 250), and the random half spreads clients that were throttled
 * together ("equal jitter" in
 * https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/).
 * The result never exceeds cap_ms. rng is the caller's generator state
 * (never 0).
 */
uint64_t kinesis_backoff_ms(uint64_t *rng, uint32_t attempt, uint64_t base_ms,
                            uint64_t cap_ms);

/* Seed for kinesis_backoff_ms, different for each caller and run. */
uint64_t kinesis_rng_seed(const void *owner);

/*
 * Parse a reply body of at most max_len bytes as a JSON object. Returns the
 * object (owned, json_decref it) or NULL with the reason in err.
 */
json_t *kinesis_parse_object(const char *body, size_t len, size_t max_len,
                             char *err, size_t err_len);

/*
 * Return member key of obj (borrowed), or NULL when obj is not an object,
 * has no such member, or the member is null: some servers send
 * "ChildShards":null or "NextToken":null rather than leave the member out,
 * and both mean the same.
 */
static inline json_t *kinesis_member(const json_t *obj, const char *key)
{
    json_t *value = json_object_getn(obj, key, strlen(key));
    return json_is_null(value) ? NULL : value;
}

/*
 * Return member key of obj when it is a string, else NULL. A JSON null
 * counts as absent: some servers send "NextToken":null rather than leave
 * the member out.
 */
const char *kinesis_string_member(const json_t *obj, const char *key);

#endif
