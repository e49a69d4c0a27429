//! Headless Chromium driven over WebDriver, for tests of what a browser shows.
//!
//! [`Browser::start`] runs Debian's `chromedriver` (package `chromium-driver`) on a free
//! loopback port in a process group of its own, and opens one WebDriver session in which
//! `chromedriver` starts Debian's `chromium` headless (`--headless=new`, `--no-sandbox`
//! because the tests run as root, a throwaway profile directory, a fixed window size and a
//! device scale factor of 1, so one CSS pixel is one screenshot pixel). The WebDriver client
//! is the `fantoccini` crate; [`Browser::client`] gives tests all of it, and the helpers
//! here cover the usual steps: navigate, read text, wait for text, run JavaScript, read the
//! browser console, take a PNG screenshot of the page or of one element (a `<canvas>`), and
//! read a canvas's pixels.
//!
//! Screenshots are written into the directory the test passes to [`Browser::start`] (its
//! output directory), and also into `$KERBSIDE_TEST_ARTIFACTS` when that is set, so a
//! failing CI run can keep them.
//!
//! Shutdown: [`Browser::close`] ends the WebDriver session (Chromium exits) and then stops
//! `chromedriver`; dropping a [`Browser`] instead kills the whole process group
//! (`chromedriver` and every Chromium process it started) with SIGKILL. Either way no
//! process is left behind; [`processes_using`] lets a test check that.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use rustix::process::{Pid, Signal, kill_process_group};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::proc_util::{read_log, tail};

/// Debian's Chromium binary (the `/usr/bin/chromium` wrapper script execs it).
const CHROMIUM: &str = "/usr/lib/chromium/chromium";
/// The wrapper, used when [`CHROMIUM`] is not there.
const CHROMIUM_WRAPPER: &str = "/usr/bin/chromium";
/// How long `chromedriver` may take to answer `/status` as ready.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long opening the WebDriver session (starting Chromium) may take on a busy machine.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of `chromedriver`'s log goes into an error message.
const LOG_TAIL: usize = 4000;

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct BrowserOptions {
    /// Window size in CSS pixels (the device scale factor is 1).
    pub window: (u32, u32),
    /// Accept TLS certificates that do not chain to a trusted CA (WebDriver's
    /// `acceptInsecureCerts`; also applies to `wss://`).
    pub accept_insecure_certs: bool,
    /// Further Chromium command-line switches.
    pub extra_args: Vec<String>,
    /// Where downloads go, without asking (`None`: Chromium's default).
    pub download_dir: Option<PathBuf>,
}

impl Default for BrowserOptions {
    fn default() -> Self {
        BrowserOptions {
            window: (1280, 1024),
            accept_insecure_certs: false,
            extra_args: Vec::new(),
            download_dir: None,
        }
    }
}

/// A headless Chromium under `chromedriver`, with one WebDriver session open.
#[derive(Debug)]
pub struct Browser {
    /// The WebDriver session.
    client: Client,
    /// `chromedriver`, leader of its own process group (Chromium runs in that group too).
    driver: Child,
    /// The process group to kill on drop (`chromedriver`'s pid).
    group: Option<Pid>,
    /// `http://127.0.0.1:PORT`, where `chromedriver` listens.
    driver_url: String,
    /// Where screenshots and `chromedriver.log` go.
    dir: PathBuf,
    /// Chromium's throwaway profile (`--user-data-dir`); removed on drop.
    profile: tempfile::TempDir,
}

impl Browser {
    /// [`Browser::start_with`] default options (1280x1024, certificates verified).
    ///
    /// # Errors
    /// As [`Browser::start_with`].
    pub async fn start(dir: &Path) -> Result<Self> {
        Self::start_with(dir, BrowserOptions::default()).await
    }

