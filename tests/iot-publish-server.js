'use strict';
/*
 * A stand-in for the AWS IoT Core data plane's Publish API
 * (POST /topics/{topic}?qos=N) that checks the SigV4 signature of every
 * request with an independent signer, @smithy/signature-v4 with the pure
 * JavaScript SHA-256 of @aws-crypto/sha256-js (both from tools/peers).
 *
 *   node iot-publish-server.js --port-file FILE --log FILE [--rules FILE]
 *       [--capture FILE] [--port N] [--credentials FILE]
 *
 * It listens on 127.0.0.1 (port N, default a free one) and writes the port
 * to the port file once it accepts connections. The credentials it accepts
 * and the region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
 * AWS_SESSION_TOKEN (optional) and AWS_REGION (default us-east-1). With
 * --credentials, the file instead lists the credentials accepted, as a JSON
 * array of {"accessKeyId", "secretAccessKey", "sessionToken"}, and is read
 * again whenever it changes, so a test can rotate keys.
 *
 * Each request gets, in this order:
 *   - 404 for another path, 405 for another method;
 *   - 403 {"message":"The request signature we calculated does not match
 *     ..."} when the signature, the signed header list, the credential
 *     scope or the session token is wrong, or the time is more than 15
 *     minutes off. Like the replies of some AWS services, the message goes
 *     on with the request's signed headers, session token included, so a
 *     test can check that the client does not log them;
 *   - the fault of the first matching rule, if any;
 *   - else 200 {} and the message counts as published.
 *
 * Every request is appended to the log as one JSON line:
 *   {"t": ms since the epoch, "method", "path": the raw path and query,
 *    "key": the access key id of the Authorization header or null,
 *    "topic": the decoded topic or null, "qos", "payload": the body in
 *    base64, "signature": "ok" or "bad", "reason": why it is bad,
 *    "fault": the rule's fault or null, "status": the status sent (0 for a
 *    reset), "published": true when the message counts as published}
 * With --capture, each published message is also appended as a line
 * "TOPIC PAYLOAD", the format of `mosquitto_sub -v` that
 * tests/e2e/checker.mjs reads.
 *
 * The rules file contains a JSON array and is read again whenever it changes,
 * which resets the rules' counters. A rule:
 *   {"fault": "500" | "503" | "429" | "403" | "400" | "slow" | "reset" |
 *             "cut",
 *    "topic": "a/b",   optional: only requests for this topic
 *    "skip": 0,        matching requests to let through first
 *    "times": 3,       requests to fault after that (no limit when absent)
 *    "delay_ms": 2000} for "slow": wait, then publish and answer 200
 * "reset" reads the request and closes the connection without a reply;
 * libcurl sends such a request again by itself, once, when the connection
 * was a reused one. "cut" sends a 200 status line and half of the reply
 * body, then closes the connection. A "slow" request whose client gave up
 * before the delay ended is logged with "published": false.
 */
const fs = require('fs');
const http = require('http');
const path = require('path');
const { parseArgs } = require('util');

const peers = path.join(__dirname, '..', 'tools', 'peers', 'node_modules');
let SignatureV4, Sha256;
try {
  ({ SignatureV4 } = require(path.join(peers, '@smithy/signature-v4')));
  ({ Sha256 } = require(path.join(peers, '@aws-crypto/sha256-js')));
} catch (e) {
  console.error(`iot-publish-server: ${e.message}; run 'bash tools/peers.sh install'`);
  process.exit(2);
}

const SERVICE = 'iotdata';
const MAX_SKEW_MS = 15 * 60 * 1000;
const BAD_SIGNATURE =
  'The request signature we calculated does not match the signature you ' +
  'provided. Check your AWS Secret Access Key and signing method. Consult ' +
  'the service documentation for details.';

/* Faults that reply with a status: [status, error type, message]. */
const ERRORS = {
  500: [500, 'InternalFailureException', 'Internal failure.'],
  503: [503, 'ServiceUnavailableException', 'Service unavailable.'],
  429: [429, 'ThrottlingException', 'Rate exceeded.'],
  403: [403, 'ForbiddenException', null],
  400: [400, 'InvalidRequestException', 'The request is not valid.'],
};

const { values: args } = parseArgs({
  options: {
    'port-file': { type: 'string' },
    log: { type: 'string' },
    rules: { type: 'string' },
    capture: { type: 'string' },
    port: { type: 'string', default: '0' },
    credentials: { type: 'string' },
  },
});
if (!args['port-file'] || !args.log) {
  console.error('usage: node iot-publish-server.js --port-file FILE --log FILE ' +
                '[--rules FILE] [--capture FILE] [--port N]');
  process.exit(2);
}

const credentials = {
  accessKeyId: process.env.AWS_ACCESS_KEY_ID || '',
  secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY || '',
  sessionToken: process.env.AWS_SESSION_TOKEN || undefined,
};
if (!args.credentials && (!credentials.accessKeyId || !credentials.secretAccessKey)) {
  console.error('iot-publish-server: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY ' +
                'to the credentials that requests must be signed with');
  process.exit(2);
}
const region = process.env.AWS_REGION || 'us-east-1';

