// Preload for test peers (`node -r tools/force-loopback.cjs server.js`).
//
// Every net.Server listen() that binds a TCP port is moved onto 127.0.0.1,
// so a peer never listens on another interface even when it binds all
// interfaces by default (kinesalite does). A listen() that names another
// host, or passes a handle or file descriptor, throws instead. Unix socket
// paths are left alone because they are not reachable over the network.
//
// With PEER_IGNORE_ABORTED=1, an uncaught "aborted" or ECONNRESET error is
// logged and the process keeps running. kinesalite 3.3.3 rethrows request
// errors (`req.on('error', function(err) { throw err })`), so a client that
// hangs up in the middle of a request body would otherwise stop the server.
// Any other uncaught exception still prints its stack and exits with 1.
'use strict';

const net = require('net');

const LOOPBACK = '127.0.0.1';
const LOOPBACK_NAMES = new Set(['127.0.0.1', 'localhost']);

function rejectListen(target) {
  throw new Error(
    `force-loopback: rejected listen() on ${target}: test peers may listen ` +
      `on ${LOOPBACK} only; pass no host or ${LOOPBACK}`,
  );
}

function isPortValue(value) {
  return (
    typeof value === 'number' ||
    (typeof value === 'string' && value !== '' && /^[0-9]+$/.test(value))
  );
}

function checkHost(host) {
  if (host !== undefined && host !== null && !LOOPBACK_NAMES.has(host)) {
    rejectListen(`host ${JSON.stringify(host)}`);
  }
}

// Rewrites the arguments of net.Server.prototype.listen() so that any TCP
// listener binds 127.0.0.1. Returns the arguments to pass on.
function loopbackListenArgs(args) {
  const [first, ...rest] = args;

  // listen() or listen(callback): Node picks a random port on all interfaces.
  if (first === undefined || typeof first === 'function') {
    return [{ port: 0, host: LOOPBACK }, ...args.filter((a) => typeof a === 'function')];
  }

  // listen(port[, host][, backlog][, callback])
  if (isPortValue(first)) {
    const options = { port: Number(first), host: LOOPBACK };
    let i = 0;
    if (typeof rest[i] === 'string') {
      checkHost(rest[i]);
      i += 1;
    }
    if (typeof rest[i] === 'number') {
      options.backlog = rest[i];
      i += 1;
    }
    return [options, ...rest.slice(i)];
  }

  // listen(path[, backlog][, callback]): a Unix domain socket.
  if (typeof first === 'string') {
    return args;
  }

  if (typeof first === 'object' && first !== null) {
    if (first._handle !== undefined || first.fd !== undefined || first.handle !== undefined) {
      rejectListen('a handle or file descriptor');
    }
    if (first.path !== undefined && first.port === undefined) {
      return args;
    }
    checkHost(first.host);
    return [{ ...first, host: LOOPBACK }, ...rest];
  }

  return rejectListen(`arguments of type ${typeof first}`);
}

const originalListen = net.Server.prototype.listen;
net.Server.prototype.listen = function listenOnLoopback(...args) {
  return originalListen.apply(this, loopbackListenArgs(args));
};

function isClientAbort(err) {
  if (err === null || typeof err !== 'object') {
    return false;
  }
  return err.code === 'ECONNRESET' || err.code === 'ECONNABORTED' || err.message === 'aborted';
}

if (process.env.PEER_IGNORE_ABORTED === '1') {
  let ignoredCount = 0;
  process.on('uncaughtException', (err) => {
    if (isClientAbort(err)) {
      ignoredCount += 1;
      console.error(
        `force-loopback: ignored client abort #${ignoredCount}: ` +
          `${err.code || 'no code'}: ${err.message}`,
      );
      return;
    }
    console.error(err && err.stack ? err.stack : err);
    process.exit(1);
  });
}