    /// Starts `chromedriver` and opens a session with headless Chromium. `dir` receives
    /// `chromedriver.log` and the screenshots.
    ///
    /// # Errors
    /// `chromedriver` or Chromium is missing (see [`crate::require`]: `chromium`), or did not
    /// start; the message holds the end of `chromedriver`'s log.
    pub async fn start_with(dir: &Path, options: BrowserOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let profile = tempfile::Builder::new()
            .prefix("kerbside-chromium-")
            .tempdir()
            .context("creating a Chromium profile directory")?;
        let log_path = dir.join("chromedriver.log");
        let mut last_error = anyhow!("chromedriver did not start");
        // Another process may take the free port before chromedriver binds it: try again.
        for _ in 0..3 {
            let port = crate::ports::free_port()?;
            let mut driver = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log_path.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .context(
                    "spawning chromedriver (Debian package chromium-driver; \
                     run tools/install-test-deps.sh)",
                )?;
            let group = driver
                .id()
                .and_then(|id| i32::try_from(id).ok())
                .and_then(Pid::from_raw);
            let driver_url = format!("http://127.0.0.1:{port}");
            match wait_driver_ready(&driver_url, &mut driver).await {
                Ok(()) => {
                    return Ok(Browser {
                        client: connect(&driver_url, &options, profile.path())
                            .await
                            .map_err(|e| {
                                if let Some(group) = group {
                                    let _ = kill_process_group(group, Signal::KILL);
                                }
                                e.context(format!(
                                    "--- chromedriver log ---\n{}",
                                    tail(&read_log(&log_path), LOG_TAIL)
                                ))
                            })?,
                        driver,
                        group,
                        driver_url,
                        dir: dir.to_path_buf(),
                        profile,
                    });
                }
                Err(e) => {
                    if let Some(group) = group {
                        let _ = kill_process_group(group, Signal::KILL);
                    }
                    let _ = driver.wait().await;
                    last_error = e;
                }
            }
        }
        Err(last_error.context(format!(
            "--- chromedriver log ---\n{}",
            tail(&read_log(&log_path), LOG_TAIL)
        )))
    }

    /// The WebDriver session, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Chromium's profile directory: every Chromium process has it on its command line
    /// (see [`processes_using`]).
    pub fn profile_dir(&self) -> &Path {
        self.profile.path()
    }

