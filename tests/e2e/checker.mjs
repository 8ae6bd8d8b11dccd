#!/usr/bin/env node
// An independent implementation of podium's leaderboard rules (race
// leaderboards, race results and the all-time class leaderboards), used by
// the end-to-end tests to check what podium published.
//
//   node checker.mjs wait   --port P --stream NAME --capture FILE [options]
//   node checker.mjs verify --port P --stream NAME --capture FILE [options]
//   node checker.mjs expected --port P --stream NAME
//   node checker.mjs compare --capture FILE --reference FILE [--alleycat T]
//
// The checker reads every record back from the Kinesis stream on
// 127.0.0.1:P and computes itself the expected leaderboard of every
// (race, second), the results of every race and the leaderboard of every
// class, assuming every race has closed. FILE contains one "TOPIC PAYLOAD"
// line per MQTT message, as written by `mosquitto_sub -v`.
//
// wait      polls FILE until every (race, second) that has samples has a
//           leaderboard, every race has results and every class a
//           leaderboard, and no message arrived for --idle-s seconds; exits
//           1 after --timeout-s seconds.
// verify    compares the last revision of every (race, second), race
//           results and class leaderboard in FILE with the expected
//           message, byte for byte except the revision value, and checks
//           repeats, revision order and coverage.
// expected  prints the expected messages as "TOPIC PAYLOAD" lines with
//           revision 0, for debugging a mismatch.
// compare   checks that FILE has the messages of the reference capture in
//           the same order on each topic, Alleycat messages (topic T) per
//           race and class, byte for byte. A message equal to an earlier
//           one of its topic is a resend and is left out of both. The order
//           across topics may differ, because it depends on when each race
//           closes.
//
// With --alleycat TOPIC, verify also checks the messages on TOPIC, which
// have the shape that the Alleycat sample's frontend reads. Each race
// leaderboard in FILE must be followed, before the next leaderboard of that
// race, by one such message per class listed in it, in classId order, as
// alleycatMessages builds them from the leaderboard's entries. Each must
// parse the way the frontend parses it. A message equal to one seen before
// is a resend and is skipped.
//
// Options: --seconds N requires every race to have samples and leaderboards
// for seconds 1..N. --summary FILE writes, as JSON, the number of unique
// samples, the sum of outputs per race (in 1/10000 units) and the
// ChildShards that GetRecords returned at the end of each closed shard
// (only shards whose last reply had any). --idle-s N
// (default 3) and --timeout-s N (default 180) apply to wait.
//
// Exit status: 0 when the check passes, 1 when it fails, 2 on invalid
// arguments.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const TOP_N = 100;
const GET_RECORDS_LIMIT = 10000;
const MAX_REPORTED_FAILURES = 20;
// kinesalite 3.3.3 ends a closed shard by its second empty reply at the
// latest, kinesis-local 0.6.2 with the reply that returns its last records,
// and real Kinesis may return a few more empty replies before the end.
const MAX_EMPTY_REPLIES_OF_CLOSED_SHARD = 100;

class CheckFailure extends Error {}

function fail(message) {
  throw new CheckFailure(message);
}

// ---- exact decimals ---------------------------------------------------
//
// A decimal is { units: BigInt, scale: number } with value units / 10^scale
// and scale >= 0, parsed from the JSON number text so no binary rounding
// ever happens.

const TEN = 10n;

function pow10(exponent) {
  return TEN ** BigInt(exponent);
}

function parseDecimal(raw) {
  const match = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(raw);
  if (match === null) {
    fail(`invalid JSON number text '${raw}'`);
  }
  const [, sign, intDigits, fracDigits = '', exponentText = '0'] = match;
  let units = BigInt(intDigits + fracDigits);
  let scale = fracDigits.length - Number(exponentText);
  if (scale < 0) {
    units *= pow10(-scale);
    scale = 0;
  }
  return { units: sign === '-' ? -units : units, scale };
}

function compareBigInts(a, b) {
  if (a < b) {
    return -1;
  }
  return a > b ? 1 : 0;
}

function compareDecimals(a, b) {
  const scale = Math.max(a.scale, b.scale);
  const left = a.units * pow10(scale - a.scale);
  const right = b.units * pow10(scale - b.scale);
  return compareBigInts(left, right);
}

// Divides numerator by a positive denominator, rounding half away from
// zero, which is "half up" for the non-negative values podium accepts.
function divideRoundHalfUp(numerator, denominator) {
  const negative = numerator < 0n;
  const magnitude = negative ? -numerator : numerator;
  const quotient = (magnitude * 2n + denominator) / (denominator * 2n);
  return negative ? -quotient : quotient;
}

// Returns the decimal rounded half up to 4 decimals, in 1/10000 units.
function toUnits4(decimal) {
  return divideRoundHalfUp(decimal.units * 10000n, pow10(decimal.scale));
}

// output = (cadence + 35) x (resistance + 65) / 100, rounded half up to
// 4 decimals and returned in 1/10000 units.
function computeOutput4(cadence, resistance) {
  const cadencePlus = cadence.units + 35n * pow10(cadence.scale);
  const resistancePlus = resistance.units + 65n * pow10(resistance.scale);
  const denominator = pow10(cadence.scale) * pow10(resistance.scale) * 100n;
  return divideRoundHalfUp(cadencePlus * resistancePlus * 10000n, denominator);
}

// Formats 1/10000 units as a JSON number: at most 4 decimals, no trailing
// zeros and no decimal point for integers (22.75, 165.312, 7).
function formatUnits4(units) {
  const negative = units < 0n;
  const magnitude = negative ? -units : units;
  const whole = magnitude / 10000n;
  const fraction = (magnitude % 10000n).toString().padStart(4, '0').replace(/0+$/, '');
  const text = fraction === '' ? whole.toString() : `${whole}.${fraction}`;
  return negative ? `-${text}` : text;
}

// ---- JSON with raw numbers ---------------------------------------------
//
// JSON.parse turns numbers into doubles, which loses digits. This parser
// keeps each number as a RawNumber with its source text. Objects keep their
// keys in a Map so a duplicate key can be reported.

class RawNumber {
  constructor(text) {
    this.text = text;
  }
}

