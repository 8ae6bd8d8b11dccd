/*
 * Exact decimal arithmetic on canonical number texts, internal to the
 * aggregator. A canonical text is "0", or a digit string without leading or
 * trailing zeros, optionally followed by 'e' and a decimal exponent without
 * leading zeros ("798e-1" is 79.8, "8e1" is 80). Only non-negative values
 * are accepted: the record rules reject negative cadence and resistance
 * before any arithmetic runs.
 */
#ifndef PODIUM_AGGREGATOR_FIXED_H
#define PODIUM_AGGREGATOR_FIXED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest exponent magnitude fixed_parse accepts. */
#define FIXED_MAX_EXPONENT 100000

/* A decoded canonical text: value = digits x 10^exponent. */
struct fixed_dec {
    const char *digits; /* borrowed from the text; not NUL-terminated */
    int ndigits;        /* 0 for zero */
    int32_t exponent;
};

/* Decode a canonical text. Returns 0, or -1 when it is not canonical. */
int fixed_parse(const char *text, struct fixed_dec *dec);

/*
 * Position of the leading digit: 0 for values in [1, 10), -1 for [0.1, 1),
 * 2 for [100, 1000). Zero returns 0.
 */
int64_t fixed_adjusted_exponent(const struct fixed_dec *dec);

/* Compare two decoded values: negative, zero or positive like strcmp. */
int fixed_cmp(const struct fixed_dec *a, const struct fixed_dec *b);

/*
 * Round a canonical text half up to 1/10000 units into *value4. *exact
 * is set to whether no digit was dropped. Returns 0, or -1 when the text is not
 * canonical or the result does not fit in 18 digits.
 */
int fixed_round4(const char *text, int64_t *value4, bool *exact);

/*
 * Write the canonical text of value4 / 10000 (value4 >= 0) into buf.
 * Returns 0, or -1 when buf is too small.
 */
int fixed_format4(int64_t value4, char *buf, size_t buf_len);

/*
 * The scoring formula computed with the multi-limb integers only, whatever
 * the size of the operands. agg_output4 must return the same result; the
 * tests compare both paths.
 */
int fixed_output4_big(const char *cadence_exact, const char *resistance_exact,
                      int64_t *output4);

#endif
