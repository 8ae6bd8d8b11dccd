#!/usr/bin/env node
// Builds KPL aggregated records and reads what podium did with them, for
// tests/e2e/kpl.sh.
//
//   node kpl-tool.mjs aggregate [--corrupt-digest] [--explicit-hash-key KEY] PARTITION_KEY DATA...
//   node kpl-tool.mjs leaderboard --capture FILE --race ID --second N
//   node kpl-tool.mjs iterators --log FILE --shard ID --from-line N
//
// aggregate    prints, in base64, the Data of one Kinesis record that
//              contains the user records given as PARTITION_KEY DATA pairs,
//              with DATA the record's text. The format is that of the
//              Kinesis Producer Library: the magic F3 89 9A C2, a protobuf
//              AggregatedRecord and the 16-byte MD5 of the protobuf bytes.
//              Equal partition keys share one entry of the partition key
//              table. With --explicit-hash-key, the explicit hash key table
//              contains KEY and every user record refers to it.
//              --corrupt-digest flips the last bit of the MD5, so a reader
//              must not take the data for an aggregate.
// leaderboard  prints the newest leaderboard of race ID at second N in
//              FILE (lines "TOPIC PAYLOAD" from mosquitto_sub -v): the
//              revision on the first line, then one line "RACER_ID TOTAL"
//              per entry, in the published order. The newest is the one
//              with the highest revision, the later line among equals.
// iterators    prints one line "TYPE [STARTING_SEQUENCE_NUMBER]" for every
//              GetShardIterator request of shard ID after line N of the
//              request log of tests/kinesis-fault-proxy.js (lines start at
//              1; 0 takes the whole log).
//
// Exit status: 0 on success, 1 when a check fails or a file cannot be
// read, 2 on invalid arguments.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

// The first bytes of every KPL aggregate (aggregation-format.md of the KPL).
const KPL_MAGIC = Buffer.from([0xf3, 0x89, 0x9a, 0xc2]);

// Protobuf wire types (protobuf encoding guide).
const WIRE_VARINT = 0;
const WIRE_LEN = 2;

// Field numbers of messages.proto of the KPL:
//   message AggregatedRecord {
//       repeated string partition_key_table     = 1;
//       repeated string explicit_hash_key_table = 2;
//       repeated Record records                 = 3;
//   }
//   message Record {
//       required uint64 partition_key_index     = 1;
//       optional uint64 explicit_hash_key_index = 2;
//       required bytes  data                    = 3;
//   }
const AGGREGATE_PARTITION_KEY_TABLE = 1;
const AGGREGATE_EXPLICIT_HASH_KEY_TABLE = 2;
const AGGREGATE_RECORDS = 3;
const RECORD_PARTITION_KEY_INDEX = 1;
const RECORD_EXPLICIT_HASH_KEY_INDEX = 2;
const RECORD_DATA = 3;

class ToolFailure extends Error {}
class UsageError extends Error {}

function fail(message) {
  throw new ToolFailure(message);
}

function encodeVarint(value) {
  const bytes = [];
  let rest = BigInt(value);
  do {
    let byte = Number(rest & 0x7fn);
    rest >>= 7n;
    if (rest !== 0n) {
      byte |= 0x80;
    }
    bytes.push(byte);
  } while (rest !== 0n);
  return Buffer.from(bytes);
}

function encodeTag(field, wireType) {
  return encodeVarint((field << 3) | wireType);
}

function encodeVarintField(field, value) {
  return Buffer.concat([encodeTag(field, WIRE_VARINT), encodeVarint(value)]);
}

function encodeBytesField(field, bytes) {
  return Buffer.concat([encodeTag(field, WIRE_LEN), encodeVarint(bytes.length), bytes]);
}

// Returns the Data of a Kinesis record that aggregates userRecords, a list
// of { partitionKey, data } with data a Buffer.
function encodeAggregate(userRecords, explicitHashKey, corruptDigest) {
  const partitionKeys = [...new Set(userRecords.map((record) => record.partitionKey))];
  const fields = partitionKeys.map((key) => encodeBytesField(AGGREGATE_PARTITION_KEY_TABLE, Buffer.from(key)));
  if (explicitHashKey !== undefined) {
    fields.push(encodeBytesField(AGGREGATE_EXPLICIT_HASH_KEY_TABLE, Buffer.from(explicitHashKey)));
  }
  for (const record of userRecords) {
    const recordFields = [encodeVarintField(RECORD_PARTITION_KEY_INDEX, partitionKeys.indexOf(record.partitionKey))];
    if (explicitHashKey !== undefined) {
      recordFields.push(encodeVarintField(RECORD_EXPLICIT_HASH_KEY_INDEX, 0));
    }
    recordFields.push(encodeBytesField(RECORD_DATA, record.data));
    fields.push(encodeBytesField(AGGREGATE_RECORDS, Buffer.concat(recordFields)));
  }
  const body = Buffer.concat(fields);
  const digest = createHash('md5').update(body).digest();
  if (corruptDigest) {
    digest[digest.length - 1] ^= 1;
  }
  return Buffer.concat([KPL_MAGIC, body, digest]);
}

