/*
 * LRU cache of COMPLETED idempotency rows: a chained hash map over the key
 * bytes plus a doubly linked list in order of use. It answers the common
 * case, a duplicate that arrives soon after the original, without a
 * database read. INPROGRESS rows are never cached, because another owner
 * may take them over or they may be released at any time.
 */
#include "store/idem_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct idem_cache_entry {
    struct idem_cache_entry *chain; /* next entry of the same bucket */
    struct idem_cache_entry *prev;  /* toward the most recently used */
    struct idem_cache_entry *next;  /* toward the least recently used */
    uint64_t hash;
    struct idem_record record;
    size_t key_len;
    size_t key_cap;      /* bytes allocated for key */
    unsigned char key[]; /* key_len bytes */
};

/* Key bytes allocated at least, so an evicted entry can usually take the
 * next key (a UUID key has 38 bytes) without a new allocation. */
#define MIN_KEY_CAP 64

int idem_cache_init(struct idem_cache *cache, size_t capacity)
{
    memset(cache, 0, sizeof *cache);
    if (capacity == 0)
        return 0;

    /* At most one entry per bucket on average keeps chains short. */
    size_t buckets = 16;
    while (buckets < capacity)
        buckets *= 2;
    cache->buckets = calloc(buckets, sizeof *cache->buckets);
    if (cache->buckets == NULL)
        return -ENOMEM;
    cache->mask = buckets - 1;
    cache->capacity = capacity;
    return 0;
}

static struct idem_cache_entry **bucket_of(struct idem_cache *cache,
                                           uint64_t hash)
{
    return &cache->buckets[hash & cache->mask];
}

/* Return the link that points at key's entry, or at the chain's NULL end. */
static struct idem_cache_entry **
find_link(struct idem_cache *cache, uint64_t hash, const void *key, size_t len)
{
    struct idem_cache_entry **link = bucket_of(cache, hash);

    while (*link != NULL) {
        struct idem_cache_entry *e = *link;
        if (e->hash == hash && e->key_len == len &&
            memcmp(e->key, key, len) == 0)
            break;
        link = &e->chain;
    }
    return link;
}

static void list_unlink(struct idem_cache *cache, struct idem_cache_entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        cache->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        cache->tail = e->prev;
    e->prev = e->next = NULL;
}

static void list_push_front(struct idem_cache *cache,
                            struct idem_cache_entry *e)
{
    e->prev = NULL;
    e->next = cache->head;
    if (cache->head != NULL)
        cache->head->prev = e;
    cache->head = e;
    if (cache->tail == NULL)
        cache->tail = e;
}

/* Unlink the entry that *link points at from its chain and the list, and
 * return it. */
static struct idem_cache_entry *unlink_entry(struct idem_cache *cache,
                                             struct idem_cache_entry **link)
{
    struct idem_cache_entry *e = *link;

    *link = e->chain;
    list_unlink(cache, e);
    cache->count--;
    return e;
}

static void drop(struct idem_cache *cache, struct idem_cache_entry **link)
{
    free(unlink_entry(cache, link));
}

const struct idem_record *idem_cache_get(struct idem_cache *cache,
                                         uint64_t hash, const void *key,
                                         size_t len, int64_t now_s)
{
    if (cache->capacity == 0)
        return NULL;

    struct idem_cache_entry **link = find_link(cache, hash, key, len);
    struct idem_cache_entry *e = *link;
    if (e == NULL)
        return NULL;
    if (e->record.expiry_s <= now_s) {
        drop(cache, link);
        return NULL;
    }
    list_unlink(cache, e);
    list_push_front(cache, e);
    return &e->record;
}

void idem_cache_remove(struct idem_cache *cache, uint64_t hash, const void *key,
                       size_t len)
{
    if (cache->capacity == 0)
        return;

    struct idem_cache_entry **link = find_link(cache, hash, key, len);
    if (*link != NULL)
        drop(cache, link);
}

/* Unlink the least recently used entry and return it. */
static struct idem_cache_entry *evict_tail(struct idem_cache *cache)
{
    struct idem_cache_entry *e = cache->tail;

    return unlink_entry(cache, find_link(cache, e->hash, e->key, e->key_len));
}

void idem_cache_put(struct idem_cache *cache, uint64_t hash, const void *key,
                    size_t len, const struct idem_record *rec)
{
    if (cache->capacity == 0)
        return;

    idem_cache_remove(cache, hash, key, len);

    /* Reuse the evicted entry when the key fits in it. */
    struct idem_cache_entry *e = NULL;
    if (cache->count == cache->capacity)
        e = evict_tail(cache);
    if (e != NULL && e->key_cap < len) {
        free(e);
        e = NULL;
    }
    if (e == NULL) {
        size_t cap = len > MIN_KEY_CAP ? len : MIN_KEY_CAP;
        e = malloc(sizeof *e + cap);
        if (e == NULL)
            return;
        e->key_cap = cap;
    }
    e->hash = hash;
    e->record = *rec;
    e->key_len = len;
    memcpy(e->key, key, len);

    struct idem_cache_entry **bucket = bucket_of(cache, hash);
    e->chain = *bucket;
    *bucket = e;
    list_push_front(cache, e);
    cache->count++;
}

void idem_cache_clear(struct idem_cache *cache)
{
    while (cache->tail != NULL)
        free(evict_tail(cache));
}

void idem_cache_free(struct idem_cache *cache)
{
    idem_cache_clear(cache);
    free(cache->buckets);
    cache->buckets = NULL;
    cache->capacity = 0;
}
