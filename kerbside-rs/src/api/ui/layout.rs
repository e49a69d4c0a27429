//! The frame of every page (`base.html`): title, navigation (only what the policy lets the
//! user see), the signed-in user with their project and the sign-out form, and the banner of
//! the noauth local administrator. Also small formatting helpers the templates use.

use chrono::{NaiveDateTime, TimeZone, Utc};

/// One navigation link.
pub struct NavItem {
    /// Target.
    pub href: &'static str,
    /// Label.
    pub label: &'static str,
    /// Whether it is the current page's section.
    pub current: bool,
}

/// The signed-in user, as the header shows them.
pub struct UserBar {
    /// User name.
    pub name: String,
    /// Project name, if scoped to one.
    pub project: Option<String>,
    /// Whether this is the noauth local administrator.
    pub noauth: bool,
    /// The CSRF token of the sign-out form.
    pub csrf: String,
}

/// The frame of a page.
pub struct Layout {
    /// The page title (also the `<h1>`).
    pub title: String,
    /// Navigation links.
    pub nav: Vec<NavItem>,
    /// The signed-in user, if any.
    pub user: Option<UserBar>,
}

/// The sections of the console, with the policy rule that shows each.
const SECTIONS: &[(&str, &str, Option<&str>)] = &[
    ("/ui/sessions", "Sessions", Some("kerbside:session:list")),
    ("/ui/consoles", "Consoles", Some("kerbside:console:list")),
    ("/ui/sources", "Sources", Some("kerbside:source:list")),
    ("/ui/servers", "My servers", None),
];

impl Layout {
    /// A frame without a user (sign-in and error pages).
    pub fn bare(title: &str) -> Self {
        Layout {
            title: title.to_owned(),
            nav: Vec::new(),
            user: None,
        }
    }

    /// The frame for `user` on a page of section `current` (its path); `may` says whether
    /// the policy lets the user read a section (by its rule).
    pub fn new(title: &str, current: &str, user: UserBar, may: impl Fn(&str) -> bool) -> Self {
        let nav = SECTIONS
            .iter()
            .filter(|(_, _, rule)| rule.is_none_or(&may))
            .map(|(href, label, _)| NavItem {
                href,
                label,
                current: *href == current,
            })
            .collect();
        Layout {
            title: title.to_owned(),
            nav,
            user: Some(user),
        }
    }
}

/// A database time as `2026-12-05 10:11:12 UTC`.
pub fn time(t: NaiveDateTime) -> String {
    Utc.from_utc_datetime(&t)
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// A duration in seconds as `1 h 02 min`, `3 min 04 s` or `5 s`.
pub fn duration(seconds: i64) -> String {
    let s = seconds.max(0);
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {sec:02} s")
    } else {
        format!("{sec} s")
    }
}

/// A byte count in binary units (`512 B`, `1.5 KiB`, `12.0 MiB`).
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = "KiB";
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// The name of SPICE channel type `t` as spice-gtk spells it.
pub fn channel_name(t: i32) -> String {
    u8::try_from(t)
        .map(|t| crate::spice::ChannelType::from_u8(t).to_string())
        .unwrap_or_else(|_| format!("unknown({t})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(duration(5), "5 s");
        assert_eq!(duration(184), "3 min 04 s");
        assert_eq!(duration(3720), "1 h 02 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(12 * 1024 * 1024), "12.0 MiB");
        assert_eq!(channel_name(2), "display");
        assert_eq!(channel_name(9), "usbredir");
        assert_eq!(channel_name(-1), "unknown(-1)");
    }
}
