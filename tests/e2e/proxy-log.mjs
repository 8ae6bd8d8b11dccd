#!/usr/bin/env node
// Checks the request log of tests/kinesis-fault-proxy.js for the fault
// tests tests/e2e/stall.sh and tests/e2e/throttle.sh.
//
//   node proxy-log.mjs expiry   --log FILE --shard ID --from-line N --committed SEQ
//   node proxy-log.mjs restart  --log FILE --shard ID --from-line N --committed SEQ
//   node proxy-log.mjs records  --log FILE --shard ID --from-line N --expected COUNT
//   node proxy-log.mjs window   --log FILE --shard ID --from-line N
//   node proxy-log.mjs throttle --log FILE --shard ID --from-line N --times K --poll-ms MS
//   node proxy-log.mjs iterators --log FILE --expected COUNT
//   node proxy-log.mjs rate     --log FILE --window-ms MS --max COUNT
//
// The log has one JSON object a line: a request has "action", "shard",
// "fault", "t" (ms since the epoch) and "input" (the request body), and a
// relayed GetRecords reply has "reply" (the HTTP status), "shard", "t" and
// "records". Only lines after --from-line count (line numbers start at 1;
// 0 takes the whole log).
//
// expiry    expects exactly one GetRecords of the shard answered with HTTP
//           400, the rejected (expired) iterator never sent again, and
//           exactly one GetShardIterator after that reply, of type
//           AFTER_SEQUENCE_NUMBER from the committed sequence number. Prints
//           the rejected iterator on stdout.
// restart   expects exactly one GetShardIterator, AFTER_SEQUENCE_NUMBER from
//           the committed sequence number, and no GetRecords with an
//           iterator that a line before --from-line sent.
// records   expects the GetRecords replies of the shard to contain COUNT
//           records in total.
// window    prints "FIRST END": the times of the first GetRecords of the
//           shard that the proxy throttled and of the first one after it
//           that the proxy relayed, or "-" for END while none was relayed.
//           Fails while no GetRecords was throttled.
// throttle  expects K throttled GetRecords of the shard, then a relayed
//           one, all four with the same iterator, at least MS * 2^(i-1)
//           ms after the one before, and no other throttled requests.
// iterators expects exactly COUNT GetShardIterator requests for every shard
//           that the log names.
// rate      expects at most COUNT GetRecords of one shard within any MS
//           milliseconds, and prints the busiest window of each shard.
//
// Exit status: 0 when the check passes, 1 when it fails or the log cannot
// be read, 2 on invalid arguments.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

// The proxy and podium both measure time in whole milliseconds, so a delay
// measured between two proxy lines can come out this much shorter than the
// delay podium waited.
const CLOCK_TOLERANCE_MS = 2;

class LogFailure extends Error {}

function fail(message) {
  throw new LogFailure(message);
}

// Returns the JSON lines of the log as entries with their line number in
// "line". Lines that are not JSON objects, such as a half-written last
// line, are skipped.
function readLog(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read the proxy's request log ${file}: ${err.message}`);
  }
  const entries = [];
  text.split('\n').forEach((line, index) => {
    if (!line.startsWith('{')) {
      return;
    }
    let entry;
    try {
      entry = JSON.parse(line);
    } catch {
      return;
    }
    if (entry !== null && typeof entry === 'object') {
      entries.push({ ...entry, line: index + 1 });
    }
  });
  return entries;
}

function isRequest(entry, action, shard) {
  return entry.reply === undefined && entry.action === action && (shard === undefined || entry.shard === shard);
}

function isReply(entry, shard) {
  return entry.reply !== undefined && entry.action === 'GetRecords' && entry.shard === shard;
}

function after(entries, line) {
  return entries.filter((entry) => entry.line > line);
}

function iteratorOf(entry) {
  return entry.input?.ShardIterator;
}

function describeIteratorRequest(entry) {
  const input = entry.input ?? {};
  const from = input.StartingSequenceNumber === undefined ? '' : ` ${input.StartingSequenceNumber}`;
  return `line ${entry.line}: ${input.ShardIteratorType}${from}`;
}

