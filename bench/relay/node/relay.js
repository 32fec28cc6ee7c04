// The same three-hop relay as bench/relay/bare.py, in Node's `ws`: the
// bench's ceiling for what a relay of this shape can do on one core.
//
//   node relay.js web PORT AGENT_PORT     browser WebSocket; one link to the agent
//   node relay.js agent PORT BOT_PORT     the agent; one bot WebSocket per login
'use strict';
const WebSocket = require('ws');

const [role, portText, upstreamText] = process.argv.slice(2);
const port = Number(portText);
const upstream = Number(upstreamText);

if (role === 'web') {
  const browsers = new Map();
  let next = 0;
  const link = new WebSocket(`ws://127.0.0.1:${upstream}/`);
  link.on('message', (data) => {
    const message = JSON.parse(data);
    const browser = browsers.get(message.uuid);
    delete message.uuid;
    if (browser) browser.send(JSON.stringify(message));
  });
  link.on('open', () => {
    const server = new WebSocket.Server({ host: '127.0.0.1', port, backlog: 4096 });
    server.on('connection', (ws) => {
      const uuid = `b${++next}`;
      browsers.set(uuid, ws);
      ws.on('message', (data) => {
        const message = JSON.parse(data);
        message.uuid = uuid;
        link.send(JSON.stringify(message));
      });
      ws.on('close', () => browsers.delete(uuid));
    });
  });
} else {
  const botUrl = `ws://127.0.0.1:${upstream}/5.00034`;
  const server = new WebSocket.Server({ host: '127.0.0.1', port, backlog: 4096 });
  server.on('connection', (link) => {
    const users = new Map();
    link.on('message', (data) => {
      const message = JSON.parse(data);
      const { uuid, method } = message;
      if (method === 'loginReq') {
        const bot = new WebSocket(botUrl);
        const user = { bot, serviceId: message.serviceId, appid: message.appid };
        users.set(uuid, user);
        bot.on('open', () => bot.send(JSON.stringify({ method: 'loginReq', appid: message.appid, uname: message.uname })));
        bot.on('message', (answerData) => {
          const answer = JSON.parse(answerData);
          if (answer.method === 'chatResp') answer.method = 'aichatResp';
          else if (answer.method === 'loginResp') { answer.strUid = answer.uid; delete answer.uid; }
          answer.uuid = uuid;
          answer.serviceId = user.serviceId;
          answer.appid = user.appid;
          link.send(JSON.stringify(answer));
        });
      } else if (method === 'aichatReq') {
        users.get(uuid).bot.send(JSON.stringify({ method: 'chatReq', content: message.content }));
      } else if (method === 'logoutReq') {
        users.get(uuid).bot.send(JSON.stringify({ method: 'logoutReq' }));
      }
    });
  });
}
