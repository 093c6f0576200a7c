// Does what its input's "do" says, so one component (compiled once per
// router) covers the behaviours the JavaScript SDK's tests check:
//
// - "retry": on the first attempt throws Retry(input.delay_ms); later returns
//   {"attempt": N}.
// - "env": returns env(), the algorithm's secrets.
// - "typeerror": calls what is not a function (an uncaught TypeError).
// - "bigint": returns an output JSON cannot encode (a BigInt).

import { Reject, Retry, env } from "eventflow";

export function apply(input, message) {
  switch (input.do) {
    case "retry":
      if (message.attempt === 1) throw new Retry(input.delay_ms, "asked to retry");
      return { attempt: message.attempt };
    case "env":
      return env();
    case "typeerror":
      return input.missing();
    case "bigint":
      return { n: 1n };
    default:
      throw new Reject(`unknown action ${input.do}`);
  }
}
