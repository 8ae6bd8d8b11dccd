#!/usr/bin/env node
// Helpers of tests/e2e/determinism.sh.
//
//   node determinism-tool.mjs put     --port P --stream NAME --recording FILE
//                                     [--arrival-slot-ms N]
//   node determinism-tool.mjs wait    --publish FILE --races ID,... --seconds N
//                                     --classes N [--idle-s N] [--timeout-s N]
//   node determinism-tool.mjs capture --publish FILE --out FILE
//   node determinism-tool.mjs compare --publish FILE --other FILE
//
// put      puts a recording of `podium simulate --out` to a stream with one
//          PutRecords call per second of the race. A call takes the lines
//          from the first record of a second up to the first record of the
//          next one, so the duplicates of the previous second go with it.
//          Kinesis gives the records of one call nearly the same arrival
//          time, and podium orders records of different shards with the
//          same arrival time by shard id. A call that held several seconds
//          of the race could thus make a record late on one stream and not
//          on the other.
//          With --arrival-slot-ms N it instead puts the records in the
//          order of their ApproximateArrivalTimestamp in the recording,
//          each with the PartitionKey "@SLOT:KEY", where SLOT is that time
//          rounded up to a multiple of N ms and KEY its own key. The fault
//          "arrival" of tests/kinesis-fault-proxy.js then reports SLOT as
//          the arrival time, so every stream sees the same arrival times and
//          all records of one slot share one, as if one producer call had
//          sent them.
// wait     waits until FILE, written by podium with publish.transport=file,
//          has the results and the leaderboard of second N of every race,
//          a leaderboard of every class 1..N, and has not grown for
//          --idle-s seconds (default 2). Fails after --timeout-s (60).
// capture  rewrites FILE as "TOPIC PAYLOAD" lines for checker.mjs.
// compare  compares the messages of two publish files per topic, in order,
//          byte for byte except the value of "ts", which is the newest
//          ApproximateArrivalTimestamp and so differs between two streams.
//
// Exit status: 0 on success, 1 when a call or check fails, 2 on invalid
// arguments.
import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { callKinesis, CheckFailure } from './checker.mjs';

// Kinesis accepts at most 500 records per PutRecords call.
const PUT_RECORDS_MAX = 500;
const WAIT_POLL_MS = 200;
const TOPIC_PREFIX = '{"topic":';
const PAYLOAD_MEMBER = ',"payload":';

function fail(message) {
  throw new CheckFailure(message);
}

// ---- put ----------------------------------------------------------------

// Returns the recording as blocks of { PartitionKey, Data }, one block per
// second of the race in file order.
function readRecordingBlocks(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read the recording ${file}: ${err.message}`);
  }
  const blocks = [];
  let newest = 0;
  text.split('\n').forEach((line, index) => {
    if (line === '') {
      return;
    }
    let entry;
    let second;
    try {
      entry = JSON.parse(line);
      second = JSON.parse(Buffer.from(entry.Data, 'base64').toString('utf8')).second;
    } catch (err) {
      fail(`${file}:${index + 1}: invalid recording line: ${err.message}`);
    }
    if (!Number.isInteger(second)) {
      fail(`${file}:${index + 1}: the record has no integer "second"`);
    }
    if (second > newest) {
      newest = second;
      blocks.push([]);
    }
    blocks.at(-1).push({ PartitionKey: entry.PartitionKey, Data: entry.Data });
  });
  return blocks;
}

// Returns the recording as blocks of { PartitionKey, Data }, one block per
// arrival slot of slotMs, each key prefixed with "@SLOT:".
function readRecordingSlots(file, slotMs) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read the recording ${file}: ${err.message}`);
  }
  const entries = [];
  text.split('\n').forEach((line, index) => {
    if (line === '') {
      return;
    }
    let entry;
    try {
      entry = JSON.parse(line);
    } catch (err) {
      fail(`${file}:${index + 1}: invalid recording line: ${err.message}`);
    }
    const arrivalMs = Math.round(entry.ApproximateArrivalTimestamp * 1000);
    if (!Number.isSafeInteger(arrivalMs)) {
      fail(`${file}:${index + 1}: no numeric ApproximateArrivalTimestamp`);
    }
    const slot = Math.ceil(arrivalMs / slotMs) * slotMs;
    entries.push({ slot, arrivalMs, index, PartitionKey: `@${slot}:${entry.PartitionKey}`, Data: entry.Data });
  });
  entries.sort((a, b) => a.arrivalMs - b.arrivalMs || a.index - b.index);
  const blocks = [];
  for (const entry of entries) {
    if (blocks.length === 0 || blocks.at(-1).slot !== entry.slot) {
      blocks.push({ slot: entry.slot, records: [] });
    }
    blocks.at(-1).records.push({ PartitionKey: entry.PartitionKey, Data: entry.Data });
  }
  return blocks.map((block) => block.records);
}

