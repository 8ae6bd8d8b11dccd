/*
 * In-memory index of the idempotency table: key hash to the id of the
 * newest row of that key, in 8-byte slots (see struct idem_slot).
 *
 * Keys come from devices, so the hash is SipHash-2-4 under a random key per
 * index: a sender who does not know it cannot pick keys that pile into one
 * probe sequence. Linear probing keeps a lookup to a few adjacent slots,
 * and deletion shifts the following entries of the cluster back into the
 * hole, so no tombstones pile up under steady expiry.
 */
#include "store/idem_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#define MIN_CAPACITY 64
/* Capacity stays a power of 2 that the 32-bit fingerprint can address. */
#define MAX_CAPACITY ((size_t)1 << 31)

static uint64_t (*test_hash)(const void *key, size_t len);

/* ---- SipHash-2-4 ------------------------------------------------------ */

static uint64_t rotl(uint64_t x, int b)
{
    return (x << b) | (x >> (64 - b));
}

/* Read 8 bytes as a little-endian number. memcpy compiles to one load. */
static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;

    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

/* One SipRound on the state v0..v3, kept in local variables so that the
 * compiler keeps them in registers. */
#define SIP_ROUND(v0, v1, v2, v3)                                              \
    do {                                                                       \
        v0 += v1;                                                              \
        v1 = rotl(v1, 13);                                                     \
        v1 ^= v0;                                                              \
        v0 = rotl(v0, 32);                                                     \
        v2 += v3;                                                              \
        v3 = rotl(v3, 16);                                                     \
        v3 ^= v2;                                                              \
        v0 += v3;                                                              \
        v3 = rotl(v3, 21);                                                     \
        v3 ^= v0;                                                              \
        v2 += v1;                                                              \
        v1 = rotl(v1, 17);                                                     \
        v1 ^= v2;                                                              \
        v2 = rotl(v2, 32);                                                     \
    } while (0)

uint64_t idem_siphash24(const uint8_t key[IDEM_SIPHASH_KEY_LEN],
                        const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL;
    uint64_t v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL;
    uint64_t v3 = k1 ^ 0x7465646279746573ULL;
    size_t full = len - len % 8;

    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = load_le64(in + i);
        v3 ^= m;
        SIP_ROUND(v0, v1, v2, v3);
        SIP_ROUND(v0, v1, v2, v3);
        v0 ^= m;
    }

    /* The last block holds the remaining bytes and len mod 256 on top. */
    uint64_t last = (uint64_t)(len & 0xff) << 56;
    for (size_t i = 0; i < len % 8; i++)
        last |= (uint64_t)in[full + i] << (8 * i);
    v3 ^= last;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    v0 ^= last;

    v2 ^= 0xff;
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    SIP_ROUND(v0, v1, v2, v3);
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- slots ------------------------------------------------------------ */

static uint32_t fingerprint_of(uint64_t hash)
{
    uint32_t fp = (uint32_t)(hash >> 32);

    return fp != 0 ? fp : 1; /* 0 marks an empty slot */
}

static size_t home_slot(size_t mask, uint32_t fingerprint)
{
    return fingerprint & mask;
}

/* Transparent huge pages are 2 MiB on x86-64 and most arm64 kernels. */
#define HUGE_PAGE_BYTES ((size_t)2 << 20)

/*
 * Allocate capacity zeroed slots. Every lookup lands on a random slot, so
 * once the array is larger than the TLB covers, each one also costs a page
 * table walk, which is dear in a virtual machine. Arrays of 2 MiB and more
 * are aligned to 2 MiB and marked for transparent huge pages (a hint: the
 * kernel may decline, and the index works the same), which keeps the cost
 * per lookup from growing with the table.
 */
static struct idem_slot *alloc_slots(size_t capacity)
{
    size_t bytes = capacity * sizeof(struct idem_slot);
    void *p = NULL;

    if (bytes < HUGE_PAGE_BYTES)
        return calloc(capacity, sizeof(struct idem_slot));
    if (posix_memalign(&p, HUGE_PAGE_BYTES, bytes) != 0)
        return NULL;
#ifdef MADV_HUGEPAGE
    (void)madvise(p, bytes, MADV_HUGEPAGE);
#endif
    memset(p, 0, bytes);
    return p;
}

/* Place an entry in the first empty slot of its probe sequence. */
static void place(struct idem_slot *slots, size_t mask, struct idem_slot s)
{
    size_t i = home_slot(mask, s.fingerprint);

    while (slots[i].fingerprint != 0)
        i = (i + 1) & mask;
    slots[i] = s;
}

