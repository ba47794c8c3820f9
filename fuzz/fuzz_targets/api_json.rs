//! The management API's JSON bodies: a function's config (deploy), a trigger, an alias
//! target; and the strings inside them (destinations, storage grants, durations). Any
//! body: parsed or refused, never a panic. What parses and validates is written back
//! (as the API answers it) and reads back equal and still valid.
#![no_main]

use cirrus_api::grant::Grant;
use cirrus_api::spec::Destination;
use cirrus_api::{AliasTarget, FunctionConfig, TriggerSpec};
use libfuzzer_sys::fuzz_target;

fn round_trips<T>(value: &T) -> T
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    let json = serde_json::to_vec(value).expect("a parsed value serialises");
    serde_json::from_slice(&json).expect("a serialised value parses")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<FunctionConfig>(data) {
        if config.validate().is_ok() {
            let again = round_trips(&config);
            assert_eq!(again, config);
            again.validate().expect("still valid");
        }
    }
    if let Ok(trigger) = serde_json::from_slice::<TriggerSpec>(data) {
        let valid = trigger.validate().is_ok();
        let again = round_trips(&trigger);
        assert_eq!(again, trigger);
        assert_eq!(again.validate().is_ok(), valid);
    }
    if let Ok(target) = serde_json::from_slice::<AliasTarget>(data) {
        assert_eq!(round_trips(&target).version, target.version);
    }
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(destination) = text.parse::<Destination>() {
        assert_eq!(
            destination.to_string().parse::<Destination>(),
            Ok(destination)
        );
    }
    if let Ok(grant) = text.parse::<Grant>() {
        assert_eq!(grant.to_string().parse::<Grant>(), Ok(grant));
    }
    if let Ok(duration) = cirrus_api::duration::parse(text) {
        let printed = cirrus_api::duration::format(duration);
        assert_eq!(
            cirrus_api::duration::parse(&printed),
            Ok(duration),
            "{printed}"
        );
    }
});
