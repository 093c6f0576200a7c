//! `[[outbound]]`: the origins an algorithm may send HTTP requests to.

use serde::{Deserialize, Serialize};

use crate::sandbox::outbound::Origin;

/// The origins one algorithm (or every algorithm of an owner) may send HTTP
/// requests to (`wasi:http`). Without one, every request fails inside the
/// algorithm with `HTTP-request-denied`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutboundGrant {
    /// `owner/name`, or `owner/*` for every algorithm of the owner.
    pub algorithm: String,
    /// Allowed origins: `http` or `https`, a host and an optional port (the
    /// scheme's default otherwise), e.g. `https://api.example.com`,
    /// `https://*.example.com` (its subdomains, not itself),
    /// `http://127.0.0.1:8080`. A name that resolves to a private,
    /// loopback or link-local address is refused unless an origin names
    /// that IP address itself; the admin listener is never reachable.
    #[serde(default)]
    pub origins: Vec<Origin>,
}

/// Checks `[[outbound]]`: each algorithm is `owner/name` or `owner/*`, named
/// once.
pub(super) fn check_outbound(grants: &[OutboundGrant]) -> Result<(), (String, String)> {
    let mut seen = std::collections::HashSet::new();
    for (i, g) in grants.iter().enumerate() {
        if !is_grantee(&g.algorithm) {
            return Err((
                format!("outbound[{i}].algorithm"),
                format!("\"{}\" is not owner/name or owner/*", g.algorithm),
            ));
        }
        if !seen.insert(g.algorithm.as_str()) {
            return Err((
                format!("outbound[{i}].algorithm"),
                format!(
                    "\"{}\" has another [[outbound]] entry: list all its origins in one",
                    g.algorithm
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `g` is `owner/name` or `owner/*`.
pub fn is_grantee(g: &str) -> bool {
    g.split_once('/').is_some_and(|(owner, name)| {
        super::is_valid_name(owner) && (name == "*" || super::is_valid_name(name))
    })
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    #[test]
    fn outbound_grants_parse_and_bad_ones_are_named() {
        let ok = parse(
            "t.toml",
            "[[outbound]]\nalgorithm = \"ezra/enrich\"\norigins = [\"https://API.example.com:443\", \"http://127.0.0.1:8080\"]\n",
        )
        .unwrap();
        let shown: Vec<String> = ok.outbound[0]
            .origins
            .iter()
            .map(|o| o.to_string())
            .collect();
        assert_eq!(shown, ["https://api.example.com", "http://127.0.0.1:8080"]);

        let e = parse(
            "t.toml",
            "[[outbound]]\nalgorithm = \"ezra/enrich\"\norigins = [\"ftp://x.com\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("outbound[0].origins[0]") && e.contains("http or https"),
            "{e}"
        );

        let twice = "[[outbound]]\nalgorithm = \"ezra/enrich\"\n".repeat(2);
        let e = parse("t.toml", &twice).unwrap_err().to_string();
        assert!(e.contains("outbound[1].algorithm"), "{e}");

        let e = parse("t.toml", "[[outbound]]\nalgorithm = \"enrich\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not owner/name"), "{e}");
    }
}
