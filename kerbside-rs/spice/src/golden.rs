//! Test-only golden vectors: byte-exact link-stage captures between QEMU 10.0.2
//! (spice-server 0.15.1) and remote-viewer (spice-gtk 0.42), kept as hex in
//! `testdata/`. Lines starting with `#` are comments.

fn decode(text: &str) -> Vec<u8> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .flat_map(str::split_whitespace)
        .map(|byte| u8::from_str_radix(byte, 16).unwrap())
        .collect()
}

macro_rules! golden {
    ($($name:ident),* $(,)?) => {
        $(
            pub(crate) fn $name() -> Vec<u8> {
                decode(include_str!(concat!("testdata/", stringify!($name), ".hex")))
            }
        )*

        /// Every vector with its name.
        pub(crate) fn all() -> Vec<(&'static str, Vec<u8>)> {
            vec![$((stringify!($name), $name())),*]
        }
    };
}

golden!(
    main_c2s_link,
    main_c2s_ticket,
    main_s2c_reply,
    main_s2c_result_data,
    display_c2s_link,
    display_c2s_ticket,
    display_s2c_reply,
    display_s2c_result_data,
    badpw_s2c_reply,
    badpw_s2c_result,
    need_secured_c2s_link,
    need_secured_s2c_error,
);

#[test]
fn vectors_have_the_captured_lengths() {
    let lens: Vec<(&str, usize)> = all().iter().map(|(n, b)| (*n, b.len())).collect();
    assert_eq!(
        lens,
        vec![
            ("main_c2s_link", 42),
            ("main_c2s_ticket", 132),
            ("main_s2c_reply", 202),
            ("main_s2c_result_data", 68),
            ("display_c2s_link", 42),
            ("display_c2s_ticket", 132),
            ("display_s2c_reply", 202),
            ("display_s2c_result_data", 68),
            ("badpw_s2c_reply", 202),
            ("badpw_s2c_result", 4),
            ("need_secured_c2s_link", 42),
            ("need_secured_s2c_error", 194),
        ]
    );
}