function aggregate(args) {
  const { values, positionals } = parseArgs({
    args,
    options: {
      'corrupt-digest': { type: 'boolean', default: false },
      'explicit-hash-key': { type: 'string' },
    },
    allowPositionals: true,
  });
  if (positionals.length === 0 || positionals.length % 2 !== 0) {
    throw new UsageError(`aggregate expects PARTITION_KEY DATA pairs, got ${positionals.length} arguments`);
  }
  const userRecords = [];
  for (let i = 0; i < positionals.length; i += 2) {
    userRecords.push({ partitionKey: positionals[i], data: Buffer.from(positionals[i + 1]) });
  }
  const data = encodeAggregate(userRecords, values['explicit-hash-key'], values['corrupt-digest']);
  console.log(data.toString('base64'));
}

function readText(file, description) {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read ${description} ${file}: ${err.message}`);
  }
}

function leaderboard(args) {
  const { values } = parseArgs({
    args,
    options: {
      capture: { type: 'string' },
      race: { type: 'string' },
      second: { type: 'string' },
    },
  });
  if (!values.capture || !values.race || !/^\d+$/.test(values.second ?? '')) {
    throw new UsageError('leaderboard expects --capture FILE --race ID --second N');
  }
  const topic = `podium/races/${values.race}/leaderboard`;
  const second = Number(values.second);
  let newest = null;
  readText(values.capture, 'the MQTT capture')
    .split('\n')
    .forEach((line, index) => {
      if (!line.startsWith(`${topic} `)) {
        return;
      }
      let message;
      try {
        message = JSON.parse(line.slice(topic.length + 1));
      } catch (err) {
        fail(`${values.capture}:${index + 1}: the payload on ${topic} is not valid JSON: ${err.message}`);
      }
      if (message.type !== 'leaderboard' || message.second !== second) {
        return;
      }
      if (newest === null || message.revision >= newest.revision) {
        newest = message;
      }
    });
  if (newest === null) {
    fail(`${values.capture} has no leaderboard of race ${values.race} at second ${second} on ${topic}`);
  }
  console.log(`revision ${newest.revision}`);
  for (const entry of newest.entries) {
    console.log(`${entry.racerId} ${entry.total}`);
  }
}

function iterators(args) {
  const { values } = parseArgs({
    args,
    options: {
      log: { type: 'string' },
      shard: { type: 'string' },
      'from-line': { type: 'string', default: '0' },
    },
  });
  if (!values.log || !values.shard || !/^\d+$/.test(values['from-line'])) {
    throw new UsageError('iterators expects --log FILE --shard ID --from-line N');
  }
  const fromLine = Number(values['from-line']);
  readText(values.log, "the fault proxy's request log")
    .split('\n')
    .forEach((line, index) => {
      if (index + 1 <= fromLine || !line.startsWith('{')) {
        return;
      }
      let entry;
      try {
        entry = JSON.parse(line);
      } catch {
        return; // a line that the proxy is still writing
      }
      if (entry.reply !== undefined || entry.action !== 'GetShardIterator' || entry.shard !== values.shard) {
        return;
      }
      const input = entry.input ?? {};
      const start = input.StartingSequenceNumber === undefined ? '' : ` ${input.StartingSequenceNumber}`;
      console.log(`${input.ShardIteratorType}${start}`);
    });
}

const COMMANDS = { aggregate, leaderboard, iterators };

function main() {
  const [command, ...args] = process.argv.slice(2);
  try {
    if (!Object.hasOwn(COMMANDS, command ?? '')) {
      throw new UsageError(`unknown command '${command ?? ''}': expected aggregate, leaderboard or iterators`);
    }
    COMMANDS[command](args);
  } catch (err) {
    if (err instanceof ToolFailure) {
      console.error(`kpl-tool: ${err.message}`);
      process.exit(1);
    }
    if (err instanceof UsageError || err.code?.startsWith('ERR_PARSE_ARGS')) {
      console.error(`kpl-tool: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
}

main();
