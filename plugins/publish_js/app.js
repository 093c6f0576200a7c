// Forwards each message, payload and headers, to a topic on another broker
// connection: how an algorithm sends to a Service Bus queue or an Event Hub.
//
// The target is `connection:topic` as configured in the router; the secret
// FORWARD_TOPIC overrides the default. The flow needs a publish grant there
// (`publishers = ["ezra/publish_js"]` on that topic).

import { env, publish } from "eventflow";

const DEFAULT_TOPIC = "outbound:forwarded";

export function apply(input, message) {
  const topic = env().FORWARD_TOPIC ?? DEFAULT_TOPIC;
  publish(topic, message.payload, [...message.headers, ["forwarded-from", message.topic]]);
}
