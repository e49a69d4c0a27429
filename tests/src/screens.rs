//! Comparing VM screens as different clients captured them (binary PPM, see
//! [`crate::clients::ppm_pixels`]).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::clients::{ppm_pixels, spicy_screenshot};
use crate::qemu::SpiceServer;

/// How two VM screens differ: `None` when they are the same size and identical but for the
/// guest's blinking text cursor (one 9x16 character cell of 720x400 VGA text mode), which two
/// screenshots may catch in different phases.
///
/// # Errors
/// An image is missing or not a binary PPM.
pub fn screen_difference(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> Result<Option<String>> {
    let (a, b) = (
        a.as_deref().context("no image")?,
        b.as_deref().context("no image")?,
    );
    let (wa, ha, pa) = ppm_pixels(a)?;
    let (wb, hb, pb) = ppm_pixels(b)?;
    if (wa, ha) != (wb, hb) {
        return Ok(Some(format!(
            "screen sizes differ: {wa}x{ha} and {wb}x{hb}"
        )));
    }
    let width = wa as usize;
    let differing: Vec<usize> = pa
        .chunks(3)
        .zip(pb.chunks(3))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i)
        .collect();
    let Some(&first) = differing.first() else {
        return Ok(None);
    };
    let (x0, y0) = (first % width, first / width);
    let cell = differing.iter().all(|i| {
        let (x, y) = (i % width, i / width);
        x.abs_diff(x0) < 9 && y.abs_diff(y0) < 16
    });
    Ok((!cell).then(|| {
        format!(
            "{} pixels differ beyond one character cell",
            differing.len()
        )
    }))
}

/// Checks that two screenshots show the same VM screen (see [`screen_difference`]); tests
/// use it as an assertion.
///
/// # Errors
/// The screens differ, or an image is missing or not a binary PPM.
pub fn same_screen(a: &Option<Vec<u8>>, b: &Option<Vec<u8>>) -> Result<()> {
    match screen_difference(a, b)? {
        None => Ok(()),
        Some(difference) => bail!("the screens differ: {difference}"),
    }
}

/// A direct `spicy-screenshot` of `server` (plain port) once its screen is stable, as a
/// user's eye would judge it: shots a second apart until two in a row show the same screen
/// (SeaBIOS prints for a while after the boot screen appears, and slower on a busy machine).
///
/// # Errors
/// `spicy-screenshot` failed, or the screen did not settle within 30 shots.
pub async fn stable_direct_screenshot(
    server: &SpiceServer,
    password: &str,
    dir: &Path,
) -> Result<Option<Vec<u8>>> {
    let mut previous: Option<Option<Vec<u8>>> = None;
    for attempt in 0..30 {
        let shot = spicy_screenshot(
            server.host(),
            server.port(),
            None,
            Some(password),
            None,
            &dir.join(format!("direct-{attempt}.ppm")),
        )
        .await?;
        if shot.exit_code != Some(0) {
            bail!("direct spicy-screenshot failed: {}", shot.stderr);
        }
        if let Some(before) = &previous
            && screen_difference(before, &shot.image)?.is_none()
        {
            return Ok(shot.image);
        }
        previous = Some(shot.image);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the guest's screen did not settle within 30 screenshots")
}

/// A binary PPM (P6) from raw RGBA pixels (row-major, top-left origin), dropping alpha.
///
/// # Errors
/// `rgba` is not `width * height * 4` bytes.
pub fn rgba_to_ppm(width: u32, height: u32, rgba: &[u8]) -> Result<Vec<u8>> {
    let pixels = (width as usize)
        .checked_mul(height as usize)
        .context("image too large")?;
    if rgba.len() != pixels.saturating_mul(4) {
        bail!(
            "{} bytes of RGBA for a {width}x{height} image (want {})",
            rgba.len(),
            pixels.saturating_mul(4)
        );
    }
    let mut ppm = format!("P6\n{width} {height}\n255\n").into_bytes();
    ppm.reserve(pixels.saturating_mul(3));
    for pixel in rgba.chunks(4) {
        ppm.extend(pixel.iter().take(3));
    }
    Ok(ppm)
}
