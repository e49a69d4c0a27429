//! `kerbside-bench`: runs one SPICE workload four ways in one run — straight to a scripted
//! hypervisor (plain TCP, the relay-less path), through HAProxy terminating TLS (the dumb
//! relay), through kerbside (`kerbside --component proxy`, SQLite, TLS on the client leg)
//! with its SPICE firewall and the default profile, and through a second kerbside with
//! `[firewall] mode = off` (the opaque relay the firewall's cost is measured against) — and
//! writes the figures as a Markdown report.
//!
//! `kerbside-bench static-screen` instead serves one scripted hypervisor whose screen never
//! changes, for tests with real SPICE clients (a relay that strands display messages in a
//! buffer shows no picture against it, where a streaming server would hide the fault).

mod client;
mod hypervisor;
mod procs;
mod proto;
mod report;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use kerbside_tests::pki::TestPki;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_rustls::TlsConnector;

use crate::client::{Session, Target, open_session};
use crate::hypervisor::Hypervisor;
use crate::procs::{Kerbside, Relay, settle, usage};
use crate::report::{Report, Series};

/// The hypervisor's ticket (what direct and relayed clients send).
const TICKET: &str = "bench-ticket";

/// Benchmarks kerbside against a direct connection and a TLS relay.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Args {
    /// The kerbside binary (default: next to this one).
    #[arg(long)]
    kerbside: Option<PathBuf>,
    /// Sessions opened one after another for the link latency figures (per configuration).
    /// With 40 the medians of two identical kerbside processes still differed by up to 15 %.
    #[arg(long, default_value_t = 120)]
    reps: usize,
    /// Pings measured on the main channel (per configuration).
    #[arg(long, default_value_t = 500)]
    pings: u32,
    /// MiB each display channel streams per throughput run.
    #[arg(long, default_value_t = 256)]
    stream_mib: u64,
    /// Throughput runs per configuration and session count (the report gives their median).
    #[arg(long, default_value_t = 5)]
    stream_runs: usize,
    /// Sessions of 4 channels held at once.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Open/close cycles of the held sessions.
    #[arg(long, default_value_t = 3)]
    cycles: usize,
    /// Sessions being opened at once while establishing the held sessions.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Markdown report to write.
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    out: PathBuf,
    /// The command line to print in the report (set by tools/bench.sh).
    #[arg(long, default_value = "")]
    command: String,
    /// Instead of benchmarking, serve one scripted hypervisor in this mode.
    #[command(subcommand)]
    serve: Option<Serve>,
}

/// A scripted hypervisor to run on its own, for tests with real clients.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum Serve {
    /// Serve a hypervisor whose screen never changes (see `hypervisor::Screen::Static`) on a
    /// free loopback port; print `{"addr": "127.0.0.1:PORT"}` and serve until killed or until
    /// standard input closes.
    StaticScreen {
        /// The SPICE ticket it accepts.
        #[arg(long, default_value = TICKET)]
        ticket: String,
    },
}

/// The ways the client reaches the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Config {
    /// Plain TCP straight to the hypervisor.
    Direct,
    /// HAProxy terminating TLS.
    Relay,
    /// kerbside with its SPICE firewall (the default: `[firewall] mode = enforce`, the
    /// built-in default profile).
    Kerbside,
    /// kerbside with `[firewall] mode = off`: display, inputs and cursor copied opaquely.
    KerbsideOpaque,
}

impl Config {
    /// All, in report order.
    pub const ALL: [Config; 4] = [
        Config::Direct,
        Config::Relay,
        Config::Kerbside,
        Config::KerbsideOpaque,
    ];

    /// Report name.
    pub fn name(self) -> &'static str {
        match self {
            Config::Direct => "direct (no proxy, plain)",
            Config::Relay => "HAProxy (TLS relay)",
            Config::Kerbside => "kerbside (firewall, default profile)",
            Config::KerbsideOpaque => "kerbside, firewall off (opaque relay)",
        }
    }
}

/// Everything under test.
struct Bench {
    direct: (Hypervisor, Target),
    relay: (Hypervisor, Target, Relay),
    kerbside: (Hypervisor, Target, Kerbside),
    opaque: (Hypervisor, Target, Kerbside),
}

impl Bench {
    fn hv(&self, c: Config) -> &Hypervisor {
        match c {
            Config::Direct => &self.direct.0,
            Config::Relay => &self.relay.0,
            Config::Kerbside => &self.kerbside.0,
            Config::KerbsideOpaque => &self.opaque.0,
        }
    }

