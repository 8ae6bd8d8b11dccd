/*
 * Race aggregation: samples in, leaderboards out.
 *
 * State. Each race keeps its riders, and each rider one slot per second
 * (struct slot, 40 bytes, in blocks of 64 seconds) holding the winning
 * sample.
 * Names and classIds are interned per rider; exact decimal texts are kept
 * only when the 4-decimal values do not represent them exactly. Running
 * totals, the latest second and the race's largest arrival are prefix
 * caches that are invalidated from the changed second onward, so
 * publishing seconds in order costs O(riders) per leaderboard.
 *
 * Which sample wins. One sample per (raceId, racerId, second). Between
 * records with different values, the smaller (deviceTimestamp, uuid bytes)
 * wins, then the smaller cadence and resistance if both are equal. A copy
 * with the stored values changes no value, but when its (deviceTimestamp,
 * uuid) is smaller it silently replaces the uuid, deviceTimestamp,
 * arrival, name, classId and final flag. The stored sample is therefore the
 * smallest-keyed record among those with the winning values, whatever the
 * arrival order, and it is sent to the sink like any replacement.
 *
 * Closing. Stream time is the largest arrival_ms seen by agg_apply or given
 * to agg_advance. Second s of a race closes when latest_second >= s +
 * allowed_lateness_s, or once the race has had no applied sample for
 * idle_close_s of stream time, which closes every second up to
 * latest_second. Closed seconds are published once each, in order, from
 * the race's first sampled second; seconds in between without any sample
 * still get a leaderboard. Idle races are closed, in raceId order, before
 * the record is applied, because a live run would have closed them from
 * agg_advance before that record arrived. So replays and live runs
 * publish the same leaderboards.
 *
 * Late records. A record whose second is at or before the last published
 * second is late. Under the amend policy and within amend_window_s of
 * latest_second it is applied, and every published second from its second
 * onward is sent again with its revision raised by one. A late record
 * below the first published second also publishes the seconds between, at
 * revision 0. A late copy that is adopted changes no value but can change
 * the name, classId or ts shown from its second onward, so it republishes
 * the same way when one of those changes, and keeps its outcome.
 *
 * Determinism. Leaderboards derive only from the stored samples, whose
 * choice does not depend on arrival order, and ties are broken by racerId.
 * The race state (clock, published range, revisions, last activity) is
 * flushed as a document with a fixed field order, and together with the
 * samples and stream time it rebuilds the exact memory state on restore.
 */
#include "aggregator/internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const outcome_names[AGG_OUTCOME_COUNT] = {
    [AGG_APPLIED] = "applied",
    [AGG_UNCHANGED] = "unchanged",
    [AGG_CONFLICT_KEPT] = "conflict_kept",
    [AGG_CONFLICT_REPLACED] = "conflict_replaced",
    [AGG_LATE_AMENDED] = "late_amended",
    [AGG_LATE_DROPPED] = "late_dropped",
    [AGG_TOO_LATE] = "too_late",
    [AGG_QUARANTINED_SKEW] = "quarantined_skew",
    [AGG_QUARANTINED_JUMP] = "quarantined_jump",
    [AGG_OVER_CAPACITY] = "over_capacity",
};

const char *agg_outcome_name(enum agg_outcome outcome)
{
    if ((unsigned)outcome >= AGG_OUTCOME_COUNT)
        return "unknown";
    return outcome_names[outcome];
}

/* Returns NULL when a setting is out of range or a callback is missing. */
struct agg *agg_new(const struct agg_config *cfg, const struct agg_sink *sink)
{
    if (cfg->max_seconds < 1 || cfg->allowed_lateness_s < 0 ||
        cfg->idle_close_s < 0 || cfg->max_future_skew_s < 0 ||
        cfg->max_second_jump < 0 || cfg->amend_window_s < 0 ||
        sink->sample == NULL || sink->race_state == NULL ||
        sink->message == NULL || sink->class_state == NULL ||
        sink->history == NULL)
        return NULL;

