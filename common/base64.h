/* Standard base64 (RFC 4648, with padding), as Kinesis uses for Data. */
#ifndef PODIUM_COMMON_BASE64_H
#define PODIUM_COMMON_BASE64_H

#include <stddef.h>
#include <stdint.h>

/* Bytes needed to decode n characters of base64 (an upper bound). */
#define BASE64_DECODED_MAX(n) (((n) / 4 + 1) * 3)
/* Characters needed to encode n bytes, without the terminating NUL. */
#define BASE64_ENCODED_LEN(n) ((((n) + 2) / 3) * 4)

/*
 * Decode n characters of padded base64 into out (at least
 * BASE64_DECODED_MAX(n) bytes). Rejects characters outside the alphabet,
 * wrong padding, a length that is not a multiple of 4, and non-zero unused
 * bits. Returns 0 and sets *out_len, or -1 when the input is invalid.
 */
int base64_decode(const char *in, size_t n, uint8_t *out, size_t *out_len);

/* Encode n bytes into out (BASE64_ENCODED_LEN(n) + 1 bytes, NUL-ended). */
size_t base64_encode(const uint8_t *in, size_t n, char *out);

#endif
