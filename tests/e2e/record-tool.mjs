#!/usr/bin/env node
// Helpers of tests/e2e/record.sh.
//
//   node record-tool.mjs put-aggregates --port P --stream NAME --recording FILE --per N
//   node record-tool.mjs compare --port P --stream NAME --recording FILE [--prefix]
//   node record-tool.mjs settled --publish FILE --results N [--idle-s S] [--timeout-s T]
//   node record-tool.mjs final-compare --publish FILE --other FILE
//
// put-aggregates  puts the lines of FILE, a recording of `podium simulate
//                 --out`, as KPL aggregates of N user records each (built by
//                 kpl-tool.mjs), one PutRecord call per aggregate with the
//                 partition key of its first user record. Prints the number
//                 of aggregates.
// compare         reads every shard of the stream with GetRecords from
//                 TRIM_HORIZON, closed shards to their end, and compares it
//                 with FILE, a recording of `podium record`. Each shard's
//                 lines must be its records in sequence order, once each,
//                 with the SequenceNumber, PartitionKey and the exact base64
//                 Data that GetRecords returned, the arrival time to the
//                 millisecond and no SubSequenceNumber. With --prefix each
//                 shard's lines need only be the first of its records. The
//                 first line of a child shard must follow the last line of
//                 each parent. Prints a JSON summary.
// settled         waits until FILE, written with publish.transport=file,
//                 has the results of N races and has not grown for S
//                 seconds (default 3); fails after T seconds (default 120).
// final-compare   compares the last revision of every race leaderboard
//                 second, race results and class leaderboard in two publish
//                 files, byte for byte apart from the revision number.
//
// Exit status: 0 on success, 1 when a call or check fails, 2 on invalid
// arguments.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { callKinesis, CheckFailure, listShards } from './checker.mjs';

const KPL_TOOL = join(dirname(fileURLToPath(import.meta.url)), 'kpl-tool.mjs');
// The first bytes of every KPL aggregate (aggregation-format.md of the KPL).
const KPL_MAGIC = Buffer.from([0xf3, 0x89, 0x9a, 0xc2]);
const GET_RECORDS_LIMIT = 1000;
// A closed shard ends with a reply without NextShardIterator; this many
// empty replies before that mean the server never ends it.
const MAX_EMPTY_REPLIES_OF_CLOSED_SHARD = 100;
// The members of a recording line of a Kinesis record, in order.
const LINE_MEMBERS = ['ShardId', 'SequenceNumber', 'ApproximateArrivalTimestamp', 'PartitionKey', 'Data'];
const WAIT_POLL_MS = 200;

class UsageError extends Error {}

function fail(message) {
  throw new CheckFailure(message);
}

