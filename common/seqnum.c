#include "common/seqnum.h"

#include <string.h>

bool seqnum_valid(const char *s)
{
    if (s == NULL || s[0] < '0' || s[0] > '9')
        return false;
    if (s[0] == '0')
        return s[1] == '\0';

    size_t i = 1;
    while (i < SEQNUM_MAX_DIGITS && s[i] >= '0' && s[i] <= '9')
        i++;
    return s[i] == '\0';
}

/* Valid sequence numbers have no leading zeros, so a longer one is larger
 * and equal lengths compare digit by digit. */
int seqnum_cmp(const char *a, const char *b)
{
    size_t a_len = strlen(a), b_len = strlen(b);

    if (a_len != b_len)
        return a_len < b_len ? -1 : 1;
    int order = memcmp(a, b, a_len);
    return (order > 0) - (order < 0);
}

int seqnum_cmp_ext(const char *a, int64_t a_sub, const char *b, int64_t b_sub)
{
    int order = seqnum_cmp(a, b);

    if (order != 0)
        return order;
    return (a_sub > b_sub) - (a_sub < b_sub);
}
