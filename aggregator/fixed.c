/*
 * Exact scoring. The formula output = (cadence + 35) x (resistance + 65) /
 * 100, in 1/10000 units, is round_half_up(A x B x 10^(2 - sa - sb)) where
 * A = (cadence + 35) x 10^sa and B = (resistance + 65) x 10^sb are integers
 * (sa and sb are the decimal places of the inputs). Ordinary inputs such as
 * 79.8 fit in unsigned __int128; longer ones, down to subnormal doubles like
 * 1.8011670033376514e-308, go through small multi-limb integers in base
 * 10^9, where dividing by a power of ten is a limb shift. No floating point
 * is involved, so the result never depends on how a double rounds.
 */
#include "aggregator/fixed.h"

#include "aggregator/aggregator.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* Enough for every value agg_record_parse accepts (at most 40 digits and
 * a leading digit no smaller than 1e-324): A and B have at most 370
 * digits. */
#define FIXED_MAX_SCALE 460
#define BIG_BASE        1000000000u
#define BIG_BASE_DIGITS 9
/* Two factors of FIXED_MAX_SCALE + 45 digits each, plus room to shift. */
#define BIG_LIMBS 120

int fixed_parse(const char *text, struct fixed_dec *dec)
{
    const char *p = text;

    dec->digits = text;
    dec->ndigits = 0;
    dec->exponent = 0;
    if (strcmp(text, "0") == 0)
        return 0;
    if (*p < '1' || *p > '9')
        return -1;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p - text > AGG_MAX_EXACT_TEXT || p[-1] == '0')
        return -1;
    dec->ndigits = (int)(p - text);
    if (*p == '\0')
        return 0;
    if (*p++ != 'e')
        return -1;

    bool negative = *p == '-';
    if (negative)
        p++;
    if (*p < '0' || *p > '9' || (*p == '0' && p[1] != '\0'))
        return -1;
    int32_t exponent = 0;
    for (; *p >= '0' && *p <= '9'; p++) {
        exponent = exponent * 10 + (*p - '0');
        if (exponent > FIXED_MAX_EXPONENT)
            return -1;
    }
    if (*p != '\0' || (negative && exponent == 0))
        return -1;
    dec->exponent = negative ? -exponent : exponent;
    return 0;
}

int64_t fixed_adjusted_exponent(const struct fixed_dec *dec)
{
    if (dec->ndigits == 0)
        return 0;
    return (int64_t)dec->exponent + dec->ndigits - 1;
}

int fixed_cmp(const struct fixed_dec *a, const struct fixed_dec *b)
{
    if (a->ndigits == 0 || b->ndigits == 0)
        return (a->ndigits != 0) - (b->ndigits != 0);

    int64_t ea = fixed_adjusted_exponent(a);
    int64_t eb = fixed_adjusted_exponent(b);
    if (ea != eb)
        return ea < eb ? -1 : 1;

    /* Same leading position: compare digit by digit, the shorter string
     * padded with zeros. */
    int n = a->ndigits > b->ndigits ? a->ndigits : b->ndigits;
    for (int i = 0; i < n; i++) {
        char ca = i < a->ndigits ? a->digits[i] : '0';
        char cb = i < b->ndigits ? b->digits[i] : '0';
        if (ca != cb)
            return ca < cb ? -1 : 1;
    }
    return 0;
}

static uint64_t digits_value(const char *digits, int64_t n)
{
    uint64_t v = 0;
    for (int64_t i = 0; i < n; i++)
        v = v * 10 + (uint64_t)(digits[i] - '0');
    return v;
}

static uint64_t pow10_u64(int64_t k)
{
    uint64_t p = 1;
    while (k-- > 0)
        p *= 10;
    return p;
}

/*
 * Rounding half up only looks at the first dropped digit, because the value
 * is non-negative: x rounds up exactly when its fraction is >= 0.5.
 */
int fixed_round4(const char *text, int64_t *value4, bool *exact)
{
    struct fixed_dec d;

    if (fixed_parse(text, &d) != 0)
        return -1;
    *value4 = 0;
    *exact = true;
    if (d.ndigits == 0)
        return 0;

    int64_t shift = (int64_t)d.exponent + 4;
    if (shift >= 0) {
        if (d.ndigits + shift > 18)
            return -1;
        *value4 =
            (int64_t)(digits_value(d.digits, d.ndigits) * pow10_u64(shift));
        return 0;
    }

    /* Canonical digits end in a non-zero digit, so dropping any loses
     * something. */
    *exact = false;
    int64_t keep = d.ndigits + shift;
    if (keep > 18)
        return -1;
    if (keep < 0)
        return 0;
    uint64_t v = digits_value(d.digits, keep);
    if (d.digits[keep] >= '5')
        v++;
    *value4 = (int64_t)v;
    return 0;
}

