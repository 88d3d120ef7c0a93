//! The official Python SDKs (`openai`, `anthropic`) against the gateway,
//! with the mock LLM behind every model.
//!
//! Each test starts a mock and a gateway configured by a TOML file, then
//! runs one script from `tests/sdk/` in a virtualenv that holds the pinned
//! SDK versions. The virtualenv lives under `CARGO_TARGET_TMPDIR` and is
//! reused while its marker file names the pinned versions; making it takes
//! `python3` with the `venv` module and a reachable package index
//! (`scripts/test` installs Python). Without them the tests fail, with a
//! message saying what is missing: they are never skipped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use tower_ai_gateway::{Config, Gateway};

/// The SDK versions the scripts are written against.
const PINS: [&str; 2] = ["openai==3.51.0", "anthropic==2.10.0"];

/// The client key the gateway's config serves.
const GATEWAY_KEY: &str = "sk-sdk-test";

/// How long one script may take, all its requests included.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long making the virtualenv may take (a cold package download).
const VENV_TIMEOUT: Duration = Duration::from_secs(600);

/// Serialises making the virtualenv between the tests of this binary.
static VENV_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_against_the_gateway() {
    run_script("openai_sdk.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_against_the_gateway() {
    run_script("anthropic_sdk.py").await;
}

/// Starts a mock and a gateway, runs `tests/sdk/{script}` against the
/// gateway, and fails with the script's output unless it exits 0.
async fn run_script(script: &str) {
    let python = venv().await;
    let mock = mock_llm::MockLlm::spawn(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        mock_llm::Config {
            token_delay: Duration::from_millis(1),
            ..mock_llm::Config::default()
        },
    )
    .await
    .expect("the mock LLM starts");
    let config_file = write_config(script, &mock.base_url());
    let text = std::fs::read_to_string(&config_file).expect("the config file");
    // The provider keys come from a table, not the process environment.
    let mut config = Config::default();
    config
        .read_toml(&text, &config_file, |name| match name {
            "SDK_OPENAI_KEY" => Some("sk-provider-openai".to_owned()),
            "SDK_ANTHROPIC_KEY" => Some("sk-provider-anthropic".to_owned()),
            _ => None,
        })
        .unwrap_or_else(|e| panic!("the config {} is refused: {e}", config_file.display()));
    let gateway = Gateway::start(config).await.expect("the gateway starts");

    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(script);
    let mut command = Command::new(&python);
    command
        .arg(&path)
        .env("GATEWAY_URL", gateway.url())
        .env("GATEWAY_KEY", GATEWAY_KEY)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1");
    // Keys, base URLs and headers from the developer's shell would change
    // what the SDKs send.
    for (name, _) in std::env::vars_os() {
        let sdk_setting = name
            .to_str()
            .is_some_and(|n| n.starts_with("OPENAI_") || n.starts_with("ANTHROPIC_"));
        if sdk_setting {
            command.env_remove(&name);
        }
    }
    let output = run(&mut command, SCRIPT_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{script}: {e}"));
    assert!(
        output.status.success(),
        "{script} failed ({}):\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    print!("{}", String::from_utf8_lossy(&output.stdout));
    // The provider's key reached the upstream; the SDK's never did.
    let last = mock
        .last_request()
        .expect("the mock saw the scripts' calls");
    let sent = [last.authorization.as_deref(), last.x_api_key.as_deref()];
    assert!(
        sent.contains(&Some("Bearer sk-provider-openai"))
            || sent.contains(&Some("sk-provider-anthropic")),
        "{last:?}"
    );
    assert!(!format!("{last:?}").contains(GATEWAY_KEY));
    let _ = std::fs::remove_file(config_file);
}

/// The gateway's config: three models on the mock, one client key, and a
/// limit generous enough never to refuse the scripts.
fn write_config(script: &str, mock_url: &str) -> PathBuf {
    let toml = format!(
        r#"listen = "127.0.0.1:0"

[[models]]
name = "gpt-4o-mini"
provider = "openai"
base_url = "{mock_url}/v1"
api_key_env = "SDK_OPENAI_KEY"

[[models]]
name = "text-embedding-3-small"
provider = "openai"
base_url = "{mock_url}/v1"
api_key_env = "SDK_OPENAI_KEY"

[[models]]
name = "claude-3-5-haiku"
provider = "anthropic"
base_url = "{mock_url}"
api_key_env = "SDK_ANTHROPIC_KEY"

[[keys]]
key = "{GATEWAY_KEY}"
tier = "pro"

[[limits]]
route = "/v1/"
tier = "pro"
requests = {{ capacity = 1000, per_second = 100.0 }}
"#
    );
    let stem = script.trim_end_matches(".py");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sdk-gateway-{stem}-{}.toml", std::process::id()));
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("can't write {}: {e}", path.display()));
    path
}

/// The virtualenv's `python`, after making the virtualenv if it doesn't
/// hold [`PINS`] yet.
async fn venv() -> PathBuf {
    let _making = VENV_LOCK.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("sdk-venv");
    let python = dir.join("bin/python");
    let marker = dir.join("tower-ai-pins.txt");
    let pins = PINS.join("\n");
    if python.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m == pins) {
        return python;
    }

    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .unwrap_or_else(|e| panic!("can't remove the stale {}: {e}", dir.display()));
    }
    let made = run(
        Command::new("python3").args(["-m", "venv", path_str(&dir)]),
        VENV_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the SDK tests need python3 with the venv module ({e}); \
             run scripts/test, or apt-get install python3 python3-venv"
        )
    });
    assert!(
        made.status.success(),
        "`python3 -m venv` failed ({}); the SDK tests need python3 with the venv \
         module: run scripts/test, or apt-get install python3 python3-venv\n{}",
        made.status,
        String::from_utf8_lossy(&made.stderr),
    );

    let installed = run(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(PINS),
        VENV_TIMEOUT,
    )
    .await
    .unwrap_or_else(|e| panic!("pip install {}: {e}", PINS.join(" ")));
    assert!(
        installed.status.success(),
        "pip install {} failed ({}):\n{}{}",
        PINS.join(" "),
        installed.status,
        String::from_utf8_lossy(&installed.stdout),
        String::from_utf8_lossy(&installed.stderr),
    );
    // Written last: a virtualenv without it is made again.
    std::fs::write(&marker, pins)
        .unwrap_or_else(|e| panic!("can't write {}: {e}", marker.display()));
    python
}

/// Runs `command` to completion, collecting its output; kills it after
/// `timeout`.
async fn run(command: &mut Command, timeout: Duration) -> Result<Output, String> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    match tokio::time::timeout(timeout, command.output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(format!("can't run {program}: {e}")),
        Err(_) => Err(format!(
            "{program} took longer than {timeout:?} and was killed"
        )),
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}
