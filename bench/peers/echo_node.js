// Minimal node.js `net` echo server for luanet's benchmark.
// Usage: node echo_node.js HOST:PORT
'use strict';
const net = require('net');

const arg = process.argv[2] || '127.0.0.1:9000';
const i = arg.lastIndexOf(':');
const host = arg.slice(0, i).replace(/^\[|\]$/g, '');
const port = Number(arg.slice(i + 1));

const server = net.createServer({ noDelay: true }, (sock) => {
  sock.on('data', (chunk) => sock.write(chunk));
  sock.on('error', () => sock.destroy());
});
server.on('error', (err) => {
  console.error(`echo_node: ${err.message}`);
  process.exit(1);
});
server.listen({ host, port, backlog: 1024 }, () => {
  console.error(`echo_node listening on ${host}:${port}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
