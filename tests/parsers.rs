//! Every parser of outside input gets random and mutated input: SAP packets and SDP text
//! from the network, smcroute.conf and site.toml from operators. None may panic; what
//! parses keeps its promises (a SAP packet re-encodes to itself, a site's errors are
//! placed inside the file and capped). Each property runs a few seconds at most, in every
//! `cargo test`; the cargo-fuzz target in fuzz/ is for longer runs by hand (nightly).

use std::net::{IpAddr, SocketAddr};

use appliance::sap::{SapPacket, Sdp};
use appliance::site::{self, MAX_ERRORS};
use proptest::prelude::*;

/// A valid SAP announcement of the translator's SDP, to mutate.
fn sample_sap() -> Vec<u8> {
    let source: IpAddr = "192.0.2.1".parse().unwrap();
    let sender: SocketAddr = "198.51.100.7:31380".parse().unwrap();
    let sdp = Sdp::translated(source, sender, "232.1.2.3".parse().unwrap(), 9002, 32, 7);
    SapPacket::sdp(false, 0x1234, source, &sdp.render()).encode()
}

fn sample_sdp() -> String {
    let source: IpAddr = "2001:db8::1".parse().unwrap();
    let sender: SocketAddr = "[2001:db8::7]:31380".parse().unwrap();
    Sdp::translated(source, sender, "ff3e::8000:1".parse().unwrap(), 9002, 32, 7).render()
}

/// Mutations of a byte string: overwrite, insert, delete, truncate.
#[derive(Debug, Clone)]
enum Edit {
    Set(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    prop::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
            (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
                .prop_map(|(i, b)| Edit::Insert(i, b)),
            (any::<usize>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
            any::<usize>().prop_map(Edit::Truncate),
        ],
        1..6,
    )
}

fn apply(mut data: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        let len = data.len().max(1);
        match e {
            Edit::Set(i, b) => {
                if !data.is_empty() {
                    data[i % len] = *b;
                }
            }
            Edit::Insert(i, bytes) => {
                let at = i % (data.len() + 1);
                data.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) => {
                let at = i % len;
                let end = (at + n).min(data.len());
                if at < end {
                    data.drain(at..end);
                }
            }
            Edit::Truncate(i) => data.truncate(i % len),
        }
    }
    data
}

fn check_sap(data: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(p) = SapPacket::parse(data) {
        let again = SapPacket::parse(&p.encode());
        prop_assert_eq!(again.as_ref().ok(), Some(&p), "an encoded packet parses");
        let _ = Sdp::parse(&String::from_utf8_lossy(&p.payload));
    }
    let _ = Sdp::parse(&String::from_utf8_lossy(data));
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn sap_random_bytes(data in prop::collection::vec(any::<u8>(), 0..600)) {
        check_sap(&data)?;
    }

    #[test]
    fn sap_mutated_announcements(e in edits()) {
        check_sap(&apply(sample_sap(), &e))?;
    }

    #[test]
    fn sdp_random_text(text in "(\\PC{0,40}\r?\n){0,12}") {
        let _ = Sdp::parse(&text);
    }

    #[test]
    fn sdp_mutated(e in edits()) {
        let text = String::from_utf8_lossy(&apply(sample_sdp().into_bytes(), &e)).into_owned();
        if let Ok(sdp) = Sdp::parse(&text) {
            // What parses renders to text that parses again.
            prop_assert!(Sdp::parse(&sdp.render()).is_ok(), "{}", sdp.render());
        }
    }
}

/// Lines of smcroute.conf from its own words and some noise.
fn smcroute_line() -> impl Strategy<Value = String> {
    let word = prop_oneof![
        Just("mroute".to_string()),
        Just("mgroup".to_string()),
        Just("phyint".to_string()),
        Just("from".to_string()),
        Just("to".to_string()),
        Just("group".to_string()),
        Just("source".to_string()),
        Just("enable".to_string()),
        Just("disable".to_string()),
        Just("ttl-threshold".to_string()),
        Just("mrdisc".to_string()),
        Just("#".to_string()),
        Just("\\".to_string()),
        Just("eth0".to_string()),
        Just("br-a".to_string()),
        Just("239.1.2.3".to_string()),
        Just("239.0.0.0/8".to_string()),
        Just("225.1.0.0/30".to_string()),
        Just("ff3e::1".to_string()),
        Just("ff3e::/120".to_string()),
        Just("10.0.0.1".to_string()),
        Just("::ffff:10.0.0.1".to_string()),
        Just("300".to_string()),
        Just("-1".to_string()),
        Just("/33".to_string()),
        "[a-z0-9./:-]{1,20}",
        "\\PC{1,10}",
    ];
    prop::collection::vec(word, 0..12).prop_map(|w| w.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// smcroute.conf: never a panic; an error names the file and a line of it.
    #[test]
    fn smcroute_conf_random_lines(lines in prop::collection::vec(smcroute_line(), 0..20)) {
        let dir = tempdir();
        let file = dir.join("smcroute.conf");
        let text = lines.join("\n");
        std::fs::write(&file, &text).unwrap();
        let result = appliance::mroute::smcroute::load(&file, dir.join("state"));
        if let Err(errors) = result {
            for e in errors {
                let s = e.to_string();
                prop_assert!(s.starts_with(&file.display().to_string()), "{}", s);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "appliance-parsers-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn example_site() -> Vec<u8> {
    std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/site.toml")).unwrap()
}

/// What `check` promises about any file: no panic, every error inside the file (a line
/// of it, or 0:0 for none), at most `MAX_ERRORS` printed, and one line per error.
fn check_site(bytes: &[u8]) -> Result<(), TestCaseError> {
    let lines = bytes.split(|b| *b == b'\n').count();
    if let Err(e) = site::parse_bytes("site.toml", bytes) {
        prop_assert!(e.total() > 0);
        prop_assert!(e.diags.len() <= MAX_ERRORS);
        for d in &e.diags {
            prop_assert!(d.line >= 1 && d.line <= lines, "{} of {} lines", d, lines);
            prop_assert!(d.col >= 1, "{}", d);
            prop_assert!(!d.to_string().contains('\n'), "{:?}", d);
        }
        let printed = e.to_string().lines().count();
        prop_assert_eq!(printed, e.diags.len() + usize::from(e.omitted > 0));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn site_mutated_example(e in edits()) {
        check_site(&apply(example_site(), &e))?;
    }

    #[test]
    fn site_random_bytes(data in prop::collection::vec(any::<u8>(), 0..400)) {
        check_site(&data)?;
    }

    #[test]
    fn site_random_toml_lines(
        lines in prop::collection::vec("(\\[\\[?[a-z.]{1,12}\\]\\]?|[a-z_]{1,10} = (\"\\PC{0,12}\"|-?[0-9]{1,25}|\\[\"[a-z0-9:./-]{0,16}\"\\]|true|\\{ [a-z]{1,5} = 1 \\}))",
            0..30)
    ) {
        check_site(lines.join("\n").as_bytes())?;
    }
}