    struct agg *agg = calloc(1, sizeof *agg);
    if (agg == NULL)
        return NULL;
    agg->cfg = *cfg;
    agg->sink = *sink;
    agg->stream_time_ms = INT64_MIN;
    sb_init(&agg->doc, AGG_MAX_DOCUMENT_BYTES);
    sb_init(&agg->alleycat_results, AGG_MAX_DOCUMENT_BYTES);
    return agg;
}

void agg_free(struct agg *agg)
{
    if (agg == NULL)
        return;
    for (uint32_t i = 0; i < agg->race_count; i++)
        race_free(agg->races[i]);
    free(agg->races);
    id_index_free(&agg->race_index);
    free(agg->open);
    free(agg->board);
    classes_free(agg);
    sb_free(&agg->doc);
    sb_free(&agg->alleycat_results);
    free(agg->alleycat_classes);
    free(agg->alleycat_listed_at);
    free(agg);
}

int64_t agg_stream_time(const struct agg *agg)
{
    return agg->stream_time_ms;
}

bool race_has_work(const struct race *race)
{
    return race->published_through < race->latest_second ||
           (!race->results_published && race->active_riders > 0);
}

/* List the race for idle closing if it has unpublished seconds or results. */
int agg_mark_open(struct agg *agg, struct race *race)
{
    if (race->open || !race_has_work(race))
        return 0;
    if (agg->open_count == agg->open_cap) {
        uint32_t cap = agg->open_cap ? agg->open_cap * 2 : 8;
        uint32_t *p = realloc(agg->open, cap * sizeof *p);
        if (p == NULL)
            return -ENOMEM;
        agg->open = p;
        agg->open_cap = cap;
    }
    agg->open[agg->open_count++] = agg_race_position(agg, race);
    race->open = true;
    return 0;
}

/* ---- closing ------------------------------------------------------------ */

/* Publish the unpublished seconds of the race in order, up to through
 * (at most latest_second). */
static int close_through(struct agg *agg, struct race *race, int32_t through)
{
    int32_t second = race->published_through > 0 ? race->published_through + 1
                                                 : race->first_second;

    if (through > race->latest_second)
        through = race->latest_second;
    for (; second >= 1 && second <= through; second++) {
        int rc = board_publish(agg, race, second);
        if (rc != 0)
            return rc;
        race->published_through = second;
        if (race->published_from == 0)
            race->published_from = second;
        race->dirty = true;
    }
    return 0;
}

static int race_ptr_cmp(const void *pa, const void *pb)
{
    const struct race *const *a = pa;
    const struct race *const *b = pb;
    return agg_id_cmp(&(*a)->id, &(*b)->id);
}

static bool race_idle(const struct agg *agg, const struct race *race)
{
    __int128 quiet = (__int128)agg->stream_time_ms - race->activity_ms;
    return quiet >= (__int128)agg->cfg.idle_close_s * 1000;
}

/*
 * Close the open races through their latest second and publish their
 * results, every race or only the idle ones, in raceId order so that the
 * message order does not depend on when each race was opened. Races with
 * nothing left to publish leave the open list first.
 */
static int close_open_races(struct agg *agg, bool only_idle)
{
    uint32_t kept = 0, due_count = 0;

    for (uint32_t i = 0; i < agg->open_count; i++) {
        struct race *race = agg->races[agg->open[i]];
        if (!race_has_work(race)) {
            race->open = false;
            continue;
        }
        agg->open[kept++] = agg->open[i];
        if (!only_idle || race_idle(agg, race))
            due_count++;
    }
    agg->open_count = kept;
    if (due_count == 0)
        return 0;

    struct race **due = malloc(due_count * sizeof *due);
    if (due == NULL)
        return -ENOMEM;
    due_count = 0;
    for (uint32_t i = 0; i < agg->open_count; i++) {
        struct race *race = agg->races[agg->open[i]];
        if (!only_idle || race_idle(agg, race))
            due[due_count++] = race;
    }
    qsort(due, due_count, sizeof *due, race_ptr_cmp);

    int rc = 0;
    for (uint32_t i = 0; i < due_count && rc == 0; i++) {
        rc = close_through(agg, due[i], due[i]->latest_second);
        if (rc == 0)
            rc = results_settle(agg, due[i], true);
    }
    free(due);
    return rc;
}

