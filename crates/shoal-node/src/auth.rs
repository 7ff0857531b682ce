//! The optional shared secret of the peer API (`--cluster-secret`): every
//! peer request carries `x-shoal-ts` (Unix seconds) and `x-shoal-auth`, the
//! hex HMAC-SHA256 of `METHOD \n path \n ts \n body` under the secret. A
//! node with a secret refuses (401) peer requests without a valid MAC or
//! more than [`MAX_SKEW`] seconds off its clock. Without a secret, peer
//! routes trust the network. Gossip (UDP) is not covered: keep it on a
//! network you trust either way.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header with the MAC.
pub const AUTH_HEADER: &str = "x-shoal-auth";
/// The header with the signing time.
pub const TS_HEADER: &str = "x-shoal-ts";
/// How far a request's time may be from this node's, in seconds.
pub const MAX_SKEW: u64 = 60;

fn mac(secret: &[u8], method: &str, path: &str, ts: u64, body: &[u8]) -> Hmac<Sha256> {
    // Any key length is accepted by HMAC.
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any size");
    m.update(method.as_bytes());
    m.update(b"\n");
    m.update(path.as_bytes());
    m.update(b"\n");
    m.update(ts.to_string().as_bytes());
    m.update(b"\n");
    m.update(body);
    m
}

/// The MAC of a request, hex.
pub fn sign(secret: &[u8], method: &str, path: &str, ts: u64, body: &[u8]) -> String {
    hex::encode(mac(secret, method, path, ts, body).finalize().into_bytes())
}

/// Checks a request's MAC (in constant time) and its age.
pub fn verify(
    secret: &[u8],
    method: &str,
    path: &str,
    ts: Option<&str>,
    auth: Option<&str>,
    body: &[u8],
    now: u64,
) -> Result<(), &'static str> {
    let ts: u64 = ts
        .and_then(|t| t.parse().ok())
        .ok_or("missing or bad x-shoal-ts")?;
    if ts.abs_diff(now) > MAX_SKEW {
        return Err("x-shoal-ts is too far from this node's clock");
    }
    let given = auth
        .and_then(|a| hex::decode(a).ok())
        .ok_or("missing or bad x-shoal-auth")?;
    mac(secret, method, path, ts, body)
        .verify_slice(&given)
        .map_err(|_| "x-shoal-auth does not match: is --cluster-secret the same on every node?")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let mac = sign(b"s3cret", "POST", "/_shoal/v1/publish", 100, b"body");
        assert_eq!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/publish",
                Some("100"),
                Some(&mac),
                b"body",
                110
            ),
            Ok(())
        );
        assert!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/publish",
                Some("100"),
                Some(&mac),
                b"bodY",
                110
            )
            .is_err()
        );
        assert!(
            verify(
                b"other",
                "POST",
                "/_shoal/v1/publish",
                Some("100"),
                Some(&mac),
                b"body",
                110
            )
            .is_err()
        );
        assert!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/digest",
                Some("100"),
                Some(&mac),
                b"body",
                110
            )
            .is_err()
        );
        assert!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/publish",
                Some("100"),
                Some(&mac),
                b"body",
                1000
            )
            .is_err()
        );
        assert!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/publish",
                None,
                Some(&mac),
                b"body",
                100
            )
            .is_err()
        );
        assert!(
            verify(
                b"s3cret",
                "POST",
                "/_shoal/v1/publish",
                Some("100"),
                None,
                b"body",
                100
            )
            .is_err()
        );
    }
}
