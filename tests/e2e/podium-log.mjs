#!/usr/bin/env node
// Checks what podium's log shows about the order in which it read shards,
// for tests/e2e/reshard.sh. The log contains one JSON object per line, as
// podium writes it to stderr, with "message" and, for shard events, "shard".
//
//   node podium-log.mjs order --log FILE --child ID --parent ID [--parent ID]
//   node podium-log.mjs mentions --log FILE --word WORD
//
// order     checks that the first "started reading shard" line of the child
//           comes after a "reached the end of shard" line of every parent,
//           and prints the line numbers. Line order is the order of events
//           because podium writes each line with one write(2).
// mentions  prints "LINE: MESSAGE" for every line whose message contains
//           WORD, ignoring case, then "N lines mention WORD".
//
// Exit status: 0 when the check passes, 1 when it fails or the log cannot
// be read, 2 on invalid arguments.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

const STARTED = 'started reading shard ';
const REACHED_END = 'reached the end of shard ';

class LogFailure extends Error {}

function fail(message) {
  throw new LogFailure(message);
}

// Returns the log's JSON lines as { number, entry }. A line that is not a
// JSON object, such as a sanitizer report, is skipped.
function readLog(file) {
  let text;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    return fail(`cannot read podium's log ${file}: ${err.message}`);
  }
  const lines = [];
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
    if (entry !== null && typeof entry.message === 'string') {
      lines.push({ number: index + 1, entry });
    }
  });
  return lines;
}

// Returns the number of the first line whose message starts with prefix and
// names shardId, in the "shard" member or right after the prefix.
function firstLine(lines, prefix, shardId) {
  const found = lines.find(
    ({ entry }) =>
      entry.message.startsWith(prefix) &&
      (entry.shard === shardId || entry.message.slice(prefix.length).split(/[\s:;,]/)[0] === shardId),
  );
  return found?.number;
}

function checkOrder(options) {
  const lines = readLog(options.log);
  const started = firstLine(lines, STARTED, options.child);
  if (started === undefined) {
    fail(`${options.log} has no "${STARTED}${options.child}" line: podium never read the child shard`);
  }
  const ends = [];
  for (const parent of options.parents) {
    const end = firstLine(lines, REACHED_END, parent);
    if (end === undefined) {
      fail(
        `${options.log} has no "${REACHED_END}${parent}" line, but the child ${options.child} ` +
          `started reading at line ${started}: podium read the child before its parent's end`,
      );
    }
    if (end > started) {
      fail(
        `${options.log}:${started}: podium started reading ${options.child} before its parent ` +
          `${parent} reached its end at line ${end}`,
      );
    }
    ends.push(`${parent} ended at line ${end}`);
  }
  console.log(`${options.child} started at line ${started}, after ${ends.join(' and ')}`);
}

function printMentions(options) {
  const word = options.word.toLowerCase();
  const matches = readLog(options.log).filter(({ entry }) => entry.message.toLowerCase().includes(word));
  for (const { number, entry } of matches) {
    console.log(`${number}: ${entry.message}`);
  }
  console.log(`${matches.length} lines mention ${options.word}`);
}

function parseOptions(argv) {
  const usage =
    'usage: podium-log.mjs order --log FILE --child ID --parent ID [--parent ID]\n' +
    '       podium-log.mjs mentions --log FILE --word WORD';
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        log: { type: 'string' },
        child: { type: 'string' },
        parent: { type: 'string', multiple: true },
        word: { type: 'string' },
      },
    });
  } catch (err) {
    return { error: `${err.message}\n${usage}` };
  }
  const { values, positionals } = parsed;
  const mode = positionals[0];
  if (positionals.length !== 1 || !['order', 'mentions'].includes(mode)) {
    return { error: `expected one mode (order or mentions), got ${JSON.stringify(positionals)}\n${usage}` };
  }
  const required = { order: ['log', 'child', 'parent'], mentions: ['log', 'word'] }[mode];
  for (const name of required) {
    if (values[name] === undefined) {
      return { error: `missing --${name} for ${mode}\n${usage}` };
    }
  }
  return { mode, log: values.log, child: values.child, parents: values.parent ?? [], word: values.word };
}

function main() {
  const options = parseOptions(process.argv.slice(2));
  if (options.error) {
    console.error(`podium-log: ${options.error}`);
    process.exit(2);
  }
  try {
    if (options.mode === 'order') {
      checkOrder(options);
    } else {
      printMentions(options);
    }
  } catch (err) {
    if (!(err instanceof LogFailure)) {
      throw err;
    }
    console.error(`podium-log: ${err.message}`);
    process.exit(1);
  }
}

main();