function parseJsonRaw(text) {
  let position = 0;

  function error(message) {
    fail(`${message} at offset ${position}`);
  }

  function skipWhitespace() {
    while (position < text.length && ' \t\r\n'.includes(text[position])) {
      position += 1;
    }
  }

  function parseString() {
    const match = /^"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/.exec(
      text.slice(position),
    );
    if (match === null) {
      error('invalid JSON string');
    }
    position += match[0].length;
    return JSON.parse(match[0]);
  }

  function parseValue() {
    skipWhitespace();
    const character = text[position];
    if (character === '{') {
      position += 1;
      const object = new Map();
      skipWhitespace();
      if (text[position] === '}') {
        position += 1;
        return object;
      }
      for (;;) {
        skipWhitespace();
        if (text[position] !== '"') {
          error('expected a string key');
        }
        const key = parseString();
        skipWhitespace();
        if (text[position] !== ':') {
          error(`expected ':' after key ${JSON.stringify(key)}`);
        }
        position += 1;
        if (object.has(key)) {
          error(`duplicate key ${JSON.stringify(key)}`);
        }
        object.set(key, parseValue());
        skipWhitespace();
        if (text[position] === ',') {
          position += 1;
        } else if (text[position] === '}') {
          position += 1;
          return object;
        } else {
          error("expected ',' or '}'");
        }
      }
    }
    if (character === '[') {
      position += 1;
      const array = [];
      skipWhitespace();
      if (text[position] === ']') {
        position += 1;
        return array;
      }
      for (;;) {
        array.push(parseValue());
        skipWhitespace();
        if (text[position] === ',') {
          position += 1;
        } else if (text[position] === ']') {
          position += 1;
          return array;
        } else {
          error("expected ',' or ']'");
        }
      }
    }
    if (character === '"') {
      return parseString();
    }
    const numberMatch = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?/.exec(text.slice(position));
    if (numberMatch !== null) {
      position += numberMatch[0].length;
      return new RawNumber(numberMatch[0]);
    }
    for (const [word, value] of [['true', true], ['false', false], ['null', null]]) {
      if (text.startsWith(word, position)) {
        position += word.length;
        return value;
      }
    }
    return error('unexpected character');
  }

  const value = parseValue();
  skipWhitespace();
  if (position !== text.length) {
    error('unexpected text after the JSON value');
  }
  return value;
}

// ---- records ---------------------------------------------------------

// An id is an integer or a string. json is its form in a message (5402746
// or "R-7"), topic its form in a topic (5402746 or R-7).
function parseId(value, field) {
  if (value instanceof RawNumber) {
    if (!/^-?\d+$/.test(value.text)) {
      fail(`${field} ${value.text} is not an integer`);
    }
    const number = BigInt(value.text);
    return { isNumber: true, number, json: number.toString(), topic: number.toString() };
  }
  if (typeof value === 'string') {
    return { isNumber: false, string: value, json: JSON.stringify(value), topic: value };
  }
  return fail(`${field} is neither an integer nor a string`);
}

// Numbers by value before strings, strings by UTF-8 bytes.
function compareIds(a, b) {
  if (a.isNumber && b.isNumber) {
    return compareBigInts(a.number, b.number);
  }
  if (a.isNumber !== b.isNumber) {
    return a.isNumber ? -1 : 1;
  }
  return Buffer.compare(Buffer.from(a.string, 'utf8'), Buffer.from(b.string, 'utf8'));
}

function requireField(record, field) {
  if (!record.has(field)) {
    fail(`missing field "${field}"`);
  }
  return record.get(field);
}

function requireNumber(record, field) {
  const value = requireField(record, field);
  if (!(value instanceof RawNumber)) {
    fail(`field "${field}" is not a number`);
  }
  return parseDecimal(value.text);
}

function requireString(record, field) {
  const value = requireField(record, field);
  if (typeof value !== 'string') {
    fail(`field "${field}" is not a string`);
  }
  return value;
}

// Decodes one record. The checker does not model podium's rejection rules,
// so a record it cannot decode fails the check instead of being skipped.
function decodeRecord(data) {
  const record = parseJsonRaw(data);
  if (!(record instanceof Map)) {
    fail('the record is not a JSON object');
  }

  const event = requireString(record, 'event');
  if (event !== 'update' && event !== 'final') {
    fail(`field "event" is ${JSON.stringify(event)}, expected "update" or "final"`);
  }
  const secondValue = requireField(record, 'second');
  if (!(secondValue instanceof RawNumber) || !/^\d+$/.test(secondValue.text)) {
    fail('field "second" is not a non-negative integer');
  }
  const second = Number(secondValue.text);
  if (second < 1) {
    fail(`field "second" is ${second}, expected 1 or more`);
  }

  const deviceTimestamp = requireField(record, 'deviceTimestamp');
  if (!(deviceTimestamp instanceof RawNumber) && typeof deviceTimestamp !== 'string') {
    fail('field "deviceTimestamp" is neither a number nor a string');
  }

  const cadence = requireNumber(record, 'cadence');
  const resistance = requireNumber(record, 'resistance');
  return {
    uuid: requireString(record, 'uuid'),
    final: event === 'final',
    deviceTimestamp:
      deviceTimestamp instanceof RawNumber ? parseDecimal(deviceTimestamp.text) : deviceTimestamp,
    second,
    race: parseId(requireField(record, 'raceId'), 'raceId'),
    racer: parseId(requireField(record, 'racerId'), 'racerId'),
    classId: parseId(requireField(record, 'classId'), 'classId'),
    name: requireString(record, 'name'),
    cadence,
    resistance,
    cadence4: toUnits4(cadence),
    resistance4: toUnits4(resistance),
    output4: computeOutput4(cadence, resistance),
  };
}

function compareDeviceTimestamps(a, b) {
  if (typeof a === 'string' || typeof b === 'string') {
    return Buffer.compare(Buffer.from(String(a)), Buffer.from(String(b)));
  }
  return compareDecimals(a, b);
}

// NOTE: "same values" compares name, classId, cadence and resistance by
// exact value. A repeat that differs only in deviceTimestamp or uuid keeps
// the stored sample; the simulator does not produce one.
function hasSameValues(a, b) {
  return (
    a.name === b.name &&
    a.classId.json === b.classId.json &&
    compareDecimals(a.cadence, b.cadence) === 0 &&
    compareDecimals(a.resistance, b.resistance) === 0
  );
}

