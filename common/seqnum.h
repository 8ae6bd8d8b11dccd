/*
 * Kinesis sequence numbers: decimal strings of up to 129 digits, far beyond
 * 64 bits. They are compared as big decimal numbers (length first, then
 * digits), never as doubles.
 */
#ifndef PODIUM_COMMON_SEQNUM_H
#define PODIUM_COMMON_SEQNUM_H

#include <stdbool.h>
#include <stdint.h>

#define SEQNUM_MAX_DIGITS 129

/* True for "0" or a non-zero digit followed by up to 128 digits. */
bool seqnum_valid(const char *s);

/* Compare two valid sequence numbers: <0, 0 or >0. */
int seqnum_cmp(const char *a, const char *b);

/*
 * Compare extended sequence numbers (sequence, sub-sequence), the position of
 * a user record inside a KPL aggregate. A plain record has sub-sequence 0.
 */
int seqnum_cmp_ext(const char *a, int64_t a_sub, const char *b, int64_t b_sub);

#endif
