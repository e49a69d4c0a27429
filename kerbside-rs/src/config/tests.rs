//! Tests of configuration loading: good, bad and edge files, each with its exact message.

use std::path::Path;

use super::*;

fn load(files: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let mut raw = RawConfig::default();
    for (index, (name, text)) in files.iter().enumerate() {
        raw.add_text(Path::new(name), index, text, &mut problems);
        raw.files.push(name.into());
    }
    Config::from_raw(raw, problems)
}

fn errors(files: &[(&str, &str)]) -> Vec<String> {
    load(files)
        .unwrap_err()
        .problems
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn empty_configuration_uses_defaults() {
    let loaded = load(&[]).unwrap();
    let c = loaded.config;
    assert_eq!(c.api.bind_port, 13002);
    assert_eq!(c.proxy.tls_port, 5900);
    assert_eq!(c.proxy.insecure_port, 5901);
    assert_eq!(c.api.auth_strategy, AuthStrategy::Keystone);
    assert_eq!(c.notifications.queue_type, QueueType::Classic);
    assert_eq!(
        c.oslo_messaging_notifications.topics,
        ["versioned_notifications"]
    );
    assert_eq!(
        c.database.connection.expose(),
        "sqlite:////var/lib/kerbside/kerbside.sqlite"
    );
    assert!(loaded.warnings.is_empty());
}

#[test]
fn state_path_is_substituted() {
    let c = load(&[("a.conf", "[DEFAULT]\nstate_path = /srv/k\n")])
        .unwrap()
        .config;
    assert_eq!(
        c.database.connection.expose(),
        "sqlite:////srv/k/kerbside.sqlite"
    );
    let c = load(&[(
        "a.conf",
        "[database]\nconnection = mysql://u:pa$$w$rd@h/k\n",
    )])
    .unwrap()
    .config;
    assert_eq!(c.database.connection.expose(), "mysql://u:pa$w$rd@h/k");
}

#[test]
fn later_files_win() {
    let c = load(&[
        (
            "a.conf",
            "[proxy]\ntls_port = 6000\npublic_host = a.example\n",
        ),
        ("b.conf", "[proxy]\ntls_port = 7000\n"),
    ])
    .unwrap()
    .config;
    assert_eq!(c.proxy.tls_port, 7000);
    assert_eq!(c.public_host(), "a.example");
    assert_eq!(c.public_tls_port(), 7000);
}

#[test]
fn wrong_types_name_file_line_and_option() {
    assert_eq!(
        errors(&[(
            "k.conf",
            "[DEFAULT]\ndebug = perhaps\n[proxy]\ntls_port = abc\n"
        )]),
        [
            "k.conf:2: [DEFAULT] debug: invalid boolean 'perhaps': expected true or false",
            "k.conf:4: [proxy] tls_port: invalid port value 'abc': expected a whole number from 0 to 65535",
        ]
    );
    assert_eq!(
        errors(&[(
            "k.conf",
            "[api]\nauth_strategy = ldap\nbind_host = example.com\n"
        )]),
        [
            "k.conf:3: [api] bind_host: invalid IP address 'example.com': expected e.g. 0.0.0.0, :: or 192.0.2.10",
            "k.conf:2: [api] auth_strategy: invalid value 'ldap': expected one of keystone, noauth",
        ]
    );
}

#[test]
fn duplicate_keys_in_one_file_are_an_error() {
    assert_eq!(
        errors(&[("k.conf", "[proxy]\ntls_port = 1\n\ntls_port = 2\n")]),
        ["k.conf:4: [proxy] tls_port: set more than once in this file (also at line 2); keep one"]
    );
}

#[test]
fn multi_valued_options_accumulate() {
    let c = load(&[(
        "k.conf",
        "[proxy]\nbind_host = 127.0.0.1\nbind_host = ::1, ::\n",
    )])
    .unwrap()
    .config;
    assert_eq!(c.proxy.bind_host.len(), 3);
}

#[test]
fn unknown_options_and_sections_are_warnings() {
    let loaded = load(&[(
        "k.conf",
        "[proxy]\ntls_prot = 1\n[oslo_concurrency]\nlock_path = /x\n",
    )])
    .unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        [
            "k.conf:3: [oslo_concurrency]: unknown section (ignored)",
            "k.conf:2: [proxy] tls_prot: unknown option (ignored)",
        ]
    );
}

#[test]
fn missing_sections_are_fine_and_cross_checks_run() {
    assert_eq!(
        errors(&[("k.conf", "[proxy]\ncert_file = /nonexistent/cert.pem\n")]),
        [
            "k.conf:2: [proxy] key_file: cert_file is set, so key_file must be set too",
            "k.conf:2: [proxy] cert_file: cannot read /nonexistent/cert.pem: No such file or directory (os error 2)",
        ]
    );
    assert_eq!(
        errors(&[("k.conf", "[proxy]\ntls_port = 7000\ninsecure_port = 7000\n")]),
        ["k.conf:3: [proxy] insecure_port: must differ from tls_port (7000)"]
    );
}

