// {{owner}}/{{name}}: stores {"filename", "data"} in
// data://{{owner}}/{{name}}/<filename> and returns where it went.

import { DataError, Reject, Retry, data, log } from "eventflow";

export function apply(input) {
  const { filename, data: contents } = input ?? {};
  if (typeof filename !== "string" || typeof contents !== "string") {
    throw new Reject('payload needs string fields "filename" and "data"');
  }
  const uri = `data://{{owner}}/{{name}}/${filename}`;
  try {
    data.put(uri, contents);
  } catch (e) {
    if (!(e instanceof DataError)) throw e;
    // May succeed later (a full disk, the write quota): retry; else reject.
    if (e.kind === "io" || e.kind === "quota-exceeded") throw new Retry(5000, `cannot write ${e.message}`);
    throw new Reject(`cannot write ${e.message}`);
  }
  log(`stored ${contents.length} bytes in ${uri}`);
  return { stored: uri };
}
