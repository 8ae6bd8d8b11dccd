#include "shardreader/kinesis.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <uv.h>

struct error_class {
    const char *type;
    enum kinesis_outcome outcome;
};

/*
 * Error names from the Kinesis API reference and its common errors page,
 * https://docs.aws.amazon.com/kinesis/latest/APIReference/CommonErrors.html
 * The JSON protocol adds the "Exception" suffix to some of them. The
 * service sends UnrecognizedClientException for an unknown key id and
 * InvalidSignatureException for a wrong secret.
 */
static const struct error_class error_classes[] = {
    {"ExpiredIteratorException", KINESIS_EXPIRED_ITERATOR},
    {"ExpiredNextTokenException", KINESIS_EXPIRED_NEXT_TOKEN},
    {"ProvisionedThroughputExceededException", KINESIS_THROTTLED},
    {"LimitExceededException", KINESIS_THROTTLED},
    {"ThrottlingException", KINESIS_THROTTLED},
    {"KMSThrottlingException", KINESIS_THROTTLED},
    {"RequestLimitExceeded", KINESIS_THROTTLED},
    {"InternalFailure", KINESIS_SERVER_ERROR},
    {"InternalFailureException", KINESIS_SERVER_ERROR},
    {"ServiceUnavailable", KINESIS_SERVER_ERROR},
    {"ServiceUnavailableException", KINESIS_SERVER_ERROR},
    {"ResourceNotFoundException", KINESIS_NOT_FOUND},
    {"AccessDeniedException", KINESIS_ACCESS_DENIED},
    {"UnrecognizedClientException", KINESIS_ACCESS_DENIED},
    {"InvalidSignatureException", KINESIS_ACCESS_DENIED},
    {"IncompleteSignature", KINESIS_ACCESS_DENIED},
    {"IncompleteSignatureException", KINESIS_ACCESS_DENIED},
    {"MissingAuthenticationToken", KINESIS_ACCESS_DENIED},
    {"MissingAuthenticationTokenException", KINESIS_ACCESS_DENIED},
    {"InvalidClientTokenId", KINESIS_ACCESS_DENIED},
    {"ExpiredTokenException", KINESIS_ACCESS_DENIED},
    {"NotAuthorized", KINESIS_ACCESS_DENIED},
};

static enum kinesis_outcome classify_transport(enum httpc_error error)
{
    switch (error) {
    case HTTPC_OK:
        return KINESIS_OK;
    case HTTPC_ERR_TIMEOUT:
        return KINESIS_TIMEOUT;
    case HTTPC_ERR_CONNECT:
    case HTTPC_ERR_TRANSFER:
        return KINESIS_CONNECTION;
    case HTTPC_ERR_TOO_LARGE:
    case HTTPC_ERR_INTERNAL:
        break;
    }
    return KINESIS_BAD_REPLY;
}

enum kinesis_outcome kinesis_classify(const struct aws_reply *reply)
{
    if (reply->transport != HTTPC_OK)
        return classify_transport(reply->transport);
    if (reply->status >= 200 && reply->status < 300)
        return KINESIS_OK;
    if (reply->error_type != NULL) {
        size_t n = sizeof error_classes / sizeof error_classes[0];
        for (size_t i = 0; i < n; i++) {
            if (strcmp(reply->error_type, error_classes[i].type) == 0)
                return error_classes[i].outcome;
        }
    }
    if (reply->status >= 500)
        return KINESIS_SERVER_ERROR;
    if (reply->status == 429)
        return KINESIS_THROTTLED;
    if (reply->status == 401 || reply->status == 403)
        return KINESIS_ACCESS_DENIED;
    if (reply->status >= 400)
        return KINESIS_CLIENT_ERROR;
    return KINESIS_BAD_REPLY;
}

bool kinesis_retryable(enum kinesis_outcome outcome)
{
    switch (outcome) {
    case KINESIS_THROTTLED:
    case KINESIS_SERVER_ERROR:
    case KINESIS_TIMEOUT:
    case KINESIS_CONNECTION:
    case KINESIS_BAD_REPLY:
        return true;
    default:
        return false;
    }
}

static const char *transport_name(enum httpc_error error)
{
    switch (error) {
    case HTTPC_ERR_TIMEOUT:
        return "timed out";
    case HTTPC_ERR_CONNECT:
        return "connection failed";
    case HTTPC_ERR_TRANSFER:
        return "transfer failed";
    case HTTPC_ERR_TOO_LARGE:
        return "reply too large";
    default:
        return "internal error";
    }
}

void kinesis_describe(const struct aws_reply *reply, char *buf, size_t len)
{
    if (reply->transport != HTTPC_OK) {
        snprintf(buf, len, "%s: %s", transport_name(reply->transport),
                 reply->transport_text ? reply->transport_text : "");
    } else if (reply->error_type != NULL) {
        snprintf(buf, len, "%s: %s (HTTP %ld)", reply->error_type,
                 reply->error_message ? reply->error_message : "",
                 reply->status);
    } else {
        snprintf(buf, len, "HTTP %ld", reply->status);
    }
}

uint64_t kinesis_backoff_ms(uint64_t *rng, uint32_t attempt, uint64_t base_ms,
                            uint64_t cap_ms)
{
    uint64_t step = base_ms, half_cap = cap_ms / 2;
    for (uint32_t i = 1; i < attempt && step < half_cap; i++)
        step *= 2;
    if (step > half_cap)
        step = half_cap;

    /* xorshift64: statistical quality is plenty for spreading retries. */
    uint64_t x = *rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *rng = x;
    return step + x % (step + 1);
}

uint64_t kinesis_rng_seed(const void *owner)
{
    uint64_t seed = uv_hrtime() ^ (uint64_t)(uintptr_t)owner;
    seed ^= (uint64_t)getpid() << 32;
    return seed != 0 ? seed : 0x9e3779b97f4a7c15u;
}

json_t *kinesis_parse_object(const char *body, size_t len, size_t max_len,
                             char *err, size_t err_len)
{
    json_error_t jerr;
    json_t *root;

    if (len > max_len) {
        snprintf(err, err_len, "reply of %zu bytes exceeds the limit of %zu",
                 len, max_len);
        return NULL;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(err, err_len, "invalid JSON at byte %d: %s", jerr.position,
                 jerr.text);
        return NULL;
    }
    if (!json_is_object(root)) {
        snprintf(err, err_len, "reply is not a JSON object");
        json_decref(root);
        return NULL;
    }
    return root;
}

const char *kinesis_string_member(const json_t *obj, const char *key)
{
    const json_t *value = kinesis_member(obj, key);
    return json_is_string(value) ? json_string_value(value) : NULL;
}