// True when the candidate replaces the stored sample: the smaller
// (deviceTimestamp, uuid) wins.
function winsConflict(candidate, stored) {
  const byTime = compareDeviceTimestamps(candidate.deviceTimestamp, stored.deviceTimestamp);
  if (byTime !== 0) {
    return byTime < 0;
  }
  return Buffer.compare(Buffer.from(candidate.uuid), Buffer.from(stored.uuid)) < 0;
}

// ---- reading the stream ---------------------------------------------------

function callKinesis(port, action, body) {
  const payload = JSON.stringify(body);
  const amzDate = new Date().toISOString().replace(/[-:]/g, '').replace(/\.\d+/, '');
  const options = {
    host: '127.0.0.1',
    port,
    method: 'POST',
    path: '/',
    headers: {
      'Content-Type': 'application/x-amz-json-1.1',
      'X-Amz-Target': `Kinesis_20131202.${action}`,
      'X-Amz-Date': amzDate,
      // kinesalite and kinesis-local check the shape of the header, not the
      // signature. Both read a 12-digit key id as an account id.
      Authorization:
        'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/kinesis/aws4_request, ' +
        'SignedHeaders=host;x-amz-date, Signature=00',
      'Content-Length': Buffer.byteLength(payload),
    },
  };
  return new Promise((resolve, reject) => {
    const request = http.request(options, (response) => {
      const chunks = [];
      response.on('data', (chunk) => chunks.push(chunk));
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        if (response.statusCode !== 200) {
          // kinesis-local rejects some invalid requests, such as an unknown
          // shard iterator, with HTTP 500 and an empty body.
          reject(
            new CheckFailure(
              `Kinesis ${action} on 127.0.0.1:${port} failed with HTTP ${response.statusCode}: ` +
                `${text === '' ? '(empty body)' : text}`,
            ),
          );
          return;
        }
        resolve(text === '' ? {} : JSON.parse(text));
      });
    });
    request.setTimeout(30000, () => {
      request.destroy(new CheckFailure(`Kinesis ${action} on 127.0.0.1:${port} timed out after 30s`));
    });
    request.on('error', (err) =>
      reject(
        err instanceof CheckFailure
          ? err
          : new CheckFailure(
              `Kinesis ${action} on 127.0.0.1:${port} failed: ${err.message}; is the Kinesis server running?`,
            ),
      ),
    );
    request.end(payload);
  });
}

// Returns every shard of the stream, closed ones included, as ListShards
// reports them (ShardId, ParentShardId, HashKeyRange, SequenceNumberRange).
// kinesis-local sends absent members as null, so callers test members for
// null and undefined alike.
async function listShards(port, stream) {
  const shards = [];
  let reply = await callKinesis(port, 'ListShards', { StreamName: stream });
  for (;;) {
    shards.push(...(reply.Shards ?? []));
    if (!reply.NextToken) {
      return shards;
    }
    reply = await callKinesis(port, 'ListShards', { NextToken: reply.NextToken });
  }
}

// Reads the shard and returns { records, childShards }: its records in
// sequence order, and the ChildShards of the GetRecords reply that ended a
// closed shard (null when that reply had none, as with kinesalite).
// An open shard is read until GetRecords returns no records. A closed shard
// (one with an EndingSequenceNumber, the parent of a split or merge) is read
// until GetRecords returns no NextShardIterator, absent or null, because an
// empty reply before that end does not prove that no records follow.
// The value of EndingSequenceNumber is never used, because kinesis-local
// 0.6.2 reports 9223372036854775807 for every closed shard, which is
// smaller than the shard's real sequence numbers.
async function readShard(port, stream, shard) {
  const shardId = shard.ShardId;
  const closed = Boolean(shard.SequenceNumberRange?.EndingSequenceNumber);
  const iteratorReply = await callKinesis(port, 'GetShardIterator', {
    StreamName: stream,
    ShardId: shardId,
    ShardIteratorType: 'TRIM_HORIZON',
  });
  const records = [];
  let childShards = null;
  let iterator = iteratorReply.ShardIterator;
  let emptyReplies = 0;
  while (iterator) {
    const reply = await callKinesis(port, 'GetRecords', {
      ShardIterator: iterator,
      Limit: GET_RECORDS_LIMIT,
    });
    const batch = reply.Records ?? [];
    for (const record of batch) {
      records.push({
        shardId,
        sequenceNumber: BigInt(record.SequenceNumber),
        arrivalMs: Math.round(record.ApproximateArrivalTimestamp * 1000),
        data: Buffer.from(record.Data, 'base64').toString('utf8'),
      });
    }
    if (batch.length === 0) {
      if (!closed) {
        break;
      }
      emptyReplies += 1;
      if (emptyReplies > MAX_EMPTY_REPLIES_OF_CLOSED_SHARD) {
        fail(
          `closed shard ${shardId} of "${stream}" returned ${emptyReplies} empty GetRecords ` +
            'replies in a row and still a NextShardIterator; expected the shard to end',
        );
      }
    } else {
      emptyReplies = 0;
    }
    iterator = reply.NextShardIterator ?? null;
    if (iterator === null && Array.isArray(reply.ChildShards) && reply.ChildShards.length > 0) {
      childShards = reply.ChildShards;
    }
  }
  return { records, childShards };
}

async function readStream(port, stream) {
  const listed = await listShards(port, stream);
  if (listed.length === 0) {
    fail(`stream "${stream}" on 127.0.0.1:${port} has no shards`);
  }
  const shards = [];
  for (const shard of listed) {
    const { records, childShards } = await readShard(port, stream, shard);
    shards.push({ shardId: shard.ShardId, records, childShards });
  }
  return shards;
}

// ---- expected state ----------------------------------------------------------