function makeSigner(creds) {
  return new SignatureV4({
    service: SERVICE,
    region,
    credentials: creds,
    sha256: Sha256,
    uriEscapePath: true,
    // The client sends no x-amz-content-sha256, so the signer must neither
    // add one nor sign it. It hashes the body it received instead.
    applyChecksum: false,
  });
}

let accepted = [credentials];
let acceptedStamp = '';

/* The credentials accepted now: from --credentials, read again when the
 * file changed, else the environment's. */
function acceptedCredentials() {
  if (!args.credentials) return accepted;
  const st = fs.statSync(args.credentials);
  const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (stamp !== acceptedStamp) {
    const list = JSON.parse(fs.readFileSync(args.credentials, 'utf8'));
    if (!Array.isArray(list)) throw new Error(`${args.credentials}: not a JSON array`);
    accepted = list.map((c) => ({ accessKeyId: c.accessKeyId, secretAccessKey: c.secretAccessKey,
                                  sessionToken: c.sessionToken || undefined }));
    acceptedStamp = stamp;
  }
  return accepted;
}

let rules = [];
let rulesStamp = '';

/* Read the rules again when the file's size, time or inode changed. */
function loadRules() {
  if (!args.rules) return;
  let st;
  try {
    st = fs.statSync(args.rules);
  } catch (e) {
    rules = [];
    rulesStamp = '';
    return;
  }
  const stamp = `${st.mtimeMs}:${st.size}:${st.ino}`;
  if (stamp === rulesStamp) return;
  const parsed = JSON.parse(fs.readFileSync(args.rules, 'utf8'));
  if (!Array.isArray(parsed)) throw new Error(`${args.rules}: not a JSON array`);
  rules = parsed.map((r) => Object.assign({ seen: 0 }, r));
  rulesStamp = stamp;
}

function pickRule(topic) {
  loadRules();
  for (const r of rules) {
    if (r.topic !== undefined && r.topic !== topic) continue;
    r.seen++;
    const skip = r.skip || 0;
    const times = r.times === undefined ? Infinity : r.times;
    if (r.seen > skip && r.seen <= skip + times) return r;
  }
  return null;
}

function log(entry) {
  fs.appendFileSync(args.log, JSON.stringify(entry) + '\n');
}

/* The 403 message: BAD_SIGNATURE and the signed parts of the request. */
function badSignatureMessage(req, url) {
  const lines = Object.keys(req.headers).sort()
    .filter((name) => name.startsWith('x-amz-') || name === 'host' || name === 'authorization')
    .map((name) => `${name}:${req.headers[name]}`);
  return `${BAD_SIGNATURE}\n\nThe request was\n'${req.method}\n${url}\n${lines.join('\n')}'`;
}

function reply(res, status, body, errorType) {
  const headers = {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  };
  if (errorType) headers['x-amzn-errortype'] = errorType;
  res.writeHead(status, headers);
  res.end(body);
}

/* Split "a=1&b=2" into an object. A '+' stays a plus, as in SigV4. */
function parseQuery(text) {
  const query = {};
  for (const part of text.split('&')) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const name = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
    const value = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1));
    query[name] = query[name] === undefined ? value : [].concat(query[name], value);
  }
  return query;
}

/* "20260101T000000Z" as a Date, or null. */
function parseAmzDate(text) {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(text || '');
  if (!m) return null;
  return new Date(Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]));
}

/*
 * Check the request's Authorization header by signing the same request
 * again. Returns null when it is right, else the reason it is not.
 */
async function checkSignature(req, rawPath, rawQuery, body) {
  const auth = req.headers.authorization || '';
  const m = /^AWS4-HMAC-SHA256 Credential=([^/]+)\/(\d{8})\/([^/]+)\/([^/]+)\/aws4_request, SignedHeaders=([a-z0-9;-]+), Signature=([0-9a-f]{64})$/.exec(auth);
  if (!m) return 'missing or malformed Authorization header';

  const [, keyId, day, scopeRegion, scopeService, signedList, signature] = m;
  const credentials = acceptedCredentials().find((c) => c.accessKeyId === keyId);
  if (!credentials) return `unknown access key id ${keyId}`;
  if (scopeRegion !== region || scopeService !== SERVICE) {
    return `credential scope ${scopeRegion}/${scopeService}, expected ${region}/${SERVICE}`;
  }
  const date = parseAmzDate(req.headers['x-amz-date']);
  if (!date) return 'missing or malformed x-amz-date';
  if (req.headers['x-amz-date'].slice(0, 8) !== day) return 'scope date is not the x-amz-date day';
  if (Math.abs(Date.now() - date.getTime()) > MAX_SKEW_MS) return 'signature expired: x-amz-date is more than 15 minutes off';
  if ((req.headers['x-amz-security-token'] || undefined) !== credentials.sessionToken) {
    return 'wrong or missing x-amz-security-token';
  }

  const signed = signedList.split(';');
  for (const name of ['host', 'x-amz-date']) {
    if (!signed.includes(name)) return `${name} is not signed`;
  }
  if (credentials.sessionToken && !signed.includes('x-amz-security-token')) {
    return 'x-amz-security-token is not signed';
  }
  const headers = {};
  for (const name of signed) {
    if (req.headers[name] === undefined) return `signed header ${name} was not sent`;
    headers[name] = req.headers[name];
  }
  // Every header sent must be signed, except the ones that a proxy or the
  // HTTP client may add or change on the way.
  for (const name of Object.keys(req.headers)) {
    if (!signed.includes(name) && !['authorization', 'content-length', 'connection'].includes(name)) {
      return `header ${name} was sent but not signed`;
    }
  }

  const request = {
    method: req.method,
    protocol: 'http:',
    hostname: '127.0.0.1',
    path: rawPath,
    query: parseQuery(rawQuery),
    headers,
    body,
  };
  const out = await makeSigner(credentials).sign(request, { signingDate: date });
  const expected = /Signature=([0-9a-f]{64})/.exec(out.headers.authorization)[1];
  const expectedList = /SignedHeaders=([^,]+)/.exec(out.headers.authorization)[1];
  if (expectedList !== signedList) return `signed headers ${signedList}, recomputed ${expectedList}`;
  if (expected !== signature) return 'signature does not match';
  return null;
}

