// An HTTP server for tests/real_programs.rs: answers every request with
// the number of requests served so far.
//
//   node server.js     prints "ready pid=P port=N" once it listens on 127.0.0.1
const http = require('http');

let served = 0;
const server = http.createServer((request, response) => {
  served += 1;
  response.end(`served ${served}\n`);
});
server.listen(0, '127.0.0.1', () => {
  console.log(`ready pid=${process.pid} port=${server.address().port}`);
});
