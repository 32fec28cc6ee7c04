// The bench's load generator (bench/relay): N users, each logged in on its
// own WebSocket, each sending a ~100-byte chat and waiting for its answer
// before the next (a closed loop). Prints JSON lines on stdout:
//   {"event":"ready","logins":N,"loginSeconds":s,"errors":[...]}   all logged in
//   {"event":"start"}                                                   warm-up over
//   {"event":"end","roundTrips":n,"seconds":s,"p50":ms,"p99":ms,"p999":ms,"errors":e}
//
//   node load.js '{"url":"ws://…","mode":"browser"|"bot","users":100,
//                  "warmup":2,"duration":10,"cookie":"wt_session=…","origin":"http://…",
//                  "serviceId":1,"appid":"1.00002","inFlight":200,"idle":false,"loginRate":0}'
// With "idle": true the users log in and then say nothing (for memory and idle costs);
// the end event then also has the latency of state pushes (statePushes, stateP50, stateP99, stateMax, ms).
// Logins: at most inFlight waiting at once; or, with "loginRate": R, a storm
// opened at R per second whatever is still waiting.
'use strict';
const WebSocket = require('ws');

const o = JSON.parse(process.argv[2]);
const browser = o.mode === 'browser';
const chatMethod = browser ? 'aichatReq' : 'chatReq';
const answerMethod = browser ? 'aichatResp' : 'chatResp';
const say = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const now = () => Number(process.hrtime.bigint()) / 1e6; // ms

let measuring = false;
let stopped = false;
let latencies = new Float64Array(1 << 20);
let count = 0;
let errors = 0;
const errorSamples = [];
// Idle mode: how long a state write (the bench writes memory fact "benchAt" =
// its wall-clock ms into Redis) takes to reach the browser as a push.
const stateLatencies = [];

function record(ms) {
  if (!measuring) return;
  if (count === latencies.length) {
    const bigger = new Float64Array(latencies.length * 2);
    bigger.set(latencies);
    latencies = bigger;
  }
  latencies[count++] = ms;
}

function chatFrame(i, n) {
  const base = { method: chatMethod, content: '' };
  if (browser) { base.serviceId = o.serviceId; base.appid = o.appid; }
  const head = JSON.stringify(base).length;
  const text = `user ${i} says hello, message ${n} `;
  base.content = text.padEnd(Math.max(text.length, 100 - head), '.');
  return JSON.stringify(base);
}

class User {
  constructor(i) { this.i = i; this.n = 0; this.sent = 0; }
  open() {
    return new Promise((resolve) => {
      const headers = {};
      if (o.cookie) headers.Cookie = o.cookie;
      if (o.origin) headers.Origin = o.origin;
      const ws = this.ws = new WebSocket(o.url, { headers, perMessageDeflate: false, handshakeTimeout: 60000 });
      let done = false;
      const finish = (error) => { if (!done) { done = true; resolve(error); } };
      ws.on('open', () => {
        const login = { method: 'loginReq', appid: o.appid, uname: `bench-${process.pid}-${this.i}` };
        if (browser) login.serviceId = o.serviceId;
        ws.send(JSON.stringify(login));
      });
      ws.on('message', (data) => {
        const m = JSON.parse(data);
        if (m.method === 'loginResp' && !done) {
          finish(m.result === 1 ? null : `login: ${m.result} ${m.msg}`);
        } else if (m.method === 'getUserStatusResp' && measuring && m.memory) {
          for (const fact of m.memory.new || []) {
            if (fact.key === 'benchAt') stateLatencies.push(Date.now() - Number(fact.value));
          }
        } else if (m.method === answerMethod && this.sent) {
          if (m.result !== undefined && m.result !== 1) {
            errors++;
            if (errorSamples.length < 5) errorSamples.push(`${m.result} ${m.msg}`);
          } else {
            record(now() - this.sent);
          }
          this.sent = 0;
          this.next();
        }
      });
      ws.on('error', (e) => finish(`connection: ${e.message}`));
      ws.on('close', (code) => {
        finish(`closed: ${code}`);
        if (this.sent && !stopped) { errors++; this.sent = 0; }
      });
    });
  }
  next() {
    if (stopped || this.ws.readyState !== WebSocket.OPEN) return;
    this.sent = now();
    this.ws.send(chatFrame(this.i, this.n++));
  }
}

async function main() {
  const users = [];
  for (let i = 0; i < o.users; i++) users.push(new User(i));
  const t0 = now();
  const loginErrors = [];
  let index = 0;
  const inFlight = o.inFlight || 200;
  async function worker() {
    while (index < users.length) {
      const user = users[index++];
      const error = await user.open();
      if (error) loginErrors.push(error);
    }
  }
  if (o.loginRate) {
    // A storm: logins opened at loginRate per second, however many are still waiting.
    const opening = [];
    const perTick = Math.max(1, Math.round(o.loginRate / 100));
    while (index < users.length) {
      for (let k = 0; k < perTick && index < users.length; k++) {
        opening.push(users[index++].open().then((error) => { if (error) loginErrors.push(error); }));
      }
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await Promise.all(opening);
  } else {
    await Promise.all(Array.from({ length: Math.min(inFlight, users.length) }, worker));
  }
  say({ event: 'ready', logins: users.length - loginErrors.length, loginSeconds: (now() - t0) / 1000,
        errors: loginErrors.slice(0, 5), failed: loginErrors.length });
  const live = users.filter((u) => u.ws.readyState === WebSocket.OPEN);
  if (!o.idle) for (const u of live) u.next(); // idle: logged in, saying nothing
  await new Promise((r) => setTimeout(r, o.warmup * 1000));
  measuring = true;
  const start = now();
  say({ event: 'start' });
  await new Promise((r) => setTimeout(r, o.duration * 1000));
  measuring = false;
  const seconds = (now() - start) / 1000;
  stopped = true;
  const sorted = latencies.slice(0, count).sort();
  const pick = (q) => (count ? sorted[Math.min(count - 1, Math.floor(q * count))] : null);
  const states = Float64Array.from(stateLatencies).sort();
  const pickState = (q) => (states.length ? states[Math.min(states.length - 1, Math.floor(q * states.length))] : null);
  say({ event: 'end', roundTrips: count, seconds, rtPerSecond: count / seconds, p50: pick(0.5), p99: pick(0.99),
        p999: pick(0.999), errors, errorSamples,
        statePushes: states.length, stateP50: pickState(0.5), stateP99: pickState(0.99), stateMax: pickState(1) });
  for (const u of users) if (u.ws) u.ws.terminate();
  process.exit(0);
}

main();