int idem_index_init(struct idem_index *ix)
{
    memset(ix, 0, sizeof *ix);

    size_t got = 0;
    while (got < sizeof ix->siphash_key) {
        ssize_t n =
            getrandom(ix->siphash_key + got, sizeof ix->siphash_key - got, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        got += (size_t)n;
    }

    ix->slots = alloc_slots(MIN_CAPACITY);
    if (ix->slots == NULL)
        return -ENOMEM;
    ix->mask = MIN_CAPACITY - 1;
    return 0;
}

void idem_index_free(struct idem_index *ix)
{
    free(ix->slots);
    ix->slots = NULL;
    ix->count = 0;
}

size_t idem_index_capacity(const struct idem_index *ix)
{
    return ix->mask + 1;
}

void idem_index_set_test_hash(uint64_t (*hash)(const void *key, size_t len))
{
    test_hash = hash;
}

uint64_t idem_index_hash(const struct idem_index *ix, const void *key,
                         size_t len)
{
    if (test_hash != NULL)
        return test_hash(key, len);
    return idem_siphash24(ix->siphash_key, key, len);
}

/* ---- ids -------------------------------------------------------------- */

static int64_t slot_id(const struct idem_index *ix, const struct idem_slot *s)
{
    return ix->base_id + (int64_t)s->id_offset;
}

/*
 * Move the base to the lowest id in the index (or id, when lower), so that
 * id gets an offset below 2^32 again. Ids only grow and expiry deletes the
 * oldest rows, so this runs about once per 2^32 claims.
 */
static int rebase(struct idem_index *ix, int64_t id)
{
    int64_t lo = id, hi = id;

    for (size_t i = 0; i <= ix->mask; i++) {
        if (ix->slots[i].fingerprint == 0)
            continue;
        int64_t v = slot_id(ix, &ix->slots[i]);
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
    }
    if ((uint64_t)hi - (uint64_t)lo > UINT32_MAX)
        return -ERANGE;

    for (size_t i = 0; i <= ix->mask; i++) {
        struct idem_slot *s = &ix->slots[i];
        if (s->fingerprint != 0)
            s->id_offset = (uint32_t)(slot_id(ix, s) - lo);
    }
    ix->base_id = lo;
    return 0;
}

/* Compute the offset of id, rebasing first when it does not fit. */
static int offset_of(struct idem_index *ix, int64_t id, uint32_t *offset)
{
    if (ix->count == 0)
        ix->base_id = id;
    if (id < ix->base_id || (uint64_t)id - (uint64_t)ix->base_id > UINT32_MAX) {
        int rc = rebase(ix, id);
        if (rc != 0)
            return rc;
    }
    *offset = (uint32_t)(id - ix->base_id);
    return 0;
}

/* ---- lookup and update ------------------------------------------------ */

void idem_index_probe_start(const struct idem_index *ix, uint64_t hash,
                            struct idem_probe *probe)
{
    probe->fingerprint = fingerprint_of(hash);
    probe->next = home_slot(ix->mask, probe->fingerprint);
    probe->slot = probe->next;
}

bool idem_index_probe_next(const struct idem_index *ix,
                           struct idem_probe *probe, int64_t *id)
{
    /* The load factor stays below 1, so an empty slot always ends this. */
    for (;;) {
        size_t i = probe->next;
        const struct idem_slot *s = &ix->slots[i];
        if (s->fingerprint == 0)
            return false;
        probe->next = (i + 1) & ix->mask;
        if (s->fingerprint == probe->fingerprint) {
            probe->slot = i;
            *id = slot_id(ix, s);
            return true;
        }
    }
}

int idem_index_replace(struct idem_index *ix, const struct idem_probe *probe,
                       int64_t id)
{
    uint32_t offset;
    int rc = offset_of(ix, id, &offset);

    if (rc != 0)
        return rc;
    ix->slots[probe->slot].id_offset = offset;
    return 0;
}

/* Delete slot i and close the gap: each later entry of the cluster moves
 * back into the hole unless that would put it before its home slot. */
static void remove_at(struct idem_index *ix, size_t i)
{
    size_t mask = ix->mask;
    size_t j = i;

    for (;;) {
        j = (j + 1) & mask;
        struct idem_slot s = ix->slots[j];
        if (s.fingerprint == 0)
            break;
        size_t home = home_slot(mask, s.fingerprint);
        /* The hole at i lies on the path from home to j when it is no
         * farther from j than home is. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            ix->slots[i] = s;
            i = j;
        }
    }
    ix->slots[i].fingerprint = 0;
    ix->slots[i].id_offset = 0;
    ix->count--;
}

void idem_index_remove(struct idem_index *ix, struct idem_probe *probe)
{
    remove_at(ix, probe->slot);
    /* An entry may have moved into the slot, so examine it again. */
    probe->next = probe->slot;
}

static int grow(struct idem_index *ix)
{
    size_t capacity = (ix->mask + 1) * 2;

    if (capacity > MAX_CAPACITY)
        return -ENOMEM;
    struct idem_slot *slots = alloc_slots(capacity);
    if (slots == NULL)
        return -ENOMEM;

    for (size_t i = 0; i <= ix->mask; i++) {
        if (ix->slots[i].fingerprint != 0)
            place(slots, capacity - 1, ix->slots[i]);
    }
    free(ix->slots);
    ix->slots = slots;
    ix->mask = capacity - 1;
    return 0;
}

int idem_index_insert(struct idem_index *ix, uint64_t hash, int64_t id)
{
    /* count + 1 <= 0.75 * capacity */
    if ((ix->count + 1) * 4 > (ix->mask + 1) * 3) {
        int rc = grow(ix);
        if (rc != 0)
            return rc;
    }

    struct idem_slot s = {fingerprint_of(hash), 0};
    int rc = offset_of(ix, id, &s.id_offset);
    if (rc != 0)
        return rc;
    place(ix->slots, ix->mask, s);
    ix->count++;
    return 0;
}

bool idem_index_remove_id(struct idem_index *ix, uint64_t hash, int64_t id)
{
    struct idem_probe probe;
    int64_t candidate;

    idem_index_probe_start(ix, hash, &probe);
    while (idem_index_probe_next(ix, &probe, &candidate)) {
        if (candidate == id) {
            idem_index_remove(ix, &probe);
            return true;
        }
    }
    return false;
}
