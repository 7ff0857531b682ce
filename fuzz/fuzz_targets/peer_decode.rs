//! Every peer message type decoded from arbitrary bytes: never a panic,
//! and what is accepted is within bounds and encodes back to itself.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_core::validate::Validate;
use shoal_core::wire::{
    self, DigestReply, DigestRequest, Invalidate, LocalQuery, LocalReply, LookupReply, Pong,
    Publish, PublishAck, ResyncRequest,
};

/// The receiver's clock: fixed, so that a run is reproducible and the
/// seeds' incarnations stay within bounds (the seeds use it too).
const NOW_MS: u64 = 1_750_000_000_000;

fn check<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + Validate + PartialEq + std::fmt::Debug,
{
    if let Ok(message) = wire::decode::<T>(data, NOW_MS) {
        assert!(message.validate(NOW_MS).is_ok());
        let again: T = wire::decode(&wire::encode(&message), NOW_MS).expect("re-decodes");
        assert_eq!(again, message);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<Publish>(data);
    check::<PublishAck>(data);
    check::<DigestRequest>(data);
    check::<DigestReply>(data);
    check::<LookupReply>(data);
    check::<Invalidate>(data);
    check::<ResyncRequest>(data);
    check::<LocalQuery>(data);
    check::<LocalReply>(data);
    check::<Pong>(data);
    check::<shoal_core::jobs::JobRequest>(data);
    check::<shoal_core::jobs::JobReply>(data);
});