// Applies the records of every shard and returns the kept samples per race.
// A uuid seen before is dropped, keeping the first copy in its shard's
// sequence order. Shards are merged by arrival time so that a conflict
// between shards resolves in a stable order.
function buildRaces(shards) {
  const ordered = shards
    .flatMap((shard) => shard.records)
    .sort((a, b) => {
      if (a.arrivalMs !== b.arrivalMs) {
        return a.arrivalMs - b.arrivalMs;
      }
      if (a.shardId !== b.shardId) {
        return a.shardId < b.shardId ? -1 : 1;
      }
      return compareBigInts(a.sequenceNumber, b.sequenceNumber);
    });

  const seenUuids = new Set();
  const races = new Map();
  const stats = { records: ordered.length, duplicateUuids: 0, unchanged: 0, conflicts: 0 };
  for (const entry of ordered) {
    let sample;
    try {
      sample = { ...decodeRecord(entry.data), arrivalMs: entry.arrivalMs };
    } catch (err) {
      if (err instanceof CheckFailure) {
        fail(
          `record ${entry.shardId}/${entry.sequenceNumber} is invalid: ${err.message}; ` +
            `data: ${entry.data.slice(0, 300)}`,
        );
      }
      throw err;
    }
    if (seenUuids.has(sample.uuid)) {
      stats.duplicateUuids += 1;
      continue;
    }
    seenUuids.add(sample.uuid);

    if (!races.has(sample.race.json)) {
      races.set(sample.race.json, { id: sample.race, racers: new Map() });
    }
    const race = races.get(sample.race.json);
    if (!race.racers.has(sample.racer.json)) {
      race.racers.set(sample.racer.json, { id: sample.racer, seconds: new Map() });
    }
    const racer = race.racers.get(sample.racer.json);
    const stored = racer.seconds.get(sample.second);
    if (stored === undefined) {
      racer.seconds.set(sample.second, sample);
    } else if (hasSameValues(stored, sample)) {
      stats.unchanged += 1;
    } else {
      stats.conflicts += 1;
      if (winsConflict(sample, stored)) {
        racer.seconds.set(sample.second, sample);
      }
    }
  }
  return { races, stats };
}

function secondsWithSamples(race) {
  const seconds = new Set();
  for (const racer of race.racers.values()) {
    for (const second of racer.seconds.keys()) {
      seconds.add(second);
    }
  }
  return [...seconds].sort((a, b) => a - b);
}

// Sorts riders ({ total, … }) by total, descending, then by racerId, and
// returns the first TOP_N formatted as format(rank, rider). Equal totals
// share the rank of the first of them (1, 2, 2, 4).
function rankEntries(riders, racerOf, format) {
  riders.sort((a, b) => {
    if (a.total !== b.total) {
      return a.total > b.total ? -1 : 1;
    }
    return compareIds(racerOf(a), racerOf(b));
  });
  const entries = [];
  let rank = 0;
  for (let index = 0; index < riders.length && index < TOP_N; index += 1) {
    if (index === 0 || riders[index].total !== riders[index - 1].total) {
      rank = index + 1;
    }
    entries.push(format(rank, riders[index]));
  }
  return entries;
}

function formatEntry(rank, rider) {
  const { sample } = rider;
  return (
    `{"rank":${rank},"racerId":${sample.racer.json},"name":${JSON.stringify(sample.name)},` +
    `"classId":${sample.classId.json},"second":${sample.second},` +
    `"cadence":${formatUnits4(sample.cadence4)},"resistance":${formatUnits4(sample.resistance4)},` +
    `"output":${formatUnits4(sample.output4)},"total":${formatUnits4(rider.total)}}`
  );
}

// Returns the expected payload of the race leaderboard at second, with the
// given revision.
function buildLeaderboard(race, second, revision) {
  const riders = [];
  let ts = null;
  for (const racer of race.racers.values()) {
    let total = 0n;
    let latest = null;
    for (const [sampleSecond, sample] of racer.seconds) {
      if (sampleSecond > second) {
        continue;
      }
      total += sample.output4;
      if (latest === null || sampleSecond > latest.second) {
        latest = sample;
      }
      if (ts === null || sample.arrivalMs > ts) {
        ts = sample.arrivalMs;
      }
    }
    if (latest !== null) {
      riders.push({ sample: latest, total });
    }
  }

  const entries = rankEntries(riders, (rider) => rider.sample.racer, formatEntry);
  return (
    `{"type":"leaderboard","raceId":${race.id.json},"second":${second},` +
    `"revision":${revision},"ts":${ts ?? 0},"entries":[${entries.join(',')}]}`
  );
}

function leaderboardTopic(race) {
  return `podium/races/${race.id.topic}/leaderboard`;
}

function resultsTopic(race) {
  return `podium/races/${race.id.topic}/results`;
}

function classTopic(board) {
  return `podium/classes/${board.id.topic}/leaderboard`;
}

// The newest arrival time among the race's kept samples: the ts of its
// results, and what orders races of equal totals on a class board.
function raceTs(race) {
  let ts = 0;
  for (const racer of race.racers.values()) {
    for (const sample of racer.seconds.values()) {
      ts = Math.max(ts, sample.arrivalMs);
    }
  }
  return ts;
}

// Returns a racer's total, last sample and last sample flagged final (or
// null) over the whole race.
function racerSummary(racer) {
  let total = 0n;
  let last = null;
  let lastFinal = null;
  for (const sample of racer.seconds.values()) {
    total += sample.output4;
    if (last === null || sample.second > last.second) {
      last = sample;
    }
    if (sample.final && (lastFinal === null || sample.second > lastFinal.second)) {
      lastFinal = sample;
    }
  }
  return { total, last, lastFinal };
}

// Returns the expected results of a closed race: the leaderboard at its last
// second with "type":"results", and per entry whether the rider sent
// "final" and the output of the rider's last final sample (of the last
// sample when none is final).
function buildResults(race, revision) {
  const riders = [...race.racers.values()].map((racer) => {
    const { total, last, lastFinal } = racerSummary(racer);
    return { sample: last, total, lastFinal };
  });
  const lastSecond = Math.max(...riders.map((rider) => rider.sample.second));
  const entries = rankEntries(
    riders,
    (rider) => rider.sample.racer,
    (rank, rider) =>
      `${formatEntry(rank, rider).slice(0, -1)},"final":${rider.lastFinal !== null},` +
      `"finalOutput":${formatUnits4((rider.lastFinal ?? rider.sample).output4)}}`,
  );
  return (
    `{"type":"results","raceId":${race.id.json},"second":${lastSecond},` +
    `"revision":${revision},"ts":${raceTs(race)},"entries":[${entries.join(',')}]}`
  );
}

