#!/usr/bin/env node
// A TCP relay on 127.0.0.1 that a test closes and opens again, to take a
// peer away from podium and bring it back on the same port while the peer
// itself, and every other client of it, keeps running.
//
//   node tcp-gate.mjs TARGET_PORT PORT_FILE
//
// It listens on a free port of 127.0.0.1, writes that port to PORT_FILE and
// relays each connection to 127.0.0.1:TARGET_PORT. SIGUSR1 closes the gate:
// every relayed connection is destroyed and the listener closed, so a
// client sees a reset and then "connection refused", as when the peer is
// not running. SIGUSR2 opens the gate again on the same port. Each change
// is logged on standard output.
import { writeFileSync } from 'node:fs';
import net from 'node:net';

const [targetText, portFile] = process.argv.slice(2);
if (!/^\d+$/.test(targetText ?? '') || portFile === undefined) {
  console.error('usage: node tcp-gate.mjs TARGET_PORT PORT_FILE');
  process.exit(2);
}
const target = Number(targetText);
const sockets = new Set();
let port = 0;

function log(message) {
  console.log(`${new Date().toISOString()} tcp-gate: ${message}`);
}

function relay(client) {
  const upstream = net.connect(target, '127.0.0.1');
  for (const socket of [client, upstream]) {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {
      client.destroy();
      upstream.destroy();
    });
  }
  client.pipe(upstream);
  upstream.pipe(client);
  client.on('close', () => upstream.destroy());
  upstream.on('close', () => client.destroy());
}

let server = null;

function open() {
  if (server !== null) {
    return;
  }
  server = net.createServer(relay);
  server.on('error', (err) => {
    log(`failed to listen on 127.0.0.1:${port}: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, '127.0.0.1', () => {
    if (port === 0) {
      port = server.address().port;
      writeFileSync(portFile, `${port}\n`);
    }
    log(`open: 127.0.0.1:${port} relays to 127.0.0.1:${target}`);
  });
}

function close() {
  if (server === null) {
    return;
  }
  server.close();
  server = null;
  for (const socket of sockets) {
    socket.destroy();
  }
  log(`closed: 127.0.0.1:${port} refuses connections`);
}

// Signal handlers do not keep node running while the gate is closed.
setInterval(() => {}, 60 * 60 * 1000);
process.on('SIGUSR1', close);
process.on('SIGUSR2', open);
process.on('SIGTERM', () => process.exit(0));
open();
