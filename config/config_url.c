/*
 * Endpoint and broker URLs: their validators, the reasons given when one is
 * rejected, and the masking of passwords in URLs for messages and
 * check-config output.
 */
#include "config/config.h"
#include "config/config_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <string.h>
#include <strings.h>

static const char userinfo_http_reason[] =
    "a user name or password in the URL is not supported, because podium "
    "signs its requests with AWS credentials";
static const char userinfo_mqtt_reason[] =
    "a user name or password in the URL is not supported, because podium "
    "does not log in to the broker with a password: use mqtts:// with "
    "mqtt.cert_file and mqtt.key_file for client authentication";
static const char bracket_reason[] =
    "square brackets are allowed only around an IPv6 address, as in "
    "http://[::1]:4566";
static const char escape_reason[] =
    "a % must start an escape of two hexadecimal digits, such as %20";

static bool is_space_or_control(char c)
{
    return isspace((unsigned char)c) || iscntrl((unsigned char)c);
}

/*
 * Check that [p, end) has no space or control character, no square
 * bracket and only complete percent escapes. Returns NULL or the reason.
 */
static const char *check_url_text(const char *p, const char *end)
{
    for (; p < end; p++) {
        if (is_space_or_control(*p))
            return "the URL contains a space or control character";
        if (*p == '[' || *p == ']')
            return bracket_reason;
        if (*p == '%') {
            if (end - p < 3 || !isxdigit((unsigned char)p[1]) ||
                !isxdigit((unsigned char)p[2]))
                return escape_reason;
            p += 2;
        }
    }
    return NULL;
}

/* Check a port after its ':', [p, end): a number from 1 to 65535. */
static const char *check_port(const char *p, const char *end)
{
    static const char reason[] = "the port must be a number from 1 to 65535";
    if (p == end || end - p > 5)
        return reason;
    long port = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return reason;
        port = port * 10 + (*p - '0');
    }
    return port >= 1 && port <= 65535 ? NULL : reason;
}

/* Check the host of [p, end): an IPv6 address in brackets. */
static const char *check_ipv6_host(const char *p, const char *end,
                                   const char **host_end)
{
    const char *close = memchr(p, ']', (size_t)(end - p));
    if (close == NULL)
        return bracket_reason;
    char address[INET6_ADDRSTRLEN + 1];
    size_t n = (size_t)(close - p - 1);
    struct in6_addr parsed;
    if (n == 0 || n >= sizeof address)
        return "the host in square brackets is not an IPv6 address";
    memcpy(address, p + 1, n);
    address[n] = '\0';
    if (inet_pton(AF_INET6, address, &parsed) != 1)
        return "the host in square brackets is not an IPv6 address";
    *host_end = close + 1;
    return NULL;
}

/*
 * Check the authority [p, end) of an http(s) URL: a host name, IPv4
 * address or bracketed IPv6 address, and an optional port.
 */
static const char *check_authority(const char *p, const char *end)
{
    if (p == end || *p == ':')
        return "the URL has no host";

    const char *host_end;
    if (*p == '[') {
        const char *reason = check_ipv6_host(p, end, &host_end);
        if (reason != NULL)
            return reason;
        if (host_end != end && *host_end != ':')
            return bracket_reason;
    } else {
        const char *colon = memchr(p, ':', (size_t)(end - p));
        host_end = colon != NULL ? colon : end;
        if (colon != NULL &&
            memchr(colon + 1, ':', (size_t)(end - colon - 1)) != NULL)
            return "an IPv6 address must be in square brackets, as in "
                   "http://[::1]:4566";
        const char *reason = check_url_text(p, host_end);
        if (reason != NULL)
            return reason;
    }
    return host_end == end ? NULL : check_port(host_end + 1, end);
}

bool cfg_explain_http_url(const char *value, const char **reason)
{
    const char *rest;
    *reason = NULL;
    if (strncasecmp(value, "http://", 7) == 0)
        rest = value + 7;
    else if (strncasecmp(value, "https://", 8) == 0)
        rest = value + 8;
    else
        return false;

    const char *authority_end = rest + strcspn(rest, "/?#");
    /* A user name or password is reported first, whatever else is wrong,
     * so that the message does not hint at parts of the password. */
    if (memchr(rest, '@', (size_t)(authority_end - rest)) != NULL) {
        *reason = userinfo_http_reason;
        return false;
    }
    *reason = check_authority(rest, authority_end);
    /* The AWS clients sign requests to the endpoint's root, so like them
     * the check takes no path other than "/". */
    if (*reason == NULL && *authority_end != '\0' &&
        strcmp(authority_end, "/") != 0)
        *reason = "the URL has a path, query or fragment";
    /* An unescaped '/' in a password ends the authority early, and the
     * error would then be about its parts: blame the user info instead. */
    if (*reason != NULL && strchr(rest, '@') != NULL)
        *reason = userinfo_http_reason;
    return *reason == NULL;
}

bool cfg_check_http_url(const char *value)
{
    const char *reason;
    return cfg_explain_http_url(value, &reason);
}

bool cfg_explain_mqtt_url(const char *value, const char **reason)
{
    *reason = NULL;
    const char *rest = strstr(value, "://");
    if (rest != NULL && strchr(rest + 3, '@') != NULL) {
        *reason = userinfo_mqtt_reason;
        return false;
    }
    return cfg_check_mqtt_url(value);
}

void cfg_mask_url(const char *value, char *buf, size_t len)
{
    if (len == 0)
        return;
    const char *scheme_end = strstr(value, "://");
    const char *start = scheme_end != NULL ? scheme_end + 3 : value;
    const char *at = strrchr(start, '@');
    const char *colon =
        at != NULL ? memchr(start, ':', (size_t)(at - start)) : NULL;
    if (at == NULL || (colon == NULL && scheme_end == NULL)) {
        snprintf(buf, len, "%s", value);
        return;
    }
    /* Without a ':' the whole user info may be a token, so all of it is
     * masked. */
    const char *secret = colon != NULL ? colon + 1 : start;
    snprintf(buf, len, "%.*s****%s", (int)(secret - value), value, at);
}
