// Deduplicate a podium recording with the idempotency utility of Powertools
// for AWS Lambda (TypeScript) on Redis, and print one JSON line with the
// records per second. bench/peer.sh runs it next to `podium replay` of the
// same file.
//
// usage: node powertools.mjs --file FILE --redis-port PORT [--concurrency N]
//
// Each line of FILE is a Kinesis record as `podium simulate --out` writes it.
// The script decodes its base64 Data, parses the JSON payload and calls a
// handler wrapped by makeIdempotent(), as a Lambda function with a Kinesis
// event source would do for each record. The settings follow podium's
// defaults: the key is the payload's uuid, keys expire after 3600 s, and a
// local LRU cache keeps 1024 completed keys. Unlike podium, it does not
// hash the payload to tell a repeat from a conflicting record: in 2.35.0
// the cache persistence layer drops that hash when a record completes, so
// every repeat read back from Redis fails validation. --concurrency N handles N
// records at a time with Promise.all, as a batch handler that processes a
// batch in parallel does. The default is 1, one record after the other.
//
// The handler only counts the records it is called for, so the time
// measured is reading, decoding and the idempotency utility with its Redis
// round trips.
import { createReadStream } from 'node:fs';
import { readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';

import { IdempotencyConfig, makeIdempotent } from '@aws-lambda-powertools/idempotency';
import { CachePersistenceLayer } from '@aws-lambda-powertools/idempotency/cache';
import { createClient } from '@redis/client';

// The time a Lambda function would have left, which the utility stores as
// the expiry of an in-progress record. Without a context it logs a warning
// for every record.
const REMAINING_TIME_MS = 300000;
const EXPIRY_S = 3600;
const LOCAL_CACHE_SIZE = 1024;

function fail(message) {
  console.error(`powertools.mjs: ${message}`);
  process.exit(2);
}

function parseOptions() {
  const { values } = parseArgs({
    options: {
      file: { type: 'string' },
      'redis-port': { type: 'string' },
      concurrency: { type: 'string', default: '1' },
    },
  });
  if (values.file === undefined) fail('missing --file FILE (a recording of podium simulate --out)');
  const port = Number(values['redis-port']);
  if (!Number.isInteger(port) || port < 1 || port > 65535)
    fail(`invalid --redis-port "${values['redis-port']}": expected a TCP port from 1 to 65535`);
  const concurrency = Number(values.concurrency);
  if (!Number.isInteger(concurrency) || concurrency < 1 || concurrency > 10000)
    fail(`invalid --concurrency "${values.concurrency}": expected an integer from 1 to 10000`);
  return { file: values.file, port, concurrency };
}

function packageVersion(name) {
  const url = new URL(`./node_modules/${name}/package.json`, import.meta.url);
  return JSON.parse(readFileSync(url, 'utf8')).version;
}

// Decode one recording line into the payload that the handler receives.
function decodeRecord(line, lineNumber, file) {
  try {
    const record = JSON.parse(line);
    return JSON.parse(Buffer.from(record.Data, 'base64').toString('utf8'));
  } catch (error) {
    fail(`${file}:${lineNumber}: invalid record (${error.message}); the file must be a recording of podium simulate --out`);
  }
}

async function main() {
  const options = parseOptions();
  const client = await createClient({ url: `redis://127.0.0.1:${options.port}` })
    .on('error', (error) => fail(`Redis client error: ${error.message}`))
    .connect();

  const persistenceStore = new CachePersistenceLayer({ client });
  const config = new IdempotencyConfig({
    eventKeyJmesPath: 'uuid',
    throwOnNoIdempotencyKey: true,
    expiresAfterSeconds: EXPIRY_S,
    useLocalCache: true,
    maxLocalCacheSize: LOCAL_CACHE_SIZE,
  });
  const context = { getRemainingTimeInMillis: () => REMAINING_TIME_MS };

  let handled = 0;
  const handler = makeIdempotent(
    async (payload) => {
      handled++;
      return { racerId: payload.racerId, second: payload.second };
    },
    { persistenceStore, config },
  );

  let records = 0;
  let inProgress = 0;
  const handleOne = async (payload) => {
    try {
      await handler(payload, context);
    } catch (error) {
      // A repeat handled in the same Promise.all as its first copy. A Lambda
      // function would fail it, and its retry would find the completed key.
      if (error.name !== 'IdempotencyAlreadyInProgressError') throw error;
      inProgress++;
    }
  };

  const lines = createInterface({ input: createReadStream(options.file), crlfDelay: Infinity });
  const started = process.hrtime.bigint();
  const cpuStarted = process.cpuUsage();
  let batch = [];
  for await (const line of lines) {
    records++;
    batch.push(decodeRecord(line, records, options.file));
    if (batch.length === options.concurrency) {
      await Promise.all(batch.map(handleOne));
      batch = [];
    }
  }
  await Promise.all(batch.map(handleOne));
  const wallS = Number(process.hrtime.bigint() - started) / 1e9;
  const cpu = process.cpuUsage(cpuStarted);
  await client.quit();

  console.log(
    JSON.stringify({
      bench: 'powertools',
      idempotency_version: packageVersion('@aws-lambda-powertools/idempotency'),
      redis_client_version: packageVersion('@redis/client'),
      node_version: process.version,
      concurrency: options.concurrency,
      records,
      handled,
      // Repeats that the handler was not called for: returned from the
      // store, or rejected because their first copy was still in progress.
      duplicates: records - handled,
      in_progress_rejections: inProgress,
      wall_s: Number(wallS.toFixed(2)),
      node_cpu_s: Number(((cpu.user + cpu.system) / 1e6).toFixed(2)),
      records_per_wall_s: Math.round(records / wallS),
    }),
  );
}

await main();
