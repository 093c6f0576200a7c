"""Enriches each event with what a REST service knows about it: takes
{"customer": "<id>", ...}, asks GET <ENRICH_URL>/<id>, and sends the event
with the service's JSON answer under "customer_record" to the flow's output
topic.

ENRICH_URL is a secret of the algorithm (`eventflow secrets set ezra/enrich_py
ENRICH_URL https://crm.example.com/customers`), and the router lets the
request through only if the algorithm's outbound grant lists that origin
(`eventflow outbound allow ezra/enrich_py https://crm.example.com`).

An unknown customer (404) goes to the dead-letter topic; a service that is
down, slow or answering 5xx is retried later; a request the router refuses
(the origin is not granted) is rejected with the router's reason.
"""

import os
from urllib.parse import quote

from eventflow import Reject, Retry, log
from eventflow.http import HttpError, fetch


def apply(input):
    base = os.environ.get("ENRICH_URL")
    if not base:
        raise Reject("the secret ENRICH_URL is not set")
    customer = input.get("customer")
    if not isinstance(customer, str) or not customer:
        raise Reject('payload needs a string field "customer"')
    # The id is one path segment: "../x", "?" or "#" stay inside it.
    url = f"{base.rstrip('/')}/{quote(customer, safe='')}"
    try:
        reply = fetch(url, headers=[("accept", "application/json")])
    except HttpError as e:
        if e.code == "HTTP-request-denied" or e.code == "destination-IP-prohibited":
            raise Reject(f"the router refused the request: {e}")
        raise Retry(5_000, f"enrichment service unreachable: {e}")
    if reply.status == 404:
        raise Reject(f"unknown customer {customer!r}")
    if reply.status != 200:
        raise Retry(5_000, f"enrichment service answered {reply.status}")
    # The URL holds the ENRICH_URL secret: log the customer only.
    log(f"enriched customer {customer!r} with {len(reply.body)} bytes")
    return {**input, "customer_record": reply.json()}
