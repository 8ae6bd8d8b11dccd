/*
 * Declarations shared by the files of the idempotency library and its
 * tests: SipHash-2-4, the in-memory key index and the LRU cache of
 * COMPLETED rows. Not part of the public interface.
 */
#ifndef PODIUM_STORE_IDEM_INTERNAL_H
#define PODIUM_STORE_IDEM_INTERNAL_H

#include "store/idempotency.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- SipHash-2-4 ------------------------------------------------------ */

#define IDEM_SIPHASH_KEY_LEN 16

/* SipHash-2-4 of data under a 128-bit key, as defined by Aumasson and
 * Bernstein ("SipHash: a fast short-input PRF", 2012). */
uint64_t idem_siphash24(const uint8_t key[IDEM_SIPHASH_KEY_LEN],
                        const void *data, size_t len);

/* ---- in-memory index -------------------------------------------------- */

/*
 * One index entry: a 32-bit fingerprint of the key (0 marks an empty slot)
 * and the row id as an offset from the index's base id. The fingerprint is
 * the high half of the key's SipHash value, and its low bits pick the home
 * slot, so growth and deletion never need the key itself.
 */
struct idem_slot {
    uint32_t fingerprint;
    uint32_t id_offset;
};

/*
 * Open-addressing hash table with linear probing from key hashes to the id
 * of the newest row of each key. Fingerprints may collide, so a lookup
 * returns candidate ids that the caller checks against the stored key.
 */
struct idem_index {
    struct idem_slot *slots; /* owned; capacity is mask + 1, a power of 2 */
    size_t mask;
    size_t count;    /* occupied slots */
    int64_t base_id; /* id of offset 0 */
    uint8_t siphash_key[IDEM_SIPHASH_KEY_LEN];
};

/* A walk over the slots that may hold one key's entry. */
struct idem_probe {
    uint32_t fingerprint;
    size_t next; /* slot to examine next */
    size_t slot; /* slot of the last candidate returned */
};

/* Allocate an empty index with a random SipHash key from getrandom().
 * Returns 0, -ENOMEM, or another negative errno from getrandom(). */
int idem_index_init(struct idem_index *ix);
void idem_index_free(struct idem_index *ix);

/* Hash key with the index's SipHash key (or the test hook, when set). */
uint64_t idem_index_hash(const struct idem_index *ix, const void *key,
                         size_t len);

/* Start a walk over the candidates for a key whose hash is hash. */
void idem_index_probe_start(const struct idem_index *ix, uint64_t hash,
                            struct idem_probe *probe);

/*
 * Advance to the next slot whose fingerprint matches. Returns true with
 * *id set and probe->slot naming the slot, or false at the first empty
 * slot, after which the key has no further candidate.
 */
bool idem_index_probe_next(const struct idem_index *ix,
                           struct idem_probe *probe, int64_t *id);

/* Point the candidate slot of probe at id, a row newer than every row in
 * the index. Returns 0 or -ERANGE when ids span 2^32 or more. */
int idem_index_replace(struct idem_index *ix, const struct idem_probe *probe,
                       int64_t id);

/* Delete the candidate slot of probe by backward shift. The next call to
 * idem_index_probe_next() continues the walk correctly. */
void idem_index_remove(struct idem_index *ix, struct idem_probe *probe);

/*
 * Add an entry for a key that has none, growing the table first when the
 * load factor would pass 0.75. id must be newer than every id in the
 * index. Returns 0, -ENOMEM or -ERANGE.
 */
int idem_index_insert(struct idem_index *ix, uint64_t hash, int64_t id);

/* Delete the entry of the key with this hash when it points at id.
 * Returns true when an entry went. */
bool idem_index_remove_id(struct idem_index *ix, uint64_t hash, int64_t id);

size_t idem_index_capacity(const struct idem_index *ix);

/*
 * Test hook: replace SipHash by hash in every index (NULL restores
 * SipHash), so that tests can force fingerprint and slot collisions.
 * Never set outside tests; it is process-wide and not thread-safe.
 */
void idem_index_set_test_hash(uint64_t (*hash)(const void *key, size_t len));

/* ---- LRU cache of COMPLETED rows -------------------------------------- */

struct idem_cache_entry;

/* Fixed-capacity LRU map from key bytes to a copy of a COMPLETED row. */
struct idem_cache {
    struct idem_cache_entry **buckets; /* owned; mask + 1 chains */
    size_t mask;
    size_t count;
    size_t capacity;               /* 0: the cache is off */
    struct idem_cache_entry *head; /* most recently used */
    struct idem_cache_entry *tail; /* least recently used */
};

/* Set up a cache of capacity entries (0 turns it off). Returns 0 or
 * -ENOMEM. */
int idem_cache_init(struct idem_cache *cache, size_t capacity);
void idem_cache_free(struct idem_cache *cache);

/*
 * Find key's entry and mark it most recently used. An entry that expired
 * by now_s is evicted and not returned. The returned record is borrowed
 * until the next call that changes the cache.
 */
const struct idem_record *idem_cache_get(struct idem_cache *cache,
                                         uint64_t hash, const void *key,
                                         size_t len, int64_t now_s);

/*
 * Store a copy of rec (a COMPLETED row) for key, replacing an older entry
 * and evicting the least recently used one when full. A failed allocation
 * only leaves the key uncached, because the cache is an optimization.
 */
void idem_cache_put(struct idem_cache *cache, uint64_t hash, const void *key,
                    size_t len, const struct idem_record *rec);

void idem_cache_remove(struct idem_cache *cache, uint64_t hash, const void *key,
                       size_t len);
void idem_cache_clear(struct idem_cache *cache);

#endif
