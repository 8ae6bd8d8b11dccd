/*
 * Race leaderboards: ranking the riders at one second and writing the
 * message. Everything in the message derives from the stored samples, so
 * equal sample sets give equal bytes whatever order the records came in.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
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
                        const struct board_entry *e, int64_t rank)
{
    const struct rider *rider = &race->riders[e->rider];
    const struct slot *slot = &rider->slots[e->latest - 1];
    const struct arena_text *name = &rider->names[slot->name_idx];

    sb_printf(sb, "{\"rank\":%" PRId64 ",\"racerId\":", rank);
    agg_id_to_json(&rider->id, sb);
    sb_puts(sb, ",\"name\":");
    sb_json_string(sb, rider->arena + name->at, name->len);
    sb_puts(sb, ",\"classId\":");
    agg_id_to_json(&rider->classes[slot->class_idx], sb);
    sb_printf(sb, ",\"second\":%" PRId32 ",\"cadence\":", e->latest);
    sb_fixed4(sb, slot->cadence4);
    sb_puts(sb, ",\"resistance\":");
    sb_fixed4(sb, slot->resistance4);
    sb_puts(sb, ",\"output\":");
    sb_fixed4(sb, slot->output4);
    sb_puts(sb, ",\"total\":");
    sb_fixed4(sb, e->total4);
    sb_putc(sb, '}');
}

/*
 * Write the leaderboard of second into agg->doc. Equal totals share the
 * rank of the first of them (1, 2, 2, 4), and the list stops after top_n
 * entries even inside a tie, where racerId order decides who is listed.
 */
static int board_write(struct agg *agg, struct race *race, int32_t second)
{
    int64_t count = board_rank(agg, race, second);
    struct strbuf *sb = &agg->doc;
    int64_t rank = 0;

    if (count < 0)
        return (int)count;
    if (agg->cfg.top_n > 0 && count > agg->cfg.top_n)
        count = agg->cfg.top_n;

    sb_reset(sb);
    sb_puts(sb, "{\"type\":\"leaderboard\",\"raceId\":");
    agg_id_to_json(&race->id, sb);
    sb_printf(sb,
              ",\"second\":%" PRId32 ",\"revision\":%" PRId32 ",\"ts\":%" PRId64
              ",\"entries\":[",
              second, race->seconds[second - 1].revision,
              race_ts_at(race, second));
    for (int64_t i = 0; i < count; i++) {
        const struct board_entry *e = &agg->board[i];
        if (i == 0 || e->total4 != e[-1].total4)
            rank = i + 1;
        if (i > 0)
            sb_putc(sb, ',');
        write_entry(sb, race, e, rank);
    }
    sb_puts(sb, "]}");
    return sb_error(sb);
}

int board_publish(struct agg *agg, struct race *race, int32_t second)
{
    int rc = board_write(agg, race, second);
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
    return agg->sink.message(agg->sink.arg, &msg);
}
