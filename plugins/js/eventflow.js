// Write Eventflow algorithms in JavaScript.
//
// An algorithm is an ES module `app.js` exporting `apply`:
//
//     import { data } from "eventflow";
//     export function apply(input) {
//       data.put(`data://ezra/files/${input.filename}`, input.data);
//     }
//
// `apply` receives the message's payload decoded from JSON. Declare a second
// parameter to receive the raw message too ({id, topic, payload, headers,
// attempt}); then a payload that is not JSON arrives as `input = null`
// instead of being rejected. What it returns goes to the flow's output
// topic: `undefined`/`null` publishes nothing, a Uint8Array or a string is
// sent as it is, anything else as JSON.
//
// Throw `new Retry(delayMs, reason)` to have the message redelivered after a
// delay, `new Reject(reason)` to send it to the dead-letter topic at once. Any
// other exception that escapes `apply` rejects the message with its stack as
// the reason. `env()` returns the algorithm's secrets.
//
// A flow with `batch` hands an algorithm many messages in one call, on one
// instance. By default each goes to `apply`. Export `applyBatch(inputs)` (or
// `applyBatch(inputs, messages)`) to see them at once: it returns an array
// with one result per input, in order, each what `apply` would return, or an
// Error (`Retry`, `Reject`, any other) that fails that message alone (or a
// promise of such an array). An exception it throws traps the call: every
// message of the batch fails as one attempt and is then retried alone. An
// app that exports only `applyBatch` gets it for `apply` too, as a batch of
// one. What an algorithm publishes during a batch belongs to the batch: it
// is sent if any message of the batch succeeds (see the README's Batches).
//
// `build.mjs` bundles the module with this SDK and builds the component
// (`cargo xtask plugins` does this for the examples).

import * as wdata from "eventflow:algorithm/data@0.1.0";
import { send } from "eventflow:algorithm/publish@0.1.0";
import { log as wlog } from "eventflow:algorithm/log@0.1.0";
import { getEnvironment } from "wasi:cli/environment@0.2.0";

/** The most of a stack trace that goes into a failure's reason, in characters. */
export const MAX_STACK_CHARS = 3000;

/** Redeliver the message, no sooner than `delayMs` milliseconds from now. */
export class Retry extends Error {
  constructor(delayMs, reason) {
    super(reason);
    this.name = "Retry";
    this.delayMs = delayMs;
    this.reason = String(reason);
  }
}

/** Never try the message again: send it to the dead-letter topic. */
export class Reject extends Error {
  constructor(reason) {
    super(reason);
    this.name = "Reject";
    this.reason = String(reason);
  }
}

/**
 * A data call failed. `kind` is "invalid-uri", "access-denied", "not-found",
 * "quota-exceeded" or "io"; `uri` names the file or directory involved.
 */
export class DataError extends Error {
  constructor(uri, kind, detail) {
    super(`${uri}: ${kind}${detail ? `: ${detail}` : ""}`);
    this.name = "DataError";
    this.uri = uri;
    this.kind = kind;
  }
}

