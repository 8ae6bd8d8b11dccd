/*
 * A stand-in for the container credentials endpoint and the EC2 instance
 * metadata service (IMDSv2), on 127.0.0.1 only.
 *
 *   node creds-server.mjs PLAN_FILE LOG_FILE PORT_FILE
 *
 * The plan file is a JSON object, read again on every request:
 *   {"auth": "TOKEN" or null,     the Authorization value that container
 *                                 requests must carry; null: none
 *    "replies": [REPLY, ...]}     one per credentials request, in order;
 *                                 the last one repeats
 * A REPLY is {"key", "secret", "token", "expires_in_s"} for credentials
 * (no "expires_in_s": no Expiration), {"status": N} for an error status,
 * or {"body": "TEXT"} for a 200 reply with that body.
 *
 * Container requests are GET /creds. IMDSv2 is PUT /latest/api/token (with
 * x-aws-ec2-metadata-token-ttl-seconds), then, with the token in
 * x-aws-ec2-metadata-token, GET /latest/meta-data/iam/security-credentials/
 * for the role name and GET .../podium-role for the credentials. A request
 * without the right token or Authorization gets 401 and takes no reply.
 *
 * Every request is appended to the log as one JSON line: {"t", "method",
 * "path", "auth": "ok", "bad" or "none", "served": the key id, the status
 * or "token" / "role"}.
 */
import fs from 'node:fs';
import http from 'node:http';

const [planFile, logFile, portFile] = process.argv.slice(2);
if (!planFile || !logFile || !portFile) {
  console.error('usage: node creds-server.mjs PLAN_FILE LOG_FILE PORT_FILE');
  process.exit(2);
}

const IMDS_TOKEN = 'imds-session-token-e2e-0123';
const ROLE = 'podium-role';
const ROLE_PATH = '/latest/meta-data/iam/security-credentials/';
let served = 0;

function log(entry) {
  fs.appendFileSync(logFile, JSON.stringify({ t: Date.now(), ...entry }) + '\n');
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json',
                          'content-length': Buffer.byteLength(body) });
  res.end(body);
}

/* Reply to one credentials request with the next reply of the plan. */
function serveCredentials(res, plan, entry) {
  const replies = plan.replies || [];
  const reply = replies[Math.min(served, replies.length - 1)];
  served++;
  if (reply === undefined) {
    entry.served = 500;
    log(entry);
    return send(res, 500, '{"message":"the plan has no replies"}');
  }
  if (reply.status !== undefined) {
    entry.served = reply.status;
    log(entry);
    return send(res, reply.status, '{"message":"planned failure"}');
  }
  if (reply.body !== undefined) {
    entry.served = 'body';
    log(entry);
    return send(res, 200, reply.body);
  }
  const body = { Code: 'Success', Type: 'AWS-HMAC', AccessKeyId: reply.key,
                 SecretAccessKey: reply.secret };
  if (reply.token) body.Token = reply.token;
  if (reply.expires_in_s !== undefined) {
    body.Expiration = new Date(Date.now() + reply.expires_in_s * 1000).toISOString();
  }
  entry.served = reply.key;
  log(entry);
  return send(res, 200, JSON.stringify(body));
}

const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const plan = JSON.parse(fs.readFileSync(planFile, 'utf8'));
    const entry = { method: req.method, path: req.url, auth: 'none', served: null };
    if (req.url === '/latest/api/token') {
      const ttl = req.headers['x-aws-ec2-metadata-token-ttl-seconds'];
      entry.auth = req.method === 'PUT' && ttl ? 'ok' : 'bad';
      entry.served = entry.auth === 'ok' ? 'token' : 400;
      log(entry);
      return entry.auth === 'ok' ? send(res, 200, IMDS_TOKEN) : send(res, 400, '{}');
    }
    if (req.url.startsWith('/latest/')) {
      entry.auth = req.headers['x-aws-ec2-metadata-token'] === IMDS_TOKEN ? 'ok' : 'bad';
      if (entry.auth !== 'ok') {
        entry.served = 401;
        log(entry);
        return send(res, 401, '{}');
      }
      if (req.url === ROLE_PATH) {
        entry.served = 'role';
        log(entry);
        return send(res, 200, `${ROLE}\n`);
      }
      if (req.url === ROLE_PATH + ROLE) return serveCredentials(res, plan, entry);
      entry.served = 404;
      log(entry);
      return send(res, 404, '{}');
    }
    const auth = req.headers.authorization;
    if (auth === undefined) entry.auth = 'none';
    else entry.auth = auth === plan.auth ? 'ok' : 'bad';
    if ((plan.auth ?? undefined) !== auth) {
      entry.served = 401;
      log(entry);
      return send(res, 401, '{"message":"bad authorization"}');
    }
    return serveCredentials(res, plan, entry);
  });
});

server.listen(0, '127.0.0.1', () => {
  fs.writeFileSync(portFile + '.tmp', String(server.address().port));
  fs.renameSync(portFile + '.tmp', portFile);
});
