'use strict';
/*
 * An HTTP proxy between a Kinesis client and a local Kinesis server
 * (kinesalite or kinesis-local) that injects the faults no local server
 * produces on its own.
 *
 *   node kinesis-fault-proxy.js UPSTREAM_PORT RULES_FILE LOG_FILE PORT_FILE
 *
 * It listens on a free port of 127.0.0.1 and writes that port to PORT_FILE.
 * RULES_FILE contains a JSON array of rules and is read again whenever it
 * changes, which resets the rules' counters; a test can so change the
 * faults while a client runs. A rule:
 *
 *   {"action": "GetRecords",        Kinesis action, or "*" for any
 *    "shard": "shardId-000000000000", optional: only this shard
 *    "fault": "throttle",           what to do, see ERRORS and handle() below
 *    "skip": 1,                     matching requests to pass first (0)
 *    "times": 3,                    requests to fault after that (no limit)
 *    "delay_ms": 2000,              for "slow"
 *    "value": 5000}                 for "behind"
 *
 * The fault "arrival" sets the ApproximateArrivalTimestamp of every record
 * in a GetRecords reply whose PartitionKey starts with "@MS:" to MS
 * milliseconds since the epoch. Two streams that received the same records
 * so report the same arrival times, and many records can share one.
 *
 * The first rule that matches and is within its window decides. GetRecords
 * names no shard, so the proxy learns each iterator's shard from the
 * GetShardIterator and GetRecords replies it relays.
 *
 * Every request is appended to LOG_FILE as one JSON line:
 *   {"action":..., "shard":..., "fault":..., "t": ms since the epoch,
 *    "key": the access key id that signed it (from the Authorization
 *    header's Credential=), "input": the request body (empty for
 *    PutRecords)}
 * and every relayed reply as a line with "reply": the HTTP status and the
 * reply's ChildShards and NextShardIterator presence for GetRecords.
 */
const http = require('http');
const fs = require('fs');

const [upstreamPort, rulesFile, logFile, portFile] = process.argv.slice(2);
if (!portFile) {
  console.error('usage: node kinesis-fault-proxy.js UPSTREAM_PORT RULES_FILE ' +
                'LOG_FILE PORT_FILE');
  process.exit(2);
}

let rules = [];
let rulesStamp = '';

/* Read the rules again when the file's size or time changed. */
function loadRules() {
  let st;
  try {
    st = fs.statSync(rulesFile);
  } catch (e) {
    return;
  }
  const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (stamp === rulesStamp) return;
  const parsed = JSON.parse(fs.readFileSync(rulesFile, 'utf8'));
  if (!Array.isArray(parsed)) throw new Error(`${rulesFile}: not an array`);
  rules = parsed.map((r) => Object.assign({seen: 0}, r));
  rulesStamp = stamp;
}

function pick(action, shard) {
  loadRules();
  for (const r of rules) {
    if (r.action !== '*' && r.action !== action) continue;
    if (r.shard && r.shard !== shard) continue;
    r.seen++;
    const skip = r.skip || 0;
    const times = r.times === undefined ? Infinity : r.times;
    if (r.seen > skip && r.seen <= skip + times) return r;
  }
  return null;
}

/* Faults that the proxy replies to itself: [HTTP status, __type, message]. */
const ERRORS = {
  expired: [400, 'ExpiredIteratorException',
            'Iterator expired. The iterator was created at time ' +
            'Thu Jan 01 00:00:00 UTC 2026 while right now it is ' +
            'Thu Jan 01 00:06:00 UTC 2026 which is further in the future ' +
            'than the tolerated delay of 300000 milliseconds.'],
  throttle: [400, 'ProvisionedThroughputExceededException',
             'Rate exceeded for shard in stream under account ' +
             '000000000000.'],
  limit: [400, 'LimitExceededException', 'Rate exceeded for stream.'],
  internal: [500, 'InternalFailure', 'Internal service failure.'],
  unavailable: [503, 'ServiceUnavailable', 'Service is unavailable.'],
  /* kinesalite 3.3.3 sends this (actions/getRecords.js) for a ShardIterator
   * it cannot decode. The request is wrong, so repeating it cannot help. */
  invalid: [400, 'InvalidArgumentException', 'Invalid ShardIterator.'],
};

const shardOf = new Map();

function log(entry) {
  fs.appendFileSync(logFile, JSON.stringify(entry) + '\n');
}

function reply(res, status, body, extra) {
  res.writeHead(status, Object.assign({
    'content-type': 'application/x-amz-json-1.1',
    'content-length': Buffer.byteLength(body),
  }, extra || {}));
  res.end(body);
}

/* Send the request upstream; done(status, headers, body text). */
function forward(req, body, done) {
  const headers = Object.assign({}, req.headers);
  headers['content-length'] = Buffer.byteLength(body);
  const up = http.request({host: '127.0.0.1', port: +upstreamPort,
                           method: req.method, path: req.url, headers},
                          (res) => {
                            const parts = [];
                            res.on('data', (c) => parts.push(c));
                            res.on('end', () => done(
                                res.statusCode, res.headers,
                                Buffer.concat(parts).toString()));
                          });
  up.on('error', (e) => done(502, {}, JSON.stringify(
      {__type: 'InternalFailure', message: `proxy: ${e.message}`})));
  up.end(body);
}