/*
 * Send again every published leaderboard of the race from second onward,
 * each with its revision raised by one. Seconds below the first published
 * one have never been sent, so they go out at revision 0.
 */
static int republish_from(struct agg *agg, struct race *race, int32_t second)
{
    for (int32_t s = second; s <= race->published_through; s++) {
        if (s >= race->published_from)
            race->seconds[s - 1].revision++;
        int rc = board_publish(agg, race, s);
        if (rc != 0)
            return rc;
    }
    if (second < race->published_from)
        race->published_from = second;
    race->dirty = true;
    return 0;
}

int agg_advance(struct agg *agg, int64_t stream_time_ms)
{
    if (stream_time_ms > agg->stream_time_ms)
        agg->stream_time_ms = stream_time_ms;
    int rc = close_open_races(agg, true);
    return rc != 0 ? rc : classes_publish(agg);
}

int agg_close_all(struct agg *agg)
{
    int rc = close_open_races(agg, false);
    return rc != 0 ? rc : classes_publish(agg);
}

/* ---- applying records --------------------------------------------------- */

static void sample_from_record(const struct agg_record *rec, int64_t arrival_ms,
                               struct sample_in *in)
{
    in->second = rec->second;
    in->class_id = &rec->class_id;
    in->name = rec->name;
    in->name_len = rec->name_len;
    in->uuid = rec->uuid;
    in->uuid_len = rec->uuid_len;
    in->device_ts_ms = rec->device_ts_ms;
    in->arrival_ms = arrival_ms;
    in->cadence4 = rec->cadence4;
    in->resistance4 = rec->resistance4;
    in->output4 = rec->output4;
    in->cadence_exact = rec->cadence_exact;
    in->resistance_exact = rec->resistance_exact;
    in->final = rec->final;
}

/* Order by (deviceTimestamp, uuid bytes): negative when in comes first. */
static int key_cmp(const struct rider *rider, const struct slot *slot,
                   const struct sample_in *in)
{
    int64_t device_ts_ms = slot_device_ts(rider, slot);
    if (in->device_ts_ms != device_ts_ms)
        return in->device_ts_ms < device_ts_ms ? -1 : 1;

    char buf[SLOT_UUID_CHARS + 1];
    size_t len;
    const char *uuid = slot_uuid(rider, slot, buf, &len);
    size_t n = in->uuid_len < len ? in->uuid_len : len;
    int c = memcmp(in->uuid, uuid, n);
    if (c != 0)
        return c < 0 ? -1 : 1;
    return (in->uuid_len > len) - (in->uuid_len < len);
}

/* Order by exact (cadence, resistance): 0 when both values are equal. */
static int value_cmp(const struct rider *rider, const struct slot *slot,
                     const struct sample_in *in)
{
    char cadence_buf[AGG_MAX_EXACT_TEXT], resistance_buf[AGG_MAX_EXACT_TEXT];
    const char *cadence, *resistance;
    struct fixed_dec a, b;

    slot_exact_texts(rider, slot, in->second, cadence_buf, resistance_buf,
                     sizeof cadence_buf, &cadence, &resistance);
    fixed_parse(in->cadence_exact, &a);
    fixed_parse(cadence, &b);
    int c = fixed_cmp(&a, &b);
    if (c != 0)
        return c;
    fixed_parse(in->resistance_exact, &a);
    fixed_parse(resistance, &b);
    return fixed_cmp(&a, &b);
}

static int emit_sample(struct agg *agg, struct race *race, uint32_t position,
                       int32_t second)
{
    char cadence[AGG_MAX_EXACT_TEXT], resistance[AGG_MAX_EXACT_TEXT];
    char uuid[SLOT_UUID_CHARS + 1];
    const struct rider *rider = &race->riders[position];
    struct agg_sample_row row;

    slot_to_row(race, rider, rider_slot(rider, second), second, &row, uuid,
                cadence, resistance, sizeof cadence);
    return agg->sink.sample(agg->sink.arg, &row);
}

/*
 * Store the sample and send it to the sink. An applied sample moves the
 * race's activity time; an adopted copy of the stored values does not.
 * *outcome becomes AGG_OVER_CAPACITY when a per-rider cap stops it.
 */