// Fails unless request is a GetShardIterator after the committed sequence
// number.
function checkAfterCommitted(options, request, description) {
  const input = request.input ?? {};
  if (input.ShardIteratorType !== 'AFTER_SEQUENCE_NUMBER' || input.StartingSequenceNumber !== options.committed) {
    fail(
      `${options.log}:${request.line}: ${description} for ${options.shard} is ` +
        `${input.ShardIteratorType} ${input.StartingSequenceNumber ?? '(no StartingSequenceNumber)'}; ` +
        `expected AFTER_SEQUENCE_NUMBER ${options.committed}, the committed checkpoint`,
    );
  }
}

function checkExpiry(options) {
  const entries = after(readLog(options.log), options.fromLine);
  const rejected = entries.filter((entry) => isReply(entry, options.shard) && entry.reply !== 200);
  if (rejected.length === 0) {
    fail(
      `no GetRecords of ${options.shard} after line ${options.fromLine} of ${options.log} was rejected; ` +
        'expected kinesalite to reject the expired iterator with HTTP 400',
    );
  }
  const lines = rejected.map((entry) => `${entry.line} (HTTP ${entry.reply})`).join(', ');
  if (rejected.length > 1 || rejected[0].reply !== 400) {
    fail(
      `${rejected.length} GetRecords of ${options.shard} were rejected after line ${options.fromLine} ` +
        `of ${options.log}, at lines ${lines}; expected exactly one HTTP 400, for the expired iterator`,
    );
  }
  const reply = rejected[0];
  const request = entries.filter((entry) => entry.line < reply.line && isRequest(entry, 'GetRecords', options.shard)).at(-1);
  if (request === undefined) {
    fail(`${options.log}:${reply.line}: found no GetRecords request of ${options.shard} before this rejected reply`);
  }
  const expired = iteratorOf(request);

  const later = after(entries, reply.line);
  const reused = later.find((entry) => isRequest(entry, 'GetRecords') && iteratorOf(entry) === expired);
  if (reused !== undefined) {
    fail(
      `${options.log}:${reused.line}: podium sent the iterator that was rejected at line ${reply.line} again; ` +
        'expected a new iterator from GetShardIterator',
    );
  }
  const renewals = later.filter((entry) => isRequest(entry, 'GetShardIterator', options.shard));
  if (renewals.length !== 1) {
    fail(
      `${renewals.length} GetShardIterator requests for ${options.shard} after the rejected GetRecords ` +
        `at line ${reply.line} of ${options.log} (${renewals.map(describeIteratorRequest).join('; ') || 'none'}); ` +
        'expected exactly one',
    );
  }
  checkAfterCommitted(options, renewals[0], 'the GetShardIterator after the expiry');
  console.error(
    `proxy-log: GetRecords at line ${request.line} rejected with HTTP 400 at line ${reply.line}; ` +
      `one GetShardIterator after it (${describeIteratorRequest(renewals[0])}); the rejected iterator ` +
      `was not sent again in ${later.filter((entry) => isRequest(entry, 'GetRecords')).length} later GetRecords`,
  );
  console.log(expired);
}

function checkRestart(options) {
  const all = readLog(options.log);
  const before = all.filter((entry) => entry.line <= options.fromLine);
  const entries = after(all, options.fromLine);
  const requests = entries.filter((entry) => isRequest(entry, 'GetShardIterator', options.shard));
  if (requests.length !== 1) {
    fail(
      `${requests.length} GetShardIterator requests for ${options.shard} after line ${options.fromLine} ` +
        `of ${options.log} (${requests.map(describeIteratorRequest).join('; ') || 'none'}); expected exactly one`,
    );
  }
  checkAfterCommitted(options, requests[0], 'the first GetShardIterator after the restart');

  const old = new Set(before.filter((entry) => isRequest(entry, 'GetRecords')).map(iteratorOf));
  const reused = entries.find((entry) => isRequest(entry, 'GetRecords') && old.has(iteratorOf(entry)));
  if (reused !== undefined) {
    fail(`${options.log}:${reused.line}: podium sent an iterator of its earlier run after the restart`);
  }
  const reads = entries.filter((entry) => isRequest(entry, 'GetRecords', options.shard));
  if (reads.length === 0 || reads[0].line < requests[0].line) {
    fail(
      `${options.log}: the first GetRecords of ${options.shard} after line ${options.fromLine} ` +
        `(line ${reads[0]?.line ?? 'none'}) does not follow the GetShardIterator at line ${requests[0].line}`,
    );
  }
  console.error(
    `proxy-log: after the restart, ${describeIteratorRequest(requests[0])}, then ${reads.length} ` +
      'GetRecords with new iterators only',
  );
}