    /// Where screenshots are written.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Navigates to `url` and waits for the page's load event.
    ///
    /// # Errors
    /// WebDriver refused (a TLS error page still loads: check the page).
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("navigating to {url}"))
    }

    /// The address of the page now shown.
    ///
    /// # Errors
    /// WebDriver failed.
    pub async fn current_url(&self) -> Result<String> {
        Ok(self.client.current_url().await?.to_string())
    }

    /// The rendered text of the first element matching the CSS selector.
    ///
    /// # Errors
    /// No such element, or WebDriver failed.
    pub async fn text(&self, css: &str) -> Result<String> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?;
        Ok(element.text().await?)
    }

    /// The text content of the first element matching `css` (also when it is hidden), or
    /// `None` when there is none.
    ///
    /// # Errors
    /// WebDriver failed.
    pub async fn text_content(&self, css: &str) -> Result<Option<String>> {
        let value = self
            .execute(
                "const e = document.querySelector(arguments[0]); \
                 return e === null ? null : e.textContent;",
                vec![json!(css)],
            )
            .await?;
        Ok(value.as_str().map(str::to_owned))
    }

    /// Waits up to `limit` until the text content of `css` contains `needle`, and returns
    /// that text.
    ///
    /// # Errors
    /// It never did (the message says what the element held last), or WebDriver failed.
    pub async fn wait_for_text(&self, css: &str, needle: &str, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let text = self.text_content(css).await?;
            if let Some(text) = text.as_deref().filter(|t| t.contains(needle)) {
                return Ok(text.to_owned());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{css} did not contain {needle:?} within {limit:?}; it held {text:?}; \
                     browser console: {:?}",
                    self.console_log().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Types `text` into the first element matching `css` (an `<input>` or `<textarea>`),
    /// after clearing it.
    ///
    /// # Errors
    /// No such element, or WebDriver failed.
    pub async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?;
        element
            .clear()
            .await
            .with_context(|| format!("clearing {css}"))?;
        element
            .send_keys(text)
            .await
            .with_context(|| format!("typing into {css}"))
    }

    /// Clicks the first element matching `css` (a button submits its form; the call returns
    /// once the browser has dispatched the click, maybe before the next page loaded: wait
    /// for that page's text).
    ///
    /// # Errors
    /// No such element, or WebDriver failed.
    pub async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?
            .click()
            .await
            .with_context(|| format!("clicking {css}"))
    }

    /// Sets the window size in CSS pixels (to look at a page at a phone's width, say).
    ///
    /// # Errors
    /// WebDriver failed.
    pub async fn set_window_size(&self, width: u32, height: u32) -> Result<()> {
        self.client
            .set_window_size(width, height)
            .await
            .context("resizing the window")
    }

    /// The value of the cookie `name` of the current page's site (also an `HttpOnly` one),
    /// or `None`.
    ///
    /// # Errors
    /// WebDriver failed.
    pub async fn cookie(&self, name: &str) -> Result<Option<String>> {
        match self.client.get_named_cookie(name).await {
            Ok(c) => Ok(Some(c.value().to_owned())),
            Err(fantoccini::error::CmdError::Standard(e))
                if e.error == fantoccini::error::ErrorStatus::NoSuchCookie =>
            {
                Ok(None)
            }
            Err(e) => Err(e).context("reading a cookie"),
        }
    }

    /// Runs `script` as a function body (WebDriver "Execute Script": `arguments[i]` are
    /// `args`, `return` gives the result).
    ///
    /// # Errors
    /// The script threw, or WebDriver failed.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.client
            .execute(script, args)
            .await
            .context("running a script in the page")
    }

    /// The browser console's messages since the last call (Chromium's `browser` log: each
    /// as `LEVEL message`).
    ///
    /// # Errors
    /// WebDriver failed.
    pub async fn console_log(&self) -> Result<Vec<String>> {
        let session = self
            .client
            .session_id()
            .await?
            .context("no WebDriver session")?;
        let response: Value = reqwest::Client::new()
            .post(format!("{}/session/{session}/se/log", self.driver_url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .context("asking chromedriver for the browser log")?
            .json()
            .await
            .context("reading chromedriver's browser log")?;
        Ok(response
            .get("value")
            .and_then(Value::as_array)
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {}",
                            e.get("level").and_then(Value::as_str).unwrap_or("?"),
                            e.get("message").and_then(Value::as_str).unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A PNG of the whole viewport, written to `<dir>/<name>.png` (see the module doc).
    ///
    /// # Errors
    /// WebDriver failed, or the file could not be written.
    pub async fn screenshot(&self, name: &str) -> Result<Vec<u8>> {
        let png = self
            .client
            .screenshot()
            .await
            .context("taking a screenshot")?;
        self.keep(name, &png)?;
        Ok(png)
    }

    /// A PNG of the first element matching `css` (a `<canvas>`, say), written to
    /// `<dir>/<name>.png`.
    ///
    /// # Errors
    /// No such element, WebDriver failed, or the file could not be written.
    pub async fn element_screenshot(&self, css: &str, name: &str) -> Result<Vec<u8>> {
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("finding {css}"))?;
        let png = element
            .screenshot()
            .await
            .with_context(|| format!("taking a screenshot of {css}"))?;
        self.keep(name, &png)?;
        Ok(png)
    }

    /// The pixels of the first `<canvas>` matching `css`, read in the page
    /// (`getImageData`): `(width, height, RGBA)` in the canvas's own resolution, whatever
    /// size the page shows it at.
    ///
    /// # Errors
    /// No such canvas, it is not a 2D canvas, or WebDriver failed.
    pub async fn canvas_rgba(&self, css: &str) -> Result<(u32, u32, Vec<u8>)> {
        let value = self
            .execute(
                "const c = document.querySelector(arguments[0]); \
                 if (c === null || c.getContext === undefined) return null; \
                 const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                 let s = ''; \
                 for (let i = 0; i < d.length; i += 0x8000) \
                   s += String.fromCharCode.apply(null, d.subarray(i, i + 0x8000)); \
                 return [c.width, c.height, btoa(s)];",
                vec![json!(css)],
            )
            .await?;
        let [width, height, data] = value.as_array().map(Vec::as_slice).unwrap_or_default() else {
            bail!("no canvas matches {css}");
        };
        let (Some(width), Some(height), Some(data)) = (
            width.as_u64().and_then(|w| u32::try_from(w).ok()),
            height.as_u64().and_then(|h| u32::try_from(h).ok()),
            data.as_str(),
        ) else {
            bail!("unexpected canvas data for {css}");
        };
        use base64::Engine as _;
        let rgba = base64::engine::general_purpose::STANDARD
            .decode(data)
            .context("decoding canvas pixels")?;
        Ok((width, height, rgba))
    }

    /// Ends the WebDriver session (Chromium exits), then stops `chromedriver`.
    ///
    /// # Errors
    /// Never for a browser that already died: the process group is killed regardless.
    pub async fn close(mut self) -> Result<()> {
        let closed = tokio::time::timeout(Duration::from_secs(20), self.client.clone().close())
            .await
            .map_err(|_| anyhow!("closing the WebDriver session timed out"))
            .and_then(|r| r.context("closing the WebDriver session"));
        self.kill();
        let _ = self.driver.wait().await;
        closed
    }

    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = kill_process_group(group, Signal::KILL);
        }
    }

    fn keep(&self, name: &str, png: &[u8]) -> Result<()> {
        let file = format!("{name}.png");
        let path = self.dir.join(&file);
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        if let Some(artifacts) = std::env::var_os("KERBSIDE_TEST_ARTIFACTS") {
            let artifacts = PathBuf::from(artifacts);
            std::fs::create_dir_all(&artifacts)
                .and_then(|()| std::fs::write(artifacts.join(&file), png))
                .with_context(|| format!("writing {file} into {}", artifacts.display()))?;
        }
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // chromedriver and Chromium share the process group chromedriver leads.
        self.kill();
        let _ = self.driver.start_kill();
    }
}

