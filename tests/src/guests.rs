//! Guests the test QEMU can boot, assembled at test time from source in `tests/guests/`.
//!
//! - [`assemble_key_echo`]: `tests/guests/keyecho.asm`, a 512-byte boot sector that shows
//!   [`KEY_ECHO_BANNER`] on a 80x25 text screen and then echoes every typed key. Boot it with
//!   [`crate::qemu::SpiceServerBuilder::key_echo_guest`]; read its screen back with
//!   [`crate::qemu::SpiceServer::screen_text`].
//!
//! Assembling needs `nasm` (installed by `tools/install-test-deps.sh`); a missing `nasm` is an
//! error that says so, never a skip.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The first line the key-echo guest prints once it reads keys.
pub const KEY_ECHO_BANNER: &str = "KEYECHO READY";

/// Size of a boot sector, and the signature that ends it.
const SECTOR: usize = 512;
const BOOT_SIGNATURE: [u8; 2] = [0x55, 0xaa];

/// Where the key-echo guest's source lives in the repository.
pub fn key_echo_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/keyecho.asm")
}

/// Assemble the key-echo boot sector into `out` (a raw 512-byte disk image).
///
/// # Errors
/// `nasm` is missing or fails, or its output is not a 512-byte boot sector.
pub fn assemble_key_echo(out: &Path) -> Result<()> {
    crate::require::require("nasm")?;
    let source = key_echo_source();
    let output = std::process::Command::new("nasm")
        .args(["-f", "bin", "-o"])
        .arg(out)
        .arg(&source)
        .output()
        .context("running nasm (Debian package nasm; run `tools/install-test-deps.sh` as root)")?;
    if !output.status.success() {
        bail!(
            "nasm failed on {} ({}): {}",
            source.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let image = std::fs::read(out).with_context(|| format!("reading {}", out.display()))?;
    if image.len() != SECTOR || image.get(SECTOR - 2..) != Some(&BOOT_SIGNATURE[..]) {
        bail!(
            "{} did not assemble to a {SECTOR}-byte boot sector ending in 55 AA ({} bytes)",
            source.display(),
            image.len()
        );
    }
    Ok(())
}