function checkRecords(options) {
  const replies = after(readLog(options.log), options.fromLine).filter((entry) => isReply(entry, options.shard));
  const total = replies.reduce((sum, entry) => sum + (entry.records ?? 0), 0);
  if (total !== options.expected) {
    const lines = replies.filter((entry) => entry.records).map((entry) => `line ${entry.line}: ${entry.records}`);
    fail(
      `the GetRecords replies of ${options.shard} after line ${options.fromLine} of ${options.log} ` +
        `contain ${total} records (${lines.join(', ') || 'none'}); expected ${options.expected}, ` +
        'each record read once',
    );
  }
  console.error(`proxy-log: ${replies.length} GetRecords replies of ${options.shard} with ${total} records in total`);
}

// Returns the GetRecords requests of the shard after --from-line, from the
// first throttled one on.
function fromFirstThrottled(options) {
  const reads = after(readLog(options.log), options.fromLine).filter((entry) =>
    isRequest(entry, 'GetRecords', options.shard),
  );
  const first = reads.findIndex((entry) => entry.fault === 'throttle');
  if (first < 0) {
    fail(`no GetRecords of ${options.shard} after line ${options.fromLine} of ${options.log} was throttled yet`);
  }
  return reads.slice(first);
}

function printWindow(options) {
  const reads = fromFirstThrottled(options);
  const end = reads.find((entry) => entry.fault !== 'throttle');
  console.log(`${reads[0].t} ${end === undefined ? '-' : end.t}`);
}

function checkThrottle(options) {
  const reads = fromFirstThrottled(options);
  const throttled = reads.filter((entry) => entry.fault === 'throttle');
  if (throttled.length !== options.times) {
    fail(
      `${throttled.length} GetRecords of ${options.shard} were throttled after line ${options.fromLine} ` +
        `of ${options.log}; expected the ${options.times} of the rule`,
    );
  }
  const calls = reads.slice(0, options.times + 1);
  if (calls.length <= options.times || calls.some((entry, i) => (entry.fault === 'throttle') !== i < options.times)) {
    fail(
      `${options.log}: expected ${options.times} throttled GetRecords of ${options.shard} in a row and a ` +
        `relayed one after them, got ${calls.map((entry) => `line ${entry.line}: ${entry.fault ?? 'relayed'}`).join(', ')}`,
    );
  }
  const iterator = iteratorOf(calls[0]);
  const other = calls.find((entry) => iteratorOf(entry) !== iterator);
  if (other !== undefined) {
    fail(
      `${options.log}:${other.line}: podium changed the iterator of ${options.shard} while it was ` +
        `throttled (first throttled GetRecords at line ${calls[0].line}); expected the same request again`,
    );
  }
  const gaps = [];
  for (let i = 1; i < calls.length; i += 1) {
    const gap = calls[i].t - calls[i - 1].t;
    const minimum = options.pollMs * 2 ** (i - 1);
    if (gap < minimum - CLOCK_TOLERANCE_MS) {
      fail(
        `${options.log}:${calls[i].line}: GetRecords of ${options.shard} ${gap} ms after the throttled one ` +
          `at line ${calls[i - 1].line}; expected a backoff of at least ${minimum} ms after throttle ${i}`,
      );
    }
    gaps.push(`${gap} ms (at least ${minimum})`);
  }
  console.error(
    `proxy-log: ${options.times} throttled GetRecords of ${options.shard} and the next one used one ` +
      `iterator, ${gaps.join(', ')} apart`,
  );
}

