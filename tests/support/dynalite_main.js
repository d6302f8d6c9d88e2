// dynalite (an in-memory DynamoDB server) on an ephemeral loopback port: prints {"port": N} as one JSON
// line, runs until stdin closes (the test process ended) or SIGTERM.
"use strict";
const dynalite = require("dynalite");

const server = dynalite({ createTableMs: 0, deleteTableMs: 0, updateTableMs: 0 });
server.listen(0, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ host: "127.0.0.1", port: server.address().port }) + "\n");
});
process.stdin.on("end", () => process.exit(0));
process.stdin.resume();
process.on("SIGTERM", () => process.exit(0));