int fixed_format4(int64_t value4, char *buf, size_t buf_len)
{
    char text[32];
    size_t n = sizeof text;
    int exponent = -4;

    if (value4 < 0)
        return -1;
    if (value4 == 0) {
        text[--n] = '0';
        exponent = 0;
    } else {
        while (value4 % 10 == 0) {
            value4 /= 10;
            exponent++;
        }
        /* "e" and the exponent, -4 to 14, written from the right. */
        int e = exponent < 0 ? -exponent : exponent;
        do {
            text[--n] = (char)('0' + e % 10);
            e /= 10;
        } while (e > 0);
        if (exponent < 0)
            text[--n] = '-';
        text[--n] = 'e';
        do {
            text[--n] = (char)('0' + value4 % 10);
            value4 /= 10;
        } while (value4 > 0);
    }
    size_t len = sizeof text - n;
    if (len >= buf_len)
        return -1;
    memcpy(buf, text + n, len);
    buf[len] = '\0';
    return 0;
}

/* ---- fast path ------------------------------------------------------- */

static unsigned __int128 pow10_u128(int k)
{
    unsigned __int128 p = 1;
    while (k-- > 0)
        p *= 10;
    return p;
}

/*
 * Set *term = (value + addend) x 10^scale with scale = the decimal places of
 * value, when the result stays below 10^19 so that two terms multiply
 * without overflow. Returns false when the value needs the slow path.
 */
static bool small_term(const struct fixed_dec *d, uint32_t addend,
                       unsigned __int128 *term, int *scale)
{
    if (d->ndigits > 18)
        return false;
    uint64_t digits = digits_value(d->digits, d->ndigits);
    if (d->exponent >= 0) {
        if (d->ndigits + d->exponent > 18)
            return false;
        *scale = 0;
        *term = (unsigned __int128)digits * pow10_u64(d->exponent) + addend;
        return true;
    }
    if (-d->exponent > 17)
        return false;
    *scale = -d->exponent;
    *term = digits + (unsigned __int128)addend * pow10_u64(*scale);
    return true;
}

/* Round a x b x 10^(2 - scale) half up; both terms are below 10^19. */
static int small_output4(unsigned __int128 a, unsigned __int128 b, int scale,
                         int64_t *output4)
{
    unsigned __int128 n = a * b;
    int shift = 2 - scale;

    if (shift >= 0) {
        unsigned __int128 p = pow10_u128(shift);
        if (n > (unsigned __int128)INT64_MAX / p)
            return -1;
        *output4 = (int64_t)(n * p);
        return 0;
    }
    unsigned __int128 p = pow10_u128(-shift);
    unsigned __int128 q = (n + p / 2) / p;
    if (q > (unsigned __int128)INT64_MAX)
        return -1;
    *output4 = (int64_t)q;
    return 0;
}

/* ---- slow path: non-negative integers in base 10^9 -------------------- */

struct big {
    uint32_t limb[BIG_LIMBS]; /* least significant first */
    int n;                    /* limbs in use; 0 for zero */
};

/* v < BIG_BASE. */
static void big_set_small(struct big *b, uint32_t v)
{
    b->limb[0] = v;
    b->n = v > 0;
}

static void big_from_digits(struct big *b, const char *digits, int n)
{
    b->n = 0;
    for (int end = n; end > 0; end -= BIG_BASE_DIGITS) {
        int start = end > BIG_BASE_DIGITS ? end - BIG_BASE_DIGITS : 0;
        b->limb[b->n++] = (uint32_t)digits_value(digits + start, end - start);
    }
    while (b->n > 0 && b->limb[b->n - 1] == 0)
        b->n--;
}

static int big_mul_small(struct big *b, uint32_t m)
{
    uint64_t carry = 0;
    for (int i = 0; i < b->n; i++) {
        uint64_t v = (uint64_t)b->limb[i] * m + carry;
        b->limb[i] = (uint32_t)(v % BIG_BASE);
        carry = v / BIG_BASE;
    }
    if (carry == 0)
        return 0;
    if (b->n == BIG_LIMBS)
        return -1;
    b->limb[b->n++] = (uint32_t)carry;
    return 0;
}

static int big_mul_pow10(struct big *b, int64_t k)
{
    if (b->n == 0)
        return 0;
    int64_t limbs = k / BIG_BASE_DIGITS;
    if (limbs > BIG_LIMBS - b->n)
        return -1;
    memmove(b->limb + limbs, b->limb, (size_t)b->n * sizeof b->limb[0]);
    memset(b->limb, 0, (size_t)limbs * sizeof b->limb[0]);
    b->n += (int)limbs;
    return big_mul_small(b, (uint32_t)pow10_u64(k % BIG_BASE_DIGITS));
}