static int store_sample(struct agg *agg, struct race *race, uint32_t position,
                        const struct sample_in *in, bool applied,
                        enum agg_outcome *outcome)
{
    int rc = race_store_sample(agg, race, position, in);
    if (rc == -ENOSPC) {
        *outcome = AGG_OVER_CAPACITY;
        return 0;
    }
    if (rc != 0)
        return rc;
    if (applied) {
        race->activity_ms = agg->stream_time_ms;
        race->dirty = true;
    }
    if (race->results_published)
        race->results_stale = true;
    rc = agg_mark_open(agg, race);
    if (rc != 0)
        return rc;
    return emit_sample(agg, race, position, in->second);
}

/*
 * Adopt a copy of the stored values that has a smaller key. The copy
 * brings its own name, classId and arrival time. *board_changed becomes
 * true when the leaderboards from second onward can change, because the
 * slot's name or classId changed or the race's ts at second did.
 */
static int adopt_copy(struct agg *agg, struct race *race, uint32_t position,
                      const struct sample_in *in, enum agg_outcome *outcome,
                      bool *board_changed)
{
    const struct slot *slot = rider_slot(&race->riders[position], in->second);
    uint16_t name_idx = slot->name_idx, class_idx = slot->class_idx;
    int64_t ts = race_ts_at(race, in->second);

    int rc = store_sample(agg, race, position, in, false, outcome);
    if (rc != 0 || *outcome == AGG_OVER_CAPACITY)
        return rc;
    *board_changed = slot->name_idx != name_idx ||
                     slot->class_idx != class_idx ||
                     race_ts_at(race, in->second) != ts;
    return 0;
}

/*
 * Decide between the record and the stored sample of its (race, racer,
 * second) and store the winner. Sets *outcome to APPLIED, UNCHANGED,
 * CONFLICT_KEPT, CONFLICT_REPLACED or OVER_CAPACITY, and *race_out to the
 * race when it exists. *board_changed tells whether a leaderboard that
 * lists the second can change.
 */
static int apply_sample(struct agg *agg, const struct agg_record *rec,
                        const struct sample_in *in, struct race **race_out,
                        enum agg_outcome *outcome, bool *board_changed)
{
    struct race *race;
    int rc = race_get(agg, &rec->race, &race);

    *outcome = AGG_OVER_CAPACITY;
    *board_changed = false;
    if (rc != 0)
        return rc == -ENOSPC ? 0 : rc;
    *race_out = race;
    int64_t position = race_rider(race, &rec->racer);
    if (position < 0)
        return position == -ENOSPC ? 0 : (int)position;

    struct rider *rider = &race->riders[position];
    uint32_t at = (uint32_t)position;
    if (in->second > rider->slot_cap ||
        !(rider_slot(rider, in->second)->flags & SLOT_PRESENT)) {
        *outcome = AGG_APPLIED;
        rc = store_sample(agg, race, at, in, true, outcome);
        *board_changed = rc == 0 && *outcome == AGG_APPLIED;
        return rc;
    }

    const struct slot *slot = rider_slot(rider, in->second);
    int key = key_cmp(rider, slot, in);
    int value = value_cmp(rider, slot, in);
    if (value == 0) {
        *outcome = AGG_UNCHANGED;
        return key < 0 ? adopt_copy(agg, race, at, in, outcome, board_changed)
                       : 0;
    }
    if (key < 0 || (key == 0 && value < 0)) {
        *outcome = AGG_CONFLICT_REPLACED;
        rc = store_sample(agg, race, at, in, true, outcome);
        *board_changed = rc == 0 && *outcome == AGG_CONFLICT_REPLACED;
        return rc;
    }
    *outcome = AGG_CONFLICT_KEPT;
    return 0;
}

/* Set *outcome and return true when the record must be quarantined. */
static bool quarantine(const struct agg *agg, const struct race *race,
                       const struct agg_record *rec, int64_t arrival_ms,
                       enum agg_outcome *outcome)
{
    __int128 skew_limit =
        (__int128)arrival_ms + (__int128)agg->cfg.max_future_skew_s * 1000;

