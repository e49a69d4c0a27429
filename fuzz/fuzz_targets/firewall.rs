//! The firewall's streaming framer and rules on every channel type and
//! direction, both header kinds, several profiles and every mode. Byte 0
//! picks the channel type (1..=11 and one unknown), byte 1 the direction,
//! header kind, mode and profile, byte 2 seeds the read segmentation; the
//! rest is the stream. Invariants: no panic; feeding the stream in random
//! pieces produces exactly what feeding it whole produces (bytes written,
//! compensations, reports, close); `Pass` outputs are slices of the input;
//! mode off reports nothing but the fixed rules.
#![no_main]

use std::sync::Arc;
use std::time::Duration;

use kerbside_spice::ChannelType;
use kerbside_spice::firewall::{
    ChannelAllow, ChannelFilters, DirectionFilter, Injection, Mode, NamePattern, Output,
    PortPolicy, Profile, RateLimit, Report, Rule,
};
use kerbside_spice::msg::HeaderKind;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Default, PartialEq)]
struct Seen {
    written: Vec<u8>,
    injected: Vec<Injection>,
    reports: Vec<Report>,
    closed: Option<Rule>,
    error: bool,
}

fn run(filter: &mut DirectionFilter, reads: &[&[u8]]) -> Seen {
    let mut seen = Seen::default();
    let mut out = Vec::new();
    for read in reads {
        out.clear();
        // A fixed clock for both runs: rate decisions then depend on counts only.
        if filter.feed(read, Duration::ZERO, &mut out).is_err() {
            // Outputs before the error are not defined to match; stop here.
            return Seen {
                error: true,
                ..Seen::default()
            };
        }
        for o in out.drain(..) {
            match o {
                Output::Pass(b) => {
                    let start = b.as_ptr() as usize;
                    let base = read.as_ptr() as usize;
                    assert!(start >= base && start + b.len() <= base + read.len());
                    seen.written.extend_from_slice(b);
                }
                Output::Send(b) => seen.written.extend(b),
                Output::Inject(i) => seen.injected.push(i),
                Output::Report(r) => seen.reports.push(r),
                Output::Close(rule) => {
                    assert!(seen.closed.is_none());
                    seen.closed = Some(rule);
                }
                Output::Message { .. } | Output::MainInit { .. } => {}
            }
        }
    }
    seen
}

fn profile(selector: u8) -> Profile {
    match selector % 4 {
        0 => Profile::default_profile(),
        1 => Profile::most_restrictive(),
        2 => Profile {
            name: "no-usb-no-clipboard".into(),
            channels: ChannelAllow {
                usbredir: false,
                ..ChannelAllow::ALL
            },
            clipboard_to_guest: false,
            clipboard_to_client: false,
            ..Profile::default_profile()
        },
        _ => Profile {
            name: "limited".into(),
            ports: PortPolicy {
                default_allow: false,
                allow: vec![NamePattern::new("org.qemu.console.*")],
                deny: vec![],
            },
            file_transfer: false,
            rate_limits: vec![
                (
                    ChannelType::Inputs,
                    RateLimit {
                        per_second: 10,
                        burst: 3,
                    },
                ),
                (
                    ChannelType::Usbredir,
                    RateLimit {
                        per_second: 1,
                        burst: 1,
                    },
                ),
            ],
            ..Profile::default_profile()
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let [channel, flags, seed, stream @ ..] = data else {
        return;
    };
    let channel = ChannelType::from_u8(match channel % 12 {
        0 => 42,
        c => c,
    });
    let kind = if flags & 2 == 0 {
        HeaderKind::Mini
    } else {
        HeaderKind::Full
    };
    let mode = match (flags & 4 != 0, flags & 0x80 != 0) {
        (false, false) => Mode::Enforce,
        (true, false) => Mode::Warn,
        (_, true) => Mode::Off,
    };
    let profile = Arc::new(profile(flags >> 3));
    let pick = |f: &mut ChannelFilters| {
        if flags & 1 == 0 {
            std::mem::replace(
                &mut f.client_to_server,
                ChannelFilters::new(Arc::clone(&profile), mode, channel, kind).client_to_server,
            )
        } else {
            std::mem::replace(
                &mut f.server_to_client,
                ChannelFilters::new(Arc::clone(&profile), mode, channel, kind).server_to_client,
            )
        }
    };
    let mut whole_pair = ChannelFilters::new(Arc::clone(&profile), mode, channel, kind);
    let mut whole_filter = pick(&mut whole_pair);
    let whole = run(&mut whole_filter, &[stream]);

    // Deterministic pseudo-random cuts from the seed byte.
    let mut cuts = Vec::new();
    let mut pos = 0;
    let mut state = u32::from(*seed) | 1;
    while pos < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = 1 + (state as usize % 64).min(stream.len() - pos - 1);
        cuts.push(&stream[pos..pos + n]);
        pos += n;
    }
    let mut cut_pair = ChannelFilters::new(Arc::clone(&profile), mode, channel, kind);
    let mut cut_filter = pick(&mut cut_pair);
    let pieces = run(&mut cut_filter, &cuts);
    if whole.error || pieces.error {
        assert_eq!(whole.error, pieces.error);
        return;
    }
    assert_eq!(whole, pieces);
    if mode == Mode::Off {
        // Mode off reports (and applies) only the fixed rules.
        assert!(
            whole
                .reports
                .iter()
                .all(|r| matches!(r.rule, Rule::PortMonitor | Rule::Migration)),
            "{:?}",
            whole.reports
        );
    }
    // Injections encode for the other direction without panicking.
    for injection in &whole.injected {
        let bytes = whole_pair.server_to_client.encode_injection(injection);
        assert!(bytes.len() >= kind.len());
    }
    let _ = whole_filter.finish();
    let _ = whole_filter.summary();
});