/* Floor division by 10^k. */
static void big_div_pow10(struct big *b, int64_t k)
{
    int64_t limbs = k / BIG_BASE_DIGITS;
    if (limbs >= b->n) {
        b->n = 0;
        return;
    }
    memmove(b->limb, b->limb + limbs,
            (size_t)(b->n - limbs) * sizeof b->limb[0]);
    b->n -= (int)limbs;

    uint32_t d = (uint32_t)pow10_u64(k % BIG_BASE_DIGITS);
    uint64_t rem = 0;
    for (int i = b->n - 1; i >= 0; i--) {
        uint64_t v = rem * BIG_BASE + b->limb[i];
        b->limb[i] = (uint32_t)(v / d);
        rem = v % d;
    }
    while (b->n > 0 && b->limb[b->n - 1] == 0)
        b->n--;
}

static int big_add(struct big *a, const struct big *b)
{
    uint32_t carry = 0;
    int n = a->n > b->n ? a->n : b->n;
    for (int i = 0; i < n; i++) {
        uint32_t v =
            carry + (i < a->n ? a->limb[i] : 0) + (i < b->n ? b->limb[i] : 0);
        carry = v >= BIG_BASE;
        a->limb[i] = carry ? v - BIG_BASE : v;
    }
    a->n = n;
    if (carry == 0)
        return 0;
    if (a->n == BIG_LIMBS)
        return -1;
    a->limb[a->n++] = carry;
    return 0;
}

static int big_mul(struct big *r, const struct big *a, const struct big *b)
{
    if (a->n + b->n > BIG_LIMBS)
        return -1;
    memset(r->limb, 0, (size_t)(a->n + b->n) * sizeof r->limb[0]);
    for (int i = 0; i < a->n; i++) {
        uint64_t carry = 0;
        for (int j = 0; j < b->n; j++) {
            uint64_t v =
                (uint64_t)a->limb[i] * b->limb[j] + r->limb[i + j] + carry;
            r->limb[i + j] = (uint32_t)(v % BIG_BASE);
            carry = v / BIG_BASE;
        }
        r->limb[i + b->n] = (uint32_t)carry;
    }
    r->n = a->n + b->n;
    while (r->n > 0 && r->limb[r->n - 1] == 0)
        r->n--;
    return 0;
}

static int big_to_i64(const struct big *b, int64_t *out)
{
    unsigned __int128 v = 0;
    if (b->n > 3)
        return -1;
    for (int i = b->n - 1; i >= 0; i--)
        v = v * BIG_BASE + b->limb[i];
    if (v > (unsigned __int128)INT64_MAX)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Set *term = (value + addend) x 10^scale, scale = decimal places. */
static int big_term(const struct fixed_dec *d, uint32_t addend,
                    struct big *term, int *scale)
{
    struct big add;

    *scale = d->exponent < 0 ? -d->exponent : 0;
    if (*scale > FIXED_MAX_SCALE)
        return -1;
    big_from_digits(term, d->digits, d->ndigits);
    if (d->exponent > 0 && big_mul_pow10(term, d->exponent) != 0)
        return -1;
    big_set_small(&add, addend);
    if (big_mul_pow10(&add, *scale) != 0)
        return -1;
    return big_add(term, &add);
}

static int big_output4(const struct fixed_dec *c, const struct fixed_dec *r,
                       int64_t *output4)
{
    struct big a, b, n, half;
    int sa, sb;

    if (big_term(c, 35, &a, &sa) != 0 || big_term(r, 65, &b, &sb) != 0 ||
        big_mul(&n, &a, &b) != 0)
        return -1;

    int shift = 2 - sa - sb;
    if (shift >= 0) {
        if (big_mul_pow10(&n, shift) != 0)
            return -1;
        return big_to_i64(&n, output4);
    }
    /* floor((n + 10^k / 2) / 10^k) rounds half up for n >= 0. */
    big_set_small(&half, 5);
    if (big_mul_pow10(&half, -shift - 1) != 0 || big_add(&n, &half) != 0)
        return -1;
    big_div_pow10(&n, -shift);
    return big_to_i64(&n, output4);
}

int fixed_output4_big(const char *cadence_exact, const char *resistance_exact,
                      int64_t *output4)
{
    struct fixed_dec c, r;

    if (fixed_parse(cadence_exact, &c) != 0 ||
        fixed_parse(resistance_exact, &r) != 0)
        return -1;
    return big_output4(&c, &r, output4);
}

int agg_output4(const char *cadence_exact, const char *resistance_exact,
                int64_t *output4)
{
    struct fixed_dec c, r;
    unsigned __int128 a, b;
    int sa, sb;

    if (fixed_parse(cadence_exact, &c) != 0 ||
        fixed_parse(resistance_exact, &r) != 0)
        return -1;
    if (small_term(&c, 35, &a, &sa) && small_term(&r, 65, &b, &sb))
        return small_output4(a, b, sa + sb, output4);
    return big_output4(&c, &r, output4);
}
