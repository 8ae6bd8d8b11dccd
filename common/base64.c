/*
 * Base64 with the standard alphabet and '=' padding (RFC 4648, section 4).
 * Decoding is strict, so every byte string has exactly one accepted
 * encoding.
 */
#include "common/base64.h"

static const char alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Table value of a byte outside the alphabet. Its two high bits are set, so
 * one test on the OR of four lookups finds any invalid byte. */
#define BAD 0xFF

/* Six-bit value of each byte of the alphabet, BAD for all others ('='
 * included, because padding is checked separately). */
/* clang-format off */
static const uint8_t decode_table[256] = {
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD,  62, BAD, BAD, BAD,  63,
     52,  53,  54,  55,  56,  57,  58,  59,
     60,  61, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD,   0,   1,   2,   3,   4,   5,   6,
      7,   8,   9,  10,  11,  12,  13,  14,
     15,  16,  17,  18,  19,  20,  21,  22,
     23,  24,  25, BAD, BAD, BAD, BAD, BAD,
    BAD,  26,  27,  28,  29,  30,  31,  32,
     33,  34,  35,  36,  37,  38,  39,  40,
     41,  42,  43,  44,  45,  46,  47,  48,
     49,  50,  51, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
    BAD, BAD, BAD, BAD, BAD, BAD, BAD, BAD,
};
/* clang-format on */

/*
 * Decode the final quad q, which may end in "=" or "==", into out. Returns
 * the byte count (1 to 3), or -1 when a byte is invalid or the bits that
 * padding leaves unused are not zero.
 */
static int decode_last_quad(const unsigned char *q, uint8_t *out)
{
    uint32_t a = decode_table[q[0]], b = decode_table[q[1]];

    if ((a | b) & 0xC0)
        return -1;
    if (q[2] == '=' && q[3] == '=') {
        if (b & 0x0F)
            return -1;
        out[0] = (uint8_t)(a << 2 | b >> 4);
        return 1;
    }

    uint32_t c = decode_table[q[2]];
    if (c & 0xC0)
        return -1;
    if (q[3] == '=') {
        if (c & 0x03)
            return -1;
        out[0] = (uint8_t)(a << 2 | b >> 4);
        out[1] = (uint8_t)(b << 4 | c >> 2);
        return 2;
    }

    uint32_t d = decode_table[q[3]];
    if (d & 0xC0)
        return -1;
    uint32_t bits = a << 18 | b << 12 | c << 6 | d;
    out[0] = (uint8_t)(bits >> 16);
    out[1] = (uint8_t)(bits >> 8);
    out[2] = (uint8_t)bits;
    return 3;
}

int base64_decode(const char *in, size_t n, uint8_t *out, size_t *out_len)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t written = 0;

    if (n % 4 != 0)
        return -1;
    if (n == 0) {
        *out_len = 0;
        return 0;
    }

    /* Every quad but the last must be four alphabet bytes. */
    for (size_t i = 0; i + 4 < n; i += 4) {
        uint32_t a = decode_table[s[i]], b = decode_table[s[i + 1]];
        uint32_t c = decode_table[s[i + 2]], d = decode_table[s[i + 3]];
        if ((a | b | c | d) & 0xC0)
            return -1;
        uint32_t bits = a << 18 | b << 12 | c << 6 | d;
        out[written++] = (uint8_t)(bits >> 16);
        out[written++] = (uint8_t)(bits >> 8);
        out[written++] = (uint8_t)bits;
    }

    int last = decode_last_quad(s + n - 4, out + written);
    if (last < 0)
        return -1;
    *out_len = written + (size_t)last;
    return 0;
}

size_t base64_encode(const uint8_t *in, size_t n, char *out)
{
    size_t i = 0, o = 0;

    for (; i + 3 <= n; i += 3) {
        uint32_t bits =
            (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[bits >> 18];
        out[o++] = alphabet[(bits >> 12) & 63];
        out[o++] = alphabet[(bits >> 6) & 63];
        out[o++] = alphabet[bits & 63];
    }

    /* When one or two bytes remain, pad the quad with '=' per missing byte. */
    if (i < n) {
        uint32_t bits = (uint32_t)in[i] << 16;
        if (i + 1 < n)
            bits |= (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[bits >> 18];
        out[o++] = alphabet[(bits >> 12) & 63];
        out[o++] = i + 1 < n ? alphabet[(bits >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}