async function putRecording(options) {
  const blocks =
    options.arrivalSlotMs > 0
      ? readRecordingSlots(options.recording, options.arrivalSlotMs)
      : readRecordingBlocks(options.recording);
  let count = 0;
  for (const block of blocks) {
    for (let start = 0; start < block.length; start += PUT_RECORDS_MAX) {
      const records = block.slice(start, start + PUT_RECORDS_MAX);
      const reply = await callKinesis(options.port, 'PutRecords', {
        StreamName: options.stream,
        Records: records,
      });
      if (reply.FailedRecordCount !== 0) {
        const firstError = (reply.Records ?? []).find((r) => r.ErrorCode);
        fail(
          `PutRecords to "${options.stream}" failed for ${reply.FailedRecordCount} of ` +
            `${records.length} records, for example ${firstError?.ErrorCode}: ${firstError?.ErrorMessage}`,
        );
      }
      count += records.length;
    }
  }
  console.error(
    `determinism-tool: put ${count} records of ${options.recording} to "${options.stream}" ` +
      `in ${blocks.length} ${options.arrivalSlotMs > 0 ? 'arrival slots' : 'seconds'}`,
  );
}

// ---- the publish file ---------------------------------------------------

// Splits one line of the publish file into its topic and its payload bytes,
// exactly as podium wrote them.
function parsePublishLine(line, where) {
  if (!line.startsWith(TOPIC_PREFIX) || !line.endsWith('}')) {
    fail(`${where}: expected {"topic":…,"payload":…}, got ${line.slice(0, 80)}`);
  }
  // The topic is a JSON string: find its closing quote past any escapes.
  let end = TOPIC_PREFIX.length + 1;
  while (end < line.length && line[end] !== '"') {
    end += line[end] === '\\' ? 2 : 1;
  }
  const topicText = line.slice(TOPIC_PREFIX.length, end + 1);
  if (!line.startsWith(PAYLOAD_MEMBER, end + 1)) {
    fail(`${where}: no "payload" member after the topic ${topicText}`);
  }
  return {
    topic: JSON.parse(topicText),
    payload: line.slice(end + 1 + PAYLOAD_MEMBER.length, -1),
  };
}

// Returns the messages of a publish file in file order. A last line without
// its newline is still being written and is left out.
function readPublishFile(file) {
  if (!existsSync(file)) {
    return [];
  }
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.pop();
  return lines.map((line, index) => parsePublishLine(line, `${file}:${index + 1}`));
}

// ---- wait ---------------------------------------------------------------

