// A Node.js http server that closes idle keep-alive connections after 1 s
// (Node's default is 5 s). Prints its port, counts requests per Idempotency-Key,
// and prints the counts as JSON when stdin closes.
const http = require("http");
const seen = {};
const server = http.createServer((req, res) => {
  req.resume();
  req.on("end", () => {
    const key = req.headers["idempotency-key"] || "";
    seen[key] = (seen[key] || 0) + 1;
    res.end("ok");
  });
});
server.keepAliveTimeout = 1000;
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(server.address().port + "\n");
});
process.stdin.resume();
process.stdin.on("end", () => {
  process.stdout.write(JSON.stringify(seen) + "\n");
  process.exit(0);
});
