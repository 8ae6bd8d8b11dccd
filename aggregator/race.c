/*
 * Storage of races, riders and per-second slots, and the cached prefix
 * results (running totals and latest second every PREFIX_SPAN seconds,
 * largest arrival) that keep a leaderboard at O(riders x PREFIX_SPAN)
 * when seconds are published in order.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "aggregator/fixed.h"

static const struct agg_id *race_key_at(const void *owner, uint32_t i)
{
    const struct agg *agg = owner;
    return &agg->races[i]->id;
}

static const struct agg_id *rider_key_at(const void *owner, uint32_t i)
{
    const struct race *race = owner;
    return &race->riders[i].id;
}

struct race *race_find(const struct agg *agg, const struct agg_id *id)
{
    int64_t i = id_index_find(&agg->race_index, id, race_key_at, agg);
    return i < 0 ? NULL : agg->races[i];
}

uint32_t agg_race_position(const struct agg *agg, const struct race *race)
{
    return (uint32_t)id_index_find(&agg->race_index, &race->id, race_key_at,
                                   agg);
}

int agg_grow(void **items, uint32_t *cap, uint32_t need, uint32_t limit,
             size_t size)
{
    if (need <= *cap)
        return 0;
    if (need > limit)
        return -ENOSPC;
    /* A quarter more: per-rider arrays make up most of the daemon's
     * memory, and doubling left up to half of them unused. Each element
     * is still copied a bounded number of times on average. */
    uint64_t n = (uint64_t)*cap + *cap / 4 + 1;
    if (n < need)
        n = need;
    if (n > limit)
        n = limit;
    void *p = realloc(*items, (size_t)n * size);
    if (p == NULL)
        return -ENOMEM;
    *items = p;
    *cap = (uint32_t)n;
    return 0;
}

int race_get(struct agg *agg, const struct agg_id *id, struct race **out)
{
    *out = race_find(agg, id);
    if (*out != NULL)
        return 0;
    /* TODO: evict races that are fully published and long idle - until
     * then a process that has seen AGG_MAX_RACES races rejects new ones as
     * AGG_OVER_CAPACITY. */
    if (agg->race_count == AGG_MAX_RACES)
        return -ENOSPC;
    if (agg_grow((void **)&agg->races, &agg->race_cap, agg->race_count + 1,
                 AGG_MAX_RACES, sizeof agg->races[0]) != 0)
        return -ENOMEM;

    struct race *race = calloc(1, sizeof *race);
    if (race == NULL)
        return -ENOMEM;
    race->id = *id;
    if (id_index_add(&agg->race_index, id, agg->race_count) != 0) {
        free(race);
        return -ENOMEM;
    }
    agg->races[agg->race_count++] = race;
    *out = race;
    return 0;
}

void race_free(struct race *race)
{
    for (uint32_t i = 0; i < race->rider_count; i++) {
        for (uint32_t b = 0; b < race->riders[i].block_count; b++)
            free(race->riders[i].blocks[b]);
        free(race->riders[i].blocks);
        free(race->riders[i].prefix);
        free(race->riders[i].exacts);
        free(race->riders[i].arena);
        free(race->riders[i].names);
        free(race->riders[i].classes);
    }
    free(race->riders);
    free(race->seconds);
    id_index_free(&race->rider_index);
    free(race);
}

int64_t race_find_rider(const struct race *race, const struct agg_id *id)
{
    return id_index_find(&race->rider_index, id, rider_key_at, race);
}

int64_t race_rider(struct race *race, const struct agg_id *id)
{
    int64_t i = id_index_find(&race->rider_index, id, rider_key_at, race);
    if (i >= 0)
        return i;
    if (race->rider_count == AGG_MAX_RACERS)
        return -ENOSPC;
    if (agg_grow((void **)&race->riders, &race->rider_cap,
                 race->rider_count + 1, AGG_MAX_RACERS,
                 sizeof race->riders[0]) != 0)
        return -ENOMEM;

    struct rider *rider = &race->riders[race->rider_count];
    memset(rider, 0, sizeof *rider);
    rider->id = *id;
    if (id_index_add(&race->rider_index, id, race->rider_count) != 0)
        return -ENOMEM;
    return race->rider_count++;
}

/*
 * Grow the per-second arrays of the race and, unless NULL, of the rider to
 * cover second (<= max_seconds). The race's arrays and the rider's prefix
 * grow by a quarter, the rider's slots by blocks of SLOT_BLOCK.
 */
