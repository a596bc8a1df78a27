// A Matrix client for Caliopen's end-to-end tests: matrix-js-sdk with its Rust crypto.
//
// Reads JSON commands, one per line, on stdin; writes one JSON reply per command, one per
// line, on stdout (each reply carries the command's "id"); logs go to stderr. Commands run
// concurrently, so a caller may wait for a message and send another in the meantime.
//
// Commands:
//   login         {baseUrl, userId, password, deviceName?}  -> {userId, deviceId}
//   wait_invite   {timeout?, inviter?}                      -> {roomId}   (joins the room)
//   join          {roomId, timeout?}                        -> {roomId}
//   wait_message  {roomId, bodyContains, sender?, timeout?} -> {eventId, sender, type, content, encrypted}
//   send_text     {roomId, body, timeout?}                  -> {eventId, encrypted}
//   create_dm     {userId, timeout?}                        -> {roomId}
//   stop          {}                                        -> {stopped: true}, then exit
// A failed command answers {id, error}.
//
// Environment: CALIOPEN_JS_LOG = error|warn|info|debug (default warn) for the logs;
// CALIOPEN_JS_SYNC_LIMIT = timeline events per /sync (default 500; a gap is back-filled).

import readline from "node:readline";

// Nothing but replies may reach stdout.
for (const name of ["log", "info", "debug", "trace"]) {
  console[name] = (...args) => console.error(...args);
}

const sdk = await import("matrix-js-sdk");
const { AllDevicesIsolationMode } = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { ClientEvent, RoomEvent, RoomMemberEvent, MatrixEventEvent, SyncState, KnownMembership } = sdk;

const LEVELS = { trace: 0, debug: 1, info: 2, warn: 3, error: 4 };
const logLevel = LEVELS[process.env.CALIOPEN_JS_LOG ?? "warn"] ?? LEVELS.warn;

/** A logger for the SDK that writes to stderr at or above the chosen level. */
function makeLogger(prefix) {
  const out = (level) => (...args) => {
    if (LEVELS[level] >= logLevel) process.stderr.write(`${level} ${prefix} ${args.map(String).join(" ")}\n`);
  };
  const logger = {
    trace: out("trace"),
    debug: out("debug"),
    info: out("info"),
    warn: out("warn"),
    error: out("error"),
    log: out("debug"),
    getChild: (ns) => makeLogger(`${prefix}${ns}`),
  };
  return logger;
}

const log = makeLogger("[client]");

/** Timeline events per sync (the server's default is 10): larger, so that gaps are rare. */
const SYNC_TIMELINE_LIMIT = Number(process.env.CALIOPEN_JS_SYNC_LIMIT ?? 500);

let client = null;
/** Every remote timeline event seen, per room: roomId -> Map(eventId -> MatrixEvent). Kept
 * apart from the SDK's live timeline, which a gappy sync resets. */
const roomEvents = new Map();
/** Invites already handed out by wait_invite. */
const takenInvites = new Set();
/** Callbacks run whenever something that a waiter may look for happens. */
const watchers = new Set();

function notifyWatchers() {
  for (const check of [...watchers]) {
    try {
      check();
    } catch (err) {
      log.error("watcher failed:", err);
    }
  }
}

/**
 * Resolves with the first non-undefined value of `probe` (sync or async), checked now, on every
 * client event and every 500 ms; rejects with `describe()` after `timeoutSec` seconds.
 */
function waitFor(probe, timeoutSec, describe) {
  return new Promise((resolve, reject) => {
    let done = false;
    let running = false;
    let again = false;
    const finish = (fn, value) => {
      if (done) return;
      done = true;
      watchers.delete(check);
      clearInterval(poll);
      clearTimeout(timer);
      fn(value);
    };
    const check = () => {
      if (done) return;
      if (running) {
        again = true;
        return;
      }
      running = true;
      Promise.resolve()
        .then(probe)
        .then(
          (value) => {
            running = false;
            if (value !== undefined) finish(resolve, value);
            else if (again) {
              again = false;
              check();
            }
          },
          (err) => {
            running = false;
            finish(reject, err);
          },
        );
    };
    const poll = setInterval(check, 500);
    const timer = setTimeout(() => {
      Promise.resolve()
        .then(describe)
        .then(
          (msg) => finish(reject, new Error(msg)),
          (err) => finish(reject, err),
        );
    }, timeoutSec * 1000);
    watchers.add(check);
    check();
  });
}

function requireClient() {
  if (!client) throw new Error("not logged in");
  return client;
}

