//! Invite links from arbitrary text (`InviteLink::parse`, what `claudemesh join` reads).
//! Never a panic; a link that parses renders to a link that parses to the same invite, and
//! rendering is stable from there.
#![no_main]

use claudemesh_schema::invite::InviteLink;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(link) = InviteLink::parse(&text) else {
        return;
    };
    let s = link.to_link();
    let again = InviteLink::parse(&s).unwrap_or_else(|e| panic!("{s:?} does not parse: {e}"));
    assert!(again == link, "{s:?} parses to another invite");
    assert_eq!(again.to_link(), s);
});