int race_reserve(struct agg *agg, struct race *race, struct rider *rider,
                 int32_t second)
{
    uint32_t limit = (uint32_t)agg->cfg.max_seconds;
    uint32_t old = (uint32_t)race->second_cap;
    uint32_t cap = old;

    int rc = agg_grow((void **)&race->seconds, &cap, (uint32_t)second, limit,
                      sizeof race->seconds[0]);
    if (rc != 0)
        return rc;
    for (uint32_t i = old; i < cap; i++) {
        race->seconds[i].max_arrival = INT64_MIN;
        race->seconds[i].ts = INT64_MIN;
        race->seconds[i].revision = 0;
    }
    race->second_cap = (int32_t)cap;
    if (rider == NULL)
        return 0;

    /* The prefix first, so it always covers every second that a sample
     * can have. */
    rc = agg_grow((void **)&rider->prefix, &rider->prefix_cap,
                  (uint32_t)second / PREFIX_SPAN, limit / PREFIX_SPAN,
                  sizeof rider->prefix[0]);
    if (rc != 0)
        return rc;
    uint32_t need = ((uint32_t)second + SLOT_BLOCK - 1) / SLOT_BLOCK;
    if (need <= rider->block_count)
        return 0;
    rc = agg_grow((void **)&rider->blocks, &rider->block_cap, need,
                  (limit + SLOT_BLOCK - 1) / SLOT_BLOCK,
                  sizeof rider->blocks[0]);
    if (rc != 0)
        return rc;
    while (rider->block_count < need) {
        struct slot *block = calloc(SLOT_BLOCK, sizeof *block);
        if (block == NULL)
            return -ENOMEM;
        rider->blocks[rider->block_count++] = block;
        rider->slot_cap = (int32_t)(rider->block_count * SLOT_BLOCK);
    }
    return 0;
}

int64_t rider_arena_add(struct rider *rider, const void *bytes, size_t len)
{
    if (len > UINT32_MAX - rider->arena_len)
        return -ENOMEM;
    if (agg_grow((void **)&rider->arena, &rider->arena_cap,
                 rider->arena_len + (uint32_t)len, UINT32_MAX, 1) != 0)
        return -ENOMEM;
    uint32_t at = rider->arena_len;
    memcpy(rider->arena + at, bytes, len);
    rider->arena_len += (uint32_t)len;
    return at;
}

/*
 * A uuid in the canonical lowercase form (8-4-4-4-12 hex digits) is kept
 * as its 16 bytes in the slot. Any other uuid is kept as text in the
 * rider's arena, with SLOT_UUID_TEXT.
 */