async function login({ baseUrl, userId, password, deviceName, timeout = 60 }) {
  if (client) throw new Error("already logged in");
  if (!baseUrl || !userId || !password) throw new Error("login needs baseUrl, userId and password");
  const loginClient = sdk.createClient({ baseUrl, logger: makeLogger("[login]") });
  const res = await loginClient.loginRequest({
    type: "m.login.password",
    identifier: { type: "m.id.user", user: userId },
    password,
    initial_device_display_name: deviceName ?? "caliopen-test-js",
  });
  loginClient.stopClient();
  const c = sdk.createClient({
    baseUrl,
    userId: res.user_id,
    deviceId: res.device_id,
    accessToken: res.access_token,
    logger: makeLogger(`[${res.user_id}]`),
  });
  await c.initRustCrypto({ useIndexedDB: false });
  const crypto = c.getCrypto();
  // Share room keys with every device, verified or not: test users never verify.
  crypto.globalBlacklistUnverifiedDevices = false;
  crypto.setDeviceIsolationMode(new AllDevicesIsolationMode(false));

  c.on(ClientEvent.Sync, notifyWatchers);
  c.on(ClientEvent.Room, notifyWatchers);
  c.on(RoomEvent.Timeline, (ev) => {
    record(ev);
    notifyWatchers();
  });
  c.on(RoomEvent.TimelineReset, (room, timelineSet) => {
    if (room && timelineSet === room.getUnfilteredTimelineSet()) backfill(c, room);
  });
  c.on(RoomEvent.MyMembership, notifyWatchers);
  c.on(RoomMemberEvent.Membership, notifyWatchers);
  c.on(MatrixEventEvent.Decrypted, notifyWatchers);
  client = c;

  const filter = new sdk.Filter(res.user_id);
  filter.setTimelineLimit(SYNC_TIMELINE_LIMIT);
  await c.startClient({ initialSyncLimit: 50, filter });
  await waitFor(
    () => {
      const state = c.getSyncState();
      if (state === SyncState.Prepared || state === SyncState.Syncing) return true;
      if (state === SyncState.Error) throw new Error("first sync failed");
      return undefined;
    },
    timeout,
    () => `first sync not done after ${timeout}s (state ${c.getSyncState()})`,
  );
  log.info("logged in as", res.user_id, "device", res.device_id);
  return { userId: res.user_id, deviceId: res.device_id };
}

/** Keeps a remote timeline event (one with a server-assigned id) in roomEvents. */
function record(ev) {
  const eventId = ev.getId();
  const roomId = ev.getRoomId();
  if (!roomId || !eventId?.startsWith("$")) return;
  let events = roomEvents.get(roomId);
  if (!events) {
    events = new Map();
    roomEvents.set(roomId, events);
  }
  if (!events.has(eventId)) events.set(eventId, ev);
}

/**
 * After a gappy sync reset the room's live timeline, pages back from its start until an event
 * seen before the gap (or the room's beginning); the Timeline listener records what comes.
 */
async function backfill(c, room) {
  const known = new Set(roomEvents.get(room.roomId)?.keys() ?? []);
  if (known.size === 0) return;
  log.info("gap in", room.roomId, "- back-filling");
  const timeline = room.getLiveTimeline();
  try {
    for (let page = 0; page < 50; page++) {
      if (timeline.getEvents().some((ev) => known.has(ev.getId()))) return;
      if (!(await c.paginateEventTimeline(timeline, { backwards: true, limit: 100 }))) return;
    }
    log.warn("back-fill of", room.roomId, "stopped after 50 pages");
  } catch (err) {
    log.error("back-fill of", room.roomId, "failed:", err);
  } finally {
    notifyWatchers();
  }
}

/** Every known event of the room: recorded ones, then the live timeline's (local echoes too). */
function eventsOf(roomId) {
  const byId = new Map(roomEvents.get(roomId) ?? []);
  for (const ev of client?.getRoom(roomId)?.getLiveTimeline().getEvents() ?? []) {
    if (!byId.has(ev.getId())) byId.set(ev.getId(), ev);
  }
  return [...byId.values()];
}

/**
 * Waits until the room is in the client's store with our membership "join", and, when the
 * server says the room is encrypted, until the crypto knows it too (so nothing is ever sent in
 * the clear into an encrypted room).
 */
async function roomReady(roomId, timeout) {
  const c = requireClient();
  let serverSaysEncrypted = false;
  try {
    await c.getStateEvent(roomId, "m.room.encryption", "");
    serverSaysEncrypted = true;
  } catch (err) {
    if (err?.errcode !== "M_NOT_FOUND") throw err;
  }
  await waitFor(
    async () => {
      const room = c.getRoom(roomId);
      if (!room || room.getMyMembership() !== KnownMembership.Join) return undefined;
      if (serverSaysEncrypted && !(await c.getCrypto().isEncryptionEnabledInRoom(roomId))) return undefined;
      return true;
    },
    timeout,
    () => {
      const room = c.getRoom(roomId);
      return `room ${roomId} not ready after ${timeout}s (membership ${room?.getMyMembership() ?? "unknown"}, encrypted on server: ${serverSaysEncrypted})`;
    },
  );
  return serverSaysEncrypted;
}

