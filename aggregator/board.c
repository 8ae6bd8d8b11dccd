/*
 * Race leaderboards and race results: ranking the riders at one second and
 * writing the message. Everything in the message derives from the stored
 * samples, so equal sample sets give equal bytes whatever order the records
 * came in.
 *
 * Results have the leaderboard's shape at the race's last second, with
 * "type":"results" and two more members per entry. "final" tells whether
 * the rider sent event "final". "finalOutput" is the output of the rider's
 * last sample flagged final, or of the rider's last sample when none is.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdlib.h>

/* Total descending, then racerId ascending: a total order, because racer
 * ids are unique within a race. */
static int entry_cmp(const void *pa, const void *pb)
{
    const struct board_entry *a = pa;
    const struct board_entry *b = pb;

    if (a->total4 != b->total4)
        return a->total4 > b->total4 ? -1 : 1;
    return agg_id_cmp(a->racer, b->racer);
}

/*
 * Fill agg->board with every rider that has a sample at or before second,
 * sorted into leaderboard order. Returns the entry count, or -ENOMEM.
 */
static int64_t board_rank(struct agg *agg, struct race *race, int32_t second)
{
    uint32_t n = 0;

    if (agg->board_cap < race->rider_count) {
        struct board_entry *p =
            realloc(agg->board, race->rider_count * sizeof *p);
        if (p == NULL)
            return -ENOMEM;
        agg->board = p;
        agg->board_cap = race->rider_count;
    }
    for (uint32_t i = 0; i < race->rider_count; i++) {
        struct rider *rider = &race->riders[i];
        if (rider->min_second == 0 || rider->min_second > second)
            continue;
        struct board_entry *e = &agg->board[n++];
        e->rider = i;
        e->racer = &rider->id;
        rider_total_at(rider, second, &e->total4, &e->latest);
    }
    qsort(agg->board, n, sizeof agg->board[0], entry_cmp);
    return n;
}

static void write_entry(struct strbuf *sb, const struct race *race,
                        const struct board_entry *e, int64_t rank, bool results)
{
    const struct rider *rider = &race->riders[e->rider];
    const struct slot *slot = rider_slot(rider, e->latest);
    const struct arena_text *name = &rider->names[slot->name_idx];

    sb_puts(sb, "{\"rank\":");
    sb_int64(sb, rank);
    sb_puts(sb, ",\"racerId\":");
    agg_id_to_json(&rider->id, sb);
    sb_puts(sb, ",\"name\":");
    sb_json_string(sb, rider->arena + name->at, name->len);
    sb_puts(sb, ",\"classId\":");
    agg_id_to_json(&rider->classes[slot->class_idx], sb);
    sb_puts(sb, ",\"second\":");
    sb_int64(sb, e->latest);
    sb_puts(sb, ",\"cadence\":");
    sb_fixed4(sb, slot->cadence4);
    sb_puts(sb, ",\"resistance\":");
    sb_fixed4(sb, slot->resistance4);
    sb_puts(sb, ",\"output\":");
    sb_fixed4(sb, slot->output4);
    sb_puts(sb, ",\"total\":");
    sb_fixed4(sb, e->total4);
    if (results) {
        const struct slot *final = slot;
        if (rider->final_second > 0)
            final = rider_slot(rider, rider->final_second);
        sb_printf(sb, ",\"final\":%s,\"finalOutput\":",
                  rider->final_second > 0 ? "true" : "false");
        sb_fixed4(sb, final->output4);
    }
    sb_putc(sb, '}');
}

/*
 * Write the leaderboard of second, or the results when results is true,
 * into agg->doc. Equal totals share the rank of the first of them (1, 2,
 * 2, 4), and the list stops after top_n entries even inside a tie, where
 * racerId order decides who is listed. *revision_at receives the offset of
 * the revision digits, which doc_hash leaves out.
 */
static int board_write(struct agg *agg, struct race *race, int32_t second,
                       int32_t revision, bool results, size_t *revision_at,
                       size_t *revision_len, uint32_t *listed)
{
    int64_t count = board_rank(agg, race, second);
    struct strbuf *sb = &agg->doc;
    int64_t rank = 0;

    if (count < 0)
        return (int)count;
    if (agg->cfg.top_n > 0 && count > agg->cfg.top_n)
        count = agg->cfg.top_n;
    *listed = (uint32_t)count;

    sb_reset(sb);
    sb_printf(sb, "{\"type\":\"%s\",\"raceId\":",
              results ? "results" : "leaderboard");
    agg_id_to_json(&race->id, sb);
    sb_printf(sb, ",\"second\":%" PRId32 ",\"revision\":", second);
    *revision_at = sb->len;
    sb_printf(sb, "%" PRId32, revision);
    *revision_len = sb->len - *revision_at;
    sb_printf(sb, ",\"ts\":%" PRId64 ",\"entries\":[",
              race_ts_at(race, second));
    for (int64_t i = 0; i < count; i++) {
        const struct board_entry *e = &agg->board[i];
        if (i == 0 || e->total4 != e[-1].total4)
            rank = i + 1;
        if (i > 0)
            sb_putc(sb, ',');
        write_entry(sb, race, e, rank, results);
    }
    sb_puts(sb, "]}");
    return sb_error(sb);
}

int doc_hash(const struct strbuf *doc, size_t skip_at, size_t len,
             uint8_t hash[32])
{
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int n = 0;
    int rc = -ENOMEM;

    if (ctx == NULL)
        return -ENOMEM;
    if (EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
        EVP_DigestUpdate(ctx, doc->data, skip_at) == 1 &&
        EVP_DigestUpdate(ctx, doc->data + skip_at + len,
                         doc->len - skip_at - len) == 1 &&
        EVP_DigestFinal_ex(ctx, hash, &n) == 1)
        rc = 0;
    EVP_MD_CTX_free(ctx);
    return rc;
}

int results_write(struct agg *agg, struct race *race, int32_t revision,
                  uint8_t hash[32])
{
    size_t at, len;
    uint32_t listed;
    int rc = board_write(agg, race, race->latest_second, revision, true, &at,
                         &len, &listed);
    return rc != 0 ? rc : doc_hash(&agg->doc, at, len, hash);
}

int board_publish(struct agg *agg, struct race *race, int32_t second)
{
    size_t at, len;
    uint32_t listed;
    int rc = board_write(agg, race, second, race->seconds[second - 1].revision,
                         false, &at, &len, &listed);
    if (rc != 0)
        return rc;

    struct agg_message msg = {
        .kind = AGG_MSG_RACE_LEADERBOARD,
        .race = &race->id,
        .class_id = NULL,
        .second = second,
        .revision = race->seconds[second - 1].revision,
        .payload = agg->doc.data,
        .payload_len = agg->doc.len,
    };
    rc = agg->sink.message(agg->sink.arg, &msg);
    if (rc == 0 && agg->cfg.alleycat)
        rc = alleycat_publish(agg, race, second, listed);
    return rc;
}