// Returns the class boards of closed races as a Map from the class id's
// JSON to { id, best: Map racer JSON -> entry }. A rider counts in the
// class of its last sample in each race. The best entry is the greater
// total; of equal totals the race with the smaller ts, then the smaller
// raceId.
function buildClassBoards(races) {
  const boards = new Map();
  for (const race of races.values()) {
    const ts = raceTs(race);
    for (const racer of race.racers.values()) {
      const { total, last } = racerSummary(racer);
      if (!boards.has(last.classId.json)) {
        boards.set(last.classId.json, { id: last.classId, best: new Map() });
      }
      const board = boards.get(last.classId.json);
      const candidate = { racer: racer.id, name: last.name, race: race.id, ts, total };
      const held = board.best.get(racer.id.json);
      const better =
        held === undefined ||
        total > held.total ||
        (total === held.total &&
          (ts < held.ts || (ts === held.ts && compareIds(race.id, held.race) < 0)));
      if (better) {
        board.best.set(racer.id.json, candidate);
      }
    }
  }
  return boards;
}

// Returns the expected class leaderboard: best totals descending, equal
// totals by racerId sharing a rank, top 100, and as ts the newest race ts
// among the listed entries.
function buildClassLeaderboard(board, revision) {
  let ts = 0;
  const entries = rankEntries(
    [...board.best.values()],
    (rider) => rider.racer,
    (rank, rider) => {
      ts = Math.max(ts, rider.ts);
      return (
        `{"rank":${rank},"racerId":${rider.racer.json},"name":${JSON.stringify(rider.name)},` +
        `"raceId":${rider.race.json},"total":${formatUnits4(rider.total)}}`
      );
    },
  );
  return (
    `{"type":"class-leaderboard","classId":${board.id.json},"revision":${revision},` +
    `"ts":${ts},"entries":[${entries.join(',')}]}`
  );
}

// ---- the capture file ------------------------------------------------------

const ID_PATTERN = '(?:-?\\d+|"(?:[^"\\\\]|\\\\.)*")';
const REVISION_PATTERN = new RegExp(
  `^\\{"type":"leaderboard","raceId":${ID_PATTERN},"second":(\\d+),"revision":(\\d+),`,
);
const RESULTS_PATTERN = new RegExp(
  `^\\{"type":"results","raceId":${ID_PATTERN},"second":(\\d+),"revision":(\\d+),`,
);
const CLASS_PATTERN = new RegExp(`^\\{"type":"class-leaderboard","classId":${ID_PATTERN},"revision":(\\d+),`);

// The kinds of message the checker compares: the topic that identifies a
// kind, the start its payloads must have, and how a message is keyed (one
// leaderboard per second, one results or class board per topic).
const MESSAGE_KINDS = [
  {
    kind: 'leaderboard',
    topic: /^podium\/races\/[^/]+\/leaderboard$/,
    payload: REVISION_PATTERN,
    start: '{"type":"leaderboard","raceId":…,"second":…,"revision":…,',
  },
  {
    kind: 'results',
    topic: /^podium\/races\/[^/]+\/results$/,
    payload: RESULTS_PATTERN,
    start: '{"type":"results","raceId":…,"second":…,"revision":…,',
  },
  {
    kind: 'class',
    topic: /^podium\/classes\/[^/]+\/leaderboard$/,
    payload: CLASS_PATTERN,
    start: '{"type":"class-leaderboard","classId":…,"revision":…,',
  },
];

// A race leaderboard is keyed by topic and second, any other message by
// its topic.
function messageKey(message) {
  return (message.kind ?? 'leaderboard') === 'leaderboard' ? `${message.topic} ${message.second}` : message.topic;
}

// Parses the complete lines of the capture file. Race leaderboards, results,
// class leaderboards and, when alleycatTopic is given, the messages on it
// are returned in arrival order; other topics are only counted.
function readCapture(file, alleycatTopic) {
  if (!existsSync(file)) {
    return { messages: [], otherTopics: 0 };
  }
  const text = readFileSync(file, 'utf8');
  const lines = text.split('\n');
  lines.pop(); // an incomplete last line, or '' after the final newline
  const messages = [];
  let otherTopics = 0;
  lines.forEach((line, index) => {
    const space = line.indexOf(' ');
    if (space < 0) {
      fail(`${file}:${index + 1}: expected "TOPIC PAYLOAD", got ${JSON.stringify(line.slice(0, 200))}`);
    }
    const topic = line.slice(0, space);
    const payload = line.slice(space + 1);
    if (alleycatTopic !== undefined && topic === alleycatTopic) {
      messages.push({ line: index + 1, kind: 'alleycat', topic, payload });
      return;
    }
    const kind = MESSAGE_KINDS.find((candidate) => candidate.topic.test(topic));
    if (kind === undefined) {
      otherTopics += 1;
      return;
    }
    const match = kind.payload.exec(payload);
    if (match === null) {
      fail(`${file}:${index + 1}: the payload on ${topic} does not start with ${kind.start}: ${payload.slice(0, 200)}`);
    }
    const message = { line: index + 1, kind: kind.kind, topic, payload };
    if (kind.kind === 'class') {
      message.revision = Number(match[1]);
    } else {
      message.second = Number(match[1]);
      message.revision = Number(match[2]);
    }
    messages.push(message);
  });
  return { messages, otherTopics };
}

function withRevision(payload, revision) {
  return payload.replace(/,"revision":\d+,/, `,"revision":${revision},`);
}

function describeDifference(expected, actual, labels = ['expected', 'received']) {
  let index = 0;
  while (index < expected.length && expected[index] === actual[index]) {
    index += 1;
  }
  const from = Math.max(0, index - 60);
  const width = Math.max(labels[0].length, labels[1].length);
  return (
    `first difference at character ${index}:\n` +
    `    ${labels[0].padEnd(width)} …${expected.slice(from, index + 80)}\n` +
    `    ${labels[1].padEnd(width)} …${actual.slice(from, index + 80)}`
  );
}

// ---- modes ---------------------------------------------------------------

// Returns every message key the capture must contain, each with what it
// names and a function that builds the expected payload at a revision.
function expectedKeys(races, requiredSeconds) {
  const keys = [];
  for (const race of races.values()) {
    const seconds = new Set(secondsWithSamples(race));
    for (let second = 1; second <= requiredSeconds; second += 1) {
      seconds.add(second);
    }
    for (const second of seconds) {
      keys.push({
        key: `${leaderboardTopic(race)} ${second}`,
        what: `leaderboard for race ${race.id.json} second ${second}`,
        build: (revision) => buildLeaderboard(race, second, revision),
      });
    }
    keys.push({
      key: resultsTopic(race),
      what: `results for race ${race.id.json}`,
      build: (revision) => buildResults(race, revision),
    });
  }
  for (const board of buildClassBoards(races).values()) {
    keys.push({
      key: classTopic(board),
      what: `leaderboard for class ${board.id.json}`,
      build: (revision) => buildClassLeaderboard(board, revision),
    });
  }
  return keys;
}

