//! virt-viewer `.vv` files: the connection file remote-viewer opens.
//!
//! GLib's key-file format: one `[virt-viewer]` group, string values with backslash escapes, so a
//! PEM certificate is written on one line with literal `\n` between its lines.

use std::fmt::Write;

/// What a `.vv` file tells remote-viewer.
pub struct VvFile<'a> {
    /// Host of the proxy.
    pub host: &'a str,
    /// Plain port (answers NEED_SECURED: spice-gtk then moves to `tls_port`).
    pub port: u16,
    /// TLS port.
    pub tls_port: u16,
    /// The kerbside console token, sent as the SPICE password.
    pub password: &'a str,
    /// PEM CA that signed the proxy's certificate.
    pub ca_pem: Option<&'a str>,
    /// The proxy certificate's subject.
    pub host_subject: Option<&'a str>,
    /// Window title.
    pub title: &'a str,
}

impl VvFile<'_> {
    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::from("[virt-viewer]\n");
        let _ = writeln!(out, "type=spice");
        let _ = writeln!(out, "host={}", escape(self.host));
        let _ = writeln!(out, "port={}", self.port);
        let _ = writeln!(out, "tls-port={}", self.tls_port);
        let _ = writeln!(out, "password={}", escape(self.password));
        if let Some(ca) = self.ca_pem {
            let _ = writeln!(out, "ca={}", escape(ca.trim_end()));
        }
        if let Some(subject) = self.host_subject {
            let _ = writeln!(out, "host-subject={}", escape(subject));
        }
        // Every channel straight to TLS: no plain round trip per channel.
        let _ = writeln!(out, "secure-channels=all");
        let _ = writeln!(out, "delete-this-file=1");
        let _ = writeln!(out, "title={}", escape(self.title));
        out
    }
}

/// GKeyFile string escaping: `\\`, `\n`, `\t`, `\r`, and `\s` for a leading space.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            ' ' if i == 0 => out.push_str("\\s"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_key_with_escapes() {
        let vv = VvFile {
            host: "proxy.example.com",
            port: 5901,
            tls_port: 5900,
            password: "abc",
            ca_pem: Some("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            host_subject: Some("O=Kerbside,CN=proxy"),
            title: " vm\\one",
        }
        .render();
        assert_eq!(
            vv,
            "[virt-viewer]\ntype=spice\nhost=proxy.example.com\nport=5901\ntls-port=5900\npassword=abc\n\
             ca=-----BEGIN CERTIFICATE-----\\nAAAA\\n-----END CERTIFICATE-----\n\
             host-subject=O=Kerbside,CN=proxy\nsecure-channels=all\ndelete-this-file=1\ntitle=\\svm\\\\one\n"
        );
    }
}