    fn target(&self, c: Config) -> &Target {
        match c {
            Config::Direct => &self.direct.1,
            Config::Relay => &self.relay.1,
            Config::Kerbside => &self.kerbside.1,
            Config::KerbsideOpaque => &self.opaque.1,
        }
    }

    fn pid(&self, c: Config) -> Option<u32> {
        match c {
            Config::Direct => None,
            Config::Relay => self.relay.2.pid(),
            Config::Kerbside => self.kerbside.2.pid(),
            Config::KerbsideOpaque => self.opaque.2.pid(),
        }
    }

    async fn passwords(&self, c: Config, n: usize) -> Result<Vec<String>> {
        match c {
            Config::Kerbside => self.kerbside.2.tokens(n).await,
            Config::KerbsideOpaque => self.opaque.2.tokens(n).await,
            _ => Ok(vec![TICKET.to_owned(); n]),
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.serve.clone() {
        Some(Serve::StaticScreen { ticket }) => runtime.block_on(serve_static_screen(&ticket)),
        None => runtime.block_on(run(args)),
    }
}

/// Runs a static-screen hypervisor until standard input closes (or the process is killed).
async fn serve_static_screen(ticket: &str) -> Result<()> {
    use tokio::io::AsyncReadExt;
    let hv = Hypervisor::start_with(ticket, hypervisor::Screen::Static).await?;
    println!("{{\"addr\": \"{}\"}}", hv.addr);
    let mut stdin = tokio::io::stdin();
    let mut scratch = [0u8; 64];
    while stdin.read(&mut scratch).await? > 0 {}
    drop(hv);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn run(args: Args) -> Result<()> {
    kerbside::proxy::tls::install_crypto_provider();
    let program = match &args.kerbside {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("exe dir")?
            .join("kerbside"),
    };
    let dir = tempfile::Builder::new()
        .prefix("kerbside-bench")
        .tempdir()?;
    let pki = TestPki::new(&dir.path().join("pki"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.ca_cert_path())? {
        roots.add(cert?)?;
    }
    let tls = TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let hv_direct = Hypervisor::start(TICKET).await?;
    let hv_relay = Hypervisor::start(TICKET).await?;
    let hv_kerbside = Hypervisor::start(TICKET).await?;
    let hv_opaque = Hypervisor::start(TICKET).await?;
    let relay = Relay::start(dir.path(), &pki, hv_relay.addr).await?;
    let kerbside_dir = dir.path().join("kerbside");
    std::fs::create_dir_all(&kerbside_dir)?;
    let kerbside =
        Kerbside::start(&program, &kerbside_dir, &pki, hv_kerbside.addr, TICKET, "").await?;
    let opaque_dir = dir.path().join("kerbside-opaque");
    std::fs::create_dir_all(&opaque_dir)?;
    let opaque = Kerbside::start(
        &program,
        &opaque_dir,
        &pki,
        hv_opaque.addr,
        TICKET,
        "[firewall]\nmode = off\n",
    )
    .await?;
    let direct_target = Target {
        addr: hv_direct.addr,
        tls: None,
    };
    let bench = Bench {
        direct: (hv_direct, direct_target),
        relay: (
            hv_relay,
            Target {
                addr: relay.addr,
                tls: Some(tls.clone()),
            },
            relay,
        ),
        kerbside: (
            hv_kerbside,
            Target {
                addr: kerbside.addr,
                tls: Some(tls.clone()),
            },
            kerbside,
        ),
        opaque: (
            hv_opaque,
            Target {
                addr: opaque.addr,
                tls: Some(tls),
            },
            opaque,
        ),
    };
    // Let both kerbside processes fill their key pools before anything is measured.
    for c in [Config::Kerbside, Config::KerbsideOpaque] {
        if let Some(pid) = bench.pid(c) {
            settle(pid, Duration::from_secs(20)).await;
        }
    }
    let mut report = Report::new(&args).await;

    eprintln!("link latency: {} sessions per configuration", args.reps);
    link_latency(&bench, &args, &mut report).await?;
    eprintln!("failed links: {} per proxy", args.reps * 4);
    failed_links(&bench, args.reps * 4, &mut report).await?;
    eprintln!("ping round trips: {}", args.pings);
    round_trips(&bench, &args, &mut report).await?;
    eprintln!("display throughput");
    for sessions in [1, 4] {
        throughput(&bench, &args, sessions, &mut report).await?;
    }
    eprintln!("{} sessions held, {} cycles", args.sessions, args.cycles);
    // The firewall's cost is in the relay: the held sessions (memory, link rate) compare
    // kerbside with HAProxy and the direct path only.
    for c in [Config::Direct, Config::Relay, Config::Kerbside] {
        held(&bench, &args, c, &mut report).await?;
    }
    report.write(&args.out)?;
    eprintln!("wrote {}", args.out.display());
    let Bench {
        relay,
        kerbside,
        opaque,
        ..
    } = bench;
    relay.2.stop().await;
    kerbside.2.stop().await;
    opaque.2.stop().await;
    Ok(())
}

async fn link_latency(bench: &Bench, args: &Args, report: &mut Report) -> Result<()> {
    let mut main = Config::ALL.map(|_| Vec::new());
    let mut display = Config::ALL.map(|_| Vec::new());
    let mut session = Config::ALL.map(|_| Vec::new());
    let mut cpu_start = Vec::new();
    let mut passwords = Vec::new();
    for c in Config::ALL {
        passwords.push(bench.passwords(c, args.reps).await?);
    }
    for c in Config::ALL {
        cpu_start.push(bench.pid(c).map(usage).transpose()?);
    }
    for rep in 0..args.reps {
        // Each round starts with the next configuration, so none is always measured right
        // after the same other one (whose background work may still run).
        let order = (0..Config::ALL.len()).map(|k| (k + rep) % Config::ALL.len());
        for (i, c) in order.filter_map(|i| Some((i, *Config::ALL.get(i)?))) {
            let password = passwords
                .get(i)
                .and_then(|p| p.get(rep))
                .context("password")?;
            let s = open_session(bench.target(c), password)
                .await
                .with_context(|| format!("{} session {rep}", c.name()))?;
            if let (Some(m), Some(d), Some(t)) =
                (main.get_mut(i), display.get_mut(i), session.get_mut(i))
            {
                m.push(ms(s.times.main));
                d.push(ms(s.times.display));
                t.push(ms(s.times.session));
            }
            drop(s);
            // Let each proxy finish its background work for this session (key refills,
            // database writes) before the next configuration is measured.
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    }
    for (i, c) in Config::ALL.into_iter().enumerate() {
        let (Some(m), Some(d), Some(t)) = (main.get(i), display.get(i), session.get(i)) else {
            continue;
        };
        report.main_link.push(Series::new(c, m));
        report.display_link.push(Series::new(c, d));
        report.session.push(Series::new(c, t));
        if let (Some(pid), Some(Some(start))) = (bench.pid(c), cpu_start.get(i)) {
            settle(pid, Duration::from_secs(10)).await;
            let end = usage(pid)?;
            let links = (args.reps * 4) as f64;
            report.cpu_per_link.push((
                c,
                ms(end.cpu.saturating_sub(start.cpu)) / links,
                ms(end.keygen_cpu.saturating_sub(start.keygen_cpu)) / links,
            ));
        }
    }
    Ok(())
}

/// Links main channels with a ticket the proxy refuses (kerbside: an unknown token; HAProxy
/// relays it to the hypervisor, which refuses it) and charges the proxy's CPU to them.
async fn failed_links(bench: &Bench, n: usize, report: &mut Report) -> Result<()> {
    for c in [Config::Relay, Config::Kerbside] {
        let Some(pid) = bench.pid(c) else { continue };
        settle(pid, Duration::from_secs(10)).await;
        let start = usage(pid)?;
        for i in 0..n {
            let wrong = format!("not-a-valid-token-{i}");
            let refused = client::link(
                bench.target(c),
                kerbside::spice::ChannelType::Main,
                0,
                &wrong,
            )
            .await
            .is_err();
            anyhow::ensure!(refused, "{}: a wrong ticket was accepted", c.name());
        }
        settle(pid, Duration::from_secs(10)).await;
        let end = usage(pid)?;
        report
            .failed_link_cpu
            .push((c, ms(end.cpu.saturating_sub(start.cpu)) / n as f64));
    }
    Ok(())
}

async fn round_trips(bench: &Bench, args: &Args, report: &mut Report) -> Result<()> {
    for c in Config::ALL {
        let password = bench.passwords(c, 1).await?;
        let s = open_session(bench.target(c), password.first().context("password")?).await?;
        // Measure the relay path, not the key refill that follows a link.
        if let Some(pid) = bench.pid(c) {
            settle(pid, Duration::from_secs(10)).await;
        }
        let hv = bench.hv(c);
        let _ = hv.take_rtts();
        hv.start_pings(args.pings);
        let started = Instant::now();
        while hv.rtt_count() < args.pings as usize && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        hv.start_pings(0);
        let rtts: Vec<f64> = hv
            .take_rtts()
            .iter()
            .map(|d| d.as_secs_f64() * 1e6)
            .collect();
        report.rtt.push(Series::new(c, &rtts));
        drop(s);
    }
    Ok(())
}

async fn throughput(
    bench: &Bench,
    args: &Args,
    sessions: usize,
    report: &mut Report,
) -> Result<()> {
    let bytes = args.stream_mib * 1024 * 1024;
    // Runs are interleaved (every configuration once, then again), so a change in the
    // machine's load during the phase falls on all configurations alike.
    let mut rates = Config::ALL.map(|_| Vec::new());
    let mut cpu_per_gib = Config::ALL.map(|_| Vec::new());
    for _ in 0..args.stream_runs {
        let rounds = Config::ALL
            .into_iter()
            .zip(rates.iter_mut())
            .zip(cpu_per_gib.iter_mut());
        for ((c, rates), cpu_per_gib) in rounds {
            let passwords = bench.passwords(c, sessions).await?;
            let mut open: Vec<Session> = Vec::new();
            for p in &passwords {
                open.push(open_session(bench.target(c), p).await?);
            }
            let pid = bench.pid(c);
            if let Some(pid) = pid {
                settle(pid, Duration::from_secs(5)).await;
            }
            let before = pid.map(usage).transpose()?;
            let started = Instant::now();
            bench.hv(c).set_stream_bytes(bytes);
            while open
                .iter()
                .any(|s| s.display_bytes.load(Ordering::Relaxed) < bytes)
            {
                if started.elapsed() > Duration::from_secs(300) {
                    anyhow::bail!("{}: display stream stalled", c.name());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let elapsed = started.elapsed();
            let after = pid.map(usage).transpose()?;
            bench.hv(c).set_stream_bytes(0);
            let total: u64 = open
                .iter()
                .map(|s| s.display_bytes.load(Ordering::Relaxed))
                .sum();
            rates.push(total as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64());
            if let (Some(b), Some(a)) = (before, after) {
                let gib = total as f64 / (1024.0 * 1024.0 * 1024.0);
                cpu_per_gib.push(a.cpu.saturating_sub(b.cpu).as_secs_f64() / gib);
            }
            drop(open);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    for ((c, rates), cpu_per_gib) in Config::ALL.into_iter().zip(&rates).zip(&cpu_per_gib) {
        report.throughput.push((sessions, Series::new(c, rates)));
        if !cpu_per_gib.is_empty() {
            report
                .cpu_per_gib
                .push((sessions, Series::new(c, cpu_per_gib)));
        }
    }
    Ok(())
}

async fn held(bench: &Bench, args: &Args, c: Config, report: &mut Report) -> Result<()> {
    let pid = bench.pid(c);
    if let Some(pid) = pid {
        settle(pid, Duration::from_secs(30)).await;
    }
    let start_rss = pid.map(usage).transpose()?.map(|u| u.rss_kib);
    let mut cycles = Vec::new();
    for _ in 0..args.cycles {
        let passwords = bench.passwords(c, args.sessions).await?;
        let before = pid.map(usage).transpose()?;
        let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency.max(1)));
        let started = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for p in passwords {
            let target = bench.target(c).clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await?;
                open_session(&target, &p).await
            });
        }
        let mut open = Vec::new();
        let mut failed = 0usize;
        let mut first_error = None;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => open.push(s),
                Ok(Err(e)) => {
                    failed += 1;
                    first_error.get_or_insert(format!("{e:#}"));
                }
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        let establish = started.elapsed();
        if let Some(e) = &first_error {
            eprintln!("{}: {failed} sessions failed, first: {e}", c.name());
        }
        if let Some(pid) = pid {
            settle(pid, Duration::from_secs(30)).await;
        }
        let held_usage = pid.map(usage).transpose()?;
        let channels = open.len() * 4;
        drop(open);
        if let Some(pid) = pid {
            tokio::time::sleep(Duration::from_secs(1)).await;
            settle(pid, Duration::from_secs(60)).await;
        }
        let after = pid.map(usage).transpose()?;
        cycles.push(report::Cycle {
            establish,
            sessions_ok: channels / 4,
            failed,
            rss_before_kib: before.map(|u| u.rss_kib),
            rss_held_kib: held_usage.map(|u| u.rss_kib),
            rss_after_kib: after.map(|u| u.rss_kib),
            cpu: match (before, after) {
                (Some(b), Some(a)) => Some(a.cpu.saturating_sub(b.cpu)),
                _ => None,
            },
        });
    }
    report.held.push((c, start_rss, cycles));
    Ok(())
}