    if (rec->device_ts_ms > skew_limit) {
        *outcome = AGG_QUARANTINED_SKEW;
        return true;
    }
    if (race != NULL && race->latest_second > 0 &&
        (int64_t)rec->second >
            (int64_t)race->latest_second + agg->cfg.max_second_jump) {
        *outcome = AGG_QUARANTINED_JUMP;
        return true;
    }
    return false;
}

/* Apply a record whose second is already published, per late_policy. */
static int apply_late(struct agg *agg, struct race *race,
                      const struct agg_record *rec, const struct sample_in *in,
                      enum agg_outcome *outcome)
{
    if (agg->cfg.late_policy == AGG_LATE_DROP) {
        *outcome = AGG_LATE_DROPPED;
        return 0;
    }
    if ((int64_t)race->latest_second - rec->second > agg->cfg.amend_window_s) {
        *outcome = AGG_TOO_LATE;
        return 0;
    }
    bool board_changed;
    int rc = apply_sample(agg, rec, in, &race, outcome, &board_changed);
    if (rc != 0 || !board_changed)
        return rc;
    /* An adopted copy keeps its outcome but still republishes, because
     * its name, classId or arrival time is part of the leaderboards. */
    if (*outcome != AGG_UNCHANGED)
        *outcome = AGG_LATE_AMENDED;
    return republish_from(agg, race, rec->second);
}

/* Apply the record to its race and close the seconds it lets close.
 * *race_out is the race when it exists. */
static int apply_to_race(struct agg *agg, const struct agg_record *rec,
                         const struct sample_in *in, int64_t arrival_ms,
                         struct race **race_out, enum agg_outcome *outcome)
{
    struct race *race = race_find(agg, &rec->race);

    *race_out = race;
    if (quarantine(agg, race, rec, arrival_ms, outcome))
        return 0;
    if (race != NULL && rec->second <= race->published_through)
        return apply_late(agg, race, rec, in, outcome);

    bool board_changed;
    int rc = apply_sample(agg, rec, in, &race, outcome, &board_changed);
    *race_out = race;
    if (rc != 0 || race == NULL)
        return rc;
    int64_t through =
        (int64_t)race->latest_second - agg->cfg.allowed_lateness_s;
    return through < 1 ? 0 : close_through(agg, race, (int32_t)through);
}

int agg_apply(struct agg *agg, const struct agg_record *rec, int64_t arrival_ms,
              enum agg_outcome *outcome)
{
    struct sample_in in;
    struct race *race;

    sample_from_record(rec, arrival_ms, &in);
    int rc = sample_in_check(agg, &in);
    if (rc != 0)
        return rc;
    rc = agg_advance(agg, arrival_ms);
    if (rc != 0)
        return rc;

    rc = apply_to_race(agg, rec, &in, arrival_ms, &race, outcome);
    /* Results follow every change of their race at once, within this
     * call, so their revisions never depend on batch boundaries. */
    if (rc == 0 && race != NULL)
        rc = results_settle(agg, race, false);
    return rc != 0 ? rc : classes_publish(agg);
}

/* ---- persistence -------------------------------------------------------- */

int agg_flush(struct agg *agg)
{
    uint32_t count = 0;

    for (uint32_t i = 0; i < agg->race_count; i++)
        count += agg->races[i]->dirty;
    if (count == 0)
        return classes_flush(agg);

    struct race **dirty = malloc(count * sizeof *dirty);
    if (dirty == NULL)
        return -ENOMEM;
    count = 0;
    for (uint32_t i = 0; i < agg->race_count; i++) {
        if (agg->races[i]->dirty)
            dirty[count++] = agg->races[i];
    }
    qsort(dirty, count, sizeof *dirty, race_ptr_cmp);

    int rc = 0;
    for (uint32_t i = 0; i < count && rc == 0; i++) {
        rc = state_write(agg, dirty[i]);
        if (rc == 0)
            rc = agg->sink.race_state(agg->sink.arg, &dirty[i]->id,
                                      agg->doc.data, agg->doc.len);
        if (rc == 0)
            dirty[i]->dirty = false;
    }
    free(dirty);
    return rc != 0 ? rc : classes_flush(agg);
}