#[test]
fn secrets_are_not_printed_in_errors_or_debug() {
    let e = errors(&[(
        "k.conf",
        "[DEFAULT]\ntransport_url = http://guest:s3cret@h/\n",
    )]);
    assert_eq!(
        e,
        ["k.conf:2: [DEFAULT] transport_url: unsupported scheme 'http': expected rabbit://"]
    );
    let c = load(&[(
        "k.conf",
        "[keystone_authtoken]\npassword = s3cret\n[database]\nconnection = mysql://k:s3cret@db/k\n",
    )])
    .unwrap()
    .config;
    let debug = format!("{c:?}");
    assert!(!debug.contains("s3cret"), "{debug}");
    // An empty optional secret means "unset", as in oslo.config.
    let c = load(&[("k.conf", "[keystone_authtoken]\npassword =\n")])
        .unwrap()
        .config;
    assert!(c.keystone_authtoken.password.is_none());
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = errors(&[
        ("a.conf", "[proxy]\ntls_port = x\n"),
        (
            "b.conf",
            "[metrics]\nbind_port = -1\n[api]\nworkers = many\n",
        ),
    ]);
    assert_eq!(e.len(), 3, "{e:?}");
}

#[test]
fn unreadable_file_is_named() {
    let sources = ConfigSources {
        files: vec!["/nonexistent/kerbside.conf".into()],
        dirs: vec![],
    };
    let e = Config::load(&sources).unwrap_err();
    assert_eq!(
        e.problems[0].to_string(),
        "/nonexistent/kerbside.conf: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn config_dir_files_are_sorted_after_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("20-b.conf"), "[proxy]\ntls_port = 2\n").unwrap();
    std::fs::write(dir.path().join("10-a.conf"), "[proxy]\ntls_port = 1\n").unwrap();
    std::fs::write(dir.path().join("ignored.txt"), "junk").unwrap();
    let main = dir.path().join("main.conf.x");
    std::fs::write(&main, "[proxy]\ntls_port = 9\n").unwrap();
    let sources = ConfigSources {
        files: vec![main],
        dirs: vec![dir.path().to_path_buf()],
    };
    let c = Config::load(&sources).unwrap().config;
    assert_eq!(c.proxy.tls_port, 2);
    assert_eq!(c.files.len(), 3);
}

#[test]
fn sample_loads_back_with_defaults() {
    let sample = sample::render();
    let loaded = load(&[("sample.conf", &sample)]).unwrap();
    assert!(loaded.warnings.is_empty());
    // Every option appears, commented out.
    for (_, _, specs) in all_sections() {
        for spec in specs {
            assert!(
                sample.contains(&format!("\n#{} = ", spec.name)),
                "{} missing",
                spec.name
            );
            assert!(!spec.help.trim().is_empty(), "{} has no help", spec.name);
        }
    }
}

#[test]
fn committed_sample_matches_the_declarations() {
    let committed = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../etc/kerbside/kerbside.conf.sample"
    );
    let text = std::fs::read_to_string(committed).unwrap_or_default();
    assert!(
        text == sample::render(),
        "etc/kerbside/kerbside.conf.sample is out of date: run `kerbside-manage config sample > etc/kerbside/kerbside.conf.sample`"
    );
}

#[test]
fn nova_console_host_map_maps_names_to_addresses() {
    let loaded = load(&[(
        "a.conf",
        "[nova]\nconsole_host_map = compute1.example.com:192.0.2.11, compute2:2001:db8::2\n",
    )])
    .unwrap();
    let nova = &loaded.config.nova;
    assert_eq!(nova.console_address("compute1.example.com"), "192.0.2.11");
    assert_eq!(nova.console_address("compute2"), "2001:db8::2");
    assert_eq!(nova.console_address("compute3"), "compute3");
    let errs = errors(&[("b.conf", "[nova]\nconsole_host_map = compute1\n")]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("expected NOVA_HOST:ADDRESS"), "{errs:?}");
    assert!(errs[0].contains("console_host_map"), "{errs:?}");
}