async function handle(req, res, body) {
  const url = req.url;
  const q = url.indexOf('?');
  const rawPath = q < 0 ? url : url.slice(0, q);
  const rawQuery = q < 0 ? '' : url.slice(q + 1);
  const keyMatch = /Credential=([^/]+)\//.exec(req.headers.authorization || '');
  const entry = {
    t: Date.now(), method: req.method, path: url, key: keyMatch ? keyMatch[1] : null,
    topic: null, qos: null,
    payload: body.toString('base64'), signature: null, reason: null,
    fault: null, status: 0, published: false,
  };

  if (!rawPath.startsWith('/topics/') || rawPath.length === '/topics/'.length) {
    entry.status = 404;
    log(entry);
    return reply(res, 404, JSON.stringify({ message: 'Not Found' }));
  }
  try {
    entry.topic = decodeURIComponent(rawPath.slice('/topics/'.length));
    entry.qos = parseQuery(rawQuery).qos || null;
  } catch (e) {
    entry.status = 400;
    log(entry);
    return reply(res, 400, JSON.stringify({ message: `bad escape: ${e.message}` }),
                 'InvalidRequestException');
  }
  if (req.method !== 'POST') {
    entry.status = 405;
    log(entry);
    return reply(res, 405, JSON.stringify({ message: 'Method Not Allowed' }),
                 'MethodNotAllowedException');
  }

  const reason = await checkSignature(req, rawPath, rawQuery, body);
  entry.signature = reason === null ? 'ok' : 'bad';
  entry.reason = reason;
  if (reason !== null) {
    entry.status = 403;
    log(entry);
    return reply(res, 403, JSON.stringify({ message: badSignatureMessage(req, url) }),
                 'ForbiddenException');
  }

  const rule = pickRule(entry.topic);
  entry.fault = rule ? rule.fault : null;
  if (rule && ERRORS[rule.fault]) {
    const [status, type, message] = ERRORS[rule.fault];
    entry.status = status;
    log(entry);
    return reply(res, status, JSON.stringify({ message: message || badSignatureMessage(req, url) }),
                 type);
  }
  if (rule && rule.fault === 'reset') {
    log(entry);
    return req.socket.destroy();
  }
  if (rule && rule.fault === 'cut') {
    entry.status = 200;
    log(entry);
    req.socket.write('HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n' +
                     'content-length: 20\r\n\r\n{"cut":');
    return req.socket.destroy();
  }
  if (rule && rule.fault === 'slow') {
    await new Promise((resolve) => setTimeout(resolve, rule.delay_ms || 1000));
    if (req.socket.destroyed) {
      log(entry);
      return undefined;
    }
  } else if (rule) {
    throw new Error(`unknown fault ${JSON.stringify(rule.fault)} in ${args.rules}`);
  }

  entry.status = 200;
  entry.published = true;
  log(entry);
  if (args.capture) {
    fs.appendFileSync(args.capture, `${entry.topic} ${body.toString('utf8')}\n`);
  }
  return reply(res, 200, '{}');
}

const server = http.createServer((req, res) => {
  const parts = [];
  req.on('data', (chunk) => parts.push(chunk));
  req.on('error', () => {});
  req.on('end', () => {
    handle(req, res, Buffer.concat(parts)).catch((e) => {
      console.error(`iot-publish-server: ${e.stack || e}`);
      if (!res.headersSent) reply(res, 500, JSON.stringify({ message: String(e.message) }));
    });
  });
});

server.listen(Number(args.port), '127.0.0.1', () => {
  const tmp = `${args['port-file']}.tmp`;
  fs.writeFileSync(tmp, `${server.address().port}\n`);
  fs.renameSync(tmp, args['port-file']);
});
process.on('SIGTERM', () => process.exit(0));
