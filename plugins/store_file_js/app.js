// The quickstart algorithm in JavaScript: takes {"filename": "...", "data":
// "..."} and writes data to data://ezra/TestingEventFlow/<filename>.
//
// A failed write that may succeed later (a full disk, a used-up write quota)
// is retried; one that never will (a bad file name) goes to the dead-letter
// topic.

import { DataError, Reject, Retry, data, log } from "eventflow";

const COLLECTION = "data://ezra/TestingEventFlow";

export function apply(input) {
  const { filename, data: contents } = input ?? {};
  if (typeof filename !== "string" || typeof contents !== "string") {
    throw new Reject('payload needs string fields "filename" and "data"');
  }
  const uri = `${COLLECTION}/${filename}`;
  try {
    data.put(uri, contents);
  } catch (e) {
    if (!(e instanceof DataError)) throw e;
    if (e.kind === "io" || e.kind === "quota-exceeded") throw new Retry(5000, `cannot write ${e.message}`);
    throw new Reject(`cannot write ${e.message}`);
  }
  log(`stored ${contents.length} bytes in ${uri}`);
}