// The topics and leaderboards still missing from messages, as text.
function missingMessages(messages, options) {
  const expected = new Map();
  for (const race of options.races) {
    expected.set(`podium/races/${race}/results`, `results of race ${race}`);
    expected.set(
      `podium/races/${race}/leaderboard ${options.seconds}`,
      `leaderboard of race ${race} second ${options.seconds}`,
    );
  }
  for (let c = 1; c <= options.classes; c += 1) {
    expected.set(`podium/classes/${c}/leaderboard`, `leaderboard of class ${c}`);
  }
  for (const { topic, payload } of messages) {
    expected.delete(topic);
    const second = /^\{"type":"leaderboard","raceId":[^,]+,"second":(\d+),/.exec(payload);
    if (second !== null) {
      expected.delete(`${topic} ${second[1]}`);
    }
  }
  return [...expected.values()];
}

async function waitForAll(options) {
  const deadline = Date.now() + options.timeoutS * 1000;
  let size = -1;
  let quietSince = Date.now();
  for (;;) {
    const current = existsSync(options.publish) ? statSync(options.publish).size : 0;
    if (current !== size) {
      size = current;
      quietSince = Date.now();
    }
    const missing = missingMessages(readPublishFile(options.publish), options);
    if (missing.length === 0 && Date.now() - quietSince >= options.idleS * 1000) {
      console.error(`determinism-tool: ${options.publish} is complete and quiet for ${options.idleS}s`);
      return;
    }
    if (Date.now() >= deadline) {
      fail(
        `after ${options.timeoutS}s ${options.publish} still misses ${missing.length} messages` +
          (missing.length > 0 ? `, for example the ${missing.slice(0, 3).join(', ')}` : ' but keeps growing'),
      );
    }
    await sleep(WAIT_POLL_MS);
  }
}

// ---- capture and compare ------------------------------------------------

function writeCapture(options) {
  const messages = readPublishFile(options.publish);
  writeFileSync(options.out, messages.map((m) => `${m.topic} ${m.payload}\n`).join(''));
}

// The payloads of each topic in publishing order.
function byTopic(messages) {
  const topics = new Map();
  for (const { topic, payload } of messages) {
    if (!topics.has(topic)) {
      topics.set(topic, []);
    }
    topics.get(topic).push(payload);
  }
  return topics;
}

const TS_PATTERN = /,"ts":(\d+),"entries":\[/;

function withoutTs(payload) {
  return payload.replace(TS_PATTERN, ',"ts":…,"entries":[');
}

function compareFiles(options) {
  const first = byTopic(readPublishFile(options.publish));
  const second = byTopic(readPublishFile(options.other));
  const topics = [...new Set([...first.keys(), ...second.keys()])].sort();
  const failures = [];
  let compared = 0;
  let tsDiffers = 0;
  for (const topic of topics) {
    const a = first.get(topic) ?? [];
    const b = second.get(topic) ?? [];
    if (a.length !== b.length) {
      failures.push(`${topic}: ${a.length} messages in ${options.publish}, ${b.length} in ${options.other}`);
    }
    for (let i = 0; i < Math.min(a.length, b.length); i += 1) {
      compared += 1;
      if (!TS_PATTERN.test(a[i]) || !TS_PATTERN.test(b[i])) {
        failures.push(`${topic} message ${i}: no "ts" member before "entries"`);
      } else if (withoutTs(a[i]) !== withoutTs(b[i])) {
        failures.push(`${topic} message ${i} differs:\n  ${a[i]}\n  ${b[i]}`);
      } else if (a[i] !== b[i]) {
        tsDiffers += 1;
      }
    }
  }
  if (compared === 0) {
    fail(`${options.publish} and ${options.other} contain no messages`);
  }
  if (failures.length > 0) {
    for (const failure of failures.slice(0, 10)) {
      console.error(`determinism-tool: ${failure}`);
    }
    fail(`${failures.length} differences between ${options.publish} and ${options.other}`);
  }
  console.error(
    `determinism-tool: ${compared} messages on ${topics.length} topics are equal in order; ` +
      `${tsDiffers} of them differ only in "ts"`,
  );
}

// ---- arguments ----------------------------------------------------------

const MODES = {
  put: ['port', 'stream', 'recording'],
  wait: ['publish', 'races', 'seconds', 'classes'],
  capture: ['publish', 'out'],
  compare: ['publish', 'other'],
};

function parseOptions(argv) {
  const usage = 'usage: determinism-tool.mjs put|wait|capture|compare [options], see the comment at the top';
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        port: { type: 'string' },
        stream: { type: 'string' },
        recording: { type: 'string' },
        'arrival-slot-ms': { type: 'string', default: '0' },
        publish: { type: 'string' },
        races: { type: 'string' },
        seconds: { type: 'string' },
        classes: { type: 'string' },
        'idle-s': { type: 'string', default: '2' },
        'timeout-s': { type: 'string', default: '60' },
        out: { type: 'string' },
        other: { type: 'string' },
      },
    });
  } catch (err) {
    return { error: `${err.message}\n${usage}` };
  }
  const { values, positionals } = parsed;
  const mode = positionals[0];
  if (positionals.length !== 1 || !(mode in MODES)) {
    return { error: `expected one mode (put, wait, capture or compare), got ${JSON.stringify(positionals)}\n${usage}` };
  }
  for (const name of MODES[mode]) {
    if (values[name] === undefined) {
      return { error: `missing --${name} for ${mode}\n${usage}` };
    }
  }
  for (const name of ['port', 'seconds', 'classes', 'idle-s', 'timeout-s', 'arrival-slot-ms']) {
    if (values[name] !== undefined && !/^\d+$/.test(values[name])) {
      return { error: `invalid --${name} '${values[name]}': expected a non-negative integer` };
    }
  }
  return {
    mode,
    port: Number(values.port),
    stream: values.stream,
    recording: values.recording,
    arrivalSlotMs: Number(values['arrival-slot-ms']),
    publish: values.publish,
    races: values.races?.split(',') ?? [],
    seconds: Number(values.seconds),
    classes: Number(values.classes),
    idleS: Number(values['idle-s']),
    timeoutS: Number(values['timeout-s']),
    out: values.out,
    other: values.other,
  };
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  if (options.error) {
    console.error(`determinism-tool: ${options.error}`);
    process.exit(2);
  }
  if (options.mode === 'put') {
    await putRecording(options);
  } else if (options.mode === 'wait') {
    await waitForAll(options);
  } else if (options.mode === 'capture') {
    writeCapture(options);
  } else {
    compareFiles(options);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    if (err instanceof CheckFailure) {
      console.error(`determinism-tool: ${err.message}`);
    } else {
      console.error(err.stack ?? err);
    }
    process.exit(1);
  });
}
