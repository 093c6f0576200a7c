// The benchmarks' JavaScript algorithm, the counterpart of the Rust examples
// echo and redact in one component:
//
// - a payload that is not JSON comes back as it is (B1's identity);
// - a JSON document has the values of "password", "ssn" and "card" replaced
//   with "***" at any depth and comes back as JSON (B3's redact);
// - {"spin_ms": N} computes for N ms and returns nothing, which keeps an
//   instance in flight while the benchmark reads the resident memory.

const SECRET_FIELDS = new Set(["password", "ssn", "card"]);

function redact(value) {
  if (Array.isArray(value)) {
    value.forEach(redact);
  } else if (value !== null && typeof value === "object") {
    for (const key of Object.keys(value)) {
      if (SECRET_FIELDS.has(key)) value[key] = "***";
      else redact(value[key]);
    }
  }
}

export function apply(input, msg) {
  if (input === null) return msg.payload;
  if (typeof input === "object" && "spin_ms" in input) {
    const end = Date.now() + input.spin_ms;
    while (Date.now() < end) {
      // computing
    }
    return null;
  }
  redact(input);
  return input;
}