/// Waits up to `limit` for a finished download in `dir` whose name ends with `suffix`
/// (Chromium writes `*.crdownload` until it is complete) and returns its path.
///
/// # Errors
/// None came in time (the message lists what `dir` held).
pub async fn wait_for_download(dir: &Path, suffix: &str, limit: Duration) -> Result<PathBuf> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        if let Some(name) = names
            .iter()
            .find(|n| n.ends_with(suffix) && !n.ends_with(".crdownload"))
        {
            return Ok(dir.join(name));
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "no *{suffix} download in {} within {limit:?}; it holds {names:?}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls `chromedriver`'s `/status` until it says ready.
async fn wait_driver_ready(url: &str, driver: &mut Child) -> Result<()> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let deadline = tokio::time::Instant::now() + DRIVER_READY_TIMEOUT;
    loop {
        if let Some(status) = driver.try_wait()? {
            bail!("chromedriver exited with {status}");
        }
        if let Ok(response) = http.get(format!("{url}/status")).send().await {
            let body: Value = response.json().await.unwrap_or_default();
            if body.pointer("/value/ready").and_then(Value::as_bool) == Some(true) {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("chromedriver at {url} was not ready within {DRIVER_READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens the WebDriver session: chromedriver starts Chromium.
async fn connect(url: &str, options: &BrowserOptions, profile: &Path) -> Result<Client> {
    let binary = if Path::new(CHROMIUM).is_file() {
        CHROMIUM
    } else {
        CHROMIUM_WRAPPER
    };
    let (width, height) = options.window;
    let mut args = vec![
        "--headless=new".to_owned(),
        // The tests run as root, where Chromium's sandbox refuses to start.
        "--no-sandbox".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--disable-gpu".to_owned(),
        format!("--user-data-dir={}", profile.display()),
        format!("--window-size={width},{height}"),
        "--force-device-scale-factor=1".to_owned(),
        "--hide-scrollbars".to_owned(),
        "--mute-audio".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-extensions".to_owned(),
        "--disable-breakpad".to_owned(),
        "--password-store=basic".to_owned(),
    ];
    args.extend(options.extra_args.iter().cloned());
    let mut chrome = serde_json::Map::new();
    chrome.insert("binary".to_owned(), json!(binary));
    chrome.insert("args".to_owned(), json!(args));
    if let Some(dir) = &options.download_dir {
        chrome.insert(
            "prefs".to_owned(),
            json!({
                "download.default_directory": dir.display().to_string(),
                "download.prompt_for_download": false,
                "download.directory_upgrade": true,
                "safebrowsing.enabled": false,
            }),
        );
    }
    let capabilities = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": options.accept_insecure_certs,
        "goog:chromeOptions": chrome,
        "goog:loggingPrefs": {"browser": "ALL"},
    });
    let Value::Object(capabilities) = capabilities else {
        bail!("capabilities are not a JSON object");
    };
    let mut builder = ClientBuilder::new(HttpConnector::new());
    builder.capabilities(capabilities);
    tokio::time::timeout(SESSION_TIMEOUT, builder.connect(url))
        .await
        .map_err(|_| anyhow!("starting Chromium took longer than {SESSION_TIMEOUT:?}"))?
        .context("opening a WebDriver session (starting Chromium)")
}

/// The ids of running processes whose command line mentions `path` (a Chromium profile
/// directory, say), to check that nothing was left behind. Zombies do not count.
pub fn processes_using(path: &Path) -> Vec<u32> {
    let needle = path.as_os_str().as_encoded_bytes();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
                .unwrap_or(true);
            !zombie && cmdline.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// A decoded PNG as `(width, height, RGBA)` (8-bit RGB or RGBA input).
///
/// # Errors
/// Not a PNG, or a colour type other than 8-bit RGB or RGBA.
pub fn png_rgba(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().context("reading the PNG header")?;
    let size = reader
        .output_buffer_size()
        .context("the PNG is too large")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).context("decoding the PNG")?;
    let data = buf.get(..info.buffer_size()).context("short PNG frame")?;
    let rgba = match (info.color_type, info.bit_depth) {
        (png::ColorType::Rgba, png::BitDepth::Eight) => data.to_vec(),
        (png::ColorType::Rgb, png::BitDepth::Eight) => {
            let mut rgba = Vec::with_capacity(data.len() / 3 * 4);
            for pixel in data.chunks_exact(3) {
                rgba.extend_from_slice(pixel);
                rgba.push(0xff);
            }
            rgba
        }
        (colour, depth) => bail!("unsupported PNG format {colour:?} {depth:?}"),
    };
    Ok((info.width, info.height, rgba))
}