function checkDataCoverage(races, requiredSeconds) {
  const failures = [];
  if (races.size === 0) {
    failures.push('the stream contains no records: did `podium simulate` put any?');
  }
  for (const race of races.values()) {
    const seconds = new Set(secondsWithSamples(race));
    for (let second = 1; second <= requiredSeconds; second += 1) {
      if (!seconds.has(second)) {
        failures.push(`race ${race.id.json} has no sample at second ${second} in the stream`);
        break;
      }
    }
  }
  return failures;
}

function verify(races, capture, requiredSeconds) {
  const failures = checkDataCoverage(races, requiredSeconds);
  const byTopic = new Map();
  for (const race of races.values()) {
    byTopic.set(leaderboardTopic(race), race);
  }
  const keys = expectedKeys(races, requiredSeconds);
  const expectedByKey = new Map(keys.map((k) => [k.key, k]));

  const lastByKey = new Map();
  const payloadByRevision = new Map();
  for (const message of capture.messages) {
    if (message.kind === 'alleycat') {
      continue;
    }
    const key = messageKey(message);
    const isLeaderboard = (message.kind ?? 'leaderboard') === 'leaderboard';
    if (isLeaderboard ? !byTopic.has(message.topic) : !expectedByKey.has(key)) {
      failures.push(
        `line ${message.line}: ${message.topic} names a ${isLeaderboard || message.kind === 'results' ? 'race' : 'class'} ` +
          'that has no records in the stream',
      );
      continue;
    }
    const revisionKey = `${key} ${message.revision}`;
    const earlier = payloadByRevision.get(revisionKey);
    if (earlier !== undefined && earlier.payload !== message.payload) {
      failures.push(
        `line ${message.line}: ${key} revision ${message.revision} differs from line ${earlier.line} ` +
          `with the same revision; ${describeDifference(earlier.payload, message.payload, [
            `line ${earlier.line}`,
            `line ${message.line}`,
          ])}`,
      );
    }
    payloadByRevision.set(revisionKey, message);

    // Delivery is at least once: after a restart, podium sends again the
    // messages it had not yet marked as delivered, byte for byte, so an
    // older revision may come again after a newer one. Only a revision never
    // seen before may not be lower than the newest.
    const last = lastByKey.get(key);
    const repeat = earlier !== undefined && earlier.payload === message.payload;
    if (last !== undefined && message.revision < last.revision && !repeat) {
      failures.push(
        `line ${message.line}: ${key} revision ${message.revision} arrived after revision ` +
          `${last.revision} (line ${last.line}): revisions must not decrease`,
      );
    }
    if (last === undefined || message.revision >= last.revision) {
      lastByKey.set(key, message);
    }
  }

  let compared = 0;
  for (const { key, what, build } of keys) {
    const last = lastByKey.get(key);
    if (last === undefined) {
      failures.push(`${key}: no ${what} was published`);
      continue;
    }
    const expected = build(last.revision);
    if (expected !== last.payload) {
      failures.push(
        `${key}: the last revision (${last.revision}, line ${last.line}) differs from the expected ` +
          `${what}; ${describeDifference(expected, last.payload)}`,
      );
    }
    compared += 1;
  }
  // A leaderboard for a second without samples, such as one past the end
  // of the data, is checked against the rules too.
  const expectedKeySet = new Set(keys.map((k) => k.key));
  for (const [key, last] of lastByKey) {
    const race = byTopic.get(last.topic);
    if (race === undefined || expectedKeySet.has(key)) {
      continue;
    }
    const expected = buildLeaderboard(race, last.second, last.revision);
    if (expected !== last.payload) {
      failures.push(
        `${key}: the last revision (${last.revision}, line ${last.line}) of a second without ` +
          `samples differs from the expected leaderboard; ${describeDifference(expected, last.payload)}`,
      );
    }
    compared += 1;
  }
  return { failures, compared };
}

// ---- Alleycat messages ---------------------------------------------------

// Returns the Alleycat messages that must follow a race leaderboard: one per
// class listed in it, classes in id order, each with its entries in
// leaderboard order as racerId text -> output at that second. Of two
// entries whose racerId has the same text (7 and "7") only the first is
// kept, because the frontend's JSON.parse would keep the later one.
function alleycatMessages(leaderboardPayload) {
  const board = parseJsonRaw(leaderboardPayload);
  const race = parseId(board.get('raceId'), 'raceId');
  const ts = board.get('ts').text;
  const classes = new Map();
  for (const entry of board.get('entries')) {
    const classId = parseId(entry.get('classId'), 'classId');
    const racer = parseId(entry.get('racerId'), 'racerId');
    if (!classes.has(classId.json)) {
      classes.set(classId.json, { id: classId, results: new Map() });
    }
    const { results } = classes.get(classId.json);
    if (!results.has(racer.topic)) {
      results.set(racer.topic, formatUnits4(toUnits4(parseDecimal(entry.get('output').text))));
    }
  }
  return [...classes.values()]
    .sort((a, b) => compareIds(a.id, b.id))
    .map(({ id, results }) => {
      const inner = `{${[...results].map(([key, output]) => `${JSON.stringify(key)}:${output}`).join(',')}}`;
      return (
        `{"msg":"results","classId":${JSON.stringify(id.topic)},` +
        `"raceId":${JSON.stringify(`race-${race.topic}`)},"ts":"${ts}","results":${JSON.stringify(inner)}}`
      );
    });
}

// Returns what is wrong with an Alleycat message for the stock frontend,
// which reads msg, parseInt(classId) and JSON.parse(results), or null.
function alleycatShapeProblem(payload) {
  let message;
  try {
    message = JSON.parse(payload);
  } catch (err) {
    return `not JSON: ${err.message}`;
  }
  if (message.msg !== 'results') {
    return `msg is ${JSON.stringify(message.msg)}, expected "results"`;
  }
  for (const field of ['classId', 'raceId', 'ts', 'results']) {
    if (typeof message[field] !== 'string') {
      return `${field} is not a string`;
    }
  }
  if (/^-?\d+$/.test(message.classId) && String(parseInt(message.classId, 10)) !== message.classId) {
    return `parseInt(classId) of ${JSON.stringify(message.classId)} is not the class number`;
  }
  if (!message.raceId.startsWith('race-') || !/^\d+$/.test(message.ts)) {
    return 'raceId does not start with "race-" or ts is not a number of milliseconds';
  }
  let results;
  try {
    results = JSON.parse(message.results);
  } catch (err) {
    return `results is not JSON: ${err.message}`;
  }
  if (results === null || typeof results !== 'object' || Array.isArray(results)) {
    return 'results is not a JSON object';
  }
  const bad = Object.entries(results).find(([, output]) => typeof output !== 'number' || !Number.isFinite(output));
  return bad === undefined ? null : `results[${JSON.stringify(bad[0])}] is not a finite number`;
}