/* Remember which shard the iterators in a relayed reply belong to. */
function learn(shard, status, text) {
  if (status !== 200 || !shard) return null;
  let out;
  try {
    out = JSON.parse(text);
  } catch (e) {
    return null;
  }
  if (out.ShardIterator) shardOf.set(out.ShardIterator, shard);
  if (out.NextShardIterator) shardOf.set(out.NextShardIterator, shard);
  return out;
}

/* PutRecords: send only the even entries on; the odd ones fail. */
function partial(req, res, input) {
  const kept = input.Records.filter((r, i) => i % 2 === 0);
  const body = JSON.stringify(Object.assign({}, input, {Records: kept}));
  forward(req, body, (status, headers, text) => {
    if (status !== 200) return reply(res, status, text);
    const got = JSON.parse(text).Records;
    const merged = input.Records.map((r, i) => i % 2 === 0 ? got[i / 2] : {
      ErrorCode: 'ProvisionedThroughputExceededException',
      ErrorMessage: 'Rate exceeded for shard',
    });
    const failed = merged.filter((r) => r.ErrorCode).length;
    reply(res, 200, JSON.stringify({FailedRecordCount: failed,
                                    Records: merged}));
  });
}

/* Relay a request, changing the reply as the rule requires. */
function relay(req, res, body, action, shard, rule) {
  forward(req, body, (status, headers, text) => {
    const out = learn(shard, status, text);
    if (action === 'GetRecords') {
      log({reply: status, action, shard, t: Date.now(),
           records: out && Array.isArray(out.Records) ? out.Records.length
                                                      : null,
           next: Boolean(out && out.NextShardIterator),
           children: out && Array.isArray(out.ChildShards)
               ? out.ChildShards.map((c) => c.ShardId) : null});
    }
    const fault = rule && rule.fault;
    if (fault === 'truncated') {
      /* Promise the whole body, send half, then close the connection. */
      const bytes = Buffer.from(text);
      res.writeHead(status, {'content-type': 'application/x-amz-json-1.1',
                             'content-length': bytes.length});
      res.write(bytes.subarray(0, bytes.length >> 1));
      setTimeout(() => res.socket && res.socket.destroy(), 20);
      return;
    }
    if (fault === 'garbled' && status === 200) {
      /* A complete HTTP reply whose JSON body is cut short. */
      return reply(res, 200, text.slice(0, text.length >> 1));
    }
    if (out && fault === 'behind' && status === 200) {
      out.MillisBehindLatest = rule.value;
      return reply(res, status, JSON.stringify(out));
    }
    if (out && fault === 'arrival' && status === 200) {
      for (const record of out.Records || []) {
        const m = /^@([0-9]+):/.exec(record.PartitionKey || '');
        if (m) record.ApproximateArrivalTimestamp = Number(m[1]) / 1000;
      }
      return reply(res, status, JSON.stringify(out));
    }
    if (out && fault === 'nochildren' && status === 200) {
      delete out.ChildShards;
      return reply(res, status, JSON.stringify(out));
    }
    if (fault === 'noshards' && status === 200) {
      /* A ListShards reply as for a stream that is still being created. */
      return reply(res, status, JSON.stringify({Shards: []}));
    }
    reply(res, status, text);
  });
}

function handle(req, res, body) {
  const target = String(req.headers['x-amz-target'] || '');
  const action = target.split('.')[1] || '';
  let input = {};
  try {
    input = JSON.parse(body);
  } catch (e) {
    /* Relayed as it is, so the server replies. */
  }
  const shard = input.ShardId || shardOf.get(input.ShardIterator) || null;
  const rule = pick(action, shard);
  const fault = rule ? rule.fault : null;
  const key = /Credential=([^/]+)\//.exec(req.headers.authorization || '');
  log({action, shard, fault, t: Date.now(), key: key ? key[1] : null,
       input: action === 'PutRecords' ? {} : input});

  if (fault === 'silent') return; /* never answered */
  if (fault === 'reset') return req.socket.destroy();
  if (fault === 'empty500') return reply(res, 500, '');
  if (ERRORS[fault]) {
    const [status, type, message] = ERRORS[fault];
    return reply(res, status, JSON.stringify({__type: type, message}));
  }
  if (fault === 'partial') return partial(req, res, input);
  if (fault === 'slow') {
    return setTimeout(() => relay(req, res, body, action, shard, null),
                      rule.delay_ms || 1000);
  }
  relay(req, res, body, action, shard, rule);
}

const server = http.createServer((req, res) => {
  const parts = [];
  req.on('error', () => {});
  res.on('error', () => {});
  req.on('data', (c) => parts.push(c));
  req.on('end', () => handle(req, res, Buffer.concat(parts).toString()));
});
server.on('clientError', (err, socket) => socket.destroy());
server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(portFile + '.tmp', String(server.address().port));
  fs.renameSync(portFile + '.tmp', portFile);
});
process.on('SIGTERM', () => process.exit(0));
