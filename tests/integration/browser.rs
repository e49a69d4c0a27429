//! The browser harness itself (`kerbside_tests::browser`): headless Chromium starts, shows a
//! page, runs scripts, reads a canvas both ways, and leaves no process behind.

use std::time::Duration;

use anyhow::Result;
use kerbside_tests::browser::{Browser, png_rgba, processes_using};
use kerbside_tests::require::require;
use kerbside_tests::wait::eventually;
use serde_json::json;

/// A page with a heading and a 4x2 canvas: the left half red, the right half blue.
const PAGE: &str = "data:text/html,<!doctype html><html><body style='margin:0'>\
    <h1 id='t'>hello from kerbside</h1>\
    <canvas id='c' width='4' height='2'></canvas>\
    <script>const x = document.getElementById('c').getContext('2d');\
    x.fillStyle = '%23ff0000'; x.fillRect(0, 0, 2, 2);\
    x.fillStyle = '%230000ff'; x.fillRect(2, 0, 2, 2);</script></body></html>";

/// The RGBA of [`PAGE`]'s canvas.
fn expected_canvas() -> Vec<u8> {
    let (red, blue) = ([255, 0, 0, 255], [0, 0, 255, 255]);
    [red, red, blue, blue, red, red, blue, blue].concat()
}

#[tokio::test]
async fn harness_shows_a_page_and_reads_its_canvas() -> Result<()> {
    require("chromium")?;
    let dir = tempfile::tempdir()?;
    let browser = Browser::start(dir.path()).await?;
    let profile = browser.profile_dir().to_path_buf();
    assert!(
        !processes_using(&profile).is_empty(),
        "no Chromium process runs with the profile {}",
        profile.display()
    );

    browser.goto(PAGE).await?;
    assert_eq!(browser.text("#t").await?, "hello from kerbside");
    let text = browser
        .wait_for_text("#t", "kerbside", Duration::from_secs(10))
        .await?;
    assert_eq!(text, "hello from kerbside");
    assert_eq!(
        browser
            .execute("return arguments[0] + 1;", vec![json!(41)])
            .await?,
        json!(42)
    );
    browser
        .execute("console.log('harness says hi');", vec![])
        .await?;
    let console = browser.console_log().await?;
    assert!(
        console.iter().any(|l| l.contains("harness says hi")),
        "console: {console:?}"
    );

    let (w, h, rgba) = browser.canvas_rgba("#c").await?;
    assert_eq!((w, h), (4, 2));
    assert_eq!(rgba, expected_canvas());

    let png = browser.element_screenshot("#c", "canvas").await?;
    assert!(dir.path().join("canvas.png").is_file());
    assert_eq!(png_rgba(&png)?, (4, 2, expected_canvas()));

    let page = browser.screenshot("page").await?;
    let (pw, ph, _) = png_rgba(&page)?;
    let viewport = browser
        .execute("return [window.innerWidth, window.innerHeight];", vec![])
        .await?;
    assert_eq!(
        json!([pw, ph]),
        viewport,
        "a page screenshot shows the viewport"
    );
    assert_eq!(pw, 1280, "the window is 1280 pixels wide");

    browser.close().await?;
    assert!(
        eventually(Duration::from_secs(30), || async {
            Ok(processes_using(&profile).is_empty())
        })
        .await?,
        "processes left behind after close: {:?}",
        processes_using(&profile)
    );
    Ok(())
}

#[tokio::test]
async fn harness_leaves_no_process_when_dropped() -> Result<()> {
    require("chromium")?;
    let dir = tempfile::tempdir()?;
    let browser = Browser::start(dir.path()).await?;
    let profile = browser.profile_dir().to_path_buf();
    browser.goto(PAGE).await?;
    assert!(!processes_using(&profile).is_empty());
    drop(browser);
    assert!(
        eventually(Duration::from_secs(30), || async {
            Ok(processes_using(&profile).is_empty())
        })
        .await?,
        "processes left behind after drop: {:?}",
        processes_using(&profile)
    );
    Ok(())
}