// Checks every Alleycat message against the race leaderboard before it.
// verify() checks the leaderboards themselves against the rules.
function verifyAlleycat(capture) {
  const failures = [];
  const pending = new Map(); // race topic -> { line, expected: [payload] }
  const seen = new Set();
  let compared = 0;
  const raceOfPayload = (payload) => {
    const match = /"raceId":"race-((?:[^"\\]|\\.)*)"/.exec(payload);
    return match === null ? null : JSON.parse(`"${match[1]}"`);
  };
  for (const message of capture.messages) {
    if (message.kind === 'leaderboard') {
      const race = message.topic.split('/')[2];
      const waiting = pending.get(race);
      if (waiting !== undefined && waiting.expected.length > 0) {
        failures.push(
          `line ${message.line}: a leaderboard of race ${race} arrived while ${waiting.expected.length} ` +
            `alleycat messages of the leaderboard on line ${waiting.line} were missing; first missing: ` +
            waiting.expected[0],
        );
      }
      pending.set(race, { line: message.line, expected: alleycatMessages(message.payload) });
      continue;
    }
    if (message.kind !== 'alleycat') {
      continue;
    }
    const problem = alleycatShapeProblem(message.payload);
    if (problem !== null) {
      failures.push(`line ${message.line}: the frontend cannot read the alleycat message: ${problem}`);
      continue;
    }
    const waiting = pending.get(raceOfPayload(message.payload));
    if (waiting !== undefined && waiting.expected[0] === message.payload) {
      waiting.expected.shift();
      seen.add(message.payload);
      compared += 1;
    } else if (!seen.has(message.payload)) {
      const expected = waiting?.expected[0];
      failures.push(
        `line ${message.line}: unexpected alleycat message; ` +
          (expected === undefined
            ? `no leaderboard of its race is waiting for one: ${message.payload.slice(0, 200)}`
            : `${describeDifference(expected, message.payload)} (leaderboard on line ${waiting.line})`),
      );
    }
  }
  for (const [race, waiting] of pending) {
    if (waiting.expected.length > 0) {
      failures.push(
        `race ${race}: ${waiting.expected.length} alleycat messages of the leaderboard on line ` +
          `${waiting.line} never arrived; first missing: ${waiting.expected[0]}`,
      );
    }
  }
  if (compared === 0) {
    failures.push('no alleycat message was published');
  }
  return { failures, compared };
}

// Returns Map key -> payloads in arrival order without repeats, where the
// key is the topic, and for Alleycat messages the race and class too.
function sequencesByKey(capture) {
  const sequences = new Map();
  for (const message of capture.messages) {
    let key = message.topic;
    if (message.kind === 'alleycat') {
      const parsed = JSON.parse(message.payload);
      key = `${message.topic} ${parsed.raceId} class ${parsed.classId}`;
    }
    if (!sequences.has(key)) {
      sequences.set(key, { payloads: [], seen: new Set() });
    }
    const sequence = sequences.get(key);
    if (!sequence.seen.has(message.payload)) {
      sequence.seen.add(message.payload);
      sequence.payloads.push(message.payload);
    }
  }
  return sequences;
}

function compareCaptures(capture, reference) {
  const failures = [];
  const actual = sequencesByKey(capture);
  const expected = sequencesByKey(reference);
  let compared = 0;
  for (const [key, { payloads }] of expected) {
    const got = actual.get(key)?.payloads ?? [];
    const index = payloads.findIndex((payload, i) => got[i] !== payload);
    if (index >= 0) {
      failures.push(
        `${key}: message ${index + 1} of ${payloads.length} differs from the reference; ` +
          (got[index] === undefined
            ? `it is missing: ${payloads[index].slice(0, 200)}`
            : describeDifference(payloads[index], got[index], ['reference', 'received'])),
      );
    } else if (got.length > payloads.length) {
      failures.push(`${key}: ${got.length - payloads.length} messages more than the reference`);
    }
    compared += payloads.length;
  }
  for (const key of actual.keys()) {
    if (!expected.has(key)) {
      failures.push(`${key}: not in the reference capture`);
    }
  }
  return { failures, compared };
}

// Collects the ChildShards that ended each closed shard for the summary, as
// { shardId: [{ ShardId, ParentShards }] }.
function summarizeChildShards(shards) {
  const byShard = {};
  for (const shard of shards) {
    if (shard.childShards !== null) {
      byShard[shard.shardId] = shard.childShards.map((child) => ({
        ShardId: child.ShardId,
        ParentShards: child.ParentShards ?? [],
      }));
    }
  }
  return byShard;
}

function summarize(races) {
  let samples = 0;
  const totals = {};
  for (const race of races.values()) {
    let total = 0n;
    for (const racer of race.racers.values()) {
      samples += racer.seconds.size;
      for (const sample of racer.seconds.values()) {
        total += sample.output4;
      }
    }
    totals[race.id.json] = total.toString();
  }
  return { samples, totalOutput4ByRace: totals };
}

