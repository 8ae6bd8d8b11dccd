#!/usr/bin/env node
// Puts part of a recording to a Kinesis stream and reshards the stream, for
// tests/e2e/reshard.sh.
//
//   node reshard-tool.mjs put   --port P --stream NAME --file FILE --from A --to B
//   node reshard-tool.mjs split --port P --stream NAME --shard ID
//   node reshard-tool.mjs merge --port P --stream NAME --shard ID --adjacent ID
//
// put    puts lines A..B (1-based, inclusive) of FILE, a recording written
//        by `podium simulate --out`, with PutRecords calls of at most 500
//        records in file order. Each record keeps the Data and
//        PartitionKey of its line; the other fields are ignored because
//        Kinesis assigns them.
// split  splits the open shard ID at the midpoint of the hash key range
//        that ListShards reports for it and waits until the stream is
//        ACTIVE. It checks that the two child shards cover exactly the two
//        halves and prints their ids, one a line, lower hash keys first.
// merge  merges the open shard ID with the open shard --adjacent, whose
//        hash key range must start right after or end right before that of
//        ID, waits until the stream is ACTIVE and prints the id of the new
//        shard.
//
// Exit status: 0 on success, 1 when a call or check fails, 2 on invalid
// arguments.
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

import { callKinesis, CheckFailure, listShards } from './checker.mjs';

// Kinesis accepts at most 500 records per PutRecords call.
const PUT_RECORDS_MAX = 500;
// Time a stream gets to return to ACTIVE after SplitShard or MergeShards.
// kinesalite and kinesis-local as tools/peers.sh starts them take about
// 50 ms (--updateStreamMs, SPLIT_SHARD_DURATION and MERGE_SHARDS_DURATION).
const ACTIVE_TIMEOUT_MS = 15000;
const ACTIVE_POLL_MS = 100;

function fail(message) {
  throw new CheckFailure(message);
}

