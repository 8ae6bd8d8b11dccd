#!/usr/bin/env node
// Print podium leaderboard messages in a compact form while they arrive.
//
//   node tools/show-leaderboards.mjs --follow FILE --last-second N
//        [--idle-s N] [--timeout-s N] [--top N]
//
// FILE grows with one "TOPIC PAYLOAD" line per message, as written by
// `mosquitto_sub -v -t 'podium/#'`. Each leaderboard is printed as
//
//   race 5400042  second 17  rev 0  1. Ada 2345.6  2. Bo 2301.2  3. Cy 2299
//
// The script exits 0 once every race seen has published second N and no
// message arrived for --idle-s seconds (default 3). It exits 1 when
// --timeout-s seconds (default 150) pass first, and 2 on invalid arguments.
import { closeSync, existsSync, openSync, readSync } from 'node:fs';
import { parseArgs } from 'node:util';

const POLL_INTERVAL_MS = 200;

function fail(message, status) {
  console.error(`show-leaderboards: ${message}`);
  process.exit(status);
}

function parsePositiveInteger(name, text) {
  if (text === undefined) {
    fail(`missing --${name} N`, 2);
  }
  if (!/^[0-9]+$/.test(text ?? '') || Number(text) <= 0) {
    fail(`invalid --${name} '${text}': expected a positive integer`, 2);
  }
  return Number(text);
}

function parseOptions() {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        follow: { type: 'string' },
        'last-second': { type: 'string' },
        'idle-s': { type: 'string', default: '3' },
        'timeout-s': { type: 'string', default: '150' },
        top: { type: 'string', default: '3' },
      },
    });
  } catch (err) {
    fail(`${err.message}; usage: --follow FILE --last-second N [--idle-s N] [--timeout-s N] [--top N]`, 2);
  }
  const { values } = parsed;
  if (values.follow === undefined) {
    fail('missing --follow FILE: name the file that mosquitto_sub -v writes', 2);
  }
  return {
    file: values.follow,
    lastSecond: parsePositiveInteger('last-second', values['last-second']),
    idleMs: parsePositiveInteger('idle-s', values['idle-s']) * 1000,
    timeoutMs: parsePositiveInteger('timeout-s', values['timeout-s']) * 1000,
    top: parsePositiveInteger('top', values.top),
  };
}

function formatEntry(entry) {
  return `${entry.rank}. ${entry.name} (#${entry.racerId}) ${entry.total}`;
}

// Returns the compact line for one message, or null for messages that are
// not leaderboards.
function formatMessage(topic, payload, top) {
  let message;
  try {
    message = JSON.parse(payload);
  } catch (err) {
    return `${topic}  (payload is not JSON: ${err.message})`;
  }
  if (message === null || message.type !== 'leaderboard') {
    return null;
  }
  const entries = Array.isArray(message.entries) ? message.entries : [];
  const leaders = entries.slice(0, top).map(formatEntry).join('  ');
  return `race ${message.raceId}  second ${message.second}  rev ${message.revision}  ${leaders}`;
}

class Follower {
  constructor(options) {
    this.options = options;
    this.offset = 0;
    this.pending = Buffer.alloc(0);
    this.lastSecondByRace = new Map();
    this.messageCount = 0;
    this.lastMessageAt = Date.now();
  }

  // Reads the bytes appended to the file since the last call.
  readNewBytes() {
    if (!existsSync(this.options.file)) {
      return Buffer.alloc(0);
    }
    const fd = openSync(this.options.file, 'r');
    const chunks = [];
    try {
      const buffer = Buffer.alloc(1 << 16);
      for (;;) {
        const count = readSync(fd, buffer, 0, buffer.length, this.offset);
        if (count === 0) {
          break;
        }
        chunks.push(Buffer.from(buffer.subarray(0, count)));
        this.offset += count;
      }
    } finally {
      closeSync(fd);
    }
    return Buffer.concat(chunks);
  }

  handleLine(line) {
    const space = line.indexOf(' ');
    if (space < 0) {
      return;
    }
    const topic = line.slice(0, space);
    const payload = line.slice(space + 1);
    this.messageCount += 1;
    this.lastMessageAt = Date.now();

    const text = formatMessage(topic, payload, this.options.top);
    if (text !== null) {
      console.log(text);
    }
    try {
      const message = JSON.parse(payload);
      if (message && message.type === 'leaderboard') {
        const key = String(JSON.stringify(message.raceId));
        const previous = this.lastSecondByRace.get(key) ?? 0;
        this.lastSecondByRace.set(key, Math.max(previous, Number(message.second)));
      }
    } catch {
      // formatMessage() already printed that the payload is not JSON.
    }
  }

  poll() {
    // Lines are split as bytes, so a character that mosquitto_sub has only
    // half written stays in pending until the rest arrives.
    this.pending = Buffer.concat([this.pending, this.readNewBytes()]);
    let newline = this.pending.indexOf(0x0a);
    while (newline >= 0) {
      this.handleLine(this.pending.subarray(0, newline).toString('utf8'));
      this.pending = this.pending.subarray(newline + 1);
      newline = this.pending.indexOf(0x0a);
    }
  }

  isComplete() {
    if (this.lastSecondByRace.size === 0) {
      return false;
    }
    for (const second of this.lastSecondByRace.values()) {
      if (second < this.options.lastSecond) {
        return false;
      }
    }
    return Date.now() - this.lastMessageAt >= this.options.idleMs;
  }

  describeProgress() {
    const races = [...this.lastSecondByRace.entries()]
      .map(([race, second]) => `${race}:${second}`)
      .join(' ');
    return `${this.messageCount} messages, last second per race: ${races || 'none'}`;
  }
}

function main() {
  const options = parseOptions();
  const follower = new Follower(options);
  const deadline = Date.now() + options.timeoutMs;

  const timer = setInterval(() => {
    follower.poll();
    if (follower.isComplete()) {
      clearInterval(timer);
      console.log(
        `show-leaderboards: every race published second ${options.lastSecond} ` +
          `(${follower.lastSecondByRace.size} races, ${follower.messageCount} messages)`,
      );
      process.exit(0);
    }
    if (Date.now() >= deadline) {
      clearInterval(timer);
      fail(
        `timed out after ${options.timeoutMs / 1000}s before every race published ` +
          `second ${options.lastSecond}: ${follower.describeProgress()}`,
        1,
      );
    }
  }, POLL_INTERVAL_MS);
}

main();
