/*
 * Messages for the web frontend of the Alleycat sample application, which
 * subscribes to one topic and reads this shape (one line here):
 *
 *   {"msg":"results","classId":"1","raceId":"race-5402746",
 *    "ts":"1620824038331","results":"{\"0\":123.4567,\"1\":98.5}"}
 *
 * classId, raceId and ts are strings, and results is a JSON object encoded
 * once more as a string, mapping each racerId to that rider's output. The
 * frontend keeps the messages whose parseInt(classId) is the class shown,
 * merges the results of every race of that class by racerId, a later
 * message replacing an earlier one, and sorts them itself.
 *
 * One message goes out per class listed in a race leaderboard, right after
 * that leaderboard and in classId order, so an amended leaderboard sends
 * them again too. results lists the class's entries of the leaderboard in
 * its order, each with the entry's output at that second, and ts is the
 * leaderboard's ts. Everything derives from the ranked entries, so the
 * bytes are as deterministic as the leaderboard's.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

static const struct agg_id *entry_class(const struct race *race,
                                        const struct board_entry *e)
{
    const struct rider *rider = &race->riders[e->rider];
    const struct slot *slot = rider_slot(rider, e->latest);
    return &rider->classes[slot->class_idx];
}

static int class_ptr_cmp(const void *pa, const void *pb)
{
    const struct agg_id *const *a = pa;
    const struct agg_id *const *b = pb;
    return agg_id_cmp(*a, *b);
}

/*
 * Collect the distinct classes of the listed entries into
 * agg->alleycat_classes, in classId order. Returns their count or -ENOMEM.
 */
static int64_t listed_classes(struct agg *agg, const struct race *race,
                              uint32_t listed)
{
    if (agg_grow((void **)&agg->alleycat_classes, &agg->alleycat_class_cap,
                 listed, UINT32_MAX, sizeof *agg->alleycat_classes) != 0)
        return -ENOMEM;
    for (uint32_t i = 0; i < listed; i++)
        agg->alleycat_classes[i] = entry_class(race, &agg->board[i]);
    qsort(agg->alleycat_classes, listed, sizeof *agg->alleycat_classes,
          class_ptr_cmp);

    uint32_t n = 0;
    for (uint32_t i = 0; i < listed; i++) {
        if (n == 0 || agg_id_cmp(agg->alleycat_classes[n - 1],
                                 agg->alleycat_classes[i]) != 0)
            agg->alleycat_classes[n++] = agg->alleycat_classes[i];
    }
    return n;
}

/*
 * The rider whose id has the same text as id but the other type: string
 * "7" for the number 7 and the reverse. Both become the key "7" in
 * results. Returns its position in the race, or -1.
 */
static int64_t text_twin(const struct race *race, const struct agg_id *id)
{
    struct agg_id twin;
    int64_t num;

    if (id->is_num) {
        agg_id_set_string(&twin, id->str, id->len);
    } else {
        if (agg_parse_int64(id->str, id->len, &num) != 0)
            return -1;
        agg_id_set_num(&twin, num);
        /* "-0" parses to 0, whose text is "0": a different key. */
        if (twin.len != id->len || memcmp(twin.str, id->str, id->len) != 0)
            return -1;
    }
    return race_find_rider(race, &twin);
}

/*
 * True when the entry at position i shares its results key with an entry
 * of the same class listed before it. The frontend's JSON.parse would keep
 * the later one of two equal keys, so only the higher-ranked one is
 * written.
 */
static bool key_taken(const struct agg *agg, const struct race *race,
                      uint32_t i)
{
    const struct board_entry *e = &agg->board[i];
    int64_t twin = text_twin(race, e->racer);
    if (twin < 0)
        return false;
    uint32_t at = agg->alleycat_listed_at[twin];
    return at != 0 && at - 1 < i &&
           agg_id_cmp(entry_class(race, &agg->board[at - 1]),
                      entry_class(race, e)) == 0;
}

/* Write the results object of one class into agg->alleycat_results. */
static int write_results(struct agg *agg, const struct race *race,
                         uint32_t listed, const struct agg_id *class_id)
{
    struct strbuf *sb = &agg->alleycat_results;
    bool first = true;

    sb_reset(sb);
    sb_putc(sb, '{');
    for (uint32_t i = 0; i < listed; i++) {
        const struct board_entry *e = &agg->board[i];
        if (agg_id_cmp(entry_class(race, e), class_id) != 0 ||
            key_taken(agg, race, i))
            continue;
        const struct rider *rider = &race->riders[e->rider];
        if (!first)
            sb_putc(sb, ',');
        first = false;
        sb_json_string(sb, rider->id.str, rider->id.len);
        sb_putc(sb, ':');
        sb_fixed4(sb, rider_slot(rider, e->latest)->output4);
    }
    sb_putc(sb, '}');
    return sb_error(sb);
}

/* Write the message of one class into agg->doc. */
static int write_message(struct agg *agg, struct race *race, int32_t second,
                         const struct agg_id *class_id)
{
    struct strbuf *sb = &agg->doc;
    char race_text[sizeof "race-" + AGG_MAX_ID_BYTES];

    memcpy(race_text, "race-", 5);
    memcpy(race_text + 5, race->id.str, race->id.len);
    sb_reset(sb);
    sb_puts(sb, "{\"msg\":\"results\",\"classId\":");
    sb_json_string(sb, class_id->str, class_id->len);
    sb_puts(sb, ",\"raceId\":");
    sb_json_string(sb, race_text, 5 + (size_t)race->id.len);
    sb_printf(sb,
              ",\"ts\":\"%" PRId64 "\",\"results\":", race_ts_at(race, second));
    sb_json_string(sb, agg->alleycat_results.data, agg->alleycat_results.len);
    sb_putc(sb, '}');
    return sb_error(sb);
}

/* Mark the listed riders (position + 1), or clear the marks with 0. */
static void mark_listed(struct agg *agg, uint32_t listed, bool set)
{
    for (uint32_t i = 0; i < listed; i++)
        agg->alleycat_listed_at[agg->board[i].rider] = set ? i + 1 : 0;
}

int alleycat_publish(struct agg *agg, struct race *race, int32_t second,
                     uint32_t listed)
{
    uint32_t old_cap = agg->alleycat_listed_cap;
    if (agg_grow((void **)&agg->alleycat_listed_at, &agg->alleycat_listed_cap,
                 race->rider_count, UINT32_MAX,
                 sizeof *agg->alleycat_listed_at) != 0)
        return -ENOMEM;
    /* Every mark is cleared after use, so only new room needs zeroing. */
    memset(agg->alleycat_listed_at + old_cap, 0,
           (agg->alleycat_listed_cap - old_cap) *
               sizeof *agg->alleycat_listed_at);

    int64_t classes = listed_classes(agg, race, listed);
    if (classes < 0)
        return (int)classes;
    mark_listed(agg, listed, true);
    int rc = 0;
    for (int64_t c = 0; c < classes && rc == 0; c++) {
        const struct agg_id *class_id = agg->alleycat_classes[c];
        rc = write_results(agg, race, listed, class_id);
        if (rc == 0)
            rc = write_message(agg, race, second, class_id);
        if (rc != 0)
            break;
        struct agg_message msg = {
            .kind = AGG_MSG_ALLEYCAT,
            .race = &race->id,
            .class_id = class_id,
            .second = second,
            .revision = race->seconds[second - 1].revision,
            .payload = agg->doc.data,
            .payload_len = agg->doc.len,
        };
        rc = agg->sink.message(agg->sink.arg, &msg);
    }
    mark_listed(agg, listed, false);
    return rc;
}
