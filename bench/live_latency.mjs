// Compute the arrival-to-publish latency of race leaderboards for
// bench/live.sh, and print it as one JSON line.
//
// usage: node live_latency.mjs --recording FILE --messages FILE --lateness S
//
// --recording is what `podium record` captured from the stream after the
// race: every record with the ApproximateArrivalTimestamp that Kinesis gave
// it. --messages is what `mosquitto_sub -F '%U %t %p'` received: the receive
// time in seconds since the epoch, the topic and the payload.
//
// Second s of a race closes when the race's latest second reaches
// s + S (race.allowed_lateness_s). The record that closes it is therefore
// the first record of that race, in arrival order, whose second is s + S or
// more. The latency of second s is the time its leaderboard (revision 0)
// was received minus that record's arrival time. Seconds that no such
// record closed (the last S seconds of a race, which close on the riders'
// final event or when the race is idle) are counted but not measured.
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

function fail(message) {
  console.error(`live_latency.mjs: ${message}`);
  process.exit(2);
}

function parseOptions() {
  const { values } = parseArgs({
    options: {
      recording: { type: 'string' },
      messages: { type: 'string' },
      lateness: { type: 'string' },
    },
  });
  if (values.recording === undefined) fail('missing --recording FILE (the output of podium record)');
  if (values.messages === undefined) fail("missing --messages FILE (the output of mosquitto_sub -F '%U %t %p')");
  const lateness = Number(values.lateness);
  if (!Number.isInteger(lateness) || lateness < 0)
    fail(`invalid --lateness "${values.lateness}": expected race.allowed_lateness_s, an integer of 0 or more`);
  return { ...values, lateness };
}

async function* numberedLines(file) {
  let lineNumber = 0;
  for await (const line of createInterface({ input: createReadStream(file), crlfDelay: Infinity })) {
    lineNumber++;
    if (line !== '') yield [line, lineNumber];
  }
}

// Map of raceId to a map of second to the arrival time, in ms, of the
// record that closed it.
async function closingArrivals(file, lateness) {
  const records = new Map();
  for await (const [line, lineNumber] of numberedLines(file)) {
    let payload, arrivalMs;
    try {
      const record = JSON.parse(line);
      arrivalMs = Math.round(record.ApproximateArrivalTimestamp * 1000);
      payload = JSON.parse(Buffer.from(record.Data, 'base64').toString('utf8'));
    } catch (error) {
      fail(`${file}:${lineNumber}: invalid record (${error.message})`);
    }
    const race = String(payload.raceId);
    if (!records.has(race)) records.set(race, []);
    records.get(race).push({ arrivalMs, second: payload.second });
  }

  const closing = new Map();
  for (const [race, list] of records) {
    // A stable sort keeps the stream's order among equal arrival times.
    list.sort((a, b) => a.arrivalMs - b.arrivalMs);
    const closed = new Map();
    let latest = 0;
    for (const { arrivalMs, second } of list) {
      for (let s = Math.max(1, latest - lateness + 1); s <= second - lateness; s++) closed.set(s, arrivalMs);
      latest = Math.max(latest, second);
    }
    closing.set(race, closed);
  }
  return closing;
}

// The receive time, in ms, of revision 0 of each leaderboard, by raceId
// and second.
async function receiveTimes(file) {
  const received = new Map();
  for await (const [line, lineNumber] of numberedLines(file)) {
    const match = /^(\d+\.\d+) (\S+) (.*)$/.exec(line);
    if (match === null) fail(`${file}:${lineNumber}: expected "TIME TOPIC PAYLOAD"`);
    if (!match[2].endsWith('/leaderboard') || !match[2].includes('/races/')) continue;
    let message;
    try {
      message = JSON.parse(match[3]);
    } catch (error) {
      fail(`${file}:${lineNumber}: invalid leaderboard (${error.message})`);
    }
    if (message.revision !== 0) continue;
    const race = String(message.raceId);
    if (!received.has(race)) received.set(race, new Map());
    received.get(race).set(message.second, Number(match[1]) * 1000);
  }
  return received;
}

// Nearest-rank percentile p of the sorted array.
function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)];
}

async function main() {
  const options = parseOptions();
  const closing = await closingArrivals(options.recording, options.lateness);
  const received = await receiveTimes(options.messages);

  const latencies = [];
  let leaderboards = 0;
  let notClosedByRecord = 0;
  let missing = 0;
  for (const [race, seconds] of received) {
    for (const [second, receivedMs] of seconds) {
      leaderboards++;
      const arrivalMs = closing.get(race)?.get(second);
      if (arrivalMs === undefined) notClosedByRecord++;
      else latencies.push(receivedMs - arrivalMs);
    }
  }
  for (const [race, seconds] of closing) {
    for (const second of seconds.keys()) if (!received.get(race)?.has(second)) missing++;
  }
  if (latencies.length === 0) fail('no leaderboard was closed by a record: check that podium published to the subscriber');
  latencies.sort((a, b) => a - b);
  const round = (ms) => Math.round(ms * 10) / 10;
  console.log(
    JSON.stringify({
      bench: 'live_latency',
      races_published: received.size,
      leaderboards,
      measured: latencies.length,
      not_closed_by_record: notClosedByRecord,
      closed_but_not_received: missing,
      min_ms: round(latencies[0]),
      p50_ms: round(percentile(latencies, 50)),
      p90_ms: round(percentile(latencies, 90)),
      p99_ms: round(percentile(latencies, 99)),
      max_ms: round(latencies[latencies.length - 1]),
    }),
  );
}

await main();
