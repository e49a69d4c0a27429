//! `kerbside-manage config check`: the checks beyond option types that need other modules —
//! the database URL, the proxy's TLS identity and the sources file.

use crate::config::{Config, ConfigProblem};

/// Every problem found, each naming the option it concerns.
pub fn deep_check(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |section: &str, option: &str, message: String| {
        problems.push(ConfigProblem::option(section, option, None, message));
    };
    if let Err(e) = crate::db::DbUrl::parse(config.database.connection.expose()) {
        problem("database", "connection", e.to_string());
    }
    let p = &config.proxy;
    if let (Some(cert), Some(key)) = (&p.cert_file, &p.key_file)
        && let Err(e) = crate::proxy::tls::server_config(cert, key)
    {
        problem("proxy", "cert_file", e.to_string());
    }
    for (option, path) in [
        ("ca_file", &p.ca_file),
        ("hypervisor_ca_file", &p.hypervisor_ca_file),
    ] {
        if let Some(path) = path
            && let Err(e) = crate::tlsutil::load_certs(path)
        {
            problem("proxy", option, e.to_string());
        }
    }
    if let Some(path) = &config.console.sources_file {
        match std::fs::read_to_string(path) {
            Ok(text) => match crate::sources::parse(&text) {
                Ok(sources) => {
                    for source in sources {
                        if let Err(e) = source.consoles {
                            problem(
                                "console",
                                "sources_file",
                                format!("{}: source '{}': {e}", path.display(), source.name),
                            );
                        }
                    }
                }
                Err(e) => problem(
                    "console",
                    "sources_file",
                    format!("{}: {e}", path.display()),
                ),
            },
            Err(e) => problem(
                "console",
                "sources_file",
                format!("cannot read {}: {e}", path.display()),
            ),
        }
    }
    problems
}
