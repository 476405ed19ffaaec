// The Node.js `http` receiver of the interop suite (tests/interop/servers.py starts it).
//
// node node_server.js LOG_FILE KEEP_ALIVE_MS
//
// Listens on 127.0.0.1, on a port the OS picks, and prints that port on stdout.
// Every request appends one JSON line to LOG_FILE *when its head arrives* (so a
// request answered before its body was read is still counted): its
// Idempotency-Key, the client port (one per TCP connection), the method, the
// path and every Host header as sent. The routes are the same as the Python
// apps' (asgi_app.py, wsgi_app.py). Exits when its stdin closes, so it never
// outlives the test run that started it.
'use strict';
const fs = require('fs');
const http = require('http');

const [logPath, keepAliveMs] = process.argv.slice(2);
const log = fs.openSync(logPath, 'a');

const CHUNKS = ['first chunk;', 'second chunk;', 'third chunk.'];

function bigBody(size) {
  // Eight bytes a line, each line its own number: a body prefix shows where it came from.
  const lines = [];
  for (let i = 0; i < size / 8; i++) lines.push(String(i).padStart(7, '0') + '\n');
  return Buffer.from(lines.join(''), 'latin1');
}

function route(req, res, url) {
  switch (url.pathname) {
    case '/close':
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2, Connection: 'close' });
      res.end('ok');
      return;
    case '/chunked':
      // No Content-Length: Node frames the body with chunked encoding.
      res.writeHead(200, { 'Content-Type': 'text/plain' });
      for (const piece of CHUNKS) res.write(piece);
      res.end();
      return;
    case '/nocontent':
      res.writeHead(204);
      res.end();
      return;
    case '/interim':
      // Unsolicited interim answers before the final one (the client never sends Expect).
      res.writeContinue();
      res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
      res.writeEarlyHints({ link: '</app.js>; rel=preload; as=script' });
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 5 });
      res.end('final');
      return;
    case '/big': {
      const body = bigBody(Number(url.searchParams.get('size')));
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': body.length });
      res.end(body);
      return;
    }
    default:
      res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
      res.end('ok');
  }
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://receiver');
  const hosts = [];
  for (let i = 0; i < req.rawHeaders.length; i += 2) {
    if (req.rawHeaders[i].toLowerCase() === 'host') hosts.push(req.rawHeaders[i + 1]);
  }
  const entry = {
    key: req.headers['idempotency-key'] || null,
    conn: req.socket.remotePort,
    method: req.method,
    path: url.pathname,
    hosts,
  };
  fs.writeSync(log, JSON.stringify(entry) + '\n');
  if (url.pathname === '/reject') {
    // Refuse at the head, before reading any of the body, and close like most servers do.
    res.writeHead(413, { 'Content-Type': 'text/plain', 'Content-Length': 9, Connection: 'close' });
    res.end('too large');
    return;
  }
  req.resume(); // read (and discard) the body, then answer
  req.on('end', () => route(req, res, url));
});
server.keepAliveTimeout = Number(keepAliveMs);
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${server.address().port}\n`);
});
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
