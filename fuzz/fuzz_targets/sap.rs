//! SAP packets and SDP text from the network never make the parsers panic, and whatever
//! parses re-encodes.
#![no_main]

use appliance::sap::{SapPacket, Sdp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = SapPacket::parse(data) {
        let again = SapPacket::parse(&p.encode()).expect("an encoded packet parses");
        assert_eq!(again, p);
        let _ = Sdp::parse(&String::from_utf8_lossy(&p.payload));
    }
    let _ = Sdp::parse(&String::from_utf8_lossy(data));
});