// Returns the lines of a file, without the empty string after the last
// newline.
function readLines(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read ${file}: ${err.message}`);
  }
  if (text !== '' && !text.endsWith('\n')) {
    fail(`${file} does not end with a newline: its last line is cut short`);
  }
  const lines = text.split('\n');
  lines.pop();
  return lines;
}

// ---- put-aggregates --------------------------------------------------------

async function putAggregates(options) {
  const lines = readLines(options.recording).map((line, index) => {
    try {
      return JSON.parse(line);
    } catch (err) {
      return fail(`${options.recording}:${index + 1}: invalid JSON: ${err.message}`);
    }
  });
  let aggregates = 0;
  for (let start = 0; start < lines.length; start += options.per) {
    const group = lines.slice(start, start + options.per);
    const args = group.flatMap((line) => [line.PartitionKey, Buffer.from(line.Data, 'base64').toString('utf8')]);
    const data = execFileSync('node', [KPL_TOOL, 'aggregate', ...args], { encoding: 'utf8' }).trim();
    await callKinesis(options.port, 'PutRecord', {
      StreamName: options.stream,
      PartitionKey: group[0].PartitionKey,
      Data: data,
    });
    aggregates += 1;
  }
  console.log(aggregates);
}

// ---- compare ---------------------------------------------------------------

// Returns the records of a shard in sequence order as GetRecords returned
// them, reading a closed shard to its end and an open one until a reply
// has no records.
async function readShard(port, stream, shard) {
  const closed = Boolean(shard.SequenceNumberRange?.EndingSequenceNumber);
  const reply = await callKinesis(port, 'GetShardIterator', {
    StreamName: stream,
    ShardId: shard.ShardId,
    ShardIteratorType: 'TRIM_HORIZON',
  });
  const records = [];
  let iterator = reply.ShardIterator;
  let emptyReplies = 0;
  while (iterator) {
    const page = await callKinesis(port, 'GetRecords', { ShardIterator: iterator, Limit: GET_RECORDS_LIMIT });
    const batch = page.Records ?? [];
    records.push(...batch);
    if (batch.length === 0) {
      if (!closed) {
        break;
      }
      emptyReplies += 1;
      if (emptyReplies > MAX_EMPTY_REPLIES_OF_CLOSED_SHARD) {
        fail(`closed shard ${shard.ShardId} returned ${emptyReplies} empty replies and no end`);
      }
    } else {
      emptyReplies = 0;
    }
    iterator = page.NextShardIterator ?? null;
  }
  return records;
}

// The text of ApproximateArrivalTimestamp as podium record writes it: the
// millisecond count with three decimals.
function arrivalText(seconds) {
  const ms = Math.round(seconds * 1000);
  return `${Math.floor(ms / 1000)}.${String(ms % 1000).padStart(3, '0')}`;
}

// Parses one recording line and checks its members and their order.
function parseLine(text, where) {
  let line;
  try {
    line = JSON.parse(text);
  } catch (err) {
    return fail(`${where}: invalid JSON: ${err.message}`);
  }
  const members = Object.keys(line);
  if (members.join(',') !== LINE_MEMBERS.join(',')) {
    fail(`${where}: expected the members ${LINE_MEMBERS.join(', ')} in this order, got ${members.join(', ')}`);
  }
  const arrival = /"ApproximateArrivalTimestamp":([^,]*),/.exec(text);
  return { ...line, arrivalText: arrival?.[1] };
}

function describeRecord(record) {
  return JSON.stringify(record).slice(0, 300);
}

// Compares the lines of one shard with its records from GetRecords.
function compareShard(shardId, lines, records, prefix) {
  if (prefix ? lines.length > records.length : lines.length !== records.length) {
    fail(
      `shard ${shardId}: the recording has ${lines.length} lines and the stream ${records.length} records` +
        (prefix ? '; expected at most as many lines' : ''),
    );
  }
  lines.forEach(({ line, where }, index) => {
    const record = records[index];
    const expected = {
      SequenceNumber: record.SequenceNumber,
      arrivalText: arrivalText(record.ApproximateArrivalTimestamp),
      PartitionKey: record.PartitionKey,
      Data: record.Data,
    };
    for (const [member, value] of Object.entries(expected)) {
      if (line[member] !== value) {
        fail(
          `${where}: ${member} is ${JSON.stringify(line[member])}, but record ${index + 1} of shard ` +
            `${shardId} has ${JSON.stringify(value)}: ${describeRecord(record)}`,
        );
      }
    }
  });
}

async function compareRecording(options) {
  const shards = await listShards(options.port, options.stream);
  const byShard = new Map(shards.map((shard) => [shard.ShardId, []]));
  const firstLine = new Map();
  const lastLine = new Map();
  let aggregates = 0;
  const lines = readLines(options.recording);
  lines.forEach((text, index) => {
    const where = `${options.recording}:${index + 1}`;
    const line = parseLine(text, where);
    if (!byShard.has(line.ShardId)) {
      fail(`${where}: shard ${line.ShardId} is not a shard of "${options.stream}"`);
    }
    byShard.get(line.ShardId).push({ line, where });
    if (!firstLine.has(line.ShardId)) {
      firstLine.set(line.ShardId, index + 1);
    }
    lastLine.set(line.ShardId, index + 1);
    if (Buffer.from(line.Data, 'base64').subarray(0, 4).equals(KPL_MAGIC)) {
      aggregates += 1;
    }
  });

  const counts = {};
  for (const shard of shards) {
    const records = await readShard(options.port, options.stream, shard);
    compareShard(shard.ShardId, byShard.get(shard.ShardId), records, options.prefix);
    counts[shard.ShardId] = byShard.get(shard.ShardId).length;
  }

  // A child is read only after its parents ended, so its first line comes
  // after every line of its parents.
  for (const shard of shards) {
    for (const parent of [shard.ParentShardId, shard.AdjacentParentShardId]) {
      if (!parent || !firstLine.has(shard.ShardId) || !lastLine.has(parent)) {
        continue;
      }
      if (firstLine.get(shard.ShardId) < lastLine.get(parent)) {
        fail(
          `line ${firstLine.get(shard.ShardId)} of the child ${shard.ShardId} comes before line ` +
            `${lastLine.get(parent)} of its parent ${parent}`,
        );
      }
    }
  }
  console.log(JSON.stringify({ lines: lines.length, aggregates, shards: counts }));
}

// ---- publish files ---------------------------------------------------------

const TOPIC_PREFIX = '{"topic":';
const PAYLOAD_MEMBER = ',"payload":';

// Splits one line of a publish file into its topic and payload bytes.
function parsePublishLine(line, where) {
  if (!line.startsWith(TOPIC_PREFIX) || !line.endsWith('}')) {
    fail(`${where}: expected {"topic":…,"payload":…}, got ${line.slice(0, 80)}`);
  }
  let end = TOPIC_PREFIX.length + 1;
  while (end < line.length && line[end] !== '"') {
    end += line[end] === '\\' ? 2 : 1;
  }
  if (!line.startsWith(PAYLOAD_MEMBER, end + 1)) {
    fail(`${where}: no "payload" member after the topic`);
  }
  return {
    topic: JSON.parse(line.slice(TOPIC_PREFIX.length, end + 1)),
    payload: line.slice(end + 1 + PAYLOAD_MEMBER.length, -1),
  };
}

// Returns the messages of a publish file; a last line without its newline
// is still being written and is left out.
function readPublishFile(file) {
  if (!existsSync(file)) {
    return [];
  }
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.pop();
  return lines.map((line, index) => parsePublishLine(line, `${file}:${index + 1}`));
}

const REVISION_PATTERN = /,"revision":(\d+),/;

// Returns Map key -> payload of the last revision, without the revision,
// where the key is the topic and, for race leaderboards, the second.
function lastRevisions(file) {
  const last = new Map();
  for (const { topic, payload } of readPublishFile(file)) {
    const revision = REVISION_PATTERN.exec(payload);
    if (revision === null) {
      fail(`${file}: a message on ${topic} has no revision: ${payload.slice(0, 120)}`);
    }
    const second = /^\{"type":"leaderboard","raceId":[^,]+,"second":(\d+),/.exec(payload);
    const key = second === null ? topic : `${topic} second ${second[1]}`;
    const number = Number(revision[1]);
    if (!last.has(key) || last.get(key).revision <= number) {
      last.set(key, { revision: number, payload: payload.replace(REVISION_PATTERN, ',"revision":…,') });
    }
  }
  return last;
}

function compareFinal(options) {
  const first = lastRevisions(options.publish);
  const other = lastRevisions(options.other);
  const failures = [];
  for (const [key, { payload }] of first) {
    if (!other.has(key)) {
      failures.push(`${key}: missing from ${options.other}`);
    } else if (other.get(key).payload !== payload) {
      failures.push(`${key}: the last revisions differ:\n  ${payload}\n  ${other.get(key).payload}`);
    }
  }
  for (const key of other.keys()) {
    if (!first.has(key)) {
      failures.push(`${key}: missing from ${options.publish}`);
    }
  }
  if (first.size === 0) {
    failures.push(`${options.publish} has no messages`);
  }
  if (failures.length > 0) {
    failures.slice(0, 10).forEach((failure) => console.error(`record-tool: ${failure}`));
    fail(`${failures.length} leaderboards, results or class leaderboards differ`);
  }
  console.error(`record-tool: the last revisions of ${first.size} leaderboards, results and class leaderboards match`);
}

async function waitSettled(options) {
  const deadline = Date.now() + options.timeoutS * 1000;
  let size = -1;
  let quietSince = Date.now();
  for (;;) {
    const current = existsSync(options.publish) ? statSync(options.publish).size : 0;
    if (current !== size) {
      size = current;
      quietSince = Date.now();
    }
    const races = new Set(
      readPublishFile(options.publish)
        .map((m) => m.topic)
        .filter((topic) => /^podium\/races\/[^/]+\/results$/.test(topic)),
    );
    if (races.size >= options.results && Date.now() - quietSince >= options.idleS * 1000) {
      return;
    }
    if (Date.now() >= deadline) {
      fail(
        `after ${options.timeoutS}s ${options.publish} has the results of ${races.size} of ` +
          `${options.results} races` +
          (races.size >= options.results ? ' but keeps growing' : ''),
      );
    }
    await sleep(WAIT_POLL_MS);
  }
}

// ---- command line ----------------------------------------------------------

function positiveInteger(values, name, fallback) {
  const text = values[name] ?? fallback;
  if (text === undefined || !/^[1-9]\d*$/.test(text)) {
    throw new UsageError(`invalid or missing --${name} '${text}': expected a positive integer`);
  }
  return Number(text);
}

function required(values, name) {
  if (values[name] === undefined) {
    throw new UsageError(`missing --${name}`);
  }
  return values[name];
}

function parseOptions(argv) {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      port: { type: 'string' },
      stream: { type: 'string' },
      recording: { type: 'string' },
      per: { type: 'string' },
      prefix: { type: 'boolean', default: false },
      publish: { type: 'string' },
      other: { type: 'string' },
      results: { type: 'string' },
      'idle-s': { type: 'string' },
      'timeout-s': { type: 'string' },
    },
  });
  const mode = positionals[0];
  switch (mode) {
    case 'put-aggregates':
      return {
        mode,
        port: positiveInteger(values, 'port'),
        stream: required(values, 'stream'),
        recording: required(values, 'recording'),
        per: positiveInteger(values, 'per'),
      };
    case 'compare':
      return {
        mode,
        port: positiveInteger(values, 'port'),
        stream: required(values, 'stream'),
        recording: required(values, 'recording'),
        prefix: values.prefix,
      };
    case 'settled':
      return {
        mode,
        publish: required(values, 'publish'),
        results: positiveInteger(values, 'results'),
        idleS: positiveInteger(values, 'idle-s', '3'),
        timeoutS: positiveInteger(values, 'timeout-s', '120'),
      };
    case 'final-compare':
      return { mode, publish: required(values, 'publish'), other: required(values, 'other') };
    default:
      throw new UsageError(
        `expected put-aggregates, compare, settled or final-compare, got ${JSON.stringify(positionals)}`,
      );
  }
}

async function main() {
  let options;
  try {
    options = parseOptions(process.argv.slice(2));
  } catch (err) {
    console.error(`record-tool: ${err.message}`);
    process.exit(2);
  }
  if (options.mode === 'put-aggregates') {
    await putAggregates(options);
  } else if (options.mode === 'compare') {
    await compareRecording(options);
  } else if (options.mode === 'settled') {
    await waitSettled(options);
  } else {
    compareFinal(options);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    if (err instanceof CheckFailure) {
      console.error(`record-tool: ${err.message}`);
    } else {
      console.error(err.stack ?? err);
    }
    process.exit(1);
  });
}
