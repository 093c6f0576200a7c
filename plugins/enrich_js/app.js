// Enriches each event with what a REST service knows about it: takes
// {"customer": "<id>", ...}, asks GET <ENRICH_URL>/<id>, and sends the event
// with the service's JSON answer under "customer_record" to the flow's output
// topic. The JavaScript twin of plugins/enrich_py.
//
// ENRICH_URL is a secret of the algorithm (`eventflow secrets set
// ezra/enrich_js ENRICH_URL https://crm.example.com/customers`), and the
// router lets the request through only if the algorithm's outbound grant
// lists that origin (`eventflow outbound allow ezra/enrich_js
// https://crm.example.com`).
//
// An unknown customer (404) goes to the dead-letter topic; a service that
// answers 5xx is retried later. A request that fails without an answer is
// retried too: StarlingMonkey's `fetch` rejects every such failure with the
// same TypeError ("NetworkError when attempting to fetch resource"), so a
// request the router refused looks like an unreachable service from here;
// the router's log and `eventflow_outbound_denied_total` say which it was.

import { Reject, Retry, env, log } from "eventflow";

export async function apply(input) {
  const base = env().ENRICH_URL;
  if (!base) throw new Reject("the secret ENRICH_URL is not set");
  const customer = input?.customer;
  if (typeof customer !== "string" || customer === "") {
    throw new Reject('payload needs a string field "customer"');
  }
  // The id is one path segment: "../x", "?" or "#" stay inside it.
  const url = `${base.replace(/\/+$/, "")}/${encodeURIComponent(customer)}`;
  let reply;
  try {
    reply = await fetch(url, { headers: { accept: "application/json" } });
  } catch (e) {
    throw new Retry(5_000, `enrichment service unreachable or refused by the router: ${e}`);
  }
  if (reply.status === 404) throw new Reject(`unknown customer '${customer}'`);
  if (reply.status !== 200) throw new Retry(5_000, `enrichment service answered ${reply.status}`);
  const body = await reply.text();
  // The URL holds the ENRICH_URL secret: log the customer only.
  log(`enriched customer ${customer}`);
  return { ...input, customer_record: JSON.parse(body) };
}