// Returns lines from..to (1-based, inclusive) of the recording as
// { PartitionKey, Data } objects.
function readRecordingLines(file, from, to) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read the recording ${file}: ${err.message}`);
  }
  const lines = text.split('\n');
  if (lines.at(-1) === '') {
    lines.pop();
  }
  if (from < 1 || to < from || to > lines.length) {
    fail(`invalid line range ${from}..${to}: ${file} has ${lines.length} lines`);
  }
  const records = [];
  for (let number = from; number <= to; number += 1) {
    let line;
    try {
      line = JSON.parse(lines[number - 1]);
    } catch (err) {
      fail(`${file}:${number}: invalid JSON: ${err.message}`);
    }
    if (typeof line.PartitionKey !== 'string' || typeof line.Data !== 'string') {
      fail(`${file}:${number}: expected string fields PartitionKey and Data`);
    }
    records.push({ PartitionKey: line.PartitionKey, Data: line.Data });
  }
  return records;
}

async function putLines(options) {
  const records = readRecordingLines(options.file, options.from, options.to);
  for (let start = 0; start < records.length; start += PUT_RECORDS_MAX) {
    const batch = records.slice(start, start + PUT_RECORDS_MAX);
    const reply = await callKinesis(options.port, 'PutRecords', {
      StreamName: options.stream,
      Records: batch,
    });
    if (reply.FailedRecordCount !== 0) {
      // A record that succeeded has no ErrorCode, or null in kinesis-local.
      const firstError = (reply.Records ?? []).find((r) => r.ErrorCode);
      fail(
        `PutRecords of lines ${options.from + start}..${options.from + start + batch.length - 1} ` +
          `failed for ${reply.FailedRecordCount} records, for example ` +
          `${firstError?.ErrorCode}: ${firstError?.ErrorMessage}`,
      );
    }
  }
  console.error(
    `reshard-tool: put lines ${options.from}..${options.to} of ${options.file} ` +
      `(${records.length} records) to "${options.stream}"`,
  );
}

// kinesis-local reports EndingSequenceNumber null for an open shard and a
// sentinel for a closed one, so only its presence is used.
function isOpen(shard) {
  return !shard.SequenceNumberRange?.EndingSequenceNumber;
}

async function findOpenShard(port, stream, shardId) {
  const shard = (await listShards(port, stream)).find((s) => s.ShardId === shardId);
  if (shard === undefined) {
    fail(`shard ${shardId} is not in ListShards of "${stream}"`);
  }
  if (!isOpen(shard)) {
    fail(`shard ${shardId} of "${stream}" is closed; expected an open shard`);
  }
  return shard;
}

async function waitActive(port, stream, operation) {
  const deadline = Date.now() + ACTIVE_TIMEOUT_MS;
  let status = '';
  while (Date.now() < deadline) {
    const reply = await callKinesis(port, 'DescribeStreamSummary', { StreamName: stream });
    status = reply.StreamDescriptionSummary?.StreamStatus ?? '';
    if (status === 'ACTIVE') {
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, ACTIVE_POLL_MS));
  }
  fail(
    `stream "${stream}" is still ${status || 'in an unknown status'} ` +
      `${ACTIVE_TIMEOUT_MS / 1000}s after ${operation}; expected ACTIVE`,
  );
}

// Returns the open shards that name parentId as a parent, lower hash keys
// first.
async function openChildren(port, stream, parentId) {
  const shards = await listShards(port, stream);
  return shards
    .filter((s) => isOpen(s) && (s.ParentShardId === parentId || s.AdjacentParentShardId === parentId))
    .sort((a, b) => {
      const left = BigInt(a.HashKeyRange.StartingHashKey);
      const right = BigInt(b.HashKeyRange.StartingHashKey);
      if (left === right) {
        return 0;
      }
      return left < right ? -1 : 1;
    });
}

function hashKeyRange(shard) {
  return {
    start: BigInt(shard.HashKeyRange.StartingHashKey),
    end: BigInt(shard.HashKeyRange.EndingHashKey),
  };
}

// The split point comes from the shard's own range, because kinesis-local
// 0.6.2 ends the first of 2 shards one hash key below where Kinesis does
// (...105726, not ...105727).
async function splitShard(options) {
  const shard = await findOpenShard(options.port, options.stream, options.shard);
  const { start, end } = hashKeyRange(shard);
  if (end - start < 1n) {
    fail(`shard ${options.shard} covers the single hash key ${start} and cannot be split`);
  }
  // The upper child starts at NewStartingHashKey, so the midpoint rounds up,
  // which leaves at least one hash key in the lower child.
  const midpoint = start + (end - start + 1n) / 2n;
  await callKinesis(options.port, 'SplitShard', {
    StreamName: options.stream,
    ShardToSplit: options.shard,
    NewStartingHashKey: midpoint.toString(),
  });
  await waitActive(options.port, options.stream, `SplitShard of ${options.shard}`);

  const children = await openChildren(options.port, options.stream, options.shard);
  if (children.length !== 2) {
    fail(
      `expected 2 open children of ${options.shard} after SplitShard, ` +
        `ListShards lists ${children.length}: ${children.map((c) => c.ShardId).join(', ')}`,
    );
  }
  const lower = hashKeyRange(children[0]);
  const upper = hashKeyRange(children[1]);
  if (lower.start !== start || lower.end !== midpoint - 1n || upper.start !== midpoint || upper.end !== end) {
    fail(
      `the children of ${options.shard} (hash keys ${start}..${end}, split at ${midpoint}) ` +
        `do not cover its two halves: ${children[0].ShardId} has ${lower.start}..${lower.end}, ` +
        `${children[1].ShardId} has ${upper.start}..${upper.end}`,
    );
  }
  console.error(
    `reshard-tool: split ${options.shard} at hash key ${midpoint} into ` +
      `${children[0].ShardId} and ${children[1].ShardId}`,
  );
  for (const child of children) {
    console.log(child.ShardId);
  }
}

async function mergeShards(options) {
  const shard = await findOpenShard(options.port, options.stream, options.shard);
  const adjacent = await findOpenShard(options.port, options.stream, options.adjacent);
  const shardStart = BigInt(shard.HashKeyRange.StartingHashKey);
  const shardEnd = BigInt(shard.HashKeyRange.EndingHashKey);
  const adjacentStart = BigInt(adjacent.HashKeyRange.StartingHashKey);
  const adjacentEnd = BigInt(adjacent.HashKeyRange.EndingHashKey);
  if (shardEnd + 1n !== adjacentStart && adjacentEnd + 1n !== shardStart) {
    fail(
      `shards ${options.shard} (hash keys ${shardStart}..${shardEnd}) and ${options.adjacent} ` +
        `(hash keys ${adjacentStart}..${adjacentEnd}) are not adjacent and cannot be merged`,
    );
  }
  await callKinesis(options.port, 'MergeShards', {
    StreamName: options.stream,
    ShardToMerge: options.shard,
    AdjacentShardToMerge: options.adjacent,
  });
  await waitActive(options.port, options.stream, `MergeShards of ${options.shard} and ${options.adjacent}`);

  const children = await openChildren(options.port, options.stream, options.shard);
  if (children.length !== 1) {
    fail(
      `expected 1 open child of ${options.shard} after MergeShards, ` +
        `ListShards lists ${children.length}: ${children.map((c) => c.ShardId).join(', ')}`,
    );
  }
  const merged = hashKeyRange(children[0]);
  const low = shardStart < adjacentStart ? shardStart : adjacentStart;
  const high = shardEnd > adjacentEnd ? shardEnd : adjacentEnd;
  if (merged.start !== low || merged.end !== high) {
    fail(
      `the child ${children[0].ShardId} of ${options.shard} and ${options.adjacent} has hash keys ` +
        `${merged.start}..${merged.end}, expected their union ${low}..${high}`,
    );
  }
  console.error(
    `reshard-tool: merged ${options.shard} and ${options.adjacent} into ${children[0].ShardId}`,
  );
  console.log(children[0].ShardId);
}

function parseOptions(argv) {
  const usage =
    'usage: reshard-tool.mjs put|split|merge --port P --stream NAME ' +
    '[--file FILE --from A --to B] [--shard ID] [--adjacent ID]';
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        port: { type: 'string' },
        stream: { type: 'string' },
        file: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        shard: { type: 'string' },
        adjacent: { type: 'string' },
      },
    });
  } catch (err) {
    return { error: `${err.message}\n${usage}` };
  }
  const { values, positionals } = parsed;
  const mode = positionals[0];
  if (positionals.length !== 1 || !['put', 'split', 'merge'].includes(mode)) {
    return { error: `expected one mode (put, split or merge), got ${JSON.stringify(positionals)}\n${usage}` };
  }
  const required = { put: ['file', 'from', 'to'], split: ['shard'], merge: ['shard', 'adjacent'] }[mode];
  for (const name of ['port', 'stream', ...required]) {
    if (values[name] === undefined) {
      return { error: `missing --${name} for ${mode}\n${usage}` };
    }
  }
  for (const name of ['port', 'from', 'to']) {
    if (values[name] !== undefined && !/^\d+$/.test(values[name])) {
      return { error: `invalid --${name} '${values[name]}': expected a non-negative integer` };
    }
  }
  return {
    mode,
    port: Number(values.port),
    stream: values.stream,
    file: values.file,
    from: Number(values.from),
    to: Number(values.to),
    shard: values.shard,
    adjacent: values.adjacent,
  };
}

async function main() {
  const options = parseOptions(process.argv.slice(2));
  if (options.error) {
    console.error(`reshard-tool: ${options.error}`);
    process.exit(2);
  }
  if (options.mode === 'put') {
    await putLines(options);
  } else if (options.mode === 'split') {
    await splitShard(options);
  } else {
    await mergeShards(options);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((err) => {
    if (err instanceof CheckFailure) {
      console.error(`reshard-tool: ${err.message}`);
    } else {
      console.error(err.stack ?? err);
    }
    process.exit(1);
  });
}