function checkIterators(options) {
  const counts = new Map();
  for (const entry of readLog(options.log)) {
    if (entry.reply === undefined && entry.shard) {
      counts.set(entry.shard, counts.get(entry.shard) ?? 0);
    }
    if (isRequest(entry, 'GetShardIterator')) {
      counts.set(entry.shard, (counts.get(entry.shard) ?? 0) + 1);
    }
  }
  if (counts.size === 0) {
    fail(`${options.log} names no shard`);
  }
  for (const [shard, count] of counts) {
    if (count !== options.expected) {
      fail(`${options.log}: ${count} GetShardIterator requests for ${shard}; expected ${options.expected}`);
    }
  }
  console.error(`proxy-log: ${options.expected} GetShardIterator per shard for ${[...counts.keys()].sort().join(', ')}`);
}

function checkRate(options) {
  const byShard = new Map();
  for (const entry of readLog(options.log)) {
    if (isRequest(entry, 'GetRecords') && entry.shard) {
      byShard.set(entry.shard, [...(byShard.get(entry.shard) ?? []), entry]);
    }
  }
  if (byShard.size === 0) {
    fail(`${options.log} has no GetRecords request`);
  }
  const busiest = [];
  for (const [shard, reads] of [...byShard].sort()) {
    let best = { count: 0, start: 0 };
    let end = 0;
    for (let start = 0; start < reads.length; start += 1) {
      while (end < reads.length && reads[end].t - reads[start].t < options.windowMs) {
        end += 1;
      }
      if (end - start > best.count) {
        best = { count: end - start, start };
      }
    }
    const first = reads[best.start];
    if (best.count > options.max) {
      fail(
        `${options.log}:${first.line}: ${best.count} GetRecords of ${shard} within ${options.windowMs} ms ` +
          `from this line on; expected at most ${options.max}`,
      );
    }
    busiest.push(`${shard}: ${best.count} of ${reads.length}`);
  }
  console.error(`proxy-log: at most ${options.max} GetRecords per ${options.windowMs} ms: ${busiest.join(', ')}`);
}

const MODES = {
  expiry: { run: checkExpiry, required: ['log', 'shard', 'from-line', 'committed'] },
  restart: { run: checkRestart, required: ['log', 'shard', 'from-line', 'committed'] },
  records: { run: checkRecords, required: ['log', 'shard', 'from-line', 'expected'] },
  window: { run: printWindow, required: ['log', 'shard', 'from-line'] },
  throttle: { run: checkThrottle, required: ['log', 'shard', 'from-line', 'times', 'poll-ms'] },
  iterators: { run: checkIterators, required: ['log', 'expected'] },
  rate: { run: checkRate, required: ['log', 'window-ms', 'max'] },
};

const NUMBERS = ['from-line', 'expected', 'times', 'poll-ms', 'window-ms', 'max'];

function camel(name) {
  return name.replace(/-(.)/g, (_, letter) => letter.toUpperCase());
}

function parseOptions(argv) {
  const usage = `usage: proxy-log.mjs ${Object.keys(MODES).join('|')} --log FILE [options]; see the header of this file`;
  const options = {};
  for (const name of ['log', 'shard', 'committed', ...NUMBERS]) {
    options[name] = { type: 'string' };
  }

  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options });
  } catch (err) {
    return { error: `${err.message}\n${usage}` };
  }
  const { values, positionals } = parsed;
  const mode = MODES[positionals[0]];
  if (positionals.length !== 1 || mode === undefined) {
    return { error: `expected one mode, got ${JSON.stringify(positionals)}\n${usage}` };
  }

  const result = { run: mode.run };
  for (const name of mode.required) {
    if (values[name] === undefined) {
      return { error: `missing --${name} for ${positionals[0]}\n${usage}` };
    }
  }

  for (const [name, value] of Object.entries(values)) {
    if (NUMBERS.includes(name)) {
      if (!/^\d+$/.test(value)) {
        return { error: `invalid --${name} '${value}': expected a whole number` };
      }
      result[camel(name)] = Number(value);
    } else {
      result[camel(name)] = value;
    }
  }
  return result;
}

function main() {
  const options = parseOptions(process.argv.slice(2));
  if (options.error) {
    console.error(`proxy-log: ${options.error}`);
    process.exit(2);
  }
  try {
    options.run(options);
  } catch (err) {
    if (!(err instanceof LogFailure)) {
      throw err;
    }
    console.error(`proxy-log: ${err.message}`);
    process.exit(1);
  }
}

main();
