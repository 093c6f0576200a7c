// Does what its input's "do" says, so one component (compiled once per
// router) covers the behaviours the JavaScript SDK's tests check:
//
// - "retry": on the first attempt throws Retry(input.delay_ms); later returns
//   {"attempt": N}.
// - "env": returns env(), the algorithm's secrets.
// - "typeerror": calls what is not a function (an uncaught TypeError).
// - "bigint": returns an output JSON cannot encode (a BigInt).
//
// With a flow's `batch`, `applyBatch` sees the batch: "batch" returns
// {"n": input.n, "batch": the number of messages in the call}, and
// "batch-reject" fails that message alone (an Error returned, not thrown);
// anything else runs as `apply` would.

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

export function applyBatch(inputs, messages) {
  return inputs.map((input, i) => {
    switch (input && input.do) {
      case "batch":
        return { n: input.n, batch: inputs.length, flow: input.flow };
      case "batch-reject":
        return new Reject(`asked to reject ${input.n} in a batch`);
      default:
        try {
          return apply(input, messages[i]);
        } catch (e) {
          return e;
        }
    }
  });
}