static int hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool uuid_pack(const char *text, size_t len,
                      uint8_t out[SLOT_UUID_PACKED])
{
    if (len != SLOT_UUID_CHARS)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 2) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (text[i] != '-')
                return false;
            i--;
            continue;
        }
        int hi = hex_nibble(text[i]), lo = hex_nibble(text[i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[n++] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

const char *slot_uuid(const struct rider *rider, const struct slot *slot,
                      char buf[SLOT_UUID_CHARS + 1], size_t *len)
{
    static const char digits[] = "0123456789abcdef";

    if (slot->flags & SLOT_UUID_TEXT) {
        *len = slot->uuid.text.len;
        return rider->arena + slot->uuid.text.at;
    }
    const uint8_t *b = slot->uuid.packed;
    size_t n = 0;
    for (size_t i = 0; i < SLOT_UUID_PACKED; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            buf[n++] = '-';
        buf[n++] = digits[b[i] >> 4];
        buf[n++] = digits[b[i] & 15];
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* ---- times -------------------------------------------------------------- */

/* Set *offset to value - base when it fits in 32 bits. */
static bool time_offset(int64_t value, int64_t base, int32_t *offset)
{
    __int128 d = (__int128)value - base;
    if (d < INT32_MIN || d > INT32_MAX)
        return false;
    *offset = (int32_t)d;
    return true;
}

static int64_t time_read(const struct rider *rider, int64_t base, int32_t field,
                         bool wide)
{
    if (!wide)
        return base + field;
    int64_t value;
    memcpy(&value, rider->arena + (uint32_t)field, sizeof value);
    return value;
}

int64_t slot_device_ts(const struct rider *rider, const struct slot *slot)
{
    return time_read(rider, rider->device_base, slot->device_ts,
                     (slot->flags & SLOT_WIDE_DEVICE) != 0);
}

int64_t slot_arrival(const struct rider *rider, const struct slot *slot)
{
    return time_read(rider, rider->arrival_base, slot->arrival,
                     (slot->flags & SLOT_WIDE_ARRIVAL) != 0);
}

int rider_intern_name(struct rider *rider, const char *name, size_t len)
{
    for (uint32_t i = 0; i < rider->name_count; i++) {
        const struct arena_text *t = &rider->names[i];
        if (t->len == len && memcmp(rider->arena + t->at, name, len) == 0)
            return (int)i;
    }
    if (rider->name_count == AGG_MAX_NAMES_PER_RIDER)
        return -ENOSPC;
    if (agg_grow((void **)&rider->names, &rider->name_cap,
                 rider->name_count + 1, AGG_MAX_NAMES_PER_RIDER,
                 sizeof rider->names[0]) != 0)
        return -ENOMEM;
    int64_t at = rider_arena_add(rider, name, len);
    if (at < 0)
        return (int)at;
    rider->names[rider->name_count].at = (uint32_t)at;
    rider->names[rider->name_count].len = (uint8_t)len;
    return (int)rider->name_count++;
}

int rider_intern_class(struct rider *rider, const struct agg_id *class_id)
{
    for (uint32_t i = 0; i < rider->class_count; i++) {
        if (agg_id_cmp(&rider->classes[i], class_id) == 0)
            return (int)i;
    }
    if (rider->class_count == AGG_MAX_CLASSES_PER_RIDER)
        return -ENOSPC;
    if (agg_grow((void **)&rider->classes, &rider->class_cap,
                 rider->class_count + 1, AGG_MAX_CLASSES_PER_RIDER,
                 sizeof rider->classes[0]) != 0)
        return -ENOMEM;
    rider->classes[rider->class_count] = *class_id;
    return (int)rider->class_count++;
}

void rider_invalidate(struct rider *rider, int32_t second)
{
    uint32_t keep = (uint32_t)(second - 1) / PREFIX_SPAN;
    if (rider->prefix_valid > keep)
        rider->prefix_valid = keep;
}

void rider_total_at(struct rider *rider, int32_t second, int64_t *total4,
                    int32_t *latest)
{
    /* Past the rider's last sample nothing changes. */
    if (second > rider->max_second)
        second = rider->max_second;

    /* Bring the prefix up to the span that contains second. The
     * leaderboards of consecutive seconds extend it one span at a time. */
    uint32_t spans = (uint32_t)(second - 1) / PREFIX_SPAN;
    for (uint32_t k = rider->prefix_valid; k < spans; k++) {
        struct prefix p = {0, 0};
        if (k > 0)
            p = rider->prefix[k - 1];
        for (int32_t t = (int32_t)k * PREFIX_SPAN + 1;
             t <= (int32_t)(k + 1) * PREFIX_SPAN; t++) {
            const struct slot *s = rider_slot(rider, t);
            if (s->flags & SLOT_PRESENT) {
                p.total4 += s->output4;
                p.latest = t;
            }
        }
        rider->prefix[k] = p;
    }
    if (rider->prefix_valid < spans)
        rider->prefix_valid = spans;

    int64_t total = spans > 0 ? rider->prefix[spans - 1].total4 : 0;
    int32_t last = spans > 0 ? rider->prefix[spans - 1].latest : 0;
    for (int32_t t = (int32_t)spans * PREFIX_SPAN + 1; t <= second; t++) {
        const struct slot *s = rider_slot(rider, t);
        if (s->flags & SLOT_PRESENT) {
            total += s->output4;
            last = t;
        }
    }
    *total4 = total;
    *latest = last;
}

void rider_update_final(struct rider *rider, int32_t second)
{
    if (rider->final_second != second)
        return;
    rider->final_second = 0;
    for (int32_t t = second - 1; t >= rider->min_second && t > 0; t--) {
        if (rider_slot(rider, t)->flags & SLOT_FINAL) {
            rider->final_second = t;
            return;
        }
    }
}

int64_t race_ts_at(struct race *race, int32_t second)
{
    for (int32_t t = race->ts_valid_through + 1; t <= second; t++) {
        struct race_second *s = &race->seconds[t - 1];
        int64_t before = t > 1 ? s[-1].ts : INT64_MIN;
        s->ts = s->max_arrival > before ? s->max_arrival : before;
    }
    if (second > race->ts_valid_through)
        race->ts_valid_through = second;
    return race->seconds[second - 1].ts;
}

void race_rescan_arrival(struct race *race, int32_t second)
{
    int64_t max = INT64_MIN;
    for (uint32_t i = 0; i < race->rider_count; i++) {
        const struct rider *rider = &race->riders[i];
        if (second > rider->slot_cap)
            continue;
        const struct slot *s = rider_slot(rider, second);
        if (!(s->flags & SLOT_PRESENT))
            continue;
        int64_t arrival = slot_arrival(rider, s);
        if (arrival > max)
            max = arrival;
    }
    race->seconds[second - 1].max_arrival = max;
    if (race->ts_valid_through >= second)
        race->ts_valid_through = second - 1;
}

void race_note_sample(struct race *race, int32_t second, int64_t arrival_ms)
{
    struct race_second *s = &race->seconds[second - 1];
    if (arrival_ms > s->max_arrival)
        s->max_arrival = arrival_ms;
    if (race->ts_valid_through >= second)
        race->ts_valid_through = second - 1;
    if (race->first_second == 0 || second < race->first_second)
        race->first_second = second;
    if (second > race->latest_second)
        race->latest_second = second;
}

void slot_to_row(const struct race *race, const struct rider *rider,
                 const struct slot *slot, int32_t second,
                 struct agg_sample_row *row, char *uuid_buf, char *cadence_buf,
                 char *resistance_buf, size_t buf_len)
{
    const struct arena_text *name = &rider->names[slot->name_idx];

    row->race = &race->id;
    row->racer = &rider->id;
    row->class_id = &rider->classes[slot->class_idx];
    row->second = second;
    row->name = rider->arena + name->at;
    row->name_len = name->len;
    row->uuid = slot_uuid(rider, slot, uuid_buf, &row->uuid_len);
    row->device_ts_ms = slot_device_ts(rider, slot);
    row->arrival_ms = slot_arrival(rider, slot);
    row->cadence4 = slot->cadence4;
    row->resistance4 = slot->resistance4;
    row->output4 = slot->output4;
    row->final = (slot->flags & SLOT_FINAL) != 0;
    slot_exact_texts(rider, slot, second, cadence_buf, resistance_buf, buf_len,
                     &row->cadence_exact, &row->resistance_exact);
}

/* Position of second in rider->exacts, or -(insertion point) - 1. */
static int64_t exact_find(const struct rider *rider, int32_t second)
{
    uint32_t lo = 0, hi = rider->exact_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (rider->exacts[mid].second < second)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < rider->exact_count && rider->exacts[lo].second == second)
        return lo;
    return -(int64_t)lo - 1;
}

void slot_exact_texts(const struct rider *rider, const struct slot *slot,
                      int32_t second, char *cadence_buf, char *resistance_buf,
                      size_t buf_len, const char **cadence,
                      const char **resistance)
{
    if (slot->flags & SLOT_EXACT) {
        uint32_t at = rider->exacts[exact_find(rider, second)].at;
        *cadence = rider->arena + at;
        *resistance = *cadence + strlen(*cadence) + 1;
        return;
    }
    fixed_format4(slot->cadence4, cadence_buf, buf_len);
    fixed_format4(slot->resistance4, resistance_buf, buf_len);
    *cadence = cadence_buf;
    *resistance = resistance_buf;
}

int sample_in_check(const struct agg *agg, struct sample_in *in)
{
    int64_t cadence4, resistance4, output4;
    bool cadence_exact4, resistance_exact4;

    if (in->second < 1 || in->second > agg->cfg.max_seconds ||
        in->name_len > AGG_MAX_ID_BYTES || in->uuid_len == 0 ||
        in->uuid_len > AGG_MAX_ID_BYTES)
        return -EINVAL;
    if (strnlen(in->cadence_exact, AGG_MAX_EXACT_TEXT) == AGG_MAX_EXACT_TEXT ||
        strnlen(in->resistance_exact, AGG_MAX_EXACT_TEXT) == AGG_MAX_EXACT_TEXT)
        return -EINVAL;
    if (fixed_round4(in->cadence_exact, &cadence4, &cadence_exact4) != 0 ||
        fixed_round4(in->resistance_exact, &resistance4, &resistance_exact4) !=
            0 ||
        agg_output4(in->cadence_exact, in->resistance_exact, &output4) != 0)
        return -EINVAL;

    /* The 4-decimal values must be the ones the texts give, because
     * equality checks and leaderboards trust them. */
    if (cadence4 != in->cadence4 || resistance4 != in->resistance4 ||
        output4 != in->output4 || cadence4 > (int64_t)AGG_MAX_CADENCE * 10000 ||
        resistance4 > (int64_t)AGG_MAX_RESISTANCE * 10000 ||
        output4 > INT32_MAX)
        return -EINVAL;
    in->exact4 = cadence_exact4 && resistance_exact4;
    return 0;
}

static void rider_note_sample(struct rider *rider, int32_t second,
                              bool was_final, bool final)
{
    rider_invalidate(rider, second);
    if (rider->min_second == 0 || second < rider->min_second)
        rider->min_second = second;
    if (second > rider->max_second)
        rider->max_second = second;
    if (final && second > rider->final_second)
        rider->final_second = second;
    else if (was_final && !final)
        rider_update_final(rider, second);
}

/*
 * The storage of each part of a new sample: 32-bit offsets or the arena
 * for the times, the slot or the arena for the uuid, and the arena for
 * exact texts. An arena part is written over the bytes of the slot's old
 * sample when those are long enough, else appended.
 */
struct slot_plan {
    int64_t device_base;
    int64_t arrival_base;
    int32_t device_ts;
    int32_t arrival;
    bool wide_device;
    bool wide_arrival;
    bool uuid_packed;
    uint8_t packed[SLOT_UUID_PACKED];
    int64_t exact_pos;  /* in rider->exacts, or -(insertion point) - 1 */
    size_t cadence_len; /* with the NUL; 0 when the values are exact4 */
    size_t resistance_len;
    uint32_t append; /* arena bytes to append */
};

static void plan_slot(const struct rider *rider, const struct slot *slot,
                      int32_t second, const struct sample_in *in,
                      struct slot_plan *plan)
{
    bool present = (slot->flags & SLOT_PRESENT) != 0;

    memset(plan, 0, sizeof *plan);
    plan->device_base = rider->device_base;
    plan->arrival_base = rider->arrival_base;
    if (rider->min_second == 0) {
        plan->device_base = in->device_ts_ms;
        plan->arrival_base = in->arrival_ms;
    }
    plan->wide_device =
        !time_offset(in->device_ts_ms, plan->device_base, &plan->device_ts);
    if (plan->wide_device && !(present && (slot->flags & SLOT_WIDE_DEVICE)))
        plan->append += sizeof(int64_t);
    plan->wide_arrival =
        !time_offset(in->arrival_ms, plan->arrival_base, &plan->arrival);
    if (plan->wide_arrival && !(present && (slot->flags & SLOT_WIDE_ARRIVAL)))
        plan->append += sizeof(int64_t);

    plan->uuid_packed = uuid_pack(in->uuid, in->uuid_len, plan->packed);
    if (!plan->uuid_packed && !(present && (slot->flags & SLOT_UUID_TEXT) &&
                                slot->uuid.text.len >= in->uuid_len))
        plan->append += (uint32_t)in->uuid_len;

    plan->exact_pos = exact_find(rider, second);
    if (!in->exact4) {
        plan->cadence_len = strlen(in->cadence_exact) + 1;
        plan->resistance_len = strlen(in->resistance_exact) + 1;
        plan->append += (uint32_t)(plan->cadence_len + plan->resistance_len);
    }
}

/* Reserve the arena bytes and the exacts entry that the plan needs, so
 * that apply_plan cannot fail. Returns 0 or -ENOMEM. */
static int reserve_plan(struct rider *rider, const struct slot_plan *plan)
{
    if (plan->append > UINT32_MAX - rider->arena_len ||
        agg_grow((void **)&rider->arena, &rider->arena_cap,
                 rider->arena_len + plan->append, UINT32_MAX, 1) != 0)
        return -ENOMEM;
    if (plan->cadence_len != 0 && plan->exact_pos < 0 &&
        agg_grow((void **)&rider->exacts, &rider->exact_cap,
                 rider->exact_count + 1, UINT32_MAX / sizeof rider->exacts[0],
                 sizeof rider->exacts[0]) != 0)
        return -ENOMEM;
    return 0;
}

/*
 * Store a time that does not fit a 32-bit offset in the rider's arena and
 * return its arena offset. With reuse, it writes over the old value at
 * old_at; otherwise it appends into the room that reserve_plan made.
 */
static int32_t put_wide_time(struct rider *rider, bool reuse, int32_t old_at,
                             int64_t ms)
{
    uint32_t at = reuse ? (uint32_t)old_at : rider->arena_len;

    memcpy(rider->arena + at, &ms, sizeof ms);
    if (!reuse)
        rider->arena_len += sizeof ms;
    return (int32_t)at;
}

/* Write the planned sample into slot. The arena appends below cannot
 * fail because reserve_plan made room for them. */
static void apply_plan(struct rider *rider, struct slot *slot, int32_t second,
                       const struct sample_in *in, const struct slot_plan *plan)
{
    const struct slot old = *slot;
    bool present = (old.flags & SLOT_PRESENT) != 0;
    uint8_t flags = (uint8_t)(SLOT_PRESENT | (in->final ? SLOT_FINAL : 0));

    rider->device_base = plan->device_base;
    rider->arrival_base = plan->arrival_base;
    slot->device_ts = plan->device_ts;
    if (plan->wide_device) {
        slot->device_ts =
            put_wide_time(rider, present && (old.flags & SLOT_WIDE_DEVICE),
                          old.device_ts, in->device_ts_ms);
        flags |= SLOT_WIDE_DEVICE;
    }
    slot->arrival = plan->arrival;
    if (plan->wide_arrival) {
        slot->arrival =
            put_wide_time(rider, present && (old.flags & SLOT_WIDE_ARRIVAL),
                          old.arrival, in->arrival_ms);
        flags |= SLOT_WIDE_ARRIVAL;
    }

    if (plan->uuid_packed) {
        memcpy(slot->uuid.packed, plan->packed, SLOT_UUID_PACKED);
    } else {
        /* Write over the old text when it is long enough, so repeated
         * replacements of one second do not keep growing the arena. */
        if (present && (old.flags & SLOT_UUID_TEXT) &&
            old.uuid.text.len >= in->uuid_len)
            memcpy(rider->arena + old.uuid.text.at, in->uuid, in->uuid_len);
        else
            slot->uuid.text.at =
                (uint32_t)rider_arena_add(rider, in->uuid, in->uuid_len);
        slot->uuid.text.len = (uint32_t)in->uuid_len;
        flags |= SLOT_UUID_TEXT;
    }

    if (plan->cadence_len != 0) {
        uint32_t at = (uint32_t)rider_arena_add(rider, in->cadence_exact,
                                                plan->cadence_len);
        rider_arena_add(rider, in->resistance_exact, plan->resistance_len);
        int64_t pos = plan->exact_pos;
        if (pos < 0) {
            pos = -pos - 1;
            memmove(&rider->exacts[pos + 1], &rider->exacts[pos],
                    (rider->exact_count - (uint32_t)pos) *
                        sizeof rider->exacts[0]);
            rider->exact_count++;
            rider->exacts[pos].second = second;
        }
        rider->exacts[pos].at = at;
        flags |= SLOT_EXACT;
    }

    slot->cadence4 = (int32_t)in->cadence4;
    slot->resistance4 = (int32_t)in->resistance4;
    slot->output4 = (int32_t)in->output4;
    slot->flags = flags;
}

int race_store_sample(struct agg *agg, struct race *race, uint32_t position,
                      const struct sample_in *in)
{
    struct rider *rider = &race->riders[position];
    int rc = race_reserve(agg, race, rider, in->second);
    if (rc != 0)
        return rc;

    /* Everything that can fail runs before the slot changes. */
    int name_idx = rider_intern_name(rider, in->name, in->name_len);
    if (name_idx < 0)
        return name_idx;
    int class_idx = rider_intern_class(rider, in->class_id);
    if (class_idx < 0)
        return class_idx;
    struct slot *slot = rider_slot(rider, in->second);
    struct slot_plan plan;
    plan_slot(rider, slot, in->second, in, &plan);
    rc = reserve_plan(rider, &plan);
    if (rc != 0)
        return rc;

    bool replaced = (slot->flags & SLOT_PRESENT) != 0;
    bool was_final = (slot->flags & SLOT_FINAL) != 0;
    bool rider_had_sample = rider->min_second != 0;
    bool rider_had_final = rider->final_second != 0;
    apply_plan(rider, slot, in->second, in, &plan);
    slot->name_idx = (uint8_t)name_idx;
    slot->class_idx = (uint8_t)class_idx;

    rider_note_sample(rider, in->second, was_final, in->final);
    race_note_sample(race, in->second, in->arrival_ms);
    /* The counts decide when every rider has sent "final". */
    if (!rider_had_sample)
        race->active_riders++;
    if (rider_had_final && rider->final_second == 0)
        race->final_riders--;
    else if (!rider_had_final && rider->final_second != 0)
        race->final_riders++;
    if (replaced)
        race_rescan_arrival(race, in->second);
    return 0;
}