#[test]
fn every_validation_problem_is_reported_in_order() {
    // One file that breaks every cross-option check, so the order and wording of the
    // messages (and the line each points at) are pinned down.
    let text = "\
[DEFAULT]
transport_url = http://guest@h/
[proxy]
cert_file = /nonexistent/cert.pem
ca_file = /nonexistent/ca.pem
hypervisor_ca_file = /nonexistent/hv.pem
tls_port = 7000
insecure_port = 7000
bind_host =
handshake_timeout = 0
max_sessions = 0
max_handshakes = 0
max_handshakes_per_address = 0
failed_links_per_minute = 0
key_pool_size = 0
ticket_key_uses = 0
ticket_key_lifetime = 0
host_subject = CN=a\\x
[html5]
enabled = true
public_url = http://browser.example/
bind_host =
allowed_origins = bad host, ftp://x.example, good.example
[console]
token_ttl = 0
sources_file = /nonexistent/sources.yaml
[database]
max_pool_size = 0
pool_timeout = 0
write_queue_size = 0
[keystone_authtoken]
auth_url = http://keystone.example/
http_connect_timeout = 0
http_request_timeout = 0
[nova]
timeout = 0
connect_timeout = 0
";
    assert_eq!(
        errors(&[("k.conf", text)]),
        [
            "k.conf:4: [proxy] key_file: cert_file is set, so key_file must be set too",
            "k.conf:4: [proxy] cert_file: cannot read /nonexistent/cert.pem: No such file or directory (os error 2)",
            "k.conf:5: [proxy] ca_file: cannot read /nonexistent/ca.pem: No such file or directory (os error 2)",
            "k.conf:6: [proxy] hypervisor_ca_file: cannot read /nonexistent/hv.pem: No such file or directory (os error 2)",
            "k.conf:8: [proxy] insecure_port: must differ from tls_port (7000)",
            "k.conf:9: [proxy] bind_host: at least one address is required",
            "k.conf:10: [proxy] handshake_timeout: must be at least 1 second",
            "k.conf:11: [proxy] max_sessions: must be at least 1",
            "k.conf:12: [proxy] max_handshakes: must be at least 1",
            "k.conf:13: [proxy] max_handshakes_per_address: must be at least 1",
            "k.conf:14: [proxy] failed_links_per_minute: must be at least 1 while failed_link_burst is set",
            "k.conf:15: [proxy] key_pool_size: must be at least 1",
            "k.conf:16: [proxy] ticket_key_uses: must be at least 1",
            "k.conf:17: [proxy] ticket_key_lifetime: must be at least 1",
            "k.conf:18: [proxy] host_subject: invalid host subject: invalid escape: only \\, and \\\\ are allowed",
            "k.conf:21: [html5] public_url: must be a ws:// or wss:// URL, not http://",
            "k.conf:22: [html5] bind_host: at least one address is required",
            "k.conf:23: [html5] allowed_origins: 'bad host' is neither a host name nor an origin such as https://host",
            "k.conf:23: [html5] allowed_origins: 'ftp://x.example' is neither a host name nor an origin such as https://host",
            "k.conf:25: [console] token_ttl: must be at least 1 second",
            "k.conf:26: [console] sources_file: cannot read /nonexistent/sources.yaml: No such file or directory (os error 2)",
            "k.conf:28: [database] max_pool_size: must be at least 1",
            "k.conf:29: [database] pool_timeout: must be at least 1 second",
            "k.conf:30: [database] write_queue_size: must be at least 1",
            "k.conf:2: [DEFAULT] transport_url: unsupported scheme 'http': expected rabbit://",
            "k.conf:33: [keystone_authtoken] http_connect_timeout: must be at least 1 second",
            "k.conf:34: [keystone_authtoken] http_request_timeout: must be at least 1 second",
            "k.conf:36: [nova] timeout: must be at least 1 second",
            "k.conf:37: [nova] connect_timeout: must be at least 1 second",
            "[keystone_authtoken] username: auth_url is set, so username and password must be set too",
        ]
    );
}

#[test]
fn validation_points_at_the_option_that_is_set() {
    assert_eq!(
        errors(&[("k.conf", "[proxy]\nkey_file = /nonexistent/key.pem\n")]),
        [
            "k.conf:2: [proxy] cert_file: key_file is set, so cert_file must be set too",
            "k.conf:2: [proxy] key_file: cannot read /nonexistent/key.pem: No such file or directory (os error 2)",
        ]
    );
    assert_eq!(
        errors(&[(
            "k.conf",
            "[DEFAULT]\ntransport_url = rabbit://h/\n[oslo_messaging_notifications]\ntransport_url = ::\n",
        )]),
        [
            "k.conf:4: [oslo_messaging_notifications] transport_url: invalid URL: relative URL without a base"
        ]
    );
    // Without Keystone auth the service user is not needed; html5 options are only checked
    // while html5 is enabled.
    assert!(
        load(&[(
            "k.conf",
            "[api]\nauth_strategy = noauth\n[keystone_authtoken]\nauth_url = http://k/\n[html5]\nbind_host =\npublic_url = http://x/\n",
        )])
        .is_ok()
    );
}

#[test]
fn loading_problems_come_after_syntax_problems_in_section_order() {
    // Read problems first, then each section's in declaration order (not file order);
    // validation does not run while any option failed to load.
    assert_eq!(
        errors(&[
            ("a.conf", "[proxy]\nno equals sign\n"),
            (
                "b.conf",
                "[html5]\nbind_port = x\n[proxy]\ntls_port = x\nhandshake_timeout = 0\n[DEFAULT]\ndebug = maybe\n",
            ),
        ]),
        [
            "a.conf:2: [proxy]: expected 'name = value' or '[section]', found 'no equals sign'",
            "b.conf:7: [DEFAULT] debug: invalid boolean 'maybe': expected true or false",
            "b.conf:4: [proxy] tls_port: invalid port value 'x': expected a whole number from 0 to 65535",
            "b.conf:2: [html5] bind_port: invalid port value 'x': expected a whole number from 0 to 65535",
        ]
    );
}