async function join({ roomId, timeout = 30 }) {
  const c = requireClient();
  if (!roomId) throw new Error("join needs roomId");
  await c.joinRoom(roomId);
  await roomReady(roomId, timeout);
  return { roomId };
}

async function waitInvite({ timeout = 30, inviter }) {
  const c = requireClient();
  const roomId = await waitFor(
    () => {
      for (const room of c.getRooms()) {
        if (takenInvites.has(room.roomId) || room.getMyMembership() !== KnownMembership.Invite) continue;
        if (inviter && room.getDMInviter() !== inviter) {
          const me = room.getMember(c.getUserId());
          if (me?.events?.member?.getSender() !== inviter) continue;
        }
        return room.roomId;
      }
      return undefined;
    },
    timeout,
    () => `no invite${inviter ? ` from ${inviter}` : ""} after ${timeout}s`,
  );
  takenInvites.add(roomId);
  return join({ roomId, timeout });
}

function describeEvent(ev) {
  return {
    eventId: ev.getId(),
    sender: ev.getSender(),
    type: ev.getType(),
    content: ev.getContent(),
    encrypted: ev.isEncrypted(),
  };
}

async function waitMessage({ roomId, bodyContains, sender, timeout = 30 }) {
  const c = requireClient();
  if (!roomId || typeof bodyContains !== "string") throw new Error("wait_message needs roomId and bodyContains");
  const events = () => eventsOf(roomId);
  return waitFor(
    () => {
      for (const ev of events()) {
        if (ev.status !== null || ev.isBeingDecrypted() || ev.isDecryptionFailure()) continue;
        if (sender && ev.getSender() !== sender) continue;
        const body = ev.getContent()?.body;
        if (typeof body === "string" && body.includes(bodyContains)) return describeEvent(ev);
      }
      return undefined;
    },
    timeout,
    () => {
      const all = events();
      const failures = all.filter((ev) => ev.isDecryptionFailure());
      const reasons = [...new Set(failures.map((ev) => ev.decryptionFailureReason))].join(", ");
      return (
        `no matching message in ${roomId} after ${timeout}s: ${all.length} events seen, ` +
        `${all.filter((ev) => ev.isEncrypted()).length} encrypted, ${failures.length} undecryptable` +
        (reasons ? ` (${reasons})` : "")
      );
    },
  );
}

async function sendText({ roomId, body, timeout = 30 }) {
  const c = requireClient();
  if (!roomId || typeof body !== "string") throw new Error("send_text needs roomId and body");
  const encrypted = await roomReady(roomId, timeout);
  const res = await c.sendMessage(roomId, { msgtype: "m.text", body });
  return { eventId: res.event_id, encrypted };
}

async function createDm({ userId, timeout = 30 }) {
  const c = requireClient();
  if (!userId) throw new Error("create_dm needs userId");
  const { room_id: roomId } = await c.createRoom({
    preset: "trusted_private_chat",
    is_direct: true,
    invite: [userId],
    initial_state: [
      { type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } },
    ],
  });
  const direct = c.getAccountData("m.direct")?.getContent() ?? {};
  const rooms = new Set(direct[userId] ?? []);
  rooms.add(roomId);
  await c.setAccountData("m.direct", { ...direct, [userId]: [...rooms] });
  await roomReady(roomId, timeout);
  return { roomId };
}

let stopping = false;

async function stop() {
  stopping = true;
  if (client) {
    client.stopClient();
    client = null;
  }
  return { stopped: true };
}

const handlers = {
  login,
  wait_invite: waitInvite,
  join,
  wait_message: waitMessage,
  send_text: sendText,
  create_dm: createDm,
  stop,
};

function reply(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

async function handle(line) {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    reply({ id: null, error: "not JSON" });
    return;
  }
  const id = msg.id ?? null;
  const handler = handlers[msg.cmd];
  if (!handler) {
    reply({ id, error: `unknown command ${JSON.stringify(msg.cmd)}` });
    return;
  }
  try {
    const result = await handler(msg);
    reply({ id, ...result });
  } catch (err) {
    const text = err?.errcode ? `${err.errcode}: ${err.message}` : String(err?.message ?? err);
    reply({ id, error: text });
  }
  if (msg.cmd === "stop") process.exit(0);
}

const input = readline.createInterface({ input: process.stdin, terminal: false });
input.on("line", (line) => {
  if (line.trim()) handle(line);
});
input.on("close", () => {
  if (!stopping) {
    stop().finally(() => process.exit(0));
  }
});
process.on("unhandledRejection", (err) => log.error("unhandled rejection:", err));