async function waitForCapture(races, options) {
  const keys = expectedKeys(races, options.seconds);
  const deadline = Date.now() + options.timeoutS * 1000;
  let lastCount = -1;
  let lastChangeAt = Date.now();
  for (;;) {
    const capture = readCapture(options.capture);
    const total = capture.messages.length + capture.otherTopics;
    if (total !== lastCount) {
      lastCount = total;
      lastChangeAt = Date.now();
    }
    const published = new Set(capture.messages.map(messageKey));
    const missing = keys.filter((k) => !published.has(k.key));
    if (missing.length === 0 && Date.now() - lastChangeAt >= options.idleS * 1000) {
      console.log(
        `checker: all ${keys.length} leaderboards and results arrived (${capture.messages.length} messages); ` +
          `none arrived in the last ${options.idleS}s`,
      );
      return;
    }
    if (Date.now() >= deadline) {
      const sample = missing.slice(0, 5).map((k) => k.key).join(', ');
      fail(
        `timed out after ${options.timeoutS}s: ${missing.length} of ${keys.length} leaderboards and results ` +
          `are missing (for example ${sample || 'none, but messages kept arriving'}); ` +
          `${capture.messages.length} messages in ${options.capture}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

// ---- command line ----------------------------------------------------------

function parseOptions(argv) {
  const usage =
    'usage: checker.mjs wait|verify|expected|compare --port P --stream NAME [--capture FILE] ' +
    '[--reference FILE] ' +
    '[--seconds N] [--summary FILE] [--idle-s N] [--timeout-s N] [--alleycat TOPIC]';
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        port: { type: 'string' },
        stream: { type: 'string' },
        capture: { type: 'string' },
        seconds: { type: 'string', default: '0' },
        summary: { type: 'string' },
        'idle-s': { type: 'string', default: '3' },
        'timeout-s': { type: 'string', default: '180' },
        alleycat: { type: 'string' },
        reference: { type: 'string' },
      },
    });
  } catch (err) {
    return { error: `${err.message}\n${usage}` };
  }
  const { values, positionals } = parsed;
  const mode = positionals[0];
  if (positionals.length !== 1 || !['wait', 'verify', 'expected', 'compare'].includes(mode)) {
    return {
      error: `expected one mode (wait, verify, expected or compare), got ${JSON.stringify(positionals)}\n${usage}`,
    };
  }
  if (mode === 'compare') {
    if (values.capture === undefined || values.reference === undefined) {
      return { error: `missing --capture FILE or --reference FILE for compare\n${usage}` };
    }
    return { mode, capture: values.capture, reference: values.reference, alleycatTopic: values.alleycat };
  }
  for (const name of ['port', 'seconds', 'idle-s', 'timeout-s']) {
    if (values[name] !== undefined && !/^\d+$/.test(values[name])) {
      return { error: `invalid --${name} '${values[name]}': expected a non-negative integer` };
    }
  }
  if (values.port === undefined || values.stream === undefined) {
    return { error: `missing --port or --stream\n${usage}` };
  }
  if (mode !== 'expected' && values.capture === undefined) {
    return { error: `missing --capture FILE for ${mode}\n${usage}` };
  }
  return {
    mode,
    port: Number(values.port),
    stream: values.stream,
    capture: values.capture,
    seconds: Number(values.seconds),
    summary: values.summary,
    idleS: Number(values['idle-s']),
    timeoutS: Number(values['timeout-s']),
    alleycatTopic: values.alleycat,
  };
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  if (options.error) {
    console.error(`checker: ${options.error}`);
    process.exit(2);
  }
  if (options.mode === 'compare') {
    const { failures, compared } = compareCaptures(
      readCapture(options.capture, options.alleycatTopic),
      readCapture(options.reference, options.alleycatTopic),
    );
    if (failures.length > 0) {
      for (const failure of failures.slice(0, MAX_REPORTED_FAILURES)) {
        console.error(`checker: FAILED: ${failure}`);
      }
      fail(`${failures.length} topics differ from the reference ${options.reference}`);
    }
    console.log(`checker: OK: ${compared} messages match the reference, in order on each topic`);
    return;
  }

  const shards = await readStream(options.port, options.stream);
  const { races, stats } = buildRaces(shards);
  console.error(
    `checker: read ${stats.records} records from ${shards.length} shards of "${options.stream}": ` +
      `${stats.duplicateUuids} duplicate uuids dropped, ${stats.unchanged} unchanged repeats, ` +
      `${stats.conflicts} conflicts, ${races.size} races`,
  );
  if (options.summary) {
    const summary = { ...summarize(races), childShards: summarizeChildShards(shards) };
    writeFileSync(options.summary, `${JSON.stringify(summary, null, 2)}\n`);
  }

  if (options.mode === 'expected') {
    for (const race of races.values()) {
      for (const second of secondsWithSamples(race)) {
        console.log(`${leaderboardTopic(race)} ${buildLeaderboard(race, second, 0)}`);
      }
      console.log(`${resultsTopic(race)} ${buildResults(race, 0)}`);
    }
    for (const board of buildClassBoards(races).values()) {
      console.log(`${classTopic(board)} ${buildClassLeaderboard(board, 0)}`);
    }
    return;
  }

  if (options.mode === 'wait') {
    await waitForCapture(races, options);
    return;
  }

  const capture = readCapture(options.capture, options.alleycatTopic);
  const { failures, compared } = verify(races, capture, options.seconds);
  let alleycatCompared = 0;
  if (options.alleycatTopic !== undefined) {
    const alleycat = verifyAlleycat(capture);
    failures.push(...alleycat.failures);
    alleycatCompared = alleycat.compared;
  }
  if (failures.length > 0) {
    for (const failure of failures.slice(0, MAX_REPORTED_FAILURES)) {
      console.error(`checker: FAILED: ${failure}`);
    }
    if (failures.length > MAX_REPORTED_FAILURES) {
      console.error(`checker: … and ${failures.length - MAX_REPORTED_FAILURES} more failures`);
    }
    fail(`${failures.length} checks failed; the capture is ${options.capture}`);
  }
  console.log(
    `checker: OK: ${compared} leaderboards, results and class leaderboards of ${races.size} races ` +
      `match the rules (${capture.messages.length} such messages, ${capture.otherTopics} on other topics)` +
      (options.alleycatTopic === undefined ? '' : `; ${alleycatCompared} alleycat messages match their leaderboards`),
  );
}

// The rule functions are exported for checker.test.mjs; main() runs only
// when this file is the program.
export {
  alleycatMessages,
  alleycatShapeProblem,
  buildClassBoards,
  buildClassLeaderboard,
  buildLeaderboard,
  buildRaces,
  buildResults,
  callKinesis,
  CheckFailure,
  compareCaptures,
  computeOutput4,
  formatUnits4,
  listShards,
  parseDecimal,
  parseJsonRaw,
  toUnits4,
  verify,
  verifyAlleycat,
};

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    if (err instanceof CheckFailure) {
      console.error(`checker: ${err.message}`);
    } else {
      console.error(err.stack ?? err);
    }
    process.exit(1);
  });
}