/** The router refused a publish; `kind` is as in wit/algorithm.wit. */
export class PublishError extends Error {
  constructor(topic, kind) {
    super(`cannot publish to ${topic}: ${kind}`);
    this.name = "PublishError";
    this.topic = topic;
    this.kind = kind;
  }
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A Uint8Array as it is, a string as UTF-8, anything else as JSON. */
export function toBytes(value) {
  if (value instanceof Uint8Array) return value;
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (typeof value === "string") return encoder.encode(value);
  return encoder.encode(JSON.stringify(value));
}

// A failed import throws its error value, wrapped or not depending on the
// bindings generator.
function errorValue(e) {
  return e && typeof e === "object" && "payload" in e ? e.payload : e;
}

function dataCall(uri, call) {
  try {
    return call();
  } catch (e) {
    const v = errorValue(e);
    if (v && typeof v === "object" && typeof v.tag === "string") {
      throw new DataError(uri, v.tag, v.val);
    }
    throw e;
  }
}

/** Hosted data collections, addressed as `data://owner/collection/path`. */
export const data = {
  /** The whole file, as a Uint8Array. */
  get: (uri) => dataCall(uri, () => wdata.get(uri)),
  /** The whole file, decoded as UTF-8. */
  getText: (uri) => decoder.decode(data.get(uri)),
  /** Writes a whole file (bytes, text, or anything else as JSON). */
  put: (uri, contents) => dataCall(uri, () => wdata.put(uri, toBytes(contents))),
  /** The entries directly under a directory; directories end with `/`. */
  list: (uri) => dataCall(uri, () => wdata.list(uri)),
  /** Deletes a file; a missing one is a DataError of kind "not-found". */
  delete: (uri) => dataCall(uri, () => wdata.delete(uri)),
};

/**
 * Queues a message for `topic` (`name`, or `connection:name` for a topic of
 * another broker connection); sent only if `apply` succeeds (in a batch:
 * if any of its messages does). `headers` is an object or a list of
 * [key, value] pairs.
 */
export function publish(topic, payload, headers = []) {
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  try {
    send(topic, toBytes(payload), pairs.map(([k, v]) => [String(k), String(v)]));
  } catch (e) {
    const v = errorValue(e);
    throw new PublishError(topic, typeof v === "string" ? v : (v && v.tag) || "refused");
  }
}

/**
 * The algorithm's secrets, as an object of strings (the WASI environment:
 * the router passes nothing else). Read it in `apply`: at build time it is
 * empty.
 */
export function env() {
  return Object.fromEntries(getEnvironment());
}

/** Writes a line to the router's log: level "trace", "debug", "info", "warn" or "error". */
export function log(message, level = "info") {
  wlog(level, String(message));
}

function uncaught(e) {
  let text = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack || ""}` : String(e);
  text = text.trimEnd();
  if (text.length > MAX_STACK_CHARS) text = `${text.slice(0, MAX_STACK_CHARS)}...`;
  return `uncaught ${text}`;
}

function decode(payload, wantsMessage) {
  try {
    return JSON.parse(decoder.decode(payload));
  } catch (e) {
    if (wantsMessage) return null;
    throw new Reject(`payload is not JSON: ${e.message}`);
  }
}

const output = (out) => (out === undefined || out === null ? undefined : toBytes(out));

/** The WIT failure for an error thrown (or returned) for a message. */
const failure = (e) => {
  if (e instanceof Retry) {
    return { tag: "retry", val: { delayMs: BigInt(e.delayMs), reason: e.reason } };
  }
  if (e instanceof Reject) return { tag: "reject", val: e.reason };
  return { tag: "reject", val: uncaught(e) };
};

const isPromise = (v) => v && typeof v.then === "function";

/**
 * Wraps the author's `apply` and `applyBatch` (either may be undefined, not
 * both) as the component's exports `apply` and `applyBatch`.
 */
export function handleBoth(apply, applyBatch) {
  const batch = applyBatch ? handleBatch(applyBatch) : null;
  const one = apply
    ? handle(apply)
    : (msg) => {
        const settle = ([o]) => {
          if (o.tag === "failed") throw o.val;
          return o.val;
        };
        const outcomes = batch([msg]);
        return isPromise(outcomes) ? outcomes.then(settle) : settle(outcomes);
      };
  const each = (msgs) => {
    const outcomes = msgs.map((msg) => {
      try {
        const out = one(msg);
        if (isPromise(out)) {
          return out.then(
            (val) => ({ tag: "output", val }),
            (val) => ({ tag: "failed", val }),
          );
        }
        return { tag: "output", val: out };
      } catch (val) {
        return { tag: "failed", val };
      }
    });
    return outcomes.some(isPromise) ? Promise.all(outcomes) : outcomes;
  };
  return { apply: one, applyBatch: batch || each };
}

/** Wraps the author's `applyBatch` as the component's `apply-batch`. */
function handleBatch(applyBatch) {
  const wantsMessages = applyBatch.length >= 2;
  return (msgs) => {
    const outcomes = new Array(msgs.length).fill(null);
    const called = [];
    const inputs = [];
    msgs.forEach((msg, i) => {
      try {
        inputs.push(decode(msg.payload, wantsMessages));
        called.push(i);
      } catch (e) {
        outcomes[i] = { tag: "failed", val: failure(e) };
      }
    });
    // What applyBatch throws escapes the export: the call traps, every
    // message of the batch fails as one attempt, and each is retried alone.
    const fill = (results) => {
      if (!Array.isArray(results) || results.length !== called.length) {
        const n = Array.isArray(results) ? results.length : "no array of";
        throw new Error(`applyBatch returned ${n} results for ${called.length} messages`);
      }
      called.forEach((i, k) => {
        const r = results[k];
        if (r instanceof Error) {
          outcomes[i] = { tag: "failed", val: failure(r) };
        } else {
          try {
            outcomes[i] = { tag: "output", val: output(r) };
          } catch (e) {
            outcomes[i] = { tag: "failed", val: failure(e) };
          }
        }
      });
      return outcomes;
    };
    const picked = called.map((i) => msgs[i]);
    const results = wantsMessages ? applyBatch(inputs, picked) : applyBatch(inputs);
    return isPromise(results) ? Promise.resolve(results).then(fill) : fill(results);
  };
}

/** Wraps the author's `apply` as the component's export. */
export function handle(apply) {
  const wantsMessage = apply.length >= 2;
  return (msg) => {
    let out;
    try {
      const input = decode(msg.payload, wantsMessage);
      out = wantsMessage ? apply(input, msg) : apply(input);
      // An `async function apply` (one that awaits `fetch`, say): the
      // component runs the event loop until the promise settles. An output
      // that cannot be encoded fails like a throw, either way.
      if (out && typeof out.then === "function") {
        return Promise.resolve(out)
          .then(output)
          .catch((e) => {
            throw failure(e);
          });
      }
      return output(out);
    } catch (e) {
      throw failure(e);
    }
  };
}
