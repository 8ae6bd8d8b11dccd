/*
 * Base64 with the standard alphabet and '=' padding (RFC 4648, section 4).
 * Decoding is strict, so every byte string has exactly one accepted
 * encoding.
 */
#include "common/base64.h"

#include <string.h>

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
 * The same values shifted to their place in the 24 bits of a quad, one
 * table per position, so that a quad decodes with four lookups and three
 * ORs. A byte outside the alphabet has SHIFTED_BAD set, which no valid
 * quad sets.
 */
#define SHIFTED_BAD UINT32_C(0x80000000)
#define SEXTET(c)                                                              \
    ((c) >= 'A' && (c) <= 'Z'   ? (c) - 'A'                                    \
     : (c) >= 'a' && (c) <= 'z' ? (c) - 'a' + 26                               \
     : (c) >= '0' && (c) <= '9' ? (c) - '0' + 52                               \
     : (c) == '+'               ? 62                                           \
     : (c) == '/'               ? 63                                           \
                                : -1)
#define SHIFTED(c, shift)                                                      \
    (SEXTET(c) < 0 ? SHIFTED_BAD : (uint32_t)SEXTET(c) << (shift))
#define SHIFTED4(c, s)                                                         \
    SHIFTED(c, s), SHIFTED((c) + 1, s), SHIFTED((c) + 2, s), SHIFTED((c) + 3, s)
#define SHIFTED16(c, s)                                                        \
    SHIFTED4(c, s), SHIFTED4((c) + 4, s), SHIFTED4((c) + 8, s),                \
        SHIFTED4((c) + 12, s)
#define SHIFTED64(c, s)                                                        \
    SHIFTED16(c, s), SHIFTED16((c) + 16, s), SHIFTED16((c) + 32, s),           \
        SHIFTED16((c) + 48, s)
#define SHIFTED_TABLE(s)                                                       \
    {                                                                          \
        SHIFTED64(0, s), SHIFTED64(64, s), SHIFTED64(128, s),                  \
            SHIFTED64(192, s)                                                  \
    }

static const uint32_t shifted[4][256] = {SHIFTED_TABLE(18), SHIFTED_TABLE(12),
                                         SHIFTED_TABLE(6), SHIFTED_TABLE(0)};

/* Store the three bytes of bits (24 bits, first byte highest) at out, and
 * a fourth byte after them that the caller overwrites or leaves unused. */
static void store_quad(uint8_t *out, uint32_t bits)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint32_t word = __builtin_bswap32(bits << 8);
    memcpy(out, &word, 4);
#elif defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t word = bits << 8;
    memcpy(out, &word, 4);
#else
    out[0] = (uint8_t)(bits >> 16);
    out[1] = (uint8_t)(bits >> 8);
    out[2] = (uint8_t)bits;
    out[3] = 0;
#endif
}

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

    /* Every quad but the last must be four alphabet bytes. Each writes a
     * fourth byte that the next quad overwrites, and the last quad writes
     * at least one byte, so all stay inside out. */
    for (size_t i = 0; i + 4 < n; i += 4) {
        uint32_t bits = shifted[0][s[i]] | shifted[1][s[i + 1]] |
                        shifted[2][s[i + 2]] | shifted[3][s[i + 3]];
        if (bits & SHIFTED_BAD)
            return -1;
        store_quad(out + written, bits);
        written += 3;
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
